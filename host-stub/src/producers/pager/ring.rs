//! The host's side of the shared areas: the event area it fills, the resolution ring it
//! produces into (reading the guest's `tail` first), and the interrupts that announce both.
//!
//! Every access to these areas is through `vm-memory`: copies of whole structures
//! (`memory::write_plain`) and atomic loads and stores of the fields the two sides hand over
//! with (`inuse`, `head`, `tail`), never a reference into guest memory.

use std::sync::atomic::Ordering;

use pvagent_abi::pnp::{self as abi, PageNotPresentData, Resolution, Token};
use vm_memory::{Bytes, GuestAddress};

use pvagent_abi::breach::Breach;

use super::breaks;
use super::error::PagerError;
use super::registration::{Active, Registration};
use super::shared::Inner;
use super::state;
use super::tokens::{RingViolation, TokenPool};
use crate::memory;

/// `vcpu`'s event area's `inuse` word: non-zero while the guest has yet to take the last event.
pub(super) fn event_area_inuse(inner: &Inner, vcpu: usize, a: Active) -> Result<u32, PagerError> {
    let gpa = a.data_gpa + abi::DATA_INUSE_OFFSET;
    inner.ram()?.load(GuestAddress(gpa), Ordering::Acquire).map_err(|source| PagerError::ReadEventArea {
        vcpu,
        gpa,
        source,
    })
}

/// Whether the guest has yet to take the last event delivered to `vcpu`.
pub(super) fn event_area_busy(inner: &Inner, vcpu: usize, a: Active) -> Result<bool, PagerError> {
    Ok(event_area_inuse(inner, vcpu, a)? != 0)
}

/// The token in `vcpu`'s event area (meaningful while it is busy).
pub(super) fn event_area_token(inner: &Inner, vcpu: usize, a: Active) -> Result<u32, PagerError> {
    let gpa = a.data_gpa + abi::DATA_TOKEN_OFFSET;
    inner.ram()?.load(GuestAddress(gpa), Ordering::Relaxed).map_err(|source| PagerError::ReadEventArea {
        vcpu,
        gpa,
        source,
    })
}

/// Whether the guest has taken the event that carried `token` ([`state::event_taken`]); an
/// event of a vCPU that unregistered counts as taken (nothing will take it: writing its
/// resolution reports that).
pub(super) fn event_taken(inner: &Inner, vcpu: usize, token: Token) -> Result<bool, PagerError> {
    let Some(a) = inner.vcpus.get(vcpu).and_then(Registration::active) else {
        return Ok(true);
    };
    let inuse = event_area_inuse(inner, vcpu, a)?;
    let area_token = event_area_token(inner, vcpu, a)?;
    Ok(state::event_taken(inuse, area_token, token))
}

/// Frees the tokens whose resolutions the guest has consumed.
pub(super) fn observe_tail(inner: &mut Inner, vcpu: usize, a: Active) -> Result<(), PagerError> {
    let gpa = a.ring_gpa + abi::ring_tail_offset(a.entries);
    let tail: u32 = inner
        .ram()?
        .load(GuestAddress(gpa), Ordering::Acquire)
        .map_err(|source| PagerError::ReadRingTail { vcpu, gpa, source })?;
    if let Some(pool) = inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()) {
        pool.observe_tail(tail).map_err(|violation| PagerError::Ring { vcpu, violation })?;
    }
    Ok(())
}

/// Raises `vector` on `vcpu` alone with an MSI to its APIC ID.
pub(super) fn signal(inner: &mut Inner, vcpu: usize, vector: u8) -> Result<(), PagerError> {
    let vm = inner.vm.as_ref().ok_or(PagerError::NotAttached)?;
    let msi = crate::vcpu::fixed_msi(crate::vcpu::apic_id(vcpu), vector);
    let delivered = vm.signal_msi(msi).map_err(|source| PagerError::SignalMsi { vcpu, vector, source })?;
    if delivered <= 0 {
        inner.msi_refused += 1;
    }
    Ok(())
}

/// Fills the event area (`inuse` last, with release) and raises the event interrupt.
pub(super) fn deliver_event(
    inner: &mut Inner,
    vcpu: usize,
    token: Token,
    gpa: u64,
    gva: Option<u64>,
) -> Result<(), PagerError> {
    let a =
        inner.vcpus.get(vcpu).and_then(Registration::active).ok_or(PagerError::EventWithoutRegistration { vcpu })?;
    // A drain at this event must see the true `head` (a breach on purpose may have hidden it).
    breaks::restore_head(inner, vcpu)?;
    let flags = if gva.is_some() { abi::FLAG_GVA_VALID } else { 0 };
    let mut data = PageNotPresentData { inuse: 0, token: token.0, gpa, gva: gva.unwrap_or(0), flags, reserved: 0 };
    let region_end = inner.region.as_ref().map_or(0, |r| r.gpa() + r.pages() * super::region::PAGE as u64);
    breaks::at_event(inner, vcpu, &mut data, region_end);
    fill_event_area(inner, vcpu, a, data)?;
    inner.timeline.event(vcpu, token.0, gpa, gva);
    Ok(())
}

/// Writes `data` to the event area `a` names, `inuse` last (with release), and raises `a`'s
/// event vector.
pub(super) fn fill_event_area(
    inner: &mut Inner,
    vcpu: usize,
    a: Active,
    data: PageNotPresentData,
) -> Result<(), PagerError> {
    let ram = inner.ram()?;
    memory::write_plain(ram, a.data_gpa, data).map_err(|source| PagerError::WriteEventArea {
        vcpu,
        gpa: a.data_gpa,
        source,
    })?;
    let inuse_gpa = a.data_gpa + abi::DATA_INUSE_OFFSET;
    ram.store(1u32, GuestAddress(inuse_gpa), Ordering::Release).map_err(|source| PagerError::WriteEventArea {
        vcpu,
        gpa: inuse_gpa,
        source,
    })?;
    signal(inner, vcpu, a.event_vector)
}

/// Writes `{result, token}` to the vCPU's ring, publishes `head` with release, and raises the
/// resolution interrupt, unless the token's event is delivered right after this
/// (`before_event`) to a guest that drains its ring when it takes an event
/// (`abi::VECTORS_DRAIN_AT_EVENT`): `head` is published before the event area's `inuse`, so
/// that drain finds the resolution.
pub(super) fn post_resolution(
    inner: &mut Inner,
    vcpu: usize,
    token: Token,
    result: u32,
    before_event: bool,
) -> Result<(), PagerError> {
    let a = inner
        .vcpus
        .get(vcpu)
        .and_then(Registration::active)
        .ok_or(PagerError::ResolutionWithoutRegistration { vcpu })?;
    observe_tail(inner, vcpu, a)?;
    let room = inner.vcpus.get(vcpu).and_then(|r| r.pool.as_ref()).map_or(0, TokenPool::room);
    // A breach on purpose, when one is armed: the entries below differ from the one true entry.
    let breach = breaks::at_resolution(inner, vcpu, room);
    if let Some(b) = inner.breaks.get_mut(vcpu) {
        // Written below in any case.
        b.forget_bogus_head();
    }
    let pool = inner
        .vcpus
        .get_mut(vcpu)
        .and_then(|r| r.pool.as_mut())
        .ok_or(PagerError::ResolutionWithoutRegistration { vcpu })?;
    let full = |pool: &TokenPool| PagerError::Ring {
        vcpu,
        violation: RingViolation::Full { head: pool.head(), tail: pool.head().wrapping_sub(pool.entries()) },
    };
    let mut entries = [(0, Resolution { result, token: token.0 }); 2];
    let mut count = 0;
    if breach == Some(Breach::ResolutionForUnknownToken) {
        // Before the true one, while the guest still has a waiter in the slot.
        let index = pool.post_unowned().ok_or_else(|| full(pool))?;
        entries[count].0 = index;
        count += 1;
    }
    let index = pool.post(token).map_err(|violation| PagerError::Ring { vcpu, violation })?;
    let written = if breach == Some(Breach::ResolutionBadResult) { breaks::BAD_RESULT } else { result };
    entries[count] = (index, Resolution { result: written, token: token.0 });
    count += 1;
    match breach {
        Some(Breach::ResolutionForUnknownToken) => {
            let forged = pool.never_issued(token.slot()).unwrap_or(Token(0));
            entries[0].1.token = forged.0;
        }
        Some(Breach::ResolutionTwice) => {
            let index = pool.post_unowned().ok_or_else(|| full(pool))?;
            entries[count] = (index, Resolution { result, token: token.0 });
            count += 1;
        }
        _ => {}
    }
    let head = pool.head();
    let ram = inner.ram()?;
    for &(index, entry) in &entries[..count] {
        let entry_gpa = a.ring_gpa + u64::from(index) * std::mem::size_of::<Resolution>() as u64;
        memory::write_plain(ram, entry_gpa, entry).map_err(|source| PagerError::WriteRingEntry {
            vcpu,
            gpa: entry_gpa,
            source,
        })?;
    }
    let head_gpa = a.ring_gpa + abi::ring_head_offset(a.entries);
    ram.store(head, GuestAddress(head_gpa), Ordering::Release).map_err(|source| PagerError::WriteRingHead {
        vcpu,
        gpa: head_gpa,
        source,
    })?;
    if before_event && a.drains_at_event {
        inner.resolutions_without_interrupt += 1;
    } else {
        signal(inner, vcpu, a.resolution_vector)?;
    }
    inner.timeline.resolution(vcpu, token.0, result);
    Ok(())
}

/// An event for a present page whose resolution is written first (the guest's no-wait path,
/// for the benchmark device), if one can be delivered now: `vcpu` has registered the protocol,
/// can take the event vector (`window_open`, read by the caller), its event area is free and a
/// token is free. Otherwise nothing is done: `Ok(false)`. A broken ring or a failed write or
/// MSI is the error the access path raises for the same cause. The counters count the
/// resolution once it is written and the event once it is delivered.
pub(super) fn deliver_resolved(
    inner: &mut Inner,
    vcpu: usize,
    window_open: bool,
    gpa: u64,
) -> Result<bool, PagerError> {
    let Some(a) = inner.vcpus.get(vcpu).and_then(Registration::active) else {
        return Ok(false);
    };
    if !window_open || event_area_busy(inner, vcpu, a)? {
        return Ok(false);
    }
    observe_tail(inner, vcpu, a)?;
    let Some(token) = inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()).and_then(TokenPool::alloc) else {
        return Ok(false);
    };
    post_resolution(inner, vcpu, token, abi::RESULT_RETRY, true)?;
    let c = &mut inner.core.counters;
    c.resolved_retry += 1;
    c.resolved_before_event += 1;
    deliver_event(inner, vcpu, token, gpa, None)?;
    inner.core.counters.events_delivered += 1;
    Ok(true)
}
