//! The bare loop: `KVM_RUN` and a match, nothing else, in the same process and on the same VM
//! and vCPU as the host stub's run loop. The baseline benchmark hands stretches of its exits to
//! it (`BenchLoop::Bare` on the null port), so that the host stub's loop is compared with the
//! least a `kvm-ioctls` VMM can do, within milliseconds of each other.

use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use pvagent_abi::port::{BENCH_NULL, BenchLoop, DEBUG_EXIT};
use vm_memory::GuestMemoryMmap;

use crate::devices::serial::Serial;
use crate::error::{Error, Result};
use crate::handler::{fill_in, out_word};
use crate::watchdog::Watchdog;

/// Exits and time spent in bare loops over a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct BareStats {
    pub exits: u64,
    pub time: Duration,
}

/// Why a bare loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareEnd {
    /// The guest wrote this code to the debug-exit port.
    GuestExit(u32),
    /// The guest asked for the host stub's loop again ([`BenchLoop::Stub`]).
    SwitchedBack,
}

/// Runs `vcpu` in the bare loop until the guest switches back or exits. The console still
/// works (its bytes, the UART's and the paravirtual port's, go to the console device), an `in` from the null port says
/// [`BenchLoop::Bare`], MSR accesses are refused, every other access is ignored (reads are 0,
/// MMIO reads all-ones).
pub fn run(
    vcpu: &mut VcpuFd,
    mem: &GuestMemoryMmap,
    serial: &mut Serial,
    watchdog: &Watchdog,
    stats: &mut BareStats,
) -> Result<BareEnd> {
    let start = Instant::now();
    let end = loop {
        stats.exits += 1;
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == DEBUG_EXIT => break BareEnd::GuestExit(out_word(data)),
            Ok(VcpuExit::IoOut(port, data)) if port == BENCH_NULL && out_word(data) == BenchLoop::Stub as u32 => {
                break BareEnd::SwitchedBack;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                serial.out(mem, port, data)?;
            }
            Ok(VcpuExit::IoIn(port, data)) if port == BENCH_NULL => fill_in(data, BenchLoop::Bare as u32),
            Ok(VcpuExit::IoIn(port, data)) => {
                if !serial.read_port(port, data) {
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xFF),
            Ok(VcpuExit::X86Rdmsr(msr)) => *msr.error = 1,
            Ok(VcpuExit::X86Wrmsr(msr)) => *msr.error = 1,
            Ok(VcpuExit::Intr) => watchdog.check()?,
            Ok(other) => return Err(Error::UnexpectedExit { exit: format!("{other:?}"), rip: 0 }),
            Err(e) if e.errno() == libc::EINTR => watchdog.check()?,
            Err(e) => return Err(Error::Run(e)),
        }
    };
    stats.time += start.elapsed();
    Ok(end)
}
