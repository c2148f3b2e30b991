//! The backing store: where a page's contents come from when it is fetched, and where an
//! evicted page's contents go.
//!
//! Nothing is made up front. A page's first contents are made when it is first needed (its
//! fetch, or an emulated access while it is being fetched): the default pattern is a function of
//! the guest-physical address, and an image file is read one page at a time. So a region of
//! gigabytes costs nothing until the guest touches it, and then one page per page touched. Only
//! pages the guest wrote and that were evicted are kept, in memory.
//!
//! With versions (`--pnp-versioned`, for the soak) the first two words of every page are the
//! host's: its address and how many times it was made present
//! (`pvagent_abi::pnp::versioned_header`), written over the contents at each fetch, so that a
//! guest can tell a page's current contents from a stale copy.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pvagent_abi::pnp::{backing_pattern, versioned_header};

use super::region::PAGE;
use super::state::PageIndex;

/// A page's contents, in host memory the guest cannot see.
pub type PageBuf = Box<[u8; PAGE]>;

/// Where first contents come from.
#[derive(Debug)]
enum Source {
    /// [`backing_pattern`] of each 8-byte word's guest-physical address.
    Pattern,
    /// An image file: page `n` is the file's bytes at `n * PAGE`; past the file's end, zeros.
    /// `len`: its length when it was opened (at most the region's).
    Image { file: File, path: PathBuf, len: u64 },
}

/// The region's backing store.
#[derive(Debug)]
pub struct BackingStore {
    /// The region's first guest-physical address (the pattern depends on it).
    region_gpa: u64,
    source: Source,
    /// Pages saved by eviction: they replace what the source would make.
    saved: HashMap<PageIndex, PageBuf>,
    /// With versions: how many times each page was made present (absent: never).
    versions: Option<HashMap<PageIndex, u64>>,
    /// Pages made present so far, and from which one on versions stop counting (a deliberate
    /// fault: see [`Self::stale_from`]).
    made_present: u64,
    stale_from: Option<u64>,
}

impl BackingStore {
    /// Pages of [`backing_pattern`] for a region at `region_gpa`.
    pub fn pattern(region_gpa: u64) -> Self {
        Self {
            region_gpa,
            source: Source::Pattern,
            saved: HashMap::new(),
            versions: None,
            made_present: 0,
            stale_from: None,
        }
    }

    /// Pages read from the image at `path` (opened now, read page by page later) for a region
    /// of `region_bytes`. The rule: the image is a regular file (a FIFO, a device, a directory
    /// is refused by kind, `files::open_input`) of at most the region's length, whose bytes are
    /// the region's first bytes; the rest of the region reads as zeros, and the run's report
    /// says from where ([`BackingStore::describe`]). A longer image is refused: its end would
    /// never be read.
    pub fn image(region_gpa: u64, region_bytes: u64, path: &Path) -> Result<Self, ImageError> {
        let (file, len) = crate::files::open_input(path).map_err(ImageError::Open)?;
        if len > region_bytes {
            return Err(ImageError::LongerThanRegion { len, region_bytes });
        }
        let source = Source::Image { file, path: path.to_path_buf(), len };
        Ok(Self { region_gpa, source, saved: HashMap::new(), versions: None, made_present: 0, stale_from: None })
    }

    /// Where the region's first contents come from, for the run's report.
    pub fn describe(&self, region_bytes: u64) -> String {
        match &self.source {
            Source::Pattern => "the default pattern (pvagent_abi::pnp::backing_pattern)".to_string(),
            Source::Image { path, len, .. } if *len == region_bytes => {
                format!("the image {} ({len} bytes, the region's length)", path.display())
            }
            Source::Image { path, len, .. } => format!(
                "the image {} ({len} bytes: the region's first {len}; the other {} bytes, from page {} on, read as zeros)",
                path.display(),
                region_bytes - len,
                len / PAGE as u64
            ),
        }
    }

    /// The same store, serving every page with its version in its first two words from now on.
    pub fn versioned(self) -> Self {
        Self { versions: Some(HashMap::new()), ..self }
    }

    /// A deliberate fault, for the soak's own test: from the `n`th page made present on
    /// (counting from 1), versions stop counting, so a page fetched again carries the version
    /// its previous fetch did: a stale page.
    pub fn stale_from(self, n: u64) -> Self {
        Self { stale_from: Some(n), ..self }
    }

    /// The image file, if the pages come from one.
    pub fn image_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Pattern => None,
            Source::Image { path, .. } => Some(path),
        }
    }

    /// A copy of `page`'s contents, as its next fetch makes it present (with versions: the
    /// version that fetch gives it, which [`Self::made_present`] then counts).
    pub fn page(&self, page: PageIndex) -> io::Result<PageBuf> {
        let mut out = self.contents(page)?;
        if let Some(versions) = &self.versions {
            let next = versions.get(&page).copied().unwrap_or(0) + 1;
            let gpa = self.region_gpa + page * PAGE as u64;
            for (word, value) in out.chunks_exact_mut(8).zip(versioned_header(gpa, next)) {
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Counts one more time `page` was made present (from what [`Self::page`] gave).
    pub fn made_present(&mut self, page: PageIndex) {
        self.made_present += 1;
        if self.stale_from.is_some_and(|n| self.made_present >= n) {
            return;
        }
        if let Some(versions) = &mut self.versions {
            *versions.entry(page).or_insert(0) += 1;
        }
    }

    /// `page`'s contents: saved by an eviction, or from the source.
    fn contents(&self, page: PageIndex) -> io::Result<PageBuf> {
        if let Some(saved) = self.saved.get(&page) {
            return Ok(saved.clone());
        }
        let mut out: PageBuf = Box::new([0; PAGE]);
        match &self.source {
            Source::Pattern => {
                let base = self.region_gpa + page * PAGE as u64;
                for (i, word) in out.chunks_exact_mut(8).enumerate() {
                    word.copy_from_slice(&backing_pattern(base + (i * 8) as u64).to_le_bytes());
                }
            }
            Source::Image { file, .. } => read_page_at(file, page * PAGE as u64, &mut out)?,
        }
        Ok(out)
    }

    /// Keeps `contents` as `page`'s from now on (an evicted page the guest may have written).
    pub fn save(&mut self, page: PageIndex, contents: PageBuf) {
        self.saved.insert(page, contents);
    }
}

/// Why a backing image is refused when it is opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Open(io::Error),
    #[error(
        "{len} bytes, longer than the region's {region_bytes} (its end would never be read; use a larger --pnp-mib)"
    )]
    LongerThanRegion { len: u64, region_bytes: u64 },
}

/// Fills `out` from `file` at `offset`; bytes past the end of the file read as zeros.
fn read_page_at(file: &File, offset: u64, out: &mut [u8; PAGE]) -> io::Result<()> {
    let mut done = 0;
    while done < PAGE {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out[done..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(page: &[u8; PAGE], index: usize) -> u64 {
        u64::from_le_bytes(page[index * 8..index * 8 + 8].try_into().unwrap())
    }

    #[test]
    fn the_pattern_is_made_per_page_from_the_guest_physical_address() {
        let store = BackingStore::pattern(1 << 32);
        let page = store.page(3).unwrap();
        assert_eq!(word(&page, 0), backing_pattern((1 << 32) + 3 * 4096));
        assert_eq!(word(&page, 511), backing_pattern((1 << 32) + 3 * 4096 + 511 * 8));
        assert_eq!(store.image_path(), None);
    }

    #[test]
    fn an_image_is_read_page_by_page_and_zero_filled_past_its_end() {
        let path = std::env::temp_dir().join(format!("pvagent-backing-{}.img", std::process::id()));
        let mut bytes = vec![0xAB; PAGE];
        bytes.extend_from_slice(&[0xCD; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let store = BackingStore::image(0, 1 << 20, &path).unwrap();
        assert!(store.page(0).unwrap().iter().all(|b| *b == 0xAB));
        let partial = store.page(1).unwrap();
        assert!(partial[..100].iter().all(|b| *b == 0xCD) && partial[100..].iter().all(|b| *b == 0));
        assert!(store.page(1000).unwrap().iter().all(|b| *b == 0), "beyond the file");
        assert_eq!(store.image_path(), Some(path.as_path()));
        std::fs::remove_file(&path).unwrap();
        assert!(BackingStore::image(0, 1 << 20, &path).is_err(), "a missing image is refused when opened");
    }

    /// The stated rule (`--pnp-image`'s help, docs/abi.md): an image shorter than the region is
    /// its first bytes and the report says where the zeros start; a longer one is refused with
    /// both lengths; one of the region's length is all of it. Never silently padded or cut.
    #[test]
    fn an_image_longer_than_the_region_is_refused_and_a_shorter_one_reported() {
        let path = std::env::temp_dir().join(format!("pvagent-backing-len-{}.img", std::process::id()));
        std::fs::write(&path, vec![1u8; 2 * PAGE + 1]).unwrap();
        let e = BackingStore::image(0, 2 * PAGE as u64, &path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "8193 bytes, longer than the region's 8192 (its end would never be read; use a larger --pnp-mib)"
        );
        let store = BackingStore::image(0, 4 * PAGE as u64, &path).unwrap();
        let text = store.describe(4 * PAGE as u64);
        assert!(
            text.ends_with(
                "(8193 bytes: the region's first 8193; the other 8191 bytes, from page 2 on, read as zeros)"
            ),
            "{text}"
        );
        let exact = BackingStore::image(0, 2 * PAGE as u64 + 1, &path).unwrap();
        assert!(exact.describe(2 * PAGE as u64 + 1).ends_with("(8193 bytes, the region's length)"));
        std::fs::remove_file(&path).unwrap();
        for (special, what) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            let e = BackingStore::image(0, 1 << 20, Path::new(special)).unwrap_err();
            assert_eq!(e.to_string(), format!("{what}, not a regular file"));
        }
    }

    #[test]
    fn a_versioned_page_carries_its_address_and_how_often_it_was_made_present() {
        let mut store = BackingStore::pattern(1 << 32).versioned();
        let gpa = (1 << 32) + 5 * 4096;
        let first = store.page(5).unwrap();
        assert_eq!([word(&first, 0), word(&first, 1)], versioned_header(gpa, 1));
        assert_eq!(word(&first, 2), backing_pattern(gpa + 16), "the rest is the pattern");
        assert_eq!(word(&store.page(5).unwrap(), 1), 1, "asking again is no fetch");
        store.made_present(5);
        let mut written = store.page(5).unwrap();
        written[16..24].copy_from_slice(&7u64.to_le_bytes());
        store.save(5, written);
        let second = store.page(5).unwrap();
        assert_eq!([word(&second, 0), word(&second, 1), word(&second, 2)], [versioned_header(gpa, 2)[0], 2, 7]);
        assert_eq!(word(&store.page(6).unwrap(), 1), 1, "each page has its own version");
        assert_eq!(word(&BackingStore::pattern(0).page(0).unwrap(), 0), backing_pattern(0), "no versions by default");
    }

    #[test]
    fn with_the_stale_fault_a_page_fetched_again_keeps_its_old_version() {
        let mut store = BackingStore::pattern(0).versioned().stale_from(2);
        store.made_present(3);
        assert_eq!(word(&store.page(3).unwrap(), 1), 2, "the first page made present is counted");
        store.made_present(3);
        assert_eq!(word(&store.page(3).unwrap(), 1), 2, "from the second on, none is");
    }

    #[test]
    fn a_saved_page_replaces_the_source() {
        let mut store = BackingStore::pattern(0);
        store.save(2, Box::new([7; PAGE]));
        assert!(store.page(2).unwrap().iter().all(|b| *b == 7));
        assert_eq!(word(&store.page(1).unwrap(), 0), backing_pattern(4096));
    }
}
