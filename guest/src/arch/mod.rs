//! The hardware layer: CPU tables, exception entry, memory (layout, paging, kernel stacks), the
//! local APIC, time, and the host's exit and hypercall ports. It knows nothing about the
//! paravirtual protocols or tasks; those register their vectors and hooks here at init. It uses
//! only `boot` and `cell` below it.
//!
//! Plain logic (`layout`, `calibration`) builds on the host too and is unit-tested there; everything that
//! touches hardware is `cfg(kernel)`.

pub mod calibration;
pub mod cpus;
pub mod layout;

/// How many vCPUs the kernel has room for (per-vCPU arrays, the stack area). The MADT says how
/// many there are (`cpus`); processors beyond this many are not started, and boot says so.
pub const MAX_CPUS: usize = 8;

#[cfg(kernel)]
pub mod acpi;
#[cfg(kernel)]
pub mod apic;
#[cfg(kernel)]
pub mod console_port;
#[cfg(kernel)]
pub mod cpu;
#[cfg(kernel)]
pub mod exit;
#[cfg(kernel)]
pub mod fault;
#[cfg(kernel)]
pub mod gdt;
#[cfg(kernel)]
pub mod hypercall;
#[cfg(kernel)]
#[cfg(kernel)]
pub mod idt;
#[cfg(kernel)]
mod mem;
#[cfg(kernel)]
pub mod nmi;
#[cfg(kernel)]
pub mod paging;
#[cfg(kernel)]
pub mod percpu;
#[cfg(kernel)]
mod platform;
#[cfg(kernel)]
pub mod serial;
#[cfg(kernel)]
pub mod smp;
#[cfg(kernel)]
pub mod stacks;
#[cfg(kernel)]
pub mod time;
#[cfg(kernel)]
pub mod tlb;
#[cfg(kernel)]
pub mod trap;

#[cfg(kernel)]
pub use platform::{Platform, TaskStacks, announce_abi_version, init, init_traps, platform};
#[cfg(kernel)]
pub use time::{TIMER_VECTOR, start_tick, tick_period, ticks};
