//! A region whose host memory is gone: the trigger for a real memory-fault exit (seed 004). The
//! region is a guest_memfd memslot whose mapping and file the host released right after creating
//! it, so every guest access to it is one KVM cannot back. On this machine's PVM `/dev/kvm` a
//! CPL 3 access then ends KVM_RUN with `KVM_EXIT_MEMORY_FAULT` (gpa, size 4 KiB, flags 0) and a
//! CPL 0 access with an MMIO exit (CPL 0 goes through `userspace_addr`, which no longer maps);
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
use pvagent_abi::layout::{RegionKind, fill_value};
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RESERVED};
use vm_memory::mmap::MmapRegionBuilder;
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
    fresh: Option<MmapRegion>,
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
        let fresh = MmapRegionBuilder::new(bytes as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::MapMemory { what: "a released region", bytes, source: std::io::Error::other(e) })?;
        for offset in (0..bytes).step_by(8) {
            let word = fill_value(self.config.gpa + offset);
            let slice = fresh.get_slice(offset as usize, 8).expect("inside the mapping");
            slice.copy_from(&word.to_le_bytes());
        }
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
            // SAFETY: the mapping is released right below on purpose: KVM then cannot reach the
            // memory behind the slot, which is what this region is for; KVM checks every access
            // and fails it (the fault this producer handles), it never touches freed memory.
            let set =
                unsafe { ctx.vm.set_user_memory_region2(region) }.map_err(|e| Error::SetMemoryRegion2(self.slot, e));
            // SAFETY: unmaps the mapping made above; nothing else refers to it.
            unsafe { libc::munmap(map, bytes as usize) };
            set
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
