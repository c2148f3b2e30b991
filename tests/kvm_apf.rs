//! End-to-end tests of KVM's async page fault ABI: the guest's driver against the host stub's
//! own host side (`kvm-apf`) and against KVM's (`kvm-apf-kernel`), the same sequence of events
//! in both, what happens instead of a "failed" result, the run's time limit while the vCPU waits
//! inside KVM, and the driver on stock QEMU/KVM.

use std::time::Duration;

use pvagent_abi::pnp::HostMode;
use pvagent_abi::report::Status;
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::{ConfigError, PagerConfig};
use pvagent_host::producers::pager::error::PagerError;
use pvagent_host::{Error, RunResult};
use pvagent_tests::{PNP_RING_ONLY, PVM_SKIPS, config, guest_elf, run_qemu_kvm, run_stub_configured, run_stub_with};

fn pager(mode: HostMode, fail_pages: &[u64]) -> Producers {
    Producers {
        sld: None,
        pager: Some(PagerConfig { mode, fail_pages: fail_pages.to_vec(), ..PagerConfig::default() }),
        released: None,
        churn: None,
        breaks: Vec::new(),
    }
}

/// Every test passes, but those named in `skips`, which must skip.
fn passes_but(r: &RunResult, skips: &[&str]) {
    // The host's counters too: a count a test disputes (synchronous waits, say) is in them.
    assert!(r.passed(), "{:#?}\n{:?}\n{:?}", r.tests, r.host_error, r.report.counters);
    assert!(r.tests.iter().any(|t| t.name.starts_with("kvm_apf::")), "the driver's tests ran");
    for t in &r.tests {
        let expected = if skips.contains(&t.name.as_str()) { Status::Skip } else { Status::Pass };
        assert_eq!(t.status, expected, "{}: {}", t.name, t.reason);
    }
}

/// The guest's own count of "page not present" #PFs, from its accounting line.
fn guest_page_not_present(r: &RunResult) -> u64 {
    let line = r.serial.iter().find_map(|l| l.strip_prefix("kvm_apf: guest: ")).expect("the driver's accounting line");
    line.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a count first")
}

#[test]
fn the_host_stubs_kvm_apf_serves_every_test_and_accounts_for_every_token() {
    let r = run_stub_with("tests=pnp,kvm_apf", &pager(HostMode::KvmApf, &[]));
    passes_but(&r, &[PNP_RING_ONLY, PVM_SKIPS].concat());
    // A deadline report names only a wait that lasted past the deadline (its own tests' readers
    // aside): none early, whatever the machine's speed.
    assert_eq!(pvagent_tests::early_deadline_reports(&r), Vec::<&String>::new());
    let c = &r.report;
    assert!(c.get("pager.kvm_apf_not_present") > 0, "{:?}", c.counters);
    assert_eq!(c.get("pager.kvm_apf_not_present"), guest_page_not_present(&r), "every #PF injected was taken");
    // Every page ready and wake-all was acknowledged; the guest enabled four times (at boot,
    // and again in three tests).
    assert_eq!(c.get("pager.kvm_apf_acks"), c.get("pager.kvm_apf_page_ready") + c.get("pager.kvm_apf_wake_alls"));
    assert_eq!(c.get("pager.kvm_apf_wake_alls"), 4, "one per enabling");
    assert_eq!(c.get("pager.kvm_apf_ready_before_not_present"), 1, "the forced wake-before-wait");
    assert_eq!(c.get("pager.events_delivered"), c.get("pager.resolved_retry"));
    assert_eq!(c.get("pager.outstanding"), 0);
    assert_eq!(c.get("pager.kvm_apf_forgotten"), 1, "the token out when the guest turned the ABI off");
    // In whatever form this KVM gives them: PVM an MMIO exit at CPL 0 and a bare EFAULT at
    // CPL 3, VMX and SVM KVM_EXIT_MEMORY_FAULT.
    let access_exits = ["decoded_efaults", "mmio_accesses", "memory_fault_exits", "unemulated_accesses"]
        .iter()
        .map(|k| c.get(&format!("pager.{k}")))
        .sum::<u64>();
    assert!(access_exits >= 1, "accesses reached the host: {:?}", c.counters);
}

#[test]
fn kvms_own_async_page_faults_serve_the_same_tests() {
    let r = run_stub_with("tests=pnp,kvm_apf", &pager(HostMode::KvmApfKernel, &[]));
    let also = [
        "pnp::workload_ring_vs_sync",
        // KVM decides there whether a CPL 3 access is in MOV SS's shadow, and PVM's KVM does not see it.
        "pnp::user_mov_ss_shadow_access_takes_the_sync_path",
        "kvm_apf::page_ready_before_page_not_present_does_not_park",
        "kvm_apf::turning_it_off_wakes_every_waiter",
    ];
    passes_but(&r, &[PNP_RING_ONLY, PVM_SKIPS, &also].concat());
    let c = &r.report;
    // KVM delivered: the host stub injected nothing, and saw KVM's worker fault on the pages.
    assert_eq!((c.get("pager.kvm_apf_not_present"), c.get("pager.kvm_apf_page_ready")), (0, 0));
    assert!(c.get("pager.events_delivered") > 0 && guest_page_not_present(&r) > 0, "{:?}", c.counters);
    // CPL 0 accesses waited inside KVM: on PVM here the vCPU thread in the fault (a synchronous
    // wait); on VMX, with interrupts on, KVM halts the vCPU while its worker faults on the page
    // (a worker's fault the guest took no #PF for). With interrupts off both wait synchronously.
    let worker_faults_without_event = c.get("pager.events_delivered").saturating_sub(guest_page_not_present(&r));
    assert!(
        c.get("pager.sync_waits") + worker_faults_without_event > 0,
        "CPL 0 accesses waited inside KVM: {:?}",
        c.counters
    );
    assert_eq!(c.get("pager.outstanding"), 0);
}

/// The one forced sequence of `kvm_apf::events_in_order`, as the guest saw it.
fn events_in_order(mode: HostMode) -> String {
    let r = run_stub_with("tests=kvm_apf::events_in_order", &pager(mode, &[]));
    assert!(r.passed(), "{mode:?}: {:#?}\n{:?}", r.serial, r.host_error);
    let line = r.serial.iter().find_map(|l| l.strip_prefix("kvm_apf: events in order: "));
    line.unwrap_or_else(|| panic!("{mode:?}: no sequence printed: {:#?}", r.serial)).to_string()
}

#[test]
fn the_host_stub_and_kvm_give_the_guest_the_same_events_in_the_same_order() {
    let by_host_stub = events_in_order(HostMode::KvmApf);
    let by_kvm = events_in_order(HostMode::KvmApfKernel);
    assert_eq!(by_host_stub, by_kvm);
    assert!(by_kvm.contains("park") && by_kvm.contains("halt") && by_kvm.contains("wake-all"), "{by_kvm}");
}

/// KVM's ABI has no "failed": the task is told "page ready", retries, and the host, with
/// nothing left to tell the guest, stops the run.
#[test]
fn a_failed_page_is_reported_as_ready_and_its_retry_stops_the_run() {
    let r = run_stub_with("tests=kvm_apf::touch_the_first_page_from_a_user_task", &pager(HostMode::KvmApf, &[0]));
    let region = PagerConfig::default().region_gpa;
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::FailedPageKvmCannotReport { gpa })) if gpa >> 12 == region >> 12),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
    let c = &r.report;
    assert_eq!(c.get("pager.resolved_failed"), 1, "the fetch failed");
    assert_eq!(c.get("pager.kvm_apf_not_present"), 1, "{:?}", c.counters);
    assert_eq!(c.get("pager.kvm_apf_page_ready"), 1, "the failure went out as page ready");
    assert_eq!(c.get("pager.kvm_apf_acks"), 2, "the guest took it (and the boot's wake-all)");
}

#[test]
fn failing_pages_are_refused_where_kvm_serves_the_abi() {
    match pager(HostMode::KvmApfKernel, &[0]).build() {
        Err(Error::Pager(PagerError::Config(ConfigError::FailingPagesUnderKvm))) => {}
        other => panic!("{:?}", other.map(|p| p.len())),
    }
}

/// A vCPU waiting inside KVM on a userfaultfd fault takes no signal; at the run's time limit the
/// pager lets the fault go on, and the run ends at its limit, not when the page would come.
#[test]
fn the_time_limit_holds_while_the_vcpu_waits_inside_kvm() {
    // The limit must come while the vCPU waits on the page, after the boot and the test reached
    // the access (a fraction of a second) and before the page comes (10 s after it). A run whose
    // limit came first, on a machine loaded enough to take 3 s to get there, did not take the
    // path: it is run again with a longer limit, still short of the page.
    for (attempt, seconds) in [3u64, 6].into_iter().enumerate() {
        let mut c = config(guest_elf(), "tests=kvm_apf::wait_in_the_kernel_for_a_slow_page");
        c.timeout = Some(Duration::from_secs(seconds));
        let r = run_stub_configured(c, &pager(HostMode::KvmApfKernel, &[]));
        assert!(matches!(r.host_error, Some(Error::Timeout { seconds: s }) if s == seconds), "{:?}", r.host_error);
        // The vCPU thread was waiting inside KVM on the page when the limit came, and the
        // limit's unregistering released it: without this the test could pass with a limit that
        // came before the access.
        let released = r.report.get("pager.vcpu_waits_released_at_time_limit");
        if released == 0
            && attempt == 0
            && r.report.get("pager.fetching") == 0
            && r.report.get("pager.pages_fetched") == 0
        {
            eprintln!("the limit of {seconds} s came before the access (a loaded machine): again with a longer one");
            continue;
        }
        assert_eq!(released, 1, "{:?}", r.report.counters);
        assert!(!r.report.lines.iter().any(|l| l.contains("unregistering the region failed")), "{:?}", r.report.lines);
        // The page comes 10 s after the access (the guest set that latency): ending before is
        // the time limit's doing. This bound only turns a hang of 10 s into a failure.
        assert!(r.run_time < Duration::from_secs(seconds + 6), "the run took {:?}", r.run_time);
        return;
    }
}

/// On stock QEMU/KVM the driver enables KVM's ABI (KVM reads the MSRs back) and KVM answers
/// with its wake-all (`kvm_apf::registration_follows_the_abi` checks both).
#[test]
fn the_driver_works_with_qemu_and_kvm() {
    let run = run_qemu_kvm("expect-host=kvm tests=arch::host_is_identified,kvm_apf::registration_follows_the_abi");
    assert!(run.passed(), "{}", run.outcome.text());
    let lines = &run.outcome.output;
    assert!(lines.iter().any(|l| l == "selftest: PASS kvm_apf::registration_follows_the_abi"), "{lines:#?}");
}
