//! The kernel's `memcpy`, `memset` and `memcmp`: each one string instruction (`rep movsb`,
//! `rep stosb`, `repe cmpsb`). They replace `compiler_builtins`' versions (weak symbols), which
//! split the work into alignment head, words and tail: 15 instructions for every copy, and a
//! loop of several per byte for every comparison. An emulated guest kernel (PVM) pays one
//! instruction for a string instruction of any length, and CPUs with fast string operations
//! (ERMS, FSRM) run them well natively. The kernel calls these for every `copy_from_slice`,
//! every move of a large value and every string comparison (command line keys, test names).
//!
//! The direction flag is clear in kernel code (the ABI's rule, which the trap entry restores
//! with `cld`), so the string instructions count upwards.

/// Copies `n` bytes from `src` to `dest`.
///
/// # Safety
///
/// As C's `memcpy`: `src` readable and `dest` writable for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract. `rep movsb` reads `[src, src + n)` and writes
    // `[dest, dest + n)`, nothing else.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
///
/// As C's `memset`: `dest` writable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract. `rep stosb` writes `[dest, dest + n)` only.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
            options(nostack, preserves_flags));
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
    unsafe {
        core::arch::asm!("repe cmpsb", "sete {equal}", equal = out(reg_byte) equal,
            inout("rcx") n => _, inout("rsi") a => a_end, inout("rdi") b => b_end,
            options(nostack, readonly));
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
