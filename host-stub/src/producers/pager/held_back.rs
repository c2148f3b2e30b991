//! Resolution timing: a finished fetch is completed at once, or, under
//! [`ResolutionTiming::AfterEventTaken`], held back (its page still absent, its resolutions not
//! written) until the guest has taken every event waiting for the page. Tests and benchmarks use
//! that to force the path an event takes (it then always waits) instead of racing a latency
//! against the machine's speed; the page staying absent means an early retry of the access comes
//! back to the host. Taking an event is a store to guest memory and makes no exit, so a poller
//! thread (`poller`) watches the event areas while something is held back, and the vCPU thread
//! checks before each entry.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pvagent_abi::pnp::ResolutionTiming;

use super::completion::finish_fetch;
use super::delivery::event_taken;
use super::error::PagerError;
use super::shared::{Inner, Shared};
use super::state::PageIndex;

/// How often the poller looks for events the guest took while fetches wait for them.
/// It only sets how soon the host notices; the guest's path does not depend on it.
pub(super) const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// Whether the guest has taken every event that waits for `page`, by whichever protocol
/// carried it (`delivery::event_taken`), and made its request for every #VE that reported the
/// page (a #VE carries no token: the request is its "taken").
fn events_taken(inner: &Inner, page: PageIndex) -> Result<bool, PagerError> {
    if inner.ve.iter().any(|v| v.unanswered.contains(&page)) {
        return Ok(false);
    }
    for &out in inner.core.waiters(page) {
        if !event_taken(inner, out)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A fetch of `page` is done: holds its completion back if the timing asks for that and an
/// event waiting for the page has not been taken yet. Returns whether it did.
pub(super) fn hold_back(shared: &Shared, inner: &mut Inner, page: PageIndex) -> bool {
    if inner.core.timing != ResolutionTiming::AfterEventTaken {
        return false;
    }
    if inner.sync_waiting.contains(&page) {
        // A vCPU waits for the page: it cannot take the events (nor make the requests) the
        // fetch would be held back for. Counted only if the fetch would have been held.
        if matches!(events_taken(inner, page), Ok(false)) {
            inner.core.counters.holds_released_by_sync_wait += 1;
        }
        return false;
    }
    match events_taken(inner, page) {
        Ok(true) => false,
        Ok(false) => {
            inner.core.counters.fetches_held_back += 1;
            inner.held_back.push(page);
            shared.held_back_pending.store(true, Ordering::Release);
            if let Some(arm) = &inner.held_back_poller {
                arm.arm();
            }
            true
        }
        Err(problem) => {
            shared.report_violation(inner, problem);
            false
        }
    }
}

/// Completes every held-back fetch whose events the guest has taken since. Returns whether
/// some are still held back. Runs on the poller thread and on the vCPU thread: a failure goes to
/// the vCPU thread either way.
pub(super) fn complete_taken_fetches(shared: &Shared, inner: &mut Inner) -> bool {
    let held = std::mem::take(&mut inner.held_back);
    let mut completed = false;
    for page in held {
        match events_taken(inner, page) {
            Ok(false) => inner.held_back.push(page),
            Ok(true) => {
                finish_fetch(shared, inner, page);
                completed = true;
            }
            Err(problem) => {
                inner.held_back.push(page);
                shared.report_violation(inner, problem);
            }
        }
    }
    let pending = !inner.held_back.is_empty();
    shared.held_back_pending.store(pending, Ordering::Release);
    if completed {
        shared.fetched.notify_all();
    }
    pending
}

/// Completes a held-back fetch of `page` now, if there is one: a vCPU must wait for the page
/// synchronously, so it cannot take the events the fetch waits for.
pub(super) fn complete_held_back_now(shared: &Shared, inner: &mut Inner, page: PageIndex) {
    if let Some(at) = inner.held_back.iter().position(|p| *p == page) {
        inner.held_back.swap_remove(at);
        inner.core.counters.holds_released_by_sync_wait += 1;
        finish_fetch(shared, inner, page);
    }
}
