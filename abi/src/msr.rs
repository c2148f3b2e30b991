//! Model-specific registers of the ABI: the architectural ones the host stub virtualizes and
//! the host stub's own paravirtual ones.
//!
//! The host stub's MSRs live at [`PV_BASE`] ("PVA" in ASCII), a range no CPU vendor or other
//! hypervisor uses; KVM does not know them, so with `KVM_CAP_X86_USER_SPACE_MSR` every access
//! exits to the host stub. Under QEMU they do not exist (#GP): a guest only touches them when
//! the host stub's CPUID leaf says so.

/// First MSR of the host stub's paravirtual range.
pub const PV_BASE: u32 = 0x5056_4100;

/// The host stub's paravirtual MSRs: every MSR of this range is its own (docs/abi.md, "Number
/// allocation"), served only once the guest announced its version
/// ([`crate::version::MSR_GUEST_VERSION`], which is served always).
pub const PV_MSRS: core::ops::Range<u32> = PV_BASE..PV_BASE + 0x100;
