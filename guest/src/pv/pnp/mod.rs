//! Page-not-present events with a token resolution ring (seed 001), the guest side.
//!
//! `ring` and the shared token table (`crate::pv::tokens`, keyed by ring slot here) are the
//! protocol logic (host-tested). The kernel glue below registers
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

/// The host's demand-paged region, as its CPUID leaf offers it and the guest accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub pages: u64,
}

/// Why the guest does not use the region the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionRefused {
    /// It ends beyond the identity map's reach (the CPU's physical address width, or what the
    /// page tables can map): mapping it would wrap around onto low memory.
    BeyondReach { end: u64, reach: u64 },
    /// It overlaps memory the memory map says is RAM or ACPI data, or a device page the kernel
    /// maps: mapping it for CPL 3 would expose or replace that.
    Overlaps { start: u64, end: u64 },
}

impl Region {
    /// The region the pnp CPUID leaf describes (EAX: base in 2 MiB units, EBX: pages), if the
    /// kernel can map it: below `reach`, and clear of every range in `occupied`. The leaf is
    /// the host's; nothing here can overflow whatever it says.
    pub fn from_leaf(
        eax: u32,
        ebx: u32,
        reach: u64,
        occupied: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, RegionRefused> {
        let region = Region { base: u64::from(eax) << 21, pages: u64::from(ebx) };
        // At most 2^53 + 2^44: no overflow.
        let end = region.base + region.pages * pvagent_abi::PAGE_SIZE;
        if end > reach {
            return Err(RegionRefused::BeyondReach { end, reach });
        }
        match occupied.into_iter().find(|&(start, stop)| start < end && region.base < stop) {
            Some((start, end)) => Err(RegionRefused::Overlaps { start, end }),
            None => Ok(region),
        }
    }

    /// GPA of page `index`.
    pub fn page(&self, index: u64) -> u64 {
        self.base + index * pvagent_abi::PAGE_SIZE
    }

    /// The first address after the region.
    pub fn end(&self) -> u64 {
        self.page(self.pages)
    }
}

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

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_region_within_reach_and_clear_of_ram_is_taken() {
        let ram = [(0, 0xA_0000), (0x10_0000, 2 * GIB)];
        let region = Region::from_leaf(2048, 4096, 1 << 46, ram).expect("usable");
        assert_eq!(region, Region { base: 4 * GIB, pages: 4096 });
        assert_eq!(region.end(), 4 * GIB + (16 << 20));
    }

    #[test]
    fn a_hostile_region_is_refused_without_overflow() {
        let reach = 1 << 46;
        let ram = [(0x10_0000, 2 * GIB)];
        // The largest base and size the leaf can say: far beyond any reach, no overflow.
        let max = Region::from_leaf(u32::MAX, u32::MAX, reach, ram);
        assert!(matches!(max, Err(RegionRefused::BeyondReach { reach: r, .. }) if r == reach), "{max:?}");
        // At 1 << 48: its page table indices would wrap onto those of the first GiB.
        let wraps = Region::from_leaf(1 << 27, 512, reach, ram);
        assert!(matches!(wraps, Err(RegionRefused::BeyondReach { .. })), "{wraps:?}");
        // Ending exactly at the reach is fine; one page more is not.
        assert!(Region::from_leaf(((reach >> 21) - 1) as u32, 512, reach, ram).is_ok());
        assert!(Region::from_leaf(((reach >> 21) - 1) as u32, 513, reach, ram).is_err());
        // Over RAM (here: the kernel's own image at 1 MiB).
        let over = Region::from_leaf(0, 1024, reach, ram);
        assert_eq!(over, Err(RegionRefused::Overlaps { start: 0x10_0000, end: 2 * GIB }));
    }

    #[test]
    fn a_page_failure_survives_the_trip_through_the_scheduler() {
        let failed = PageFailed { token: 0x2_0005, gpa: 0x4020_3000 };
        let reason = KillReason::from(failed);
        assert_eq!(PageFailed::from_reason(&reason), Some(failed));
        let other = KillReason { cause: KillCause { name: "other", data_names: ["", ""] }, data: reason.data };
        assert_eq!(PageFailed::from_reason(&other), None);
    }
}
