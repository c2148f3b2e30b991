//! End-to-end tests of `cargo xtask` as a user meets it: `--help` for every command, the exit
//! status that tells a failed test (1) from a host-side or usage error (2), and results files
//! that hold this run's results and say what did not run.

use std::process::Output;

use pvagent_host::results::{self, RUN_RECORD_NAME};
use pvagent_tests::temp_path;

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
    for command in [&[][..], &["run"], &["qemu"], &["test"], &["bench"], &["budgets"]] {
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

#[test]
fn a_filter_that_selects_no_test_is_bad_usage() {
    let out = xtask(&["run", "--tests", "no_such_test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let last = text(&out).lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("xtask: error: ") && last.contains("tests= selects no self-test"), "{last}");
}

/// Options xtask would pass on to the wrong effect are refused before anything runs: a results
/// file after `--` would replace the one xtask merges every boot's into, and `--list` runs no
/// configuration that host options could change.
#[test]
fn options_that_cannot_work_as_asked_are_usage_errors() {
    let json = temp_path("refused.jsonl");
    let out = xtask(&["run", "--tests", "arch", "--results-json", path(&json), "--", "--results-json", "x.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--results-json after `--` is refused"), "{}", text(&out));
    assert!(!json.exists(), "nothing ran, nothing was written");
    let out = xtask(&["run", "--list", "--", "--sld-policy", "exit"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("'--list' cannot be used with"), "{}", text(&out));
}

/// The host stub refuses an option before it writes any result: the results files say so, for
/// this run alone (an earlier run's results, written by the same command, do not stand in), and
/// the boot the plan never reached is recorded as not run.
#[test]
fn a_boot_that_wrote_no_results_and_one_never_reached_are_in_the_results() {
    let earlier = temp_path("earlier.jsonl");
    let out = xtask(&["run", "--tests", "arch::timer_ticks", "--results-json", path(&earlier)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (json, junit) = (temp_path("bogus.jsonl"), temp_path("bogus.xml"));
    let out = xtask(&["run", "--results-json", path(&json), "--results-junit", path(&junit), "--", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let records = results::parse_json_lines(&std::fs::read_to_string(&json).expect("the JSON results")).unwrap();
    let summary: Vec<(&str, &str, &str)> =
        records.iter().map(|r| (r.run.as_str(), r.name.as_str(), r.status.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("host-stub-ring", RUN_RECORD_NAME, "fail"),
            ("host-stub-sync", RUN_RECORD_NAME, "skip"),
            ("host-stub-kvm-apf", RUN_RECORD_NAME, "skip"),
            ("host-stub-kvm-apf-kernel", RUN_RECORD_NAME, "skip"),
            ("host-stub-ve", RUN_RECORD_NAME, "skip"),
            ("host-stub-memslots", RUN_RECORD_NAME, "skip")
        ],
        "{records:#?}"
    );
    assert!(records[0].reason.contains("'--bogus'") && records[0].reason.ends_with("it wrote no results"));
    for r in &records[1..] {
        assert_eq!(r.reason, "not run: boot 1 (host-stub-ring) failed before it");
    }
    let xml = std::fs::read_to_string(&junit).expect("the JUnit results");
    assert!(xml.contains("tests=\"6\" failures=\"1\" skipped=\"5\""), "{xml}");
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}
