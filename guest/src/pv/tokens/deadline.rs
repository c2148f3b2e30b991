//! The token table's part of the deadline check (`pv::deadline`): which waits went past their
//! deadline, each handed over once. Plain code, tested on the host with a fake clock.

use super::{Keying, State, TokenTable, Waiter};

/// A wait's `since` once it was reported: no clock reaches it (the TSC would take a century at
/// 5 GHz).
pub(super) const REPORTED: u64 = u64::MAX;

/// A wait that went past its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overdue {
    pub token: u32,
    /// The access's guest-physical address; 0 when the event gave none (KVM's "page not
    /// present" gives only its token).
    pub gpa: u64,
    pub waiter: Waiter,
    /// When its wait began, on the clock its event was stamped with.
    pub since: u64,
}

impl<K: Keying, const N: usize> TokenTable<K, N> {
    /// Hands `report` every wait that began `deadline` or more before `now` (on the clock the
    /// events were stamped with) and was not handed over before, and marks it so; stops at the
    /// first one `report` refuses (its buffer is full: the rest come at the next check). Only
    /// waits count: a kept wake or an abandoned token has nobody waiting, a HLT-loop waiter's
    /// result is already here. Returns how many were handed over (also in `stats.overdue`).
    pub fn take_overdue(&mut self, now: u64, deadline: u64, mut report: impl FnMut(Overdue) -> bool) -> usize {
        let mut taken = 0;
        let used = self.keying.used(N);
        for (entry, since) in self.entries[..used].iter().zip(&mut self.since[..used]) {
            let State::Waiting { waiter, gpa } = entry.state else { continue };
            // A clock behind the stamp (never on one vCPU's TSC) is no overdue wait.
            if *since == REPORTED || now.saturating_sub(*since) < deadline {
                continue;
            }
            if !report(Overdue { token: entry.token, gpa, waiter, since: *since }) {
                break;
            }
            *since = REPORTED;
            taken += 1;
        }
        self.stats.overdue += taken as u64;
        taken
    }

    /// Who waits for `token` and for which address, if it has a waiter still waiting.
    pub fn waiter_of(&self, token: u32) -> Option<(Waiter, u64)> {
        let home = self.home(token).ok()?;
        let i = if K::BY_SLOT { home } else { self.find(token, home)? };
        match self.entries[i] {
            super::Entry { token: t, state: State::Waiting { waiter, gpa, .. } } if t == token => Some((waiter, gpa)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use pvagent_abi::pnp::RESULT_RETRY;

    use super::*;
    use crate::pv::tokens::{BySlot, EventOutcome, Hashed};
    use crate::task::table::TaskId;

    const DEADLINE: u64 = 50;

    fn task(slot: u16) -> Waiter {
        Waiter::Task(TaskId { slot, generation: 1 })
    }

    fn ring(slot: u32) -> u32 {
        (1 << 16) | slot
    }

    fn overdue<K: Keying, const N: usize>(t: &mut TokenTable<K, N>, now: u64) -> Vec<Overdue> {
        let mut found = Vec::new();
        t.take_overdue(now, DEADLINE, |o| {
            found.push(o);
            true
        });
        found
    }

    #[test]
    fn a_wait_is_reported_once_when_its_deadline_has_passed() {
        let mut t = TokenTable::<BySlot, 8>::new(BySlot { entries: 8 });
        assert!(matches!(t.on_event_at(ring(3), 0x4000_3000, || task(2), || 100), EventOutcome::Park(_)));
        assert_eq!(overdue(&mut t, 149), [], "one cycle before its deadline");
        let expected = Overdue { token: ring(3), gpa: 0x4000_3000, waiter: task(2), since: 100 };
        assert_eq!(overdue(&mut t, 150), [expected], "at its deadline");
        assert_eq!(overdue(&mut t, 10_000), [], "reported once, however long it goes on");
        assert_eq!(t.stats.overdue, 1);
        assert_eq!(t.waiter_of(ring(3)), Some((task(2), 0x4000_3000)), "the wait goes on");
        assert_eq!(t.waiting(), 1);
        // Resolved late, it is woken as any other.
        assert!(matches!(t.on_wake(ring(3), RESULT_RETRY), crate::pv::tokens::WakeOutcome::Wake { .. }));
        assert_eq!(t.waiter_of(ring(3)), None);
    }

    #[test]
    fn a_wait_resolved_in_time_is_never_reported() {
        let mut t = TokenTable::<BySlot, 8>::new(BySlot { entries: 8 });
        t.on_event_at(ring(1), 0x1000, || task(1), || 100);
        assert_eq!(overdue(&mut t, 120), []);
        t.on_wake(ring(1), RESULT_RETRY);
        assert_eq!(overdue(&mut t, 1_000), [], "resolved before its deadline");
        // A wake before its event: nobody waits, nothing to report.
        t.on_wake(ring(2), RESULT_RETRY);
        assert_eq!(t.on_event_at(ring(2), 0, || task(2), || 0), EventOutcome::AlreadyResolved { result: 0 });
        assert_eq!(overdue(&mut t, 1_000), []);
        assert_eq!(t.stats.overdue, 0);
    }

    #[test]
    fn the_clock_is_read_only_for_an_event_that_waits() {
        let mut t = TokenTable::<BySlot, 8>::new(BySlot { entries: 8 });
        t.on_wake(ring(4), RESULT_RETRY);
        let outcome = t.on_event_at(ring(4), 0, || task(1), || unreachable!("a resolved token read the clock"));
        assert_eq!(outcome, EventOutcome::AlreadyResolved { result: 0 });
        let rejected = t.on_event_at(0, 0, || task(1), || unreachable!("a rejected token read the clock"));
        assert!(matches!(rejected, EventOutcome::Rejected(_)));
    }

    #[test]
    fn each_wait_has_its_own_deadline_and_a_full_buffer_leaves_the_rest_for_later() {
        let mut t = TokenTable::<Hashed, 16>::new(Hashed);
        for (i, since) in [(1u32, 10u64), (2, 20), (3, 30), (4, 500)] {
            t.on_event_at(i << 12, 0, || task(i as u16), || since);
        }
        t.on_event_at(5 << 12, 0, || Waiter::Halt, || 0);
        let mut first = Vec::new();
        let taken = t.take_overdue(80, DEADLINE, |o| {
            first.push(o.token);
            first.len() < 2
        });
        assert_eq!(taken, 1, "the second was refused: not marked");
        let mut all: Vec<_> = first[..1].to_vec();
        all.extend(overdue(&mut t, 80).iter().map(|o| o.token));
        all.sort();
        assert_eq!(all, [1 << 12, 2 << 12, 3 << 12, 5 << 12], "waits that began 50 or more before 80");
        assert_eq!(overdue(&mut t, 549).len(), 0);
        assert_eq!(overdue(&mut t, 550).iter().map(|o| o.token).collect::<Vec<_>>(), [4 << 12]);
        assert_eq!(t.stats.overdue, 5);
    }

    #[test]
    fn a_wait_moved_back_in_its_cluster_keeps_its_stamp() {
        // Tokens whose homes collide: removing the first moves the others back, stamps and all.
        let mut t = TokenTable::<Hashed, 8>::new(Hashed);
        let home = t.home(1 << 12).unwrap();
        let toks: Vec<u32> = (1..10_000).map(|i| i << 12).filter(|&tok| t.home(tok).unwrap() == home).take(3).collect();
        for (i, &tok) in toks.iter().enumerate() {
            t.on_event_at(tok, 0, || task(i as u16), || 100 * i as u64);
        }
        t.on_wake(toks[0], RESULT_RETRY);
        assert_eq!(overdue(&mut t, 150).iter().map(|o| (o.token, o.since)).collect::<Vec<_>>(), [(toks[1], 100)]);
        assert_eq!(overdue(&mut t, 250).iter().map(|o| (o.token, o.since)).collect::<Vec<_>>(), [(toks[2], 200)]);
    }

    #[test]
    fn a_wake_all_ends_the_waits_and_a_new_event_starts_a_new_one() {
        let mut t = TokenTable::<Hashed, 16>::new(Hashed);
        t.on_event_at(7 << 12, 0, || task(1), || 0);
        assert_eq!(overdue(&mut t, 60).len(), 1);
        t.wake_all(|_| {});
        assert_eq!(overdue(&mut t, 1_000), [], "abandoned: nobody waits");
        // Faulting again on the abandoned token parks anew, with a new stamp and a new report.
        t.on_event_at(7 << 12, 0, || task(1), || 2_000);
        assert_eq!(overdue(&mut t, 2_049), []);
        assert_eq!(overdue(&mut t, 2_050).len(), 1);
        t.on_event_at(8 << 12, 0, || task(2), || 5_000);
        assert_eq!(overdue(&mut t, 1_000), [], "a clock behind the stamp reports nothing");
    }
}
