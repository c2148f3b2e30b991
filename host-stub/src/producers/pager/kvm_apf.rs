//! The host side of KVM's async page fault ABI (`pvagent_abi::kvm_apf`) for one vCPU, as
//! plain code: the three MSRs checked as KVM checks them, its tokens (KVM's numbering, at most
//! 64 out), and its "page ready" queue (one delivered at a time, the next after the guest's
//! acknowledgement). `kvm_apf_delivery` does the memory and KVM work; unit-tested here.
//!
//! Where this stub differs from KVM, it refuses rather than misbehaves, and `docs/abi.md`
//! says so: enabling needs a "page ready" vector of 32 or above, and while enabled the vector
//! stays one (KVM would raise whatever is set, vector 0 included); the #PF VM-exit delivery bit is refused (not offered: no nested
//! guests here); a refused enabling changes nothing (as in current KVM, which checks the value,
//! the area's address included, before it stores it). The "send always" bit is accepted and
//! kept, but "page not present" goes to CPL 3 only. The next "page ready" waits for the
//! guest's acknowledgement, which is stricter than KVM (it delivers the next once the area's
//! `token` reads 0, and takes the acknowledgement as a hint to look).

use std::collections::VecDeque;
use std::ops::Range;

use pvagent_abi::kvm_apf::{self as abi, MAX_OUTSTANDING, TOKEN_WAKE_ALL};
use pvagent_abi::pnp::Token;

use super::state::{PageIndex, TokenSource, Via};

/// Why a write to one of the ABI's MSRs is refused (#GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApfRefusal {
    /// Reserved bits set (`MSR_ASYNC_PF_EN` bits 5:4, `MSR_ASYNC_PF_INT` bits 63:8).
    ReservedBits,
    /// Delivery as #PF VM exits, which this host does not offer.
    NotOffered,
    /// Enabling with no "page ready" vector of 32 or above set, or setting one below 32 while
    /// enabled.
    NoVector,
    /// The area's 64 bytes are not within one RAM range.
    OutsideRam,
}

/// What an accepted write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApfWrite {
    /// Nothing the host must act on.
    Stored,
    /// Async page faults are on (again): a wake-all was queued if nothing else was.
    Enabled,
    /// Async page faults are off: the tokens out were forgotten, none will be delivered.
    Disabled { forgotten: usize },
    /// The guest acknowledged the "page ready" delivered last (whose token it frees, if any).
    Acked(Option<u32>),
}

/// The registration as it stands when async page faults are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApfActive {
    pub area_gpa: u64,
    pub vector: u8,
}

/// One vCPU's side of the ABI.
#[derive(Clone, Debug, Default)]
pub struct ApfVcpu {
    en_msr: u64,
    int_msr: u64,
    /// KVM's vCPU id, in every token's low bits.
    vcpu_id: u32,
    /// KVM's token counter.
    id: u32,
    /// Tokens handed out with a "page not present" whose "page ready" was not acknowledged.
    outstanding: Vec<u32>,
    /// "Page ready" tokens waiting for the slot, in order.
    ready: VecDeque<u32>,
    /// The "page ready" delivered and not acknowledged yet.
    in_flight: Option<u32>,
    /// The token of the last "page not present" delivered.
    pub last_not_present: Option<u32>,
    /// A "page not present" owed after its "page ready" went first (a forced wake-before-wait).
    owed: Option<Owed>,
}

/// A "page not present" owed after its "page ready" went first: delivered at the vCPU's next
/// access KVM's ABI can deliver at (a retry with the window open), whatever page that access
/// is to: the guest keys on the token (its #PF handler finds the kept wake and returns, and the
/// access is retried). Until then the token is owed, and its page is present by its state;
/// by its memory too once an access or a control needs it (`unfilled` false).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owed {
    pub token: Token,
    pub page: PageIndex,
    /// The access the token was handed out for (for the timeline).
    pub gpa: u64,
    pub gva: Option<u64>,
    /// The page's memory is still to be filled.
    pub unfilled: bool,
}

impl ApfVcpu {
    /// The state of vCPU `vcpu_id` before the guest writes anything.
    pub fn new(vcpu_id: u32) -> Self {
        Self { vcpu_id, ..Self::default() }
    }

    /// Whether `msr` is one of the ABI's.
    pub fn is_msr(msr: u32) -> bool {
        matches!(msr, abi::MSR_ASYNC_PF_EN | abi::MSR_ASYNC_PF_INT | abi::MSR_ASYNC_PF_ACK)
    }

    /// The registration, when async page faults are on.
    pub fn active(&self) -> Option<ApfActive> {
        abi::enabled(self.en_msr)
            .then_some(ApfActive { area_gpa: self.en_msr & abi::EN_ADDRESS_MASK, vector: self.int_msr as u8 })
    }

    /// RDMSR: the values last accepted; the acknowledgement MSR reads 0.
    pub fn read(&self, msr: u32) -> u64 {
        match msr {
            abi::MSR_ASYNC_PF_EN => self.en_msr,
            abi::MSR_ASYNC_PF_INT => self.int_msr,
            _ => 0,
        }
    }

    /// WRMSR of `value` to `msr` (one of the ABI's); `ram` is the guest RAM the memory map
    /// lists. A refusal changes nothing.
    pub fn write(&mut self, msr: u32, value: u64, ram: &[Range<u64>]) -> Result<ApfWrite, ApfRefusal> {
        match msr {
            abi::MSR_ASYNC_PF_INT => {
                if value & !abi::INT_VECTOR_MASK != 0 {
                    return Err(ApfRefusal::ReservedBits);
                }
                // The rule enabling checks holds while enabled: "page ready" is never raised at
                // an exception's vector.
                if value < 32 && abi::enabled(self.en_msr) {
                    return Err(ApfRefusal::NoVector);
                }
                self.int_msr = value;
                Ok(ApfWrite::Stored)
            }
            abi::MSR_ASYNC_PF_EN => {
                if value & abi::EN_RESERVED != 0 {
                    return Err(ApfRefusal::ReservedBits);
                }
                if value & abi::EN_DELIVERY_AS_PF_VMEXIT != 0 {
                    return Err(ApfRefusal::NotOffered);
                }
                if !abi::enabled(value) {
                    let forgotten = self.outstanding.len();
                    *self = Self {
                        en_msr: value,
                        int_msr: self.int_msr,
                        vcpu_id: self.vcpu_id,
                        id: self.id,
                        ..Self::default()
                    };
                    return Ok(ApfWrite::Disabled { forgotten });
                }
                if self.int_msr < 32 {
                    return Err(ApfRefusal::NoVector);
                }
                let gpa = value & abi::EN_ADDRESS_MASK;
                let end = gpa.checked_add(abi::DATA_SIZE);
                if !end.is_some_and(|end| ram.iter().any(|r| r.start <= gpa && end <= r.end)) {
                    return Err(ApfRefusal::OutsideRam);
                }
                self.en_msr = value;
                // KVM queues a wake-all on every enabling, unless completions wait already.
                if self.ready.is_empty() {
                    self.ready.push_back(TOKEN_WAKE_ALL);
                }
                Ok(ApfWrite::Enabled)
            }
            _ => {
                // The acknowledgement: bit 0 frees the slot, other bits are ignored (as KVM).
                if value & abi::ACK == 0 {
                    return Ok(ApfWrite::Stored);
                }
                let acked = self.in_flight.take().filter(|t| *t != TOKEN_WAKE_ALL);
                if let Some(token) = acked {
                    self.outstanding.retain(|t| *t != token);
                }
                Ok(ApfWrite::Acked(acked))
            }
        }
    }

    /// Queues the "page ready" for `token`, if it is still out (the guest may have turned
    /// async page faults off since: then KVM delivers nothing). Returns whether it was queued.
    pub fn queue_ready(&mut self, token: u32) -> bool {
        let out = self.outstanding.contains(&token) && !self.ready.contains(&token) && self.in_flight != Some(token);
        if out {
            self.ready.push_back(token);
        }
        out
    }

    /// The next "page ready" to deliver, if one waits, none is in flight, async page faults are
    /// on, and the guest's slot is free (`slot_free`: the area's `token` reads 0). It is in
    /// flight from here until the guest acknowledges it.
    pub fn next_ready(&mut self, slot_free: bool) -> Option<u32> {
        if self.active().is_none() || self.in_flight.is_some() || !slot_free {
            return None;
        }
        let token = self.ready.pop_front()?;
        self.in_flight = Some(token);
        Some(token)
    }

    /// Owes the "page not present" for `token`, after its "page ready" (at an access to
    /// `page`, whose memory stays to be filled). At most one is owed: while one is, the next
    /// access that could carry a new event delivers it instead. Returns false, changing
    /// nothing, if one is owed already.
    pub fn owe(&mut self, token: Token, page: PageIndex, gpa: u64, gva: Option<u64>) -> bool {
        if self.owed.is_some() {
            return false;
        }
        self.owed = Some(Owed { token, page, gpa, gva, unfilled: true });
        true
    }

    /// Whether a "page not present" is owed.
    pub fn owes(&self) -> bool {
        self.owed.is_some()
    }

    /// The "page not present" owed, if one is.
    pub fn owed(&self) -> Option<Owed> {
        self.owed
    }

    /// The owed "page not present", to deliver now (at a retry with the window open, whatever
    /// its page): it is owed no more; fill its page first if `unfilled`.
    pub fn take_owed(&mut self) -> Option<Owed> {
        self.owed.take()
    }

    /// The owed token's page, if its memory is still to be filled and `page` is it (or `page`
    /// is `None`: a control needs every page): it counts as filled from here, and the token
    /// stays owed.
    pub fn take_unfilled(&mut self, page: Option<PageIndex>) -> Option<PageIndex> {
        let owed = self.owed.as_mut().filter(|o| o.unfilled && page.is_none_or(|p| p == o.page))?;
        owed.unfilled = false;
        Some(owed.page)
    }

    /// At a wake-all: the guest drops every wake it kept, so a "page not present" owed whose
    /// "page ready" went before the wake-all would park its task for good. It is forgotten, as
    /// at a disable; returns its page if its memory is still to be filled. One whose "page
    /// ready" is still queued (behind the wake-all) stays owed: the guest keeps that wake anew.
    pub fn forget_owed(&mut self) -> Option<PageIndex> {
        let ready_to_come = self.owed.is_some_and(|o| self.ready.contains(&o.token.0));
        if ready_to_come {
            return None;
        }
        self.owed.take().filter(|o| o.unfilled).map(|o| o.page)
    }

    /// Whether `page` is owed's and its memory still to be filled.
    pub fn owes_fill_of(&self, page: PageIndex) -> bool {
        self.owed.is_some_and(|o| o.unfilled && o.page == page)
    }

    /// Tokens handed out whose "page ready" the guest has not acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether a "page ready" was delivered and not acknowledged yet.
    pub fn ready_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether a "page ready" waits to be delivered or acknowledged.
    pub fn ready_pending(&self) -> bool {
        !self.ready.is_empty() || self.in_flight.is_some()
    }

    /// A token KVM's numbering has not handed out (the id half a cycle of 2^20 ahead of the
    /// counter) and that is not out: for a breach on purpose.
    pub fn never_issued(&self) -> u32 {
        let mut id = self.id.wrapping_add(1 << 19);
        while id << 12 == 0 || self.outstanding.contains(&abi::kvm_token(id, self.vcpu_id)) {
            id = abi::next_token_id(id);
        }
        abi::kvm_token(id, self.vcpu_id)
    }

    /// Queues a "page ready" for `token` whatever its state (a breach on purpose: the guest
    /// has no "page not present" for it). Its acknowledgement frees nothing.
    pub fn queue_forged_ready(&mut self, token: u32) {
        self.ready.push_back(token);
    }

    /// A token out whose "page ready" is neither queued nor delivered: its waiter still waits.
    pub fn waiting_token(&self) -> Option<u32> {
        self.outstanding.iter().copied().find(|t| !self.ready.contains(t) && self.in_flight != Some(*t))
    }
}

impl TokenSource for ApfVcpu {
    fn via(&self) -> Via {
        Via::KvmApf
    }

    /// KVM's next token, unless 64 are out (KVM then handles the fault synchronously).
    fn alloc(&mut self) -> Option<Token> {
        if self.active().is_none() || self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        self.id = abi::next_token_id(self.id);
        let token = abi::kvm_token(self.id, self.vcpu_id);
        self.outstanding.push(token);
        Some(Token(token))
    }
}

/// The token source of a run in `KvmApfKernel` mode: KVM picked the token the guest sees, and
/// the host stub, which sees only KVM's worker fault on the page, numbers it for its own
/// accounts and timeline.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelTokens {
    next: u32,
}

impl TokenSource for KernelTokens {
    fn via(&self) -> Via {
        Via::KvmApfKernel
    }

    fn alloc(&mut self) -> Option<Token> {
        self.next = self.next.wrapping_add(1).max(1);
        Some(Token(self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: &[Range<u64>] = &[0..0xA_0000, 0x10_0000..0x400_0000];
    const ON: u64 = abi::EN_ENABLED | abi::EN_DELIVERY_AS_INT;

    fn enabled() -> ApfVcpu {
        let mut v = ApfVcpu::new(0);
        v.write(abi::MSR_ASYNC_PF_INT, 0x53, RAM).unwrap();
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0040 | ON, RAM), Ok(ApfWrite::Enabled));
        v
    }

    #[test]
    fn registration_is_checked_as_kvm_checks_it() {
        let mut v = ApfVcpu::new(0);
        assert_eq!(v.write(abi::MSR_ASYNC_PF_INT, 0x153, RAM), Err(ApfRefusal::ReservedBits));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0000 | ON, RAM), Err(ApfRefusal::NoVector));
        v.write(abi::MSR_ASYNC_PF_INT, 0x53, RAM).unwrap();
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0010 | ON, RAM), Err(ApfRefusal::ReservedBits));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0000 | ON | 4, RAM), Err(ApfRefusal::NotOffered));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0xA_0000 | ON, RAM), Err(ApfRefusal::OutsideRam));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, !0x3F | ON, RAM), Err(ApfRefusal::OutsideRam));
        assert_eq!(v.read(abi::MSR_ASYNC_PF_EN), 0, "a refusal changes nothing");
        // Enabled without delivery as an interrupt: accepted, and nothing is delivered.
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0000 | 1, RAM), Ok(ApfWrite::Disabled { forgotten: 0 }));
        assert_eq!(v.active(), None);
        assert_eq!(v.alloc(), None);
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0x20_0000 | ON, RAM), Ok(ApfWrite::Enabled));
        assert_eq!(v.active(), Some(ApfActive { area_gpa: 0x20_0000, vector: 0x53 }));
        assert_eq!(v.read(abi::MSR_ASYNC_PF_ACK), 0);
    }

    #[test]
    fn enabling_queues_a_wake_all_and_page_readies_go_one_at_a_time() {
        let mut v = enabled();
        let a = v.alloc().unwrap().0;
        let b = v.alloc().unwrap().0;
        assert_eq!((a, b), (0x1000, 0x2000), "KVM's numbering, vCPU 0");
        assert!(v.queue_ready(b) && v.queue_ready(a));
        assert!(!v.queue_ready(a), "queued once");
        assert_eq!(v.next_ready(false), None, "the guest's slot is busy");
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL), "the enabling's wake-all first");
        assert_eq!(v.next_ready(true), None, "one in flight until acknowledged");
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM), Ok(ApfWrite::Acked(None)));
        assert_eq!(v.next_ready(true), Some(b));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, 0, RAM), Ok(ApfWrite::Stored), "bit 0 clear: no acknowledgement");
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM), Ok(ApfWrite::Acked(Some(b))));
        assert_eq!(v.outstanding(), 1);
        assert_eq!(v.next_ready(true), Some(a));
        v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM).unwrap();
        assert_eq!((v.outstanding(), v.ready_pending()), (0, false));
    }

    #[test]
    fn enabling_again_wakes_all_unless_completions_wait() {
        let mut v = enabled();
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL));
        v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM).unwrap();
        let a = v.alloc().unwrap().0;
        v.write(abi::MSR_ASYNC_PF_EN, 0x20_0040 | ON, RAM).unwrap();
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL));
        assert_eq!(v.outstanding(), 1, "a wake-all forgets nothing: the token's own page ready still comes");
        v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM).unwrap();
        assert!(v.queue_ready(a));
        v.write(abi::MSR_ASYNC_PF_EN, 0x20_0040 | ON, RAM).unwrap();
        assert_eq!(v.next_ready(true), Some(a), "a completion was waiting: no wake-all queued");
        v.write(abi::MSR_ASYNC_PF_ACK, 1, RAM).unwrap();
        assert!(!v.ready_pending());
    }

    #[test]
    fn disabling_forgets_the_tokens_out() {
        let mut v = enabled();
        let a = v.alloc().unwrap().0;
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, 0, RAM), Ok(ApfWrite::Disabled { forgotten: 1 }));
        assert!(!v.queue_ready(a), "its fetch completing later delivers nothing");
        assert_eq!((v.outstanding(), v.ready_pending()), (0, false));
        v.write(abi::MSR_ASYNC_PF_EN, 0x20_0040 | ON, RAM).unwrap();
        assert_ne!(v.alloc().map(|t| t.0), Some(a), "tokens keep counting");
    }

    /// Found by the property below: `MSR_ASYNC_PF_INT` 0x20, `MSR_ASYNC_PF_EN` enabled, then
    /// `MSR_ASYNC_PF_INT` 0 was accepted, and "page ready" would have been raised at vector 0
    /// (#DE's), which enabling refuses.
    #[test]
    fn the_vector_stays_32_or_above_while_enabled() {
        let mut v = enabled();
        for low in [0, 1, 14, 31] {
            assert_eq!(v.write(abi::MSR_ASYNC_PF_INT, low, RAM), Err(ApfRefusal::NoVector), "{low}");
        }
        assert_eq!(v.active().map(|a| a.vector), Some(0x53), "a refusal changes nothing");
        assert_eq!(v.write(abi::MSR_ASYNC_PF_INT, 0x20, RAM), Ok(ApfWrite::Stored));
        v.write(abi::MSR_ASYNC_PF_EN, 0, RAM).unwrap();
        assert_eq!(v.write(abi::MSR_ASYNC_PF_INT, 0, RAM), Ok(ApfWrite::Stored), "while disabled, anything");
    }

    /// Any writes to the three MSRs, with RAM that may reach the top of the address space: a
    /// refused write changes nothing, and whenever async page faults are on, the area's 64
    /// bytes lie inside one RAM range and the vector is 32 or above.
    #[test]
    fn an_enabled_area_lies_in_ram_and_a_refused_write_changes_nothing() {
        use crate::props::{RAM_TO_TOP, check, edge_u64, lies_within};
        use proptest::prelude::*;
        use proptest::sample::select;
        // Each MSR's values as a guest would try them: an area at an edge address with any of
        // the enable bits, a vector (a reserved bit now and then), an acknowledgement.
        let write = (select(&[0, 1, 2, 3][..]), edge_u64(), any::<u8>()).prop_map(|(kind, v, low)| match kind {
            0 => (abi::MSR_ASYNC_PF_EN, (v & !0x3F) | u64::from(low & 0xF)),
            1 => (abi::MSR_ASYNC_PF_INT, u64::from(low) | if v & 1 == 0 { 0 } else { v & !0xFF }),
            2 => (abi::MSR_ASYNC_PF_ACK, v),
            _ => (abi::MSR_ASYNC_PF_EN, v ^ u64::from(low)),
        });
        let writes = proptest::collection::vec(write, 1..=8);
        check("KVM async page fault MSRs", 3000, (writes, any::<bool>()), |(writes, top)| {
            let ram = if top { RAM_TO_TOP } else { RAM };
            let mut v = ApfVcpu::new(1);
            for (msr, value) in writes {
                let before = (v.read(abi::MSR_ASYNC_PF_EN), v.read(abi::MSR_ASYNC_PF_INT), v.outstanding());
                if v.write(msr, value, ram).is_err() {
                    let after = (v.read(abi::MSR_ASYNC_PF_EN), v.read(abi::MSR_ASYNC_PF_INT), v.outstanding());
                    prop_assert_eq!(after, before, "refused {:#x} to {:#x}", value, msr);
                }
                if let Some(a) = v.active() {
                    prop_assert!(lies_within(ram, a.area_gpa, abi::DATA_SIZE), "{:x?}", a);
                    prop_assert!(a.vector >= 32, "{:x?}", a);
                }
            }
            Ok(())
        });
    }

    /// Found by review: enabling again while a "page not present" is owed queues a wake-all,
    /// after which the guest has no wake kept for the owed token.
    #[test]
    fn a_wake_all_forgets_the_owed_page_not_present() {
        let mut v = enabled();
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, abi::ACK, RAM), Ok(ApfWrite::Acked(None)));
        let token = v.alloc().unwrap();
        assert!(v.owe(token, 7, 0x7000, None));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, v.read(abi::MSR_ASYNC_PF_EN), RAM), Ok(ApfWrite::Enabled));
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL), "enabling again queues a wake-all");
        assert_eq!(v.forget_owed(), Some(7), "its page still to be filled");
        assert!(!v.owes());
        // One whose page was filled already leaves nothing to fill.
        assert!(v.owe(Token(token.0 + 1), 8, 0x8000, None));
        assert_eq!(v.take_unfilled(Some(8)), Some(8));
        assert_eq!(v.forget_owed(), None);
        assert!(!v.owes());
    }

    /// Found by review: the wake-all queued behind an unacknowledged "page ready", and a forced
    /// early "page ready" queued behind the wake-all. The guest keeps that wake after the
    /// wake-all, so its "page not present" must stay owed.
    #[test]
    fn an_owed_page_not_present_whose_page_ready_is_still_queued_stays_owed() {
        let mut v = enabled();
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, abi::ACK, RAM), Ok(ApfWrite::Acked(None)));
        let (a, t) = (v.alloc().unwrap(), v.alloc().unwrap());
        assert!(v.queue_ready(a.0));
        assert_eq!(v.next_ready(true), Some(a.0), "in flight, not acknowledged");
        assert_eq!(v.write(abi::MSR_ASYNC_PF_EN, v.read(abi::MSR_ASYNC_PF_EN), RAM), Ok(ApfWrite::Enabled));
        assert!(v.queue_ready(t.0), "after the wake-all");
        assert!(v.owe(t, 7, 0x7000, None));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, abi::ACK, RAM), Ok(ApfWrite::Acked(Some(a.0))));
        assert_eq!(v.next_ready(true), Some(TOKEN_WAKE_ALL));
        assert_eq!(v.forget_owed(), None, "its page ready still to come");
        assert!(v.owes() && v.owes_fill_of(7));
        assert_eq!(v.write(abi::MSR_ASYNC_PF_ACK, abi::ACK, RAM), Ok(ApfWrite::Acked(None)));
        assert_eq!(v.next_ready(true), Some(t.0));
        assert!(v.owes(), "owed until an access can carry it");
    }

    /// Found by the soak: a "page not present" owed after its "page ready" was dropped when
    /// the vCPU's next access went to another page. It stays owed until an access can carry
    /// it, whatever page that is to; its page's memory is filled once, when first needed.
    #[test]
    fn an_owed_page_not_present_is_delivered_once_whatever_the_next_access() {
        let mut v = enabled();
        let token = v.alloc().unwrap();
        assert!(v.owe(token, 7, 0x7000, Some(0x40_7000)));
        assert!(!v.owe(Token(0x9000), 8, 0x8000, None), "one at a time");
        assert!(v.owes() && v.owes_fill_of(7) && !v.owes_fill_of(8));
        // An access to another page that cannot carry it (CPL 0, say) fills nothing.
        assert_eq!(v.take_unfilled(Some(8)), None);
        // Another access (or a control) needs the page: filled once, the token still owed.
        assert_eq!(v.take_unfilled(Some(7)), Some(7));
        assert_eq!(v.take_unfilled(None), None, "filled once");
        assert!(v.owes() && !v.owes_fill_of(7));
        // The next access that can carry it, to any page, delivers it, once.
        let owed = v.take_owed().unwrap();
        assert_eq!((owed.token, owed.page, owed.gpa, owed.unfilled), (token, 7, 0x7000, false));
        assert_eq!(v.take_owed(), None);
        // A control settling every page fills an owed one still unfilled, and keeps it owed.
        assert!(v.owe(Token(0x9000), 8, 0x8000, None));
        assert_eq!(v.take_unfilled(None), Some(8));
        assert_eq!(v.take_owed().map(|o| (o.token, o.unfilled)), Some((Token(0x9000), false)));
        // Turning the ABI off forgets it (the guest drops its kept wakes then).
        assert!(v.owe(Token(0xA000), 9, 0x9000, None));
        v.write(abi::MSR_ASYNC_PF_EN, 0, RAM).unwrap();
        assert!(!v.owes());
    }

    #[test]
    fn at_most_64_tokens_are_out() {
        let mut v = enabled();
        let tokens: Vec<u32> = (0..MAX_OUTSTANDING).map(|_| v.alloc().unwrap().0).collect();
        assert_eq!(v.alloc(), None);
        let mut unique = tokens.clone();
        unique.dedup();
        assert_eq!(unique.len(), 64);
        assert!(tokens.iter().all(|t| t & 0xFFF == 0 && *t != 0));
    }
}
