//! How a context that took a "page not present" event waits for its token, for every protocol
//! that delivers one (the ring's event, KVM's async #PF): parked in the scheduler when it can
//! sleep, in the HLT loop when it cannot, not at all when the token's wake came first. The
//! protocol records the event in its own [`TokenTable`](super::tokens::TokenTable), inside the
//! one borrow of its per-vCPU state its handler takes, asking [`waiter`] who waits only when
//! someone must; then [`wait`] waits as the table said, outside that borrow.
//!
//! Interrupts are off (the handler's gate) from taking the event until the task is parked or
//! the HLT loop halts, so a wake that comes after the event was taken always finds its waiter
//! registered: hosts force the waiting paths with that (`ResolutionTiming::AfterEventTaken`).

use super::halt;
use super::tokens::{EventOutcome, Rejection, Waiter};
use crate::arch::trap::TrapFrame;
use crate::task::{self, table::TaskId, table::Wait};

/// Who waits for an event taken in `frame`'s context: its task, when it may sleep inside this
/// trap (a task other than idle, at trap depth 1, outside a no-sleep section, interrupts on in
/// the interrupted context) and another task can run meanwhile; otherwise the HLT loop.
pub fn waiter(frame: &TrapFrame) -> Waiter {
    if frame.interrupts_were_enabled() && task::may_sleep_in_trap() && task::has_other_runnable() {
        Waiter::Task(task::current())
    } else {
        Waiter::Halt
    }
}

/// How an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// The wake had come before the event: no wait.
    AlreadyResolved(u32),
    /// Parked in the scheduler, woken with this result.
    Slept(u32),
    /// Waited in the HLT loop for this result.
    Halted(u32),
    /// The table refused the event: the access just goes on (it is retried where it has not
    /// run).
    Rejected(Rejection),
}

/// Waits for `token` as the table's `outcome` says: blocks the task on it (`owner` names the
/// protocol's tokens for the scheduler), or halts until `take_halt_result` has it. Call from
/// the event's handler with interrupts off, after giving back the protocol's state.
#[inline(always)]
pub fn wait(
    outcome: EventOutcome,
    owner: &'static str,
    token: u32,
    mut take_halt_result: impl FnMut() -> Option<(u32, u64)>,
) -> Waited {
    match outcome {
        EventOutcome::AlreadyResolved { result } => Waited::AlreadyResolved(result),
        EventOutcome::Rejected(why) => Waited::Rejected(why),
        EventOutcome::Park(Waiter::Task(_)) => {
            Waited::Slept(task::block_current(Wait::Key { owner, key: u64::from(token) }) as u32)
        }
        EventOutcome::Park(Waiter::Halt) => Waited::Halted(halt::wait_until(&mut take_halt_result).0),
    }
}

/// Wakes each task of `woken` with its result. Called after the protocol's table is given back
/// (the scheduler keeps its own state); returns how many were not waiting any more (a task a
/// protocol decision ended meanwhile).
pub fn wake_tasks(woken: impl IntoIterator<Item = (TaskId, u32)>) -> u64 {
    let mut stale = 0;
    for (id, result) in woken {
        if task::wake(id, u64::from(result)) != task::table::WakeOutcome::Woken {
            stale += 1;
        }
    }
    stale
}
