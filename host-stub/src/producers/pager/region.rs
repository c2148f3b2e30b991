//! The demand-paged region's memory: an anonymous mapping behind its own memslot. Where pages
//! come from and go to is the backing store's business (`backing`).
//!
//! An absent page is kept two ways at once:
//! - **inaccessible** (`PROT_NONE`): KVM cannot map it, so every guest access returns to the
//!   host promptly. This is the gate that works at every privilege level: on the PVM
//!   `/dev/kvm` of these machines a guest CPL 3 access to a page that is merely userfaultfd-
//!   missing (SIGBUS mode) never leaves KVM (it retries the fault and the emulation forever),
//!   while a `PROT_NONE` page ends KVM_RUN with EFAULT (CPL 3) or KVM_EXIT_MMIO (CPL 0); on
//!   VMX/SVM KVM it is KVM_EXIT_MEMORY_FAULT either way;
//! - **missing** in a userfaultfd registered with `UFFD_FEATURE_SIGBUS`: a page is only ever
//!   filled whole and atomically (`UFFDIO_COPY`), and should the gate ever be opened on a page
//!   that was not filled, the access faults instead of reading a silently zero-filled page.
//!
//! A page becomes present by `UFFDIO_COPY` (still inaccessible) and then `mprotect` to
//! read/write; it becomes absent by copying it out, closing the gate and dropping the memory.
//!
//! In `kvm-apf-kernel` mode ([`Gate::KvmAsync`]) there is no gate: an absent page is only
//! userfaultfd-missing, without SIGBUS, so that KVM's own async page fault path takes a guest
//! CPL 3 access with interrupts on (its worker thread faults on the page while the guest gets
//! "page not present"), and any other access waits inside KVM; the pager reads both faults
//! from the userfaultfd (`kernel_faults`). Filling a page wakes whoever waits for it.
//!
//! The guest writes present pages at any time, from any vCPU, so the host never makes a Rust
//! reference to them: every access is a copy through `vm-memory`'s volatile accessors
//! ([`VolatileSlice::copy_to`] and [`VolatileSlice::copy_from`]), and the mapping itself is a
//! `vm-memory` [`MmapRegion`], which owns it and unmaps it when dropped.

use std::io;
use std::ops::Range;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{MmapRegion, VolatileMemory, VolatileSlice};

use super::backing::PageBuf;
use super::state::PageIndex;
use super::uffd::{Missing, Uffd};

/// Bytes per page.
pub const PAGE: usize = 4096;

/// Why the region could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("mapping {bytes} bytes for it failed: {source}")]
    Map { bytes: usize, source: MmapRegionError },
    #[error(
        "userfaultfd (SIGBUS mode) failed: {0} (the host stub needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)"
    )]
    Userfaultfd(io::Error),
    #[error("closing its pages to the guest (mprotect) failed: {0}")]
    Protect(io::Error),
}

/// The page of a region of `pages` pages at `region_gpa` that holds `gpa` (any address the
/// guest names), if any.
pub fn page_in(region_gpa: u64, pages: u64, gpa: u64) -> Option<PageIndex> {
    let page = gpa.checked_sub(region_gpa)? / PAGE as u64;
    (page < pages).then_some(page)
}

/// The `count` pages from the one holding `gpa` in a region of `pages` pages at `region_gpa`
/// (a guest's hypercall arguments), if they all lie in it: `None` when `gpa` is outside it or
/// the span runs past its end (a count near 2^64 included). A count of 0 is the empty span.
pub fn span_in(region_gpa: u64, pages: u64, gpa: u64, count: u64) -> Option<Range<PageIndex>> {
    let first = page_in(region_gpa, pages, gpa)?;
    let end = first.checked_add(count).filter(|end| *end <= pages)?;
    Some(first..end)
}

/// How an absent page keeps the guest out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Inaccessible and missing with SIGBUS: every access comes back to the host stub.
    Closed,
    /// Missing only, without SIGBUS: KVM's async page fault path takes a CPL 3 access, and
    /// every fault waits for the host stub to fill the page.
    KvmAsync,
}

/// The region's memory.
#[derive(Debug)]
pub struct DemandRegion {
    gpa: u64,
    pages: u64,
    gate: Gate,
    mapping: MmapRegion,
    uffd: Uffd,
}

impl DemandRegion {
    /// Maps `pages` pages for guest address `gpa`, all missing. The mapping reserves no memory:
    /// a page takes memory only while it is present.
    pub fn new(gpa: u64, pages: u64, gate: Gate) -> Result<Self, RegionError> {
        let bytes = pages as usize * PAGE;
        let mapping = MmapRegionBuilder::new(bytes)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| RegionError::Map { bytes, source })?;
        let missing = match gate {
            Gate::Closed => Missing::Fails,
            Gate::KvmAsync => Missing::Waits,
        };
        let uffd = Uffd::new(missing).map_err(RegionError::Userfaultfd)?;
        uffd.register(mapping.as_ptr() as u64, bytes as u64).map_err(RegionError::Userfaultfd)?;
        let region = Self { gpa, pages, gate, mapping, uffd };
        if gate == Gate::Closed {
            region.protect(0, pages, libc::PROT_NONE).map_err(RegionError::Protect)?;
        }
        Ok(region)
    }

    /// A handle on the region's userfaultfd (to read its faults, or to let them all go on).
    pub fn uffd(&self) -> io::Result<Uffd> {
        self.uffd.try_clone()
    }

    /// The host addresses of the whole region: `(start, bytes)`.
    pub fn host_range(&self) -> (u64, u64) {
        (self.mapping.as_ptr() as u64, self.pages * PAGE as u64)
    }

    /// The page at host address `address`, if it is in the region.
    pub fn page_of_host_address(&self, address: u64) -> Option<PageIndex> {
        let page = address.checked_sub(self.mapping.as_ptr() as u64)? / PAGE as u64;
        (page < self.pages).then_some(page)
    }

    /// Registers the region as memslot `slot`.
    pub fn add_memslot(&self, vm: &VmFd, slot: u32) -> Result<(), kvm_ioctls::Error> {
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: self.gpa,
            memory_size: self.pages * PAGE as u64,
            userspace_addr: self.mapping.as_ptr() as u64,
        };
        // SAFETY: the mapping lives as long as this value, which the VM's owner keeps until
        // after the VM is closed (the pager is dropped after the VM fd).
        unsafe { vm.set_user_memory_region(desc) }
    }

    /// The region's first guest address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The page holding `gpa`, if it is in the region.
    pub fn page_of(&self, gpa: u64) -> Option<PageIndex> {
        page_in(self.gpa, self.pages, gpa)
    }

    /// The `count` pages from the one holding `gpa`, if they all lie in the region.
    pub fn span(&self, gpa: u64, count: u64) -> Option<Range<PageIndex>> {
        span_in(self.gpa, self.pages, gpa, count)
    }

    /// The host address of `page`'s first byte, for system calls on the mapping.
    fn host_address(&self, page: PageIndex) -> *mut u8 {
        assert!(page < self.pages, "page {page} outside the region");
        self.mapping.as_ptr().wrapping_add(page as usize * PAGE)
    }

    fn protect(&self, page: PageIndex, count: u64, prot: libc::c_int) -> io::Result<()> {
        assert!(page + count <= self.pages, "protection change outside the region");
        let addr = self.mapping.as_ptr().wrapping_add(page as usize * PAGE);
        // SAFETY: changes the protection of pages of our own mapping (range checked above);
        // no Rust reference into the mapping exists, and the pager's state decides which
        // pages the guest may see.
        let ret = unsafe { libc::mprotect(addr as *mut libc::c_void, count as usize * PAGE, prot) };
        if ret != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Makes `page` present with `contents`: installs them atomically while the page is still
    /// inaccessible, then opens it to the guest.
    pub fn fill(&self, page: PageIndex, contents: &[u8; PAGE]) -> io::Result<()> {
        match self.uffd.copy(self.host_address(page) as u64, contents) {
            Ok(()) => {}
            // Already filled (a page evicted while inaccessible keeps no memory, so this means
            // a double fill): opening it is still right.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        match self.gate {
            Gate::Closed => self.protect(page, 1, libc::PROT_READ | libc::PROT_WRITE),
            Gate::KvmAsync => Ok(()),
        }
    }

    /// `len` bytes at `offset` in a page the pager's state says is present (so accessing them
    /// does not fault). Volatile: the guest may write them meanwhile.
    fn present(&self, page: PageIndex, offset: usize, len: usize) -> VolatileSlice<'_> {
        assert!(page < self.pages && offset + len <= PAGE, "access outside the page");
        self.mapping.get_slice(page as usize * PAGE + offset, len).expect("inside the mapping (checked above)")
    }

    /// Reads from a page the pager's state says is present.
    pub fn read_present(&self, page: PageIndex, offset: usize, out: &mut [u8]) {
        self.present(page, offset, out.len()).copy_to(out);
    }

    /// Writes into a page the pager's state says is present.
    pub fn write_present(&self, page: PageIndex, offset: usize, data: &[u8]) {
        self.present(page, offset, data.len()).copy_from(data);
    }

    /// Makes a page absent again, so the next access misses: returns its contents when it was
    /// present (for the backing store), then closes it and drops its memory. On failure a page
    /// that was present is opened again (as far as `mprotect` still works), so that it is what
    /// the pager's state, unchanged, says.
    pub fn evict(&mut self, page: PageIndex, was_present: bool) -> io::Result<Option<PageBuf>> {
        let mut saved = None;
        if was_present {
            // Read-only first: a guest store from another vCPU now exits to the host (and waits
            // for the pager's lock) instead of racing with the copy.
            self.protect(page, 1, libc::PROT_READ)?;
            let mut contents: PageBuf = Box::new([0; PAGE]);
            self.present(page, 0, PAGE).copy_to(&mut contents[..]);
            saved = Some(contents);
        }
        let closed = self.protect(page, 1, libc::PROT_NONE).and_then(|()| {
            let addr = self.host_address(page);
            // SAFETY: drops one page of our own private mapping (no Rust reference into it
            // exists); missing pages are tracked by the userfaultfd again afterwards.
            let ret = unsafe { libc::madvise(addr as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
            if ret != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
        if let Err(e) = closed {
            if was_present {
                let _ = self.protect(page, 1, libc::PROT_READ | libc::PROT_WRITE);
            }
            return Err(e);
        }
        if self.gate == Gate::KvmAsync {
            // No gate: missing again, and accessible, so that the next access faults on it.
            self.protect(page, 1, libc::PROT_READ | libc::PROT_WRITE)?;
        }
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::{check, edge_u64};

    #[test]
    fn a_page_and_a_span_are_inside_the_region_or_none() {
        let (gpa, pages) = (4 << 30, 16);
        assert_eq!(page_in(gpa, pages, gpa), Some(0));
        assert_eq!(page_in(gpa, pages, gpa + 16 * 0x1000 - 1), Some(15));
        assert_eq!(page_in(gpa, pages, gpa + 16 * 0x1000), None);
        assert_eq!(page_in(gpa, pages, gpa - 1), None);
        assert_eq!(span_in(gpa, pages, gpa + 0x1000, 15), Some(1..16));
        assert_eq!(span_in(gpa, pages, gpa + 0x1000, 16), None, "one page past the end");
        assert_eq!(span_in(gpa, pages, gpa + 0x1000, u64::MAX), None, "a count that wraps");
        assert_eq!(span_in(gpa, pages, gpa + 0x1000, 0), Some(1..1));
    }

    /// Any region (at any page-aligned address, of any size that fits below 2^64) and any
    /// address and count a guest names: the page and the span are the ones computed here in
    /// 128 bits, where nothing wraps.
    #[test]
    fn pages_and_spans_are_computed_without_wrapping() {
        use proptest::prelude::*;
        let region = (edge_u64(), edge_u64()).prop_map(|(gpa, pages)| {
            let gpa = gpa & !0xFFF;
            // A region that fits below 2^64 (a host's own choice; only the guest's numbers
            // are hostile).
            let room = (u64::MAX - gpa) / PAGE as u64;
            (gpa, if room == 0 { 0 } else { pages % (room + 1) })
        });
        check("region pages", 4000, (region, edge_u64(), edge_u64()), |((region_gpa, pages), gpa, count)| {
            let wide = |x: u64| u128::from(x);
            let expected_page = (wide(region_gpa) <= wide(gpa)
                && wide(gpa) < wide(region_gpa) + wide(pages) * PAGE as u128)
                .then(|| (gpa - region_gpa) / PAGE as u64);
            prop_assert_eq!(page_in(region_gpa, pages, gpa), expected_page);
            let expected_span = expected_page
                .filter(|first| wide(*first) + wide(count) <= wide(pages))
                .map(|first| first..first + count);
            prop_assert_eq!(span_in(region_gpa, pages, gpa, count), expected_span);
            Ok(())
        });
    }
}
