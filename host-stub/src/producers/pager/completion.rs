//! A fetch's two ends: starting it (a latency drawn, handed to a fetcher thread, or completed at
//! once for a zero latency) and completing it (on a fetcher thread: the page made present or
//! failed, and every token waiting for it resolved through the protocol that delivered it),
//! unless the resolution timing holds the completion back (`held_back`).

use std::time::Instant;

use pvagent_abi::pnp as abi;

use super::access::fill;
use super::delivery::post_resolution;
use super::held_back::hold_back;
use super::region::PAGE;
use super::shared::{Inner, Shared};
use super::state::PageIndex;

/// Starts fetching `page` after a latency drawn from the range in effect. A zero latency means
/// the page is available now: returns true, and the caller completes the fetch itself (once it
/// has released the lock) instead of handing it to a fetcher thread.
#[must_use]
pub(super) fn submit(inner: &mut Inner, page: PageIndex) -> bool {
    let latency = inner.latency.draw();
    let gpa = inner.region.as_ref().map_or(0, |r| r.gpa()) + page * PAGE as u64;
    inner.timeline.fetch_submitted(page, gpa, latency);
    if latency.is_zero() {
        return true;
    }
    if let Some(f) = &inner.fetch {
        f.submit(page, latency);
    }
    false
}

/// A fetch finished (on a fetcher thread, or on the vCPU thread for a zero latency): complete
/// it, unless the resolution timing holds it back until the guest has taken its events.
pub(super) fn complete_fetch(shared: &Shared, page: PageIndex) {
    let mut guard = shared.lock();
    let inner = &mut *guard;
    if hold_back(shared, inner, page) {
        return;
    }
    finish_fetch(shared, inner, page);
    drop(guard);
    shared.fetched.notify_all();
}

/// Makes `page` present (or failed) and resolves every token waiting for it. A failure is
/// handed to the vCPU thread.
pub(super) fn finish_fetch(shared: &Shared, inner: &mut Inner, page: PageIndex) {
    let started = Instant::now();
    let (result, waiters) = inner.core.on_fetch_done(page);
    // The #VEs that reported the page wait for nothing any more (a later one waits again).
    super::ve_delivery::forget_unanswered(&mut inner.ve, page);
    let tokens = waiters.len();
    let outcome = if result == abi::RESULT_RETRY {
        fill(inner, page)
    } else {
        inner.staging.remove(&page);
        Ok(())
    };
    let mut problem = outcome.err();
    for out in waiters {
        if let Err(e) = post_resolution(inner, out, result, false) {
            problem.get_or_insert(e);
        }
    }
    if let Some(problem) = problem {
        shared.report_violation(inner, problem);
    }
    inner.timeline.fetch_completed(page, result, tokens, started);
}
