//! Guest memory: the RAM region, the fixed places of the boot information, and typed access to
//! shared structures (`pvagent_abi::Plain` types) through `vm-memory`'s copying accessors.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pvagent_abi::Plain;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::error::{Error, Result};

/// Where the PVH start info goes (below the image at 1 MiB, above the real-mode IVT/BDA).
pub const START_INFO_GPA: u64 = 0x6000;
/// Where the PVH memory map goes, right after the start info.
pub const MEMMAP_GPA: u64 = 0x6100;
/// Where the command line goes.
pub const CMDLINE_GPA: u64 = 0x7000;
/// Longest command line, without its NUL.
pub const CMDLINE_MAX: usize = 0x1000 - 1;
/// The page the guest copies its real-mode AP trampoline to (the ABI's; kept free here).
pub use pvagent_abi::pvh::AP_TRAMPOLINE_GPA;
/// Images must load at or above 1 MiB: everything below belongs to the boot information.
pub const IMAGE_MIN_GPA: u64 = 0x10_0000;
/// End of the legacy hole's start (the VGA/BIOS area is left out of the RAM map).
pub const LOW_RAM_END: u64 = 0xA_0000;

/// A `Plain` ABI type as `vm-memory` wants it.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
struct Wire<T>(T);

// SAFETY: `Plain` guarantees no padding and that every bit pattern is valid; `Wire` is
// transparent over it.
unsafe impl<T: Plain + Default + Send + Sync> ByteValued for Wire<T> {}

/// Reads a shared structure from guest memory: a volatile copy (`vm-memory` copies through a
/// `VolatileSlice`), because the guest may change it meanwhile; a torn read is a valid value of
/// a `Plain` type, which the caller then checks.
pub fn read_plain<T: Plain + Default + Send + Sync>(mem: &GuestMemoryMmap, gpa: u64) -> Result<T, GuestMemoryError> {
    mem.read_obj::<Wire<T>>(GuestAddress(gpa)).map(|w| w.0)
}

/// Writes a shared structure into guest memory (a volatile copy, as [`read_plain`]).
pub fn write_plain<T: Plain + Default + Send + Sync>(
    mem: &GuestMemoryMmap,
    gpa: u64,
    value: T,
) -> Result<(), GuestMemoryError> {
    mem.write_obj(Wire(value), GuestAddress(gpa))
}

/// Allocates `size` bytes of RAM at guest address 0.
pub fn allocate_ram(size: u64) -> Result<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| Error::AllocateMemory { mib: size >> 20, source })
}

/// Registers every region of `mem` with KVM, from slot `first_slot` on.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, first_slot: u32) -> Result<u32> {
    let mut slot = first_slot;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|source| Error::RamHostAddress { gpa: region.start_addr().0, source })?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region's host mapping lives as long as `mem`, which the Vm keeps until
        // after the VM fd is closed.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|e| Error::SetMemoryRegion(slot, e))?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvagent_abi::hypercall::Request;

    #[test]
    fn the_ap_trampoline_page_is_low_ram_clear_of_the_boot_information() {
        let page = AP_TRAMPOLINE_GPA..AP_TRAMPOLINE_GPA + 0x1000;
        assert!(page.end <= LOW_RAM_END, "below the legacy hole, reachable in real mode");
        assert!(AP_TRAMPOLINE_GPA.is_multiple_of(0x1000) && AP_TRAMPOLINE_GPA >> 12 <= 0xFF, "a SIPI vector");
        for taken in [START_INFO_GPA, MEMMAP_GPA, CMDLINE_GPA, CMDLINE_GPA + CMDLINE_MAX as u64] {
            assert!(!page.contains(&taken), "{taken:#x}");
        }
        let ram = crate::loader::ram_ranges(64 << 20);
        assert!(ram.iter().any(|r| r.start <= page.start && page.end <= r.end), "listed as RAM");
    }

    /// A hypercall block's GPA is the guest's: one whose block runs past the end of RAM, or
    /// past the top of the address space, is an error, never an overflow.
    #[test]
    fn a_shared_structure_past_the_end_of_ram_is_an_error() {
        let mem = allocate_ram(1 << 20).expect("1 MiB");
        let size = std::mem::size_of::<Request>() as u64;
        assert!(read_plain::<Request>(&mem, (1 << 20) - size).is_ok(), "the last block that fits");
        for gpa in [(1 << 20) - size + 8, 1 << 20, u64::from(u32::MAX) - 7, u64::MAX - 7, u64::MAX] {
            assert!(read_plain::<Request>(&mem, gpa).is_err(), "{gpa:#x}");
            assert!(write_plain(&mem, gpa, Request::default()).is_err(), "{gpa:#x}");
        }
    }

    /// Any address a guest names for a shared structure (a hypercall block), near 2^64
    /// included: it is read and written exactly when all of it lies in RAM, and what is written
    /// there reads back.
    #[test]
    fn a_shared_structure_is_accessed_exactly_when_it_lies_in_ram() {
        use crate::props::{check, edge_u64, lies_within};
        use proptest::prelude::*;
        const RAM: u64 = 1 << 20;
        let mem = allocate_ram(RAM).expect("1 MiB");
        let size = std::mem::size_of::<Request>() as u64;
        let gpa = prop_oneof![edge_u64(), (0..RAM + 64).prop_map(|g| g & !7)];
        check("shared structure", 3000, (gpa, any::<u64>()), |(gpa, word)| {
            let fits = lies_within(std::slice::from_ref(&(0..RAM)), gpa, size);
            let value = Request { nr: word as u32, args: [word, !word, word.rotate_left(7), 3], ..Request::default() };
            prop_assert_eq!(write_plain(&mem, gpa, value).is_ok(), fits, "write at {:#x}", gpa);
            match read_plain::<Request>(&mem, gpa) {
                Ok(back) => {
                    prop_assert!(fits, "read at {:#x}", gpa);
                    prop_assert_eq!(back, value);
                }
                Err(_) => prop_assert!(!fits, "no read at {:#x}", gpa),
            }
            Ok(())
        });
    }
}
