//! Segments and the TSS, one set per vCPU.
//!
//! Flat 64-bit segments for CPL 0 and CPL 3, and a TSS with
//! - RSP0: the kernel stack of the running task, used on every entry from CPL 3 (updated at each
//!   task switch by [`set_kernel_stack`]);
//! - IST stacks for NMI, #DF and #MC only (in the kernel stack area, above guard pages). Those
//!   three can arrive at any instruction, including with a corrupt RSP. Every other vector (#AC,
//!   #VE, the page-not-present event) runs on the ordinary kernel stack, because an IST stack is
//!   reset on each entry and a nested entry of the same vector would overwrite the frame of the
//!   first.

use x86_64::PrivilegeLevel;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

use super::percpu::MAX_CPUS;
use crate::cell::StaticCell;

/// Kernel code segment selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data segment selector.
pub const KERNEL_DS: u16 = 0x10;
/// User data segment selector (RPL 3).
pub const USER_DS: u16 = 0x18 | 3;
/// User code segment selector (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS_SEL: u16 = 0x28;

/// IST slot (1-based, as the IDT encodes it) of each vector that gets its own stack.
pub const IST_NMI: u16 = 1;
pub const IST_DOUBLE_FAULT: u16 = 2;
pub const IST_MACHINE_CHECK: u16 = 3;
/// How many IST stacks each vCPU has, and their size (they live in the kernel stack area, each
/// above its own guard page: see `stacks`).
pub const IST_COUNT: usize = 3;
pub const IST_SIZE: u64 = 16 * 1024;

struct CpuTables {
    gdt: GlobalDescriptorTable<8>,
    tss: TaskStateSegment,
}

/// vCPU `i` only touches element `i`, during `init` (before loading it) and through
/// `set_kernel_stack` (which finds `i` itself) with interrupts disabled; the CPU reads them.
static TABLES: StaticCell<[CpuTables; MAX_CPUS]> = StaticCell::new(
    [const { CpuTables { gdt: GlobalDescriptorTable::empty(), tss: TaskStateSegment::new() } }; MAX_CPUS],
);

/// vCPU `cpu`'s tables (an address: see `TABLES` for who may use it).
fn tables(cpu: usize) -> *mut CpuTables {
    let all = TABLES.get();
    // SAFETY: only an address is formed (of a bounds-checked element); nothing is accessed.
    unsafe { &raw mut (*all)[cpu] }
}

/// Builds and loads this vCPU's GDT and TSS and reloads every segment register but GS. The TSS
/// has no IST stacks yet ([`set_ist_stacks`] gives them).
///
/// GS keeps the null selector the entry loaded, and the base it set: the vCPU's per-vCPU area,
/// which the kernel uses from its first Rust instruction on (`percpu`). Loading GS would clear
/// that base on Intel CPUs, and in long mode the selector means nothing.
///
/// # Safety
///
/// Call once per vCPU, on that vCPU, with interrupts disabled.
pub unsafe fn init(cpu: usize) {
    // SAFETY: the caller guarantees this vCPU is alone with its tables and nothing loaded them.
    let CpuTables { gdt, tss } = unsafe { &mut *tables(cpu) };
    let selectors = [
        gdt.append(Descriptor::kernel_code_segment()),
        gdt.append(Descriptor::kernel_data_segment()),
        gdt.append(Descriptor::user_data_segment()),
        gdt.append(Descriptor::user_code_segment()),
        // SAFETY: the TSS is static and stays at this address.
        gdt.append(unsafe { Descriptor::tss_segment_unchecked(&raw const *tss) }),
    ];
    assert_eq!(selectors.map(|s| s.0), [KERNEL_CS, KERNEL_DS, USER_DS, USER_CS, TSS_SEL]);
    // SAFETY: the GDT is static (it outlives every use) and has the descriptors the selectors
    // below name.
    unsafe {
        gdt.load_unsafe();
        CS::set_reg(SegmentSelector::new(KERNEL_CS >> 3, PrivilegeLevel::Ring0));
        let data = SegmentSelector::new(KERNEL_DS >> 3, PrivilegeLevel::Ring0);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        FS::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector::new(TSS_SEL >> 3, PrivilegeLevel::Ring0));
    }
}

/// Gives this vCPU's TSS its IST stacks (`tops`, in the order of the `IST_*` slots).
///
/// # Safety
///
/// Call on vCPU `cpu`, after [`init`], with interrupts disabled; the stacks must be mapped
/// before the vCPU can take an NMI, #DF or #MC on them.
pub unsafe fn set_ist_stacks(cpu: usize, tops: [u64; IST_COUNT]) {
    // SAFETY: vCPU `cpu`'s own TSS (the caller runs on it), which nothing else writes; the CPU
    // reads the IST slots only to deliver an NMI, #DF or #MC.
    let tss = unsafe { &mut (*tables(cpu)).tss };
    for (slot, top) in tops.into_iter().enumerate() {
        tss.interrupt_stack_table[slot] = VirtAddr::new(top);
    }
}

/// Sets the stack the running vCPU switches to on an entry from CPL 3 (its TSS.RSP0). There
/// is no way to name another vCPU's TSS: each vCPU writes only its own.
///
/// # Safety
///
/// Interrupts must be disabled (a handler on this vCPU may switch tasks and set RSP0 itself),
/// and `top` must be the top of a mapped kernel stack that stays reserved for the task that
/// runs next: the CPU pushes every CPL 3 entry's frame there.
pub unsafe fn set_kernel_stack(top: u64) {
    // A kernel stack's top is identity mapped below 1 GiB, so canonical: no check needed.
    // SAFETY: `index()` is the running vCPU, so this is its own TSS, written by nobody else;
    // interrupts are off (the caller's contract), and the CPU reads RSP0 only on a privilege
    // change, which cannot happen during this store.
    unsafe { (*tables(super::percpu::index())).tss.privilege_stack_table[0] = VirtAddr::new_truncate(top) };
}
