//! Minimal ACPI tables for the guest: an RSDP, an XSDT and a MADT listing the vCPUs' local
//! APICs and KVM's in-kernel I/O APIC, so that the guest enumerates processors the same way
//! under the host stub as under QEMU. Built from rust-vmm's `acpi_tables` structures, which keep
//! each table's length and checksum.

use acpi_tables::Aml;
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::{Error, Result};

/// Where the tables go: the BIOS read-only area, reported to the guest as ACPI memory.
pub const TABLES_GPA: u64 = 0xE_0000;
/// Size reserved for the tables.
pub const TABLES_SIZE: u64 = 0x1_0000;
/// Most processors the MADT lists: their UIDs are 8 bits, and APIC ID `0xFF` is the broadcast
/// address (IDs beyond it need x2APIC entries, which these tables do not have yet).
pub const MAX_CPUS: usize = 0xFF;
/// KVM's in-kernel I/O APIC: its address, and the ID its ID register holds after reset.
const IOAPIC_ADDRESS: u32 = 0xFEC0_0000;
const IOAPIC_ID: u8 = 0;
/// The local APIC's MMIO address, which is also where MSIs are addressed.
pub const LAPIC_ADDRESS: u32 = 0xFEE0_0000;
const OEM_ID: [u8; 6] = *b"PVAGNT";
const OEM_TABLE_ID: [u8; 8] = *b"PVAGENT ";
const OEM_REVISION: u32 = 1;
/// The MADT's revision, as the host stub has always written it: the two kinds of entry it holds
/// (processor local APIC, I/O APIC) are laid out the same in every revision.
const MADT_REVISION: u8 = 4;
/// MADT flag `PCAT_COMPAT`: the machine also has the PC-AT dual 8259 (KVM_CREATE_IRQCHIP creates
/// them), which the guest masks before it uses the local APIC.
const PCAT_COMPAT: u32 = 1;
/// Tables start on 16-byte boundaries.
const TABLE_ALIGN: u64 = 16;

/// The MADT's own fields after the common header (the ACPI specification's "Multiple APIC
/// Description Table"): where the local APIC is, and flags. `acpi_tables`'s `MADT`
/// type sets its flags to 0, which would deny the 8259s the VM has, so the MADT is built as a
/// generic table with this and the crate's typed entries.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, FromBytes, Immutable)]
struct MadtFields {
    local_apic_address: U32,
    flags: U32,
}

/// The common header every system description table starts with.
const HEADER_LEN: u32 = 36;
const _: () = assert!(size_of::<MadtFields>() == 8);
/// The most the tables take (RSDP, MADT with [`MAX_CPUS`] local APICs and the I/O APIC, XSDT
/// with one entry, each 16-byte aligned) fits the space reserved for them.
const _: () = assert!(48 + (44 + 8 * MAX_CPUS as u64 + 12 + 15) + 44 <= TABLES_SIZE);

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// The MADT for processors with these APIC IDs, in order (processor UID = index), all enabled.
fn madt(apic_ids: &[u8]) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", HEADER_LEN + 8, MADT_REVISION, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write(HEADER_LEN as usize, MadtFields { local_apic_address: LAPIC_ADDRESS.into(), flags: PCAT_COMPAT.into() });
    for (uid, &apic_id) in apic_ids.iter().enumerate() {
        madt.append_slice(ProcessorLocalApic::new(uid as u8, apic_id, EnabledStatus::Enabled).as_bytes());
    }
    madt.append_slice(IoApic::new(IOAPIC_ID, IOAPIC_ADDRESS, 0).as_bytes());
    madt
}

/// The tables for vCPUs with these local APIC IDs (in vCPU order), laid out from
/// [`TABLES_GPA`]: the RSDP first (the guest gets its address in the PVH start info), then the
/// MADT, then the XSDT that points at it.
pub fn build(apic_ids: &[u8]) -> Result<Vec<u8>> {
    if apic_ids.is_empty() || apic_ids.len() > MAX_CPUS || apic_ids.contains(&0xFF) {
        return Err(Error::AcpiCpus { cpus: apic_ids.len(), max: MAX_CPUS });
    }
    let madt = bytes(&madt(apic_ids));
    let madt_at = TABLES_GPA + (Rsdp::len() as u64).next_multiple_of(TABLE_ALIGN);
    let xsdt_at = (madt_at + madt.len() as u64).next_multiple_of(TABLE_ALIGN);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(madt_at);
    let xsdt = bytes(&xsdt);

    let mut out = vec![0u8; (xsdt_at - TABLES_GPA) as usize];
    out[..Rsdp::len()].copy_from_slice(Rsdp::new(OEM_ID, xsdt_at).as_bytes());
    let m = (madt_at - TABLES_GPA) as usize;
    out[m..m + madt.len()].copy_from_slice(&madt);
    out.extend_from_slice(&xsdt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }

    /// Follows RSDP -> XSDT -> MADT as a guest does, checking each signature and checksum;
    /// the MADT's bytes.
    fn find_madt(t: &[u8]) -> &[u8] {
        assert_eq!(&t[..8], b"RSD PTR ");
        assert_eq!(t[15], 2, "ACPI 2.0+ RSDP: the XSDT is valid");
        assert!(sums_to_zero(&t[..20]), "RSDP checksum");
        assert!(sums_to_zero(&t[..36]), "RSDP extended checksum");
        let xsdt_at = u64::from_le_bytes(t[24..32].try_into().unwrap());
        let x = (xsdt_at - TABLES_GPA) as usize;
        assert_eq!(&t[x..x + 4], b"XSDT");
        let xlen = u32_at(t, x + 4) as usize;
        assert_eq!(xlen, 36 + 8, "one entry");
        assert!(sums_to_zero(&t[x..x + xlen]), "XSDT checksum");
        let madt_at = u64::from_le_bytes(t[x + 36..x + 44].try_into().unwrap());
        let m = (madt_at - TABLES_GPA) as usize;
        assert_eq!(&t[m..m + 4], b"APIC");
        let mlen = u32_at(t, m + 4) as usize;
        assert!(sums_to_zero(&t[m..m + mlen]), "MADT checksum");
        &t[m..m + mlen]
    }

    #[test]
    fn every_checksum_holds_and_pointers_lead_to_the_madt() {
        let t = build(&[0]).unwrap();
        assert!(t.len() as u64 <= TABLES_SIZE);
        let madt = find_madt(&t);
        assert_eq!(u32_at(madt, 36), LAPIC_ADDRESS);
        assert_eq!(u32_at(madt, 40), PCAT_COMPAT, "the VM has the 8259s");
        // The boot CPU's local APIC (type 0, length 8, UID 0, APIC ID 0), enabled; then the I/O APIC.
        assert_eq!(&madt[44..48], &[0, 8, 0, 0]);
        assert_eq!(u32_at(madt, 48), 1);
        assert_eq!(&madt[52..56], &[1, 12, IOAPIC_ID, 0]);
        assert_eq!(u32_at(madt, 56), IOAPIC_ADDRESS);
        assert_eq!(u32_at(madt, 60), 0, "global system interrupt base");
        assert_eq!(madt.len(), 64);
    }

    #[test]
    fn one_enabled_local_apic_entry_per_vcpu_in_order() {
        let t = build(&[0, 1, 5]).unwrap();
        let madt = find_madt(&t);
        assert_eq!(madt.len(), 44 + 3 * 8 + 12);
        for (i, apic_id) in [0u8, 1, 5].into_iter().enumerate() {
            let e = &madt[44 + i * 8..52 + i * 8];
            assert_eq!(&e[..4], &[0, 8, i as u8, apic_id], "entry {i}");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
    }

    #[test]
    fn impossible_processor_lists_are_refused() {
        assert!(matches!(build(&[]), Err(Error::AcpiCpus { .. })));
        assert!(matches!(build(&[0xFF]), Err(Error::AcpiCpus { .. })), "the broadcast ID");
        assert!(matches!(build(&[0; MAX_CPUS + 1]), Err(Error::AcpiCpus { .. })));
        assert!(build(&[0; MAX_CPUS]).is_ok());
    }
}
