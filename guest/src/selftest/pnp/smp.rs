//! The page-not-present protocol on several vCPUs at once: every vCPU has its own ring and
//! event area, and a token belongs to the vCPU it was delivered to (docs/abi.md).

use core::sync::atomic::AtomicU32;

use super::*;
use crate::arch::{self, percpu, smp, time};
use crate::task::remote::{self, RemoteTask};

/// Bit `cpu`: that vCPU's reader is parked on its token.
static PARKED: AtomicU32 = AtomicU32::new(0);
/// Bit `cpu`: that vCPU's reader has its data.
static READ_DONE: AtomicU32 = AtomicU32::new(0);

/// Stays runnable on its vCPU until the reader placed after it has parked (so that the reader
/// parks rather than halting: the path by construction), says so, then sleeps until the reader
/// is done. Returns what its vCPU's protocol counted meanwhile: events, tasks parked, HLT-loop
/// waits and spurious events, 16 bits each.
fn bystander(_: u64) -> u64 {
    let cpu = percpu::index();
    let before = pnp::stats();
    let done = || READ_DONE.load(Ordering::SeqCst) & (1 << cpu) != 0;
    while pnp::stats().slept == before.slept && !done() {
        task::yield_now();
    }
    if pnp::stats().slept != before.slept {
        PARKED.fetch_or(1 << cpu, Ordering::SeqCst);
        smp::wake(0);
    }
    while !done() {
        task::sleep_ticks(1);
    }
    let after = pnp::stats();
    ((after.events - before.events) << 48)
        | ((after.slept - before.slept) << 32)
        | ((after.halted - before.halted) << 16)
        | (after.spurious - before.spurious)
}

/// Per vCPU: what the reader's own vCPU counted across its read, as the bystander packs it.
static READER_SAW: [AtomicU64; arch::MAX_CPUS] = [const { AtomicU64::new(0) }; arch::MAX_CPUS];

/// Runs a CPL 3 task that reads two words at `gpa` and waits for it. At CPL 3 the access is
/// retried after the task's wait (on PVM a CPL 0 access completes at once and its event comes
/// after it, possibly long after: the path would not be forced), so the task cannot finish
/// before its event, and this task, blocked in the join, leaves the bystander as the one to
/// switch to: the reader parks.
fn reader(gpa: u64) -> u64 {
    let before = pnp::stats();
    let value = match task::spawn_user("pnp-smp-reader", user_read_two_words, gpa).map(task::join) {
        Ok(Ok(ExitStatus::Returned(value))) => value,
        _ => u64::MAX,
    };
    let after = pnp::stats();
    READER_SAW[percpu::index()].store(
        ((after.events - before.events) << 48)
            | ((after.slept - before.slept) << 32)
            | ((after.halted - before.halted) << 16)
            | (after.spurious - before.spurious),
        Ordering::SeqCst,
    );
    READ_DONE.fetch_or(1 << percpu::index(), Ordering::SeqCst);
    value
}

fn placed(r: Result<RemoteTask, remote::PostError>) -> Result<RemoteTask, Failure> {
    r.map_err(|e| fail(format_args!("placing a task: {e:?}")))
}

fn joined(t: RemoteTask) -> Result<u64, Failure> {
    let cpu = t.cpu();
    t.join().map_err(|e| fail(format_args!("the task on vCPU {cpu}: {e:?}")))
}

/// A CPL 3 task on every vCPU but the boot vCPU reads the same held page: each vCPU takes its own
/// event on its own ring and parks its reader on its own token (whatever the token's number,
/// which may be the same on two vCPUs); one fetch; when the page is released, each vCPU's
/// resolution wakes its own reader with the page's data.
pub(super) fn every_cpu_parks_on_its_own_page_not_present_token() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)?;
    let mut held = Held::new();
    held.hold(gpa)?;
    let fetched = counter(HostCounter::PagesFetched)?;
    let boot_before = pnp::stats();
    let cpus = arch::platform().cpus.count();
    let all = ((1u32 << cpus) - 1) & !1;
    PARKED.store(0, Ordering::SeqCst);
    READ_DONE.store(0, Ordering::SeqCst);
    let mut tasks: heapless::Vec<(RemoteTask, RemoteTask), { arch::MAX_CPUS }> = heapless::Vec::new();
    for cpu in 1..cpus {
        let b = placed(remote::spawn_kernel_on(cpu, "pnp-smp-bystander", bystander, 0))?;
        let r = placed(remote::spawn_kernel_on(cpu, "pnp-smp-reader-join", reader, gpa + 16 * cpu as u64))?;
        let _ = tasks.push((b, r));
    }
    // Waited for as an event (each bystander wakes this vCPU); the bound only turns a reader that
    // never parks into a failure instead of a hang.
    let deadline_ns = time::now_ns() + 10_000_000_000;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (PARKED.load(Ordering::SeqCst) == all || time::now_ns() > deadline_ns).then_some(()));
    }
    let parked = PARKED.load(Ordering::SeqCst);
    // Released and joined before anything is judged, so that a failure leaves no task waiting.
    let released = held.release_all()?;
    let mut results: heapless::Vec<(u64, u64), { arch::MAX_CPUS }> = heapless::Vec::new();
    for (r, b) in tasks.into_iter().map(|(b, r)| (r, b)) {
        let _ = results.push((joined(r)?, joined(b)?));
    }
    // Per vCPU from 1: (events, parked tasks, HLT-loop waits, spurious events), each its own.
    let counts: heapless::Vec<[u64; 4], { arch::MAX_CPUS }> =
        results.iter().map(|&(_, counted)| [48, 32, 16, 0].map(|shift| (counted >> shift) & 0xFFFF)).collect();
    let expected: heapless::Vec<[u64; 4], { arch::MAX_CPUS }> = (1..cpus).map(|_| [1, 1, 0, 0]).collect();
    let boot = pnp::stats();
    let reader_saw: heapless::Vec<[u64; 4], { arch::MAX_CPUS }> = (1..cpus)
        .map(|cpu| [48, 32, 16, 0].map(|shift| (READER_SAW[cpu].load(Ordering::SeqCst) >> shift) & 0xFFFF))
        .collect();
    ensure_eq!(
        counts,
        expected,
        "each vCPU's [events, parked tasks, HLT-loop waits, spurious events] from vCPU 1 on (across its read: {reader_saw:?}); vCPU 0's meanwhile: [{}, {}, {}, {}]",
        boot.events - boot_before.events,
        boot.slept - boot_before.slept,
        boot.halted - boot_before.halted,
        boot.spurious - boot_before.spurious
    );
    for (cpu, &(data, _)) in (1..cpus).zip(&results) {
        let at = gpa + 16 * cpu as u64;
        let expected = backing_pattern(at) ^ backing_pattern(at + 8).rotate_left(1);
        ensure_eq_hex!(data, expected, "vCPU {cpu}'s reader's data at {at:#x}");
    }
    ensure_eq!(parked, all, "vCPUs whose reader parked on the held page (bit per vCPU)");
    ensure_eq!(released, 1, "held pages released");
    ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 1, "fetches of the shared page");
    Ok(())
}
