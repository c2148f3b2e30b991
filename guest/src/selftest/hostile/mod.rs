//! The hostile host: one self-test per rule of docs/abi.md the host stub can break on purpose
//! (`Nr::HostBreak`, `pv::breach::arm`). Each test reads the rule's breach count, arms the
//! rule, provokes its occasion, and checks that the guest counted exactly one breach of it and
//! did the safe thing: the waiter woken once with the right data, nothing woken that should
//! not be, no token left behind. A rule whose breach stops the run is a test that runs only on
//! request, from an end-to-end test (`tests/hostile.rs`).
//!
//! The split-lock and #VE rules (`ac`, `ve`) follow the same pattern; those a host breaks at boot
//! are armed from the start with the host stub's `--break RULE` (`tests/hostile_boot.rs`).
//!
//! This suite runs after every other: the `accounting_is_balanced` tests of the other suites
//! count rejected tokens and spurious interrupts as errors, which these tests cause on purpose.

mod ac;
mod kvm_apf;
mod pnp;
mod ve;

use pvagent_abi::breach::Breach;
use pvagent_abi::pnp::backing_pattern;
use pvagent_abi::report::Need;

use super::pnp::controls::Held;
use super::pnp::{fresh_pages, join, spawned};
use super::{Failure, SelfTest, TestResult, fail};
use crate::ensure_eq;
use crate::pv::{breach, halt, pnp as guest_pnp};
use crate::sync::IrqGuard;
use crate::task::table::ExitStatus;
use crate::task::{self, user};

/// The ring's rules: the pager in ring mode.
const RING: &[Need] = &[Need::Pager, Need::PnpRingMode];
/// KVM's rules, as the host stub serves the ABI (KVM's own cannot be made to break them).
const APF: &[Need] = &[Need::Pager, Need::KvmApf, Need::KvmApfHostStub];

pub const AC_TESTS: &[SelfTest] = ac::TESTS;
pub const VE_TESTS: &[SelfTest] = ve::TESTS;

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("hostile::pnp::ring_head_beyond_size_consumes_nothing", pnp::ring_head_beyond_size).needs(RING),
    SelfTest::new("hostile::pnp::resolution_for_unknown_token_wakes_nobody", pnp::resolution_for_unknown_token)
        .needs(RING),
    SelfTest::new("hostile::pnp::resolution_twice_wakes_once", pnp::resolution_twice).needs(RING),
    SelfTest::new("hostile::pnp::resolution_bad_result_is_a_retry", pnp::resolution_bad_result).needs(RING),
    SelfTest::new("hostile::pnp::event_token_zero_parks_nobody", pnp::event_token_zero).needs(RING),
    SelfTest::new("hostile::pnp::event_slot_beyond_ring_parks_nobody", pnp::event_slot_beyond_ring).needs(RING),
    SelfTest::new("hostile::pnp::event_sequence_zero_parks_nobody", pnp::event_sequence_zero).needs(RING),
    SelfTest::new("hostile::pnp::event_token_outstanding_parks_nobody_else", pnp::event_token_outstanding).needs(RING),
    SelfTest::new("hostile::pnp::event_gpa_outside_region_is_served_as_unknown", pnp::event_gpa_outside_region)
        .needs(RING),
    SelfTest::new("hostile::pnp::event_gva_mismatch_is_counted", pnp::event_gva_mismatch).needs(RING),
    SelfTest::new("hostile::pnp::event_unknown_flags_are_counted", pnp::event_unknown_flags).needs(RING),
    SelfTest::new("hostile::pnp::event_reserved_nonzero_is_counted", pnp::event_reserved_nonzero).needs(RING),
    SelfTest::new("hostile::pnp::event_spurious_is_ignored", pnp::event_spurious).needs(RING),
    SelfTest::new("hostile::pnp::event_while_unregistered_parks_nobody", pnp::event_while_unregistered).needs(RING),
    SelfTest::new("hostile::kvm_apf::ready_for_unknown_token_wakes_nobody", kvm_apf::ready_for_unknown_token)
        .needs(APF),
    SelfTest::new("hostile::kvm_apf::ready_spurious_is_ignored", kvm_apf::ready_spurious).needs(APF),
    SelfTest::new("hostile::kvm_apf::unknown_flags_are_counted", kvm_apf::unknown_flags).needs(APF),
    SelfTest::new("hostile::kvm_apf::stale_flags_leave_a_real_fault_real", kvm_apf::stale_flags).needs(APF),
    SelfTest::new("hostile::kvm_apf::not_present_token_zero_parks_nobody", kvm_apf::not_present_token_zero).needs(APF),
    SelfTest::new(
        "hostile::kvm_apf::not_present_token_outstanding_parks_nobody_else",
        kvm_apf::not_present_token_outstanding,
    )
    .needs(APF),
    // Run by the end-to-end tests: the guest cannot go on, and stops naming the rule.
    SelfTest::on_request("hostile::kvm_apf::deliberately_misdelivered", kvm_apf::misdelivered).needs(APF),
];

/// A CPL 3 task that reads the word at `gpa` and returns it.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read(gpa: u64) -> ! {
    user::exit(user::read_u64(gpa))
}

/// Asks the host to break `rule` once; it must not have been armed already.
fn arm(rule: Breach) -> TestResult {
    match breach::arm(rule) {
        Ok(false) => Ok(()),
        Ok(true) => Err(fail(format_args!("{rule} was armed already and unused"))),
        Err(e) => Err(fail(format_args!("arming {rule}: {e:?}"))),
    }
}

/// Exactly one breach of `rule` since it counted `before`.
fn broke_once(rule: Breach, before: u32) -> TestResult {
    ensure_eq!(breach::count(rule) - before, 1, "breaches of {rule} the guest counted");
    Ok(())
}

/// Halts until the guest has counted a breach of `rule` since `before` (what an interrupt the
/// host raised at the arming brings), then checks it was exactly one. The deadline only turns an
/// interrupt that never comes into a failure; it is microseconds away.
fn await_breach(rule: Breach, before: u32) -> TestResult {
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (breach::count(rule) > before || crate::arch::ticks() > deadline).then_some(()));
    }
    broke_once(rule, before)
}

/// A CPL 3 task reads a fresh held page and parks (`parked` waits until it has); the page is
/// released after `meanwhile`, and the task must end with the page's data.
fn read_held_page(parked: fn(usize) -> TestResult, meanwhile: impl FnOnce() -> TestResult) -> TestResult {
    let region = super::pnp::pager()?;
    let gpa = fresh_pages(&region, 1)? + 0x80;
    let mut held = Held::new();
    held.hold(gpa)?;
    let a = spawned(task::spawn_user("hostile-reader", user_read, gpa))?;
    let during = parked(1).and_then(|()| meanwhile());
    held.release_all()?;
    let status = join(a)?;
    during?;
    ensure_eq!(status, ExitStatus::Returned(backing_pattern(gpa)), "the reader's result");
    Ok(())
}

/// Neither protocol has a waiter or a kept resolution left on this vCPU.
fn nothing_pending() -> TestResult {
    ensure_eq!(guest_pnp::pending(), (0, 0), "ring: (waiters, kept resolutions)");
    ensure_eq!(crate::pv::kvm_apf::pending(), (0, 0), "KVM: (waiters, kept tokens)");
    Ok(())
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
