//! The context switch and the first frames of new tasks.
//!
//! `switch_context(from, to)` saves the callee-saved registers on the current stack, stores RSP
//! in `*from`, loads `to` as RSP, restores the registers saved there and returns into whatever
//! that stack was doing. A task that has not run yet gets a hand-made [`SwitchFrame`] whose
//! return address is its start code:
//!
//! ```text
//!  kernel task                         user task
//!  top ->  (16 bytes padding)          top ->  TrapFrame (176 bytes): rip = user entry,
//!          ret = kernel_task_trampoline        cs = USER_CS, rflags = IF, rsp = user stack,
//!          rbp rbx r12=entry r13=arg           ss = USER_DS, rdi = argument
//!          r14 r15          <- rsp             ret = trap_return
//!                                              rbp rbx r12 r13 r14 r15  <- rsp
//! ```
//!
//! The kernel task's frame is placed so that RSP is 16-byte aligned when the trampoline calls
//! into Rust; the user task "returns" from a trap it never took, through the same exit path
//! (`trap_return`) every trap uses.

use core::arch::global_asm;

use x86_64::registers::rflags::RFlags;

use crate::arch::gdt::{USER_CS, USER_DS};
use crate::arch::trap::{TrapFrame, trap_return_address};

/// The registers `switch_context` saves, lowest address first, and its return address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SwitchFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub ret: u64,
}

const _: () = assert!(core::mem::size_of::<SwitchFrame>() == 7 * 8);

global_asm!(
    r#"
    .pushsection .text.switch_context, "ax"
    .global switch_context
switch_context:                     # (from: *mut u64 in rdi, to: u64 in rsi)
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global kernel_task_trampoline
kernel_task_trampoline:             # first code of a kernel task; RSP is 16-byte aligned here
    mov rdi, r12                    # task_start(entry, arg)
    mov rsi, r13
    call task_start
    ud2                             # task_start never returns
    .popsection
"#
);

unsafe extern "sysv64" {
    /// Saves the current context's RSP in `*from` and resumes the context whose RSP is `to`.
    pub fn switch_context(from: *mut u64, to: u64);
    static kernel_task_trampoline: u8;
}

/// Writes the first frame of a kernel task on the stack ending at `top` and returns the RSP to
/// switch to.
///
/// # Safety
///
/// `[top - 72, top)` must be the unused top of a stack owned by the new task; `top` must be
/// 16-byte aligned.
pub unsafe fn prepare_kernel_stack(top: u64, entry: u64, arg: u64) -> u64 {
    debug_assert_eq!(top % 16, 0);
    let rsp = top - 16 - core::mem::size_of::<SwitchFrame>() as u64;
    let frame = SwitchFrame {
        r12: entry,
        r13: arg,
        ret: core::ptr::addr_of!(kernel_task_trampoline) as u64,
        ..SwitchFrame::default()
    };
    // SAFETY: the caller gives us the top of a stack nobody uses yet.
    unsafe { core::ptr::write(rsp as *mut SwitchFrame, frame) };
    rsp
}

/// Writes the first frames of a CPL 3 task (see the module doc) and returns the RSP to switch
/// to.
///
/// # Safety
///
/// As for [`prepare_kernel_stack`], for the top 232 bytes; `user_entry` must be code in the
/// user-accessible text and `user_stack_top` the top of a user-accessible stack.
pub unsafe fn prepare_user_stack(top: u64, user_entry: u64, user_stack_top: u64, arg: u64) -> u64 {
    debug_assert_eq!(top % 16, 0);
    let trap_frame_at = top - core::mem::size_of::<TrapFrame>() as u64;
    let trap = TrapFrame {
        rdi: arg,
        rip: user_entry,
        cs: u64::from(USER_CS),
        // Bit 1 of RFLAGS is reserved and always set.
        rflags: RFlags::INTERRUPT_FLAG.bits() | 0x2,
        rsp: user_stack_top,
        ss: u64::from(USER_DS),
        ..TrapFrame::default()
    };
    let rsp = trap_frame_at - core::mem::size_of::<SwitchFrame>() as u64;
    let switch = SwitchFrame { ret: trap_return_address(), ..SwitchFrame::default() };
    // SAFETY: the caller gives us the top of a stack nobody uses yet.
    unsafe {
        core::ptr::write(trap_frame_at as *mut TrapFrame, trap);
    }
    // SAFETY: as above, just below the trap frame.
    unsafe {
        core::ptr::write(rsp as *mut SwitchFrame, switch);
    }
    rsp
}
