//! The self-test framework: a table of named tests, a runner that prints one report line per
//! test (`pvagent_abi::report`) and a summary, and the verdict as the exit code.
//!
//! A test returns `Ok(())`, or `Err(Failure::Fail(reason))`, or `Err(Failure::Skip(reason))`
//! when the host cannot give it what it needs. A panic or an unexpected exception during a test
//! is reported as that test's failure and ends the run. A test must reap the tasks it spawns:
//! the runner fails a test that leaves tasks behind.

// A failure carries its reason inline (there is no heap), so test results are large by design.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

mod ac;
mod arch;
mod harness;
mod pnp;
mod task;

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use pvagent_abi::report::{Line, Status};

use crate::boot::cmdline::{Cmdline, TestFilter};
use crate::kprintln;

/// Command line keys the self-tests read: `tests=` (which tests run) and `expect-host=` (what
/// `arch::host_is_identified` expects).
pub const CMDLINE_KEYS: &[&str] = &["tests", "expect-host"];

/// Why a test did not pass.
#[derive(Debug)]
pub enum Failure {
    Fail(Reason),
    Skip(&'static str),
}

/// A failure message.
pub type Reason = heapless::String<240>;

/// What a test returns.
pub type TestResult = Result<(), Failure>;

/// One self-test.
#[derive(Clone, Copy, Debug)]
pub struct SelfTest {
    /// `module::what_it_shows`.
    pub name: &'static str,
    pub run: fn() -> TestResult,
    /// Off-by-default tests run only when named exactly (see `TestFilter`).
    pub on_by_default: bool,
}

impl SelfTest {
    /// A test that runs by default.
    pub const fn new(name: &'static str, run: fn() -> TestResult) -> Self {
        Self { name, run, on_by_default: true }
    }

    /// A test that runs only when named on the command line.
    pub const fn on_request(name: &'static str, run: fn() -> TestResult) -> Self {
        Self { name, run, on_by_default: false }
    }
}

/// Builds a [`Failure::Fail`] from a format string.
pub fn fail(args: core::fmt::Arguments<'_>) -> Failure {
    let mut reason = Reason::new();
    if reason.write_fmt(args).is_err() {
        // Too long: keep what fits and mark the cut.
        while reason.len() > Reason::new().capacity() - 3 {
            reason.pop();
        }
        let _ = reason.push_str("...");
    }
    Failure::Fail(reason)
}

/// Fails the test with a formatted reason unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::selftest::fail(format_args!($($arg)+)));
        }
    };
}

/// Fails the test unless the two values are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err($crate::selftest::fail(format_args!("{}: got {:?}, expected {:?}",
                format_args!($($arg)+), left, right)));
        }
    }};
}

/// Every suite, in the order they run.
const SUITES: &[&[SelfTest]] = &[harness::TESTS, arch::TESTS, task::TESTS, ac::TESTS, pnp::TESTS];

fn all_tests() -> impl Iterator<Item = &'static SelfTest> {
    SUITES.iter().flat_map(|suite| suite.iter())
}

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);
/// Index (+1) in `all_tests()` of the running test; 0 between tests.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static FATAL_ONCE: AtomicBool = AtomicBool::new(false);

fn report(status: Status, name: &str, reason: &str) {
    match status {
        Status::Pass => PASSED.fetch_add(1, Ordering::Relaxed),
        Status::Fail => FAILED.fetch_add(1, Ordering::Relaxed),
        Status::Skip => SKIPPED.fetch_add(1, Ordering::Relaxed),
    };
    kprintln!("{}", Line::Result { status, name, reason });
}

fn summary() -> Line<'static> {
    Line::Summary {
        passed: PASSED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
        skipped: SKIPPED.load(Ordering::Relaxed),
    }
}

/// The fatal hook while self-tests run: the running test fails with the message, the summary
/// is printed, and the run ends with the failure code.
fn on_fatal(args: core::fmt::Arguments<'_>) -> ! {
    if FATAL_ONCE.swap(true, Ordering::SeqCst) {
        // A fatal error while reporting one: stop without more output.
        crate::arch::exit::exit(pvagent_abi::exit::FAILURE);
    }
    crate::console::print_panic(format_args!("fatal: {args}\n"));
    let current = CURRENT.load(Ordering::SeqCst);
    let name = current.checked_sub(1).and_then(|i| all_tests().nth(i)).map_or("(between tests)", |t| t.name);
    let mut reason = Reason::new();
    let _ = reason.write_fmt(args);
    crate::console::print_panic(format_args!("{}\n", Line::Result { status: Status::Fail, name, reason: &reason }));
    FAILED.fetch_add(1, Ordering::Relaxed);
    crate::console::print_panic(format_args!("{}\n", summary()));
    crate::arch::exit::exit(pvagent_abi::exit::FAILURE)
}

/// Runs the selected tests and ends the run with the verdict.
pub fn run(cmdline: &Cmdline) -> ! {
    crate::arch::fault::set_fatal_hook(on_fatal);
    let filter = TestFilter::from_cmdline(cmdline);
    let mut selected = 0;
    for (index, test) in all_tests().enumerate() {
        if !filter.selects(test.name, test.on_by_default) {
            continue;
        }
        selected += 1;
        let tasks_before = crate::task::live_count();
        CURRENT.store(index + 1, Ordering::SeqCst);
        let result = (test.run)();
        CURRENT.store(0, Ordering::SeqCst);
        let leaked = crate::task::live_count().saturating_sub(tasks_before);
        match result {
            Ok(()) if leaked > 0 => {
                let Failure::Fail(reason) = fail(format_args!("left {leaked} task(s) behind")) else { unreachable!() };
                report(Status::Fail, test.name, &reason);
            }
            Ok(()) => report(Status::Pass, test.name, ""),
            Err(Failure::Fail(reason)) => report(Status::Fail, test.name, &reason),
            Err(Failure::Skip(reason)) => report(Status::Skip, test.name, reason),
        }
    }
    if selected == 0 {
        kprintln!("selftest: no test matches tests={}", filter.patterns().unwrap_or(""));
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    crate::console::report_dropped();
    kprintln!("{}", summary());
    let code =
        if FAILED.load(Ordering::Relaxed) == 0 { pvagent_abi::exit::SUCCESS } else { pvagent_abi::exit::FAILURE };
    crate::arch::exit::exit(code)
}

/// Skips unless the host stub runs this guest.
pub fn require_host_stub() -> TestResult {
    if crate::arch::platform().hypervisor.is_host_stub() {
        Ok(())
    } else {
        Err(Failure::Skip("needs the pvagent host stub"))
    }
}
