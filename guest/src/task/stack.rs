//! Memory for tasks: each task slot's kernel stack and CPL 3 stack, from `arch::stacks` (each
//! above an unmapped guard page), mapped the first time the slot needs them. Which are mapped
//! is kept here, a flag per slot in the scheduler's per-vCPU state (`Mapped`), so that the
//! number of slots is `MAX_TASKS` and nothing else.

use crate::arch::layout::Stack;
use crate::arch::stacks;

/// Kernel stack size per task when the command line does not say (`kstack=KIB`).
pub const DEFAULT_KERNEL_STACK_SIZE: u64 = 32 * 1024;
/// CPL 3 stack size per task.
pub const USER_STACK_SIZE: u64 = 8 * 1024;

/// Which of a slot's stacks are mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    pub kernel: bool,
    pub user: bool,
}

/// The kernel stack of task slot `slot` on vCPU `cpu`: where it is, mapped or not.
pub fn kernel_stack(cpu: usize, slot: u16) -> Stack {
    stacks::area().task(cpu, usize::from(slot))
}

/// The CPL 3 stack of task slot `slot` on vCPU `cpu`: where it is, mapped or not.
pub fn user_stack(cpu: usize, slot: u16) -> Stack {
    stacks::area().user(cpu, usize::from(slot))
}

/// The kernel stack of task slot `slot` on vCPU `cpu`, mapped (the first call for the slot,
/// as `mapped` says, maps it). Call on vCPU `cpu`, with its scheduler state borrowed.
pub(super) fn map_kernel_stack(cpu: usize, slot: u16, mapped: &mut Mapped) -> Stack {
    if mapped.kernel {
        return kernel_stack(cpu, slot);
    }
    mapped.kernel = true;
    stacks::map_task_stack(cpu, usize::from(slot))
}

/// The CPL 3 stack of task slot `slot` on vCPU `cpu`, mapped; as [`map_kernel_stack`].
pub(super) fn map_user_stack(cpu: usize, slot: u16, mapped: &mut Mapped) -> Stack {
    if mapped.user {
        return user_stack(cpu, slot);
    }
    mapped.user = true;
    stacks::map_user_stack(cpu, usize::from(slot))
}
