//! xtask's own copy of QEMU, for a machine whose apt cannot install it without removing a
//! package (Debian 12 with a backported `qemu-utils` 10, whose `Breaks:` rules out the
//! distribution's `qemu-system-common` 7.2). The packages apt would have installed are
//! downloaded (`apt-get download`, no root needed) and unpacked (`dpkg-deb -x`) under
//! `target/qemu/`; nothing is installed. The copy runs with its own libraries
//! (`LD_LIBRARY_PATH`) and finds its firmware next to itself (QEMU is relocatable) or, for the
//! firmware packages the machine already had and the install would not have added, in the
//! machine's folders (`-L`). The copy is never refreshed: `rm -r target/qemu` makes xtask
//! build it again from apt's current packages.

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
/// Where Debian puts QEMU's firmware: QEMU's own ROMs, SeaBIOS, iPXE's option ROMs (QEMU is
/// built with `--firmwarepath` naming these, in this order). The copy looks in its own first,
/// then in the machine's: a firmware package already installed is not in the download.
const FIRMWARE_DIRS: [&str; 3] = ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"];
/// The firmware a boot of the guest loads (`-machine pc`, PVH `-kernel`, `-nic none`; found with
/// `strace -e openat`): the copy is ready only when each is in one of the firmware folders.
const FIRMWARE_FILES: [&str; 4] = ["bios-256k.bin", "vgabios-stdvga.bin", "kvmvapic.bin", "pvh.bin"];

/// The copy's root folder in this project.
pub fn root() -> PathBuf {
    crate::project_root().join(DIR).join("root")
}

/// The folders the copy looks in for firmware: its own, then the machine's.
fn firmware_dirs(root: &Path) -> Vec<PathBuf> {
    let own = FIRMWARE_DIRS.iter().map(|d| root.join(d));
    own.chain(FIRMWARE_DIRS.iter().map(|d| Path::new("/").join(d))).collect()
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
    for dir in firmware_dirs(root) {
        cmd.arg("-L").arg(dir);
    }
    cmd
}

/// What the copy under `root` lacks to boot the guest: its READY mark (written last by
/// [`make`], so a copy cut off half-way is never used), its binary, or a firmware file. Files
/// only, no process: a machine too loaded to start one never looks like a broken copy (which
/// [`make`] would delete while other runs use it).
pub fn missing(root: &Path) -> Option<String> {
    let ready = root.parent().map(|dir| dir.join(READY));
    if !ready.as_deref().is_some_and(Path::exists) {
        return Some(format!("{READY} in {}", root.parent().unwrap_or(root).display()));
    }
    let binary = root.join("usr/bin").join(QEMU);
    if !binary.is_file() {
        return Some(binary.display().to_string());
    }
    let dirs = firmware_dirs(root);
    FIRMWARE_FILES.iter().find(|f| !dirs.iter().any(|d| d.join(f).is_file())).map(|f| format!("the firmware {f}"))
}

/// The copy under `root`, when it is complete.
pub fn ready(root: &Path) -> bool {
    missing(root).is_none()
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
/// It is built in a folder of this process's own and renamed into place, so that another
/// xtask building it at the same time never sees half of it.
pub fn make() -> Result<PathBuf> {
    let dir = crate::project_root().join(DIR);
    let root = dir.join("root");
    let work = dir.join(format!("work-{}", std::process::id()));
    let (debs, unpacked_root) = (work.join("debs"), work.join("root"));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| err!("cannot clear {}: {e}", work.display()))?;
    }
    std::fs::create_dir_all(&debs).map_err(|e| err!("cannot create {}: {e}", debs.display()))?;

    let simulation = apt(&SIMULATION, &work, "apt-get install -s qemu-system-x86")?;
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
            cmd.arg("-x").arg(&deb).arg(&unpacked_root);
            crate::proc::run_checked(cmd, &format!("dpkg-deb -x {}", deb.display()))?;
            unpacked += 1;
        }
    }
    if unpacked != packages.len() {
        return Err(err!("apt-get download left {unpacked} packages of the {} asked for", packages.len()));
    }
    let check = command(&unpacked_root).arg("--version").output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("no message");
            return Err(err!("the unpacked {QEMU} does not run: {first}"));
        }
        Err(e) => return Err(err!("the unpacked {QEMU} does not start: {e}")),
    }
    // Into place. Another xtask that finished first made a copy as good as this one: keep
    // it, since its runs may be using it.
    if ready(&root) {
        let _ = std::fs::remove_dir_all(&work);
        return Ok(root);
    }
    let _ = std::fs::remove_file(dir.join(READY));
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| err!("cannot replace {}: {e}", root.display()))?;
    }
    std::fs::rename(&unpacked_root, &root).map_err(|e| err!("cannot move the copy to {}: {e}", root.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(dir.join(READY), packages.join("\n") + "\n")
        .map_err(|e| err!("cannot write {}: {e}", dir.join(READY).display()))?;
    match missing(&root) {
        None => Ok(root),
        Some(what) => Err(err!("the unpacked QEMU in {} lacks {what}", root.display())),
    }
}

/// Runs apt-get (as the user: a simulation and a download need no root) in `dir`.
fn apt(args: &[&str], dir: &Path, what: &str) -> Result<Vec<String>> {
    let (program, argv) = apt_command_line(false, args);
    let mut cmd = Command::new(program);
    cmd.args(argv).current_dir(dir);
    let run = crate::proc::run(cmd, APT_TIMEOUT.min(Duration::from_secs(600)), false)?;
    if !run.status.success() {
        // apt's last error line, else its last line of any kind, so the cause is named.
        let error = run.output.iter().rev().find(|l| l.starts_with("E: ")).or(run.output.last());
        let error = error.map_or("no output", |l| l.trim_start_matches("E: "));
        return Err(err!("{what} failed ({error})"));
    }
    Ok(run.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `LC_ALL=C apt-get install -s -q --no-install-recommends qemu-system-x86` on
    /// Debian 12 with `qemu-utils` 10.0.2 from bookworm-backports installed (captured
    /// 2026-12-02; 4 of its 27 `Inst` lines, one from the security archive).
    const SIMULATED: &str = "\
The following packages will be REMOVED:
  qemu-utils
0 upgraded, 27 newly installed, 1 to remove and 139 not upgraded.
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst ipxe-qemu (1.0.0+git-20190125.36a4c85-5.1 Debian:12.15/oldstable [all])
Inst libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])
Inst libgstreamer-plugins-base1.0-0 (1.22.0-3+deb12u7 Debian-Security:12/oldstable-security [amd64])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Conf libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])";

    #[test]
    fn the_simulation_names_each_package_with_its_version_once() {
        let lines: Vec<String> = SIMULATED.lines().map(str::to_string).collect();
        assert_eq!(
            packages_from_simulation(&lines),
            [
                "ipxe-qemu=1.0.0+git-20190125.36a4c85-5.1",
                "libfdt1=1.6.1-4+b1",
                "libgstreamer-plugins-base1.0-0=1.22.0-3+deb12u7",
                "qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3"
            ]
        );
    }

    #[test]
    fn an_upgrade_line_takes_the_new_version() {
        let lines = vec!["Inst libfdt1 [1.6.1-4] (1.6.1-4+b1 Debian:12.15/oldstable [amd64])".to_string()];
        assert_eq!(packages_from_simulation(&lines), ["libfdt1=1.6.1-4+b1"]);
    }

    #[test]
    fn the_copy_runs_with_its_own_libraries_and_its_own_then_the_machines_firmware() {
        let root = Path::new("/p/target/qemu/root");
        let cmd = command(root);
        assert_eq!(cmd.get_program(), "/p/target/qemu/root/usr/bin/qemu-system-x86_64");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let dirs: Vec<&str> = args
            .chunks(2)
            .map(|pair| {
                assert_eq!(pair[0], "-L");
                pair[1].as_str()
            })
            .collect();
        assert_eq!(
            dirs,
            [
                "/p/target/qemu/root/usr/share/qemu",
                "/p/target/qemu/root/usr/share/seabios",
                "/p/target/qemu/root/usr/lib/ipxe/qemu",
                "/usr/share/qemu",
                "/usr/share/seabios",
                "/usr/lib/ipxe/qemu"
            ]
        );
        let libraries = cmd.get_envs().find(|(k, _)| *k == "LD_LIBRARY_PATH").and_then(|(_, v)| v);
        let libraries = libraries.expect("LD_LIBRARY_PATH set").to_string_lossy().into_owned();
        assert!(
            libraries
                .starts_with("/p/target/qemu/root/usr/lib/x86_64-linux-gnu:/p/target/qemu/root/lib/x86_64-linux-gnu")
        );
    }

    #[test]
    fn a_copy_is_ready_only_with_its_mark_its_binary_and_every_firmware_file() {
        let dir = std::env::temp_dir().join(format!("pvagent-private-qemu-{}", std::process::id()));
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(&dir);
        let write = |path: &Path| {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, b"").expect("write");
        };
        write(&root.join("usr/bin").join(QEMU));
        for (i, file) in FIRMWARE_FILES.iter().enumerate() {
            write(&root.join(FIRMWARE_DIRS[i % 2]).join(file));
        }
        assert!(missing(&root).is_some_and(|m| m.starts_with(READY)), "{:?}", missing(&root));
        write(&dir.join(READY));
        assert_eq!(missing(&root), None);
        // A firmware file that neither the copy nor the machine has (named so that no machine
        // has it) keeps the copy from being used.
        std::fs::remove_file(root.join(FIRMWARE_DIRS[0]).join(FIRMWARE_FILES[0])).expect("rm");
        let found_on_machine = Path::new("/").join(FIRMWARE_DIRS[0]).join(FIRMWARE_FILES[0]).is_file()
            || Path::new("/").join(FIRMWARE_DIRS[1]).join(FIRMWARE_FILES[0]).is_file();
        assert_eq!(missing(&root).is_none(), found_on_machine);
        std::fs::remove_file(root.join("usr/bin").join(QEMU)).expect("rm");
        assert!(missing(&root).is_some_and(|m| m.ends_with(QEMU)), "{:?}", missing(&root));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
