//! The token table's transitions, by ring slot and hashed, through the interleavings that
//! matter, and the hashed table against a model over many random operations.

use std::collections::HashMap;

use super::*;

const TASK: TaskId = TaskId { slot: 3, generation: 1 };
const OTHER: TaskId = TaskId { slot: 4, generation: 1 };

/// A ring token: slot and sequence.
fn ring(slot: u16, sequence: u16) -> u32 {
    pvagent_abi::pnp::Token::new(slot, sequence).0
}

/// A token as KVM makes them for vCPU 0.
fn kvm(id: u32) -> u32 {
    pvagent_abi::kvm_apf::kvm_token(id, 0)
}

/// A table for a ring of 8.
fn by_slot() -> TokenTable<BySlot, 256> {
    TokenTable::new(BySlot { entries: 8 })
}

fn hashed<const N: usize>() -> TokenTable<Hashed, N> {
    TokenTable::new(Hashed)
}

fn task(slot: u16) -> Waiter {
    Waiter::Task(TaskId { slot, generation: 1 })
}

// By ring slot: the ring protocol's rules.

#[test]
fn event_then_wake_parks_then_wakes_the_task() {
    let mut t = by_slot();
    let tok = ring(2, 1);
    assert!(matches!(t.on_event(tok, 0x1000, || Waiter::Task(TASK)), EventOutcome::Park(_)));
    assert_eq!(t.waiting(), 1);
    assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::Wake { task: TASK, result: 0, gpa: 0x1000 });
    assert_eq!((t.waiting(), t.kept()), (0, 0));
    assert_eq!(t.stats.woken, 1);
}

#[test]
fn a_wake_before_its_event_is_kept_and_the_event_does_not_park() {
    wake_before_event(by_slot());
    wake_before_event(hashed::<256>());
}

fn wake_before_event<K: Keying>(mut t: TokenTable<K, 256>) {
    {
        let tok = ring(5, 7);
        assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::Early);
        assert_eq!(t.kept(), 1);
        // Who would wait is not even asked: the fast path leaves the scheduler alone.
        let outcome = t.on_event(tok, 0x2000, || unreachable!("a waiter asked for a resolved token"));
        assert_eq!(outcome, EventOutcome::AlreadyResolved { result: 0 });
        assert_eq!((t.waiting(), t.kept()), (0, 0));
        assert_eq!(t.stats.resolved_before_event, 1);
        assert_eq!(t.stats.slept + t.stats.halted, 0, "nobody parked, so nobody can be left asleep");
    }
}

#[test]
fn an_early_failure_reaches_the_event() {
    let mut t = by_slot();
    let tok = ring(1, 1);
    t.on_wake(tok, RESULT_FAILED);
    assert_eq!(t.on_event(tok, 0, || Waiter::Task(TASK)), EventOutcome::AlreadyResolved { result: RESULT_FAILED });
    assert_eq!(t.stats.failed, 1);
}

#[test]
fn halt_waiters_pick_up_their_result_once() {
    halt_waiter(by_slot());
    halt_waiter(hashed::<256>());
    let mut t = by_slot();
    t.on_event(ring(0, 3), 0, || Waiter::Halt);
    t.on_wake(ring(0, 3), RESULT_RETRY);
    t.take_halt_result(ring(0, 3));
    assert_eq!(t.on_wake(ring(0, 3), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Duplicate));
}

fn halt_waiter<K: Keying>(mut t: TokenTable<K, 256>) {
    {
        let tok = ring(0, 3);
        assert!(matches!(t.on_event(tok, 0x3000, || Waiter::Halt), EventOutcome::Park(_)));
        assert_eq!(t.take_halt_result(tok), None, "not resolved yet");
        assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::HaltDone);
        assert_eq!(t.take_halt_result(tok), Some((RESULT_RETRY, 0x3000)));
        assert_eq!(t.take_halt_result(tok), None, "taken once");
        assert_eq!((t.waiting(), t.kept()), (0, 0));
    }
}

#[test]
fn a_duplicate_wake_wakes_nobody() {
    let mut t = by_slot();
    let tok = ring(2, 1);
    t.on_event(tok, 0, || Waiter::Task(TASK));
    t.on_wake(tok, RESULT_RETRY);
    assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::Rejected(Rejection::Duplicate));
    // The slot's next use is unaffected.
    let next = ring(2, 2);
    assert!(matches!(t.on_event(next, 0, || Waiter::Task(OTHER)), EventOutcome::Park(_)));
    assert_eq!(t.on_wake(next, RESULT_RETRY), WakeOutcome::Wake { task: OTHER, result: 0, gpa: 0 });
    assert_eq!(t.stats.duplicate, 1);
}

#[test]
fn by_slot_a_wake_for_another_token_of_a_busy_slot_wakes_nobody() {
    let mut t = by_slot();
    t.on_event(ring(4, 2), 0, || Waiter::Task(TASK));
    assert_eq!(t.on_wake(ring(4, 1), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Unknown));
    assert_eq!(t.on_wake(ring(4, 3), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Unknown));
    assert_eq!(t.waiting(), 1, "the real waiter still waits");
    assert_eq!(t.on_wake(ring(4, 2), RESULT_RETRY), WakeOutcome::Wake { task: TASK, result: 0, gpa: 0 });
}

#[test]
fn by_slot_a_bogus_early_wake_never_satisfies_a_different_event() {
    let rule = pvagent_abi::breach::Breach::ResolutionForUnknownToken;
    let before = crate::pv::breach::count(rule);
    let mut t = by_slot();
    // The host "resolves" a token it never handed out...
    assert_eq!(t.on_wake(ring(6, 9), RESULT_RETRY), WakeOutcome::Early);
    // ...then delivers a real event on the same slot: it must park, not run on.
    assert!(matches!(t.on_event(ring(6, 10), 0, || Waiter::Task(TASK)), EventOutcome::Park(_)));
    assert_eq!(t.stats.unknown, 1);
    assert_eq!(t.kept(), 0);
    // The forgery is reported under the ring's rule, not only counted in the table (other
    // tests may count it too, at the same time: at least this one).
    assert!(crate::pv::breach::count(rule) > before, "{rule} not reported");
}

#[test]
fn malformed_tokens_and_results_are_rejected() {
    let mut t = by_slot();
    assert_eq!(t.on_event(0, 0, || Waiter::Task(TASK)), EventOutcome::Rejected(Rejection::Malformed));
    assert_eq!(t.on_event(ring(8, 1), 0, || Waiter::Task(TASK)), EventOutcome::Rejected(Rejection::Malformed));
    assert_eq!(t.on_event(ring(1, 0), 0, || Waiter::Task(TASK)), EventOutcome::Rejected(Rejection::Malformed));
    assert_eq!(t.on_wake(ring(9, 1), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Malformed));
    assert_eq!(t.on_wake(ring(1, 1), 7), WakeOutcome::Rejected(Rejection::BadResult));
    assert_eq!(t.stats.rejected(), 5);
    assert_eq!((t.waiting(), t.kept()), (0, 0));
    let mut h = hashed::<128>();
    assert_eq!(h.on_event(0, 0, || Waiter::Task(TASK)), EventOutcome::Rejected(Rejection::Malformed));
    let mut off = TokenTable::<BySlot, 8>::new(BySlot { entries: 0 });
    assert_eq!(off.on_wake(kvm(1), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Malformed), "nothing registered");
}

#[test]
fn an_event_for_a_busy_token_is_rejected_and_the_first_waiter_keeps_its_place() {
    let mut t = by_slot();
    t.on_event(ring(3, 1), 0, || Waiter::Task(TASK));
    assert_eq!(t.on_event(ring(3, 2), 0, || Waiter::Task(OTHER)), EventOutcome::Rejected(Rejection::Busy));
    assert_eq!(t.on_wake(ring(3, 1), RESULT_RETRY), WakeOutcome::Wake { task: TASK, result: 0, gpa: 0 });
    let mut h = hashed::<128>();
    h.on_event(kvm(5), 0, || Waiter::Task(TASK));
    assert_eq!(h.on_event(kvm(5), 0, || Waiter::Task(OTHER)), EventOutcome::Rejected(Rejection::Busy));
    assert_eq!(h.on_wake(kvm(5), RESULT_RETRY), WakeOutcome::Wake { task: TASK, result: 0, gpa: 0 });
}

#[test]
fn many_tokens_interleave_independently() {
    interleave(by_slot(), (0..8).map(|s| ring(s, 1)).collect());
    interleave(hashed::<256>(), (1..=60).map(kvm).collect());
}

fn interleave<K: Keying>(mut t: TokenTable<K, 256>, toks: Vec<u32>) {
    {
        // Even: event first. Odd: wake first.
        for (i, &tok) in toks.iter().enumerate() {
            if i % 2 == 0 {
                assert!(matches!(t.on_event(tok, i as u64, || task(i as u16)), EventOutcome::Park(_)));
            } else {
                assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::Early);
            }
        }
        for (i, &tok) in toks.iter().enumerate().rev() {
            let id = TaskId { slot: i as u16, generation: 1 };
            if i % 2 == 0 {
                assert_eq!(t.on_wake(tok, RESULT_RETRY), WakeOutcome::Wake { task: id, result: 0, gpa: i as u64 });
            } else {
                assert_eq!(t.on_event(tok, 0, || Waiter::Task(id)), EventOutcome::AlreadyResolved { result: 0 });
            }
        }
        assert_eq!((t.waiting(), t.kept(), t.stats.rejected()), (0, 0, 0));
    }
}

// Hashed: KVM's rules.

#[test]
fn kvm_tokens_that_share_their_low_bits_spread_over_the_table() {
    let t = hashed::<128>();
    let homes: std::collections::HashSet<usize> = (1..=64).map(|id| t.home(kvm(id)).unwrap()).collect();
    assert!(homes.len() > 32, "64 consecutive KVM tokens land on {} homes of 128", homes.len());
}

#[test]
fn colliding_tokens_stay_reachable_after_removals() {
    // Tokens whose homes collide: a removal in the middle of their cluster must not cut off
    // the ones behind it.
    let mut t = hashed::<8>();
    let home = t.home(kvm(1)).unwrap();
    let same: Vec<u32> = (2..10_000).map(kvm).filter(|&tok| t.home(tok).unwrap() == home).take(3).collect();
    let toks = [kvm(1), same[0], same[1], same[2]];
    for (i, &tok) in toks.iter().enumerate() {
        assert!(matches!(t.on_event(tok, i as u64, || task(i as u16)), EventOutcome::Park(_)));
    }
    assert!(matches!(t.on_wake(toks[1], RESULT_RETRY), WakeOutcome::Wake { .. }));
    for (i, &tok) in toks.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(
            t.on_wake(tok, RESULT_RETRY),
            WakeOutcome::Wake { task: TaskId { slot: i as u16, generation: 1 }, result: 0, gpa: i as u64 }
        );
    }
    assert_eq!((t.waiting(), t.kept()), (0, 0));
}

#[test]
fn a_full_table_gives_up_kept_wakes_never_waiters() {
    let mut t = hashed::<8>();
    for id in 1..=6 {
        assert!(matches!(t.on_event(kvm(id), 0, || task(id as u16)), EventOutcome::Park(_)));
    }
    for id in 7..=8 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Early);
    }
    // Full: a new wake takes a kept wake's place...
    assert_eq!(t.on_wake(kvm(9), RESULT_RETRY), WakeOutcome::Early);
    assert_eq!((t.stats.given_up, t.waiting(), t.kept()), (1, 6, 2));
    // ...and so does a new waiter, until only waiters are left.
    assert!(matches!(t.on_event(kvm(10), 0, || task(10)), EventOutcome::Park(_)));
    assert!(matches!(t.on_event(kvm(11), 0, || task(11)), EventOutcome::Park(_)));
    assert_eq!((t.stats.given_up, t.waiting(), t.kept()), (3, 8, 0));
    assert_eq!(t.on_event(kvm(12), 0, || task(12)), EventOutcome::Rejected(Rejection::Full));
    assert_eq!(t.on_wake(kvm(13), RESULT_RETRY), WakeOutcome::Rejected(Rejection::Full));
    // Every waiter is still woken by its own token.
    for id in (1..=6).chain(10..=11) {
        assert!(matches!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Wake { task, .. } if task.slot == id as u16));
    }
    assert_eq!((t.waiting(), t.kept(), t.stats.full), (0, 0, 2));
}

#[test]
fn a_full_table_gives_up_abandoned_tokens_before_kept_wakes() {
    let mut t = hashed::<8>();
    for id in 1..=4 {
        t.on_event(kvm(id), 0, || task(id as u16));
    }
    t.wake_all(|_| {});
    for id in 5..=6 {
        assert!(matches!(t.on_event(kvm(id), 0, || task(id as u16)), EventOutcome::Park(_)));
    }
    for id in 7..=8 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Early);
    }
    // Full (4 abandoned, 2 waiters, 2 kept wakes): each new wake takes an abandoned token's
    // place while there is one.
    for id in 9..=12 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Early);
    }
    assert_eq!((t.stats.given_up, t.waiting(), t.kept()), (4, 2, 6));
    for id in 7..=12 {
        assert_eq!(
            t.on_event(kvm(id), 0, || unreachable!()),
            EventOutcome::AlreadyResolved { result: 0 },
            "token {id}"
        );
    }
}

#[test]
fn wake_all_wakes_every_waiter_and_absorbs_their_late_wakes() {
    let mut t = hashed::<128>();
    t.on_event(kvm(1), 0x1000, || Waiter::Task(TASK));
    t.on_event(kvm(2), 0x2000, || Waiter::Task(OTHER));
    t.on_event(kvm(3), 0x3000, || Waiter::Halt);
    let mut woken = Vec::new();
    assert_eq!(t.wake_all(|task| woken.push(task)), 3);
    woken.sort_by_key(|t| t.slot);
    assert_eq!(woken, vec![TASK, OTHER]);
    assert_eq!(t.take_halt_result(kvm(3)), Some((RESULT_RETRY, 0x3000)));
    assert_eq!((t.waiting(), t.kept()), (0, 3), "three abandoned tokens");
    // The tokens' own wakes come later: absorbed, nobody woken twice.
    for id in 1..=3 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Late);
    }
    assert_eq!((t.waiting(), t.kept(), t.stats.late, t.stats.woken_by_wake_all), (0, 0, 3, 3));
    assert_eq!(t.stats.rejected(), 0);
}

#[test]
fn wake_all_drops_kept_wakes_and_the_tokens_earlier_wake_alls_abandoned() {
    let mut t = hashed::<128>();
    assert_eq!(t.on_wake(kvm(1), RESULT_RETRY), WakeOutcome::Early);
    t.on_event(kvm(2), 0, || Waiter::Task(TASK));
    t.wake_all(|_| {});
    assert_eq!((t.waiting(), t.kept()), (0, 1), "the kept wake dropped, the woken token abandoned");
    // The host forgot the kept wake's token: an event for it waits for a wake of its own.
    assert!(matches!(t.on_event(kvm(1), 0, || Waiter::Task(OTHER)), EventOutcome::Park(_)));
    t.wake_all(|_| {});
    assert_eq!((t.waiting(), t.kept()), (0, 1), "token 2 dropped, token 1 abandoned now");
    assert_eq!(t.on_wake(kvm(1), RESULT_RETRY), WakeOutcome::Late);
    assert_eq!(t.on_wake(kvm(2), RESULT_RETRY), WakeOutcome::Early, "no longer absorbed: a wake like any other");
    assert_eq!(t.stats.rejected(), 0);
}

#[test]
fn wake_all_in_a_full_table_keeps_every_abandoned_token_reachable() {
    let mut t = hashed::<8>();
    for id in 1..=4 {
        assert!(matches!(t.on_event(kvm(id), 0, || task(id as u16)), EventOutcome::Park(_)));
    }
    for id in 5..=8 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Early);
    }
    assert_eq!(t.wake_all(|_| {}), 4);
    assert_eq!((t.waiting(), t.kept()), (0, 4));
    for id in 1..=4 {
        assert_eq!(t.on_wake(kvm(id), RESULT_RETRY), WakeOutcome::Late, "token {id}");
    }
    assert_eq!((t.waiting(), t.kept()), (0, 0));
}

#[test]
fn a_task_woken_by_wake_all_may_fault_again_on_its_token() {
    let mut t = hashed::<128>();
    t.on_event(kvm(1), 0, || Waiter::Task(TASK));
    t.wake_all(|_| {});
    assert!(matches!(t.on_event(kvm(1), 0, || Waiter::Task(TASK)), EventOutcome::Park(_)));
    assert_eq!(t.on_wake(kvm(1), RESULT_RETRY), WakeOutcome::Wake { task: TASK, result: 0, gpa: 0 });
    assert_eq!((t.waiting(), t.kept()), (0, 0));
}

#[test]
fn a_halt_waiters_own_wake_after_a_wake_all_is_absorbed_whenever_it_comes() {
    let mut t = hashed::<128>();
    // Its own wake before it picked up the wake-all's result...
    t.on_event(kvm(1), 0, || Waiter::Halt);
    t.wake_all(|_| panic!("no task waits"));
    assert_eq!(t.on_wake(kvm(1), RESULT_RETRY), WakeOutcome::Late);
    assert_eq!(t.take_halt_result(kvm(1)), Some((RESULT_RETRY, 0)));
    assert_eq!((t.waiting(), t.kept()), (0, 0));
    // ...or after.
    t.on_event(kvm(2), 0, || Waiter::Halt);
    t.wake_all(|_| {});
    assert_eq!(t.take_halt_result(kvm(2)), Some((RESULT_RETRY, 0)));
    assert_eq!(t.on_wake(kvm(2), RESULT_RETRY), WakeOutcome::Late);
    assert_eq!((t.waiting(), t.kept()), (0, 0));
}

/// What the hashed table must do, written as simply as possible: a map from token to state.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Waiting(TaskId),
    Early,
    /// Its waiter was woken by a wake-all; its own wake may still come.
    Abandoned,
}

#[test]
fn the_hashed_table_agrees_with_a_map_over_many_random_operations() {
    let mut t = hashed::<64>();
    let mut model: HashMap<u32, Model> = HashMap::new();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..200_000 {
        // 96 possible tokens, at most 40 live: the table never fills, its clusters come and go.
        let token = kvm(1 + (next() % 96) as u32);
        let id = TaskId { slot: (next() % 32) as u16, generation: 1 };
        if next() % 64 == 0 {
            // A wake-all: every waiter woken and abandoned, kept wakes and abandoned tokens
            // dropped (which closes gaps all over the table: every token left must stay
            // reachable).
            let mut woken = Vec::new();
            t.wake_all(|task| woken.push(task));
            let mut want: Vec<TaskId> =
                model.values().filter_map(|m| if let Model::Waiting(task) = m { Some(*task) } else { None }).collect();
            model.retain(|_, m| matches!(m, Model::Waiting(_)));
            model.values_mut().for_each(|m| *m = Model::Abandoned);
            woken.sort_by_key(|t| t.slot);
            want.sort_by_key(|t| t.slot);
            assert_eq!(woken, want, "step {step}: wake-all");
        } else if next() % 2 == 0 {
            if model.len() >= 40 && !model.contains_key(&token) {
                continue;
            }
            let got = t.on_event(token, 0, || Waiter::Task(id));
            let want = match model.get(&token) {
                Some(Model::Early) => {
                    model.remove(&token);
                    EventOutcome::AlreadyResolved { result: 0 }
                }
                Some(Model::Waiting(_)) => EventOutcome::Rejected(Rejection::Busy),
                Some(Model::Abandoned) | None => {
                    model.insert(token, Model::Waiting(id));
                    EventOutcome::Park(Parked::Task)
                }
            };
            assert_eq!(got, want, "step {step}: event {token:#x}");
        } else {
            if model.len() >= 40 && !model.contains_key(&token) {
                continue;
            }
            let got = t.on_wake(token, RESULT_RETRY);
            let want = match model.get(&token).copied() {
                Some(Model::Waiting(task)) => {
                    model.remove(&token);
                    WakeOutcome::Wake { task, result: 0, gpa: 0 }
                }
                Some(Model::Early) => WakeOutcome::Rejected(Rejection::Duplicate),
                Some(Model::Abandoned) => {
                    model.remove(&token);
                    WakeOutcome::Late
                }
                None => {
                    model.insert(token, Model::Early);
                    WakeOutcome::Early
                }
            };
            assert_eq!(got, want, "step {step}: wake {token:#x}");
        }
        let waiting = model.values().filter(|m| matches!(m, Model::Waiting(_))).count();
        assert_eq!((t.waiting(), t.kept()), (waiting, model.len() - waiting), "step {step}");
    }
}

#[test]
fn a_new_keying_clears_every_entry_the_old_one_reached_and_no_other() {
    let mut t = by_slot();
    // A kept wake in slot 7 of the ring of 8, then a new ring of 16.
    assert_eq!(t.on_wake(ring(7, 1), RESULT_RETRY), WakeOutcome::Early);
    assert_eq!(t.kept(), 1);
    t.reset(BySlot { entries: 16 });
    assert_eq!((t.waiting(), t.kept()), (0, 0), "the old ring's entries start over");
    assert!(t.entries.iter().all(|e| *e == Entry::FREE), "no entry outside the old ring was ever written");
    // And the new ring's slots work: an event on slot 12 parks.
    assert!(matches!(t.on_event(ring(12, 1), 0x3000, || Waiter::Task(TASK)), EventOutcome::Park(_)));
}

/// A ring larger than the table is refused when it is set, not at the first event for a slot
/// beyond the table (which indexed past its entries: `reset`'s check compared the clamped
/// size with the table's, which always passed).
#[test]
#[should_panic(expected = "in a table of 8")]
fn a_ring_larger_than_the_table_is_refused_at_reset() {
    let mut t = TokenTable::<BySlot, 8>::new(BySlot { entries: 0 });
    t.reset(BySlot { entries: 16 });
    t.on_event(ring(12, 1), 0, || Waiter::Task(TASK));
}
