//! From the runs' samples to the figures the report shows: per-event costs as multiples of the
//! baseline, the workload's efficiency against its ideal, speed-ups over `sync`, and each goal
//! of the benchmark issue with how far the measurement is from it. Plain arithmetic, tested on
//! synthetic samples.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::Workload;
use super::samples::{RunOutput, Sample};
use super::stats::Summary;

/// Why a path has no figure on this machine.
pub const VE_NOT_IMPLEMENTED: &str = "#VE is not implemented yet (no producer, no guest handler)";
/// Why KVM's async page fault path has no figure.
pub const KVM_APF_NOT_IMPLEMENTED: &str = "the guest does not implement KVM's async page fault ABI yet";

/// The cost of one kind of event, per event.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    /// Short name (`interrupt`, `ring`, ...).
    pub name: String,
    /// What was measured, in words.
    pub what: String,
    /// The per-event cost in ns; `None` with `unavailable` when it could not be measured.
    pub per_event_ns: Option<Summary>,
    /// The median as a multiple of the baseline round trip.
    pub baselines: Option<f64>,
    /// The guest's own handling time per event (page-not-present paths), in ns.
    pub guest_handler_ns: Option<Summary>,
    /// Why there is no figure.
    pub unavailable: Option<String>,
}

impl Cost {
    fn unavailable(name: &str, what: &str, why: &str) -> Self {
        Self {
            name: name.into(),
            what: what.into(),
            per_event_ns: None,
            baselines: None,
            guest_handler_ns: None,
            unavailable: Some(why.into()),
        }
    }
}

/// The median of `values` per sample, skipping samples where `f` has no value.
fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>, f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
    let values: Vec<f64> = samples.filter_map(f).collect();
    Summary::of(&values)
}

/// One port-I/O round trip, per exit, from the `io` samples of a run.
pub fn io_round_trip(run: &RunOutput) -> Option<Summary> {
    summarize(run.named("io"), |s| (s.get("ops") > 0).then(|| s.f("total_ns") / s.f("ops")))
}

/// Host stub loop over bare loop, per pair of timed loops: the `io` and `io_bare` samples with
/// the same repetition number, in the order they come (each run numbers its own).
pub fn loop_ratios(run: &RunOutput) -> Vec<f64> {
    let mut ratios = Vec::new();
    let mut pending: BTreeMap<u64, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for s in run.samples.iter().filter(|s| s.get("ops") > 0) {
        let per_op = s.f("total_ns") / s.f("ops");
        let slot = pending.entry(s.get("rep")).or_default();
        match s.name.as_str() {
            "io" => slot.0 = Some(per_op),
            "io_bare" => slot.1 = Some(per_op),
            _ => continue,
        }
        if let (Some(stub), Some(bare)) = *slot {
            pending.remove(&s.get("rep"));
            if bare > 0.0 {
                ratios.push(stub / bare);
            }
        }
    }
    ratios
}

/// Injection costs from a guest-bench run: per handled event, an `out` whose event was not
/// delivered counted at the plain round trip (`inject_none` of the same run).
pub fn injection_costs(run: &RunOutput, baseline_ns: f64) -> Vec<Cost> {
    let plain = summarize(run.named("inject_none"), |s| (s.get("ops") > 0).then(|| s.f("total_ns") / s.f("ops")));
    let mut costs = Vec::new();
    for (name, sample, what) in [
        ("interrupt", "inject_interrupt", "an interrupt (MSI through the in-kernel local APIC), handled, EOI"),
        ("exception", "inject_exception_ac", "an #AC (KVM_SET_VCPU_EVENTS), classified by the guest and ignored"),
        (
            "page_not_present",
            "inject_page_not_present",
            "a page-not-present event already resolved (the no-wait path), consumed from the ring",
        ),
    ] {
        if run.named(sample).any(|s| s.get("unavailable") == 1) {
            costs.push(Cost::unavailable(name, what, "the host stub's demand pager was not running"));
            continue;
        }
        let per_event = plain.and_then(|plain| {
            summarize(run.named(sample), |s| {
                let (ops, handled) = (s.f("ops"), s.f("handled"));
                (handled > 0.0).then(|| (s.f("total_ns") - (ops - handled) * plain.median).max(0.0) / handled)
            })
        });
        costs.push(Cost {
            name: name.into(),
            what: what.into(),
            baselines: per_event.map(|p| p.median / baseline_ns),
            per_event_ns: per_event,
            guest_handler_ns: None,
            unavailable: per_event.is_none().then(|| "no event was handled".into()),
        });
    }
    costs.push(Cost::unavailable("ve", "a #VE with its information area", VE_NOT_IMPLEMENTED));
    costs
}

/// Page-not-present round trips (zero or near-zero page-in latency), per access.
pub fn page_not_present_costs(run: &RunOutput, baseline_ns: f64) -> Vec<Cost> {
    let mut costs = Vec::new();
    for (name, sample, what) in [
        (
            "ring",
            "pnp_sleep",
            "event, park, switch to another task, resolution, wake, resume (ring mode, 1 µs page-in)",
        ),
        ("halt", "pnp_halt", "event, no other task: wait in the HLT loop, resolution, resume (1 µs page-in)"),
        ("early", "pnp_early", "event whose resolution is already in the ring: consumed at once (0 page-in)"),
        ("sync", "pnp_sync", "no event: the vCPU waits in the host until the page is in (0 page-in)"),
    ] {
        let per_event = summarize(run.named(sample), |s| (s.get("ops") > 0).then(|| s.f("total_ns") / s.f("ops")));
        let handler =
            summarize(run.named(sample), |s| (s.get("events") > 0).then(|| s.f("handler_ns") / s.f("events")));
        costs.push(Cost {
            name: name.into(),
            what: what.into(),
            baselines: per_event.map(|p| p.median / baseline_ns),
            per_event_ns: per_event,
            guest_handler_ns: handler,
            unavailable: per_event.is_none().then(|| "not measured (no samples)".into()),
        });
    }
    costs.push(Cost::unavailable("ve", "the same round trip with #VE as the event", VE_NOT_IMPLEMENTED));
    costs.push(Cost::unavailable(
        "kvm-apf",
        "the same round trip with KVM's async page fault ABI",
        KVM_APF_NOT_IMPLEMENTED,
    ));
    costs
}

/// One workload configuration in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub mode: String,
    pub workload: Workload,
    pub wall_ns: Summary,
    /// Busy time over wall time: time the guest did not spend halted, less the time its vCPU
    /// was blocked in the host on the synchronous path (which the guest cannot see).
    pub utilisation: f64,
    pub ideal_ns: f64,
    /// Ideal over achieved completion time.
    pub efficiency: f64,
    /// Events the host delivered per run (median).
    pub events: f64,
    /// Overhead per page beyond the ideal: (wall - ideal) / (tasks x pages).
    pub overhead_per_page_ns: f64,
}

/// The speed-up of the asynchronous path over `sync` for one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Speedup {
    pub mode: String,
    pub tasks: u64,
    pub latency_ns: u64,
    pub speedup: f64,
}

/// The workload runs grouped by mode and configuration.
pub fn workload_results(run: &RunOutput) -> Vec<WorkloadResult> {
    let mut groups: BTreeMap<(String, Workload), Vec<&Sample>> = BTreeMap::new();
    for s in run.samples.iter().filter(|s| s.name.starts_with("workload_")) {
        let w = Workload {
            tasks: s.get("tasks"),
            pages: s.get("pages"),
            compute_ns: s.get("compute_ns"),
            latency_ns: s.get("latency_ns"),
        };
        let mode = s.name.trim_start_matches("workload_").to_owned();
        groups.entry((mode, w)).or_default().push(s);
    }
    groups
        .into_iter()
        .filter_map(|((mode, workload), samples)| {
            let wall = summarize(samples.iter().copied(), |s| Some(s.f("wall_ns")))?;
            let utilisation = summarize(samples.iter().copied(), |s| {
                (s.get("wall_ns") > 0).then(|| (s.f("busy_ns") - s.f("stalled_ns")).max(0.0) / s.f("wall_ns"))
            })?
            .median;
            let events = summarize(samples.iter().copied(), |s| Some(s.f("events")))?.median;
            let ideal_ns = workload.ideal_ns();
            let pages = (workload.tasks * workload.pages).max(1) as f64;
            Some(WorkloadResult {
                mode,
                workload,
                wall_ns: wall,
                utilisation,
                ideal_ns,
                efficiency: workload.efficiency(wall.median),
                events,
                overhead_per_page_ns: (wall.median - ideal_ns) / pages,
            })
        })
        .collect()
}

/// Speed-ups over `sync` for every configuration measured in both.
pub fn speedups(results: &[WorkloadResult]) -> Vec<Speedup> {
    let sync: BTreeMap<Workload, f64> =
        results.iter().filter(|r| r.mode == "sync").map(|r| (r.workload, r.wall_ns.median)).collect();
    results
        .iter()
        .filter(|r| r.mode != "sync")
        .filter_map(|r| {
            let base = sync.get(&r.workload)?;
            Some(Speedup {
                mode: r.mode.clone(),
                tasks: r.workload.tasks,
                latency_ns: r.workload.latency_ns,
                speedup: base / r.wall_ns.median,
            })
        })
        .collect()
}

/// The guest's cost per event as the number of outstanding tokens grows.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingPoint {
    pub outstanding: u64,
    /// Guest handler time per event, in ns.
    pub handler_per_event_ns: Summary,
}

/// Scaling points, by outstanding count.
pub fn scaling(run: &RunOutput) -> Vec<ScalingPoint> {
    let mut by_count: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in run.named("scaling") {
        by_count.entry(s.get("outstanding")).or_default().push(s);
    }
    by_count
        .into_iter()
        .filter_map(|(outstanding, samples)| {
            let per_event =
                summarize(samples.into_iter(), |s| (s.get("events") > 0).then(|| s.f("handler_ns") / s.f("events")))?;
            Some(ScalingPoint { outstanding, handler_per_event_ns: per_event })
        })
        .collect()
}

/// One goal of the benchmark issue, and where the measurement stands.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub what: String,
    pub goal: String,
    /// The measured figure, in words; `None` when it cannot be measured here.
    pub measured: Option<String>,
    pub met: Option<bool>,
}

/// The efficiency goal: ring mode, 8 tasks, every latency of at least 200 µs that was measured.
pub fn efficiency_goal(results: &[WorkloadResult]) -> Goal {
    let points: Vec<&WorkloadResult> = results
        .iter()
        .filter(|r| r.mode == "ring" && r.workload.tasks == 8 && r.workload.latency_ns >= 200_000)
        .collect();
    let worst = points.iter().map(|r| r.efficiency).fold(f64::INFINITY, f64::min);
    Goal {
        what: "workload efficiency, ring mode, 8 tasks, page-in latency >= 200 µs".into(),
        goal: ">= 0.90".into(),
        measured: (!points.is_empty()).then(|| {
            let each: Vec<String> = points
                .iter()
                .map(|r| format!("{:.2} at {}", r.efficiency, super::stats::human_ns(r.workload.latency_ns as f64)))
                .collect();
            each.join(", ")
        }),
        met: (!points.is_empty()).then_some(worst >= 0.9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> RunOutput {
        RunOutput::parse(lines.iter().copied())
    }

    #[test]
    fn an_undelivered_injection_is_charged_a_plain_round_trip() {
        let r = run(&[
            "bench: inject_none rep=0 ops=10 handled=10 total_ns=100",
            "bench: inject_page_not_present rep=0 ops=10 handled=5 total_ns=1050",
            "bench: inject_interrupt rep=0 ops=10 handled=10 total_ns=500",
        ]);
        let costs = injection_costs(&r, 10.0);
        let pnp = costs.iter().find(|c| c.name == "page_not_present").unwrap();
        // (1050 - 5 x 10) / 5 = 200 ns per event: 20 baselines.
        assert_eq!(pnp.per_event_ns.unwrap().median, 200.0);
        assert_eq!(pnp.baselines, Some(20.0));
        let irq = costs.iter().find(|c| c.name == "interrupt").unwrap();
        assert_eq!(irq.baselines, Some(5.0));
        let exception = costs.iter().find(|c| c.name == "exception").unwrap();
        assert!(exception.per_event_ns.is_none() && exception.unavailable.is_some(), "no samples, no figure");
        assert!(costs.iter().any(|c| c.name == "ve" && c.unavailable.as_deref() == Some(VE_NOT_IMPLEMENTED)));
    }

    #[test]
    fn loop_ratios_pair_samples_of_the_same_repetition() {
        let r = run(&[
            "bench: io rep=0 ops=10 total_ns=110",
            "bench: io_bare rep=0 ops=10 total_ns=100",
            "bench: io_bare rep=1 ops=10 total_ns=100",
            "bench: io rep=1 ops=10 total_ns=120",
            // The next run numbers its repetitions from 0 again.
            "bench: io rep=0 ops=10 total_ns=90",
            "bench: io_bare rep=0 ops=10 total_ns=100",
            "bench: io rep=5 ops=10 total_ns=100",
        ]);
        let ratios = loop_ratios(&r);
        assert_eq!(ratios.len(), 3, "an io without its io_bare is no pair");
        assert!((ratios[0] - 1.1).abs() < 1e-12 && (ratios[1] - 1.2).abs() < 1e-12 && (ratios[2] - 0.9).abs() < 1e-12);
    }

    #[test]
    fn workloads_are_grouped_and_compared_with_sync() {
        let r = run(&[
            "bench: workload_sync rep=0 tasks=8 pages=4 compute_ns=100000 latency_ns=1000000 wall_ns=35200000 busy_ns=35200000 events=0 stalled_ns=32000000",
            "bench: workload_ring rep=0 tasks=8 pages=4 compute_ns=100000 latency_ns=1000000 wall_ns=8000000 busy_ns=4000000 events=32",
            "bench: workload_ring rep=1 tasks=8 pages=4 compute_ns=100000 latency_ns=1000000 wall_ns=9000000 busy_ns=4500000 events=32",
        ]);
        let results = workload_results(&r);
        assert_eq!(results.len(), 2);
        let ring = results.iter().find(|w| w.mode == "ring").unwrap();
        assert_eq!(ring.wall_ns.n, 2);
        assert_eq!(ring.wall_ns.median, 8_500_000.0);
        assert_eq!(ring.utilisation, 0.5);
        // Ideal: max(8 x 4 x 0.1 ms, 4 x 1.1 ms) = 4.4 ms.
        assert_eq!(ring.ideal_ns, 4_400_000.0);
        assert!((ring.efficiency - 4.4 / 8.5).abs() < 1e-12);
        let sync = results.iter().find(|w| w.mode == "sync").unwrap();
        assert!((sync.utilisation - 3.2 / 35.2).abs() < 1e-12, "time stalled in the host is not busy");
        let s = speedups(&results);
        assert_eq!(s.len(), 1);
        assert!((s[0].speedup - 35.2 / 8.5).abs() < 1e-12);
        let goal = efficiency_goal(&results);
        assert_eq!(goal.met, Some(false));
        assert!(goal.measured.unwrap().contains("0.52 at 1.00 ms"));
    }

    #[test]
    fn without_the_measurement_a_goal_says_so() {
        let goal = efficiency_goal(&[]);
        assert_eq!((goal.measured, goal.met), (None, None));
    }

    #[test]
    fn scaling_is_per_event_by_outstanding_count() {
        let r = run(&[
            "bench: scaling rep=0 outstanding=4 events=4 handler_ns=4000 wall_ns=1",
            "bench: scaling rep=1 outstanding=4 events=4 handler_ns=6000 wall_ns=1",
            "bench: scaling rep=0 outstanding=1 events=0 handler_ns=0 wall_ns=1",
        ]);
        let points = scaling(&r);
        assert_eq!(points.len(), 1, "a point without events has no per-event figure");
        assert_eq!(points[0].outstanding, 4);
        assert_eq!(points[0].handler_per_event_ns.median, 1250.0);
    }
}
