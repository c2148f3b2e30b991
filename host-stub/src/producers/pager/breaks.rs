//! The pager's fault injection (`Nr::HostBreak`) for the page-not-present ring and event area
//! (`Breach` 0x100..) and KVM's async page fault ABI (0x200..): the rules each vCPU armed, and
//! the breaches made at the call itself. A rule that needs an occasion (the next resolution, the
//! next event, the next "page not present") stays armed until it comes, and is broken where that
//! occasion is handled (`ring`, `kvm_apf_delivery`, `access`), which asks `take`. A
//! production host offers no such switch; docs/robustness.md lists what each does.

use std::sync::atomic::Ordering;

use pvagent_abi::breach::Breach;
use pvagent_abi::hypercall::Status;
use pvagent_abi::kvm_apf as apf_abi;
use pvagent_abi::pnp::{self as abi, FLAG_GVA_VALID, PageNotPresentData, Token};
use vm_memory::{Bytes, GuestAddress};

use super::error::PagerError;
use super::kvm_apf::ApfVcpu;
use super::kvm_apf_delivery::{deliver_not_present, deliver_ready, set_area_u32};
use super::region::PAGE;
use super::registration::{Active, Registration};
use super::ring::{deliver_event, event_area_busy, fill_event_area, observe_tail, signal};
use super::shared::Inner;
use crate::handler::{HypercallAnswer, VcpuCtx};

/// The `result` a broken resolution carries (neither retry nor failed).
pub const BAD_RESULT: u32 = 0xBAD;
/// The flag bit a broken event or "page not present" sets besides the defined ones.
pub const UNKNOWN_FLAG: u32 = 1 << 2;
/// The `reserved` word of a broken event.
pub const RESERVED_VALUE: u32 = 0x5EED;

/// One vCPU's armed rules.
#[derive(Clone, Debug, Default)]
pub struct Armed {
    rules: Vec<Breach>,
    /// The ring's `head` was overwritten ([`Breach::RingHeadBeyondSize`]): the true one is
    /// written back at the vCPU's next hypercall, event or resolution.
    bogus_head: bool,
}

impl Armed {
    /// Arms `rule`; returns whether it was armed already (and unused).
    fn arm(&mut self, rule: Breach) -> bool {
        let was = self.rules.contains(&rule);
        if !was {
            self.rules.push(rule);
        }
        was
    }

    fn take(&mut self, rule: Breach) -> bool {
        let at = self.rules.iter().position(|r| *r == rule);
        at.map(|i| self.rules.swap_remove(i)).is_some()
    }

    fn is_armed(&self, rule: Breach) -> bool {
        self.rules.contains(&rule)
    }

    /// The true `head` is being written (a resolution): nothing to restore any more.
    pub(super) fn forget_bogus_head(&mut self) {
        self.bogus_head = false;
    }
}

/// Whether `vcpu` armed `rule`; disarms it (the caller breaks it now).
pub(super) fn take(inner: &mut Inner, vcpu: usize, rule: Breach) -> bool {
    inner.breaks.get_mut(vcpu).is_some_and(|a| a.take(rule))
}

fn armed(inner: &Inner, vcpu: usize, rule: Breach) -> bool {
    inner.breaks.get(vcpu).is_some_and(|a| a.is_armed(rule))
}

fn ring(inner: &Inner, vcpu: usize) -> Option<Active> {
    inner.vcpus.get(vcpu).and_then(Registration::active)
}

/// `Nr::HostBreak` with `arg`: `None` for a rule that is not this module's (another part of
/// the pager, or another producer, may own it).
pub(super) fn host_break(inner: &mut Inner, ctx: &VcpuCtx<'_>, arg: u64) -> Result<HypercallAnswer, PagerError> {
    let rule = u32::try_from(arg).ok().and_then(|n| Breach::try_from(n).ok());
    let Some(rule) = rule.filter(|r| (0x100..0x300).contains(&(*r as u32))) else { return Ok(None) };
    let vcpu = ctx.index;
    let ring_on = ring(inner, vcpu).is_some();
    let apf_on = inner.apf.get(vcpu).and_then(ApfVcpu::active).is_some();
    let done = match rule {
        Breach::RingHeadBeyondSize => head_beyond_size(inner, vcpu)?,
        Breach::EventTokenZero
        | Breach::EventSlotBeyondRing
        | Breach::EventSequenceZero
        | Breach::EventTokenOutstanding
        | Breach::EventSpurious => bogus_event(inner, vcpu, rule)?,
        Breach::ApfReadyForUnknownToken | Breach::ApfReadySpurious | Breach::ApfStaleFlags if !apf_on => false,
        Breach::ApfReadyForUnknownToken => {
            if let Some(v) = inner.apf.get_mut(vcpu) {
                let token = v.never_issued();
                v.queue_forged_ready(token);
            }
            deliver_ready(inner, vcpu)?;
            true
        }
        Breach::ApfReadySpurious => spurious_page_ready(inner, vcpu)?,
        Breach::ApfStaleFlags => {
            let area = inner.apf.get(vcpu).and_then(ApfVcpu::active).map_or(0, |a| a.area_gpa);
            set_area_u32(inner, vcpu, area + apf_abi::FLAGS_OFFSET, apf_abi::REASON_PAGE_NOT_PRESENT)?;
            true
        }
        Breach::ApfMisdelivered if apf_on => {
            // At this hypercall's return: CPL 0, where this guest registered for none.
            let token = inner.apf.get(vcpu).map_or(0, ApfVcpu::never_issued);
            deliver_not_present(inner, ctx, vcpu, Token(token), 0, None)?;
            true
        }
        // The rest wait for their occasion, on a vCPU that has the protocol on.
        _ => {
            let on = if (rule as u32) < 0x200 { ring_on } else { apf_on };
            if !on {
                return Ok(Some(Err(Status::InvalidArgument)));
            }
            let was = inner.breaks.get_mut(vcpu).is_some_and(|a| a.arm(rule));
            return Ok(Some(Ok([u64::from(was), 0])));
        }
    };
    Ok(Some(if done { Ok([0, 0]) } else { Err(Status::InvalidArgument) }))
}

/// [`Breach::RingHeadBeyondSize`]: `head` written N + 1 entries past the guest's `tail`, and
/// the resolution interrupt raised; the true `head` goes back at the next occasion
/// ([`restore_head`]).
fn head_beyond_size(inner: &mut Inner, vcpu: usize) -> Result<bool, PagerError> {
    let Some(a) = ring(inner, vcpu) else { return Ok(false) };
    observe_tail(inner, vcpu, a)?;
    let Some(head) = inner.vcpus.get(vcpu).and_then(|r| r.pool.as_ref()).map(|p| p.head()) else {
        return Ok(false);
    };
    write_head(inner, vcpu, a, head.wrapping_add(a.entries).wrapping_add(1))?;
    if let Some(b) = inner.breaks.get_mut(vcpu) {
        b.bogus_head = true;
    }
    signal(inner, vcpu, a.resolution_vector)?;
    Ok(true)
}

fn write_head(inner: &Inner, vcpu: usize, a: Active, head: u32) -> Result<(), PagerError> {
    let gpa = a.ring_gpa + abi::ring_head_offset(a.entries);
    inner.ram()?.store(head, GuestAddress(gpa), Ordering::Release).map_err(|source| PagerError::WriteRingHead {
        vcpu,
        gpa,
        source,
    })
}

/// Writes the true `head` back after [`Breach::RingHeadBeyondSize`], if it is still broken.
pub(super) fn restore_head(inner: &mut Inner, vcpu: usize) -> Result<(), PagerError> {
    let Some(b) = inner.breaks.get_mut(vcpu).filter(|b| b.bogus_head) else { return Ok(()) };
    b.bogus_head = false;
    let head = inner.vcpus.get(vcpu).and_then(|r| r.pool.as_ref()).map(|p| p.head());
    match (ring(inner, vcpu), head) {
        (Some(a), Some(head)) => write_head(inner, vcpu, a, head),
        _ => Ok(()),
    }
}

/// An event that carries no token the host handed out (or one still outstanding), or the
/// event vector alone: delivered now, into a free event area, for no access.
fn bogus_event(inner: &mut Inner, vcpu: usize, rule: Breach) -> Result<bool, PagerError> {
    let Some(a) = ring(inner, vcpu) else { return Ok(false) };
    if event_area_busy(inner, vcpu, a)? {
        return Ok(false);
    }
    let token = match rule {
        Breach::EventTokenZero => Token(0),
        Breach::EventSlotBeyondRing => Token::new(a.entries as u16, 1),
        Breach::EventSequenceZero => Token::new(1, 0),
        Breach::EventTokenOutstanding => {
            let token = inner.vcpus.get(vcpu).and_then(|r| r.pool.as_ref()).and_then(|p| p.unresolved_token());
            match token {
                Some(token) => token,
                None => return Ok(false),
            }
        }
        _ => {
            signal(inner, vcpu, a.event_vector)?;
            return Ok(true);
        }
    };
    let gpa = inner.region()?.gpa();
    deliver_event(inner, vcpu, token, gpa, None)?;
    Ok(true)
}

/// [`Breach::EventWhileUnregistered`], at the MSR write that unregistered `vcpu` (`a`: its
/// registration until then): an event with a token of slot 0, for no access, in the area the
/// guest no longer shares, and the event vector, which the guest takes once its interrupts are
/// on again, unregistered.
pub(super) fn at_unregistration(inner: &mut Inner, vcpu: usize, a: Active) -> Result<(), PagerError> {
    if !take(inner, vcpu, Breach::EventWhileUnregistered) {
        return Ok(());
    }
    let gpa = inner.region()?.gpa();
    let data = PageNotPresentData { inuse: 0, token: Token::new(0, 1).0, gpa, gva: 0, flags: 0, reserved: 0 };
    fill_event_area(inner, vcpu, a, data)
}

/// The "page ready" vector with the area's `token` 0, when no "page ready" is on its way.
fn spurious_page_ready(inner: &mut Inner, vcpu: usize) -> Result<bool, PagerError> {
    let Some(v) = inner.apf.get(vcpu) else { return Ok(false) };
    let Some(a) = v.active().filter(|_| !v.ready_pending()) else { return Ok(false) };
    signal(inner, vcpu, a.vector)?;
    Ok(true)
}

/// The armed breach the next resolution of `vcpu` carries, if any (taken): the entries it
/// adds need room in the ring, which the guest's `tail` said last (`room`); without room the
/// rule stays armed.
pub(super) fn at_resolution(inner: &mut Inner, vcpu: usize, room: u32) -> Option<Breach> {
    if take(inner, vcpu, Breach::ResolutionBadResult) {
        return Some(Breach::ResolutionBadResult);
    }
    [Breach::ResolutionTwice, Breach::ResolutionForUnknownToken]
        .into_iter()
        .find(|&rule| room >= 2 && armed(inner, vcpu, rule))
        .filter(|&rule| take(inner, vcpu, rule))
}

/// Breaks the next event of `vcpu` as its armed rules say (`region_end`: the first address
/// after the demand-paged region).
pub(super) fn at_event(inner: &mut Inner, vcpu: usize, data: &mut PageNotPresentData, region_end: u64) {
    if take(inner, vcpu, Breach::EventGpaOutsideRegion) {
        data.gpa = region_end;
    }
    if take(inner, vcpu, Breach::EventGvaMismatch) {
        // The neighbouring page: the guest maps the region one to one, so this address
        // translates to another page, or to none.
        data.gva = (if data.flags & FLAG_GVA_VALID != 0 { data.gva } else { data.gpa }) ^ PAGE as u64;
        data.flags |= FLAG_GVA_VALID;
    }
    if take(inner, vcpu, Breach::EventUnknownFlags) {
        data.flags |= UNKNOWN_FLAG;
    }
    if take(inner, vcpu, Breach::EventReservedNonzero) {
        data.reserved = RESERVED_VALUE;
    }
}

/// The `flags` of the next "page not present" of `vcpu`.
pub(super) fn not_present_flags(inner: &mut Inner, vcpu: usize) -> u32 {
    let unknown = if take(inner, vcpu, Breach::ApfUnknownFlags) { UNKNOWN_FLAG } else { 0 };
    apf_abi::REASON_PAGE_NOT_PRESENT | unknown
}

/// The token of a "page not present" delivered in place of the next one of `vcpu`, for no
/// access (the access is retried and then served as ever), if a rule asks for one: 0, or a
/// token whose waiter still waits (the rule stays armed while there is none).
pub(super) fn bogus_not_present(inner: &mut Inner, vcpu: usize) -> Option<Token> {
    if take(inner, vcpu, Breach::ApfNotPresentTokenZero) {
        return Some(Token(0));
    }
    let waiting = inner.apf.get(vcpu).and_then(ApfVcpu::waiting_token)?;
    take(inner, vcpu, Breach::ApfNotPresentTokenOutstanding).then_some(Token(waiting))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_armed_once_and_taken_once() {
        let mut a = Armed::default();
        assert!(!a.arm(Breach::ResolutionTwice));
        assert!(a.arm(Breach::ResolutionTwice), "armed and unused");
        assert!(a.take(Breach::ResolutionTwice));
        assert!(!a.take(Breach::ResolutionTwice));
        assert!(!a.is_armed(Breach::ResolutionTwice));
    }
}
