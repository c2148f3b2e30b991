//! The baseline: one port-I/O exit to the host and back, through the host stub's null port, in
//! the host stub's run loop and in the bare `kvm-ioctls` loop it is compared with; and what a
//! console line costs.

use pvagent_abi::port::{BENCH_NULL, BenchLoop};
use pvagent_guest::kprintln;
use x86_64::instructions::port::Port;

use crate::calibrate::{counted_port_loop, cycles_to_ns, port_loop};
use crate::count::{self, Fields, TickHeld};
use crate::{BenchError, Result, Settings};
use pvagent_guest::arch::cpu;

/// Asks the host to handle the next exits in `which` loop, and says whether it now does.
fn select_loop(which: BenchLoop) -> bool {
    // SAFETY: the benchmark port has no effect on guest memory; a host without it ignores the
    // write and reads all-ones.
    unsafe {
        Port::<u32>::new(BENCH_NULL).write(which as u32);
        Port::<u32>::new(BENCH_NULL).read() == which as u32
    }
}

/// Like [`select_loop`], an error when the host did not switch.
fn switch_to(which: BenchLoop) -> Result<()> {
    if select_loop(which) { Ok(()) } else { Err(BenchError("the host did not switch loops")) }
}

/// Whether the host serves the benchmark ports: an `in` from the null port names the loop that
/// handles exits, where a host without the device reads all-ones.
pub fn host_has_bench_device() -> bool {
    // SAFETY: reading the benchmark port has no effect on guest memory.
    unsafe { Port::<u32>::new(BENCH_NULL).read() == BenchLoop::Stub as u32 }
}

/// The baseline round trip per exit, in ns, measured now (for figures that are multiples of it).
pub fn baseline_now(s: Settings) -> u64 {
    const OPS: u64 = 200;
    cycles_to_ns(port_loop(BENCH_NULL, 0, OPS, s.empty)) / OPS
}

/// The baseline: one port-I/O exit to the host and back, from a kernel loop (CPL 3 cannot do
/// port I/O on PVM), in the host stub's loop (`io`) and in its bare loop right before or after
/// (`io_bare`, alternating which comes first), so that the two are compared within
/// milliseconds. The host stub's samples also say what KVM counted for an `out` (`insns=`,
/// `exits=`, per loop).
pub fn io(s: Settings) -> Result<()> {
    let ops = if s.quick { 500 } else { 2000 };
    // Warm up both loops.
    port_loop(BENCH_NULL, 0, 100, s.empty);
    switch_to(BenchLoop::Bare)?;
    port_loop(BENCH_NULL, 0, 100, s.empty);
    switch_to(BenchLoop::Stub)?;
    for rep in 0..s.reps {
        let order = if rep % 2 == 0 { [BenchLoop::Stub, BenchLoop::Bare] } else { [BenchLoop::Bare, BenchLoop::Stub] };
        let mut ns = [0; 2];
        for (which, ns) in order.into_iter().zip(&mut ns) {
            switch_to(which)?;
            *ns = cycles_to_ns(port_loop(BENCH_NULL, 0, ops, s.empty));
            switch_to(BenchLoop::Stub)?;
        }
        // Counted in a loop of its own after the pair, so that the pair stays back to back (the
        // bare loop has no counting port).
        let counts = counted_port_loop(BENCH_NULL, 0, ops, s.empty)?.counts;
        for (which, ns) in order.into_iter().zip(ns) {
            match which {
                BenchLoop::Bare => kprintln!("bench: io_bare rep={rep} ops={ops} total_ns={ns}"),
                BenchLoop::Stub => kprintln!("bench: io rep={rep} ops={ops} total_ns={ns}{}", Fields("", counts)),
            }
        }
    }
    Ok(())
}

/// The console line [`console`] prints: 48 bytes with its newline.
const CONSOLE_LINE: &str = "console benchmark: 48 bytes with the newline...";

/// `lines` console lines in a counting window, with the tick held back: the time and the counts.
#[inline(never)]
fn print_lines(lines: u64) -> (u64, Option<count::Counts>) {
    let _tick = TickHeld::new();
    count::open();
    let start = cpu::rdtsc();
    for _ in 0..core::hint::black_box(lines) {
        kprintln!("{CONSOLE_LINE}");
    }
    let cycles = cpu::rdtsc().wrapping_sub(start);
    count::close();
    (cycles, count::read())
}

/// What a console line costs: `2 * lines` lines printed in a counting window, less the same
/// window with `lines` lines. The figure per line includes the instructions of one turn of the
/// loop around the print and nothing else (the window's own cost and the loop's entry and exit
/// are in both), so a quick run (4 lines) counts what a full one (16) does.
pub fn console(s: Settings) -> Result<()> {
    const _: () = assert!(CONSOLE_LINE.len() + 1 == 48);
    let lines = if s.quick { 4 } else { 16 };
    for rep in 0..s.reps {
        let (cycles, fewer) = print_lines(lines);
        let (_, more) = print_lines(2 * lines);
        let counts = more.zip(fewer).map(|(more, fewer)| more.less(fewer)).transpose()?;
        kprintln!(
            "bench: console rep={rep} ops={lines} bytes={} total_ns={}{}",
            lines * (CONSOLE_LINE.len() as u64 + 1),
            cycles_to_ns(cycles),
            Fields("", counts)
        );
    }
    Ok(())
}
