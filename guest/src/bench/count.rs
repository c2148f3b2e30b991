//! Counting windows: what KVM counted while a benchmark ran, read from the host stub's counting
//! port (`pvagent_abi::port::BENCH_COUNT`). KVM counts every guest instruction it emulates (on
//! the PVM `/dev/kvm` of these machines, every instruction of the guest kernel) and every exit,
//! so a window says what a path costs as a count, which unlike its time does not depend on the
//! machine or its load.
//!
//! KVM counts a `rep` string instruction once per 1,024 iterations, though its emulator runs
//! every iteration at about an instruction's cost; a window also says how many iterations the
//! kernel's string functions ran in it (this vCPU's count, `percpu::string_iterations`, read
//! before the opening exit and after the closing one).
//!
//! Counts are exact only if nothing else runs in the window: the timer tick is held back around
//! every window ([`TickHeld`]), and each benchmark takes the window's own cost out by counting
//! the same code without the events it is about (an empty loop, a run over present pages).
//! Opening, closing and reading a window are exits outside it.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::port::{BENCH_COUNT, BenchCount, COUNT_UNAVAILABLE};
use pvagent_guest::arch::percpu::{self, CpuLocal, MAX_CPUS};
use pvagent_guest::arch::{apic, time};
use x86_64::instructions::port::Port;

use crate::runner::{BenchError, Result};

/// What KVM counted in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Guest instructions KVM emulated.
    pub insns: u64,
    /// Exits the guest caused: those that reached the host stub, and its HLTs.
    pub exits: u64,
    /// Exits as KVM counted them: also what the host did to the vCPU's thread (reported only:
    /// it depends on the machine's load).
    pub kvm_exits: u64,
    /// Iterations of string instructions the kernel ran (counted by the guest itself).
    pub string_iters: u64,
}

impl Counts {
    /// What `self` counted beyond `base` (the same code without what is measured); an error
    /// where `base` counted more of an exact figure, which only a broken baseline can do. KVM's
    /// exit count is not exact (it also counts what the host did to the vCPU's thread, which
    /// depends on the machine's load), so a baseline window can count more of it than the
    /// measured one on a busy machine: that difference reads 0, never an error.
    pub fn less(self, base: Counts) -> Result<Counts> {
        let less = |a: u64, b: u64, what| a.checked_sub(b).ok_or(BenchError(what));
        Ok(Counts {
            insns: less(self.insns, base.insns, "an instruction count is below its baseline's")?,
            exits: less(self.exits, base.exits, "an exit count is below its baseline's")?,
            kvm_exits: self.kvm_exits.saturating_sub(base.kvm_exits),
            string_iters: less(
                self.string_iters,
                base.string_iters,
                "a string iteration count is below its baseline's",
            )?,
        })
    }
}

/// A sample line's count fields, `PREFIXinsns=N PREFIXexits=N PREFIXkvm_exits=N
/// PREFIXstring_iters=N` (each with a leading space), or nothing where the host does not count:
/// the line then simply lacks them.
#[derive(Clone, Copy, Debug)]
pub struct Fields(pub &'static str, pub Option<Counts>);

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(c) => write!(
                f,
                " {0}insns={1} {0}exits={2} {0}kvm_exits={3} {0}string_iters={4}",
                self.0, c.insns, c.exits, c.kvm_exits, c.string_iters
            ),
            None => Ok(()),
        }
    }
}

/// This vCPU's string iterations when its window opened.
static OPENED_ITERS: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// What its last closed window counted of them.
static CLOSED_ITERS: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

fn write(what: BenchCount) {
    // SAFETY: the host's counting port has no effect on guest memory.
    unsafe { Port::<u32>::new(BENCH_COUNT).write(what as u32) }
}

/// Opens this vCPU's window: the host takes a snapshot of its statistics at this exit.
pub fn open() {
    OPENED_ITERS.get().store(percpu::string_iterations(), Ordering::Relaxed);
    write(BenchCount::Open);
}

/// Closes the window: its figures are the statistics at this exit less those at the opening.
pub fn close() {
    write(BenchCount::Close);
    let iters = percpu::string_iterations().wrapping_sub(OPENED_ITERS.get().load(Ordering::Relaxed));
    CLOSED_ITERS.get().store(iters, Ordering::Relaxed);
}

fn read_one(which: BenchCount) -> Option<u64> {
    write(which);
    // SAFETY: as in `write`.
    let value = unsafe { Port::<u32>::new(BENCH_COUNT).read() };
    (value != COUNT_UNAVAILABLE).then_some(u64::from(value))
}

/// The last closed window's figures; `None` where the host does not count.
pub fn read() -> Option<Counts> {
    Some(Counts {
        insns: read_one(BenchCount::ReadInstructions)?,
        exits: read_one(BenchCount::ReadExits)?,
        kvm_exits: read_one(BenchCount::ReadKvmExits)?,
        string_iters: CLOSED_ITERS.get().load(Ordering::Relaxed),
    })
}

/// How long this vCPU was halted in the last closed window, in nanoseconds, as KVM measured it
/// (the workload's idle time: the kernel keeps none of its own); `None` where the host does not
/// measure it.
pub fn read_halted_ns() -> Option<u64> {
    read_one(BenchCount::ReadHaltedMicros).map(|us| us * 1000)
}

/// Holds the timer tick back while it lives, so that no tick lands in a window: the task
/// priority is raised to the tick's priority class, which the tick stays pending below (one
/// tick at most, taken when the guard goes). Every event the benchmarks measure has a vector of
/// a higher class (page-not-present `0x5x`, the benchmark interrupt `0x60`), so they still
/// arrive, and the host stub still finds them deliverable.
#[derive(Debug)]
pub struct TickHeld {
    previous: u32,
}

impl TickHeld {
    pub fn new() -> Self {
        let previous = apic::tpr();
        apic::set_tpr(u32::from(time::TIMER_VECTOR & 0xF0));
        Self { previous }
    }
}

impl Drop for TickHeld {
    fn drop(&mut self) {
        apic::set_tpr(self.previous);
    }
}
