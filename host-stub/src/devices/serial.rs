//! COM1, the guest's console: rust-vmm's `vm-superio` 16550 (registers, divisor latch, line
//! status, scratch) on port `COM1`, with its transmitted bytes going to the host's console: split
//! into lines, echoed or logged as configured, and kept for the run result.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;

use pvagent_abi::port::COM1;
use vm_superio::serial::NoEvents;

use crate::config::SerialSink;
use crate::error::{Error, Result};
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

/// The console UART.
#[derive(Debug)]
pub struct Serial {
    uart: vm_superio::Serial<NoInterrupt, NoEvents, Console>,
}

/// Where the UART's output goes: complete lines to the sink and into the run result.
#[derive(Debug)]
struct Console {
    sink: Sink,
    line: Vec<u8>,
    /// Each complete line, with when its end arrived (the run result times tests by them).
    lines: VecDeque<(Instant, String)>,
    dropped_lines: u64,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Quiet,
    File(File),
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
        let echoed = match &mut self.sink {
            Sink::Stdout => writeln!(io::stdout(), "{text}"),
            Sink::File(f) => writeln!(f, "{text}"),
            Sink::Quiet => Ok(()),
        };
        self.lines.push_back((Instant::now(), text));
        echoed
    }
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
    /// A UART writing to `sink`.
    pub fn new(sink: &SerialSink) -> Result<Self> {
        let sink = match sink {
            SerialSink::Stdout => Sink::Stdout,
            SerialSink::Quiet => Sink::Quiet,
            SerialSink::File(path) => Sink::File(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::SerialLog { path: path.clone(), source })?,
            ),
        };
        let console = Console { sink, line: Vec::new(), lines: VecDeque::new(), dropped_lines: 0 };
        Ok(Self { uart: vm_superio::Serial::new(NoInterrupt, console) })
    }

    /// The register `port` names, when it is one of the UART's.
    fn register(port: u16) -> Option<u8> {
        port.checked_sub(COM1).filter(|r| *r < REGISTERS).map(|r| r as u8)
    }

    /// An `out` to `port`: `Ok(false)` when the port is not the UART's. Also used by the
    /// benchmark's bare loop, which has no handlers.
    pub fn write_port(&mut self, port: u16, data: &[u8]) -> Result<bool> {
        let Some(register) = Self::register(port) else {
            return Ok(false);
        };
        for &byte in data {
            self.uart.write(register, byte).map_err(|e| match e {
                vm_superio::serial::Error::IOError(source) => Error::ConsoleOutput(source),
                // The interrupt cannot fail (not wired), and a write never fills the receive
                // FIFO; should vm-superio say otherwise, its message is kept.
                other => Error::ConsoleOutput(io::Error::other(other.to_string())),
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

    fn io_out(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        Ok(if self.write_port(port, data)? { Handled::Yes } else { Handled::No })
    }

    fn io_in(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Result<Handled> {
        Ok(if self.read_port(port, data) { Handled::Yes } else { Handled::No })
    }

    fn finish(&mut self, report: &mut crate::handler::Report) -> Result<()> {
        let dropped = self.uart.writer().dropped_lines;
        if dropped > 0 {
            report.counter(self.name(), "dropped_lines", dropped);
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
        let mut serial = Serial::new(&SerialSink::Quiet).unwrap();
        assert_eq!(read(&mut serial, 5) & 0x20, 0x20, "THR empty");
        out(&mut serial, 0, b"x");
        assert_eq!(read(&mut serial, 5) & 0x60, 0x60, "THR empty and transmitter idle after a byte");
    }

    #[test]
    fn transmitted_bytes_become_lines_without_carriage_returns() {
        let mut serial = Serial::new(&SerialSink::Quiet).unwrap();
        out(&mut serial, 0, b"boot: one\r\nselftest: PASS a\r\npartial");
        assert_eq!(serial.tail(1), ["selftest: PASS a", "partial"], "the last line, and the one in progress");
        assert_eq!(serial.take_lines(), ["boot: one", "selftest: PASS a", "partial"]);
    }

    #[test]
    fn the_guest_init_sequence_sends_nothing_and_keeps_its_settings() {
        let mut serial = Serial::new(&SerialSink::Quiet).unwrap();
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

    #[test]
    fn other_ports_are_not_the_uarts() {
        let mut serial = Serial::new(&SerialSink::Quiet).unwrap();
        assert!(!serial.write_port(COM1 + 8, b"x").unwrap());
        assert!(!serial.write_port(COM1 - 1, b"x").unwrap());
        assert!(!serial.read_port(0x51F, &mut [0u8; 4]));
    }

    #[test]
    fn a_console_log_that_cannot_be_written_is_an_error_and_the_line_is_kept() {
        let path = std::env::temp_dir().join(format!("pvagent-serial-{}.log", std::process::id()));
        let mut serial = Serial::new(&SerialSink::File(path.clone())).unwrap();
        // Swap the log for a read-only handle: the next line's echo fails.
        serial.uart.writer_mut().sink = Sink::File(File::open(&path).unwrap());
        let err = serial.write_port(COM1, b"\n").unwrap_err();
        assert!(matches!(err, Error::ConsoleOutput(_)), "{err}");
        assert_eq!(serial.take_lines(), [""]);
        let _ = std::fs::remove_file(path);
    }
}
