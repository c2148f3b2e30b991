//! Tests of KVM's async page fault driver (`pv::kvm_apf`), against the host stub's pager in
//! mode `kvm-apf` (the host stub serves KVM's ABI) and `kvm-apf-kernel` (KVM serves it). The
//! same test runs in both modes and asserts the same outcome wherever the ABI allows the test
//! to force it; where only the host stub can force it, the test skips in `kvm-apf-kernel` mode
//! and says why.
//!
//! A run in `ring` or `sync` mode runs them too, with the host stub switched to `kvm-apf` for
//! each test (and back after it): the host stub serves KVM's ABI in every mode but
//! `kvm-apf-kernel`.
//!
//! Each path is forced without timing: held pages stay out until the test releases them, and
//! the ABI itself orders the rest ("page ready" is an interrupt, and the #PF handler keeps
//! interrupts off until its task is parked or halting, so a token's "page ready" never
//! overtakes its "page not present" on one vCPU).

use core::fmt::Write;
use core::sync::atomic::AtomicBool;

use pvagent_abi::kvm_apf as abi;
use x86_64::registers::model_specific::Msr;

use super::*;
use crate::arch::fault::pf;
use crate::pv::kvm_apf;
use crate::task::table::FaultInfo;

/// What every test of KVM's ABI against the pager needs.
const APF_PAGER: &[Need] = &[Need::Pager, Need::KvmApf];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("kvm_apf::registration_follows_the_abi", registration_follows_the_abi).needs(&[Need::KvmApf]),
    SelfTest::new("kvm_apf::user_task_parks_while_another_runs", user_task_parks_while_another_runs).needs(APF_PAGER),
    SelfTest::new("kvm_apf::lone_user_task_waits_in_the_hlt_loop", lone_user_task_waits_in_the_hlt_loop)
        .needs(APF_PAGER),
    SelfTest::new("kvm_apf::kernel_access_waits_synchronously", kernel_access_waits_synchronously).needs(APF_PAGER),
    SelfTest::new("kvm_apf::page_ready_before_page_not_present_does_not_park", page_ready_before_page_not_present)
        .needs(&[Need::Pager, Need::KvmApf, Need::KvmApfHostStub]),
    SelfTest::new("kvm_apf::wake_all_wakes_every_waiter", wake_all_wakes_every_waiter).needs(APF_PAGER),
    SelfTest::new("kvm_apf::real_page_faults_stay_real", real_page_faults_stay_real).needs(APF_PAGER),
    SelfTest::new("kvm_apf::bogus_flags_leave_a_real_fault_real", bogus_flags_leave_a_real_fault_real)
        .needs(&[Need::KvmApf]),
    SelfTest::new("kvm_apf::turning_it_off_wakes_every_waiter", turning_it_off_wakes_every_waiter).needs(&[
        Need::Pager,
        Need::KvmApf,
        Need::KvmApfDisableAtOnce,
    ]),
    SelfTest::new("kvm_apf::events_in_order", events_in_order).needs(APF_PAGER),
    SelfTest::new("kvm_apf::a_token_past_its_deadline_is_reported", a_token_past_its_deadline_is_reported)
        .needs(APF_PAGER),
    SelfTest::new("kvm_apf::accounting_is_balanced", accounting_is_balanced).needs(&[Need::KvmApf]),
    // Run by the end-to-end tests: KVM's ABI has no "failed" result (the host must stop).
    SelfTest::on_request("kvm_apf::touch_the_first_page_from_a_user_task", touch_the_first_page_from_a_user_task)
        .needs(APF_PAGER),
    // Run by the end-to-end tests: the run's time limit holds while the vCPU waits inside KVM.
    SelfTest::on_request("kvm_apf::wait_in_the_kernel_for_a_slow_page", wait_in_the_kernel_for_a_slow_page)
        .needs(APF_PAGER),
];

/// The host stub's mode for one test: `kvm-apf` while it lives, if the run is in another mode
/// the host stub serves itself; back to that mode when dropped, whatever the test's outcome.
pub(in crate::selftest) struct KvmMode(Option<HostMode>);

impl Drop for KvmMode {
    fn drop(&mut self) {
        if let Some(mode) = self.0
            && let Err(e) = pnp::set_host_mode(mode)
        {
            kprintln!("kvm_apf: cannot set the pager's mode back to {mode:?}: {e:?}");
        }
    }
}

/// The host stub's pager, serving absent pages through KVM's ABI (in either mode) until the
/// returned guard is dropped.
pub(in crate::selftest) fn kvm_pager() -> Result<(Region, KvmMode), Failure> {
    let region = pager()?;
    let mode = pnp::host_mode();
    if mode.is_kvm_apf() {
        return Ok((region, KvmMode(None)));
    }
    pnp::set_host_mode(HostMode::KvmApf).map_err(|e| fail(format_args!("set mode kvm-apf: {e:?}")))?;
    Ok((region, KvmMode(Some(mode))))
}

fn read_msr(msr: u32) -> u64 {
    // SAFETY: the ABI is enabled, so the host offered its MSRs; reading them has no effect.
    unsafe { Msr::new(msr).read() }
}

/// Yields until `tasks` tasks of this vCPU wait on KVM tokens (each was given another task to
/// switch to, so each parks by construction; the bound is reached only if one did not).
pub(in crate::selftest) fn yield_until_parked(tasks: usize) -> TestResult {
    for _ in 0..1000 {
        if kvm_apf::pending().0 >= tasks {
            return Ok(());
        }
        task::yield_now();
    }
    Err(fail(format_args!("{} of {tasks} tasks parked on KVM tokens after 1000 yields", kvm_apf::pending().0)))
}

/// Halts until `done` holds for this vCPU's counters (what an interrupt brings). The deadline
/// only turns an interrupt that never comes into a failure; it is microseconds away.
pub(in crate::selftest) fn await_stats(
    what: &str,
    done: impl Fn(&kvm_apf::Stats) -> bool,
) -> Result<kvm_apf::Stats, Failure> {
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (done(&kvm_apf::stats()) || crate::arch::ticks() > deadline).then_some(()));
    }
    let stats = kvm_apf::stats();
    if done(&stats) { Ok(stats) } else { Err(fail(format_args!("{what} never came (ten seconds)"))) }
}

#[unsafe(link_section = ".user_text")]
pub(in crate::selftest) extern "sysv64" fn user_read(gpa: u64) -> ! {
    user::exit(user::read_u64(gpa))
}

/// A CPL 3 task parked on KVM's token for a held page is reported past a short deadline, once
/// (page unknown: KVM's "page not present" names none), and reads its page once released.
fn a_token_past_its_deadline_is_reported() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    let gpa = fresh_pages(&region, 1)?;
    let spawn = |gpa| task::spawn_user(super::deadline::READER, user_read, gpa);
    super::deadline::reported_once(super::deadline::KVM, gpa, false, spawn)
}

pub(super) fn registration_follows_the_abi() -> TestResult {
    let area = kvm_apf::area_gpa();
    ensure_eq!(area % abi::DATA_SIZE, 0, "the area's alignment");
    let on = area | abi::EN_ENABLED | abi::EN_DELIVERY_AS_INT;
    ensure_eq!(read_msr(abi::MSR_ASYNC_PF_EN), on, "MSR_KVM_ASYNC_PF_EN read back");
    ensure_eq!(read_msr(abi::MSR_ASYNC_PF_INT), u64::from(kvm_apf::PAGE_READY_VECTOR), "the page ready vector");
    // The host answered the enabling at boot with a wake-all (KVM does when no page ready is
    // queued for the vCPU, as at boot).
    ensure!(kvm_apf::stats().wake_alls >= 1, "no wake-all after enabling");
    // Reserved bits are refused and change nothing, wherever the ABI is served.
    let gp = |r: Result<(), crate::arch::fault::Fault>| matches!(r, Err(f) if f.vector == 13);
    ensure!(gp(crate::arch::fault::probe_write_msr(abi::MSR_ASYNC_PF_INT, 0x100 | 0x53)), "vector bits 63:8");
    ensure!(gp(crate::arch::fault::probe_write_msr(abi::MSR_ASYNC_PF_EN, on | 0x10)), "area bits 5:4");
    ensure_eq!(read_msr(abi::MSR_ASYNC_PF_EN), on, "MSR_KVM_ASYNC_PF_EN after refused writes");
    Ok(())
}

static A_DONE: AtomicBool = AtomicBool::new(false);
static B_STEPS: AtomicU64 = AtomicU64::new(0);

pub(super) fn user_task_parks_while_another_runs() -> TestResult {
    fn bystander(_: u64) -> u64 {
        while !A_DONE.load(Ordering::SeqCst) {
            B_STEPS.fetch_add(1, Ordering::SeqCst);
            task::yield_now();
        }
        0
    }
    let (region, _mode) = kvm_pager()?;
    let gpa = fresh_pages(&region, 1)?;
    let mut held = Held::new();
    held.hold(gpa)?;
    A_DONE.store(false, Ordering::SeqCst);
    B_STEPS.store(0, Ordering::SeqCst);
    let before = kvm_apf::stats();
    let a = spawned(task::spawn_user("apf-a", user_read, gpa))?;
    let b = spawned(task::spawn_kernel("apf-b", bystander, 0))?;
    yield_until_parked(1)?;
    // A waits for its page (held): whatever ran since, ran while A was parked.
    let steps_while_parked = B_STEPS.load(Ordering::SeqCst);
    held.release_all()?;
    let status = join(a)?;
    A_DONE.store(true, Ordering::SeqCst);
    join(b)?;
    ensure_eq!(status, ExitStatus::Returned(backing_pattern(gpa)), "the CPL 3 task's data");
    ensure!(steps_while_parked > 0, "the other task made no progress while the first was parked");
    let after = kvm_apf::stats();
    ensure_eq!(after.events - before.events, 1, "page not present #PFs");
    ensure_eq!((after.slept - before.slept, after.halted - before.halted), (1, 0), "waits (parked, halted)");
    ensure_eq!(after.tokens.woken - before.tokens.woken, 1, "tasks woken by their page ready");
    Ok(())
}

pub(super) fn lone_user_task_waits_in_the_hlt_loop() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(0, 0)?;
    let gpa = fresh_pages(&region, 1)? + 0x40;
    let before = kvm_apf::stats();
    // The runner waits in `join`: the task is alone, so it waits in the HLT loop.
    let a = spawned(task::spawn_user("apf-alone", user_read, gpa))?;
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(gpa)), "the CPL 3 task's data");
    let after = kvm_apf::stats();
    ensure_eq!(after.events - before.events, 1, "page not present #PFs");
    ensure_eq!((after.slept - before.slept, after.halted - before.halted), (0, 1), "waits (parked, halted)");
    Ok(())
}

/// CPL 0, interrupts on: KVM delivers "page not present" at CPL != 0 only, so the guest takes
/// no #PF and the access waits. How it waits is the host's: the host stub, and KVM on PVM here,
/// block the vCPU thread in the access (a synchronous wait); VMX KVM still starts its async
/// fetch, whose worker faults on the page (the pager counts that as an event delivered), and,
/// unable to deliver the event, halts the vCPU until the page is in (`KVM_REQ_APF_HALT`).
/// Either way exactly one of the two for the access.
pub(super) fn kernel_access_waits_synchronously() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(500, 500)?;
    let gpa = fresh_pages(&region, 1)?;
    let events = kvm_apf::stats().events;
    let (sync, host_events) = (counter(HostCounter::SyncWaits)?, counter(HostCounter::EventsDelivered)?);
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    ensure_eq!(kvm_apf::stats().events - events, 0, "page not present #PFs at CPL 0");
    let sync = counter(HostCounter::SyncWaits)? - sync;
    let host_events = counter(HostCounter::EventsDelivered)? - host_events;
    ensure_eq!(
        (sync + host_events, sync.min(host_events)),
        (1, 0),
        "the access's synchronous waits plus the faults of KVM's worker (VMX halts the vCPU meanwhile), one of them"
    );
    Ok(())
}

/// A robustness test of a path stock KVM does not produce: KVM raises "page ready" on the vCPU
/// that took the "page not present", after it. The host stub sends it first (the ring's hosts
/// may resolve first, and a host that does it anyway must not make a task wait for ever).
pub(super) fn page_ready_before_page_not_present() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    let gpa = fresh_pages(&region, 1)?;
    // Immediate: the host sends "page ready" first, its #PF when the access is retried.
    pnp::set_page_behaviour(gpa, PageBehaviour::Immediate).map_err(|e| fail(format_args!("{e:?}")))?;
    let before = kvm_apf::stats();
    let host_before = counter(HostCounter::ResolvedBeforeEvent)?;
    let early = crate::pv::breach::count(pvagent_abi::breach::Breach::ApfReadyForUnknownToken);
    let a = spawned(task::spawn_user("apf-early", user_read, gpa))?;
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(gpa)), "the CPL 3 task's data");
    let after = kvm_apf::stats();
    ensure_eq!(counter(HostCounter::ResolvedBeforeEvent)? - host_before, 1, "host: page ready before its #PF");
    ensure_eq!(after.events - before.events, 1, "page not present #PFs");
    ensure_eq!(
        after.tokens.resolved_before_event - before.tokens.resolved_before_event,
        1,
        "guest: #PFs that found their page ready kept"
    );
    ensure_eq!((after.slept - before.slept, after.halted - before.halted), (0, 0), "waits (parked, halted)");
    // KVM's ABI has no "page ready" before its "page not present": the guest kept it, and
    // counted the host's breach of that rule.
    let early = crate::pv::breach::count(pvagent_abi::breach::Breach::ApfReadyForUnknownToken) - early;
    ensure_eq!(early, 1, "breaches of apf-ready-for-unknown-token counted");
    Ok(())
}

pub(super) fn wake_all_wakes_every_waiter() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(0, 0)?;
    let base = fresh_pages(&region, 2)?;
    let mut held = Held::new();
    held.hold(base)?;
    held.hold(base + 4096)?;
    let a = spawned(task::spawn_user("apf-all-a", user_read, base))?;
    let b = spawned(task::spawn_user("apf-all-b", user_read, base + 4096))?;
    yield_until_parked(2)?;
    let before = kvm_apf::stats();
    // Enabling again while both wait: KVM answers with a wake-all; both tokens stay out.
    kvm_apf::enable().map_err(|e| fail(format_args!("enable again: {e:?}")))?;
    let woken = await_stats("the wake-all", |s| s.wake_alls > before.wake_alls)?;
    ensure_eq!(woken.tokens.woken_by_wake_all - before.tokens.woken_by_wake_all, 2, "tasks the wake-all woke");
    ensure_eq!(kvm_apf::pending(), (0, 2), "(waiters, tokens whose own page ready is still to come)");
    held.release_all()?;
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(base)), "task A's data");
    ensure_eq!(join(b)?, ExitStatus::Returned(backing_pattern(base + 4096)), "task B's data");
    // Their own page ready still comes, and is absorbed.
    let after = await_stats("the tokens' own page ready", |s| s.tokens.late >= before.tokens.late + 2)?;
    ensure_eq!(after.tokens.woken - before.tokens.woken, 0, "tasks woken twice");
    ensure_eq!(kvm_apf::pending(), (0, 0), "(waiters, kept tokens)");
    Ok(())
}

/// Reads `arg`'s page (absent: KVM's "page not present"), then address 0x18 (unmapped: a real
/// #PF, which ends the task).
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read_then_fault(gpa: u64) -> ! {
    let value = user::read_u64(gpa);
    user::exit(value ^ user::read_u64(0x18))
}

pub(super) fn real_page_faults_stay_real() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(0, 0)?;
    let gpa = fresh_pages(&region, 1)?;
    let mut held = Held::new();
    held.hold(gpa)?;
    let before = kvm_apf::stats();
    let a = spawned(task::spawn_user("apf-then-real", user_read_then_fault, gpa))?;
    yield_until_parked(1)?;
    // A real #PF of the kernel while a token is out: the exception table's, not KVM's.
    match crate::arch::fault::probe_read_u64(0x18) {
        Err(f) => {
            ensure_eq!(f.vector, 14, "the kernel's own #PF: vector");
            ensure_eq_hex!(f.address, 0x18, "the kernel's own #PF: address");
            ensure_eq_hex!(f.error_code, 0, "the kernel's own #PF: error code");
        }
        Ok(v) => return Err(fail(format_args!("address 0x18 read {v:#x}"))),
    }
    held.release_all()?;
    // Right after its async #PF is resolved, the task's own #PF is a real one.
    match join(a)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, address: 0x18, error_code, .. }) => {
            ensure_eq!(error_code, pf::USER, "error code (not present, read, user)")
        }
        other => return Err(fail(format_args!("the task ended with {other:?}, not with its own #PF at 0x18"))),
    }
    let after = kvm_apf::stats();
    ensure_eq!(after.events - before.events, 1, "page not present #PFs");
    ensure_eq!(after.real_faults - before.real_faults, 2, "real #PFs passed on (the kernel's, the task's)");
    Ok(())
}

/// `flags` says "page not present" when no async #PF was injected (a host's stray write: here
/// the test writes it itself, the area being guest memory), then a CPL 3 task takes a real #PF:
/// its error code (U set; KVM's is 0) makes it the real fault it is, and the task ends by it.
pub(super) fn bogus_flags_leave_a_real_fault_real() -> TestResult {
    let before = kvm_apf::stats();
    let flags = kvm_apf::area_gpa() + abi::FLAGS_OFFSET;
    // SAFETY: this vCPU's own area (identity mapped, 4-byte aligned `flags`), which the host
    // also writes: accessed atomically, as the driver does.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(flags as *mut u32) }
        .store(abi::REASON_PAGE_NOT_PRESENT, core::sync::atomic::Ordering::Release);
    let a = spawned(task::spawn_user("apf-bogus-flags", user_read, 0x18))?;
    match join(a)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, address: 0x18, error_code, .. }) => {
            ensure_eq!(error_code, pf::USER, "error code (not present, read, user)")
        }
        other => return Err(fail(format_args!("the task ended with {other:?}, not with its own #PF at 0x18"))),
    }
    let after = kvm_apf::stats();
    ensure_eq!(after.bogus_flags - before.bogus_flags, 1, "#PFs with bogus flags");
    ensure_eq!(after.events - before.events, 0, "page not present #PFs");
    ensure_eq!(after.real_faults - before.real_faults, 1, "real #PFs passed on");
    Ok(())
}

/// Turning the ABI off while a task waits: the host forgets the token, so the guest wakes its
/// waiter itself; the task's retry then waits synchronously (which releases its held page).
/// Only against the host stub: KVM answers the disabling only once the fetch its worker runs is
/// over, and that held page comes only when this test, which is waiting for KVM, releases it.
pub(super) fn turning_it_off_wakes_every_waiter() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(0, 0)?;
    let gpa = fresh_pages(&region, 1)?;
    let mut held = Held::new();
    held.hold(gpa)?;
    let a = spawned(task::spawn_user("apf-off", user_read, gpa))?;
    yield_until_parked(1)?;
    let (events, sync) = (kvm_apf::stats().events, counter(HostCounter::SyncWaits)?);
    let off = kvm_apf::disable();
    // Back on whatever happened, for the tests after this one.
    let on = kvm_apf::enable();
    off.map_err(|e| fail(format_args!("disable: {e:?}")))?;
    on.map_err(|e| fail(format_args!("enable again: {e:?}")))?;
    ensure_eq!(kvm_apf::pending(), (0, 0), "(waiters, kept tokens) after turning it off");
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(gpa)), "the woken task's data");
    ensure_eq!(kvm_apf::stats().events - events, 0, "page not present #PFs for the retry");
    ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "the retry waited synchronously");
    ensure_eq!(held.release_all()?, 0, "held pages left (the synchronous wait released it)");
    Ok(())
}

/// One line per step of [`events_in_order`]: what the guest saw, from its counters.
fn seen(before: &kvm_apf::Stats, after: &kvm_apf::Stats) -> heapless::String<64> {
    let mut out = heapless::String::new();
    for (n, name) in [
        (after.events - before.events, "not-present"),
        (after.slept - before.slept, "park"),
        (after.halted - before.halted, "halt"),
        (after.tokens.resolved_before_event - before.tokens.resolved_before_event, "found-ready"),
        (after.page_ready - before.page_ready - (after.wake_alls - before.wake_alls), "page-ready"),
        (after.wake_alls - before.wake_alls, "wake-all"),
        (after.tokens.late - before.tokens.late, "late"),
    ] {
        for _ in 0..n {
            let _ = out.push_str(if out.is_empty() { "" } else { "+" });
            let _ = out.push_str(name);
        }
    }
    out
}

pub(super) fn events_in_order() -> TestResult {
    const EXPECTED: &str =
        "A:not-present+park B:not-present+park B:page-ready A:page-ready C:not-present+halt+page-ready -:wake-all";
    let (region, _mode) = kvm_pager()?;
    latency(0, 0)?;
    let base = fresh_pages(&region, 3)?;
    let (pa, pb, pc) = (base, base + 4096, base + 8192);
    let mut held = Held::new();
    held.hold(pa)?;
    held.hold(pb)?;
    let mut line = heapless::String::<240>::new();
    let mut step = |who: &str, before: &kvm_apf::Stats| {
        let after = kvm_apf::stats();
        let _ = write!(line, "{}{who}:{}", if line.is_empty() { "" } else { " " }, seen(before, &after));
        after
    };
    // The order is forced at every step: held pages, a page ready awaited before the next step.
    let s = kvm_apf::stats();
    let a = spawned(task::spawn_user("apf-seq-a", user_read, pa))?;
    yield_until_parked(1)?;
    let s = step("A", &s);
    let b = spawned(task::spawn_user("apf-seq-b", user_read, pb))?;
    yield_until_parked(2)?;
    let s = step("B", &s);
    pnp::release(pb, 1).map_err(|e| fail(format_args!("release: {e:?}")))?;
    await_stats("B's page ready", |x| x.tokens.woken > s.tokens.woken)?;
    ensure_eq!(join(b)?, ExitStatus::Returned(backing_pattern(pb)), "task B's data");
    let s = step("B", &s);
    pnp::release(pa, 1).map_err(|e| fail(format_args!("release: {e:?}")))?;
    await_stats("A's page ready", |x| x.tokens.woken > s.tokens.woken)?;
    ensure_eq!(join(a)?, ExitStatus::Returned(backing_pattern(pa)), "task A's data");
    let s = step("A", &s);
    let c = spawned(task::spawn_user("apf-seq-c", user_read, pc))?;
    ensure_eq!(join(c)?, ExitStatus::Returned(backing_pattern(pc)), "task C's data");
    let s = step("C", &s);
    kvm_apf::enable().map_err(|e| fail(format_args!("enable again: {e:?}")))?;
    await_stats("the wake-all", |x| x.wake_alls > s.wake_alls)?;
    step("-", &s);
    drop(held);
    kprintln!("kvm_apf: events in order: {line}");
    ensure_eq!(line.as_str(), EXPECTED, "what the guest saw, step by step");
    Ok(())
}

pub(super) fn accounting_is_balanced() -> TestResult {
    let s = kvm_apf::stats();
    kprintln!(
        "kvm_apf: guest: {} page not present ({} parked, {} HLT-loop waits, {} found ready), {} page ready ({} wake-all, {} late, {} spurious), {} real #PFs ({} with bogus flags), {} rejected",
        s.events,
        s.slept,
        s.halted,
        s.tokens.resolved_before_event,
        s.page_ready,
        s.wake_alls,
        s.tokens.late,
        s.spurious,
        s.real_faults,
        s.bogus_flags,
        s.tokens.rejected()
    );
    ensure_eq!(kvm_apf::pending(), (0, 0), "(waiters, kept tokens) left in the guest");
    ensure_eq!((s.tokens.rejected(), s.spurious, s.stale_wakes), (0, 0, 0), "protocol errors");
    if pager().is_ok() {
        ensure_eq!(counter(HostCounter::Outstanding)?, 0, "tokens outstanding at the host");
    }
    Ok(())
}

/// A CPL 3 task reads the first page of the region, which the end-to-end test made fail: KVM's
/// ABI has no "failed", so the task is told "page ready", retries, and the host must stop.
pub(super) fn touch_the_first_page_from_a_user_task() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    let a = spawned(task::spawn_user("apf-failing", user_read, region.page(0)))?;
    let status = join(a)?;
    Err(fail(format_args!("a task read the failed page 0 and ended with {status:?}")))
}

/// Reads a fresh page at CPL 0 with interrupts off after setting the longest latency (10 s):
/// the vCPU thread waits for it in the access (inside KVM in `kvm-apf-kernel` mode, on VMX as
/// on PVM: with interrupts off KVM starts no async fetch and cannot halt the vCPU instead),
/// longer than the end-to-end test's time limit.
pub(super) fn wait_in_the_kernel_for_a_slow_page() -> TestResult {
    let (region, _mode) = kvm_pager()?;
    latency(10_000_000, 10_000_000)?;
    let gpa = fresh_pages(&region, 1)?;
    let value = {
        let _irq = IrqGuard::new();
        read(gpa)
    };
    Err(fail(format_args!("the slow page came ({value:#x}) before the run's time limit")))
}
