//! From the runs' samples to the figures the report shows: per-event costs as multiples of the
//! baseline measured next to them, the workload's efficiency against its ideal, speed-ups over
//! `sync`, and the checks that each path really took the path it names. Plain arithmetic,
//! tested on synthetic samples.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::model::Workload;
use super::samples::{RunOutput, Sample};
use super::stats::Summary;

/// Why a path has no figure on this machine.
pub const VE_ALONE_NOT_MEASURED: &str =
    "the host stub raises #VE only for an access to an absent page: its cost is in the #VE round trip (`ve`, below)";
/// Why the workload has no figure in mode `ve`.
pub const VE_WORKLOAD_NOT_MEASURED: &str =
    "the benchmark guest runs #VE's round trip (`pnp_ve`) but not yet the workload in mode ve";
/// Why the ABI served by KVM itself has no figure.
pub const KVM_APF_KERNEL_NOT_MEASURED: &str = "KVM serves its ABI only in a mode a run starts in and stays in, while the benchmark guest switches between modes; the end-to-end tests compare it with kvm-apf event by event";

/// The cost of one kind of event, per event.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    /// Short name (`interrupt`, `ring`, ...).
    pub name: String,
    /// What was measured, in words.
    pub what: String,
    /// The per-event cost in ns; `None` with `unavailable` when it could not be measured.
    pub per_event_ns: Option<Summary>,
    /// Per-event cost over the baseline round trip measured right next to it, per repetition.
    pub baselines: Option<Summary>,
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
            unavailable: Some(why.into()),
        }
    }

    fn measured(name: &str, what: &str, per_event: Option<Summary>, baselines: Option<Summary>) -> Self {
        Self {
            name: name.into(),
            what: what.into(),
            unavailable: per_event.is_none().then(|| "no repetition handled an event".into()),
            per_event_ns: per_event,
            baselines,
        }
    }
}

/// `numerator / denominator` of a sample's fields, when the denominator is not 0.
fn per(s: &Sample, numerator: &str, denominator: &str) -> Option<f64> {
    (s.get(denominator) > 0).then(|| s.f(numerator) / s.f(denominator))
}

/// The summary of `f` over the samples where it has a value.
fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>, f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
    let values: Vec<f64> = samples.filter_map(f).collect();
    Summary::of(&values)
}

/// Per-operation times (ns) of the samples named `name`.
pub fn per_op(run: &RunOutput, name: &str) -> Vec<f64> {
    run.named(name).filter_map(|s| per(s, "total_ns", "ops")).collect()
}

/// Host stub loop over bare loop, per pair of timed loops: the `io` and `io_bare` samples with
/// the same repetition number, in the order they come (each run numbers its own).
pub fn loop_ratios(run: &RunOutput) -> Vec<f64> {
    let mut ratios = Vec::new();
    let mut pending: BTreeMap<u64, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for s in &run.samples {
        let Some(per_op) = per(s, "total_ns", "ops") else { continue };
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

/// Per handled event, from an injection sample: the timed loop less what its `out`s would have
/// cost without an event (the plain loop right before it, per `out`). An `out` whose event was
/// not delivered costs a plain round trip; the rest is the events'.
fn injected_per_event(s: &Sample) -> Option<f64> {
    let (ops, handled) = (s.f("ops"), s.f("handled"));
    let plain_per_op = per(s, "plain_ns", "ops")?;
    (handled > 0.0).then(|| (s.f("total_ns") - (ops - handled) * plain_per_op).max(0.0) / handled)
}

/// Injection costs from a guest-bench run, each as a multiple of the plain round trip through
/// the same port measured in the same repetition.
pub fn injection_costs(run: &RunOutput) -> Vec<Cost> {
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
        let per_event = summarize(run.named(sample), injected_per_event);
        let baselines = summarize(run.named(sample), |s| Some(injected_per_event(s)? / per(s, "plain_ns", "ops")?));
        costs.push(Cost::measured(name, what, per_event, baselines));
    }
    costs.push(Cost::unavailable("ve", "a #VE with its information area", VE_ALONE_NOT_MEASURED));
    costs
}

/// The page-not-present round trips, by sample name, with what each means.
const ROUND_TRIPS: [(&str, &str, &str); 6] = [
    (
        "ring",
        "pnp_sleep",
        "event, park, switch to the other task, resolution, wake, resume (two tasks, ring mode, page ready at once, resolution written once the event is taken: every event parks)",
    ),
    (
        "halt",
        "pnp_halt",
        "event, no other task: wait in the HLT loop, resolution, resume (page ready at once, resolution written once the event is taken)",
    ),
    (
        "early",
        "pnp_early",
        "event whose resolution is already in the ring: consumed at once (written before the event)",
    ),
    ("sync", "pnp_sync", "no event: the vCPU waits in the host until the page is in (0 page-in)"),
    (
        "kvm_apf",
        "pnp_kvm_apf",
        "KVM's async page fault ABI (the host stub serving it): #PF with the token, park, switch to the other task, page ready, wake, resume (two CPL 3 tasks, page ready at once)",
    ),
    (
        "ve",
        "pnp_ve",
        "#VE (the host stub in mode ve): copy and re-arm the VE area, VePark for a ring token, park, switch to the other task, resolution, wake, resume (two CPL 3 tasks, fetch done once the park request names the page)",
    ),
];

/// Page-not-present round trips (zero or near-zero page-in latency), per access, each as a
/// multiple of the baseline measured right before it.
pub fn page_not_present_costs(run: &RunOutput) -> Vec<Cost> {
    let mut costs = Vec::new();
    for (name, sample, what) in ROUND_TRIPS {
        let per_access = summarize(run.named(sample), |s| per(s, "total_ns", "ops"));
        let baselines = summarize(run.named(sample), |s| Some(per(s, "total_ns", "ops")? / s.f("baseline_ns")))
            .filter(|_| run.named(sample).all(|s| s.get("baseline_ns") > 0));
        costs.push(Cost::measured(name, what, per_access, baselines));
    }
    costs.push(Cost::unavailable(
        "kvm_apf_kernel",
        "the same round trip with KVM serving its async page fault ABI",
        KVM_APF_KERNEL_NOT_MEASURED,
    ));
    costs
}

/// One workload configuration in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub mode: String,
    pub workload: Workload,
    /// From the first task's start to the last task's last access.
    pub wall_ns: Summary,
    /// The share of the wall time the vCPU ran guest code: not halted, and not stalled in the
    /// host on the synchronous path (which the guest cannot see).
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

fn workload_of(s: &Sample) -> Workload {
    Workload {
        tasks: s.get("tasks"),
        pages: s.get("pages"),
        compute_ns: s.get("compute_ns"),
        latency_ns: s.get("latency_ns"),
    }
}

/// `workload` with the compute per page its sample measured (the nominal one where a sample
/// has none).
fn measured(workload: &Workload, s: &Sample) -> Workload {
    match s.get("compute_measured_ns") {
        0 => *workload,
        measured => Workload { compute_ns: measured, ..*workload },
    }
}

fn workload_groups(run: &RunOutput) -> BTreeMap<(String, Workload), Vec<&Sample>> {
    let mut groups: BTreeMap<(String, Workload), Vec<&Sample>> = BTreeMap::new();
    for s in run.samples.iter().filter(|s| s.name.starts_with("workload_")) {
        let mode = s.name.trim_start_matches("workload_").to_owned();
        groups.entry((mode, workload_of(s))).or_default().push(s);
    }
    groups
}

/// The workload runs grouped by mode and configuration.
pub fn workload_results(run: &RunOutput) -> Vec<WorkloadResult> {
    workload_groups(run)
        .into_iter()
        .filter_map(|((mode, workload), samples)| {
            let wall = summarize(samples.iter().copied(), |s| Some(s.f("wall_ns")))?;
            let utilisation = summarize(samples.iter().copied(), |s| {
                Some((s.f("busy_ns") - s.f("stalled_ns")) / s.f("wall_ns")).filter(|_| s.get("wall_ns") > 0)
            })?
            .median;
            let events = summarize(samples.iter().copied(), |s| Some(s.f("events")))?.median;
            // The ideal is made of the compute the tasks really did (they time it themselves),
            // so that a calibration skewed by a busy host cannot make a run beat its ideal.
            let ideal_ns = summarize(samples.iter().copied(), |s| Some(measured(&workload, s).ideal_ns()))?.median;
            let efficiency =
                summarize(samples.iter().copied(), |s| Some(measured(&workload, s).efficiency(s.f("wall_ns"))))?.median;
            let pages = (workload.tasks * workload.pages).max(1) as f64;
            Some(WorkloadResult {
                mode,
                workload,
                wall_ns: wall,
                utilisation,
                ideal_ns,
                efficiency,
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
    /// Tasks parked at once; the k-th event of the burst finds k - 1 tokens outstanding.
    pub outstanding: u64,
    /// Guest kernel instructions per event (the burst's window less the same tasks over present
    /// pages, over the burst's events; the burst's own cost spread over them).
    pub insns_per_event: Summary,
}

/// Scaling points, by outstanding count: instructions KVM emulated, so only where it emulates
/// the guest kernel (`emulated`); elsewhere there are none.
pub fn scaling(run: &RunOutput, emulated: bool) -> Vec<ScalingPoint> {
    if !emulated {
        return Vec::new();
    }
    let mut by_count: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in run.named("scaling") {
        by_count.entry(s.get("outstanding")).or_default().push(s);
    }
    by_count
        .into_iter()
        .filter_map(|(outstanding, samples)| {
            let per_event =
                summarize(samples.into_iter(), |s| s.field("insns").and_then(|_| per(s, "insns", "events")))?;
            Some(ScalingPoint { outstanding, insns_per_event: per_event })
        })
        .collect()
}

/// The path a sample's name promises, in words for an error message.
fn path_of(name: &str) -> &'static str {
    match name {
        "inject_interrupt" => "the interrupt",
        "inject_exception_ac" => "the injected #AC",
        "inject_page_not_present" => "the already-resolved event",
        "pnp_sleep" => "the park",
        "pnp_halt" => "the HLT-loop",
        "pnp_early" => "the early-resolution",
        "pnp_sync" | "workload_sync" => "the synchronous",
        "workload_ring" => "the ring",
        "pnp_kvm_apf" => "KVM's async page fault park",
        "pnp_ve" => "the #VE park",
        "workload_kvm_apf" => "KVM's async page fault",
        "scaling" => "the many-tokens",
        _ => "the expected",
    }
}

/// Whether every sample took the path its name promises, and nothing the plan ran is missing:
/// the checks that make a broken producer show up as an error rather than as a fast figure.
pub fn path_problems(run: &RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &run.samples {
        let ops = s.get("ops");
        let accesses = s.get("tasks") * s.get("pages");
        // Each benchmark forces its path (the pager's resolution timing, held pages), so every
        // sample takes it in full; anything else is a bug, named by the path it missed.
        let wanted: &[(&str, u64)] = match s.name.as_str() {
            // Interrupts and #AC are delivered on every `out`.
            "inject_interrupt" | "inject_exception_ac" => &[("handled", ops)],
            "pnp_sleep" => &[("events", ops), ("slept", ops), ("halted", 0), ("early", 0), ("sync_waits", 0)],
            "pnp_halt" => &[("events", ops), ("halted", ops), ("slept", 0), ("early", 0), ("sync_waits", 0)],
            "pnp_early" => &[("events", ops), ("early", ops), ("slept", 0), ("halted", 0), ("sync_waits", 0)],
            "pnp_sync" => &[("events", 0), ("sync_waits", ops)],
            "pnp_kvm_apf" | "pnp_ve" => {
                &[("events", ops), ("slept", ops), ("halted", 0), ("early", 0), ("sync_waits", 0)]
            }
            "workload_ring" | "workload_kvm_apf" => &[("events", accesses), ("sync_waits", 0), ("stalled_ns", 0)],
            "workload_sync" => &[("events", 0), ("sync_waits", accesses)],
            "scaling" => &[("events", s.get("outstanding")), ("slept", s.get("outstanding"))],
            _ => &[],
        };
        for &(field, want) in wanted {
            if s.get(field) != want {
                problems.push(format!(
                    "{} rep {}: {} path not taken: {field}={} where {want} was expected",
                    s.name,
                    s.get("rep"),
                    path_of(&s.name),
                    s.get(field)
                ));
            }
        }
        // PVM delivers a page-not-present event only once the previous one was consumed, so at
        // least one `out` in two brings one.
        if s.name == "inject_page_not_present" && s.get("unavailable") == 0 && s.get("handled") * 2 < ops {
            problems.push(format!("{} rep {}: handled={} of {ops}", s.name, s.get("rep"), s.get("handled")));
        }
        if s.name.starts_with("workload_") && s.get("stalled_ns") > s.get("busy_ns") {
            problems.push(format!("{} rep {}: stalled longer than busy", s.name, s.get("rep")));
        }
    }
    // The workload is a grid: every mode has every (tasks, latency) the other has, each with
    // the same number of repetitions.
    let groups = workload_groups(run);
    let modes: BTreeSet<&str> = groups.keys().map(|(m, _)| m.as_str()).collect();
    let configs: BTreeSet<Workload> = groups.keys().map(|(_, w)| *w).collect();
    let tasks: BTreeSet<u64> = configs.iter().map(|w| w.tasks).collect();
    let latencies: BTreeSet<u64> = configs.iter().map(|w| w.latency_ns).collect();
    if configs.len() != tasks.len() * latencies.len() {
        problems.push(format!(
            "workload: {} configurations, not a full {}x{} grid",
            configs.len(),
            tasks.len(),
            latencies.len()
        ));
    }
    let reps: BTreeSet<usize> = groups.values().map(Vec::len).collect();
    if groups.len() != modes.len() * configs.len() || reps.len() > 1 {
        problems.push(format!("workload: configurations missing from a mode, or unequal repetitions ({reps:?})"));
    }
    let mut scaling_reps: BTreeMap<u64, usize> = BTreeMap::new();
    for s in run.named("scaling") {
        *scaling_reps.entry(s.get("outstanding")).or_default() += 1;
    }
    if scaling_reps.values().collect::<BTreeSet<_>>().len() > 1 {
        problems.push(format!("scaling: unequal repetitions per point ({scaling_reps:?})"));
    }
    problems
}

/// One goal of the benchmark issue, and where the measurement stands.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub what: String,
    pub goal: String,
    /// The measured figure, in words; `None` when it cannot be measured here.
    pub measured: Option<String>,
    /// `Some(true)` met, `Some(false)` not met, `None` not judged (not measured, or the
    /// measurement cannot tell).
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
    fn an_undelivered_injection_is_charged_the_plain_round_trip_of_its_repetition() {
        let r = run(&[
            "bench: inject_page_not_present rep=0 ops=10 handled=5 total_ns=1050 plain_ns=100",
            "bench: inject_page_not_present rep=1 ops=10 handled=5 total_ns=2100 plain_ns=200",
            "bench: inject_interrupt rep=0 ops=10 handled=10 total_ns=500 plain_ns=100",
        ]);
        let costs = injection_costs(&r);
        let pnp = costs.iter().find(|c| c.name == "page_not_present").unwrap();
        // Rep 0: (1050 - 5 x 10) / 5 = 200 ns, 20 round trips; rep 1: 400 ns, also 20: the
        // machine was twice as slow, the multiple is the same.
        assert_eq!(pnp.per_event_ns.unwrap().median, 300.0);
        assert_eq!(pnp.baselines.unwrap().median, 20.0);
        assert_eq!(pnp.baselines.unwrap().max, 20.0);
        let irq = costs.iter().find(|c| c.name == "interrupt").unwrap();
        assert_eq!(irq.baselines.unwrap().median, 5.0);
        let exception = costs.iter().find(|c| c.name == "exception").unwrap();
        assert!(exception.per_event_ns.is_none() && exception.unavailable.is_some(), "no samples, no figure");
        assert!(costs.iter().any(|c| c.name == "ve" && c.unavailable.as_deref() == Some(VE_ALONE_NOT_MEASURED)));
    }

    #[test]
    fn round_trips_are_multiples_of_their_own_baseline() {
        let r = run(&[
            "bench: pnp_sync rep=0 ops=8 total_ns=800 baseline_ns=10 events=0 sync_waits=8",
            "bench: pnp_sync rep=1 ops=8 total_ns=1600 baseline_ns=20 events=0 sync_waits=8",
        ]);
        let sync = page_not_present_costs(&r).into_iter().find(|c| c.name == "sync").unwrap();
        assert_eq!(sync.baselines.unwrap().median, 10.0);
        assert_eq!(sync.baselines.unwrap().min, 10.0);
        assert!(path_problems(&r).is_empty(), "{:?}", path_problems(&r));
    }

    #[test]
    fn a_path_that_was_not_taken_is_a_problem() {
        let r = run(&[
            // Ring mode that quietly waited synchronously; an #AC the guest never saw.
            "bench: pnp_sleep rep=0 ops=8 total_ns=800 baseline_ns=10 events=0 slept=0 sync_waits=8",
            "bench: inject_exception_ac rep=0 ops=50 handled=0 total_ns=500 plain_ns=500",
            "bench: workload_ring rep=0 tasks=2 pages=4 compute_ns=1 latency_ns=0 wall_ns=9 busy_ns=9 events=8",
            // KVM's async page faults that halted instead of parking.
            "bench: pnp_kvm_apf rep=0 ops=8 total_ns=800 baseline_ns=10 events=8 slept=0 halted=8 early=0 sync_waits=0",
        ]);
        let problems = path_problems(&r);
        assert!(
            problems.iter().any(|p| p.contains("pnp_sleep rep 0: the park path not taken: events=0")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("slept=0 where 8 was expected")), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("inject_exception_ac rep 0: the injected #AC path not taken: handled=0")),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.contains("workload_ring")), "a complete ring run: {problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("pnp_kvm_apf rep 0: KVM's async page fault park path not taken: slept=0")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_missing_workload_configuration_is_a_problem() {
        let line = |mode: &str, tasks: u64, latency: u64| {
            format!(
                "bench: workload_{mode} rep=0 tasks={tasks} pages=1 compute_ns=1 latency_ns={latency} wall_ns=9 busy_ns=9 events={} sync_waits={}",
                if mode == "ring" { tasks } else { 0 },
                if mode == "sync" { tasks } else { 0 }
            )
        };
        let mut lines = Vec::new();
        for mode in ["sync", "ring"] {
            for tasks in [1, 8] {
                for latency in [0, 1000] {
                    lines.push(line(mode, tasks, latency));
                }
            }
        }
        let full = RunOutput::parse(lines.iter().map(String::as_str));
        assert!(path_problems(&full).is_empty(), "{:?}", path_problems(&full));
        let missing = RunOutput::parse(lines.iter().skip(1).map(String::as_str));
        assert!(!path_problems(&missing).is_empty());
    }

    #[test]
    fn the_ideal_is_made_of_the_compute_the_tasks_measured() {
        // The calibration said 100 us per page, the tasks measured 50 us: against the nominal
        // ideal (4.4 ms) the run would beat its own bound; against what was done it does not.
        let r = run(&[
            "bench: workload_ring rep=0 tasks=8 pages=4 compute_ns=100000 latency_ns=1000000 wall_ns=4300000 busy_ns=4300000 compute_measured_ns=50000 events=32",
        ]);
        let ring = &workload_results(&r)[0];
        // max(8 x 4 x 50 us + 1 ms, 4 x 1.05 ms) = 4.2 ms.
        assert_eq!(ring.ideal_ns, 4_200_000.0);
        assert!((ring.efficiency - 4.2 / 4.3).abs() < 1e-12, "below 1, where the nominal ideal gives 4.4 / 4.3");
        assert_eq!(ring.workload.compute_ns, 100_000, "grouped by the nominal configuration");
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
        // Ideal: max(8 x 4 x 0.1 ms + 1 ms, 4 x 1.1 ms) = 4.4 ms.
        assert_eq!(ring.ideal_ns, 4_400_000.0);
        // The median of the runs' own efficiencies.
        assert!((ring.efficiency - (4.4 / 8.0 + 4.4 / 9.0) / 2.0).abs() < 1e-12);
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
            "bench: scaling rep=0 outstanding=4 events=4 insns=3506 exits=5",
            "bench: scaling rep=1 outstanding=4 events=4 insns=3606 exits=5",
            "bench: scaling rep=0 outstanding=1 events=0 insns=0 exits=1",
            "bench: scaling rep=0 outstanding=2 events=2 exits=3",
        ]);
        let points = scaling(&r, true);
        assert_eq!(points.len(), 1, "a point without events, or without counts, has no per-event figure");
        assert_eq!(points[0].outstanding, 4);
        assert_eq!(points[0].insns_per_event.median, (3506.0 / 4.0 + 3606.0 / 4.0) / 2.0);
        assert!(scaling(&r, false).is_empty(), "not emulated: no instruction counts");
        assert!(
            path_problems(&r).iter().any(|p| p.contains("scaling rep 0: the many-tokens path not taken: events=0"))
        );
    }
}
