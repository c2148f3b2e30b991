//! Booting the guest ELF under QEMU (PVH entry through `-kernel`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pvagent_abi::exit;

use crate::proc::{self, Outcome};
use crate::setup::{ensure_qemu, qemu_command};
use crate::{Profile, Result, err, failed, guest};

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// As QEMU spells it, and as the guest's `expect-host=` calls it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// Parses `tcg` or `kvm`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            other => Err(err!("unknown accelerator {other:?}: use tcg or kvm")),
        }
    }
}

/// How the guest's run under QEMU ended.
#[derive(Debug)]
pub struct QemuRun {
    /// The code the guest wrote to the debug-exit port, if it did.
    pub guest_code: Option<u32>,
    pub outcome: Outcome,
}

impl QemuRun {
    /// Whether the guest reported success.
    pub fn passed(&self) -> bool {
        self.guest_code == Some(exit::SUCCESS)
    }
}

/// Maps QEMU's exit status back to the guest's code (`(code << 1) | 1`).
pub fn guest_code_from_status(status: i32) -> Option<u32> {
    (status & 1 == 1).then_some((status >> 1) as u32).filter(|code| exit::qemu_status(*code) == status)
}

/// Most CPUs `cargo xtask qemu --smp` gives the guest (as many as the host stub's `--vcpus`).
pub const MAX_SMP: u32 = 8;

/// The command line for one run on one CPU; `cmdline` goes to the guest.
pub fn command(elf: &Path, accel: Accel, cmdline: &str) -> Command {
    command_with_cpus(elf, accel, cmdline, 1)
}

/// The command line for one run on `cpus` CPUs (`-smp`; QEMU's firmware lists them in the
/// MADT, and the guest starts the others itself).
pub fn command_with_cpus(elf: &Path, accel: Accel, cmdline: &str, cpus: u32) -> Command {
    let mut cmd = qemu_command();
    // `-arch-capabilities`: the guest never reads IA32_ARCH_CAPABILITIES (split-lock detection
    // is enumerated through CPUID.7.EDX[30] and IA32_CORE_CAPABILITIES), and QEMU 7.2 under
    // the PVM KVM on an AMD host aborts at start when KVM_SET_MSRS refuses the value it
    // chose for that MSR ("failed to set MSR 0x10a to 0x69").
    cmd.args(["-machine", "pc", "-accel", accel.name(), "-cpu", "max,-arch-capabilities", "-m", "128M"])
        .args(["-smp", &cpus.to_string()])
        // No network card: the guest has no driver for one, and its option ROM is firmware a
        // QEMU would have to find (xtask's own copy may lack it).
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nic", "none"])
        .args(["-device", &format!("isa-debug-exit,iobase={:#x},iosize=0x04", pvagent_abi::port::DEBUG_EXIT)])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline]);
    cmd
}

/// Boots `elf` on one CPU and waits for it to end (or `timeout`).
pub fn run(elf: &Path, accel: Accel, cmdline: &str, timeout: Duration, echo: bool) -> Result<QemuRun> {
    run_with_cpus(elf, accel, cmdline, 1, timeout, echo)
}

/// Boots `elf` on `cpus` CPUs and waits for it to end (or `timeout`).
pub fn run_with_cpus(
    elf: &Path,
    accel: Accel,
    cmdline: &str,
    cpus: u32,
    timeout: Duration,
    echo: bool,
) -> Result<QemuRun> {
    ensure_qemu()?;
    if accel == Accel::Kvm {
        crate::setup::check_kvm()?;
    }
    let outcome = proc::run(command_with_cpus(elf, accel, cmdline, cpus), timeout, echo)?;
    let guest_code = outcome.status.code().and_then(guest_code_from_status);
    Ok(QemuRun { guest_code, outcome })
}

/// Time a full self-test run under QEMU may take before it is killed.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// `cargo xtask qemu`: builds the guest and runs its self-tests (`tests`, or every default
/// one) under QEMU with `accel` on `cpus` CPUs, `guest_words` added to its command line; a
/// test failure if the guest reports one.
pub fn run_suite(profile: Profile, accel: Accel, cpus: u32, tests: Option<&str>, guest_words: &[String]) -> Result<()> {
    let elf = guest::build_guest(profile)?;
    let mut words = vec![format!("expect-host={}", accel.name())];
    words.extend(tests.map(|t| format!("tests={t}")));
    words.extend(guest_words.iter().cloned());
    let run = run_with_cpus(&elf, accel, &words.join(" "), cpus, SUITE_TIMEOUT, true)?;
    match run.guest_code {
        Some(code) if run.passed() => {
            eprintln!(
                "xtask: guest exited with code {code:#x} (success) after {:.1} s",
                run.outcome.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Some(exit::NO_TEST_SELECTED) => Err(err!(
            "tests={} selects no self-test (`cargo xtask run --list` lists them)",
            last_tests_word(guest_words).or(tests).unwrap_or("")
        )),
        Some(code) => Err(failed!("the guest's self-tests failed under QEMU {} (guest code {code:#x})", accel.name())),
        None => Err(err!("QEMU ended without the guest's exit code ({})", run.outcome.status)),
    }
}

/// The patterns of the last `tests=` among guest command line words (the guest reads later
/// words over earlier ones).
pub fn last_tests_word(words: &[String]) -> Option<&str> {
    words.iter().flat_map(|w| w.split_ascii_whitespace()).filter_map(|w| w.strip_prefix("tests=")).next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_count_reaches_qemus_smp_option() {
        let args = |cpus| {
            let cmd = command_with_cpus(Path::new("g.elf"), Accel::Tcg, "", cpus);
            cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()
        };
        let smp_value = |args: Vec<String>| args.iter().position(|a| a == "-smp").map(|i| args[i + 1].clone());
        assert_eq!(smp_value(args(4)), Some("4".into()));
        let one = command(Path::new("g.elf"), Accel::Tcg, "");
        let one: Vec<String> = one.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(smp_value(one.clone()), Some("1".into()));
        let cpu = one.iter().position(|a| a == "-cpu").map(|i| one[i + 1].as_str());
        assert_eq!(cpu, Some("max,-arch-capabilities"), "QEMU 7.2 on PVM KVM aborts setting MSR 0x10a otherwise");
        assert!(one.windows(2).any(|w| w == ["-nic", "none"]), "{one:?}");
    }

    #[test]
    fn qemu_statuses_map_back_to_guest_codes() {
        assert_eq!(guest_code_from_status(exit::qemu_status(exit::SUCCESS)), Some(exit::SUCCESS));
        assert_eq!(guest_code_from_status(exit::qemu_status(exit::FAILURE)), Some(exit::FAILURE));
        // QEMU's own statuses (0 after a triple fault with -no-reboot, 1 on a QEMU error) never
        // read as success.
        assert_eq!(guest_code_from_status(0), None);
        assert_ne!(guest_code_from_status(1), Some(exit::SUCCESS));
    }
}
