//! A vCPU's registration of the page-not-present protocol: the three MSRs the guest writes,
//! checked against the ABI's rules, and when events can be delivered to the vCPU (interrupt
//! semantics: RFLAGS.IF, no interrupt shadow, the local APIC's processor priority).

use pvagent_abi::pnp::{
    self as abi, DATA_ALIGN, DATA_RESERVED, MAX_RING_ENTRIES, MSR_ENABLE, RING_ORDER_MASK, RING_ORDER_SHIFT,
    RING_RESERVED,
};

use std::ops::Range;

use super::tokens::TokenPool;

/// The protocol as registered on one vCPU.
#[derive(Clone, Debug, Default)]
pub struct Registration {
    /// Raw MSR values, as read back by RDMSR.
    pub vectors_msr: u64,
    pub ring_msr: u64,
    pub data_msr: u64,
    /// The token pool of the registered ring.
    pub pool: Option<TokenPool>,
}

/// What an enabled registration says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Active {
    pub event_vector: u8,
    pub resolution_vector: u8,
    /// The guest drains its ring when it takes an event ([`abi::VECTORS_DRAIN_AT_EVENT`]).
    pub drains_at_event: bool,
    pub ring_gpa: u64,
    pub entries: u32,
    pub data_gpa: u64,
}

/// Why an MSR write is refused (the guest gets #GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ReservedBits,
    BadVector,
    RingTooLarge,
    OutsideRam,
    /// Vectors change only while neither area is enabled; the ring and the event area only
    /// with no token outstanding.
    Busy,
    /// An area is enabled before valid vectors are set.
    NoVectors,
    /// A ring is enabled whose `head` or `tail` is not 0.
    RingNotZeroed,
}

/// Decodes [`abi::MSR_VECTORS`]: the event and resolution vectors, and whether the guest
/// drains its ring when it takes an event.
pub fn decode_vectors(value: u64) -> Result<(u8, u8, bool), Refusal> {
    if value >> 16 & !1 != 0 {
        return Err(Refusal::ReservedBits);
    }
    let (event, resolution) = (value as u8, (value >> 8) as u8);
    if event < 32 || resolution < 32 || event == resolution {
        return Err(Refusal::BadVector);
    }
    Ok((event, resolution, value & abi::VECTORS_DRAIN_AT_EVENT != 0))
}

/// Decodes an enabled [`abi::MSR_RING`]: the ring's address and size.
pub fn decode_ring(value: u64) -> Result<(u64, u32), Refusal> {
    if value & RING_RESERVED != 0 {
        return Err(Refusal::ReservedBits);
    }
    let order = (value >> RING_ORDER_SHIFT) & RING_ORDER_MASK;
    let entries = 1u64 << order;
    if entries > u64::from(MAX_RING_ENTRIES) {
        return Err(Refusal::RingTooLarge);
    }
    Ok((value & !0xFFF, entries as u32))
}

/// Decodes an enabled [`abi::MSR_DATA`]: the event area's address.
pub fn decode_data(value: u64) -> Result<u64, Refusal> {
    if value & DATA_RESERVED != 0 {
        return Err(Refusal::ReservedBits);
    }
    let gpa = value & !(DATA_ALIGN - 1);
    Ok(gpa)
}

impl Registration {
    /// The registration, when vectors, ring and event area are all in place.
    pub fn active(&self) -> Option<Active> {
        let (event_vector, resolution_vector, drains_at_event) = decode_vectors(self.vectors_msr).ok()?;
        if self.ring_msr & MSR_ENABLE == 0 || self.data_msr & MSR_ENABLE == 0 {
            return None;
        }
        let (ring_gpa, entries) = decode_ring(self.ring_msr).ok()?;
        let data_gpa = decode_data(self.data_msr).ok()?;
        Some(Active { event_vector, resolution_vector, drains_at_event, ring_gpa, entries, data_gpa })
    }

    fn outstanding(&self) -> usize {
        self.pool.as_ref().map_or(0, TokenPool::outstanding)
    }

    /// Handles a WRMSR to one of the protocol's MSRs. `ram` is the guest RAM the memory map
    /// lists: each shared area must lie within one of its ranges. `read_u32` reads guest RAM
    /// (the ring's `head` and `tail` when it is enabled), `None` where there is none.
    pub fn write(
        &mut self,
        msr: u32,
        value: u64,
        ram: &[Range<u64>],
        read_u32: impl Fn(u64) -> Option<u32>,
    ) -> Result<(), Refusal> {
        let enabling = value & MSR_ENABLE != 0 && msr != abi::MSR_VECTORS;
        if enabling && decode_vectors(self.vectors_msr).is_err() {
            return Err(Refusal::NoVectors);
        }
        match msr {
            abi::MSR_VECTORS => {
                if !abi::vectors_writable(self.ring_msr, self.data_msr) {
                    return Err(Refusal::Busy);
                }
                decode_vectors(value)?;
                self.vectors_msr = value;
            }
            abi::MSR_RING => {
                if self.outstanding() > 0 {
                    return Err(Refusal::Busy);
                }
                if value & MSR_ENABLE == 0 {
                    if value != 0 {
                        return Err(Refusal::ReservedBits);
                    }
                    self.ring_msr = 0;
                    self.pool = None;
                    return Ok(());
                }
                let (gpa, entries) = decode_ring(value)?;
                if !in_ram(ram, gpa, abi::ring_size(entries)) {
                    return Err(Refusal::OutsideRam);
                }
                let head = read_u32(gpa + abi::ring_head_offset(entries)).ok_or(Refusal::OutsideRam)?;
                let tail = read_u32(gpa + abi::ring_tail_offset(entries)).ok_or(Refusal::OutsideRam)?;
                if head != 0 || tail != 0 {
                    return Err(Refusal::RingNotZeroed);
                }
                self.ring_msr = value;
                self.pool = Some(TokenPool::new(entries));
            }
            abi::MSR_DATA => {
                // Moved or disabled with an event out, the area would hold an event nobody
                // takes, and its token would never come back: the same rule as the ring's.
                if self.outstanding() > 0 {
                    return Err(Refusal::Busy);
                }
                if value & MSR_ENABLE == 0 {
                    if value != 0 {
                        return Err(Refusal::ReservedBits);
                    }
                    self.data_msr = 0;
                    return Ok(());
                }
                // Bits 5:1 are reserved, so a misaligned area is refused as reserved bits.
                let gpa = decode_data(value)?;
                if !in_ram(ram, gpa, DATA_ALIGN) {
                    return Err(Refusal::OutsideRam);
                }
                self.data_msr = value;
            }
            _ => unreachable!("not a page-not-present MSR"),
        }
        Ok(())
    }

    /// RDMSR of one of the protocol's MSRs.
    pub fn read(&self, msr: u32) -> u64 {
        match msr {
            abi::MSR_VECTORS => self.vectors_msr,
            abi::MSR_RING => self.ring_msr,
            abi::MSR_DATA => self.data_msr,
            _ => 0,
        }
    }
}

/// Whether `[start, start + len)` lies within one of the `ram` ranges.
fn in_ram(ram: &[Range<u64>], start: u64, len: u64) -> bool {
    start.checked_add(len).is_some_and(|end| ram.iter().any(|r| r.start <= start && end <= r.end))
}

/// Whether `msr` is one of the protocol's.
pub fn is_protocol_msr(msr: u32) -> bool {
    matches!(msr, abi::MSR_VECTORS | abi::MSR_RING | abi::MSR_DATA)
}

/// The local APIC's processor priority class (PPR bits 7:4) from TPR and the in-service
/// register (eight 32-bit words, vectors 0..=255).
pub fn processor_priority_class(tpr: u32, isr: [u32; 8]) -> u8 {
    let isrv = (0..8).rev().find(|&i| isr[i] != 0).map_or(0, |i| i as u32 * 32 + (31 - isr[i].leading_zeros()));
    let tpr_class = (tpr >> 4) & 0xF;
    tpr_class.max(isrv >> 4) as u8
}

/// Whether `vector` is requested and not yet taken: its bit in the local APIC's interrupt
/// request register (eight 32-bit words, vectors 0..=255).
pub fn vector_requested(irr: [u32; 8], vector: u8) -> bool {
    irr[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

/// Whether an interrupt of `vector` would be taken now: IF set, no STI/MOV SS shadow, and its
/// priority class above the processor priority class.
pub fn interrupt_deliverable(rflags: u64, shadow: u8, ppr_class: u8, vector: u8) -> bool {
    const RFLAGS_IF: u64 = 1 << 9;
    rflags & RFLAGS_IF != 0 && shadow == 0 && (vector >> 4) > ppr_class
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM_END: u64 = 64 << 20;
    /// What the memory map lists as RAM: the legacy hole `[0xA0000, 1 MiB)` is not.
    const RAM: &[Range<u64>] = &[0..0xA_0000, 0x10_0000..RAM_END];

    /// Guest memory of zeroes (the hole is backed, as it is in the host stub).
    fn zeroed(gpa: u64) -> Option<u32> {
        (gpa < RAM_END).then_some(0)
    }

    fn registered() -> Registration {
        let mut r = Registration::default();
        r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
        r.write(abi::MSR_RING, 0x20_0000 | (4 << 1) | 1, RAM, zeroed).unwrap();
        r.write(abi::MSR_DATA, 0x20_1000 | 1, RAM, zeroed).unwrap();
        r
    }

    #[test]
    fn a_complete_registration_is_active() {
        let r = registered();
        assert_eq!(
            r.active(),
            Some(Active {
                event_vector: 0x51,
                resolution_vector: 0x52,
                drains_at_event: false,
                ring_gpa: 0x20_0000,
                entries: 16,
                data_gpa: 0x20_1000
            })
        );
        assert_eq!(r.read(abi::MSR_RING), 0x20_0000 | (4 << 1) | 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut r = Registration::default();
        assert_eq!(r.write(abi::MSR_VECTORS, 0x5210, RAM, zeroed), Err(Refusal::BadVector));
        assert_eq!(r.write(abi::MSR_VECTORS, 0x5151, RAM, zeroed), Err(Refusal::BadVector));
        assert_eq!(r.write(abi::MSR_VECTORS, 0x2_5251, RAM, zeroed), Err(Refusal::ReservedBits));
        assert_eq!(r.write(abi::MSR_VECTORS, 0x1_0000_5251, RAM, zeroed), Err(Refusal::ReservedBits));
        r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
        let ring = |r: &mut Registration, value| r.write(abi::MSR_RING, value, RAM, zeroed);
        assert_eq!(ring(&mut r, 0x20_0000 | (9 << 1) | 1), Err(Refusal::RingTooLarge));
        assert_eq!(ring(&mut r, 0x20_0000 | 0x40 | 1), Err(Refusal::ReservedBits));
        assert_eq!(ring(&mut r, RAM_END | 1), Err(Refusal::OutsideRam));
        let data = |r: &mut Registration, value| r.write(abi::MSR_DATA, value, RAM, zeroed);
        assert_eq!(data(&mut r, 0x20_1010 | 1), Err(Refusal::ReservedBits), "misaligned");
        assert_eq!(data(&mut r, 0x20_1000 | 2 | 1), Err(Refusal::ReservedBits));
        assert_eq!(r.active(), None);
        assert_eq!((r.read(abi::MSR_RING), r.read(abi::MSR_DATA)), (0, 0), "a refused write changes nothing");
    }

    #[test]
    fn vectors_are_fixed_while_the_protocol_is_on_and_rings_while_tokens_are_out() {
        let mut r = registered();
        assert_eq!(r.write(abi::MSR_VECTORS, 0x6261, RAM, zeroed), Err(Refusal::Busy));
        r.pool.as_mut().unwrap().alloc().unwrap();
        assert_eq!(r.write(abi::MSR_RING, 0, RAM, zeroed), Err(Refusal::Busy));
        assert_eq!(r.write(abi::MSR_DATA, 0, RAM, zeroed), Err(Refusal::Busy));
        assert!(r.active().is_some());
    }

    #[test]
    fn the_areas_lie_in_ram_the_memory_map_lists_not_in_the_legacy_hole() {
        let mut r = Registration::default();
        r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
        let ring = |r: &mut Registration, gpa: u64| r.write(abi::MSR_RING, gpa | (8 << 1) | 1, RAM, zeroed);
        let data = |r: &mut Registration, gpa: u64| r.write(abi::MSR_DATA, gpa | 1, RAM, zeroed);
        for hole in [0xA_0000, 0xB_8000, 0xF_F000] {
            assert_eq!(ring(&mut r, hole), Err(Refusal::OutsideRam), "ring at {hole:#x}");
            assert_eq!(data(&mut r, hole), Err(Refusal::OutsideRam), "event area at {hole:#x}");
        }
        assert_eq!(data(&mut r, 0xA_0000 - 32), Err(Refusal::ReservedBits), "misaligned");
        assert_eq!(data(&mut r, !0x3F), Err(Refusal::OutsideRam), "at the top of the address space");
        assert_eq!(data(&mut r, 0xA_0000 - 64), Ok(()), "the last 64 bytes below the hole");
        assert_eq!(data(&mut r, RAM_END - 64), Ok(()), "the last 64 bytes of RAM");
        r.write(abi::MSR_DATA, 0, RAM, zeroed).unwrap();
        // 256 entries: 2056 bytes, from the last page below the hole.
        assert_eq!(ring(&mut r, 0x9_F000), Ok(()));
        r.write(abi::MSR_RING, 0, RAM, zeroed).unwrap();
        assert_eq!(ring(&mut r, RAM_END - 0x1000), Ok(()));
    }

    /// Moving the event area with an event out would leave it in the old area, never taken,
    /// its token never back: refused like a ring change, until no token is outstanding.
    #[test]
    fn the_event_area_moves_only_with_no_token_outstanding() {
        let mut r = registered();
        let token = r.pool.as_mut().unwrap().alloc().unwrap();
        for value in [0x30_0000 | 1, 0x20_1000 | 1, 0] {
            assert_eq!(r.write(abi::MSR_DATA, value, RAM, zeroed), Err(Refusal::Busy), "{value:#x}");
            assert_eq!(r.read(abi::MSR_DATA), 0x20_1000 | 1, "a refused write changes nothing");
        }
        let pool = r.pool.as_mut().unwrap();
        pool.post(token).unwrap();
        pool.observe_tail(1).unwrap();
        assert_eq!(r.write(abi::MSR_DATA, 0x30_0000 | 1, RAM, zeroed), Ok(()));
        assert_eq!(r.active().map(|a| a.data_gpa), Some(0x30_0000));
    }

    /// The rule the ABI states (`abi::vectors_writable`, docs/abi.md) is the one the host
    /// applies, for every combination of enabled areas, and with either area alone enabled the
    /// protocol is off (no events) while the vectors stay fixed.
    #[test]
    fn vectors_are_writable_exactly_when_the_abi_says() {
        for (ring_on, data_on) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut r = Registration::default();
            r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
            if ring_on {
                r.write(abi::MSR_RING, 0x20_0000 | 1, RAM, zeroed).unwrap();
            }
            if data_on {
                r.write(abi::MSR_DATA, 0x20_1000 | 1, RAM, zeroed).unwrap();
            }
            assert_eq!(r.active().is_some(), ring_on && data_on, "on only with both areas");
            let writable = abi::vectors_writable(r.read(abi::MSR_RING), r.read(abi::MSR_DATA));
            assert_eq!(writable, !ring_on && !data_on);
            let written = r.write(abi::MSR_VECTORS, 0x6261, RAM, zeroed);
            assert_eq!(written.is_ok(), writable, "ring {ring_on}, data {data_on}: {written:?}");
        }
    }

    #[test]
    fn areas_are_enabled_only_after_valid_vectors() {
        let mut r = Registration::default();
        assert_eq!(r.write(abi::MSR_RING, 0x20_0000 | 1, RAM, zeroed), Err(Refusal::NoVectors));
        assert_eq!(r.write(abi::MSR_DATA, 0x20_1000 | 1, RAM, zeroed), Err(Refusal::NoVectors));
        // Disabling is always a plain write.
        assert_eq!(r.write(abi::MSR_RING, 0, RAM, zeroed), Ok(()));
        r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
        assert_eq!(r.write(abi::MSR_DATA, 0x20_1000 | 1, RAM, zeroed), Ok(()), "either area may come first");
    }

    #[test]
    fn a_ring_whose_head_or_tail_is_not_zero_is_refused() {
        let ring_gpa = 0x20_0000;
        let entries = 16;
        let order = 4 << 1;
        for (dirty, name) in [(abi::ring_head_offset(entries), "head"), (abi::ring_tail_offset(entries), "tail")] {
            let mut r = Registration::default();
            r.write(abi::MSR_VECTORS, 0x5251, RAM, zeroed).unwrap();
            let memory = |gpa: u64| Some(if gpa == ring_gpa + dirty { 7 } else { 0 });
            assert_eq!(
                r.write(abi::MSR_RING, ring_gpa | order | 1, RAM, memory),
                Err(Refusal::RingNotZeroed),
                "{name}"
            );
            assert_eq!(r.read(abi::MSR_RING), 0);
            // The entries themselves may hold anything.
            let entries_dirty = |gpa: u64| Some(if gpa < ring_gpa + abi::ring_head_offset(entries) { 7 } else { 0 });
            assert_eq!(r.write(abi::MSR_RING, ring_gpa | order | 1, RAM, entries_dirty), Ok(()));
        }
    }

    /// Any value written to any of the three MSRs, on a vCPU with or without a registration,
    /// with RAM that may reach the top of the address space: an accepted write's area lies
    /// inside one RAM range (a ring with its `head` and `tail`, an event area's 64 bytes), the
    /// host reads the guest's memory only there, and a refused write changes nothing.
    #[test]
    fn an_accepted_area_lies_in_ram_and_a_refused_write_changes_nothing() {
        use crate::props::{RAM_TO_TOP, check, edge_u64, lies_within};
        use proptest::prelude::*;
        use proptest::sample::select;
        let msr = select(&[abi::MSR_VECTORS, abi::MSR_RING, abi::MSR_DATA][..]);
        // The low 12 bits decide the order and the reserved bits: often clear, so that the
        // address is what is tried (a page for a ring, any 64 bytes of one for an event area).
        let value = (edge_u64(), any::<u16>(), 0..3).prop_map(|(v, low, kind)| match kind {
            0 => (v & !0xFFF) | u64::from(low & 0x1F),
            1 => (v & !0xFFF) | u64::from(low & 0xFC0) | MSR_ENABLE,
            _ => v ^ u64::from(low),
        });
        let writes = proptest::collection::vec((msr, value), 1..=6);
        check("registration", 4000, (writes, any::<bool>(), any::<bool>()), |(writes, registered_first, top)| {
            let ram = if top { RAM_TO_TOP } else { RAM };
            let mut r = if registered_first { registered() } else { Registration::default() };
            let in_ram = |gpa: u64| {
                assert!(lies_within(ram, gpa, 4), "the host read guest memory at {gpa:#x}, outside RAM");
                Some(0)
            };
            for (msr, value) in writes {
                let before = (r.vectors_msr, r.ring_msr, r.data_msr, r.pool.is_some());
                match r.write(msr, value, ram, in_ram) {
                    Err(_) => {
                        let after = (r.vectors_msr, r.ring_msr, r.data_msr, r.pool.is_some());
                        prop_assert_eq!(after, before, "a refused write of {:#x} to {:#x}", value, msr);
                    }
                    Ok(()) => prop_assert_eq!(r.read(msr), value),
                }
                if r.ring_msr & MSR_ENABLE != 0 {
                    let (gpa, entries) = decode_ring(r.ring_msr).expect("an accepted ring decodes");
                    prop_assert!(lies_within(ram, gpa, abi::ring_size(entries)), "ring {:#x}", r.ring_msr);
                    prop_assert_eq!(r.pool.as_ref().map(TokenPool::entries), Some(entries));
                }
                if r.data_msr & MSR_ENABLE != 0 {
                    let gpa = decode_data(r.data_msr).expect("an accepted event area decodes");
                    prop_assert!(gpa.is_multiple_of(DATA_ALIGN) && lies_within(ram, gpa, DATA_ALIGN));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn processor_priority_follows_tpr_and_the_highest_in_service_vector() {
        let mut isr = [0u32; 8];
        assert_eq!(processor_priority_class(0, isr), 0);
        assert_eq!(processor_priority_class(0x40, isr), 4);
        isr[1] = 1 << 16; // vector 0x30 in service (the timer)
        assert_eq!(processor_priority_class(0, isr), 3);
        isr[7] = 1 << 31; // vector 0xFF
        assert_eq!(processor_priority_class(0x20, isr), 0xF);
    }

    #[test]
    fn delivery_needs_if_no_shadow_and_a_higher_priority_class() {
        let if_set = 1 << 9;
        assert!(interrupt_deliverable(if_set, 0, 0, 0x51));
        assert!(!interrupt_deliverable(0, 0, 0, 0x51), "IF clear");
        assert!(!interrupt_deliverable(if_set, 1, 0, 0x51), "STI shadow");
        assert!(!interrupt_deliverable(if_set, 0, 5, 0x51), "same priority class in service");
        assert!(interrupt_deliverable(if_set, 0, 4, 0x51));
    }

    #[test]
    fn a_vector_is_requested_by_its_own_bit_alone() {
        let mut irr = [0u32; 8];
        assert!(!vector_requested(irr, 0x51));
        irr[2] = 1 << 0x11; // vector 0x51
        assert!(vector_requested(irr, 0x51));
        assert!(!vector_requested(irr, 0x52) && !vector_requested(irr, 0x31) && !vector_requested(irr, 0x71));
        irr[7] = 1 << 31;
        assert!(vector_requested(irr, 0xFF));
    }
}
