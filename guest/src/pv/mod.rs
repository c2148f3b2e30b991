//! The paravirtual protocols, one module each. Each registers its own vectors and hooks with
//! `arch` and `task` in its `init`, which the boot sequence (`start.rs`) calls once the
//! scheduler is up.

pub mod ac;
pub mod breach;
pub mod deadline;
#[cfg(kernel)]
pub mod halt;
#[cfg(test)]
mod host_values;
#[cfg(test)]
mod interleavings;
pub mod kvm_apf;
pub mod pnp;
pub mod tokens;
#[cfg(kernel)]
pub mod trace;
pub mod ve;
#[cfg(kernel)]
pub mod wait;

/// Brings up every protocol the host offers (each decides from CPUID and the command line). The
/// boot told the host stub this guest's ABI version first thing (`arch::announce_abi_version`).
#[cfg(kernel)]
pub fn init(cmdline: &crate::boot::cmdline::Cmdline) {
    ac::init(cmdline);
    pnp::init(cmdline);
    ve::init();
    kvm_apf::init();
    trace::init();
    deadline::init();
}

/// Brings up every protocol on an AP as [`init`] did on the boot vCPU (which ran first): each
/// vCPU registers its own areas with the host (every area is per vCPU: docs/abi.md) and sets its
/// own split-lock state. Handlers and hooks are the boot vCPU's, shared by every vCPU.
#[cfg(kernel)]
pub fn init_cpu() {
    ac::init_cpu();
    pnp::init_cpu();
    ve::init_cpu();
    kvm_apf::init_cpu();
}
