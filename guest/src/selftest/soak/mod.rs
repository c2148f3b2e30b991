//! The soak (issue 15): a seeded random storm of every event kind on every vCPU, checking the
//! invariants throughout. Run on request (`tests=soak::storm`, `cargo xtask soak`), against the
//! host stub's pager serving versioned pages (`--pnp-versioned`).
//!
//! The storm goes in rounds until the events it survived reach `soak-events=` (default
//! [`DEFAULT_EVENTS`]). Each round the runner draws, from `soak-seed=` and the round, the
//! pager's mode (ring, sync, KVM's async page fault ABI served by the host stub, #VE: each this
//! run offers), its fetch latency range and its resolution timing, and places two workers on
//! every vCPU, each with its own pages and its own stream of operations (`worker.rs`): reads at
//! CPL 0 (interrupts on and off) and at CPL 3, writes, evictions, pages resolved before their
//! event, split locks. Every guest choice comes from the seed, so a run is reproduced by its
//! seed; the host's timings are its own.
//!
//! Checked throughout: every word read is what the page must hold (its address and version in
//! the header, the pattern or the owner's last write elsewhere), by every worker after every
//! access. Checked after every round, once every vCPU has taken what the host sent it: each
//! token resolved exactly once (the guest's events, #VEs and consumed resolutions, summed over
//! the vCPUs, equal the host's delivered events, #VEs and written resolutions; no token left
//! waiting or kept on any vCPU; nothing rejected, spurious, stale or failed), each split lock
//! made with detection on raised exactly one #AC, and no task lost (every worker and CPL 3
//! task joined with its result, as many tasks as before on every vCPU). A mismatch fails the
//! test with the seed and the round. Nothing waits on time: a round ends when its workers do,
//! however slow the machine (the run's `--timeout` bounds a hang).

mod tally;
mod worker;

use core::fmt::Write;
use core::sync::atomic::Ordering;

use pvagent_abi::pnp::{HostCounter, HostMode, ResolutionTiming, versioned_header};
use pvagent_abi::report::Need;
use pvagent_abi::sld::HostPolicy;

use super::pnp::{counter, fresh_pages, pager};
use super::{Failure, Reason, SelfTest, TestResult, fail};
use crate::arch::{self, smp};
use crate::pv::ac::policy::Mode;
use crate::pv::{ac, kvm_apf, pnp, ve};
use crate::task::remote;
use crate::{ensure, ensure_eq, kprintln};
use tally::Tally;
use worker::{MAX_WORKERS, OPS, Orders, WORKERS};

/// Command line keys: the storm's size in events, and its seed.
pub const EVENTS_KEY: &str = "soak-events";
pub const SEED_KEY: &str = "soak-seed";

/// Events when `soak-events=` is not given.
pub const DEFAULT_EVENTS: u64 = 2_000;
/// Seed when `soak-seed=` is not given.
pub const DEFAULT_SEED: u64 = 1;
/// Operations per worker per round.
const OPS_PER_ROUND: u64 = 24;
/// Rounds between two progress lines.
const PROGRESS_EVERY: u64 = 250;
/// Workers per vCPU: a task that waits for a page has another to switch to.
const WORKERS_PER_CPU: usize = 2;

pub const TESTS: &[SelfTest] = &[SelfTest::on_request("soak::storm", storm).needs(&[Need::Pager])];

/// SplitMix64: small, and every seed gives a full-period stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The first check that failed in this storm, in any worker.
static FIRST_FAILURE: spin::Mutex<Option<Reason>> = spin::Mutex::new(None);

/// Records a failed check, unless one is recorded already (the first says most).
pub fn fail_first(args: core::fmt::Arguments<'_>) {
    let mut first = FIRST_FAILURE.lock();
    if first.is_none() {
        let mut reason = Reason::new();
        let _ = reason.write_fmt(args);
        *first = Some(reason);
    }
}

/// A number from the command line, in decimal or `0x` hex.
fn number(key: &str, default: u64) -> Result<u64, Failure> {
    let Some(text) = crate::boot::info::get().cmdline.get(key) else { return Ok(default) };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| fail(format_args!("{key}={text} is not a number")))
}

/// The modes a round may put the pager in: those this run offers and the host stub serves.
fn modes() -> heapless::Vec<HostMode, 4> {
    let mut modes = heapless::Vec::new();
    if pnp::host_mode() == HostMode::KvmApfKernel {
        // KVM serves the run: it stays in that mode.
        let _ = modes.push(HostMode::KvmApfKernel);
        return modes;
    }
    let _ = modes.push(HostMode::Ring);
    let _ = modes.push(HostMode::Sync);
    if kvm_apf::enabled() {
        let _ = modes.push(HostMode::KvmApf);
    }
    if ve::registered() {
        let _ = modes.push(HostMode::Ve);
    }
    modes
}

/// Puts the pager back as the runner found it, whatever the storm's outcome.
struct Restore(HostMode);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = pnp::set_timing(ResolutionTiming::WhenReady);
        if pnp::host_mode() != self.0 && pnp::set_host_mode(self.0).is_err() {
            kprintln!("soak: cannot set the pager's mode back to {:?}", self.0);
        }
    }
}

fn storm() -> TestResult {
    let events = number(EVENTS_KEY, DEFAULT_EVENTS)?;
    let seed = number(SEED_KEY, DEFAULT_SEED)?;
    let region = pager()?;
    // The host serves versions, or the checks below could not tell a stale page: a fresh
    // page's header says which.
    let probe = fresh_pages(&region, 1)?;
    // SAFETY: a fresh page of the demand region, identity mapped for the kernel.
    let header =
        unsafe { [core::ptr::read_volatile(probe as *const u64), core::ptr::read_volatile((probe + 8) as *const u64)] };
    if header[0] == pvagent_abi::pnp::backing_pattern(probe) {
        return Err(Failure::Skip(
            "the pager serves pages without versions: run the host stub with --pnp-versioned (cargo xtask soak)",
        ));
    }
    ensure!(
        header == versioned_header(probe, 1),
        "a fresh page's header is [{:#x}, {}], expected [{:#x}, 1] (its address, version 1)",
        header[0],
        header[1],
        versioned_header(probe, 1)[0]
    );
    let split_locks = ac::trigger::available()
        && ac::enumeration().available()
        && matches!(ac::trigger::host_policy(), Ok(Ok(HostPolicy::InjectIfEnabled)));
    ac::with_mode(Mode::Warn, || run_storm(&region, events, seed, split_locks))
}

fn run_storm(region: &pnp::Region, events: u64, seed: u64, split_locks: bool) -> TestResult {
    let cpus = arch::platform().cpus.count();
    ensure!((0..cpus).all(smp::is_online), "a vCPU is not online");
    let workers = (cpus * WORKERS_PER_CPU).min(MAX_WORKERS);
    for w in WORKERS.iter().take(workers) {
        let mut w = w.lock();
        *w = worker::Worker::new();
        w.base = fresh_pages(region, worker::PAGES as u64)?;
    }
    *FIRST_FAILURE.lock() = None;
    OPS.reset();
    let _restore = Restore(pnp::host_mode());
    let modes = modes();
    let mut rng = Rng::new(seed);
    let tasks_before = crate::task::spawned_everywhere();
    let start = Tally::now(cpus)?;
    let ac_before = ac::stats().kernel_split_locks;
    let started_ns = arch::time::now_ns();
    let mut round = 0u64;
    let mut rounds_by_mode = [0u64; 5];
    let survived = loop {
        round += 1;
        let mode = modes[rng.below(modes.len() as u64) as usize];
        let min_us = rng.below(500);
        let max_us = min_us + rng.below(2_500);
        // A resolution only after its event was taken forces every waiting path; not in KVM's
        // modes, whose "page ready" follows the fetch.
        let timing = if !mode.is_kvm_apf() && rng.below(3) == 0 {
            ResolutionTiming::AfterEventTaken
        } else {
            ResolutionTiming::WhenReady
        };
        let round_seed = rng.next() as u32;
        if pnp::host_mode() != mode {
            pnp::set_host_mode(mode).map_err(|e| fail(format_args!("round {round}: set mode {mode:?}: {e:?}")))?;
        }
        pnp::set_latency_ns(min_us * 1000, max_us * 1000).map_err(|e| fail(format_args!("set latency: {e:?}")))?;
        pnp::set_timing(timing).map_err(|e| fail(format_args!("set timing {timing:?}: {e:?}")))?;
        rounds_by_mode[mode as usize] += 1;
        let mut placed: heapless::Vec<remote::RemoteTask, MAX_WORKERS> = heapless::Vec::new();
        for w in 0..workers {
            let orders = Orders { worker: w, ops: OPS_PER_ROUND, split_locks, seed: round_seed };
            let task = remote::spawn_kernel_on(w % cpus, "soak-worker", worker::run, orders.pack())
                .map_err(|e| fail(format_args!("round {round}: placing worker {w}: {e:?}")))?;
            let _ = placed.push(task);
        }
        // Every worker is joined before anything is judged: none is left behind.
        let mut failed_workers = 0;
        for task in placed {
            let cpu = task.cpu();
            match task.join() {
                Ok(0) => {}
                Ok(_) => failed_workers += 1,
                Err(e) => fail_first(format_args!("a worker on vCPU {cpu} could not run: {e:?}")),
            }
        }
        if let Some(reason) = FIRST_FAILURE.lock().take() {
            return Err(fail(format_args!(
                "seed {seed:#x} round {round} ({mode:?}, {min_us}..{max_us} us, {timing:?}, {failed_workers} workers failed): {reason}"
            )));
        }
        // Every vCPU has taken what the host sent it: the tokens balance.
        let now = Tally::settled(cpus, &start).map_err(|f| in_round(f, seed, round, mode))?;
        let delta = now.since(&start);
        let ac = ac::stats().kernel_split_locks - ac_before;
        ensure_eq!(
            ac,
            OPS.split_locks_detected.load(Ordering::Relaxed),
            "seed {seed:#x} round {round}: split-lock #ACs taken, against split locks made with detection on"
        );
        ensure_eq!(
            crate::task::spawned_everywhere(),
            tasks_before,
            "seed {seed:#x} round {round}: tasks on every vCPU after the workers were joined"
        );
        let survived = delta.events() + ac + OPS.evictions.load(Ordering::Relaxed);
        if survived >= events {
            break (delta, ac, survived);
        }
        // A long soak says how far it got now and then (a run stopped early still has figures).
        if round.is_multiple_of(PROGRESS_EVERY) {
            let ms = (arch::time::now_ns() - started_ns) / 1_000_000;
            kprintln!("soak: round {round}, {ms} ms: {survived} of {events} events survived, every check held");
        }
    };
    let (delta, ac, total) = survived;
    let ms = (arch::time::now_ns() - started_ns) / 1_000_000;
    let o = |c: &core::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    kprintln!(
        "soak: seed {seed:#x}, {cpus} vCPUs, {workers} workers, {round} rounds (ring {}, sync {}, kvm-apf {}, ve {}), {} ms: {total} events survived",
        rounds_by_mode[HostMode::Ring as usize],
        rounds_by_mode[HostMode::Sync as usize],
        rounds_by_mode[HostMode::KvmApf as usize] + rounds_by_mode[HostMode::KvmApfKernel as usize],
        rounds_by_mode[HostMode::Ve as usize],
        ms
    );
    kprintln!("soak: events by kind: {delta}, split-lock #AC {ac}, evictions {}", o(&OPS.evictions));
    kprintln!(
        "soak: operations: {} CPL 0 reads, {} with interrupts off, {} CPL 3 reads, {} writes, {} evictions ({} refused: page in flight; {} more of absent pages), {} pages resolved before their event, {} split locks ({} with detection on)",
        o(&OPS.kernel_reads),
        o(&OPS.irqs_off_reads),
        o(&OPS.user_reads),
        o(&OPS.writes),
        o(&OPS.evictions),
        o(&OPS.evictions_refused),
        o(&OPS.evictions_of_absent),
        o(&OPS.immediate),
        o(&OPS.split_locks),
        o(&OPS.split_locks_detected)
    );
    if !split_locks {
        kprintln!("soak: no split locks: this host lacks the trigger, detection or the default policy");
    }
    Ok(())
}

/// A failure of the round's accounting, with the seed and round that reproduce it.
fn in_round(failure: Failure, seed: u64, round: u64, mode: HostMode) -> Failure {
    match failure {
        Failure::Fail(reason) => fail(format_args!("seed {seed:#x} round {round} ({mode:?}): {reason}")),
        skip => skip,
    }
}

/// The host's counter `c`.
fn host(c: HostCounter) -> Result<u64, Failure> {
    counter(c)
}
