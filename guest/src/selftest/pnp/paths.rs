//! Each path an event can take (park, HLT loop, already resolved, synchronous, failed page, N
//! tokens outstanding), forced by construction and checked by name.

use core::sync::atomic::AtomicBool;

use super::*;

static B_STEPS: AtomicU64 = AtomicU64::new(0);
static A_DONE: AtomicBool = AtomicBool::new(false);
static B_STEPS_SEEN_BY_A: AtomicU64 = AtomicU64::new(0);

pub(super) fn absent_page_parks_task_while_another_runs() -> TestResult {
    fn task_a(gpa: u64) -> u64 {
        let value = read(gpa);
        B_STEPS_SEEN_BY_A.store(B_STEPS.load(Ordering::SeqCst), Ordering::SeqCst);
        A_DONE.store(true, Ordering::SeqCst);
        value
    }
    fn task_b(_: u64) -> u64 {
        while !A_DONE.load(Ordering::SeqCst) {
            B_STEPS.fetch_add(1, Ordering::SeqCst);
            task::yield_now();
        }
        0
    }
    let region = pager()?;
    // The resolution comes only after task A took its event: A parks, B runs meanwhile.
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    B_STEPS.store(0, Ordering::SeqCst);
    A_DONE.store(false, Ordering::SeqCst);
    let (events, slept, sync) = (pnp::stats().events, pnp::stats().slept, counter(HostCounter::SyncWaits)?);
    let a = spawned(task::spawn_kernel("pnp-a", task_a, gpa))?;
    let b = spawned(task::spawn_kernel("pnp-b", task_b, 0))?;
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(gpa)), "task A's data");
    join(b)?;
    let seen = B_STEPS_SEEN_BY_A.load(Ordering::SeqCst);
    if ring_mode() {
        ensure_eq!(pnp::stats().events - events, 1, "events taken");
        ensure_eq!(pnp::stats().slept - slept, 1, "tasks parked (the park path)");
        ensure!(seen > 0, "task B made no progress while task A was parked on its page");
    } else {
        ensure_eq!(seen, 0, "in sync mode the vCPU waits, so task B cannot have run");
        ensure_eq!(pnp::stats().events - events, 0, "events in sync mode");
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits");
    }
    Ok(())
}

#[unsafe(link_section = ".user_text")]
pub(super) extern "sysv64" fn user_read_two_words(gpa: u64) -> ! {
    let first = user::read_u64(gpa);
    let second = user::read_u64(gpa + 8);
    user::exit(first ^ second.rotate_left(1))
}

pub(super) fn user_task_resumes_with_the_right_data() -> TestResult {
    fn bystander(_: u64) -> u64 {
        task::yield_now();
        0
    }
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)? + 0x100;
    let (slept, kvm_slept) = (pnp::stats().slept, crate::pv::kvm_apf::stats().slept);
    let user = spawned(task::spawn_user("pnp-user", user_read_two_words, gpa))?;
    let other = spawned(task::spawn_kernel("pnp-bystander", bystander, 0))?;
    let expected = backing_pattern(gpa) ^ backing_pattern(gpa + 8).rotate_left(1);
    ensure_eq!(join(user)?, ExitStatus::Returned(expected), "the CPL 3 task's result");
    join(other)?;
    if ring_mode() {
        ensure_eq!(pnp::stats().slept - slept, 1, "the CPL 3 task was parked (the park path)");
    } else if kvm_mode() {
        // KVM's "page not present" for a CPL 3 access: the same park, on KVM's token.
        ensure_eq!(crate::pv::kvm_apf::stats().slept - kvm_slept, 1, "the CPL 3 task was parked on KVM's token");
    }
    Ok(())
}

pub(super) fn two_tasks_on_one_absent_page_each_get_a_token() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)?;
    // The page is held: both tasks reach it while it is still being fetched, and park.
    let mut held = Held::new();
    held.hold(gpa)?;
    let before = pnp::stats();
    let fetched = counter(HostCounter::PagesFetched)?;
    // A CPL 3 task and a kernel task read the same page at different offsets.
    let (kvm_before, sync) = (crate::pv::kvm_apf::stats(), counter(HostCounter::SyncWaits)?);
    let user = spawned(task::spawn_user("pnp-share-user", user_read_two_words, gpa + 0x200))?;
    let kernel = spawned(task::spawn_kernel("pnp-share-kernel", kernel_xor_pages, gpa | 1))?;
    if kvm_mode() {
        // KVM gives a page on its way no second token. The CPL 3 task runs first and parks on
        // the page's one token; the kernel task's access (CPL 0) waits for the page, which
        // starts its fetch (a synchronous wait releases a held page); the first then wakes.
        ensure_eq!(
            join(user)?,
            ExitStatus::Returned(backing_pattern(gpa + 0x200) ^ backing_pattern(gpa + 0x208).rotate_left(1)),
            "the CPL 3 task's data"
        );
        ensure_eq!(join(kernel)?, ExitStatus::Returned(expected_xor(gpa, 1)), "the kernel task's data");
        let after = crate::pv::kvm_apf::stats();
        ensure_eq!((after.events - kvm_before.events, after.slept - kvm_before.slept), (1, 1), "KVM tokens, parks");
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits (the kernel task's)");
        ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 1, "fetches of the shared page");
        return Ok(());
    }
    if ring_mode() {
        yield_until_parked(2)?;
        let after = pnp::stats();
        ensure_eq!(after.events - before.events, 2, "events: one token per waiting task");
        ensure_eq!(after.slept - before.slept, 2, "tasks parked on the shared page");
    }
    let released = held.release_all()?;
    if ring_mode() {
        ensure_eq!(released, 1, "held pages released");
    }
    ensure_eq!(
        join(user)?,
        ExitStatus::Returned(backing_pattern(gpa + 0x200) ^ backing_pattern(gpa + 0x208).rotate_left(1)),
        "the CPL 3 task's data"
    );
    ensure_eq!(join(kernel)?, ExitStatus::Returned(expected_xor(gpa, 1)), "the kernel task's data");
    ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 1, "fetches of the shared page");
    Ok(())
}

pub(super) fn resolution_before_event_does_not_park() -> TestResult {
    let region = pager()?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::set_page_behaviour(gpa, PageBehaviour::Immediate).map_err(|e| fail(format_args!("{e:?}")))?;
    let before = pnp::stats();
    let host_before = counter(HostCounter::ResolvedBeforeEvent)?;
    let delivered_before = counter(HostCounter::EventsDelivered)?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    if ring_mode() {
        let after = await_events(before.events, delivered_before)?;
        ensure_eq!(after.events - before.events, 1, "events taken");
        ensure_eq!(
            counter(HostCounter::ResolvedBeforeEvent)? - host_before,
            1,
            "host: resolutions written before their event"
        );
        ensure_eq!(
            after.tokens.resolved_before_event - before.tokens.resolved_before_event,
            1,
            "guest: events found already resolved"
        );
        ensure_eq!((after.slept - before.slept, after.halted - before.halted), (0, 0), "waits (slept, halted)");
    } else {
        ensure_eq!(pnp::stats().events - before.events, 0, "events in sync mode");
    }
    Ok(())
}

pub(super) fn failed_page_ends_only_its_task() -> TestResult {
    fn bystander(_: u64) -> u64 {
        for _ in 0..3 {
            task::yield_now();
        }
        7
    }
    // Ring mode only (the table says so): in sync mode a failed page stops the guest, which an
    // end-to-end test covers.
    let region = pager()?;
    // The failure is reported after the victim parked: the wake-up carries "failed".
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::set_page_behaviour(gpa, PageBehaviour::Fail).map_err(|e| fail(format_args!("{e:?}")))?;
    let failed = counter(HostCounter::ResolvedFailed)?;
    let (failed_seen, slept) = (pnp::stats().tokens.failed, pnp::stats().slept);
    let victim = spawned(task::spawn_user("pnp-victim", user_read_two_words, gpa))?;
    let other = spawned(task::spawn_kernel("pnp-bystander", bystander, 0))?;
    match join(victim)? {
        ExitStatus::Killed(reason) if let Some(failed) = pnp::PageFailed::from_reason(&reason) => {
            ensure_eq_hex!(failed.gpa, gpa, "failed page reported")
        }
        other => return Err(fail(format_args!("the task that touched a failed page ended with {other:?}"))),
    }
    ensure_eq!(join(other)?, ExitStatus::Returned(7), "the bystander");
    ensure_eq!(counter(HostCounter::ResolvedFailed)? - failed, 1, "failed resolutions");
    ensure_eq!(pnp::stats().tokens.failed - failed_seen, 1, "failed pages the guest saw");
    ensure_eq!(pnp::stats().slept - slept, 1, "the victim parked before it was told (the park path)");
    Ok(())
}

pub(super) fn interrupts_off_access_takes_the_sync_path() -> TestResult {
    let region = pager()?;
    latency(2_000, 2_000)?;
    let gpa = fresh_pages(&region, 1)?;
    let (events, sync) = (pnp::stats().events, counter(HostCounter::SyncWaits)?);
    let value = {
        let _irq = IrqGuard::new();
        read(gpa)
    };
    ensure_eq_hex!(value, backing_pattern(gpa), "data");
    ensure_eq!(pnp::stats().events - events, 0, "events taken with interrupts off");
    ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits");
    Ok(())
}

pub(super) fn single_task_waits_in_the_hlt_loop() -> TestResult {
    let region = pager()?;
    // The resolution comes only after the event was taken, and nothing else can run: the HLT loop.
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    ensure!(!task::has_other_runnable(), "another task is runnable");
    let (halted, sync) = (pnp::stats().halted, counter(HostCounter::SyncWaits)?);
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    if ring_mode() {
        ensure_eq!(pnp::stats().halted - halted, 1, "waits in the HLT loop (the HLT-loop path)");
    } else {
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits");
    }
    Ok(())
}

pub(super) fn no_sleep_section_waits_in_the_hlt_loop() -> TestResult {
    fn bystander(_: u64) -> u64 {
        0
    }
    let region = pager()?;
    // Another task is ready, but the section may not sleep: the HLT loop, every time.
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    let other = spawned(task::spawn_kernel("pnp-bystander", bystander, 0))?;
    let before = pnp::stats();
    let value = {
        let _no_sleep = NoSleepGuard::new();
        read(gpa)
    };
    let after = pnp::stats();
    join(other)?;
    ensure_eq_hex!(value, backing_pattern(gpa), "data");
    if ring_mode() {
        ensure_eq!(after.halted - before.halted, 1, "waits in the HLT loop (the HLT-loop path)");
        ensure_eq!(after.slept - before.slept, 0, "the task slept inside a no-sleep section");
    }
    Ok(())
}

pub(super) fn n_tokens_outstanding_then_sync() -> TestResult {
    const N: u32 = 4;
    fn reader(gpa: u64) -> u64 {
        read(gpa)
    }
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    pnp::register(N).map_err(|e| fail(format_args!("register a ring of {N}: {e:?}")))?;
    let _restore = RestoreRing;
    let base = fresh_pages(&region, u64::from(N) + 1)?;
    // The readers' pages are held: all N tokens stay outstanding until the test releases them.
    let mut held = Held::new();
    for i in 0..u64::from(N) {
        held.hold(base + i * 4096)?;
    }
    let sync = counter(HostCounter::SyncWaits)?;
    let mut tasks = heapless::Vec::<(TaskId, u64), 8>::new();
    for i in 0..u64::from(N) {
        let gpa = base + i * 4096;
        let _ = tasks.push((spawned(task::spawn_kernel("pnp-reader", reader, gpa))?, gpa));
    }
    let extra = base + u64::from(N) * 4096;
    if ring_mode() {
        yield_until_parked(N as usize)?;
        ensure_eq!(counter(HostCounter::Outstanding)?, u64::from(N), "tokens outstanding at the host");
        let events = pnp::stats().events;
        ensure_eq_hex!(read(extra), backing_pattern(extra), "data of the access beyond N tokens");
        ensure_eq!(pnp::stats().events - events, 0, "events for the (N+1)th access");
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "the (N+1)th access waited synchronously");
    } else {
        ensure_eq_hex!(read(extra), backing_pattern(extra), "data");
    }
    let released = held.release_all()?;
    if ring_mode() {
        ensure_eq!(released, u64::from(N), "held pages released");
    }
    for (id, gpa) in tasks {
        ensure_eq!(join(id)?, ExitStatus::Returned(backing_pattern(gpa)), "reader data");
    }
    if !ring_mode() {
        ensure_eq!(counter(HostCounter::SyncWaits)? - sync, u64::from(N) + 1, "synchronous waits");
    }
    Ok(())
}
