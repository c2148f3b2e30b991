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
/// CPUID.1:EDX bit 28 (HTT): EBX[23:16] of leaf 1 is valid (more than one logical processor).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// The two leaves that enumerate the x2APIC topology (0x1F is the extended form of 0xB).
const TOPOLOGY_LEAVES: [u32; 2] = [0xB, 0x1F];
/// Level types of leaves 0xB/0x1F (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// How the vCPUs map onto cores and one package, as CPUID shows it: vCPU `i` has (x2)APIC ID
/// `i`; with `threads_per_core` 2, vCPUs `2k` and `2k + 1` are the threads of core `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub vcpus: u32,
    pub threads_per_core: u32,
}

impl Topology {
    /// Bits of the APIC ID that number the threads of a core (the SMT level's shift).
    pub fn smt_shift(self) -> u32 {
        bits_for(self.threads_per_core)
    }

    /// Bits of the APIC ID below the package ID (the core level's shift): room for every vCPU.
    pub fn core_shift(self) -> u32 {
        bits_for(self.vcpus).max(self.smt_shift())
    }

    /// The core vCPU `apic_id` belongs to.
    pub fn core_of(self, apic_id: u32) -> u32 {
        apic_id >> self.smt_shift()
    }
}

/// Bits needed to number `n` things (0 for one).
fn bits_for(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

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

    /// The guest's physical address width (CPUID 0x8000_0008, EAX bits 7:0); 36 bits, the
    /// architectural minimum with PAE, when the leaf is missing.
    pub fn phys_addr_bits(&self) -> u32 {
        self.get(0x8000_0008, 0).map(|e| e.eax & 0xFF).filter(|bits| *bits > 0).unwrap_or(36)
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

    /// Makes the table vCPU `apic_id`'s in `topology`: its initial APIC ID in leaf 1 EBX bits 31:24
    /// (and the package's addressable IDs in EBX bits 23:16, HTT with several vCPUs), and leaves
    /// 0xB and 0x1F (the highest basic leaf raised to 0x1F if need be) with an SMT level, a core
    /// level and the x2APIC ID in EDX of every subleaf.
    pub fn set_topology(&mut self, apic_id: u32, topology: Topology) {
        let (smt_shift, core_shift) = (topology.smt_shift(), topology.core_shift());
        let leaf1 = self.entry(1, 0);
        leaf1.ebx = (leaf1.ebx & 0x0000_FFFF) | (apic_id << 24) | ((1 << core_shift).min(0xFF) << 16);
        if topology.vcpus > 1 {
            leaf1.edx |= LEAF1_EDX_HTT;
        } else {
            leaf1.edx &= !LEAF1_EDX_HTT;
        }
        let leaf0 = self.entry(0, 0);
        leaf0.eax = leaf0.eax.max(0x1F);
        // (shift to the next level's ID, logical processors at this level, level type).
        let levels = [(smt_shift, topology.threads_per_core, LEVEL_SMT), (core_shift, topology.vcpus, LEVEL_CORE)];
        for function in TOPOLOGY_LEAVES {
            self.entries.retain(|e| e.function != function);
            for (subleaf, (shift, count, kind)) in levels.into_iter().enumerate() {
                let index = subleaf as u32;
                self.entries.push(kvm_cpuid_entry2 {
                    function,
                    index,
                    flags: FLAG_SIGNIFICANT_INDEX,
                    eax: shift,
                    ebx: count,
                    ecx: (kind << 8) | index,
                    edx: apic_id,
                    ..Default::default()
                });
            }
            // The subleaf after the last level: level type 0 (invalid) ends the enumeration.
            let index = levels.len() as u32;
            self.entries.push(kvm_cpuid_entry2 {
                function,
                index,
                flags: FLAG_SIGNIFICANT_INDEX,
                ecx: index,
                edx: apic_id,
                ..Default::default()
            });
        }
    }

    /// The table as KVM wants it.
    pub fn to_kvm(&self) -> Result<CpuId> {
        CpuId::from_entries(&self.entries).map_err(|_| Error::SetCpuid(kvm_ioctls::Error::new(libc::E2BIG)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a guest reads from `function`/`subleaf` of `table`: (EAX, EBX, ECX, EDX).
    fn read(table: &CpuidTable, function: u32, subleaf: u32) -> (u32, u32, u32, u32) {
        let e = table.get(function, subleaf).unwrap_or_else(|| panic!("leaf {function:#x}.{subleaf}"));
        (e.eax, e.ebx, e.ecx, e.edx)
    }

    #[test]
    fn smt_pairs_vcpus_into_cores_and_every_vcpu_sees_its_own_apic_id() {
        let smt = Topology { vcpus: 4, threads_per_core: 2 };
        assert_eq!((smt.smt_shift(), smt.core_shift()), (1, 2));
        assert_eq!((0..4).map(|v| smt.core_of(v)).collect::<Vec<_>>(), [0, 0, 1, 1]);
        for apic_id in 0..4 {
            let mut t = CpuidTable::from_entries(vec![leaf(0, 0xD, 0), leaf(1, 0, 0x0000_0800)]);
            t.set_topology(apic_id, smt);
            assert_eq!(read(&t, 1, 0).1, (apic_id << 24) | (4 << 16) | 0x0800, "leaf 1 EBX keeps its low half");
            assert_ne!(read(&t, 1, 0).3 & LEAF1_EDX_HTT, 0);
            assert_eq!(read(&t, 0, 0).0, 0x1F, "leaf 0x1F is reachable");
            for function in TOPOLOGY_LEAVES {
                assert_eq!(read(&t, function, 0), (1, 2, (LEVEL_SMT << 8), apic_id), "SMT level");
                assert_eq!(read(&t, function, 1), (2, 4, (LEVEL_CORE << 8) | 1, apic_id), "core level");
                assert_eq!(read(&t, function, 2), (0, 0, 2, apic_id), "the end of the levels");
            }
        }
    }

    #[test]
    fn without_smt_each_vcpu_is_a_core_and_the_core_level_covers_them_all() {
        let flat = Topology { vcpus: 3, threads_per_core: 1 };
        assert_eq!((flat.smt_shift(), flat.core_shift()), (0, 2));
        assert_eq!((0..3).map(|v| flat.core_of(v)).collect::<Vec<_>>(), [0, 1, 2]);
        let mut t = CpuidTable::from_entries(vec![leaf(0, 0x20, 0), leaf(1, 0, 0)]);
        t.set_topology(2, flat);
        assert_eq!(read(&t, 0, 0).0, 0x20, "a higher basic leaf stays");
        assert_eq!(read(&t, 0xB, 0), (0, 1, LEVEL_SMT << 8, 2));
        assert_eq!(read(&t, 0xB, 1), (2, 3, (LEVEL_CORE << 8) | 1, 2));
        let mut t = CpuidTable::from_entries(vec![leaf(1, 0, 0)]);
        t.set_topology(0, Topology { vcpus: 1, threads_per_core: 1 });
        assert_eq!(read(&t, 1, 0).3 & LEAF1_EDX_HTT, 0);
        assert_eq!(read(&t, 0x1F, 1), (0, 1, (LEVEL_CORE << 8) | 1, 0));
    }

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
