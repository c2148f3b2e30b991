//! A thread that keeps checking a condition while something is pending: how the pager notices
//! that the guest took the events a finished fetch waits for
//! ([`pvagent_abi::pnp::ResolutionTiming::AfterEventTaken`]). Taking an event is a store to guest
//! memory and causes no exit, and a vCPU that halts or computes makes none either, so nothing
//! else would tell the host.
//!
//! What is checked is an event, not a time: the interval only sets how soon after the guest's
//! store the host acts, never which path the guest takes.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the thread calls; it returns whether there is still something to wait for.
pub type Check = Box<dyn Fn() -> bool + Send>;

#[derive(Default)]
struct State {
    armed: bool,
    shutdown: bool,
}

#[derive(Default)]
struct PollShared {
    state: Mutex<State>,
    wake: Condvar,
}

impl PollShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The polling thread. Dropping it stops and joins the thread.
pub struct Poller {
    shared: Arc<PollShared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl Poller {
    /// Starts a thread that, once [`Poller::arm`]ed, calls `check` every `interval` until it
    /// returns false.
    pub fn start(name: &str, interval: Duration, check: Check) -> std::io::Result<Self> {
        let shared = Arc::new(PollShared::default());
        let thread_shared = shared.clone();
        let thread =
            std::thread::Builder::new().name(name.into()).spawn(move || run(&thread_shared, interval, check))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// A handle that arms this poller, for code that cannot own it.
    pub fn arm_handle(&self) -> Arm {
        Arm(self.shared.clone())
    }

    /// There is something to wait for: check until `check` says there is not.
    pub fn arm(&self) {
        self.arm_handle().arm();
    }
}

/// Arms a [`Poller`]; harmless once the poller has stopped.
#[derive(Clone)]
pub struct Arm(Arc<PollShared>);

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm").finish_non_exhaustive()
    }
}

impl Arm {
    /// There is something to wait for: check until the poller's check says there is not.
    pub fn arm(&self) {
        self.0.lock().armed = true;
        self.0.wake.notify_one();
    }
}

fn run(shared: &PollShared, interval: Duration, check: Check) {
    // Sleep precisely: the default 50 us timer slack would be longer than the interval.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    loop {
        {
            let mut state = shared.lock();
            while !state.armed && !state.shutdown {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.shutdown {
                return;
            }
            // Cleared before the check: an `arm` during the check keeps the thread going.
            state.armed = false;
        }
        std::thread::sleep(interval);
        if check() {
            shared.lock().armed = true;
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;

    #[test]
    fn checks_until_the_condition_clears_then_sleeps_until_armed_again() {
        let calls = Arc::new(AtomicU32::new(0));
        let (tx, rx) = mpsc::channel();
        let counted = calls.clone();
        let poller = Poller::start(
            "test-poller",
            Duration::from_micros(10),
            Box::new(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                // Pending for three checks, then done.
                if n.is_multiple_of(3) {
                    tx.send(n).unwrap();
                    false
                } else {
                    true
                }
            }),
        )
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not armed: no check");
        poller.arm();
        assert_eq!(rx.recv().unwrap(), 3);
        poller.arm();
        assert_eq!(rx.recv().unwrap(), 6);
        drop(poller);
        assert_eq!(calls.load(Ordering::SeqCst), 6, "no check after the condition cleared");
    }
}
