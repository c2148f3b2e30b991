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

    // ---- KVM's async page faults (0x200..) ----

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

    // ---- What the host answers at boot: CPUID and MSRs (0x500..) ----

    /// MSR_TEST_CTRL raises #GP though CPUID and IA32_CORE_CAPABILITIES bit 5 promise it.
    TestCtrlFaults = 0x500,
    /// MSR_TEST_CTRL accepts a write that sets bit 29 but does not keep the bit: detection
    /// would be off while the guest believes it on.
    TestCtrlNotKept = 0x501,
    /// IA32_CORE_CAPABILITIES reads with bits set that the SDM does not define (anything but
    /// bits 2 and 5).
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
