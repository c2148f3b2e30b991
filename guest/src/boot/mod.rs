//! Boot: the PVH entry, the boot information the host hands over, and the command line.

pub mod cmdline;
#[cfg(kernel)]
pub mod entry;
#[cfg(kernel)]
pub mod info;
