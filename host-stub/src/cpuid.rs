//! The guest's CPUID: what KVM supports, KVM's hypervisor leaves moved aside to
//! [`cpuid::KVM_LEAVES_RELOCATED`], and the host stub's own leaves at [`cpuid::LEAF_BASE`].
//! Handlers add their feature bits through [`CpuidTable`].

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;
use pvagent_abi::AbiVersion;
use pvagent_abi::cpuid::{self, Features};

use crate::error::{Error, Result};

/// CPUID.1:ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry depends on the subleaf.
const FLAG_SIGNIFICANT_INDEX: u32 = 1;
/// The local APIC timer input clock under KVM (1 ns per tick unless changed).
pub const APIC_BUS_KHZ: u32 = 1_000_000;

/// An editable CPUID table.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    entries: Vec<kvm_cpuid_entry2>,
}

impl CpuidTable {
    /// Starts from what KVM supports on this host.
    pub fn supported(kvm: &Kvm) -> Result<Self> {
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(Error::GetSupportedCpuid)?;
        Ok(Self { entries: cpuid.as_slice().to_vec() })
    }

    /// A table made of these entries (tests).
    pub fn from_entries(entries: Vec<kvm_cpuid_entry2>) -> Self {
        Self { entries }
    }

    /// The entry for `function`/`index`, if present.
    pub fn get(&self, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
        self.entries
            .iter()
            .find(|e| e.function == function && (e.flags & FLAG_SIGNIFICANT_INDEX == 0 || e.index == index))
    }

    /// The entry for `function`/`index`, created (zeroed) if absent.
    pub fn entry(&mut self, function: u32, index: u32) -> &mut kvm_cpuid_entry2 {
        let pos = self
            .entries
            .iter()
            .position(|e| e.function == function && (e.flags & FLAG_SIGNIFICANT_INDEX == 0 || e.index == index));
        let pos = pos.unwrap_or_else(|| {
            self.entries.push(kvm_cpuid_entry2 { function, index, ..Default::default() });
            self.entries.len() - 1
        });
        &mut self.entries[pos]
    }

    /// Moves KVM's hypervisor leaves (0x4000_0000..0x4000_0100) to the relocated block and
    /// installs the host stub's leaves in their place, saying ABI `version`.
    pub fn install_host_stub_leaves(&mut self, version: AbiVersion, features: Features, tsc_khz: u32) {
        let base = cpuid::LEAF_BASE;
        let offset = cpuid::KVM_LEAVES_RELOCATED - base;
        for e in &mut self.entries {
            if (base..base + cpuid::LEAF_BLOCK_STEP).contains(&e.function) {
                e.function += offset;
                // The signature leaf's EAX is the highest leaf of its block: move it along.
                if e.function == cpuid::KVM_LEAVES_RELOCATED && e.eax >= base {
                    e.eax += offset;
                }
            }
        }
        let [ebx, ecx, edx] = cpuid::signature_regs(&cpuid::SIGNATURE);
        *self.entry(base, 0) =
            kvm_cpuid_entry2 { function: base, eax: cpuid::LEAF_INFO, ebx, ecx, edx, ..Default::default() };
        *self.entry(cpuid::LEAF_INFO, 0) = kvm_cpuid_entry2 {
            function: cpuid::LEAF_INFO,
            eax: version.to_raw(),
            ebx: features.0,
            ecx: tsc_khz,
            edx: APIC_BUS_KHZ,
            ..Default::default()
        };
        self.entry(1, 0).ecx |= LEAF1_ECX_HYPERVISOR;
    }

    /// The table as KVM wants it.
    pub fn to_kvm(&self) -> Result<CpuId> {
        CpuId::from_entries(&self.entries).map_err(|_| Error::SetCpuid(kvm_ioctls::Error::new(libc::E2BIG)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, eax: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, eax, ebx, ..Default::default() }
    }

    #[test]
    fn kvm_leaves_move_and_ours_take_their_place() {
        let kvm_sig = cpuid::signature_regs(&cpuid::KVM_SIGNATURE);
        let mut t = CpuidTable::from_entries(vec![
            leaf(1, 0, 0),
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ebx: kvm_sig[0],
                ecx: kvm_sig[1],
                edx: kvm_sig[2],
                ..Default::default()
            },
            leaf(0x4000_0001, 0x1234, 0),
        ]);
        t.install_host_stub_leaves(AbiVersion::new(1, 2), Features(Features::HYPERCALL), 2_000_000);
        let ours = t.get(0x4000_0000, 0).unwrap();
        assert_eq!(cpuid::signature_bytes(ours.ebx, ours.ecx, ours.edx), cpuid::SIGNATURE);
        let info = t.get(cpuid::LEAF_INFO, 0).unwrap();
        assert_eq!((info.eax, info.ebx, info.ecx), (0x0001_0002, Features::HYPERCALL, 2_000_000));
        let moved = t.get(0x4000_0100, 0).unwrap();
        assert_eq!(cpuid::signature_bytes(moved.ebx, moved.ecx, moved.edx), cpuid::KVM_SIGNATURE);
        assert_eq!(moved.eax, 0x4000_0101, "KVM's max leaf follows its block");
        assert_eq!(t.get(0x4000_0101, 0).unwrap().eax, 0x1234);
        assert_ne!(t.get(1, 0).unwrap().ecx & LEAF1_ECX_HYPERVISOR, 0);
    }
}
