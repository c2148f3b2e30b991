//! The hostile host of #VE (`Breach` 0x400.., and `MSR_VE_INFO` at boot): a #VE over a set busy
//! word, with an exit reason the ABI does not report, naming a page outside the demand-paged
//! region; `VePark` answered with a token wider than 32 bits or an outcome that is none;
//! `VeSuspend` answered with an outcome that is none (the run stops: on request, from
//! `tests/hostile_boot.rs`); a registration refused though `Features::VE` offered it. Each is
//! armed with `HostBreak` right before the access that gives it its occasion.

use pvagent_abi::breach::Breach;
use pvagent_abi::cpuid::Features;
use pvagent_abi::pnp::{HostCounter, ResolutionTiming, backing_pattern};
use pvagent_abi::report::Need;
use pvagent_abi::ve as abi;

use core::sync::atomic::{AtomicU64, Ordering};

use super::{Failure, SelfTest, TestResult, arm, counted, fail};
use crate::pv::ve::{self, hook};
use crate::pv::{breach, pnp};
use crate::sync::IrqGuard;
use crate::{ensure, ensure_eq, ensure_eq_hex};

/// The pager in mode `ve`, with this guest's areas registered.
const VE: &[Need] = &[Need::Pager, Need::VeMode];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("hostile::ve::ve_over_a_set_busy_word_is_ignored", ve_over_busy_area).needs(VE),
    SelfTest::new("hostile::ve::ve_with_an_unknown_exit_reason_is_ignored", ve_unknown_exit_reason).needs(VE),
    SelfTest::new("hostile::ve::ve_outside_the_region_is_ignored", ve_gpa_outside_region).needs(VE),
    SelfTest::new("hostile::ve::ve_not_marked_busy_is_ignored", ve_not_marked_busy).needs(VE),
    SelfTest::new("hostile::ve::park_with_a_bad_token_suspends_instead", park_bad_token).needs(VE),
    SelfTest::new("hostile::ve::park_with_a_bad_outcome_suspends_instead", park_bad_outcome).needs(VE),
    SelfTest::new("hostile::ve::registration_is_what_the_host_holds", registration_is_what_the_host_holds)
        .needs(&[Need::HostStub]),
    // Stops the run (the guest cannot go on without the page's outcome): tests/hostile_boot.rs.
    SelfTest::on_request("hostile::ve::suspend_with_a_bad_outcome_stops_the_run", suspend_bad_outcome).needs(VE),
];

/// Fresh pages, never touched before, taken from the top of the region down (the page-not-
/// present suite takes its own from the bottom up).
fn fresh_pages(count: u64) -> Result<u64, Failure> {
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let region = match pnp::host_region() {
        Some((region, _)) if region.pages > 0 => region,
        _ => return Err(fail(format_args!("no demand-paged region, though the runner checked Need::Pager"))),
    };
    let taken = TAKEN.fetch_add(count, Ordering::Relaxed) + count;
    ensure!(taken <= region.pages / 2, "the top half of the region is used up");
    Ok(region.page(region.pages - taken))
}

fn read(gpa: u64) -> u64 {
    // SAFETY: `gpa` is in the demand region, identity mapped for the kernel; the load is what
    // reaches the host.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

fn read_with_interrupts_off(gpa: u64) -> u64 {
    let _irq = IrqGuard::new();
    read(gpa)
}

/// The host's #VE counters: #VEs delivered, busy waits, suspends, parks (tokens handed out).
fn host() -> Result<[u64; 4], Failure> {
    let mut out = [0; 4];
    for (o, c) in out.iter_mut().zip([
        HostCounter::VeDelivered,
        HostCounter::VeBusyWaits,
        HostCounter::VeSuspends,
        HostCounter::VeParks,
    ]) {
        *o = pnp::host_counter(c).map_err(|e| fail(format_args!("host counter {c:?}: {e:?}")))?;
    }
    Ok(out)
}

fn since(before: [u64; 4]) -> Result<[u64; 4], Failure> {
    let now = host()?;
    Ok(core::array::from_fn(|i| now[i] - before[i]))
}

/// Immediate fetches, resolved when ready: nothing here waits on timing.
fn when_ready() -> TestResult {
    pnp::set_latency_ns(0, 0).map_err(|e| fail(format_args!("set latency: {e:?}")))?;
    pnp::set_timing(ResolutionTiming::WhenReady).map_err(|e| fail(format_args!("set timing: {e:?}")))
}

/// The handler's hook reads a second absent page before it clears the busy word, with the
/// breach armed right before that read (`hook::BREAK_BUSY_FOR_TOUCH`): the host raises a second
/// #VE over the set busy word. The guest counts it, acts on neither #VE (no request), and both
/// reads (CPL 0 traps, completed by the host with the data) are right.
fn ve_over_busy_area() -> TestResult {
    let rule = Breach::VeOverBusyArea;
    when_ready()?;
    let gpa = fresh_pages(2)?;
    let second = gpa + 4096 + 0x58;
    let (before, stats, counters) = (breach::count(rule), ve::stats(), host()?);
    ve::arm_hook(hook::TOUCH_BEFORE_CLEAR | hook::BREAK_BUSY_FOR_TOUCH, second);
    let value = read_with_interrupts_off(gpa);
    let (armed, hooked) = ve::hook_state();
    ensure!(!armed, "no #VE took the handler's test hook");
    ensure_eq_hex!(hooked, backing_pattern(second), "the second page, read inside the handler");
    ensure_eq_hex!(value, backing_pattern(gpa), "the first page");
    counted(rule, before, 1)?;
    let after = ve::stats();
    ensure_eq!(after.busy_violations - stats.busy_violations, 1, "#VEs over a set busy word");
    ensure_eq!(after.discarded - stats.discarded, 1, "copies discarded for it");
    ensure_eq!(since(counters)?, [2, 0, 0, 0], "host: [#VEs, busy waits, suspends, parks]: two, neither answered");
    Ok(())
}

/// What every test of an ignored #VE starts with: `rule` armed, a CPL 0 read with interrupts off
/// of a fresh page, whose data is right; the breach counted once, `counter` (the handler's count
/// of that kind) one up, no #VE acted on, and the host's one #VE with no request after it.
/// Returns the next fresh page, and the handler's and the host's counts from before.
fn read_through_an_ignored_ve(
    rule: Breach,
    counter: impl Fn(&ve::Stats) -> u64,
) -> Result<(u64, ve::Stats, [u64; 4]), Failure> {
    when_ready()?;
    let gpa = fresh_pages(2)?;
    let (before, stats, counters) = (breach::count(rule), ve::stats(), host()?);
    arm(rule)?;
    let value = read_with_interrupts_off(gpa);
    ensure_eq_hex!(value, backing_pattern(gpa), "data of the page whose #VE was ignored");
    counted(rule, before, 1)?;
    let after = ve::stats();
    ensure_eq!(counter(&after) - counter(&stats), 1, "#VEs of this kind the handler counted");
    ensure_eq!(after.taken, stats.taken, "#VEs acted on");
    ensure_eq!(since(counters)?, [1, 0, 0, 0], "host: [#VEs, busy waits, suspends, parks]: no request");
    Ok((gpa + 4096, stats, counters))
}

/// A #VE the guest must leave unanswered (`rule` armed): counted, no request made, the busy word
/// left set, so the next access waits in the host instead of raising another #VE; the test
/// clears the word afterwards (a guest has no other way back: docs/abi.md, "The guest's rules").
fn unanswered_ve(rule: Breach, counter: impl Fn(&ve::Stats) -> u64) -> TestResult {
    let (second, _, counters) = read_through_an_ignored_ve(rule, counter)?;
    ensure_eq_hex!(read_with_interrupts_off(second), backing_pattern(second), "the next page's data");
    ensure_eq!(since(counters)?, [1, 1, 0, 0], "host: the next access waited (busy word still set)");
    ensure_eq_hex!(ve::busy_word_for_test(true), abi::BUSY, "the busy word the guest left set");
    Ok(())
}

fn ve_unknown_exit_reason() -> TestResult {
    unanswered_ve(Breach::VeUnknownExitReason, |s| s.unknown_reason)
}

fn ve_gpa_outside_region() -> TestResult {
    unanswered_ve(Breach::VeGpaOutsideRegion, |s| s.outside_region)
}

/// A #VE whose area the host did not mark busy (`busy` left 0): no report at all. The guest
/// counts it, acts on nothing (the read, a CPL 0 trap, has its data already), and, the area
/// being free, the next access raises a #VE the contract's way, which the guest serves.
fn ve_not_marked_busy() -> TestResult {
    let (second, stats, counters) = read_through_an_ignored_ve(Breach::VeNotMarkedBusy, |s| s.not_busy)?;
    ensure_eq_hex!(ve::busy_word_for_test(false), 0, "the busy word (the host left it 0)");
    ensure_eq_hex!(read_with_interrupts_off(second), backing_pattern(second), "the next page's data");
    ensure_eq!(ve::stats().taken - stats.taken, 1, "the next #VE, marked busy, acted on");
    ensure_eq!(since(counters)?, [2, 0, 1, 0], "host: the next access's #VE answered by a suspend");
    Ok(())
}

/// A read with interrupts on parks (or waits in the HLT loop) on a `VePark` token; the host
/// answers that request against the rule. The guest counts it, takes no token from it, and
/// suspends instead: the data is right and no token is left anywhere.
fn bad_park_answer(rule: Breach) -> TestResult {
    when_ready()?;
    let gpa = fresh_pages(1)?;
    let (before, stats, counters) = (breach::count(rule), ve::stats(), host()?);
    arm(rule)?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    counted(rule, before, 1)?;
    let after = ve::stats();
    ensure_eq!(after.bad_answers - stats.bad_answers, 1, "answers the guest refused");
    ensure_eq!(after.suspended - stats.suspended, 1, "suspends (the fallback)");
    ensure_eq!(since(counters)?, [1, 0, 1, 0], "host: [#VEs, busy waits, suspends, parks]");
    ensure_eq!(pnp::pending(), (0, 0), "tokens waiting and early resolutions in the guest");
    Ok(())
}

fn park_bad_token() -> TestResult {
    bad_park_answer(Breach::VeParkBadToken)
}

fn park_bad_outcome() -> TestResult {
    bad_park_answer(Breach::VeParkBadOutcome)
}

/// A read with interrupts off suspends; the host answers the suspend with an outcome that is
/// none. The guest cannot tell whether the page is there, so it stops the run naming the rule.
fn suspend_bad_outcome() -> TestResult {
    when_ready()?;
    let gpa = fresh_pages(1)?;
    arm(Breach::VeSuspendBadOutcome)?;
    let value = read_with_interrupts_off(gpa);
    Err(fail(format_args!("the guest went on ({value:#x}) after VeSuspend answered no outcome")))
}

/// The guest registered its VE area exactly where the host offers #VE and holds it; where the
/// host refused a valid registration (`--break ve-info-msr-faults`), the guest counted the
/// breach, holds none, and runs without #VE on this vCPU.
fn registration_is_what_the_host_holds() -> TestResult {
    let offered = crate::arch::platform().hypervisor.host_features().has(Features::VE)
        && pnp::host_region().is_some_and(|(region, _)| region.pages > 0);
    if !offered {
        return Err(Failure::Skip("the host offers no #VE"));
    }
    if ve::registered() {
        let (held, mine) = ve::registration();
        ensure_eq_hex!(held, mine, "MSR_VE_INFO as the host holds it");
        return Ok(());
    }
    ensure!(breach::count(Breach::VeInfoMsrFaults) > 0, "#VE offered, not registered, and no breach counted");
    let held = crate::arch::fault::probe_read_msr(abi::MSR_VE_INFO);
    ensure_eq!(held.ok(), Some(0), "MSR_VE_INFO after the refused registration");
    Ok(())
}
