//! The kernel's entry: wires boot information, the hardware layer, the scheduler and the
//! self-tests together. Built only for `x86_64-unknown-none`; on the host this binary just
//! says so.

#![cfg_attr(kernel, no_std, no_main)]

#[cfg(kernel)]
mod kernel {
    use pvagent_guest::arch::{self, cpu::Hypervisor};
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
        // SAFETY: first thing after the console, on the boot vCPU, interrupts still disabled
        // since the PVH entry, boot tables active.
        let platform = unsafe { arch::init(boot) };
        report_platform(platform, boot);

        task::init_cpu();
        let cmdline = Cmdline::new(boot.cmdline.as_str());
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
        kprintln!(
            "boot: ram {} MiB in {} ranges, acpi {}",
            ram >> 20,
            boot.memmap.len(),
            match p.madt {
                Some(m) => m.cpus,
                None => 0,
            }
        );
        kprintln!("boot: command line: {:?}", boot.cmdline.as_str());
    }
}

#[cfg(not(kernel))]
fn main() {
    eprintln!("pvagent-guest is a kernel for x86_64-unknown-none; boot it with `cargo xtask run`");
    std::process::exit(2);
}
