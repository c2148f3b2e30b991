//! The ABI's version, and how each side learns the other's.
//!
//! A version is `major.minor`. A minor version only adds: feature bits, CPUID leaves, hypercall
//! numbers, MSRs, each of which a side discovers before it uses it (a feature bit, a leaf's
//! range, `Status::UnknownNr`, #GP), and never changes what an older minor defined, so two
//! sides with the same major work together whatever their minors. A new major changes or
//! removes something: nothing of a peer with another major can be trusted.
//!
//! - The host says its version in EAX of [`crate::cpuid::LEAF_INFO`]. A guest that finds
//!   another major uses none of the host stub's own interfaces (its hypercall, ports, MSRs,
//!   pages, feature bits and leaves): to it, that host is an unknown hypervisor. The devices
//!   every host offers (COM1, the exit port) stay in use.
//! - A guest that found the same major writes its own version to [`MSR_GUEST_VERSION`], once
//!   at boot, before it uses any other interface of the host: until then the host serves none
//!   of its own (its paravirtual MSRs raise #GP, hypercalls are answered
//!   [`crate::hypercall::Status::Unavailable`], its ports and MMIO pages are unclaimed). A
//!   host told another major, in any write, stops the run with an error that names both
//!   versions: the guest broke the rule above, and nothing it does afterwards can be
//!   interpreted. A later write of another version of the same major raises #GP.
//!
//! A host from before major.minor reported a plain 1 in the leaf's EAX: that reads as 0.1,
//! another major, and a guest of this ABI uses nothing of it.
//!
//! The leaf, its EAX and the MSR are the same in every major: they are how majors are told
//! apart.

use core::fmt;

/// A version of this ABI. On the wire (CPUID EAX, the MSR, hypercall results) it is one
/// 32-bit value, `major << 16 | minor` ([`AbiVersion::to_raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Changes when something existing changes or goes: sides of different majors do not mix.
    pub major: u16,
    /// Changes when something is added: any two minors of a major work together.
    pub minor: u16,
}

impl AbiVersion {
    /// Version `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// The wire form: bits 31:16 the major, bits 15:0 the minor.
    pub const fn to_raw(self) -> u32 {
        ((self.major as u32) << 16) | self.minor as u32
    }

    /// The version a wire value says.
    pub const fn from_raw(raw: u32) -> Self {
        Self { major: (raw >> 16) as u16, minor: raw as u16 }
    }

    /// Whether a side of this version may use the interfaces of a peer of `peer`'s version:
    /// the majors are the same.
    pub const fn is_compatible_with(self, peer: AbiVersion) -> bool {
        self.major == peer.major
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version this crate defines. Minor 1 added the milestone port and the benchmark counting
/// port ([`crate::port::MILESTONE`], [`crate::port::BENCH_COUNT`]): a 1.0 host stub leaves them
/// unclaimed, which costs a 1.1 guest nothing but the exit. Minor 2 added the paravirtual
/// console ([`crate::port::CONSOLE`]) and the page-not-present protocol's
/// [`crate::pnp::VECTORS_DRAIN_AT_EVENT`], each behind its feature bit
/// ([`crate::cpuid::Features::CONSOLE`], [`crate::cpuid::Features::PNP_DRAIN_AT_EVENT`]): a
/// guest uses neither where the host does not set it. Minor 3 added the pager's modes
/// `KvmApf` and `KvmApfKernel` ([`crate::pnp::HostMode`]): a guest of an older minor reads them
/// in the page-not-present leaf as modes it does not know. Minor 4 added #VE. Minor 5 added the
/// memory-layout hypercalls ([`crate::hypercall::Nr::LayoutRegion`] and the three after it,
/// [`crate::layout`]), which an older host answers `UnknownNr`.
pub const ABI_VERSION: AbiVersion = AbiVersion::new(1, 5);

/// The guest's version, told to the host: WRMSR with bits 31:0 an [`AbiVersion`] in its wire
/// form and bits 63:32 0 (otherwise #GP). RDMSR returns the version announced, 0 before.
/// Written once at boot, on any vCPU, before any other interface of the host is used; a later
/// write of the same value changes nothing, of another version of the same major raises #GP.
pub const MSR_GUEST_VERSION: u32 = crate::msr::PV_BASE + 0xF0;

/// Bits of [`MSR_GUEST_VERSION`] that must be 0.
pub const GUEST_VERSION_RESERVED: u64 = 0xFFFF_FFFF_0000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_puts_the_major_above_the_minor() {
        let v = AbiVersion::new(3, 7);
        assert_eq!(v.to_raw(), 0x0003_0007);
        assert_eq!(AbiVersion::from_raw(0x0003_0007), v);
        assert_eq!(AbiVersion::from_raw(ABI_VERSION.to_raw()), ABI_VERSION);
        assert!(AbiVersion::new(2, 0) > AbiVersion::new(1, 9));
    }

    #[test]
    fn only_the_major_decides_compatibility() {
        assert!(AbiVersion::new(1, 0).is_compatible_with(AbiVersion::new(1, 5)));
        assert!(AbiVersion::new(1, 5).is_compatible_with(AbiVersion::new(1, 0)));
        assert!(!AbiVersion::new(1, 0).is_compatible_with(AbiVersion::new(2, 0)));
        assert!(!AbiVersion::new(1, 0).is_compatible_with(AbiVersion::new(0, 1)));
    }

    #[test]
    fn the_guest_version_msr_is_in_the_host_stubs_range() {
        assert_eq!(MSR_GUEST_VERSION, 0x5056_41F0);
    }
}
