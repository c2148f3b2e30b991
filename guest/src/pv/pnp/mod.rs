//! Page-not-present events with a token resolution ring (seed 001), the guest side.
//!
//! `tokens` and `ring` are the protocol logic (host-tested). The kernel glue below registers
//! the protocol per vCPU, and handles two vectors:
//!
//! - the **event** ([`EVENT_VECTOR`]): copy the event area, give it back (`inuse = 0`), then
//!   park the current task on the token, or, when this context cannot sleep (idle task, a
//!   nested handler, a `NoSleepGuard`, nothing else to run), wait in the HLT
//!   loop; a token whose resolution already came does not wait at all;
//! - the **resolution** interrupt ([`RESOLUTION_VECTOR`]): drain the ring and wake each
//!   token's waiter with its result. Result "failed" ends the task that touched the page.
//!
//! The resolution vector has the higher priority of the two, so when the host resolves before
//! it delivers the event (it may), the guest takes the resolution first and the event finds it.

pub mod ring;
pub mod tokens;

#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub use kernel::*;

/// The page-not-present event vector this guest registers.
pub const EVENT_VECTOR: u8 = 0x51;
/// The resolution interrupt vector (same priority class, higher priority).
pub const RESOLUTION_VECTOR: u8 = 0x52;
/// Ring size registered at boot, unless `pnp-ring=N` says otherwise.
pub const DEFAULT_RING_ENTRIES: u32 = 32;
