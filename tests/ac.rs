//! End-to-end tests of #AC and split-lock detection: the guest's self-tests under each boot
//! mode and each host policy, asserted on the guest's verdict and on the host's own view (its
//! MSR_TEST_CTRL record, its decisions and counters). What ends a run (a kernel split lock
//! under `sld=fatal`, the host policy `exit`) can only be tested here.

use std::process::Command;

use pvagent_abi::exit;
use pvagent_abi::report::Status;
use pvagent_host::producers::Producers;
use pvagent_host::producers::sld::SldConfig;
use pvagent_host::producers::sld::policy::{Enumeration, Policy};
use pvagent_host::{Error, RunResult};
use pvagent_tests::{guest_elf, run_stub, run_stub_with};

fn split_lock(enumeration: Enumeration, policy: Policy) -> Producers {
    Producers {
        sld: Some(SldConfig::chosen(enumeration, policy)),
        pager: None,
        released: None,
        churn: None,
        breaks: Vec::new(),
    }
}

/// Whether this machine's KVM offers bus-lock exits, asked directly rather than through the
/// host stub whose report is under test.
fn kvm_offers_bus_lock_exits() -> bool {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create a VM");
    let modes = vm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_X86_BUS_LOCK_EXIT));
    modes > 0 && modes as u32 & kvm_bindings::KVM_BUS_LOCK_DETECTION_EXIT != 0
}

/// Whether this machine's CPU detects split locks, as Linux says.
fn host_cpu_has(flag: &str) -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).expect("a flags line");
    flags.split_whitespace().any(|f| f == flag)
}

fn line<'a>(r: &'a RunResult, prefix: &str) -> &'a str {
    match r.report.lines.iter().find(|l| l.starts_with(prefix)) {
        Some(l) => l,
        None => panic!("no host line starting with {prefix:?}: {:#?}", r.report.lines),
    }
}

fn assert_passed(r: &RunResult) {
    assert!(r.passed(), "the run failed: {:?}\n{}", r.host_error, r.serial.join("\n"));
}

fn status_of(r: &RunResult, name: &str) -> (Status, String) {
    match r.test(name) {
        Some(t) => (t.status, t.reason.clone()),
        None => panic!("{name} reported nothing:\n{}", r.serial.join("\n")),
    }
}

/// Under each host policy every default #AC test passes, except the one whose premise the
/// policy removes (a split lock with detection off just runs), which says why it skipped.
#[test]
fn every_policy_runs_the_default_tests_and_the_one_it_rules_out_skips() {
    for (policy, why) in [
        (Policy::Exit, "the host's split-lock policy is exit: "),
        (Policy::DisableGlobally, "the host's split-lock policy is disable-globally: "),
    ] {
        let r = run_stub_with("tests=ac", &split_lock(Enumeration::SplitLockDetect, policy));
        assert_passed(&r);
        for t in r.tests.iter().filter(|t| t.name.starts_with("ac::")) {
            if t.name == "ac::host_spares_a_guest_with_detection_off" {
                assert!(t.status == Status::Skip && t.reason.starts_with(why), "{policy:?}: {t:?}");
            } else {
                assert_eq!(t.status, Status::Pass, "{policy:?}: {t:?}");
            }
        }
        assert_eq!(r.report.get("sld.globally_disabled"), 0, "{policy:?}: nothing switched detection off");
    }
}

#[test]
fn every_ac_selftest_passes_and_the_host_reports_its_view() {
    let r = run_stub("expect-host=stub tests=ac");
    assert_passed(&r);
    let ac: Vec<_> = r.tests.iter().filter(|t| t.name.starts_with("ac::")).collect();
    assert!(ac.len() >= 11, "{ac:#?}");
    assert!(ac.iter().all(|t| t.status == Status::Pass), "{ac:#?}");
    let signal = line(&r, "sld: signal: ");
    if kvm_offers_bus_lock_exits() {
        assert!(signal.contains("KVM bus-lock exits"), "{signal}");
        assert_eq!(r.report.get("sld.bus_lock_exits_enabled"), 1);
    } else {
        assert!(!signal.contains("KVM bus-lock exits"), "{signal}");
        assert_eq!(r.report.get("sld.bus_lock_exits_enabled"), 0);
        assert_eq!(r.report.get("sld.bus_locks"), 0, "bus locks reported without bus-lock exits");
    }
    for (flag, key) in
        [("split_lock_detect", "sld.host_split_lock_detect"), ("bus_lock_detect", "sld.host_bus_lock_detect")]
    {
        assert_eq!(r.report.get(key), u64::from(host_cpu_has(flag)), "{key}");
        let yes = if host_cpu_has(flag) { "yes" } else { "no" };
        assert!(line(&r, "sld: host CPU: ").contains(&format!("{flag} {yes}")), "{:#?}", r.report.lines);
    }
    assert!(line(&r, "sld: detection advertised").contains("inject-if-enabled"));
    assert!(line(&r, "sld: vCPU 0 MSR_TEST_CTRL: ").contains("on off on"));
    assert!(r.report.lines.iter().any(|l| l.contains("cpl 3") && l.contains("#AC injected")), "{:#?}", r.report.lines);
    assert!(r.report.get("sld.injected_split_lock") >= 5);
    // One with the guest's detection on (sld=fatal) and one with it off.
    assert_eq!(r.report.get("sld.injected_alignment_check"), 2);
    assert_eq!(r.report.get("sld.undecodable"), 0);
    assert_eq!(r.report.get("sld.trigger_before_store"), 0, "KVM retired every trigger store before the exit");
    assert_eq!(r.report.get("sld.bad_flags"), 0);
    assert_eq!(r.report.get("sld.msr_refused"), 0, "the guest only writes valid MSR_TEST_CTRL values");
    assert_eq!(r.report.get("sld.triggers"), r.report.get("sld.decided"));
}

#[test]
fn warn_turns_detection_off_for_the_task_and_back_on_at_the_switch_as_the_host_sees() {
    let r = run_stub("tests=ac::user_split_lock_warn_completes_and_detection_returns");
    assert_passed(&r);
    assert_eq!(r.report.get("sld.injected_split_lock"), 1);
    // On at boot, off at the #AC (the instruction completes), on when the task is switched out.
    let msr = line(&r, "sld: vCPU 0 MSR_TEST_CTRL: ");
    assert!(msr.starts_with("sld: vCPU 0 MSR_TEST_CTRL: 3 writes: on off on;"), "{msr}");
    assert!(msr.contains("now 0x20000000"), "{msr}");
}

#[test]
fn fatal_ends_the_user_task_and_leaves_detection_on() {
    let r = run_stub("tests=ac::user_split_lock_fatal_ends_only_that_task");
    assert_passed(&r);
    assert_eq!(r.report.get("sld.injected_split_lock"), 1);
    let msr = line(&r, "sld: vCPU 0 MSR_TEST_CTRL: ");
    assert!(msr.starts_with("sld: vCPU 0 MSR_TEST_CTRL: 1 writes: on;"), "{msr}");
    assert!(r.serial.iter().any(|l| l.contains("ended: split lock at rip") && l.contains("sld=fatal")));
}

#[test]
fn a_kernel_split_lock_under_fatal_ends_the_run_with_the_report() {
    let r = run_stub("tests=ac::kernel_split_lock_fatal_panics");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{}", r.serial.join("\n"));
    let (status, reason) = status_of(&r, "ac::kernel_split_lock_fatal_panics");
    assert_eq!(status, Status::Fail);
    assert!(reason.contains("split lock in the kernel at rip 0x") && reason.contains("sld=fatal"), "{reason}");
    assert_eq!(r.report.get("sld.injected_split_lock"), 1);
}

#[test]
fn boot_modes_come_from_the_command_line() {
    // Off: detection is never turned on, so the host sees no MSR_TEST_CTRL write at all, and a
    // split lock gets no #AC.
    let r = run_stub(
        "sld=off tests=ac::boot_state_follows_enumeration_and_command_line,ac::host_spares_a_guest_with_detection_off",
    );
    assert_passed(&r);
    assert_eq!(r.report.get("sld.test_ctrl_writes"), 0);
    assert_eq!(r.report.get("sld.guest_detection_off"), 2, "a kernel and a user split lock ran");
    assert_eq!(r.report.get("sld.injected_split_lock"), 0);
    assert!(r.serial.iter().any(|l| l.contains("sld=off")));
    // The other modes are taken as given (the self-test compares the mode with `sld=`).
    for mode in ["fatal", "ratelimit:5", "warn"] {
        let r = run_stub(&format!("sld={mode} tests=ac::boot_state_follows_enumeration_and_command_line"));
        assert_passed(&r);
        assert!(r.serial.iter().any(|l| l.contains(&format!("sld={mode};"))), "sld={mode}: {:#?}", r.serial);
        assert_eq!(r.report.get("sld.test_ctrl_writes"), 1, "sld={mode}: detection turned on once");
    }
    // Bad values are reported and the default is used.
    let r = run_stub("sld=ratelimit:0 tests=ac::boot_state_follows_enumeration_and_command_line");
    assert_passed(&r);
    assert!(r.serial.iter().any(|l| l.contains("sld=\"ratelimit:0\" ignored")), "{:#?}", r.serial);
}

#[test]
fn without_the_advertisement_the_guest_never_touches_the_msrs() {
    let r = run_stub_with("tests=ac", &split_lock(Enumeration::Absent, Policy::InjectIfEnabled));
    assert_passed(&r);
    assert!(r.serial.iter().any(|l| l.contains("split-lock detection unavailable")), "{:#?}", r.serial);
    assert_eq!(r.report.get("sld.test_ctrl_writes"), 0);
    assert_eq!(r.report.get("sld.core_caps_reads"), 0);
    assert_eq!(r.report.get("sld.msr_refused"), 0, "the guest did not even try");
    let (status, reason) = status_of(&r, "ac::user_split_lock_warn_completes_and_detection_returns");
    assert_eq!((status, reason.as_str()), (Status::Skip, "split-lock detection is not enumerated on this host"));
    // The trigger itself still works: a split lock from a guest without detection runs, and a
    // forced #AC is spurious.
    assert_eq!(status_of(&r, "ac::host_spares_a_guest_with_detection_off").0, Status::Pass);
    assert_eq!(status_of(&r, "ac::spurious_ac_is_ignored").0, Status::Pass);
    assert!(line(&r, "sld: detection not advertised").contains("inject-if-enabled"));
}

#[test]
fn core_capabilities_without_the_detection_bit_stop_the_guest_at_step_2() {
    let r = run_stub_with(
        "tests=ac::boot_state_follows_enumeration_and_command_line,ac::host_injects_only_real_split_locks",
        &split_lock(Enumeration::CoreCapabilitiesOnly, Policy::InjectIfEnabled),
    );
    assert_passed(&r);
    assert!(
        r.serial.iter().any(|l| l.contains("split-lock detection unavailable (IA32_CORE_CAPABILITIES bit 5 clear)")),
        "{:#?}",
        r.serial
    );
    // The guest read IA32_CORE_CAPABILITIES (step 1 said it exists), found bit 5 clear and never
    // touched MSR_TEST_CTRL: no write, no read, nothing refused.
    assert_eq!(r.report.get("sld.core_caps_reads"), 1);
    assert_eq!(r.report.get("sld.test_ctrl_writes"), 0);
    assert_eq!(r.report.get("sld.test_ctrl_reads"), 0);
    assert_eq!(r.report.get("sld.msr_refused"), 0);
    let (status, reason) = status_of(&r, "ac::host_injects_only_real_split_locks");
    assert_eq!((status, reason.as_str()), (Status::Skip, "split-lock detection is not enumerated on this host"));
    assert!(line(&r, "sld: detection not advertised").contains("enumeration core-capabilities-only"));
}

#[test]
fn a_kernel_split_lock_site_is_reported_once() {
    let r = run_stub("tests=ac::kernel_split_lock_warn_continues_with_detection_off_until_switch");
    assert_passed(&r);
    // Two split locks at the same kernel instruction: two #AC, one report.
    assert_eq!(r.report.get("sld.injected_split_lock"), 2);
    let reports = r.serial.iter().filter(|l| l.contains("ac: split lock in the kernel at rip")).count();
    assert_eq!(reports, 1, "{:#?}", r.serial);
}

#[test]
fn policy_inject_if_enabled_spares_a_guest_that_did_not_ask() {
    let r = run_stub("tests=ac::host_spares_a_guest_with_detection_off");
    assert_passed(&r);
    assert_eq!(r.report.get("sld.guest_detection_off"), 2);
    assert_eq!(r.report.get("sld.globally_disabled"), 0);
    assert!(
        r.report.lines.iter().any(|l| l.contains("ran (split lock, guest detection off: policy inject-if-enabled)"))
    );
}

#[test]
fn policy_exit_stops_the_run_with_the_vcpu_and_rip() {
    let r = run_stub_with(
        "tests=ac::host_policy_exit_stops_the_run",
        &split_lock(Enumeration::SplitLockDetect, Policy::Exit),
    );
    match &r.host_error {
        Some(Error::SplitLockExit { vcpu: 0, insn, address, size: 4, .. }) => {
            assert_eq!(insn, "lock add dword ptr [rdi],1");
            assert!(address % 64 + 4 > 64, "the operand at {address:#x} crosses a cache line");
        }
        other => panic!("expected the split-lock exit, got {other:?}"),
    }
    assert_eq!(r.exit_status(), 2);
    assert_eq!(r.test("ac::host_policy_exit_stops_the_run"), None, "the guest never got to report");
}

#[test]
fn policy_disable_globally_switches_detection_off_for_the_vm_once() {
    let r = run_stub_with(
        "tests=ac::host_policy_disable_globally",
        &split_lock(Enumeration::SplitLockDetect, Policy::DisableGlobally),
    );
    assert_passed(&r);
    assert_eq!(r.report.get("sld.globally_disabled"), 1);
    assert_eq!(r.report.get("sld.disabled_globally"), 2);
    assert_eq!(r.report.get("sld.injected_split_lock"), 0);
    assert_eq!(r.report.get("sld.injected_alignment_check"), 1, "a task's alignment check after the disable");
    let notes =
        r.report.lines.iter().filter(|l| l.contains("policy disable-globally: split-lock detection switched off"));
    assert_eq!(notes.count(), 1, "logged once: {:#?}", r.report.lines);
    assert!(line(&r, "sld: detection advertised").contains("(detection now off for this VM)"));
}

#[test]
fn the_binary_takes_the_split_lock_options() {
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let elf = guest_elf().to_str().expect("utf-8 path");
    let run = |args: &[&str]| Command::new(&host).arg(elf).args(args).output().expect("run the host stub");
    let out = run(&["--sld-policy", "disable-globally", "--cmdline", "tests=ac::host_policy_disable_globally"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("host: sld: policy disable-globally: "), "{stdout}");
    // Without the producer the trigger is absent and its tests say so.
    let out = run(&["--no-sld", "--cmdline", "tests=ac::spurious_ac_is_ignored"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("host: sld:"), "{stdout}");
    assert!(stdout.contains("SKIP ac::spurious_ac_is_ignored: needs the host stub's split-lock trigger"), "{stdout}");
    let out = run(&["--sld-policy", "sometimes"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The policy tests are named only to run under their policy: under another one they skip
/// with the policy they need and the one they met, and the listing declares that need.
#[test]
fn the_policy_tests_skip_under_another_policy_and_list_the_policy_they_need() {
    use pvagent_abi::report::Need;
    let exit_test = "ac::host_policy_exit_stops_the_run";
    let disable_test = "ac::host_policy_disable_globally";
    for (name, needed, policy, met) in [
        (exit_test, "exit", Policy::InjectIfEnabled, "inject-if-enabled"),
        (exit_test, "exit", Policy::DisableGlobally, "disable-globally"),
        (disable_test, "disable-globally", Policy::InjectIfEnabled, "inject-if-enabled"),
        (disable_test, "disable-globally", Policy::Exit, "exit"),
    ] {
        let r = run_stub_with(&format!("tests={name}"), &split_lock(Enumeration::SplitLockDetect, policy));
        assert_passed(&r);
        let reason =
            format!("needs the host's split-lock policy {needed} (--sld-policy {needed}); this host's is {met}");
        assert_eq!(status_of(&r, name), (Status::Skip, reason), "{policy:?}");
    }
    let listing = run_stub("list");
    let needs = |name: &str| listing.listed.iter().find(|t| t.name == name).expect("listed").needs;
    assert!(needs(exit_test).contains(Need::SldExitPolicy));
    assert!(needs(disable_test).contains(Need::SldDisableGloballyPolicy));
}
