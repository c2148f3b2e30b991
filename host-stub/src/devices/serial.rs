//! The guest's console: COM1, rust-vmm's `vm-superio` 16550 (registers, divisor latch, line
//! status, scratch), and the paravirtual console port (`pvagent_abi::console`), which hands over
//! a whole line in one exit. Both feed one stream of bytes to the host's console: split into
//! lines, echoed or logged as configured, and kept for the run result.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use pvagent_abi::console::{MAX_RECORD_BYTES, RECORD_ALIGN, RECORD_BYTES_OFFSET, RECORD_LEN_OFFSET};
use pvagent_abi::port::{COM1, CONSOLE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_superio::serial::NoEvents;

use crate::config::SerialSink;
use crate::error::{ConsoleTo, Error, Result};
use crate::handler::{ExitHandler, Handled, VcpuCtx};

/// Lines kept in memory for the run result.
const MAX_LINES: usize = 200_000;
/// Longest line kept whole.
const MAX_LINE: usize = 4096;
/// The UART's eight registers, from `COM1`.
const REGISTERS: u16 = 8;

/// The UART's interrupt line, which is not wired: the guest polls the line status register and
/// enables no UART interrupt, and the UART has no receive path here (nothing is ever typed).
#[derive(Debug)]
pub struct NoInterrupt;

impl vm_superio::Trigger for NoInterrupt {
    type E = Infallible;

    fn trigger(&self) -> std::result::Result<(), Infallible> {
        Ok(())
    }
}

/// The console: the UART, and the paravirtual port that shares its output.
#[derive(Debug)]
pub struct Serial {
    uart: vm_superio::Serial<NoInterrupt, NoEvents, Console>,
    /// Whether the paravirtual port is offered (`Features::CONSOLE`); if not, it is unclaimed.
    pv_offered: bool,
    /// Records received on the paravirtual port, and the bytes they carried.
    pv_records: u64,
    pv_bytes: u64,
    /// `out`s to the paravirtual port of another width than 32 bits (ignored).
    pv_bad_width: u64,
}

/// Where the UART's output goes: complete lines to the sink and into the run result.
#[derive(Debug)]
struct Console {
    sink: Sink,
    /// Set by the watchdog when the run's time is up ([`ExitHandler::unblocker`]): a write that
    /// waits for a reader that does not read then gives up at the watchdog's next kick.
    time_up: Arc<AtomicBool>,
    line: Vec<u8>,
    /// Each complete line, with when its end arrived (the run result times tests by them).
    lines: VecDeque<(Instant, String)>,
    dropped_lines: u64,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Quiet,
    File(File, std::path::PathBuf),
}

impl Sink {
    /// Where the console goes, for an error that says it could not.
    fn to(&self) -> ConsoleTo {
        match self {
            Sink::File(_, path) => ConsoleTo::Log(path.clone()),
            Sink::Stdout | Sink::Quiet => ConsoleTo::Stdout,
        }
    }
}

impl Console {
    fn push_byte(&mut self, byte: u8) -> io::Result<()> {
        match byte {
            b'\n' => return self.end_line(),
            b'\r' => {}
            _ if self.line.len() < MAX_LINE => self.line.push(byte),
            _ => {}
        }
        Ok(())
    }

    /// Keeps the line, then echoes it (a failing echo still leaves it in the run result).
    fn end_line(&mut self) -> io::Result<()> {
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
            self.dropped_lines += 1;
        }
        let mut bytes = text.clone().into_bytes();
        bytes.push(b'\n');
        let echoed = match &mut self.sink {
            Sink::Stdout => write_unless_time_up(&mut io::stdout().lock(), &bytes, &self.time_up),
            Sink::File(f, _) => write_unless_time_up(f, &bytes, &self.time_up),
            Sink::Quiet => Ok(()),
        };
        self.lines.push_back((Instant::now(), text));
        echoed
    }
}

/// `write_all`, except that a write the watchdog's kick interrupted (a pipe or FIFO whose
/// reader stopped reading: a full pipe blocks the vCPU thread in `write`) ends with an error
/// once the run's time is up, instead of waiting on past `--timeout` (`write_all` retries an
/// interrupted write for ever). The kick comes every 50 ms after the deadline, and its handler
/// does not restart the call (no `SA_RESTART`).
fn write_unless_time_up(to: &mut impl Write, mut bytes: &[u8], time_up: &AtomicBool) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if time_up.load(Ordering::Acquire) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the run's time limit passed while its reader took nothing",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Write for Console {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        for &byte in bytes {
            self.push_byte(byte)?;
        }
        Ok(bytes.len())
    }

    /// Lines are written whole as they end; nothing waits here.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Serial {
    /// A UART writing to `sink`, and the paravirtual port when `pv_offered`.
    pub fn new(sink: &SerialSink, pv_offered: bool) -> Result<Self> {
        let sink = match sink {
            SerialSink::Stdout => Sink::Stdout,
            SerialSink::Quiet => Sink::Quiet,
            SerialSink::File(path) => Sink::File(
                crate::files::open_output(path, crate::files::OutputMode::Append)
                    .map_err(|source| Error::SerialLog { path: path.clone(), source })?,
                path.clone(),
            ),
        };
        let time_up = Arc::new(AtomicBool::new(false));
        let console = Console { sink, time_up, line: Vec::new(), lines: VecDeque::new(), dropped_lines: 0 };
        let uart = vm_superio::Serial::new(NoInterrupt, console);
        Ok(Self { uart, pv_offered, pv_records: 0, pv_bytes: 0, pv_bad_width: 0 })
    }

    /// An `out` to `port`: `Ok(false)` when the port is neither the UART's nor the paravirtual
    /// console's (or that one is not offered). Also used by the benchmark's bare loop.
    pub fn out(&mut self, mem: &GuestMemoryMmap, port: u16, data: &[u8]) -> Result<bool> {
        if port == CONSOLE && self.pv_offered {
            self.write_record(mem, data)?;
            return Ok(true);
        }
        self.write_port(port, data)
    }

    /// A record on the paravirtual port: `data` is the `out`'s value, the guest-physical address
    /// of a [`pvagent_abi::console::ConsoleRecord`]. Its bytes join the console's stream as if
    /// written to the UART. A record that is misaligned, claims more than
    /// [`MAX_RECORD_BYTES`] or does not lie in guest RAM stops the run.
    pub fn write_record(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<()> {
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            self.pv_bad_width += 1;
            return Ok(());
        };
        let gpa = u64::from(u32::from_le_bytes(word));
        if !gpa.is_multiple_of(RECORD_ALIGN) {
            return Err(Error::MisalignedConsoleRecord { gpa, align: RECORD_ALIGN });
        }
        let len: u32 = mem
            .read_obj(GuestAddress(gpa + RECORD_LEN_OFFSET))
            .map_err(|source| Error::ReadConsoleRecord { gpa, source })?;
        if len > MAX_RECORD_BYTES {
            return Err(Error::ConsoleRecordTooLong { gpa, len, max: MAX_RECORD_BYTES });
        }
        // A copy: the guest may change the record meanwhile (another vCPU), which garbles the
        // line and nothing else.
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(gpa + RECORD_BYTES_OFFSET))
            .map_err(|source| Error::ReadConsoleRecord { gpa, source })?;
        self.pv_records += 1;
        self.pv_bytes += u64::from(len);
        let console = self.uart.writer_mut();
        for byte in bytes {
            console.push_byte(byte).map_err(|source| Error::ConsoleOutput { to: console.sink.to(), source })?;
        }
        Ok(())
    }

    /// The register `port` names, when it is one of the UART's.
    fn register(port: u16) -> Option<u8> {
        port.checked_sub(COM1).filter(|r| *r < REGISTERS).map(|r| r as u8)
    }

    /// An `out` to `port`: `Ok(false)` when the port is not the UART's.
    pub fn write_port(&mut self, port: u16, data: &[u8]) -> Result<bool> {
        let Some(register) = Self::register(port) else {
            return Ok(false);
        };
        for &byte in data {
            self.uart.write(register, byte).map_err(|e| {
                let to = self.uart.writer_mut().sink.to();
                match e {
                    vm_superio::serial::Error::IOError(source) => Error::ConsoleOutput { to, source },
                    // The interrupt cannot fail (not wired), and a write never fills the receive
                    // FIFO; should vm-superio say otherwise, its message is kept.
                    other => Error::ConsoleOutput { to, source: io::Error::other(other.to_string()) },
                }
            })?;
        }
        Ok(true)
    }

    /// An `in` from `port`: `false` when the port is not the UART's.
    pub fn read_port(&mut self, port: u16, data: &mut [u8]) -> bool {
        let Some(register) = Self::register(port) else {
            return false;
        };
        for byte in data.iter_mut() {
            *byte = self.uart.read(register);
        }
        true
    }

    /// Completes a partial last line and hands over every line kept.
    pub fn take_lines(&mut self) -> Vec<String> {
        self.take_timed_lines().into_iter().map(|(_, line)| line).collect()
    }

    /// Completes a partial last line and hands over every line kept, each with when it ended.
    pub fn take_timed_lines(&mut self) -> Vec<(Instant, String)> {
        let console = self.uart.writer_mut();
        if !console.line.is_empty() {
            // The line is kept whatever its echo did; the run is over.
            let _ = console.end_line();
        }
        console.lines.drain(..).collect()
    }

    /// The last `n` lines (for error reports).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let console = self.uart.writer();
        let mut tail: Vec<String> = console.lines.iter().rev().take(n).rev().map(|(_, line)| line.clone()).collect();
        if !console.line.is_empty() {
            tail.push(String::from_utf8_lossy(&console.line).into_owned());
        }
        tail
    }
}

impl ExitHandler for Serial {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        Ok(if self.out(ctx.mem, port, data)? { Handled::Yes } else { Handled::No })
    }

    fn io_in(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Result<Handled> {
        Ok(if self.read_port(port, data) { Handled::Yes } else { Handled::No })
    }

    /// A console write blocked on a reader that does not read (a FIFO as `--serial-log`, a
    /// stalled pipe as stdout) gives up once the time is up.
    fn unblocker(&self) -> Option<crate::handler::Unblock> {
        let time_up = self.uart.writer().time_up.clone();
        Some(Box::new(move || time_up.store(true, Ordering::Release)))
    }

    fn finish(&mut self, report: &mut crate::handler::Report) -> Result<()> {
        let dropped = self.uart.writer().dropped_lines;
        if dropped > 0 {
            report.counter(self.name(), "dropped_lines", dropped);
        }
        report.counter(self.name(), "pv_records", self.pv_records);
        report.counter(self.name(), "pv_bytes", self.pv_bytes);
        if self.pv_bad_width > 0 {
            report.counter(self.name(), "pv_bad_width", self.pv_bad_width);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(serial: &mut Serial, register: u16, bytes: &[u8]) {
        for &b in bytes {
            assert!(serial.write_port(COM1 + register, &[b]).unwrap());
        }
    }

    fn read(serial: &mut Serial, register: u16) -> u8 {
        let mut data = [0u8];
        assert!(serial.read_port(COM1 + register, &mut data));
        data[0]
    }

    #[test]
    fn the_line_status_the_guest_polls_always_says_ready_to_transmit() {
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        assert_eq!(read(&mut serial, 5) & 0x20, 0x20, "THR empty");
        out(&mut serial, 0, b"x");
        assert_eq!(read(&mut serial, 5) & 0x60, 0x60, "THR empty and transmitter idle after a byte");
    }

    #[test]
    fn transmitted_bytes_become_lines_without_carriage_returns() {
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        out(&mut serial, 0, b"boot: one\r\nselftest: PASS a\r\npartial");
        assert_eq!(serial.tail(1), ["selftest: PASS a", "partial"], "the last line, and the one in progress");
        assert_eq!(serial.take_lines(), ["boot: one", "selftest: PASS a", "partial"]);
    }

    #[test]
    fn the_guest_init_sequence_sends_nothing_and_keeps_its_settings() {
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        // What the guest's `arch::serial::init` writes: IER 0, DLAB on, divisor 1, 8N1, FIFOs, DTR|RTS.
        out(&mut serial, 1, &[0x00]);
        out(&mut serial, 3, &[0x80]);
        out(&mut serial, 0, &[0x01]);
        out(&mut serial, 1, &[0x00]);
        out(&mut serial, 3, &[0x03]);
        out(&mut serial, 2, &[0xC7]);
        out(&mut serial, 4, &[0x03]);
        assert_eq!(read(&mut serial, 3), 0x03, "LCR");
        out(&mut serial, 7, &[0x5A]);
        assert_eq!(read(&mut serial, 7), 0x5A, "scratch");
        assert!(serial.take_lines().is_empty(), "the divisor byte was not transmitted");
    }

    /// Guest RAM with a console record of `bytes` at `gpa` (its `len` field says `len`).
    fn ram_with_record(gpa: u64, len: u32, bytes: &[u8]) -> GuestMemoryMmap {
        let mem = crate::memory::allocate_ram(1 << 20).unwrap();
        mem.write_obj(len, GuestAddress(gpa + RECORD_LEN_OFFSET)).unwrap();
        mem.write_slice(bytes, GuestAddress(gpa + RECORD_BYTES_OFFSET)).unwrap();
        mem
    }

    fn gpa_word(gpa: u64) -> [u8; 4] {
        (gpa as u32).to_le_bytes()
    }

    #[test]
    fn a_console_record_joins_the_uarts_stream_in_one_exit() {
        let text = b"tial line\nselftest: PASS a\n";
        let mem = ram_with_record(0x1000, text.len() as u32, text);
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        out(&mut serial, 0, b"par");
        assert!(serial.out(&mem, CONSOLE, &gpa_word(0x1000)).unwrap());
        assert_eq!(serial.take_lines(), ["partial line", "selftest: PASS a"]);
        assert_eq!((serial.pv_records, serial.pv_bytes), (1, text.len() as u64));
    }

    #[test]
    fn a_record_reads_only_len_bytes() {
        let mem = ram_with_record(0x2000, 3, b"abcdef\n");
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        serial.out(&mem, CONSOLE, &gpa_word(0x2000)).unwrap();
        assert_eq!(serial.take_lines(), ["abc"], "the partial line is completed at the end");
    }

    #[test]
    fn a_broken_record_stops_the_run_with_what_was_wrong() {
        let mem = ram_with_record(0x1000, MAX_RECORD_BYTES + 1, b"x");
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        let too_long = serial.out(&mem, CONSOLE, &gpa_word(0x1000)).unwrap_err();
        assert!(
            matches!(too_long, Error::ConsoleRecordTooLong { gpa: 0x1000, len, .. } if len == MAX_RECORD_BYTES + 1)
        );
        let misaligned = serial.out(&mem, CONSOLE, &gpa_word(0x1002)).unwrap_err();
        assert!(matches!(misaligned, Error::MisalignedConsoleRecord { gpa: 0x1002, .. }), "{misaligned}");
        // The header in RAM, its bytes beyond it.
        let edge = (1 << 20) - 8;
        let mem = ram_with_record(edge, 64, b"");
        let beyond = serial.out(&mem, CONSOLE, &gpa_word(edge)).unwrap_err();
        assert!(matches!(beyond, Error::ReadConsoleRecord { .. }), "{beyond}");
        assert!(matches!(serial.out(&mem, CONSOLE, &gpa_word(4 << 20)), Err(Error::ReadConsoleRecord { .. })));
        assert!(serial.take_lines().is_empty());
    }

    #[test]
    fn the_console_port_is_served_only_when_offered_and_only_32_bits_wide() {
        let mem = ram_with_record(0x1000, 2, b"x\n");
        let mut not_offered = Serial::new(&SerialSink::Quiet, false).unwrap();
        assert!(!not_offered.out(&mem, CONSOLE, &gpa_word(0x1000)).unwrap(), "unclaimed");
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        assert!(serial.out(&mem, CONSOLE, &[0x00, 0x10]).unwrap(), "a 16-bit out is the port's, ignored");
        assert_eq!((serial.pv_bad_width, serial.pv_records), (1, 0));
        assert!(serial.take_lines().is_empty());
    }

    #[test]
    fn other_ports_are_not_the_uarts() {
        let mut serial = Serial::new(&SerialSink::Quiet, true).unwrap();
        assert!(!serial.write_port(COM1 + 8, b"x").unwrap());
        assert!(!serial.write_port(COM1 - 1, b"x").unwrap());
        assert!(!serial.read_port(0x51F, &mut [0u8; 4]));
    }

    #[test]
    fn a_console_log_that_cannot_be_written_is_an_error_and_the_line_is_kept() {
        let path = std::env::temp_dir().join(format!("pvagent-serial-{}.log", std::process::id()));
        let mut serial = Serial::new(&SerialSink::File(path.clone()), true).unwrap();
        // Swap the log for a read-only handle: the next line's echo fails.
        serial.uart.writer_mut().sink = Sink::File(File::open(&path).unwrap(), path.clone());
        let err = serial.write_port(COM1, b"\n").unwrap_err();
        assert!(matches!(&err, Error::ConsoleOutput { to: ConsoleTo::Log(p), .. } if *p == path), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot write the guest's console to the serial log {}: ", path.display())),
            "{err}"
        );
        assert_eq!(serial.take_lines(), [""]);
        let _ = std::fs::remove_file(path);
    }
}
