//! The kernel console (COM1) and its print macros.

use core::fmt::Write;

use crate::arch::serial::Serial;
use crate::sync::IrqMutex;

static CONSOLE: IrqMutex<Serial> = IrqMutex::new(Serial::new(pvagent_abi::port::COM1));

/// Programs the UART. Printing works before this too (the host stub's UART and QEMU's need no
/// setup to transmit), but the line settings are only right after it.
pub fn init() {
    CONSOLE.lock().init();
}

#[doc(hidden)]
pub fn print_fmt(args: core::fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

static DROPPED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Prints from a trap handler: never waits for the console lock (the interrupted context may
/// hold it, and an exception can interrupt with interrupts off). A line that cannot be printed
/// now is dropped and counted ([`dropped_reports`]).
pub fn try_print_fmt(args: core::fmt::Arguments<'_>) {
    match CONSOLE.try_lock() {
        Some(mut console) => {
            let _ = console.write_fmt(args);
        }
        None => {
            DROPPED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Handler reports dropped because the console was busy.
pub fn dropped_reports() -> u64 {
    DROPPED.load(core::sync::atomic::Ordering::Relaxed)
}

/// Prints even when the console lock is held by the context that panicked: output may
/// interleave, but it is never lost and never deadlocks.
pub fn print_panic(args: core::fmt::Arguments<'_>) {
    if let Some(mut console) = CONSOLE.try_lock() {
        let _ = console.write_fmt(args);
    } else {
        let _ = Serial::new(pvagent_abi::port::COM1).write_fmt(args);
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line from a trap handler without waiting for the console (see `try_print_fmt`).
#[macro_export]
macro_rules! kreport {
    ($($arg:tt)*) => { $crate::console::try_print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
