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
#[cfg(test)]
mod props;

#[cfg(kernel)]
mod hw;
#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub mod trigger;

#[cfg(kernel)]
pub use kernel::*;

use crate::task::table::{KillCause, KillReason};

/// How #AC handling ends a task. The scheduler carries it as an opaque [`KillReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// A split lock at `rip` under `sld=fatal`.
    SplitLock { rip: u64 },
    /// An alignment check the task asked for (RFLAGS.AC) and did not handle. The CPU does not
    /// report the address; `address` is the kernel's decoding of the instruction, when it
    /// could decode it.
    AlignmentCheck { rip: u64, address: Option<u64> },
}

impl Kill {
    /// Causes as the scheduler shows them.
    pub const SPLIT_LOCK: KillCause = KillCause { name: "split lock", data_names: ["rip", ""] };
    pub const ALIGNMENT_CHECK: KillCause = KillCause { name: "alignment check", data_names: ["rip", "address"] };
    pub const ALIGNMENT_CHECK_UNDECODED: KillCause =
        KillCause { name: "alignment check, address not decodable", data_names: ["rip", ""] };

    /// The #AC kill `reason` carries, if it is one.
    pub fn from_reason(reason: &KillReason) -> Option<Self> {
        let [rip, address] = reason.data;
        match reason.cause {
            c if c == Self::SPLIT_LOCK => Some(Kill::SplitLock { rip }),
            c if c == Self::ALIGNMENT_CHECK => Some(Kill::AlignmentCheck { rip, address: Some(address) }),
            c if c == Self::ALIGNMENT_CHECK_UNDECODED => Some(Kill::AlignmentCheck { rip, address: None }),
            _ => None,
        }
    }
}

impl From<Kill> for KillReason {
    fn from(kill: Kill) -> Self {
        match kill {
            Kill::SplitLock { rip } => KillReason { cause: Kill::SPLIT_LOCK, data: [rip, 0] },
            Kill::AlignmentCheck { rip, address: Some(address) } => {
                KillReason { cause: Kill::ALIGNMENT_CHECK, data: [rip, address] }
            }
            Kill::AlignmentCheck { rip, address: None } => {
                KillReason { cause: Kill::ALIGNMENT_CHECK_UNDECODED, data: [rip, 0] }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kill_survives_the_trip_through_the_scheduler() {
        for kill in [
            Kill::SplitLock { rip: 0x10_2000 },
            Kill::AlignmentCheck { rip: 0x40_0010, address: Some(0x7001) },
            Kill::AlignmentCheck { rip: 0x40_0010, address: None },
        ] {
            assert_eq!(Kill::from_reason(&KillReason::from(kill)), Some(kill), "{kill:?}");
        }
        let foreign = KillReason { cause: KillCause { name: "page failed", data_names: ["", ""] }, data: [1, 2] };
        assert_eq!(Kill::from_reason(&foreign), None);
    }
}
