//! The task table's blocking and waking against a model, over random sequences of what the
//! kernel does with it (spawn, block the current task, wake any id, stale and unknown ones
//! included, wake all on a wait, kill, reap, tick, exit, yield, pick the next task): after every
//! step the answer, who runs, who is ready in which order, every task's state and wake value,
//! and the counters agree with the model. Only the kernel's own sequences are generated (a task
//! blocks or exits only while it runs, and is switched out in the same step, as
//! `task::kernel` does under one borrow). Fixed case count and seed (`crate::testing`).

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::testing::check;

#[derive(Clone, Copy, Debug)]
enum Op {
    Spawn,
    /// The current task blocks on a wait, then the next task is picked.
    Block(Wait),
    /// Wakes task `slot` of generation `generation` (any: stale, free, beyond the table).
    Wake {
        slot: u16,
        generation: u16,
        value: u64,
    },
    WakeAll(Wait, u64),
    /// The current task ends, then the next task is picked.
    Exit(u64),
    Kill {
        slot: u16,
        generation: u16,
    },
    Reap {
        slot: u16,
        generation: u16,
    },
    /// The tick count advances by this much.
    Tick(u64),
    /// The current task yields and the next is picked (`yield_now`), or just a pick (a
    /// switch the idle loop or an interrupt's return makes).
    Yield,
    Pick,
}

/// Waits from a small set, so that wake-alls and joins find their sleepers (a sleep's tick is
/// made relative to the time of the step that blocks).
fn waits() -> impl Strategy<Value = Wait> {
    prop_oneof![
        (0u64..3).prop_map(Wait::Event),
        (0u16..6, 1u16..3).prop_map(|(slot, generation)| Wait::Join(TaskId { slot, generation })),
        (0u64..40).prop_map(|until_tick| Wait::Sleep { until_tick }),
        (0u64..3).prop_map(|key| Wait::Key { owner: "token", key }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let slot = prop_oneof![4 => 0u16..6, 1 => any::<u16>()];
    let generation = prop_oneof![4 => 1u16..3, 1 => any::<u16>()];
    let op = prop_oneof![
        3 => Just(Op::Spawn),
        3 => waits().prop_map(Op::Block),
        4 => (slot.clone(), generation.clone(), any::<u64>())
            .prop_map(|(slot, generation, value)| Op::Wake { slot, generation, value }),
        1 => (waits(), any::<u64>()).prop_map(|(w, v)| Op::WakeAll(w, v)),
        1 => any::<u64>().prop_map(Op::Exit),
        1 => (slot.clone(), generation.clone()).prop_map(|(slot, generation)| Op::Kill { slot, generation }),
        1 => (slot, generation).prop_map(|(slot, generation)| Op::Reap { slot, generation }),
        2 => (0u64..8).prop_map(Op::Tick),
        2 => Just(Op::Yield),
        2 => Just(Op::Pick),
    ];
    prop::collection::vec(op, 1..120)
}

/// One slot of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MSlot {
    state: State,
    generation: u16,
    kind: Kind,
    wake_value: u64,
}

/// The scheduler as simply as it can be said: slots, a FIFO of ready slots, the running slot.
#[derive(Debug)]
struct Model {
    slots: Vec<MSlot>,
    queue: VecDeque<u16>,
    current: u16,
    stats: SchedStats,
}

impl Model {
    fn new() -> Self {
        let free = MSlot { state: State::Free, generation: 0, kind: Kind::Kernel, wake_value: 0 };
        let mut slots = vec![free; MAX_TASKS];
        slots[0] = MSlot { state: State::Running, generation: 1, kind: Kind::Idle, wake_value: 0 };
        Self { slots, queue: VecDeque::new(), current: 0, stats: SchedStats::default() }
    }

    /// The slot `id` names, if it names a live task.
    fn live(&self, id: TaskId) -> Option<usize> {
        let i = usize::from(id.slot);
        self.slots.get(i).filter(|s| s.generation == id.generation && s.state != State::Free).map(|_| i)
    }

    fn wake(&mut self, id: TaskId, value: u64) -> WakeOutcome {
        let Some(i) = self.live(id) else { return WakeOutcome::NoSuchTask };
        if !matches!(self.slots[i].state, State::Blocked(_)) {
            self.stats.spurious_wakes += 1;
            return WakeOutcome::NotBlocked;
        }
        self.slots[i].state = State::Ready;
        self.slots[i].wake_value = value;
        self.queue.push_back(id.slot);
        self.stats.woken += 1;
        WakeOutcome::Woken
    }

    fn wake_all(&mut self, wait: Wait, value: u64) -> usize {
        let blocked: Vec<u16> =
            (0..MAX_TASKS as u16).filter(|&s| self.slots[usize::from(s)].state == State::Blocked(wait)).collect();
        for &slot in &blocked {
            self.wake(TaskId { slot, generation: self.slots[usize::from(slot)].generation }, value);
        }
        blocked.len()
    }

    fn pick(&mut self) -> Option<(u16, u16)> {
        let cur = self.current;
        let running = self.slots[usize::from(cur)].state == State::Running;
        let next = match self.queue.pop_front() {
            Some(next) => next,
            None if running => return None,
            None => 0,
        };
        if next == cur {
            self.slots[usize::from(cur)].state = State::Running;
            return None;
        }
        if running {
            self.slots[usize::from(cur)].state = State::Ready;
            if cur != 0 {
                self.queue.push_back(cur);
            }
        }
        self.slots[usize::from(next)].state = State::Running;
        self.current = next;
        self.stats.switches += 1;
        Some((cur, next))
    }

    fn current_id(&self) -> TaskId {
        TaskId { slot: self.current, generation: self.slots[usize::from(self.current)].generation }
    }
}

/// What a step answered.
#[derive(Debug, PartialEq)]
enum Answer {
    None,
    Spawned(Result<TaskId, SpawnError>),
    Woken(WakeOutcome),
    Count(usize),
    Killed(bool),
    Reaped(Result<ExitStatus, ReapError>),
    Picked(Option<(u16, u16)>),
}

#[test]
fn blocking_and_waking_agree_with_the_model() {
    check(1500, ops(), |ops| {
        let mut t = TaskTable::new();
        t.adopt_idle("idle");
        let mut m = Model::new();
        let mut now = 0u64;
        for (step, &op) in ops.iter().enumerate() {
            // A task that runs (not idle) may block, exit or yield; others skip those steps.
            let task_runs = m.current != 0;
            let (got, want) = match op {
                Op::Spawn => {
                    let got = t.spawn("t", Kind::Kernel);
                    let want = match m.slots.iter().position(|s| s.state == State::Free) {
                        Some(i) => {
                            let s = &mut m.slots[i];
                            *s = MSlot {
                                state: State::Ready,
                                generation: s.generation.wrapping_add(1).max(1),
                                kind: Kind::Kernel,
                                wake_value: 0,
                            };
                            m.queue.push_back(i as u16);
                            m.stats.spawned += 1;
                            Ok(TaskId { slot: i as u16, generation: s.generation })
                        }
                        None => Err(SpawnError::NoFreeSlot),
                    };
                    (Answer::Spawned(got), Answer::Spawned(want))
                }
                Op::Block(wait) if task_runs => {
                    // A sleep ends after now, as `sleep_ticks` makes it.
                    let wait = match wait {
                        Wait::Sleep { until_tick } => Wait::Sleep { until_tick: now + 1 + until_tick % 8 },
                        wait => wait,
                    };
                    t.block_current(wait);
                    let got = t.pick_next();
                    let cur = usize::from(m.current);
                    (m.slots[cur].state, m.slots[cur].wake_value) = (State::Blocked(wait), 0);
                    m.stats.blocked += 1;
                    (Answer::Picked(got), Answer::Picked(m.pick()))
                }
                Op::Wake { slot, generation, value } => {
                    let id = TaskId { slot, generation };
                    (Answer::Woken(t.wake(id, value)), Answer::Woken(m.wake(id, value)))
                }
                Op::WakeAll(wait, value) => {
                    (Answer::Count(t.wake_all(wait, value)), Answer::Count(m.wake_all(wait, value)))
                }
                Op::Exit(value) if task_runs => {
                    t.exit_current(ExitStatus::Returned(value));
                    let got = t.pick_next();
                    let me = m.current_id();
                    m.slots[usize::from(me.slot)].state = State::Exited(ExitStatus::Returned(value));
                    m.wake_all(Wait::Join(me), 0);
                    (Answer::Picked(got), Answer::Picked(m.pick()))
                }
                Op::Kill { slot, generation } => {
                    let id = TaskId { slot, generation };
                    let status = ExitStatus::Returned(u64::from(slot));
                    let got = t.kill(id, status);
                    let want = match m.live(id) {
                        Some(i) if id.slot != m.current && m.slots[i].kind != Kind::Idle => match m.slots[i].state {
                            State::Ready | State::Blocked(_) => {
                                m.queue.retain(|&s| s != id.slot);
                                m.slots[i].state = State::Exited(status);
                                m.wake_all(Wait::Join(id), 0);
                                true
                            }
                            _ => false,
                        },
                        _ => false,
                    };
                    (Answer::Killed(got), Answer::Killed(want))
                }
                Op::Reap { slot, generation } => {
                    let id = TaskId { slot, generation };
                    let want = match m.live(id).map(|i| (i, m.slots[i].state)) {
                        None => Err(ReapError::NoSuchTask),
                        Some((i, State::Exited(status))) => {
                            m.slots[i].state = State::Free;
                            Ok(status)
                        }
                        Some(_) => Err(ReapError::StillRunning),
                    };
                    (Answer::Reaped(t.reap(id)), Answer::Reaped(want))
                }
                Op::Tick(by) => {
                    now += by;
                    let due: Vec<u16> = (0..MAX_TASKS as u16)
                        .filter(|&s| matches!(m.slots[usize::from(s)].state, State::Blocked(Wait::Sleep { until_tick }) if until_tick <= now))
                        .collect();
                    for &slot in &due {
                        m.wake(TaskId { slot, generation: m.slots[usize::from(slot)].generation }, now);
                    }
                    (Answer::Count(t.tick(now)), Answer::Count(due.len()))
                }
                Op::Yield if task_runs => {
                    t.yield_current();
                    let got = t.pick_next();
                    let cur = m.current;
                    m.slots[usize::from(cur)].state = State::Ready;
                    m.queue.push_back(cur);
                    (Answer::Picked(got), Answer::Picked(m.pick()))
                }
                Op::Pick => (Answer::Picked(t.pick_next()), Answer::Picked(m.pick())),
                Op::Block(_) | Op::Exit(_) | Op::Yield => (Answer::None, Answer::None),
            };
            prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            prop_assert_eq!(t.current(), m.current_id(), "step {}: running", step);
            prop_assert_eq!(t.current_wake_value(), m.slots[usize::from(m.current)].wake_value, "step {}", step);
            prop_assert_eq!(t.has_other_runnable(), !m.queue.is_empty(), "step {}", step);
            prop_assert_eq!(
                t.run_queue.iter().copied().collect::<Vec<_>>(),
                Vec::from(m.queue.clone()),
                "step {}: queue",
                step
            );
            for (slot, s) in m.slots.iter().enumerate() {
                let id = TaskId { slot: slot as u16, generation: s.generation };
                let want = (s.state != State::Free).then_some(s.state);
                prop_assert_eq!(t.state(id), want, "step {}: slot {}", step, slot);
            }
            prop_assert_eq!(t.stats, m.stats, "step {}: counters", step);
        }
        Ok(())
    });
}
