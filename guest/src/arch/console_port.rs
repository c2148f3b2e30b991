//! The host stub's paravirtual console port (`pvagent_abi::console`): one exit hands the host a
//! record of bytes, a whole line, where the UART costs an exit per byte (and one per 16 for the
//! line status).

use pvagent_abi::console::ConsoleRecord;
use pvagent_abi::port::CONSOLE;

/// Hands `record`'s bytes to the host. Only where the host stub offers the port
/// (`Features::CONSOLE`, after the boot announced this guest's version); elsewhere the write is
/// ignored (QEMU) and the bytes are lost.
pub fn send<const N: usize>(record: &ConsoleRecord<N>) {
    let addr = core::ptr::from_ref(record) as u64;
    // The record is a static of the image or on a kernel stack: identity mapped, below 1 GiB
    // (`arch::layout`), so its address fits the 32-bit `out`.
    debug_assert!(addr <= u64::from(u32::MAX) && record.len as usize <= N);
    // SAFETY: the host only reads the record at `addr`, while the vCPU is stopped in this
    // `out`. `readonly`, not `nomem`: the asm (the host) reads memory, so the compiler stores the
    // record before it; nothing is written.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") CONSOLE, in("eax") addr as u32,
            options(nostack, readonly, preserves_flags));
    }
}
