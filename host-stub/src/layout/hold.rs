//! Holding every vCPU out of KVM_RUN while the memory layout changes (seed 003's user-space
//! answer, as QEMU's accel-blocker does it): a vCPU thread passes [`HoldGate::enter`] before each
//! KVM_RUN and leaves it once the exit KVM_RUN returned is handled; an update calls
//! [`HoldGate::hold`], which closes the gate, kicks every vCPU thread (the kick signal, whose
//! handler also sets `immediate_exit`, so a kick just before a KVM_RUN still ends it at once:
//! `watchdog`), and waits until no vCPU is inside KVM_RUN or handling an exit. The memslots
//! change while the gate is closed; dropping the [`Held`] guard opens it and the vCPUs go on.
//!
//! The handling of an exit counts as inside because handlers read the guest's state through KVM:
//! KVM_TRANSLATE walks the guest's page tables through the memslots, and while guest RAM's slot
//! is deleted it finds no translation (seen: the pager's decoding of a CPL 3 EFAULT on an
//! absent page failed that way during a split of guest RAM, and the run ended on an "unclaimed"
//! EFAULT). A vCPU in its after-exit work (the pager's synchronous wait for a page, a #VE
//! suspend, an update of its own) is out, and finds the gate closed when it would enter again.
//! A vCPU blocked inside KVM on a userfaultfd page (the pager's `kvm-apf-kernel` mode) takes no
//! signal here: KVM_RUN ends only once the page is supplied, so the hold lasts until that fetch
//! completes (the pager's fetchers do not need the gate) and its time shows it. KVM itself would
//! wait for it too: the memslot update waits for every vCPU's SRCU read section, and a fault in
//! progress is one.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::watchdog::VcpuThreads;

/// How long a hold waits for the vCPUs to come out before it gives up: far longer than any page
/// fetch the pager can be set to (10 s at most), so that only a vCPU that never comes out (a
/// page nobody will supply) turns into an error instead of a hang.
pub const HOLD_BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct GateState {
    /// An update holds the vCPUs: none may enter KVM_RUN.
    closed: bool,
    /// vCPU threads between [`HoldGate::enter`] and the end of the handling of their exit.
    in_guest: usize,
    /// A hold closed the gate and waits for vCPUs still inside KVM_RUN.
    waiting: bool,
}

/// The gate every KVM_RUN passes (one per run, in [`VcpuThreads`]).
#[derive(Debug, Default)]
pub struct HoldGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Updates one at a time.
    updates: Mutex<()>,
}

/// A vCPU thread inside KVM_RUN (or about to call it, or handling the exit it returned);
/// dropping it says the exit is handled.
#[derive(Debug)]
pub struct InGuest<'a>(&'a HoldGate);

impl Drop for InGuest<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_guest -= 1;
        if state.in_guest == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// Every vCPU is out of KVM_RUN and held until this is dropped.
#[derive(Debug)]
pub struct Held<'a> {
    gate: &'a HoldGate,
    _one_update: MutexGuard<'a, ()>,
    /// When the hold was asked for.
    pub since: Instant,
    /// How long the vCPUs took to come out.
    pub stopping: Duration,
    /// The gate was opened already ([`Held::release`]).
    released: bool,
}

impl Held<'_> {
    /// Opens the gate and says how long the vCPUs were held: from the request to the moment the
    /// gate opened, read under the gate's lock before it opens, so that the time the vCPUs take
    /// to wake up and run again (and this thread to be scheduled) is not counted as held.
    pub fn release(mut self) -> Duration {
        self.open()
    }

    fn open(&mut self) -> Duration {
        let mut state = self.gate.lock();
        let held = self.since.elapsed();
        state.closed = false;
        drop(state);
        self.released = true;
        self.gate.changed.notify_all();
        held
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.open();
        }
    }
}

/// The vCPUs did not all come out of KVM_RUN within [`HOLD_BOUND`], or before the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTimedOut {
    /// vCPUs still inside KVM_RUN or handling an exit.
    pub in_guest: usize,
    /// The run ended meanwhile (its time limit, another vCPU's error): the hold gave up then.
    pub stopped: bool,
}

impl HoldGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a vCPU thread right before KVM_RUN: waits while an update holds the vCPUs.
    /// `None` when `stopping()` says the run is over (the thread then does not enter).
    pub fn enter(&self, stopping: impl Fn() -> bool) -> Option<InGuest<'_>> {
        let mut state = self.lock();
        while state.closed && !stopping() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if stopping() {
            return None;
        }
        state.in_guest += 1;
        Some(InGuest(self))
    }

    /// Whether an update holds the vCPUs now (the gate is closed).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether a hold closed the gate and is waiting for a vCPU still inside KVM_RUN.
    pub fn is_waiting(&self) -> bool {
        self.lock().waiting
    }

    /// Wakes threads waiting at the gate (the run is stopping: they must see it).
    pub fn wake(&self) {
        let _state = self.lock();
        self.changed.notify_all();
    }

    /// Brings every vCPU of `threads` out of KVM_RUN and keeps it out until the guard is
    /// dropped. May be called from a vCPU thread in its after-exit work or from any other
    /// thread, never by a handler while it handles an exit (the hold would wait for that very
    /// exit until [`HOLD_BOUND`]); updates from several threads take turns.
    pub fn hold<'a>(&'a self, threads: &VcpuThreads) -> Result<Held<'a>, HoldTimedOut> {
        let one_update = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let since = Instant::now();
        self.lock().closed = true;
        // After the gate closed: a vCPU that enters from now on waits, and one inside (or
        // between the gate and KVM_RUN) is kicked out; one handling an exit finishes it.
        threads.kick_all();
        let mut state = self.lock();
        while state.in_guest > 0 {
            state.waiting = true;
            let waited = since.elapsed();
            // The run's end (`VcpuThreads::stop_all`) wakes this wait (`HoldGate::wake`).
            let stopped = threads.stopping();
            if waited >= HOLD_BOUND || stopped {
                let in_guest = state.in_guest;
                state.closed = false;
                state.waiting = false;
                drop(state);
                self.changed.notify_all();
                return Err(HoldTimedOut { in_guest, stopped });
            }
            state = self.changed.wait_timeout(state, HOLD_BOUND - waited).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.waiting = false;
        drop(state);
        Ok(Held { gate: self, _one_update: one_update, since, stopping: since.elapsed(), released: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Threads standing for vCPUs enter and leave the gate in a loop; while a hold is in
    /// force none is inside, and each goes on once it ends.
    #[test]
    fn while_held_no_thread_is_inside_and_all_go_on_afterwards() {
        let threads = Arc::new(VcpuThreads::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (threads, inside, stop, entries) = (threads.clone(), inside.clone(), stop.clone(), entries.clone());
                std::thread::spawn(move || {
                    while let Some(guard) = threads.gate.enter(|| stop.load(Ordering::Acquire)) {
                        inside.fetch_add(1, Ordering::SeqCst);
                        entries.fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            let held = threads.gate.hold(&threads).expect("the threads come out");
            assert_eq!(inside.load(Ordering::SeqCst), 0, "a thread is inside while held");
            let before = entries.load(Ordering::SeqCst);
            std::thread::yield_now();
            assert_eq!(entries.load(Ordering::SeqCst), before, "a thread entered while held");
            drop(held);
        }
        // They go on: wait (on the counter, not on time) until every one entered again.
        let after = entries.load(Ordering::SeqCst);
        while entries.load(Ordering::SeqCst) < after + 3 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        threads.gate.wake();
        for w in workers {
            w.join().expect("worker");
        }
    }

    #[test]
    fn a_thread_waiting_at_a_closed_gate_sees_the_run_stop() {
        let threads = Arc::new(VcpuThreads::default());
        let stop = Arc::new(AtomicBool::new(false));
        let held = threads.gate.hold(&threads).expect("nobody inside");
        let waiter = {
            let (threads, stop) = (threads.clone(), stop.clone());
            std::thread::spawn(move || threads.gate.enter(|| stop.load(Ordering::Acquire)).is_none())
        };
        stop.store(true, Ordering::Release);
        threads.gate.wake();
        assert!(waiter.join().expect("waiter"), "it did not enter");
        drop(held);
    }

    /// The hold time ends when the gate opens, not when the releasing thread gets to read the
    /// clock afterwards: a thread waiting at the gate enters at or after the end of the hold.
    #[test]
    fn the_hold_time_ends_before_any_waiting_thread_enters() {
        let threads = Arc::new(VcpuThreads::default());
        for _ in 0..20 {
            let held = threads.gate.hold(&threads).expect("nobody inside");
            let since = held.since;
            let waiter = {
                let threads = threads.clone();
                std::thread::spawn(move || {
                    let guard = threads.gate.enter(|| false).expect("not stopping");
                    let entered = Instant::now();
                    drop(guard);
                    entered
                })
            };
            let time = held.release();
            let entered = waiter.join().expect("waiter");
            assert!(since + time <= entered, "held {time:?}, but a waiting thread entered {:?} in", entered - since);
        }
    }

    /// A hold waiting for a vCPU that never comes out (one blocked in KVM on a page nobody
    /// supplies) gives up when the run ends, so that the run's time limit holds.
    #[test]
    fn a_hold_waiting_for_a_vcpu_gives_up_when_the_run_stops() {
        let threads = Arc::new(VcpuThreads::default());
        let stuck = threads.gate.enter(|| false).expect("not stopping");
        let hold = {
            let threads = threads.clone();
            std::thread::spawn(move || threads.gate.hold(&threads).map(drop))
        };
        while !threads.gate.is_waiting() {
            std::thread::yield_now();
        }
        threads.stop_all();
        assert_eq!(hold.join().expect("hold"), Err(HoldTimedOut { in_guest: 1, stopped: true }));
        drop(stuck);
    }
}
