//! What a run produced: the guest's verdict, its report lines, the console output and the
//! host's counters.

use std::time::{Duration, Instant};

use pvagent_abi::exit;
use pvagent_abi::report::{Line, Needs, Status};

use crate::error::Error;
use crate::handler::Report;

/// One self-test's outcome, as the guest reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub status: Status,
    pub name: String,
    pub reason: String,
    /// How long it took, as the host saw the console: from the report line before it (or the
    /// runner's start line) to its own. `None` when the guest printed neither before it.
    pub duration: Option<Duration>,
}

/// One self-test as the guest lists it (the command line word `list`), instead of running it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedTest {
    pub name: String,
    /// Whether it runs without being named (`false`: only when `tests=` names it exactly).
    pub on_by_default: bool,
    /// What it needs from the host that runs it.
    pub needs: Needs,
}

/// The end of a run.
#[derive(Debug)]
pub struct RunResult {
    /// The code the guest wrote to the debug-exit port; `None` if it never did.
    pub guest_exit_code: Option<u32>,
    /// Console lines.
    pub serial: Vec<String>,
    /// Per-test outcomes parsed from the console.
    pub tests: Vec<TestOutcome>,
    /// The tests the guest listed, when its command line asked for the list.
    pub listed: Vec<ListedTest>,
    /// The guest's summary line, if it printed one: (passed, failed, skipped).
    pub summary: Option<(u32, u32, u32)>,
    /// Host counters and notes.
    pub report: Report,
    /// A host-side failure (setup is reported by `Vm::new` instead): the run is a failure.
    /// The first one: the run loop's, or else the first a handler's `finish` reported. It
    /// prints as a one-line message; tests match on its variant.
    pub host_error: Option<Error>,
    /// For a guest that crashed (triple fault, emulation failure...): its last console lines.
    pub crash_tail: Option<Vec<String>>,
    pub setup_time: Duration,
    pub run_time: Duration,
}

impl RunResult {
    pub(crate) fn new(
        guest_exit_code: Option<u32>,
        timed_serial: Vec<(Instant, String)>,
        report: Report,
        host_error: Option<Error>,
        crash_tail: Option<Vec<String>>,
        setup_time: Duration,
        run_time: Duration,
    ) -> Self {
        let (mut tests, mut listed, mut summary) = (Vec::new(), Vec::new(), None);
        // When the test a result line reports began: at the line before it.
        let mut since: Option<Instant> = None;
        for (at, line) in &timed_serial {
            match Line::parse(line) {
                Some(Line::Start) => since = Some(*at),
                Some(Line::Result { status, name, reason }) => {
                    let duration = since.map(|since| at.saturating_duration_since(since));
                    since = Some(*at);
                    tests.push(TestOutcome { status, name: name.into(), reason: reason.into(), duration })
                }
                Some(Line::Listed { name, on_by_default, needs }) => {
                    listed.push(ListedTest { name: name.into(), on_by_default, needs })
                }
                Some(Line::Summary { passed, failed, skipped }) => summary = Some((passed, failed, skipped)),
                None => {}
            }
        }
        let serial = timed_serial.into_iter().map(|(_, line)| line).collect();
        Self { guest_exit_code, serial, tests, listed, summary, report, host_error, crash_tail, setup_time, run_time }
    }

    /// Whether the guest reported success and the host found nothing wrong.
    pub fn passed(&self) -> bool {
        self.guest_exit_code == Some(exit::SUCCESS) && self.host_error.is_none()
    }

    /// The host stub's process status: 0 pass, 1 guest failure, 2 host-side error.
    pub fn exit_status(&self) -> i32 {
        match (self.host_error.as_ref(), self.guest_exit_code) {
            (Some(_), _) => 2,
            (None, Some(code)) => exit::host_stub_status(code),
            (None, None) => 2,
        }
    }

    /// The outcome of test `name`, if it ran.
    pub fn test(&self, name: &str) -> Option<&TestOutcome> {
        self.tests.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(lines: &[(u64, &str)]) -> RunResult {
        let start = Instant::now();
        let timed = lines.iter().map(|(ms, l)| (start + Duration::from_millis(*ms), l.to_string())).collect();
        RunResult::new(Some(exit::SUCCESS), timed, Report::default(), None, None, Duration::ZERO, Duration::ZERO)
    }

    #[test]
    fn each_test_lasts_from_the_report_line_before_it() {
        let r = result(&[
            (1, "pnp: registered"),
            (10, "selftest: start"),
            (15, "task x ended"),
            (25, "selftest: PASS a::one"),
            (70, "selftest: SKIP a::two: needs the pvagent host stub"),
            (71, "selftest: 1 passed, 0 failed, 1 skipped"),
        ]);
        let durations: Vec<_> = r.tests.iter().map(|t| t.duration).collect();
        assert_eq!(durations, [Some(Duration::from_millis(15)), Some(Duration::from_millis(45))]);
        assert_eq!(r.tests[1].reason, "needs the pvagent host stub");
        assert_eq!(r.summary, Some((1, 0, 1)));
        assert_eq!(r.serial.len(), 6, "every console line is kept");
    }

    #[test]
    fn without_a_start_line_the_first_test_has_no_duration() {
        let r = result(&[(5, "selftest: PASS a::one"), (8, "selftest: PASS a::two")]);
        assert_eq!(r.tests[0].duration, None);
        assert_eq!(r.tests[1].duration, Some(Duration::from_millis(3)));
    }

    #[test]
    fn a_listing_is_read_into_listed_tests() {
        let r = result(&[(1, "selftest: TEST a::one"), (2, "selftest: TEST h::fail on-request needs=host-stub")]);
        assert!(r.tests.is_empty());
        assert_eq!(r.listed.len(), 2);
        assert!(r.listed[0].on_by_default && r.listed[0].needs.is_empty());
        assert!(!r.listed[1].on_by_default);
        assert!(r.listed[1].needs.contains(pvagent_abi::report::Need::HostStub));
    }
}
