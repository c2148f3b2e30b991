//! End-to-end tests of the hostile host where the guest's self-tests cannot arm the breach
//! themselves or cannot report it afterwards: the answers at boot, broken with the host stub's
//! `--break RULE` before the guest's first instruction (MSR_TEST_CTRL, IA32_CORE_CAPABILITIES,
//! MSR_VE_INFO), a breach that leaves a vCPU's MSR_TEST_CTRL unused for the rest of the boot
//! (bit 29 dropped at a task switch), and a breach that stops the run (`VeSuspend` answered with
//! no outcome). Each
//! runs the host stub binary and checks its exit status, the guest's `host broke <rule>` line
//! and what the guest did instead of crashing.

use std::process::{Command, Output};

use pvagent_tests::{guest_elf, require_kvm};

/// Runs the host stub binary on the guest with `args`.
fn host_stub(args: &[&str]) -> Output {
    require_kvm();
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let elf = guest_elf().to_str().expect("utf-8 path");
    Command::new(&host).arg(elf).args(args).output().expect("run the host stub")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The checks a boot-time breach must leave passing: the kernel's belief about split-lock
/// detection is the MSR's, and its #VE registration is what the host holds.
const BOOT_CHECKS: &str =
    "tests=hostile::ac::detection_is_what_the_kernel_believes,hostile::ve::registration_is_what_the_host_holds";

/// Boots with `--break rule` (and `extra`), expects both checks to pass, the guest to report
/// the rule broken `times` times, and the host to say it broke it; returns the output.
fn boot_with_break(rule: &str, extra: &[&str], times: u32) -> String {
    let mut args = vec!["--break", rule, "--cmdline", BOOT_CHECKS];
    args.extend_from_slice(extra);
    let out = host_stub(&args);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "--break {rule}: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("selftest: 2 passed, 0 failed, 0 skipped"), "{text}");
    assert!(text.contains(&format!("host broke {rule}: {times} time(s), first (")), "the guest's line: {text}");
    assert!(text.contains(&format!("broke {rule} on vCPU 0 on purpose")), "the host's line: {text}");
    text
}

#[test]
fn test_ctrl_that_faults_leaves_detection_off_and_said_so() {
    let text = boot_with_break("test-ctrl-faults", &[], 1);
    assert!(text.contains("ac: MSR_TEST_CTRL on vCPU 0 (value or error code 0x0): host broke test-ctrl-faults; split-lock detection is OFF on this vCPU"), "{text}");
}

/// Each vCPU finds it on its own (the host drops bit 29 once per vCPU).
#[test]
fn test_ctrl_that_drops_bit_29_is_found_on_every_vcpu() {
    let text = boot_with_break("test-ctrl-not-kept", &["--vcpus", "2"], 2);
    assert!(text.contains("host broke test-ctrl-not-kept; split-lock detection is OFF on this vCPU"), "{text}");
    assert!(text.contains("broke test-ctrl-not-kept on vCPU 1 on purpose"), "{text}");
}

/// Armed at run time, for the write a task switch makes to turn detection back on after a
/// split lock under `warn`: the guest reads that write back too (its self-test checks the count
/// and its belief; it leaves the vCPU's MSR unused, so it runs alone here).
#[test]
fn test_ctrl_that_drops_bit_29_at_a_switch_is_found() {
    let name = "hostile::ac::test_ctrl_dropped_at_a_switch_is_found";
    let out = host_stub(&["--cmdline", &format!("tests={name}")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("selftest: PASS {name}")), "{text}");
    assert!(text.contains("host broke test-ctrl-not-kept: 1 time(s), first (0x0, 0x0)"), "{text}");
    assert!(text.contains("broke test-ctrl-not-kept on vCPU 0 on purpose: WRMSR 0x33 of 0x20000000"), "{text}");
}

#[test]
fn core_capabilities_with_garbage_is_reported_and_bit_5_followed() {
    let text = boot_with_break("core-capabilities-garbage", &[], 1);
    assert!(
        text.contains("host broke core-capabilities-garbage: 1 time(s), first (0xffffffffffffffff, 0x0)"),
        "{text}"
    );
    assert!(text.contains("ac: split-lock detection available"), "{text}");
}

#[test]
fn core_capabilities_that_faults_ends_the_enumeration() {
    let text = boot_with_break("core-capabilities-faults", &[], 1);
    assert!(text.contains("ac: split-lock detection unavailable"), "{text}");
}

#[test]
fn a_refused_ve_registration_leaves_the_vcpu_without_ve() {
    let text = boot_with_break("ve-info-msr-faults", &[], 1);
    assert!(text.contains("host broke ve-info-msr-faults): no #VE on this vCPU"), "{text}");
}

/// The guest's self-test arms the breach and suspends: the answer is no outcome, and the guest
/// stops the run (status 1) with a report naming the rule, the breach line included.
#[test]
fn a_suspend_answered_with_no_outcome_stops_the_run() {
    let name = "hostile::ve::suspend_with_a_bad_outcome_stops_the_run";
    let out = host_stub(&["--pnp-mode", "ve", "--cmdline", &format!("tests={name}")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("selftest: FAIL {name}: ve: VeSuspend(")), "{text}");
    assert!(text.contains("not an outcome (host broke ve-suspend-bad-outcome)"), "{text}");
    assert!(text.contains("host broke ve-suspend-bad-outcome: 1 time(s), first (0x100000000, "), "{text}");
}

/// A name that is no rule, and a rule no producer of the run can break, are one-line errors
/// with status 2, before the guest runs.
#[test]
fn break_refuses_unknown_rules_and_rules_the_run_cannot_break() {
    for (args, message) in [
        (&["--break", "test-ctrl"][..], "no rule of the ABI is named \"test-ctrl\""),
        (
            &["--break", "test-ctrl-faults", "--no-sld"][..],
            "--break test-ctrl-faults: no producer of this run breaks it",
        ),
        (
            &["--break", "test-ctrl-faults", "--sld-enumeration", "absent"][..],
            "--break test-ctrl-faults: MSR_TEST_CTRL is not offered",
        ),
    ] {
        let out = host_stub(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stdout(&out).contains("selftest: start"), "{args:?}: the guest ran");
    }
}
