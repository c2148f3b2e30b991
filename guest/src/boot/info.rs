//! The PVH start info, copied and validated before anything else uses it.
//!
//! The host wrote this memory: every address and count is checked, and the kernel keeps its
//! own copies (the command line, the memory map) rather than pointers into host-written data.

use core::sync::atomic::{AtomicBool, Ordering};

use pvagent_abi::pvh::{self, HvmMemmapEntry, HvmStartInfo};

pub use super::cmdline::CMDLINE_MAX;
use super::cmdline::Cmdline;
pub use super::memmap::{MEMMAP_MAX, MemKind, MemRange, MemoryMap};
use super::{BOOT_MAPPED_LIMIT, memmap};
use crate::cell::StaticCell;

/// Entries beyond [`MEMMAP_MAX`] are read only to count the RAM they hold, up to this many (a
/// host that claims more is not believed).
const MEMMAP_SCAN_MAX: u64 = 256;
/// Bytes of an ACPI 2.0 RSDP, all of which the ACPI parser reads.
const RSDP_SIZE: u64 = 36;

/// What the host told the kernel at boot.
#[derive(Debug)]
pub struct BootInfo {
    /// The command line, split into words (once, here).
    pub cmdline: Cmdline,
    /// The memory map, checked (see `memmap`): sorted, disjoint, within the identity map's
    /// reach; what was dropped or cut is in its `dropped`, reported at boot in one line.
    pub memmap: MemoryMap,
    /// The ACPI RSDP, when the host gave one within the identity map's reach.
    pub rsdp: Option<u64>,
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

/// Where the boot information lives: filled in place by [`init`], never moved (it is about
/// 3 KiB, and on an emulated guest kernel every move is hundreds of string iterations).
static STORAGE: StaticCell<BootInfo> = StaticCell::new(BootInfo::new());
/// Set once [`init`] has filled [`STORAGE`]: from then on it is only read.
static BOOT: spin::Once<&'static BootInfo> = spin::Once::new();
/// Taken by the one call of [`init`] that may write [`STORAGE`].
static WRITER: AtomicBool = AtomicBool::new(false);

impl BootInfo {
    /// Nothing known yet (all zero: it costs the image nothing, `.bss`).
    const fn new() -> Self {
        Self { cmdline: Cmdline::new(), memmap: MemoryMap::new(), rsdp: None, warnings: heapless::Vec::new() }
    }
}

/// Parses the start info at `addr` once and keeps the result for [`get`]. Every address in it
/// must end at or below `reach`, the identity map's reach (a power of two: what the CPU's
/// physical addresses and the kernel's page tables can both address).
///
/// # Panics
///
/// When called a second time.
pub fn init(addr: u64, reach: u64) -> Result<&'static BootInfo, BootInfoError> {
    assert!(!WRITER.swap(true, Ordering::Relaxed), "boot::info::init() called twice");
    // SAFETY: only this call gets here (`WRITER`), and nothing reads `STORAGE` before `BOOT`
    // holds it, which is after this reference is gone.
    let info = unsafe { &mut *STORAGE.get() };
    parse_into(info, addr, reach)?;
    Ok(*BOOT.call_once(|| info))
}

/// The boot information (after [`init`]).
pub fn get() -> &'static BootInfo {
    BOOT.get().expect("boot::info::get() before boot::info::init()")
}

/// Copies the start info at `addr` into `info`, checking everything it points at against the
/// boot mapping and every range it describes against `reach`.
fn parse_into(info: &mut BootInfo, addr: u64, reach: u64) -> Result<(), BootInfoError> {
    let size = core::mem::size_of::<HvmStartInfo>() as u64;
    if !in_boot_mapping(addr, size) {
        return Err(BootInfoError::NotMapped(addr));
    }
    // SAFETY: checked against the boot mapping just above.
    let start: HvmStartInfo = unsafe { read_phys(addr) };
    if start.magic != pvh::START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic(start.magic));
    }
    let rsdp_in_reach = start.rsdp_paddr.checked_add(RSDP_SIZE).is_some_and(|end| end <= reach);
    info.rsdp = (start.rsdp_paddr != 0 && rsdp_in_reach).then_some(start.rsdp_paddr);
    info.warnings.clear();
    if start.rsdp_paddr != 0 && !rsdp_in_reach {
        let _ = info.warnings.push("the ACPI RSDP lies beyond the identity map's reach; ACPI not used");
    }

    if start.cmdline_paddr != 0 {
        // Read up to the NUL, as far as the boot mapping goes; kept as printable ASCII (it is
        // printed at boot).
        let readable = BOOT_MAPPED_LIMIT.saturating_sub(start.cmdline_paddr);
        let (mut read, mut outside) = (0, false);
        let bytes = core::iter::from_fn(|| {
            if read >= readable {
                outside = true;
                return None;
            }
            // SAFETY: nonzero, and below the boot mapping's limit (`readable`).
            let byte: u8 = unsafe { read_phys(start.cmdline_paddr + read) };
            read += 1;
            (byte != 0).then_some(byte)
        });
        let complete = info.cmdline.fill(bytes);
        if outside {
            let _ = info.warnings.push("command line runs outside the boot mapping; truncated");
        }
        if !complete {
            let _ = info.warnings.push("command line longer than 512 bytes; truncated");
        }
    } else {
        info.cmdline.fill([]);
    }

    let mut map = memmap::Builder::new(&mut info.memmap, reach);
    if start.version >= pvh::START_INFO_VERSION_MEMMAP {
        let entry_size = core::mem::size_of::<HvmMemmapEntry>() as u64;
        let count = u64::from(start.memmap_entries);
        for i in 0..count.min(MEMMAP_SCAN_MAX) {
            let at = start.memmap_paddr.saturating_add(i * entry_size);
            if !in_boot_mapping(at, entry_size) {
                let _ = info.warnings.push("memory map runs outside the boot mapping; truncated");
                break;
            }
            // SAFETY: checked against the boot mapping just above.
            let e: HvmMemmapEntry = unsafe { read_phys(at) };
            map.add(e.addr, e.size, MemKind::from_pvh(e.type_));
        }
        if count > MEMMAP_SCAN_MAX {
            let _ = info.warnings.push("memory map has more than 256 entries; the rest is not read");
        }
    } else {
        let _ = info.warnings.push("start info has no memory map (version 0)");
    }
    if !map.has_ram() {
        let _ = info.warnings.push("no usable RAM in the memory map; assuming 32 MiB");
        map.add(0, 32 << 20, MemKind::Ram);
    }
    map.finish();
    Ok(())
}
