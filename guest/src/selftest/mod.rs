//! The self-test framework: a table of named tests, a runner that prints one report line per
//! test (`pvagent_abi::report`) and a summary, and the verdict as the exit code.
//!
//! A test declares in its table entry what it needs from the host (`pvagent_abi::report::Need`:
//! the host stub, its demand pager in ring mode, ...); the runner checks that before it runs the
//! test, and a need this host does not meet makes the test a SKIP that says which. The same
//! declaration is what the command line word `list` prints, so a test's needs are written in
//! one place. A test returns `Ok(())`, or `Err(Failure::Fail(reason))`, or
//! `Err(Failure::Skip(reason))` when it finds out itself that the host cannot give it what it
//! needs. A panic or an unexpected exception during a test is reported as that test's failure
//! and ends the run. A test must reap the tasks it spawns: the runner fails a test that leaves
//! tasks behind.

// A failure carries its reason inline (there is no heap), so test results are large by design.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

mod ac;
mod arch;
mod harness;
mod hostile;
mod memslot;
mod pnp;
mod smp;
mod soak;
mod task;

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use pvagent_abi::pnp::HostMode;
use pvagent_abi::report::{LIST_WORD, Line, Need, Needs, Status};
use pvagent_abi::sld::HostPolicy;

use crate::boot::cmdline::{Cmdline, TestFilter};
use crate::{kprint, kprintln};

/// Command line keys the self-tests read: `tests=` (which tests run), `expect-host=` (what
/// `arch::host_is_identified` expects), the bare word `list` (list the tests, run none), and
/// the soak's size and seed (`soak-events=`, `soak-seed=`).
pub const CMDLINE_KEYS: &[&str] = &["tests", "expect-host", LIST_WORD, soak::EVENTS_KEY, soak::SEED_KEY];

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
    /// What it needs from the host; the runner checks it before running the test.
    pub needs: Needs,
}

impl SelfTest {
    /// A test that runs by default, on any host.
    pub const fn new(name: &'static str, run: fn() -> TestResult) -> Self {
        Self { name, run, on_by_default: true, needs: Needs::NONE }
    }

    /// A test that runs only when named on the command line, on any host.
    pub const fn on_request(name: &'static str, run: fn() -> TestResult) -> Self {
        Self { name, run, on_by_default: false, needs: Needs::NONE }
    }

    /// The same test, needing `needs` from its host.
    pub const fn needs(self, needs: &[Need]) -> Self {
        Self { needs: Needs::of(needs), ..self }
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

/// Fails the test unless the two values are equal, showing both (as `Debug` shows them: for
/// counts, states and other values that are not addresses or data).
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

/// [`ensure_eq!`] for addresses and data words: shows both values in hex (`{:#x}`), which is
/// how addresses, page contents and register values are read everywhere else.
#[macro_export]
macro_rules! ensure_eq_hex {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err($crate::selftest::fail(format_args!("{}: got {:#x}, expected {:#x}",
                format_args!($($arg)+), left, right)));
        }
    }};
}

/// Every suite, in the order they run.
const SUITES: &[&[SelfTest]] = &[
    harness::TESTS,
    arch::TESTS,
    smp::TESTS,
    task::TESTS,
    ac::TESTS,
    pnp::TESTS,
    pnp::KVM_APF_TESTS,
    pnp::VE_TESTS,
    pnp::SMP_TESTS,
    memslot::TESTS,
    soak::TESTS,
    // Last: these break the protocols on purpose, which the accounting checks above count.
    hostile::TESTS,
    hostile::AC_TESTS,
    hostile::VE_TESTS,
];

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
    // As the runner does before its summary when the run ends normally: the dropped lines, and
    // which rules the host broke (a breach may be what stopped the run).
    crate::console::report_dropped_in_panic();
    crate::console::print_panic(format_args!("{}", crate::pv::breach::Summary));
    crate::console::print_panic(format_args!("{}\n", summary()));
    crate::arch::exit::exit(pvagent_abi::exit::FAILURE)
}

/// Runs the selected tests and ends the run with the verdict; with the word `list` on the
/// command line, lists every test instead and runs none.
pub fn run(cmdline: &Cmdline) -> ! {
    crate::arch::fault::set_fatal_hook(on_fatal);
    if cmdline.words().any(|word| word == (LIST_WORD, None)) {
        for test in all_tests() {
            kprintln!("{}", Line::Listed { name: test.name, on_by_default: test.on_by_default, needs: test.needs });
        }
        crate::arch::exit::exit(pvagent_abi::exit::SUCCESS);
    }
    let filter = TestFilter::from_cmdline(cmdline);
    let mut selected = 0;
    kprintln!("{}", Line::Start);
    for (index, test) in all_tests().enumerate() {
        if !filter.selects(test.name, test.on_by_default) {
            continue;
        }
        selected += 1;
        let tasks_before = crate::task::spawned_everywhere();
        CURRENT.store(index + 1, Ordering::SeqCst);
        let result = needs_met(test.needs).and_then(|()| (test.run)());
        CURRENT.store(0, Ordering::SeqCst);
        let leaked = crate::task::spawned_everywhere().saturating_sub(tasks_before);
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
    // Which rules the host broke (each counted where it was detected, reported here).
    kprint!("{}", crate::pv::breach::Summary);
    // Waits that went past the token deadline (each reported when found): counted, not judged.
    let overdue = crate::pv::deadline::reported();
    if overdue > 0 {
        kprintln!("deadline: {overdue} wait(s) went past their deadline (each reported above; not a failure)");
    }
    kprintln!("{}", summary());
    let code = if selected == 0 {
        // Nothing was judged: the command line is wrong, which hosts report as bad usage.
        pvagent_abi::exit::NO_TEST_SELECTED
    } else if FAILED.load(Ordering::Relaxed) == 0 {
        pvagent_abi::exit::SUCCESS
    } else {
        pvagent_abi::exit::FAILURE
    };
    crate::arch::exit::exit(code)
}

/// Whether this host meets every one of `needs`: a SKIP naming the first it does not meet
/// (in `Need::ALL`'s order, so that under QEMU every host stub test says "host stub").
fn needs_met(needs: Needs) -> TestResult {
    needs.iter().try_for_each(need_met)
}

/// Whether this host meets `need`.
fn need_met(need: Need) -> TestResult {
    use crate::arch::{self, cpu::Hypervisor};
    use crate::pv::{ac, pnp};
    let skip_unless = |met: bool, why: &'static str| if met { Ok(()) } else { Err(Failure::Skip(why)) };
    match need {
        Need::HostStub => skip_unless(arch::platform().hypervisor.is_host_stub(), "needs the pvagent host stub"),
        Need::SldTrigger => skip_unless(ac::trigger::available(), "needs the host stub's split-lock trigger"),
        Need::SldDetection => {
            skip_unless(ac::enumeration().available(), "split-lock detection is not enumerated on this host")?;
            // A host that broke MSR_TEST_CTRL at boot (its `host broke` line says how): not used.
            skip_unless(
                !ac::status().test_ctrl_broken,
                "the host broke MSR_TEST_CTRL: split-lock detection is not used",
            )
        }
        Need::SldDefaultPolicy => policy_is(HostPolicy::InjectIfEnabled),
        Need::SldExitPolicy => policy_is(HostPolicy::Exit),
        Need::SldDisableGloballyPolicy => policy_is(HostPolicy::DisableGlobally),
        Need::Pager => match pnp::host_region() {
            Some((region, _)) if region.pages > 0 => pager_registered(),
            _ => Err(Failure::Skip("needs the host stub's demand pager")),
        },
        Need::PnpTwoTokens => skip_unless(
            pnp::registered_entries() >= 2,
            "needs a page-not-present ring of at least 2 entries (this run registered 1: pnp-ring=1)",
        ),
        Need::PnpRingMode => match pnp::host_mode() {
            HostMode::Ring => Ok(()),
            HostMode::Sync => {
                Err(Failure::Skip("needs the demand pager in ring mode (this run serves absent pages in sync mode)"))
            }
            HostMode::KvmApf | HostMode::KvmApfKernel => Err(Failure::Skip(
                "needs the demand pager in ring mode (this run serves absent pages through KVM's async page fault ABI)",
            )),
            HostMode::Ve => {
                Err(Failure::Skip("needs the demand pager in ring mode (this run reports absent pages with #VE)"))
            }
        },
        Need::AlignmentCheck => skip_unless(
            arch::platform().hypervisor != Hypervisor::QemuTcg,
            "QEMU TCG does not raise alignment-check #AC",
        ),
        Need::ExpectHost => skip_unless(
            crate::boot::info::get().cmdline.get("expect-host").is_some(),
            "no expect-host= on the command line",
        ),
        Need::Acpi => skip_unless(crate::boot::info::get().rsdp.is_some(), "this host provides no ACPI tables"),
        Need::KvmApf => match crate::pv::kvm_apf::refused() {
            // KVM's leaves offered it and the host refused: the driver or the host is broken.
            Some(refused) => {
                Err(fail(format_args!("KVM's leaves offer async page faults, but enabling them failed: {refused:?}")))
            }
            None => skip_unless(crate::pv::kvm_apf::enabled(), "KVM's async page fault ABI is not offered here"),
        },
        Need::KvmApfDisableAtOnce => skip_unless(
            pnp::host_mode() != HostMode::KvmApfKernel,
            "KVM serves its async page fault ABI in this run, and its disabling waits for the fetch its worker runs, which this test holds until after the disabling",
        ),
        Need::KvmApfHostStub => skip_unless(
            pnp::host_mode() != HostMode::KvmApfKernel,
            "KVM serves its async page fault ABI in this run, and keeps it (page ready only on the vCPU that took its page not present, after it; no switch breaks a rule on purpose): only the host stub can force this path (a robustness test)",
        ),
        Need::SeveralCpus => skip_unless(arch::smp::online_count() >= 2, "needs two or more vCPUs online"),
        Need::VeMode => match (pnp::host_mode(), crate::pv::ve::registered()) {
            (HostMode::Ve, true) => Ok(()),
            // The host offers #VE (mode ve) and the guest did not take it: broken, not absent.
            (HostMode::Ve, false) => Err(fail(format_args!("the host is in mode ve but no VE area is registered"))),
            _ => Err(Failure::Skip("needs the host stub in mode ve")),
        },
    }
}

/// The host's split-lock policy is `wanted`: a SKIP naming the policy it is otherwise (which
/// the test's split lock would meet instead), a failure when the host cannot say.
fn policy_is(wanted: HostPolicy) -> TestResult {
    use crate::pv::ac::trigger;
    let policy = match trigger::host_policy() {
        Ok(Ok(policy)) if policy == wanted => return Ok(()),
        Ok(Ok(policy)) => policy,
        other => return Err(fail(format_args!("asking the host's split-lock policy: {other:?}"))),
    };
    Err(Failure::Skip(match (policy, wanted) {
        (HostPolicy::Exit, HostPolicy::InjectIfEnabled) => {
            "the host's split-lock policy is exit: a split lock with detection off stops the run (tests/ac.rs covers that policy)"
        }
        (HostPolicy::DisableGlobally, HostPolicy::InjectIfEnabled) => {
            "the host's split-lock policy is disable-globally: a split lock with detection off switches detection off for the whole VM (tests/ac.rs covers that policy)"
        }
        (HostPolicy::InjectIfEnabled, HostPolicy::Exit) => {
            "needs the host's split-lock policy exit (--sld-policy exit); this host's is inject-if-enabled"
        }
        (HostPolicy::DisableGlobally, HostPolicy::Exit) => {
            "needs the host's split-lock policy exit (--sld-policy exit); this host's is disable-globally"
        }
        (HostPolicy::InjectIfEnabled, _) => {
            "needs the host's split-lock policy disable-globally (--sld-policy disable-globally); this host's is inject-if-enabled"
        }
        (_, _) => {
            "needs the host's split-lock policy disable-globally (--sld-policy disable-globally); this host's is exit"
        }
    }))
}

/// The page-not-present protocol is registered (the host offers the pager): a SKIP only when
/// the command line asked for it to be off, a failure for a registration nobody asked to lose.
fn pager_registered() -> TestResult {
    use crate::pv::pnp;
    if pnp::registered_entries() > 0 {
        return Ok(());
    }
    if let Some(refusal) = pnp::refused_at_boot() {
        return Err(fail(format_args!("registering the page-not-present protocol at boot failed: {refusal:?}")));
    }
    if crate::boot::info::get().cmdline.get("pnp") == Some("off") {
        return Err(Failure::Skip("pnp=off on the guest's command line: the protocol is not registered"));
    }
    Err(fail(format_args!("the page-not-present protocol is not registered, and nothing asked for that")))
}
