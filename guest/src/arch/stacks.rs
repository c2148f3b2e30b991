//! Kernel stacks: the area [`layout`](super::layout) set aside, one stack per task slot and per
//! interrupt stack (IST) of each vCPU, each right above a guard page that is never mapped, so an
//! overflow faults (and, with no stack left to push onto, becomes a #DF on its IST stack, which
//! reports it) instead of corrupting its neighbour.
//!
//! Nothing in the area is mapped at boot. A vCPU's IST stacks are mapped when it starts
//! (`start_cpu`); a task stack the first time its slot is used ([`task_stack`]), with 4 KiB
//! pages in its own 2 MiB windows. Boot thus costs the same whatever the stacks' size and number.

use core::sync::atomic::{AtomicU64, Ordering};

use super::layout::{Access, Stack, StackArea};
use super::paging;
use super::percpu::{CpuLocal, MAX_CPUS};

static AREA: spin::Once<StackArea> = spin::Once::new();
/// Per vCPU, a bit per task slot whose stack is mapped.
static TASK_STACKS_MAPPED: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// Takes the area the layout decided (boot vCPU, before [`start_cpu`]).
pub(super) fn init(area: StackArea) {
    assert!(area.demand().tasks_per_cpu <= 64, "one bit per task slot");
    assert!(area.demand().cpus >= MAX_CPUS, "a stack block for every vCPU");
    AREA.call_once(|| area);
}

/// The stack area.
pub fn area() -> &'static StackArea {
    AREA.get().expect("arch::stacks before arch::init")
}

/// The tops of vCPU `cpu`'s IST stacks, for its TSS.
pub(super) fn ist_tops(cpu: usize) -> [u64; super::gdt::IST_COUNT] {
    core::array::from_fn(|i| area().ist(cpu, i).top)
}

/// Maps vCPU `cpu`'s IST stacks. Call before the vCPU can take an NMI, #DF or #MC on the
/// kernel's own page tables.
pub(super) fn start_cpu(cpu: usize) {
    for i in 0..area().demand().ist_per_cpu {
        let stack = area().ist(cpu, i);
        paging::map_range(stack.bottom(), stack.top, Access::KernelData);
    }
}

/// The kernel stack of task slot `slot` on vCPU `cpu`, mapped (the first call for a slot maps
/// it). Only vCPU `cpu` asks for its own slots (the scheduler, at spawn); should two contexts
/// of it race to map one, both write the same entries.
pub fn task_stack(cpu: usize, slot: usize) -> Stack {
    let stack = area().task(cpu, slot);
    let mapped = TASK_STACKS_MAPPED.of(cpu);
    if mapped.load(Ordering::Relaxed) & (1 << slot) == 0 {
        paging::map_range(stack.bottom(), stack.top, Access::KernelData);
        mapped.fetch_or(1 << slot, Ordering::Relaxed);
    }
    stack
}

/// Whether the stack of task slot `slot` on vCPU `cpu` was ever used (and so is mapped).
pub fn task_stack_mapped(cpu: usize, slot: usize) -> bool {
    TASK_STACKS_MAPPED.of(cpu).load(Ordering::Relaxed) & (1 << slot) != 0
}
