//! KVM's asynchronous page fault ABI ("async PF"), as stock KVM ships it: the numbers and the
//! shared layout from Linux's `arch/x86/include/uapi/asm/kvm_para.h` and
//! `Documentation/virt/kvm/x86/msr.rst`, written here once so that the guest's driver and the
//! host stub's user-space implementation of the host side agree with KVM and with each other.
//! `docs/abi.md` compares it with the page-not-present ring of [`crate::pnp`].
//!
//! - Discovery: KVM's CPUID block (signature [`crate::cpuid::KVM_SIGNATURE`]; under the host
//!   stub at [`crate::cpuid::KVM_LEAVES_RELOCATED`]), its features leaf (base + 1) EAX bits
//!   [`FEATURE_ASYNC_PF`], [`FEATURE_ASYNC_PF_INT`].
//! - Registration, per vCPU: the "page ready" vector in [`MSR_ASYNC_PF_INT`] first, then the
//!   64-byte aligned address of the vCPU's [`ApfData`] with [`EN_ENABLED`] and
//!   [`EN_DELIVERY_AS_INT`] in [`MSR_ASYNC_PF_EN`]. Without delivery as an interrupt, current
//!   KVM delivers nothing at all.
//! - "Page not present": a #PF (vector 14, error code 0) with `flags` =
//!   [`REASON_PAGE_NOT_PRESENT`] in the vCPU's area and the token in CR2. KVM delivers it only
//!   at CPL != 0 unless [`EN_SEND_ALWAYS`] was set, with paging on, interrupts allowed, no
//!   event pending and an in-kernel local APIC. The guest reads and clears `flags` first thing
//!   in its #PF handler; 0 there means a real page fault.
//! - "Page ready": the registered interrupt, on the vCPU that took the "page not present", with
//!   the token in the area's `token`; the guest clears `token`, then writes 1 to
//!   [`MSR_ASYNC_PF_ACK`]. KVM delivers the next once `token` reads 0 (the ACK makes it look
//!   again); the host stub, stricter, only after the ACK. [`TOKEN_WAKE_ALL`] wakes every
//!   waiter. There is no "failed" result.

use crate::Plain;

/// KVM's features leaf, relative to its block's base: EAX holds the `FEATURE_*` bits.
pub const FEATURES_LEAF_OFFSET: u32 = 1;

/// CPUID (KVM features leaf) EAX bit: [`MSR_ASYNC_PF_EN`] exists (`KVM_FEATURE_ASYNC_PF`).
pub const FEATURE_ASYNC_PF: u32 = 1 << 4;
/// CPUID EAX bit: "page not present" can be delivered to a nested hypervisor as #PF VM exits
/// (`KVM_FEATURE_ASYNC_PF_VMEXIT`, [`EN_DELIVERY_AS_PF_VMEXIT`]); not used by this guest.
pub const FEATURE_ASYNC_PF_VMEXIT: u32 = 1 << 10;
/// CPUID EAX bit: "page ready" is delivered as an interrupt, [`MSR_ASYNC_PF_INT`] and
/// [`MSR_ASYNC_PF_ACK`] exist (`KVM_FEATURE_ASYNC_PF_INT`).
pub const FEATURE_ASYNC_PF_INT: u32 = 1 << 14;

/// `MSR_KVM_ASYNC_PF_EN`: bits 63:6 the 64-byte aligned GPA of the vCPU's [`ApfData`], bits
/// 5:4 reserved (0), bits 3:0 the `EN_*` flags.
pub const MSR_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// `MSR_KVM_ASYNC_PF_INT`: bits 7:0 the "page ready" vector, bits 63:8 reserved (0). Written
/// before [`MSR_ASYNC_PF_EN`] is enabled (or KVM may raise vector 0).
pub const MSR_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// `MSR_KVM_ASYNC_PF_ACK`: writing bit 0 acknowledges a "page ready" after the guest cleared
/// [`ApfData::token`]. KVM then looks for the next one it holds, which it delivers once
/// `token` reads 0 (the ACK is the hint, the cleared `token` the condition); the host stub
/// delivers the next only after the ACK.
pub const MSR_ASYNC_PF_ACK: u32 = 0x4b56_4d07;

/// [`MSR_ASYNC_PF_EN`] bit 0: async page faults on for this vCPU (`KVM_ASYNC_PF_ENABLED`).
pub const EN_ENABLED: u64 = 1 << 0;
/// Bit 1: deliver "page not present" at CPL 0 too (`KVM_ASYNC_PF_SEND_ALWAYS`). This guest
/// never sets it (nor has Linux since 5.8): an access of its kernel waits in the host.
pub const EN_SEND_ALWAYS: u64 = 1 << 1;
/// Bit 2: deliver to a nested hypervisor as #PF VM exits (`KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT`).
pub const EN_DELIVERY_AS_PF_VMEXIT: u64 = 1 << 2;
/// Bit 3: "page ready" as the interrupt of [`MSR_ASYNC_PF_INT`] (`KVM_ASYNC_PF_DELIVERY_AS_INT`).
/// Async page faults are on only with both this and [`EN_ENABLED`].
pub const EN_DELIVERY_AS_INT: u64 = 1 << 3;
/// [`MSR_ASYNC_PF_EN`] bits 5:4, reserved.
pub const EN_RESERVED: u64 = 0x30;
/// [`MSR_ASYNC_PF_EN`] bits 63:6: the area's address.
pub const EN_ADDRESS_MASK: u64 = !0x3F;
/// [`MSR_ASYNC_PF_INT`] bits 7:0: the vector.
pub const INT_VECTOR_MASK: u64 = 0xFF;
/// [`MSR_ASYNC_PF_ACK`] bit 0.
pub const ACK: u64 = 1;

/// Whether an [`MSR_ASYNC_PF_EN`] value turns async page faults on (KVM's
/// `kvm_pv_async_pf_enabled`): enabled and delivery as an interrupt.
pub const fn enabled(en_msr: u64) -> bool {
    en_msr & (EN_ENABLED | EN_DELIVERY_AS_INT) == EN_ENABLED | EN_DELIVERY_AS_INT
}

/// [`ApfData::flags`]: the #PF is a "page not present" event (`KVM_PV_REASON_PAGE_NOT_PRESENT`).
pub const REASON_PAGE_NOT_PRESENT: u32 = 1;

/// The error code of KVM's "page not present" #PF: always 0 (KVM injects it with no error-code
/// bit set). A real #PF from CPL 3 always has U (bit 2) set, so a guest can tell the two apart
/// even when `flags` is stale.
pub const PAGE_NOT_PRESENT_ERROR_CODE: u64 = 0;

/// The "page ready" token that wakes every task waiting for any token of this vCPU. KVM queues
/// one when async page faults are enabled (again), unless page readies are queued for the vCPU
/// already (`kvm_async_pf_wakeup_all` returns early then).
pub const TOKEN_WAKE_ALL: u32 = 0xFFFF_FFFF;

/// Most tokens KVM keeps outstanding per vCPU (`ASYNC_PF_PER_VCPU`): beyond them, an access
/// waits in the host as if there were no async page faults. The host stub keeps the same limit.
pub const MAX_OUTSTANDING: usize = 64;

/// `struct kvm_vcpu_pv_apf_data`: 64 bytes, 64-byte aligned, in guest RAM, one per vCPU.
/// The host writes `flags` (with a "page not present") and `token` (with a "page ready"); the
/// guest clears each when it has read it. (From the ABI's introduction in 2.6.38 until commit
/// ccb2280ec2f9, written in 2023 and merged for Linux 6.9, the header also had a guest-private
/// `u32 enabled` at offset 64, outside the 64 bytes KVM writes; KVM never read it: 64 bytes.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct ApfData {
    /// [`REASON_PAGE_NOT_PRESENT`] while a "page not present" #PF is being delivered, 0
    /// otherwise (a real #PF).
    pub flags: u32,
    /// The token of the "page ready" being delivered, 0 when the slot is free.
    pub token: u32,
    /// Reserved.
    pub pad: [u8; 56],
}

/// Bytes of [`ApfData`], and its required alignment.
pub const DATA_SIZE: u64 = 64;
/// Offset of `flags`.
pub const FLAGS_OFFSET: u64 = 0;
/// Offset of `token`.
pub const TOKEN_OFFSET: u64 = 4;

const _: () = assert!(core::mem::size_of::<ApfData>() == DATA_SIZE as usize);
const _: () = assert!(core::mem::align_of::<ApfData>() == DATA_SIZE as usize);
const _: () = assert!(core::mem::offset_of!(ApfData, flags) as u64 == FLAGS_OFFSET);
const _: () = assert!(core::mem::offset_of!(ApfData, token) as u64 == TOKEN_OFFSET);

// SAFETY: only integers and an array of bytes, and the asserts above show there is no padding.
unsafe impl Plain for ApfData {}

impl ApfData {
    /// An area with nothing pending (how the guest registers it).
    pub const ZERO: ApfData = ApfData { flags: 0, token: 0, pad: [0; 56] };
}

/// The token KVM hands out for its `id`-th async page fault on the vCPU with index
/// `vcpu_id` (`alloc_apf_token`): `id << 12 | vcpu_id`, never 0 (an `id` whose low 20 bits
/// are 0 is skipped). The host stub hands out tokens the same way, so its guests see the
/// values KVM's would: arbitrary to the guest, and all alike in their low bits.
pub const fn kvm_token(id: u32, vcpu_id: u32) -> u32 {
    (id << 12) | (vcpu_id & 0xFFF)
}

/// The next `id` after `id` whose token is not 0, as KVM counts.
pub const fn next_token_id(id: u32) -> u32 {
    let next = id.wrapping_add(1);
    if next << 12 == 0 { 1 } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kvms() {
        assert_eq!((MSR_ASYNC_PF_EN, MSR_ASYNC_PF_INT, MSR_ASYNC_PF_ACK), (0x4b564d02, 0x4b564d06, 0x4b564d07));
        assert_eq!((FEATURE_ASYNC_PF, FEATURE_ASYNC_PF_VMEXIT, FEATURE_ASYNC_PF_INT), (1 << 4, 1 << 10, 1 << 14));
        assert_eq!((EN_ENABLED, EN_SEND_ALWAYS, EN_DELIVERY_AS_PF_VMEXIT, EN_DELIVERY_AS_INT), (1, 2, 4, 8));
    }

    #[test]
    fn on_needs_both_enable_and_delivery_as_an_interrupt() {
        assert!(enabled(0x1000 | EN_ENABLED | EN_DELIVERY_AS_INT));
        assert!(!enabled(0x1000 | EN_ENABLED), "KVM delivers nothing without delivery as an interrupt");
        assert!(!enabled(0x1000 | EN_DELIVERY_AS_INT));
    }

    #[test]
    fn tokens_are_never_zero_and_keep_the_vcpu_in_their_low_bits() {
        assert_eq!(kvm_token(1, 0), 0x1000);
        assert_eq!(kvm_token(3, 2), 0x3002);
        assert_eq!(next_token_id(0xF_FFFF), 1, "id 0x100000 would make token 0 for vCPU 0");
        assert_eq!(next_token_id(7), 8);
    }
}
