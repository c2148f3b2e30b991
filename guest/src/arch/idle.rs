//! How long each vCPU was halted waiting for work: the denominator of utilisation.
//!
//! A halt ends when an interrupt arrives, and `sti; hlt` runs that interrupt's handler before
//! the instruction after `hlt`. On an emulated guest kernel a handler takes tens of
//! microseconds, so a halt measured from `hlt` to the next instruction would count the handler
//! as idle. Instead the trap entry path ends the halt: idle time stops where the interrupt
//! began.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;
use super::percpu::{CpuLocal, MAX_CPUS};

/// TSC when this vCPU's current halt began; 0 when it is not halted.
static HALTED_SINCE: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// TSC cycles this vCPU spent halted.
static IDLE_CYCLES: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// `sti; hlt`, counted as idle time until the interrupt that ends it. Call with interrupts
/// disabled; returns with them enabled, after that interrupt's handler ran.
pub fn halt() {
    HALTED_SINCE.get().store(cpu::rdtsc().max(1), Ordering::Relaxed);
    cpu::enable_interrupts_and_halt();
    // Normally the trap entry already ended the halt; this covers a wake-up without one.
    end_halt();
}

/// Ends this vCPU's halt, if it is in one (called first thing on every trap entry).
pub(super) fn end_halt() {
    let since = HALTED_SINCE.get().swap(0, Ordering::Relaxed);
    if since != 0 {
        IDLE_CYCLES.get().fetch_add(cpu::rdtsc().wrapping_sub(since), Ordering::Relaxed);
    }
}

/// TSC cycles this vCPU has spent halted waiting for work (busy time = wall time - this).
pub fn idle_cycles() -> u64 {
    IDLE_CYCLES.get().load(Ordering::Relaxed)
}
