//! End-to-end tests of the guest's token deadline (`pv::deadline`, docs/robustness.md): a host
//! that never resolves a token gets the guest's report of that token and its page before the
//! run's time limit ends it, and the report changes nothing else (the run ends by its limit, not
//! by the guest). That no wait is reported before it is past the deadline is checked where the
//! protocols' whole self-test runs are (`pnp.rs`, `kvm_apf.rs`, `ve.rs`:
//! `early_deadline_reports`); that a wait resolved in time is never reported, by the table's
//! unit tests with a fake clock.

use std::time::Duration;

use pvagent_abi::pnp::{HostMode, Token};
use pvagent_host::Error;
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_tests::{config, guest_elf, run_stub_configured};

#[test]
fn a_token_the_host_never_resolves_is_reported_before_the_time_limit() {
    // The test holds its page for ever: only the time limit ends the run. The deadline is short
    // against the limit, which covers the boot with room to spare on a loaded machine.
    let mut c = config(guest_elf(), "tests=pnp::wait_for_a_held_page_for_ever pnp-deadline=100");
    c.timeout = Some(Duration::from_secs(10));
    let pager = PagerConfig { mode: HostMode::Ring, ..PagerConfig::default() };
    let r = run_stub_configured(
        c,
        &Producers { sld: None, pager: Some(pager), released: None, churn: None, breaks: Vec::new() },
    );
    assert!(matches!(r.host_error, Some(Error::Timeout { seconds: 10 })), "{:?}\n{:#?}", r.host_error, r.serial);
    assert_eq!(r.guest_exit_code, None, "the guest waited until the end");
    // The only page the run touches is the region's first, and the first token a fresh ring
    // hands out is slot 0's first: the host's numbers, not the guest's.
    let page = PagerConfig::default().region_gpa;
    let token = Token::new(0, 1).0;
    let waiting = format!("deadline: waiting for ever for page {page:#x}, with a deadline of 100 ms");
    let at = r.serial.iter().position(|l| *l == waiting).unwrap_or_else(|| panic!("{:#?}", r.serial));
    let report = format!("deadline: vCPU 0: page-not-present ring token {token:#x}, page {page:#x}, has waited ");
    let reports: Vec<_> = r.serial[at..].iter().filter(|l| l.starts_with("deadline: vCPU")).collect();
    assert_eq!(reports.len(), 1, "reported once: {:#?}", r.serial);
    assert!(reports[0].starts_with(&report), "{reports:#?}");
    // The test's task waits in `join`: the reader, alone, waits in the HLT loop.
    let tail = "past the deadline of 100 ms (a context waiting in the HLT loop); reported only, the wait goes on";
    assert!(reports[0].ends_with(tail), "{reports:#?}");
}
