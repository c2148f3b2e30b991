//! Bringing up the boot vCPU, and what the kernel found out about the machine on the way.

use super::cpus::CpuMap;
use super::layout::{self, Access, Placement, Region, StackDemand};
use super::{acpi, apic, cpu, fault, gdt, idt, paging, percpu, stacks, time, trap};
use crate::boot::info::{BootInfo, MEMMAP_MAX, MemKind};

/// What the kernel found out about the machine while starting.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    pub cpu: cpu::CpuInfo,
    pub hypervisor: cpu::Hypervisor,
    pub apic_mode: apic::Mode,
    pub boot_apic_id: u32,
    pub tsc_khz: u64,
    pub tsc_source: time::TscSource,
    /// Processors the MADT lists; `None` when the host gives no ACPI tables or they cannot be
    /// read.
    pub madt: Option<acpi::MadtSummary>,
    /// The vCPUs the kernel uses: the boot vCPU, then the MADT's others (APIC IDs to dense
    /// indices; the boot vCPU alone without a MADT).
    pub cpus: CpuMap,
    /// Where the kernel put its page tables and stacks, and how much RAM it maps.
    pub memory: Placement,
}

impl Platform {
    /// The first address the identity map cannot reach (see `layout::identity_map_reach`):
    /// a range the host names must end at or below it.
    pub fn reach(&self) -> u64 {
        layout::identity_map_reach(self.cpu.phys_addr_bits)
    }
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

/// The machine description (after [`init`]).
pub fn platform() -> &'static Platform {
    PLATFORM.get().expect("arch::platform() before arch::init()")
}

/// The stacks each task slot needs, as the task layer says.
#[derive(Clone, Copy, Debug)]
pub struct TaskStacks {
    /// Task slots per vCPU.
    pub slots: usize,
    /// Bytes of each slot's kernel stack, and of its CPL 3 stack.
    pub kernel_size: u64,
    pub user_size: u64,
}

/// The first thing the kernel does: the boot vCPU's segments and TSS, its per-vCPU area and the
/// IDT, and the fallback for traps nobody handles. From here on a fault is reported (not a triple
/// fault) and a probe (`fault::probe_*`) can catch one. Costs a few hundred instructions: the
/// IDT is data in the image (`idt`).
///
/// # Safety
///
/// Call once, first thing, on the boot vCPU, with interrupts disabled.
pub unsafe fn init_traps() {
    // SAFETY: boot vCPU, once, interrupts off (the caller's contract). GS already points at
    // this vCPU's area (the entry set it); `percpu::init` fills the area in.
    unsafe {
        gdt::init(0);
        percpu::init(0);
    }
    idt::load();
    fault::init();
}

/// Tells a host stub of this guest's ABI major which version the guest speaks
/// (`pvagent_abi::version`), before any other of its interfaces is used: `Ok(true)` when it was
/// told, `Ok(false)` when `hypervisor` is not such a host stub (one of another major was
/// recognised as such by `cpu::identify` and is told nothing), the #GP when the host refused.
/// Call after [`init_traps`], once.
pub fn announce_abi_version(hypervisor: cpu::Hypervisor) -> Result<bool, fault::Fault> {
    use pvagent_abi::{ABI_VERSION, version::MSR_GUEST_VERSION};
    if !hypervisor.is_host_stub() {
        return Ok(false);
    }
    fault::probe_write_msr(MSR_GUEST_VERSION, u64::from(ABI_VERSION.to_raw())).map(|()| true)
}

/// Brings up the boot vCPU (whose CPU `cpu` describes): memory layout, tables, paging, APIC,
/// time. Interrupts stay disabled. Stacks are laid out for `tasks` on each of
/// [`percpu::MAX_CPUS`] vCPUs; a layout that does not fit in RAM ends the run with the sizes.
///
/// # Safety
///
/// Call once, after [`init_traps`], on the boot vCPU with interrupts disabled and the boot page
/// tables active.
pub unsafe fn init(boot: &BootInfo, cpu: cpu::CpuInfo, tasks: TaskStacks) -> &'static Platform {
    let demand = StackDemand {
        cpus: percpu::MAX_CPUS,
        ist_per_cpu: gdt::IST_COUNT,
        ist_size: gdt::IST_SIZE,
        tasks_per_cpu: tasks.slots,
        task_size: tasks.kernel_size,
        user_size: tasks.user_size,
    };
    // RAM only, sorted (the memory map's are): ACPI data and firmware tables in reserved
    // ranges are mapped where the ACPI parser reads them (`acpi`), device holes never blindly.
    let mut ram: heapless::Vec<(u64, u64), MEMMAP_MAX> = heapless::Vec::new();
    for entry in boot.memmap.ranges.iter().filter(|e| e.kind == MemKind::Ram) {
        let _ = ram.push((entry.start, entry.end));
    }
    let devices = [Region { start: apic::XAPIC_BASE, end: apic::XAPIC_BASE + layout::PAGE, access: Access::Mmio }];
    // Filled in place: a list of regions is 2.3 KiB.
    let mut mapped = layout::Regions::new();
    let placement = layout::plan(&mut mapped, &paging::image_layout(), &ram, &devices, demand, cpu.huge_pages)
        .unwrap_or_else(|e| fault::fatal(format_args!("memory: {e} (lower kstack= or give the guest more RAM)")));
    stacks::init(placement.stacks);

    // SAFETY: boot vCPU, after `init_traps`, interrupts off (the caller's contract). The IST
    // stacks are mapped below before the kernel's page tables are active; until then they are in
    // RAM the boot tables map.
    unsafe { gdt::set_ist_stacks(0, stacks::ist_tops(0)) };
    // SAFETY: boot vCPU, once, interrupts off, boot tables active (the caller's contract).
    unsafe { paging::init(&mapped, placement.tables, cpu.huge_pages) };
    // Mapped before the switch, so that an NMI, #DF or #MC always finds its stack.
    stacks::start_cpu(0);
    // SAFETY: after `init`, interrupts off, this vCPU's IST stacks mapped.
    unsafe { paging::activate() };

    apic::disable_legacy_pic();
    let boot_apic_id = apic::init(cpu.x2apic);
    percpu::set_apic_id(boot_apic_id);
    let apic_khz = cpu.apic_khz.unwrap_or(time::DEFAULT_APIC_KHZ);
    let (tsc_khz, tsc_source) = time::init(cpu.tsc_khz, apic_khz);

    let reach = layout::identity_map_reach(cpu.phys_addr_bits);
    let madt = boot.rsdp.and_then(|rsdp| acpi::read_madt(rsdp, reach).ok());
    let cpus = match &madt {
        Some(madt) => {
            let mut map = CpuMap::new(boot_apic_id, madt.ids().iter().copied());
            // IDs the summary had no room for are beyond MAX_CPUS too.
            map.beyond_max += (madt.cpus as usize).saturating_sub(madt.ids().len());
            map
        }
        None => CpuMap::boot_only(boot_apic_id),
    };

    trap::register(apic::SPURIOUS_VECTOR, |_| {});
    time::init_tick(apic_khz);

    PLATFORM.call_once(|| Platform {
        cpu,
        hypervisor: cpu.hypervisor,
        apic_mode: apic::mode(),
        boot_apic_id,
        tsc_khz,
        tsc_source,
        madt,
        cpus,
        memory: placement,
    })
}
