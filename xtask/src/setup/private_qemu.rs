//! xtask's own copy of QEMU, for a machine whose apt cannot install it without removing a
//! package (Debian 12 with a backported `qemu-utils` 10, whose `Breaks:` rules out the
//! distribution's `qemu-system-common` 7.2). The packages apt would have installed are
//! downloaded (`apt-get download`, no root needed) and unpacked (`dpkg-deb -x`) under
//! `target/qemu/`; nothing on the machine changes. The copy runs with its own libraries
//! (`LD_LIBRARY_PATH`) and firmware (`-L`, in the order of Debian's built-in firmware path).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{APT_TIMEOUT, QEMU, apt_command_line};
use crate::{Result, err};

/// The folder under `target/` that holds the copy.
pub const DIR: &str = "target/qemu";
/// Written last, once the copy has run: a half-unpacked copy is never used.
const READY: &str = "READY";
/// Where the packages put the libraries the machine lacks (Debian's multiarch folders).
const LIBRARY_DIRS: [&str; 2] = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"];
/// Where the packages put QEMU's firmware: QEMU's own ROMs, SeaBIOS, iPXE's option ROMs
/// (Debian builds QEMU with `--firmwarepath` naming these, in this order).
const FIRMWARE_DIRS: [&str; 3] = ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"];

/// The copy's root folder in this project.
pub fn root() -> PathBuf {
    crate::project_root().join(DIR).join("root")
}

/// A command that runs the copy under `root`: its binary, libraries and firmware.
pub fn command(root: &Path) -> Command {
    let mut cmd = Command::new(root.join("usr/bin").join(QEMU));
    let mut libraries: Vec<PathBuf> = LIBRARY_DIRS.iter().map(|d| root.join(d)).collect();
    if let Some(inherited) = std::env::var_os("LD_LIBRARY_PATH") {
        libraries.extend(std::env::split_paths(&inherited));
    }
    if let Ok(joined) = std::env::join_paths(libraries) {
        cmd.env("LD_LIBRARY_PATH", joined);
    }
    for dir in FIRMWARE_DIRS {
        cmd.arg("-L").arg(root.join(dir));
    }
    cmd
}

/// The copy under `root`, when it was completed and still runs.
pub fn ready(root: &Path) -> bool {
    root.parent().is_some_and(|dir| dir.join(READY).exists()) && super::runs(command(root))
}

/// The packages an install of `qemu-system-x86` would add, as `name=version`, read from the
/// `Inst` lines of `apt-get install -s` (`Inst NAME [OLD] (VERSION ARCHIVE [ARCH])`).
pub fn packages_from_simulation(output: &[String]) -> Vec<String> {
    output
        .iter()
        .filter_map(|line| {
            let mut words = line.strip_prefix("Inst ")?.split_whitespace();
            let name = words.next()?;
            let version = words.find(|w| w.starts_with('('))?.trim_start_matches('(');
            Some(format!("{name}={version}"))
        })
        .collect()
}

/// The simulation that lists what to download: the same install apt refused, without
/// `--no-remove` (a simulation changes nothing).
pub const SIMULATION: [&str; 5] = ["install", "-s", "-q", "--no-install-recommends", "qemu-system-x86"];

/// Downloads and unpacks the packages under `target/qemu/`, then checks that the copy runs.
pub fn make() -> Result<PathBuf> {
    let dir = crate::project_root().join(DIR);
    let (debs, root) = (dir.join("debs"), dir.join("root"));
    for stale in [&debs, &root] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| err!("cannot clear {}: {e}", stale.display()))?;
        }
    }
    let _ = std::fs::remove_file(dir.join(READY));
    std::fs::create_dir_all(&debs).map_err(|e| err!("cannot create {}: {e}", debs.display()))?;

    let simulation = apt(&SIMULATION, &dir, "apt-get install -s qemu-system-x86")?;
    let packages = packages_from_simulation(&simulation);
    if !packages.iter().any(|p| p.starts_with("qemu-system-x86=")) {
        return Err(err!("apt-get's simulated install of qemu-system-x86 listed no qemu-system-x86 to download"));
    }
    let mut download = vec!["download", "-q"];
    download.extend(packages.iter().map(String::as_str));
    apt(&download, &debs, "apt-get download")?;

    let mut unpacked = 0;
    for entry in std::fs::read_dir(&debs).map_err(|e| err!("cannot read {}: {e}", debs.display()))? {
        let deb = entry.map_err(|e| err!("cannot read {}: {e}", debs.display()))?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let mut cmd = Command::new("dpkg-deb");
            cmd.arg("-x").arg(&deb).arg(&root);
            crate::proc::run_checked(cmd, "dpkg-deb -x")?;
            unpacked += 1;
        }
    }
    if unpacked != packages.len() {
        return Err(err!("apt-get download left {unpacked} packages of the {} asked for", packages.len()));
    }
    if !super::runs(command(&root)) {
        return Err(err!("the unpacked {QEMU} in {} does not run", root.display()));
    }
    std::fs::write(dir.join(READY), packages.join("\n") + "\n")
        .map_err(|e| err!("cannot write {}: {e}", dir.join(READY).display()))?;
    Ok(root)
}

/// Runs apt-get (as the user: a simulation and a download need no root) in `dir`.
fn apt(args: &[&str], dir: &Path, what: &str) -> Result<Vec<String>> {
    let (program, argv) = apt_command_line(false, args);
    let mut cmd = Command::new(program);
    cmd.args(argv).current_dir(dir);
    let run = crate::proc::run(cmd, APT_TIMEOUT.min(Duration::from_secs(600)), false)?;
    if !run.status.success() {
        let last = run.output.iter().rev().find(|l| l.starts_with("E: ")).cloned().unwrap_or_default();
        return Err(err!("{what} failed ({})", last.trim_start_matches("E: ")));
    }
    Ok(run.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `LC_ALL=C apt-get install -s -q --no-install-recommends qemu-system-x86` on
    /// Debian 12 with `qemu-utils` 10.0.2 from bookworm-backports installed (2026-12-02).
    const SIMULATED: &str = "\
The following packages will be REMOVED:
  qemu-utils
0 upgraded, 27 newly installed, 1 to remove and 139 not upgraded.
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst ipxe-qemu (1.0.0+git-20190125.36a4c85-5.1 Debian:12.11/stable [all])
Inst libfdt1 (1.6.1-4+b1 Debian:12.11/stable [amd64])
Inst seabios (1.16.2-1 Debian:12.11/stable [all])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.11/stable [amd64])
Conf libfdt1 (1.6.1-4+b1 Debian:12.11/stable [amd64])";

    #[test]
    fn the_simulation_names_each_package_with_its_version_once() {
        let lines: Vec<String> = SIMULATED.lines().map(str::to_string).collect();
        assert_eq!(
            packages_from_simulation(&lines),
            [
                "ipxe-qemu=1.0.0+git-20190125.36a4c85-5.1",
                "libfdt1=1.6.1-4+b1",
                "seabios=1.16.2-1",
                "qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3"
            ]
        );
    }

    #[test]
    fn an_upgrade_line_takes_the_new_version() {
        let lines = vec!["Inst libc6 [2.36-9] (2.36-9+deb12u10 Debian:12.11/stable [amd64])".to_string()];
        assert_eq!(packages_from_simulation(&lines), ["libc6=2.36-9+deb12u10"]);
    }

    #[test]
    fn the_copy_runs_with_its_own_libraries_and_firmware() {
        let root = Path::new("/p/target/qemu/root");
        let cmd = command(root);
        assert_eq!(cmd.get_program(), "/p/target/qemu/root/usr/bin/qemu-system-x86_64");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "-L",
                "/p/target/qemu/root/usr/share/qemu",
                "-L",
                "/p/target/qemu/root/usr/share/seabios",
                "-L",
                "/p/target/qemu/root/usr/lib/ipxe/qemu"
            ]
        );
        let libraries = cmd.get_envs().find(|(k, _)| *k == "LD_LIBRARY_PATH").and_then(|(_, v)| v);
        let libraries = libraries.expect("LD_LIBRARY_PATH set").to_string_lossy().into_owned();
        assert!(
            libraries
                .starts_with("/p/target/qemu/root/usr/lib/x86_64-linux-gnu:/p/target/qemu/root/lib/x86_64-linux-gnu")
        );
    }
}
