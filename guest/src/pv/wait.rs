//! How a context that took a "page not present" event waits for its token, for every protocol
//! that delivers one (the ring's event, KVM's async #PF): parked in the scheduler when it can
//! sleep, in the HLT loop when it cannot, not at all when the token's wake came first. The
//! protocol records the event in its own [`TokenTable`](super::tokens::TokenTable), inside the
//! one borrow of its per-vCPU state its handler takes, asking [`waiter`] who waits only when
//! someone must; then, when the table parked someone, [`wait`] waits outside that borrow.
//!
//! Interrupts are off (the handler's gate) from taking the event until the task is parked or
//! the HLT loop halts, so a wake that comes after the event was taken always finds its waiter
//! registered: hosts force the waiting paths with that (`ResolutionTiming::AfterEventTaken`).

use super::halt;
use super::tokens::{Parked, Waiter};
use crate::arch::trap::TrapFrame;
use crate::task::{self, table::TaskId, table::Wait};

/// Who waits for an event taken in `frame`'s context: its task, when it may sleep inside this
/// trap (it had interrupts on, is not idle or in a no-sleep section, and is not another
/// handler) and another task can run meanwhile; otherwise the HLT loop.
#[inline(always)]
pub fn waiter(frame: &TrapFrame) -> Waiter {
    match frame.interrupts_were_enabled().then(task::sleeper_in_trap).flatten() {
        Some(id) => Waiter::Task(id),
        None => Waiter::Halt,
    }
}

/// Waits for `token` as its table parked it: blocks the task on it (`owner` names the
/// protocol's tokens for the scheduler), or halts until `take_halt_result` has it. Returns the
/// result it was woken with. Call from the event's handler with interrupts off, after giving
/// back the protocol's state.
#[inline(always)]
pub fn wait(
    parked: Parked,
    owner: &'static str,
    token: u32,
    take_halt_result: impl FnMut() -> Option<(u32, u64)>,
) -> u32 {
    match parked {
        Parked::Task => task::block_current(Wait::Key { owner, key: u64::from(token) }) as u32,
        Parked::Halt => halt::wait_until(take_halt_result).0,
    }
}

/// Wakes `task` with `result`, once the protocol's state is given back (the scheduler keeps
/// its own); whether it was not waiting any more (a task a protocol decision ended meanwhile).
#[inline(always)]
pub fn wake(task: TaskId, result: u32) -> bool {
    task::wake(task, u64::from(result)) != task::table::WakeOutcome::Woken
}

/// Wakes each of `tasks` with `result` (a wake-all); how many were not waiting any more. By
/// reference: on an emulated guest kernel a copy costs its time per string iteration (eight
/// bytes each, `arch::mem`, while KVM counts one instruction per 1,024 of them), and a table's
/// worth of tasks is a kilobyte.
pub fn wake_tasks(tasks: &[TaskId], result: u32) -> u64 {
    tasks.iter().filter(|&&t| wake(t, result)).count() as u64
}
