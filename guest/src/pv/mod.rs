//! The paravirtual protocols, one module each. Each registers its own vectors and hooks with
//! `arch` and `task` in its `init`, which the boot sequence (`start.rs`) calls once the
//! scheduler is up.

pub mod ac;
#[cfg(kernel)]
pub mod halt;
pub mod kvm_apf;
pub mod pnp;
pub mod tokens;
#[cfg(kernel)]
pub mod trace;
#[cfg(kernel)]
pub mod wait;

/// Brings up every protocol the host offers (each decides from CPUID and the command line),
/// after telling the host stub this guest's ABI version.
#[cfg(kernel)]
pub fn init(cmdline: &crate::boot::cmdline::Cmdline<'_>) {
    announce_abi_version();
    ac::init(cmdline);
    pnp::init(cmdline);
    kvm_apf::init();
    trace::init();
}

/// Tells a host stub of this guest's ABI major which version the guest speaks
/// (`pvagent_abi::version`), before any other of its interfaces is used. A host stub of
/// another major was recognised as such by `arch::cpu` and is told nothing.
#[cfg(kernel)]
fn announce_abi_version() {
    use pvagent_abi::{ABI_VERSION, version::MSR_GUEST_VERSION};
    if !crate::arch::platform().hypervisor.is_host_stub() {
        return;
    }
    if let Err(fault) = crate::arch::fault::probe_write_msr(MSR_GUEST_VERSION, u64::from(ABI_VERSION.to_raw())) {
        crate::kprintln!("boot: warning: the host stub refused this guest's ABI version {ABI_VERSION}: {fault}");
    }
}
