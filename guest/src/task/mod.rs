//! Tasks: kernel tasks and CPL 3 tasks with their own stacks, a cooperative per-vCPU
//! scheduler, and blocking on events (including page-not-present tokens) with wake-ups from
//! interrupt handlers.

#[cfg(kernel)]
pub mod event;
pub mod sched;
#[cfg(kernel)]
mod scheduler;
#[cfg(kernel)]
pub mod stack;
#[cfg(kernel)]
pub mod switch;
#[cfg(kernel)]
pub mod user;

#[cfg(kernel)]
pub use scheduler::*;
