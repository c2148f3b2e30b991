//! A run's self-test results for machines: one record per test (name, suite, status, reason,
//! duration), written as JSON lines or as JUnit XML for CI systems. The binary writes them on
//! request (`--results-json`, `--results-junit`); `cargo xtask run` merges its boots' records
//! into one file of each kind.

use std::fmt::Write as _;
use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::report::Status;
use serde::{Deserialize, Serialize};

use crate::report::RunResult;

/// The record of a run that failed with no test to blame (a host-side error, a crash outside
/// any test, a guest that never reported): CI still sees a failure, under this name.
pub const RUN_RECORD_NAME: &str = "(run)";

/// One self-test's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// Which run it belongs to: `host-stub` from the binary, `host-stub-ring` and
    /// `host-stub-sync` from `cargo xtask run` (one per boot). One JUnit test suite per run.
    pub run: String,
    /// The test's name, `suite::what_it_shows`.
    pub name: String,
    /// The part of the name before the first `::`.
    pub suite: String,
    /// `pass`, `fail` or `skip`.
    pub status: String,
    /// Why it failed or was skipped; empty for a pass.
    pub reason: String,
    /// Seconds from the report line before it to its own, as the host saw the console; `null`
    /// when unknown. For a [`RUN_RECORD_NAME`] record, the part of the run's time that no
    /// test's duration covers, so that a run's durations add up to its time once.
    pub duration_s: Option<f64>,
}

impl TestRecord {
    /// Whether the record is a failure.
    pub fn failed(&self) -> bool {
        self.status == status_word(Status::Fail)
    }

    /// Whether the record is a skip.
    pub fn skipped(&self) -> bool {
        self.status == status_word(Status::Skip)
    }
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Skip => "skip",
    }
}

fn seconds(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64())
}

/// The records of `result`, labelled `run`: one per test the guest reported, and one named
/// [`RUN_RECORD_NAME`] when the run failed and no test says why.
pub fn records(result: &RunResult, run: &str) -> Vec<TestRecord> {
    let mut records: Vec<TestRecord> = result
        .tests
        .iter()
        .map(|t| TestRecord {
            run: run.to_string(),
            name: t.name.clone(),
            suite: t.name.split("::").next().unwrap_or(&t.name).to_string(),
            status: status_word(t.status).to_string(),
            reason: t.reason.clone(),
            duration_s: seconds(t.duration),
        })
        .collect();
    let blamed = records.iter().any(TestRecord::failed);
    if !result.passed() && !blamed {
        let reason = match (&result.host_error, result.guest_exit_code) {
            (Some(error), _) => format!("host-side error: {error}"),
            (None, Some(exit::NO_TEST_SELECTED)) => "the guest's tests= selects no self-test".to_string(),
            (None, Some(code)) => format!("the guest exited with code {code:#x} and no test reported a failure"),
            (None, None) => "the guest never wrote its exit code".to_string(),
        };
        let covered: f64 = records.iter().filter_map(|r| r.duration_s).sum();
        records.push(TestRecord {
            run: run.to_string(),
            name: RUN_RECORD_NAME.to_string(),
            suite: RUN_RECORD_NAME.to_string(),
            status: status_word(Status::Fail).to_string(),
            reason,
            duration_s: Some((result.run_time.as_secs_f64() - covered).max(0.0)),
        });
    }
    records
}

/// The records as JSON lines: one object per line, in order.
pub fn json_lines(records: &[TestRecord]) -> String {
    let mut out = String::new();
    for record in records {
        // A record is strings and numbers: serializing it cannot fail.
        out.push_str(&serde_json::to_string(record).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Reads JSON lines back (as [`json_lines`] writes them); the error names the bad line.
pub fn parse_json_lines(text: &str) -> Result<Vec<TestRecord>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Escapes `text` for an XML attribute value.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry other control characters at all.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The records as JUnit XML: one `<testsuite>` per run (in the order runs first appear), one
/// `<testcase>` per record, its class the run and suite, `<failure>` or `<skipped>` with the
/// reason.
pub fn junit(records: &[TestRecord]) -> String {
    let mut runs: Vec<&str> = Vec::new();
    for record in records {
        if !runs.contains(&record.run.as_str()) {
            runs.push(&record.run);
        }
    }
    let count = |records: &[&TestRecord], pick: fn(&TestRecord) -> bool| records.iter().filter(|r| pick(r)).count();
    // Folded from +0.0: `Sum` for floats starts at -0.0, which prints as "-0.000".
    let time = |records: &[&TestRecord]| records.iter().filter_map(|r| r.duration_s).fold(0.0, |sum, d| sum + d);
    let all: Vec<&TestRecord> = records.iter().collect();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "<testsuites name=\"pvagent self-tests\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        all.len(),
        count(&all, TestRecord::failed),
        count(&all, TestRecord::skipped),
        time(&all)
    );
    for run in runs {
        let cases: Vec<&TestRecord> = records.iter().filter(|r| r.run == run).collect();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            xml_escape(run),
            cases.len(),
            count(&cases, TestRecord::failed),
            count(&cases, TestRecord::skipped),
            time(&cases)
        );
        for case in cases {
            let class = xml_escape(&format!("{}.{}", case.run, case.suite));
            let _ = write!(out, "    <testcase classname=\"{class}\" name=\"{}\"", xml_escape(&case.name));
            if let Some(seconds) = case.duration_s {
                let _ = write!(out, " time=\"{seconds:.3}\"");
            }
            let element = if case.failed() {
                "failure"
            } else if case.skipped() {
                "skipped"
            } else {
                out.push_str("/>\n");
                continue;
            };
            let _ = writeln!(out, ">\n      <{element} message=\"{}\"/>\n    </testcase>", xml_escape(&case.reason));
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run: &str, name: &str, status: &str, reason: &str, duration_s: Option<f64>) -> TestRecord {
        let suite = name.split("::").next().unwrap_or(name).to_string();
        TestRecord {
            run: run.into(),
            name: name.into(),
            suite,
            status: status.into(),
            reason: reason.into(),
            duration_s,
        }
    }

    fn sample() -> Vec<TestRecord> {
        vec![
            record("ring", "arch::timer_ticks", "pass", "", Some(0.0126)),
            record("ring", "pnp::x", "fail", "got 0x1 <expected> \"0x2\" & more", Some(1.5)),
            record("sync", "pnp::y", "skip", "needs the host stub's demand pager", None),
        ]
    }

    #[test]
    fn json_lines_round_trip_one_object_per_line() {
        let text = json_lines(&sample());
        assert_eq!(text.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["name"], "arch::timer_ticks");
        assert_eq!(first["suite"], "arch");
        assert_eq!(first["status"], "pass");
        assert_eq!(first["duration_s"], 0.0126);
        assert_eq!(parse_json_lines(&text).unwrap(), sample());
        assert!(parse_json_lines("{\"name\": 1}\n").unwrap_err().starts_with("line 1:"));
    }

    #[test]
    fn junit_has_a_suite_per_run_and_escapes_reasons() {
        let xml = junit(&sample());
        assert!(xml.starts_with("<?xml version=\"1.0\""), "{xml}");
        assert!(xml.contains("<testsuites name=\"pvagent self-tests\" tests=\"3\" failures=\"1\" skipped=\"1\""));
        assert!(xml.contains("<testsuite name=\"ring\" tests=\"2\" failures=\"1\" skipped=\"0\" time=\"1.513\">"));
        assert!(xml.contains("<testsuite name=\"sync\" tests=\"1\" failures=\"0\" skipped=\"1\" time=\"0.000\">"));
        assert!(xml.contains("<testcase classname=\"ring.arch\" name=\"arch::timer_ticks\" time=\"0.013\"/>"), "{xml}");
        assert!(xml.contains("<failure message=\"got 0x1 &lt;expected&gt; &quot;0x2&quot; &amp; more\"/>"), "{xml}");
        assert!(xml.contains("<testcase classname=\"sync.pnp\" name=\"pnp::y\">\n      <skipped message="), "{xml}");
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert_eq!(xml.matches("</testsuite>").count(), 2);
    }

    #[test]
    fn a_failed_run_with_no_failed_test_gets_a_record_of_its_own() {
        use crate::handler::Report;
        use std::time::Instant;
        let now = Instant::now();
        let lines = vec![(now, "selftest: start".to_string()), (now, "selftest: PASS a::b".to_string())];
        let run = |code| {
            RunResult::new(Some(code), lines.clone(), Report::default(), None, None, Duration::ZERO, Duration::ZERO)
        };
        let passed = records(&run(pvagent_abi::exit::SUCCESS), "stub");
        assert_eq!(passed.len(), 1);
        assert_eq!((passed[0].suite.as_str(), passed[0].status.as_str()), ("a", "pass"));
        let crashed = records(&run(pvagent_abi::exit::FAILURE), "stub");
        assert_eq!(crashed.len(), 2);
        assert_eq!(crashed[1].name, RUN_RECORD_NAME);
        assert!(crashed[1].failed() && crashed[1].reason.contains("0x11"), "{:?}", crashed[1]);
        let nothing = records(&run(pvagent_abi::exit::NO_TEST_SELECTED), "stub");
        assert_eq!(nothing[1].reason, "the guest's tests= selects no self-test");
    }

    /// A run that failed with no test to blame: its record holds the time no test accounts
    /// for, so the suite's time is the run's, not the run's plus its tests'.
    #[test]
    fn a_failed_runs_record_does_not_count_its_tests_time_twice() {
        use crate::handler::Report;
        use std::time::Instant;
        let start = Instant::now();
        let lines = vec![
            (start, "selftest: start".to_string()),
            (start + Duration::from_millis(500), "selftest: PASS a::b".to_string()),
        ];
        let result = RunResult::new(
            Some(pvagent_abi::exit::FAILURE),
            lines,
            Report::default(),
            None,
            None,
            Duration::ZERO,
            Duration::from_secs(2),
        );
        let records = records(&result, "stub");
        assert_eq!(records.iter().map(|r| r.duration_s).collect::<Vec<_>>(), [Some(0.5), Some(1.5)]);
        let xml = junit(&records);
        assert!(
            xml.contains("<testsuite name=\"stub\" tests=\"2\" failures=\"1\" skipped=\"0\" time=\"2.000\">"),
            "{xml}"
        );
    }
}
