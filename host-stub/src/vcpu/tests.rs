//! The run loop's unit tests: MSIs and the forms a memory fault comes in.

use super::*;

#[test]
fn a_vcpus_msi_names_its_apic_id_as_the_physical_destination() {
    let msi = fixed_msi(apic_id(3), 0x52);
    assert_eq!(msi.address_lo, 0xFEE0_3000, "destination ID 3 in bits 19:12, physical mode (bit 2 clear)");
    assert_eq!((msi.address_hi, msi.data), (0, 0x52), "fixed delivery, edge, the vector");
    assert_eq!(fixed_msi(apic_id(0), 0x40).address_lo, 0xFEE0_0000);
}

/// Each form a memory access KVM cannot back comes in, built by hand as `kvm-ioctls` hands
/// it over, becomes the exit its handler expects.
#[test]
fn every_form_of_a_memory_fault_reaches_its_exit() {
    let mut data = ExitData::default();
    let errno = kvm_ioctls::Error::new;
    // KVM_CAP_MEMORY_FAULT_INFO's form: EFAULT with exit reason 39 (`kvm-ioctls` makes it
    // an exit), the flags kept whole.
    let flags = memory_fault::flags::WRITE | memory_fault::flags::PRIVATE;
    let exit = exit_of(Ok(VcpuExit::MemoryFault { flags, gpa: 0x1_0000_2000, size: 0x1000 }), &mut data);
    let Ok(Exit::MemoryFault(fault)) = exit else { panic!("{exit:?}") };
    assert_eq!(fault, MemoryFault { gpa: 0x1_0000_2000, size: 0x1000, flags });
    assert!(fault.private() && fault.access() == memory_fault::FaultAccess::Write);
    // A bare EFAULT: no information, the instruction at RIP is the only witness.
    assert!(matches!(exit_of(Err(errno(libc::EFAULT)), &mut data), Ok(Exit::Efault)));
    // PVM's CPL 0 form: an MMIO exit at the RAM address, its data kept for the handler.
    let mut bytes = [0u8; 4];
    let exit = exit_of(Ok(VcpuExit::MmioRead(0x1_0000_2008, &mut bytes)), &mut data);
    assert!(matches!(exit, Ok(Exit::MmioRead { addr: 0x1_0000_2008, len: 4 })), "{exit:?}");
    let exit = exit_of(Ok(VcpuExit::MmioWrite(0x1_0000_2008, &[1, 2])), &mut data);
    assert!(matches!(exit, Ok(Exit::MmioWrite { addr: 0x1_0000_2008 })) && data.0 == [1, 2], "{exit:?}");
    // EHWPOISON without fault information, and any other failure, end the run.
    assert!(matches!(exit_of(Err(errno(libc::EHWPOISON)), &mut data), Err(Error::Run(_))));
    assert!(matches!(exit_of(Err(errno(libc::EINTR)), &mut data), Ok(Exit::Interrupted)));
}
