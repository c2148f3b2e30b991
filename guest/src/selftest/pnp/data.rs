//! Many tasks and pages, eviction, the ring/sync workload and the accounting at the end: data
//! is right and every token is balanced.

use super::*;

/// Reads `pages` pages from `base` (one word at two offsets each) and returns their XOR.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_xor_pages(arg: u64) -> ! {
    let (base, pages) = (arg & !0xFFF, arg & 0xFFF);
    let mut acc = 0u64;
    let mut i = 0;
    while i < pages {
        let page = base + i * 4096;
        acc ^= user::read_u64(page + 64).rotate_left(i as u32) ^ user::read_u64(page + 2048);
        i += 1;
    }
    user::exit(acc)
}

pub(super) fn expected_xor(base: u64, pages: u64) -> u64 {
    (0..pages).fold(0, |acc, i| {
        let page = base + i * 4096;
        acc ^ backing_pattern(page + 64).rotate_left(i as u32) ^ backing_pattern(page + 2048)
    })
}

pub(super) fn kernel_xor_pages(arg: u64) -> u64 {
    let (base, pages) = (arg & !0xFFF, arg & 0xFFF);
    (0..pages).fold(0, |acc, i| {
        let page = base + i * 4096;
        acc ^ read(page + 64).rotate_left(i as u32) ^ read(page + 2048)
    })
}

fn run_workload(region: &Region, tasks: u64, pages: u64) -> Result<u64, Failure> {
    let mut ids = heapless::Vec::<(TaskId, u64), 16>::new();
    for t in 0..tasks {
        let base = fresh_pages(region, pages)?;
        let arg = base | pages;
        let id = if t % 2 == 0 {
            task::spawn_user("pnp-worker-user", user_xor_pages, arg)
        } else {
            task::spawn_kernel("pnp-worker", kernel_xor_pages, arg)
        };
        let _ = ids.push((spawned(id)?, base));
    }
    let start = crate::arch::time::now_ns();
    for (id, base) in ids {
        ensure_eq!(join(id)?, ExitStatus::Returned(expected_xor(base, pages)), "worker data");
    }
    Ok(crate::arch::time::now_ns() - start)
}

pub(super) fn many_tasks_many_pages_get_the_right_data() -> TestResult {
    let region = pager()?;
    latency(100, 2_000)?;
    run_workload(&region, 8, 4)?;
    Ok(())
}

pub(super) fn evicted_page_comes_back_with_its_contents() -> TestResult {
    let region = pager()?;
    latency(500, 500)?;
    let gpa = fresh_pages(&region, 1)?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "first fetch");
    write(gpa + 16, 0xC0FFEE);
    let fetched = counter(HostCounter::PagesFetched)?;
    pnp::evict(gpa, 1).map_err(|e| fail(format_args!("evict: {e:?}")))?;
    ensure_eq_hex!(read(gpa + 16), 0xC0FFEE, "the word written before eviction");
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "an untouched word");
    ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 1, "fetches after eviction");
    Ok(())
}

/// A LOCKed read-modify-write at CPL 0 to an absent page. On PVM its emulated load delivers an
/// event, and the page stays absent until the event is taken (`AfterEventTaken`), so KVM cannot
/// complete the locked write and reports an emulation failure, which the host serves by making
/// the page present (a synchronous wait) before the instruction runs again. A KVM that stops
/// before the instruction delivers the event and the task waits as for any access. Either way
/// the add happens once, on the page's true contents.
pub(super) fn locked_add_to_an_absent_page_adds_once() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    let word = gpa + 0x18;
    let (events, sync) = (counter(HostCounter::EventsDelivered)?, counter(HostCounter::SyncWaits)?);
    // SAFETY: `word` is an 8-byte aligned word of the demand region, identity mapped for the
    // kernel and this test's alone; the locked add is what makes the host page the memory in.
    unsafe { core::arch::asm!("lock add qword ptr [{word}], 1", word = in(reg) word, options(nostack)) };
    ensure_eq_hex!(read(word), backing_pattern(word).wrapping_add(1), "the word after one locked add");
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "a word beside it");
    if ring_mode() {
        ensure_eq!(counter(HostCounter::EventsDelivered)? - events, 1, "events for the page");
    } else {
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits in sync mode");
    }
    Ok(())
}

pub(super) fn workload_ring_vs_sync() -> TestResult {
    // Each page-not-present round trip costs the guest kernel a few hundred instructions; on
    // the PVM /dev/kvm of these machines that is ~1 ms of emulation, so the latency must be
    // well above that for overlap to show (on VMX the same holds at microseconds).
    const TASKS: u64 = 8;
    const PAGES: u64 = 4;
    const LATENCY_US: u64 = 5_000;
    let region = pager()?;
    let mode = pnp::host_mode();
    // The asynchronous mode compared with sync: the run's own, or the ring.
    let (async_mode, name) = match mode {
        HostMode::KvmApf => (HostMode::KvmApf, "kvm-apf"),
        HostMode::Ve => (HostMode::Ve, "ve"),
        HostMode::KvmApfKernel => {
            return Err(Failure::Skip("a kvm-apf-kernel run cannot switch to sync mode to compare with"));
        }
        HostMode::Sync | HostMode::Ring => (HostMode::Ring, "ring"),
    };
    latency(LATENCY_US, LATENCY_US)?;
    let set = |m| pnp::set_host_mode(m).map_err(|e| fail(format_args!("set mode {m:?}: {e:?}")));
    set(HostMode::Sync)?;
    let sync_ns = run_workload(&region, TASKS, PAGES);
    set(async_mode)?;
    let ring_ns = run_workload(&region, TASKS, PAGES);
    set(mode)?;
    let (sync_ns, ring_ns) = (sync_ns?, ring_ns?);
    kprintln!(
        "pnp: workload {TASKS} tasks x {PAGES} absent pages at {LATENCY_US} us: sync {}.{:03} ms, {name} {}.{:03} ms ({}.{}x)",
        sync_ns / 1_000_000,
        sync_ns / 1000 % 1000,
        ring_ns / 1_000_000,
        ring_ns / 1000 % 1000,
        sync_ns / ring_ns.max(1),
        sync_ns * 10 / ring_ns.max(1) % 10
    );
    Ok(())
}

pub(super) fn accounting_is_balanced() -> TestResult {
    pager()?;
    let s = pnp::stats();
    kprintln!(
        "pnp: guest: {} events ({} parked tasks, {} HLT-loop waits, {} resolved before the event), {} resolutions consumed, {} failed pages, {} rejected, {} spurious, {} corrupt ring heads",
        s.events,
        s.slept,
        s.halted,
        s.tokens.resolved_before_event,
        s.consumed,
        s.tokens.failed,
        s.tokens.rejected(),
        s.spurious,
        s.ring_corrupt
    );
    ensure_eq!(pnp::pending(), (0, 0), "tokens waiting and early resolutions left in the guest");
    ensure_eq!(counter(HostCounter::Outstanding)?, 0, "tokens outstanding at the host");
    ensure_eq!((s.tokens.rejected(), s.spurious, s.ring_corrupt, s.stale_wakes), (0, 0, 0, 0), "protocol errors");
    if ring_mode() {
        ensure!(s.events > 0 && s.consumed > 0, "no event went through the ring in ring mode");
    }
    Ok(())
}
