//! A region whose host memory is gone: the trigger for a real memory-fault exit (seed 004). The
//! region is a guest_memfd memslot whose mapping and file the host released right after creating
//! it, so every guest access to it is one KVM cannot back. On this machine's PVM `/dev/kvm` a
//! CPL 3 access then ends KVM_RUN with `KVM_EXIT_MEMORY_FAULT` (gpa, size 4 KiB, flags 0) and a
//! CPL 0 access with an MMIO exit (CPL 0 goes through `userspace_addr`, whose range is
//! kept reserved with no memory behind it);
//! a kernel that does not annotate the fault gives a bare EFAULT. This producer handles all three:
//! it replaces the slot's backing with fresh anonymous memory holding
//! [`pvagent_abi::layout::fill_value`], and the retried access (or, for MMIO, the completed one)
//! reads it. With `repair` off it claims the fault and changes nothing, which is what a buggy
//! handler does: the run loop's repeat guard must then stop the run.
//!
//! The region is announced to the guest through the layout ([`pvagent_abi::hypercall::Nr::LayoutRegion`],
//! [`RegionKind::ReleasedBacking`]) and listed as reserved in the memory map.

use std::sync::Arc;

use kvm_bindings::{
    KVM_MEM_GUEST_MEMFD, kvm_create_guest_memfd, kvm_userspace_memory_region, kvm_userspace_memory_region2,
};
use kvm_ioctls::{Cap, VmFd};
use pvagent_abi::layout::RegionKind;
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RESERVED};
use vm_memory::{MmapRegion, VolatileMemory};

use crate::error::{Error, Result};
use crate::handler::{AttachCtx, ExitHandler, Handled, Report, VcpuCtx};
use crate::memory_fault::MemoryFault;

const NAME: &str = "released";

/// guest_memfd flags (Linux 6.18 uAPI, not in `kvm-bindings` 0.14): the file can be mmap'ed,
/// and its pages start shared (so user space and a non-confidential VM can use them).
const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// Where the region is and whether the host repairs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleasedConfig {
    /// Its first GPA (2 MiB aligned, outside RAM and the other producers' regions).
    pub gpa: u64,
    /// Its size (a multiple of 2 MiB).
    pub bytes: u64,
    /// Whether a fault gets fresh memory (`false`: the fault is claimed and nothing changes).
    pub repair: bool,
}

impl Default for ReleasedConfig {
    fn default() -> Self {
        // Above the demand pager's default region (4 GiB, 16 MiB), below any RAM the host stub
        // can be given (it allocates RAM below 4 GiB).
        Self { gpa: 5 << 30, bytes: 2 << 20, repair: true }
    }
}

/// The producer.
pub struct ReleasedBacking {
    config: ReleasedConfig,
    vm: Option<Arc<VmFd>>,
    slot: u32,
    /// The memory that replaced the released one (kept until after the VM is closed: the
    /// producers are dropped after the VM fd).
    fresh: Option<Arc<MmapRegion>>,
    memory_fault_exits: u64,
    efaults: u64,
    mmio_accesses: u64,
    /// The last memory fault, as the report shows it.
    last_fault: Option<MemoryFault>,
}

impl std::fmt::Debug for ReleasedBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedBacking").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ReleasedBacking {
    pub fn new(config: ReleasedConfig) -> Self {
        Self {
            config,
            vm: None,
            slot: 0,
            fresh: None,
            memory_fault_exits: 0,
            efaults: 0,
            mmio_accesses: 0,
            last_fault: None,
        }
    }

    fn contains(&self, gpa: u64) -> bool {
        gpa.checked_sub(self.config.gpa).is_some_and(|offset| offset < self.config.bytes)
    }

    /// Gives the slot fresh memory holding the fill pattern, in place of the guest_memfd: the
    /// slot is deleted and created again (a guest_memfd slot cannot change its backing in place).
    /// Once only; later calls find it done.
    fn repair(&mut self) -> Result<()> {
        if self.fresh.is_some() || !self.config.repair {
            return Ok(());
        }
        let Some(vm) = self.vm.clone() else { return Ok(()) };
        let bytes = self.config.bytes;
        let (fresh, _) = crate::producers::churn::fresh_memory(self.config.gpa, bytes)?;
        let delete = kvm_userspace_memory_region { slot: self.slot, ..Default::default() };
        // SAFETY: deleting a slot maps nothing.
        unsafe { vm.set_user_memory_region(delete) }.map_err(|e| Error::SetMemoryRegion(self.slot, e))?;
        let create = kvm_userspace_memory_region {
            slot: self.slot,
            flags: 0,
            guest_phys_addr: self.config.gpa,
            memory_size: bytes,
            userspace_addr: fresh.as_ptr() as u64,
        };
        // SAFETY: `fresh` lives in this producer, which is dropped after the VM fd is closed.
        unsafe { vm.set_user_memory_region(create) }.map_err(|e| Error::SetMemoryRegion(self.slot, e))?;
        self.fresh = Some(fresh);
        Ok(())
    }

    /// Reads or writes the fresh memory for an access the host completes itself (MMIO).
    fn complete(&self, gpa: u64, read: Option<&mut [u8]>, write: Option<&[u8]>) {
        let Some(fresh) = &self.fresh else { return };
        let offset = (gpa - self.config.gpa) as usize;
        let len = read.as_ref().map_or(0, |d| d.len()).max(write.map_or(0, <[u8]>::len));
        let Ok(slice) = fresh.get_slice(offset, len) else { return };
        if let Some(data) = read {
            slice.copy_to(data);
        }
        if let Some(data) = write {
            slice.copy_from(data);
        }
    }
}

/// Releases the memory of the mapping at `map` (`bytes` long, made by the caller and used by
/// nothing but a memslot's `userspace_addr`) but keeps its addresses: an inaccessible mapping
/// (`PROT_NONE`) replaces it in place. A plain `munmap` would free the range, the next mapping the
/// process makes (another region's memory) could land there, and KVM, which reaches a slot's
/// memory through `userspace_addr` (CPL 0 accesses do on this PVM host), would then give the guest
/// that memory instead of a fault. The reservation is never unmapped: it costs no memory.
fn release_keeping_addresses(map: *mut libc::c_void, bytes: u64) -> Result<()> {
    // SAFETY: replaces, at the same addresses (`MAP_FIXED`), a mapping the caller made and nothing
    // else refers to but KVM's slot, with one that holds no memory; no Rust reference points into
    // it.
    let reserved = unsafe {
        libc::mmap(
            map,
            bytes as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(Error::MapMemory {
            what: "a reservation over released memory",
            bytes,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl ExitHandler for ReleasedBacking {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        for (cap, name) in [(Cap::GuestMemfd, "KVM_CAP_GUEST_MEMFD"), (Cap::UserMemory2, "KVM_CAP_USER_MEMORY2")] {
            if !ctx.kvm.check_extension(cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        let bytes = self.config.bytes;
        self.slot = ctx.take_slot();
        let gmem = kvm_create_guest_memfd {
            size: bytes,
            flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
            ..Default::default()
        };
        let fd = ctx.vm.create_guest_memfd(gmem).map_err(|source| Error::CreateGuestMemfd { bytes, source })?;
        // SAFETY: maps the new guest_memfd, which this function owns, shared (CPL 0 accesses go
        // through `userspace_addr`, CPL 3 ones to the file: the same memory only this way).
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let mapped = if map == libc::MAP_FAILED {
            Err(Error::MapMemory { what: "a guest_memfd", bytes, source: std::io::Error::last_os_error() })
        } else {
            let region = kvm_userspace_memory_region2 {
                slot: self.slot,
                flags: KVM_MEM_GUEST_MEMFD,
                guest_phys_addr: self.config.gpa,
                memory_size: bytes,
                userspace_addr: map as u64,
                guest_memfd_offset: 0,
                guest_memfd: fd as u32,
                ..Default::default()
            };
            // SAFETY: the mapping's memory is released right below on purpose: KVM then cannot
            // reach the memory behind the slot, which is what this region is for. Its addresses
            // stay reserved (`release_keeping_addresses`) for the life of the process, so the
            // slot's `userspace_addr` never reaches memory mapped later for something else.
            let set =
                unsafe { ctx.vm.set_user_memory_region2(region) }.map_err(|e| Error::SetMemoryRegion2(self.slot, e));
            match set {
                Ok(()) => release_keeping_addresses(map, bytes),
                Err(e) => {
                    // SAFETY: no slot refers to the mapping made above: it can go.
                    unsafe { libc::munmap(map, bytes as usize) };
                    Err(e)
                }
            }
        };
        // SAFETY: closes the guest_memfd this function created (the slot keeps its own reference
        // to the file, as KVM takes one when it binds the slot).
        unsafe { libc::close(fd) };
        mapped?;
        self.vm = Some(Arc::clone(ctx.vm));
        ctx.memmap.push(HvmMemmapEntry {
            addr: self.config.gpa,
            size: bytes,
            type_: MEMMAP_TYPE_RESERVED,
            reserved: 0,
        });
        // Its slot is this producer's, not the layout's: no layout update may land on it.
        ctx.layout.add_foreign(self.config.gpa..self.config.gpa + bytes);
        ctx.layout.announce(self.config.gpa, bytes, RegionKind::ReleasedBacking);
        Ok(())
    }

    fn memory_fault(&mut self, _ctx: &mut VcpuCtx<'_>, fault: &MemoryFault) -> Result<Handled> {
        if !self.contains(fault.gpa) {
            return Ok(Handled::No);
        }
        self.memory_fault_exits += 1;
        self.last_fault = Some(*fault);
        self.repair()?;
        Ok(Handled::Yes)
    }

    fn efault(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        // No address in the exit: the instruction's operands say whether it is this region's.
        let Ok(insn) = crate::guest_insn::at_rip(ctx.vcpu, ctx.mem) else { return Ok(Handled::No) };
        let mine = insn.memory.iter().any(|operand| {
            [Some(operand.linear), operand.last_byte()]
                .into_iter()
                .flatten()
                .filter_map(|linear| crate::guest_insn::translate(ctx.vcpu, linear))
                .any(|gpa| self.contains(gpa))
        });
        if !mine {
            return Ok(Handled::No);
        }
        self.efaults += 1;
        self.repair()?;
        Ok(Handled::Yes)
    }

    fn mmio_read(&mut self, _ctx: &mut VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Result<Handled> {
        if !self.contains(addr) {
            return Ok(Handled::No);
        }
        self.mmio_accesses += 1;
        self.repair()?;
        self.complete(addr, Some(data), None);
        Ok(Handled::Yes)
    }

    fn mmio_write(&mut self, _ctx: &mut VcpuCtx<'_>, addr: u64, data: &[u8]) -> Result<Handled> {
        if !self.contains(addr) {
            return Ok(Handled::No);
        }
        self.mmio_accesses += 1;
        self.repair()?;
        self.complete(addr, None, Some(data));
        Ok(Handled::Yes)
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(NAME, "memory_fault_exits", self.memory_fault_exits);
        report.counter(NAME, "decoded_efaults", self.efaults);
        report.counter(NAME, "mmio_accesses", self.mmio_accesses);
        report.counter(NAME, "repaired", u64::from(self.fresh.is_some()));
        if let Some(fault) = self.last_fault {
            report.line(format!("released: last KVM_EXIT_MEMORY_FAULT: {fault}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a new mapping can be placed at `addr` (`MAP_FIXED_NOREPLACE` fails on a taken
    /// range); unmaps it again if so.
    fn free_at(addr: *mut libc::c_void, bytes: usize) -> bool {
        // SAFETY: `MAP_FIXED_NOREPLACE` never replaces an existing mapping.
        let probe = unsafe {
            libc::mmap(
                addr,
                bytes,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if probe == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: unmaps the probe just made, which nothing refers to.
        unsafe { libc::munmap(probe, bytes) };
        true
    }

    /// The released range stays taken: nothing mapped later can land where the slot's
    /// `userspace_addr` points (a plain `munmap` leaves it free, and the probe would succeed).
    #[test]
    fn released_memory_keeps_its_addresses_reserved() {
        let bytes = 2 << 20;
        // SAFETY: a fresh anonymous mapping nothing else refers to.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        release_keeping_addresses(map, bytes as u64).expect("reserved");
        assert!(!free_at(map, bytes), "the released range was free for another mapping");
        // SAFETY: the test's own reservation, unmapped to leave the process as it was.
        unsafe { libc::munmap(map, bytes) };
        assert!(free_at(map, bytes), "the probe can tell a free range");
    }
}
