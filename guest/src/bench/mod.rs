//! Benchmarks that `cargo xtask bench` runs in the guest: `bench=NAME[,NAME...]` on the command
//! line runs them instead of the self-tests and prints one `bench: NAME key=value ...` line per
//! measurement (`pvagent_abi::report::parse_bench` reads them back); the host turns them into
//! medians, ratios and plots.
//!
//! On the PVM `/dev/kvm` of these machines the guest kernel's instructions are emulated and CPL 3
//! code runs natively, and port I/O is not possible at CPL 3 there. So exits are timed from a
//! tight kernel loop, and the same loop without the `out` is timed too and subtracted: what is
//! left is the exit round trip (and the injected event's handling). Workloads compute at CPL 3.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::pnp::{HostCounter, HostMode};
use pvagent_abi::port::{BENCH_INJECT, BENCH_NULL, BenchInject, BenchLoop};
use x86_64::instructions::port::Port;

use crate::arch::{apic, time, trap};
use crate::boot::cmdline::Cmdline;
use crate::kprintln;
use crate::pv::pnp;
use crate::task::sched::{ExitStatus, TaskId};
use crate::task::{self, user};

/// The vector of the benchmark interrupt (its handler only counts and signals EOI).
pub const BENCH_VECTOR: u8 = 0x60;
/// Names `bench=all` runs, in order.
pub const ALL: &[&str] = &["io", "inject", "pnp", "workload", "scaling"];

/// Parameters of one CPL 3 workload task, in user-accessible memory. Offsets are what the
/// user program reads (`slot + offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Slot {
    base: u64,
    pages: u64,
    compute_cycles: u64,
}

const SLOT_BASE: u64 = 0;
const SLOT_PAGES: u64 = 8;
const SLOT_COMPUTE: u64 = 16;
const _: () = assert!(core::mem::offset_of!(Slot, base) as u64 == SLOT_BASE);
const _: () = assert!(core::mem::offset_of!(Slot, pages) as u64 == SLOT_PAGES);
const _: () = assert!(core::mem::offset_of!(Slot, compute_cycles) as u64 == SLOT_COMPUTE);

const SLOTS: usize = 32;

struct Slots(UnsafeCell<[Slot; SLOTS]>);
// SAFETY: each slot is written by the kernel before its task is spawned and read after it was
// joined; the task itself is the only other user in between.
unsafe impl Sync for Slots {}

#[unsafe(link_section = ".user_data.bench")]
static USER_SLOTS: Slots = Slots(UnsafeCell::new([Slot { base: 0, pages: 0, compute_cycles: 0 }; SLOTS]));

fn slot_addr(i: usize) -> u64 {
    (USER_SLOTS.0.get() as *mut Slot).wrapping_add(i) as u64
}

fn set_slot(i: usize, slot: Slot) {
    // SAFETY: slot `i` belongs to no running task now (see `Slots`).
    unsafe { core::ptr::write_volatile((USER_SLOTS.0.get() as *mut Slot).add(i), slot) };
}

/// CPL 3: for each of `pages` pages from `base`, compute for `compute_cycles` TSC cycles, then
/// read the page (which may be absent). Exits with the XOR of what it read.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_workload(slot: u64) -> ! {
    let base = user::read_u64(slot + SLOT_BASE);
    let pages = user::read_u64(slot + SLOT_PAGES);
    let compute = user::read_u64(slot + SLOT_COMPUTE);
    let mut acc = 0u64;
    let mut i = 0;
    while i < pages {
        let until = user::rdtsc().wrapping_add(compute);
        while user::rdtsc() < until {
            core::hint::spin_loop();
        }
        acc ^= user::read_u64(base + i * 4096 + (i % 512) * 8);
        i += 1;
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

fn ns_to_cycles(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(time::tsc_khz()) / 1_000_000) as u64
}

fn join(id: TaskId) -> Result<ExitStatus> {
    task::join(id).map_err(|_| BenchError("join failed"))
}

/// TSC cycles of `iterations` 32-bit `out`s of `value` to `port` in a tight loop, minus the
/// cycles of the same loop without the `out` (the loop's own instructions, which this
/// machine's KVM emulates at CPL 0), and those cycles of the empty loop. Interrupts stay
/// enabled: an injected interrupt is taken inside the loop, as it would be after any exit.
fn port_loop(port: u16, value: u32, iterations: u64) -> (u64, u64) {
    let timed = |with_out: bool| {
        let start = crate::arch::cpu::rdtsc();
        if with_out {
            // SAFETY: the host's bench ports have no effect on guest memory.
            unsafe {
                core::arch::asm!("2: out dx, eax", "dec {n}", "jnz 2b", n = inout(reg) iterations => _,
                    in("dx") port, in("eax") value, options(nostack, nomem));
            }
        } else {
            // SAFETY: a counting loop.
            unsafe {
                core::arch::asm!("2: dec {n}", "jnz 2b", n = inout(reg) iterations => _, options(nostack, nomem))
            };
        }
        crate::arch::cpu::rdtsc().wrapping_sub(start)
    };
    let empty = timed(false);
    (timed(true).saturating_sub(empty), empty)
}

/// Benchmark settings from the command line.
#[derive(Clone, Copy, Debug)]
struct Settings {
    quick: bool,
    reps: u64,
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

/// The baseline: one port-I/O exit to the host and back, from a kernel loop (CPL 3 cannot do
/// port I/O on PVM), in the host stub's loop (`io`) and, where the host offers it, in its bare
/// loop right before or after (`io_bare`, alternating which comes first), so that the two are
/// compared within milliseconds. Also what the loop itself cost: two kernel instructions per
/// iteration (`dec`, `jnz`), which tells what one guest kernel instruction costs here.
fn io(s: Settings) -> Result<()> {
    let ops = if s.quick { 500 } else { 2000 };
    port_loop(BENCH_NULL, 0, 100); // warm up
    let bare = select_loop(BenchLoop::Bare);
    if bare {
        port_loop(BENCH_NULL, 0, 100);
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
            let (cycles, empty) = port_loop(BENCH_NULL, 0, ops);
            let name = if which == BenchLoop::Bare { "io_bare" } else { "io" };
            if bare {
                select_loop(BenchLoop::Stub);
            }
            kprintln!("bench: {name} rep={rep} ops={ops} total_ns={}", cycles_to_ns(cycles));
            kprintln!("bench: kernel_insn rep={rep} ops={} total_ns={}", 2 * ops, cycles_to_ns(empty));
        }
    }
    Ok(())
}

/// Injection costs: the host injects an event on the way back from each `out`; the guest
/// handles it and the loop goes on.
fn inject(s: Settings) -> Result<()> {
    let ops = if s.quick { 50 } else { 200 };
    trap::register(BENCH_VECTOR, on_bench_interrupt);
    // The page-not-present kind needs a present page of the region: page 0, touched now.
    let pnp_page = pnp::host_region().filter(|(r, _)| r.pages > 0 && pnp::registered_entries() > 0);
    if let Some((region, _)) = pnp_page {
        // SAFETY: the region is mapped; this read makes page 0 present.
        let _ = unsafe { core::ptr::read_volatile(region.base as *const u64) };
    }
    let kinds: [(&str, u32); 4] = [
        ("none", BenchInject::None.encode(0, 0)),
        ("interrupt", BenchInject::Interrupt.encode(BENCH_VECTOR, 0)),
        ("exception_ac", BenchInject::Exception.encode(17, 0)),
        ("page_not_present", BenchInject::PageNotPresent.encode(0, 0)),
    ];
    for (name, value) in kinds {
        if name == "page_not_present" && pnp_page.is_none() {
            kprintln!("bench: inject kind=page_not_present unavailable=1");
            continue;
        }
        // One pass untimed: what happens only the first time (a rate-limited report of the
        // first spurious #AC, first touches) is not the cost per event.
        port_loop(BENCH_INJECT, value, ops);
        for rep in 0..s.reps {
            let events = pnp::stats().events;
            let irqs = BENCH_IRQS.load(Ordering::Relaxed);
            let (cycles, _) = port_loop(BENCH_INJECT, value, ops);
            let handled = match name {
                "interrupt" => BENCH_IRQS.load(Ordering::Relaxed) - irqs,
                "page_not_present" => pnp::stats().events - events,
                _ => ops,
            };
            kprintln!("bench: inject_{name} rep={rep} ops={ops} handled={handled} total_ns={}", cycles_to_ns(cycles));
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

fn host_counter(c: HostCounter) -> u64 {
    pnp::host_counter(c).unwrap_or(0)
}

/// Runs `tasks` CPL 3 workload tasks over pages `[0, tasks * pages)` of the region (evicted
/// first), each computing `compute_ns` before each page. Returns (wall, busy) in ns.
fn workload_run(region: &pnp::Region, tasks: u64, pages: u64, compute_ns: u64) -> Result<(u64, u64)> {
    pnp::evict(region.base, tasks * pages).map_err(|_| BenchError("evict failed"))?;
    let mut ids: heapless::Vec<TaskId, SLOTS> = heapless::Vec::new();
    let start = crate::arch::cpu::rdtsc();
    let idle = task::idle_cycles();
    for t in 0..tasks as usize {
        set_slot(t, Slot { base: region.page(t as u64 * pages), pages, compute_cycles: ns_to_cycles(compute_ns) });
        let id = task::spawn_user("bench-work", user_workload, slot_addr(t)).map_err(|_| BenchError("spawn failed"))?;
        let _ = ids.push(id);
    }
    for id in ids {
        if !matches!(join(id)?, ExitStatus::Returned(_)) {
            return Err(BenchError("a workload task ended abnormally"));
        }
    }
    let wall = crate::arch::cpu::rdtsc().wrapping_sub(start);
    let idle = task::idle_cycles().wrapping_sub(idle);
    Ok((cycles_to_ns(wall), cycles_to_ns(wall.saturating_sub(idle))))
}

fn set_mode(mode: HostMode) -> Result<()> {
    pnp::set_host_mode(mode).map_err(|_| BenchError("cannot set the pager's mode"))
}

fn set_latency(ns: u64) -> Result<()> {
    pnp::set_latency_ns(ns, ns).map_err(|_| BenchError("cannot set the pager's latency"))
}

/// The page-not-present round trip with (almost) no page-in latency, per access:
/// - `sleep`: event -> park -> switch -> resolution -> wake -> resume. Two CPL 3 tasks walk
///   their pages, so the one that waits parks while the other runs (until it waits too).
/// - `halt`: one task, which waits in the HLT loop.
/// - `early`: zero latency, so the host resolves before it delivers the event and nobody waits.
/// - `sync`: no event; the vCPU waits.
///
/// `sleep` and `halt` use 1 us: with zero latency the resolution always comes first.
fn pnp_roundtrip(s: Settings) -> Result<()> {
    let region = region()?;
    let pages = if s.quick { 8 } else { 32 };
    let boot_mode = pnp::host_mode();
    for (name, mode, tasks, latency) in [
        ("sleep", HostMode::Ring, 2, 1_000),
        ("halt", HostMode::Ring, 1, 1_000),
        ("early", HostMode::Ring, 1, 0),
        ("sync", HostMode::Sync, 1, 0),
    ] {
        set_mode(mode)?;
        set_latency(latency)?;
        for rep in 0..s.reps {
            let events = pnp::stats();
            let (wall, _) = workload_run(&region, tasks, pages, 0)?;
            let after = pnp::stats();
            kprintln!(
                "bench: pnp_{name} rep={rep} ops={} total_ns={wall} events={} slept={} halted={} early={} handler_ns={}",
                tasks * pages,
                after.events - events.events,
                after.slept - events.slept,
                after.halted - events.halted,
                after.tokens.resolved_before_event - events.tokens.resolved_before_event,
                cycles_to_ns(after.handler_cycles - events.handler_cycles)
            );
        }
    }
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
    let boot_mode = pnp::host_mode();
    let reps = if s.quick { 1 } else { s.reps.min(3) };
    for &latency in latencies {
        set_latency(latency)?;
        for &tasks in tasks_set {
            for (mode_name, mode) in [("sync", HostMode::Sync), ("ring", HostMode::Ring)] {
                set_mode(mode)?;
                for rep in 0..reps {
                    let (events, syncs, stalled) = (
                        host_counter(HostCounter::EventsDelivered),
                        host_counter(HostCounter::SyncWaits),
                        host_counter(HostCounter::SyncWaitMicros),
                    );
                    let (wall, busy) = workload_run(&region, tasks, pages, compute_ns)?;
                    kprintln!(
                        "bench: workload_{mode_name} rep={rep} tasks={tasks} pages={pages} compute_ns={compute_ns} latency_ns={latency} wall_ns={wall} busy_ns={busy} events={} sync_waits={} stalled_ns={}",
                        host_counter(HostCounter::EventsDelivered) - events,
                        host_counter(HostCounter::SyncWaits) - syncs,
                        (host_counter(HostCounter::SyncWaitMicros) - stalled) * 1000
                    );
                }
            }
        }
    }
    set_mode(boot_mode)
}

/// The guest's cost per event as the number of outstanding tokens grows.
fn scaling(s: Settings) -> Result<()> {
    let region = region()?;
    let counts: &[u64] = if s.quick { &[1, 8] } else { &[1, 2, 4, 8, 16, 24] };
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ring)?;
    set_latency(50_000_000)?;
    for &outstanding in counts {
        for rep in 0..s.reps.min(3) {
            let before = pnp::stats();
            let peak = host_counter(HostCounter::Outstanding);
            let (wall, _) = workload_run(&region, outstanding, 1, 0)?;
            let after = pnp::stats();
            kprintln!(
                "bench: scaling rep={rep} outstanding={outstanding} events={} handler_ns={} wall_ns={wall} outstanding_before={peak}",
                after.events - before.events,
                cycles_to_ns(after.handler_cycles - before.handler_cycles)
            );
        }
    }
    set_mode(boot_mode)
}

/// Runs the benchmarks the command line names, then ends the run.
pub fn run(cmdline: Cmdline<'static>) -> ! {
    let names = cmdline.get("bench").unwrap_or("all");
    let settings = Settings {
        quick: cmdline.words().any(|(k, _)| k == "bench-quick"),
        reps: cmdline.get("bench-reps").and_then(|r| r.parse().ok()).unwrap_or(5).clamp(1, 50),
    };
    kprintln!("bench: start tsc_khz={} quick={}", time::tsc_khz(), u8::from(settings.quick));
    let mut failed = false;
    for name in ALL.iter().filter(|n| names == "all" || names.split(',').any(|x| x == **n)) {
        let result = match *name {
            "io" => io(settings),
            "inject" => inject(settings),
            "pnp" => pnp_roundtrip(settings),
            "workload" => workload(settings),
            "scaling" => scaling(settings),
            _ => Ok(()),
        };
        if let Err(BenchError(why)) = result {
            kprintln!("bench-error: {name}: {why}");
            failed = true;
        }
    }
    kprintln!("bench: done");
    crate::arch::exit::exit(if failed { pvagent_abi::exit::FAILURE } else { pvagent_abi::exit::SUCCESS })
}
