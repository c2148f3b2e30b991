//! The page-not-present round trip with no page-in latency, per access, on each path the
//! protocol has, each path forced.

use pvagent_abi::pnp::{HostCounter, HostMode, ResolutionTiming};
use pvagent_guest::kprintln;
use pvagent_guest::pv::{kvm_apf, pnp, ve};

use crate::count::Fields;
use crate::io::baseline_now;
use crate::pager::{host_counter, region, set_latency, set_mode, set_timing, settle};
use crate::workload::{self, Arrival, Pages};
use crate::{BenchError, Result, Settings};

/// How many times a repetition is run at most before its count is reported even though the
/// host was late in it (see [`roundtrip`]).
pub const ATTEMPTS: u64 = 10;

/// Timed from the first task's first access to the last task's last, with the baseline
/// measured right before. Each path is forced with the pager's resolution timing (set before
/// the window), so every access takes it whatever the machine's speed:
/// - `sleep`: event -> park -> switch -> resolution -> wake -> resume. Resolutions come only
///   after their event was taken, and two CPL 3 tasks walk their pages in turn, so the one
///   that waits always has the other to switch to.
/// - `halt`: one task, resolutions after the event: it waits in the HLT loop every time.
/// - `early`: every resolution is written before its event: nobody waits.
/// - `sync`: no event; the vCPU waits.
/// - `kvm_apf`: the park path again, through KVM's async page fault ABI ([`roundtrip_kvm_apf`]).
/// - `ve`: the park path again, through #VE and its park request ([`roundtrip_ve`]).
///
/// Each sample also says what KVM counted for its accesses (`insns=`, `exits=`): the run's
/// counting window less that of the same run right after it, over the pages it left present.
/// A count is the path's only if the host kept its part of the timing: on `sleep`, the pager's
/// poller writes a resolution while the other task runs, and when the host is slow to (a loaded
/// machine) the vCPU has nothing to run and halts until it does, or the resolution comes with
/// the other task's event. Either shows, exactly, as exits the path does not have (a HLT, a
/// second exit for the access); such a repetition is run again, up to [`ATTEMPTS`] times, and
/// the sample says how many were set aside (`late=`).
pub fn roundtrip(s: Settings) -> Result<()> {
    let region = region()?;
    let pages = if s.quick { 8 } else { 32 };
    let boot_mode = pnp::host_mode();
    set_latency(0)?;
    // Name, host mode, tasks, resolution timing, and the exits of the path per access.
    for (name, mode, tasks, timing, path_exits) in [
        ("sleep", HostMode::Ring, 2, ResolutionTiming::AfterEventTaken, 1),
        ("halt", HostMode::Ring, 1, ResolutionTiming::AfterEventTaken, 2),
        ("early", HostMode::Ring, 1, ResolutionTiming::BeforeEvent, 1),
        ("sync", HostMode::Sync, 1, ResolutionTiming::WhenReady, 1),
    ] {
        set_mode(mode)?;
        set_timing(timing)?;
        // One run first, not counted: what only a first run does (mapping a task slot's
        // stacks the first time it is used) is then outside every counted one.
        let (before, delivered) = (pnp::stats(), host_counter(HostCounter::EventsDelivered)?);
        workload::run_counted(&region, tasks, pages, 0, Arrival::OnItsOwn, Pages::Evicted, false)?;
        settle(before.events, delivered)?;
        let path = Path { name, tasks, pages, path_exits };
        // Outside the window: an event still pending behind its resolution is taken now.
        let before = || Ok((pnp::stats().events, host_counter(HostCounter::EventsDelivered)?));
        let owed_settled = |&(events, delivered): &(u64, u64)| settle(events, delivered);
        counted_repetitions(s, &region, path, ring_stats, before, owed_settled)?;
    }
    set_timing(ResolutionTiming::WhenReady)?;
    set_mode(boot_mode)?;
    roundtrip_kvm_apf(s, &region, pages)?;
    roundtrip_ve(s, &region, pages)
}

/// One path's round trip as [`counted_repetitions`] runs it.
#[derive(Clone, Copy)]
struct Path {
    name: &'static str,
    tasks: u64,
    pages: u64,
    /// The exits the path has per access: a repetition with more is one the host was late in.
    path_exits: u64,
}

/// What a path's own counters say, for its sample line: events taken, tasks parked, HLT-loop
/// waits, and events found already resolved.
#[derive(Clone, Copy)]
struct PathStats {
    events: u64,
    slept: u64,
    halted: u64,
    early: u64,
}

fn ring_stats() -> PathStats {
    let s = pnp::stats();
    PathStats { events: s.events, slept: s.slept, halted: s.halted, early: s.tokens.resolved_before_event }
}

/// Runs `s.reps` counted repetitions of `path` and prints a sample line for each, its path's
/// counters from `stats`. `before` reads what `settle` needs, before the window; `settle` waits,
/// after it, for what the path still owes (an event, a page ready) so that the second run, over
/// the pages the first left present, counts none of it. A repetition whose count has more exits
/// than the path's is one the host was late in: run again, up to [`ATTEMPTS`] times.
fn counted_repetitions<B>(
    s: Settings,
    region: &pnp::Region,
    path: Path,
    stats: impl Fn() -> PathStats,
    mut before: impl FnMut() -> Result<B>,
    mut settle: impl FnMut(&B) -> Result<()>,
) -> Result<()> {
    let Path { name, tasks, pages, path_exits } = path;
    for rep in 0..s.reps {
        let mut late = 0;
        loop {
            let baseline = baseline_now(s);
            let owed = before()?;
            let stats_before = stats();
            let syncs = host_counter(HostCounter::SyncWaits)?;
            let (window, absent) =
                workload::run_counted(region, tasks, pages, 0, Arrival::OnItsOwn, Pages::Evicted, true)?;
            settle(&owed)?;
            let after = stats();
            let sync_waits = host_counter(HostCounter::SyncWaits)? - syncs;
            // The same run again over the pages it left present: everything but the path.
            let (_, present) =
                workload::run_counted(region, tasks, pages, 0, Arrival::OnItsOwn, Pages::AsTheyAre, true)?;
            let counts = absent.zip(present).map(|(absent, present)| absent.less(present)).transpose()?;
            if counts.is_some_and(|c| c.exits != path_exits * tasks * pages) && late + 1 < ATTEMPTS {
                late += 1;
                continue;
            }
            kprintln!(
                "bench: pnp_{name} rep={rep} ops={} total_ns={} baseline_ns={baseline} events={} slept={} halted={} early={} sync_waits={sync_waits} late={late}{}",
                tasks * pages,
                window.wall_ns,
                after.events - stats_before.events,
                after.slept - stats_before.slept,
                after.halted - stats_before.halted,
                after.early - stats_before.early,
                Fields("", counts)
            );
            break;
        }
    }
    Ok(())
}

/// The same round trip through KVM's async page fault ABI, served by the host stub (`kvm-apf`):
/// two CPL 3 tasks walk their pages in turn; each access is a #PF with its token, its task
/// parks, the other runs, "page ready" wakes it. The park is forced without a resolution timing:
/// the #PF handler keeps interrupts off until its task is parked, so a page ready never overtakes
/// its #PF, and the host stub lets a page ready on its way go before the next #PF (as VMX KVM
/// delivers a pending interrupt before the next instruction), so the other task is always
/// runnable when one must wait. Counted as the ring's is, and a repetition in which the host was
/// late (a HLT, while the page ready was not in yet: more than the path's two exits per access,
/// the access and the acknowledgement) is run again as the ring's is.
fn roundtrip_kvm_apf(s: Settings, region: &pnp::Region, pages: u64) -> Result<()> {
    if !kvm_apf::enabled() {
        return Err(BenchError("KVM's async page fault ABI is not enabled"));
    }
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::KvmApf)?;
    let path = Path { name: "kvm_apf", tasks: 2, pages, path_exits: 2 };
    let stats = || {
        let s = kvm_apf::stats();
        PathStats { events: s.events, slept: s.slept, halted: s.halted, early: s.tokens.resolved_before_event }
    };
    // Outside the window: every token's page ready is in before the second run counts.
    let before = || {
        let s = kvm_apf::stats();
        Ok((s.events, s.page_ready - s.wake_alls))
    };
    let settle = |&(events, page_ready): &(u64, u64)| settle_page_ready(events, page_ready);
    counted_repetitions(s, region, path, stats, before, settle)?;
    set_mode(boot_mode)
}

/// The same round trip through #VE (mode `ve`): two CPL 3 tasks walk their pages in turn; each
/// access is a #VE (a fault at CPL 3), answered with `VePark`, whose token's resolution comes
/// through the ring; the task parks, the other runs. Forced as the ring's `sleep` is: the fetch
/// completes only once the park request named the page (`AfterEventTaken`). The path's exits
/// per access: the access (the host raises #VE on it) and the `VePark` request. Nothing is owed
/// after the window: each task waited for its resolution before it went on.
fn roundtrip_ve(s: Settings, region: &pnp::Region, pages: u64) -> Result<()> {
    if !ve::registered() {
        return Err(BenchError("the host offers no #VE (no VE area registered)"));
    }
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ve)?;
    set_timing(ResolutionTiming::AfterEventTaken)?;
    let path = Path { name: "ve", tasks: 2, pages, path_exits: 2 };
    let stats = || {
        let s = ve::stats();
        PathStats {
            events: s.taken,
            slept: s.parked,
            halted: s.halted,
            early: s.answered_at_once + s.resolved_before_wait,
        }
    };
    // One run first, not counted, as for the ring's paths.
    workload::run_counted(region, path.tasks, pages, 0, Arrival::OnItsOwn, Pages::Evicted, false)?;
    counted_repetitions(s, region, path, stats, || Ok(()), |_| Ok(()))?;
    set_timing(ResolutionTiming::WhenReady)?;
    set_mode(boot_mode)
}

/// Halts until every "page not present" taken since the counters read `events` and
/// `page_ready` (wake-alls not included) has had its "page ready". The deadline only turns a
/// lost interrupt into an error; it is microseconds away.
fn settle_page_ready(events: u64, page_ready: u64) -> Result<()> {
    let deadline = pvagent_guest::arch::ticks() + 10 * pvagent_guest::arch::time::HZ;
    let done = |s: &kvm_apf::Stats| s.page_ready - s.wake_alls - page_ready >= s.events - events;
    let _irq = pvagent_guest::sync::IrqGuard::new();
    let settled = pvagent_guest::pv::halt::wait_until(|| {
        let s = kvm_apf::stats();
        (done(&s) || pvagent_guest::arch::ticks() > deadline).then_some(done(&s))
    });
    if settled { Ok(()) } else { Err(BenchError("a page ready the guest waited for never came")) }
}
