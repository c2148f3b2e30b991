//! Tasks: kernel tasks and CPL 3 tasks with their own stacks, a cooperative per-vCPU
//! scheduler, and blocking with wake-ups from interrupt handlers and from other vCPUs
//! (`remote`, which also places tasks on a chosen vCPU).
//!
//! `table` is the plain state machine (task slots, states, run queue, block/wake), built and
//! unit-tested on the host; `kernel` is the glue that gives it stacks, contexts and the switch
//! (`switch`), and the calls the rest of the kernel uses. The layers above (`pv`) block tasks
//! and end them for their own reasons; `task` carries those reasons without interpreting them
//! ([`table::Wait::Key`], [`table::KillReason`]).

#[cfg(kernel)]
pub mod event;
#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub mod remote;
#[cfg(kernel)]
pub mod stack;
#[cfg(kernel)]
pub mod switch;
pub mod table;
#[cfg(kernel)]
pub mod user;

#[cfg(kernel)]
pub use kernel::*;
