//! The guest's token table: who waits for which page-not-present token, and what to do when
//! an event or a resolution arrives, in either order. Plain code, unit-tested on the host
//! through every interleaving that matters.
//!
//! Each ring slot has one state. An event parks a waiter on its token; a resolution wakes it.
//! A resolution may come first (the host may resolve before it delivers the event, and the
//! resolution interrupt may be taken before the event): it is kept, and the event that follows
//! with the same token does not park at all. Everything here arrives from host-written memory,
//! so anything that does not fit the protocol is rejected with a reason and counted, and never
//! wakes anyone.

use pvagent_abi::pnp::{RESULT_FAILED, RESULT_RETRY, Token};

use crate::task::table::TaskId;

/// Most slots a table tracks (the ABI's largest ring).
pub const MAX_SLOTS: usize = pvagent_abi::pnp::MAX_RING_ENTRIES as usize;

/// Who waits for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// A task, parked in the scheduler until woken.
    Task(TaskId),
    /// A context that cannot sleep, waiting in the HLT loop; it polls [`TokenTable::take_halt_result`].
    Halt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Nothing pending; `last` is the token this slot completed most recently (to recognize a
    /// duplicate resolution).
    Free { last: Option<Token> },
    /// An event parked `waiter` on `token`.
    Waiting { token: Token, waiter: Waiter, gpa: u64 },
    /// The resolution for `token` came before its event.
    ResolvedEarly { token: Token, result: u32 },
    /// A HLT-loop waiter's resolution, not picked up yet.
    HaltResolved { token: Token, result: u32, gpa: u64 },
}

/// Why an event or resolution was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Token 0, a zero sequence number, or a slot beyond the ring.
    Malformed,
    /// An event for a slot that already has a waiter or an unclaimed result.
    SlotBusy,
    /// A second resolution for a token that was already resolved.
    Duplicate,
    /// A resolution for a token nobody waits for and that is not early for a free slot.
    Unknown,
    /// A result other than retry (0) or failed (1).
    BadResult,
}

/// What to do with the context that took an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Wait: this waiter is registered on the token.
    Park(Waiter),
    /// The resolution is already here: act on `result` at once.
    AlreadyResolved { result: u32 },
    /// The event is not acted on (the access simply continues or is retried).
    Rejected(Rejection),
}

/// What to do after a resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolutionOutcome {
    /// Wake this task with `result`.
    Wake {
        task: TaskId,
        result: u32,
        gpa: u64,
    },
    /// A HLT-loop waiter's token is resolved; it will see it.
    HaltDone,
    /// Kept for the event that has not arrived yet.
    Early,
    Rejected(Rejection),
}

/// Counts of everything the table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    pub parked: u64,
    pub resolved_before_event: u64,
    pub woken: u64,
    pub failed: u64,
    pub malformed: u64,
    pub slot_busy: u64,
    pub duplicate: u64,
    pub unknown: u64,
    pub bad_result: u64,
}

impl TokenStats {
    /// Everything rejected.
    pub fn rejected(&self) -> u64 {
        self.malformed + self.slot_busy + self.duplicate + self.unknown + self.bad_result
    }

    fn count(&mut self, r: Rejection) {
        match r {
            Rejection::Malformed => self.malformed += 1,
            Rejection::SlotBusy => self.slot_busy += 1,
            Rejection::Duplicate => self.duplicate += 1,
            Rejection::Unknown => self.unknown += 1,
            Rejection::BadResult => self.bad_result += 1,
        }
    }
}

/// The token table of one vCPU.
#[derive(Debug)]
pub struct TokenTable {
    slots: [Slot; MAX_SLOTS],
    entries: u32,
    pub stats: TokenStats,
}

impl TokenTable {
    /// A table for a ring of `entries` (1..=256); no protocol before [`TokenTable::reset`].
    pub const fn new() -> Self {
        Self { slots: [Slot::Free { last: None }; MAX_SLOTS], entries: 0, stats: TokenStats::new() }
    }

    /// Starts over for a ring of `entries`. Only call with nothing outstanding. Slots beyond
    /// `entries` are never looked at, so only the first `entries` are cleared.
    pub fn reset(&mut self, entries: u32) {
        assert!(entries as usize <= MAX_SLOTS);
        self.slots[..entries as usize].fill(Slot::Free { last: None });
        self.entries = entries;
    }

    /// The slots of the registered ring.
    fn in_use(&self) -> &[Slot] {
        &self.slots[..self.entries as usize]
    }

    fn slot_of(&self, token: Token) -> Result<usize, Rejection> {
        if token.is_well_formed(self.entries) { Ok(usize::from(token.slot())) } else { Err(Rejection::Malformed) }
    }

    fn reject<T>(&mut self, r: Rejection, wrap: impl FnOnce(Rejection) -> T) -> T {
        self.stats.count(r);
        wrap(r)
    }

    /// An event for `token` was taken (for an access at `gpa`); `waiter` says who waits for it,
    /// asked only if it must wait (on the event path, deciding costs the scheduler's state).
    /// Inlined, as [`TokenTable::on_resolution`]: both run on every event.
    #[inline(always)]
    pub fn on_event(&mut self, token: Token, gpa: u64, waiter: impl FnOnce() -> Waiter) -> EventOutcome {
        let index = match self.slot_of(token) {
            Ok(i) => i,
            Err(r) => return self.reject(r, EventOutcome::Rejected),
        };
        match self.slots[index] {
            Slot::ResolvedEarly { token: early, result } if early == token => {
                self.slots[index] = Slot::Free { last: Some(token) };
                self.stats.resolved_before_event += 1;
                if result == RESULT_FAILED {
                    self.stats.failed += 1;
                }
                EventOutcome::AlreadyResolved { result }
            }
            Slot::ResolvedEarly { .. } => {
                // The early resolution named another token of this slot: it was not for a
                // token the host handed out. Count it and serve the real event.
                self.stats.count(Rejection::Unknown);
                self.park(index, token, gpa, waiter())
            }
            Slot::Free { .. } => self.park(index, token, gpa, waiter()),
            Slot::Waiting { .. } | Slot::HaltResolved { .. } => {
                self.reject(Rejection::SlotBusy, EventOutcome::Rejected)
            }
        }
    }

    fn park(&mut self, index: usize, token: Token, gpa: u64, waiter: Waiter) -> EventOutcome {
        self.slots[index] = Slot::Waiting { token, waiter, gpa };
        self.stats.parked += 1;
        EventOutcome::Park(waiter)
    }

    /// The host resolved `token` with `result`.
    #[inline(always)]
    pub fn on_resolution(&mut self, token: Token, result: u32) -> ResolutionOutcome {
        let index = match self.slot_of(token) {
            Ok(i) => i,
            Err(r) => return self.reject(r, ResolutionOutcome::Rejected),
        };
        if result != RESULT_RETRY && result != RESULT_FAILED {
            return self.reject(Rejection::BadResult, ResolutionOutcome::Rejected);
        }
        match self.slots[index] {
            Slot::Waiting { token: waiting, waiter, gpa } if waiting == token => {
                if result == RESULT_FAILED {
                    self.stats.failed += 1;
                }
                self.stats.woken += 1;
                match waiter {
                    Waiter::Task(task) => {
                        self.slots[index] = Slot::Free { last: Some(token) };
                        ResolutionOutcome::Wake { task, result, gpa }
                    }
                    Waiter::Halt => {
                        self.slots[index] = Slot::HaltResolved { token, result, gpa };
                        ResolutionOutcome::HaltDone
                    }
                }
            }
            Slot::Free { last } if last == Some(token) => {
                self.reject(Rejection::Duplicate, ResolutionOutcome::Rejected)
            }
            Slot::Free { .. } => {
                self.slots[index] = Slot::ResolvedEarly { token, result };
                ResolutionOutcome::Early
            }
            Slot::ResolvedEarly { token: t, .. } | Slot::HaltResolved { token: t, .. } if t == token => {
                self.reject(Rejection::Duplicate, ResolutionOutcome::Rejected)
            }
            Slot::Waiting { .. } | Slot::ResolvedEarly { .. } | Slot::HaltResolved { .. } => {
                self.reject(Rejection::Unknown, ResolutionOutcome::Rejected)
            }
        }
    }

    /// For the HLT loop: the result of `token` once it is resolved (the slot is then free).
    pub fn take_halt_result(&mut self, token: Token) -> Option<(u32, u64)> {
        let index = self.slot_of(token).ok()?;
        match self.slots[index] {
            Slot::HaltResolved { token: t, result, gpa } if t == token => {
                self.slots[index] = Slot::Free { last: Some(token) };
                Some((result, gpa))
            }
            _ => None,
        }
    }

    /// Tokens with a waiter (parked or halting) that the host has not resolved.
    pub fn waiting(&self) -> usize {
        self.in_use().iter().filter(|s| matches!(s, Slot::Waiting { .. })).count()
    }

    /// Resolutions kept for events that have not come (yet).
    pub fn early(&self) -> usize {
        self.in_use().iter().filter(|s| matches!(s, Slot::ResolvedEarly { .. })).count()
    }
}

impl Default for TokenTable {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenStats {
    /// All counters zero.
    pub const fn new() -> Self {
        Self {
            parked: 0,
            resolved_before_event: 0,
            woken: 0,
            failed: 0,
            malformed: 0,
            slot_busy: 0,
            duplicate: 0,
            unknown: 0,
            bad_result: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: TaskId = TaskId { slot: 3, generation: 1 };
    const OTHER: TaskId = TaskId { slot: 4, generation: 1 };

    fn table() -> TokenTable {
        let mut t = TokenTable::new();
        t.reset(8);
        t
    }

    #[test]
    fn event_then_resolution_parks_then_wakes_the_task() {
        let mut t = table();
        let tok = Token::new(2, 1);
        assert_eq!(t.on_event(tok, 0x1000, || Waiter::Task(TASK)), EventOutcome::Park(Waiter::Task(TASK)));
        assert_eq!(t.waiting(), 1);
        assert_eq!(t.on_resolution(tok, RESULT_RETRY), ResolutionOutcome::Wake { task: TASK, result: 0, gpa: 0x1000 });
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.stats.woken, 1);
    }

    #[test]
    fn resolution_before_event_is_kept_and_the_event_does_not_park() {
        let mut t = table();
        let tok = Token::new(5, 7);
        assert_eq!(t.on_resolution(tok, RESULT_RETRY), ResolutionOutcome::Early);
        assert_eq!(t.early(), 1);
        // Who would wait is not even asked: the event handler's fast path leaves the scheduler alone.
        let outcome = t.on_event(tok, 0x2000, || unreachable!("a waiter asked for a resolved token"));
        assert_eq!(outcome, EventOutcome::AlreadyResolved { result: 0 });
        assert_eq!((t.waiting(), t.early()), (0, 0));
        assert_eq!(t.stats.resolved_before_event, 1);
        assert_eq!(t.stats.parked, 0, "nobody parked, so nobody can be left asleep");
    }

    #[test]
    fn an_early_failure_reaches_the_event() {
        let mut t = table();
        let tok = Token::new(1, 1);
        t.on_resolution(tok, RESULT_FAILED);
        assert_eq!(t.on_event(tok, 0, || Waiter::Task(TASK)), EventOutcome::AlreadyResolved { result: RESULT_FAILED });
        assert_eq!(t.stats.failed, 1);
    }

    #[test]
    fn halt_waiters_pick_up_their_result_once() {
        let mut t = table();
        let tok = Token::new(0, 3);
        assert_eq!(t.on_event(tok, 0x3000, || Waiter::Halt), EventOutcome::Park(Waiter::Halt));
        assert_eq!(t.take_halt_result(tok), None, "not resolved yet");
        assert_eq!(t.on_resolution(tok, RESULT_RETRY), ResolutionOutcome::HaltDone);
        assert_eq!(t.take_halt_result(tok), Some((RESULT_RETRY, 0x3000)));
        assert_eq!(t.take_halt_result(tok), None, "taken once");
        assert_eq!(t.on_resolution(tok, RESULT_RETRY), ResolutionOutcome::Rejected(Rejection::Duplicate));
    }

    #[test]
    fn a_duplicate_resolution_wakes_nobody() {
        let mut t = table();
        let tok = Token::new(2, 1);
        t.on_event(tok, 0, || Waiter::Task(TASK));
        t.on_resolution(tok, RESULT_RETRY);
        assert_eq!(t.on_resolution(tok, RESULT_RETRY), ResolutionOutcome::Rejected(Rejection::Duplicate));
        // The slot's next use is unaffected.
        let next = Token::new(2, 2);
        assert_eq!(t.on_event(next, 0, || Waiter::Task(OTHER)), EventOutcome::Park(Waiter::Task(OTHER)));
        assert_eq!(t.on_resolution(next, RESULT_RETRY), ResolutionOutcome::Wake { task: OTHER, result: 0, gpa: 0 });
        assert_eq!(t.stats.duplicate, 1);
    }

    #[test]
    fn a_resolution_for_another_token_of_a_busy_slot_wakes_nobody() {
        let mut t = table();
        t.on_event(Token::new(4, 2), 0, || Waiter::Task(TASK));
        assert_eq!(t.on_resolution(Token::new(4, 1), RESULT_RETRY), ResolutionOutcome::Rejected(Rejection::Unknown));
        assert_eq!(t.on_resolution(Token::new(4, 3), RESULT_RETRY), ResolutionOutcome::Rejected(Rejection::Unknown));
        assert_eq!(t.waiting(), 1, "the real waiter still waits");
        assert_eq!(
            t.on_resolution(Token::new(4, 2), RESULT_RETRY),
            ResolutionOutcome::Wake { task: TASK, result: 0, gpa: 0 }
        );
    }

    #[test]
    fn a_bogus_early_resolution_never_satisfies_a_different_event() {
        let mut t = table();
        // The host "resolves" a token it never handed out...
        assert_eq!(t.on_resolution(Token::new(6, 9), RESULT_RETRY), ResolutionOutcome::Early);
        // ...then delivers a real event on the same slot: it must park, not run on.
        assert_eq!(t.on_event(Token::new(6, 10), 0, || Waiter::Task(TASK)), EventOutcome::Park(Waiter::Task(TASK)));
        assert_eq!(t.stats.unknown, 1);
        assert_eq!(t.early(), 0);
    }

    #[test]
    fn malformed_tokens_and_results_are_rejected() {
        let mut t = table();
        assert_eq!(t.on_event(Token(0), 0, || Waiter::Task(TASK)), EventOutcome::Rejected(Rejection::Malformed));
        assert_eq!(
            t.on_event(Token::new(8, 1), 0, || Waiter::Task(TASK)),
            EventOutcome::Rejected(Rejection::Malformed)
        );
        assert_eq!(
            t.on_event(Token::new(1, 0), 0, || Waiter::Task(TASK)),
            EventOutcome::Rejected(Rejection::Malformed)
        );
        assert_eq!(t.on_resolution(Token::new(9, 1), RESULT_RETRY), ResolutionOutcome::Rejected(Rejection::Malformed));
        assert_eq!(t.on_resolution(Token::new(1, 1), 7), ResolutionOutcome::Rejected(Rejection::BadResult));
        assert_eq!(t.stats.rejected(), 5);
        assert_eq!((t.waiting(), t.early()), (0, 0));
    }

    #[test]
    fn an_event_on_a_busy_slot_is_rejected_and_the_first_waiter_keeps_its_place() {
        let mut t = table();
        t.on_event(Token::new(3, 1), 0, || Waiter::Task(TASK));
        assert_eq!(
            t.on_event(Token::new(3, 2), 0, || Waiter::Task(OTHER)),
            EventOutcome::Rejected(Rejection::SlotBusy)
        );
        assert_eq!(
            t.on_resolution(Token::new(3, 1), RESULT_RETRY),
            ResolutionOutcome::Wake { task: TASK, result: 0, gpa: 0 }
        );
    }

    #[test]
    fn many_tokens_interleave_independently() {
        let mut t = table();
        let toks: Vec<Token> = (0..8).map(|s| Token::new(s, 1)).collect();
        // Even slots: event first. Odd slots: resolution first.
        for (i, tok) in toks.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(
                    t.on_event(*tok, i as u64, || Waiter::Task(TaskId { slot: i as u16, generation: 1 })),
                    EventOutcome::Park(Waiter::Task(TaskId { slot: i as u16, generation: 1 }))
                );
            } else {
                assert_eq!(t.on_resolution(*tok, RESULT_RETRY), ResolutionOutcome::Early);
            }
        }
        for (i, tok) in toks.iter().enumerate().rev() {
            let task = TaskId { slot: i as u16, generation: 1 };
            if i % 2 == 0 {
                assert_eq!(
                    t.on_resolution(*tok, RESULT_RETRY),
                    ResolutionOutcome::Wake { task, result: 0, gpa: i as u64 }
                );
            } else {
                assert_eq!(t.on_event(*tok, 0, || Waiter::Task(task)), EventOutcome::AlreadyResolved { result: 0 });
            }
        }
        assert_eq!((t.waiting(), t.early(), t.stats.rejected()), (0, 0, 0));
    }
}
