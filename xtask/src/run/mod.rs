//! `cargo xtask run`: the default scenario under the host stub. Every self-test with every
//! producer at its defaults (the pager in `ring` mode), then the page-not-present tests again
//! with the pager in each other mode (`sync`; KVM's async page fault ABI served by the host stub,
//! `kvm-apf`, and by KVM itself, `kvm-apf-kernel`, with that driver's tests too), and the #VE
//! tests with the pager in mode `ve`, so every mode of the host is seen on every run, and last
//! every self-test on four vCPUs while the host splits and merges guest RAM's memslots under them
//! (`--layout-churn`, seed 003). A filtered run (`--tests`, or `tests=` in the guest's command
//! line), a run in a mode the user chose (`--pnp-mode`) or one without the pager (`--pnp-mib 0`,
//! `pnp=off`) boots once; each boot says what it runs before it starts, and a boot left out says
//! why.
//!
//! The host stub options xtask sets (`--timeout`, `--pnp-mode`, `--trace`) are defaults: the
//! same option given after `--` replaces xtask's (the host stub accepts each option once). A
//! `--cmdline` given after `--` adds its words to xtask's own (`expect-host=stub`, `tests=`);
//! the guest reads later words over earlier ones, so the user's win. The options that name an
//! output file follow the rule in `args.rs`: no boot writes over another's file.

mod args;
mod list;
mod records;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pvagent_abi::report::{Line, Status};
use pvagent_host::results::{self, TestRecord};

pub use list::{Listed, format_list, list};

use crate::proc::{self, Ended};
use crate::{Profile, Result, err, failed, guest, project_root, setup};
use args::{value_of, without};

/// The memslot boot's vCPUs, and how many vCPU entries apart its layout updates come.
const MEMSLOT_VCPUS: usize = 4;
const MEMSLOT_EVERY: u64 = 20;

/// Time one boot may take before it is killed.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `cargo xtask run` was asked for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub release: bool,
    /// Which self-tests run (`tests=` patterns).
    pub tests: Option<String>,
    /// Record the first boot's timeline here.
    pub trace: Option<PathBuf>,
    /// Write every boot's results here as JSON lines.
    pub results_json: Option<PathBuf>,
    /// Write every boot's results here as JUnit XML.
    pub results_junit: Option<PathBuf>,
    /// The user's host stub arguments (after `--`).
    pub host_args: Vec<String>,
    /// Run the host stub under `taskset -c 0`: every vCPU thread on one host CPU, so that the
    /// vCPUs only ever take turns (`cargo xtask test`'s 4-vCPU stage).
    pub on_one_host_cpu: bool,
}

impl RunOptions {
    fn profile(&self) -> Profile {
        if self.release { Profile::Release } else { Profile::Dev }
    }
}

/// One boot of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// What it runs, in words (`every self-test, pager in ring mode`).
    pub what: String,
    /// Its short name in results files (`host-stub-ring`): a JUnit test suite per boot.
    pub label: String,
    /// The guest's command line.
    pub cmdline: String,
    /// xtask's host stub options for it, each dropped where the user gives it.
    pub defaults: Vec<(&'static str, String)>,
}

/// Why the user's options leave the run without a demand pager to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoPager {
    /// `--pnp-mib 0`: the host stub runs none.
    NoneRun,
    /// `pnp=off` (the last `pnp=` word): the guest does not register the protocol.
    ProtocolOff,
}

impl NoPager {
    /// What the user's options say, if they leave the run without a pager.
    fn of(extra: &[String], user_words: &str) -> Option<Self> {
        if value_of(extra, "--pnp-mib").and_then(|mib| mib.trim().parse::<u64>().ok()) == Some(0) {
            return Some(NoPager::NoneRun);
        }
        let pnp = user_words.split_ascii_whitespace().filter_map(|w| w.strip_prefix("pnp=")).next_back();
        (pnp == Some("off")).then_some(NoPager::ProtocolOff)
    }

    fn why(self) -> &'static str {
        match self {
            NoPager::NoneRun => "--pnp-mib 0: the host stub runs no demand pager",
            NoPager::ProtocolOff => "pnp=off: the guest does not register the page-not-present protocol",
        }
    }
}

/// The boots `cargo xtask run` makes for `tests`, `trace` and the user's host stub arguments,
/// and a note on what it leaves out, if anything.
pub fn plan(tests: Option<&str>, trace: Option<&Path>, extra: &[String]) -> (Vec<Boot>, Option<String>) {
    let user_words = value_of(extra, "--cmdline").unwrap_or("");
    let user_tests = user_words.split_ascii_whitespace().filter_map(|w| w.strip_prefix("tests=")).next_back();
    let selection = user_tests.or(tests);
    let mode = value_of(extra, "--pnp-mode");
    let no_pager = NoPager::of(extra, user_words);
    let words = |tests: Option<&str>| {
        let mut words = vec!["expect-host=stub".to_string()];
        words.extend(tests.map(|t| format!("tests={t}")));
        words.extend(user_words.split_ascii_whitespace().map(String::from));
        words.join(" ")
    };
    let what = |selection: Option<&str>| match selection {
        Some(patterns) => format!("the self-tests matching tests={patterns}"),
        None => "every self-test".to_string(),
    };
    let mut first = vec![("--pnp-mode", "ring".to_string())];
    if let Some(file) = trace {
        first.push(("--trace", file.display().to_string()));
    }
    let mode_name = mode.unwrap_or("ring");
    let (pager, label) = match no_pager {
        Some(NoPager::NoneRun) => ("no demand pager".to_string(), "host-stub-no-pager".to_string()),
        Some(NoPager::ProtocolOff) => {
            (format!("pager in {mode_name} mode, protocol not registered (pnp=off)"), format!("host-stub-{mode_name}"))
        }
        None => (format!("pager in {mode_name} mode"), format!("host-stub-{mode_name}")),
    };
    let mut boots =
        vec![Boot { what: format!("{}, {pager}", what(selection)), label, cmdline: words(tests), defaults: first }];
    let note = match (selection, mode, no_pager) {
        (Some(_), None, _) => Some(
            "a filtered run boots once, with the pager in ring mode; add `-- --pnp-mode sync` for sync mode".into(),
        ),
        (_, Some(mode), _) => Some(format!("--pnp-mode {mode} given: one boot, in that mode")),
        (None, None, Some(no_pager)) => Some(format!(
            "one boot: the others, the page-not-present tests in the pager's other modes, are left out ({}: their tests need it)",
            no_pager.why()
        )),
        (None, None, None) => {
            let pnp = "the page-not-present self-tests";
            // KVM's ABI broken on purpose too: by the host stub in `kvm-apf` mode (in
            // `kvm-apf-kernel` mode those tests skip and say why: KVM cannot be made to).
            let apf = "pnp,kvm_apf,hostile::kvm_apf";
            let modes = [
                ("sync", "pnp", pnp),
                ("kvm-apf", apf, pnp),
                ("kvm-apf-kernel", apf, pnp),
                ("ve", "ve", "the #VE self-tests"),
            ];
            for (mode, tests, which) in modes {
                boots.push(Boot {
                    what: format!("{which} (tests={tests}), pager in {mode} mode"),
                    label: format!("host-stub-{mode}"),
                    cmdline: words(Some(tests)),
                    defaults: vec![("--pnp-mode", mode.to_string())],
                });
            }
            // Seed 003: memory changed under running vCPUs, each update holding them all; the
            // host stub fails the boot on any exit at guest memory, and reports the hold times.
            boots.push(Boot {
                what: format!(
                    "every self-test on {MEMSLOT_VCPUS} vCPUs while guest RAM is split and merged again every {MEMSLOT_EVERY} vCPU entries (memslot updates holding every vCPU), pager in ring mode"
                ),
                label: "host-stub-memslots".to_string(),
                cmdline: words(None),
                defaults: vec![
                    ("--pnp-mode", "ring".to_string()),
                    ("--vcpus", MEMSLOT_VCPUS.to_string()),
                    ("--layout-churn", MEMSLOT_EVERY.to_string()),
                ],
            });
            None
        }
    };
    (boots, note)
}

/// How one boot went.
#[derive(Debug)]
struct Booted {
    ended: Ended,
    /// The host stub's arguments, as a shell would show them.
    shown: String,
    /// The guest's summary line: (passed, failed, skipped).
    summary: Option<(u32, u32, u32)>,
    /// Each failed test, with its reason.
    failures: Vec<String>,
    /// The host stub's one-line error (`pvagent-host: error: ...`), without its prefix.
    host_error: Option<String>,
}

impl Booted {
    /// `Ok` when the host stub exited 0; a test failure for exit status 1 (with the failed
    /// tests); a host-side error otherwise (with the host stub's own message).
    fn verdict(&self) -> Result<()> {
        let shown = &self.shown;
        let outcome = match &self.ended {
            Ended::Exited(outcome) => outcome,
            Ended::Killed { after, .. } => {
                return Err(err!("the host stub did not finish within {} s and was killed ({shown})", after.as_secs()));
            }
        };
        match (outcome.status.code(), &self.host_error) {
            (Some(0), _) => Ok(()),
            (Some(1), _) if self.failures.is_empty() => Err(failed!("the guest reported failure ({shown})")),
            (Some(1), _) => Err(failed!("the guest reported failure ({shown}): {}", shortened(&self.failures))),
            (_, Some(message)) => Err(err!("the host stub failed ({}) for {shown}: {message}", outcome.status)),
            (_, None) => Err(err!("the host stub failed ({}) for {shown}", outcome.status)),
        }
    }
}

/// The failed tests for a one-line message: the first few, and how many more the report lines
/// above it name.
fn shortened(failures: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = failures.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if failures.len() > SHOWN {
        text.push_str(&format!("; and {} more failed tests, above", failures.len() - SHOWN));
    }
    text
}

/// One boot of the guest under the host stub binary, boot `n` of the plan, its results (if
/// asked for) to `results`.
fn boot(
    host: &Path,
    elf: &Path,
    boot: &Boot,
    n: usize,
    options: &RunOptions,
    results: Option<&Path>,
) -> Result<Booted> {
    let extra = &options.host_args;
    let mut defaults = boot.defaults.clone();
    defaults.push(("--timeout", BOOT_TIMEOUT.as_secs().to_string()));
    defaults.push(("--cmdline", boot.cmdline.clone()));
    if let Some(path) = results {
        defaults.push(("--results-json", path.display().to_string()));
    }
    // The user's --cmdline words are in `boot.cmdline` already.
    let args = args::host_arguments(&defaults, &args::for_boot(&without(extra, "--cmdline"), n));
    // A host stub whose --timeout the user made longer than xtask's still gets killed, later.
    let timeout = timeout_given(&args).unwrap_or(BOOT_TIMEOUT).max(BOOT_TIMEOUT);
    let mut cmd = if options.on_one_host_cpu {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0"]).arg(host);
        taskset
    } else {
        Command::new(host)
    };
    cmd.arg(elf).args(&args);
    let ended = proc::supervise(cmd, timeout + Duration::from_secs(10), &mut |line| println!("{line}"))?;
    let output = match &ended {
        Ended::Exited(outcome) => &outcome.output,
        Ended::Killed { output, .. } => output,
    };
    let (mut summary, mut failures, mut host_error) = (None, Vec::new(), None);
    for line in output {
        match Line::parse(line) {
            Some(Line::Summary { passed, failed, skipped }) => summary = Some((passed, failed, skipped)),
            Some(Line::Result { status: Status::Fail, name, reason }) => failures.push(format!("{name}: {reason}")),
            _ => {}
        }
        if let Some(message) = line.strip_prefix("pvagent-host: error: ") {
            host_error.get_or_insert_with(|| message.to_string());
        }
    }
    let shown: Vec<String> =
        args.iter().map(|a| if a.contains(' ') || a.is_empty() { format!("{a:?}") } else { a.clone() }).collect();
    Ok(Booted { ended, shown: shown.join(" "), summary, failures, host_error })
}

/// The `--timeout` in `args` (`None` for 0, which asks the host stub for no limit: xtask's own
/// limit then still ends the process).
fn timeout_given(args: &[String]) -> Option<Duration> {
    value_of(args, "--timeout")?.parse().ok().filter(|s| *s > 0).map(Duration::from_secs)
}

/// A directory of this run's own for the boots' results files, empty.
fn scratch_dir() -> Result<PathBuf> {
    let dir = project_root().join("target").join("xtask-run").join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| err!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Builds everything and runs the boots [`plan`] makes, saying before each what it runs and
/// after each how it went; writes the results files asked for, also when a boot failed (each
/// boot's records, a `(run)` record for a boot that failed with no test to blame, and one for
/// each boot not run after it).
pub fn scenario(options: &RunOptions) -> Result<()> {
    args::check(&options.host_args)?;
    setup::check_kvm()?;
    let elf = guest::build_guest(options.profile())?;
    let host = guest::build_host_stub(options.profile())?;
    let (boots, note) = plan(options.tests.as_deref(), options.trace.as_deref(), &options.host_args);
    let want_results = options.results_json.is_some() || options.results_junit.is_some();
    let scratch = if want_results { Some(scratch_dir()?) } else { None };
    let mut records: Vec<TestRecord> = Vec::new();
    let mut summaries = Vec::new();
    let mut outcome = Ok(());
    // The boot that failed: the plan ends there.
    let mut failed_at: Option<usize> = None;
    for (i, b) in boots.iter().enumerate() {
        let n = i + 1;
        if let Some(failed) = failed_at {
            println!("\nxtask: boot {n} of {} ({}) not run, as boot {failed} failed", boots.len(), b.what);
            records.push(records::not_run(&b.label, (failed, &boots[failed - 1].label)));
            continue;
        }
        println!("{}==== boot {n} of {}: {}", if i == 0 { "" } else { "\n" }, boots.len(), b.what);
        if i == 0
            && let Some(note) = &note
        {
            println!("==== ({note})");
        }
        let results = scratch.as_ref().map(|dir| dir.join(format!("boot-{n}.jsonl")));
        let booted = match boot(&host, &elf, b, n, options, results.as_deref()) {
            Ok(booted) => booted,
            Err(e) => {
                records.push(records::not_started(&b.label, &e.message));
                (outcome, failed_at) = (Err(e), Some(n));
                continue;
            }
        };
        if let Some(path) = &results {
            records.extend(records::of_boot(&b.label, &booted.ended, booted.host_error.as_deref(), path));
        }
        match booted.verdict() {
            Ok(()) => summaries.push((n, b.what.clone(), booted.summary)),
            Err(e) => (outcome, failed_at) = (Err(e), Some(n)),
        }
    }
    if let Some(dir) = &scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    if outcome.is_ok() {
        println!();
        for (n, what, summary) in &summaries {
            match summary {
                Some((passed, failed, skipped)) => {
                    println!("xtask: boot {n} ({what}): {passed} passed, {failed} failed, {skipped} skipped")
                }
                None => println!("xtask: boot {n} ({what}): passed, with no summary line"),
            }
        }
    }
    write_results(options, &records)?;
    outcome
}

fn write_results(options: &RunOptions, records: &[TestRecord]) -> Result<()> {
    for (path, text) in
        [(&options.results_json, results::json_lines(records)), (&options.results_junit, results::junit(records))]
    {
        if let Some(path) = path {
            std::fs::write(path, text).map_err(|e| err!("cannot write the results to {}: {e}", path.display()))?;
            println!("xtask: {} results written to {}", records.len(), path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_long_list_of_failures_is_cut_to_its_first_three() {
        let failures: Vec<String> = (1..=5).map(|i| format!("t{i}: why")).collect();
        assert_eq!(shortened(&failures[..2]), "t1: why; t2: why");
        assert_eq!(shortened(&failures), "t1: why; t2: why; t3: why; and 2 more failed tests, above");
    }

    #[test]
    fn the_process_deadline_follows_a_longer_timeout() {
        assert_eq!(timeout_given(&strings(&["--timeout", "900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout=900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout", "0"])), None);
        assert_eq!(timeout_given(&strings(&["--mem", "64"])), None);
    }

    #[test]
    fn an_unfiltered_run_boots_in_every_mode() {
        let (boots, note) = plan(None, Some(Path::new("t.json")), &[]);
        assert_eq!(note, None);
        assert_eq!(boots.len(), 6);
        let labels: Vec<&str> = boots.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "host-stub-ring",
                "host-stub-sync",
                "host-stub-kvm-apf",
                "host-stub-kvm-apf-kernel",
                "host-stub-ve",
                "host-stub-memslots"
            ]
        );
        assert!(boots[5].defaults.contains(&("--layout-churn", "20".into())) && boots[5].cmdline == "expect-host=stub");
        assert_eq!(boots[2].cmdline, "expect-host=stub tests=pnp,kvm_apf,hostile::kvm_apf");
        assert_eq!(boots[3].cmdline, "expect-host=stub tests=pnp,kvm_apf,hostile::kvm_apf");
        assert_eq!(boots[4].cmdline, "expect-host=stub tests=ve");
        assert_eq!(boots[4].what, "the #VE self-tests (tests=ve), pager in ve mode");
        assert_eq!(boots[4].defaults, [("--pnp-mode", "ve".to_string())]);
        assert_eq!(boots[0].what, "every self-test, pager in ring mode");
        assert_eq!(boots[0].cmdline, "expect-host=stub");
        assert!(boots[0].defaults.contains(&("--trace", "t.json".into())), "the first boot is traced");
        assert_eq!(boots[1].cmdline, "expect-host=stub tests=pnp");
        assert_eq!((boots[0].label.as_str(), boots[1].label.as_str()), ("host-stub-ring", "host-stub-sync"));
        assert_eq!(boots[1].defaults, [("--pnp-mode", "sync".to_string())], "only the first boot is traced");
    }

    #[test]
    fn a_filtered_run_says_what_it_runs_and_what_it_leaves_out() {
        let (boots, note) = plan(Some("arch,task"), None, &[]);
        assert_eq!(boots.len(), 1);
        assert_eq!(boots[0].what, "the self-tests matching tests=arch,task, pager in ring mode");
        assert_eq!(boots[0].cmdline, "expect-host=stub tests=arch,task");
        assert!(note.is_some_and(|n| n.contains("--pnp-mode sync")));
        // A mode the user chose: one boot, in it.
        let (boots, note) = plan(None, None, &strings(&["--pnp-mode", "sync"]));
        assert_eq!(boots.len(), 1);
        assert_eq!(boots[0].what, "every self-test, pager in sync mode");
        assert!(note.is_some_and(|n| n.starts_with("--pnp-mode sync given")));
    }

    /// Without a pager the other modes' boots would skip the tests they run (all of them in
    /// sync mode, all but two in the KVM modes): they are left out, and the note says why; the
    /// first boot does not claim a pager it does not have.
    #[test]
    fn a_run_without_the_pager_leaves_out_the_other_modes_boots_and_says_why() {
        let (boots, note) = plan(None, None, &strings(&["--pnp-mib", "0"]));
        assert_eq!(boots.len(), 1);
        assert_eq!(
            (boots[0].what.as_str(), boots[0].label.as_str()),
            ("every self-test, no demand pager", "host-stub-no-pager")
        );
        assert!(note.as_deref().is_some_and(|n| n.contains("left out (--pnp-mib 0: ")), "{note:?}");
        let (boots, note) = plan(None, None, &strings(&["--cmdline", "kstack=64 pnp=off"]));
        assert_eq!(boots.len(), 1);
        assert!(boots[0].what.ends_with("protocol not registered (pnp=off)"), "{}", boots[0].what);
        assert!(note.as_deref().is_some_and(|n| n.contains("(pnp=off: ")), "{note:?}");
        // The guest reads later words over earlier ones: a later pnp= word turns it back on.
        let (boots, _) = plan(None, None, &strings(&["--cmdline", "pnp=off pnp=on", "--pnp-mib=8"]));
        assert_eq!(boots.len(), 6);
    }

    #[test]
    fn the_users_guest_words_follow_xtasks_and_their_tests_choose_the_selection() {
        let extra = strings(&["--cmdline", "sld=fatal tests=ac", "--mem", "256"]);
        let (boots, _) = plan(Some("arch"), None, &extra);
        assert_eq!(boots.len(), 1, "tests= in the guest's words filters the run too");
        assert_eq!(boots[0].cmdline, "expect-host=stub tests=arch sld=fatal tests=ac");
        assert!(boots[0].what.starts_with("the self-tests matching tests=ac"), "{}", boots[0].what);
        let (boots, _) = plan(None, None, &strings(&["--cmdline=kstack=64"]));
        assert_eq!(boots.len(), 6);
        assert_eq!(boots[1].cmdline, "expect-host=stub tests=pnp kstack=64", "every boot gets the user's words");
        // xtask passes one --cmdline, the merged one.
        assert_eq!(without(&extra, "--cmdline"), strings(&["--mem", "256"]));
        assert_eq!(without(&strings(&["--cmdline=x", "--quiet"]), "--cmdline"), strings(&["--quiet"]));
    }
}
