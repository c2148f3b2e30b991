//! Locking for a kernel whose handlers interrupt its tasks: every lock here keeps interrupts off
//! while held (with `arch`'s [`IrqGuard`], whose both ends are compiler barriers), so a handler
//! can never spin on a lock its own vCPU holds.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

pub use crate::arch::cpu::IrqGuard;

/// A spinlock that also keeps interrupts off while held (shared between vCPUs and handlers).
#[derive(Debug)]
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

/// The guard of an [`IrqMutex`]. Field order matters: the lock is released before interrupts
/// are restored.
#[derive(Debug)]
pub struct IrqMutexGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    _irq: IrqGuard,
}

impl<T> IrqMutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Self {
        Self { inner: spin::Mutex::new(value) }
    }

    /// Disables interrupts, then takes the lock.
    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let irq = IrqGuard::new();
        IrqMutexGuard { guard: self.inner.lock(), _irq: irq }
    }

    /// Takes the lock if it is free; used by the panic path, which must not wait for a lock
    /// the panicking context may hold.
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let irq = IrqGuard::new();
        self.inner.try_lock().map(|guard| IrqMutexGuard { guard, _irq: irq })
    }
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Per-vCPU state that only its own vCPU touches, with interrupts off. Keep it in a
/// [`crate::arch::percpu::CpuLocal`]. Borrowing it twice (a handler re-entering code that holds
/// it) is a kernel bug and panics instead of aliasing.
#[derive(Debug)]
pub struct IrqCell<T> {
    value: UnsafeCell<T>,
    borrowed: UnsafeCell<bool>,
}

// SAFETY: an IrqCell is only reached through CpuLocal::get, i.e. by the vCPU that owns it, and
// `with` runs with that vCPU's interrupts disabled and refuses nested borrows.
unsafe impl<T: Send> Sync for IrqCell<T> {}

impl<T> IrqCell<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Self { value: UnsafeCell::new(value), borrowed: UnsafeCell::new(false) }
    }

    /// Runs `f` with exclusive access, interrupts disabled; `None` (and `f` not run) if the cell
    /// is already borrowed: a trap handler that an exception (which interrupts regardless of
    /// RFLAGS.IF) can reach while the cell is in use asks this way and treats `None` as "not now".
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let _irq = IrqGuard::new();
        // SAFETY: as in `with`: interrupts are off and only the owning vCPU reaches this cell.
        let borrowed = unsafe { &mut *self.borrowed.get() };
        if *borrowed {
            return None;
        }
        *borrowed = true;
        // SAFETY: the flag above guarantees this is the only live reference.
        let result = f(unsafe { &mut *self.value.get() });
        *borrowed = false;
        Some(result)
    }

    /// Runs `f` with exclusive access, interrupts disabled.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _irq = IrqGuard::new();
        // SAFETY: interrupts are off and only the owning vCPU reaches this cell, so nothing
        // else runs between the check and the set.
        let borrowed = unsafe { &mut *self.borrowed.get() };
        assert!(!*borrowed, "IrqCell borrowed twice: a handler re-entered its owner");
        *borrowed = true;
        // SAFETY: the flag above guarantees this is the only live reference.
        let result = f(unsafe { &mut *self.value.get() });
        *borrowed = false;
        result
    }
}
