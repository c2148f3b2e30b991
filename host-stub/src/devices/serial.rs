//! COM1 as far as the guest uses it: transmit, line status, and the line settings it writes.
//! Output is split into lines, echoed or logged as configured, and kept for the run result.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;

use pvagent_abi::port::COM1;

use crate::config::SerialSink;
use crate::error::{Error, Result};
use crate::handler::{ExitHandler, Handled, VcpuCtx};

/// Line status: transmitter holding register empty and transmitter empty.
const LSR_IDLE: u8 = 0x60;
/// Line control: divisor latch access.
const LCR_DLAB: u8 = 0x80;
/// Interrupt identification: no interrupt pending.
const IIR_NONE: u8 = 0x01;
/// Lines kept in memory for the run result.
const MAX_LINES: usize = 200_000;
/// Longest line kept whole.
const MAX_LINE: usize = 4096;

/// The console UART.
#[derive(Debug)]
pub struct Serial {
    sink: Sink,
    line: Vec<u8>,
    lines: VecDeque<String>,
    dropped_lines: u64,
    lcr: u8,
    scratch: u8,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Quiet,
    File(File),
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
        Ok(Self { sink, line: Vec::new(), lines: VecDeque::new(), dropped_lines: 0, lcr: 0x03, scratch: 0 })
    }

    /// A byte the guest transmitted (also used by the bare loop, which has no handlers).
    pub(crate) fn transmit(&mut self, byte: u8) {
        self.push_byte(byte);
    }

    fn push_byte(&mut self, byte: u8) {
        match byte {
            b'\n' => self.end_line(),
            b'\r' => {}
            _ if self.line.len() < MAX_LINE => self.line.push(byte),
            _ => {}
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        match &mut self.sink {
            Sink::Stdout => println!("{text}"),
            Sink::File(f) => {
                let _ = writeln!(f, "{text}");
            }
            Sink::Quiet => {}
        }
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
            self.dropped_lines += 1;
        }
        self.lines.push_back(text);
    }

    /// Completes a partial last line and hands over every line kept.
    pub fn take_lines(&mut self) -> Vec<String> {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.lines.drain(..).collect()
    }

    /// The last `n` lines (for error reports).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let mut tail: Vec<String> = self.lines.iter().rev().take(n).rev().cloned().collect();
        if !self.line.is_empty() {
            tail.push(String::from_utf8_lossy(&self.line).into_owned());
        }
        tail
    }
}

impl ExitHandler for Serial {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn io_out(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        let Some(reg) = port.checked_sub(COM1).filter(|r| *r < 8) else {
            return Ok(Handled::No);
        };
        for &byte in data {
            match reg {
                0 if self.lcr & LCR_DLAB == 0 => self.push_byte(byte),
                3 => self.lcr = byte,
                7 => self.scratch = byte,
                // Divisor, interrupt enable, FIFO control, modem control: accepted, no effect.
                _ => {}
            }
        }
        Ok(Handled::Yes)
    }

    fn io_in(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Result<Handled> {
        let Some(reg) = port.checked_sub(COM1).filter(|r| *r < 8) else {
            return Ok(Handled::No);
        };
        let value = match reg {
            2 => IIR_NONE,
            3 => self.lcr,
            5 => LSR_IDLE,
            7 => self.scratch,
            _ => 0,
        };
        data.fill(value);
        Ok(Handled::Yes)
    }

    fn finish(&mut self, report: &mut crate::handler::Report) -> Result<()> {
        if self.dropped_lines > 0 {
            report.counter(self.name(), "dropped_lines", self.dropped_lines);
        }
        Ok(())
    }
}
