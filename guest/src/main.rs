//! The kernel's entry: wires boot information, the hardware layer, the scheduler and the
//! self-tests together. Built only for `x86_64-unknown-none`; on the host this binary just
//! says so.

#![cfg_attr(kernel, no_std, no_main)]

#[cfg(kernel)]
mod kernel {
    use pvagent_guest::arch::{self, cpu::Hypervisor, layout};
    use pvagent_guest::boot::cmdline::Cmdline;
    use pvagent_guest::boot::info::{self, BootInfo};
    use pvagent_guest::{console, kprintln, selftest, task};

    /// Called by the PVH entry (`boot::entry`) in long mode, on the boot stack, with
    /// interrupts disabled and the boot page tables active.
    #[unsafe(no_mangle)]
    extern "sysv64" fn kernel_main(start_info_paddr: u32) -> ! {
        console::init();
        kprintln!("pvagent guest {} booting", pvagent_guest::VERSION);
        let boot = match info::init(u64::from(start_info_paddr)) {
            Ok(boot) => boot,
            Err(err) => arch::fault::fatal(format_args!("unusable boot information: {err}")),
        };
        for warning in &boot.warnings {
            kprintln!("boot: warning: {warning}");
        }
        if boot.ram_ignored != 0 {
            kprintln!(
                "boot: warning: {} KiB of RAM beyond the first {} map entries is not used",
                boot.ram_ignored >> 10,
                info::MEMMAP_MAX
            );
        }
        let cmdline = Cmdline::new(boot.cmdline.as_str());
        let kstack = match cmdline.get("kstack").map(layout::parse_task_stack_kib) {
            None => task::stack::DEFAULT_KERNEL_STACK_SIZE,
            Some(Ok(kib)) => kib << 10,
            Some(Err(why)) => {
                let default = task::stack::DEFAULT_KERNEL_STACK_SIZE >> 10;
                kprintln!("boot: warning: kstack= {why}; using {default} KiB");
                default << 10
            }
        };
        // SAFETY: first thing after the console, on the boot vCPU, interrupts still disabled
        // since the PVH entry, boot tables active.
        let platform = unsafe { arch::init(boot, task::sched::MAX_TASKS, kstack) };
        report_platform(platform, boot);

        task::init_cpu();
        pvagent_guest::pv::init(&cmdline);
        for key in cmdline.unknown_keys(pvagent_guest::KNOWN_CMDLINE_KEYS) {
            kprintln!("boot: warning: unknown command line key {key:?}");
        }
        let runner = if cmdline.get("bench").is_some() { run_benchmarks } else { run_selftests };
        match task::spawn_kernel("selftest", runner, 0) {
            Ok(id) => task::set_critical(id),
            Err(err) => arch::fault::fatal(format_args!("cannot start the self-test task: {err:?}")),
        }
        task::idle_loop()
    }

    fn run_benchmarks(_: u64) -> u64 {
        pvagent_guest::bench::run(Cmdline::new(info::get().cmdline.as_str()))
    }

    fn run_selftests(_: u64) -> u64 {
        selftest::run(Cmdline::new(info::get().cmdline.as_str()))
    }

    fn report_platform(p: &arch::Platform, boot: &BootInfo) {
        let ram: u64 = boot.memmap.iter().filter(|r| r.kind == info::MemKind::Ram).map(|r| r.end - r.start).sum();
        kprintln!("boot: host: {}", p.hypervisor.name());
        if let Hypervisor::HostStub { abi_version, features, kvm_base } = p.hypervisor {
            match kvm_base {
                Some(base) => {
                    kprintln!("boot: host stub ABI {abi_version}, features {:#x}, KVM leaves at {base:#x}", features.0)
                }
                None => kprintln!("boot: host stub ABI {abi_version}, features {:#x}, no KVM leaves", features.0),
            }
        }
        kprintln!(
            "boot: cpu: {}, apic {:?} id {}, tsc {} kHz ({:?})",
            core::str::from_utf8(&p.cpu.vendor).unwrap_or("?"),
            p.apic_mode,
            p.boot_apic_id,
            p.tsc_khz,
            p.tsc_source
        );
        // One line, kept short: every byte printed is a port exit, and this is every boot.
        let (m, stacks) = (&p.memory, &p.memory.stacks.demand);
        kprintln!(
            "boot: ram {} MiB in {} ranges, {} MiB mapped ({} pages), {} MiB unused; kernel {} MiB, task stacks {} KiB x {} x {} vCPUs; acpi {}",
            ram >> 20,
            boot.memmap.len(),
            m.ram_mapped >> 20,
            if p.cpu.huge_pages { "1 GiB" } else { "2 MiB" },
            m.ram.saturating_sub(m.ram_used) >> 20,
            m.ram_used.div_ceil(1 << 20),
            stacks.task_size >> 10,
            stacks.tasks_per_cpu,
            stacks.cpus,
            p.madt.map_or(0, |m| m.cpus)
        );
        kprintln!("boot: command line: {:?}", boot.cmdline.as_str());
    }
}

#[cfg(not(kernel))]
fn main() {
    eprintln!("pvagent-guest is a kernel for x86_64-unknown-none; boot it with `cargo xtask run`");
    std::process::exit(2);
}
