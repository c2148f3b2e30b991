//! KVM's async page fault rules (docs/abi.md, "KVM's async page fault ABI") a guest can check,
//! each broken once by the host stub in mode `kvm-apf` (KVM's own implementation cannot be made
//! to break them): "page ready" for a token with no "page not present", and with no token at
//! all; `flags` with bits KVM never sets, or left set beside a real #PF; "page not present" with
//! token 0 or with a token whose waiter still waits; and one at CPL 0, which stops the run.

use pvagent_abi::breach::Breach;

use super::*;
use crate::ensure_eq;
use crate::pv::kvm_apf;
use crate::selftest::pnp::kvm_apf::{await_stats, kvm_pager, yield_until_parked};
use crate::task::table::FaultInfo;

/// A "page ready" for a token the host never handed out: kept as an early wake (it wakes
/// nobody), and dropped by the next wake-all, which the test asks for by enabling again.
pub(super) fn ready_for_unknown_token() -> TestResult {
    let rule = Breach::ApfReadyForUnknownToken;
    let (_region, _mode) = kvm_pager()?;
    let (before, stats) = (breach::count(rule), kvm_apf::stats());
    arm(rule)?;
    await_breach(rule, before)?;
    ensure_eq!(kvm_apf::pending(), (0, 1), "(waiters, kept tokens): the forged one kept");
    ensure_eq!(kvm_apf::stats().tokens.woken - stats.tokens.woken, 0, "waiters woken");
    kvm_apf::enable().map_err(|e| fail(format_args!("enable again: {e:?}")))?;
    await_stats("the wake-all", |s| s.wake_alls > stats.wake_alls)?;
    nothing_pending()
}

/// The "page ready" vector with no token in the area: counted as spurious, acknowledged.
pub(super) fn ready_spurious() -> TestResult {
    let rule = Breach::ApfReadySpurious;
    let (_region, _mode) = kvm_pager()?;
    let (before, spurious) = (breach::count(rule), kvm_apf::stats().spurious);
    arm(rule)?;
    await_breach(rule, before)?;
    ensure_eq!(kvm_apf::stats().spurious - spurious, 1, "spurious page readies");
    nothing_pending()
}

/// The reader's "page not present" with a bit KVM never sets: counted, served by bit 0.
pub(super) fn unknown_flags() -> TestResult {
    let rule = Breach::ApfUnknownFlags;
    let (_region, _mode) = kvm_pager()?;
    let (before, slept) = (breach::count(rule), kvm_apf::stats().slept);
    arm(rule)?;
    read_held_page(yield_until_parked, || Ok(()))?;
    broke_once(rule, before)?;
    ensure_eq!(kvm_apf::stats().slept - slept, 1, "the reader parked on its token");
    nothing_pending()
}

/// `flags` set to "page not present" by the host with no #PF: the next #PF, a CPL 3 task's
/// own (error code with U set), is the real fault it is, and ends the task.
pub(super) fn stale_flags() -> TestResult {
    let rule = Breach::ApfStaleFlags;
    let (_region, _mode) = kvm_pager()?;
    let (before, stats) = (breach::count(rule), kvm_apf::stats());
    arm(rule)?;
    let a = spawned(task::spawn_user("hostile-real-fault", user_read, 0x18))?;
    match join(a)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, address: 0x18, .. }) => {}
        other => return Err(fail(format_args!("the task ended with {other:?}, not with its own #PF at 0x18"))),
    }
    broke_once(rule, before)?;
    let after = kvm_apf::stats();
    ensure_eq!((after.events - stats.events, after.real_faults - stats.real_faults), (0, 1), "(async, real) #PFs");
    nothing_pending()
}

/// A "page not present" with token 0 for the reader's access, for no fetch: refused, the
/// access retried, and served then with a token of its own.
pub(super) fn not_present_token_zero() -> TestResult {
    let rule = Breach::ApfNotPresentTokenZero;
    let (_region, _mode) = kvm_pager()?;
    let (before, events) = (breach::count(rule), kvm_apf::stats().events);
    arm(rule)?;
    read_held_page(yield_until_parked, || Ok(()))?;
    broke_once(rule, before)?;
    ensure_eq!(kvm_apf::stats().events - events, 2, "page not present #PFs (the broken one, the real one)");
    nothing_pending()
}

/// A second reader's first access gets a "page not present" with the first reader's token,
/// whose waiter still waits: refused (nobody parks on it twice), the access retried and served.
pub(super) fn not_present_token_outstanding() -> TestResult {
    let rule = Breach::ApfNotPresentTokenOutstanding;
    let (_region, _mode) = kvm_pager()?;
    let before = breach::count(rule);
    read_held_page(yield_until_parked, || {
        arm(rule)?;
        read_held_page(|_| yield_until_parked(2), || Ok(()))
    })?;
    broke_once(rule, before)?;
    nothing_pending()
}

/// A "page not present" at CPL 0 (at the arming's return): the guest cannot park that context
/// and stops the run, naming the rule (`tests/hostile.rs`).
pub(super) fn misdelivered() -> TestResult {
    let (_region, _mode) = kvm_pager()?;
    arm(Breach::ApfMisdelivered)?;
    Err(fail(format_args!("the guest went on after a page not present at CPL 0")))
}
