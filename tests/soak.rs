//! The soak (`soak::storm`, docs/robustness.md) catches a stale page: a pager that stops
//! counting versions, so that a page fetched again carries the version its previous fetch did,
//! fails the storm with the page, the version read and the one expected, and the seed and round
//! that reproduce it. (The storm passing is a stage of `cargo xtask test`: `cargo xtask soak`.)

use pvagent_abi::exit;
use pvagent_abi::report::Status;
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_tests::{config, guest_elf, run_stub_configured};

#[test]
fn a_stale_page_fails_the_soak_with_its_seed_round_and_versions() {
    let mut config = config(guest_elf(), "tests=soak::storm soak-events=1000 soak-seed=1");
    config.vcpus = 2;
    // Versions stop counting from the second page made present (the first is the storm's
    // probe): every page evicted and fetched again, as the seed's choices make some in the
    // first rounds, shows its previous version.
    let pager = PagerConfig { versioned: true, stale_versions_from: Some(2), ..PagerConfig::default() };
    let r = run_stub_configured(config, &Producers { pager: Some(pager), ..Producers::defaults() });
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    let storm = r.tests.iter().find(|t| t.name == "soak::storm").expect("the storm reported");
    assert_eq!(storm.status, Status::Fail, "{storm:?}");
    // Which worker meets a stale page first depends on the host's timing: its check names the
    // version it read (in the page's header, or folded with a word by a CPL 3 read) and the one
    // it expected.
    let reason = &storm.reason;
    let names_the_version = (reason.contains("header [") && reason.contains("(its address, version)"))
        || (reason.contains("a CPL 3 read of the version") && reason.contains("word 1 now"));
    assert!(reason.starts_with("seed 0x1 round ") && names_the_version, "{reason}");
}
