//! How an event reaches the guest and how its token is resolved, per protocol ([`Via`]): the
//! one place the pager's access path, completions and resolution timing ask, so that the
//! fetch machinery, the page states and the test controls (held pages, resolution timing) are
//! the same whatever carries the event. A new carrier (#VE) is one more [`Via`] and three more
//! arms here.
//!
//! | | the ring | KVM's ABI, by the host stub | KVM's ABI, by KVM |
//! | --- | --- | --- | --- |
//! | event | event area, event vector (`ring`) | #PF, token in CR2 (`kvm_apf_delivery`) | KVM did it |
//! | resolution | ring entry, resolution vector | "page ready" (no "failed") | KVM does it |
//! | event taken | the event area is free | the area's `flags` cleared | not visible: taken |

use super::error::PagerError;
use super::kvm_apf_delivery;
use super::ring;
use super::shared::Inner;
use super::state::{TokenOut, Via};
use crate::handler::VcpuCtx;

/// Delivers the event for `out` (an access to `gpa`, at `gva` when known) to the vCPU `ctx`.
pub(super) fn deliver_event(
    inner: &mut Inner,
    ctx: &VcpuCtx<'_>,
    out: TokenOut,
    gpa: u64,
    gva: Option<u64>,
) -> Result<(), PagerError> {
    match out.via {
        Via::Ring => ring::deliver_event(inner, out.vcpu, out.token, gpa, gva),
        Via::KvmApf => kvm_apf_delivery::deliver_not_present(inner, ctx, out.vcpu, out.token, gpa, gva),
        Via::KvmApfKernel => Ok(()),
    }
}

/// Resolves `out` with `result` (on any thread); `before_event` when its event is delivered
/// right after (the ring then may leave the interrupt to the guest's drain at event). KVM's
/// ABI says "page ready" whatever the result: it has no "failed", so the guest retries and the
/// host finds the failure then.
pub(super) fn post_resolution(
    inner: &mut Inner,
    out: TokenOut,
    result: u32,
    before_event: bool,
) -> Result<(), PagerError> {
    match out.via {
        Via::Ring => ring::post_resolution(inner, out.vcpu, out.token, result, before_event),
        Via::KvmApf => kvm_apf_delivery::post_page_ready(inner, out.vcpu, out.token),
        Via::KvmApfKernel => {
            inner.timeline.resolution(out.vcpu, out.token.0, result);
            Ok(())
        }
    }
}

/// Whether the guest has taken the event that carried `out`.
pub(super) fn event_taken(inner: &Inner, out: TokenOut) -> Result<bool, PagerError> {
    match out.via {
        Via::Ring => ring::event_taken(inner, out.vcpu, out.token),
        Via::KvmApf => kvm_apf_delivery::not_present_taken(inner, out.vcpu, out.token),
        // KVM delivered it; the host stub cannot see when the guest takes it.
        Via::KvmApfKernel => Ok(true),
    }
}
