//! #VE, the virtualization exception (Intel SDM vol. 3, "Virtualization Exceptions"), as a fast
//! carrier for page-not-present (seed 001): the VE information area, its per-vCPU registration,
//! and the two requests a guest answers a #VE with. `docs/abi.md` states every rule.
//!
//! On VMX hardware, with "EPT-violation #VE" enabled, the processor itself reports an EPT
//! violation on a page whose EPT entry has "suppress #VE" clear by writing the VE information
//! area and raising #VE (vector 20) in the guest, with no VM exit, and only while the area's busy
//! word is 0: it sets the word to `0xFFFF_FFFF` when it delivers, and an EPT violation with the
//! word non-zero is an ordinary VM exit (the host then makes the vCPU wait for the page). The
//! guest writes 0 to re-arm. No such hardware exists on the machines this is built on, so the
//! host stub produces the same exception by the same rules (host mode [`crate::pnp::HostMode::Ve`]).
//!
//! A #VE carries no token: the processor knows nothing of the host's fetches. The guest answers
//! with a hypercall: [`crate::hypercall::Nr::VeSuspend`] ("keep this vCPU until the page is
//! present") or [`crate::hypercall::Nr::VePark`] ("I parked the task: give me a token, and tell
//! me on the page-not-present ring when the page is present"). The token of a park request is
//! therefore the host's answer to that request, taken from the vCPU's ring ([`crate::pnp`]).

use crate::Plain;

/// #VE's vector: a fault with no error code, delivered whatever RFLAGS.IF says (an exception,
/// not an interrupt), and through an IDT gate like any exception.
pub const VECTOR: u8 = 20;

/// [`VeInfo::exit_reason`] for an EPT violation (the basic exit reason the processor would have
/// used for the VM exit it converted into this #VE). The only reason the host stub reports.
pub const EXIT_REASON_EPT_VIOLATION: u32 = 48;

/// [`VeInfo::busy`] as the host leaves it when it delivers a #VE. While the word is not 0 no
/// further #VE is delivered to this vCPU: an access that would raise one waits in the host.
pub const BUSY: u32 = 0xFFFF_FFFF;

/// The exit qualification of an EPT violation (SDM, "Exit Qualification for EPT Violations"):
/// bit 0, the access was a data read.
pub const QUAL_READ: u64 = 1 << 0;
/// Bit 1: a data write.
pub const QUAL_WRITE: u64 = 1 << 1;
/// Bit 2: an instruction fetch.
pub const QUAL_FETCH: u64 = 1 << 2;
/// Bits 5:3: the permissions the EPT entry granted (read, write, execute); 0 for a page that is
/// not present, which is the only kind the host stub reports.
pub const QUAL_EPT_PERMISSIONS: u64 = 0b111 << 3;
/// Bit 7: [`VeInfo::guest_linear_address`] is valid.
pub const QUAL_GLA_VALID: u64 = 1 << 7;
/// Bit 8 (meaningful only with [`QUAL_GLA_VALID`]): the access was to the linear address's
/// translation itself, not to a paging structure on the way to it.
pub const QUAL_GLA_TRANSLATED: u64 = 1 << 8;

/// The VE information area: the first 40 bytes of a 4 KiB page, one per vCPU, laid out as the
/// processor writes it. The host fills every field, then stores [`BUSY`] into `busy` (with
/// release semantics), then raises #VE; the guest copies the fields, then stores 0 into `busy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VeInfo {
    /// The basic exit reason: [`EXIT_REASON_EPT_VIOLATION`].
    pub exit_reason: u32,
    /// [`BUSY`] from delivery until the guest re-arms with 0.
    pub busy: u32,
    /// `QUAL_*` bits.
    pub exit_qualification: u64,
    /// The linear address of the access, when `exit_qualification & QUAL_GLA_VALID`.
    pub guest_linear_address: u64,
    /// The guest-physical address of the access.
    pub guest_physical_address: u64,
    /// Which EPTP of the EPTP list was in use (VMFUNC 0); 0 on the host stub.
    pub eptp_index: u16,
    /// Not written by the processor (nor by the host stub).
    pub reserved: [u8; 6],
}

/// Offset of `exit_reason`.
pub const EXIT_REASON_OFFSET: u64 = 0;
/// Offset of `busy` (what both sides access atomically).
pub const BUSY_OFFSET: u64 = 4;
/// Offset of `exit_qualification`.
pub const QUALIFICATION_OFFSET: u64 = 8;
/// Offset of `guest_linear_address`.
pub const GLA_OFFSET: u64 = 16;
/// Offset of `guest_physical_address`.
pub const GPA_OFFSET: u64 = 24;
/// Offset of `eptp_index`.
pub const EPTP_INDEX_OFFSET: u64 = 32;

const _: () = assert!(core::mem::size_of::<VeInfo>() == 40);
const _: () = assert!(core::mem::offset_of!(VeInfo, exit_reason) as u64 == EXIT_REASON_OFFSET);
const _: () = assert!(core::mem::offset_of!(VeInfo, busy) as u64 == BUSY_OFFSET);
const _: () = assert!(core::mem::offset_of!(VeInfo, exit_qualification) as u64 == QUALIFICATION_OFFSET);
const _: () = assert!(core::mem::offset_of!(VeInfo, guest_linear_address) as u64 == GLA_OFFSET);
const _: () = assert!(core::mem::offset_of!(VeInfo, guest_physical_address) as u64 == GPA_OFFSET);
const _: () = assert!(core::mem::offset_of!(VeInfo, eptp_index) as u64 == EPTP_INDEX_OFFSET);

// SAFETY: only integers and an array of bytes, and the asserts above show there is no padding.
unsafe impl Plain for VeInfo {}

/// The per-vCPU registration: bit 0 enable, bits 11:1 reserved (0), bits 63:12 the area's page
/// (4 KiB aligned, as the VMCS's "virtualization-exception information address" must be, so a
/// VMX host can hand the guest's address to the processor as it is; the page lies in one RAM
/// range of the memory map). Writable at any time; disabling is a write of 0 (bit 0 clear with
/// any other bit set is refused). The host reads and writes the area only when it delivers a
/// #VE, so a registered area whose busy word is not 0 simply receives none. A write the host
/// cannot accept raises #GP and changes nothing. RDMSR returns the last accepted value.
pub const MSR_VE_INFO: u32 = crate::msr::PV_BASE + 0x10;
/// [`MSR_VE_INFO`]: enable bit.
pub const MSR_ENABLE: u64 = 1;
/// [`MSR_VE_INFO`]: reserved bits.
pub const MSR_RESERVED: u64 = 0xFFE;
/// [`MSR_VE_INFO`]: the area's address.
pub const MSR_ADDRESS_MASK: u64 = !0xFFF;

/// [`crate::hypercall::Nr::VePark`]'s `ret[0]` when it handed out no token: `ret[1]` holds the
/// page's outcome at once ([`crate::pnp::RESULT_RETRY`]: present now, retry;
/// [`crate::pnp::RESULT_FAILED`]: failed).
pub const NO_TOKEN: u64 = 0;

/// Test switches for the next #VE delivered to the calling vCPU
/// ([`crate::hypercall::Nr::VeSetFaults`]); each is used once, by the next #VE, then cleared. A
/// test and fault-injection control, not part of what a production host offers.
pub mod fault {
    /// Inject an NMI together with the next #VE: the NMI is taken at the #VE handler's first
    /// instruction (before the guest has copied the area or cleared the busy word).
    pub const NMI_WITH_NEXT_VE: u64 = 1 << 0;
    /// Deliver the next #VE even when the busy word is not 0: a host breaking the contract, so
    /// that a test can show what the guest does about it.
    pub const IGNORE_BUSY: u64 = 1 << 1;
    /// Every switch this host knows; any other bit is refused.
    pub const ALL: u64 = NMI_WITH_NEXT_VE | IGNORE_BUSY;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_is_laid_out_as_the_sdm_says() {
        assert_eq!(
            (EXIT_REASON_OFFSET, BUSY_OFFSET, QUALIFICATION_OFFSET, GLA_OFFSET, GPA_OFFSET, EPTP_INDEX_OFFSET),
            (0, 4, 8, 16, 24, 32)
        );
        assert_eq!((VECTOR, EXIT_REASON_EPT_VIOLATION, BUSY), (20, 48, u32::MAX));
    }

    #[test]
    fn the_registration_splits_into_enable_reserved_and_page() {
        assert_eq!(MSR_ENABLE | MSR_RESERVED | MSR_ADDRESS_MASK, u64::MAX);
        assert_eq!(MSR_ENABLE & MSR_RESERVED, 0);
        assert_eq!(MSR_VE_INFO, 0x5056_4110);
    }
}
