//! The interrupt descriptor table: all 256 vectors point at their entry stub (see `trap`).
//!
//! Every gate is an interrupt gate (interrupts off on entry) with DPL 0, so CPL 3 code cannot
//! raise any vector with `int n`. NMI, #DF and #MC use the IST stacks of `gdt`.

use x86_64::VirtAddr;
use x86_64::structures::idt::InterruptDescriptorTable;

use super::gdt;
use super::trap::stub_address;
use crate::cell::StaticCell;

/// Written once by the boot vCPU in `init` before any vCPU loads it; read-only after.
static IDT: StaticCell<InterruptDescriptorTable> = StaticCell::new(InterruptDescriptorTable::new());

/// Fills the IDT (boot vCPU, once).
///
/// # Safety
///
/// Call once, before [`load`], with interrupts disabled.
pub unsafe fn init() {
    // SAFETY: the caller guarantees no vCPU has loaded the IDT yet, so this is the only access.
    let idt = unsafe { &mut *IDT.get() };
    let at = |v: u8| VirtAddr::new(stub_address(v));
    // SAFETY: every address set below is the entry stub for that vector, which builds a
    // TrapFrame and returns with IRETQ whatever the vector; the IST indices exist in every
    // vCPU's TSS (gdt::init).
    unsafe {
        idt.divide_error.set_handler_addr(at(0));
        idt.debug.set_handler_addr(at(1));
        idt.non_maskable_interrupt.set_handler_addr(at(2)).set_stack_index(gdt::IST_NMI - 1);
        idt.breakpoint.set_handler_addr(at(3));
        idt.overflow.set_handler_addr(at(4));
        idt.bound_range_exceeded.set_handler_addr(at(5));
        idt.invalid_opcode.set_handler_addr(at(6));
        idt.device_not_available.set_handler_addr(at(7));
        idt.double_fault.set_handler_addr(at(8)).set_stack_index(gdt::IST_DOUBLE_FAULT - 1);
        idt.invalid_tss.set_handler_addr(at(10));
        idt.segment_not_present.set_handler_addr(at(11));
        idt.stack_segment_fault.set_handler_addr(at(12));
        idt.general_protection_fault.set_handler_addr(at(13));
        idt.page_fault.set_handler_addr(at(14));
        idt.x87_floating_point.set_handler_addr(at(16));
        idt.alignment_check.set_handler_addr(at(17));
        idt.machine_check.set_handler_addr(at(18)).set_stack_index(gdt::IST_MACHINE_CHECK - 1);
        idt.simd_floating_point.set_handler_addr(at(19));
        idt.virtualization.set_handler_addr(at(20));
        idt.cp_protection_exception.set_handler_addr(at(21));
        idt.hv_injection_exception.set_handler_addr(at(28));
        idt.vmm_communication_exception.set_handler_addr(at(29));
        idt.security_exception.set_handler_addr(at(30));
        for (offset, entry) in idt.slice_mut(32..).iter_mut().enumerate() {
            entry.set_handler_addr(at(32 + offset as u8));
        }
    }
}

/// Loads the IDT on this vCPU.
pub fn load() {
    // SAFETY: the IDT is static and was filled by `init` before any vCPU calls this.
    unsafe { (*IDT.get()).load_unsafe() };
}
