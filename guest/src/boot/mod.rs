//! Boot: the PVH entry, the boot information the host hands over, and the command line.

pub mod cmdline;
#[cfg(kernel)]
pub mod entry;
#[cfg(kernel)]
pub mod info;
pub mod memmap;

/// How much the boot page tables (`entry`) map, identity, from address 0: the first GiB, in
/// 2 MiB pages. The start info and what it points at must lie below it, and so must the
/// kernel's own page tables, which are built while the boot tables are active.
pub const BOOT_MAPPED_LIMIT: u64 = 1 << 30;
