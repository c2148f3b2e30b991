//! Runs of CPL 3 tasks over absent pages, timed from inside the tasks (`run`), which the
//! page-not-present round trips and the scaling benchmark also use; and the workload benchmark
//! itself: what asynchronous page-not-present buys.

use pvagent_abi::pnp::{HostCounter, HostMode, PageBehaviour};
use pvagent_guest::kprintln;
use pvagent_guest::pv::pnp;
use pvagent_guest::task::{self, table::ExitStatus, table::TaskId};

use crate::calibrate::{self, cycles_to_ns};
use crate::count::{self, Counts, TickHeld};
use crate::pager::{host_counter, region, set_latency, set_mode};
use crate::user::{self, EMPTY_SLOT, SLOTS, Slot};
use crate::{BenchError, Result, Settings};

/// What one workload run measured.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// From the first task's start to the last task's last access.
    pub wall_ns: u64,
    /// `wall_ns` less the time this vCPU was halted (KVM's measure of it, read through the
    /// counting window around the run).
    pub busy_ns: u64,
    /// The compute segments' time, summed over the tasks: what the ideal is made of, measured
    /// rather than taken from the calibration (which a busy host can skew either way).
    pub compute_ns: u64,
}

/// Whether a workload run's pages arrive on their own or all at once when every task waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Each page after the pager's latency (and resolution timing).
    OnItsOwn,
    /// Every page is held until each task has parked on its first one; then all are released.
    /// The runner yields instead of blocking meanwhile, so each task has another to switch to
    /// and parks: by construction, the last event finds `tasks - 1` tokens outstanding.
    WhenAllParked,
}

/// Runs `tasks` CPL 3 workload tasks over pages `[0, tasks * pages)` of the region (evicted
/// first), each doing `spin_iterations` of compute before each page.
pub fn run(region: &pnp::Region, tasks: u64, pages: u64, spin_iterations: u64, arrival: Arrival) -> Result<Window> {
    Ok(run_counted(region, tasks, pages, spin_iterations, arrival, Pages::Evicted, false)?.0)
}

/// Whether a run's pages are evicted before it starts, or left as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    Evicted,
    /// Left present by the run before: the same run with no page-not-present path in it.
    AsTheyAre,
}

/// [`run`], with its pages as `pages_before` says, and counted when `counted`: a counting
/// window (`count.rs`) from after the eviction to after the last task was joined, with the
/// tick held back, so that a run with absent pages less the same run over present pages is
/// what the page-not-present paths cost (`pnp.rs`). `None` where the host does not count.
pub fn run_counted(
    region: &pnp::Region,
    tasks: u64,
    pages: u64,
    spin_iterations: u64,
    arrival: Arrival,
    pages_before: Pages,
    counted: bool,
) -> Result<(Window, Option<Counts>)> {
    if tasks as usize > SLOTS {
        return Err(BenchError("more workload tasks than slots"));
    }
    if pages_before == Pages::Evicted {
        pnp::evict(region.base, tasks * pages).map_err(|_| BenchError("evict failed"))?;
    }
    if arrival == Arrival::WhenAllParked {
        // Before the window: holding the pages is the setting, not the path.
        for page in 0..tasks * pages {
            pnp::set_page_behaviour(region.page(page), PageBehaviour::Held)
                .map_err(|_| BenchError("cannot hold a page"))?;
        }
    }
    let tick = counted.then(TickHeld::new);
    // Always a window: KVM's time halted in it is the run's idle time. Its exits are outside
    // the wall time, which the tasks themselves take.
    count::open();
    let window = tasks_over_pages(region, tasks, pages, spin_iterations, arrival);
    count::close();
    let counts = if counted { count::read() } else { None };
    let halted_ns = count::read_halted_ns();
    drop(tick);
    let mut window = window?;
    // Idle time can only accrue while every task is parked, which is inside the window: before
    // it the tasks are starting, after it they are leaving, and neither waits. Where the host
    // does not measure it, every moment counts as busy.
    window.busy_ns = window.wall_ns.saturating_sub(halted_ns.unwrap_or(0));
    Ok((window, counts))
}

fn tasks_over_pages(
    region: &pnp::Region,
    tasks: u64,
    pages: u64,
    spin_iterations: u64,
    arrival: Arrival,
) -> Result<Window> {
    spawn_and_join(region, 0, tasks, pages, spin_iterations, arrival)?;
    slots_window(0, tasks)
}

/// Runs `tasks` CPL 3 workload tasks on the running vCPU, in slots `first..first + tasks`, each
/// over its `pages` pages of the region (slot `t`'s from page `t * pages`), and joins them.
pub fn spawn_and_join(
    region: &pnp::Region,
    first: u64,
    tasks: u64,
    pages: u64,
    spin_iterations: u64,
    arrival: Arrival,
) -> Result<()> {
    let mut ids: heapless::Vec<TaskId, SLOTS> = heapless::Vec::new();
    user::reset_gate(tasks);
    for t in first as usize..(first + tasks) as usize {
        let slot =
            Slot { base: region.page(t as u64 * pages), pages, spin_iterations, gate: user::gate_addr(), ..EMPTY_SLOT };
        user::set_slot(t, slot)?;
        let addr = user::slot_addr(t).ok_or(BenchError("no slot"))?;
        let id = task::spawn_user("bench-work", user::user_workload, addr).map_err(|_| BenchError("spawn failed"))?;
        ids.push(id).map_err(|_| BenchError("more workload tasks than slots"))?;
    }
    if arrival == Arrival::WhenAllParked {
        let parked = yield_until_parked(tasks as usize);
        // All at once, in one exit: the resolutions come as one burst.
        let released = pnp::release(region.page(first * pages), tasks * pages)
            .map_err(|_| BenchError("cannot release the held pages"))?;
        parked?;
        if released != tasks {
            return Err(BenchError("the park path was not taken: a held page was never touched"));
        }
    }
    for id in ids {
        if !matches!(crate::join(id)?, ExitStatus::Returned(_)) {
            return Err(BenchError("a workload task ended abnormally"));
        }
    }
    Ok(())
}

/// The timing slots `first..first + tasks` recorded: from the first task's start to the last
/// one's last access (TSC cycles, which KVM keeps in step across vCPUs), and their compute.
pub fn slots_window(first: u64, tasks: u64) -> Result<Window> {
    let (mut start, mut last, mut compute) = (u64::MAX, 0, 0);
    for t in first as usize..(first + tasks) as usize {
        let slot = user::get_slot(t)?;
        if slot.start_tsc == 0 || slot.end_tsc < slot.start_tsc {
            return Err(BenchError("a workload task did not record its timing"));
        }
        start = start.min(slot.start_tsc);
        last = last.max(slot.end_tsc);
        compute += slot.compute_tsc;
    }
    let wall = last.saturating_sub(start);
    Ok(Window { wall_ns: cycles_to_ns(wall), busy_ns: cycles_to_ns(wall), compute_ns: cycles_to_ns(compute) })
}

/// Yields until `tasks` tasks wait on tokens (see [`Arrival::WhenAllParked`]).
fn yield_until_parked(tasks: usize) -> Result<()> {
    for _ in 0..1000 {
        if pnp::pending().0 >= tasks {
            return Ok(());
        }
        task::yield_now();
    }
    Err(BenchError("the park path was not taken: the workload tasks did not all park on their held pages"))
}

/// What asynchronous page-not-present buys: K tasks x M pages, compute C before each page,
/// latency L, in sync mode, ring mode, and through KVM's async page fault ABI (`kvm_apf`, the
/// host stub serving it: the tasks run at CPL 3, where KVM delivers).
pub fn workload(s: Settings) -> Result<()> {
    let region = region()?;
    let (tasks_set, latencies): (&[u64], &[u64]) = if s.quick {
        (&[1, 8], &[0, 1_000_000])
    } else {
        (&[1, 2, 4, 8, 16], &[0, 50_000, 200_000, 1_000_000, 5_000_000])
    };
    let pages = if s.quick { 4 } else { 8 };
    let compute_ns = 100_000;
    let iterations = calibrate::spin_iterations(compute_ns, calibrate::spin_cycles_per_1024()?);
    let boot_mode = pnp::host_mode();
    let reps = if s.quick { 1 } else { s.reps.min(3) };
    for &latency in latencies {
        set_latency(latency)?;
        for &tasks in tasks_set {
            for (mode_name, mode) in [("sync", HostMode::Sync), ("ring", HostMode::Ring), ("kvm_apf", HostMode::KvmApf)]
            {
                set_mode(mode)?;
                for rep in 0..reps {
                    let events = host_counter(HostCounter::EventsDelivered)?;
                    let syncs = host_counter(HostCounter::SyncWaits)?;
                    let stalled = host_counter(HostCounter::SyncWaitNanos)?;
                    let window = run(&region, tasks, pages, iterations, Arrival::OnItsOwn)?;
                    kprintln!(
                        "bench: workload_{mode_name} rep={rep} tasks={tasks} pages={pages} compute_ns={compute_ns} latency_ns={latency} wall_ns={} busy_ns={} compute_measured_ns={} events={} sync_waits={} stalled_ns={}",
                        window.wall_ns,
                        window.busy_ns,
                        window.compute_ns / (tasks * pages).max(1),
                        host_counter(HostCounter::EventsDelivered)? - events,
                        host_counter(HostCounter::SyncWaits)? - syncs,
                        host_counter(HostCounter::SyncWaitNanos)? - stalled
                    );
                }
            }
        }
    }
    set_mode(boot_mode)
}
