//! The token table against a reference model, over random sequences of operations with values
//! a hostile host might send: any token (well-formed, stale, duplicate, unknown, 0, beyond the
//! ring, or an arbitrary `u32`), any result, any address, events in any order with their wakes,
//! HLT-loop waiters, wake-alls, and tables small enough to fill. The model is a map from token
//! (by slot: from slot) to what is pending, written from the rules in `tokens.rs`'s comments;
//! after every step the answer (who is woken, with what result and address), every counter and
//! the table's whole content must agree with it. Each run has a fixed case count and seed
//! (`crate::testing`).

use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::testing::check;

/// What is pending for one live token, as the model keeps it and as [`view`] reads the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Live {
    Waiting { waiter: Waiter, gpa: u64 },
    Early { result: u32 },
    HaltResolved { result: u32, gpa: u64, abandoned: bool },
    Abandoned,
}

impl From<State> for Option<Live> {
    fn from(state: State) -> Self {
        Some(match state {
            State::Free => return None,
            State::Waiting { waiter, gpa } => Live::Waiting { waiter, gpa },
            State::Early { result } => Live::Early { result },
            State::HaltResolved { result, gpa, abandoned } => Live::HaltResolved { result, gpa, abandoned },
            State::Abandoned => Live::Abandoned,
        })
    }
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug)]
enum Op {
    Event {
        token: u32,
        gpa: u64,
        waiter: Waiter,
    },
    Wake {
        token: u32,
        result: u32,
    },
    TakeHalt {
        token: u32,
    },
    /// Hashed tables only (KVM's token `0xFFFF_FFFF`).
    WakeAll,
    /// By slot only, and only with nothing pending (as `pnp::register` calls it).
    Reset {
        entries: u32,
    },
}

/// What the step answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Event(EventOutcome),
    Wake(WakeOutcome),
    Halt(Option<(u32, u64)>),
    /// How many waiters a wake-all woke, and the tasks it handed out, sorted.
    WakeAll(usize, Vec<TaskId>),
    Reset,
}

/// The result a host may send: mostly retry or failed, sometimes anything.
fn result() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..2, 1 => any::<u32>()]
}

fn waiter() -> impl Strategy<Value = Waiter> {
    prop_oneof![
        3 => (0u16..4, 0u16..3).prop_map(|(slot, generation)| Waiter::Task(TaskId { slot, generation })),
        1 => Just(Waiter::Halt),
    ]
}

/// Operations over `token`s; `extra` are the keying's own (wake-all or reset).
fn ops(token: impl Strategy<Value = u32> + Clone, extra: BoxedStrategy<Op>) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (token.clone(), any::<u64>(), waiter()).prop_map(|(token, gpa, waiter)| Op::Event { token, gpa, waiter }),
        4 => (token.clone(), result()).prop_map(|(token, result)| Op::Wake { token, result }),
        2 => token.prop_map(|token| Op::TakeHalt { token }),
        1 => extra,
    ];
    prop::collection::vec(op, 1..160)
}

/// Applies `op` to the real table.
fn apply<K: Keying, const N: usize>(t: &mut TokenTable<K, N>, op: Op, asked: &Cell<bool>) -> Answer
where
    TokenTable<K, N>: Extra<K>,
{
    match op {
        Op::Event { token, gpa, waiter } => Answer::Event(t.on_event(token, gpa, || {
            asked.set(true);
            waiter
        })),
        Op::Wake { token, result } => Answer::Wake(t.on_wake(token, result)),
        Op::TakeHalt { token } => Answer::Halt(t.take_halt_result(token)),
        Op::WakeAll | Op::Reset { .. } => t.extra(op),
    }
}

/// The operations one keying has and the other has not.
trait Extra<K> {
    fn extra(&mut self, op: Op) -> Answer;
}

impl<const N: usize> Extra<Hashed> for TokenTable<Hashed, N> {
    fn extra(&mut self, _: Op) -> Answer {
        let mut tasks = Vec::new();
        let woken = self.wake_all(|task| tasks.push(task));
        Answer::WakeAll(woken, sorted(tasks))
    }
}

impl<const N: usize> Extra<BySlot> for TokenTable<BySlot, N> {
    fn extra(&mut self, op: Op) -> Answer {
        let Op::Reset { entries } = op else { unreachable!("{op:?}") };
        self.reset(BySlot { entries });
        Answer::Reset
    }
}

fn sorted(mut tasks: Vec<TaskId>) -> Vec<TaskId> {
    tasks.sort_by_key(|t| (t.slot, t.generation));
    tasks
}

fn parked(waiter: Waiter, stats: &mut TokenStats) -> EventOutcome {
    match waiter {
        Waiter::Task(_) => {
            stats.slept += 1;
            EventOutcome::Park(Parked::Task)
        }
        Waiter::Halt => {
            stats.halted += 1;
            EventOutcome::Park(Parked::Halt)
        }
    }
}

fn rejected(r: Rejection, stats: &mut TokenStats) -> Rejection {
    stats.count(r);
    r
}

/// What a wake does to a token the model has a waiter for: the answer and the new state
/// (`None`: removed). Both keyings share it.
fn wake_waiter(waiter: Waiter, gpa: u64, result: u32, stats: &mut TokenStats) -> (WakeOutcome, Option<Live>) {
    stats.woken += 1;
    stats.failed += u64::from(result == RESULT_FAILED);
    match waiter {
        Waiter::Task(task) => (WakeOutcome::Wake { task, result, gpa }, None),
        Waiter::Halt => (WakeOutcome::HaltDone, Some(Live::HaltResolved { result, gpa, abandoned: false })),
    }
}

/// The by-slot model: per slot of the ring, the token it last held and what is pending for it
/// (`None`: free; the token is then the one it completed last, 0 for none).
#[derive(Debug)]
struct SlotModel {
    entries: u32,
    slots: Vec<(u32, Option<Live>)>,
    stats: TokenStats,
}

impl SlotModel {
    fn new(entries: u32) -> Self {
        Self { entries, slots: vec![(0, None); entries as usize], stats: TokenStats::new() }
    }

    /// The slot of a token well-formed for a ring of `entries`.
    fn slot(entries: u32, token: u32) -> Option<usize> {
        let token = pvagent_abi::pnp::Token(token);
        token.is_well_formed(entries).then_some(usize::from(token.slot()))
    }

    fn pending(&self) -> usize {
        self.slots.iter().filter(|(_, s)| s.is_some()).count()
    }

    fn apply(&mut self, op: Op, asked: &mut bool) -> Answer {
        let entries = self.entries;
        let stats = &mut self.stats;
        match op {
            Op::Event { token, gpa, waiter } => {
                let Some(slot) = Self::slot(entries, token) else {
                    return Answer::Event(EventOutcome::Rejected(rejected(Rejection::Malformed, stats)));
                };
                let (held, state) = self.slots[slot];
                let outcome = match state {
                    Some(Live::Early { result }) if held == token => {
                        self.slots[slot] = (token, None);
                        stats.resolved_before_event += 1;
                        stats.failed += u64::from(result == RESULT_FAILED);
                        EventOutcome::AlreadyResolved { result }
                    }
                    // Waiting, or a result not picked up: the slot is busy.
                    Some(Live::Waiting { .. } | Live::HaltResolved { .. }) => {
                        EventOutcome::Rejected(rejected(Rejection::Busy, stats))
                    }
                    // Free, or a wake kept for another token of the slot (which the host never
                    // handed out: counted, and the real event served in its place).
                    other => {
                        if other.is_some() {
                            stats.unknown += 1;
                        }
                        *asked = true;
                        self.slots[slot] = (token, Some(Live::Waiting { waiter, gpa }));
                        parked(waiter, stats)
                    }
                };
                Answer::Event(outcome)
            }
            Op::Wake { token, result } => {
                let Some(slot) = Self::slot(entries, token) else {
                    return Answer::Wake(WakeOutcome::Rejected(rejected(Rejection::Malformed, stats)));
                };
                if result > RESULT_FAILED {
                    return Answer::Wake(WakeOutcome::Rejected(rejected(Rejection::BadResult, stats)));
                }
                let (held, state) = self.slots[slot];
                let same = held == token;
                let outcome = match state {
                    Some(Live::Waiting { waiter, gpa }) if same => {
                        let (outcome, state) = wake_waiter(waiter, gpa, result, stats);
                        self.slots[slot] = (token, state);
                        outcome
                    }
                    None if !same => {
                        self.slots[slot] = (token, Some(Live::Early { result }));
                        WakeOutcome::Early
                    }
                    // Its last token again, or a second wake of a pending one.
                    None | Some(Live::Early { .. } | Live::HaltResolved { .. }) if same => {
                        WakeOutcome::Rejected(rejected(Rejection::Duplicate, stats))
                    }
                    // Another token is live in the slot.
                    _ => WakeOutcome::Rejected(rejected(Rejection::Unknown, stats)),
                };
                Answer::Wake(outcome)
            }
            Op::TakeHalt { token } => {
                let taken = Self::slot(entries, token).and_then(|slot| match self.slots[slot] {
                    (held, Some(Live::HaltResolved { result, gpa, .. })) if held == token => {
                        self.slots[slot] = (token, None);
                        Some((result, gpa))
                    }
                    _ => None,
                });
                Answer::Halt(taken)
            }
            Op::Reset { entries } => {
                *self = Self { stats: *stats, ..Self::new(entries) };
                Answer::Reset
            }
            Op::WakeAll => unreachable!("no wake-all by slot"),
        }
    }
}

/// The table's content by slot, as the model keeps it; every entry beyond the ring must be
/// untouched.
fn view_slots<const N: usize>(t: &TokenTable<BySlot, N>) -> Vec<(u32, Option<Live>)> {
    let used = t.keying.used(N);
    assert!(t.entries[used..].iter().all(|e| *e == Entry::FREE), "an entry beyond the ring was written");
    t.entries[..used].iter().map(|e| (e.token, e.state.into())).collect()
}

/// A ring token from its parts.
fn ring_token(slot: u16, sequence: u16) -> u32 {
    pvagent_abi::pnp::Token::new(slot, sequence).0
}

/// Tokens for a table of 8 whose ring has at most 8 slots: mostly a few slots (up to two beyond
/// the largest ring) and sequences (0 among them, which is never valid), so that duplicates,
/// stale tokens and reuse happen; sometimes any `u32`.
fn ring_tokens() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        6 => (0u16..10, prop_oneof![Just(0u16), 1u16..4, Just(0xFFFF)]).prop_map(|(s, q)| ring_token(s, q)),
        1 => any::<u32>(),
    ]
}

#[test]
fn by_slot_the_table_agrees_with_the_model_whatever_the_host_sends() {
    let reset = prop::sample::select(vec![0u32, 1, 2, 4, 8]).prop_map(|entries| Op::Reset { entries }).boxed();
    let start = prop::sample::select(vec![0u32, 1, 4, 8]);
    check(1500, (start, ops(ring_tokens(), reset)), |(entries, ops)| {
        let mut t = TokenTable::<BySlot, 8>::new(BySlot { entries: 0 });
        t.reset(BySlot { entries });
        let mut model = SlotModel::new(entries);
        for (step, &op) in ops.iter().enumerate() {
            if matches!(op, Op::Reset { .. }) && model.pending() > 0 {
                continue; // the kernel refuses to re-register with tokens pending
            }
            let asked = Cell::new(false);
            let got = apply(&mut t, op, &asked);
            let mut want_asked = false;
            let want = model.apply(op, &mut want_asked);
            prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
            prop_assert_eq!(asked.get(), want_asked, "step {}: waiter asked", step);
            prop_assert_eq!(t.stats, model.stats, "step {}: counters", step);
            prop_assert_eq!(view_slots(&t), model.slots.clone(), "step {}: content", step);
            let waiting = model
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Some(Live::Waiting { .. } | Live::HaltResolved { .. })))
                .count();
            prop_assert_eq!((t.waiting(), t.kept()), (waiting, model.pending() - waiting), "step {}", step);
        }
        Ok(())
    });
}

/// The hashed model: a map from token to what is pending, and the table's capacity.
#[derive(Debug)]
struct MapModel {
    capacity: usize,
    tokens: BTreeMap<u32, Live>,
    stats: TokenStats,
}

impl MapModel {
    /// Makes room for one more token in a full table: an abandoned token is given up if there
    /// is one, else a kept wake, never a waiter. Which one is the table's choice (the first on
    /// the new token's probe); `after` is the table's content after the step, where exactly one
    /// of the candidates must be missing.
    fn make_room(&mut self, after: &BTreeMap<u32, Live>) -> Result<(), Rejection> {
        if self.tokens.len() < self.capacity {
            return Ok(());
        }
        let abandoned: Vec<u32> = self.tokens.iter().filter(|(_, l)| **l == Live::Abandoned).map(|(t, _)| *t).collect();
        let candidates = if abandoned.is_empty() {
            self.tokens.iter().filter(|(_, l)| matches!(l, Live::Early { .. })).map(|(t, _)| *t).collect()
        } else {
            abandoned
        };
        if candidates.is_empty() {
            return Err(rejected(Rejection::Full, &mut self.stats));
        }
        let gone: Vec<u32> = candidates.into_iter().filter(|t| !after.contains_key(t)).collect();
        assert_eq!(gone.len(), 1, "exactly one candidate is given up: {gone:x?}");
        self.tokens.remove(&gone[0]);
        self.stats.given_up += 1;
        Ok(())
    }

    fn apply(&mut self, op: Op, asked: &mut bool, after: &BTreeMap<u32, Live>) -> Answer {
        match op {
            Op::Event { token: 0, .. } => {
                Answer::Event(EventOutcome::Rejected(rejected(Rejection::Malformed, &mut self.stats)))
            }
            Op::Event { token, gpa, waiter } => {
                let outcome = match self.tokens.get(&token).copied() {
                    Some(Live::Early { result }) => {
                        self.tokens.remove(&token);
                        self.stats.resolved_before_event += 1;
                        self.stats.failed += u64::from(result == RESULT_FAILED);
                        EventOutcome::AlreadyResolved { result }
                    }
                    Some(Live::Waiting { .. } | Live::HaltResolved { .. }) => {
                        EventOutcome::Rejected(rejected(Rejection::Busy, &mut self.stats))
                    }
                    // Woken by a wake-all and faulting again, or new.
                    known => {
                        *asked = true;
                        match if known.is_some() { Ok(()) } else { self.make_room(after) } {
                            Ok(()) => {
                                self.tokens.insert(token, Live::Waiting { waiter, gpa });
                                parked(waiter, &mut self.stats)
                            }
                            Err(r) => EventOutcome::Rejected(r),
                        }
                    }
                };
                Answer::Event(outcome)
            }
            Op::Wake { token: 0, .. } => {
                Answer::Wake(WakeOutcome::Rejected(rejected(Rejection::Malformed, &mut self.stats)))
            }
            Op::Wake { result, .. } if result > RESULT_FAILED => {
                Answer::Wake(WakeOutcome::Rejected(rejected(Rejection::BadResult, &mut self.stats)))
            }
            Op::Wake { token, result } => {
                let stats = &mut self.stats;
                let outcome = match self.tokens.get(&token).copied() {
                    Some(Live::Waiting { waiter, gpa }) => {
                        let (outcome, state) = wake_waiter(waiter, gpa, result, stats);
                        match state {
                            Some(state) => self.tokens.insert(token, state),
                            None => self.tokens.remove(&token),
                        };
                        outcome
                    }
                    Some(Live::HaltResolved { gpa, abandoned: true, .. }) => {
                        stats.late += 1;
                        self.tokens.insert(token, Live::HaltResolved { result, gpa, abandoned: false });
                        WakeOutcome::Late
                    }
                    Some(Live::Abandoned) => {
                        stats.late += 1;
                        self.tokens.remove(&token);
                        WakeOutcome::Late
                    }
                    Some(Live::Early { .. } | Live::HaltResolved { .. }) => {
                        WakeOutcome::Rejected(rejected(Rejection::Duplicate, stats))
                    }
                    None => match self.make_room(after) {
                        Ok(()) => {
                            self.tokens.insert(token, Live::Early { result });
                            WakeOutcome::Early
                        }
                        Err(r) => WakeOutcome::Rejected(r),
                    },
                };
                Answer::Wake(outcome)
            }
            Op::TakeHalt { token } => {
                let taken = match self.tokens.get(&token).copied() {
                    Some(Live::HaltResolved { result, gpa, abandoned }) => {
                        if abandoned {
                            self.tokens.insert(token, Live::Abandoned);
                        } else {
                            self.tokens.remove(&token);
                        }
                        Some((result, gpa))
                    }
                    _ => None,
                };
                Answer::Halt(taken)
            }
            Op::WakeAll => {
                self.tokens.retain(|_, l| !matches!(l, Live::Early { .. } | Live::Abandoned));
                let mut tasks = Vec::new();
                let mut woken = 0;
                for live in self.tokens.values_mut() {
                    match *live {
                        Live::Waiting { waiter: Waiter::Task(task), .. } => {
                            tasks.push(task);
                            *live = Live::Abandoned;
                        }
                        Live::Waiting { waiter: Waiter::Halt, gpa } => {
                            *live = Live::HaltResolved { result: RESULT_RETRY, gpa, abandoned: true };
                        }
                        _ => continue,
                    }
                    woken += 1;
                }
                self.stats.woken_by_wake_all += woken as u64;
                Answer::WakeAll(woken, sorted(tasks))
            }
            Op::Reset { .. } => unreachable!("no reset when hashed"),
        }
    }
}

/// The hashed table's content by token; every live token must be reachable from its home
/// (`find`), which a removal that left a hole in a cluster would break.
fn view_map<const N: usize>(t: &TokenTable<Hashed, N>) -> BTreeMap<u32, Live> {
    let mut out = BTreeMap::new();
    for (i, e) in t.entries.iter().enumerate() {
        if let Some(live) = Option::<Live>::from(e.state) {
            assert_eq!(t.find(e.token, t.home(e.token).expect("a live token is valid")), Some(i), "{:#x}", e.token);
            assert!(out.insert(e.token, live).is_none(), "token {:#x} twice", e.token);
        }
    }
    out
}

/// Runs hashed sequences over a table of `N`; tokens are KVM's for ids up to `ids` (so that
/// they collide on homes and fill the table), 0, KVM's wake-all token, or any `u32`.
fn hashed_agrees<const N: usize>(cases: u32, ids: u32) {
    let token = prop_oneof![
        6 => (1..=ids).prop_map(|id| pvagent_abi::kvm_apf::kvm_token(id, 0)),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ];
    check(cases, ops(token, Just(Op::WakeAll).boxed()), |ops| {
        let mut t = TokenTable::<Hashed, N>::new(Hashed);
        let mut model = MapModel { capacity: N, tokens: BTreeMap::new(), stats: TokenStats::new() };
        for (step, &op) in ops.iter().enumerate() {
            let asked = Cell::new(false);
            let got = apply(&mut t, op, &asked);
            let after = view_map(&t);
            let mut want_asked = false;
            let want = model.apply(op, &mut want_asked, &after);
            prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
            prop_assert_eq!(asked.get(), want_asked, "step {}: waiter asked", step);
            prop_assert_eq!(t.stats, model.stats, "step {}: counters", step);
            prop_assert_eq!(&after, &model.tokens, "step {}: content", step);
            let waiting =
                after.values().filter(|l| matches!(l, Live::Waiting { .. } | Live::HaltResolved { .. })).count();
            prop_assert_eq!((t.waiting(), t.kept()), (waiting, after.len() - waiting), "step {}", step);
            let halt = after
                .values()
                .any(|l| matches!(l, Live::Waiting { waiter: Waiter::Halt, .. } | Live::HaltResolved { .. }));
            prop_assert_eq!(t.has_halt_waiter(), halt, "step {}", step);
        }
        Ok(())
    });
}

#[test]
fn hashed_the_table_agrees_with_the_model_full_or_not() {
    // A table of 8 with 12 tokens about: it fills, gives up, refuses.
    hashed_agrees::<8>(1500, 12);
}

#[test]
fn hashed_at_the_kernels_size_the_table_agrees_with_the_model() {
    // KVM's table (`kvm_apf::TABLE_ENTRIES`), with up to 160 tokens about.
    hashed_agrees::<128>(300, 160);
}
