//! The pvagent guest kernel.
//!
//! Layers, bottom to top: `cell` (the two doors to shared statics), `boot` and `arch`
//! (hardware, no protocol knowledge), `task` (the scheduler), `pv` (the paravirtual protocols),
//! `selftest`; `start` is the boot sequence the kernel binaries share (the product kernel,
//! `main.rs`, and the benchmark kernel, `bench/`, whose code lives only in that binary). Modules
//! whose logic is plain code (the memory layout, the scheduler's bookkeeping, the command line,
//! the protocol state machines) build for the host too and are unit-tested there; everything
//! that touches hardware is `cfg(kernel)`.

#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod boot;
pub mod cell;
pub mod pv;
pub mod task;

#[cfg(kernel)]
pub mod console;
#[cfg(kernel)]
pub mod selftest;
#[cfg(kernel)]
pub mod start;
#[cfg(any(kernel, test))]
pub mod sync;

/// The kernel's version, printed at boot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(kernel)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => arch::fault::fatal(format_args!("panicked at {}:{}: {}", at.file(), at.line(), info.message())),
        None => arch::fault::fatal(format_args!("panicked: {}", info.message())),
    }
}
