//! pvagent's host stub: a small VMM on `kvm-ioctls` that boots the pvagent guest (PVH entry),
//! gives it a console, an exit port and hypercalls, and produces the events whose handling the
//! guest's self-tests prove.
//!
//! Use: `Vm::new(config, producers)?.run()` returns a [`RunResult`]. The binary (`main.rs`) is
//! a thin command line around that.

pub mod acpi;
pub mod bench;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod guest_insn;
pub mod handler;
mod kvm_run;
pub mod kvm_stats;
pub mod loader;
pub mod memory;
pub mod producers;
pub mod report;
pub mod results;
pub mod test_images;
pub mod trace;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

pub use config::{Config, SerialSink};
pub use error::{Error, Result};
pub use handler::{ExitHandler, Report};
pub use report::{ListedTest, RunResult, TestOutcome};
pub use vm::Vm;
