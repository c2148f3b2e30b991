//! The PVH boot ABI (Xen's `arch/x86/include/public/hvm/start_info.h`), the one entry path the
//! guest has on both hosts.
//!
//! The image carries an ELF note (name `"Xen"`, type [`XEN_ELFNOTE_PHYS32_ENTRY`], a 32-bit
//! physical entry address). The host loads the image at its physical addresses and starts the
//! vCPU at that entry in 32-bit protected mode with paging off: CS a flat 32-bit code segment,
//! DS/ES/SS flat data segments, CR0.PE=1, CR0.PG=0, CR4=0, EFER=0, and EBX the physical address
//! of an [`HvmStartInfo`].

use crate::Plain;

/// Type of the ELF note that holds the 32-bit physical entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// [`HvmStartInfo::magic`]: "xEn3" with the top bit of the first byte flipped.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The start info version that has the memory map fields.
pub const START_INFO_VERSION_MEMMAP: u32 = 1;

/// The boot information the host hands the guest. 56 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HvmStartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// 0, or [`START_INFO_VERSION_MEMMAP`] when `memmap_*` are valid.
    pub version: u32,
    /// Flags (unused by pvagent).
    pub flags: u32,
    /// Number of modules (unused by pvagent).
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP, or 0 when there are no ACPI tables.
    pub rsdp_paddr: u64,
    /// Physical address of an array of [`HvmMemmapEntry`].
    pub memmap_paddr: u64,
    /// Number of entries at `memmap_paddr`.
    pub memmap_entries: u32,
    /// Must be 0.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_entries) == 48);

// SAFETY: only integers, and the size assert shows there is no padding.
unsafe impl Plain for HvmStartInfo {}

/// One entry of the PVH memory map (E820 types). 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HvmMemmapEntry {
    /// First physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// One of the `MEMMAP_TYPE_*` values.
    pub type_: u32,
    /// Must be 0.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<HvmMemmapEntry>() == 24);
const _: () = assert!(core::mem::offset_of!(HvmMemmapEntry, type_) == 16);

// SAFETY: only integers, and the size assert shows there is no padding.
unsafe impl Plain for HvmMemmapEntry {}

/// Usable RAM.
pub const MEMMAP_TYPE_RAM: u32 = 1;
/// Reserved (firmware, MMIO holes).
pub const MEMMAP_TYPE_RESERVED: u32 = 2;
/// ACPI tables, reclaimable after they were read.
pub const MEMMAP_TYPE_ACPI: u32 = 3;

/// The page the guest copies its real-mode AP trampoline to and points its SIPIs at (vector
/// `0x08`, its page number): conventional RAM below 1 MiB that the host keeps free of boot
/// information and lists as RAM, as QEMU's low RAM is (`docs/abi.md`, several vCPUs).
pub const AP_TRAMPOLINE_GPA: u64 = 0x8000;
const _: () = assert!(AP_TRAMPOLINE_GPA.is_multiple_of(0x1000) && AP_TRAMPOLINE_GPA >> 12 <= 0xFF);
