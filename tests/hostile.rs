//! End-to-end tests of the hostile host (`Nr::HostBreak`): the guest's `hostile::` self-tests,
//! each of which makes the host stub break one rule of the page-not-present ring or KVM's async
//! page fault ABI once, and the guest's report of what it detected; and the rule whose breach the
//! guest cannot survive, which must stop the run with a report naming it.

use pvagent_abi::breach::Breach;
use pvagent_abi::exit;
use pvagent_abi::pnp::HostMode;
use pvagent_abi::report::Status;
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_tests::run_stub_with;

fn pager() -> Producers {
    Producers {
        sld: None,
        pager: Some(PagerConfig { mode: HostMode::Ring, ..PagerConfig::default() }),
        released: None,
        churn: None,
        breaks: Vec::new(),
    }
}

/// The rules this file's self-tests break, each in its own test.
fn rules() -> impl Iterator<Item = Breach> {
    Breach::ALL.iter().copied().filter(|b| (0x100..0x300).contains(&(*b as u32)) && *b != Breach::ApfMisdelivered)
}

#[test]
fn every_ring_and_kvm_apf_rule_broken_once_is_reported_once() {
    // This file's rules only: the split-lock and #VE ones are tests/hostile_boot.rs's and boot 5's.
    let r = run_stub_with("tests=hostile::pnp,hostile::kvm_apf", &pager());
    let tests: Vec<_> = r.tests.iter().filter(|t| t.name.starts_with("hostile::")).collect();
    assert!(r.passed(), "{tests:#?}\n{:?}", r.host_error);
    assert!(tests.iter().all(|t| t.status == Status::Pass), "{tests:#?}");
    assert_eq!(tests.len(), rules().count(), "one test per rule: {tests:#?}");
    for rule in rules() {
        let line = format!("host broke {rule}: 1 time(s), first (");
        assert!(r.serial.iter().any(|l| l.starts_with(&line)), "no '{line}' line:\n{:#?}", r.serial);
    }
    assert!(!r.serial.iter().any(|l| l.starts_with("host broke apf-misdelivered")), "{:#?}", r.serial);
    assert_eq!(r.report.get("pager.outstanding"), 0, "tokens left at the host");
}

#[test]
fn a_page_not_present_at_cpl_0_stops_the_run_naming_the_rule() {
    let r = run_stub_with("tests=hostile::kvm_apf::deliberately_misdelivered", &pager());
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}\n{:?}", r.serial, r.host_error);
    let test = r.tests.iter().find(|t| t.name == "hostile::kvm_apf::deliberately_misdelivered");
    let test = test.unwrap_or_else(|| panic!("no result line: {:#?}", r.serial));
    assert_eq!(test.status, Status::Fail);
    assert!(test.reason.starts_with("host broke apf-misdelivered: an async page fault"), "{}", test.reason);
    assert!(test.reason.contains("at cpl 0"), "{}", test.reason);
}
