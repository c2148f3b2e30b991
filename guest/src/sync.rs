//! Locking for a kernel whose handlers interrupt its tasks: everything here keeps interrupts
//! off while held (with `arch`'s [`IrqGuard`], whose both ends are compiler barriers), so a
//! handler can never spin on a lock its own vCPU holds. [`IrqMutex`] for state vCPUs share,
//! [`CpuCell`] for state each vCPU keeps to itself.
//!
//! `CpuCell` builds on the host for its unit tests, with a per-thread stand-in for the vCPU
//! index.

#[cfg(kernel)]
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering, compiler_fence};

pub use crate::arch::MAX_CPUS;
#[cfg(kernel)]
pub use crate::arch::cpu::IrqGuard;
#[cfg(kernel)]
use crate::arch::percpu::index as this_cpu;
use crate::cell::StaticCell;
#[cfg(not(kernel))]
use host_cpu::{IrqGuard, index as this_cpu};

/// Host tests: the "vCPU" is a per-thread index (0 unless a test sets it), and there are no
/// interrupts to disable.
#[cfg(not(kernel))]
mod host_cpu {
    use std::cell::Cell;

    std::thread_local! {
        static CPU: Cell<usize> = const { Cell::new(0) };
    }

    pub fn index() -> usize {
        CPU.with(Cell::get)
    }

    #[cfg(test)]
    pub fn set(cpu: usize) {
        CPU.with(|c| c.set(cpu));
    }

    #[derive(Debug)]
    pub struct IrqGuard;

    impl IrqGuard {
        pub fn new() -> Self {
            IrqGuard
        }
    }
}

/// A spinlock that also keeps interrupts off while held (shared between vCPUs and handlers).
#[cfg(kernel)]
#[derive(Debug)]
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

/// The guard of an [`IrqMutex`]. Field order matters: the lock is released before interrupts
/// are restored.
#[cfg(kernel)]
#[derive(Debug)]
pub struct IrqMutexGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    _irq: IrqGuard,
}

#[cfg(kernel)]
impl<T> IrqMutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Self {
        Self { inner: spin::Mutex::new(value) }
    }

    /// Disables interrupts, then takes the lock. Always inlined, as [`IrqMutex::try_lock`]: a
    /// generic the compiler may otherwise place in another codegen unit and call, and whether
    /// it does moves with unrelated changes (measured: the console's line, 181 instructions or
    /// 201, and the boot, by about 90).
    #[inline(always)]
    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let irq = IrqGuard::new();
        IrqMutexGuard { guard: self.inner.lock(), _irq: irq }
    }

    /// Takes the lock if it is free; used by the panic path, which must not wait for a lock
    /// the panicking context may hold.
    #[inline(always)]
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let irq = IrqGuard::new();
        self.inner.try_lock().map(|guard| IrqMutexGuard { guard, _irq: irq })
    }
}

#[cfg(kernel)]
impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

#[cfg(kernel)]
impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// One `T` per vCPU, each reached only by its own vCPU, with interrupts off, through
/// [`CpuCell::with`] or [`CpuCell::try_with`]: per-vCPU state that handlers and tasks of that
/// vCPU share (the scheduler's table, a protocol's per-vCPU state). Borrowing a vCPU's value
/// twice (a handler re-entering code that holds it) is refused instead of aliasing.
///
/// Why this is sound by construction, with any number of vCPUs: the only way to the values is
/// `with`/`try_with`, which disable interrupts *before* reading the running vCPU's index and
/// hand `f` a reference to that vCPU's value alone, for the duration of `f`. No other vCPU can
/// reach that value (there is no accessor taking an index), and nothing on this vCPU can
/// interrupt `f` except an exception that `f` itself raises, whose handler meets the borrow
/// flag. A task never moves to another vCPU (each vCPU's scheduler has its own table), so `f`
/// also ends on the vCPU whose value it has: should it switch tasks, the next task of this vCPU
/// finds the value still borrowed. The values sit in a [`StaticCell`] (its one `unsafe impl
/// Sync` in `cell.rs` is the door, the dereference below states the rule above); the flags are
/// atomics, so nothing here implements `Sync` by hand.
///
/// The index is read after interrupts are off, not before. Before would be sound too as long as
/// tasks never move between vCPUs, and measurably kinder to PVM's emulated kernel: a busy loop
/// of `with` calls (`ac`'s `join_yielding`) then has a few more instructions with interrupts on
/// per turn, and fewer periodic ticks are lost (the ratelimit self-test's one-second wait took
/// 1.4 s of wall time that way, 2.5 s this way). We keep the order that stays right if tasks
/// ever migrate at an interrupt; a tick lost in a busy loop is the busy loop's problem.
#[derive(Debug)]
pub struct CpuCell<T> {
    values: StaticCell<[T; MAX_CPUS]>,
    /// Per vCPU: its value is borrowed. Only its own vCPU reads or writes it; atomic so that the
    /// flag needs no `Sync` argument of its own, and so that the reads and writes stay what they
    /// are around `f` (see the fences in `try_with`).
    borrowed: [AtomicBool; MAX_CPUS],
}

impl<T> CpuCell<T> {
    /// One value per vCPU, element `i` for vCPU `i`.
    pub const fn new(values: [T; MAX_CPUS]) -> Self {
        Self { values: StaticCell::new(values), borrowed: [const { AtomicBool::new(false) }; MAX_CPUS] }
    }

    /// Runs `f` with exclusive access to the running vCPU's value, interrupts disabled; `None`
    /// (and `f` not run) if that value is already borrowed: a trap handler that an exception
    /// (which interrupts regardless of RFLAGS.IF) can reach while the value is in use asks this
    /// way and treats `None` as "not now". Always inlined, as [`CpuCell::with`]: a handler's
    /// borrow is on its every event's path.
    #[inline(always)]
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let _irq = IrqGuard::new();
        // Read with interrupts off: from here to the end `f` runs on this vCPU.
        let cpu = this_cpu();
        if self.borrowed[cpu].load(Ordering::Relaxed) {
            return None;
        }
        // SAFETY: `cpu` is the running vCPU, read with interrupts off, and its flag is clear.
        Some(unsafe { self.lend(cpu, f) })
    }

    /// Runs `f` with exclusive access to the running vCPU's value, interrupts disabled.
    ///
    /// # Panics
    ///
    /// If the value is already borrowed: a handler re-entered code that holds it, a kernel bug.
    // Written out rather than as `try_with(f).unwrap()`: on the emulated guest kernel the
    // `Option` around large results cost instructions on every call.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _irq = IrqGuard::new();
        // Read with interrupts off: from here to the end `f` runs on this vCPU.
        let cpu = this_cpu();
        assert!(!self.borrowed[cpu].load(Ordering::Relaxed), "CpuCell borrowed twice: a handler re-entered its owner");
        // SAFETY: `cpu` is the running vCPU, read with interrupts off, and its flag is clear.
        unsafe { self.lend(cpu, f) }
    }

    /// Marks vCPU `cpu`'s value borrowed, runs `f` on it, and marks it free again.
    ///
    /// # Safety
    ///
    /// `cpu` must be the running vCPU, read with interrupts off (and they stay off), and its
    /// value must not be borrowed.
    #[inline(always)]
    unsafe fn lend<R>(&self, cpu: usize, f: impl FnOnce(&mut T) -> R) -> R {
        let borrowed = &self.borrowed[cpu];
        borrowed.store(true, Ordering::Relaxed);
        // A fault inside `f` enters a handler on this vCPU like a signal enters a thread: the
        // fences keep the flag's store before `f` and its reset after it, where a nested
        // `try_with` looks (the compiler may neither sink nor merge them across `f`).
        compiler_fence(Ordering::SeqCst);
        // SAFETY: element `cpu` (in bounds: `borrowed[cpu]` was) is the running vCPU's, reached
        // only through this type, with that vCPU's interrupts off (the caller's contract and the
        // type's doc); its flag was clear and is now set, so no other reference to it is live
        // until the flag is reset, after the last use of this one. Only the element is
        // referenced, never the array.
        let value = unsafe { &mut *self.values.get().cast::<T>().add(cpu) };
        let result = f(value);
        compiler_fence(Ordering::SeqCst);
        borrowed.store(false, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    //! On the host, "the running vCPU" is a per-thread index and interrupts are not involved.
    //! These tests also run under Miri (`cargo +nightly miri test -p pvagent-guest --lib -- sync::`),
    //! which checks that a nested `try_with` forms no second reference to a borrowed value.

    use super::*;

    #[test]
    fn a_nested_borrow_is_refused_and_the_outer_one_goes_on() {
        static CELL: CpuCell<u64> = CpuCell::new([0; MAX_CPUS]);
        let outcome = CELL.with(|outer| {
            *outer = 1;
            // What an exception handler does when it interrupts the owner.
            let nested = CELL.try_with(|inner| *inner = 2);
            *outer += 1;
            nested
        });
        assert_eq!(outcome, None, "the nested borrow ran");
        assert_eq!(CELL.with(|v| *v), 2, "the outer borrow's writes, and only those");
        assert_eq!(CELL.try_with(|v| *v), Some(2), "free again after the outer borrow");
    }

    #[test]
    #[should_panic(expected = "CpuCell borrowed twice")]
    fn with_inside_with_panics() {
        static CELL: CpuCell<u64> = CpuCell::new([0; MAX_CPUS]);
        CELL.with(|_| CELL.with(|_| ()));
    }

    #[test]
    fn each_vcpu_reaches_its_own_value() {
        static CELL: CpuCell<u64> = CpuCell::new([0; MAX_CPUS]);
        std::thread::scope(|s| {
            for cpu in 0..MAX_CPUS {
                s.spawn(move || {
                    host_cpu::set(cpu);
                    for _ in 0..100 {
                        CELL.with(|v| *v += cpu as u64 + 1);
                    }
                });
            }
        });
        for cpu in 0..MAX_CPUS {
            host_cpu::set(cpu);
            assert_eq!(CELL.with(|v| *v), 100 * (cpu as u64 + 1), "vCPU {cpu}");
        }
    }
}
