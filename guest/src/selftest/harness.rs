//! Tests of the harness itself. They run only when named (`tests=harness::deliberate_failure`):
//! the end-to-end tests use them to show that a failing test, a panic and an unexpected
//! exception each make the whole run fail, and that a line a handler could not print is counted
//! and the count reported at the end.

use super::{SelfTest, TestResult};
use crate::ensure;

pub const TESTS: &[SelfTest] = &[
    // First, so that a run naming it and a deliberate end has a dropped line to report.
    SelfTest::on_request("harness::a_busy_console_counts_a_dropped_line", a_busy_console_counts_a_dropped_line),
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

/// A report from a trap handler never waits for the console: when the interrupted context holds
/// it, the line is dropped and counted (`console::try_print_line`); the runner reports the count
/// before its summary.
fn a_busy_console_counts_a_dropped_line() -> TestResult {
    let before = crate::console::dropped_reports();
    crate::console::while_busy(|| crate::kreport!("harness: a line the busy console cannot take"));
    let dropped = crate::console::dropped_reports() - before;
    ensure!(dropped == 1, "{dropped} lines counted as dropped, 1 expected");
    Ok(())
}
