//! Guest memory changed under running vCPUs (seed 003): guest RAM, which the guest executes
//! from and keeps its data and page tables in, is split into two memslots (dirty logging on the
//! upper half) and merged again, over and over, while four vCPUs run every self-test. Each
//! update holds every vCPU out of KVM_RUN, so the guest must see nothing: every test passes, no
//! exit hits an update's window, and the report says how long the vCPUs were held.

use pvagent_abi::pnp::HostMode;
use pvagent_host::RunResult;
use pvagent_host::producers::Producers;
use pvagent_host::producers::churn::ChurnConfig;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_tests::{config, guest_elf, run_stub_configured};

/// An update every this many vCPU entries: a boot and its self-tests make thousands of entries,
/// so every run makes many updates, by the guest's work rather than the clock.
const EVERY: u64 = 20;

fn run(cmdline: &str, vcpus: usize, pager: Option<PagerConfig>) -> RunResult {
    let mut c = config(guest_elf(), cmdline);
    c.vcpus = vcpus;
    let producers = Producers { churn: Some(ChurnConfig { every: EVERY, hold: true }), pager, ..Producers::defaults() };
    run_stub_configured(c, &producers)
}

fn assert_atomic(r: &RunResult, vcpus: usize) {
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    let c = &r.report;
    let (splits, merges) = (c.get("churn.splits"), c.get("churn.merges"));
    assert!(splits >= 1 && merges >= 1, "RAM was split and merged again: {splits} splits, {merges} merges");
    assert_eq!(c.get("layout.held_updates"), splits + merges, "every update held the vCPUs");
    assert_eq!(c.get("layout.unheld_updates"), 0);
    // Zero race exits: none classified as the window (none could be: no update left one open
    // to a running vCPU), no MMIO exit at an address no device claims, and no emulation
    // failure or triple fault (the run passed).
    assert_eq!(c.get("layout.exits_update_window"), 0);
    for i in 0..vcpus {
        assert_eq!(c.get(&format!("vcpu{i}.unclaimed_mmio")), 0, "vCPU {i}");
    }
    assert!(c.get("layout.hold_us_max") > 0, "the hold time is measured");
    assert!(
        r.report.lines.iter().any(|l| l.starts_with("layout: ") && l.contains("updates holding every vCPU")),
        "{:?}",
        r.report.lines
    );
}

#[test]
fn every_self_test_passes_on_four_vcpus_while_ram_is_split_and_merged() {
    let r = run("", 4, Some(PagerConfig::default()));
    assert_atomic(&r, 4);
}

/// The page-not-present tests in the modes where a vCPU waits for a page outside KVM_RUN (sync:
/// in the host, after its exit) and inside it (kvm-apf-kernel: in KVM, on a userfaultfd page,
/// where no signal reaches it): an update holds them all the same, waiting for that page.
#[test]
fn vcpus_waiting_for_pages_in_the_host_or_in_kvm_are_held_too() {
    for mode in [HostMode::Sync, HostMode::KvmApfKernel] {
        let r = run("tests=pnp,kvm_apf", 2, Some(PagerConfig { mode, ..PagerConfig::default() }));
        assert_atomic(&r, 2);
    }
}
