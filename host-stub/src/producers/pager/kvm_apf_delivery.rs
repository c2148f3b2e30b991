//! KVM's async page fault ABI delivered by the host stub (mode `kvm-apf`), because on the
//! machines this is built on KVM's own is not delivered for pages the host stub must see
//! (`docs/design.md`): the MSRs through user-space MSR exits (`kvm_apf` checks them), "page not
//! present" as a #PF injected with `KVM_SET_VCPU_EVENTS` and the token as its CR2 payload,
//! "page ready" as an MSI of the registered vector with the token in the area, one at a time,
//! the next after the guest's acknowledgement (KVM's condition is the area's `token` read 0,
//! looser). As KVM for this guest: only to CPL 3 (KVM: CPL != 0) with interrupts on (any other
//! access waits), at most 64 tokens out per vCPU, and a second access to a page on its
//! way waits for it.
//!
//! Guest memory is reached through `vm-memory` only, the area's two words with atomic loads
//! and stores.

use std::sync::atomic::Ordering;

use kvm_bindings::KVM_VCPUEVENT_VALID_PAYLOAD;
use pvagent_abi::kvm_apf::{self as abi, TOKEN_WAKE_ALL};
use pvagent_abi::pnp::Token;
use vm_memory::{Bytes, GuestAddress};

use super::error::PagerError;
use super::kvm_apf::{ApfActive, ApfVcpu, ApfWrite};
use super::ring::signal;
use super::shared::Inner;
use crate::error::{Error, Result};
use crate::handler::{MsrAnswer, VcpuCtx};

/// The #PF vector.
const PAGE_FAULT: u8 = 14;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// What the host stub's side of the ABI did, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApfCounters {
    /// "Page not present" #PFs injected.
    pub not_present: u64,
    /// "Page ready" interrupts raised for a token.
    pub page_ready: u64,
    /// Wake-alls raised.
    pub wake_alls: u64,
    /// Acknowledgements of a "page ready".
    pub acks: u64,
    /// Resolutions of tokens the guest had turned async page faults off for (none delivered).
    pub forgotten: u64,
    /// "Page ready" delivered before its "page not present" (a forced wake-before-wait).
    pub ready_before_not_present: u64,
    /// Owed "page not present" #PFs delivered at an access to another page than theirs (their
    /// task's retry did not come first).
    pub owed_delivered_elsewhere: u64,
    /// Accesses re-entered so that a "page ready" on its way is taken before a new "page not
    /// present" is delivered.
    pub retries_for_page_ready: u64,
}

/// Whether KVM would deliver "page not present" to the vCPU now (`kvm_can_do_async_pf` and
/// `kvm_can_deliver_async_pf`): CPL 3 (this host ignores "send always"), interrupts on and no
/// STI or MOV SS shadow, no event waiting to be injected, paging on.
pub(super) fn window_open(ctx: &VcpuCtx<'_>) -> Result<bool> {
    let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
    let sregs = ctx.vcpu.get_sregs().map_err(Error::GetSregs)?;
    let events = ctx.vcpu.get_vcpu_events().map_err(Error::GetVcpuEvents)?;
    let pending =
        events.exception.injected | events.exception.pending | events.interrupt.injected | events.nmi.injected;
    // PVM's bare EFAULT at CPL 3 reports no shadow: the bytes before RIP tell.
    Ok(sregs.cs.selector & 3 == 3
        && regs.rflags & RFLAGS_IF != 0
        && events.interrupt.shadow == 0
        && pending == 0
        && sregs.cr0 & CR0_PG != 0
        && !super::access::in_shadow_by_its_bytes(ctx))
}

fn area_u32(inner: &Inner, vcpu: usize, gpa: u64) -> Result<u32, PagerError> {
    inner.ram()?.load(GuestAddress(gpa), Ordering::Acquire).map_err(|source| PagerError::ReadApfArea {
        vcpu,
        gpa,
        source,
    })
}

pub(super) fn set_area_u32(inner: &Inner, vcpu: usize, gpa: u64, value: u32) -> Result<(), PagerError> {
    inner.ram()?.store(value, GuestAddress(gpa), Ordering::Release).map_err(|source| PagerError::WriteApfArea {
        vcpu,
        gpa,
        source,
    })
}

fn active(inner: &Inner, vcpu: usize) -> Option<ApfActive> {
    inner.apf.get(vcpu).and_then(ApfVcpu::active)
}

/// "Page not present" for `token`: `flags` first (so the guest can tell it from a real #PF),
/// then the #PF, error code 0, the token as its CR2 payload, taken at the next entry before the
/// access is retried.
pub(super) fn deliver_not_present(
    inner: &mut Inner,
    ctx: &VcpuCtx<'_>,
    vcpu: usize,
    token: Token,
    gpa: u64,
    gva: Option<u64>,
) -> Result<(), PagerError> {
    let a = active(inner, vcpu).ok_or(PagerError::EventWithoutRegistration { vcpu })?;
    // `REASON_PAGE_NOT_PRESENT`, unless a breach on purpose adds a bit.
    let flags = super::breaks::not_present_flags(inner, vcpu);
    set_area_u32(inner, vcpu, a.area_gpa + abi::FLAGS_OFFSET, flags)?;
    let mut events = ctx.vcpu.get_vcpu_events().map_err(|source| PagerError::InjectNotPresent { vcpu, source })?;
    events.exception.injected = 0;
    events.exception.pending = 1;
    events.exception.nr = PAGE_FAULT;
    events.exception.has_error_code = 1;
    events.exception.error_code = 0;
    events.exception_has_payload = 1;
    events.exception_payload = u64::from(token.0);
    events.flags = KVM_VCPUEVENT_VALID_PAYLOAD;
    ctx.vcpu.set_vcpu_events(&events).map_err(|source| PagerError::InjectNotPresent { vcpu, source })?;
    if let Some(v) = inner.apf.get_mut(vcpu) {
        v.last_not_present = Some(token.0);
    }
    inner.apf_counters.not_present += 1;
    inner.timeline.event(vcpu, token.0, gpa, gva);
    Ok(())
}

/// Whether the guest took the "page not present" for `token`: its #PF handler cleared
/// `flags`, or a later one was delivered since (the host delivers one only once the vCPU runs
/// CPL 3 code again, after the last was taken).
pub(super) fn not_present_taken(inner: &Inner, vcpu: usize, token: Token) -> Result<bool, PagerError> {
    let Some(a) = active(inner, vcpu) else { return Ok(true) };
    if inner.apf.get(vcpu).and_then(|v| v.last_not_present) != Some(token.0) {
        return Ok(true);
    }
    Ok(area_u32(inner, vcpu, a.area_gpa + abi::FLAGS_OFFSET)? == 0)
}

/// The page behind `token` is in (on any thread): queue its "page ready", and deliver it if
/// the guest's slot is free. A token the guest turned async page faults off for is forgotten.
pub(super) fn post_page_ready(inner: &mut Inner, vcpu: usize, token: Token) -> Result<(), PagerError> {
    let queued = inner.apf.get_mut(vcpu).is_some_and(|v| v.queue_ready(token.0));
    if !queued {
        inner.apf_counters.forgotten += 1;
        return Ok(());
    }
    inner.timeline.resolution(vcpu, token.0, pvagent_abi::pnp::RESULT_RETRY);
    deliver_ready(inner, vcpu)
}

/// Delivers the next "page ready" of `vcpu`, if one waits and the guest's slot is free: the
/// token in the area, then the interrupt.
pub(super) fn deliver_ready(inner: &mut Inner, vcpu: usize) -> Result<(), PagerError> {
    let Some(a) = active(inner, vcpu) else { return Ok(()) };
    let token_gpa = a.area_gpa + abi::TOKEN_OFFSET;
    let slot_free = area_u32(inner, vcpu, token_gpa)? == 0;
    let Some(token) = inner.apf.get_mut(vcpu).and_then(|v| v.next_ready(slot_free)) else { return Ok(()) };
    set_area_u32(inner, vcpu, token_gpa, token)?;
    signal(inner, vcpu, a.vector)?;
    if token == TOKEN_WAKE_ALL {
        inner.apf_counters.wake_alls += 1;
        if let Some(page) = inner.apf.get_mut(vcpu).and_then(ApfVcpu::forget_owed) {
            super::access::fill(inner, page)?;
        }
    } else {
        inner.apf_counters.page_ready += 1;
    }
    Ok(())
}

/// RDMSR and WRMSR of the ABI's MSRs (mode `kvm-apf`: KVM is kept from answering them itself).
pub(super) fn msr(inner: &mut Inner, vcpu: usize, index: u32, write: Option<u64>) -> Result<MsrAnswer, PagerError> {
    let Some(v) = inner.apf.get_mut(vcpu) else { return Ok(MsrAnswer::Fault) };
    let Some(value) = write else { return Ok(MsrAnswer::Value(v.read(index))) };
    let unfilled = v.owed().filter(|o| o.unfilled).map(|o| o.page);
    let Ok(written) = v.write(index, value, &inner.ram_ranges) else { return Ok(MsrAnswer::Fault) };
    match written {
        ApfWrite::Stored => {}
        ApfWrite::Enabled => deliver_ready(inner, vcpu)?,
        // Its tokens' fetches still complete; their "page ready" is forgotten then. A "page not
        // present" owed is forgotten too (the guest drops the wake it kept), and its page,
        // present by its state, becomes so by its memory.
        ApfWrite::Disabled { .. } => {
            if let Some(page) = unfilled {
                super::access::fill(inner, page)?;
            }
        }
        ApfWrite::Acked(_) => {
            inner.apf_counters.acks += 1;
            deliver_ready(inner, vcpu)?;
        }
    }
    Ok(MsrAnswer::Value(value))
}
