//! `cargo xtask run`: the default scenario under the host stub. Every self-test with every
//! producer at its defaults (the pager in `ring` mode), then the page-not-present tests again
//! with the pager in each other mode (`sync`; KVM's async page fault ABI served by the host stub,
//! `kvm-apf`, and by KVM itself, `kvm-apf-kernel`, with that driver's tests too), so every mode
//! of the host is seen on every run.
//!
//! The host stub options xtask sets (`--timeout`, `--pnp-mode`, `--trace`) are defaults: the
//! same option given after `--` replaces xtask's (the host stub accepts each option once).

use std::process::Command;
use std::time::Duration;

use crate::proc;
use crate::{Profile, Result, err, guest, setup};

/// Time one boot may take before it is killed.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether `args` (the user's host stub arguments) give option `name` (`--name VALUE` or
/// `--name=VALUE`).
fn gives(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name || a.strip_prefix(name).is_some_and(|rest| rest.starts_with('=')))
}

/// The host stub's arguments: the user's `extra`, after xtask's `defaults` (option, value)
/// that the user did not give.
fn host_arguments(defaults: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in defaults.iter().filter(|(name, _)| !gives(extra, name)) {
        args.push(name.to_string());
        args.push(value.clone());
    }
    args.extend(extra.iter().cloned());
    args
}

/// One boot of the guest under the host stub binary; fails unless the host stub exits 0.
/// `defaults` are xtask's options, each dropped where `extra` (the user's) gives it too.
pub fn boot(
    host: &std::path::Path,
    elf: &std::path::Path,
    cmdline: &str,
    defaults: &[(&str, String)],
    extra: &[String],
) -> Result<()> {
    let mut defaults = defaults.to_vec();
    defaults.push(("--timeout", BOOT_TIMEOUT.as_secs().to_string()));
    let args = host_arguments(&defaults, extra);
    // A host stub whose --timeout the user made longer than xtask's still gets killed, later.
    let timeout = timeout_given(&args).unwrap_or(BOOT_TIMEOUT).max(BOOT_TIMEOUT);
    let mut cmd = Command::new(host);
    cmd.arg(elf).arg("--cmdline").arg(cmdline).args(&args);
    let outcome = proc::run(cmd, timeout + Duration::from_secs(10), true)?;
    let shown = args.join(" ");
    match outcome.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(err!("the guest reported failure ({cmdline} {shown})")),
        _ => Err(err!("the host stub failed ({}) for {cmdline} {shown}", outcome.status)),
    }
}

/// The `--timeout` in `args` (`None` for 0, which asks the host stub for no limit: xtask's own
/// limit then still ends the process).
fn timeout_given(args: &[String]) -> Option<Duration> {
    let at = args.iter().position(|a| a == "--timeout" || a.starts_with("--timeout="))?;
    let value = match args[at].strip_prefix("--timeout=") {
        Some(value) => value,
        None => args.get(at + 1)?,
    };
    value.parse().ok().filter(|s| *s > 0).map(Duration::from_secs)
}

/// Builds everything and runs the default scenario; `tests` narrows the first boot, and `trace`
/// records the first boot's timeline to that file (only the first: one file is one run).
/// `extra` goes to the host stub; a `--pnp-mode` there chooses the one mode the run boots in.
pub fn default_scenario(profile: Profile, tests: Option<&str>, trace: Option<&str>, extra: &[String]) -> Result<()> {
    setup::check_kvm()?;
    let elf = guest::build_guest(profile)?;
    let host = guest::build_host_stub(profile)?;
    let mut cmdline = String::from("expect-host=stub");
    if let Some(tests) = tests {
        cmdline.push_str(&format!(" tests={tests}"));
    }
    let mode_given = gives(extra, "--pnp-mode");
    println!("==== every self-test; pager in {} mode", if mode_given { "the given" } else { "ring" });
    let mut first = vec![("--pnp-mode", "ring".to_string())];
    if let Some(file) = trace {
        first.push(("--trace", file.to_string()));
    }
    boot(&host, &elf, &cmdline, &first, extra)?;
    if tests.is_none() && !mode_given {
        for (mode, tests) in [("sync", "pnp"), ("kvm-apf", "pnp,kvm_apf"), ("kvm-apf-kernel", "pnp,kvm_apf")] {
            println!("\n==== page-not-present self-tests; pager in {mode} mode");
            let cmdline = format!("expect-host=stub tests={tests}");
            boot(&host, &elf, &cmdline, &[("--pnp-mode", mode.to_string())], extra)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn defaults() -> Vec<(&'static str, String)> {
        vec![("--pnp-mode", "ring".to_string()), ("--timeout", "300".to_string())]
    }

    /// Each option exactly once (the host stub refuses a repeated one), with the user's value.
    #[test]
    fn a_users_option_replaces_xtasks_default() {
        let args = host_arguments(&defaults(), &strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        assert_eq!(args, strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        for name in ["--timeout", "--pnp-mode"] {
            assert_eq!(args.iter().filter(|a| a.starts_with(name)).count(), 1, "{name}: {args:?}");
        }
    }

    #[test]
    fn xtasks_defaults_apply_where_the_user_gave_none() {
        let args = host_arguments(&defaults(), &strings(&["--mem", "256"]));
        assert_eq!(args, strings(&["--pnp-mode", "ring", "--timeout", "300", "--mem", "256"]));
        // A longer option that starts with the same letters is another option.
        assert!(!gives(&strings(&["--pnp-modes", "x"]), "--pnp-mode"));
    }

    #[test]
    fn the_process_deadline_follows_a_longer_timeout() {
        assert_eq!(timeout_given(&strings(&["--timeout", "900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout=900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout", "0"])), None);
        assert_eq!(timeout_given(&strings(&["--mem", "64"])), None);
    }
}
