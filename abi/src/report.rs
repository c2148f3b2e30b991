//! The self-test report format on the console: one line per test and a summary line.
//!
//! ```text
//! selftest: PASS arch::page_fault_reports_cr2
//! selftest: FAIL pnp::ring_wakes_task: woke task 3, expected task 4
//! selftest: SKIP pnp::sync_path: needs the host stub's demand pager
//! selftest: 12 passed, 1 failed, 3 skipped
//! ```
//!
//! The run's verdict is the exit code ([`crate::exit`]); these lines say which test did what.
//! The guest writes them with [`Line`]'s `Display`; hosts read them back with [`Line::parse`].

use core::fmt;

/// Prefix of every report line.
pub const PREFIX: &str = "selftest: ";

/// How one test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The test passed.
    Pass,
    /// The test failed; a reason follows.
    Fail,
    /// The test did not run; a reason follows.
    Skip,
}

impl Status {
    /// The word on the report line.
    pub const fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One report line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A test's result.
    Result {
        /// How it ended.
        status: Status,
        /// Its name, `module::what_it_shows` (no spaces).
        name: &'a str,
        /// Why it failed or was skipped; empty for a pass.
        reason: &'a str,
    },
    /// The final tally.
    Summary {
        /// Tests that passed.
        passed: u32,
        /// Tests that failed, plus one for a run that ended early or selected nothing.
        failed: u32,
        /// Tests that were skipped.
        skipped: u32,
    },
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Result { status, name, reason: "" } => {
                write!(f, "{PREFIX}{} {name}", status.word())
            }
            Line::Result { status, name, reason } => {
                write!(f, "{PREFIX}{} {name}: {reason}", status.word())
            }
            Line::Summary { passed, failed, skipped } => {
                write!(f, "{PREFIX}{passed} passed, {failed} failed, {skipped} skipped")
            }
        }
    }
}

impl<'a> Line<'a> {
    /// Reads a report line back; `None` for any other console line.
    pub fn parse(line: &'a str) -> Option<Line<'a>> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        for status in [Status::Pass, Status::Fail, Status::Skip] {
            if let Some(after) = rest.strip_prefix(status.word()).and_then(|r| r.strip_prefix(' ')) {
                let (name, reason) = match after.split_once(": ") {
                    Some((name, reason)) => (name, reason),
                    None => (after, ""),
                };
                if name.is_empty() || name.contains(' ') {
                    return None;
                }
                return Some(Line::Result { status, name, reason });
            }
        }
        let mut counts = rest.split(", ");
        let mut count =
            |word: &str| -> Option<u32> { counts.next()?.strip_suffix(word)?.strip_suffix(' ')?.parse().ok() };
        let (passed, failed, skipped) = (count("passed")?, count("failed")?, count("skipped")?);
        Some(Line::Summary { passed, failed, skipped })
    }
}

/// Prefix of a benchmark result line: `bench: <name> <key>=<value> ...`, values are unsigned
/// integers (nanoseconds, counts) so that nothing is lost to formatting.
pub const BENCH_PREFIX: &str = "bench: ";

/// Reads a benchmark line back: its name and its `key=value` pairs.
pub fn parse_bench(line: &str) -> Option<(&str, impl Iterator<Item = (&str, u64)>)> {
    let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(BENCH_PREFIX)?;
    let mut words = rest.split_ascii_whitespace();
    let name = words.next()?;
    if name.contains('=') {
        return None;
    }
    Some((name, words.filter_map(|w| w.split_once('=')).filter_map(|(k, v)| Some((k, v.parse().ok()?)))))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn every_line_kind_round_trips() {
        let lines = [
            Line::Result { status: Status::Pass, name: "arch::timer_ticks", reason: "" },
            Line::Result { status: Status::Fail, name: "pnp::x", reason: "woke task 3: expected 4" },
            Line::Result { status: Status::Skip, name: "pnp::y", reason: "needs the host stub" },
            Line::Summary { passed: 12, failed: 1, skipped: 3 },
        ];
        for line in lines {
            let text = line.to_string();
            assert_eq!(Line::parse(&text), Some(line), "{text}");
        }
    }

    #[test]
    fn other_console_lines_are_not_report_lines() {
        assert_eq!(Line::parse("pvagent: booting"), None);
        assert_eq!(Line::parse("selftest: PASSED x"), None);
        assert_eq!(Line::parse("selftest: 1 passed, 2 failed"), None);
        assert_eq!(Line::parse("selftest: PASS two words"), None);
    }

    #[test]
    fn bench_lines_parse_into_name_and_integer_pairs() {
        let (name, pairs) = parse_bench("bench: io ns=1234 iterations=5000").unwrap();
        assert_eq!(name, "io");
        let pairs: std::vec::Vec<_> = pairs.collect();
        assert_eq!(pairs, [("ns", 1234), ("iterations", 5000)]);
        assert!(parse_bench("selftest: PASS x").is_none());
        assert!(parse_bench("bench: k=v").is_none(), "a line needs a name");
        let (_, pairs) = parse_bench("bench: x a=1 b=oops c=3").unwrap();
        assert_eq!(pairs.count(), 2, "non-integer values are dropped");
    }

    #[test]
    fn the_format_is_the_documented_one() {
        let line = Line::Result { status: Status::Fail, name: "a::b", reason: "why" };
        assert_eq!(line.to_string(), "selftest: FAIL a::b: why");
        assert_eq!(
            Line::Summary { passed: 1, failed: 0, skipped: 2 }.to_string(),
            "selftest: 1 passed, 0 failed, 2 skipped"
        );
    }
}
