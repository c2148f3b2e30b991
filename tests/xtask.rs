//! End-to-end tests of `cargo xtask` as a user meets it: `--help` for every command, and the
//! exit status that tells a failed test (1) from a host-side or usage error (2).

use std::process::Output;

fn xtask(args: &[&str]) -> Output {
    pvagent_tests::require_kvm();
    let mut cmd = xtask::guest::cargo();
    cmd.args(["run", "--quiet", "--package", "xtask", "--"]).args(args);
    cmd.output().expect("run cargo xtask")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_command_has_help_that_states_the_exit_statuses() {
    for command in [&[][..], &["run"], &["qemu"], &["test"], &["bench"]] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let out = xtask(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("Exit status: 0 when everything passed; 1 when a test failed"), "{args:?}");
    }
}

#[test]
fn a_failed_self_test_exits_1_and_names_the_test_even_quiet() {
    let out = xtask(&["run", "--tests", "harness::deliberate_failure", "--", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    // The host stub prints the failure although its console is quiet, and xtask's last line
    // names the test and its reason.
    assert!(all.contains("selftest: FAIL harness::deliberate_failure: deliberately failing"), "{all}");
    let last = all.lines().last().unwrap_or("");
    assert!(last.starts_with("xtask: error: the guest reported failure") && last.contains("6 * 7 is 42"), "{all}");
}

#[test]
fn host_side_and_usage_errors_exit_2() {
    let out = xtask(&["run", "--tests", "arch", "--", "--mem", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pvagent-host: error: guest memory of 1 MiB"), "{}", text(&out));
    for usage in [&["run", "--no-such-option"][..], &["no-such-command"], &[]] {
        let out = xtask(usage);
        assert_eq!(out.status.code(), Some(2), "{usage:?}: {}", text(&out));
    }
}
