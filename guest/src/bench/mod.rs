//! Benchmarks that `cargo xtask bench` runs in the guest: `bench=NAME[,NAME...]` on the command
//! line runs them instead of the self-tests and prints one `bench: NAME key=value ...` line per
//! measurement (`pvagent_abi::report::parse_bench` reads them back); the host turns them into
//! medians, ratios and plots.
//!
//! On the PVM `/dev/kvm` of these machines the guest kernel's instructions are emulated and CPL 3
//! code runs natively, and port I/O is not possible at CPL 3 there. So exits are timed from a
//! tight kernel loop, minus what the loop itself costs (measured once per run, see `EmptyLoop`):
//! what is left is the exit round trip (and the injected event's handling). Costs that are
//! compared with the round trip carry the round trip measured right next to them, because this
//! machine's speed drifts. Workloads compute at CPL 3 and time themselves from inside their
//! tasks, so that creating and joining tasks is not part of what they measure.

use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::pnp::{HostCounter, HostMode, PageBehaviour, ResolutionTiming};
use pvagent_abi::port::{BENCH_INJECT, BENCH_NULL, BenchInject, BenchLoop};
use x86_64::instructions::port::Port;

use crate::arch::{apic, cpu, idle, time, trap};
use crate::boot::cmdline::Cmdline;
use crate::cell::StaticCell;
use crate::kprintln;
use crate::pv::{ac, halt, pnp};
use crate::task::sched::{ExitStatus, TaskId};
use crate::task::{self, user};

/// The vector of the benchmark interrupt (its handler only counts and signals EOI).
pub const BENCH_VECTOR: u8 = 0x60;
/// Names `bench=all` runs, in order.
pub const ALL: &[&str] = &["io", "inject", "pnp", "workload", "scaling"];

/// One CPL 3 workload task's parameters (written by the kernel before the task starts) and its
/// own timing (written by the task), in user-accessible memory. Offsets are what the user
/// program reads and writes (`slot + offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Slot {
    base: u64,
    pages: u64,
    spin_iterations: u64,
    /// TSC when the task began its first round.
    start_tsc: u64,
    /// TSC when the task's last access completed.
    end_tsc: u64,
    /// The address of the run's [`Gate`].
    gate: u64,
}

const SLOT_BASE: u64 = 0;
const SLOT_PAGES: u64 = 8;
const SLOT_SPIN: u64 = 16;
const SLOT_START: u64 = 24;
const SLOT_END: u64 = 32;
const SLOT_GATE: u64 = 40;
const _: () = assert!(core::mem::offset_of!(Slot, base) as u64 == SLOT_BASE);
const _: () = assert!(core::mem::offset_of!(Slot, pages) as u64 == SLOT_PAGES);
const _: () = assert!(core::mem::offset_of!(Slot, spin_iterations) as u64 == SLOT_SPIN);
const _: () = assert!(core::mem::offset_of!(Slot, start_tsc) as u64 == SLOT_START);
const _: () = assert!(core::mem::offset_of!(Slot, end_tsc) as u64 == SLOT_END);
const _: () = assert!(core::mem::offset_of!(Slot, gate) as u64 == SLOT_GATE);

/// The finish line of one workload run, in user-accessible memory: each task counts itself in
/// when its last access is done and then stays (yielding) until every task has, so that no task
/// leaves (exits, is joined) while others still work. Leaving costs the emulated kernel about a
/// millisecond here, which would otherwise land inside the measured window.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Gate {
    finished: u64,
    tasks: u64,
}

const GATE_FINISHED: u64 = 0;
const GATE_TASKS: u64 = 8;
const _: () = assert!(core::mem::offset_of!(Gate, finished) as u64 == GATE_FINISHED);
const _: () = assert!(core::mem::offset_of!(Gate, tasks) as u64 == GATE_TASKS);

/// The kernel writes the gate before it spawns a run's tasks and reads nothing of it; the tasks
/// change it only with a locked add.
#[unsafe(link_section = ".user_data.bench")]
static USER_GATE: StaticCell<Gate> = StaticCell::new(Gate { finished: 0, tasks: 0 });

fn gate_addr() -> u64 {
    USER_GATE.get() as u64
}

/// How many workload tasks can run at once.
const SLOTS: usize = 32;
const EMPTY_SLOT: Slot = Slot { base: 0, pages: 0, spin_iterations: 0, start_tsc: 0, end_tsc: 0, gate: 0 };

/// Each slot is written by the kernel before its task is spawned and read after it was joined;
/// the task itself is the only other user in between.
#[unsafe(link_section = ".user_data.bench")]
static USER_SLOTS: StaticCell<[Slot; SLOTS]> = StaticCell::new([EMPTY_SLOT; SLOTS]);

/// Slot `i`'s address; `None` beyond the table.
fn slot_addr(i: usize) -> Option<u64> {
    (i < SLOTS).then(|| USER_SLOTS.get().cast::<Slot>().wrapping_add(i) as u64)
}

fn set_slot(i: usize, slot: Slot) -> Result<()> {
    let addr = slot_addr(i).ok_or(BenchError("more workload tasks than slots"))?;
    // SAFETY: `addr` is slot `i` of the table, which no running task uses now (see `Slots`).
    unsafe { core::ptr::write_volatile(addr as *mut Slot, slot) };
    Ok(())
}

fn get_slot(i: usize) -> Result<Slot> {
    let addr = slot_addr(i).ok_or(BenchError("more workload tasks than slots"))?;
    // SAFETY: as in `set_slot`; the slot's task has been joined.
    Ok(unsafe { core::ptr::read_volatile(addr as *const Slot) })
}

/// CPL 3: `iterations` rounds of a loop whose only cost is the CPU's own speed. A fixed amount
/// of work rather than a TSC deadline, so that an interrupt handled meanwhile does not eat into
/// the compute the ideal counts on.
#[inline(always)]
fn spin(iterations: u64) {
    let mut i = 0u64;
    while i < iterations {
        // SAFETY: an empty instruction sequence; it only keeps the loop from being removed.
        unsafe { core::arch::asm!("/* {0} */", inout(reg) i, options(nomem, nostack, preserves_flags)) };
        i += 1;
    }
}

/// CPL 3: times `spin` for the slot's iterations and exits with the TSC cycles it took.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_spin_timed(slot: u64) -> ! {
    let iterations = user::read_u64(slot + SLOT_SPIN);
    let start = user::rdtsc();
    spin(iterations);
    user::exit(user::rdtsc().wrapping_sub(start))
}

/// CPL 3: for each of `pages` pages from `base`, compute (`spin`), then read the page (which
/// may be absent). Records when it began and when its last access completed; exits with the
/// XOR of what it read.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_workload(slot: u64) -> ! {
    let base = user::read_u64(slot + SLOT_BASE);
    let pages = user::read_u64(slot + SLOT_PAGES);
    let iterations = user::read_u64(slot + SLOT_SPIN);
    user::write_u64(slot + SLOT_START, user::rdtsc());
    let mut acc = 0u64;
    let mut i = 0;
    while i < pages {
        spin(iterations);
        acc ^= user::read_u64(base + i * 4096 + (i % 512) * 8);
        i += 1;
    }
    user::write_u64(slot + SLOT_END, user::rdtsc());
    let gate = user::read_u64(slot + SLOT_GATE);
    // SAFETY: `gate` is the run's `Gate`, user-accessible and aligned; a locked add changes
    // nothing else.
    unsafe {
        core::arch::asm!("lock add qword ptr [{}], 1", in(reg) gate + GATE_FINISHED, options(nostack));
    }
    while user::read_u64(gate + GATE_FINISHED) < user::read_u64(gate + GATE_TASKS) {
        user::yield_now();
    }
    user::exit(acc)
}

/// Why a benchmark could not run.
#[derive(Debug)]
pub struct BenchError(&'static str);

type Result<T> = core::result::Result<T, BenchError>;

fn cycles_to_ns(cycles: u64) -> u64 {
    (u128::from(cycles) * 1_000_000 / u128::from(time::tsc_khz().max(1))) as u64
}

fn join(id: TaskId) -> Result<ExitStatus> {
    task::join(id).map_err(|_| BenchError("join failed"))
}

/// What the timed loop costs without its `out`: a `dec`/`jnz` pair per iteration, which this
/// machine's KVM emulates at CPL 0. Measured several times at the start of the run and the
/// median kept, so that one noisy measurement does not land in every figure.
#[derive(Clone, Copy, Debug)]
struct EmptyLoop {
    /// TSC cycles per 1024 iterations.
    cycles_per_1024: u64,
}

impl EmptyLoop {
    const ITERATIONS: u64 = 2000;
    const SAMPLES: usize = 7;

    /// Measures the empty loop and prints each measurement (two kernel instructions per
    /// iteration: what one guest kernel instruction costs here).
    fn measure() -> Self {
        let mut samples = [0u64; Self::SAMPLES];
        for (rep, sample) in samples.iter_mut().enumerate() {
            *sample = timed_loop(None, Self::ITERATIONS);
            kprintln!("bench: kernel_insn rep={rep} ops={} total_ns={}", 2 * Self::ITERATIONS, cycles_to_ns(*sample));
        }
        samples.sort_unstable();
        Self { cycles_per_1024: samples[Self::SAMPLES / 2] * 1024 / Self::ITERATIONS }
    }

    fn cycles(&self, iterations: u64) -> u64 {
        self.cycles_per_1024 * iterations / 1024
    }
}

/// TSC cycles of `iterations` rounds of a tight kernel loop, with a 32-bit `out` of the value
/// to the port in each round when there is one. Interrupts stay enabled: an injected interrupt
/// is taken inside the loop, as it would be after any exit.
fn timed_loop(out: Option<(u16, u32)>, iterations: u64) -> u64 {
    let start = cpu::rdtsc();
    match out {
        // SAFETY: the host's bench ports have no effect on guest memory. Not `nomem`: the host
        // injects events on the way back, whose handlers change memory the caller then reads.
        Some((port, value)) => unsafe {
            core::arch::asm!("2: out dx, eax", "dec {n}", "jnz 2b", n = inout(reg) iterations => _,
                in("dx") port, in("eax") value, options(nostack));
        },
        // SAFETY: a counting loop.
        None => unsafe {
            core::arch::asm!("2: dec {n}", "jnz 2b", n = inout(reg) iterations => _, options(nostack, nomem))
        },
    }
    cpu::rdtsc().wrapping_sub(start)
}

/// TSC cycles of `iterations` `out`s of `value` to `port`, the loop's own cost taken out.
fn port_loop(port: u16, value: u32, iterations: u64, empty: EmptyLoop) -> u64 {
    timed_loop(Some((port, value)), iterations).saturating_sub(empty.cycles(iterations))
}

/// Benchmark settings from the command line, and what the run measured about itself first.
#[derive(Clone, Copy, Debug)]
struct Settings {
    quick: bool,
    reps: u64,
    empty: EmptyLoop,
}

static BENCH_IRQS: AtomicU64 = AtomicU64::new(0);

fn on_bench_interrupt(_frame: &mut trap::TrapFrame) {
    BENCH_IRQS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

/// Asks the host to handle the next exits in `which` loop, and says whether it now does.
fn select_loop(which: BenchLoop) -> bool {
    // SAFETY: the benchmark port has no effect on guest memory; a host without it ignores the
    // write and reads all-ones.
    unsafe {
        Port::<u32>::new(BENCH_NULL).write(which as u32);
        Port::<u32>::new(BENCH_NULL).read() == which as u32
    }
}

/// The baseline round trip per exit, in ns, measured now (for figures that are multiples of it).
fn baseline_now(s: Settings) -> u64 {
    const OPS: u64 = 200;
    cycles_to_ns(port_loop(BENCH_NULL, 0, OPS, s.empty)) / OPS
}

/// The baseline: one port-I/O exit to the host and back, from a kernel loop (CPL 3 cannot do
/// port I/O on PVM), in the host stub's loop (`io`) and, where the host offers it, in its bare
/// loop right before or after (`io_bare`, alternating which comes first), so that the two are
/// compared within milliseconds.
fn io(s: Settings) -> Result<()> {
    let ops = if s.quick { 500 } else { 2000 };
    port_loop(BENCH_NULL, 0, 100, s.empty); // warm up
    let bare = select_loop(BenchLoop::Bare);
    if bare {
        port_loop(BENCH_NULL, 0, 100, s.empty);
    }
    if !select_loop(BenchLoop::Stub) && bare {
        return Err(BenchError("the host did not switch back from its bare loop"));
    }
    for rep in 0..s.reps {
        let order = if rep % 2 == 0 { [BenchLoop::Stub, BenchLoop::Bare] } else { [BenchLoop::Bare, BenchLoop::Stub] };
        for which in order {
            if which == BenchLoop::Bare && !bare {
                continue;
            }
            if bare && !select_loop(which) {
                return Err(BenchError("the host did not switch loops"));
            }
            let cycles = port_loop(BENCH_NULL, 0, ops, s.empty);
            if bare {
                select_loop(BenchLoop::Stub);
            }
            let name = if which == BenchLoop::Bare { "io_bare" } else { "io" };
            kprintln!("bench: {name} rep={rep} ops={ops} total_ns={}", cycles_to_ns(cycles));
        }
    }
    Ok(())
}

/// Injection costs: the host injects an event on the way back from each `out`; the guest
/// handles it and the loop goes on. Each measurement comes with the plain round trip through
/// the same port measured right before it (`plain_ns`).
fn inject(s: Settings) -> Result<()> {
    let ops = if s.quick { 50 } else { 200 };
    trap::register(BENCH_VECTOR, on_bench_interrupt);
    // The page-not-present kind needs a present page of the region: page 0, touched now.
    let pnp_page = pnp::host_region().filter(|(r, _)| r.pages > 0 && pnp::registered_entries() > 0);
    if let Some((region, _)) = pnp_page {
        // SAFETY: the region is mapped; this read makes page 0 present.
        let _ = unsafe { core::ptr::read_volatile(region.base as *const u64) };
    }
    let plain = BenchInject::None.encode(0, 0);
    let kinds: [(&str, u32); 3] = [
        ("interrupt", BenchInject::Interrupt.encode(BENCH_VECTOR, 0)),
        ("exception_ac", BenchInject::Exception.encode(pvagent_abi::sld::AC_VECTOR, 0)),
        ("page_not_present", BenchInject::PageNotPresent.encode(0, 0)),
    ];
    for (name, value) in kinds {
        if name == "page_not_present" && pnp_page.is_none() {
            kprintln!("bench: inject_{name} unavailable=1");
            continue;
        }
        // One pass untimed: what happens only the first time (a rate-limited report of the
        // first spurious #AC, first touches) is not the cost per event.
        port_loop(BENCH_INJECT, value, ops, s.empty);
        for rep in 0..s.reps {
            let plain_cycles = port_loop(BENCH_INJECT, plain, ops, s.empty);
            let (events, irqs, spurious) =
                (pnp::stats().events, BENCH_IRQS.load(Ordering::Relaxed), ac::stats().spurious);
            let cycles = port_loop(BENCH_INJECT, value, ops, s.empty);
            // Counted where the guest handled them, so an event the host did not deliver is
            // not taken for one that was.
            let handled = match name {
                "interrupt" => BENCH_IRQS.load(Ordering::Relaxed) - irqs,
                "exception_ac" => ac::stats().spurious - spurious,
                _ => pnp::stats().events - events,
            };
            kprintln!(
                "bench: inject_{name} rep={rep} ops={ops} handled={handled} total_ns={} plain_ns={}",
                cycles_to_ns(cycles),
                cycles_to_ns(plain_cycles)
            );
        }
    }
    Ok(())
}

fn region() -> Result<pnp::Region> {
    match pnp::host_region() {
        Some((r, _)) if r.pages > 0 && pnp::registered_entries() > 0 => Ok(r),
        _ => Err(BenchError("needs the host stub's demand pager")),
    }
}

fn host_counter(c: HostCounter) -> Result<u64> {
    pnp::host_counter(c).map_err(|_| BenchError("the host did not report its pager counters"))
}

/// How long `spin` takes per 1024 iterations, in TSC cycles: the fastest of a few timed runs of
/// a CPL 3 task (an interrupt can only make a run slower).
fn spin_cycles_per_1024() -> Result<u64> {
    const ITERATIONS: u64 = 1 << 20;
    let mut best = u64::MAX;
    for _ in 0..3 {
        set_slot(0, Slot { spin_iterations: ITERATIONS, ..EMPTY_SLOT })?;
        let addr = slot_addr(0).ok_or(BenchError("no slot"))?;
        let id = task::spawn_user("bench-spin", user_spin_timed, addr).map_err(|_| BenchError("spawn failed"))?;
        match join(id)? {
            ExitStatus::Returned(cycles) => best = best.min(cycles),
            _ => return Err(BenchError("the calibration task ended abnormally")),
        }
    }
    Ok((best * 1024 / ITERATIONS).max(1))
}

/// `spin` iterations for `ns` of compute.
fn spin_iterations(ns: u64, cycles_per_1024: u64) -> u64 {
    let cycles = u128::from(ns) * u128::from(time::tsc_khz()) / 1_000_000;
    (cycles * 1024 / u128::from(cycles_per_1024)) as u64
}

/// What one workload run measured.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// From the first task's start to the last task's last access.
    wall_ns: u64,
    /// `wall_ns` less the time this vCPU was halted.
    busy_ns: u64,
}

/// Whether a workload run's pages arrive on their own or all at once when every task waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// Each page after the pager's latency (and resolution timing).
    OnItsOwn,
    /// Every page is held until each task has parked on its first one; then all are released.
    /// The runner yields instead of blocking meanwhile, so each task has another to switch to
    /// and parks: by construction, the last event finds `tasks - 1` tokens outstanding.
    WhenAllParked,
}

/// Runs `tasks` CPL 3 workload tasks over pages `[0, tasks * pages)` of the region (evicted
/// first), each doing `spin_iterations` of compute before each page.
fn workload_run(
    region: &pnp::Region,
    tasks: u64,
    pages: u64,
    spin_iterations: u64,
    arrival: Arrival,
) -> Result<Window> {
    if tasks as usize > SLOTS {
        return Err(BenchError("more workload tasks than slots"));
    }
    pnp::evict(region.base, tasks * pages).map_err(|_| BenchError("evict failed"))?;
    if arrival == Arrival::WhenAllParked {
        for page in 0..tasks * pages {
            pnp::set_page_behaviour(region.page(page), PageBehaviour::Held)
                .map_err(|_| BenchError("cannot hold a page"))?;
        }
    }
    let mut ids: heapless::Vec<TaskId, SLOTS> = heapless::Vec::new();
    // SAFETY: no task of an earlier run is left (all were joined), so nothing reads the gate.
    unsafe { core::ptr::write_volatile(USER_GATE.get(), Gate { finished: 0, tasks }) };
    let idle = idle::idle_cycles();
    for t in 0..tasks as usize {
        let slot =
            Slot { base: region.page(t as u64 * pages), pages, spin_iterations, gate: gate_addr(), ..EMPTY_SLOT };
        set_slot(t, slot)?;
        let addr = slot_addr(t).ok_or(BenchError("no slot"))?;
        let id = task::spawn_user("bench-work", user_workload, addr).map_err(|_| BenchError("spawn failed"))?;
        ids.push(id).map_err(|_| BenchError("more workload tasks than slots"))?;
    }
    if arrival == Arrival::WhenAllParked {
        let parked = yield_until_parked(tasks as usize);
        for page in 0..tasks * pages {
            pnp::release(region.page(page)).map_err(|_| BenchError("cannot release a page"))?;
        }
        parked?;
    }
    for id in ids {
        if !matches!(join(id)?, ExitStatus::Returned(_)) {
            return Err(BenchError("a workload task ended abnormally"));
        }
    }
    // Idle time can only accrue while every task is parked, which is inside the window: before
    // it the tasks are starting, after it they are leaving, and neither waits.
    let idle = idle::idle_cycles().wrapping_sub(idle);
    let (mut first, mut last) = (u64::MAX, 0);
    for t in 0..tasks as usize {
        let slot = get_slot(t)?;
        if slot.start_tsc == 0 || slot.end_tsc < slot.start_tsc {
            return Err(BenchError("a workload task did not record its timing"));
        }
        first = first.min(slot.start_tsc);
        last = last.max(slot.end_tsc);
    }
    let wall = last.saturating_sub(first);
    Ok(Window { wall_ns: cycles_to_ns(wall), busy_ns: cycles_to_ns(wall.saturating_sub(idle)) })
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

/// Waits until this vCPU has taken `events` page-not-present events in total. On PVM an event
/// pending behind a resolution is injected at the vCPU's next exit, which a task that found
/// its page present may not make; a HLT is one. The deadline only turns a lost event into an
/// error; an event is microseconds away.
fn settle(events: u64) -> Result<()> {
    let deadline = crate::arch::ticks() + 10 * time::HZ;
    let taken = {
        let _irq = crate::sync::IrqGuard::new();
        halt::wait_until(|| {
            let events_now = pnp::stats().events;
            (events_now >= events || crate::arch::ticks() > deadline).then_some(events_now >= events)
        })
    };
    if taken { Ok(()) } else { Err(BenchError("an event the host delivered was never taken")) }
}

fn set_timing(timing: ResolutionTiming) -> Result<()> {
    pnp::set_timing(timing).map_err(|_| BenchError("cannot set the pager's resolution timing"))
}

fn set_mode(mode: HostMode) -> Result<()> {
    pnp::set_host_mode(mode).map_err(|_| BenchError("cannot set the pager's mode"))
}

fn set_latency(ns: u64) -> Result<()> {
    pnp::set_latency_ns(ns, ns).map_err(|_| BenchError("cannot set the pager's latency"))
}

/// The page-not-present round trip with no page-in latency, per access, from the first task's
/// first access to the last task's last, with the baseline measured right before. Each path is
/// forced with the pager's resolution timing (set before the window), so every access takes it
/// whatever the machine's speed:
/// - `sleep`: event -> park -> switch -> resolution -> wake -> resume. Resolutions come only
///   after their event was taken, and two CPL 3 tasks walk their pages in turn, so the one
///   that waits always has the other to switch to (whose next access brings the first one's
///   resolution at the latest).
/// - `halt`: one task, resolutions after the event: it waits in the HLT loop every time.
/// - `early`: every resolution is written before its event: nobody waits.
/// - `sync`: no event; the vCPU waits.
fn pnp_roundtrip(s: Settings) -> Result<()> {
    let region = region()?;
    let pages = if s.quick { 8 } else { 32 };
    let boot_mode = pnp::host_mode();
    set_latency(0)?;
    for (name, mode, tasks, timing) in [
        ("sleep", HostMode::Ring, 2, ResolutionTiming::AfterEventTaken),
        ("halt", HostMode::Ring, 1, ResolutionTiming::AfterEventTaken),
        ("early", HostMode::Ring, 1, ResolutionTiming::BeforeEvent),
        ("sync", HostMode::Sync, 1, ResolutionTiming::WhenReady),
    ] {
        set_mode(mode)?;
        set_timing(timing)?;
        for rep in 0..s.reps {
            let baseline = baseline_now(s);
            let before = pnp::stats();
            let syncs = host_counter(HostCounter::SyncWaits)?;
            let window = workload_run(&region, tasks, pages, 0, Arrival::OnItsOwn)?;
            // Outside the window: an event still pending behind its resolution is taken now.
            let expected_events = if mode == HostMode::Ring { tasks * pages } else { 0 };
            settle(before.events + expected_events)?;
            let after = pnp::stats();
            kprintln!(
                "bench: pnp_{name} rep={rep} ops={} total_ns={} baseline_ns={baseline} events={} slept={} halted={} early={} sync_waits={} handler_ns={}",
                tasks * pages,
                window.wall_ns,
                after.events - before.events,
                after.slept - before.slept,
                after.halted - before.halted,
                after.tokens.resolved_before_event - before.tokens.resolved_before_event,
                host_counter(HostCounter::SyncWaits)? - syncs,
                cycles_to_ns(after.handler_cycles - before.handler_cycles)
            );
        }
    }
    set_timing(ResolutionTiming::WhenReady)?;
    set_mode(boot_mode)
}

/// What asynchronous page-not-present buys: K tasks x M pages, compute C before each page,
/// latency L, in sync and ring mode.
fn workload(s: Settings) -> Result<()> {
    let region = region()?;
    let (tasks_set, latencies): (&[u64], &[u64]) = if s.quick {
        (&[1, 8], &[0, 1_000_000])
    } else {
        (&[1, 2, 4, 8, 16], &[0, 50_000, 200_000, 1_000_000, 5_000_000])
    };
    let pages = if s.quick { 4 } else { 8 };
    let compute_ns = 100_000;
    let iterations = spin_iterations(compute_ns, spin_cycles_per_1024()?);
    let boot_mode = pnp::host_mode();
    let reps = if s.quick { 1 } else { s.reps.min(3) };
    for &latency in latencies {
        set_latency(latency)?;
        for &tasks in tasks_set {
            for (mode_name, mode) in [("sync", HostMode::Sync), ("ring", HostMode::Ring)] {
                set_mode(mode)?;
                for rep in 0..reps {
                    let events = host_counter(HostCounter::EventsDelivered)?;
                    let syncs = host_counter(HostCounter::SyncWaits)?;
                    let stalled = host_counter(HostCounter::SyncWaitNanos)?;
                    let window = workload_run(&region, tasks, pages, iterations, Arrival::OnItsOwn)?;
                    kprintln!(
                        "bench: workload_{mode_name} rep={rep} tasks={tasks} pages={pages} compute_ns={compute_ns} latency_ns={latency} wall_ns={} busy_ns={} events={} sync_waits={} stalled_ns={}",
                        window.wall_ns,
                        window.busy_ns,
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

/// The guest's handling time per event when K tasks park on K tokens at once (their pages are
/// held until all K have parked). The figure is the mean over the K events: the k-th event of
/// the burst finds k - 1 tokens already outstanding.
fn scaling(s: Settings) -> Result<()> {
    let region = region()?;
    let counts: &[u64] = if s.quick { &[1, 8] } else { &[1, 2, 4, 8, 16, 24] };
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ring)?;
    set_latency(0)?;
    for &outstanding in counts {
        for rep in 0..s.reps.min(3) {
            let before = pnp::stats();
            workload_run(&region, outstanding, 1, 0, Arrival::WhenAllParked)?;
            let after = pnp::stats();
            kprintln!(
                "bench: scaling rep={rep} outstanding={outstanding} events={} handler_ns={}",
                after.events - before.events,
                cycles_to_ns(after.handler_cycles - before.handler_cycles)
            );
        }
    }
    set_mode(boot_mode)
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

/// Runs the benchmarks the command line names, then ends the run.
pub fn run(cmdline: Cmdline<'static>) -> ! {
    let names = cmdline.get("bench").unwrap_or("all");
    let quick = cmdline.words().any(|(k, _)| k == "bench-quick");
    let reps = cmdline.get("bench-reps").and_then(|r| r.parse().ok()).unwrap_or(5).clamp(1, 50);
    kprintln!("bench: start tsc_khz={} quick={}", time::tsc_khz(), u8::from(quick));
    let settings = Settings { quick, reps, empty: EmptyLoop::measure() };
    let mut failed = false;
    for name in names.split(',').filter(|n| *n != "all" && !ALL.contains(n)) {
        kprintln!("bench-error: {name}: no such benchmark (known: {})", Joined(ALL));
        failed = true;
    }
    for name in ALL.iter().filter(|n| names == "all" || names.split(',').any(|x| x == **n)) {
        let result = match *name {
            "io" => io(settings),
            "inject" => inject(settings),
            "pnp" => pnp_roundtrip(settings),
            "workload" => workload(settings),
            _ => scaling(settings),
        };
        if let Err(BenchError(why)) = result {
            kprintln!("bench-error: {name}: {why}");
            failed = true;
        }
    }
    kprintln!("bench: done");
    crate::arch::exit::exit(if failed { pvagent_abi::exit::FAILURE } else { pvagent_abi::exit::SUCCESS })
}
