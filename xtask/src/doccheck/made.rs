//! The files a documented command makes, and what each must hold: the check reads them as their
//! readers would (a trace viewer, a CI system's JUnit reader, a script reading JSON lines), and
//! counts a results file's records against the self-test results the command reported.

use std::path::Path;

use pvagent_abi::report::Line;
use pvagent_host::results;

/// A file a documented command makes (removed before the command runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    /// A `--trace` timeline: JSON with a non-empty `traceEvents` array.
    Trace(&'static str),
    /// A `--serial-log` file: the guest's console of one boot, through its summary line.
    Console(&'static str),
    /// A `--results-json` file: one record per line, one per self-test result the command
    /// reported on its output.
    ResultsJson(&'static str),
    /// A `--results-junit` file: XML, a `<testsuites>` whose `tests` and `<testcase>`s count one
    /// per self-test result the command reported on its output.
    ResultsJunit(&'static str),
}

impl Made {
    /// The file, relative to the project root.
    pub fn path(self) -> &'static str {
        match self {
            Made::Trace(path) | Made::Console(path) | Made::ResultsJson(path) | Made::ResultsJunit(path) => path,
        }
    }

    /// Whether the file is there and holds what it must, for a command whose output lines
    /// were `output`: `Ok` says what was found, `Err` what is wrong.
    pub fn check(self, root: &Path, output: &[String]) -> Result<String, String> {
        let path = self.path();
        let text = std::fs::read_to_string(root.join(path)).map_err(|e| format!("did not write {path}: {e}"))?;
        let reported = output.iter().filter(|l| matches!(Line::parse(l), Some(Line::Result { .. }))).count();
        match self {
            Made::Trace(_) => check_trace(&text).map(|events| format!("{path}: a timeline of {events} events")),
            Made::Console(_) => check_console(&text).map(|summary| format!("{path}: {summary}")),
            Made::ResultsJson(_) => check_results_json(&text, reported).map(|()| format!("{path}: {reported} records")),
            Made::ResultsJunit(_) => {
                check_results_junit(&text, reported).map(|()| format!("{path}: {reported} test cases"))
            }
        }
        .map_err(|problem| format!("{path}: {problem}"))
    }
}

/// The number of events in a trace file, which must be at least one.
fn check_trace(text: &str) -> Result<usize, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match json["traceEvents"].as_array() {
        Some(events) if !events.is_empty() => Ok(events.len()),
        Some(_) => Err("its traceEvents array is empty".into()),
        None => Err("no traceEvents array".into()),
    }
}

/// The summary line of a console log, which must have one.
fn check_console(text: &str) -> Result<String, String> {
    text.lines()
        .find(|l| matches!(Line::parse(l), Some(Line::Summary { .. })))
        .map(|l| l.trim_start_matches(pvagent_abi::report::PREFIX).to_string())
        .ok_or_else(|| "no self-test summary line in it".to_string())
}

/// JSON lines that parse as records, `reported` of them (the run passed: no `(run)` record).
fn check_results_json(text: &str, reported: usize) -> Result<(), String> {
    let records = results::parse_json_lines(text)?;
    if reported == 0 {
        return Err("the command reported no self-test result to compare with".into());
    }
    if records.len() != reported {
        return Err(format!("{} records for the {reported} results the run reported", records.len()));
    }
    Ok(())
}

/// JUnit XML that parses, with `reported` test cases, as its root's `tests` says too.
fn check_results_junit(text: &str, reported: usize) -> Result<(), String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "testsuites" {
        return Err(format!("its root is <{}>, not <testsuites>", root.tag_name().name()));
    }
    let cases = root.descendants().filter(|n| n.has_tag_name("testcase")).count();
    let tests = root.attribute("tests").and_then(|t| t.parse::<usize>().ok());
    if reported == 0 {
        return Err("the command reported no self-test result to compare with".into());
    }
    if cases != reported || tests != Some(reported) {
        return Err(format!("{cases} test cases (tests={tests:?}) for the {reported} results the run reported"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvagent_host::results::TestRecord;

    fn records(count: usize) -> Vec<TestRecord> {
        (0..count)
            .map(|i| TestRecord {
                run: "host-stub-ring".into(),
                name: format!("a::t{i}"),
                suite: "a".into(),
                status: "pass".into(),
                reason: String::new(),
                duration_s: Some(0.1),
            })
            .collect()
    }

    #[test]
    fn results_files_must_parse_and_count_one_record_per_reported_result() {
        let json = results::json_lines(&records(3));
        assert_eq!(check_results_json(&json, 3), Ok(()));
        assert!(check_results_json(&json, 2).unwrap_err().starts_with("3 records for the 2 results"));
        assert!(check_results_json("{\"name\": 1}\n", 1).unwrap_err().starts_with("line 1:"));
        let xml = results::junit(&records(3));
        assert_eq!(check_results_junit(&xml, 3), Ok(()));
        assert!(check_results_junit(&xml, 4).is_err());
        assert!(check_results_junit(&xml.replace("</testsuites>", ""), 3).unwrap_err().starts_with("not XML"));
        assert!(check_results_junit("", 0).is_err(), "an empty file is no results file");
    }

    #[test]
    fn a_console_log_must_hold_the_summary() {
        assert_eq!(
            check_console("boot\nselftest: 3 passed, 0 failed, 1 skipped\n"),
            Ok("3 passed, 0 failed, 1 skipped".into())
        );
        assert!(check_console("boot\nselftest: PASS a::b\n").is_err());
    }

    #[test]
    fn a_trace_must_hold_events() {
        assert_eq!(check_trace("{\"traceEvents\":[{\"ph\":\"X\"}]}"), Ok(1));
        assert!(check_trace("{\"traceEvents\":[]}").is_err());
        assert!(check_trace("[").is_err());
    }

    #[test]
    fn the_records_are_counted_against_the_reported_results() {
        let root = crate::project_root().join("target").join("xtask-unit");
        std::fs::create_dir_all(&root).expect("create target/xtask-unit");
        let name = format!("made-{}.jsonl", std::process::id());
        std::fs::write(root.join(&name), results::json_lines(&records(2))).expect("write");
        let path: &'static str = Box::leak(name.into_boxed_str());
        let output: Vec<String> = ["selftest: start", "selftest: PASS a::t0", "noise", "selftest: SKIP a::t1: why"]
            .map(String::from)
            .to_vec();
        assert_eq!(Made::ResultsJson(path).check(&root, &output), Ok(format!("{path}: 2 records")));
        assert!(Made::ResultsJson(path).check(&root, &output[..2]).is_err());
        assert!(Made::ResultsJunit("no-such-file.xml").check(&root, &output).unwrap_err().contains("did not write"));
    }
}
