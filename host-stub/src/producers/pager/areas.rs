//! The guest-physical areas the pager writes into, over every vCPU and protocol (rings, event
//! areas, VE information areas, KVM async-PF areas), and the ABI's rule that a registration of
//! one of pvagent's own areas overlaps none of them (docs/abi.md, "Where the areas may be"): two
//! areas in the same bytes would have the host write one protocol's fields over another's.

use std::ops::Range;

use pvagent_abi::pnp::{self as abi, DATA_ALIGN, MSR_ENABLE};

use super::registration::{decode_data, decode_ring};
use super::shared::Inner;

/// Which area of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ring,
    Events,
    VeInfo,
    AsyncPf,
}

/// One area the host writes: the vCPU it belongs to, which it is, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Area {
    pub vcpu: usize,
    pub kind: Kind,
    pub bytes: Range<u64>,
}

/// The area a WRMSR would enable, if it enables one of pvagent's own (`MSR_RING`, `MSR_DATA`,
/// `MSR_VE_INFO`) with a value that decodes; `None` otherwise (the MSR's own checks judge it).
/// KVM's async-PF MSR keeps KVM's rules, which do not look at overlaps.
pub fn enabled_by(msr: u32, value: u64) -> Option<(Kind, Range<u64>)> {
    if value & MSR_ENABLE == 0 {
        return None;
    }
    let (kind, start, len) = match msr {
        abi::MSR_RING => {
            let (gpa, entries) = decode_ring(value).ok()?;
            (Kind::Ring, gpa, abi::ring_size(entries))
        }
        abi::MSR_DATA => (Kind::Events, decode_data(value).ok()?, DATA_ALIGN),
        pvagent_abi::ve::MSR_VE_INFO => (
            Kind::VeInfo,
            value & pvagent_abi::ve::MSR_ADDRESS_MASK,
            std::mem::size_of::<pvagent_abi::ve::VeInfo>() as u64,
        ),
        _ => return None,
    };
    Some((kind, start..start.checked_add(len)?))
}

/// Every enabled area of every vCPU.
pub fn enabled(inner: &Inner) -> Vec<Area> {
    let mut areas = Vec::new();
    for (vcpu, r) in inner.vcpus.iter().enumerate() {
        if r.ring_msr & MSR_ENABLE != 0
            && let Ok((gpa, entries)) = decode_ring(r.ring_msr)
        {
            areas.push(Area { vcpu, kind: Kind::Ring, bytes: gpa..gpa.saturating_add(abi::ring_size(entries)) });
        }
        if r.data_msr & MSR_ENABLE != 0
            && let Ok(gpa) = decode_data(r.data_msr)
        {
            areas.push(Area { vcpu, kind: Kind::Events, bytes: gpa..gpa.saturating_add(DATA_ALIGN) });
        }
    }
    let ve_len = std::mem::size_of::<pvagent_abi::ve::VeInfo>() as u64;
    for (vcpu, v) in inner.ve.iter().enumerate() {
        if let Some(gpa) = v.area() {
            areas.push(Area { vcpu, kind: Kind::VeInfo, bytes: gpa..gpa.saturating_add(ve_len) });
        }
    }
    for (vcpu, a) in inner.apf.iter().enumerate() {
        if let Some(active) = a.active() {
            let end = active.area_gpa.saturating_add(pvagent_abi::kvm_apf::DATA_SIZE);
            areas.push(Area { vcpu, kind: Kind::AsyncPf, bytes: active.area_gpa..end });
        }
    }
    areas
}

/// The first of `areas` that `bytes`, about to become `vcpu`'s `kind` area, would overlap; the
/// area it replaces (the same vCPU's of the same kind) does not count.
pub fn overlapped<'a>(areas: &'a [Area], vcpu: usize, kind: Kind, bytes: &Range<u64>) -> Option<&'a Area> {
    areas
        .iter()
        .filter(|a| !(a.vcpu == vcpu && a.kind == kind))
        .find(|a| a.bytes.start < bytes.end && bytes.start < a.bytes.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(vcpu: usize, kind: Kind, bytes: Range<u64>) -> Area {
        Area { vcpu, kind, bytes }
    }

    #[test]
    fn an_area_enabled_by_a_write_has_the_abis_length() {
        let ring = 0x20_0000 | (4 << abi::RING_ORDER_SHIFT) | MSR_ENABLE;
        assert_eq!(enabled_by(abi::MSR_RING, ring), Some((Kind::Ring, 0x20_0000..0x20_0000 + 16 * 8 + 8)));
        assert_eq!(enabled_by(abi::MSR_DATA, 0x20_1040 | MSR_ENABLE), Some((Kind::Events, 0x20_1040..0x20_1080)));
        let ve = pvagent_abi::ve::MSR_VE_INFO;
        assert_eq!(enabled_by(ve, 0x22_0000 | MSR_ENABLE), Some((Kind::VeInfo, 0x22_0000..0x22_0028)));
        assert_eq!(enabled_by(abi::MSR_RING, 0), None, "disabling enables nothing");
        assert_eq!(enabled_by(abi::MSR_VECTORS, 0x5251), None);
        assert_eq!(enabled_by(pvagent_abi::kvm_apf::MSR_ASYNC_PF_EN, 0x20_0000 | 1), None, "KVM's rules");
        assert_eq!(enabled_by(abi::MSR_DATA, u64::MAX), None, "reserved bits: the MSR's own check refuses it");
    }

    /// Overlap is by byte: adjacent areas are fine, one shared byte is not, whichever vCPU or
    /// protocol the other belongs to; the area being replaced does not count against its
    /// replacement.
    #[test]
    fn areas_overlap_by_byte_and_a_replaced_area_does_not_count() {
        let areas = [area(0, Kind::Ring, 0x1000..0x1088), area(1, Kind::VeInfo, 0x3000..0x3028)];
        assert_eq!(overlapped(&areas, 0, Kind::Events, &(0x1088..0x10C8)), None, "adjacent");
        assert_eq!(overlapped(&areas, 0, Kind::Events, &(0x1080..0x10C0)), Some(&areas[0]), "its own ring");
        assert_eq!(overlapped(&areas, 0, Kind::Ring, &(0x1000..0x1010)), None, "replaces its own ring");
        assert_eq!(overlapped(&areas, 1, Kind::Ring, &(0x1000..0x1010)), Some(&areas[0]), "another vCPU's ring");
        assert_eq!(overlapped(&areas, 0, Kind::VeInfo, &(0x3027..0x304F)), Some(&areas[1]), "one byte");
        assert_eq!(overlapped(&areas, 1, Kind::VeInfo, &(0x3000..0x3028)), None, "the same area again");
        assert_eq!(overlapped(&[], 0, Kind::Ring, &(0..u64::MAX)), None);
    }
}
