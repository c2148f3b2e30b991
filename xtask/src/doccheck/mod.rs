//! Every command the README and `docs/` show, run: the last stage of `cargo xtask test`, so that
//! no example can rot.
//!
//! What counts as a command (`markdown.rs`): each line of a fenced ```` ```sh ```` block in
//! `README.md` and `docs/*.md`, and each inline code span in their prose that starts with a
//! program and its arguments (`cargo xtask run --list`). A command a reader is told to run goes
//! in a `sh` block; one only mentioned in prose (a form with a placeholder, what xtask runs
//! itself) is found all the same, so that none escapes a rule.
//!
//! Each command has one [`Rule`] in [`RULES`], found by its exact text: run it as written (and
//! check the files it makes: a results file must parse and hold one record per test the run
//! reported); run it as a search that must find nothing; run a stated variant instead (the full
//! benchmark takes minutes, `--quick` runs every part of it); or do not run it here, with the
//! reason (it is `cargo xtask test` itself, a stage of it runs the same code, or it needs what
//! the project does not assume, such as a nightly toolchain). A command with no rule, or a rule
//! whose command no document shows any more, fails the check (and the unit test below, which
//! reads the real documents): a new example cannot go unchecked, nor can a check outlive its
//! example.

mod made;
mod markdown;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Result, err, failed, proc, project_root};

/// What the check does with one documented command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Run it as written (from the project root, with `sh -c`); it must exit 0 and make each
    /// of `makes` (removed first), as each says.
    Run { makes: &'static [Made] },
    /// Run it as written: a check written as a search, which must find nothing. It must print
    /// nothing on stdout or stderr and exit 0 or 1 (a search's "found nothing"): a search of a
    /// path that moved away complains on stderr and exits 2, and must not pass as "nothing".
    RunFindsNothing,
    /// Run this command instead, for this reason.
    RunInstead { command: &'static str, why: &'static str },
    /// Not run by this check, for this reason (which names what runs the same code).
    NotRun { why: &'static str },
}

pub use made::Made;

/// The one benchmark this check runs for every documented benchmark command (as CI's
/// `.ci/run` does): every part of it, in seconds.
const QUICK_BENCH: &str = "cargo xtask bench --quick --trace target/bench/trace.json";

/// The rule of every documented command, by its exact text.
pub const RULES: &[(&str, Rule)] = &[
    ("cargo xtask test", Rule::NotRun { why: "it is the command running this check (CI runs it through .ci/run)" }),
    (
        "cargo xtask run",
        Rule::NotRun {
            why: "the stage \"guest self-tests under the host stub\" runs the same code (run::scenario with no options)",
        },
    ),
    ("cargo xtask --help", Rule::Run { makes: &[] }),
    ("cargo xtask run --help", Rule::Run { makes: &[] }),
    ("cargo xtask run --list", Rule::Run { makes: &[] }),
    ("cargo xtask run --tests arch,task", Rule::Run { makes: &[] }),
    (
        "cargo xtask run --tests pnp --trace target/run.json -- --trace-omit-console",
        Rule::Run { makes: &[Made::Trace("target/run.json")] },
    ),
    (
        "cargo xtask run --results-junit target/results.xml --results-json target/results.jsonl",
        Rule::Run { makes: &[Made::ResultsJson("target/results.jsonl"), Made::ResultsJunit("target/results.xml")] },
    ),
    ("cargo xtask run -- --mem 256 --pnp-mode sync --timeout 60 --counters", Rule::Run { makes: &[] }),
    ("cargo xtask run -- --sld-policy exit", Rule::Run { makes: &[] }),
    (
        "cargo xtask run -- --vcpus 4",
        Rule::NotRun {
            why: "the stage \"guest self-tests under the host stub with 4 vCPUs\" runs the same code (run::scenario with --vcpus 4)",
        },
    ),
    ("cargo xtask run -- --vcpus 4 --threads-per-core 2", Rule::Run { makes: &[] }),
    ("cargo xtask run --tests memslot -- --vcpus 4 --layout-unheld", Rule::Run { makes: &[] }),
    (
        "cargo xtask run -- --serial-log target/console.log",
        Rule::Run { makes: &[Made::Console("target/console.log"), Made::Console("target/console.boot2.log")] },
    ),
    ("cargo xtask run --tests task,ac -- --cmdline \"kstack=64 sld=ratelimit:5\"", Rule::Run { makes: &[] }),
    ("cargo xtask run --tests hostile -- --break test-ctrl-not-kept", Rule::Run { makes: &[] }),
    (
        "cargo xtask qemu",
        Rule::NotRun {
            why: "the stage \"the same guest under QEMU TCG\" runs the same code (qemu::run_suite with TCG and no options)",
        },
    ),
    (
        "cargo xtask qemu --smp 4",
        Rule::NotRun {
            why: "the stage \"the same guest under QEMU TCG with 4 vCPUs\" runs the same code (qemu::run_suite with TCG and 4 vCPUs)",
        },
    ),
    ("cargo xtask qemu --accel kvm", Rule::Run { makes: &[] }),
    ("cargo xtask qemu --smp 4", Rule::Run { makes: &[] }),
    ("target/debug/pvagent-host --help", Rule::Run { makes: &[] }),
    ("cargo build --examples", Rule::Run { makes: &[] }),
    (
        "cargo run -q -p pvagent-host --example boot -- target/x86_64-unknown-none/debug/pvagent-guest tests=arch",
        Rule::Run { makes: &[] },
    ),
    (
        "cargo run -q -p pvagent-host --example watch -- target/x86_64-unknown-none/debug/pvagent-guest tests=pnp",
        Rule::Run { makes: &[] },
    ),
    (
        "cargo xtask bench",
        Rule::RunInstead {
            command: QUICK_BENCH,
            why: "the full benchmark takes about 2 minutes; --quick runs every part of it (--trace too)",
        },
    ),
    (
        "cargo xtask bench --quick",
        Rule::RunInstead { command: QUICK_BENCH, why: "one quick benchmark covers it with --trace as well" },
    ),
    (
        "cargo xtask bench --trace target/bench/trace.json",
        Rule::RunInstead {
            command: QUICK_BENCH,
            why: "the full benchmark takes about 2 minutes; --quick runs every part of it",
        },
    ),
    (
        "cargo xtask bench --update-docs",
        Rule::NotRun {
            why: "it rewrites docs/performance.md from a full benchmark; `cargo xtask bench --quick` above runs the rest of the same code",
        },
    ),
    (
        "cargo xtask budgets",
        Rule::NotRun {
            why: "it is a stage of `cargo xtask test`, which runs this check and the budgets just before it",
        },
    ),
    (
        "cargo xtask soak",
        Rule::NotRun { why: "it is a stage of `cargo xtask test` (\"a short soak\"), which runs this check after it" },
    ),
    (
        "cargo xtask soak --release --events 1000000 --seed 0x15",
        Rule::NotRun {
            why: "the long soak takes about 25 minutes here; the stage \"a short soak\" of `cargo xtask test` runs the same code with 2,000 events",
        },
    ),
    (
        "PVAGENT_PROPTEST_SEED=$RANDOM PVAGENT_PROPTEST_SCALE=50 cargo test --workspace --exclude pvagent-tests",
        Rule::RunInstead {
            command: "PVAGENT_PROPTEST_SEED=7 PVAGENT_PROPTEST_SCALE=2 cargo test --quiet -p pvagent-host --lib",
            why: "a random seed would make this check's result vary between runs, and scale 50 takes minutes: the host stub's properties from another fixed seed at twice their cases use both variables",
        },
    ),
    (
        "cargo fuzz",
        Rule::NotRun {
            why: "it needs a nightly toolchain, which the project does not assume; there are no fuzz targets (docs/robustness.md, \"Searching further\")",
        },
    ),
    ("grep -rn \"crate::\" guest/src/arch | grep -v \"crate::\\(arch\\|boot\\|cell\\)\"", Rule::RunFindsNothing),
    ("grep -rn \"unsafe impl.*Sync\" guest/src | grep -v \"^guest/src/cell.rs:\"", Rule::RunFindsNothing),
    (
        "cargo +nightly miri test -p pvagent-guest --lib -- cell:: sync::",
        Rule::NotRun {
            why: "it needs a nightly toolchain with Miri, and only stable Rust is assumed (docs/environment.md); the same unit tests run on stable in the stage \"host unit tests\"",
        },
    ),
    (
        "valgrind --tool=callgrind --callgrind-out-file=target/callgrind.out target/release/pvagent-host target/x86_64-unknown-none/release/pvagent-bench --bench --pnp-mib 0 --cmdline \"bench=io bench-reps=3\"",
        Rule::NotRun {
            why: "it needs valgrind, which the project does not install (docs/environment.md); the run it profiles is the benchmark's baseline, which `cargo xtask bench --quick` runs",
        },
    ),
    (
        "callgrind_annotate target/callgrind.out",
        Rule::NotRun { why: "it reads the profile the valgrind command above makes, which is not run here" },
    ),
    (
        "objdump -d --no-show-raw-insn target/x86_64-unknown-none/release/pvagent-bench | grep -B3 'rep movs'",
        Rule::NotRun {
            why: "it needs objdump (binutils), which the project does not install; docs/performance.md says so, and why the check is by hand",
        },
    ),
    // Commands the prose only mentions.
    ("cargo xtask", Rule::NotRun { why: "the tool's name in a sentence; `cargo xtask --help` runs it" }),
    ("cargo xtask run / qemu / test / bench", Rule::NotRun { why: "a list of the subcommands, each run above" }),
    ("cargo xtask run \\| qemu \\| test \\| bench \\| budgets", Rule::NotRun { why: "a list of the subcommands" }),
    (
        "cargo xtask run --trace FILE",
        Rule::NotRun { why: "a form: `cargo xtask run --tests pnp --trace target/run.json ...` runs it" },
    ),
    (
        "cargo xtask bench --trace FILE",
        Rule::NotRun { why: "a form: `cargo xtask bench --quick --trace target/bench/trace.json` runs it" },
    ),
    (
        "cargo xtask run --tests suite::what_it_shows",
        Rule::NotRun { why: "a form: `cargo xtask run --tests arch,task` runs the same option" },
    ),
    ("rustup target add x86_64-unknown-none", Rule::Run { makes: &[] }),
    (
        "sudo apt-get update",
        Rule::NotRun {
            why: "xtask's setup runs it when QEMU is missing (setup::ensure_qemu, before the stages of `cargo xtask test`); it changes the machine's packages",
        },
    ),
    (
        "sudo apt-get install --no-install-recommends --no-remove qemu-system-x86",
        Rule::NotRun {
            why: "xtask's setup runs it when QEMU is missing (setup::ensure_qemu, before the stages of `cargo xtask test`); it changes the machine's packages",
        },
    ),
    (
        "apt-get download",
        Rule::NotRun {
            why: "xtask's setup runs it when apt refuses to install QEMU (setup::private_qemu::make; its reading of apt's simulation is unit-tested on captured output); its packages depend on the machine",
        },
    ),
    (
        "apt-get install qemu-system-x86",
        Rule::NotRun {
            why: "how QEMU was installed when it was measured; xtask's setup installs it (setup::ensure_qemu)",
        },
    ),
    (
        "apt-get install libclang-dev",
        Rule::NotRun {
            why: "a package the project chose not to need (design.md says why): installing it would hide that",
        },
    ),
    (
        "cargo clippy --workspace",
        Rule::NotRun { why: "CI runs clippy with its full flags (.ci/run) before `cargo xtask test`" },
    ),
    ("cargo build", Rule::Run { makes: &[] }),
];

/// A command as a document shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocCommand {
    /// The document, relative to the project root.
    pub file: PathBuf,
    /// Its line (1-based).
    pub line: usize,
    /// The command, without its trailing comment.
    pub command: String,
    /// Shown inline in the prose, not in a `sh` block.
    pub inline: bool,
}

/// The documents whose commands are checked: the README and every `docs/*.md`.
pub fn documents(root: &Path) -> Result<Vec<PathBuf>> {
    let mut docs = vec![PathBuf::from("README.md")];
    let dir = root.join("docs");
    let entries = std::fs::read_dir(&dir).map_err(|e| err!("cannot read {}: {e}", dir.display()))?;
    let mut md: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    md.sort();
    docs.extend(md);
    Ok(docs)
}

/// Every documented command, in `sh` blocks and inline.
pub fn documented_commands(root: &Path) -> Result<Vec<DocCommand>> {
    let mut out = Vec::new();
    for file in documents(root)? {
        let text =
            std::fs::read_to_string(root.join(&file)).map_err(|e| err!("cannot read {}: {e}", file.display()))?;
        out.extend(markdown::commands_in(&text).into_iter().map(|shown| DocCommand {
            file: file.clone(),
            line: shown.line,
            command: shown.command,
            inline: shown.inline,
        }));
    }
    Ok(out)
}

/// Each documented command with its rule; an error naming every command without one and every
/// rule no document uses.
pub fn match_rules(commands: &[DocCommand]) -> Result<Vec<(DocCommand, Rule)>> {
    let mut problems = Vec::new();
    let mut matched = Vec::new();
    for c in commands {
        match RULES.iter().find(|(command, _)| *command == c.command) {
            Some((_, rule)) => matched.push((c.clone(), *rule)),
            None => problems.push(format!(
                "{}:{}: `{}`{} has no rule in xtask/src/doccheck/mod.rs (run it, run a variant, or say why not)",
                c.file.display(),
                c.line,
                c.command,
                if c.inline { " (inline)" } else { "" }
            )),
        }
    }
    for (command, _) in RULES {
        if !commands.iter().any(|c| c.command == *command) {
            problems.push(format!("xtask/src/doccheck/mod.rs has a rule for `{command}`, which no document shows"));
        }
    }
    if problems.is_empty() { Ok(matched) } else { Err(failed!("{}", problems.join("\n"))) }
}

/// How long one documented command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// `command` for `sh -c` from the project root, without the calling cargo's variables (as for
/// any nested cargo: they would steer the documented one).
fn shell(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(project_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN");
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST")) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs `command` with `sh -c` from the project root; returns whether it succeeded and its
/// stdout and stderr lines.
fn run_shell(command: &str) -> Result<(bool, Vec<String>)> {
    let outcome = proc::run_observed(shell(command), COMMAND_TIMEOUT, &mut |_| {})?;
    Ok((outcome.status.success(), outcome.output))
}

/// Runs a search that must find nothing (see [`Rule::RunFindsNothing`]): `Err` says what it
/// found or how it failed.
pub fn check_finds_nothing(command: &str) -> Result<Result<(), String>> {
    let out = shell(command).output().map_err(|e| err!("cannot start sh for `{command}`: {e}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let searched = matches!(out.status.code(), Some(0 | 1));
    Ok(if !searched || !stderr.trim().is_empty() {
        Err(format!("it did not search ({}): {}{}", out.status, stderr.trim(), stdout.trim()))
    } else if !stdout.trim().is_empty() {
        Err(format!("it found:\n{stdout}"))
    } else {
        Ok(())
    })
}

/// Runs every documented command by its rule, each at most once; fails with every one that
/// failed.
pub fn run_all() -> Result<()> {
    let root = project_root();
    let matched = match_rules(&documented_commands(&root)?)?;
    let mut ran: Vec<&str> = Vec::new();
    let mut failures = Vec::new();
    for (doc, rule) in &matched {
        let at = format!("{}:{}", doc.file.display(), doc.line);
        let (command, makes) = match rule {
            Rule::NotRun { why } => {
                println!("  {at}: `{}`: not run here: {why}", doc.command);
                continue;
            }
            Rule::RunFindsNothing => {
                println!("  {at}: `{}` (must find nothing)", doc.command);
                if let Err(problem) = check_finds_nothing(&doc.command)? {
                    failures.push(format!("{at}: `{}`: {problem}", doc.command));
                }
                continue;
            }
            Rule::Run { makes } => (doc.command.as_str(), *makes),
            Rule::RunInstead { command, why } => {
                println!("  {at}: `{}`: run as `{command}`: {why}", doc.command);
                (*command, &[][..])
            }
        };
        if ran.contains(&command) {
            println!("  {at}: `{command}`: ran above");
            continue;
        }
        ran.push(command);
        for made in makes {
            let _ = std::fs::remove_file(root.join(made.path()));
        }
        println!("  {at}: `{command}`");
        let start = Instant::now();
        let (succeeded, output) = run_shell(command)?;
        // Its last lines say how it ended; all of them when it failed.
        let shown = if succeeded { output.len().saturating_sub(2) } else { 0 };
        for line in &output[shown..] {
            println!("    | {line}");
        }
        println!("    ({:.1} s)", start.elapsed().as_secs_f64());
        if !succeeded {
            failures.push(format!("{at}: `{command}` failed"));
            continue;
        }
        for made in makes {
            match made.check(&root, &output) {
                Ok(what) => println!("    {what}"),
                Err(problem) => failures.push(format!("{at}: `{command}`: {problem}")),
            }
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failed!("documented commands that failed:\n{}", failures.join("\n"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(file: &str, line: usize, text: &str) -> DocCommand {
        DocCommand { file: file.into(), line, command: text.to_string(), inline: false }
    }

    #[test]
    fn a_command_without_a_rule_and_a_rule_without_a_command_both_fail() {
        let mut commands: Vec<DocCommand> = RULES.iter().map(|(c, _)| command("README.md", 1, c)).collect();
        assert_eq!(match_rules(&commands).map(|m| m.len()).ok(), Some(RULES.len()));
        commands.push(DocCommand { inline: true, ..command("docs/new.md", 7, "cargo xtask new") });
        let message = match_rules(&commands).unwrap_err().message;
        assert!(message.starts_with("docs/new.md:7: `cargo xtask new` (inline) has no rule"), "{message}");
        commands.pop();
        commands.remove(0);
        let message = match_rules(&commands).unwrap_err().message;
        assert!(message.contains(&format!("a rule for `{}`, which no document shows", RULES[0].0)), "{message}");
    }

    /// The real documents: every command they show, in a block or inline, has its rule, and
    /// every rule its command.
    #[test]
    fn every_command_in_the_readme_and_docs_has_a_rule() {
        let commands = documented_commands(&project_root()).expect("read the documents");
        assert!(commands.iter().any(|c| c.command == "cargo xtask test"), "{commands:#?}");
        assert!(commands.iter().any(|c| c.inline), "inline commands are found: {commands:#?}");
        if let Err(e) = match_rules(&commands) {
            panic!("{e}");
        }
    }

    /// A search finds nothing only when it searched: no output, no complaint, status 0 or 1.
    #[test]
    fn a_search_of_a_path_that_moved_away_does_not_pass_as_finding_nothing() {
        let finds_nothing = |command: &str| check_finds_nothing(command).expect("run sh");
        assert_eq!(finds_nothing("grep -rn no_such_word_anywhere xtask/src/lib.rs | grep -v x"), Ok(()));
        let moved = finds_nothing("grep -rn crate:: guest/src/no_such_dir | grep -v \"crate::arch\"");
        assert!(moved.as_ref().is_err_and(|p| p.contains("did not search")), "{moved:?}");
        let found = finds_nothing("grep -n \"pub mod doccheck\" xtask/src/lib.rs");
        assert!(found.as_ref().is_err_and(|p| p.contains("it found:")), "{found:?}");
        assert!(finds_nothing("exit 2").is_err(), "an error status is no search");
    }

    /// The examples run because the README shows them: each one a documented command runs.
    #[test]
    fn every_example_of_the_host_stub_is_run_by_a_documented_command() {
        let dir = project_root().join("host-stub/examples");
        let examples: Vec<String> = std::fs::read_dir(&dir)
            .expect("host-stub/examples")
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
            .collect();
        assert!(examples.len() >= 2, "{examples:?}");
        for example in examples {
            let runs = RULES.iter().any(|(command, rule)| {
                matches!(rule, Rule::Run { .. }) && command.contains(&format!("--example {example} "))
            });
            assert!(runs, "no documented command runs the example {example}");
        }
    }
}
