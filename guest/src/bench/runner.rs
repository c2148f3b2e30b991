//! The benchmark kernel's first task: reads the settings from the command line, measures what
//! every benchmark needs first (the empty loop), runs the benchmarks named, and ends the run
//! with the verdict.

use pvagent_guest::arch::time;
use pvagent_guest::boot::info;
use pvagent_guest::kprintln;
use pvagent_guest::task::{self, table::ExitStatus, table::TaskId};

use crate::calibrate::EmptyLoop;

/// Names `bench=all` runs, in order.
pub const ALL: &[&str] = &["io", "console", "inject", "pnp", "workload", "scaling", "smp"];

/// Command line keys the benchmark kernel reads: `bench=NAME[,NAME...]`, `bench-quick` (fewer,
/// smaller measurements), `bench-reps=N` (repetitions, 1..=50, default 5).
pub const CMDLINE_KEYS: &[&str] = &["bench", "bench-quick", "bench-reps"];

/// Why a benchmark could not run.
#[derive(Debug)]
pub struct BenchError(pub &'static str);

pub type Result<T> = core::result::Result<T, BenchError>;

/// Benchmark settings from the command line, and what the run measured about itself first.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub quick: bool,
    pub reps: u64,
    pub empty: EmptyLoop,
}

pub fn join(id: TaskId) -> Result<ExitStatus> {
    task::join(id).map_err(|_| BenchError("join failed"))
}

/// A list of names, comma-separated when printed.
struct Joined(&'static [&'static str]);

impl core::fmt::Display for Joined {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// The first task: runs the benchmarks the command line names, then ends the run.
pub fn run(_: u64) -> u64 {
    let cmdline = &info::get().cmdline;
    let names = cmdline.get("bench").unwrap_or("all");
    let quick = cmdline.has("bench-quick");
    let reps = cmdline.get("bench-reps").and_then(|r| r.parse().ok()).unwrap_or(5).clamp(1, 50);
    kprintln!("bench: start tsc_khz={} quick={}", time::tsc_khz(), u8::from(quick));
    if !crate::io::host_has_bench_device() {
        kprintln!("bench-error: all: the host serves no benchmark ports (the host stub's --bench)");
        exit(true)
    }
    let settings = Settings { quick, reps, empty: EmptyLoop::measure() };
    let mut failed = false;
    for name in names.split(',').filter(|n| *n != "all" && !ALL.contains(n)) {
        kprintln!("bench-error: {name}: no such benchmark (known: {})", Joined(ALL));
        failed = true;
    }
    for name in ALL.iter().filter(|n| names == "all" || names.split(',').any(|x| x == **n)) {
        let result = match *name {
            "io" => crate::io::io(settings),
            "console" => crate::io::console(settings),
            "inject" => crate::inject::inject(settings),
            "pnp" => crate::pnp::roundtrip(settings),
            "workload" => crate::workload::workload(settings),
            "scaling" => crate::scaling::scaling(settings),
            _ => crate::smp::smp(settings),
        };
        if let Err(BenchError(why)) = result {
            kprintln!("bench-error: {name}: {why}");
            failed = true;
        }
    }
    pvagent_guest::console::report_dropped();
    kprintln!("bench: done");
    exit(failed)
}

fn exit(failed: bool) -> ! {
    pvagent_guest::arch::exit::exit(if failed { pvagent_abi::exit::FAILURE } else { pvagent_abi::exit::SUCCESS })
}
