//! Booting the guest ELF under QEMU (PVH entry through `-kernel`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pvagent_abi::exit;

use crate::proc::{self, Outcome};
use crate::setup::{QEMU, ensure_qemu};
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

/// The command line for one run; `cmdline` goes to the guest.
pub fn command(elf: &Path, accel: Accel, cmdline: &str) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-machine", "pc", "-accel", accel.name(), "-cpu", "max", "-m", "128M", "-smp", "1"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
        .args(["-device", &format!("isa-debug-exit,iobase={:#x},iosize=0x04", pvagent_abi::port::DEBUG_EXIT)])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline]);
    cmd
}

/// Boots `elf` and waits for it to end (or `timeout`).
pub fn run(elf: &Path, accel: Accel, cmdline: &str, timeout: Duration, echo: bool) -> Result<QemuRun> {
    run_vcpus(elf, accel, 1, cmdline, timeout, echo)
}

/// The most vCPUs `--smp` takes: the guest's `MAX_CPUS`.
pub const MAX_VCPUS: u32 = 8;

/// As [`run`], with `vcpus` vCPUs (`-smp`; the guest starts the others with INIT-SIPI-SIPI).
pub fn run_vcpus(
    elf: &Path,
    accel: Accel,
    vcpus: u32,
    cmdline: &str,
    timeout: Duration,
    echo: bool,
) -> Result<QemuRun> {
    ensure_qemu()?;
    if accel == Accel::Kvm {
        crate::setup::check_kvm()?;
    }
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(err!("--smp {vcpus}: the guest runs 1 to {MAX_VCPUS} vCPUs"));
    }
    let mut cmd = command(elf, accel, cmdline);
    // The later `-smp` wins over the one `command` gives.
    cmd.args(["-smp", &vcpus.to_string()]);
    let outcome = proc::run(cmd, timeout, echo)?;
    let guest_code = outcome.status.code().and_then(guest_code_from_status);
    Ok(QemuRun { guest_code, outcome })
}

/// Time a full self-test run under QEMU may take before it is killed.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// `cargo xtask qemu`: builds the guest and runs its self-tests (`tests`, or every default
/// one) under QEMU with `accel`, `guest_words` added to its command line; a test failure if
/// the guest reports one.
pub fn run_suite(
    profile: Profile,
    accel: Accel,
    vcpus: u32,
    tests: Option<&str>,
    guest_words: &[String],
) -> Result<()> {
    let elf = guest::build_guest(profile)?;
    let mut words = vec![format!("expect-host={}", accel.name())];
    words.extend(tests.map(|t| format!("tests={t}")));
    words.extend(guest_words.iter().cloned());
    let run = run_vcpus(&elf, accel, vcpus, &words.join(" "), SUITE_TIMEOUT, true)?;
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
    fn qemu_statuses_map_back_to_guest_codes() {
        assert_eq!(guest_code_from_status(exit::qemu_status(exit::SUCCESS)), Some(exit::SUCCESS));
        assert_eq!(guest_code_from_status(exit::qemu_status(exit::FAILURE)), Some(exit::FAILURE));
        // QEMU's own statuses (0 after a triple fault with -no-reboot, 1 on a QEMU error) never
        // read as success.
        assert_eq!(guest_code_from_status(0), None);
        assert_ne!(guest_code_from_status(1), Some(exit::SUCCESS));
    }
}
