//! Every command the README and `docs/` show, run: the last stage of `cargo xtask test`, so that
//! no example can rot.
//!
//! What counts as a command: each line of a fenced ```` ```sh ```` block in `README.md` and
//! `docs/*.md` (a trailing `# comment` is not part of it). Inline code in prose is not an
//! example; a command meant to be run goes in a `sh` block.
//!
//! Each command has one [`Rule`] in [`RULES`], found by its exact text: run it as written; run a
//! stated variant instead (the full benchmark takes minutes, `--quick` runs every part of it);
//! or do not run it here, with the reason (it is `cargo xtask test` itself, or a stage of it
//! runs the same code). A command with no rule, or a rule whose command no document shows any
//! more, fails the check (and the unit test below, which reads the real documents): a new
//! example cannot go unchecked, nor can a check outlive its example.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Result, err, failed, proc, project_root};

/// What the check does with one documented command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Run it as written (from the project root, with `sh -c`); it must exit 0. `creates`: a
    /// file it must have written (removed first).
    Run { creates: Option<&'static str> },
    /// Run it as written; it must print nothing on stdout (a check written as a search).
    RunPrintsNothing,
    /// Run this command instead, for this reason.
    RunInstead { command: &'static str, why: &'static str },
    /// Not run by this check, for this reason (which names what runs the same code).
    NotRun { why: &'static str },
}

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
    ("cargo xtask --help", Rule::Run { creates: None }),
    ("cargo xtask run --help", Rule::Run { creates: None }),
    ("cargo xtask run --list", Rule::Run { creates: None }),
    ("cargo xtask run --tests arch,task", Rule::Run { creates: None }),
    (
        "cargo xtask run --tests pnp --trace target/run.json -- --trace-omit-console",
        Rule::Run { creates: Some("target/run.json") },
    ),
    (
        "cargo xtask run --results-junit target/results.xml --results-json target/results.jsonl",
        Rule::Run { creates: Some("target/results.xml") },
    ),
    ("cargo xtask run -- --mem 256 --pnp-mode sync --timeout 60 --counters", Rule::Run { creates: None }),
    ("cargo xtask run -- --sld-policy exit", Rule::Run { creates: None }),
    ("cargo xtask run --tests task,ac -- --cmdline \"kstack=64 sld=ratelimit:5\"", Rule::Run { creates: None }),
    (
        "cargo xtask qemu",
        Rule::NotRun {
            why: "the stage \"the same guest under QEMU TCG\" runs the same code (qemu::run_suite with TCG and no options)",
        },
    ),
    ("cargo xtask qemu --accel kvm", Rule::Run { creates: None }),
    ("target/debug/pvagent-host --help", Rule::Run { creates: None }),
    ("cargo build --examples", Rule::Run { creates: None }),
    (
        "cargo run -q -p pvagent-host --example boot -- target/x86_64-unknown-none/debug/pvagent-guest tests=arch",
        Rule::Run { creates: None },
    ),
    (
        "cargo run -q -p pvagent-host --example watch -- target/x86_64-unknown-none/debug/pvagent-guest tests=pnp",
        Rule::Run { creates: None },
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
    ("grep -rn \"crate::\" guest/src/arch | grep -v \"crate::\\(arch\\|boot\\|cell\\)\"", Rule::RunPrintsNothing),
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
}

/// The commands of a Markdown text's `sh` blocks, with their line numbers.
pub fn commands_in(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && info.trim() == "sh";
            continue;
        }
        if in_sh {
            let command = strip_comment(trimmed);
            if !command.is_empty() {
                out.push((i + 1, command.to_string()));
            }
        }
    }
    out
}

/// A shell line without its trailing comment: a `#` that starts a word outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut previous) = (None, ' ');
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
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

/// Every documented command.
pub fn documented_commands(root: &Path) -> Result<Vec<DocCommand>> {
    let mut out = Vec::new();
    for file in documents(root)? {
        let text =
            std::fs::read_to_string(root.join(&file)).map_err(|e| err!("cannot read {}: {e}", file.display()))?;
        out.extend(commands_in(&text).into_iter().map(|(line, command)| DocCommand {
            file: file.clone(),
            line,
            command,
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
                "{}:{}: `{}` has no rule in xtask/src/doccheck.rs (run it, run a variant, or say why not)",
                c.file.display(),
                c.line,
                c.command
            )),
        }
    }
    for (command, _) in RULES {
        if !commands.iter().any(|c| c.command == *command) {
            problems.push(format!("xtask/src/doccheck.rs has a rule for `{command}`, which no document shows"));
        }
    }
    if problems.is_empty() { Ok(matched) } else { Err(failed!("{}", problems.join("\n"))) }
}

/// How long one documented command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `command` with `sh -c` from the project root; returns whether it succeeded and its
/// stdout and stderr lines.
fn run_shell(command: &str) -> Result<(bool, Vec<String>)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(project_root());
    // As for any nested cargo: the calling cargo's variables would steer the documented one.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN");
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST")) {
            cmd.env_remove(&key);
        }
    }
    let outcome = proc::run_observed(cmd, COMMAND_TIMEOUT, &mut |_| {})?;
    Ok((outcome.status.success(), outcome.output))
}

/// The stdout lines of `command` (stderr is not captured), and whether it ran.
fn stdout_of(command: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(project_root())
        .output()
        .map_err(|e| err!("cannot start sh for `{command}`: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
        let (command, creates) = match rule {
            Rule::NotRun { why } => {
                println!("  {at}: `{}`: not run here: {why}", doc.command);
                continue;
            }
            Rule::RunPrintsNothing => {
                println!("  {at}: `{}` (must print nothing)", doc.command);
                let printed = stdout_of(&doc.command)?;
                if !printed.trim().is_empty() {
                    failures.push(format!("{at}: `{}` printed:\n{printed}", doc.command));
                }
                continue;
            }
            Rule::Run { creates } => (doc.command.as_str(), *creates),
            Rule::RunInstead { command, why } => {
                println!("  {at}: `{}`: run as `{command}`: {why}", doc.command);
                (*command, None)
            }
        };
        if ran.contains(&command) {
            println!("  {at}: `{command}`: ran above");
            continue;
        }
        ran.push(command);
        if let Some(file) = creates {
            let _ = std::fs::remove_file(root.join(file));
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
        } else if let Some(file) = creates.filter(|f| !root.join(f).is_file()) {
            failures.push(format!("{at}: `{command}` did not write {file}"));
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failed!("documented commands that failed:\n{}", failures.join("\n"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_lines_of_sh_blocks_without_their_comments() {
        let text = "intro `cargo not-this`\n```sh\ncargo a   # does a\n\ncargo b \"x # y\" # real comment\n```\n\
                    ```text\nnot a command\n```\n```sh\ngrep -c '#' f\n```\n";
        assert_eq!(
            commands_in(text),
            [(3, "cargo a".to_string()), (5, "cargo b \"x # y\"".to_string()), (11, "grep -c '#' f".to_string())]
        );
    }

    #[test]
    fn a_command_without_a_rule_and_a_rule_without_a_command_both_fail() {
        let mut commands: Vec<DocCommand> = RULES
            .iter()
            .map(|(c, _)| DocCommand { file: "README.md".into(), line: 1, command: c.to_string() })
            .collect();
        assert_eq!(match_rules(&commands).map(|m| m.len()).ok(), Some(RULES.len()));
        commands.push(DocCommand { file: "docs/new.md".into(), line: 7, command: "cargo xtask new".into() });
        let message = match_rules(&commands).unwrap_err().message;
        assert!(message.starts_with("docs/new.md:7: `cargo xtask new` has no rule"), "{message}");
        commands.pop();
        commands.remove(0);
        let message = match_rules(&commands).unwrap_err().message;
        assert!(message.contains(&format!("a rule for `{}`, which no document shows", RULES[0].0)), "{message}");
    }

    /// The real documents: every command they show has its rule, and every rule its command.
    #[test]
    fn every_command_in_the_readme_and_docs_has_a_rule() {
        let commands = documented_commands(&project_root()).expect("read the documents");
        assert!(commands.iter().any(|c| c.command == "cargo xtask test"), "{commands:#?}");
        if let Err(e) = match_rules(&commands) {
            panic!("{e}");
        }
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
