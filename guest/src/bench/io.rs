//! The baseline: one port-I/O exit to the host and back, through the host stub's null port, in
//! the host stub's run loop and in the bare `kvm-ioctls` loop it is compared with.

use pvagent_abi::port::{BENCH_NULL, BenchLoop};
use pvagent_guest::kprintln;
use x86_64::instructions::port::Port;

use crate::calibrate::{cycles_to_ns, port_loop};
use crate::{BenchError, Result, Settings};

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
/// milliseconds.
pub fn io(s: Settings) -> Result<()> {
    let ops = if s.quick { 500 } else { 2000 };
    // Warm up both loops.
    port_loop(BENCH_NULL, 0, 100, s.empty);
    switch_to(BenchLoop::Bare)?;
    port_loop(BENCH_NULL, 0, 100, s.empty);
    switch_to(BenchLoop::Stub)?;
    for rep in 0..s.reps {
        let order = if rep % 2 == 0 { [BenchLoop::Stub, BenchLoop::Bare] } else { [BenchLoop::Bare, BenchLoop::Stub] };
        for which in order {
            switch_to(which)?;
            let cycles = port_loop(BENCH_NULL, 0, ops, s.empty);
            switch_to(BenchLoop::Stub)?;
            let name = if which == BenchLoop::Bare { "io_bare" } else { "io" };
            kprintln!("bench: {name} rep={rep} ops={ops} total_ns={}", cycles_to_ns(cycles));
        }
    }
    Ok(())
}
