//! The run's time limit: after the deadline, the vCPU thread is kicked out of KVM_RUN with a
//! signal (repeatedly, in case a kick lands between two KVM_RUN calls) until it notices. A vCPU
//! that waits inside KVM on a userfaultfd fault takes no signal: the handlers' unblockers
//! (`ExitHandler::unblocker`) end such waits first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::error::{Error, Result};

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what interrupts KVM_RUN (EINTR).
}

/// Installs the (empty) handler for the kick signal, once per process.
pub fn install_handler() -> Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    let result = INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()));
    match result {
        Ok(()) => Ok(()),
        Err(errno) => Err(Error::SignalHandler(vmm_sys_util::errno::Error::new(*errno))),
    }
}

/// A deadline for the calling thread's vCPU loop.
#[derive(Debug)]
pub struct Watchdog {
    expired: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    timeout: Option<Duration>,
}

impl Watchdog {
    /// Arms a watchdog for the calling thread; `None` never fires. At the deadline it runs
    /// `unblockers`, then signals.
    pub fn arm(timeout: Option<Duration>, unblockers: Vec<crate::handler::Unblock>) -> Self {
        let expired = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        if let Some(timeout) = timeout {
            // SAFETY: pthread_self has no preconditions.
            let target = unsafe { libc::pthread_self() };
            let (expired, done) = (expired.clone(), done.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + timeout;
                let mut unblockers = unblockers;
                while !done.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now < deadline {
                        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    expired.store(true, Ordering::Release);
                    for unblock in unblockers.drain(..) {
                        unblock();
                    }
                    // SAFETY: `target` is the vCPU thread, which stays alive until it sets
                    // `done` (the Watchdog is dropped on that thread before it exits), and the
                    // kick signal has a handler.
                    unsafe { libc::pthread_kill(target, kick_signal()) };
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Self { expired, done, timeout }
    }

    /// Whether the deadline passed; returns the timeout error to stop with.
    pub fn check(&self) -> Result<()> {
        if self.expired.load(Ordering::Acquire) {
            Err(Error::Timeout { seconds: self.timeout.map_or(0, |t| t.as_secs()) })
        } else {
            Ok(())
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}
