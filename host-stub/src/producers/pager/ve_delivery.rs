//! #VE's memory and KVM work (mode `ve`; `ve` holds the rules): `MSR_VE_INFO`, raising #VE
//! (the VE information area filled, `busy` set with release, then vector 20 injected with
//! `KVM_SET_VCPU_EVENTS`), the two requests a guest answers a #VE with (`VeSuspend`, `VePark`)
//! and the test switches (`VeSetFaults`, `VeInjectNmi`).
//!
//! A #VE is injected as an exception in delivery (`exception.injected`), as the processor would
//! be delivering it. An NMI made pending with it is not taken at the #VE handler's first
//! instruction on these machines but at the handler's first exit (measured: `docs/abi.md`), so
//! `fault::NMI_WITH_NEXT_VE` stops the vCPU there with a hardware execute breakpoint on the
//! handler's address (read from the guest's IDT) and injects the NMI at that exit: the NMI
//! interrupts the handler before its first instruction, on any KVM. The area is reached
//! through `vm-memory` only: `busy` with atomic loads and stores, the other fields with copies.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kvm_bindings::kvm_sregs;
use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::pnp::{RESULT_FAILED, RESULT_RETRY};
use pvagent_abi::ve::{self as abi, fault};
use vm_memory::{Bytes, GuestAddress};

use super::Pager;
use super::access::fill;
use super::completion::{complete_fetch, submit};
use super::error::PagerError;
use super::held_back::complete_held_back_now;
use super::registration::Registration;
use super::ring::observe_tail;
use super::shared::{Inner, Shared};
use super::state::{PageIndex, PageState, TokenSource, VeAnswer, VeRequest};
use super::ve::{NmiBreakpoint, VeVcpu};
use super::ve_breaks;
use crate::error::{Error, Result};
use crate::handler::{HypercallAnswer, MsrAnswer, VcpuCtx};
use crate::trace::Arg;

/// RDMSR and WRMSR of `MSR_VE_INFO`.
pub(super) fn msr(inner: &mut Inner, vcpu: usize, write: Option<u64>) -> MsrAnswer {
    let Inner { ve, ram_ranges, .. } = inner;
    let Some(v) = ve.get_mut(vcpu) else { return MsrAnswer::Fault };
    match write {
        None => MsrAnswer::Value(v.read()),
        Some(value) => match v.write(value, ram_ranges) {
            Ok(()) => MsrAnswer::Value(value),
            Err(_) => MsrAnswer::Fault,
        },
    }
}

/// The busy word of the VE area at `area` (acquire: the guest's copy of the fields it read
/// happens before its store of 0).
pub(super) fn busy(inner: &Inner, vcpu: usize, area: u64) -> Result<u32, PagerError> {
    let gpa = area + abi::BUSY_OFFSET;
    inner.ram()?.load(GuestAddress(gpa), Ordering::Acquire).map_err(|source| PagerError::ReadVeArea {
        vcpu,
        gpa,
        source,
    })
}

/// Whether an exception, NMI or interrupt is already being injected into the vCPU on its next
/// entry: #VE cannot be injected on top of it (`ve::route`).
pub(super) fn event_in_delivery(ctx: &VcpuCtx<'_>) -> Result<bool> {
    let e = ctx.vcpu.get_vcpu_events().map_err(Error::GetVcpuEvents)?;
    Ok(e.exception.injected | e.exception.pending | e.interrupt.injected | e.nmi.injected != 0)
}

/// What a raised #VE reports.
#[derive(Clone, Copy, Debug)]
pub(super) struct VeReport {
    pub gpa: u64,
    pub gla: Option<u64>,
    pub qualification: u64,
}

/// Raises #VE on the vCPU: fills its area (every field but `busy`), stores `busy` =
/// [`abi::BUSY`] with release, then injects vector 20 (no error code), with an NMI pending if
/// the switch says so. The switches armed are used up.
pub(super) fn raise(inner: &mut Inner, ctx: &VcpuCtx<'_>, area: u64, page: PageIndex, report: VeReport) -> Result<()> {
    let vcpu = ctx.index;
    // What the contract says, unless a breach on purpose is armed.
    let (exit_reason, reported_gpa) = ve_breaks::report(inner, vcpu, report.gpa);
    let busy = ve_breaks::busy_value(inner, vcpu, report.gpa);
    let ram = inner.ram()?;
    let write_err = |gpa: u64| move |source| PagerError::WriteVeArea { vcpu, gpa, source };
    ram.store(exit_reason, GuestAddress(area + abi::EXIT_REASON_OFFSET), Ordering::Relaxed).map_err(write_err(area))?;
    // Offsets 8..34: qualification, linear and physical address, EPTP index (the reserved
    // bytes after it are not written, as the processor does not).
    let mut fields = [0u8; 26];
    fields[0..8].copy_from_slice(&report.qualification.to_le_bytes());
    fields[8..16].copy_from_slice(&report.gla.unwrap_or(0).to_le_bytes());
    fields[16..24].copy_from_slice(&reported_gpa.to_le_bytes());
    ram.write_slice(&fields, GuestAddress(area + abi::QUALIFICATION_OFFSET)).map_err(write_err(area))?;
    let busy_gpa = area + abi::BUSY_OFFSET;
    ram.store(busy, GuestAddress(busy_gpa), Ordering::Release).map_err(write_err(busy_gpa))?;
    let switches = inner.ve.get_mut(vcpu).map_or(0, |v| v.delivered(page));
    // The handler's address first: a #VE whose switch cannot be carried out is not injected.
    let nmi_at = if switches & fault::NMI_WITH_NEXT_VE != 0 {
        Some(handler_address(ctx, abi::VECTOR).ok_or(PagerError::NoVeHandler { vcpu })?)
    } else {
        None
    };
    // As an exception in delivery (no error code): KVM clears any payload without
    // `KVM_VCPUEVENT_VALID_PAYLOAD`.
    ctx.inject_exception(abi::VECTOR, None)?;
    if let Some(at) = nmi_at {
        let guest_debugregs = ctx.vcpu.get_debug_regs().map_err(|source| PagerError::SetBreakpoint { vcpu, source })?;
        set_breakpoint(ctx, Some(at)).map_err(|source| PagerError::SetBreakpoint { vcpu, source })?;
        if let Some(v) = inner.ve.get_mut(vcpu) {
            v.nmi_breakpoint = Some(NmiBreakpoint { at, guest_debugregs });
        }
    }
    Ok(())
}

/// The linear address of the handler the guest's IDT gives for `vector` (see
/// [`handler_in_tables`]), reading the guest's memory through the vCPU's page tables.
fn handler_address(ctx: &VcpuCtx<'_>, vector: u8) -> Option<u64> {
    let sregs = ctx.vcpu.get_sregs().ok()?;
    handler_in_tables(&sregs, vector, |addr, buf| read_linear(ctx, addr, buf))
}

/// The linear address of the handler the IDT of `sregs` gives for `vector` (a 64-bit gate in
/// long mode, a 32-bit one otherwise), if the gate is within the IDT's limit, present, and
/// readable by `read` (guest-linear memory) and, outside long mode, its code segment's
/// descriptor too. The tables' bases are the guest's: an address past the top is no address.
fn handler_in_tables(sregs: &kvm_sregs, vector: u8, read: impl Fn(u64, &mut [u8]) -> Option<()>) -> Option<u64> {
    const EFER_LMA: u64 = 1 << 10;
    let long_mode = sregs.efer & EFER_LMA != 0;
    let size = if long_mode { 16 } else { 8 };
    let at = gate_offset(sregs.idt.limit, vector, size)?;
    let mut gate = [0u8; 16];
    read(table_linear(sregs.idt.base, at, long_mode), &mut gate[..size as usize])?;
    let (selector, offset) = gate_target(&gate, long_mode)?;
    if long_mode {
        // An IA-32e gate leads to 64-bit code, whose segment base is 0.
        return Some(offset);
    }
    // The selector's descriptor, in the GDT or (TI set) the LDT, within the table's limit.
    let (table, limit) = if selector & 4 != 0 {
        (sregs.ldt.base, sregs.ldt.limit)
    } else {
        (sregs.gdt.base, u32::from(sregs.gdt.limit))
    };
    let index = u64::from(selector & !7);
    if index == 0 || index + 7 > u64::from(limit) {
        return None;
    }
    let mut descriptor = [0u8; 8];
    read(table_linear(table, index, false), &mut descriptor)?;
    Some(segment_base(&descriptor).wrapping_add(offset) & 0xFFFF_FFFF)
}

/// The linear address `offset` bytes into a descriptor table at `base`, wrapping as the
/// processor's address arithmetic does: modulo 2^64 in long mode, modulo 4 GiB outside it
/// (linear addresses are 32 bits there). A wrapped address that is no guest memory is then a
/// failed read, as any other.
fn table_linear(base: u64, offset: u64, long_mode: bool) -> u64 {
    let linear = base.wrapping_add(offset);
    if long_mode { linear } else { linear & 0xFFFF_FFFF }
}

/// The offset of `vector`'s gate of `size` bytes in an IDT of `limit`, if it lies within it.
fn gate_offset(limit: u16, vector: u8, size: u64) -> Option<u64> {
    let at = u64::from(vector) * size;
    (at + size - 1 <= u64::from(limit)).then_some(at)
}

/// A gate's code segment selector and handler offset, if its present bit is set.
fn gate_target(gate: &[u8; 16], long_mode: bool) -> Option<(u16, u64)> {
    const PRESENT: u8 = 0x80;
    if gate[5] & PRESENT == 0 {
        return None;
    }
    let word = |at: usize| u64::from(u16::from_le_bytes([gate[at], gate[at + 1]]));
    let high = if long_mode { u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32 } else { 0 };
    Some((word(2) as u16, high | word(6) << 16 | word(0)))
}

/// A segment descriptor's base.
fn segment_base(d: &[u8; 8]) -> u64 {
    u64::from(u32::from_le_bytes([d[2], d[3], d[4], d[7]]))
}

/// Reads `buf.len()` bytes of guest-linear memory at `addr` through the vCPU's page tables,
/// page by page.
fn read_linear(ctx: &VcpuCtx<'_>, addr: u64, buf: &mut [u8]) -> Option<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = addr.checked_add(done as u64)?;
        let take = (0x1000 - (at & 0xFFF) as usize).min(buf.len() - done);
        let gpa = crate::guest_insn::translate(ctx.vcpu, at)?;
        ctx.mem.read_slice(&mut buf[done..done + take], GuestAddress(gpa)).ok()?;
        done += take;
    }
    Some(())
}

/// Sets (or, with `None`, clears) a hardware execute breakpoint of the host's on the vCPU: it
/// stops with KVM_EXIT_DEBUG before the instruction at that linear address runs. While it is
/// set, KVM gives the host's debug registers to the guest; clearing gives back the guest's.
fn set_breakpoint(ctx: &VcpuCtx<'_>, at: Option<u64>) -> Result<(), kvm_ioctls::Error> {
    let mut debug = kvm_bindings::kvm_guest_debug::default();
    if let Some(address) = at {
        debug.control = kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_USE_HW_BP;
        debug.arch.debugreg[0] = address;
        // DR7: breakpoint 0 enabled locally, on execution, one byte (bit 10 reads as 1).
        debug.arch.debugreg[7] = 1 | 1 << 10;
    }
    ctx.vcpu.set_guest_debug(&debug)
}

/// A KVM_EXIT_DEBUG at linear `pc` on a vCPU whose `NMI_WITH_NEXT_VE` breakpoint is armed: the
/// breakpoint is cleared, and the guest's own debug registers put back as they were, whatever
/// the exit. If it is the breakpoint (the #VE handler reached), the NMI is injected, taken
/// before the handler's first instruction. Whether it was; a debug exit that is not ours ends
/// the run (`Handled::No`), the breakpoint cleared.
pub(super) fn breakpoint_hit(inner: &mut Inner, ctx: &VcpuCtx<'_>, pc: u64) -> Result<bool, PagerError> {
    let vcpu = ctx.index;
    let Some(armed) = inner.ve.get_mut(vcpu).and_then(|v| v.nmi_breakpoint.take()) else { return Ok(false) };
    let breakpoint_err = |source| PagerError::SetBreakpoint { vcpu, source };
    set_breakpoint(ctx, None).map_err(breakpoint_err)?;
    if ctx.vcpu.get_debug_regs().map_err(breakpoint_err)? != armed.guest_debugregs {
        ctx.vcpu.set_debug_regs(&armed.guest_debugregs).map_err(breakpoint_err)?;
    }
    if pc != armed.at {
        return Ok(false);
    }
    ctx.vcpu.nmi().map_err(|source| PagerError::InjectNmi { vcpu, source })?;
    Ok(true)
}

impl Pager {
    /// Carries out hypercall `nr` if it is one of #VE's (`None` otherwise).
    pub(super) fn ve_control(
        &self,
        ctx: &mut VcpuCtx<'_>,
        nr: Nr,
        args: [u64; 4],
    ) -> Result<Option<HypercallAnswer>, PagerError> {
        Ok(Some(match nr {
            Nr::VeSuspend => suspend(&self.shared, ctx, args[0])?,
            Nr::VePark => park(&self.shared, ctx, args[0])?,
            Nr::VeSetFaults => {
                let mut inner = self.shared.lock();
                match inner.ve.get_mut(ctx.index).and_then(|v| v.set_faults(args[0])) {
                    Some(previous) => Some(Ok([previous, 0])),
                    None => Some(Err(Status::InvalidArgument)),
                }
            }
            Nr::HostBreak => match ve_breaks::host_break(&mut self.shared.lock(), ctx.index, args[0]) {
                Some(answer) => answer,
                None => return Ok(None),
            },
            Nr::VeInjectNmi => {
                // Pending at the `out`'s completion: taken before the guest's next instruction.
                ctx.vcpu.nmi().map_err(|source| PagerError::InjectNmi { vcpu: ctx.index, source })?;
                Some(Ok([0; 2]))
            }
            _ => return Ok(None),
        }))
    }
}

/// The request named `page` and was served (not refused: a refusal changes nothing): the
/// vCPU's #VE for it is answered. The request is what "event taken" means for an access #VE
/// carried, so a fetch held back for it completes from now on (before the vCPU's next entry at
/// the latest: the entry hook looks while something is held back), after this request's own
/// token joined it.
fn answered(inner: &mut Inner, vcpu: usize, page: PageIndex) {
    if let Some(v) = inner.ve.get_mut(vcpu) {
        v.answered(page);
    }
}

/// `VeSuspend`: the vCPU waits, after the exit, until the page is present or failed; the
/// answer is written then.
fn suspend(shared: &Arc<Shared>, ctx: &mut VcpuCtx<'_>, gpa: u64) -> Result<HypercallAnswer, PagerError> {
    let vcpu = ctx.index;
    let mut guard = shared.lock();
    let inner = &mut *guard;
    let Some(page) = inner.page_of(gpa) else {
        return Ok(Some(Err(Status::InvalidArgument)));
    };
    if let Some(broken) = ve_breaks::suspend_answer(inner, vcpu, gpa) {
        return Ok(Some(Ok(broken)));
    }
    let answer = inner.core.on_ve_request(vcpu, page, VeRequest::Suspend);
    if matches!(answer, VeAnswer::Now { .. } | VeAnswer::Wait { .. }) {
        answered(inner, vcpu, page);
    }
    let fetch = match answer {
        VeAnswer::Now { result, make_present } => {
            if make_present {
                fill(inner, page)?;
            }
            return Ok(Some(Ok([u64::from(result), 0])));
        }
        VeAnswer::Wait { fetch } => fetch,
        // Not answers to a suspend.
        VeAnswer::OutOfRange | VeAnswer::NoToken | VeAnswer::Parked { .. } => {
            return Ok(Some(Err(Status::InvalidArgument)));
        }
    };
    // The vCPU waits: nothing it could take is worth holding the page back for.
    complete_held_back_now(shared, inner, page);
    let complete_now = fetch.is_some() && submit(inner, page);
    drop(guard);
    if complete_now {
        complete_fetch(shared, page);
    }
    let shared = Arc::clone(shared);
    ctx.answer_after_exit(move || {
        let result = shared.timed_wait(
            vcpu,
            page,
            "ve suspend",
            |inner, time_up| suspend_result(inner, page, time_up),
            |result| {
                let shown = result.map_or(Arg::Text("time up".into()), |r| Arg::Uint(r.into()));
                vec![("page", Arg::Uint(page)), ("gpa", Arg::Hex(gpa)), ("result", shown)]
            },
        );
        // At the time limit the page may still be on its way: no result is claimed (the run
        // ends before the guest runs again and could read the answer).
        Ok(result.map(|r| [u64::from(r), 0]).ok_or(Status::Unavailable))
    });
    // Written after the exit instead.
    Ok(Some(Ok([0; 2])))
}

/// What a suspend's wait for `page` answers: the page's result, or `None` if the wait ended at
/// the run's time limit.
fn suspend_result(inner: &Inner, page: PageIndex, time_up: bool) -> Option<u32> {
    match inner.core.state(page) {
        Some(PageState::Failed) => Some(RESULT_FAILED),
        _ if time_up => None,
        _ => Some(RESULT_RETRY),
    }
}

/// `VePark`: a token of the vCPU's ring for the page, or the outcome now.
fn park(shared: &Shared, ctx: &VcpuCtx<'_>, gpa: u64) -> Result<HypercallAnswer, PagerError> {
    let vcpu = ctx.index;
    let mut guard = shared.lock();
    let inner = &mut *guard;
    let Some(page) = inner.page_of(gpa) else {
        return Ok(Some(Err(Status::InvalidArgument)));
    };
    if let Some(broken) = ve_breaks::park_answer(inner, vcpu, gpa) {
        return Ok(Some(Ok(broken)));
    }
    let ring = inner.vcpus.get(vcpu).and_then(Registration::active);
    if let Some(a) = ring {
        // Tokens whose resolutions the guest consumed are free again.
        observe_tail(inner, vcpu, a)?;
    }
    let Inner { core, vcpus, .. } = inner;
    let source: Option<&mut dyn TokenSource> =
        if ring.is_some() { vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()).map(|p| p as _) } else { None };
    let answer = core.on_ve_request(vcpu, page, VeRequest::Park(source));
    if matches!(answer, VeAnswer::Now { .. } | VeAnswer::Parked { .. }) {
        answered(inner, vcpu, page);
    }
    let (ret, fetch) = match answer {
        VeAnswer::Now { result, make_present } => {
            if make_present {
                fill(inner, page)?;
            }
            ([abi::NO_TOKEN, u64::from(result)], None)
        }
        VeAnswer::Parked { token, fetch } => {
            inner.timeline.event(vcpu, token.0, gpa, None);
            ([u64::from(token.0), 0], fetch)
        }
        VeAnswer::NoToken => return Ok(Some(Err(Status::NoToken))),
        VeAnswer::OutOfRange | VeAnswer::Wait { .. } => return Ok(Some(Err(Status::InvalidArgument))),
    };
    let complete_now = fetch.is_some() && submit(inner, page);
    drop(guard);
    if complete_now {
        // The resolution is in the ring before the call returns (the guest keeps it).
        complete_fetch(shared, page);
    }
    Ok(Some(Ok(ret)))
}

/// Forgets `page`'s unanswered #VEs: its fetch completed, nothing waits for their requests.
pub(super) fn forget_unanswered(ve: &mut [VeVcpu], page: PageIndex) {
    for v in ve {
        v.answered(page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_must_lie_within_the_idts_limit() {
        assert_eq!(gate_offset(20 * 16 + 15, abi::VECTOR, 16), Some(20 * 16));
        assert_eq!(gate_offset(20 * 16 + 14, abi::VECTOR, 16), None, "one byte short");
        assert_eq!(gate_offset(20 * 8 + 7, abi::VECTOR, 8), Some(20 * 8));
        assert_eq!(gate_offset(0, abi::VECTOR, 8), None);
    }

    #[test]
    fn a_gate_gives_its_target_only_when_present() {
        // A 64-bit interrupt gate: offset 0xFFFF_8000_1234_5678, selector 0x10, P=1, type 0xE.
        let mut gate = [0x78, 0x56, 0x10, 0, 0, 0x8E, 0x34, 0x12, 0x00, 0x80, 0xFF, 0xFF, 0, 0, 0, 0];
        assert_eq!(gate_target(&gate, true), Some((0x10, 0xFFFF_8000_1234_5678)));
        assert_eq!(gate_target(&gate, false), Some((0x10, 0x1234_5678)), "a 32-bit gate's 8 bytes");
        gate[5] = 0x0E;
        assert_eq!(gate_target(&gate, true), None, "not present");
    }

    /// A guest whose IDT base is near the top of the address space (LIDT takes any canonical
    /// base): with `NMI_WITH_NEXT_VE` armed, the host's look-up of the #VE handler computed
    /// IDT.base 0xFFFF_FFFF_FFFF_FF00 + 20 * 16 and overflowed (a panic in debug builds, a read
    /// at 0x40 in release). The sum wraps as the processor's does: modulo 2^64 in long mode,
    /// modulo 4 GiB outside it, and so does the LDT's base plus a selector's offset.
    #[test]
    fn a_table_base_near_the_top_wraps_as_the_processors_address_arithmetic_does() {
        let mut sregs = kvm_sregs { efer: 1 << 10, ..Default::default() };
        sregs.idt = kvm_bindings::kvm_dtable { base: 0xFFFF_FFFF_FFFF_FF00, limit: 0xFFF, ..Default::default() };
        let at = std::cell::Cell::new(None);
        let no_memory = |addr: u64, _: &mut [u8]| -> Option<()> {
            at.set(Some(addr));
            None
        };
        assert_eq!(handler_in_tables(&sregs, abi::VECTOR, no_memory), None);
        assert_eq!(at.get(), Some(0x40), "base + 20 * 16 modulo 2^64");
        // 32-bit: a present gate with selector 0x0C (the LDT's entry 1) at IDT 0xFFFF_FF00 + 160;
        // the LDT at 0xFFFF_FFFF_FFFF_FFF8 (a 64-bit base left in the hidden part) holds its
        // descriptor at (base + 8) mod 4 GiB = 0.
        sregs.efer = 0;
        sregs.idt.base = 0xFFFF_FF00;
        sregs.ldt.base = 0xFFFF_FFFF_FFFF_FFF8;
        sregs.ldt.limit = 0xF;
        let reads = std::cell::RefCell::new(Vec::new());
        let memory = |addr: u64, buf: &mut [u8]| {
            reads.borrow_mut().push(addr);
            let gate = [0x78, 0x56, 0x0C, 0, 0, 0x8E, 0x34, 0x12];
            let descriptor = [0xFF, 0xFF, 0x00, 0x00, 0x10, 0x9A, 0xCF, 0x80];
            buf.copy_from_slice(if addr == 0 { &descriptor } else { &gate });
            Some(())
        };
        assert_eq!(handler_in_tables(&sregs, abi::VECTOR, memory), Some(0x8010_0000 + 0x1234_5678));
        assert_eq!(*reads.borrow(), [0xFFFF_FFA0, 0]);
    }

    /// Any descriptor tables a guest sets up (bases and limits biased toward the edges, long
    /// mode or not), over memory of any contents: the handler's address is the one the tables
    /// give, computed here from the same bytes, and every read is at the table's base plus the
    /// entry's offset as the processor adds them.
    #[test]
    fn the_handler_address_is_the_one_the_guests_tables_give() {
        use crate::props::{check, edge_u64};
        use proptest::prelude::*;
        // Memory of any contents: each byte a hash of its address and the case's seed.
        fn byte(seed: u64, addr: u64) -> u8 {
            ((addr ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
        }
        let tables = (edge_u64(), edge_u64(), edge_u64(), any::<(u16, u16, u32, bool, u64)>());
        check("handler address", 3000, tables, |(idt, gdt, ldt, (idt_limit, gdt_limit, ldt_limit, long, seed))| {
            let mut sregs = kvm_sregs { efer: if long { 1 << 10 } else { 0 }, ..Default::default() };
            sregs.idt = kvm_bindings::kvm_dtable { base: idt, limit: idt_limit, ..Default::default() };
            sregs.gdt = kvm_bindings::kvm_dtable { base: gdt, limit: gdt_limit, ..Default::default() };
            sregs.ldt.base = ldt;
            sregs.ldt.limit = ldt_limit;
            let reads = std::cell::RefCell::new(Vec::new());
            let memory = |addr: u64, buf: &mut [u8]| {
                reads.borrow_mut().push(addr);
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = byte(seed, addr.wrapping_add(i as u64));
                }
                Some(())
            };
            let got = handler_in_tables(&sregs, abi::VECTOR, memory);

            // The same, from the architecture's rules.
            let at = u64::from(abi::VECTOR) * if long { 16 } else { 8 };
            let gate_at = if long { Some(idt.wrapping_add(at)) } else { Some(idt.wrapping_add(at) & 0xFFFF_FFFF) };
            let in_limit = at + if long { 15 } else { 7 } <= u64::from(idt_limit);
            let gate = |i: u64| u64::from(byte(seed, gate_at.unwrap_or(0).wrapping_add(i)));
            let present = gate(5) & 0x80 != 0;
            let offset = gate(0) | gate(1) << 8 | gate(6) << 16 | gate(7) << 24;
            let expected = match (in_limit, gate_at, present) {
                (true, Some(_), true) if long => {
                    Some(offset | (gate(8) | gate(9) << 8 | gate(10) << 16 | gate(11) << 24) << 32)
                }
                (true, Some(_), true) => {
                    let selector = gate(2) | gate(3) << 8;
                    let (table, limit) =
                        if selector & 4 != 0 { (ldt, u64::from(ldt_limit)) } else { (gdt, u64::from(gdt_limit)) };
                    let index = selector & !7;
                    (index != 0 && index + 7 <= limit).then(|| {
                        let start = table.wrapping_add(index) & 0xFFFF_FFFF;
                        let d = |i: u64| u64::from(byte(seed, start.wrapping_add(i)));
                        (d(2) | d(3) << 8 | d(4) << 16 | d(7) << 24).wrapping_add(offset) & 0xFFFF_FFFF
                    })
                }
                _ => None,
            };
            prop_assert_eq!(got, expected);
            let reads = reads.borrow();
            if let Some(&first) = reads.first() {
                prop_assert_eq!(Some(first), gate_at);
            }
            Ok(())
        });
    }

    #[test]
    fn a_descriptors_base_is_gathered_from_its_three_parts() {
        assert_eq!(segment_base(&[0xFF, 0xFF, 0x00, 0x00, 0x10, 0x9A, 0xCF, 0x80]), 0x8010_0000);
        assert_eq!(segment_base(&[0xFF, 0xFF, 0, 0, 0, 0x9A, 0xCF, 0]), 0, "flat");
    }
}
