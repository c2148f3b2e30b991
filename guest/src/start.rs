//! The boot sequence every kernel binary shares (the product kernel in `main.rs`, the benchmark
//! kernel in `bench/`): the trap table, the host's identity and the console, boot information,
//! the hardware layer, the scheduler and the protocols, then the binary's first task (whose
//! start is the boot milestone the host stub counts to) and the idle loop.

use pvagent_abi::cpuid::Features;
use pvagent_abi::port::{self, Milestone};

use crate::arch::{self, cpu::Hypervisor, layout};
use crate::boot::info::{self, BootInfo};
use crate::{console, kprintln, task};

/// Command line keys the boot sequence itself reads (the protocols' settings). A binary's own
/// keys come with its [`FirstTask`]; any other key is reported at boot.
pub const CMDLINE_KEYS: &[&str] =
    &["kstack", "pnp", "pnp-ring", "sld", arch::smp::STUCK_AP_KEY, crate::pv::deadline::CMDLINE_KEY];

/// What a kernel binary runs once the kernel is up.
#[derive(Clone, Copy, Debug)]
pub struct FirstTask {
    /// The task's name.
    pub name: &'static str,
    /// Its body: a critical kernel task (if it dies, the run ends with a report). It ends the
    /// run itself, through the debug-exit port.
    pub run: fn(u64) -> u64,
    /// The command line keys it reads, besides [`CMDLINE_KEYS`].
    pub cmdline_keys: &'static [&'static str],
}

/// Boots the kernel and starts `first`; never returns (the boot context becomes the idle task).
///
/// # Safety
///
/// Call once, from a binary's `kernel_main` (which the PVH entry, `boot::entry`, calls in long
/// mode on the boot stack), with interrupts disabled and the boot page tables active.
pub unsafe fn boot(start_info_paddr: u32, first: FirstTask) -> ! {
    // SAFETY: first thing, on the boot vCPU, interrupts disabled (this function's contract).
    unsafe { arch::init_traps() };
    // The CPU and the host: how far its physical addresses reach bounds every range the host
    // names, and a host stub of this guest's major is told the guest's version before anything
    // else of it is used (its console among them).
    let cpu = arch::cpu::identify();
    let announced = arch::announce_abi_version(cpu.hypervisor);
    console::init(announced == Ok(true) && cpu.hypervisor.host_features().has(Features::CONSOLE));
    kprintln!("pvagent guest {} booting", crate::VERSION);
    if let Err(fault) = announced {
        kprintln!(
            "boot: warning: the host stub refused this guest's ABI version {}: {fault}",
            pvagent_abi::ABI_VERSION
        );
    }
    let reach = layout::identity_map_reach(cpu.phys_addr_bits);
    let boot = match info::init(u64::from(start_info_paddr), reach) {
        Ok(boot) => boot,
        Err(err) => arch::fault::fatal(format_args!("unusable boot information: {err}")),
    };
    for warning in &boot.warnings {
        kprintln!("boot: warning: {warning}");
    }
    if boot.memmap.dropped.any() {
        kprintln!("boot: warning: {}", boot.memmap);
    }
    let cmdline = &boot.cmdline;
    let kstack = match cmdline.get("kstack").map(layout::parse_task_stack_kib) {
        None => task::stack::DEFAULT_KERNEL_STACK_SIZE,
        Some(Ok(kib)) => kib << 10,
        Some(Err(why)) => {
            let default = task::stack::DEFAULT_KERNEL_STACK_SIZE >> 10;
            kprintln!("boot: warning: kstack= {why}; using {default} KiB");
            default << 10
        }
    };
    let tasks = arch::TaskStacks {
        slots: task::table::MAX_TASKS,
        kernel_size: kstack,
        user_size: task::stack::USER_STACK_SIZE,
    };
    // SAFETY: after `init_traps` (and reading CPUID and the boot information), on the boot
    // vCPU, interrupts still disabled and the boot tables active (this function's contract).
    let platform = unsafe { arch::init(boot, cpu, tasks) };
    report_platform(platform, boot);
    if let arch::time::TscSource::Assumed(why) = platform.tsc_source {
        kprintln!(
            "boot: warning: TSC calibration against the APIC timer failed ({why:?}, {} attempts); assuming {} kHz, so measured times are off by the ratio",
            arch::calibration::ATTEMPTS,
            arch::time::DEFAULT_TSC_KHZ
        );
    }

    task::init_cpu();
    crate::pv::init(cmdline);
    for key in cmdline.unknown_keys(CMDLINE_KEYS).filter(|key| !first.cmdline_keys.contains(key)) {
        kprintln!("boot: warning: unknown command line key {key:?}");
    }
    // SAFETY: once, on the boot vCPU, after `arch::init`, interrupts still off; nothing else
    // uses the SIPI page.
    if let Err(failure) = unsafe { arch::smp::start_aps(boot, ap_entry) } {
        kprintln!("boot: warning: {failure}");
    }
    report_cpus(platform);
    FIRST.call_once(|| first);
    match task::spawn_kernel(first.name, run_first_task, 0) {
        Ok(id) => task::set_critical(id),
        Err(err) => arch::fault::fatal(format_args!("cannot start the {} task: {err:?}", first.name)),
    }
    task::idle_loop()
}

/// An AP's life once the hardware layer brought it up (`arch::smp`): its scheduler, with the
/// running context as its idle task and its tick, its own protocol areas, then online, then idle
/// until given work.
fn ap_entry(_cpu: usize) -> ! {
    task::init_cpu();
    crate::pv::init_cpu();
    arch::smp::report_online();
    task::idle_loop()
}

/// One line about the vCPUs when there is more than one (a one-vCPU boot prints nothing more:
/// each line is an exit and ~180 instructions), and a warning for any the kernel does not use.
fn report_cpus(p: &arch::Platform) {
    let map = &p.cpus;
    if map.count() > 1 {
        kprintln!(
            "boot: {} of {} vCPUs online, APIC IDs by index {:?}",
            arch::smp::online_count(),
            map.count(),
            map.ids()
        );
    }
    if map.beyond_max > 0 || map.duplicates > 0 {
        kprintln!(
            "boot: warning: the MADT lists {} usable processors beyond the {} this kernel runs, and {} repeated APIC IDs; not started",
            map.beyond_max,
            arch::MAX_CPUS,
            map.duplicates
        );
    }
}

/// The binary's first task, set once by [`boot`] before it spawns [`run_first_task`].
static FIRST: spin::Once<FirstTask> = spin::Once::new();

/// The first task: tells the host that boot is over (the [`Milestone::FirstTask`] milestone),
/// then runs the binary's task. On a host stub of this guest's ABI major (which it announced
/// to right after CPUID, `arch::announce_abi_version`) that is one `out`, one exit: the host
/// takes a snapshot of what KVM counted from the first guest instruction to here, and reads the
/// boot's string iterations from RSI (KVM counts a `rep` once per 1,024 of them). Other hosts
/// are told nothing.
fn run_first_task(arg: u64) -> u64 {
    if arch::platform().hypervisor.is_host_stub() {
        let iterations = arch::percpu::string_iterations();
        // SAFETY: the host stub's milestone port only records the value and reads RSI; it
        // touches no guest memory and no register.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port::MILESTONE, in("eax") Milestone::FirstTask as u32,
                in("rsi") iterations, options(nomem, nostack, preserves_flags));
        }
    }
    match FIRST.get() {
        Some(first) => (first.run)(arg),
        None => arch::fault::fatal(format_args!("the first task started before boot named it")),
    }
}

fn report_platform(p: &arch::Platform, boot: &BootInfo) {
    kprintln!("boot: host: {}", p.hypervisor.name());
    if let Hypervisor::HostStub { abi_version, features, kvm_base } = p.hypervisor {
        match kvm_base {
            Some(base) => {
                kprintln!("boot: host stub ABI {abi_version}, features {:#x}, KVM leaves at {base:#x}", features.0)
            }
            None => kprintln!("boot: host stub ABI {abi_version}, features {:#x}, no KVM leaves", features.0),
        }
    }
    if let Hypervisor::HostStubOtherMajor { abi_version, .. } = p.hypervisor {
        kprintln!(
            "boot: the host stub speaks ABI {abi_version}, this guest ABI {}: another major, so none of its paravirtual interfaces is used (an unknown host to this guest)",
            pvagent_abi::ABI_VERSION
        );
    }
    kprintln!(
        "boot: cpu: {}, apic {:?} id {}, tsc {} kHz ({:?})",
        core::str::from_utf8(&p.cpu.vendor).unwrap_or("?"),
        p.apic_mode,
        p.boot_apic_id,
        p.tsc_khz,
        p.tsc_source
    );
    // One line: it goes out in one exit through the host stub's console port (a byte an exit through
    // the UART elsewhere), and formatting it is most of what it costs every boot.
    let (m, stacks) = (&p.memory, p.memory.stacks.demand());
    kprintln!(
        "boot: ram {} MiB in {} ranges, {} MiB mapped ({} pages), {} MiB unused; kernel {} MiB, task stacks {} KiB x {} x {} vCPUs; acpi {}",
        m.ram >> 20,
        boot.memmap.ranges.len(),
        m.ram_mapped >> 20,
        if p.cpu.huge_pages { "1 GiB" } else { "2 MiB" },
        m.ram.saturating_sub(m.ram_used) >> 20,
        m.ram_used.div_ceil(1 << 20),
        stacks.task_size >> 10,
        stacks.tasks_per_cpu,
        stacks.cpus,
        p.madt.map_or(0, |m| m.cpus)
    );
    // Printable ASCII only (`boot::info`), so quoting it needs no escapes.
    kprintln!("boot: command line: \"{}\"", boot.cmdline.as_str());
}
