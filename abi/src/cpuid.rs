//! The host stub's hypervisor CPUID leaves.
//!
//! The host stub owns the leaf range at [`LEAF_BASE`] and moves KVM's own leaves (signature
//! `KVMKVMKVM`) to [`KVM_LEAVES_RELOCATED`], the way a Hyper-V-compatible VMM keeps KVM's leaves
//! visible: hypervisors lay their blocks out at 0x100 steps from 0x4000_0000. The pvagent guest
//! reads the host stub's block and then KVM's (two leaves); on another host it tries the steps
//! in turn and stops at the first signature it knows or at the first step that holds no block
//! (docs/abi.md); Linux's `hypervisor_cpuid_base()` tries them until it finds the one signature
//! it looks for.

/// First hypervisor leaf. EAX: highest leaf of this block; EBX, ECX, EDX: [`SIGNATURE`].
pub const LEAF_BASE: u32 = 0x4000_0000;
/// The 12-byte vendor signature in EBX, ECX, EDX of [`LEAF_BASE`].
pub const SIGNATURE: [u8; 12] = *b"pvagent-stub";
/// EAX: the host's ABI version ([`crate::AbiVersion::to_raw`]; a guest of another major uses
/// nothing else of this host, see [`crate::version`]); EBX: [`Features`] bits; ECX: TSC
/// frequency in kHz (0: unknown); EDX: local APIC timer input frequency in kHz (0: unknown).
pub const LEAF_INFO: u32 = 0x4000_0001;
/// Where KVM's leaves are when the host stub runs on KVM.
pub const KVM_LEAVES_RELOCATED: u32 = 0x4000_0100;
/// Step between hypervisor leaf blocks, as Linux's `hypervisor_cpuid_base()` scans them.
pub const LEAF_BLOCK_STEP: u32 = 0x100;
/// End (exclusive) of the range scanned for hypervisor signatures.
pub const LEAF_RANGE_END: u32 = 0x4001_0000;

/// KVM's signature, as found in EBX, ECX, EDX of its base leaf.
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";
/// QEMU TCG's signature (QEMU sets it unless `-cpu ...,tcg-cpuid=off`).
pub const TCG_SIGNATURE: [u8; 12] = *b"TCGTCGTCGTCG";

/// Feature bits reported in EBX of [`LEAF_INFO`]: what the host stub offers this guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Features(pub u32);

impl Features {
    /// The hypercall port ([`crate::port::HYPERCALL`]) is served.
    pub const HYPERCALL: u32 = 1 << 0;
    /// The page-not-present protocol ([`crate::pnp`]) and its demand-paged region exist.
    pub const PAGE_NOT_PRESENT: u32 = 1 << 1;
    /// The split-lock trigger page ([`crate::sld::TRIGGER_GPA`]),
    /// [`crate::hypercall::Nr::SplitLockVerdict`] and [`crate::hypercall::Nr::SplitLockPolicy`]
    /// are served; see [`crate::sld`].
    pub const SPLIT_LOCK_TRIGGER: u32 = 1 << 2;
    /// The host produces #VE for accesses to absent pages of the demand-paged region
    /// ([`crate::ve`]): [`crate::ve::MSR_VE_INFO`] and hypercalls `0x300`-`0x303` are served.
    /// Set only with [`Features::PAGE_NOT_PRESENT`].
    pub const VE: u32 = 1 << 3;
    /// IA32_CORE_CAPABILITIES exists: the same statement as CPUID.(7,0):EDX bit 30, repeated here
    /// because KVM on some hosts (measured: the PVM `/dev/kvm`) clears that bit from the
    /// guest's CPUID whatever the VMM sets. See [`crate::sld`].
    pub const CORE_CAPABILITIES: u32 = 1 << 4;
    /// The host records a timeline of this run and reads [`crate::trace`] records from
    /// [`crate::port::TRACE`] (and task names, [`crate::hypercall::Nr::TraceTaskName`]). Set only while tracing: a guest writes to the port only then, so
    /// an untraced run pays no exit for it.
    pub const TRACE: u32 = 1 << 5;
    /// The paravirtual console ([`crate::port::CONSOLE`], [`crate::console`]) is served.
    pub const CONSOLE: u32 = 1 << 6;
    /// The page-not-present protocol takes [`crate::pnp::VECTORS_DRAIN_AT_EVENT`]: a guest
    /// that drains its ring when it takes an event gets no interrupt for a resolution posted
    /// before that event was delivered. Set only with [`Features::PAGE_NOT_PRESENT`].
    pub const PNP_DRAIN_AT_EVENT: u32 = 1 << 7;

    /// Whether every bit of `bits` is set.
    pub const fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

/// Splits a 12-byte signature into the EBX, ECX, EDX values CPUID returns for it.
pub const fn signature_regs(sig: &[u8; 12]) -> [u32; 3] {
    [
        u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]),
        u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]),
        u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]),
    ]
}

/// Joins EBX, ECX, EDX of a signature leaf back into its 12 bytes.
pub const fn signature_bytes(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
    let (b, c, d) = (ebx.to_le_bytes(), ecx.to_le_bytes(), edx.to_le_bytes());
    [b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_through_registers() {
        let [b, c, d] = signature_regs(&SIGNATURE);
        assert_eq!(signature_bytes(b, c, d), SIGNATURE);
        // "pvag" little-endian in EBX, as a guest reading CPUID sees it.
        assert_eq!(b, u32::from_le_bytes(*b"pvag"));
    }
}
