//! Counts per event: the guest kernel instructions KVM emulated, the exits the guest caused,
//! KVM's own count of exits and the iterations of the kernel's string instructions, for each
//! path, from the counting windows the benchmark guest opens around its loops (`insns=`,
//! `exits=`, `kvm_exits=`, `string_iters=` on a sample line: totals for the loop, the window's
//! own cost already taken out) and from the boot milestone (`boot.insn_emulation`,
//! `boot.exits`, `boot.kvm_exits`, `boot.string_iters`, all of the product kernel's same boot).
//! Unlike a time, a count does not depend on the machine's speed or load: a given build and
//! command line give the same count on every repetition. KVM's exits are the exception, and are
//! reported, not judged: they include what the host does to the vCPU's thread.
//!
//! String iterations are counted because KVM's `insn_emulation` counts a `rep` string
//! instruction once per 1,024 iterations while its emulator runs every one, each at about an
//! instruction's cost: an instruction count alone does not see a long copy.

use serde::Serialize;

use super::samples::{RunOutput, Sample};
use super::stats::Summary;
use crate::{Result, err};

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
    /// Exits the guest caused per event (those that reached the host stub, and its HLTs);
    /// `None` where they were not counted.
    pub exits: Option<Summary>,
    /// Exits per event as KVM counted them (its `exits` statistic): the guest's, the in-kernel
    /// ones (a retried access's page fault, an interrupt window, the kick that delivers an
    /// interrupt to a running vCPU) and whatever the host did to the vCPU's thread.
    pub kvm_exits: Option<Summary>,
    /// Iterations of the kernel's string instructions per event.
    pub string_iters: Option<Summary>,
    /// Why a figure is missing.
    pub unavailable: Option<String>,
}

/// One repetition's counts per event, each `None` where the repetition lacks it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerEvent {
    pub insns: Option<f64>,
    pub exits: Option<f64>,
    pub kvm_exits: Option<f64>,
    pub string_iters: Option<f64>,
}

impl PathCounts {
    /// The counts of `path` from per-repetition values. Instructions count only where KVM
    /// emulates the guest kernel (`emulated`); string iterations only there too (elsewhere they
    /// run natively at a fraction of an instruction's cost each).
    pub fn new(path: &str, per: &str, values: &[PerEvent], emulated: bool) -> Self {
        let summary = |f: fn(&PerEvent) -> Option<f64>| {
            let all: Option<Vec<f64>> = values.iter().map(f).collect();
            all.and_then(|v| Summary::of(&v))
        };
        let insns = summary(|v| v.insns);
        let exits = summary(|v| v.exits);
        let unavailable = if !emulated {
            Some(NOT_EMULATED.to_owned())
        } else if insns.is_none() || exits.is_none() {
            Some("the host did not count (no KVM statistics, or no samples)".to_owned())
        } else {
            None
        };
        Self {
            path: path.into(),
            per: per.into(),
            insns: insns.filter(|_| emulated),
            exits,
            kvm_exits: summary(|v| v.kvm_exits),
            string_iters: summary(|v| v.string_iters).filter(|_| emulated),
            unavailable,
        }
    }
}

/// A sample's `field` (`insns` or `exits`) per operation.
fn per_op(s: &Sample, field: &str) -> Result<Option<f64>> {
    let Some(ops) = s.field("ops").filter(|n| *n > 0) else { return Ok(None) };
    Ok(s.field(field).map(|n| n as f64 / ops as f64))
}

/// An injection sample's `field` per handled event: the loop's count less what its `out`s
/// would have counted without an event (the plain loop's, per `out`, for each `out` whose event
/// was not delivered), over the events handled. The `out` that carries each event is part of
/// its count (one instruction, one exit).
/// A loop whose count is below what its undelivered `out`s alone would have counted has a
/// broken baseline: an error, not a count of 0.
fn per_injected_event(s: &Sample, field: &str) -> Result<Option<f64>> {
    let (Some(ops), Some(handled)) = (s.field("ops"), s.field("handled").filter(|n| *n > 0)) else { return Ok(None) };
    let (Some(plain), Some(total)) = (s.field(&format!("plain_{field}")), s.field(field)) else { return Ok(None) };
    let (ops, handled) = (ops as f64, handled as f64);
    let events = total as f64 - (ops - handled) * (plain as f64 / ops.max(1.0));
    if events < 0.0 {
        return Err(err!(
            "{} rep {}: {field}={total} is below its {} undelivered `out`s' share of plain_{field}={plain}: a broken baseline",
            s.name,
            s.get("rep"),
            ops - handled
        ));
    }
    Ok(Some(events / handled))
}

/// The paths the benchmark guest counts: key, the sample it comes from, and what one event is.
const SAMPLED: [(&str, &str, &str); 11] = [
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
    ("ve", "pnp_ve", "access"),
];

/// The counts of every path the benchmark guest's samples in `run` carry; an error where a
/// sample's baseline is broken (a count below what its undelivered `out`s alone count).
pub fn of_samples(run: &RunOutput, emulated: bool) -> Result<Vec<PathCounts>> {
    SAMPLED
        .iter()
        .filter(|(_, sample, _)| run.named(sample).next().is_some())
        .map(|(path, sample, per)| {
            let f: fn(&Sample, &str) -> Result<Option<f64>> =
                if sample.starts_with("inject_") { per_injected_event } else { per_op };
            let values = run
                .named(sample)
                .filter(|s| s.get("unavailable") == 0)
                .map(|s| {
                    Ok(PerEvent {
                        insns: f(s, "insns")?,
                        exits: f(s, "exits")?,
                        kvm_exits: f(s, "kvm_exits")?,
                        string_iters: f(s, "string_iters")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(PathCounts::new(path, per, &values, emulated))
        })
        .collect()
}

/// The boot's counts from the host stub's milestone counters of each of `boots` (the product
/// kernel's boots, with the boot measurement's command line): all four figures of one boot come
/// from that same boot.
pub fn of_boots(boots: &[RunOutput], emulated: bool) -> PathCounts {
    let values: Vec<_> = boots
        .iter()
        .map(|b| {
            let counter = |key: &str| b.counter(key).map(|n| n as f64);
            PerEvent {
                insns: counter("boot.insn_emulation"),
                exits: counter("boot.exits"),
                kvm_exits: counter("boot.kvm_exits"),
                string_iters: counter("boot.string_iters"),
            }
        })
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
        let counts = of_samples(&r, true).unwrap();
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
        let sync = &of_samples(&r, false).unwrap()[0];
        assert_eq!(sync.insns, None);
        assert_eq!(sync.exits.unwrap().median, 2.0);
        assert_eq!(sync.unavailable.as_deref(), Some(NOT_EMULATED));
        let counted = &of_samples(&r, true).unwrap()[0];
        assert_eq!(counted.insns.unwrap().median, 0.0, "no guest kernel instruction on the sync path");
    }

    #[test]
    fn a_sample_without_counts_makes_the_path_uncounted() {
        let r = run(&["bench: io rep=0 ops=10 total_ns=9 insns=10 exits=10", "bench: io rep=1 ops=10 total_ns=9"]);
        let null = &of_samples(&r, true).unwrap()[0];
        assert!(null.insns.is_none() && null.unavailable.is_some());
    }

    #[test]
    fn boots_are_counted_from_the_milestone_counters_of_the_same_boots() {
        let boot = |insns: u64, exits: u64, kvm: u64, iters: Option<u64>| {
            let mut lines = vec![
                format!("host: counter boot.insn_emulation {insns}"),
                format!("host: counter boot.exits {exits}"),
                format!("host: counter boot.kvm_exits {kvm}"),
            ];
            lines.extend(iters.map(|n| format!("host: counter boot.string_iters {n}")));
            RunOutput::parse(lines.iter().map(String::as_str))
        };
        let counts = of_boots(&[boot(47152, 1320, 40, Some(283)), boot(47152, 1318, 44, Some(283))], true);
        assert_eq!((counts.insns.unwrap().min, counts.insns.unwrap().max), (47152.0, 47152.0));
        assert_eq!(counts.exits.unwrap().min, 1318.0);
        assert_eq!((counts.kvm_exits.unwrap().min, counts.kvm_exits.unwrap().max), (40.0, 44.0));
        assert_eq!(counts.string_iters.unwrap().median, 283.0);
        let without = of_boots(&[boot(1, 1, 1, Some(2)), boot(1, 1, 1, None)], true);
        assert!(without.string_iters.is_none() && without.insns.is_some(), "a boot without the figure");
    }

    #[test]
    fn an_injection_that_handled_nothing_or_lacks_a_figure_is_uncounted() {
        let r = run(&[
            "bench: inject_interrupt rep=0 ops=50 handled=0 insns=50 exits=50 plain_insns=50 plain_exits=50",
            "bench: inject_exception_ac rep=0 ops=50 handled=50 insns=6300 exits=50 kvm_exits=50 plain_insns=50 plain_exits=50 plain_kvm_exits=50",
        ]);
        let counts = of_samples(&r, true).unwrap();
        let irq = counts.iter().find(|c| c.path == "interrupt").unwrap();
        assert!(irq.insns.is_none() && irq.exits.is_none() && irq.unavailable.is_some(), "{irq:?}");
        let ac = counts.iter().find(|c| c.path == "exception").unwrap();
        assert!(ac.insns.is_some() && ac.string_iters.is_none(), "no string_iters on the line: {ac:?}");
    }

    #[test]
    fn a_count_below_its_baseline_is_an_error_not_zero() {
        let r = run(&[
            "bench: inject_page_not_present rep=2 ops=50 handled=25 insns=20 exits=50 plain_insns=50 plain_exits=50",
        ]);
        let e = of_samples(&r, true).unwrap_err().to_string();
        assert!(e.contains("inject_page_not_present rep 2") && e.contains("broken baseline"), "{e}");
    }

    #[test]
    fn kvm_exits_and_string_iterations_are_per_event_too() {
        let r = run(&[
            "bench: pnp_sleep rep=0 ops=16 insns=11408 exits=16 kvm_exits=65 string_iters=0",
            "bench: console rep=0 ops=4 insns=736 exits=4 kvm_exits=5 string_iters=48",
            "bench: inject_interrupt rep=0 ops=50 handled=25 insns=1850 exits=50 kvm_exits=60 string_iters=0 plain_insns=50 plain_exits=50 plain_kvm_exits=50 plain_string_iters=0",
        ]);
        let counts = of_samples(&r, true).unwrap();
        let ring = counts.iter().find(|c| c.path == "ring").unwrap();
        assert_eq!((ring.kvm_exits.unwrap().median, ring.string_iters.unwrap().median), (65.0 / 16.0, 0.0));
        let console = counts.iter().find(|c| c.path == "console").unwrap();
        assert_eq!(console.string_iters.unwrap().median, 12.0);
        // (60 - 25 plain `out`s) / 25 events: each event with the `out` that carried it.
        let irq = counts.iter().find(|c| c.path == "interrupt").unwrap();
        assert_eq!(irq.kvm_exits.unwrap().median, 35.0 / 25.0);
    }
}
