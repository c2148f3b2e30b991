//! Real memory-fault exits (seed 004): the guest touches, at CPL 3, a guest_memfd region whose
//! memory the host released, KVM ends KVM_RUN with `KVM_EXIT_MEMORY_FAULT`, and the host stub's
//! handler repairs the region; a handler that repairs nothing is stopped by the run loop's
//! repeat guard instead of looping forever.

use pvagent_host::producers::Producers;
use pvagent_host::producers::released::ReleasedConfig;
use pvagent_host::{Error, RunResult};
use pvagent_tests::run_stub_with;

const TEST: &str = "memslot::a_cpl3_access_to_released_memory_is_repaired_by_the_host";

fn run(repair: bool) -> RunResult {
    let producers =
        Producers { released: Some(ReleasedConfig { repair, ..ReleasedConfig::default() }), ..Producers::defaults() };
    run_stub_with(&format!("tests={TEST}"), &producers)
}

#[test]
fn a_cpl3_access_to_released_memory_exits_with_a_memory_fault_and_is_repaired() {
    let r = run(true);
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    assert_eq!(r.tests.len(), 1, "the one test ran: {:?}", r.tests);
    let c = &r.report;
    assert_eq!(c.get("host.memory_fault_info_cap"), 1, "KVM_CAP_MEMORY_FAULT_INFO is reported on these machines");
    // The CPL 3 load faulted once, as KVM_EXIT_MEMORY_FAULT (the form this machine gives for a
    // guest_memfd slot without memory: docs/design.md), and the retried load found the new memory;
    // the kernel's read after it did not fault.
    assert_eq!(
        (c.get("released.memory_fault_exits"), c.get("released.decoded_efaults"), c.get("released.mmio_accesses")),
        (1, 0, 0),
        "one KVM_EXIT_MEMORY_FAULT and no other form; {:?}",
        r.report.lines
    );
    assert_eq!(c.get("released.repaired"), 1);
    let line = r
        .report
        .lines
        .iter()
        .find(|l| l.starts_with("released: last KVM_EXIT_MEMORY_FAULT"))
        .expect("the fault's line");
    let gpa = ReleasedConfig::default().gpa + 0x100;
    assert!(line.contains(&format!("[{:#x}, +0x1000)", gpa & !0xFFF)), "the exit named the page loaded from: {line}");
    assert!(line.contains("shared memory"), "not private: {line}");
}

#[test]
fn a_handler_that_repairs_nothing_is_stopped_by_the_repeat_guard() {
    let r = run(false);
    assert!(!r.passed());
    let error = r.host_error.as_ref().expect("a host error");
    let Error::NoProgress(stuck) = error else { panic!("not the repeat guard's error: {error}") };
    assert_eq!(stuck.repeats, pvagent_host::memory_fault::MAX_REPEATS);
    assert!(error.to_string().contains("KVM_EXIT_MEMORY_FAULT"), "{error}");
    assert_eq!(
        r.report.get("released.memory_fault_exits"),
        u64::from(pvagent_host::memory_fault::MAX_REPEATS) - 1,
        "every repeat but the last reached the handler"
    );
}
