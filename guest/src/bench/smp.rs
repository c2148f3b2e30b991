//! The workload over every online vCPU (`bench=smp`): the ring-mode workload's CPL 3 tasks
//! spread evenly over the vCPUs, each vCPU taking its own tasks' page-not-present events on its
//! own ring; what the run measures is compared across runs with 1, 2 and 4 vCPUs by the host.
//!
//! Only kernel tasks can be placed on a chosen vCPU (`task::remote::spawn_kernel_on`); a user
//! task runs where it is spawned and does not migrate. So one kernel task is placed on each
//! vCPU and spawns that vCPU's share of the CPL 3 tasks there, joins them, and reports.

use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::pnp::HostMode;
use pvagent_guest::arch::percpu::{self, MAX_CPUS};
use pvagent_guest::arch::smp;
use pvagent_guest::kprintln;
use pvagent_guest::pv::pnp;
use pvagent_guest::task::remote::{self, RemoteTask};

use crate::calibrate;
use crate::count::{self, TickHeld};
use crate::pager::{region, set_latency, set_mode};
use crate::user::SLOTS;
use crate::workload::{self, Arrival, Pages};
use crate::{BenchError, Result, Settings};

/// What one vCPU's part of a run reports back to the runner.
struct Part {
    /// Page-not-present events this vCPU took in its part.
    events: AtomicU64,
    /// What KVM emulated on this vCPU in its part's window; [`UNCOUNTED`] where it does not count.
    insns: AtomicU64,
}

const UNCOUNTED: u64 = u64::MAX;
/// A part's return value when it failed (its reason is printed on its vCPU).
const PART_FAILED: u64 = 1;

static PARTS: [Part; MAX_CPUS] =
    [const { Part { events: AtomicU64::new(0), insns: AtomicU64::new(UNCOUNTED) } }; MAX_CPUS];

/// A part's settings, packed into the placed task's argument: first slot (8 bits), tasks (8),
/// pages per task (8), whether the pages are evicted (1), compute iterations (the rest).
fn pack(first: u64, tasks: u64, pages: u64, pages_before: Pages, iterations: u64) -> u64 {
    first | tasks << 8 | pages << 16 | u64::from(pages_before == Pages::Evicted) << 24 | iterations << 25
}

/// One vCPU's part, a kernel task placed on it: its tasks in a counting window on this vCPU,
/// with the tick held back, and the events this vCPU took meanwhile.
fn part(arg: u64) -> u64 {
    let (first, tasks, pages, iterations) = (arg & 0xFF, arg >> 8 & 0xFF, arg >> 16 & 0xFF, arg >> 25);
    let result = region().and_then(|region| {
        let before = pnp::stats().events;
        let tick = TickHeld::new();
        count::open();
        let ran = workload::spawn_and_join(&region, first, tasks, pages, iterations, Arrival::OnItsOwn);
        count::close();
        let insns = count::read().map_or(UNCOUNTED, |c| c.insns);
        drop(tick);
        ran?;
        let me = &PARTS[percpu::index()];
        me.events.store(pnp::stats().events - before, Ordering::Relaxed);
        me.insns.store(insns, Ordering::Relaxed);
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(BenchError(why)) => {
            kprintln!("bench-error: smp: vCPU {}: {why}", percpu::index());
            PART_FAILED
        }
    }
}

/// The online vCPUs' indexes (they need not be contiguous: an AP may have failed to start).
fn online() -> heapless::Vec<usize, MAX_CPUS> {
    (0..MAX_CPUS).filter(|&cpu| smp::is_online(cpu)).collect()
}

/// What one run over every online vCPU measured.
struct Measured {
    wall_ns: u64,
    /// The compute segments' time, summed over the tasks.
    compute_ns: u64,
    events: u64,
    min_vcpu_events: u64,
    insns: Option<u64>,
}

/// `tasks` tasks of `pages` pages each, spread evenly over the online vCPUs (task `t` on the
/// `t % n`-th), run at once; the runner waits for every part.
fn run_over_vcpus(tasks: u64, pages: u64, iterations: u64, pages_before: Pages) -> Result<Measured> {
    let cpus = online();
    let n = cpus.len() as u64;
    if pages_before == Pages::Evicted {
        let region = region()?;
        pnp::evict(region.base, tasks * pages).map_err(|_| BenchError("evict failed"))?;
    }
    let mut placed: heapless::Vec<RemoteTask, MAX_CPUS> = heapless::Vec::new();
    let mut first = 0;
    for (i, &cpu) in cpus.iter().enumerate() {
        let share = tasks / n + u64::from((i as u64) < tasks % n);
        PARTS[cpu].events.store(0, Ordering::Relaxed);
        PARTS[cpu].insns.store(UNCOUNTED, Ordering::Relaxed);
        let arg = pack(first, share, pages, pages_before, iterations);
        let task = remote::spawn_kernel_on(cpu, "bench-smp", part, arg)
            .map_err(|_| BenchError("cannot place a part on a vCPU"))?;
        let _ = placed.push(task);
        first += share;
    }
    let mut failed = false;
    for task in placed {
        failed |= task.join().map_or(true, |v| v == PART_FAILED);
    }
    if failed {
        return Err(BenchError("a vCPU's part failed"));
    }
    let window = workload::slots_window(0, tasks)?;
    let events = cpus.iter().map(|&c| PARTS[c].events.load(Ordering::Relaxed)).sum();
    let min_vcpu_events = cpus.iter().map(|&c| PARTS[c].events.load(Ordering::Relaxed)).min().unwrap_or(0);
    let insns = cpus
        .iter()
        .map(|&c| PARTS[c].insns.load(Ordering::Relaxed))
        .try_fold(0u64, |sum, i| (i != UNCOUNTED).then(|| sum + i));
    Ok(Measured { wall_ns: window.wall_ns, compute_ns: window.compute_ns, events, min_vcpu_events, insns })
}

/// The ring-mode workload over every online vCPU: T tasks x M pages, compute C before each
/// page, latency L. Each sample also runs the same tasks over the pages they left present, so
/// that the instructions per event are the run's, summed over the vCPUs, less that run's, over
/// the events. Every vCPU must take events of its own (the path this measures); a run where one
/// took none is an error.
pub fn smp(s: Settings) -> Result<()> {
    region()?;
    let vcpus = online().len() as u64;
    let tasks: u64 = if s.quick { 4 } else { 8 };
    let pages = 4;
    let latencies: &[u64] = if s.quick { &[1_000_000] } else { &[0, 1_000_000] };
    // Ten times the workload benchmark's compute per page: the compute runs natively at CPL 3
    // and is what more vCPUs can share out; at 100 us the emulated kernel's work per event
    // (about as long again here) would dwarf it.
    let compute_ns = 1_000_000;
    let iterations = calibrate::spin_iterations(compute_ns, calibrate::spin_cycles_per_1024()?);
    if tasks as usize > SLOTS || iterations >> 39 != 0 {
        return Err(BenchError("the smp workload does not fit its slots or its argument"));
    }
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ring)?;
    // Not measured: the first use of task slots maps their stacks, on every vCPU.
    run_over_vcpus(tasks, pages, 0, Pages::Evicted)?;
    let reps = if s.quick { 1 } else { s.reps.min(3) };
    for &latency in latencies {
        set_latency(latency)?;
        for rep in 0..reps {
            let absent = run_over_vcpus(tasks, pages, iterations, Pages::Evicted)?;
            let present = run_over_vcpus(tasks, pages, iterations, Pages::AsTheyAre)?;
            if absent.min_vcpu_events == 0 {
                return Err(BenchError("the path was not taken: a vCPU took no page-not-present event"));
            }
            let per_event = absent.insns.zip(present.insns).map(|(a, p)| a.saturating_sub(p) / absent.events.max(1));
            kprintln!(
                "bench: smp rep={rep} vcpus={vcpus} tasks={tasks} pages={pages} compute_ns={compute_ns} latency_ns={latency} wall_ns={} compute_measured_ns={} events={} min_vcpu_events={}{}",
                absent.wall_ns,
                absent.compute_ns / (tasks * pages),
                absent.events,
                absent.min_vcpu_events,
                OptionalInsns(per_event)
            );
        }
    }
    set_mode(boot_mode)
}

/// ` insns_per_event=N`, or nothing where the host does not count.
struct OptionalInsns(Option<u64>);

impl core::fmt::Display for OptionalInsns {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(n) => write!(f, " insns_per_event={n}"),
            None => Ok(()),
        }
    }
}
