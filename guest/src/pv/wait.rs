//! How a context that took a "page not present" event waits for its token, for every protocol
//! that delivers one (the ring's event, KVM's async #PF): parked in the scheduler when it can
//! sleep, in the HLT loop when it cannot, not at all when the token's wake came first. The
//! protocol keeps its own [`TokenTable`](super::tokens::TokenTable) per vCPU and says how it
//! counts; this file is the one place that decides and waits.
//!
//! Interrupts are off (the handler's gate) from taking the event until the task is parked or
//! the HLT loop halts, so a wake that comes after the event was taken always finds its waiter
//! registered: hosts force the waiting paths with that (`ResolutionTiming::AfterEventTaken`).

use super::halt;
use super::tokens::{EventOutcome, Rejection, Waiter};
use crate::arch::cpu;
use crate::arch::trap::TrapFrame;
use crate::sync::CpuCell;
use crate::task::{self, table::TaskId, table::Wait};

/// What a protocol's per-vCPU state offers the wait.
pub trait TokenWaits: 'static {
    /// What its tasks wait on, as the scheduler shows it.
    const WAIT_OWNER: &'static str;
    /// Counts the event and records it in the table (`TokenTable::on_event`).
    fn on_event(&mut self, token: u32, gpa: u64, waiter: Waiter) -> EventOutcome;
    /// The HLT loop's check (`TokenTable::take_halt_result`).
    fn take_halt_result(&mut self, token: u32) -> Option<(u32, u64)>;
    /// A wait is about to begin, parked (`slept`) or in the HLT loop; `cycles` is what the
    /// handler cost until now.
    fn count_wait(&mut self, slept: bool, cycles: u64);
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

/// Waits for `token` (an access at `gpa`, 0 if unknown) as `state` records it: parks the
/// current task when it may sleep inside this trap and another task can run, otherwise waits
/// in the HLT loop; returns at once when the wake is already here. Call from the event's
/// handler with interrupts off; `entered` is the TSC at the handler's entry. Returns how it
/// ended and the TSC from which the handler's own cost is still to be counted (`entered`
/// when it did not wait: a wait's own time is not the handler's cost).
pub fn wait_for_token<S: TokenWaits>(
    state: &'static CpuCell<S>,
    frame: &TrapFrame,
    token: u32,
    gpa: u64,
    entered: u64,
) -> (Waited, u64) {
    let can_sleep = frame.interrupts_were_enabled() && task::may_sleep_in_trap() && task::has_other_runnable();
    let waiter = if can_sleep { Waiter::Task(task::current()) } else { Waiter::Halt };
    match state.with(|s| s.on_event(token, gpa, waiter)) {
        EventOutcome::AlreadyResolved { result } => (Waited::AlreadyResolved(result), entered),
        EventOutcome::Rejected(why) => (Waited::Rejected(why), entered),
        EventOutcome::Park if can_sleep => {
            state.with(|s| s.count_wait(true, cpu::rdtsc().wrapping_sub(entered)));
            let result = task::block_current(Wait::Key { owner: S::WAIT_OWNER, key: u64::from(token) }) as u32;
            (Waited::Slept(result), cpu::rdtsc())
        }
        EventOutcome::Park => {
            state.with(|s| s.count_wait(false, cpu::rdtsc().wrapping_sub(entered)));
            let result = halt::wait_until(|| state.with(|s| s.take_halt_result(token))).0;
            (Waited::Halted(result), cpu::rdtsc())
        }
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
