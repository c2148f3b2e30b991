//! `cargo xtask run`: the default scenario under the host stub. Every self-test with every
//! producer at its defaults (the pager in `ring` mode), then the page-not-present tests again
//! with the pager in `sync` mode, so both of the host's modes are seen on every run.

use std::process::Command;
use std::time::Duration;

use crate::proc;
use crate::{Profile, Result, err, guest, setup};

/// Time one boot may take before it is killed.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// One boot of the guest under the host stub binary; fails unless the host stub exits 0.
pub fn boot(
    host: &std::path::Path,
    elf: &std::path::Path,
    cmdline: &str,
    host_args: &[&str],
    extra: &[String],
) -> Result<()> {
    let mut cmd = Command::new(host);
    cmd.arg(elf).arg("--cmdline").arg(cmdline).args(host_args).args(extra);
    cmd.args(["--timeout", &BOOT_TIMEOUT.as_secs().to_string()]);
    let outcome = proc::run(cmd, BOOT_TIMEOUT + Duration::from_secs(10), true)?;
    match outcome.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(err!("the guest reported failure ({cmdline} {})", host_args.join(" "))),
        _ => Err(err!("the host stub failed ({}) for {cmdline} {}", outcome.status, host_args.join(" "))),
    }
}

/// Builds everything and runs the default scenario; `tests` narrows the first boot, and `trace`
/// records the first boot's timeline to that file (only the first: one file is one run).
pub fn default_scenario(profile: Profile, tests: Option<&str>, trace: Option<&str>, extra: &[String]) -> Result<()> {
    setup::check_kvm()?;
    let elf = guest::build_guest(profile)?;
    let host = guest::build_host_stub(profile)?;
    let mut cmdline = String::from("expect-host=stub");
    if let Some(tests) = tests {
        cmdline.push_str(&format!(" tests={tests}"));
    }
    println!("==== every self-test; pager in ring mode");
    let mut first = vec!["--pnp-mode", "ring"];
    if let Some(file) = trace {
        first.extend(["--trace", file]);
    }
    boot(&host, &elf, &cmdline, &first, extra)?;
    if tests.is_none() {
        println!("\n==== page-not-present self-tests; pager in sync mode");
        boot(&host, &elf, "expect-host=stub tests=pnp", &["--pnp-mode", "sync"], extra)?;
    }
    Ok(())
}
