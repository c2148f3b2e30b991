//! Counts per event: the guest kernel instructions KVM emulated and the exits it took for each
//! path, from the counting windows the benchmark guest opens around its loops (`insns=`,
//! `exits=` on a sample line: totals for the loop, the window's own cost already taken out) and
//! from the boot milestone (`boot.insn_emulation`, `boot.exits`). Unlike a time, an instruction
//! count does not depend on the machine or its load: on a given build it is the same on every
//! run, wherever the path does not depend on the host's timing.

use serde::Serialize;

use super::samples::{RunOutput, Sample};
use super::stats::Summary;

/// Why instruction counts are missing where KVM emulates nothing of the guest kernel.
pub const NOT_EMULATED: &str = "not emulated here";

/// What KVM counted for one path, per event, over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct PathCounts {
    /// The path's key, as in `xtask/budgets.toml` (`interrupt`, `ring`, `boot`, ...).
    pub path: String,
    /// What one event of the path is.
    pub per: String,
    /// Guest kernel instructions KVM emulated per event; `None` where they were not counted.
    pub insns: Option<Summary>,
    /// Exits per event; `None` where they were not counted.
    pub exits: Option<Summary>,
    /// Why a figure is missing.
    pub unavailable: Option<String>,
}

impl PathCounts {
    /// The counts of `path` from per-repetition values (`None` where a repetition lacks them).
    /// Instructions count only where KVM emulates the guest kernel (`emulated`).
    pub fn new(path: &str, per: &str, values: &[(Option<f64>, Option<f64>)], emulated: bool) -> Self {
        let insns: Option<Vec<f64>> = values.iter().map(|v| v.0).collect();
        let exits: Option<Vec<f64>> = values.iter().map(|v| v.1).collect();
        let insns = insns.and_then(|v| Summary::of(&v));
        let exits = exits.and_then(|v| Summary::of(&v));
        let unavailable = if !emulated {
            Some(NOT_EMULATED.to_owned())
        } else if insns.is_none() || exits.is_none() {
            Some("the host did not count (no KVM statistics, or no samples)".to_owned())
        } else {
            None
        };
        Self { path: path.into(), per: per.into(), insns: insns.filter(|_| emulated), exits, unavailable }
    }
}

/// A sample's `field` (`insns` or `exits`) per operation.
fn per_op(s: &Sample, field: &str) -> Option<f64> {
    let ops = s.field("ops").filter(|n| *n > 0)? as f64;
    Some(s.field(field)? as f64 / ops)
}

/// An injection sample's `field` per handled event: the loop's count less what its `out`s
/// would have counted without an event (the plain loop's, per `out`, for each `out` whose event
/// was not delivered), over the events handled. The `out` that carries each event is part of
/// its count (one instruction, one exit).
fn per_injected_event(s: &Sample, field: &str) -> Option<f64> {
    let (ops, handled) = (s.field("ops")? as f64, s.field("handled").filter(|n| *n > 0)? as f64);
    let plain_per_op = s.field(&format!("plain_{field}"))? as f64 / ops.max(1.0);
    Some((s.field(field)? as f64 - (ops - handled) * plain_per_op).max(0.0) / handled)
}

/// The paths the benchmark guest counts: key, the sample it comes from, and what one event is.
const SAMPLED: [(&str, &str, &str); 10] = [
    ("null_exit", "io", "exit"),
    ("console", "console", "line"),
    ("interrupt", "inject_interrupt", "event"),
    ("exception", "inject_exception_ac", "event"),
    ("page_not_present", "inject_page_not_present", "event"),
    ("ring", "pnp_sleep", "access"),
    ("halt", "pnp_halt", "access"),
    ("early", "pnp_early", "access"),
    ("sync", "pnp_sync", "access"),
    ("kvm_apf", "pnp_kvm_apf", "access"),
];

/// The counts of every path the benchmark guest's samples in `run` carry.
pub fn of_samples(run: &RunOutput, emulated: bool) -> Vec<PathCounts> {
    SAMPLED
        .iter()
        .filter(|(_, sample, _)| run.named(sample).next().is_some())
        .map(|(path, sample, per)| {
            let f: fn(&Sample, &str) -> Option<f64> =
                if sample.starts_with("inject_") { per_injected_event } else { per_op };
            let values: Vec<_> = run
                .named(sample)
                .filter(|s| s.get("unavailable") == 0)
                .map(|s| (f(s, "insns"), f(s, "exits")))
                .collect();
            PathCounts::new(path, per, &values, emulated)
        })
        .collect()
}

/// The boot's counts from the host stub's milestone counters of each boot.
pub fn of_boots(boots: &[RunOutput], emulated: bool) -> PathCounts {
    let values: Vec<_> = boots
        .iter()
        .map(|b| (b.counter("boot.insn_emulation").map(|n| n as f64), b.counter("boot.exits").map(|n| n as f64)))
        .collect();
    PathCounts::new("boot", "boot", &values, emulated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> RunOutput {
        RunOutput::parse(lines.iter().copied())
    }

    #[test]
    fn an_undelivered_injection_is_charged_a_plain_out() {
        let r = run(&[
            "bench: inject_page_not_present rep=0 ops=50 handled=25 total_ns=1 plain_ns=1 insns=12800 exits=50 plain_insns=50 plain_exits=50",
            "bench: inject_interrupt rep=0 ops=50 handled=50 total_ns=1 plain_ns=1 insns=3650 exits=51 plain_insns=50 plain_exits=50",
        ]);
        let counts = of_samples(&r, true);
        let pnp = counts.iter().find(|c| c.path == "page_not_present").unwrap();
        // (12800 - 25 x 1) / 25 = 511: each event with the `out` that carried it.
        assert_eq!(pnp.insns.unwrap().median, 511.0);
        assert_eq!(pnp.exits.unwrap().median, 1.0);
        let irq = counts.iter().find(|c| c.path == "interrupt").unwrap();
        assert_eq!(irq.insns.unwrap().median, 73.0);
        assert_eq!(irq.exits.unwrap().median, 51.0 / 50.0);
        assert!(counts.iter().all(|c| c.path != "ring"), "no samples, no path");
    }

    #[test]
    fn without_emulation_instructions_are_not_available_and_exits_still_are() {
        let r = run(&["bench: pnp_sync rep=0 ops=8 total_ns=9 insns=0 exits=16"]);
        let sync = &of_samples(&r, false)[0];
        assert_eq!(sync.insns, None);
        assert_eq!(sync.exits.unwrap().median, 2.0);
        assert_eq!(sync.unavailable.as_deref(), Some(NOT_EMULATED));
        let counted = &of_samples(&r, true)[0];
        assert_eq!(counted.insns.unwrap().median, 0.0, "no guest kernel instruction on the sync path");
    }

    #[test]
    fn a_sample_without_counts_makes_the_path_uncounted() {
        let r = run(&["bench: io rep=0 ops=10 total_ns=9 insns=10 exits=10", "bench: io rep=1 ops=10 total_ns=9"]);
        let null = &of_samples(&r, true)[0];
        assert!(null.insns.is_none() && null.unavailable.is_some());
    }

    #[test]
    fn boots_are_counted_from_the_milestone_counters() {
        let boot = |insns: u64, exits: u64| {
            run(&[&format!("host: counter boot.insn_emulation {insns}"), &format!("host: counter boot.exits {exits}")])
        };
        let counts = of_boots(&[boot(47152, 1320), boot(47152, 1318)], true);
        assert_eq!((counts.insns.unwrap().min, counts.insns.unwrap().max), (47152.0, 47152.0));
        assert_eq!(counts.exits.unwrap().min, 1318.0);
    }
}
