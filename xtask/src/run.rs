//! `cargo xtask run`: the default scenario under the host stub. Every self-test with every
//! producer at its defaults (the pager in `ring` mode), then the page-not-present tests again
//! with the pager in `sync` mode, so both of the host's modes are seen on every run. A filtered
//! run (`--tests`, or `tests=` in the guest's command line) or a run in a mode the user chose
//! (`--pnp-mode`) boots once; each boot says what it runs before it starts.
//!
//! The host stub options xtask sets (`--timeout`, `--pnp-mode`, `--trace`) are defaults: the
//! same option given after `--` replaces xtask's (the host stub accepts each option once). A
//! `--cmdline` given after `--` adds its words to xtask's own (`expect-host=stub`, `tests=`);
//! the guest reads later words over earlier ones, so the user's win.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pvagent_abi::report::{Line, Need, Status};
use pvagent_host::results::{self, TestRecord};

use crate::proc;
use crate::{Profile, Result, err, failed, guest, project_root, setup};

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
}

impl RunOptions {
    fn profile(&self) -> Profile {
        if self.release { Profile::Release } else { Profile::Dev }
    }
}

/// Whether `args` (the user's host stub arguments) give option `name` (`--name VALUE` or
/// `--name=VALUE`).
fn gives(args: &[String], name: &str) -> bool {
    value_of(args, name).is_some() || args.iter().any(|a| a == name)
}

/// The value `args` give option `name` (the last one, as the host stub would refuse a second).
fn value_of<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            found = it.next().map(String::as_str);
        } else if let Some(value) = arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
            found = Some(value);
        }
    }
    found
}

/// `args` without option `name` and its value.
fn without(args: &[String], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            it.next();
        } else if !arg.strip_prefix(name).is_some_and(|rest| rest.starts_with('=')) {
            out.push(arg.clone());
        }
    }
    out
}

/// The host stub's arguments: the user's `extra`, after xtask's `defaults` (option, value)
/// that the user did not give.
fn host_arguments(defaults: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in defaults.iter().filter(|(name, _)| !gives(extra, name)) {
        args.push(name.to_string());
        args.push(value.clone());
    }
    args.extend(extra.iter().cloned());
    args
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

/// The boots `cargo xtask run` makes for `tests`, `trace` and the user's host stub arguments,
/// and a note on what it leaves out, if anything.
pub fn plan(tests: Option<&str>, trace: Option<&Path>, extra: &[String]) -> (Vec<Boot>, Option<String>) {
    let user_words = value_of(extra, "--cmdline").unwrap_or("");
    let user_tests = user_words.split_ascii_whitespace().filter_map(|w| w.strip_prefix("tests=")).next_back();
    let selection = user_tests.or(tests);
    let mode = value_of(extra, "--pnp-mode");
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
    let mut boots = vec![Boot {
        what: format!("{}, pager in {} mode", what(selection), mode.unwrap_or("ring")),
        label: format!("host-stub-{}", mode.unwrap_or("ring")),
        cmdline: words(tests),
        defaults: first,
    }];
    let note = match (selection, mode) {
        (Some(_), None) => Some(
            "a filtered run boots once, with the pager in ring mode; add `-- --pnp-mode sync` for sync mode".into(),
        ),
        (_, Some(mode)) => Some(format!("--pnp-mode {mode} given: one boot, in that mode")),
        (None, None) => {
            boots.push(Boot {
                what: "the page-not-present self-tests (tests=pnp), pager in sync mode".into(),
                label: "host-stub-sync".into(),
                cmdline: words(Some("pnp")),
                defaults: vec![("--pnp-mode", "sync".to_string())],
            });
            None
        }
    };
    (boots, note)
}

/// How one boot ended, as far as xtask needs it.
#[derive(Debug)]
struct Booted {
    /// The guest's summary line: (passed, failed, skipped).
    summary: Option<(u32, u32, u32)>,
}

/// One boot of the guest under the host stub binary: `Ok` when it exits 0; a test failure
/// (exit status 1, with the failed tests) or a host-side error (status 2) otherwise.
fn boot(host: &Path, elf: &Path, boot: &Boot, extra: &[String], results: Option<&Path>) -> Result<Booted> {
    let mut defaults = boot.defaults.clone();
    defaults.push(("--timeout", BOOT_TIMEOUT.as_secs().to_string()));
    defaults.push(("--cmdline", boot.cmdline.clone()));
    if let Some(path) = results {
        defaults.push(("--results-json", path.display().to_string()));
    }
    // The user's --cmdline words are in `boot.cmdline` already.
    let args = host_arguments(&defaults, &without(extra, "--cmdline"));
    // A host stub whose --timeout the user made longer than xtask's still gets killed, later.
    let timeout = timeout_given(&args).unwrap_or(BOOT_TIMEOUT).max(BOOT_TIMEOUT);
    let mut cmd = Command::new(host);
    cmd.arg(elf).args(&args);
    let outcome = proc::run(cmd, timeout + Duration::from_secs(10), true)?;
    let mut summary = None;
    let mut failures = Vec::new();
    for line in &outcome.output {
        match Line::parse(line) {
            Some(Line::Summary { passed, failed, skipped }) => summary = Some((passed, failed, skipped)),
            Some(Line::Result { status: Status::Fail, name, reason }) => failures.push(format!("{name}: {reason}")),
            _ => {}
        }
    }
    let shown: Vec<String> =
        args.iter().map(|a| if a.contains(' ') || a.is_empty() { format!("{a:?}") } else { a.clone() }).collect();
    let shown = shown.join(" ");
    match outcome.status.code() {
        Some(0) => Ok(Booted { summary }),
        Some(1) if failures.is_empty() => Err(failed!("the guest reported failure ({shown})")),
        Some(1) => Err(failed!("the guest reported failure ({shown}): {}", failures.join("; "))),
        _ => Err(err!("the host stub failed ({}) for {shown}", outcome.status)),
    }
}

/// The `--timeout` in `args` (`None` for 0, which asks the host stub for no limit: xtask's own
/// limit then still ends the process).
fn timeout_given(args: &[String]) -> Option<Duration> {
    value_of(args, "--timeout")?.parse().ok().filter(|s| *s > 0).map(Duration::from_secs)
}

/// Builds everything and runs the boots [`plan`] makes, saying before each what it runs and
/// after each how it went; writes the results files asked for, also when a boot failed.
pub fn scenario(options: &RunOptions) -> Result<()> {
    setup::check_kvm()?;
    let elf = guest::build_guest(options.profile())?;
    let host = guest::build_host_stub(options.profile())?;
    let (boots, note) = plan(options.tests.as_deref(), options.trace.as_deref(), &options.host_args);
    let want_results = options.results_json.is_some() || options.results_junit.is_some();
    let scratch = project_root().join("target").join("xtask-run");
    if want_results {
        std::fs::create_dir_all(&scratch).map_err(|e| err!("cannot create {}: {e}", scratch.display()))?;
    }
    let mut records: Vec<TestRecord> = Vec::new();
    let mut summaries = Vec::new();
    let mut outcome = Ok(());
    for (i, b) in boots.iter().enumerate() {
        println!("{}==== boot {} of {}: {}", if i == 0 { "" } else { "\n" }, i + 1, boots.len(), b.what);
        if i == 0
            && let Some(note) = &note
        {
            println!("==== ({note})");
        }
        let results = want_results.then(|| scratch.join(format!("boot-{}.jsonl", i + 1)));
        let booted = boot(&host, &elf, b, &options.host_args, results.as_deref());
        if let Some(path) = &results {
            records.extend(read_records(path, &b.label)?);
        }
        match booted {
            Ok(Booted { summary }) => summaries.push((i + 1, b.what.clone(), summary)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
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

/// The records a boot wrote to `path`, labelled `run`.
fn read_records(path: &Path, run: &str) -> Result<Vec<TestRecord>> {
    // A boot that failed before the host stub wrote its results has none.
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut records = results::parse_json_lines(&text).map_err(|e| err!("reading {}: {e}", path.display()))?;
    for record in &mut records {
        record.run = run.to_string();
    }
    Ok(records)
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

/// One self-test as the guest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub on_by_default: bool,
    pub needs: Vec<Need>,
}

/// Boots the guest with the command line word `list` and returns its tests, in the order they
/// run: the guest's own table, so nothing here can drift from it.
pub fn list(profile: Profile) -> Result<Vec<Listed>> {
    setup::check_kvm()?;
    let elf = guest::build_guest(profile)?;
    let host = guest::build_host_stub(profile)?;
    let mut cmd = Command::new(&host);
    cmd.arg(&elf).args(["--cmdline", pvagent_abi::report::LIST_WORD]);
    let outcome = proc::run(cmd, BOOT_TIMEOUT, false)?;
    if !outcome.status.success() {
        return Err(err!("the guest did not list its tests ({}):\n{}", outcome.status, outcome.text()));
    }
    let listed: Vec<Listed> = outcome
        .output
        .iter()
        .filter_map(|l| match Line::parse(l) {
            Some(Line::Listed { name, on_by_default, needs }) => {
                Some(Listed { name: name.to_string(), on_by_default, needs: needs.iter().collect() })
            }
            _ => None,
        })
        .collect();
    if listed.is_empty() {
        return Err(err!("the guest listed no tests:\n{}", outcome.text()));
    }
    Ok(listed)
}

/// The listing as `cargo xtask run --list` prints it: by suite, each test with what it needs,
/// then what each need means.
pub fn format_list(tests: &[Listed]) -> String {
    let mut out = String::new();
    let width = tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut suite = "";
    for t in tests {
        let this_suite = t.name.split("::").next().unwrap_or(&t.name);
        if this_suite != suite {
            suite = this_suite;
            let count = tests.iter().filter(|o| o.name.split("::").next() == Some(suite)).count();
            out.push_str(&format!("{suite} ({count})\n"));
        }
        let mut notes = Vec::new();
        if !t.on_by_default {
            notes.push("on request".to_string());
        }
        if !t.needs.is_empty() {
            notes.push(format!("needs {}", t.needs.iter().map(|n| n.name()).collect::<Vec<_>>().join(", ")));
        }
        out.push_str(format!("  {:width$}  {}", t.name, notes.join("; ")).trim_end());
        out.push('\n');
    }
    let default = tests.iter().filter(|t| t.on_by_default).count();
    out.push_str(&format!(
        "\n{} tests: {default} run by default, {} only when --tests names them exactly (on request).\n",
        tests.len(),
        tests.len() - default
    ));
    let mut needed: Vec<Need> = tests.iter().flat_map(|t| t.needs.iter().copied()).collect();
    needed.sort_by_key(|n| *n as u8);
    needed.dedup();
    if !needed.is_empty() {
        out.push_str("A test whose needs this host does not meet reports SKIP, saying which. Needs:\n");
        for need in needed {
            out.push_str(&format!("  {:19} {}\n", need.name(), need.description()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn defaults() -> Vec<(&'static str, String)> {
        vec![("--pnp-mode", "ring".to_string()), ("--timeout", "300".to_string())]
    }

    /// Each option exactly once (the host stub refuses a repeated one), with the user's value.
    #[test]
    fn a_users_option_replaces_xtasks_default() {
        let args = host_arguments(&defaults(), &strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        assert_eq!(args, strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        for name in ["--timeout", "--pnp-mode"] {
            assert_eq!(args.iter().filter(|a| a.starts_with(name)).count(), 1, "{name}: {args:?}");
        }
    }

    #[test]
    fn xtasks_defaults_apply_where_the_user_gave_none() {
        let args = host_arguments(&defaults(), &strings(&["--mem", "256"]));
        assert_eq!(args, strings(&["--pnp-mode", "ring", "--timeout", "300", "--mem", "256"]));
        // A longer option that starts with the same letters is another option.
        assert!(!gives(&strings(&["--pnp-modes", "x"]), "--pnp-mode"));
        assert!(gives(&strings(&["--counters"]), "--counters"), "a flag is given too");
    }

    #[test]
    fn the_process_deadline_follows_a_longer_timeout() {
        assert_eq!(timeout_given(&strings(&["--timeout", "900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout=900"])), Some(Duration::from_secs(900)));
        assert_eq!(timeout_given(&strings(&["--timeout", "0"])), None);
        assert_eq!(timeout_given(&strings(&["--mem", "64"])), None);
    }

    #[test]
    fn an_unfiltered_run_boots_in_both_modes() {
        let (boots, note) = plan(None, Some(Path::new("t.json")), &[]);
        assert_eq!(note, None);
        assert_eq!(boots.len(), 2);
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

    #[test]
    fn the_users_guest_words_follow_xtasks_and_their_tests_choose_the_selection() {
        let extra = strings(&["--cmdline", "sld=fatal tests=ac", "--mem", "256"]);
        let (boots, _) = plan(Some("arch"), None, &extra);
        assert_eq!(boots.len(), 1, "tests= in the guest's words filters the run too");
        assert_eq!(boots[0].cmdline, "expect-host=stub tests=arch sld=fatal tests=ac");
        assert!(boots[0].what.starts_with("the self-tests matching tests=ac"), "{}", boots[0].what);
        let (boots, _) = plan(None, None, &strings(&["--cmdline=kstack=64"]));
        assert_eq!(boots.len(), 2);
        assert_eq!(boots[1].cmdline, "expect-host=stub tests=pnp kstack=64", "every boot gets the user's words");
        // xtask passes one --cmdline, the merged one.
        assert_eq!(without(&extra, "--cmdline"), strings(&["--mem", "256"]));
        assert_eq!(without(&strings(&["--cmdline=x", "--quiet"]), "--cmdline"), strings(&["--quiet"]));
    }

    #[test]
    fn the_listing_groups_by_suite_and_explains_the_needs() {
        let tests = [
            Listed { name: "arch::a".into(), on_by_default: true, needs: vec![] },
            Listed { name: "arch::bb".into(), on_by_default: true, needs: vec![Need::HostStub] },
            Listed { name: "harness::c".into(), on_by_default: false, needs: vec![] },
        ];
        let text = format_list(&tests);
        assert!(text.starts_with("arch (2)\n  arch::a\n  arch::bb    needs host-stub\nharness (1)\n"), "{text}");
        assert!(text.contains("  harness::c  on request\n"), "{text}");
        assert!(text.contains("3 tests: 2 run by default, 1 only when"), "{text}");
        assert!(text.contains(&format!("  host-stub           {}", Need::HostStub.description())), "{text}");
    }
}
