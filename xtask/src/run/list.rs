//! `cargo xtask run --list`: the guest lists its own tests (the command line word `list`), so
//! that nothing here can drift from its table; this formats the listing by suite, each test with
//! what it needs from its host.

use std::process::Command;

use pvagent_abi::report::{Line, Need};

use super::BOOT_TIMEOUT;
use crate::{Profile, Result, err, guest, proc, setup};

/// One self-test as the guest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub on_by_default: bool,
    pub needs: Vec<Need>,
}

/// Boots the guest with the command line word `list` and returns its tests, in the order they
/// run: the guest's own table, so nothing here can drift from it.
pub fn list(profile: Profile) -> Result<Vec<Listed>> {
    setup::check_kvm()?;
    let elf = guest::build_guest(profile)?;
    let host = guest::build_host_stub(profile)?;
    let mut cmd = Command::new(&host);
    cmd.arg(&elf).args(["--cmdline", pvagent_abi::report::LIST_WORD]);
    let outcome = proc::run(cmd, BOOT_TIMEOUT, false)?;
    if !outcome.status.success() {
        return Err(err!("the guest did not list its tests ({}):\n{}", outcome.status, outcome.text()));
    }
    let listed: Vec<Listed> = outcome
        .output
        .iter()
        .filter_map(|l| match Line::parse(l) {
            Some(Line::Listed { name, on_by_default, needs }) => {
                Some(Listed { name: name.to_string(), on_by_default, needs: needs.iter().collect() })
            }
            _ => None,
        })
        .collect();
    if listed.is_empty() {
        return Err(err!("the guest listed no tests:\n{}", outcome.text()));
    }
    Ok(listed)
}

/// The listing as `cargo xtask run --list` prints it: by suite, each test with what it needs,
/// then what each need means.
pub fn format_list(tests: &[Listed]) -> String {
    let mut out = String::new();
    let width = tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut suite = "";
    for t in tests {
        let this_suite = t.name.split("::").next().unwrap_or(&t.name);
        if this_suite != suite {
            suite = this_suite;
            let count = tests.iter().filter(|o| o.name.split("::").next() == Some(suite)).count();
            out.push_str(&format!("{suite} ({count})\n"));
        }
        let mut notes = Vec::new();
        if !t.on_by_default {
            notes.push("on request".to_string());
        }
        if !t.needs.is_empty() {
            notes.push(format!("needs {}", t.needs.iter().map(|n| n.name()).collect::<Vec<_>>().join(", ")));
        }
        out.push_str(format!("  {:width$}  {}", t.name, notes.join("; ")).trim_end());
        out.push('\n');
    }
    let default = tests.iter().filter(|t| t.on_by_default).count();
    out.push_str(&format!(
        "\n{} tests: {default} run by default, {} only when --tests names them exactly (on request).\n",
        tests.len(),
        tests.len() - default
    ));
    let mut needed: Vec<Need> = tests.iter().flat_map(|t| t.needs.iter().copied()).collect();
    needed.sort_by_key(|n| *n as u8);
    needed.dedup();
    if !needed.is_empty() {
        out.push_str("A test whose needs this host does not meet reports SKIP, saying which. Needs:\n");
        let width = needed.iter().map(|n| n.name().len()).max().unwrap_or(0);
        for need in needed {
            out.push_str(&format!("  {:width$} {}\n", need.name(), need.description()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_groups_by_suite_and_explains_the_needs() {
        let tests = [
            Listed { name: "arch::a".into(), on_by_default: true, needs: vec![] },
            Listed { name: "arch::bb".into(), on_by_default: true, needs: vec![Need::HostStub] },
            Listed { name: "harness::c".into(), on_by_default: false, needs: vec![] },
        ];
        let text = format_list(&tests);
        assert!(text.starts_with("arch (2)\n  arch::a\n  arch::bb    needs host-stub\nharness (1)\n"), "{text}");
        assert!(text.contains("  harness::c  on request\n"), "{text}");
        assert!(text.contains("3 tests: 2 run by default, 1 only when"), "{text}");
        assert!(text.contains(&format!("  host-stub {}", Need::HostStub.description())), "{text}");
    }
}
