//! The kernel's `memcpy`, `memmove`, `memset` and `memcmp`, on string instructions: eight bytes
//! an iteration for the bulk of a copy or fill (`rep movsq`, `rep stosq`), then a byte tail
//! (`rep movsb`, `rep stosb`); comparisons byte by byte (`repe cmpsb`, which stops at the first
//! difference). They replace `compiler_builtins`' versions (weak symbols), which split every
//! copy into alignment head, words and tail (about 15 instructions) and compare in a loop of
//! several instructions a byte.
//!
//! What a string instruction costs an emulated guest kernel (PVM): KVM's emulator runs every
//! iteration, one at a time, at about the cost of an instruction each, but its `insn_emulation`
//! statistic counts the instruction once per 1,024 iterations. So the count of a path sees
//! almost nothing of a long copy while its time pays for all of it: a byte a `rep movsb`
//! iteration made the boot's copies and fills (the `.bss` clear, page tables, boot structures
//! moved by value) three quarters of its time while they were 2% of its count. Eight bytes an
//! iteration cut that eightfold, and the boot no longer moves anything large (`boot::info`,
//! `arch::layout`). Natively, CPUs with fast string operations (ERMS, FSRM) run both forms well.
//!
//! Each adds the iterations it runs to the vCPU's count (`percpu::string_iterations`, one
//! GS-relative add before each string instruction): the work KVM's statistic does not see, which
//! the benchmarks count next to it. These are the only string instructions in the kernel's
//! sources (`guest/tests/string_instructions.rs` keeps it so), but not in its image: the
//! compiler inlines a copy of a known size of up to 128 bytes as `rep movsq` with a constant
//! count, which nothing counts. In the release ELFs every such `rep` has a count of at most 15
//! (the command and the list are in `docs/performance.md`, "What the counts cannot see"); the
//! boot runs a few of them (`arch::platform::init`, `spin::Once`'s slow path), no event path
//! any.
//!
//! The direction flag is clear in kernel code (the ABI's rule, which the trap entry restores
//! with `cld`), so the string instructions count upwards unless `memmove` says otherwise.

use core::arch::asm;

use super::percpu::STRING_ITERATIONS;

/// Copies `n` bytes from `src` to `dest`, eight at a time, then the last `n % 8` one at a time.
///
/// # Safety
///
/// As C's `memcpy`: `src` readable and `dest` writable for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract. `rep movsq` copies `n / 8` quadwords from `src` to `dest`
    // and leaves RSI and RDI after them; `rep movsb` copies the remaining `n % 8` bytes. Only
    // `[src, src + n)` is read and `[dest, dest + n)` written; unaligned quadwords are allowed.
    // The adds count each instruction's iterations in this vCPU's area (GS, `percpu`).
    unsafe {
        asm!("add gs:[{count}], rcx", "rep movsq", "mov ecx, {tail:e}", "add gs:[{count}], rcx", "rep movsb",
            tail = in(reg) n & 7, count = const STRING_ITERATIONS,
            inout("rcx") n >> 3 => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`, which may overlap: upwards as [`memcpy`] unless
/// `dest` lies inside the source, then downwards (the byte tail first, from the top).
///
/// # Safety
///
/// As C's `memmove`: `src` readable and `dest` writable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or at or beyond its end: an upward copy reads each byte
        // before it is overwritten.
        // SAFETY: the caller's contract; the overlap, if any, is one an upward copy allows.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: the caller's contract. With the direction flag set, `rep movsb` copies the top
    // `n % 8` bytes downwards from the last byte, then `rep movsq` the quadwords below them,
    // each from the top; every byte is read before the copy overwrites it (`dest > src`). The
    // flag is cleared before the block ends; a trap taken meanwhile runs with it clear (the
    // entry's `cld`) and its IRETQ sets it again.
    unsafe {
        asm!("add gs:[{count}], rcx", "std", "rep movsb", "sub rsi, 7", "sub rdi, 7", "mov rcx, {quads}",
            "add gs:[{count}], rcx", "rep movsq", "cld",
            quads = in(reg) n >> 3, count = const STRING_ITERATIONS, inout("rcx") n & 7 => _,
            inout("rdi") dest.wrapping_add(n).wrapping_sub(1) => _,
            inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
            options(nostack));
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`, eight at a time, then the last `n % 8`.
///
/// # Safety
///
/// As C's `memset`: `dest` writable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let pattern = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller's contract. `rep stosq` writes `n / 8` quadwords of the byte from
    // `dest`, `rep stosb` the remaining `n % 8` bytes: `[dest, dest + n)` only. The adds count
    // the iterations, as in `memcpy`.
    unsafe {
        asm!("add gs:[{count}], rcx", "rep stosq", "mov ecx, {tail:e}", "add gs:[{count}], rcx", "rep stosb",
            tail = in(reg) n & 7, count = const STRING_ITERATIONS,
            inout("rcx") n >> 3 => _, inout("rdi") dest => _, in("rax") pattern,
            options(nostack));
    }
    dest
}

/// Compares `n` bytes: 0 when equal, otherwise the difference of the first bytes that differ
/// (as unsigned values).
///
/// # Safety
///
/// As C's `memcmp`: `a` and `b` readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (a_end, b_end): (*const u8, *const u8);
    let equal: u8;
    // SAFETY: the caller's contract. `repe cmpsb` reads `[a, a + n)` and `[b, b + n)` and
    // stops after the first pair that differs; ZF says whether the last pair compared was equal.
    // It ran `n` less what is left in RCX iterations: added, then what was left taken off again
    // (after `sete`, which reads ZF). Only this vCPU's count is written.
    unsafe {
        asm!("add gs:[{count}], rcx", "repe cmpsb", "sete {equal}", "sub gs:[{count}], rcx",
            equal = out(reg_byte) equal, count = const STRING_ITERATIONS,
            inout("rcx") n => _, inout("rsi") a => a_end, inout("rdi") b => b_end,
            options(nostack));
    }
    if equal != 0 {
        return 0;
    }
    // SAFETY: the pair that differed is the last one read, one byte before each end pointer.
    unsafe { i32::from(*a_end.sub(1)) - i32::from(*b_end.sub(1)) }
}

/// `bcmp`, which the compiler calls where only equality matters: as [`memcmp`].
///
/// # Safety
///
/// As [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}
