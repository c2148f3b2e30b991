//! The paravirtual protocols, one module each. Each registers its own vectors and hooks with
//! `arch` and `task` in its `init`, which `main.rs` calls once the scheduler is up.

/// Brings up every protocol the host offers (each decides from CPUID and the command line).
#[cfg(kernel)]
pub fn init(_cmdline: &crate::boot::cmdline::Cmdline<'_>) {}
