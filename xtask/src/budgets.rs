//! The instruction and exit budgets of the guest's paths (`xtask/budgets.toml`), and the check
//! `cargo xtask test` runs against them: the release guests are booted and benchmarked just far
//! enough to count every path, and a path whose count is above its limit fails the command,
//! naming the path and both numbers.
//!
//! Each path has a limit the check enforces and the target the project aims at; a path whose
//! target is not met yet has today's count (and a small margin) as its limit, so that it cannot
//! grow while it waits to be cut. A hard path's target is the issue's budget, which its limit
//! may never exceed: the file is refused otherwise. Three figures per event: guest kernel
//! instructions (KVM's `insn_emulation`), the exits the guest caused, and iterations of the
//! kernel's string instructions (which `insn_emulation` counts once per 1,024 while each costs
//! about an instruction's time). A count is judged on its smallest value over the repetitions:
//! the benchmark runs again a repetition in which the host was late (`bench/pnp.rs`), so they
//! are the same on every repetition, and the least only guards against what it cannot see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bench::counts::PathCounts;
use crate::bench::{self, samples::RunOutput};
use crate::guest;
use crate::{Profile, Result, err, project_root};

/// Where the budgets live.
pub fn file() -> PathBuf {
    project_root().join("xtask").join("budgets.toml")
}

/// One path's budget: per event, for the release build.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// What the path is, in words.
    pub what: String,
    /// The limit the check enforces on guest kernel instructions per event (absent: none).
    pub insns: Option<f64>,
    /// The limit on exits per event.
    pub exits: Option<f64>,
    /// The limit on iterations of the kernel's string instructions per event.
    pub string_iters: Option<f64>,
    /// The target the project aims at, where it is not the limit yet.
    pub target_insns: Option<f64>,
    pub target_exits: Option<f64>,
    /// Whether the targets are the issue's hard budget: each limit must be at or below its
    /// target (the file is refused otherwise), so that no limit can be raised past it.
    #[serde(default)]
    pub hard: bool,
    /// Why the limit is what it is.
    #[serde(default)]
    pub note: String,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// The host stub's run loop over the bare loop, the median of the paired ratios of a full
    /// benchmark run: a time, so judged by `cargo xtask bench`, not by the check.
    pub host_stub_loop_ratio: f64,
    /// Each path's budget, by the key `cargo xtask bench` uses for it.
    pub path: BTreeMap<String, Budget>,
}

impl Budgets {
    /// Reads and checks the file.
    pub fn load() -> Result<Self> {
        Self::load_from(&file())
    }

    fn load_from(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| err!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| err!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let budgets: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, b) in &budgets.path {
            for (limit, target, what) in [(b.insns, b.target_insns, "insns"), (b.exits, b.target_exits, "exits")] {
                // A soft target is where the limit is to come down to; a hard one is the
                // ceiling the limit must stay under.
                if !b.hard
                    && let (Some(limit), Some(target)) = (limit, target)
                    && target > limit
                {
                    return Err(format!("path {name}: target_{what} {target} is above the limit {limit}"));
                }
                if limit.is_none() && target.is_some() {
                    return Err(format!("path {name}: target_{what} without a limit"));
                }
                if b.hard
                    && let (Some(limit), Some(target)) = (limit, target)
                    && limit > target
                {
                    return Err(format!(
                        "path {name} is hard: its {what} limit {limit} is above its target {target}, the issue's budget"
                    ));
                }
            }
            if b.hard && b.target_insns.is_none() && b.target_exits.is_none() {
                return Err(format!("path {name} is hard but names no target (the issue's budget it is held to)"));
            }
        }
        Ok(budgets)
    }
}

/// Which figure of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Figure {
    Instructions,
    Exits,
    StringIterations,
}

impl Figure {
    pub fn name(self) -> &'static str {
        match self {
            Figure::Instructions => "instructions",
            Figure::Exits => "exits",
            Figure::StringIterations => "string iterations",
        }
    }
}

/// One figure of one path against its budget.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub path: String,
    pub per: String,
    pub figure: Figure,
    /// The smallest count over the repetitions; `None` where it was not counted.
    pub measured: Option<f64>,
    pub limit: f64,
    /// The target, where it is below the limit; on a hard path the issue's budget (at or above
    /// the limit).
    pub target: Option<f64>,
    pub hard: bool,
    /// Why there is no measurement.
    pub unavailable: Option<String>,
}

impl Verdict {
    /// Over its limit: the check fails.
    pub fn over_limit(&self) -> bool {
        self.measured.is_some_and(|m| m > self.limit)
    }

    /// The target (or the limit, where it is the target) is met.
    pub fn target_met(&self) -> Option<bool> {
        Some(self.measured? <= self.target.unwrap_or(self.limit))
    }

    /// In words, for a table.
    pub fn status(&self) -> String {
        match (self.measured, self.target_met(), self.target) {
            (None, ..) => format!("not judged: {}", self.unavailable.as_deref().unwrap_or("not measured")),
            _ if self.over_limit() => "OVER THE LIMIT".into(),
            (_, _, None) => "within the limit".into(),
            (_, Some(true), _) => "target met".into(),
            _ if self.hard => "within the limit; hard target not met yet".into(),
            _ => "within the limit; target not met yet".into(),
        }
    }
}

/// A count as a table shows it: whole where it is, to two decimals otherwise.
pub fn count(n: f64) -> String {
    if n.fract() == 0.0 { format!("{n:.0}") } else { format!("{n:.2}") }
}

/// Every budgeted figure against the counts; a budgeted path that was not counted at all is a
/// problem (named in the second list), as is a counted path without a budget.
pub fn judge(budgets: &Budgets, counts: &[PathCounts]) -> (Vec<Verdict>, Vec<String>) {
    let mut verdicts = Vec::new();
    let mut problems = Vec::new();
    for (name, b) in &budgets.path {
        let Some(c) = counts.iter().find(|c| &c.path == name) else {
            problems.push(format!("path {name} has a budget in {} but was not counted", file().display()));
            continue;
        };
        for (figure, limit, target, summary) in [
            (Figure::Instructions, b.insns, b.target_insns, c.insns),
            (Figure::Exits, b.exits, b.target_exits, c.exits),
            (Figure::StringIterations, b.string_iters, None, c.string_iters),
        ] {
            let Some(limit) = limit else { continue };
            verdicts.push(Verdict {
                path: name.clone(),
                per: c.per.clone(),
                figure,
                measured: summary.map(|s| s.min),
                limit,
                // A hard path shows the budget it is held to; a soft one its aim below the limit.
                target: if b.hard { target } else { target.filter(|t| *t < limit) },
                hard: b.hard && target.is_some(),
                unavailable: c.unavailable.clone(),
            });
        }
    }
    for c in counts.iter().filter(|c| !budgets.path.contains_key(&c.path)) {
        problems.push(format!("path {} was counted but has no budget in {}", c.path, file().display()));
    }
    (verdicts, problems)
}

/// The verdicts as a Markdown table; with `judged` false (a quick run's dev build, whose counts
/// the release budgets do not apply to) the status column says so.
pub fn table(verdicts: &[Verdict], judged: bool) -> String {
    let mut out = String::from(
        "| path | figure | measured (least) | limit | target | status |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for v in verdicts {
        let target = match v.target {
            Some(t) => format!("{}{}", count(t), if v.hard { " (hard)" } else { "" }),
            None => "the limit".into(),
        };
        out += &format!(
            "| {} | {} per {} | {} | {} | {} | {} |\n",
            v.path,
            v.figure.name(),
            v.per,
            v.measured.map_or_else(|| "n/a".into(), count),
            count(v.limit),
            target,
            if judged { v.status() } else { "not judged: dev build (the budgets are the release build's)".into() }
        );
    }
    out
}

/// What the check fails on: each figure over its limit, naming the path and both numbers.
pub fn failures(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| v.over_limit())
        .map(|v| {
            format!(
                "{}: {} {} per {}, over its limit of {} (xtask/budgets.toml; a change that needs more raises the limit in the same commit and says why)",
                v.path,
                count(v.measured.unwrap_or_default()),
                v.figure.name(),
                v.per,
                count(v.limit)
            )
        })
        .collect()
}

/// What the check cannot pass without: a budgeted figure that was not measured. Exits are
/// counted everywhere the host stub runs; instructions and string iterations wherever KVM
/// emulates the guest kernel (`emulated`), and only there is a missing one not a problem.
pub fn unmeasured(verdicts: &[Verdict], emulated: bool) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| v.measured.is_none() && (emulated || v.figure == Figure::Exits))
        .map(|v| {
            format!(
                "{}: {} per {} not measured ({}), so not within its limit of {}",
                v.path,
                v.figure.name(),
                v.per,
                v.unavailable.as_deref().unwrap_or("no count"),
                count(v.limit)
            )
        })
        .collect()
}

/// `cargo xtask test`'s budget stage: boots the release product guest and runs the release
/// benchmark guest's counting benchmarks under `host` (any build of the host stub: the counts
/// are the guest's and KVM's), and fails when a path is over its limit.
pub fn check(host: &Path) -> Result<()> {
    let budgets = Budgets::load()?;
    let elf = guest::build_guest(Profile::Release)?;
    let bench_elf = guest::build_bench_guest(Profile::Release)?;
    let emulated = bench::guest_kernel_emulated();
    let mut boots = Vec::new();
    for _ in 0..2 {
        boots.push(bench::boot_run(host, &elf)?);
    }
    let run: RunOutput = bench::counting_run(host, &bench_elf)?;
    let mut counts = bench::counts::of_samples(&run, emulated)?;
    counts.push(bench::counts::of_boots(&boots, emulated));
    let (verdicts, mut problems) = judge(&budgets, &counts);
    println!("{}", table(&verdicts, true));
    problems.extend(failures(&verdicts));
    problems.extend(unmeasured(&verdicts, emulated));
    if problems.is_empty() {
        println!("xtask: every path within its budget");
        Ok(())
    } else {
        // A path over its limit is a failed test (exit status 1), not a host-side error.
        Err(err!("the paths' budgets:\n  {}", problems.join("\n  ")).as_test_failure())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Summary;

    fn counted(path: &str, insns: &[f64], exits: &[f64]) -> PathCounts {
        PathCounts {
            path: path.into(),
            per: "event".into(),
            insns: Summary::of(insns),
            exits: Summary::of(exits),
            kvm_exits: None,
            string_iters: Summary::of(&[0.0]),
            unavailable: None,
        }
    }

    const FILE: &str = r#"
        host_stub_loop_ratio = 1.02
        [path.interrupt]
        what = "an interrupt"
        insns = 100
        exits = 1
        hard = false
        [path.ring]
        what = "a round trip"
        insns = 1100
        target_insns = 600
        exits = 5
        target_exits = 3
        note = "today's count, until the path is cut"
    "#;

    #[test]
    fn the_checked_in_file_parses_and_budgets_every_path_the_benchmark_counts() {
        let budgets = Budgets::load().unwrap();
        for path in ["boot", "console", "null_exit", "interrupt", "exception", "page_not_present", "ring", "halt"] {
            assert!(budgets.path.contains_key(path), "{path}");
        }
        assert!(budgets.host_stub_loop_ratio > 1.0);
    }

    #[test]
    fn a_count_over_its_limit_fails_naming_the_path_and_both_numbers() {
        let budgets = Budgets::parse(FILE).unwrap();
        let counts = [counted("interrupt", &[101.0, 140.0], &[1.0]), counted("ring", &[1030.0], &[4.0, 3.9])];
        let (verdicts, problems) = judge(&budgets, &counts);
        assert!(problems.is_empty(), "{problems:?}");
        let failed = failures(&verdicts);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("interrupt: 101 instructions per event, over its limit of 100"), "{failed:?}");
        let ring: Vec<&Verdict> = verdicts.iter().filter(|v| v.path == "ring").collect();
        assert_eq!(ring[0].status(), "within the limit; target not met yet");
        assert_eq!(ring[1].measured, Some(3.9), "judged on the least of the repetitions");
    }

    #[test]
    fn a_missing_count_or_budget_is_a_problem_and_an_uncounted_figure_is_not_judged() {
        let budgets = Budgets::parse(FILE).unwrap();
        let mut uncounted = counted("interrupt", &[], &[1.0]);
        uncounted.unavailable = Some("not emulated here".into());
        let (verdicts, problems) = judge(&budgets, &[uncounted, counted("boot", &[1.0], &[1.0])]);
        assert!(problems.iter().any(|p| p.contains("path ring has a budget")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("path boot was counted but has no budget")), "{problems:?}");
        assert!(failures(&verdicts).is_empty());
        assert!(verdicts[0].status().contains("not emulated here"));
    }

    #[test]
    fn an_unmeasured_figure_fails_where_it_should_have_been_counted() {
        let file = FILE.replace("insns = 100\n", "insns = 100\n        string_iters = 0\n");
        let budgets = Budgets::parse(&file).unwrap();
        // An injection that handled nothing: no figure at all. A ring sample without its
        // string iterations.
        let mut none_handled = counted("interrupt", &[], &[]);
        none_handled.string_iters = None;
        none_handled.unavailable = Some("the host did not count".into());
        let ring = counted("ring", &[700.0], &[1.0]);
        let (verdicts, problems) = judge(&budgets, &[none_handled, ring]);
        assert!(problems.is_empty() && failures(&verdicts).is_empty());
        let emulated = unmeasured(&verdicts, true);
        assert_eq!(emulated.len(), 3, "instructions, exits and string iterations of the interrupt: {emulated:?}");
        assert!(emulated.iter().all(|p| p.starts_with("interrupt: ") && p.contains("not measured")), "{emulated:?}");
        // Where the guest kernel runs natively only exits are counted: those must still be.
        let native = unmeasured(&verdicts, false);
        assert_eq!(native.len(), 1, "{native:?}");
        assert!(native[0].starts_with("interrupt: exits per event not measured"), "{native:?}");
    }

    #[test]
    fn a_hard_paths_limit_may_not_pass_its_target_and_a_hard_path_needs_one() {
        let hard = r#"
            host_stub_loop_ratio = 1.02
            [path.boot]
            what = "boot"
            insns = 18500
            target_insns = 20000
            exits = 16
            target_exits = 50
            hard = true
        "#;
        assert!(Budgets::parse(hard).is_ok());
        let raised = hard.replace("insns = 18500", "insns = 21000");
        let err = Budgets::parse(&raised).unwrap_err();
        assert!(err.contains("boot is hard") && err.contains("21000") && err.contains("20000"), "{err}");
        let no_target = hard.replace("target_insns = 20000", "").replace("target_exits = 50", "");
        assert!(Budgets::parse(&no_target).unwrap_err().contains("names no target"));
        let soft = raised
            .replace("hard = true", "hard = false")
            .replace("target_insns = 20000", "")
            .replace("target_exits = 50", "");
        assert!(Budgets::parse(&soft).is_ok(), "a soft path may be raised (with its reason)");
    }

    #[test]
    fn string_iterations_over_their_limit_fail_the_check() {
        let file = FILE.replace("insns = 100\n", "insns = 100\n        string_iters = 0\n");
        let budgets = Budgets::parse(&file).unwrap();
        let mut irq = counted("interrupt", &[73.0], &[1.0]);
        irq.string_iters = Summary::of(&[512.0, 520.0]);
        let (verdicts, _) = judge(&budgets, &[irq, counted("ring", &[1.0], &[1.0])]);
        let failed = failures(&verdicts);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("interrupt: 512 string iterations per event, over its limit of 0"), "{failed:?}");
    }

    #[test]
    fn a_target_above_its_limit_or_an_unknown_key_is_refused() {
        let above = FILE.replace("target_insns = 600", "target_insns = 2000");
        assert!(Budgets::parse(&above).unwrap_err().contains("above the limit"));
        let unknown = FILE.replace("hard = false", "hrad = false");
        assert!(Budgets::parse(&unknown).is_err());
    }
}
