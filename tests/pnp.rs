//! End-to-end tests of the page-not-present protocol: the guest's self-tests in both of the
//! host's modes, with the host's token accounting, and the ways a run must stop (a leaked
//! token, a broken ring, a failed page nobody can be told about).

use pvagent_abi::exit;
use pvagent_abi::pnp::HostMode;
use pvagent_abi::report::Status;
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_host::producers::pager::error::PagerError;
use pvagent_host::producers::pager::tokens::RingViolation;
use pvagent_host::{Error, RunResult};
use pvagent_tests::{
    Code32, PNP_RING_ONLY, PVM_SKIPS, config, require_kvm, run_stub_configured, run_stub_with, temp_file, tiny_elf,
};

fn pager(mode: HostMode, fail_pages: &[u64]) -> Producers {
    Producers {
        sld: None,
        pager: Some(PagerConfig { mode, fail_pages: fail_pages.to_vec(), ..PagerConfig::default() }),
        released: None,
        churn: None,
        breaks: Vec::new(),
    }
}

fn pnp_tests(r: &RunResult) -> Vec<(Status, String, String)> {
    r.tests
        .iter()
        .filter(|t| t.name.starts_with("pnp::"))
        .map(|t| (t.status, t.name.clone(), t.reason.clone()))
        .collect()
}

#[test]
fn ring_mode_passes_every_test_and_accounts_for_every_token() {
    let r = run_stub_with("tests=pnp", &pager(HostMode::Ring, &[]));
    let tests = pnp_tests(&r);
    // A deadline report names only a wait that lasted past the deadline (its own tests' readers
    // aside): none early, whatever the machine's speed.
    assert_eq!(pvagent_tests::early_deadline_reports(&r), Vec::<&String>::new());
    assert!(r.passed(), "{:#?}\n{:?}", tests, r.host_error);
    assert!(tests.len() >= 12, "{tests:#?}");
    assert!(tests.iter().all(|t| t.0 == Status::Pass || PVM_SKIPS.contains(&t.1.as_str())), "{tests:#?}");
    let c = &r.report;
    assert!(c.get("pager.events_delivered") > 0);
    assert_eq!(c.get("pager.events_delivered"), c.get("pager.resolved_retry") + c.get("pager.resolved_failed"));
    assert_eq!(c.get("pager.outstanding"), 0);
    assert!(c.get("pager.resolved_failed") >= 1, "the failed-page test resolved a token as failed");
    assert!(c.get("pager.resolved_before_event") >= 1, "the early-resolution test resolved before its event");
    // The guest drains its ring at every event (MSR_VECTORS bit 16): a resolution posted before
    // its event was delivered comes with no interrupt, and only such a one.
    let quiet = c.get("pager.resolutions_without_interrupt");
    assert!(quiet >= 1 && quiet <= c.get("pager.resolved_before_event"), "{quiet} resolutions without an interrupt");
    // The tests that force a waiting path fetch with no latency under AfterEventTaken: each of
    // their fetches is done before its event can be taken, so the host must have held it back.
    assert!(c.get("pager.fetches_held_back") >= 5, "fetches held back: {}", c.get("pager.fetches_held_back"));
    assert!(c.get("pager.decoded_efaults") >= 1, "CPL 3 accesses reached the host (on PVM as a bare EFAULT)");
    assert!(r.report.lines.iter().any(|l| l == "pager: tokens outstanding at exit: 0"), "{:#?}", r.report.lines);
    // The self-tests set their own latencies: the exit line says so, not only the configured one.
    let configured = format!("pager: latency {} configured, set by the guest ", PagerConfig::default().latency);
    assert!(r.report.lines.iter().any(|l| l.starts_with(&configured)), "{:#?}", r.report.lines);
}

#[test]
fn sync_mode_passes_with_the_vcpu_waiting_for_each_page() {
    let r = run_stub_with("tests=pnp", &pager(HostMode::Sync, &[]));
    let tests = pnp_tests(&r);
    assert!(r.passed(), "{:#?}\n{:?}", tests, r.host_error);
    for (status, name, reason) in &tests {
        match status {
            Status::Pass => {}
            Status::Skip => assert!(
                PNP_RING_ONLY.contains(&name.as_str()) || PVM_SKIPS.contains(&name.as_str()),
                "{name}: {reason}"
            ),
            Status::Fail => panic!("{name}: {reason}"),
        }
    }
    let c = &r.report;
    assert!(c.get("pager.sync_waits") > 10);
    assert_eq!(c.get("pager.outstanding"), 0);
    // Some tests switch to ring mode for a while (the workload compares both): the report says
    // so, and which mode delivered the events, rather than crediting sync mode with them.
    assert!(c.get("pager.mode_changes") >= 2, "{:#?}", c.lines);
    let lines = &c.lines;
    assert!(lines.iter().any(|l| l.contains("sync mode as configured, switched by the guest")), "{lines:#?}");
    let ring = format!("pager: in ring mode: {} events delivered", c.get("pager.events_delivered"));
    assert!(lines.iter().any(|l| l.starts_with(&ring)), "{lines:#?}");
    let sync_waits = c.get("pager.sync_waits") - c.get("pager.sync_waits_in_ring_mode");
    assert!(lines.iter().any(|l| *l == format!("pager: in sync mode: {sync_waits} synchronous waits")), "{lines:#?}");
}

/// On the PVM /dev/kvm these tests run on, a LOCKed read-modify-write at CPL 0 to an absent
/// page is an emulation failure once its load has delivered an event: the pager makes the page
/// present (a synchronous wait), and the instruction runs again, once.
#[test]
fn a_locked_add_kvm_cannot_emulate_is_served_by_the_pager() {
    let r = run_stub_with("tests=pnp::locked_add_to_an_absent_page_adds_once", &pager(HostMode::Ring, &[]));
    assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
    let c = &r.report;
    assert_eq!(c.get("pager.unemulated_accesses"), 1, "{:?}", c.counters);
    assert_eq!((c.get("pager.sync_waits"), c.get("pager.events_delivered")), (1, 1));
    assert_eq!(c.get("pager.outstanding"), 0);
}

#[test]
fn a_leaked_token_fails_the_run() {
    let r = run_stub_with("tests=pnp::deliberately_leak_a_token", &pager(HostMode::Ring, &[]));
    // The guest held the page and never released it: its token is out and its fetch never ran.
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::LeakedTokens { outstanding: 1, fetching: 1 }))),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
}

#[test]
fn a_ring_tail_beyond_the_head_stops_the_guest_with_a_report() {
    let r = run_stub_with("tests=pnp::deliberately_corrupt_the_ring_tail", &pager(HostMode::Ring, &[]));
    // Found on the vCPU thread or on a fetcher thread (whichever reads the tail first): the
    // same typed value either way.
    assert!(
        matches!(
            r.host_error,
            Some(Error::Pager(PagerError::Ring {
                vcpu: 0,
                violation: RingViolation::TailBeyondHead { tail: 1000, .. }
            }))
        ),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
    assert_eq!(r.guest_exit_code, None, "the guest was stopped before it could finish");
}

#[test]
fn a_failed_page_no_event_can_report_stops_the_guest() {
    // In sync mode no event can carry "failed": the host must stop the guest and say why.
    let r = run_stub_with("tests=pnp::touch_the_first_page", &pager(HostMode::Sync, &[0]));
    let region = PagerConfig::default().region_gpa;
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::FailedDuringSyncWait { gpa })) if gpa >> 12 == region >> 12),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
}

#[test]
fn a_failed_page_touched_again_where_no_event_can_go_stops_the_run_naming_it() {
    // Seed 001 with no fault into the guest (docs/abi.md says why): a task's touch fails the
    // page and ends the task; the runner's touch again with interrupts off can get no event, so
    // the host stops the run and names the page.
    let r = run_stub_with("tests=pnp::touch_a_failed_page_again_with_interrupts_off", &pager(HostMode::Ring, &[0]));
    let region = PagerConfig::default().region_gpa;
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::FailedPageUndeliverable { gpa })) if gpa >> 12 == region >> 12),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
    assert_eq!(r.guest_exit_code, None, "the guest was stopped before it could finish");
    assert_eq!(r.report.get("pager.resolved_failed"), 1, "the first touch's resolution");
}

#[test]
fn a_failed_page_in_ring_mode_ends_the_task_that_touched_it() {
    // The self-test runner itself touches the failing page: it is the task that ends (and, as
    // the runner, that fails the run), while the host carries on and accounts for the token.
    let r = run_stub_with("tests=pnp::touch_the_first_page", &pager(HostMode::Ring, &[0]));
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE));
    let t = r.test("pnp::touch_the_first_page").expect("a report line");
    assert!(t.reason.contains("page failed (token"), "{}", t.reason);
    assert_eq!(r.report.get("pager.resolved_failed"), 1);
    assert_eq!(r.report.get("pager.outstanding"), 0);
}

#[test]
fn a_failed_page_in_ve_mode_ends_the_task_that_touched_it() {
    // The runner touches the failing page with interrupts on: its #VE parks it (it waits in the
    // HLT loop, alone) on a VePark token, whose resolution says "failed": the runner ends, as on
    // the ring, and the run fails naming it.
    let r = run_stub_with("tests=pnp::touch_the_first_page", &pager(HostMode::Ve, &[0]));
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE));
    let t = r.test("pnp::touch_the_first_page").expect("a report line");
    assert!(t.reason.contains("page failed (token"), "{}", t.reason);
    assert_eq!(r.report.get("pager.ve_delivered"), 1);
    assert_eq!(r.report.get("pager.outstanding"), 0);
}

#[test]
fn a_failed_page_under_interrupts_off_stops_the_run_naming_it() {
    // With interrupts off the #VE suspends; a failed page there has no task to end (the context
    // may hold a lock): the guest stops the run with a report naming the page.
    let r = run_stub_with("tests=ve::touch_the_first_page_with_interrupts_off", &pager(HostMode::Ve, &[0]));
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    let region = PagerConfig::default().region_gpa;
    let fatal = r.serial.iter().find(|l| l.starts_with("fatal: page")).expect("a fatal report");
    assert!(fatal.contains(&format!("page {region:#x} failed under a context that cannot be ended")), "{fatal}");
    assert!(fatal.contains("interrupts off"), "{fatal}");
    assert_eq!(r.report.get("pager.ve_suspends"), 1);
}

/// Where the tiny images below put the demand-paged region: below 4 GiB, so that 32-bit code
/// with paging off reaches it.
const LOW_REGION: u64 = 0x8000_0000;
/// Their ring (of one entry) and, a page above, their event area, in RAM the host zeroed.
const RING_GPA: u64 = 0x20_0000;
/// Their ring's `tail`.
const TAIL_GPA: u32 = (RING_GPA + pvagent_abi::pnp::ring_tail_offset(1)) as u32;

/// The pager (its region at [`LOW_REGION`]) and a tiny image that announces its version,
/// registers the protocol, then runs `then`; with the benchmark device if `bench`.
fn run_tiny_registered(name: &str, bench: bool, then: impl FnOnce(Code32) -> Vec<u8>) -> RunResult {
    use pvagent_abi::pnp as abi;
    require_kvm();
    let code = then(
        Code32::new()
            .announce(pvagent_abi::ABI_VERSION)
            .wrmsr(abi::MSR_VECTORS, 0x5251)
            .wrmsr(abi::MSR_RING, RING_GPA | abi::MSR_ENABLE)
            .wrmsr(abi::MSR_DATA, (RING_GPA + 0x1000) | abi::MSR_ENABLE),
    );
    let image = temp_file(name, &tiny_elf(&code, true, 0));
    let mut c = config(&image, "");
    c.bench = bench;
    let producers = Producers {
        sld: None,
        pager: Some(PagerConfig { region_gpa: LOW_REGION, region_mib: 2, ..PagerConfig::default() }),
        released: None,
        churn: None,
        breaks: Vec::new(),
    };
    run_stub_configured(c, &producers)
}

/// Whether the run ended with the ring violation the tiny images commit: a `tail` of 1000.
fn is_tail_beyond_head(error: &Option<Error>) -> bool {
    matches!(
        error,
        Some(Error::Pager(PagerError::Ring { vcpu: 0, violation: RingViolation::TailBeyondHead { tail: 1000, .. } }))
    )
}

/// A benchmark injection that finds the ring broken stops the run with the same typed error as
/// any other path that finds it, and counts nothing it did not do; one that finds no event
/// deliverable (interrupts off) is a plain outcome, and the run goes on.
#[test]
fn a_ring_broken_before_a_benchmark_injection_stops_the_run() {
    use pvagent_abi::port::{BENCH_INJECT, BenchInject};
    let inject = BenchInject::PageNotPresent.encode(0, 0);
    let r = run_tiny_registered("bench-broken-ring.elf", true, |code| {
        // Page 0 made present: interrupts are off, so the access waits synchronously.
        code.load(LOW_REGION as u32)
            // Not deliverable (interrupts off): nothing happens.
            .out(BENCH_INJECT, inject)
            // A tail beyond the head, then an injection the vCPU could take.
            .store(TAIL_GPA, 1000)
            .sti()
            .out(BENCH_INJECT, inject)
            .exit(exit::SUCCESS)
    });
    assert!(is_tail_beyond_head(&r.host_error), "{:?}\n{:?}", r.host_error, r.report.counters);
    assert_eq!(r.guest_exit_code, None, "the guest ran on");
    let c = &r.report;
    assert_eq!(c.get("bench.page_events_not_deliverable"), 1, "{:?}", c.counters);
    assert_eq!(c.get("pager.sync_waits"), 1);
    for counter in ["pager.events_delivered", "pager.resolved_retry", "pager.resolved_before_event", "bench.injected"] {
        assert_eq!(c.get(counter), 0, "{counter}: nothing was delivered or resolved");
    }
}

/// `PnpStats` reads the guest's `tail` to count outstanding tokens: one the host refuses stops
/// the run there, as it does on every other path, rather than answering a status.
#[test]
fn pnp_stats_with_a_broken_ring_stops_the_run() {
    use pvagent_abi::pnp::HostCounter;
    let r = run_tiny_registered("stats-broken-ring.elf", false, |code| {
        code.store(TAIL_GPA, 1000)
            .hypercall(0x30_0000, pvagent_abi::hypercall::Nr::PnpStats as u32, HostCounter::Outstanding as u32)
            .exit_with_eax()
    });
    assert!(is_tail_beyond_head(&r.host_error), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, None, "the guest read a status and ran on");
}

/// A `tail` written just before the guest stops is checked at the end of the run like any
/// other: the run fails with the violation.
#[test]
fn a_bad_tail_written_just_before_the_guest_stops_is_reported() {
    let r = run_tiny_registered("tail-at-exit.elf", false, |code| code.store(TAIL_GPA, 1000).exit(exit::SUCCESS));
    assert_eq!(r.guest_exit_code, Some(exit::SUCCESS));
    assert!(is_tail_beyond_head(&r.host_error), "{:?}", r.host_error);
    assert_eq!(r.exit_status(), 2);
}

/// Only a host without the pager or `pnp=off` may skip the page-not-present tests, each saying
/// which; a registration the guest or host refused, which nobody asked for, fails them with
/// the refusal as the reason.
#[test]
fn a_refused_registration_fails_and_only_a_missing_pager_or_pnp_off_skips() {
    let refused = run_stub_with("tests=pnp pnp-ring=3", &pager(HostMode::Ring, &[]));
    assert_eq!(refused.guest_exit_code, Some(exit::FAILURE), "{:#?}", refused.serial);
    let tests = pnp_tests(&refused);
    assert!(tests.len() >= 12, "{tests:#?}");
    for (status, name, reason) in &tests {
        assert_eq!(*status, Status::Fail, "{name}: {reason}");
        assert_eq!(reason, "registering the page-not-present protocol at boot failed: BadSize(3)", "{name}");
    }

    let off = run_stub_with("tests=pnp pnp=off", &pager(HostMode::Ring, &[]));
    assert!(off.passed(), "{:#?}", off.serial);
    for (status, name, reason) in pnp_tests(&off) {
        assert_eq!(status, Status::Skip, "{name}");
        assert_eq!(reason, "pnp=off on the guest's command line: the protocol is not registered", "{name}");
    }

    let none = run_stub_with(
        "tests=pnp",
        &Producers { sld: None, pager: None, released: None, churn: None, breaks: Vec::new() },
    );
    assert!(none.passed(), "{:#?}", none.serial);
    for (status, name, reason) in pnp_tests(&none) {
        assert_eq!((status, reason.as_str()), (Status::Skip, "needs the host stub's demand pager"), "{name}");
    }
}

/// A ring of one entry is a valid registration with one token: the test that needs two tasks
/// waiting at once says so and skips, and every other page-not-present test passes.
#[test]
fn a_ring_of_one_entry_skips_only_the_test_that_needs_two_tokens() {
    for mode in [HostMode::Ring, HostMode::Sync] {
        let r = run_stub_with("tests=pnp pnp-ring=1", &pager(mode, &[]));
        let tests = pnp_tests(&r);
        assert!(r.passed(), "{mode:?}: {tests:#?}\n{:?}", r.host_error);
        for (status, name, reason) in &tests {
            match name.as_str() {
                "pnp::two_tasks_on_one_absent_page_each_get_a_token" => {
                    assert_eq!(*status, Status::Skip, "{mode:?}: {reason}");
                    assert!(reason.contains("at least 2 entries"), "{reason}");
                }
                name if mode == HostMode::Sync && PNP_RING_ONLY.contains(&name) => {
                    assert_eq!(*status, Status::Skip, "{reason}")
                }
                name if PVM_SKIPS.contains(&name) => assert_ne!(*status, Status::Fail, "{reason}"),
                _ => assert_eq!(*status, Status::Pass, "{mode:?} {name}: {reason}"),
            }
        }
    }
}
