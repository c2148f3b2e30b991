//! What a fresh machine needs, installed by the project itself: the bare-metal Rust target and
//! QEMU. (rustup does not add a `rust-toolchain.toml` target when the toolchain is already
//! installed, so this does it.) QEMU comes from apt, which is never allowed to remove a
//! package; when apt refuses for that reason, xtask unpacks Debian's packages into a copy of its
//! own under `target/qemu/` instead ([`private_qemu`]). The decisions (which apt runs, how to
//! read its refusal, what to tell the user) are plain functions, tested on captured apt output.

pub mod private_qemu;

use std::process::Command;
use std::time::Duration;

use crate::proc::run_checked;
use crate::{Result, err};

/// The guest's target.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";
/// The QEMU binary the project uses.
pub const QEMU: &str = "qemu-system-x86_64";

/// Adds the guest target with rustup when it is missing.
pub fn ensure_guest_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::project_root())
        .output()
        .map_err(|e| err!("rustup is needed to add the {GUEST_TARGET} target: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == GUEST_TARGET) {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust target {GUEST_TARGET} (rustup target add)");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET]).current_dir(crate::project_root());
    run_checked(cmd, "rustup target add")
}

/// Whether `qemu` answers `--version`.
fn runs(mut qemu: Command) -> bool {
    qemu.arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether the machine's QEMU runs. Asked once per process once it does (every boot asks);
/// a "no" is asked again, since setup may install it meanwhile.
fn system_qemu_runs() -> bool {
    static RUNS: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if RUNS.get().is_some() {
        return true;
    }
    let now = runs(Command::new(QEMU));
    if now {
        let _ = RUNS.set(());
    }
    now
}

/// The QEMU to run: the machine's when it has one, else xtask's own copy when it is ready
/// ([`private_qemu`]), else the machine's name (which then fails with the OS's error).
pub fn qemu_command() -> Command {
    if !system_qemu_runs() {
        let root = private_qemu::root();
        if private_qemu::ready(&root) {
            return private_qemu::command(&root);
        }
    }
    Command::new(QEMU)
}

fn qemu_present() -> bool {
    system_qemu_runs() || private_qemu::ready(&private_qemu::root())
}

/// The apt-get runs that install QEMU, in order. `--no-remove`: when installing would remove an
/// installed package (a newer `qemu-utils` than the distribution's, say), apt stops before it
/// changes anything. The project never removes a user's package.
pub const APT_STEPS: [&[&str]; 2] =
    [&["update", "-q"], &["install", "-y", "-q", "--no-install-recommends", "--no-remove", "qemu-system-x86"]];

/// How long an apt-get run may take before xtask gives up on it (a hang, e.g. a lock held by
/// another apt, turns into a clear failure).
pub(crate) const APT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Installs QEMU from the distribution (`apt-get install qemu-system-x86`) when it is missing.
/// When apt would have to remove a package, apt changes nothing and xtask makes its own copy
/// instead ([`private_qemu`]); a one-line message when that fails too.
pub fn ensure_qemu() -> Result<()> {
    // One installer at a time: the end-to-end tests boot QEMU from several threads, and two
    // unpacking the same `target/qemu/` would clear each other's files.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if qemu_present() {
        return Ok(());
    }
    let apt = Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success());
    if !apt {
        return Err(err!("{QEMU} is missing and there is no apt-get to install it; install QEMU for x86-64"));
    }
    eprintln!("xtask: installing QEMU (apt-get install --no-remove qemu-system-x86)");
    let installed = run_apt_steps(!is_root(), |program, argv| {
        let mut cmd = Command::new(program);
        cmd.args(argv);
        let run = crate::proc::run(cmd, APT_TIMEOUT, true)?;
        Ok((run.status.success(), run.output))
    });
    match installed {
        Ok(()) if qemu_present() => Ok(()),
        Ok(()) => Err(err!("apt-get installed qemu-system-x86 but {QEMU} still does not run")),
        Err(AptRefusal::WouldRemove(refused)) => {
            eprintln!(
                "xtask: apt-get refused (it would remove a package); unpacking Debian's qemu-system-x86 into {} instead (nothing is installed)",
                private_qemu::DIR
            );
            private_qemu::make().map(drop).map_err(|e| {
                err!("xtask's own copy of QEMU in {} failed ({e}) after apt-get refused: {refused}", private_qemu::DIR)
            })
        }
        Err(AptRefusal::Other(message)) => Err(err!("{message}")),
    }
}

/// How [`run_apt_steps`] failed: the one-line message, and whether it was a refused removal
/// (which xtask's own copy of QEMU gets around).
#[derive(Debug)]
enum AptRefusal {
    WouldRemove(String),
    Other(String),
}

impl From<crate::Error> for AptRefusal {
    fn from(e: crate::Error) -> Self {
        AptRefusal::Other(e.to_string())
    }
}

/// Runs [`APT_STEPS`] with `run` (program, arguments -> success, output lines), stopping at the
/// first failure with the message [`apt_failure_message`] makes of its output.
fn run_apt_steps(
    sudo: bool,
    mut run: impl FnMut(&str, &[String]) -> Result<(bool, Vec<String>)>,
) -> std::result::Result<(), AptRefusal> {
    for args in APT_STEPS {
        let (program, argv) = apt_command_line(sudo, args);
        let (succeeded, output) = run(program, &argv)?;
        if !succeeded {
            let failure = read_apt_failure(&output);
            let message = apt_failure_message(args[0], &failure);
            return Err(match failure {
                AptFailure::WouldRemove(_) => AptRefusal::WouldRemove(message),
                AptFailure::Other(_) => AptRefusal::Other(message),
            });
        }
    }
    Ok(())
}

/// The program and arguments that run apt-get with `args`, through sudo when `sudo`. The
/// environment goes on the command line (`env`), because sudo does not pass the caller's on:
/// no questions (`DEBIAN_FRONTEND`), and untranslated messages (`LC_ALL=C`; gettext ignores
/// `LANGUAGE` in the C locale) so that a refusal can be read.
pub fn apt_command_line(sudo: bool, args: &[&str]) -> (&'static str, Vec<String>) {
    let mut argv: Vec<String> = Vec::new();
    if sudo {
        argv.push("env".into());
    }
    argv.extend(["LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "apt-get"].map(String::from));
    argv.extend(args.iter().map(|a| a.to_string()));
    (if sudo { "sudo" } else { "env" }, argv)
}

/// Why an apt-get run failed, as read from its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AptFailure {
    /// Installing would remove these installed packages (empty if apt's list was not found),
    /// so `--no-remove` stopped apt before it changed anything.
    WouldRemove(Vec<String>),
    /// Something else: apt's last error line (`E: ...`), if it printed one.
    Other(Option<String>),
}

/// apt's error when an operation needs a removal that `--no-remove` forbids
/// (`InstallPackages` in apt's `apt-private/private-install.cc`: "E: Packages need to be
/// removed but remove is disabled.").
const NO_REMOVE_ERROR: &str = "Packages need to be removed but remove is disabled";

/// Headers apt prints above the packages an operation would remove, before it checks
/// `--no-remove`: apt 2 (Debian 12) "The following packages will be REMOVED:", and
/// "REMOVING:", the form of newer apt's output.
const REMOVED_HEADERS: [&str; 2] = ["The following packages will be REMOVED:", "REMOVING:"];

/// Reads the output of a failed apt-get run (stdout and stderr, in order, in the C locale).
pub fn read_apt_failure(output: &[String]) -> AptFailure {
    if !output.iter().any(|l| l.contains(NO_REMOVE_ERROR)) {
        let last_error = output.iter().rev().find(|l| l.starts_with("E: ")).map(|l| l[3..].trim().to_string());
        return AptFailure::Other(last_error);
    }
    let mut packages = Vec::new();
    let mut in_list = false;
    for line in output {
        // The list's lines are indented; a purge marks a package with a trailing '*'.
        if in_list && line.starts_with(' ') {
            packages.extend(line.split_whitespace().map(|p| p.trim_end_matches('*').to_string()));
            continue;
        }
        // stderr's lines arrive through another pipe and may fall inside stdout's list.
        if in_list && (line.starts_with("E: ") || line.starts_with("W: ")) {
            continue;
        }
        in_list = REMOVED_HEADERS.contains(&line.trim());
    }
    AptFailure::WouldRemove(packages)
}

/// The one line xtask stops with when apt-get `step` failed.
pub fn apt_failure_message(step: &str, failure: &AptFailure) -> String {
    let by_hand =
        format!("install QEMU for x86-64 yourself so that `{QEMU}` runs (e.g. `sudo apt-get install qemu-system-x86`");
    match failure {
        AptFailure::WouldRemove(packages) if packages.is_empty() => format!(
            "installing QEMU would make apt-get remove installed packages (listed in its output above), so xtask stopped it and nothing was changed: {by_hand}, deciding what happens to those packages), then run xtask again"
        ),
        AptFailure::WouldRemove(packages) => {
            let packages = packages.join(", ");
            format!(
                "installing qemu-system-x86 would make apt-get remove the installed {packages}, so xtask stopped it and nothing was changed: {by_hand}, deciding what happens to {packages}), then run xtask again"
            )
        }
        AptFailure::Other(Some(error)) => format!("apt-get {step} failed ({error}): {by_hand}), then run xtask again"),
        AptFailure::Other(None) => {
            format!("apt-get {step} failed (see its output above): {by_hand}), then run xtask again")
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Checks that `/dev/kvm` can be opened for reading and writing.
pub fn check_kvm() -> Result<()> {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(err!("/dev/kvm does not exist: this machine cannot run the host stub (no KVM)"))
        }
        Err(e) => Err(err!("cannot open /dev/kvm ({e}): run as a user with access to it (root or the kvm group)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn every_install_forbids_removals() {
        for args in APT_STEPS.iter().filter(|a| a[0] == "install") {
            assert!(args.contains(&"--no-remove"), "{args:?}");
        }
        assert_eq!(APT_STEPS.last().map(|a| a[0]), Some("install"));
    }

    #[test]
    fn apt_runs_untranslated_and_unattended_with_or_without_sudo() {
        let install = APT_STEPS[1];
        let (program, argv) = apt_command_line(true, install);
        assert_eq!(program, "sudo");
        assert_eq!(argv[..4], ["env", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        assert_eq!(argv[4..], install.iter().map(|a| a.to_string()).collect::<Vec<_>>()[..]);
        let (program, argv) = apt_command_line(false, install);
        assert_eq!(program, "env");
        assert_eq!(argv[..3], ["LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
    }

    /// apt 2.6.1's output (Debian 12) for a conflicting install with `--no-remove`, captured with
    /// `LC_ALL=C apt-get -s -q --no-install-recommends --no-remove install chrony` (a
    /// simulation: chrony conflicts with the installed systemd-timesyncd); exit status 100.
    const APT2_CONFLICT: &str = "\
Reading package lists...
Building dependency tree...
Reading state information...
Suggested packages:
  dnsutils networkd-dispatcher
The following packages will be REMOVED:
  systemd-timesyncd
The following NEW packages will be installed:
  chrony
0 upgraded, 1 newly installed, 1 to remove and 138 not upgraded.
E: Packages need to be removed but remove is disabled.";

    #[test]
    fn a_refused_removal_names_the_packages_and_says_nothing_changed() {
        let failure = read_apt_failure(&lines(APT2_CONFLICT));
        assert_eq!(failure, AptFailure::WouldRemove(vec!["systemd-timesyncd".into()]));
        let message = apt_failure_message("install", &failure);
        assert!(message.contains("remove the installed systemd-timesyncd"), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        assert!(message.contains("sudo apt-get install qemu-system-x86"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }

    #[test]
    fn the_newer_list_header_is_read_too() {
        let output = lines(
            "REMOVING:\n  qemu-utils\n\nSummary:\n  Removing: 1\nE: Packages need to be removed but remove is disabled.",
        );
        assert_eq!(read_apt_failure(&output), AptFailure::WouldRemove(vec!["qemu-utils".into()]));
    }

    #[test]
    fn a_refused_install_stops_setup_with_the_one_line_message() {
        let mut runs = Vec::new();
        let result = run_apt_steps(true, |program, argv| {
            runs.push(format!("{program} {}", argv.join(" ")));
            let install = argv.iter().any(|a| a == "install");
            Ok(if install { (false, lines(APT2_CONFLICT)) } else { (true, Vec::new()) })
        });
        let Err(AptRefusal::WouldRemove(message)) = result else { panic!("a refused removal: {result:?}") };
        assert!(message.contains("remove the installed systemd-timesyncd") && !message.contains('\n'), "{message}");
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs[1].contains("apt-get install") && runs[1].contains("--no-remove"), "{runs:?}");
    }

    #[test]
    fn a_refused_removal_without_a_list_still_says_what_happened() {
        let failure = read_apt_failure(&lines("E: Packages need to be removed but remove is disabled."));
        assert_eq!(failure, AptFailure::WouldRemove(Vec::new()));
        assert!(apt_failure_message("install", &failure).contains("remove installed packages"));
    }

    #[test]
    fn other_failures_quote_apts_last_error() {
        let output =
            lines("E: Could not get lock /var/lib/dpkg/lock-frontend.\nE: Unable to acquire the dpkg frontend lock");
        let failure = read_apt_failure(&output);
        assert_eq!(failure, AptFailure::Other(Some("Unable to acquire the dpkg frontend lock".into())));
        let message = apt_failure_message("install", &failure);
        assert!(message.starts_with("apt-get install failed (Unable to acquire"), "{message}");
        assert_eq!(read_apt_failure(&lines("Err:1 http://deb.debian.org")), AptFailure::Other(None));
    }
}
