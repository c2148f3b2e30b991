//! What a token table counts: everything it saw, by outcome and by reason of rejection.

use super::Rejection;

/// Counts of everything the table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Tasks parked on a token.
    pub slept: u64,
    /// HLT-loop waiters registered on a token.
    pub halted: u64,
    pub resolved_before_event: u64,
    pub woken: u64,
    pub failed: u64,
    /// Waiters a wake-all woke.
    pub woken_by_wake_all: u64,
    /// Wakes for tokens whose waiters a wake-all had woken.
    pub late: u64,
    /// Kept wakes and abandoned tokens a full table gave up.
    pub given_up: u64,
    pub malformed: u64,
    pub busy: u64,
    pub duplicate: u64,
    pub unknown: u64,
    pub bad_result: u64,
    pub full: u64,
    /// Waits reported past their deadline (`deadline`); the waits go on.
    pub overdue: u64,
}

impl TokenStats {
    /// All counters zero.
    pub const fn new() -> Self {
        Self {
            slept: 0,
            halted: 0,
            resolved_before_event: 0,
            woken: 0,
            failed: 0,
            woken_by_wake_all: 0,
            late: 0,
            given_up: 0,
            malformed: 0,
            busy: 0,
            duplicate: 0,
            unknown: 0,
            bad_result: 0,
            full: 0,
            overdue: 0,
        }
    }

    /// Everything rejected.
    pub fn rejected(&self) -> u64 {
        self.malformed + self.busy + self.duplicate + self.unknown + self.bad_result + self.full
    }

    /// Out of line and cold: the common paths do not pay for the rejections' bookkeeping.
    #[cold]
    #[inline(never)]
    pub(super) fn count(&mut self, r: Rejection) {
        match r {
            Rejection::Malformed => self.malformed += 1,
            Rejection::Busy => self.busy += 1,
            Rejection::Duplicate => self.duplicate += 1,
            Rejection::Unknown => self.unknown += 1,
            Rejection::BadResult => self.bad_result += 1,
            Rejection::Full => self.full += 1,
        }
    }
}
