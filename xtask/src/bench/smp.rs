//! The workload over several vCPUs (`bench=smp`): one host stub process per vCPU count (1, 2
//! and 4), each running the guest's ring-mode workload with its tasks spread over every vCPU;
//! the completion time against the 1-vCPU run's, and the instructions per event (KVM's
//! statistics summed over the vCPUs).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::samples::RunOutput;
use super::stats::{Summary, human_ns};
use super::{BENCH_DEVICE, Progress, host_stub};
use crate::{Result, err};

/// The vCPU counts measured.
pub const VCPU_COUNTS: [usize; 3] = [1, 2, 4];

/// One vCPU count at one latency.
#[derive(Clone, Debug, Serialize)]
pub struct SmpPoint {
    pub vcpus: usize,
    pub tasks: u64,
    pub pages: u64,
    pub compute_ns: u64,
    pub latency_ns: u64,
    /// From the first task's start to the last task's last access.
    pub wall_ns: Summary,
    /// What one compute segment took, as the tasks measured it (median): the same on every
    /// vCPU count unless the vCPUs' threads wait for the host's cores.
    pub compute_measured_ns: Summary,
    /// The host's load average over the last minute as the run started (`/proc/loadavg`): these
    /// machines are shared, and other work takes cores from the vCPUs.
    pub host_load: Option<f64>,
    /// The 1-vCPU run's median completion time over this one's.
    pub speedup: Option<f64>,
    /// The guest's instructions per page-not-present event, summed over the vCPUs (absent
    /// pages less the same run over present ones); `None` where the host does not count.
    pub insns_per_event: Option<Summary>,
}

/// Every vCPU count's runs, and what shows that a run did not take the path it measures.
pub(super) fn measure(
    host: &Path,
    bench_elf: &Path,
    quick: bool,
    reps: u64,
    progress: &Progress,
) -> Result<(Vec<SmpPoint>, Vec<String>)> {
    let quick_word = if quick { " bench-quick" } else { "" };
    let cmdline = format!("bench=smp sld=off bench-reps={reps}{quick_word}");
    let (mut points, mut problems) = (Vec::new(), Vec::new());
    for vcpus in VCPU_COUNTS {
        progress.step(&format!("the workload over {vcpus} vCPUs"));
        let count = vcpus.to_string();
        let host_load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()));
        let (out, _) = host_stub(host, bench_elf, &cmdline, &[BENCH_DEVICE, "--vcpus", &count], progress)?;
        if !out.done {
            return Err(err!("the smp benchmark run with {vcpus} vCPUs ended without `bench: done`"));
        }
        problems.extend(path_problems(&out, vcpus));
        points.extend(points_of(&out, vcpus, host_load));
        progress.done_one();
    }
    if points.is_empty() {
        problems.push("no smp samples".into());
    }
    for p in 0..points.len() {
        let one = points.iter().find(|o| o.vcpus == 1 && o.latency_ns == points[p].latency_ns);
        points[p].speedup = one.map(|o| o.wall_ns.median / points[p].wall_ns.median);
    }
    Ok((points, problems))
}

/// A run must report its vCPU count, and every vCPU must have taken events of its own.
fn path_problems(out: &RunOutput, vcpus: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let samples: Vec<_> = out.named("smp").collect();
    if samples.is_empty() {
        problems.push(format!("smp with {vcpus} vCPUs: no samples"));
    }
    for s in samples {
        if s.get("vcpus") != vcpus as u64 {
            problems.push(format!("smp with {vcpus} vCPUs: the guest ran on {}", s.get("vcpus")));
        }
        if s.get("min_vcpu_events") == 0 {
            problems.push(format!("smp with {vcpus} vCPUs: a vCPU took no page-not-present event"));
        }
    }
    problems
}

fn points_of(out: &RunOutput, vcpus: usize, host_load: Option<f64>) -> Vec<SmpPoint> {
    let mut latencies: Vec<u64> = out.named("smp").map(|s| s.get("latency_ns")).collect();
    latencies.dedup();
    let mut points = Vec::new();
    for latency in latencies {
        let samples: Vec<_> = out.named("smp").filter(|s| s.get("latency_ns") == latency).collect();
        let walls: Vec<f64> = samples.iter().map(|s| s.f("wall_ns")).collect();
        let insns: Vec<f64> = samples.iter().filter_map(|s| s.field("insns_per_event")).map(|v| v as f64).collect();
        let computes: Vec<f64> = samples.iter().map(|s| s.f("compute_measured_ns")).collect();
        let (Some(first), Some(wall_ns), Some(compute_measured_ns)) =
            (samples.first(), Summary::of(&walls), Summary::of(&computes))
        else {
            continue;
        };
        points.push(SmpPoint {
            vcpus,
            tasks: first.get("tasks"),
            pages: first.get("pages"),
            compute_ns: first.get("compute_ns"),
            latency_ns: latency,
            wall_ns,
            compute_measured_ns,
            host_load,
            speedup: None,
            insns_per_event: Summary::of(&insns),
        });
    }
    points
}

/// The report's section: a table, and the host's cores, which 4 vCPUs share.
pub fn section(points: &[SmpPoint], host_cpus: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Several vCPUs (`bench=smp`, one host stub process per vCPU count): the ring-mode workload's CPL 3 tasks spread evenly over the vCPUs, each vCPU taking its own tasks' page-not-present events. This host has {host_cpus} cores, so with more vCPUs than that they share them: a speed-up beyond {host_cpus} cannot be, and 4 vCPUs measure sharing rather than parallelism. The machine is shared: the host's load average as each run started, and what one compute segment took as the tasks measured it, say how much of the host's cores the vCPUs had. Instructions per event are KVM's counts summed over the vCPUs.\n"
    );
    out.push_str("| vCPUs | tasks x pages | compute per page (measured) | latency | host load | completion (median) | speed-up over 1 vCPU | guest instructions per event |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in points {
        let _ = writeln!(
            out,
            "| {} | {} x {} | {} ({}) | {} | {} | {} | {} | {} |",
            p.vcpus,
            p.tasks,
            p.pages,
            human_ns(p.compute_ns as f64),
            human_ns(p.compute_measured_ns.median),
            human_ns(p.latency_ns as f64),
            p.host_load.map_or("unknown".into(), |l| format!("{l:.2}")),
            human_ns(p.wall_ns.median),
            p.speedup.map_or("n/a".into(), |s| format!("{s:.2}")),
            p.insns_per_event.as_ref().map_or("not counted by this host".into(), |s| format!("{:.0}", s.median)),
        );
    }
    out
}
