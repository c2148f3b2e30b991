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

use crate::task::table::{KillCause, KillReason};

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

/// What a task waiting for a token is blocked on, as the scheduler shows it.
pub const WAIT_OWNER: &str = "page-not-present token";

/// How a task ends when the page it touched failed: its token and the page's guest-physical
/// address. The scheduler carries it as an opaque [`KillReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFailed {
    pub token: u32,
    pub gpa: u64,
}

impl PageFailed {
    /// The cause the scheduler shows.
    pub const CAUSE: KillCause = KillCause { name: "page failed", data_names: ["token", "gpa"] };

    /// The page failure `reason` carries, if it is one.
    pub fn from_reason(reason: &KillReason) -> Option<Self> {
        reason.data_if(Self::CAUSE).map(|[token, gpa]| Self { token: token as u32, gpa })
    }
}

impl From<PageFailed> for KillReason {
    fn from(p: PageFailed) -> Self {
        KillReason { cause: PageFailed::CAUSE, data: [u64::from(p.token), p.gpa] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_failure_survives_the_trip_through_the_scheduler() {
        let failed = PageFailed { token: 0x2_0005, gpa: 0x4020_3000 };
        let reason = KillReason::from(failed);
        assert_eq!(PageFailed::from_reason(&reason), Some(failed));
        let other = KillReason { cause: KillCause { name: "other", data_names: ["", ""] }, data: reason.data };
        assert_eq!(PageFailed::from_reason(&other), None);
    }
}
