//! #VE (`pvagent_abi::ve`, mode `ve`) as plain code: one vCPU's registration of its VE
//! information area (`MSR_VE_INFO`, checked here), its test switches and the #VEs it has not yet
//! answered with a request, and the rule that decides what an access to an absent page becomes
//! on a vCPU in mode `ve` ([`route`]). `ve_delivery` does the memory and KVM work; unit-tested
//! here.

use std::ops::Range;

use pvagent_abi::ve::{self as abi, fault};

use super::state::PageIndex;

/// Why a write of `MSR_VE_INFO` is refused (the guest gets #GP; nothing changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VeRefusal {
    /// Bits 11:1 set, or bit 0 clear with any other bit set (disabling is a write of 0).
    ReservedBits,
    /// The area's page is not within one RAM range of the memory map.
    OutsideRam,
}

/// Checks a write of `MSR_VE_INFO`: `Ok(Some(page))` enables the area at `page`, `Ok(None)`
/// disables it. `ram` is guest RAM as the memory map lists it (the rule of `MSR_DATA`).
pub fn check_msr(value: u64, ram: &[Range<u64>]) -> Result<Option<u64>, VeRefusal> {
    if value & abi::MSR_RESERVED != 0 {
        return Err(VeRefusal::ReservedBits);
    }
    if value & abi::MSR_ENABLE == 0 {
        return if value == 0 { Ok(None) } else { Err(VeRefusal::ReservedBits) };
    }
    let page = value & abi::MSR_ADDRESS_MASK;
    let in_ram = page.checked_add(0x1000).is_some_and(|end| ram.iter().any(|r| r.start <= page && end <= r.end));
    if !in_ram {
        return Err(VeRefusal::OutsideRam);
    }
    Ok(Some(page))
}

/// One vCPU's side of #VE.
#[derive(Clone, Debug, Default)]
pub struct VeVcpu {
    /// `MSR_VE_INFO` as last accepted (RDMSR returns it).
    msr: u64,
    /// [`fault`] switches armed for the next #VE.
    armed: u64,
    /// Pages of the #VEs delivered to this vCPU that no request of it named yet (each once):
    /// under `ResolutionTiming::AfterEventTaken` their fetches complete only once it did.
    pub unanswered: Vec<PageIndex>,
    /// [`fault::NMI_WITH_NEXT_VE`], armed: where a hardware breakpoint stops the vCPU for the
    /// NMI to be injected.
    pub nmi_breakpoint: Option<NmiBreakpoint>,
}

/// A breakpoint of the host's on a #VE handler ([`fault::NMI_WITH_NEXT_VE`]).
#[derive(Clone, Copy, Debug)]
pub struct NmiBreakpoint {
    /// The linear address of the handler's first instruction.
    pub at: u64,
    /// The guest's own debug registers when it was set, put back when it is cleared.
    pub guest_debugregs: kvm_bindings::kvm_debugregs,
}

impl VeVcpu {
    /// The area's guest-physical address, when it is enabled.
    pub fn area(&self) -> Option<u64> {
        (self.msr & abi::MSR_ENABLE != 0).then_some(self.msr & abi::MSR_ADDRESS_MASK)
    }

    /// RDMSR.
    pub fn read(&self) -> u64 {
        self.msr
    }

    /// WRMSR: stored if [`check_msr`] accepts it, otherwise nothing changes. An accepted write
    /// (disabling the area, or registering one, the same or another) forgets the #VEs not yet
    /// answered: the guest's handler starts afresh, and would never answer them.
    pub fn write(&mut self, value: u64, ram: &[Range<u64>]) -> Result<(), VeRefusal> {
        check_msr(value, ram)?;
        self.msr = value;
        self.forget_unanswered();
        Ok(())
    }

    /// Forgets every #VE not yet answered (its area gone or replaced, or the mode left `ve`):
    /// no fetch is held back for them any more.
    pub fn forget_unanswered(&mut self) {
        self.unanswered.clear();
    }

    /// `VeSetFaults`: arms `bits` (replacing what was armed) and returns what was armed, or
    /// `None` (nothing changes) when a bit is not a known switch.
    pub fn set_faults(&mut self, bits: u64) -> Option<u64> {
        if bits & !fault::ALL != 0 {
            return None;
        }
        Some(std::mem::replace(&mut self.armed, bits))
    }

    /// The switches armed now.
    pub fn armed(&self) -> u64 {
        self.armed
    }

    /// A #VE was delivered for `page`: it used (and cleared) every armed switch, and waits
    /// for a request.
    pub fn delivered(&mut self, page: PageIndex) -> u64 {
        if !self.unanswered.contains(&page) {
            self.unanswered.push(page);
        }
        std::mem::take(&mut self.armed)
    }

    /// A request named `page`: the #VE for it is answered.
    pub fn answered(&mut self, page: PageIndex) {
        self.unanswered.retain(|&p| p != page);
    }
}

/// What an access to an absent page becomes on a vCPU in mode `ve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The vCPU has no VE area enabled: what mode `ring` does (an event through its ring, if
    /// it registered one and can take it; otherwise the synchronous path).
    RingRules,
    /// Fill the VE area, set `busy`, raise #VE, start the page's fetch.
    Raise,
    /// The synchronous path: the vCPU waits for the page. `busy`: because the area's busy
    /// word is set (what VMX does: an ordinary EPT-violation exit), counted as a busy wait.
    Wait { busy: bool },
    /// An exception, NMI or interrupt is already being injected on this entry and the access
    /// has not run: re-enter without raising anything, so that event is delivered first; the
    /// access comes back when it is retried.
    ReenterFirst,
}

/// What the vCPU's state says of an access in mode `ve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessFacts {
    /// The vCPU's VE area is enabled.
    pub area_enabled: bool,
    /// The area's busy word (read with acquire; meaningful with `area_enabled`).
    pub busy: u32,
    /// [`fault::IGNORE_BUSY`] is armed.
    pub ignore_busy: bool,
    /// An exception, NMI or interrupt is already being injected on the next entry.
    pub event_in_delivery: bool,
    /// The access has not run and will be retried (memory fault, decoded EFAULT), as opposed
    /// to one KVM emulated and completed (MMIO exit).
    pub retried: bool,
    /// KVM could not emulate the instruction (a LOCKed read-modify-write on PVM): it runs only
    /// once its pages are present.
    pub unemulated: bool,
}

/// The busy-word rules: no VE area → the ring's rules; an instruction KVM cannot emulate →
/// the synchronous path (no exception can stand in for running it, as on the ring); `busy` set
/// (and the host not told to ignore it) → the synchronous path, as the processor does; an
/// event already being injected → the event first (re-enter if the access is retried, else the
/// synchronous path: an emulated access has completed and cannot be retried, and #VE cannot be
/// injected on top of another event); otherwise → #VE.
pub fn route(f: AccessFacts) -> Route {
    if !f.area_enabled {
        Route::RingRules
    } else if f.unemulated {
        Route::Wait { busy: false }
    } else if f.busy != 0 && !f.ignore_busy {
        Route::Wait { busy: true }
    } else if f.event_in_delivery {
        if f.retried { Route::ReenterFirst } else { Route::Wait { busy: false } }
    } else {
        Route::Raise
    }
}

/// The EPT-violation exit qualification the host reports for an access: read, write (both
/// for a read-modify-write), or neither when the host was not told (a memory-fault exit says
/// only where); the linear address valid and the access to its translation when known.
pub fn qualification(reads: bool, writes: bool, gla_known: bool) -> u64 {
    let mut q = 0;
    if reads {
        q |= abi::QUAL_READ;
    }
    if writes {
        q |= abi::QUAL_WRITE;
    }
    if gla_known {
        q |= abi::QUAL_GLA_VALID | abi::QUAL_GLA_TRANSLATED;
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM_END: u64 = 64 << 20;
    const RAM: &[Range<u64>] = &[0..0xA_0000, 0x10_0000..RAM_END];

    #[test]
    fn the_msr_takes_an_enabled_page_in_ram_or_zero() {
        assert_eq!(check_msr(0x20_0000 | 1, RAM), Ok(Some(0x20_0000)));
        assert_eq!(check_msr(0, RAM), Ok(None));
        assert_eq!(check_msr(0x9_F000 | 1, RAM), Ok(Some(0x9_F000)), "the last page below the hole");
        assert_eq!(check_msr((RAM_END - 0x1000) | 1, RAM), Ok(Some(RAM_END - 0x1000)));
        for reserved in [0x20_0000 | 2 | 1, 0x20_0800 | 1, 0x20_0000 | 0x10 | 1] {
            assert_eq!(check_msr(reserved, RAM), Err(VeRefusal::ReservedBits), "{reserved:#x}");
        }
        assert_eq!(check_msr(0x20_0000, RAM), Err(VeRefusal::ReservedBits), "disabling is a write of 0");
        for outside in [0xA_0000, 0xF_F000, RAM_END, !0xFFF] {
            assert_eq!(check_msr(outside | 1, RAM), Err(VeRefusal::OutsideRam), "{outside:#x}");
        }
    }

    /// Any value, with RAM that may reach the top of the address space: the area is enabled
    /// exactly when the value has no reserved bit, its enable bit, and a page that lies inside
    /// one RAM range; disabled by 0 alone.
    #[test]
    fn an_area_is_enabled_exactly_at_a_page_inside_ram() {
        use crate::props::{RAM_TO_TOP, check, edge_u64, lies_within};
        use proptest::prelude::*;
        let value = (edge_u64(), any::<u16>(), any::<bool>())
            .prop_map(|(v, low, clean)| if clean { (v & !0xFFF) | u64::from(low & 1) } else { v ^ u64::from(low) });
        check("VE area", 3000, (value, any::<bool>()), |(value, top)| {
            let ram = if top { RAM_TO_TOP } else { RAM };
            let page = value & !0xFFF;
            let expected = match value & 0xFFF {
                0 if value == 0 => Ok(None),
                1 if lies_within(ram, page, 0x1000) => Ok(Some(page)),
                1 => Err(VeRefusal::OutsideRam),
                _ => Err(VeRefusal::ReservedBits),
            };
            prop_assert_eq!(check_msr(value, ram), expected);
            Ok(())
        });
    }

    #[test]
    fn a_refused_write_changes_nothing_and_rdmsr_returns_the_last_accepted_value() {
        let mut v = VeVcpu::default();
        v.write(0x20_0000 | 1, RAM).unwrap();
        assert_eq!(v.write(0x30_0004 | 1, RAM), Err(VeRefusal::ReservedBits));
        assert_eq!(v.write(RAM_END | 1, RAM), Err(VeRefusal::OutsideRam));
        assert_eq!((v.read(), v.area()), (0x20_0000 | 1, Some(0x20_0000)));
        v.write(0, RAM).unwrap();
        assert_eq!((v.read(), v.area()), (0, None));
    }

    #[test]
    fn an_accepted_write_forgets_the_unanswered_ves_and_a_refused_one_does_not() {
        let mut v = VeVcpu::default();
        v.write(0x20_0000 | 1, RAM).unwrap();
        v.delivered(3);
        assert_eq!(v.write(0x20_0004 | 1, RAM), Err(VeRefusal::ReservedBits));
        assert_eq!(v.unanswered, [3], "a refused write changes nothing");
        v.write(0x20_0000 | 1, RAM).unwrap();
        assert!(v.unanswered.is_empty(), "registered again");
        v.delivered(4);
        v.write(0, RAM).unwrap();
        assert!(v.unanswered.is_empty(), "disabled");
    }

    #[test]
    fn switches_are_one_shot_and_unknown_bits_are_refused() {
        let mut v = VeVcpu::default();
        assert_eq!(v.set_faults(fault::IGNORE_BUSY), Some(0));
        assert_eq!(v.set_faults(1 << 2), None);
        assert_eq!(v.armed(), fault::IGNORE_BUSY, "a refused call changes nothing");
        assert_eq!(v.set_faults(fault::ALL), Some(fault::IGNORE_BUSY), "the previous switches");
        assert_eq!(v.delivered(3), fault::ALL, "the next #VE uses them");
        assert_eq!(v.armed(), 0, "and they are gone");
        assert_eq!(v.delivered(3), 0);
        assert_eq!(v.unanswered, [3], "a page waits for one request however many #VEs named it");
        v.answered(3);
        assert!(v.unanswered.is_empty());
    }

    fn facts() -> AccessFacts {
        AccessFacts {
            area_enabled: true,
            busy: 0,
            ignore_busy: false,
            event_in_delivery: false,
            retried: true,
            unemulated: false,
        }
    }

    #[test]
    fn a_free_area_raises_ve_and_a_busy_one_waits() {
        assert_eq!(route(facts()), Route::Raise);
        assert_eq!(route(AccessFacts { retried: false, ..facts() }), Route::Raise, "an emulated access too");
        assert_eq!(route(AccessFacts { busy: abi::BUSY, ..facts() }), Route::Wait { busy: true });
        assert_eq!(route(AccessFacts { busy: 1, ..facts() }), Route::Wait { busy: true }, "any non-zero value");
    }

    #[test]
    fn no_area_means_the_rings_rules() {
        assert_eq!(route(AccessFacts { area_enabled: false, busy: abi::BUSY, ..facts() }), Route::RingRules);
        assert_eq!(route(AccessFacts { area_enabled: false, ..facts() }), Route::RingRules);
    }

    #[test]
    fn ignore_busy_raises_over_a_set_busy_word() {
        assert_eq!(route(AccessFacts { busy: abi::BUSY, ignore_busy: true, ..facts() }), Route::Raise);
    }

    #[test]
    fn an_event_in_delivery_goes_first_and_an_unemulated_access_waits() {
        let pending = AccessFacts { event_in_delivery: true, ..facts() };
        assert_eq!(route(pending), Route::ReenterFirst);
        assert_eq!(route(AccessFacts { retried: false, ..pending }), Route::Wait { busy: false });
        assert_eq!(route(AccessFacts { unemulated: true, retried: false, ..facts() }), Route::Wait { busy: false });
    }

    #[test]
    fn the_qualification_says_what_the_host_knows() {
        assert_eq!(qualification(true, false, false), abi::QUAL_READ);
        assert_eq!(qualification(true, true, true), 0b11 | 1 << 7 | 1 << 8);
        assert_eq!(qualification(false, false, false), 0, "a memory-fault exit says only where");
    }
}
