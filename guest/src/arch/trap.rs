//! Exception and interrupt entry: the frame every handler receives, the 256 entry stubs that
//! build it, and the dispatcher that routes each vector to its registered handler.
//!
//! Stack layout after the common entry path has saved everything (lowest address first), which
//! is exactly [`TrapFrame`]:
//!
//! ```text
//!   rsp ->  r15 r14 r13 r12 r11 r10 r9 r8 rbp rdi rsi rdx rcx rbx rax   (pushed by trap_common)
//!           vector                                                       (pushed by the stub)
//!           error code  (pushed by the CPU, or a 0 pushed by the stub)
//!           rip cs rflags rsp ss                                         (pushed by the CPU)
//! ```
//!
//! The CPU aligns RSP to 16 bytes before pushing its part in 64-bit mode; with the error code
//! slot always present the frame is 176 bytes, so the `call` into Rust happens on an aligned
//! stack. Entries from CPL 3 execute `swapgs` on the way in and out, so GS always addresses the
//! per-vCPU area while the kernel runs. The NMI, which can land between an entry and its
//! `swapgs`, has an entry of its own that decides by the GS base instead (`nmi_common`), and
//! goes to [`super::nmi`].

use core::arch::global_asm;

use x86_64::registers::rflags::RFlags;

use crate::cell::{FnPtr, FnSlot};

/// The register state of the interrupted context. Handlers may change it; the common exit
/// path restores it with IRETQ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector this entry came through.
    pub vector: u64,
    /// The CPU's error code for vectors that have one, 0 otherwise; for an NMI, 1 when its
    /// entry swapped GS (it found the user's GS base), which its exit undoes.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const FRAME_VECTOR: usize = 15 * 8;
const FRAME_CS: usize = 18 * 8;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);
const _: () = assert!(core::mem::size_of::<TrapFrame>().is_multiple_of(16));
const _: () = assert!(core::mem::offset_of!(TrapFrame, vector) == FRAME_VECTOR);
const _: () = assert!(core::mem::offset_of!(TrapFrame, cs) == FRAME_CS);
const _: () = assert!(core::mem::offset_of!(TrapFrame, rip) == FRAME_CS - 8);

impl TrapFrame {
    /// Privilege level of the interrupted context.
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }

    /// Whether the interrupted context was a CPL 3 task.
    pub fn from_user(&self) -> bool {
        self.cpl() == 3
    }

    /// The interrupted context's RFLAGS, typed.
    pub fn flags(&self) -> RFlags {
        RFlags::from_bits_retain(self.rflags)
    }

    /// Whether the interrupted context had interrupts enabled.
    pub fn interrupts_were_enabled(&self) -> bool {
        self.flags().contains(RFlags::INTERRUPT_FLAG)
    }
}

/// Distance between two entry stubs; stub `v` is at `trap_stubs + v * STUB_SIZE`.
pub const STUB_SIZE: usize = 16;

/// Where the linker puts the entry stubs (`trap_stubs`): the page after the PVH entry's. A
/// fixed address makes every IDT gate a constant, so the IDT is built by the compiler
/// (`idt`); `linker.ld` places the stubs here and checks it.
pub const STUBS_ADDR: u64 = 0x10_1000;

global_asm!(
    r#"
    .global TRAP_STUBS_ADDR         # for linker.ld's check that the stubs are where the IDT says
    .set TRAP_STUBS_ADDR, {stubs_addr}
    .pushsection .text.trap_entry, "ax"
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign {stub_size}
    # Vectors for which the CPU pushes an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX.
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0                        # no error code: keep the frame uniform
    .endif
    pushq $vec
    .if vec == 2
    jmp nmi_common                  # NMI: GS decided by its base, not by CS (see nmi_common)
    .else
    jmp trap_common
    .endif
    .set vec, vec + 1
    .endr
    .balign {stub_size}
    .global trap_stubs_end
trap_stubs_end:                     # linker.ld asserts that every stub kept to its slot

    .macro pvagent_save_registers
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    .endm
    .macro pvagent_restore_registers
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    .endm

trap_common:
    testb $3, {cs}-{vector}(%rsp)   # from CPL 3? then load the kernel's GS base
    jz 1f
    swapgs
1:  pvagent_save_registers
    mov %rsp, %rdi                  # trap_dispatch(&mut TrapFrame)
    cld
    call trap_dispatch

    .global trap_return
trap_return:                        # also where a new CPL 3 task starts (see task::switch)
    pvagent_restore_registers
    testb $3, {cs}-{vector}(%rsp)   # back to CPL 3? then restore the user's GS base
    jz 2f
    swapgs
2:  add $16, %rsp                   # vector and error code
    iretq

# An NMI can land where CS and GS disagree: on the first instructions of an entry from CPL 3,
# before its `swapgs` (CS already the kernel's, GS still the user's), or on the exit path
# between `swapgs` and `iretq`. So it asks the GS base itself, as Linux's paranoid entry does:
# CPL 3 code always runs with GS base 0 (`percpu::init` leaves 0 in KERNEL_GS_BASE, and
# CR4.FSGSBASE is clear, `boot::entry::KERNEL_CR4` being loaded whole, so user code cannot
# change it), the kernel never does (its per-vCPU area).
# Whether it swapped is kept in the frame's error code slot (an NMI has no error code), and
# the exit swaps back exactly then: the interrupted code gets the GS it had.
nmi_common:
    push %rax
    push %rcx
    push %rdx
    mov ${gs_base_msr}, %ecx
    rdmsr
    or %edx, %eax                   # the GS base is 0: the user's
    jnz 3f
    swapgs
    movq $1, 32(%rsp)               # the error code slot, above rdx rcx rax and the vector
3:  pop %rdx
    pop %rcx
    pop %rax
    pvagent_save_registers
    mov %rsp, %rdi                  # nmi_dispatch(&mut TrapFrame)
    cld
    call nmi_dispatch
    pvagent_restore_registers
    testq $1, 8(%rsp)               # swapped on the way in: swap back
    jz 4f
    swapgs
4:  add $16, %rsp
    iretq
    .popsection
"#,
    stub_size = const STUB_SIZE,
    stubs_addr = const STUBS_ADDR,
    cs = const FRAME_CS,
    vector = const FRAME_VECTOR,
    gs_base_msr = const 0xC000_0101u32,
    options(att_syntax)
);

unsafe extern "C" {
    /// The common exit path: pops a [`TrapFrame`] at RSP and returns with IRETQ.
    pub static trap_return: u8;
}

/// Address of the common exit path.
pub fn trap_return_address() -> u64 {
    core::ptr::addr_of!(trap_return) as u64
}

/// A handler for one vector. It runs with interrupts disabled (every gate is an interrupt
/// gate) on the interrupted context's kernel stack, except for the IST vectors.
pub type Handler = fn(&mut TrapFrame);
// SAFETY: a fn pointer type.
unsafe impl FnPtr for Handler {}

static HANDLERS: [FnSlot<Handler>; 256] = [const { FnSlot::empty() }; 256];
/// What happens to a vector nobody registered, and to faults no handler claimed.
static FALLBACK: FnSlot<Handler> = FnSlot::empty();

/// Routes `vector` to `handler`. Protocol modules call this at init for their vectors.
pub fn register(vector: u8, handler: Handler) {
    HANDLERS[usize::from(vector)].set(handler);
}

/// Sets the handler for vectors without a registered handler (the kernel's "unexpected
/// exception" report).
pub fn set_fallback(handler: Handler) {
    FALLBACK.set(handler);
}

/// Called by `trap_common` with the frame it built.
#[unsafe(no_mangle)]
extern "sysv64" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    super::percpu::enter_trap();
    if let Some(handler) = HANDLERS[usize::from(vector)].get() {
        handler(frame);
    } else if let Some(fallback) = FALLBACK.get() {
        fallback(frame);
    } else {
        panic!("vector {vector} with no handler and no fallback, rip {:#x}", frame.rip);
    }
    super::percpu::leave_trap();
}
