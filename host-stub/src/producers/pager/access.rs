//! The access path, on the vCPU thread: an access to an absent page of the region reached the
//! host (as an MMIO exit, a memory fault, a bare EFAULT decoded here, or an instruction KVM
//! could not emulate); complete it if it was emulated, ask `state::PagerCore` what to do, and
//! do it: deliver an event (and start the fetch), post an early resolution first, make the page
//! present now, or wait for it (the synchronous path).

use std::collections::hash_map::Entry;
use std::sync::Arc;

use kvm_bindings::kvm_lapic_state;

use pvagent_abi::pnp::HostMode;
use pvagent_abi::ve::fault;

use super::Pager;
use super::backing::{BackingStore, PageBuf};
use super::completion::{complete_fetch, submit};
use super::delivery::{deliver_event, post_resolution};
use super::error::PagerError;
use super::held_back::complete_held_back_now;
use super::kvm_apf::ApfVcpu;
use super::kvm_apf_delivery;
use super::region::PAGE;
use super::registration::{Registration, interrupt_deliverable, processor_priority_class, vector_requested};
use super::ring::{event_area_busy, observe_tail};
use super::shared::{Inner, Shared};
use super::state::{Decision, PageIndex, PageState, TokenOut, TokenSource, VeAccess, Via};
use super::ve::{AccessFacts, Route, VeVcpu, qualification, route};
use super::ve_breaks;
use super::ve_delivery::{self, VeReport};
use crate::error::{Error, Result};
use crate::guest_insn::GuestInsn;
use crate::handler::{AfterExit, Handled, VcpuCtx};
use crate::trace::Arg;

/// How an access reached the host.
pub(super) enum Access<'a> {
    /// KVM_EXIT_MMIO read: fill `data` before the vCPU runs again.
    Read(&'a mut [u8]),
    /// KVM_EXIT_MMIO write of `data`.
    Write(&'a [u8]),
    /// KVM_EXIT_MEMORY_FAULT, or a bare EFAULT: the instruction has not run and will be retried.
    /// Whether it reads and writes, as far as the host knows (a memory-fault exit does not
    /// say; a decoded instruction does).
    Retry { reads: bool, writes: bool },
    /// An emulation failure (PVM, guest CPL 0: a LOCKed read-modify-write on a page the host
    /// closed, which KVM's emulator cannot carry out): the instruction has not run, and runs
    /// only once the page is present. No event can stand in for that, so the access takes the
    /// synchronous path whatever the vCPU's state; an event an earlier part of the instruction
    /// delivered (its emulated load) then finds its resolution written.
    Unemulated,
}

impl Pager {
    /// Handles one access to `gpa` in the region (`gva` when the host knows it).
    pub(super) fn access(
        &mut self,
        ctx: &mut VcpuCtx<'_>,
        gpa: u64,
        gva: Option<u64>,
        access: Access<'_>,
    ) -> Result<Handled> {
        let vcpu = ctx.index;
        let retry = matches!(access, Access::Retry { .. });
        let (page, offset, mode, ring, apf_on, ve_area, owes) = {
            let inner = self.shared.lock();
            let Some(page) = inner.page_of(gpa) else {
                return Ok(Handled::No);
            };
            let owes = inner.apf.get(vcpu).is_some_and(ApfVcpu::owes);
            let offset = (gpa % PAGE as u64) as usize;
            let ring = inner.vcpus.get(vcpu).and_then(Registration::active);
            let apf_on = inner.apf.get(vcpu).is_some_and(|v| v.active().is_some());
            let mode = inner.core.mode;
            let ve_area = inner.ve.get(vcpu).and_then(VeVcpu::area).filter(|_| mode == HostMode::Ve);
            (page, offset, mode, ring, apf_on, ve_area, owes)
        };
        // Whether the protocol of this mode could deliver an event now, read before taking the
        // lock: these ioctls do not touch the pager's state, and the vCPU cannot change while it
        // is stopped here. KVM's ABI delivers only for an access that has not run (a #PF
        // retries it), never for an emulated one (CPL 0 on PVM).
        let unemulated = matches!(access, Access::Unemulated);
        // Mode `ve` serves a vCPU with no VE area as mode `ring` does.
        let ring_rules = mode == HostMode::Ring || (mode == HostMode::Ve && ve_area.is_none());
        let window_open = match (mode, ring) {
            // An access not run yet may follow `sti` or `mov ss` though the exit says no shadow
            // (PVM's bare EFAULT at CPL 3 never reports one): the bytes before RIP tell.
            (_, Some(a)) if ring_rules && !unemulated => {
                event_window_open(ctx, a.event_vector)? && !(retry && in_shadow_by_its_bytes(ctx))
            }
            (HostMode::KvmApf, _) if apf_on && retry => kvm_apf_delivery::window_open(ctx)?,
            _ => false,
        };
        // Whether an owed "page not present" can go now: KVM's window, in any mode (the guest
        // registered for it, and waits for it with its early wake kept).
        let owed_deliverable = match mode {
            _ if !(owes && apf_on && retry) => false,
            HostMode::KvmApf => window_open,
            _ => kvm_apf_delivery::window_open(ctx)?,
        };
        // Whether the event interrupt is still requested (in the local APIC's IRR, not yet
        // taken): only then does re-entering deliver an event left in a busy area. Read only
        // for an access that would be retried, with the area's protocol on.
        let event_requested = match ring {
            Some(a) if window_open && ring_rules && retry => event_requested(ctx, a.event_vector)?,
            _ => false,
        };
        let event_in_delivery = match ve_area {
            Some(_) if !unemulated => ve_delivery::event_in_delivery(ctx)?,
            _ => false,
        };
        let (reads, writes) = match &access {
            Access::Read(_) => (true, false),
            Access::Write(_) => (false, true),
            Access::Retry { reads, writes } => (*reads, *writes),
            Access::Unemulated => (true, true),
        };

        let mut guard = self.shared.lock();

        if owed_deliverable {
            deliver_owed(&mut guard, ctx, page)?;
            return Ok(Handled::Yes);
        }
        // A page owed a "page not present" is present by its state: its memory follows now.
        fill_if_owed(&mut guard, page)?;

        if mode == HostMode::KvmApf && window_open {
            let vector =
                guard.apf.get(vcpu).filter(|v| v.ready_in_flight()).and_then(ApfVcpu::active).map(|a| a.vector);
            if let Some(vector) = vector {
                drop(guard);
                if event_window_open(ctx, vector)? {
                    // A page ready is on its way and the vCPU can take it: re-entering delivers
                    // it before the access is retried, as KVM on VMX delivers a pending
                    // interrupt before the guest's next instruction (on PVM a pending interrupt
                    // waits for the next exit: this is that exit). Its task then is runnable
                    // when this access's task must wait.
                    self.shared.lock().apf_counters.retries_for_page_ready += 1;
                    return Ok(Handled::Yes);
                }
                guard = self.shared.lock();
            }
        }
        let inner = &mut *guard;
        if mode == HostMode::KvmApf
            && window_open
            && let Some(token) = super::breaks::bogus_not_present(inner, vcpu)
        {
            // A breach on purpose: a "page not present" for no access (token 0, or one whose
            // waiter still waits). The guest waits for none of it, and its retry of this
            // access is served as ever.
            kvm_apf_delivery::deliver_not_present(inner, ctx, vcpu, token, gpa, gva)?;
            return Ok(Handled::Yes);
        }
        // #VE's rules, for a vCPU with a VE area (`ve::route`).
        let mut waits_for_busy = false;
        if let Some(area) = ve_area {
            let facts = AccessFacts {
                area_enabled: true,
                busy: ve_delivery::busy(inner, vcpu, area)?,
                ignore_busy: inner.ve.get(vcpu).is_some_and(|v| v.armed() & fault::IGNORE_BUSY != 0)
                    || ve_breaks::over_busy_armed(inner, vcpu),
                event_in_delivery,
                retried: retry,
                unemulated,
            };
            match route(facts) {
                Route::ReenterFirst => {
                    inner.core.counters.retries_for_pending_event += 1;
                    return Ok(Handled::Yes);
                }
                Route::Raise => {
                    // An emulated access completes first: the #VE is a trap after it.
                    apply_to_page(inner, page, offset, access)?;
                    let complete_now = match inner.core.on_ve_access(page) {
                        VeAccess::Continue => false,
                        VeAccess::Raise { fetch, make_present } => {
                            if make_present {
                                fill(inner, page)?;
                            }
                            if facts.busy != 0 {
                                ve_breaks::raised_over_busy(inner, vcpu, gpa);
                            }
                            let qualification = qualification(reads, writes, gva.is_some());
                            let report = VeReport { gpa, gla: gva, qualification };
                            ve_delivery::raise(inner, ctx, area, page, report)?;
                            fetch.is_some() && submit(inner, page)
                        }
                    };
                    drop(guard);
                    if complete_now {
                        complete_fetch(&self.shared, page);
                    }
                    return Ok(Handled::Yes);
                }
                Route::Wait { busy } => waits_for_busy = busy,
                Route::RingRules => {}
            }
        }
        let ring_area_free = match ring {
            Some(a) if window_open && ring_rules => {
                let busy = event_area_busy(inner, vcpu, a)?;
                if busy && retry && event_requested {
                    // An event is pending and the vCPU can take it: re-entering delivers it before
                    // the instruction is retried (KVM injects pending interrupts at entry). On PVM
                    // a second pending interrupt waits for the next exit; this is that exit.
                    inner.core.counters.retries_for_pending_event += 1;
                    return Ok(Handled::Yes);
                }
                // Busy with its interrupt taken: the guest holds the event and has not given the
                // area back. Re-entering would bring the same access back for as long as it
                // holds it, so the access waits for its page (the synchronous path), as it does
                // for an access the host serves at once (the emulated form).
                !busy
            }
            _ => false,
        };
        apply_to_page(inner, page, offset, access)?;
        if let (Some(a), true) = (ring, ring_area_free) {
            observe_tail(inner, vcpu, a)?;
        }
        let source: Option<&mut dyn TokenSource> = match mode {
            _ if ring_rules && ring_area_free => {
                inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()).map(|p| p as _)
            }
            HostMode::KvmApf if window_open => inner.apf.get_mut(vcpu).map(|v| v as _),
            _ => None,
        };
        let via = source.as_ref().map(|s| s.via());
        let decision = inner.core.on_access(vcpu, page, source);
        // The mode as `on_access` counted it, in this lock section (a `PnpSetMode` may have come
        // since the first one read it): a busy wait is one of mode `ve`'s waits.
        if waits_for_busy && inner.core.mode == HostMode::Ve && matches!(decision, Decision::Wait { .. }) {
            inner.core.counters.ve_busy_waits += 1;
        }
        let out = |token| TokenOut { vcpu, via: via.unwrap_or(Via::Ring), token };
        let mut complete_now = false;
        match decision {
            Decision::Continue => {}
            Decision::PresentNow => fill(inner, page)?,
            Decision::Deliver { token, fetch } => {
                if fetch.is_some() {
                    complete_now = submit(inner, page);
                }
                deliver_event(inner, ctx, out(token), gpa, gva)?;
            }
            Decision::DeliverResolved { token, result, make_present: _ } if via == Some(Via::KvmApf) => {
                // KVM's ABI: "page ready" first, its #PF at this vCPU's next access that can
                // carry it (the retry of this one, unless its task was preempted), and the page
                // arrives then (`deliver_owed`), or when another access or a control needs it.
                // Stock KVM never does this (it raises "page ready" on the vCPU that took the
                // "page not present", after it): the guest's path for an early wake is tested
                // for robustness, and for the ring protocol's sake. The window was open, so
                // none was owed (`owed_deliverable`).
                post_resolution(inner, out(token), result, false)?;
                inner.apf_counters.ready_before_not_present += 1;
                let owed = inner.apf.get_mut(vcpu).is_some_and(|v| v.owe(token, page, gpa, gva));
                if !owed {
                    return Err(PagerError::SecondOwedNotPresent { vcpu }.into());
                }
                // Not delivered yet: counted when its #PF is.
                inner.core.counters.events_delivered -= 1;
            }
            Decision::DeliverResolved { token, result, make_present } => {
                if make_present {
                    fill(inner, page)?;
                }
                post_resolution(inner, out(token), result, true)?;
                deliver_event(inner, ctx, out(token), gpa, gva)?;
            }
            Decision::Wait { fetch } => {
                complete_held_back_now(&self.shared, inner, page);
                if fetch.is_some() && submit(inner, page) {
                    drop(guard);
                    complete_fetch(&self.shared, page);
                } else {
                    drop(guard);
                }
                // The wait itself after the exit, outside the handlers' lock: other vCPUs' exits
                // go on while this vCPU waits for its page (it does not run before).
                let shared = Arc::clone(&self.shared);
                ctx.after_exit(AfterExit::new(move || wait_for(&shared, vcpu, page, gpa)));
                return Ok(Handled::Yes);
            }
            // KVM's ABI could carry an event, but not the failure: its retry came back here.
            Decision::StopFailedPage if via == Some(Via::KvmApf) => {
                return Err(PagerError::FailedPageKvmCannotReport { gpa }.into());
            }
            Decision::StopFailedPage => return Err(PagerError::FailedPageUndeliverable { gpa }.into()),
        }
        drop(guard);
        if complete_now {
            complete_fetch(&self.shared, page);
        }
        Ok(Handled::Yes)
    }

    /// An access that does not say its page (a bare EFAULT: PVM, guest CPL 3; a memory fault
    /// whose range spans pages): finds which absent page of the region the instruction at RIP
    /// touches, and handles the access to it. If the pages of the region it touches are all
    /// present by now, one may have been filled on another thread between the exit and this
    /// decode (a fetch completed, another vCPU's access filled a page owed a "page not
    /// present"): the instruction is retried, as `retries` allows.
    pub(super) fn decoded_access(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<Decoded> {
        let Ok(insn) = crate::guest_insn::at_rip(ctx.vcpu, ctx.mem) else {
            return Ok(Decoded::NotTheRegions);
        };
        if let Some(t) = self.region_pages_touched(ctx, &insn, true).first() {
            let access = Access::Retry { reads: t.reads, writes: t.writes };
            return Ok(Decoded::Access(self.access(ctx, t.gpa, Some(t.linear), access)?));
        }
        if self.region_pages_touched(ctx, &insn, false).is_empty() {
            return Ok(Decoded::NotTheRegions);
        }
        let rip = ctx.vcpu.get_regs().map_err(Error::GetRegs)?.rip;
        let fills = self.shared.lock().fills;
        let retry = self.present_at_decode_retries.get_mut(ctx.index).is_some_and(|r| r.retry(ctx.entries, rip, fills));
        if !retry {
            return Ok(Decoded::NotTheRegions);
        }
        self.present_at_decode += 1;
        Ok(Decoded::PresentRetry)
    }

    /// An emulation failure: if the instruction KVM gave up on (`bytes`, or the one at RIP)
    /// touches pages of the region, makes each present on the synchronous path, and says `Yes`:
    /// re-entered, the instruction runs with its pages present. A page may have become present
    /// between KVM's attempt and this exit (its fetch, started by the instruction's emulated
    /// load, completed), so pages found present count too, but only once: the same failure
    /// again right at the next entry has another cause. `No` then, or if the instruction
    /// touches no page of the region: the run ends with the failure.
    pub(super) fn unemulated_access(&mut self, ctx: &mut VcpuCtx<'_>, bytes: &[u8]) -> Result<Handled> {
        let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
        let sregs = ctx.vcpu.get_sregs().map_err(Error::GetSregs)?;
        let insn = if bytes.is_empty() {
            crate::guest_insn::at(ctx.vcpu, ctx.mem, regs.rip, &regs, &sregs)
        } else {
            crate::guest_insn::decode(regs.rip, bytes, &regs, &sregs)
        };
        let Ok(insn) = insn else {
            return Ok(Handled::No);
        };
        let touched = self.region_pages_touched(ctx, &insn, false);
        if touched.is_empty() {
            return Ok(Handled::No);
        }
        // Serving it fills its pages, so a fill since says nothing here: the same fill count
        // every time makes it once.
        const SAME_FILLS: u64 = 0;
        let retry =
            self.unemulated_retries.get_mut(ctx.index).is_some_and(|r| r.retry(ctx.entries, regs.rip, SAME_FILLS));
        if !retry {
            return Ok(Handled::No);
        }
        self.unemulated += 1;
        for t in touched {
            self.access(ctx, t.gpa, Some(t.linear), Access::Unemulated)?;
        }
        Ok(Handled::Yes)
    }

    /// The pages of the region an instruction's memory operands touch (`only_absent`: those
    /// not present): for each, the first GPA the instruction reaches in it, the linear address
    /// of that, and how the operand that reaches it accesses it.
    fn region_pages_touched(&self, ctx: &VcpuCtx<'_>, insn: &GuestInsn, only_absent: bool) -> Vec<Touched> {
        let mut touched: Vec<Touched> = Vec::new();
        for operand in &insn.memory {
            // Its first and last byte: an operand touches at most two pages.
            for linear in [Some(operand.linear), operand.last_byte()].into_iter().flatten() {
                let Some(gpa) = crate::guest_insn::translate(ctx.vcpu, linear) else { continue };
                let inner = self.shared.lock();
                let Some(page) = inner.page_of(gpa) else { continue };
                let seen = touched.iter().any(|t| inner.page_of(t.gpa) == Some(page));
                // A page owed a "page not present" may be present by its state only.
                let owed = inner.apf.iter().any(|v| v.owes_fill_of(page));
                let skipped = only_absent && inner.core.state(page) == Some(&PageState::Present) && !owed;
                if !seen && !skipped {
                    touched.push(Touched { gpa, linear, reads: operand.reads, writes: operand.writes });
                }
            }
        }
        touched
    }
}

/// What [`Pager::decoded_access`] made of an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// The instruction touches an absent page of the region: the access to it, handled.
    Access(Handled),
    /// Its pages of the region were all present at the decode: retried.
    PresentRetry,
    /// Not the pager's: the instruction cannot be read, touches no page of the region, or is
    /// the same exit again ([`super::retries`]).
    NotTheRegions,
}

/// A page of the region an instruction touches ([`Pager::region_pages_touched`]).
#[derive(Clone, Copy, Debug)]
struct Touched {
    gpa: u64,
    linear: u64,
    reads: bool,
    writes: bool,
}

/// Whether the vCPU could take the event interrupt now.
pub(super) fn event_window_open(ctx: &VcpuCtx<'_>, vector: u8) -> Result<bool> {
    let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
    let events = ctx.vcpu.get_vcpu_events().map_err(Error::GetVcpuEvents)?;
    let lapic = ctx.vcpu.get_lapic().map_err(Error::GetLapic)?;
    let ppr_class = processor_priority_class(lapic_word(&lapic, 0x80), lapic_bits(&lapic, 0x100));
    Ok(interrupt_deliverable(regs.rflags, events.interrupt.shadow, ppr_class, vector))
}

/// Whether the instruction at RIP may be in an STI or MOV SS shadow by the bytes before it
/// (`guest_insn::may_be_in_shadow`); bytes the host cannot read show none (no instruction ran
/// from them), and registers it cannot read count as a shadow: the answer may err only towards
/// the synchronous path.
pub(super) fn in_shadow_by_its_bytes(ctx: &VcpuCtx<'_>) -> bool {
    crate::guest_insn::may_be_in_shadow(ctx.vcpu, ctx.mem).unwrap_or(true)
}

/// Whether `vector` waits in the vCPU's local APIC, requested (its IRR bit) and not yet taken.
fn event_requested(ctx: &VcpuCtx<'_>, vector: u8) -> Result<bool> {
    let lapic = ctx.vcpu.get_lapic().map_err(Error::GetLapic)?;
    Ok(vector_requested(lapic_bits(&lapic, 0x200), vector))
}

/// The local APIC register at `offset` (its first 32 bits: registers are 16 bytes apart).
fn lapic_word(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// The 256-bit register (ISR, TMR, IRR) whose first word is at `offset`, vectors 0..=255.
fn lapic_bits(lapic: &kvm_lapic_state, offset: usize) -> [u32; 8] {
    std::array::from_fn(|i| lapic_word(lapic, offset + i * 0x10))
}

/// Where an emulated access finds the page's true contents.
enum PageSource {
    /// The page itself (guest memory: volatile copies).
    Present,
    /// The staging copy of a page being fetched (host memory).
    Staging,
    /// Nothing: the page fails.
    Poison,
}

/// Completes an emulated access against the page's true contents: the present page, the
/// staging copy of a page being fetched, or nothing for a page that fails (loads read all-ones,
/// stores are dropped: the access's task is told its page failed and ends before it runs on).
fn apply_to_page(inner: &mut Inner, page: PageIndex, offset: usize, access: Access<'_>) -> Result<(), PagerError> {
    let (data_read, data_write): (Option<&mut [u8]>, Option<&[u8]>) = match access {
        Access::Retry { .. } | Access::Unemulated => return Ok(()),
        Access::Read(d) => (Some(d), None),
        Access::Write(d) => (None, Some(d)),
    };
    let len = data_read.as_ref().map(|d| d.len()).or(data_write.map(|d| d.len())).unwrap_or(0);
    if offset + len > PAGE {
        // An access crossing into the next page: KVM splits those; keep to this page.
        return Ok(());
    }
    let source = match inner.core.state(page) {
        Some(PageState::Present) => PageSource::Present,
        Some(PageState::Failed) | None => PageSource::Poison,
        Some(PageState::Fetching { failing: true, .. }) => PageSource::Poison,
        Some(PageState::Fetching { failing: false, .. }) => PageSource::Staging,
        Some(PageState::Absent) if inner.core.next_fetch_fails(page) => PageSource::Poison,
        Some(PageState::Absent) => PageSource::Staging,
    };
    match source {
        PageSource::Present => {
            let region = inner.region()?;
            if let Some(d) = data_read {
                region.read_present(page, offset, d);
            }
            if let Some(d) = data_write {
                region.write_present(page, offset, d);
            }
        }
        PageSource::Staging => {
            let staged = match inner.staging.entry(page) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(backing_page(&inner.backing, page)?),
            };
            if let Some(d) = data_read {
                d.copy_from_slice(&staged[offset..offset + d.len()]);
            }
            if let Some(d) = data_write {
                staged[offset..offset + d.len()].copy_from_slice(d);
            }
        }
        PageSource::Poison => {
            if let Some(d) = data_read {
                d.fill(0xFF);
            }
        }
    }
    Ok(())
}

/// `page`'s contents from the backing store.
fn backing_page(backing: &BackingStore, page: PageIndex) -> Result<PageBuf, PagerError> {
    backing.page(page).map_err(|source| PagerError::ReadImage {
        path: backing.image_path().map(|p| p.to_path_buf()).unwrap_or_default(),
        page,
        source,
    })
}

/// Makes `page` present from its staging copy (or the backing store).
pub(super) fn fill(inner: &mut Inner, page: PageIndex) -> Result<(), PagerError> {
    let contents = match inner.staging.remove(&page) {
        Some(staged) => staged,
        None => backing_page(&inner.backing, page)?,
    };
    inner.region()?.fill(page, &contents).map_err(|source| PagerError::FillPage { page, source })?;
    inner.backing.made_present(page);
    inner.fills += 1;
    // In `kvm-apf-kernel` mode vCPUs may have waited for it inside KVM: those were synchronous
    // waits too.
    let counters = &mut inner.core.counters;
    inner.kernel_sync_since.retain(|&(_, waited_for), since| {
        let ended = waited_for == page;
        if ended {
            counters.sync_wait_ns += since.elapsed().as_nanos() as u64;
        }
        !ended
    });
    Ok(())
}

/// The "page not present" this vCPU owes (KVM's ABI, after its "page ready" went first),
/// delivered at this access whatever its page: its page arrives now if it has not, and the
/// guest's #PF handler finds the wake it kept for the token and returns, so the access is
/// retried and served as ever.
fn deliver_owed(inner: &mut Inner, ctx: &VcpuCtx<'_>, page: PageIndex) -> Result<(), PagerError> {
    let vcpu = ctx.index;
    let Some(owed) = inner.apf.get_mut(vcpu).and_then(ApfVcpu::take_owed) else {
        return Ok(());
    };
    if owed.unfilled {
        fill(inner, owed.page)?;
    }
    kvm_apf_delivery::deliver_not_present(inner, ctx, vcpu, owed.token, owed.gpa, owed.gva)?;
    inner.core.counters.events_delivered += 1;
    if owed.page != page {
        inner.apf_counters.owed_delivered_elsewhere += 1;
    }
    Ok(())
}

/// Fills `page` if a "page not present" is owed for it and its memory is still to come (an
/// access from anywhere reached it): the token stays owed.
fn fill_if_owed(inner: &mut Inner, page: PageIndex) -> Result<(), PagerError> {
    for vcpu in 0..inner.apf.len() {
        if let Some(page) = inner.apf[vcpu].take_unfilled(Some(page)) {
            fill(inner, page)?;
        }
    }
    Ok(())
}

/// Makes every page owed a "page not present" present (before the pager reads or evicts it:
/// its state says present, and from here on so does its memory). The tokens stay owed.
pub(super) fn settle_owed(inner: &mut Inner) -> Result<(), PagerError> {
    for vcpu in 0..inner.apf.len() {
        if let Some(page) = inner.apf[vcpu].take_unfilled(None) {
            fill(inner, page)?;
        }
    }
    Ok(())
}

/// The synchronous path: block the vCPU's thread until the page's fetch is over (after the exit,
/// outside the handlers' lock: `VcpuCtx::after_exit`), or the run's time is up.
fn wait_for(shared: &Shared, vcpu: usize, page: PageIndex, gpa: u64) -> Result<()> {
    let failed = shared.timed_wait(
        vcpu,
        page,
        "pnp synchronous wait",
        |inner, time_up| !time_up && inner.core.state(page) == Some(&PageState::Failed),
        |_| vec![("page", Arg::Uint(page)), ("gpa", Arg::Hex(gpa))],
    );
    if failed {
        return Err(PagerError::FailedDuringSyncWait { gpa }.into());
    }
    Ok(())
}
