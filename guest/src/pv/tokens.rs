//! The token table both page-not-present protocols share: who waits for which token, and what
//! an event ("this access needs a page; here is token T") or a wake (the ring's resolution,
//! KVM's "page ready") does to it, in either order. Plain code, unit-tested on the host through
//! every interleaving that matters.
//!
//! An event parks its waiter on the token; the token's wake wakes it. A wake may come first
//! (a host may resolve before it delivers the event, and KVM may deliver "page ready" on
//! another vCPU than its "page not present"): it is kept, and the event that follows with the
//! same token does not park at all. A wake-all (KVM's token `0xFFFF_FFFF`) wakes every waiter;
//! their tokens stay "abandoned" so that their own wakes, which may still come, are absorbed
//! rather than kept for events that will never come. Everything arrives from host-written
//! memory, so what does not fit is rejected with a reason and counted, and never wakes anyone.
//!
//! Entries are keyed by the token itself, two ways ([`Keying`]):
//! - **by ring slot** (the ring protocol): the token's low 16 bits are its slot, so the entry
//!   is found at once and a slot has one live token; another token found there is stale;
//! - **hashed** (KVM): tokens are values the host picks (KVM's differ only above bit 11), so an
//!   entry's home is a multiplicative hash of the token, with linear probing, and a removal
//!   shifts its cluster back so that no probe ever walks over holes.
//!
//! **A full table** (hashed keying, every entry in use) gives up a kept wake or an abandoned
//! token, never a waiter, to make room, and counts it (`given_up`). Full of waiters only, it
//! refuses the new token (`Rejection::Full`): an event is then not parked and its access is
//! simply retried (the host, which still has the page coming, makes the vCPU wait for it: KVM
//! halts it, the host stub waits synchronously), and a wake is dropped. Neither happens while the
//! host keeps its own limit below the table's size (KVM: 64 tokens per vCPU; the ring: its N
//! slots, one entry each).

use pvagent_abi::pnp::{RESULT_FAILED, RESULT_RETRY};

use crate::task::table::TaskId;

/// Who waits for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// A task, parked in the scheduler until woken.
    Task(TaskId),
    /// A context that cannot sleep, waiting in the HLT loop; it polls [`TokenTable::take_halt_result`].
    Halt,
}

/// How a table finds a token's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keying {
    /// No protocol registered: every token is refused as malformed.
    Off,
    /// The ring protocol's tokens (`pvagent_abi::pnp::Token`): bits 15:0 the slot (below
    /// `entries`), bits 31:16 a sequence number that is never 0. One entry per slot.
    Slot { entries: u32 },
    /// Any token but 0, hashed to its home entry.
    Hashed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Nothing pending; `last` is the token this entry completed most recently (by-slot keying:
    /// a second wake for it is a duplicate), 0 for none.
    Free { last: u32 },
    /// An event parked `waiter` on `token`.
    Waiting { token: u32, waiter: Waiter, gpa: u64 },
    /// The wake for `token` came before its event.
    Early { token: u32, result: u32 },
    /// A HLT-loop waiter's result, not picked up yet; `abandoned` when it came from a
    /// wake-all, so that the token's own wake may still come.
    HaltResolved { token: u32, result: u32, gpa: u64, abandoned: bool },
    /// Its waiter was woken by a wake-all; the token's own wake may still come.
    Abandoned { token: u32 },
}

impl Entry {
    fn token(&self) -> Option<u32> {
        match *self {
            Entry::Free { .. } => None,
            Entry::Waiting { token, .. }
            | Entry::Early { token, .. }
            | Entry::HaltResolved { token, .. }
            | Entry::Abandoned { token } => Some(token),
        }
    }

    /// Whether it holds a waiter (a full table never gives those up).
    fn has_waiter(&self) -> bool {
        matches!(self, Entry::Waiting { .. } | Entry::HaltResolved { .. })
    }
}

/// Why an event or a wake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Token 0, or (by slot) a zero sequence number or a slot beyond the ring.
    Malformed,
    /// An event for a token (by slot: a slot) that already has a waiter or an unclaimed result.
    Busy,
    /// A second wake for a token that was already woken.
    Duplicate,
    /// By slot: a wake for a token nobody waits for and that is not early for a free slot.
    Unknown,
    /// A result other than retry (0) or failed (1).
    BadResult,
    /// Every entry holds a waiter: the token cannot be recorded.
    Full,
}

/// What to do with the context that took an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Wait: this waiter is registered on the token.
    Park(Waiter),
    /// The wake is already here: act on `result` at once.
    AlreadyResolved { result: u32 },
    /// The event is not acted on (the access simply continues or is retried).
    Rejected(Rejection),
}

/// What to do after a wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
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
    /// For a token whose waiter a wake-all woke already: nothing more to do.
    Late,
    Rejected(Rejection),
}

/// Counts of everything the table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    pub parked: u64,
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
}

impl TokenStats {
    /// All counters zero.
    pub const fn new() -> Self {
        Self {
            parked: 0,
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
        }
    }

    /// Everything rejected.
    pub fn rejected(&self) -> u64 {
        self.malformed + self.busy + self.duplicate + self.unknown + self.bad_result + self.full
    }

    fn count(&mut self, r: Rejection) {
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

/// The token table of one vCPU and one protocol, of `N` entries (a power of two).
#[derive(Debug)]
pub struct TokenTable<const N: usize> {
    entries: [Entry; N],
    keying: Keying,
    /// Entries holding a waiter, and entries holding a kept wake or an abandoned token.
    waiting: usize,
    kept: usize,
    pub stats: TokenStats,
}

impl<const N: usize> TokenTable<N> {
    const FREE: Entry = Entry::Free { last: 0 };
    /// `log2(N)`, for the hash.
    const ORDER: u32 = N.trailing_zeros();
    const SIZE_IS_A_POWER_OF_TWO: () = assert!(N.is_power_of_two() && N >= 2 && N <= 1 << 16);

    /// A table that accepts nothing until [`TokenTable::reset`].
    pub const fn new() -> Self {
        Self::with_keying(Keying::Off)
    }

    /// An empty table with `keying` (a static one costs nothing at boot).
    pub const fn with_keying(keying: Keying) -> Self {
        let () = Self::SIZE_IS_A_POWER_OF_TWO;
        Self { entries: [Self::FREE; N], keying, waiting: 0, kept: 0, stats: TokenStats::new() }
    }

    /// Starts over with `keying` (by slot: at most `N` slots, and only those are cleared, the
    /// others never being looked at). Only call with nothing pending.
    pub fn reset(&mut self, keying: Keying) {
        match keying {
            Keying::Slot { entries } => {
                assert!(entries as usize <= N, "a ring of {entries} slots in a table of {N}");
                self.entries[..entries as usize].fill(Self::FREE);
            }
            Keying::Off | Keying::Hashed => self.entries = [Self::FREE; N],
        }
        self.keying = keying;
        self.waiting = 0;
        self.kept = 0;
    }

    /// Where `token` lives or would live.
    fn home(&self, token: u32) -> Result<usize, Rejection> {
        match self.keying {
            Keying::Slot { entries } if token >> 16 != 0 && token & 0xFFFF < entries => Ok((token & 0xFFFF) as usize),
            Keying::Hashed if token != 0 => Ok((token.wrapping_mul(0x9E37_79B9) >> (32 - Self::ORDER)) as usize),
            Keying::Off | Keying::Slot { .. } | Keying::Hashed => Err(Rejection::Malformed),
        }
    }

    /// The entry holding `token`, if any (`home` is its home).
    fn find(&self, token: u32, home: usize) -> Option<usize> {
        if let Keying::Slot { .. } = self.keying {
            return (self.entries[home].token() == Some(token)).then_some(home);
        }
        let mut i = home;
        for _ in 0..N {
            match self.entries[i].token() {
                None => return None,
                Some(t) if t == token => return Some(i),
                Some(_) => i = (i + 1) & (N - 1),
            }
        }
        None
    }

    /// Replaces entry `i`, keeping the counts.
    fn put(&mut self, i: usize, entry: Entry) {
        let old = self.entries[i];
        self.waiting = self.waiting + usize::from(entry.has_waiter()) - usize::from(old.has_waiter());
        let kept = |e: &Entry| usize::from(e.token().is_some() && !e.has_waiter());
        self.kept = self.kept + kept(&entry) - kept(&old);
        self.entries[i] = entry;
    }

    /// Frees entry `i` (by slot: remembering its token). Hashed, the entries after it in its
    /// cluster that could live closer to their home move back, so that every token stays
    /// reachable from its home without crossing a free entry.
    fn remove(&mut self, i: usize) {
        let last = self.entries[i].token().unwrap_or(0);
        self.put(i, Entry::Free { last });
        if self.keying != Keying::Hashed {
            return;
        }
        let (mut hole, mut j) = (i, i);
        loop {
            j = (j + 1) & (N - 1);
            let Some(token) = self.entries[j].token() else { break };
            let Ok(home) = self.home(token) else { break };
            // An entry stays if its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.entries[hole] = self.entries[j];
                self.entries[j] = Self::FREE;
                hole = j;
            }
        }
    }

    /// Records `entry` for a token not in the table (`home` is its home): the first free entry
    /// of its probe; in a full table, the first entry without a waiter, given up.
    fn insert(&mut self, home: usize, entry: Entry) -> Result<(), Rejection> {
        if let Keying::Slot { .. } = self.keying {
            self.put(home, entry);
            return Ok(());
        }
        let probe = |k: usize| (home + k) & (N - 1);
        if let Some(i) = (0..N).map(probe).find(|&i| self.entries[i].token().is_none()) {
            self.put(i, entry);
            return Ok(());
        }
        // Full: every entry is on every probe path, so one replaced in place keeps every other
        // token reachable.
        match (0..N).map(probe).find(|&i| !self.entries[i].has_waiter()) {
            Some(i) => {
                self.stats.given_up += 1;
                self.put(i, entry);
                Ok(())
            }
            None => Err(Rejection::Full),
        }
    }

    fn reject<T>(&mut self, r: Rejection, wrap: impl FnOnce(Rejection) -> T) -> T {
        self.stats.count(r);
        wrap(r)
    }

    fn park(
        &mut self,
        at: Option<usize>,
        home: usize,
        token: u32,
        gpa: u64,
        waiter: impl FnOnce() -> Waiter,
    ) -> EventOutcome {
        let waiter = waiter();
        let waiting = Entry::Waiting { token, waiter, gpa };
        match at {
            Some(i) => self.put(i, waiting),
            None => {
                if let Err(r) = self.insert(home, waiting) {
                    return self.reject(r, EventOutcome::Rejected);
                }
            }
        }
        self.stats.parked += 1;
        EventOutcome::Park(waiter)
    }

    /// An event for `token` was taken (for an access at `gpa`, 0 if unknown); `waiter` says
    /// who waits for it, asked only if someone must (deciding reads the scheduler's state).
    /// Inlined, as [`TokenTable::on_wake`]: both run on every event.
    #[inline(always)]
    pub fn on_event(&mut self, token: u32, gpa: u64, waiter: impl FnOnce() -> Waiter) -> EventOutcome {
        let home = match self.home(token) {
            Ok(home) => home,
            Err(r) => return self.reject(r, EventOutcome::Rejected),
        };
        let by_slot = self.keying != Keying::Hashed;
        let at = if by_slot { Some(home) } else { self.find(token, home) };
        match at.map(|i| self.entries[i]) {
            Some(Entry::Early { token: early, result }) if early == token => {
                let i = at.unwrap_or(home);
                self.remove(i);
                self.stats.resolved_before_event += 1;
                if result == RESULT_FAILED {
                    self.stats.failed += 1;
                }
                EventOutcome::AlreadyResolved { result }
            }
            Some(Entry::Early { .. }) => {
                // By slot, an early wake naming another token of this slot was not for a token
                // the host handed out: count it and serve the real event in its place.
                self.stats.count(Rejection::Unknown);
                self.park(at, home, token, gpa, waiter)
            }
            // Woken by a wake-all and faulting again: its own wake is still to come.
            Some(Entry::Abandoned { .. }) | Some(Entry::Free { .. }) | None => self.park(at, home, token, gpa, waiter),
            Some(Entry::Waiting { .. } | Entry::HaltResolved { .. }) => {
                self.reject(Rejection::Busy, EventOutcome::Rejected)
            }
        }
    }

    /// The host woke `token` with `result`.
    #[inline(always)]
    pub fn on_wake(&mut self, token: u32, result: u32) -> WakeOutcome {
        let home = match self.home(token) {
            Ok(home) => home,
            Err(r) => return self.reject(r, WakeOutcome::Rejected),
        };
        if result != RESULT_RETRY && result != RESULT_FAILED {
            return self.reject(Rejection::BadResult, WakeOutcome::Rejected);
        }
        let Some(i) = self.find(token, home) else {
            if self.keying != Keying::Hashed {
                // By slot, the slot says more: the token it completed last, or another one live.
                match self.entries[home] {
                    Entry::Free { last } if last == token => {
                        return self.reject(Rejection::Duplicate, WakeOutcome::Rejected);
                    }
                    Entry::Free { .. } => {}
                    _ => return self.reject(Rejection::Unknown, WakeOutcome::Rejected),
                }
            }
            return match self.insert(home, Entry::Early { token, result }) {
                Ok(()) => WakeOutcome::Early,
                Err(r) => self.reject(r, WakeOutcome::Rejected),
            };
        };
        match self.entries[i] {
            Entry::Waiting { waiter, gpa, .. } => {
                if result == RESULT_FAILED {
                    self.stats.failed += 1;
                }
                self.stats.woken += 1;
                match waiter {
                    Waiter::Task(task) => {
                        self.remove(i);
                        WakeOutcome::Wake { task, result, gpa }
                    }
                    Waiter::Halt => {
                        self.put(i, Entry::HaltResolved { token, result, gpa, abandoned: false });
                        WakeOutcome::HaltDone
                    }
                }
            }
            Entry::HaltResolved { gpa, abandoned: true, .. } => {
                self.stats.late += 1;
                self.put(i, Entry::HaltResolved { token, result, gpa, abandoned: false });
                WakeOutcome::Late
            }
            Entry::Abandoned { .. } => {
                self.stats.late += 1;
                self.remove(i);
                WakeOutcome::Late
            }
            Entry::Early { .. } | Entry::HaltResolved { .. } | Entry::Free { .. } => {
                self.reject(Rejection::Duplicate, WakeOutcome::Rejected)
            }
        }
    }

    /// Wakes every waiter with "retry", handing each task to `wake`; a HLT-loop waiter finds
    /// its result. Their tokens stay as abandoned, for their own wakes. Returns how many.
    pub fn wake_all(&mut self, mut wake: impl FnMut(TaskId)) -> usize {
        if self.waiting == 0 {
            // KVM's wake-all right after enabling finds nobody: no scan.
            return 0;
        }
        let mut woken = 0;
        for i in 0..N {
            let next = match self.entries[i] {
                Entry::Waiting { token, waiter: Waiter::Task(task), .. } => {
                    wake(task);
                    Entry::Abandoned { token }
                }
                Entry::Waiting { token, waiter: Waiter::Halt, gpa } => {
                    Entry::HaltResolved { token, result: RESULT_RETRY, gpa, abandoned: true }
                }
                _ => continue,
            };
            self.put(i, next);
            woken += 1;
        }
        self.stats.woken_by_wake_all += woken as u64;
        woken
    }

    /// For the HLT loop: the result of `token` and the access's address once it is resolved.
    pub fn take_halt_result(&mut self, token: u32) -> Option<(u32, u64)> {
        let home = self.home(token).ok()?;
        let i = self.find(token, home)?;
        match self.entries[i] {
            Entry::HaltResolved { result, gpa, abandoned, .. } => {
                if abandoned {
                    self.put(i, Entry::Abandoned { token });
                } else {
                    self.remove(i);
                }
                Some((result, gpa))
            }
            _ => None,
        }
    }

    /// Tokens with a waiter (parked, or halting with its result not picked up).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Entries without a waiter: wakes kept for events not seen yet, and abandoned tokens.
    pub fn kept(&self) -> usize {
        self.kept
    }
}

impl<const N: usize> Default for TokenTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
