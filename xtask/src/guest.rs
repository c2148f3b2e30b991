//! Building the guest kernel and the host stub.

use std::path::PathBuf;
use std::process::Command;

use crate::proc::run_checked;
use crate::setup::{GUEST_TARGET, ensure_guest_target};
use crate::{Profile, Result, err, project_root};

/// A cargo command with the calling cargo's environment removed, so that a nested build for
/// another target is not steered by variables meant for this one (RUSTFLAGS, CARGO_TARGET_DIR
/// set by a caller, CARGO_ENCODED_RUSTFLAGS...).
pub fn cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN");
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST")) {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(project_root());
    cmd
}

/// Builds the guest ELF (the product kernel: self-tests, no benchmark code) and returns its path.
pub fn build_guest(profile: Profile) -> Result<PathBuf> {
    build_kernel(profile, "pvagent-guest")
}

/// Builds the benchmark guest ELF (`pvagent-bench`: the same kernel with `cargo xtask bench`'s
/// guest benchmarks instead of the self-tests) and returns its path.
pub fn build_bench_guest(profile: Profile) -> Result<PathBuf> {
    build_kernel(profile, "pvagent-bench")
}

/// Builds one of the guest package's kernel binaries for the bare-metal target.
fn build_kernel(profile: Profile, bin: &str) -> Result<PathBuf> {
    ensure_guest_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--package", "pvagent-guest", "--bin", bin, "--target", GUEST_TARGET]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    run_checked(cmd, &format!("building the guest ({bin})"))?;
    let elf = project_root().join("target").join(GUEST_TARGET).join(profile.dir()).join(bin);
    if elf.is_file() { Ok(elf) } else { Err(err!("the guest build produced no {}", elf.display())) }
}

/// Builds the host stub binary and returns its path.
pub fn build_host_stub(profile: Profile) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--package", "pvagent-host", "--bin", "pvagent-host"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    run_checked(cmd, "building the host stub")?;
    let bin = project_root().join("target").join(profile.dir()).join("pvagent-host");
    if bin.is_file() { Ok(bin) } else { Err(err!("the host stub build produced no {}", bin.display())) }
}
