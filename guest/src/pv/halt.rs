//! The HLT loop: how a context that cannot sleep waits for something an interrupt will bring.
//!
//! It keeps taking every interrupt while it waits (seed 001: this beats a "suspend me"
//! hypercall, which costs one more exit and leaves the vCPU deaf meanwhile). `sti; hlt` is one
//! atomic step with respect to interrupts, so a wake-up that arrives between the check and the
//! halt still ends the halt.

use x86_64::instructions::interrupts;

use crate::arch::cpu;

/// Waits with `sti; hlt` until `done` returns `Some`, checking it with interrupts disabled.
/// Returns with interrupts disabled, as the caller (a trap handler) had them.
pub fn wait_until<T>(mut done: impl FnMut() -> Option<T>) -> T {
    loop {
        // A compiler barrier: `done` reads memory afresh each time round.
        interrupts::disable();
        if let Some(value) = done() {
            return value;
        }
        // The vCPU waits for the host here, as the idle task would (KVM counts the time halted:
        // the benchmarks' idle time).
        cpu::enable_interrupts_and_halt();
    }
}
