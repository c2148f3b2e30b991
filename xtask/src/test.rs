//! `cargo xtask test`, the project's test command: host unit tests, then the guest's
//! self-tests under the host stub, then the same guest under QEMU TCG, then the paths' counts
//! against their budgets, then the end-to-end tests (bad input, deliberate failures, the
//! protocols' host-side views).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pvagent_abi::exit;

use crate::guest::{self, cargo};
use crate::proc::run_checked;
use crate::qemu::{self, Accel};
use crate::{Profile, Result, err, setup};

const SELFTEST_TIMEOUT: Duration = Duration::from_secs(300);

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
    run_checked(unit, "host unit tests")?;

    step("guest self-tests under the host stub (cargo xtask run)");
    crate::run::default_scenario(Profile::Dev, None, None, &[])?;
    let elf = guest::build_guest(Profile::Dev)?;

    step("the same guest under QEMU TCG");
    let run = qemu::run(&elf, Accel::Tcg, "expect-host=tcg", SELFTEST_TIMEOUT, true)?;
    if !run.passed() {
        return Err(err!(
            "the guest's self-tests failed under QEMU TCG (guest code {:?}, expected {:#x})",
            run.guest_code,
            exit::SUCCESS
        ));
    }

    step("instruction and exit budgets, release guests (xtask/budgets.toml)");
    crate::budgets::check(&guest::build_host_stub(Profile::Dev)?)?;

    step("end-to-end tests (cargo test -p pvagent-tests)");
    let mut e2e = cargo();
    e2e.args(["test", "-p", "pvagent-tests"]);
    run_checked(e2e, "end-to-end tests")?;

    println!("\n==== xtask test: all stages passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
