//! Stopping vCPU threads: the run's time limit, and the end of the run for every vCPU once one
//! of them ended it. A vCPU thread is kicked out of KVM_RUN with a signal whose handler also
//! sets the thread's `kvm_run.immediate_exit`, so a kick that lands between the thread's last
//! check and its next KVM_RUN still ends that KVM_RUN at once (a vCPU waiting for a SIPI would
//! otherwise sleep in it for good). A vCPU that waits inside KVM on a userfaultfd fault takes no
//! signal: the handlers' unblockers (`ExitHandler::unblocker`) end such waits at the deadline.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::error::{Error, Result};

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` area of the vCPU this thread is running (null when none): what the kick
    /// signal's handler marks for an immediate exit.
    static RUNNING: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Delivering the signal interrupts a KVM_RUN in progress (EINTR); `immediate_exit` makes
    // the next one return EINTR at once, in case the signal came just before it.
    let run = RUNNING.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is the kvm_run area of the vCPU this thread runs, mapped for as long as
        // the pointer is set (`RunningVcpu` clears it before the vCPU can be dropped); the
        // thread itself is interrupted, so nothing else writes the field meanwhile.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// While it lives, the kick signal on this thread marks `run` for an immediate exit.
#[derive(Debug)]
pub struct RunningVcpu(());

impl RunningVcpu {
    /// Marks `run` as the calling thread's vCPU until the guard is dropped; the caller keeps
    /// the vCPU (and so its `kvm_run` mapping) alive at least as long as the guard.
    pub fn enter(run: &mut kvm_bindings::kvm_run) -> Self {
        RUNNING.with(|r| r.set(run));
        Self(())
    }
}

impl Drop for RunningVcpu {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(std::ptr::null_mut()));
    }
}

/// The vCPU threads of a run, for stopping them all: each registers itself while it runs a
/// vCPU; [`VcpuThreads::stop_all`] says the run is over and kicks every one.
#[derive(Debug, Default)]
pub struct VcpuThreads {
    stopping: AtomicBool,
    /// The running threads, by vCPU index. A thread leaves the list before it ends, under the
    /// lock a kick holds, so a kick never signals a thread that is gone.
    threads: Mutex<Vec<(usize, libc::pthread_t)>>,
    /// What every KVM_RUN passes, so that a layout update can hold the vCPUs (`layout::hold`).
    pub gate: crate::layout::hold::HoldGate,
}

impl VcpuThreads {
    /// Registers the calling thread as vCPU `index`'s until the guard is dropped.
    pub fn register(&self, index: usize) -> Registered<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).push((index, me));
        Registered { threads: self, index }
    }

    /// Lets the vCPUs run again after [`VcpuThreads::stop_all`], once every AP thread of the
    /// stopped stretch was joined (the benchmark's bare loop runs between two such stretches).
    pub fn resume(&self) {
        self.stopping.store(false, Ordering::Release);
    }

    /// Whether the run is over for every vCPU.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ends the run for every vCPU: each stops at its next exit, and one inside KVM_RUN is
    /// kicked out of it. The flag is set before the kicks, and a thread clears its
    /// `immediate_exit` before it reads the flag, so no thread misses both.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        self.gate.wake();
        self.kick_all();
    }

    /// Kicks every registered thread but the calling one.
    pub fn kick_all(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for &(_, thread) in threads.iter() {
            // SAFETY: pthread_equal has no preconditions.
            if unsafe { libc::pthread_equal(thread, me) } != 0 {
                continue;
            }
            // SAFETY: `thread` is registered, so alive (it leaves the list, under this lock,
            // before it ends), and the kick signal has a handler.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}

/// A thread's registration in [`VcpuThreads`]; dropping it deregisters the thread.
#[derive(Debug)]
pub struct Registered<'a> {
    threads: &'a VcpuThreads,
    index: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut threads = self.threads.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|&(index, _)| index != self.index);
    }
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

/// When a run that started at `now` with `timeout` ends: `None` for no timeout, and for one so
/// long that no clock reading is that far away (`--timeout` takes any whole number of
/// seconds; 2^64 - 1 of them is beyond what an `Instant` holds), which never comes.
pub fn deadline(now: Instant, timeout: Option<Duration>) -> Option<Instant> {
    now.checked_add(timeout?)
}

/// A deadline for every vCPU thread of a run.
#[derive(Debug)]
pub struct Watchdog {
    expired: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    timeout: Option<Duration>,
    /// The thread that waits for the deadline: woken and joined when the watchdog is dropped,
    /// so that a run leaves no thread behind.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for the vCPU threads registered in `threads`; `None`, or a timeout too
    /// long to have a deadline ([`deadline`]), never fires. At the deadline it runs
    /// `unblockers`, then signals each thread (again every 50 ms, for a thread that was not in
    /// KVM_RUN and not yet registered, until the run ends).
    pub fn arm(timeout: Option<Duration>, unblockers: Vec<crate::handler::Unblock>, threads: Arc<VcpuThreads>) -> Self {
        let expired = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let thread = deadline(Instant::now(), timeout).map(|deadline| {
            let (expired, done) = (expired.clone(), done.clone());
            std::thread::spawn(move || {
                let mut unblockers = unblockers;
                while !done.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now < deadline {
                        // Unparked when the watchdog is dropped.
                        std::thread::park_timeout(deadline - now);
                        continue;
                    }
                    expired.store(true, Ordering::Release);
                    for unblock in unblockers.drain(..) {
                        unblock();
                    }
                    threads.kick_all();
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            })
        });
        Self { expired, done, timeout, thread }
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
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // The thread only sleeps, kicks and runs the unblockers: it cannot panic on
            // anything the guest controls, and a join error would only repeat its message.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--timeout 18446744073709551615` (any whole number of seconds is accepted): the watchdog's
    /// thread added it to the clock and panicked ("overflow when adding duration to instant"),
    /// and the run went on with a backtrace on stderr. Such a deadline never comes.
    #[test]
    fn a_timeout_beyond_the_clock_never_fires() {
        let now = Instant::now();
        assert_eq!(deadline(now, None), None);
        assert_eq!(deadline(now, Some(Duration::from_secs(300))), Some(now + Duration::from_secs(300)));
        assert_eq!(deadline(now, Some(Duration::from_secs(u64::MAX))), None);
        assert_eq!(deadline(now, Some(Duration::MAX)), None);
        let watchdog = Watchdog::arm(Some(Duration::from_secs(u64::MAX)), Vec::new(), Arc::default());
        assert!(watchdog.check().is_ok());
        assert!(watchdog.thread.is_none(), "no thread waits for a deadline that never comes");
    }

    /// At the deadline the watchdog runs the unblockers and kicks every registered thread (a
    /// thread blocked in `pause` wakes with the kick signal), and `check` says the time is up;
    /// before it, nothing. Waits on the events themselves; the receive limits only turn a
    /// watchdog that never fires into a failure instead of a hang.
    #[test]
    fn the_watchdog_fires_at_its_deadline_unblocks_and_kicks_the_registered_threads() {
        use std::sync::mpsc;
        install_handler().unwrap();
        let hang = Duration::from_secs(60);
        let long = Watchdog::arm(Some(Duration::from_secs(3600)), Vec::new(), Arc::default());
        assert!(long.check().is_ok(), "an hour away");
        drop(long);

        let threads = Arc::new(VcpuThreads::default());
        let (registered_tx, registered) = mpsc::channel();
        let (kicked_tx, kicked) = mpsc::channel();
        let vcpu = {
            let threads = threads.clone();
            std::thread::spawn(move || {
                let _registered = threads.register(1);
                registered_tx.send(()).unwrap();
                // SAFETY: pause has no preconditions; it returns once a handled signal arrives.
                unsafe { libc::pause() };
                kicked_tx.send(()).unwrap();
            })
        };
        registered.recv_timeout(hang).unwrap();
        let (unblocked_tx, unblocked) = mpsc::channel();
        let unblock: crate::handler::Unblock = Box::new(move || unblocked_tx.send(()).unwrap());
        let armed = Instant::now();
        let watchdog = Watchdog::arm(Some(Duration::from_millis(200)), vec![unblock], threads);
        unblocked.recv_timeout(hang).expect("the unblocker ran");
        assert!(armed.elapsed() >= Duration::from_millis(200), "not before the deadline");
        assert!(matches!(watchdog.check(), Err(Error::Timeout { seconds: 0 })));
        kicked.recv_timeout(hang).expect("the registered thread was kicked out of its wait");
        vcpu.join().unwrap();
        drop(watchdog);
    }
}
