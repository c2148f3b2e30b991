//! The kernel console and its print macros. Output is gathered into lines and each line goes
//! out whole: through the host stub's console port where it offers one (one exit per line), or
//! through the UART (COM1) everywhere else (QEMU), which costs one exit per byte and one per 16
//! bytes for the line status.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvagent_abi::console::ConsoleRecord;
use pvagent_abi::port::COM1;

use crate::arch::console_port;
use crate::arch::serial::Serial;
use crate::sync::IrqMutex;

/// Bytes gathered before they go out: the longest line that costs one exit, the most a console
/// record may hold (the ABI's maximum). A longer line goes out in pieces of this size.
const LINE_BYTES: usize = pvagent_abi::console::MAX_RECORD_BYTES as usize;
/// The panic path's record, on the stack of whatever failed (a task's or an IST stack, 16 KiB at
/// the least): smaller, so that it cannot be what overflows it. A longer line goes out in pieces.
const PANIC_LINE_BYTES: usize = 512;

/// Where the console's bytes go.
#[derive(Debug)]
enum Sink {
    Uart(Serial),
    /// The host stub's console port.
    Port,
}

/// A sink and the line being gathered for it.
#[derive(Debug)]
struct Console<const N: usize> {
    sink: Sink,
    record: ConsoleRecord<N>,
}

impl<const N: usize> Console<N> {
    const fn new(sink: Sink) -> Self {
        Self { sink, record: ConsoleRecord::new() }
    }

    /// Sends what was gathered.
    fn flush(&mut self) {
        let len = self.record.len as usize;
        if len == 0 {
            return;
        }
        match &mut self.sink {
            Sink::Port => console_port::send(&self.record),
            Sink::Uart(uart) => uart.write_bytes(&self.record.bytes[..len]),
        }
        self.record.len = 0;
    }

    /// Formats `args` and sends every complete line: what a print ends with, if it does not end
    /// a line, waits for the rest of its line.
    fn print(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = self.write_fmt(args);
        let len = self.record.len as usize;
        if len > 0 && self.record.bytes[len - 1] == b'\n' {
            self.flush();
        }
    }

    /// Formats `args` as a line of its own and sends it (without wrapping `args` in another
    /// `format_args!("{}\n")`, whose extra pass through the formatter costs every line).
    fn print_line(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = self.write_fmt(args);
        let _ = self.write_str("\n");
        self.flush();
    }
}

impl<const N: usize> Console<N> {
    /// The part of [`Write::write_str`] for a piece that does not fit what is left of the line.
    #[cold]
    #[inline(never)]
    fn write_in_parts(&mut self, mut bytes: &[u8]) {
        loop {
            let len = self.record.len as usize;
            let take = bytes.len().min(N - len);
            self.record.bytes[len..len + take].copy_from_slice(&bytes[..take]);
            self.record.len = (len + take) as u32;
            bytes = &bytes[take..];
            if bytes.is_empty() {
                return;
            }
            self.flush();
        }
    }
}

impl<const N: usize> Write for Console<N> {
    /// Called for every piece of every print (a format string's literal parts and each
    /// formatted value), so the common case, a piece that fits, is a length check and a copy.
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let len = self.record.len as usize;
        match self.record.bytes.get_mut(len..len + s.len()) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.record.len = (len + s.len()) as u32;
            }
            None => self.write_in_parts(s.as_bytes()),
        }
        Ok(())
    }
}

static CONSOLE: IrqMutex<Console<LINE_BYTES>> = IrqMutex::new(Console::new(Sink::Uart(Serial::new(COM1))));
/// Whether [`CONSOLE`] goes to the host stub's console port (for the panic path, which may not
/// be able to look).
static TO_PORT: AtomicBool = AtomicBool::new(false);

/// Chooses the console's device: the host stub's console port when `port` (the host offers it
/// and was told this guest's version), the UART otherwise, which is programmed now. Printing
/// works before this too, through the UART as the host left it.
pub fn init(port: bool) {
    // A fatal end reports the lines trap handlers dropped, whoever ends the run.
    crate::arch::fault::set_fatal_note(report_dropped_in_panic);
    let mut console = CONSOLE.lock();
    console.flush();
    if port {
        console.sink = Sink::Port;
        TO_PORT.store(true, Ordering::Relaxed);
    } else if let Sink::Uart(uart) = &mut console.sink {
        uart.init();
    }
}

/// Whether the console goes through the host stub's console port.
pub fn uses_port() -> bool {
    TO_PORT.load(Ordering::Relaxed)
}

#[doc(hidden)]
pub fn print_fmt(args: core::fmt::Arguments<'_>) {
    CONSOLE.lock().print(args);
}

#[doc(hidden)]
pub fn print_line(args: core::fmt::Arguments<'_>) {
    CONSOLE.lock().print_line(args);
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Prints from a trap handler: never waits for the console lock (the interrupted context may
/// hold it, and an exception can interrupt with interrupts off). A line that cannot be printed
/// now is dropped and counted ([`dropped_reports`]).
pub fn try_print_line(args: core::fmt::Arguments<'_>) {
    match CONSOLE.try_lock() {
        Some(mut console) => console.print_line(args),
        None => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Handler reports dropped because the console was busy.
pub fn dropped_reports() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Runs `f` with the console held, as a trap handler finds it when it interrupts a print (for
/// the self-test of [`try_print_line`]'s accounting).
pub fn while_busy<R>(f: impl FnOnce() -> R) -> R {
    let _held = CONSOLE.lock();
    f()
}

/// The line that says how many handler reports were dropped.
struct DroppedLine(u64);

impl core::fmt::Display for DroppedLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "console: {} line(s) from trap handlers dropped: the console was busy", self.0)
    }
}

/// Says how many handler reports were dropped, if any: a kernel binary calls it before its
/// last lines, so that a lost line is at least counted where the reader looks.
pub fn report_dropped() {
    let dropped = dropped_reports();
    if dropped > 0 {
        print_line(format_args!("{}", DroppedLine(dropped)));
    }
}

/// [`report_dropped`] for a run that ends in a fatal error: through [`print_panic`], which
/// never waits for the console (the failing context may hold it).
pub fn report_dropped_in_panic() {
    let dropped = dropped_reports();
    if dropped > 0 {
        print_panic(format_args!("{}\n", DroppedLine(dropped)));
    }
}

/// Prints even when the console lock is held by the context that panicked: output may
/// interleave (and the holder's unfinished line is not sent), but it is never lost and never
/// deadlocks.
pub fn print_panic(args: core::fmt::Arguments<'_>) {
    if let Some(mut console) = CONSOLE.try_lock() {
        console.print(args);
        console.flush();
        return;
    }
    let sink = if uses_port() { Sink::Port } else { Sink::Uart(Serial::new(COM1)) };
    // A record of its own on this stack (the panic path must not need the shared one).
    let mut console = Console::<PANIC_LINE_BYTES>::new(sink);
    console.print(args);
    console.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line from a trap handler without waiting for the console (see `try_print_line`).
#[macro_export]
macro_rules! kreport {
    ($($arg:tt)*) => { $crate::console::try_print_line(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::print_line(format_args!($($arg)*)) };
}
