//! The interrupt descriptor table: all 256 vectors point at their entry stub (see `trap`).
//!
//! Every gate is an interrupt gate (interrupts off on entry) with DPL 0, so CPL 3 code cannot
//! raise any vector with `int n`. NMI, #DF and #MC use the IST stacks of `gdt`.
//!
//! The table is data in the image, computed by the compiler, like the boot page tables: the
//! linker puts the entry stubs at a fixed address ([`trap::STUBS_ADDR`], checked by
//! `linker.ld`), so every gate is a constant. Boot only loads it (one `lidt`), where filling
//! 256 gates at run time cost an emulated guest kernel about 5,000 instructions of every boot.
//! It is read-only: the CPU never writes an IDT.
//!
//! [`trap::STUBS_ADDR`]: super::trap::STUBS_ADDR

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use super::trap::{STUB_SIZE, STUBS_ADDR};

/// One 16-byte gate descriptor, as the SDM (vol. 3, 6.14.1) lays it out.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Gate {
    /// Offset bits 15:0, the code segment selector, the IST index (bits 34:32), the type and
    /// attributes (bits 47:40), offset bits 31:16.
    low: u64,
    /// Offset bits 63:32; the upper half is reserved (0).
    high: u64,
}

/// Present, DPL 0, type 0xE: a 64-bit interrupt gate (RFLAGS.IF cleared on entry).
const INTERRUPT_GATE: u64 = 0x8E;

/// The gate of `vector`: its entry stub, on IST slot `ist` (0: the current stack).
const fn gate(vector: usize, ist: u16) -> Gate {
    let addr = STUBS_ADDR + (vector * STUB_SIZE) as u64;
    Gate {
        low: (addr & 0xFFFF)
            | ((KERNEL_CS as u64) << 16)
            | ((ist as u64 & 0b111) << 32)
            | (INTERRUPT_GATE << 40)
            | (((addr >> 16) & 0xFFFF) << 48),
        high: addr >> 32,
    }
}

/// The IST slot each vector uses: NMI, #DF and #MC have their own stacks (see `gdt`).
const fn ist_of(vector: usize) -> u16 {
    match vector {
        2 => IST_NMI,
        8 => IST_DOUBLE_FAULT,
        18 => IST_MACHINE_CHECK,
        _ => 0,
    }
}

const fn table() -> [Gate; 256] {
    let mut gates = [Gate { low: 0, high: 0 }; 256];
    let mut vector = 0;
    while vector < 256 {
        gates[vector] = gate(vector, ist_of(vector));
        vector += 1;
    }
    gates
}

/// The table, read-only in `.rodata`; every vCPU loads the same one.
#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Idt = Idt(table());

const _: () = assert!(core::mem::size_of::<Idt>() == 256 * 16);

/// Loads the IDT on this vCPU. Traps reach their entry stubs from here on; for the kernel's
/// own handling of them, `trap_dispatch` also needs this vCPU's per-vCPU area (`percpu::init`).
pub fn load() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(core::ptr::addr_of!(IDT) as u64),
    };
    // SAFETY: the table is a static (it outlives every use) of 256 well-formed interrupt gates,
    // each pointing at its vector's entry stub (`linker.ld` checks that the stubs are where the
    // gates say), on the kernel code segment every vCPU's GDT has, with IST slots every TSS has.
    unsafe { lidt(&pointer) };
}
