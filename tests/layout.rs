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
    run_churning(cmdline, vcpus, ChurnConfig { ram_every: Some(EVERY), hold: true }, pager)
}

fn run_churning(cmdline: &str, vcpus: usize, churn: ChurnConfig, pager: Option<PagerConfig>) -> RunResult {
    let mut c = config(guest_elf(), cmdline);
    c.vcpus = vcpus;
    run_stub_configured(c, &Producers { churn: Some(churn), pager, ..Producers::defaults() })
}

fn assert_atomic(r: &RunResult, vcpus: usize) {
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    let c = &r.report;
    let (splits, merges) = (c.get("churn.ram_splits"), c.get("churn.ram_merges"));
    assert!(splits >= 1 && merges >= 1, "RAM was split and merged again: {splits} splits, {merges} merges");
    let others = c.get("churn.other_splits") + c.get("churn.other_merges");
    assert!(c.get("churn.other_splits") >= 1, "the demand pager's region was split too");
    let region =
        c.get("churn.region_splits") + c.get("churn.region_merges") + c.get("churn.hot_added") + c.get("churn.moved");
    assert_eq!(c.get("layout.held_updates"), splits + merges + others + region, "every update held the vCPUs");
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

/// The page-not-present tests in every pager mode, while guest RAM and the demand pager's own
/// region (its fetches in flight) are split and merged in turn: vCPUs wait for pages outside
/// KVM_RUN (sync, and a fault no event can be delivered for: in the host, after its exit) and
/// inside it (kvm-apf-kernel: in KVM, on a userfaultfd page, where no signal reaches it), and an
/// update holds them all the same, waiting for that page.
#[test]
fn vcpus_waiting_for_pages_in_the_host_or_in_kvm_are_held_too() {
    for mode in [HostMode::Ring, HostMode::Sync, HostMode::KvmApf, HostMode::KvmApfKernel] {
        let r = run("tests=pnp,kvm_apf", 2, Some(PagerConfig { mode, ..PagerConfig::default() }));
        assert_atomic(&r, 2);
    }
}

fn run_memslot_tests(hold: bool, vcpus: usize) -> RunResult {
    run_churning("tests=memslot", vcpus, ChurnConfig { ram_every: None, hold }, Some(PagerConfig::default()))
}

const MEMSLOT_TESTS: [&str; 2] = [
    "memslot::code_and_data_stay_right_while_the_host_splits_and_merges_their_memslot",
    "memslot::a_hot_added_region_is_found_mapped_used_and_moved",
];

fn assert_memslot_tests_passed(r: &RunResult) {
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    let passed: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(passed, MEMSLOT_TESTS, "the self-tests that ran (and passed)");
    let c = &r.report;
    // The guest asked for four splits and four merges, one hot-add and two moves.
    assert_eq!((c.get("churn.region_splits"), c.get("churn.region_merges")), (4, 4));
    assert_eq!((c.get("churn.hot_added"), c.get("churn.moved")), (1, 2));
}

/// Workers on three vCPUs execute code from the churn region and write and check data in it
/// while the host splits and merges its memslot, each change holding every vCPU: the values
/// stay right, no exit hits a change, the dirty log lists every page written; a region
/// hot-added is found, mapped and used, and keeps its data when moved and moved back.
#[test]
fn the_memslot_self_tests_pass_with_every_change_holding_the_vcpus() {
    let r = run_memslot_tests(true, 4);
    assert_memslot_tests_passed(&r);
    let c = &r.report;
    assert_eq!(c.get("layout.held_updates"), 11, "every change held the vCPUs");
    assert_eq!((c.get("layout.unheld_updates"), c.get("layout.exits_update_window")), (0, 0));
}

/// The diagnostic mode: the same changes hold no vCPU, and each keeps its window open until a
/// worker hit it, so the race is reproduced by construction, in every window; the host
/// classifies each such exit as the window's (none as the guest's own error), completes it or
/// runs the instruction again, and the guest's values stay right.
#[test]
fn the_diagnostic_mode_reproduces_the_race_in_every_window_and_classifies_each_exit() {
    let r = run_memslot_tests(false, 4);
    assert_memslot_tests_passed(&r);
    let c = &r.report;
    assert_eq!((c.get("layout.held_updates"), c.get("layout.unheld_updates")), (0, 11));
    // Splits and merges have a window (moves far away and the hot-add have none): all eight hit.
    assert_eq!(c.get("churn.windows_missed"), 0, "{:?}", r.report.lines);
    assert!(c.get("layout.exits_update_window") >= 8, "at least one exit per window: {:?}", r.report.lines);
    assert_eq!(c.get("layout.exits_guest_error"), 0, "no exit taken for the guest's own error");
    assert_eq!(c.get("layout.exits_absent_page"), 0);
}
