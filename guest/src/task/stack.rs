//! Memory for tasks: the kernel stack of each task slot (from `arch::stacks`: above an unmapped
//! guard page, mapped when the slot is first used) and a user stack per slot in the
//! user-accessible data.

use super::table::MAX_TASKS;
use crate::arch::layout::Stack;
use crate::arch::percpu::MAX_CPUS;
use crate::arch::stacks;
use crate::cell::StaticCell;

/// Kernel stack size per task when the command line does not say (`kstack=KIB`).
pub const DEFAULT_KERNEL_STACK_SIZE: u64 = 32 * 1024;
/// User stack size per task.
pub const USER_STACK_SIZE: usize = 8 * 1024;

#[repr(C, align(4096))]
struct UserStack([u8; USER_STACK_SIZE]);

/// Used only through addresses: each slot's stack belongs to the task in that slot, and Rust
/// code never forms references into it.
#[unsafe(link_section = ".user_data.stacks")]
static USER_STACKS: StaticCell<[[UserStack; MAX_TASKS]; MAX_CPUS]> =
    StaticCell::new([const { [const { UserStack([0; USER_STACK_SIZE]) }; MAX_TASKS] }; MAX_CPUS]);

/// The kernel stack of task slot `slot` on vCPU `cpu`, mapped (when the slot is first used).
/// Call on vCPU `cpu`.
pub fn kernel_stack(cpu: usize, slot: u16) -> Stack {
    stacks::task_stack(cpu, usize::from(slot))
}

/// Top of the user stack of task slot `slot` on vCPU `cpu`.
pub fn user_stack_top(cpu: usize, slot: u16) -> u64 {
    let base = USER_STACKS.get().cast::<UserStack>();
    base.wrapping_add(cpu * MAX_TASKS + usize::from(slot) + 1) as u64
}
