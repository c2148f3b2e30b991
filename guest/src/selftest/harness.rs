//! Tests of the harness itself. They run only when named (`tests=harness::deliberate_failure`):
//! the end-to-end tests use them to show that a failing test, a panic and an unexpected
//! exception each make the whole run fail.

use super::{SelfTest, TestResult};
use crate::ensure;

pub const TESTS: &[SelfTest] = &[
    SelfTest::on_request("harness::deliberate_failure", deliberate_failure),
    SelfTest::on_request("harness::deliberate_panic", deliberate_panic),
    SelfTest::on_request("harness::deliberate_exception", deliberate_exception),
];

fn deliberate_failure() -> TestResult {
    let answer = 6 * 7;
    ensure!(answer == 43, "deliberately failing: 6 * 7 is {answer}, not 43");
    Ok(())
}

fn deliberate_panic() -> TestResult {
    panic!("deliberate panic from a self-test");
}

fn deliberate_exception() -> TestResult {
    // A plain kernel read of page 0, which is unmapped: an unexpected #PF in kernel mode.
    // SAFETY: not safe, on purpose: the fault ends the run before the value is used.
    let value = unsafe { core::ptr::read_volatile(core::ptr::without_provenance::<u64>(8)) };
    ensure!(false, "read {value:#x} from an unmapped page");
    Ok(())
}
