//! End-to-end tests of the foundation: the harness's verdict, both hosts reporting the same
//! tests, and the host stub's handling of bad input and crashing guests.

use std::process::Command;
use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::port::{self, BenchInject, BenchLoop};
use pvagent_abi::report::{Need, Status};
use pvagent_host::error::ImageProblem;
use pvagent_host::producers::Producers;
use pvagent_host::{Error, RunResult, Vm};
use pvagent_tests::{
    Code32, config, guest_elf, require_kvm, run_qemu, run_stub, run_stub_configured, temp_file, tiny_elf,
};

#[test]
fn a_deliberately_failing_selftest_fails_the_whole_run() {
    let r = run_stub("tests=harness::deliberate_failure");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    assert_eq!(r.exit_status(), 1);
    assert!(!r.passed());
    let t = r.test("harness::deliberate_failure").expect("the test reported a line");
    assert_eq!(t.status, Status::Fail);
    assert!(t.reason.contains("6 * 7 is 42"), "{}", t.reason);
    assert_eq!(r.summary, Some((0, 1, 0)));
}

#[test]
fn a_panic_in_a_selftest_is_reported_and_fails_the_run() {
    let r = run_stub("tests=harness::deliberate_panic");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE));
    let t = r.test("harness::deliberate_panic").expect("the panicking test reported a line");
    assert_eq!(t.status, Status::Fail);
    assert!(t.reason.contains("panicked at") && t.reason.contains("deliberate panic"), "{}", t.reason);
    assert_eq!(r.summary, Some((0, 1, 0)));
}

#[test]
fn an_unexpected_kernel_exception_is_reported_and_fails_the_run() {
    let r = run_stub("tests=harness::deliberate_exception");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE));
    let t = r.test("harness::deliberate_exception").expect("the faulting test reported a line");
    assert_eq!(t.status, Status::Fail);
    assert!(t.reason.contains("unexpected exception #PF") && t.reason.contains("address 0x8"), "{}", t.reason);
}

#[test]
fn a_filter_that_selects_nothing_is_bad_usage_not_a_vacuous_pass() {
    let r = run_stub("tests=no_such_test");
    assert_eq!(r.guest_exit_code, Some(exit::NO_TEST_SELECTED));
    assert!(!r.passed());
    assert_eq!(r.exit_status(), 2, "the user's mistake, not a failed test");
    assert!(r.serial.iter().any(|l| l.contains("no test matches tests=no_such_test")));
    // Under QEMU the same code.
    let run = run_qemu("tests=no_such_test");
    assert_eq!(run.guest_code, Some(exit::NO_TEST_SELECTED), "{}", run.outcome.text());
}

#[test]
fn the_console_port_takes_a_line_per_exit_and_the_uart_prints_the_same_lines() {
    let tests = "tests=arch::hypercall_round_trip";
    let port = run_stub(tests);
    let mut c = config(guest_elf(), tests);
    c.pv_console = false;
    let uart = run_stub_configured(c, &Producers::defaults());
    assert!(port.passed() && uart.passed(), "{:#?}\n{:#?}", port.serial, uart.serial);
    let (lines, records) = (port.serial.len() as u64, port.report.get("serial.pv_records"));
    assert!(records > 0 && records <= lines, "{records} console records for {lines} lines");
    assert_eq!(uart.report.get("serial.pv_records"), 0, "the port was used without being offered");
    // The same lines either way, but for the feature bits the guest was shown.
    let text = |r: &RunResult| r.serial.iter().filter(|l| !l.contains("features")).cloned().collect::<Vec<_>>();
    assert_eq!(text(&port), text(&uart));
    // Everything else the two runs do is the same: through the UART every byte is an exit.
    let bytes: u64 = port.serial.iter().map(|l| l.len() as u64 + 1).sum();
    let (port_exits, uart_exits) = (port.report.get("vcpu0.exits"), uart.report.get("vcpu0.exits"));
    assert!(uart_exits >= port_exits + bytes - records, "{uart_exits} exits with the UART, {port_exits} with the port");
}

#[test]
fn a_run_that_ends_in_a_fatal_error_still_reports_the_dropped_lines() {
    let r = run_stub("tests=harness::a_busy_console_counts_a_dropped_line,harness::deliberate_panic");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    let report = "console: 1 line(s) from trap handlers dropped: the console was busy";
    assert!(r.serial.iter().any(|l| l == report), "{:#?}", r.serial);
    assert_eq!(r.summary, Some((1, 1, 0)));
}

#[test]
fn a_line_a_handler_could_not_print_is_counted_and_the_count_reported() {
    let r = run_stub("tests=harness::a_busy_console_counts_a_dropped_line");
    assert!(r.passed(), "{:#?}", r.serial);
    let report = "console: 1 line(s) from trap handlers dropped: the console was busy";
    assert!(r.serial.iter().any(|l| l == report), "{:#?}", r.serial);
    assert!(!r.serial.iter().any(|l| l.contains("the busy console cannot take")), "the dropped line was printed");
}

#[test]
fn qemu_reports_the_same_tests_and_skips_only_with_a_reason() {
    let stub = run_stub("expect-host=stub");
    let qemu = run_qemu("expect-host=tcg");
    assert!(stub.passed(), "host stub run failed: {:#?}", stub.serial);
    assert!(qemu.passed(), "QEMU run failed: {}", qemu.outcome.text());
    let names = |tests: &[(Status, String, String)]| tests.iter().map(|t| t.1.clone()).collect::<Vec<_>>();
    let stub_tests: Vec<_> = stub.tests.iter().map(|t| (t.status, t.name.clone(), t.reason.clone())).collect();
    let qemu_tests: Vec<_> = qemu
        .outcome
        .output
        .iter()
        .filter_map(|l| match pvagent_abi::report::Line::parse(l) {
            Some(pvagent_abi::report::Line::Result { status, name, reason }) => {
                Some((status, name.to_string(), reason.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(names(&stub_tests), names(&qemu_tests), "both hosts run the same tests in the same order");
    // One vCPU here, the pager in ring mode: the tests that need several vCPUs or mode ve skip,
    // saying so, and on PVM the one that needs a vector shown in service (its local APIC shows
    // none inside a handler); every other one passes.
    let expected_skip = |t: &(Status, String, String)| {
        t.0 == Status::Skip
            && (t.2 == "needs two or more vCPUs online"
                || t.2 == "needs the host stub in mode ve"
                || pvagent_tests::PVM_SKIPS.contains(&t.1.as_str()))
    };
    assert!(
        stub_tests.iter().all(|t| t.0 == Status::Pass || expected_skip(t)),
        "every test passes under the host stub: {stub_tests:#?}"
    );
    for (status, name, reason) in &qemu_tests {
        assert_ne!(*status, Status::Fail, "{name} failed under QEMU: {reason}");
        if *status == Status::Skip {
            assert!(!reason.is_empty(), "{name} skipped without a reason");
        }
    }

    // The listing is the same table: every test that runs by default, in the order they run,
    // and each test QEMU skipped declares what QEMU lacks.
    let listing = run_stub("list");
    assert!(listing.passed() && listing.tests.is_empty(), "a listing runs nothing: {:#?}", listing.serial);
    let by_default: Vec<String> = listing.listed.iter().filter(|t| t.on_by_default).map(|t| t.name.clone()).collect();
    assert_eq!(by_default, names(&stub_tests), "the listing and the run");
    assert!(listing.listed.iter().any(|t| !t.on_by_default), "the on-request tests are listed too");
    for (_, name, reason) in qemu_tests.iter().filter(|t| t.0 == Status::Skip) {
        let listed = listing.listed.iter().find(|t| t.name == *name).expect("listed");
        // TCG shows no KVM leaves, so no KVM async page faults either; QEMU runs one vCPU here.
        let qemu_lacks =
            [Need::HostStub, Need::Pager, Need::SldTrigger, Need::AlignmentCheck, Need::KvmApf, Need::SeveralCpus];
        assert!(
            qemu_lacks.iter().any(|n| listed.needs.contains(*n)),
            "{name} skipped under QEMU ({reason}) needing nothing QEMU lacks"
        );
    }
}

#[test]
fn qemu_exits_with_the_failure_code_for_a_failing_selftest() {
    let run = run_qemu("tests=harness::deliberate_failure");
    assert_eq!(run.guest_code, Some(exit::FAILURE), "{}", run.outcome.text());
    assert_eq!(run.outcome.status.code(), Some(exit::qemu_status(exit::FAILURE)));
}

fn setup_error(image: &std::path::Path, mem_mib: u64) -> Error {
    require_kvm();
    let mut c = config(image, "");
    c.mem_mib = mem_mib;
    match Vm::new(c, Vec::new()) {
        Ok(_) => panic!("the host stub accepted {}", image.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_images_and_sizes_are_refused_with_clear_errors() {
    let missing = std::path::Path::new("/nonexistent/guest.elf");
    assert!(matches!(setup_error(missing, 128), Error::ReadImage { .. }));
    let garbage = temp_file("garbage.elf", b"this is not an ELF file at all, not even close");
    let e = setup_error(&garbage, 128);
    assert!(matches!(e, Error::BadImage { problem: ImageProblem::NoElfMagic, .. }), "{e}");
    let no_note = temp_file("no-note.elf", &tiny_elf(&[0xF4], false, 0));
    assert!(matches!(setup_error(&no_note, 128), Error::NoPvhEntry { .. }));
    let huge = temp_file("huge.elf", &tiny_elf(&[0xF4], true, 64 << 20));
    assert!(matches!(setup_error(&huge, 32), Error::ImageTooBig { .. }));
    assert!(matches!(setup_error(guest_elf(), 4), Error::MemorySize { .. }));
    assert!(matches!(setup_error(guest_elf(), 1 << 20), Error::MemorySize { .. }));
}

/// 32-bit code: print "X\n" on COM1, then make the CPU triple-fault (an IDT with limit 0 and
/// an invalid opcode: #UD -> #GP -> #DF -> shutdown).
const PRINT_X_THEN_TRIPLE_FAULT: &[u8] = &[
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xB0, b'X', 0xEE, // mov al, 'X'; out dx, al
    0xB0, b'\n', 0xEE, // mov al, '\n'; out dx, al
    0x0F, 0x01, 0x1D, 0x20, 0x00, 0x10, 0x00, // lidt [0x100020]
    0x0F, 0x0B, // ud2
    0xEB, 0xFE, // jmp $
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // pad to 0x20
    0, 0, 0, 0, 0, 0, // IDTR at 0x100020: limit 0, base 0
];

#[test]
fn a_triple_faulting_guest_is_reported_with_rip_and_its_last_output() {
    require_kvm();
    let image = temp_file("triple.elf", &tiny_elf(PRINT_X_THEN_TRIPLE_FAULT, true, 0));
    let r = Vm::new(config(&image, ""), Vec::new()).expect("setup").run();
    assert!(matches!(r.host_error, Some(Error::TripleFault { .. })), "{:?}", r.host_error);
    assert_eq!(r.exit_status(), 2);
    assert_eq!(r.crash_tail.as_deref(), Some(&["X".to_string()][..]));
}

#[test]
fn a_guest_that_never_exits_is_stopped_by_the_timeout() {
    require_kvm();
    let image = temp_file("spin.elf", &tiny_elf(&[0xEB, 0xFE], true, 0)); // jmp $
    let mut c = config(&image, "");
    c.timeout = Some(Duration::from_secs(1));
    let r = Vm::new(c, Vec::new()).expect("setup").run();
    assert!(matches!(r.host_error, Some(Error::Timeout { seconds: 1 })), "{:?}", r.host_error);
    // It ran until the limit (how much later it stopped depends on the machine's load).
    assert!(r.run_time >= Duration::from_secs(1), "{:?}", r.run_time);
}

#[test]
fn the_binary_reports_bad_input_in_one_line_without_a_backtrace() {
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let elf = guest_elf().to_str().expect("utf-8 path");
    for args in [
        vec!["/nonexistent/guest.elf"],
        vec![elf, "--mem", "1"],
        vec![elf, "--mem", "lots"],
        // Refused, not silently replaced by one fetcher.
        vec![elf, "--pnp-fetchers", "0"],
        vec![elf, "--pnp-mib", "5000"],
        vec![elf, "--pnp-latency", "5ms..1ms"],
        vec![elf, "--pnp-latency", "11s"],
        vec![elf, "--pnp-fail", "4096"],
        vec![elf, "--pnp-image", "/nonexistent/image"],
        vec![elf, "--no-such-option"],
        vec![],
        // At and past their types' limits.
        vec![elf, "--timeout", "18446744073709551616"],
        vec![elf, "--timeout", "-1"],
        vec![elf, "--vcpus", "0"],
        vec![elf, "--vcpus", "18446744073709551615"],
        vec![elf, "--vcpus", "18446744073709551616"],
        vec![elf, "--mem", "18446744073709551615"],
        vec![elf, "--pnp-mib", "18446744073709551615"],
        vec![elf, "--pnp-mib", "17592186044416"],
        vec![elf, "--pnp-fetchers", "18446744073709551615"],
        vec![elf, "--pnp-fail", "18446744073709551615"],
        vec![elf, "--pnp-latency", "18446744073709551615ns"],
        vec![elf, "--pnp-latency", "18446744073709551615s"],
        vec![elf, "--threads-per-core", "4294967295"],
        vec![elf, "--layout-churn", "18446744073709551616"],
    ] {
        let out = Command::new(&host).args(&args).output().expect("run the host stub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("pvagent-host: error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `--timeout` takes any whole number of seconds: 2^64 - 1 of them is a limit that never
/// comes (the watchdog once panicked adding it to the clock, and the run went on with a
/// backtrace on stderr), and so is a `--layout-churn` period of 2^64 - 1 entries.
#[test]
fn the_binary_runs_with_options_at_their_types_limits() {
    require_kvm();
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let elf = guest_elf().to_str().expect("utf-8 path");
    for limit in [["--timeout", "18446744073709551615"], ["--layout-churn", "18446744073709551615"]] {
        let mut cmd = Command::new(&host);
        cmd.args([elf, "--quiet", "--cmdline", "tests=arch::timer_ticks"]).args(limit);
        // The run's own limit never comes, so this one stops a hang (xtask kills the child).
        let out = xtask::proc::run(cmd, std::time::Duration::from_secs(120), false).expect("run the host stub");
        let text = out.text();
        assert_eq!(out.status.code(), Some(0), "{limit:?}: {text}");
        assert!(!text.contains("panicked"), "{limit:?}: {text}");
    }
}

#[test]
fn the_binary_states_every_option_s_accepted_range_in_its_help() {
    use pvagent_host::config::{MAX_MEM_MIB, MIN_MEM_MIB};
    use pvagent_host::producers::pager::config::{MAX_FETCHERS, MAX_LATENCY, MAX_REGION_MIB};
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let out = Command::new(&host).arg("--help").output().expect("run the host stub");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    // The help text of one option: from its name to the next option.
    let option = |name: &str| -> String {
        let start = help.find(&format!("--{name} ")).unwrap_or_else(|| panic!("--{name} is not in the help"));
        let rest = &help[start + 2..];
        rest[..rest.find("\n      --").unwrap_or(rest.len())].to_string()
    };
    for (name, range) in [
        ("mem", format!("{MIN_MEM_MIB}..={MAX_MEM_MIB}")),
        ("cmdline", format!("at most {} bytes", pvagent_host::memory::CMDLINE_MAX)),
        ("timeout", "0: never".to_string()),
        ("pnp-mib", format!("1..={MAX_REGION_MIB}, or 0 for no pager")),
        ("pnp-latency", format!("0..={MAX_LATENCY:?}")),
        ("pnp-fetchers", format!("1..={MAX_FETCHERS}")),
        ("pnp-fail", "below its page count".to_string()),
        ("sld-policy", "Possible values".to_string()),
        ("sld-enumeration", "Possible values".to_string()),
    ] {
        let text = option(name);
        assert!(text.contains(&range), "--{name} does not state {range:?}: {text}");
    }
}

#[test]
fn an_emulation_failure_is_reported_with_rip_and_instruction_bytes() {
    require_kvm();
    // Print "Y\n", then a software interrupt: on the PVM /dev/kvm of these machines KVM cannot
    // emulate it and ends KVM_RUN with an internal error. (On VMX KVM it is delivered through
    // the IDT instead, and with no IDT the guest triple-faults: either way the run fails with
    // the guest's last output.)
    let code = [0x66, 0xBA, 0xF8, 0x03, 0xB0, b'Y', 0xEE, 0xB0, b'\n', 0xEE, 0xCC, 0xEB, 0xFE];
    let image = temp_file("int3.elf", &tiny_elf(&code, true, 0));
    // With every producer: the pager serves only emulation failures on its own pages.
    let producers = Producers::defaults().build().expect("the producers");
    let r = Vm::new(config(&image, ""), producers).expect("setup").run();
    match &r.host_error {
        Some(Error::Emulation { rip, bytes, .. }) => {
            assert_eq!(*rip, 0x10_000a);
            assert!(bytes.starts_with(&[0xcc, 0xeb, 0xfe]), "{bytes:02x?}");
        }
        Some(Error::TripleFault { .. }) => {}
        other => panic!("expected an emulation failure or a triple fault, got {other:?}"),
    }
    assert_eq!(r.crash_tail.as_deref(), Some(&["Y".to_string()][..]));
}

/// 32-bit code: the ABI version announced, then an `out` of 0 to the benchmark injection port
/// (`BenchInject::None`) and of a page-not-present injection for page 0, an `out` of 0 to the
/// null port, an `in` from the null port, and what it read written to the exit port.
fn touch_the_bench_ports() -> Vec<u8> {
    Code32::new()
        .announce(pvagent_abi::ABI_VERSION)
        .out(port::BENCH_INJECT, BenchInject::None.encode(0, 0))
        .out(port::BENCH_INJECT, BenchInject::PageNotPresent.encode(0, 0))
        .out(port::BENCH_NULL, 0)
        .in_eax(port::BENCH_NULL)
        .exit_with_eax()
}

/// With every producer in the run (the demand pager too), nothing of the benchmark device is
/// served without it, and with it, its page-not-present kind is its own.
#[test]
fn the_benchmark_ports_are_served_only_when_asked_for() {
    require_kvm();
    let image = temp_file("bench-ports.elf", &tiny_elf(&touch_the_bench_ports(), true, 0));
    let run = |bench: bool| {
        let mut c = config(&image, "");
        c.bench = bench;
        let producers = Producers::defaults().build().expect("the producers");
        Vm::new(c, producers).expect("setup").run()
    };

    let plain = run(false);
    assert!(plain.host_error.is_none(), "{:?}", plain.host_error);
    assert_eq!(plain.guest_exit_code, Some(u32::MAX), "an unclaimed port reads all-ones");
    assert_eq!(plain.report.get("vcpu0.unclaimed_io"), 4, "{:?}", plain.report.counters);
    assert!(!plain.report.counters.keys().any(|k| k.starts_with("bench.") || k.starts_with("bare.")));

    let bench = run(true);
    assert!(bench.host_error.is_none(), "{:?}", bench.host_error);
    assert_eq!(bench.guest_exit_code, Some(BenchLoop::Stub as u32), "the null port names the loop serving it");
    assert_eq!(bench.report.get("vcpu0.unclaimed_io"), 0, "{:?}", bench.report.counters);
    assert_eq!(bench.report.get("bench.null_exits"), 2);
    // Page 0 was never touched, so no event could be delivered: counted, nothing done.
    assert_eq!(bench.report.get("bench.page_events_not_deliverable"), 1, "{:?}", bench.report.counters);
    assert_eq!(bench.report.get("pager.events_delivered"), 0);
}

/// A library user's producer stops the run with an error of its own type, and the run's
/// result keeps that value: a test gets it back by type, the exit status is a host-side
/// error's, and the results name it.
#[test]
fn a_library_users_producer_fails_the_run_with_its_own_error() {
    use pvagent_host::{ExitHandler, MsrAnswer, VcpuCtx};

    #[derive(Debug, PartialEq)]
    struct Refused {
        msr: u32,
    }
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused the write of MSR {:#x}", self.msr)
        }
    }
    impl std::error::Error for Refused {}

    /// Stops the run at the first MSR write that reaches the producers.
    struct Refuser;
    impl ExitHandler for Refuser {
        fn name(&self) -> &'static str {
            "refuser"
        }
        fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32, _value: u64) -> pvagent_host::Result<MsrAnswer> {
            Err(Error::producer(self.name(), Refused { msr: index }))
        }
    }

    require_kvm();
    let mut producers = Producers::defaults().build().expect("the default producers");
    producers.insert(0, Box::new(Refuser));
    let r = Vm::new(config(guest_elf(), "tests=arch::timer_ticks"), producers).expect("start the guest").run();
    let Some(Error::Producer { producer, source }) = &r.host_error else {
        panic!("expected the producer's own error, got {:?}", r.host_error)
    };
    assert_eq!(*producer, "refuser");
    let refused = source.downcast_ref::<Refused>().expect("the producer's own type");
    assert!(
        r.host_error.as_ref().unwrap().to_string().starts_with("refuser: refused the write of MSR "),
        "{refused:?}"
    );
    assert_eq!(r.exit_status(), 2);
    let records = pvagent_host::results::records(&r, "stub");
    let run = records.iter().find(|t| t.name == pvagent_host::results::RUN_RECORD_NAME).expect("a (run) record");
    assert!(run.failed() && run.reason.contains("refuser: refused the write of MSR"), "{run:?}");
}
