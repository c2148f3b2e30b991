//! Which processors the kernel runs on: the local APIC IDs the MADT lists, given dense indices.
//!
//! Every per-vCPU array in the kernel (`percpu::CpuLocal`, `sync::CpuCell`, the stack area) is
//! indexed by a dense vCPU index, 0 for the boot vCPU; the APIC ID is what the hardware and the
//! host name a vCPU by (IPIs, MSI destinations, the MADT). The two are never assumed equal: a
//! host may number its APICs sparsely (one ID per core with SMT off, IDs beyond the CPU count),
//! and the boot vCPU need not have the lowest ID. Plain logic, unit-tested on the host.

use super::MAX_CPUS;

/// The processors the kernel uses: index `i` has APIC ID `apic_ids[i]`, index 0 is the boot
/// vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMap {
    apic_ids: [u32; MAX_CPUS],
    count: usize,
    /// Usable processors the firmware listed beyond [`MAX_CPUS`] (not started; boot warns).
    pub beyond_max: usize,
    /// Entries dropped because they repeated an APIC ID already taken (boot warns).
    pub duplicates: usize,
}

impl CpuMap {
    /// Only the boot vCPU (no MADT, or one that cannot be read).
    pub fn boot_only(boot_apic_id: u32) -> Self {
        let mut apic_ids = [0; MAX_CPUS];
        apic_ids[0] = boot_apic_id;
        Self { apic_ids, count: 1, beyond_max: 0, duplicates: 0 }
    }

    /// The boot vCPU first, then every other usable processor in the firmware's order. `listed`
    /// is every usable APIC ID of the MADT (enabled or online capable), the boot vCPU's among
    /// them or not: a MADT that forgot the boot vCPU still leaves it index 0.
    pub fn new(boot_apic_id: u32, listed: impl IntoIterator<Item = u32>) -> Self {
        let mut map = Self::boot_only(boot_apic_id);
        for id in listed {
            if map.ids().contains(&id) {
                // The boot vCPU's own entry, or a firmware bug: one vCPU, one index.
                if id != boot_apic_id {
                    map.duplicates += 1;
                }
                continue;
            }
            if map.count == MAX_CPUS {
                map.beyond_max += 1;
                continue;
            }
            map.apic_ids[map.count] = id;
            map.count += 1;
        }
        map
    }

    /// How many vCPUs the kernel uses (at least 1).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The APIC IDs by index.
    pub fn ids(&self) -> &[u32] {
        &self.apic_ids[..self.count]
    }

    /// The APIC ID of vCPU `index`.
    pub fn apic_id(&self, index: usize) -> Option<u32> {
        self.ids().get(index).copied()
    }

    /// The index of the vCPU with APIC ID `apic_id`.
    pub fn index_of(&self, apic_id: u32) -> Option<usize> {
        self.ids().iter().position(|&id| id == apic_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_vcpu_is_index_0_whatever_its_apic_id() {
        let map = CpuMap::new(5, [0, 2, 5, 7]);
        assert_eq!(map.ids(), &[5, 0, 2, 7]);
        assert_eq!(map.index_of(5), Some(0));
        assert_eq!(map.index_of(7), Some(3));
        assert_eq!(map.index_of(1), None);
        assert_eq!((map.beyond_max, map.duplicates), (0, 0));
    }

    #[test]
    fn sparse_ids_get_dense_indices() {
        let map = CpuMap::new(0, [0, 2, 4, 6]);
        assert_eq!(map.count(), 4);
        assert_eq!(map.apic_id(3), Some(6));
        assert_eq!(map.apic_id(4), None);
    }

    #[test]
    fn a_madt_without_the_boot_vcpu_still_has_it_first() {
        let map = CpuMap::new(3, [1, 2]);
        assert_eq!(map.ids(), &[3, 1, 2]);
    }

    #[test]
    fn duplicates_and_processors_beyond_the_limit_are_counted_not_started() {
        let many: Vec<u32> = (0..MAX_CPUS as u32 + 3).collect();
        let map = CpuMap::new(0, many.iter().copied().chain([1, 1]));
        assert_eq!(map.count(), MAX_CPUS);
        assert_eq!(map.beyond_max, 3);
        assert_eq!(map.duplicates, 2);
    }

    #[test]
    fn no_madt_means_the_boot_vcpu_alone() {
        let map = CpuMap::boot_only(9);
        assert_eq!(map.ids(), &[9]);
    }
}
