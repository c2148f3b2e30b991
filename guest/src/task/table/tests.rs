//! The task table's transitions: spawning, blocking and waking, sleeping, preemption, exits
//! and reaping, on the host.

use super::*;

const TEST_CAUSE: KillCause = KillCause { name: "test kill", data_names: ["token", "address"] };

fn with_idle() -> (TaskTable, TaskId) {
    let mut s = TaskTable::new();
    let idle = s.adopt_idle("idle");
    (s, idle)
}

#[test]
fn spawned_task_runs_before_idle_and_idle_returns_when_it_blocks() {
    let (mut s, idle) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    assert_eq!(s.pick_next(), Some((idle.slot, a.slot)));
    assert_eq!(s.current(), a);
    s.block_current(Wait::Event(7));
    assert_eq!(s.pick_next(), Some((a.slot, idle.slot)));
    assert_eq!(s.state(a), Some(State::Blocked(Wait::Event(7))));
    // Nothing runnable: idle keeps the vCPU.
    assert_eq!(s.pick_next(), None);
}

#[test]
fn wake_hands_over_a_value_and_requeues_once() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    s.pick_next();
    s.block_current(Wait::Key { owner: "test key", key: 5 });
    s.pick_next();
    assert_eq!(s.wake(a, 42), WakeOutcome::Woken);
    // A second wake-up of a task that is already ready changes nothing.
    assert_eq!(s.wake(a, 43), WakeOutcome::NotBlocked);
    assert_eq!(s.pick_next().map(|(_, to)| to), Some(a.slot));
    assert_eq!(s.current_wake_value(), 42);
    assert_eq!(s.pick_next(), None, "the task was queued exactly once");
    assert_eq!(s.stats.spurious_wakes, 1);
}

#[test]
fn round_robin_between_yielding_tasks() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    let b = s.spawn("b", Kind::Kernel).unwrap();
    s.pick_next();
    assert_eq!(s.current(), a);
    s.yield_current();
    s.pick_next();
    assert_eq!(s.current(), b);
    s.yield_current();
    s.pick_next();
    assert_eq!(s.current(), a);
}

#[test]
fn exit_wakes_the_joiner_and_reap_frees_the_slot_for_a_new_generation() {
    let (mut s, _) = with_idle();
    let parent = s.spawn("parent", Kind::Kernel).unwrap();
    let child = s.spawn("child", Kind::User).unwrap();
    s.pick_next(); // parent
    s.block_current(Wait::Join(child));
    s.pick_next(); // child
    s.exit_current(ExitStatus::Returned(3));
    assert_eq!(s.pick_next().map(|(_, to)| to), Some(parent.slot));
    assert_eq!(s.reap(child), Ok(ExitStatus::Returned(3)));
    assert_eq!(s.reap(child), Err(ReapError::NoSuchTask));
    let again = s.spawn("again", Kind::Kernel).unwrap();
    assert_eq!(again.slot, child.slot);
    assert_ne!(again.generation, child.generation);
    // The stale id names nothing.
    assert_eq!(s.wake(child, 0), WakeOutcome::NoSuchTask);
    assert_eq!(s.state(child), None);
}

#[test]
fn a_running_task_that_did_not_yield_is_preempted_not_lost() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    let b = s.spawn("b", Kind::Kernel).unwrap();
    s.pick_next();
    assert_eq!(s.current(), a);
    s.pick_next();
    assert_eq!(s.current(), b);
    s.pick_next();
    assert_eq!(s.current(), a, "a was requeued when b took over");
}

#[test]
fn reaping_a_live_task_is_refused() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    assert_eq!(s.reap(a), Err(ReapError::StillRunning));
}

#[test]
fn sleepers_wake_when_their_tick_comes() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::Kernel).unwrap();
    s.pick_next();
    s.block_current(Wait::Sleep { until_tick: 10 });
    s.pick_next();
    assert_eq!(s.tick(9), 0);
    assert_eq!(s.tick(10), 1);
    assert_eq!(s.state(a), Some(State::Ready));
}

#[test]
fn every_sleeper_wakes_at_its_own_tick_whatever_order_they_slept_in() {
    let (mut s, _) = with_idle();
    let (late, early) = (s.spawn("late", Kind::Kernel).unwrap(), s.spawn("early", Kind::Kernel).unwrap());
    s.pick_next();
    s.block_current(Wait::Sleep { until_tick: 30 });
    s.pick_next();
    s.block_current(Wait::Sleep { until_tick: 20 });
    s.pick_next();
    assert_eq!(s.tick(19), 0);
    assert_eq!(s.tick(20), 1);
    assert_eq!(
        (s.state(early), s.state(late)),
        (Some(State::Ready), Some(State::Blocked(Wait::Sleep { until_tick: 30 })))
    );
    assert_eq!(s.tick(29), 0);
    // A sleeper killed before its tick: the tick it was due finds nobody, the next sleeper
    // still wakes at its own.
    s.pick_next();
    s.block_current(Wait::Sleep { until_tick: 40 });
    assert!(s.kill(late, ExitStatus::Returned(0)));
    s.pick_next();
    assert_eq!(s.tick(30), 0);
    assert_eq!(s.tick(39), 0);
    assert_eq!(s.tick(40), 1);
    assert_eq!(s.state(early), Some(State::Ready));
}

#[test]
fn killing_a_ready_task_removes_it_from_the_queue() {
    let (mut s, _) = with_idle();
    let a = s.spawn("a", Kind::User).unwrap();
    let b = s.spawn("b", Kind::Kernel).unwrap();
    let status = ExitStatus::Killed(KillReason { cause: TEST_CAUSE, data: [1, 0x1000] });
    assert!(s.kill(a, status));
    assert_eq!(s.pick_next().map(|(_, to)| to), Some(b.slot));
    assert_eq!(s.reap(a), Ok(status));
}

#[test]
fn a_kill_reason_is_carried_as_given_and_reads_with_its_names() {
    let reason = KillReason { cause: TEST_CAUSE, data: [0x1_0003, 0x4000] };
    assert_eq!(reason.data_if(TEST_CAUSE), Some([0x1_0003, 0x4000]));
    let other = KillCause { name: "other", data_names: ["rip", ""] };
    assert_eq!(reason.data_if(other), None);
    assert_eq!(format!("{reason:?}"), "test kill (token 0x10003, address 0x4000)");
    assert_eq!(format!("{:?}", KillReason { cause: other, data: [0x10, 7] }), "other (rip 0x10)");
}

#[test]
fn slots_run_out_cleanly() {
    let (mut s, _) = with_idle();
    for _ in 1..MAX_TASKS {
        s.spawn("t", Kind::Kernel).unwrap();
    }
    assert_eq!(s.spawn("one too many", Kind::Kernel), Err(SpawnError::NoFreeSlot));
}

#[test]
#[should_panic(expected = "idle task tried to block")]
fn the_idle_task_cannot_block() {
    let (mut s, _) = with_idle();
    s.block_current(Wait::Event(1));
}

#[test]
fn exit_statuses_show_data_and_addresses_in_hex() {
    assert_eq!(format!("{:?}", ExitStatus::Returned(0xC0FFEE)), "Returned(0xc0ffee)");
    let fault = FaultInfo { vector: 14, error_code: 5, address: 0x1000, rip: 0x13_4120 };
    assert_eq!(
        format!("{:?}", ExitStatus::Faulted(fault)),
        "Faulted(FaultInfo { vector: 14, error_code: 0x5, address: 0x1000, rip: 0x134120 })"
    );
}
