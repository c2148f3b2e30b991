//! The rules of this ABI a host can break, each named once. The guest counts every breach it
//! detects under these names and reports them ([`crate::report`]'s breach lines, docs/robustness.md);
//! the host stub's fault-injection switch ([`crate::hypercall::Nr::HostBreak`]) breaks one on
//! purpose, so that a self-test per rule shows what the guest does about it. A production host
//! offers no such switch.
//!
//! A name is the variant's, in kebab case (`VeOverBusyArea` is `ve-over-busy-area`): the same
//! text in the guest's report, on the host stub's command line and in the docs.

use core::fmt;

crate::wire_enum! {
/// A rule of docs/abi.md a host can break, numbered by protocol (the high byte).
pub enum Breach: u32 {
    // ---- The page-not-present event area and resolution ring (0x100..) ----

    /// A resolution ring whose `head` runs more than the ring's size ahead of the guest's
    /// `tail`: a host claiming it overflowed the ring.
    RingHeadBeyondSize = 0x100,
    /// A ring entry whose token the host never handed out (its slot holds another token's
    /// waiter, or the slot or sequence is impossible).
    ResolutionForUnknownToken = 0x101,
    /// A second ring entry for a token whose resolution the guest already consumed.
    ResolutionTwice = 0x102,
    /// A ring entry whose `result` is neither 0 (retry) nor 1 (failed).
    ResolutionBadResult = 0x103,
    /// An event whose token is 0.
    EventTokenZero = 0x104,
    /// An event whose token's slot is not below the ring's size.
    EventSlotBeyondRing = 0x105,
    /// An event whose token's sequence number is 0.
    EventSequenceZero = 0x106,
    /// An event whose token is still outstanding: its waiter has not been resolved yet.
    EventTokenOutstanding = 0x107,
    /// An event whose `gpa` lies outside the demand-paged region.
    EventGpaOutsideRegion = 0x108,
    /// An event whose `flags` say the `gva` is known, with a `gva` the guest's page tables do
    /// not translate to the event's `gpa`.
    EventGvaMismatch = 0x109,
    /// An event whose `flags` has bits other than bit 0 (`gva` known) set.
    EventUnknownFlags = 0x10A,
    /// An event whose `reserved` word is not 0.
    EventReservedNonzero = 0x10B,
    /// The event vector raised while the event area's `inuse` is 0.
    EventSpurious = 0x10C,
    /// An event (the event vector, `inuse` 1) on a vCPU whose ring and event area are not
    /// registered: after the guest unregistered them, no ring can resolve its token.
    EventWhileUnregistered = 0x10D,

    // ---- KVM's async page faults (0x200..) ----

    /// A "page ready" for a token the guest has no "page not present" for: never handed out,
    /// resolved before, or not delivered yet (KVM raises "page ready" only after the
    /// "page not present" of the same token, once).
    ApfReadyForUnknownToken = 0x200,
    /// The "page ready" interrupt with the area's `token` 0.
    ApfReadySpurious = 0x201,
    /// A #PF with the area's `flags` holding bits KVM never sets (anything but bit 0).
    ApfUnknownFlags = 0x202,
    /// `flags` says "page not present" beside a #PF whose error code is not KVM's 0: a real
    /// #PF, with flags the host left or wrote.
    ApfStaleFlags = 0x203,
    /// "Page not present" with token 0 in CR2 (KVM's tokens are never 0).
    ApfNotPresentTokenZero = 0x204,
    /// "Page not present" with a token whose waiter still waits for its "page ready".
    ApfNotPresentTokenOutstanding = 0x205,
    /// "Page not present" at CPL 0 or with interrupts off, where the guest registered for CPL 3
    /// with interrupts on only: the context cannot be parked, and the run stops.
    ApfMisdelivered = 0x206,

    // ---- Split-lock detection and #AC (0x300..) ----

    /// An #AC claimed as a split lock at an instruction the guest's own decoding finds no
    /// split lock in.
    AcNoSplitLockAtRip = 0x300,
    /// An #AC with an error code other than 0 (the processor always pushes 0 for #AC).
    AcErrorCodeNotZero = 0x301,
    /// An #AC while the guest's split-lock detection is off (MSR_TEST_CTRL bit 29 clear) and
    /// it asked for no alignment check: seed 000's host never injects one then.
    AcWhileDetectionOff = 0x302,

    // ---- #VE (0x400..) ----

    /// A #VE delivered while the VE information area's `busy` word is still set.
    VeOverBusyArea = 0x400,
    /// A #VE whose exit reason is not 48 (EPT violation), the only one the ABI reports.
    VeUnknownExitReason = 0x401,
    /// A #VE whose guest-physical address lies outside the demand-paged region.
    VeGpaOutsideRegion = 0x402,
    /// A `VePark` token wider than 32 bits or with sequence number 0.
    VeParkBadToken = 0x403,
    /// A `VePark` answered "no token" with an outcome other than exactly 0 or 1.
    VeParkBadOutcome = 0x404,
    /// A `VeSuspend` answered with an outcome other than exactly 0 or 1 (the guest stops).
    VeSuspendBadOutcome = 0x405,
    /// A #VE raised without the VE information area's `busy` word set to `BUSY` (the host
    /// sets it before every #VE; nothing else raises vector 20).
    VeNotMarkedBusy = 0x406,

    // ---- What the host answers at boot: CPUID and MSRs (0x500..) ----

    /// MSR_TEST_CTRL raises #GP though CPUID and IA32_CORE_CAPABILITIES bit 5 promise it.
    TestCtrlFaults = 0x500,
    /// MSR_TEST_CTRL accepts a write that sets bit 29 but does not keep the bit: detection
    /// would be off while the guest believes it on.
    TestCtrlNotKept = 0x501,
    /// IA32_CORE_CAPABILITIES reads with reserved bits set (63:9; bits 0 to 8 are defined:
    /// `sld::CORE_CAPS_DEFINED`).
    CoreCapabilitiesGarbage = 0x502,
    /// `Features::VE` is set but `MSR_VE_INFO` raises #GP for a valid registration.
    VeInfoMsrFaults = 0x503,
    /// IA32_CORE_CAPABILITIES raises #GP though CPUID.(7,0):EDX bit 30 (or
    /// `Features::CORE_CAPABILITIES`) promises it.
    CoreCapabilitiesFaults = 0x504,
}
}

impl Breach {
    /// How many rules there are.
    pub const COUNT: usize = Self::ALL.len();

    /// Its position in [`Breach::ALL`], for tables with one entry per rule. Inlined: with the
    /// rule known where it is noted (every caller names one), the search folds to a constant,
    /// which the guest's budgeted paths (a spurious #AC) rely on.
    #[inline(always)]
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&b| b == self).unwrap_or(0)
    }

    /// The rule whose kebab-case name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|b| {
            let mut matcher = Matcher { rest: name.as_bytes(), ok: true };
            fmt::write(&mut matcher, format_args!("{b}")).is_ok() && matcher.ok && matcher.rest.is_empty()
        })
    }
}

/// The kebab-case name: the variant's name with a `-` before each capital, all in lower case.
impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kebab = Kebab { out: f, first: true };
        fmt::write(&mut kebab, format_args!("{self:?}"))
    }
}

struct Kebab<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    first: bool,
}

impl fmt::Write for Kebab<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_ascii_uppercase() {
                if !self.first {
                    self.out.write_str("-")?;
                }
                fmt::Write::write_char(self.out, c.to_ascii_lowercase())?;
            } else {
                fmt::Write::write_char(self.out, c)?;
            }
            self.first = false;
        }
        Ok(())
    }
}

/// Compares formatted text with a name without allocating.
struct Matcher<'a> {
    rest: &'a [u8],
    ok: bool,
}

impl fmt::Write for Matcher<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.strip_prefix(s.as_bytes()) {
            Some(rest) => self.rest = rest,
            None => self.ok = false,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn names_are_kebab_case_and_parse_back() {
        assert_eq!(format!("{}", Breach::VeOverBusyArea), "ve-over-busy-area");
        assert_eq!(format!("{}", Breach::RingHeadBeyondSize), "ring-head-beyond-size");
        for &b in Breach::ALL {
            assert_eq!(Breach::from_name(&format!("{b}")), Some(b));
            assert_eq!(Breach::ALL[b.index()], b);
        }
        assert_eq!(Breach::from_name("ve-over-busy"), None);
        assert_eq!(Breach::from_name("ve-over-busy-area-x"), None);
        assert_eq!(Breach::from_name(""), None);
    }

    #[test]
    fn numbers_round_trip() {
        for &b in Breach::ALL {
            assert_eq!(Breach::try_from(b as u32), Ok(b));
        }
        assert_eq!(Breach::try_from(0), Err(0));
    }
}
