//! ACPI, where the host provides it (QEMU and the host stub both do): the MADT tells how many
//! CPUs there are and their APIC IDs. Read with the `acpi` crate over the identity map.

use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

/// The acpi crate's view of physical memory: the identity map, up to `reach` (the first address
/// it cannot hold).
#[derive(Clone, Copy, Debug)]
struct IdentityMap {
    reach: u64,
}

impl AcpiHandler for IdentityMap {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let ptr = NonNull::new(physical_address as *mut T).expect("ACPI table at physical address 0");
        // Firmware often keeps its tables in "reserved" ranges, which are not mapped wholesale:
        // map exactly what the acpi crate reads, read-only.
        let start = physical_address as u64;
        // The tables' addresses are the host's: one beyond the identity map's reach ends the
        // boot with this report, rather than being mapped over low memory by index wrap-around
        // (the acpi crate's handler cannot return an error).
        let end = start.checked_add(size as u64).filter(|&end| end <= self.reach);
        let Some(end) = end else {
            panic!("an ACPI table at {start:#x} ({size} bytes) lies beyond the identity map's reach");
        };
        super::paging::ensure_mapped(start, end, super::paging::Access::KernelRodata);
        // SAFETY: the region is identity mapped now (just above), and the acpi crate only asks
        // for regions the firmware's tables point at.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// How many APIC IDs a [`MadtSummary`] keeps: room for every vCPU the kernel can run and as
/// many again (a MADT may list the boot vCPU late, or repeat an entry).
pub const MADT_IDS_KEPT: usize = 2 * super::MAX_CPUS;

/// What the MADT says about the processors.
#[derive(Clone, Copy, Debug, Default)]
pub struct MadtSummary {
    /// Processors that are enabled or can be brought online.
    pub cpus: u32,
    /// Their APIC IDs, in the MADT's order (the first [`MADT_IDS_KEPT`]).
    pub apic_ids: [u32; MADT_IDS_KEPT],
}

impl MadtSummary {
    /// The APIC IDs kept.
    pub fn ids(&self) -> &[u32] {
        &self.apic_ids[..(self.cpus as usize).min(MADT_IDS_KEPT)]
    }
}

/// Reads the MADT through the RSDP at `rsdp`, every table below `reach` (the identity map's).
/// Errors are the acpi crate's.
pub fn read_madt(rsdp: u64, reach: u64) -> Result<MadtSummary, acpi::AcpiError> {
    // SAFETY: `rsdp` comes from the boot information and points at an RSDP in mapped memory;
    // the crate validates signatures and checksums before trusting anything.
    let tables = unsafe { AcpiTables::from_rsdp(IdentityMap { reach }, rsdp as usize)? };
    let madt = tables.find_table::<Madt>()?;
    let mut summary = MadtSummary::default();
    for entry in madt.get().entries() {
        let (id, flags) = match entry {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        // Bit 0: enabled; bit 1: online capable.
        if flags & 0b11 != 0 {
            if let Some(slot) = summary.apic_ids.get_mut(summary.cpus as usize) {
                *slot = id;
            }
            summary.cpus += 1;
        }
    }
    Ok(summary)
}
