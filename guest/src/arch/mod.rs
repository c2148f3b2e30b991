//! The hardware layer: CPU tables, exception entry, paging, the local APIC, time, and the
//! host's exit and hypercall ports. It knows nothing about the paravirtual protocols; those
//! register their vectors here at init.

pub mod acpi;
pub mod apic;
pub mod cpu;
pub mod exit;
pub mod fault;
pub mod gdt;
pub mod hypercall;
pub mod idle;
pub mod idt;
pub mod paging;
pub mod percpu;
pub mod serial;
pub mod time;
pub mod trap;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::boot::info::{BootInfo, MemKind};
use crate::cell::{FnPtr, FnSlot};
use paging::{Access, Region};

/// Vector of the local APIC timer tick.
pub const TIMER_VECTOR: u8 = 0x30;

/// What the kernel found out about the machine while starting.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    pub cpu: cpu::CpuInfo,
    pub hypervisor: cpu::Hypervisor,
    pub apic_mode: apic::Mode,
    pub boot_apic_id: u32,
    pub tsc_khz: u64,
    pub tsc_source: time::TscSource,
    /// Processors the MADT lists; `None` without ACPI (the host stub).
    pub madt: Option<acpi::MadtSummary>,
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

/// The machine description (after [`init`]).
pub fn platform() -> &'static Platform {
    PLATFORM.get().expect("arch::platform() before arch::init()")
}

/// Brings up the boot vCPU: tables, paging, APIC, time. Interrupts stay disabled.
///
/// # Safety
///
/// Call once, first thing after the console, on the boot vCPU with interrupts disabled and the
/// boot page tables active.
pub unsafe fn init(boot: &BootInfo) -> &'static Platform {
    let cpu = cpu::identify();
    // SAFETY: boot vCPU, once, interrupts off (the caller's contract).
    unsafe {
        gdt::init(0);
        percpu::init(0);
        idt::init();
    }
    idt::load();
    fault::init();

    let mut regions: heapless::Vec<Region, 40> = heapless::Vec::new();
    for entry in boot.memmap.iter() {
        let access = match entry.kind {
            MemKind::Ram | MemKind::Acpi => Access::KernelData,
            // Reserved ranges hold firmware data and device holes: map only what ACPI or a
            // driver asks for (below), never blindly.
            MemKind::Reserved | MemKind::Other(_) => continue,
        };
        let _ = regions.push(Region { start: entry.start, end: entry.end, access });
    }
    let _ = regions.push(Region { start: apic::XAPIC_BASE, end: apic::XAPIC_BASE + 0x1000, access: Access::Mmio });
    // SAFETY: boot vCPU, once, interrupts off, boot tables active (the caller's contract).
    unsafe { paging::init(&regions) };

    apic::disable_legacy_pic();
    let boot_apic_id = apic::init(cpu.x2apic);
    percpu::set_apic_id(boot_apic_id);
    let apic_khz = cpu.apic_khz.unwrap_or(time::DEFAULT_APIC_KHZ);
    let (tsc_khz, tsc_source) = time::init(cpu.tsc_khz, apic_khz);

    let madt = boot.rsdp.and_then(|rsdp| acpi::read_madt(rsdp).ok());

    trap::register(apic::SPURIOUS_VECTOR, |_| {});
    trap::register(TIMER_VECTOR, timer_tick);
    TIMER_PERIOD.store((u64::from(apic_khz) * 1000 / time::HZ) as u32, Ordering::Relaxed);

    PLATFORM.call_once(|| Platform {
        cpu,
        hypervisor: cpu.hypervisor,
        apic_mode: apic::mode(),
        boot_apic_id,
        tsc_khz,
        tsc_source,
        madt,
    })
}

static TIMER_PERIOD: AtomicU32 = AtomicU32::new(0);
static TICK_HOOK: FnSlot<TickHook> = FnSlot::empty();
static TICKS: percpu::CpuLocal<AtomicU64> = percpu::CpuLocal::new([const { AtomicU64::new(0) }; percpu::MAX_CPUS]);

/// Called on every tick, after EOI, with the tick count (the scheduler wakes sleepers).
pub type TickHook = fn(u64);
// SAFETY: a fn pointer type.
unsafe impl FnPtr for TickHook {}

/// Starts this vCPU's periodic tick; `hook` runs on each one.
pub fn start_tick(hook: TickHook) {
    TICK_HOOK.set(hook);
    apic::start_periodic_timer(TIMER_VECTOR, TIMER_PERIOD.load(Ordering::Relaxed));
}

/// Ticks seen by this vCPU.
pub fn ticks() -> u64 {
    TICKS.get().load(Ordering::Relaxed)
}

fn timer_tick(_frame: &mut trap::TrapFrame) {
    let now = TICKS.get().fetch_add(1, Ordering::Relaxed) + 1;
    apic::eoi();
    if let Some(hook) = TICK_HOOK.get() {
        hook(now);
    }
}
