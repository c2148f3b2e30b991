//! The token table both page-not-present protocols share: who waits for which token, and what
//! an event ("this access needs a page; here is token T") or a wake (the ring's resolution,
//! KVM's "page ready") does to it, in either order. Plain code, unit-tested on the host through
//! every interleaving that matters.
//!
//! An event parks its waiter on the token; the token's wake wakes it. A wake may come first
//! (the ring's host may resolve before it delivers the event): it is kept, and the event that
//! follows with the same token does not park at all. Stock KVM never does that: it raises
//! "page ready" on the vCPU that owns the fetch (`kvm_arch_async_page_present`), after that
//! vCPU's "page not present"; for KVM the path is there for robustness against a host that
//! does. A wake-all (KVM's token `0xFFFF_FFFF`) wakes every waiter and drops the kept wakes and
//! the tokens abandoned before (Linux frees its placeholders there too); the tokens of the
//! waiters it woke stay "abandoned" so that their own wakes, which may still come, are absorbed
//! rather than kept for events that will never come. Everything arrives from host-written
//! memory, so what does not fit is rejected with a reason and counted, and never wakes anyone.
//!
//! Entries are keyed by the token itself, two ways ([`Keying`], a type: each protocol's table is
//! compiled for its own):
//! - **by ring slot** (the ring protocol): the token's low 16 bits are its slot, so the entry
//!   is found at once and a slot has one live token; another token found there is stale;
//! - **hashed** (KVM): tokens are values the host picks (KVM's differ only above bit 11), so an
//!   entry's home is a multiplicative hash of the token, with linear probing, and a removal
//!   shifts its cluster back so that no probe ever walks over holes.
//!
//! **A full table** (hashed keying, every entry in use) gives up an abandoned token first, a
//! kept wake only when no abandoned token is left (its event may still come, and would then
//! wait for a wake already spent), and never a waiter, to make room, and counts it (`given_up`). Full of waiters only, it
//! refuses the new token (`Rejection::Full`): an event is then not parked and its access is
//! simply retried (the host, which still has the page coming, makes the vCPU wait for it: KVM
//! halts it, the host stub waits synchronously), and a wake is dropped. Neither happens while the
//! host keeps its own limit below the table's size (KVM: 64 tokens per vCPU; the ring: its N
//! slots, one entry each).

use pvagent_abi::breach::Breach;
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

/// How a table finds a token's entry: a type, so that each protocol's table is compiled for its
/// own keying and the ring's pays nothing for KVM's.
pub trait Keying: Copy + core::fmt::Debug {
    /// One live token per home: the entry at a token's home holds it, or a stale token (by
    /// slot); otherwise tokens share homes and probe linearly (hashed).
    const BY_SLOT: bool;
    /// Where `token` lives or would live in a table of `2^order` entries, or why it is not a
    /// token at all.
    fn home(self, token: u32, order: u32) -> Result<usize, Rejection>;
    /// The entries a table with this keying uses (by slot: only the ring's).
    fn used(self, capacity: usize) -> usize;
    /// Whether every token this keying accepts has its home in a table of `capacity` entries.
    fn fits(self, capacity: usize) -> bool;
    /// A wake kept for `kept` met the event of another token of the same home (by slot: the
    /// wake named a token the host never handed out). Nothing to do by default.
    fn forged_wake(self, kept: u32) {
        let _ = kept;
    }
}

/// The ring protocol's tokens (`pvagent_abi::pnp::Token`): bits 15:0 the slot (below
/// `entries`), bits 31:16 a sequence number that is never 0. One entry per slot; `entries` 0
/// (no ring registered) refuses every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BySlot {
    pub entries: u32,
}

impl Keying for BySlot {
    const BY_SLOT: bool = true;

    #[inline(always)]
    fn home(self, token: u32, _order: u32) -> Result<usize, Rejection> {
        if token >> 16 != 0 && token & 0xFFFF < self.entries {
            Ok((token & 0xFFFF) as usize)
        } else {
            Err(Rejection::Malformed)
        }
    }

    fn used(self, capacity: usize) -> usize {
        (self.entries as usize).min(capacity)
    }

    fn fits(self, capacity: usize) -> bool {
        self.entries as usize <= capacity
    }

    /// The ring's rule: a resolution for a token the host never handed out, found only now
    /// (kept for a free slot, whose event came with its own token).
    fn forged_wake(self, kept: u32) {
        crate::pv::breach::note(Breach::ResolutionForUnknownToken, u64::from(kept), 0);
    }
}

/// Any token but 0, hashed to its home entry (multiplicative hashing: KVM's tokens differ only
/// above bit 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashed;

impl Keying for Hashed {
    const BY_SLOT: bool = false;

    #[inline(always)]
    fn home(self, token: u32, order: u32) -> Result<usize, Rejection> {
        if token == 0 {
            Err(Rejection::Malformed)
        } else {
            Ok((token.wrapping_mul(0x9E37_79B9) >> (32 - order)) as usize)
        }
    }

    fn used(self, capacity: usize) -> usize {
        capacity
    }

    fn fits(self, _capacity: usize) -> bool {
        true
    }
}

/// One entry: a token and what is pending for it. The token sits in the same place whatever
/// the state, so that looking a token up is one compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// The entry's token; when `Free`, the token it completed most recently (by-slot keying: a
    /// second wake for it is a duplicate), 0 for none.
    token: u32,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing pending.
    Free,
    /// An event parked `waiter` on the token (since the table's `since` for the entry).
    Waiting { waiter: Waiter, gpa: u64 },
    /// The token's wake came before its event.
    Early { result: u32 },
    /// A HLT-loop waiter's result, not picked up yet; `abandoned` when it came from a
    /// wake-all, so that the token's own wake may still come.
    HaltResolved { result: u32, gpa: u64, abandoned: bool },
    /// Its waiter was woken by a wake-all; the token's own wake may still come.
    Abandoned,
}

impl Entry {
    const FREE: Entry = Entry { token: 0, state: State::Free };

    /// The token it holds, if it is in use.
    #[inline(always)]
    fn live(&self) -> Option<u32> {
        (!matches!(self.state, State::Free)).then_some(self.token)
    }

    /// Whether it holds a waiter (a full table never gives those up).
    fn has_waiter(&self) -> bool {
        matches!(self.state, State::Waiting { .. } | State::HaltResolved { .. })
    }

    /// Whether a wake-all drops it: a kept wake, or a token abandoned by an earlier wake-all.
    fn dropped_at_wake_all(&self) -> bool {
        matches!(self.state, State::Early { .. } | State::Abandoned)
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

/// How a parked waiter waits: what the handler does once the table has registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// Block the task (it was [`Waiter::Task`]).
    Task,
    /// Wait in the HLT loop ([`Waiter::Halt`]).
    Halt,
}

/// What to do with the context that took an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Wait: the waiter is registered on the token. Only how it waits comes back (the task is
    /// the current one): on the event path, a smaller value is fewer instructions.
    Park(Parked),
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

/// The token table of one vCPU and one protocol, of `N` entries (a power of two). (Host tests
/// clone it: `pv::interleavings` explores from copies of one state.)
#[derive(Debug)]
#[cfg_attr(test, derive(Clone))]
pub struct TokenTable<K: Keying, const N: usize> {
    entries: [Entry; N],
    /// When each waiting entry's wait began, on the clock its event gave (TSC cycles in the
    /// kernel), [`deadline::REPORTED`] once reported past its deadline; meaningless for an
    /// entry that does not wait. Beside the entries rather than in them: in an entry it made
    /// every event's look-up copy more (the paths that never wait grew by 8 instructions).
    since: [u64; N],
    keying: K,
    pub stats: TokenStats,
}

impl<K: Keying, const N: usize> TokenTable<K, N> {
    /// `log2(N)`, for the hash.
    const ORDER: u32 = N.trailing_zeros();
    const SIZE_IS_A_POWER_OF_TWO: () = assert!(N.is_power_of_two() && N >= 2 && N <= 1 << 16);

    /// An empty table with `keying` (a static one costs nothing at boot).
    pub const fn new(keying: K) -> Self {
        let () = Self::SIZE_IS_A_POWER_OF_TWO;
        Self { entries: [Entry::FREE; N], since: [0; N], keying, stats: TokenStats::new() }
    }

    /// Starts over with `keying`. Only call with nothing pending. The entries cleared are those
    /// the old keying reached (by slot: only its slots): no other was ever written, so a static
    /// table's first keying clears nothing (a ring's registration at boot would otherwise fill
    /// its 32 entries again, about a hundred string iterations).
    pub fn reset(&mut self, keying: K) {
        // Not `used`, which is clamped to the table: a ring beyond it would index past it.
        // A debug assertion (the dev kernel, host tests): in a release kernel such a slot still
        // panics, at its index's bounds check, and the boot's registration costs nothing more.
        debug_assert!(keying.fits(N), "{keying:?} in a table of {N}");
        let touched = self.keying.used(N);
        self.entries[..touched].fill(Entry::FREE);
        self.keying = keying;
    }

    /// Where `token` lives or would live.
    #[inline(always)]
    fn home(&self, token: u32) -> Result<usize, Rejection> {
        self.keying.home(token, Self::ORDER)
    }

    /// The entry holding `token`, if any (`home` is its home).
    #[inline(always)]
    fn find(&self, token: u32, home: usize) -> Option<usize> {
        if K::BY_SLOT {
            return (self.entries[home].live() == Some(token)).then_some(home);
        }
        let mut i = home;
        for _ in 0..N {
            match self.entries[i].live() {
                None => return None,
                Some(t) if t == token => return Some(i),
                Some(_) => i = (i + 1) & (N - 1),
            }
        }
        None
    }

    /// Sets entry `i`.
    #[inline(always)]
    fn put(&mut self, i: usize, token: u32, state: State) {
        self.entries[i] = Entry { token, state };
    }

    /// Frees entry `i`; its token stays, as the one it completed last (by slot). Hashed, the
    /// entries after it in its cluster that could live closer to their home move back.
    #[inline(always)]
    fn remove(&mut self, i: usize) {
        self.entries[i].state = State::Free;
        if !K::BY_SLOT {
            self.close_gap(i);
        }
    }

    /// After entry `hole` was freed (hashed keying): moves back the entries of its cluster that
    /// may, so that every token stays reachable from its home without crossing a free entry.
    fn close_gap(&mut self, mut hole: usize) {
        let mut j = hole;
        loop {
            j = (j + 1) & (N - 1);
            let Some(token) = self.entries[j].live() else { break };
            let Ok(home) = self.home(token) else { break };
            // An entry stays if its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.entries[hole] = self.entries[j];
                self.since[hole] = self.since[j];
                self.entries[j] = Entry::FREE;
                hole = j;
            }
        }
    }

    /// Records `token` in `state` when it is not in the table (`home` is its home): at its
    /// home (by slot), or the first free entry of its probe; in a full table, the first entry
    /// without a waiter, given up. Returns the entry.
    #[inline(always)]
    fn insert(&mut self, home: usize, token: u32, state: State) -> Result<usize, Rejection> {
        let i = if K::BY_SLOT { home } else { self.probe_for_room(home)? };
        self.put(i, token, state);
        Ok(i)
    }

    /// Hashed keying: the entry a new token from `home` goes to.
    fn probe_for_room(&mut self, home: usize) -> Result<usize, Rejection> {
        let probe = |k: usize| (home + k) & (N - 1);
        if let Some(i) = (0..N).map(probe).find(|&i| self.entries[i].live().is_none()) {
            return Ok(i);
        }
        // Full: every entry is on every probe path, so one replaced in place keeps every other
        // token reachable. An abandoned token first: its wake may never come, while a kept
        // wake's event, if it comes, would wait for a wake already spent.
        let i = (0..N)
            .map(probe)
            .find(|&i| self.entries[i].state == State::Abandoned)
            .or_else(|| (0..N).map(probe).find(|&i| !self.entries[i].has_waiter()))
            .ok_or(Rejection::Full)?;
        self.stats.given_up += 1;
        Ok(i)
    }

    fn reject<T>(&mut self, r: Rejection, wrap: impl FnOnce(Rejection) -> T) -> T {
        self.stats.count(r);
        wrap(r)
    }

    /// Parks the waiter `waiter` names on `token` from `now`, in entry `at` or, if none, a new
    /// one.
    #[inline(always)]
    fn park(
        &mut self,
        at: Option<usize>,
        home: usize,
        token: u32,
        gpa: u64,
        (waiter, now): (impl FnOnce() -> Waiter, impl FnOnce() -> u64),
    ) -> EventOutcome {
        let waiter = waiter();
        let waiting = State::Waiting { waiter, gpa };
        let i = match at {
            Some(i) => {
                self.put(i, token, waiting);
                i
            }
            None => match self.insert(home, token, waiting) {
                Ok(i) => i,
                Err(r) => return self.reject(r, EventOutcome::Rejected),
            },
        };
        self.since[i] = now();
        // Counted here, where the waiter is known, rather than by the caller from the outcome:
        // a branch less on every event.
        match waiter {
            Waiter::Task(_) => {
                self.stats.slept += 1;
                EventOutcome::Park(Parked::Task)
            }
            Waiter::Halt => {
                self.stats.halted += 1;
                EventOutcome::Park(Parked::Halt)
            }
        }
    }

    /// [`TokenTable::on_event_at`] at time 0 (host tests that do not look at deadlines).
    #[cfg(test)]
    pub fn on_event(&mut self, token: u32, gpa: u64, waiter: impl FnOnce() -> Waiter) -> EventOutcome {
        self.on_event_at(token, gpa, waiter, || 0)
    }

    /// An event for `token` was taken (for an access at `gpa`, 0 if unknown); `waiter` says
    /// who waits for it and `now` when the wait begins, both asked only if someone must wait
    /// (deciding reads the scheduler's state; the time is the deadline's, `deadline`). Inlined,
    /// as [`TokenTable::on_wake`]: both run on every event.
    #[inline(always)]
    pub fn on_event_at(
        &mut self,
        token: u32,
        gpa: u64,
        waiter: impl FnOnce() -> Waiter,
        now: impl FnOnce() -> u64,
    ) -> EventOutcome {
        let waiter = (waiter, now);
        let home = match self.home(token) {
            Ok(home) => home,
            Err(r) => return self.reject(r, EventOutcome::Rejected),
        };
        // By slot, the slot's entry whatever token it holds; hashed, the token's, if any.
        let Some(i) = (if K::BY_SLOT { Some(home) } else { self.find(token, home) }) else {
            return self.park(None, home, token, gpa, waiter);
        };
        let entry = self.entries[i];
        match entry.state {
            State::Early { result } if entry.token == token => {
                self.remove(i);
                self.stats.resolved_before_event += 1;
                if result == RESULT_FAILED {
                    self.stats.failed += 1;
                }
                EventOutcome::AlreadyResolved { result }
            }
            State::Early { .. } => {
                // By slot, an early wake naming another token of this slot was not for a token
                // the host handed out: count it and serve the real event in its place.
                self.forged_early(i);
                self.park(Some(i), home, token, gpa, waiter)
            }
            // Free, or woken by a wake-all and faulting again (its own wake is still to come).
            State::Free | State::Abandoned => self.park(Some(i), home, token, gpa, waiter),
            State::Waiting { .. } | State::HaltResolved { .. } => self.reject(Rejection::Busy, EventOutcome::Rejected),
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
        // By slot, the slot's entry whatever token it holds (its state says first, then its
        // token); hashed, the token's, if any.
        let i = if K::BY_SLOT {
            home
        } else {
            match self.find(token, home) {
                Some(i) => i,
                None => return self.keep_early(home, token, result),
            }
        };
        let entry = self.entries[i];
        let same = entry.token == token;
        match entry.state {
            State::Waiting { waiter, gpa, .. } if same => {
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
                        self.entries[i].state = State::HaltResolved { result, gpa, abandoned: false };
                        WakeOutcome::HaltDone
                    }
                }
            }
            // By slot, a free slot: its last token again, or a wake before its event.
            State::Free if same => self.reject(Rejection::Duplicate, WakeOutcome::Rejected),
            State::Free => self.keep_early(home, token, result),
            State::HaltResolved { gpa, abandoned: true, .. } if same => {
                self.stats.late += 1;
                self.entries[i].state = State::HaltResolved { result, gpa, abandoned: false };
                WakeOutcome::Late
            }
            State::Abandoned if same => {
                self.stats.late += 1;
                self.remove(i);
                WakeOutcome::Late
            }
            State::Early { .. } | State::HaltResolved { .. } if same => {
                self.reject(Rejection::Duplicate, WakeOutcome::Rejected)
            }
            // By slot: another token is live in this slot.
            _ => self.reject(Rejection::Unknown, WakeOutcome::Rejected),
        }
    }

    /// The early wake kept in entry `i` met the event of another token of its slot: the
    /// table's count and the keying's report, out of the event's way (one call with the one
    /// argument the event path has at hand, as before: its budget is counted in instructions).
    #[cold]
    #[inline(never)]
    fn forged_early(&mut self, i: usize) {
        self.stats.count(Rejection::Unknown);
        self.keying.forged_wake(self.entries[i].token);
    }

    /// Keeps a wake whose event has not come, for that event.
    #[inline(always)]
    fn keep_early(&mut self, home: usize, token: u32, result: u32) -> WakeOutcome {
        match self.insert(home, token, State::Early { result }) {
            Ok(_) => WakeOutcome::Early,
            Err(r) => self.reject(r, WakeOutcome::Rejected),
        }
    }

    /// For the HLT loop: the result of `token` and the access's address once it is resolved.
    #[inline(always)]
    pub fn take_halt_result(&mut self, token: u32) -> Option<(u32, u64)> {
        let home = self.home(token).ok()?;
        let i = if K::BY_SLOT { home } else { self.find(token, home)? };
        let entry = self.entries[i];
        match entry.state {
            State::HaltResolved { result, gpa, abandoned } if entry.token == token => {
                // Only a wake-all abandons, and only a hashed table has one.
                if !K::BY_SLOT && abandoned {
                    self.entries[i].state = State::Abandoned;
                } else {
                    self.remove(i);
                }
                Some((result, gpa))
            }
            _ => None,
        }
    }

    /// The entries in use, for the counts below: a scan, as those are asked for seldom and
    /// keeping them up to date would cost every event.
    fn used(&self) -> &[Entry] {
        &self.entries[..self.keying.used(N)]
    }

    /// Tokens with a waiter (parked, or halting with its result not picked up).
    pub fn waiting(&self) -> usize {
        self.used().iter().filter(|e| e.has_waiter()).count()
    }

    /// Entries without a waiter: wakes kept for events not seen yet, and abandoned tokens.
    pub fn kept(&self) -> usize {
        self.used().iter().filter(|e| e.live().is_some() && !e.has_waiter()).count()
    }

    /// Whether a HLT-loop waiter is registered, its result picked up or not.
    pub fn has_halt_waiter(&self) -> bool {
        self.used()
            .iter()
            .any(|e| matches!(e.state, State::Waiting { waiter: Waiter::Halt, .. } | State::HaltResolved { .. }))
    }
}

impl<const N: usize> TokenTable<Hashed, N> {
    /// Wakes every waiter with "retry", handing each task to `wake`; a HLT-loop waiter finds
    /// its result. Their tokens stay as abandoned, for their own wakes. Kept wakes and the
    /// tokens earlier wake-alls abandoned are dropped first: the host has forgotten them.
    /// Returns how many waiters were woken.
    pub fn wake_all(&mut self, mut wake: impl FnMut(TaskId)) -> usize {
        self.drop_kept();
        let mut woken = 0;
        for entry in &mut self.entries[..N] {
            entry.state = match entry.state {
                State::Waiting { waiter: Waiter::Task(task), .. } => {
                    wake(task);
                    State::Abandoned
                }
                State::Waiting { waiter: Waiter::Halt, gpa, .. } => {
                    State::HaltResolved { result: RESULT_RETRY, gpa, abandoned: true }
                }
                _ => continue,
            };
            woken += 1;
        }
        self.stats.woken_by_wake_all += woken as u64;
        woken
    }

    /// Removes every kept wake and abandoned token. Each removal closes its gap, which may move
    /// an entry the scan has passed, or one it has not reached, into the removed entry's
    /// place: the scan goes on from the place it removed, round the table, until a whole turn
    /// finds nothing more to drop.
    #[cold]
    #[inline(never)]
    fn drop_kept(&mut self) {
        let mut from = 0;
        while let Some(i) = (from..N).chain(0..from).find(|&i| self.entries[i].dropped_at_wake_all()) {
            self.remove(i);
            from = i;
        }
    }
}

mod deadline;
mod stats;
pub use deadline::Overdue;
pub use stats::TokenStats;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
