//! Kernel and user stacks: the area [`layout`](super::layout) set aside, one stack per
//! interrupt stack (IST) of each vCPU and two per task slot (its kernel stack and its CPL 3
//! stack), each right above a guard page that is never mapped. A kernel stack overflow faults on
//! its guard (and, with no stack left to push onto, becomes a #DF on its IST stack, which
//! reports it); a user stack overflow is a CPL 3 page fault that ends only that task. Neither
//! corrupts its neighbour.
//!
//! Nothing in the area is mapped at boot. A vCPU's IST stacks are mapped when it starts
//! (`start_cpu`); a slot's stacks when the task layer first uses them ([`map_task_stack`],
//! [`map_user_stack`]), with 4 KiB pages in their own 2 MiB windows. Boot thus costs the same
//! whatever the stacks' size and number. Which stacks are mapped is the task layer's
//! bookkeeping, sized by its own number of slots: this module keeps none.

use super::layout::{Access, Stack, StackArea};
use super::paging;
use super::percpu::MAX_CPUS;

static AREA: spin::Once<StackArea> = spin::Once::new();

/// Takes the area the layout decided (boot vCPU, before [`start_cpu`]).
pub(super) fn init(area: StackArea) {
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

/// Maps and returns the stack an AP (vCPU `cpu`, not 0) starts on, which becomes its idle task's:
/// the kernel stack of task slot 0, the slot the task layer gives the idle task on every vCPU
/// (`TaskTable::adopt_idle`). The idle task never uses that stack otherwise: on vCPU 0 it runs on
/// the image's boot stack.
pub(super) fn map_ap_boot_stack(cpu: usize) -> Stack {
    assert!(cpu != 0, "vCPU 0 runs on the image's boot stack");
    map_task_stack(cpu, 0)
}

/// Maps the kernel stack of task slot `slot` on vCPU `cpu` (not its guard) and returns it.
/// Once per slot is enough: mappings stay. Mapping it again writes the same entries.
pub fn map_task_stack(cpu: usize, slot: usize) -> Stack {
    let stack = area().task(cpu, slot);
    paging::map_range(stack.bottom(), stack.top, Access::KernelData);
    stack
}

/// Maps the CPL 3 stack of task slot `slot` on vCPU `cpu` for CPL 3 (not its guard) and
/// returns it; as [`map_task_stack`].
pub fn map_user_stack(cpu: usize, slot: usize) -> Stack {
    let stack = area().user(cpu, slot);
    paging::map_range(stack.bottom(), stack.top, Access::UserData);
    stack
}
