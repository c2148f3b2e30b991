//! CPL 3 support: how user code calls the kernel, and the user-side call stubs.
//!
//! A user task calls the kernel with `ud2`, the number in RAX and arguments in RDI, RSI, RDX;
//! the result comes back in RAX and execution continues after the `ud2`. The calls: end the
//! task, yield, and wait on a word of `.user_data` until another task wakes it (a futex: tasks
//! that wait for each other block rather than spin, so that nothing they do depends on when
//! the others get there). Neither `syscall` nor
//! `int n` can be used: on the PVM `/dev/kvm` these machines have, `syscall` enters the handler
//! without leaving user mode (the next privileged instruction triple-faults), and `int n` ends
//! the VM with an emulation failure. `ud2` is a plain fault that every host delivers. Only a
//! `ud2` at CPL 3 inside `.user_text` is a call; any other #UD is an ordinary fault.

use crate::arch::fault;
use crate::arch::paging::image_layout;
use crate::arch::trap::{self, TrapFrame};
use crate::task::table::{ExitStatus, Wait};

/// `ud2`.
const UD2: [u8; 2] = [0x0F, 0x0B];
/// #UD.
const VECTOR_UD: u8 = 6;

/// Kernel call numbers (RAX).
pub mod nr {
    /// End the task with the value in RDI.
    pub const EXIT: u64 = 0;
    /// Let other tasks run.
    pub const YIELD: u64 = 1;
    /// Block while the u64 at RDI (aligned, in `.user_data`) holds RSI, until a [`WAKE`] of
    /// that address. RAX: 0 once woken, [`super::CHANGED`] when the word no longer held RSI
    /// (nothing blocked), [`super::EINVAL`] for an address outside `.user_data`.
    pub const WAIT: u64 = 2;
    /// Wake every task of this vCPU blocked in [`WAIT`] on the address in RDI (a wake does not
    /// reach other vCPUs: tasks on several wait on a word each). RAX: how many.
    pub const WAKE: u64 = 3;
}

/// RAX after a call with an unknown number.
pub const ENOSYS: u64 = u64::MAX;
/// RAX after a call with an argument it cannot take.
pub const EINVAL: u64 = u64::MAX - 1;
/// RAX after [`nr::WAIT`] found the word changed already.
pub const CHANGED: u64 = 1;

/// What waiters on a user word are blocked on, for reports.
const WAIT_OWNER: &str = "user word";

pub(super) fn init() {
    trap::register(VECTOR_UD, on_invalid_opcode);
}

fn is_kernel_call(frame: &TrapFrame) -> bool {
    if !frame.from_user() {
        return false;
    }
    let text = image_layout().user_text;
    if !(text.0..text.1.saturating_sub(1)).contains(&frame.rip) {
        return false;
    }
    // SAFETY: RIP and RIP+1 are inside `.user_text`, which is mapped and readable by the
    // kernel; user text is not writable, so the bytes are stable.
    let bytes = unsafe { core::ptr::read_unaligned(frame.rip as *const [u8; 2]) };
    bytes == UD2
}

fn on_invalid_opcode(frame: &mut TrapFrame) {
    if !is_kernel_call(frame) {
        fault::unhandled(frame);
        return;
    }
    frame.rip += UD2.len() as u64;
    match frame.rax {
        nr::EXIT => super::exit_current(ExitStatus::Returned(frame.rdi)),
        nr::YIELD => {
            frame.rax = 0;
            super::yield_now();
        }
        nr::WAIT => frame.rax = wait_on(frame.rdi, frame.rsi),
        nr::WAKE => {
            frame.rax = match user_word(frame.rdi) {
                Some(addr) => super::wake_all(Wait::Key { owner: WAIT_OWNER, key: addr as u64 }, 0) as u64,
                None => EINVAL,
            }
        }
        _ => frame.rax = ENOSYS,
    }
}

/// `addr` as a pointer to a u64 of `.user_data`, the only memory the wait calls take.
fn user_word(addr: u64) -> Option<*const u64> {
    let data = image_layout().user_data;
    (addr.is_multiple_of(8) && addr >= data.0 && addr.checked_add(8).is_some_and(|end| end <= data.1))
        .then_some(addr as *const u64)
}

/// [`nr::WAIT`]. Runs in the #UD handler, with interrupts off (an interrupt gate) from the
/// check to the block: a [`nr::WAKE`] on this vCPU comes either before the check, which then
/// sees the new value, or after the task is blocked. A wake reaches only this vCPU's waiters, so
/// tasks on several vCPUs wait on a word each (the benchmark's gates are per vCPU); waiters on
/// several for one word would need the check and the block under one lock, and a cross-vCPU wake.
fn wait_on(addr: u64, expected: u64) -> u64 {
    let Some(word) = user_word(addr) else { return EINVAL };
    // SAFETY: an aligned u64 inside `.user_data`, which is mapped and which CPL 3 tasks may
    // change at any time (hence volatile).
    if unsafe { core::ptr::read_volatile(word) } != expected {
        return CHANGED;
    }
    super::block_current(Wait::Key { owner: WAIT_OWNER, key: addr });
    0
}

/// User side: ends the calling task with `code`. Inlined into the user function that calls it,
/// so the `ud2` lands in `.user_text`.
#[inline(always)]
pub fn exit(code: u64) -> ! {
    // SAFETY: a kernel call; EXIT does not return.
    unsafe { core::arch::asm!("ud2", in("rax") nr::EXIT, in("rdi") code, options(noreturn, nostack)) }
}

/// User side: blocks while the u64 at `addr` (in `.user_data`) holds `expected`, until a
/// [`wake`] of `addr`. Returns 0 once woken, [`CHANGED`] if the word had changed already,
/// [`EINVAL`] for an address outside `.user_data`.
#[inline(always)]
pub fn wait(addr: u64, expected: u64) -> u64 {
    let result: u64;
    // SAFETY: a kernel call; WAIT returns in RAX and preserves everything else. Not `nomem`:
    // other tasks run meanwhile and change memory (the word among it).
    unsafe {
        core::arch::asm!("ud2", inout("rax") nr::WAIT => result, in("rdi") addr, in("rsi") expected, options(nostack))
    }
    result
}

/// User side: wakes every task blocked in [`wait`] on `addr`; returns how many (or [`EINVAL`]).
#[inline(always)]
pub fn wake(addr: u64) -> u64 {
    let result: u64;
    // SAFETY: a kernel call; WAKE returns in RAX and preserves everything else.
    unsafe { core::arch::asm!("ud2", inout("rax") nr::WAKE => result, in("rdi") addr, options(nostack)) }
    result
}

/// User side: lets other tasks run.
#[inline(always)]
pub fn yield_now() {
    // SAFETY: a kernel call; YIELD returns 0 in RAX and preserves everything else. Not
    // `nomem`: other tasks run meanwhile and may change any memory.
    unsafe { core::arch::asm!("ud2", inout("rax") nr::YIELD => _, options(nostack)) }
}

// User-side helpers are inline asm rather than `core::ptr::read_volatile` and friends: in
// debug builds those call precondition checks that live in kernel text, which CPL 3 cannot
// execute.

/// User side: reads a u64 (for touching test pages).
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    let value: u64;
    // SAFETY: user code only passes addresses of its own test buffers; a bad address faults the
    // task, which is what such a test wants to see.
    unsafe {
        core::arch::asm!("mov {}, qword ptr [{}]", out(reg) value, in(reg) addr,
            options(nostack, readonly, preserves_flags));
    }
    value
}

/// User side: reads the time-stamp counter (CR4.TSD is clear, so CPL 3 may).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter; `nomem`: it touches no memory and orders nothing.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// User side: writes a u64.
#[inline(always)]
pub fn write_u64(addr: u64, value: u64) {
    // SAFETY: as in `read_u64`.
    unsafe {
        core::arch::asm!("mov qword ptr [{}], {}", in(reg) addr, in(reg) value,
            options(nostack, preserves_flags));
    }
}
