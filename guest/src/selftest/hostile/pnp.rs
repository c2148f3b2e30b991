//! The page-not-present ring's rules (docs/abi.md, "Page-not-present events and the resolution
//! ring"), each broken once by the host stub: the ring's `head`, its entries (token, result),
//! the event area's fields, and the event vector (with no event, and after unregistering).

use core::sync::atomic::{AtomicBool, Ordering};

use pvagent_abi::breach::Breach;
use pvagent_abi::pnp::HostCounter;

use super::*;
use crate::selftest::pnp::controls::yield_until_parked;
use crate::selftest::pnp::counter;
use crate::{ensure, ensure_eq};

/// `head` N + 1 past `tail`: the guest consumes nothing and counts it; once the host writes the
/// true `head` back (at the next hypercall), the ring works as before.
pub(super) fn ring_head_beyond_size() -> TestResult {
    let rule = Breach::RingHeadBeyondSize;
    let (before, consumed) = (breach::count(rule), guest_pnp::stats().consumed);
    arm(rule)?;
    await_breach(rule, before)?;
    // This hypercall is the host's occasion to write the true `head` back.
    counter(HostCounter::Outstanding)?;
    ensure_eq!(guest_pnp::stats().consumed - consumed, 0, "resolutions consumed from the broken ring");
    read_held_page(yield_until_parked, || Ok(()))?;
    ensure_eq!(breach::count(rule) - before, 1, "breaches after the true head came back");
    nothing_pending()
}

/// One of the resolution rules broken at the reader's resolution (posted when the test
/// releases its page, its event taken by then): the reader is woken once, with its data, and the
/// host has no token left.
fn at_the_resolution(rule: Breach) -> TestResult {
    let (before, woken) = (breach::count(rule), guest_pnp::stats().tokens.woken);
    // Over the whole VM: other vCPUs' rings may hold tokens consumed that the host counts until
    // it next posts there (`SMP_TESTS`); this vCPU's ring holds none before or after.
    let outstanding = counter(HostCounter::Outstanding)?;
    read_held_page(yield_until_parked, || arm(rule))?;
    broke_once(rule, before)?;
    ensure_eq!(guest_pnp::stats().tokens.woken - woken, 1, "waiters woken");
    // The entries the breach added were consumed too (the host reads this vCPU's tail at each
    // call): its token count is back where it was.
    ensure_eq!(counter(HostCounter::Outstanding)?, outstanding, "tokens outstanding at the host");
    nothing_pending()
}

/// An entry for a token of the reader's slot the host never handed out, before the reader's own.
pub(super) fn resolution_for_unknown_token() -> TestResult {
    at_the_resolution(Breach::ResolutionForUnknownToken)
}

/// The reader's entry twice: the second finds the slot free with that token, and wakes nobody.
pub(super) fn resolution_twice() -> TestResult {
    at_the_resolution(Breach::ResolutionTwice)
}

/// The reader's entry with a result that is neither retry nor failed: read as retry, so the
/// reader retries its access, finds the page present and ends with its data (not `PageFailed`).
pub(super) fn resolution_bad_result() -> TestResult {
    at_the_resolution(Breach::ResolutionBadResult)
}

/// An event with a malformed token, delivered at the arming, for no access: counted, nothing
/// parks (the context that took it runs on).
fn malformed_event(rule: Breach) -> TestResult {
    let (before, events) = (breach::count(rule), guest_pnp::stats().events);
    arm(rule)?;
    await_breach(rule, before)?;
    ensure_eq!(guest_pnp::stats().events - events, 1, "events taken");
    nothing_pending()
}

pub(super) fn event_token_zero() -> TestResult {
    malformed_event(Breach::EventTokenZero)
}

pub(super) fn event_slot_beyond_ring() -> TestResult {
    malformed_event(Breach::EventSlotBeyondRing)
}

pub(super) fn event_sequence_zero() -> TestResult {
    malformed_event(Breach::EventSequenceZero)
}

/// An event carrying the parked reader's token again: the slot has a waiter, so the second
/// event parks nobody (the runner that took it runs on), and the reader is woken once.
pub(super) fn event_token_outstanding() -> TestResult {
    let rule = Breach::EventTokenOutstanding;
    let before = breach::count(rule);
    read_held_page(yield_until_parked, || {
        arm(rule)?;
        await_breach(rule, before)?;
        ensure_eq!(guest_pnp::pending().0, 1, "waiters (the reader still waits)");
        Ok(())
    })?;
    nothing_pending()
}

/// One of the event area's field rules broken at the reader's event: counted, and the event is
/// served all the same (its token is right): the reader parks and ends with its data.
fn at_the_event(rule: Breach) -> TestResult {
    let (before, slept) = (breach::count(rule), guest_pnp::stats().slept);
    arm(rule)?;
    read_held_page(yield_until_parked, || Ok(()))?;
    broke_once(rule, before)?;
    ensure_eq!(guest_pnp::stats().slept - slept, 1, "the reader parked on its token");
    nothing_pending()
}

pub(super) fn event_gpa_outside_region() -> TestResult {
    at_the_event(Breach::EventGpaOutsideRegion)
}

pub(super) fn event_gva_mismatch() -> TestResult {
    at_the_event(Breach::EventGvaMismatch)
}

pub(super) fn event_unknown_flags() -> TestResult {
    at_the_event(Breach::EventUnknownFlags)
}

pub(super) fn event_reserved_nonzero() -> TestResult {
    at_the_event(Breach::EventReservedNonzero)
}

/// The event vector with `inuse` 0: counted as spurious, nothing taken.
pub(super) fn event_spurious() -> TestResult {
    let rule = Breach::EventSpurious;
    let (before, stats) = (breach::count(rule), guest_pnp::stats());
    arm(rule)?;
    await_breach(rule, before)?;
    let after = guest_pnp::stats();
    ensure_eq!((after.spurious - stats.spurious, after.events - stats.events), (1, 0), "(spurious, taken) events");
    ensure!(after.tokens == stats.tokens, "the token table changed: {:?}", after.tokens);
    nothing_pending()
}

/// An event the host raises after the guest unregistered its ring (written at the
/// unregistration, taken once interrupts are on again): no ring can resolve its token, so it
/// parks nobody; counted. A kernel task unregisters and registers again while this task yields,
/// so that a task the event parked (the bug this shows) leaves this one able to say so.
pub(super) fn event_while_unregistered() -> TestResult {
    static DONE: AtomicBool = AtomicBool::new(false);
    /// `arg`: the ring's size (low half) and the rule's count before (high half).
    fn unregister_and_back(arg: u64) -> u64 {
        let (entries, before) = (arg as u32, (arg >> 32) as u32);
        let off = guest_pnp::unregister().is_ok();
        // The event is taken here, with interrupts on (an interrupt pending while they were off
        // comes at the next exit, which halting makes), before the registration below.
        let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
        halt::wait_until(|| {
            (breach::count(Breach::EventWhileUnregistered) > before || crate::arch::ticks() > deadline).then_some(())
        });
        let back = guest_pnp::register(entries).is_ok();
        DONE.store(true, Ordering::Release);
        u64::from(off) | u64::from(back) << 1
    }
    let rule = Breach::EventWhileUnregistered;
    let entries = guest_pnp::registered_entries();
    // The host refuses to unregister while a token of this vCPU is out: none is, with no
    // waiter and no kept resolution here (it reads the consumed entries at that MSR write).
    // Not the host's count, which is the whole VM's: other vCPUs' rings may hold tokens it
    // counts until it next posts there.
    nothing_pending()?;
    let (before, events) = (breach::count(rule), guest_pnp::stats().events);
    DONE.store(false, Ordering::Relaxed);
    arm(rule)?;
    let arg = u64::from(entries) | u64::from(before) << 32;
    let t = spawned(task::spawn_kernel("hostile-unregister", unregister_and_back, arg))?;
    for _ in 0..1000 {
        if DONE.load(Ordering::Acquire) {
            break;
        }
        task::yield_now();
    }
    ensure!(DONE.load(Ordering::Acquire), "the unregistered ring's event parked a task: {:?}", guest_pnp::pending());
    ensure_eq!(join(t)?, ExitStatus::Returned(0b11), "(unregistered, registered again) as bits");
    broke_once(rule, before)?;
    ensure_eq!(guest_pnp::stats().events - events, 1, "events taken");
    ensure_eq!(guest_pnp::registered_entries(), entries, "the ring registered again");
    nothing_pending()
}
