//! Loading the guest: checking the ELF, placing its segments with `linux-loader` (which also
//! finds the PVH entry note), and writing the PVH boot information.

use std::path::Path;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use pvagent_abi::pvh::{self, HvmMemmapEntry, HvmStartInfo};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::acpi;
use crate::error::{BootInfoPart, Error, ImageProblem, Result};
use crate::memory::{self, CMDLINE_GPA, IMAGE_MIN_GPA, LOW_RAM_END, MEMMAP_GPA, START_INFO_GPA};

/// What loading produced.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    /// The 32-bit PVH entry point.
    pub entry: u64,
    /// Lowest and highest (exclusive) guest-physical address the image occupies.
    pub image: (u64, u64),
}

/// A loadable segment (`PT_LOAD`): where it goes, the bytes the file holds for it, and the
/// bytes it occupies in memory (the rest, `memsz - filesz`, is zero: the ELF rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// The loadable segments of an ELF64 x86-64 image, checked before anything is written.
fn load_segments(path: &Path, bytes: &[u8]) -> Result<Vec<Segment>> {
    let bad = |problem: ImageProblem| Error::BadImage { path: path.to_path_buf(), problem };
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(bad(ImageProblem::NoElfMagic));
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(bad(ImageProblem::NotElf64LittleEndian));
    }
    if u16_at(18) != Some(62) {
        return Err(bad(ImageProblem::NotX86_64));
    }
    let phoff = u64_at(32).ok_or_else(|| bad(ImageProblem::TruncatedHeader))? as usize;
    let phentsize = u16_at(54).ok_or_else(|| bad(ImageProblem::TruncatedHeader))? as usize;
    let phnum = u16_at(56).ok_or_else(|| bad(ImageProblem::TruncatedHeader))? as usize;
    if phentsize < 56 {
        return Err(bad(ImageProblem::ProgramHeaderTooSmall));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or_else(|| bad(ImageProblem::ProgramHeaderOffsetOverflows))?;
        let p_type = u32_at(at).ok_or_else(|| bad(ImageProblem::ProgramHeadersPastEnd))?;
        if p_type != 1 {
            continue; // not PT_LOAD
        }
        let field = |offset: usize| u64_at(at + offset).ok_or_else(|| bad(ImageProblem::TruncatedProgramHeader));
        let (paddr, filesz, memsz) = (field(24)?, field(32)?, field(40)?);
        paddr.checked_add(memsz).ok_or_else(|| bad(ImageProblem::SegmentEndOverflows))?;
        if filesz > memsz {
            return Err(bad(ImageProblem::FileSizeAboveMemorySize));
        }
        segments.push(Segment { paddr, filesz, memsz });
    }
    Ok(segments)
}

/// The extent of an image's loadable segments.
fn image_extent(path: &Path, bytes: &[u8]) -> Result<(u64, u64)> {
    let bad = |problem: ImageProblem| Error::BadImage { path: path.to_path_buf(), problem };
    let segments = load_segments(path, bytes)?;
    let low = segments.iter().map(|s| s.paddr).min().ok_or_else(|| bad(ImageProblem::NoLoadableSegment))?;
    // Checked by `load_segments`: no segment's end overflows.
    let high = segments.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(low);
    if low < IMAGE_MIN_GPA {
        return Err(bad(ImageProblem::SegmentBelowImageMin));
    }
    Ok((low, high))
}

/// Largest guest image file read: far above any kernel (the debug guest with its symbols is a
/// few MiB), far below the host's memory. A bigger file is refused before a byte is read.
pub const MAX_IMAGE_FILE: u64 = 1 << 30;

/// A guest image read once and checked: what [`load`] places in guest memory.
#[derive(Clone, Debug)]
pub struct Image {
    bytes: Vec<u8>,
    /// Lowest and highest (exclusive) guest-physical address its segments occupy.
    pub extent: (u64, u64),
}

/// Reads the image at `path` (a regular file of at most [`MAX_IMAGE_FILE`] bytes: a FIFO, a
/// device or a directory is refused by kind, `files::read_input`) and checks that it fits in
/// `mem_size` bytes of guest memory.
pub fn read_image(path: &Path, mem_size: u64) -> Result<Image> {
    let bytes = crate::files::read_input(path, MAX_IMAGE_FILE)
        .map_err(|source| Error::ReadImage { path: path.to_path_buf(), source })?;
    let extent = image_extent(path, &bytes)?;
    if extent.1 > mem_size {
        return Err(Error::ImageTooBig { path: path.to_path_buf(), end: extent.1, mem: mem_size });
    }
    Ok(Image { bytes, extent })
}

/// Reads and checks the image at `path` ([`read_image`]); returns the range it occupies.
pub fn check_image(path: &Path, mem_size: u64) -> Result<(u64, u64)> {
    read_image(path, mem_size).map(|image| image.extent)
}

/// Loads `image` (read from `path`, [`read_image`]) into `mem` and writes the boot information,
/// with `extra_memmap` added to the memory map and `vcpus` processors in the MADT; returns the
/// entry point. The file is not read again: what was checked is what is loaded.
pub fn load(
    path: &Path,
    image: &Image,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    extra_memmap: &[HvmMemmapEntry],
    vcpus: usize,
) -> Result<Loaded> {
    let segments = load_segments(path, &image.bytes)?;
    let mut file = std::io::Cursor::new(image.bytes.as_slice());
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(IMAGE_MIN_GPA)))
        .map_err(|source| Error::LoadImage { path: path.to_path_buf(), source })?;
    zero_fill(mem, &segments).map_err(|source| Error::ZeroFillImage { path: path.to_path_buf(), source })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => return Err(Error::NoPvhEntry { path: path.to_path_buf() }),
    };
    write_boot_info(mem, mem_size, cmdline, extra_memmap, vcpus)?;
    Ok(Loaded { entry, image: image.extent })
}

/// Writes zeros over each segment's bytes beyond its file contents (`[filesz, memsz)`: the
/// guest's `.bss`). ELF says they are zero, and the guest relies on it (it does not clear them
/// itself: `guest/src/boot/entry.rs`). `linux-loader` copies only the file's bytes, so this
/// does not rely on the memory being fresh.
fn zero_fill(mem: &GuestMemoryMmap, segments: &[Segment]) -> std::result::Result<(), vm_memory::GuestMemoryError> {
    for s in segments.iter().filter(|s| s.memsz > s.filesz) {
        let zeros = vec![0u8; (s.memsz - s.filesz) as usize];
        mem.write_slice(&zeros, GuestAddress(s.paddr + s.filesz))?;
    }
    Ok(())
}

/// The memory map the guest is told about.
pub fn memory_map(mem_size: u64) -> Vec<HvmMemmapEntry> {
    vec![
        HvmMemmapEntry { addr: 0, size: LOW_RAM_END, type_: pvh::MEMMAP_TYPE_RAM, reserved: 0 },
        HvmMemmapEntry { addr: acpi::TABLES_GPA, size: acpi::TABLES_SIZE, type_: pvh::MEMMAP_TYPE_ACPI, reserved: 0 },
        HvmMemmapEntry {
            addr: IMAGE_MIN_GPA,
            size: mem_size - IMAGE_MIN_GPA,
            type_: pvh::MEMMAP_TYPE_RAM,
            reserved: 0,
        },
    ]
}

/// The guest RAM the memory map lists (its type 1 entries): where the guest may put what it
/// shares with the host (the page-not-present ring and event area). The legacy hole
/// `[0xA0000, 1 MiB)` is not RAM, though memory backs it.
pub fn ram_ranges(mem_size: u64) -> Vec<std::ops::Range<u64>> {
    memory_map(mem_size).iter().filter(|e| e.type_ == pvh::MEMMAP_TYPE_RAM).map(|e| e.addr..e.addr + e.size).collect()
}

/// Most memory-map entries the host stub writes (they must fit before the command line).
pub const MEMMAP_MAX: usize = ((CMDLINE_GPA - MEMMAP_GPA) / std::mem::size_of::<HvmMemmapEntry>() as u64) as usize;

fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    extra: &[HvmMemmapEntry],
    vcpus: usize,
) -> Result<()> {
    let fail = |part: BootInfoPart| move |source| Error::WriteBootInfo { part, source };
    let mut map = memory_map(mem_size);
    map.extend_from_slice(extra);
    if map.len() > MEMMAP_MAX {
        return Err(Error::MemoryMapTooLong { entries: map.len(), max: MEMMAP_MAX });
    }
    for (i, entry) in map.iter().enumerate() {
        let at = MEMMAP_GPA + (i * std::mem::size_of::<HvmMemmapEntry>()) as u64;
        memory::write_plain(mem, at, *entry).map_err(fail(BootInfoPart::MemoryMap))?;
    }
    let apic_ids: Vec<u8> = (0..vcpus).map(|i| u8::try_from(crate::vcpu::apic_id(i)).unwrap_or(u8::MAX)).collect();
    let tables = acpi::build(&apic_ids)?;
    mem.write_slice(&tables, GuestAddress(acpi::TABLES_GPA)).map_err(fail(BootInfoPart::AcpiTables))?;
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_GPA)).map_err(fail(BootInfoPart::CommandLine))?;
    let start = HvmStartInfo {
        magic: pvh::START_INFO_MAGIC,
        version: pvh::START_INFO_VERSION_MEMMAP,
        cmdline_paddr: CMDLINE_GPA,
        memmap_paddr: MEMMAP_GPA,
        memmap_entries: map.len() as u32,
        rsdp_paddr: acpi::TABLES_GPA,
        ..HvmStartInfo::default()
    };
    memory::write_plain(mem, START_INFO_GPA, start).map_err(fail(BootInfoPart::StartInfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with_segment(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        b[64 + 24..64 + 32].copy_from_slice(&paddr.to_le_bytes());
        b[64 + 40..64 + 48].copy_from_slice(&memsz.to_le_bytes());
        b
    }

    #[test]
    fn extent_covers_the_loadable_segments() {
        let p = Path::new("x");
        assert_eq!(image_extent(p, &elf_with_segment(0x10_0000, 0x2000)).unwrap(), (0x10_0000, 0x10_2000));
    }

    #[test]
    fn broken_images_get_a_reason() {
        let p = Path::new("x");
        let problem = |bytes: &[u8]| match image_extent(p, bytes) {
            Err(Error::BadImage { problem, .. }) => problem,
            other => panic!("expected BadImage, got {other:?}"),
        };
        assert_eq!(problem(b"hello"), ImageProblem::NoElfMagic);
        let mut not_x86 = elf_with_segment(0x10_0000, 1);
        not_x86[18] = 183; // aarch64
        assert_eq!(problem(&not_x86), ImageProblem::NotX86_64);
        assert_eq!(problem(&elf_with_segment(0x1000, 1)), ImageProblem::SegmentBelowImageMin);
        let truncated = &elf_with_segment(0x10_0000, 1)[..66];
        assert_eq!(problem(truncated), ImageProblem::ProgramHeadersPastEnd);
        assert_eq!(problem(&elf_with_segment(u64::MAX - 1, 5)), ImageProblem::SegmentEndOverflows);
    }

    #[test]
    fn bytes_beyond_a_segments_file_contents_are_zero_whatever_the_memory_held() {
        let code = [0xF4u8; 16]; // hlt
        let image = crate::test_images::tiny_pvh_image(&code, true, 3 * 4096 + 5);
        let path = std::env::temp_dir().join(format!("pvagent-loader-test-{}.elf", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let mem_size = 4 << 20;
        let mem = crate::memory::allocate_ram(mem_size).unwrap();
        // Memory that is not fresh: what was there before must not show through the `.bss`.
        mem.write_slice(&vec![0xAA; 1 << 20], GuestAddress(crate::test_images::TINY_LOAD)).unwrap();
        let image = read_image(&path, mem_size).unwrap();
        let loaded = load(&path, &image, &mem, mem_size, "", &[], 1);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().image, (0x10_0000, 0x10_0000 + 16 + 3 * 4096 + 5));
        let mut bytes = vec![0u8; 3 * 4096 + 5 + 1];
        mem.read_slice(&mut bytes, GuestAddress(0x10_0000 + 16)).unwrap();
        assert!(bytes[..3 * 4096 + 5].iter().all(|b| *b == 0), "memsz beyond filesz zeroed");
        assert_eq!(bytes[3 * 4096 + 5], 0xAA, "nothing beyond memsz written");
        let mut code_back = [0u8; 16];
        mem.read_slice(&mut code_back, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(code_back, code);
    }

    #[test]
    fn a_segment_with_more_file_than_memory_is_refused() {
        let mut image = crate::test_images::tiny_pvh_image(&[0xF4; 16], true, 0);
        // The first program header's p_memsz (at 64 + 40): one byte less than its p_filesz.
        image[64 + 40..64 + 48].copy_from_slice(&15u64.to_le_bytes());
        match image_extent(Path::new("x"), &image) {
            Err(Error::BadImage { problem, .. }) => assert_eq!(problem, ImageProblem::FileSizeAboveMemorySize),
            other => panic!("expected BadImage, got {other:?}"),
        }
    }

    #[test]
    fn the_memory_map_skips_the_legacy_hole() {
        let map = memory_map(64 << 20);
        assert_eq!(map[0].addr + map[0].size, LOW_RAM_END);
        assert_eq!(map[1].type_, pvh::MEMMAP_TYPE_ACPI);
        assert_eq!(map[2].addr, IMAGE_MIN_GPA);
        assert_eq!(map[2].addr + map[2].size, 64 << 20);
        assert_eq!(ram_ranges(64 << 20), vec![0..LOW_RAM_END, IMAGE_MIN_GPA..64 << 20]);
    }
}
