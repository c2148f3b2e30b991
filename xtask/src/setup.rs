//! What a fresh machine needs, installed by the project itself: the bare-metal Rust target and
//! QEMU. (rustup does not add a `rust-toolchain.toml` target when the toolchain is already
//! installed, so this does it.)

use std::process::Command;

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

fn qemu_present() -> bool {
    Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Installs QEMU from the distribution (`apt-get install qemu-system-x86`) when it is missing.
pub fn ensure_qemu() -> Result<()> {
    if qemu_present() {
        return Ok(());
    }
    let apt = Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success());
    if !apt {
        return Err(err!("{QEMU} is missing and there is no apt-get to install it; install QEMU for x86-64"));
    }
    let sudo = if is_root() { None } else { Some("sudo") };
    eprintln!("xtask: installing QEMU (apt-get install qemu-system-x86)");
    for args in [&["update", "-q"][..], &["install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"][..]] {
        let mut cmd = match sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_checked(cmd, "apt-get")?;
    }
    if qemu_present() { Ok(()) } else { Err(err!("apt-get installed qemu-system-x86 but {QEMU} still does not run")) }
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
