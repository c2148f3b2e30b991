//! What a run produced: the guest's verdict, its report lines, the console output and the
//! host's counters.

use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::report::{Line, Status};

use crate::error::Error;
use crate::handler::Report;

/// One self-test's outcome, as the guest reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub status: Status,
    pub name: String,
    pub reason: String,
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
        serial: Vec<String>,
        report: Report,
        host_error: Option<Error>,
        crash_tail: Option<Vec<String>>,
        setup_time: Duration,
        run_time: Duration,
    ) -> Self {
        let mut tests = Vec::new();
        let mut summary = None;
        for line in &serial {
            match Line::parse(line) {
                Some(Line::Result { status, name, reason }) => {
                    tests.push(TestOutcome { status, name: name.into(), reason: reason.into() })
                }
                Some(Line::Summary { passed, failed, skipped }) => summary = Some((passed, failed, skipped)),
                None => {}
            }
        }
        Self { guest_exit_code, serial, tests, summary, report, host_error, crash_tail, setup_time, run_time }
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
