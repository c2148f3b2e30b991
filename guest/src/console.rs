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

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
