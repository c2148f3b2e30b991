//! The PVH start info, copied and validated before anything else uses it.
//!
//! The host wrote this memory: every address and count is checked, and the kernel keeps its
//! own copies (the command line, the memory map) rather than pointers into host-written data.

use pvagent_abi::pvh::{self, HvmMemmapEntry, HvmStartInfo};

/// The boot page tables map the first GiB; the start info and what it points at must be there.
const BOOT_MAPPED_LIMIT: u64 = 1 << 30;
/// Entries beyond [`MEMMAP_MAX`] are read only to count the RAM they hold, up to this many (a
/// host that claims more is not believed).
const MEMMAP_SCAN_MAX: u64 = 256;
/// Longest command line kept.
pub const CMDLINE_MAX: usize = 512;
/// Most memory map entries kept.
pub const MEMMAP_MAX: usize = 32;

/// The type of a memory map range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Ram,
    Reserved,
    Acpi,
    Other(u32),
}

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    pub start: u64,
    pub end: u64,
    pub kind: MemKind,
}

/// What the host told the kernel at boot.
#[derive(Debug)]
pub struct BootInfo {
    pub cmdline: heapless::String<CMDLINE_MAX>,
    pub memmap: heapless::Vec<MemRange, MEMMAP_MAX>,
    pub rsdp: Option<u64>,
    /// RAM in memory map entries beyond the [`MEMMAP_MAX`] kept: the kernel does not use it.
    pub ram_ignored: u64,
    /// Problems found in the start info (reported, then worked around).
    pub warnings: heapless::Vec<&'static str, 8>,
}

/// Why the start info could not be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    NotMapped(u64),
    BadMagic(u32),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::NotMapped(addr) => {
                write!(f, "start info at {addr:#x} is outside the boot mapping")
            }
            BootInfoError::BadMagic(magic) => {
                write!(f, "start info magic {magic:#x}, expected {:#x}", pvh::START_INFO_MAGIC)
            }
        }
    }
}

fn in_boot_mapping(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= BOOT_MAPPED_LIMIT)
}

/// Reads a `T` from physical memory.
///
/// # Safety
///
/// `[addr, addr + size_of::<T>())` must be mapped (checked by the callers against the boot
/// mapping).
unsafe fn read_phys<T: pvagent_abi::Plain>(addr: u64) -> T {
    // SAFETY: mapped per the caller; `Plain` types accept any bytes; unaligned is allowed.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

static BOOT: spin::Once<BootInfo> = spin::Once::new();

/// Parses the start info at `addr` once and keeps the result for [`get`].
pub fn init(addr: u64) -> Result<&'static BootInfo, BootInfoError> {
    let info = parse(addr)?;
    Ok(BOOT.call_once(|| info))
}

/// The boot information (after [`init`]).
pub fn get() -> &'static BootInfo {
    BOOT.get().expect("boot::info::get() before boot::info::init()")
}

/// Copies the start info at `addr`, checking everything it points at.
pub fn parse(addr: u64) -> Result<BootInfo, BootInfoError> {
    let size = core::mem::size_of::<HvmStartInfo>() as u64;
    if !in_boot_mapping(addr, size) {
        return Err(BootInfoError::NotMapped(addr));
    }
    // SAFETY: checked against the boot mapping just above.
    let start: HvmStartInfo = unsafe { read_phys(addr) };
    if start.magic != pvh::START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic(start.magic));
    }
    let mut info = BootInfo {
        cmdline: heapless::String::new(),
        memmap: heapless::Vec::new(),
        rsdp: (start.rsdp_paddr != 0).then_some(start.rsdp_paddr),
        ram_ignored: 0,
        warnings: heapless::Vec::new(),
    };

    if start.cmdline_paddr != 0 {
        for i in 0..CMDLINE_MAX as u64 {
            if !in_boot_mapping(start.cmdline_paddr + i, 1) {
                let _ = info.warnings.push("command line runs outside the boot mapping; truncated");
                break;
            }
            // SAFETY: checked against the boot mapping just above.
            let byte: u8 = unsafe { read_phys(start.cmdline_paddr + i) };
            if byte == 0 {
                break;
            }
            let ch = if byte.is_ascii_graphic() || byte == b' ' { byte as char } else { '?' };
            if info.cmdline.push(ch).is_err() {
                let _ = info.warnings.push("command line longer than 512 bytes; truncated");
                break;
            }
        }
    }

    if start.version >= pvh::START_INFO_VERSION_MEMMAP {
        let entry_size = core::mem::size_of::<HvmMemmapEntry>() as u64;
        let count = u64::from(start.memmap_entries);
        if count > MEMMAP_MAX as u64 {
            let _ = info.warnings.push("memory map has more than 32 entries; the rest is ignored");
        }
        for i in 0..count.min(MEMMAP_SCAN_MAX) {
            let at = start.memmap_paddr + i * entry_size;
            if !in_boot_mapping(at, entry_size) {
                let _ = info.warnings.push("memory map runs outside the boot mapping; truncated");
                break;
            }
            // SAFETY: checked against the boot mapping just above.
            let e: HvmMemmapEntry = unsafe { read_phys(at) };
            let Some(end) = e.addr.checked_add(e.size) else {
                let _ = info.warnings.push("memory map entry wraps around; ignored");
                continue;
            };
            let kind = match e.type_ {
                pvh::MEMMAP_TYPE_RAM => MemKind::Ram,
                pvh::MEMMAP_TYPE_RESERVED => MemKind::Reserved,
                pvh::MEMMAP_TYPE_ACPI => MemKind::Acpi,
                other => MemKind::Other(other),
            };
            if info.memmap.push(MemRange { start: e.addr, end, kind }).is_err() && kind == MemKind::Ram {
                info.ram_ignored += e.size;
            }
        }
    } else {
        let _ = info.warnings.push("start info has no memory map (version 0)");
    }
    if !info.memmap.iter().any(|r| r.kind == MemKind::Ram) {
        let _ = info.warnings.push("no RAM in the memory map; assuming 32 MiB");
        let _ = info.memmap.push(MemRange { start: 0, end: 32 << 20, kind: MemKind::Ram });
    }
    Ok(info)
}
