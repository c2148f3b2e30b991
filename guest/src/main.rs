//! The product kernel: boots (`pvagent_guest::start`) and runs the self-tests. Built only for
//! `x86_64-unknown-none`; on the host this binary just says so. The benchmarks are another
//! binary (`pvagent-bench`, `src/bench/`), so none of their code is in this one.

#![cfg_attr(kernel, no_std, no_main)]

#[cfg(kernel)]
mod kernel {
    use pvagent_guest::boot::info;
    use pvagent_guest::selftest;
    use pvagent_guest::start::{self, FirstTask};

    /// Called by the PVH entry (`boot::entry`) in long mode, on the boot stack, with
    /// interrupts disabled and the boot page tables active.
    #[unsafe(no_mangle)]
    extern "sysv64" fn kernel_main(start_info_paddr: u32) -> ! {
        let first = FirstTask { name: "selftest", run: run_selftests, cmdline_keys: selftest::CMDLINE_KEYS };
        // SAFETY: called once, by the PVH entry, in the state `boot` requires (above).
        unsafe { start::boot(start_info_paddr, first) }
    }

    fn run_selftests(_: u64) -> u64 {
        selftest::run(&info::get().cmdline)
    }
}

#[cfg(not(kernel))]
fn main() {
    eprintln!("pvagent-guest is a kernel for x86_64-unknown-none; boot it with `cargo xtask run`");
    std::process::exit(2);
}
