//! Per-vCPU state: where each vCPU finds its own data.
//!
//! Every vCPU's GS base points at its [`CpuArea`] while the kernel runs (the entry path swaps GS
//! for CPL 3 contexts), from the vCPU's first 64-bit instruction: the boot vCPU's PVH entry sets
//! it before any Rust code runs (`boot::entry`), since even `memcpy` uses it ([`STRING_ITERATIONS`]).
//! Other modules keep their per-vCPU state in [`CpuLocal`] arrays indexed by [`index`], so adding
//! vCPUs means starting more of them, not restructuring state.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::model_specific::{GsBase, KernelGsBase};

use crate::cell::StaticCell;

pub use super::MAX_CPUS;

/// The part of the per-vCPU state that the entry path and `index()` read through GS.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct CpuArea {
    /// This area's own address (GS:0), the usual way to turn GS into a pointer.
    self_ptr: u64,
    /// Dense vCPU index, 0 for the boot vCPU (GS:8).
    index: u32,
    /// Local APIC ID (GS:12).
    apic_id: AtomicU32,
    /// Nesting depth of trap handlers on this vCPU (GS:16); 0 in task context. Atomic because
    /// the entry path changes it with GS-relative instructions while shared references to the
    /// area exist; Rust code never touches it otherwise.
    trap_depth: AtomicU32,
    /// Iterations of string instructions this vCPU's kernel ran (GS:24), added to by the kernel's
    /// `memcpy`, `memset`, `memmove` and `memcmp` with one GS-relative add each: what KVM's
    /// count of emulated instructions does not see (see [`string_iterations`]).
    string_iterations: AtomicU64,
}

const AREA_INDEX: usize = 8;
const AREA_TRAP_DEPTH: usize = 16;
/// GS offset of this vCPU's count of string-instruction iterations (`arch::mem` adds to it).
pub const STRING_ITERATIONS: usize = 24;
const _: () = assert!(core::mem::offset_of!(CpuArea, index) == AREA_INDEX);
const _: () = assert!(core::mem::offset_of!(CpuArea, trap_depth) == AREA_TRAP_DEPTH);
const _: () = assert!(core::mem::offset_of!(CpuArea, string_iterations) == STRING_ITERATIONS);

/// Each area is written once by its own vCPU during `init` (before it is shared), and afterwards
/// only through GS-relative single instructions or its atomics, by the vCPU that owns it. The
/// boot vCPU's PVH entry names the first one (`CPU_AREAS`) to point GS at it.
#[unsafe(export_name = "CPU_AREAS")]
static AREAS: StaticCell<[CpuArea; MAX_CPUS]> = StaticCell::new(
    [const {
        CpuArea {
            self_ptr: 0,
            index: 0,
            apic_id: AtomicU32::new(0),
            trap_depth: AtomicU32::new(0),
            string_iterations: AtomicU64::new(0),
        }
    }; MAX_CPUS],
);

/// This vCPU's area, shared: only its atomics may be used through it (see `AREAS`).
fn my_area() -> &'static CpuArea {
    // SAFETY: `init` finished writing this area before anything could call `index`; from then
    // on its plain fields never change (the rest is atomic), so a shared reference is sound.
    unsafe { &(*AREAS.get())[index()] }
}

/// Points this vCPU's GS base at its area.
///
/// # Safety
///
/// Call once per vCPU, on that vCPU, before anything calls [`index`], and with `cpu` unique
/// among started vCPUs.
pub unsafe fn init(cpu: usize) {
    assert!(cpu < MAX_CPUS, "vCPU index {cpu} beyond MAX_CPUS");
    // SAFETY: the caller guarantees this vCPU is the only one touching area `cpu` now.
    let area = unsafe { &mut (*AREAS.get())[cpu] };
    // The boot vCPU's entry pointed GS here already (`boot::entry`) and its string functions
    // have counted since: the count is kept.
    area.self_ptr = area as *mut CpuArea as u64;
    area.index = cpu as u32;
    // The two MSR writes are compiler barriers (the `x86_64` crate declares WRMSR without
    // `nomem`): the stores above are done before GS-relative loads can see the area.
    GsBase::write(VirtAddr::new(area.self_ptr));
    // KERNEL_GS_BASE (what `swapgs` exchanges with) starts at 0, the value CPL 3 code sees.
    KernelGsBase::write(VirtAddr::zero());
}

/// Dense index of the running vCPU.
pub fn index() -> usize {
    let index: u32;
    // SAFETY: GS points at this vCPU's CpuArea since `init` (and is swapped back to it on every
    // entry from CPL 3); the load reads the `index` field. `readonly`: a load, and no other
    // memory access; it keeps its place after `init`'s GS base write (a barrier).
    unsafe {
        core::arch::asm!("mov {0:e}, gs:[{off}]", out(reg) index, off = const AREA_INDEX,
            options(nostack, readonly, preserves_flags));
    }
    index as usize
}

/// Iterations of string instructions this vCPU's kernel has run so far (since its first
/// instruction: the count lives in the image's `.bss`, zero from the loader). On an emulated
/// guest kernel each iteration costs about an instruction's time, but KVM's `insn_emulation`
/// counts a `rep` string instruction once per 1,024 iterations; the benchmarks add this to
/// their counting windows, and the boot milestone reports it (`run_first_task`).
pub fn string_iterations() -> u64 {
    let n: u64;
    // SAFETY: GS addresses this vCPU's area (see `index`); the load reads its counter.
    unsafe {
        core::arch::asm!("mov {0}, gs:[{off}]", out(reg) n, off = const STRING_ITERATIONS,
            options(nostack, readonly, preserves_flags));
    }
    n
}

/// Records this vCPU's local APIC ID (read once the APIC is up).
pub fn set_apic_id(apic_id: u32) {
    my_area().apic_id.store(apic_id, Ordering::Relaxed);
}

/// This vCPU's local APIC ID.
pub fn apic_id() -> u32 {
    my_area().apic_id.load(Ordering::Relaxed)
}

/// How many trap handlers are active on this vCPU (0: task context).
pub fn trap_depth() -> u32 {
    let depth: u32;
    // SAFETY: GS addresses this vCPU's area (see `index`).
    unsafe {
        core::arch::asm!("mov {0:e}, gs:[{off}]", out(reg) depth, off = const AREA_TRAP_DEPTH,
            options(nostack, readonly, preserves_flags));
    }
    depth
}

pub(super) fn enter_trap() {
    // SAFETY: a single read-modify-write of this vCPU's own counter; interrupts cannot split it.
    // Neither `readonly` nor `preserves_flags`: it writes memory and sets the arithmetic flags.
    unsafe {
        core::arch::asm!("inc dword ptr gs:[{off}]", off = const AREA_TRAP_DEPTH,
            options(nostack));
    }
}

pub(super) fn leave_trap() {
    // SAFETY: as in `enter_trap`.
    unsafe {
        core::arch::asm!("dec dword ptr gs:[{off}]", off = const AREA_TRAP_DEPTH,
            options(nostack));
    }
}

/// Takes the trap depth away from a context that is being switched out in the middle of a
/// handler and gives it back when it resumes: the depth belongs to the context, not the vCPU.
pub fn swap_trap_depth(new_depth: u32) -> u32 {
    let old = trap_depth();
    // SAFETY: writes this vCPU's own counter; callers run with interrupts disabled. A store, so
    // no `readonly`; MOV leaves the flags alone.
    unsafe {
        core::arch::asm!("mov gs:[{off}], {0:e}", in(reg) new_depth, off = const AREA_TRAP_DEPTH,
            options(nostack, preserves_flags));
    }
    old
}

/// One `T` per vCPU; each vCPU reaches its own with [`CpuLocal::get`], and any vCPU may read
/// any with [`CpuLocal::of`]. Plain safe Rust: a `CpuLocal` is shared between vCPUs only when
/// `T` is `Sync` (atomics, or a `StaticCell` whose every use is an `unsafe` block with its own
/// rule), so handing out another vCPU's value is sound. State that only its own vCPU may touch,
/// through `&mut`, is a `sync::CpuCell` instead, which has no accessor by index.
#[derive(Debug)]
pub struct CpuLocal<T>([T; MAX_CPUS]);

impl<T> CpuLocal<T> {
    /// Wraps one value per vCPU.
    pub const fn new(values: [T; MAX_CPUS]) -> Self {
        Self(values)
    }

    /// The running vCPU's value.
    pub fn get(&self) -> &T {
        &self.0[index()]
    }

    /// The value of vCPU `cpu`.
    pub fn of(&self, cpu: usize) -> &T {
        &self.0[cpu]
    }
}
