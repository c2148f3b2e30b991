//! Memory for tasks: a kernel stack per task slot (each above an unmapped guard page) and a
//! user stack per slot in the user-accessible data.

use core::cell::UnsafeCell;

use super::table::MAX_TASKS;
use crate::arch::percpu::MAX_CPUS;

/// Kernel stack size per task.
pub const KERNEL_STACK_SIZE: usize = 32 * 1024;
/// User stack size per task.
pub const USER_STACK_SIZE: usize = 8 * 1024;
const GUARD: usize = 4096;

#[repr(C, align(4096))]
struct KernelStack {
    guard: [u8; GUARD],
    stack: [u8; KERNEL_STACK_SIZE],
}

#[repr(C, align(4096))]
struct UserStack([u8; USER_STACK_SIZE]);

struct Pool<T>(UnsafeCell<T>);
// SAFETY: the pools are only used through addresses: each slot's stack belongs to the task in
// that slot, and Rust code never forms references into them.
unsafe impl<T> Sync for Pool<T> {}

#[unsafe(link_section = ".stacks.tasks")]
static KERNEL_STACKS: Pool<[[KernelStack; MAX_TASKS]; MAX_CPUS]> = Pool(UnsafeCell::new(
    [const { [const { KernelStack { guard: [0; GUARD], stack: [0; KERNEL_STACK_SIZE] } }; MAX_TASKS] }; MAX_CPUS],
));

#[unsafe(link_section = ".user_data.stacks")]
static USER_STACKS: Pool<[[UserStack; MAX_TASKS]; MAX_CPUS]> =
    Pool(UnsafeCell::new([const { [const { UserStack([0; USER_STACK_SIZE]) }; MAX_TASKS] }; MAX_CPUS]));

fn kernel_stack(cpu: usize, slot: u16) -> *mut KernelStack {
    let base = KERNEL_STACKS.0.get() as *mut KernelStack;
    base.wrapping_add(cpu * MAX_TASKS + usize::from(slot))
}

/// Top (exclusive end) of the kernel stack of task slot `slot` on vCPU `cpu`.
pub fn kernel_stack_top(cpu: usize, slot: u16) -> u64 {
    kernel_stack(cpu, slot) as u64 + core::mem::size_of::<KernelStack>() as u64
}

/// The guard page below the kernel stack of `slot` on `cpu`.
pub fn kernel_stack_guard(cpu: usize, slot: u16) -> u64 {
    kernel_stack(cpu, slot) as u64
}

/// Top of the user stack of task slot `slot` on vCPU `cpu`.
pub fn user_stack_top(cpu: usize, slot: u16) -> u64 {
    let base = USER_STACKS.0.get() as *mut UserStack;
    base.wrapping_add(cpu * MAX_TASKS + usize::from(slot) + 1) as u64
}

/// Unmaps the guard page of every task stack of `cpu`, so that an overflow faults (and, with no
/// stack left to push onto, becomes a #DF on its IST stack, which reports it).
pub fn protect(cpu: usize) {
    for slot in 0..MAX_TASKS as u16 {
        crate::arch::paging::unmap_page(kernel_stack_guard(cpu, slot));
    }
}
