//! #AC: alignment checks a task asked for, and split-lock detection (seeds 000 and 002).
//!
//! One handler for vector 17 tells three cases apart the way the hardware forces
//! ([`policy::classify`]): an alignment check the task asked for (CPL 3, RFLAGS.AC, CR0.AM) goes
//! to the task; otherwise, with detection on, it is a user or a kernel split lock, handled as
//! the boot mode (`sld=off|warn|fatal|ratelimit:N`, default `warn`) says; with detection off
//! it is spurious. `policy` is the plain decision logic, `operand` decodes the address an
//! alignment check was about; `hw` and `kernel` are the hardware glue;
//! `trigger` is the host stub's test interface that produces split-lock #AC on machines that
//! cannot.

pub mod operand;
pub mod policy;

#[cfg(kernel)]
mod hw;
#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub mod trigger;

#[cfg(kernel)]
pub use kernel::*;
