//! The hostile host: one self-test per rule of the ABI a host can break
//! (`pvagent_abi::breach`), each making the host stub break it on purpose (`pv::breach::arm`,
//! or `--break RULE` from the start for the answers at boot) and checking that the guest
//! counted it under the rule's name and did the safe thing. Rules whose breach stops the run
//! are on-request tests the end-to-end tests run (`tests/hostile_boot.rs`).

mod ac;
mod ve;

use pvagent_abi::breach::Breach;

use super::{Failure, SelfTest, TestResult, fail};
use crate::pv::breach;

pub const AC_TESTS: &[SelfTest] = ac::TESTS;
pub const VE_TESTS: &[SelfTest] = ve::TESTS;

/// Arms `rule` at the host; a breach armed before and unused is a test's leftover: a failure.
fn arm(rule: Breach) -> TestResult {
    match breach::arm(rule) {
        Ok(false) => Ok(()),
        Ok(true) => Err(fail(format_args!("a breach armed before {rule} was still unused"))),
        Err(e) => Err(fail(format_args!("HostBreak({rule}): {e:?}"))),
    }
}

/// The guest's count of `rule` went up by exactly `by` since `before`.
fn counted(rule: Breach, before: u32, by: u32) -> TestResult {
    let now = breach::count(rule);
    if now.wrapping_sub(before) == by {
        Ok(())
    } else {
        Err(fail(format_args!(
            "host broke {rule}: the guest counted {} breach(es), {by} expected",
            now.wrapping_sub(before)
        )))
    }
}

/// The rule's first breach values, once counted.
fn first(rule: Breach) -> Result<[u64; 2], Failure> {
    breach::first(rule).ok_or_else(|| fail(format_args!("{rule}: no first breach recorded")))
}
