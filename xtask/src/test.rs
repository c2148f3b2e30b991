//! `cargo xtask test`, the project's test command: host unit tests (and the rustdoc
//! examples), then the guest's self-tests under the host stub, then the same guest under QEMU
//! TCG, then the paths' counts against their budgets, then the end-to-end tests (bad input,
//! deliberate failures, the protocols' host-side views), then every command the README and `docs/` show (`doccheck`, which runs the
//! library's examples too). A failing test stage is a test failure (exit status 1); one that
//! could not run is a host-side error (2).

use std::process::ExitCode;
use std::time::Instant;

use crate::guest::{self, cargo};
use crate::proc::run_checked;
use crate::qemu::{self, Accel};
use crate::run::RunOptions;
use crate::{Profile, Result, doccheck, setup};

fn step(name: &str) {
    println!("\n==== xtask test: {name}");
}

/// Runs every stage; the first failing stage fails the command.
pub fn run_all() -> Result<ExitCode> {
    let start = Instant::now();
    // Fail early and clearly where CI lacks what the end-to-end stages need: no silent skips.
    setup::check_kvm()?;
    setup::ensure_qemu()?;
    setup::ensure_guest_target()?;

    step("host unit tests (cargo test --workspace --exclude pvagent-tests)");
    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "pvagent-tests"]);
    run_checked(unit, "host unit tests").map_err(crate::Error::as_test_failure)?;

    step("guest self-tests under the host stub (cargo xtask run)");
    crate::run::scenario(&RunOptions::default())?;

    step("the same guest under QEMU TCG (cargo xtask qemu)");
    qemu::run_suite(Profile::Dev, Accel::Tcg, None, &[])?;

    step("instruction and exit budgets, release guests (xtask/budgets.toml)");
    let host = guest::build_host_stub(Profile::Dev)?;
    crate::budgets::check(&host)?;

    step("end-to-end tests (cargo test -p pvagent-tests)");
    let mut e2e = cargo();
    e2e.args(["test", "-p", "pvagent-tests"]);
    run_checked(e2e, "end-to-end tests").map_err(crate::Error::as_test_failure)?;

    step("every command the README and docs/ show (xtask/src/doccheck.rs)");
    doccheck::run_all()?;

    println!("\n==== xtask test: all stages passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
