//! pvagent's host stub: a small VMM on `kvm-ioctls` that boots the pvagent guest (PVH entry),
//! gives it a console, an exit port and hypercalls, and produces the events whose handling the
//! guest's self-tests prove.
//!
//! Use: `Vm::new(config, producers)?.run()` returns a [`RunResult`]: the guest's verdict, each
//! self-test's outcome, the console and the host's counters. The binary (`main.rs`) is a thin
//! command line around that; `examples/` has two programs that use the library alone.
//!
//! ```no_run
//! use pvagent_host::{Config, Producers, SerialSink, Vm};
//!
//! fn main() -> Result<(), pvagent_host::Error> {
//!     let mut config = Config::new("target/x86_64-unknown-none/debug/pvagent-guest");
//!     config.cmdline = "tests=arch".into();
//!     config.serial = SerialSink::Quiet;
//!     let result = Vm::new(config, Producers::defaults().build()?)?.run();
//!     for test in &result.tests {
//!         println!("{:?} {} {}", test.status, test.name, test.reason);
//!     }
//!     assert!(result.passed(), "{:?}", result.host_error);
//!     Ok(())
//! }
//! ```
//!
//! An event producer is an [`ExitHandler`] added to the list given to [`Vm::new`]: the run
//! loop offers each exit to the built-in devices first (the console, the exit port, the
//! basics, the trace port), then to the producers in list order, until one claims it. Every
//! type a producer's hooks see is exported here, with the crates they come from
//! ([`kvm_ioctls`], [`kvm_bindings`], [`vm_memory`], and the wire contract as [`abi`]), so a
//! user needs no dependency but this one.

pub mod acpi;
pub mod bench;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod files;
pub mod guest_insn;
pub mod handler;
mod kvm_run;
pub mod kvm_stats;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod memory_fault;
pub mod producers;
#[cfg(test)]
mod props;
pub mod report;
pub mod results;
pub mod test_images;
pub mod trace;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

pub use config::{Config, SerialSink};
pub use cpuid::CpuidTable;
pub use error::{Error, Result};
pub use handler::{
    AfterExit, AttachCtx, EntryPending, ExitHandler, Handled, HypercallAnswer, HypercallResult, MsrAnswer,
    PageEventInjection, PageEventInjector, Report, Stop, VcpuCtx,
};
pub use memory_fault::MemoryFault;
pub use producers::Producers;
pub use report::{ListedTest, RunResult, TestOutcome};
pub use trace::{Arg, Tracer, Track};
pub use vm::Vm;

/// KVM's structures (`kvm_debug_exit_arch` in [`ExitHandler::debug`], capabilities, events).
pub use kvm_bindings;
/// The KVM objects a handler is handed (`VcpuFd`, `VmFd`, `Kvm` in [`VcpuCtx`], [`AttachCtx`]).
pub use kvm_ioctls;
/// The guest<->host wire contract (`pvagent-abi`): hypercall numbers and statuses, ports,
/// MSRs, the self-test report format, each protocol's layouts.
pub use pvagent_abi as abi;
/// Guest memory ([`VcpuCtx::mem`], [`AttachCtx::ram`]): read and write it with `Bytes`.
pub use vm_memory;
