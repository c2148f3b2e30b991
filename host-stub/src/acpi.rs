//! Minimal ACPI tables for the guest: an RSDP, an XSDT and a MADT listing the vCPUs' local
//! APICs and KVM's in-kernel I/O APIC, so that the guest enumerates processors the same way
//! under the host stub as under QEMU.

/// Where the tables go: the BIOS read-only area, reported to the guest as ACPI memory.
pub const TABLES_GPA: u64 = 0xE_0000;
/// Size reserved for the tables.
pub const TABLES_SIZE: u64 = 0x1_0000;
/// KVM's in-kernel I/O APIC.
const IOAPIC_ADDRESS: u32 = 0xFEC0_0000;
/// The local APIC's MMIO address.
const LAPIC_ADDRESS: u32 = 0xFEE0_0000;
const OEM_ID: &[u8; 6] = b"PVAGNT";
const OEM_TABLE_ID: &[u8; 8] = b"PVAGENT ";

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// A system description table: the 36-byte header, then `body`; the checksum is filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let length = (36 + body.len()) as u32;
    let mut t = Vec::with_capacity(length as usize);
    t.extend_from_slice(signature);
    t.extend_from_slice(&length.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"PVAG"); // creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn madt(apic_ids: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are legacy PICs
    for (uid, &id) in apic_ids.iter().enumerate() {
        // Processor Local APIC: type 0, length 8, processor UID, APIC ID, flags (enabled).
        body.extend_from_slice(&[0, 8, uid as u8, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, global interrupt base.
    body.extend_from_slice(&[1, 12, apic_ids.len() as u8, 0]);
    body.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    sdt(b"APIC", 4, &body)
}

/// The tables, laid out from [`TABLES_GPA`]: RSDP first (the guest gets its address in the PVH
/// start info), then the XSDT, then the MADT.
pub fn build(apic_ids: &[u8]) -> Vec<u8> {
    let madt = madt(apic_ids);
    let rsdp_len = 36u64;
    let xsdt_at = TABLES_GPA + rsdp_len.next_multiple_of(16);
    let madt_at = xsdt_at + 64;
    let xsdt = sdt(b"XSDT", 1, &madt_at.to_le_bytes());
    assert!(xsdt.len() <= 64, "the XSDT outgrew its slot");

    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes, below
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2); // revision: ACPI 2.0+, XSDT valid
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_at.to_le_bytes());
    rsdp.push(0); // extended checksum, below
    rsdp.extend_from_slice(&[0; 3]);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    let mut out = vec![0u8; (madt_at - TABLES_GPA) as usize];
    out[..rsdp.len()].copy_from_slice(&rsdp);
    let x = (xsdt_at - TABLES_GPA) as usize;
    out[x..x + xsdt.len()].copy_from_slice(&xsdt);
    out.extend_from_slice(&madt);
    assert!(out.len() as u64 <= TABLES_SIZE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn every_checksum_holds_and_pointers_lead_to_the_madt() {
        let t = build(&[0]);
        assert_eq!(&t[..8], b"RSD PTR ");
        assert!(sums_to_zero(&t[..20]), "RSDP checksum");
        assert!(sums_to_zero(&t[..36]), "RSDP extended checksum");
        let xsdt_at = u64::from_le_bytes(t[24..32].try_into().unwrap());
        let x = (xsdt_at - TABLES_GPA) as usize;
        assert_eq!(&t[x..x + 4], b"XSDT");
        let xlen = u32::from_le_bytes(t[x + 4..x + 8].try_into().unwrap()) as usize;
        assert!(sums_to_zero(&t[x..x + xlen]), "XSDT checksum");
        let madt_at = u64::from_le_bytes(t[x + 36..x + 44].try_into().unwrap());
        let m = (madt_at - TABLES_GPA) as usize;
        assert_eq!(&t[m..m + 4], b"APIC");
        let mlen = u32::from_le_bytes(t[m + 4..m + 8].try_into().unwrap()) as usize;
        assert_eq!(m + mlen, t.len());
        assert!(sums_to_zero(&t[m..m + mlen]), "MADT checksum");
        // First entry: the boot CPU's local APIC, enabled.
        assert_eq!(&t[m + 44..m + 48], &[0, 8, 0, 0]);
        assert_eq!(t[m + 48] & 1, 1);
    }

    #[test]
    fn one_local_apic_entry_per_vcpu() {
        let t = build(&[0, 1, 2]);
        let m = t.len() - (36 + 8 + 3 * 8 + 12);
        assert_eq!(&t[m..m + 4], b"APIC");
        let ids: Vec<u8> = (0..3).map(|i| t[m + 44 + i * 8 + 3]).collect();
        assert_eq!(ids, [0, 1, 2]);
    }
}
