//! The PVH entry: the first instructions of the kernel on every host.
//!
//! Both QEMU (`-kernel`) and the host stub start here as the PVH ABI says (see
//! `pvagent_abi::pvh`): 32-bit protected mode, paging off, flat segments, EBX = physical address
//! of the start info. This code enters long mode with throw-away page tables that identity-map
//! the first GiB ([`BOOT_MAPPED_LIMIT`]) with 2 MiB pages, and calls `kernel_main(start_info)` on the boot stack.
//! `arch::paging` replaces these tables with the real ones right away. The tables are data in
//! the image, written by the assembler and loaded by the host, not built here: on an emulated
//! guest kernel, a loop filling 512 entries would cost about 3,500 instructions of every boot.
//! For the same reason nothing here clears `.bss`: the loader did (below).
//!
//! The stack layout `kernel_main` starts with:
//!
//! ```text
//!   BOOT_STACK + BOOT_STACK_SIZE  <- rsp (16-byte aligned, then `call` pushes the return slot)
//! ```

use core::arch::global_asm;

use super::BOOT_MAPPED_LIMIT;
use crate::cell::StaticCell;

/// The boot page directory's entries: one 2 MiB page each, covering [`BOOT_MAPPED_LIMIT`].
const BOOT_PD_ENTRIES: u64 = BOOT_MAPPED_LIMIT >> 21;
const _: () = assert!(BOOT_PD_ENTRIES <= 512 && BOOT_MAPPED_LIMIT.is_multiple_of(1 << 21), "one page directory");

/// CR0 on every vCPU from its entry on: PE, MP, ET, NE, WP, PG, and nothing else (CD and NW
/// clear: caches on; AM is set later by the #AC layer). Loaded whole, not ORed into what the
/// host left: a PVH host may leave other bits, and an AP after INIT has CD and NW set
/// (0x60000010). The boot entry and the AP trampoline (`arch::smp`) both load it.
pub const KERNEL_CR0: u32 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);

/// CR4 on every vCPU from its entry on: PAE, and nothing else. Loaded whole for the same reason
/// as [`KERNEL_CR0`], and because the kernel relies on bits being clear: FSGSBASE (without it
/// CPL 3 cannot set its own GS base, which the NMI entry's test of "is GS the user's?" relies
/// on, `arch::trap`), TSD (CPL 3 may read the time-stamp counter). Both entries load it.
pub const KERNEL_CR4: u32 = 1 << 5;

/// Size of the boot stack; the boot context later becomes vCPU 0's idle task on this stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

/// The boot stack. Lives in `.stacks` (not zeroed, not loaded), right above its guard page
/// (`linker.ld`); only the assembly below names it.
#[repr(C, align(4096))]
struct BootStack([u8; BOOT_STACK_SIZE]);

#[unsafe(link_section = ".stacks.boot")]
#[unsafe(no_mangle)]
static BOOT_STACK: StaticCell<BootStack> = StaticCell::new(BootStack([0; BOOT_STACK_SIZE]));

global_asm!(
    r#"
    .pushsection .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                  # start info paddr: survives until kernel_main's argument

    # No clear of .bss (and .user_data): they lie in the data segment's memsz beyond its filesz,
    # which every ELF loader fills with zeros (the PVH ABI loads an ELF, docs/abi.md; the host
    # stub's loader writes them, QEMU's writes them on every reset). Clearing them here cost the
    # emulated boot a string iteration per byte, most of its time.

    mov ${cr4}, %eax                # CR4 whole (KERNEL_CR4: PAE only; FSGSBASE clear)
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           # IA32_EFER
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax  # EFER.LME | EFER.NXE
    wrmsr
    mov ${cr0}, %eax                # CR0 whole (KERNEL_CR0), not ORed into the host's
    mov %eax, %cr0                  # now in compatibility mode

    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    # GS base: the boot vCPU's per-vCPU area, before any Rust code runs (even memcpy counts its
    # string iterations there, arch::percpu). Loading GS above cleared it on Intel; nothing
    # loads GS again.
    mov $0xC0000101, %ecx           # IA32_GS_BASE
    mov $CPU_AREAS, %eax            # below 4 GiB: the image is identity mapped under 16 MiB
    xor %edx, %edx
    wrmsr
    lea BOOT_STACK + {stack_size}(%rip), %rsp
    xor %ebp, %ebp
    mov %esi, %edi                  # kernel_main(start_info_paddr: u32)
    call kernel_main
2:  hlt                             # kernel_main never returns
    jmp 2b

    .balign 8
boot_gdt:
    .quad 0                         # null
    .quad 0x00af9a000000ffff        # 0x08: 64-bit code, DPL 0
    .quad 0x00cf92000000ffff        # 0x10: data, DPL 0
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt
    .popsection

    # The boot page tables: PML4[0] -> PDPT, PDPT[0] -> PD (present | writable, 0x3), and
    # PD[i] = i * 2 MiB | present | writable | page size (0x83): up to BOOT_MAPPED_LIMIT.
    # APs climb to long mode on them too (`arch::smp`'s trampoline names boot_pml4).
    .pushsection .data.boot_tables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x3
    .fill 511, 8, 0
boot_pd:
    .set page, 0
    .rept {boot_pd_entries}
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr
    .fill 512 - {boot_pd_entries}, 8, 0
    .popsection

    # The PVH note: QEMU and the host stub find the 32-bit entry here.
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         # name size ("Xen\0")
    .long 4                         # descriptor size
    .long {note_type}               # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32
    .balign 4
    .popsection
"#,
    stack_size = const BOOT_STACK_SIZE,
    cr0 = const KERNEL_CR0,
    cr4 = const KERNEL_CR4,
    boot_pd_entries = const BOOT_PD_ENTRIES,
    note_type = const pvagent_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY,
    options(att_syntax)
);
