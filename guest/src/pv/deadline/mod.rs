//! No token waits forever without a word (issue 15): a guest-side deadline per outstanding
//! token. Every wait for a token records when it began (the token table's `since`, a TSC read
//! and a store on the event path, taken only by an event that waits); each vCPU's tick checks,
//! every quarter deadline (at most once a second), its own tables, and reports each wait past
//! the deadline once: a console line naming the vCPU, the token, the page, since when and how
//! long, and a count (`reported`, the tables' `overdue`). It only reports: the wait goes on,
//! and the run's verdict does not change (a slow host is not a broken one).
//!
//! Covered: the page-not-present ring's tokens, both an event's and a #VE's `VePark` token
//! (they wait in the same table), and KVM's async page fault tokens (their own table; KVM's
//! "page not present" names no page, so the report says "page unknown").
//!
//! The deadline is `pnp-deadline=MS` on the command line ([`DEFAULT_MS`] without it; `0` or
//! `off` turns the check off), read at the first check rather than at boot (whose instructions
//! are budgeted), and can be changed at run time (`set_ms`, the self-tests). The decisions
//! are below, host-tested; the kernel glue is in `kernel`.

#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub use kernel::*;

/// The command line key that sets the deadline.
pub const CMDLINE_KEY: &str = "pnp-deadline";

/// The deadline without `pnp-deadline=`: generous, as a wait that long on these machines is
/// far beyond any page's fetch (the longest latency the host stub takes is 10 s, and only its
/// own tests ask for it).
pub const DEFAULT_MS: u64 = 10_000;

/// A value of `pnp-deadline=` that is neither a number of milliseconds nor `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadValue;

/// The deadline `pnp-deadline=` sets, in milliseconds, 0 for off: [`DEFAULT_MS`] when the key
/// is absent or has no value.
pub fn parse(value: Option<&str>) -> Result<u64, BadValue> {
    match value {
        None | Some("") => Ok(DEFAULT_MS),
        Some("off") => Ok(0),
        Some(ms) => ms.parse().map_err(|_| BadValue),
    }
}

/// Ticks from one check to the next for a deadline of `ms` at `hz` ticks a second: a quarter
/// of the deadline, so that a wait is reported at most a quarter late (plus a tick), at least
/// one tick and at most a second (`hz`), and a second while the check is off (a deadline set at
/// run time is seen within a second; `set_ms` checks at the next tick).
pub fn check_interval(ms: u64, hz: u64) -> u64 {
    if ms == 0 {
        return hz;
    }
    (ms.saturating_mul(hz) / 4_000).clamp(1, hz)
}

/// TSC cycles in `ms` milliseconds at `tsc_khz` (saturating: a deadline beyond the clock's
/// range never passes).
pub fn ms_to_cycles(ms: u64, tsc_khz: u64) -> u64 {
    ms.saturating_mul(tsc_khz)
}

/// Milliseconds in `cycles` TSC cycles at `tsc_khz` (a frequency of 0 counts as 1 kHz).
pub fn cycles_to_ms(cycles: u64, tsc_khz: u64) -> u64 {
    cycles / tsc_khz.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_sets_the_deadline_or_turns_it_off() {
        assert_eq!(parse(None), Ok(DEFAULT_MS));
        assert_eq!(parse(Some("")), Ok(DEFAULT_MS), "a bare key");
        assert_eq!(parse(Some("250")), Ok(250));
        assert_eq!(parse(Some("0")), Ok(0));
        assert_eq!(parse(Some("off")), Ok(0));
        assert_eq!(parse(Some("18446744073709551615")), Ok(u64::MAX), "never passes");
        for bad in ["-1", "10s", "18446744073709551616", "on", " 5"] {
            assert_eq!(parse(Some(bad)), Err(BadValue), "{bad:?}");
        }
    }

    #[test]
    fn the_check_runs_every_quarter_deadline_between_a_tick_and_a_second() {
        assert_eq!(check_interval(10_000, 100), 100, "the default: once a second");
        assert_eq!(check_interval(2_000, 100), 50);
        assert_eq!(check_interval(50, 100), 1, "a short deadline: every tick");
        assert_eq!(check_interval(1, 100), 1);
        assert_eq!(check_interval(u64::MAX, 100), 100);
        assert_eq!(check_interval(0, 100), 100, "off: looks again once a second");
    }

    #[test]
    fn times_convert_without_overflow() {
        assert_eq!(ms_to_cycles(50, 2_000_000), 100_000_000);
        assert_eq!(ms_to_cycles(u64::MAX, 2_000_000), u64::MAX);
        assert_eq!(cycles_to_ms(100_000_000, 2_000_000), 50);
        assert_eq!(cycles_to_ms(u64::MAX, 0), u64::MAX);
    }
}
