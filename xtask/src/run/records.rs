//! The results of each boot of `cargo xtask run`, for `--results-json` and `--results-junit`:
//! the records the host stub wrote, and a `(run)` record wherever they do not tell the whole
//! story. A boot that failed with no failed test to blame (the host stub refused an option, was
//! killed at xtask's deadline, died of a signal, wrote no results) gets a failing `(run)` record
//! with the reason; a boot the plan never reached, because one before it failed, gets a skipped
//! `(run)` record saying so. Each boot writes to a file of this run's own, removed first, so
//! no record of an earlier run can stand in for a boot that wrote none.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use pvagent_host::results::{self, RUN_RECORD_NAME, TestRecord};

use crate::proc::Ended;

/// A `(run)` record of boot `run` with this status and reason.
fn run_record(run: &str, status: &str, reason: String) -> TestRecord {
    TestRecord {
        run: run.to_string(),
        name: RUN_RECORD_NAME.to_string(),
        suite: RUN_RECORD_NAME.to_string(),
        status: status.to_string(),
        reason,
        duration_s: None,
    }
}

/// Why a boot that ended so did not pass, as a `(run)` record says it; `None` for a boot
/// that passed.
fn failure_reason(ended: &Ended, host_error: Option<&str>) -> Option<String> {
    match ended {
        Ended::Killed { after, .. } => Some(format!(
            "the host stub was still running after {} s, xtask's deadline for a boot, and was killed",
            after.as_secs()
        )),
        Ended::Exited(outcome) => match (outcome.status.code(), outcome.status.signal()) {
            (Some(0), _) => None,
            (Some(1), _) => Some("the guest reported failure, and no test's record says which".to_string()),
            (Some(code), _) => Some(match host_error {
                Some(line) => format!("the host stub failed (exit status {code}): {line}"),
                None => format!("the host stub failed (exit status {code})"),
            }),
            (None, Some(signal)) => Some(format!("the host stub died of signal {signal}")),
            (None, None) => Some(format!("the host stub ended with {}", outcome.status)),
        },
    }
}

/// The records of one boot, labelled `run`: those the host stub wrote to `path`, and a failing
/// `(run)` record when the boot failed and none of them is a failure, or when it wrote none.
pub(super) fn of_boot(run: &str, ended: &Ended, host_error: Option<&str>, path: &Path) -> Vec<TestRecord> {
    let mut records = match std::fs::read_to_string(path) {
        Ok(text) => match results::parse_json_lines(&text) {
            Ok(records) => records,
            Err(e) => vec![run_record(
                run,
                "fail",
                format!("the host stub's results file {} does not parse: {e}", path.display()),
            )],
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => vec![run_record(run, "fail", format!("cannot read the results file {}: {e}", path.display()))],
    };
    for record in &mut records {
        record.run = run.to_string();
    }
    let failed = failure_reason(ended, host_error);
    let blamed = records.iter().any(TestRecord::failed);
    match failed {
        Some(reason) if !blamed => {
            let written = if records.is_empty() { "; it wrote no results" } else { "" };
            records.push(run_record(run, "fail", format!("{reason}{written}")));
        }
        None if records.is_empty() => {
            records.push(run_record(run, "fail", "the host stub exited 0 but wrote no results".to_string()))
        }
        _ => {}
    }
    records
}

/// The failing `(run)` record of a boot whose host stub could not be started, for `reason`.
pub(super) fn not_started(run: &str, reason: &str) -> TestRecord {
    run_record(run, "fail", format!("the host stub could not be started: {reason}"))
}

/// The skipped `(run)` record of a boot the plan never reached, because boot `failed` (its
/// number and label) failed before it.
pub(super) fn not_run(run: &str, failed: (usize, &str)) -> TestRecord {
    run_record(run, "skip", format!("not run: boot {} ({}) failed before it", failed.0, failed.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::Outcome;
    use std::process::ExitStatus;
    use std::time::Duration;

    fn exited(raw_wait_status: i32) -> Ended {
        Ended::Exited(Outcome {
            status: ExitStatus::from_raw(raw_wait_status),
            output: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }

    /// A results file of this test's own, holding `text` (or none).
    fn file(name: &str, text: Option<&str>) -> std::path::PathBuf {
        let dir = crate::project_root().join("target").join("xtask-unit");
        std::fs::create_dir_all(&dir).expect("create target/xtask-unit");
        let path = dir.join(format!("{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        if let Some(text) = text {
            std::fs::write(&path, text).expect("write the results file");
        }
        path
    }

    /// The wait status of a process killed by SIGSEGV (signal 11).
    const SIGSEGV_WAIT_STATUS: i32 = 11;

    const PASS: &str = r#"{"run":"host-stub","name":"a::b","suite":"a","status":"pass","reason":"","duration_s":0.5}"#;
    const FAIL: &str =
        r#"{"run":"host-stub","name":"a::c","suite":"a","status":"fail","reason":"no","duration_s":0.5}"#;

    #[test]
    fn a_passing_boots_records_are_its_own_relabelled() {
        let path = file("pass", Some(&format!("{PASS}\n")));
        let records = of_boot("host-stub-ring", &exited(0), None, &path);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].run.as_str(), records[0].name.as_str()), ("host-stub-ring", "a::b"));
    }

    /// The host stub refused an option and wrote nothing: the boot's failure is recorded with
    /// the host stub's own message, not left out.
    #[test]
    fn a_boot_that_wrote_no_results_is_recorded_with_the_reason() {
        let path = file("missing", None);
        let records = of_boot("host-stub-ring", &exited(2 << 8), Some("unexpected argument '--bogus' found"), &path);
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].failed() && records[0].name == RUN_RECORD_NAME);
        assert_eq!(
            records[0].reason,
            "the host stub failed (exit status 2): unexpected argument '--bogus' found; it wrote no results"
        );
        let records = of_boot("host-stub-ring", &exited(0), None, &path);
        assert!(records[0].failed() && records[0].reason.contains("wrote no results"), "{records:?}");
    }

    /// Killed at xtask's deadline, or dead of a signal: the host stub had truncated its file
    /// and never wrote it; the boot is a failure all the same.
    #[test]
    fn a_killed_or_crashed_host_stub_is_a_failed_boot() {
        let path = file("truncated", Some(""));
        let killed = Ended::Killed { output: Vec::new(), after: Duration::from_secs(310) };
        let records = of_boot("host-stub-ring", &killed, None, &path);
        assert!(records[0].failed() && records[0].reason.contains("after 310 s"), "{records:?}");
        let records = of_boot("host-stub-ring", &exited(SIGSEGV_WAIT_STATUS), None, &path);
        assert!(records[0].failed() && records[0].reason.starts_with("the host stub died of signal 11"), "{records:?}");
        // Results up to the crash are kept, and the run's record follows them.
        let path = file("partial", Some(&format!("{PASS}\n")));
        let records = of_boot("host-stub-ring", &exited(SIGSEGV_WAIT_STATUS), None, &path);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].reason, "the host stub died of signal 11");
    }

    /// A failed test already says why the boot failed: no `(run)` record beside it.
    #[test]
    fn a_failed_test_needs_no_run_record() {
        let path = file("failed", Some(&format!("{PASS}\n{FAIL}\n")));
        let records = of_boot("host-stub-ring", &exited(1 << 8), None, &path);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.name != RUN_RECORD_NAME));
    }

    #[test]
    fn a_boot_never_reached_is_a_skipped_run_record() {
        let record = not_run("host-stub-sync", (1, "host-stub-ring"));
        assert!(record.skipped() && record.name == RUN_RECORD_NAME && record.run == "host-stub-sync");
        assert_eq!(record.reason, "not run: boot 1 (host-stub-ring) failed before it");
    }
}
