//! An event tasks can wait on and interrupt handlers (or other tasks) can signal.

use core::sync::atomic::{AtomicBool, Ordering};

use super::table::Wait;
use crate::sync::IrqGuard;

/// A one-shot, auto-resetting event: `signal` wakes the waiters and the first of them to run
/// consumes the signal. A signal with nobody waiting is kept for the next `wait`.
#[derive(Debug)]
pub struct Event {
    signaled: AtomicBool,
}

impl Event {
    /// A new, unsignaled event.
    pub const fn new() -> Self {
        Self { signaled: AtomicBool::new(false) }
    }

    fn wait_key(&self) -> Wait {
        Wait::Event(self as *const Event as u64)
    }

    /// Blocks the current task until the event is signaled, then consumes the signal.
    pub fn wait(&self) {
        loop {
            let _irq = IrqGuard::new();
            if self.signaled.swap(false, Ordering::AcqRel) {
                return;
            }
            super::block_current(self.wait_key());
        }
    }

    /// Signals the event; returns how many waiters were woken.
    pub fn signal(&self) -> usize {
        let _irq = IrqGuard::new();
        self.signaled.store(true, Ordering::Release);
        super::wake_all(self.wait_key(), 0)
    }
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}
