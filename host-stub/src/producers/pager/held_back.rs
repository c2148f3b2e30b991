//! Resolution timing: writing a resolution as soon as its page is ready, or, under
//! [`ResolutionTiming::AfterEventTaken`], holding it back until the guest has taken the token's
//! event. Tests and benchmarks use that to force the path an event takes (it then always waits)
//! instead of racing a latency against the machine's speed. Taking an event is a store to guest
//! memory and makes no exit, so a poller thread (`poller`) watches the event areas while
//! something is held back, and the vCPU thread checks before each entry.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pvagent_abi::pnp::{ResolutionTiming, Token};

use super::error::PagerError;
use super::registration::Registration;
use super::ring::{event_area_busy, event_area_token, post_resolution};
use super::shared::{HeldBack, Inner, Shared};

/// How often the poller looks for events the guest took while their resolutions are held back.
/// It only sets how soon the host notices; the guest's path does not depend on it.
pub(super) const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// Writes the resolution of `token` now, or holds it back until the guest has taken the
/// token's event when the timing asks for that.
pub(super) fn resolve(
    shared: &Shared,
    inner: &mut Inner,
    vcpu: usize,
    token: Token,
    result: u32,
) -> Result<(), PagerError> {
    if inner.core.timing == ResolutionTiming::AfterEventTaken && !event_taken(inner, vcpu, token)? {
        inner.core.counters.resolutions_held_back += 1;
        inner.held_back.push(HeldBack { vcpu, token, result });
        shared.held_back_pending.store(true, Ordering::Release);
        if let Some(arm) = &inner.held_back_poller {
            arm.arm();
        }
        return Ok(());
    }
    post_resolution(inner, vcpu, token, result)
}

/// Whether the guest has taken the event that carried `token`: its event area no longer holds
/// it (the host fills the area only when it is free, so a different token there means this one
/// was taken too).
fn event_taken(inner: &Inner, vcpu: usize, token: Token) -> Result<bool, PagerError> {
    let Some(a) = inner.vcpus.get(vcpu).and_then(Registration::active) else {
        // Unregistered: nothing will take it; writing the resolution reports that.
        return Ok(true);
    };
    if !event_area_busy(inner, vcpu, a)? {
        return Ok(true);
    }
    Ok(event_area_token(inner, vcpu, a)? != token.0)
}

/// Writes every held-back resolution whose event the guest has taken since. Returns whether
/// some are still held back. Runs on the poller thread and on the vCPU thread: a failure goes to
/// the vCPU thread either way.
pub(super) fn write_taken_resolutions(shared: &Shared, inner: &mut Inner) -> bool {
    let mut problem = None;
    let held = std::mem::take(&mut inner.held_back);
    for h in held {
        match event_taken(inner, h.vcpu, h.token) {
            Ok(false) => inner.held_back.push(h),
            Ok(true) => {
                if let Err(e) = post_resolution(inner, h.vcpu, h.token, h.result) {
                    problem.get_or_insert(e);
                }
            }
            Err(e) => {
                problem.get_or_insert(e);
            }
        }
    }
    let pending = !inner.held_back.is_empty();
    shared.held_back_pending.store(pending, Ordering::Release);
    if let Some(problem) = problem {
        shared.report_violation(inner, problem);
    }
    pending
}
