//! The benchmark's results as data (`results.json`), as a Markdown report, and as charts.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::analysis::{Cost, Goal, ScalingPoint, Speedup, WorkloadResult};
use super::counts::PathCounts;
use super::stats::{Summary, human_ns, human_summary_ns};
use super::svg::{Bar, BarChart, GoalLine, LineChart, Scale, Series};
use crate::budgets::{self, Verdict};
use crate::{Profile, project_root};

/// Where and from what the results came.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    /// Which KVM: the PVM module (software virtualization) or hardware virtualization.
    pub kvm: String,
    pub commit: String,
    pub date: String,
    /// `release` for the full benchmark, `dev` for `--quick`.
    pub profile: String,
    pub quick: bool,
}

/// The host stub's run loop against a bare `kvm-ioctls` loop.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// One port-I/O round trip through the host stub, per exit.
    pub host_stub_ns: Summary,
    /// The same through the bare loop.
    pub bare_ns: Summary,
    /// host_stub / bare: the median of [`Baseline::pair_ratios`].
    pub ratio: f64,
    /// host_stub / bare of each pair of timed loops, run back to back in one process.
    pub pair_ratios: Summary,
    /// One guest kernel instruction (`dec`/`jnz` of an empty loop): emulated on PVM, so it
    /// says how much of each cost is the guest's own code.
    pub kernel_instruction_ns: Summary,
}

/// Boot times.
#[derive(Clone, Debug, Serialize)]
pub struct Boot {
    /// The self-tests the boots ran.
    pub tests: String,
    /// `main` to the first KVM_RUN (as the host stub measures it).
    pub host_stub_first_entry_ns: Summary,
    /// The first KVM_RUN to the first task's milestone (`boot.first_task_us`): the time of the
    /// boot whose instructions and exits are counted.
    pub first_task_ns: Summary,
    /// `main` to the guest's exit, self-tests done.
    pub host_stub_tests_done_ns: Summary,
    /// Spawn to reaped, as the benchmark sees it (includes exec and teardown).
    pub host_stub_process_ns: Summary,
    /// The same ELF and tests under QEMU TCG, spawn to reaped.
    pub qemu_tcg_process_ns: Summary,
}

/// Memory footprints.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// The product guest's ELF file (with symbols and debug information).
    pub guest_elf_bytes: u64,
    /// What the product guest's loadable segments occupy in guest memory.
    pub guest_loaded_bytes: u64,
    /// The host stub's peak RSS over the boots.
    pub host_boot_peak_rss_kib: Summary,
    /// The host stub's peak RSS in the benchmark run (guest RAM it touched included).
    pub host_bench_peak_rss_kib: Summary,
}

/// Everything `cargo xtask bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub baseline: Baseline,
    pub injection: Vec<Cost>,
    pub page_not_present: Vec<Cost>,
    pub workload: Vec<WorkloadResult>,
    pub speedups: Vec<Speedup>,
    pub scaling: Vec<ScalingPoint>,
    /// The workload over 1, 2 and 4 vCPUs.
    pub smp: Vec<super::smp::SmpPoint>,
    pub boot: Boot,
    pub memory: Memory,
    pub goals: Vec<Goal>,
    /// What KVM counted per event on each path, and for boot.
    pub counts: Vec<PathCounts>,
    /// Each budgeted count against `xtask/budgets.toml`.
    pub budgets: Vec<Verdict>,
}

/// Where a goal stands: met, not met, not judged (a quick run, or a measurement whose interval
/// straddles the goal), or not measurable.
pub fn goal_status(goal: &Goal, quick: bool) -> &'static str {
    match (goal.met, goal.measured.is_some()) {
        (Some(true), _) => "met",
        (Some(false), _) => "not met",
        (None, true) if quick => "not judged: quick run with the dev build",
        (None, true) => "not judged: the measurement cannot tell",
        (None, false) => "n/a",
    }
}

/// A count in a table: the median, with the range where the repetitions differ.
fn count_cell(s: Option<Summary>, digits: usize) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.min == s.max => format!("{:.*}", digits, s.median),
        Some(s) => format!("{:.*} ({:.*}–{:.*})", digits, s.median, digits, s.min, digits, s.max),
    }
}

/// A path's counts per event as table cells.
struct CountCells {
    insns: String,
    exits: String,
    kvm_exits: String,
    string_iters: String,
}

fn counts_cells(counts: &[PathCounts], path: &str) -> CountCells {
    match counts.iter().find(|c| c.path == path) {
        None => {
            CountCells { insns: "n/a".into(), exits: "n/a".into(), kvm_exits: "n/a".into(), string_iters: "n/a".into() }
        }
        Some(c) => {
            let insns = match (&c.insns, &c.unavailable) {
                (None, Some(why)) => format!("n/a: {why}"),
                (insns, _) => count_cell(*insns, 0),
            };
            CountCells {
                insns,
                exits: count_cell(c.exits, 2),
                kvm_exits: count_cell(c.kvm_exits, 2),
                string_iters: count_cell(c.string_iters, 0),
            }
        }
    }
}

fn cost_table(out: &mut String, costs: &[Cost], instruction_ns: f64, counts: &[PathCounts]) {
    out.push_str(
        "| event | per event | instructions per event | string iterations per event | exits per event (the guest's) | KVM's exits per event | baselines | kernel-instruction equivalents | what |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for c in costs {
        let equivalents =
            c.per_event_ns.map_or_else(|| "n/a".into(), |p| format!("{:.0}", p.median / instruction_ns.max(1e-9)));
        let per = c.per_event_ns.as_ref().map_or_else(|| "n/a".into(), human_summary_ns);
        let baselines =
            c.baselines.map_or_else(|| "n/a".into(), |b| format!("{:.1} ({:.1}–{:.1})", b.median, b.min, b.max));
        let what = match &c.unavailable {
            Some(why) => format!("{} (not measured: {why})", c.what),
            None => c.what.clone(),
        };
        let n = counts_cells(counts, &c.name);
        let _ = writeln!(
            out,
            "| {} | {per} | {} | {} | {} | {} | {baselines} | {equivalents} | {what} |",
            c.name, n.insns, n.string_iters, n.exits, n.kvm_exits
        );
    }
}

/// A cost's name as short as a bar's width needs.
fn chart_label(name: &str) -> String {
    match name {
        "interrupt" => "irq".into(),
        "exception" => "#AC".into(),
        "page_not_present" => "pnp no-wait".into(),
        "ring" => "pnp ring".into(),
        "halt" => "pnp halt".into(),
        "early" => "pnp early".into(),
        "sync" => "pnp sync".into(),
        "kvm_apf" => "kvm-apf park".into(),
        "ve" => "#VE park".into(),
        other => other.into(),
    }
}

fn latency_label(ns: u64) -> String {
    if ns == 0 { "0".into() } else { human_ns(ns as f64) }
}

impl Results {
    /// The Markdown report (charts referenced by file name, next to it).
    pub fn markdown(&self, chart_dir: &str) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} on {} ({} CPUs), Linux {}, {}; commit {}, {} build{}.\n",
            m.date,
            m.cpu,
            m.cpus,
            m.kernel,
            m.kvm,
            m.commit,
            m.profile,
            if m.quick { ", quick settings" } else { "" }
        );
        out.push_str("### Goals\n\n| goal | target | measured | status |\n| --- | --- | --- | --- |\n");
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                g.what,
                g.goal,
                g.measured.as_deref().unwrap_or("not measurable here"),
                goal_status(g, self.machine.quick)
            );
        }
        let b = &self.baseline;
        let null = counts_cells(&self.counts, "null_exit");
        let console = counts_cells(&self.counts, "console");
        let _ = write!(
            out,
            "\n### Baseline: one port-I/O exit\n\n| loop | round trip |\n| --- | --- |\n| host stub | {} |\n| bare kvm-ioctls loop (same process and VM) | {} |\n| host stub / bare, median of {} back-to-back pairs | {:.3} ({:.3}–{:.3}) |\n\n| what KVM counted | instructions | string iterations | exits (the guest's) | KVM's exits |\n| --- | --- | --- | --- | --- |\n| one null exit (the `out` itself) | {} | {} | {} | {} |\n| one console line of 48 bytes (the kernel's `kprintln!`) | {} | {} | {} | {} |\n\nThe multiples of the baseline below divide each cost by the round trip measured in the same repetition, right before it.\n",
            human_summary_ns(&b.host_stub_ns),
            human_summary_ns(&b.bare_ns),
            b.pair_ratios.n,
            b.ratio,
            b.pair_ratios.min,
            b.pair_ratios.max,
            null.insns,
            null.string_iters,
            null.exits,
            null.kvm_exits,
            console.insns,
            console.string_iters,
            console.exits,
            console.kvm_exits,
        );
        out.push_str("\n### Injected events, end to end\n\n");
        let _ = writeln!(
            out,
            "One guest kernel instruction costs {} here (an empty `dec`/`jnz` loop). The equivalents column expresses each cost in that unit: a conversion of time, not a count of instructions (an exit, an EOI or a HLT costs far more than one).\n",
            human_summary_ns(&b.kernel_instruction_ns)
        );
        out.push_str("Instructions per event are what KVM counted (its `insn_emulation` statistic, which sees a `rep` string instruction once per 1,024 iterations); string iterations what the kernel's string functions ran (each costs about an instruction here); exits the guest caused (those that reached the host stub, and its HLTs: what the budgets judge) and KVM's own count of exits (also those the host's side takes in the kernel, and the host's preemptions), in a window around each loop, the loop's own cost taken out, per event handled; each event's count includes the `out` that carried it (one instruction, one exit). The median over the repetitions, with the range where they differ.\n\n");
        cost_table(&mut out, &self.injection, b.kernel_instruction_ns.median, &self.counts);
        out.push_str("\n### Page-not-present round trips\n\n");
        out.push_str(
            "Counts per access: a run over absent pages less the same run over the pages it left present.\n\n",
        );
        cost_table(&mut out, &self.page_not_present, b.kernel_instruction_ns.median, &self.counts);
        let _ = writeln!(out, "\n![per-event costs]({chart_dir}/costs.svg)\n");
        out.push_str("### What async page-not-present buys\n\n");
        if let Some(w) = self.workload.first() {
            let _ = writeln!(
                out,
                "Each task computes {} before each of its {} pages. Completion times are medians (minimum–maximum in `results.json`); efficiency is ideal / completion; utilisation is the share of wall time the vCPU ran guest code (not halted, not stalled in the host).\n",
                human_ns(w.workload.compute_ns as f64),
                w.workload.pages
            );
        }
        out.push_str("| tasks | page-in | ideal | sync | ring | ring speed-up | sync efficiency | ring efficiency | sync utilisation | ring utilisation | ring overhead per page | kvm-apf | kvm-apf speed-up |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        let speedup_of = |mode: &str, w: &WorkloadResult| {
            self.speedups
                .iter()
                .find(|s| s.mode == mode && s.tasks == w.workload.tasks && s.latency_ns == w.workload.latency_ns)
                .map_or_else(|| "n/a".into(), |s| format!("{:.2}", s.speedup))
        };
        for ring in self.workload.iter().filter(|w| w.mode == "ring") {
            let sync = self.workload.iter().find(|w| w.mode == "sync" && w.workload == ring.workload);
            let kvm_apf = self.workload.iter().find(|w| w.mode == "kvm_apf" && w.workload == ring.workload);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} |",
                ring.workload.tasks,
                latency_label(ring.workload.latency_ns),
                human_ns(ring.ideal_ns),
                sync.map_or_else(|| "n/a".into(), |s| human_ns(s.wall_ns.median)),
                human_ns(ring.wall_ns.median),
                speedup_of("ring", ring),
                sync.map_or_else(|| "n/a".into(), |s| format!("{:.2}", s.efficiency)),
                ring.efficiency,
                sync.map_or_else(|| "n/a".into(), |s| format!("{:.2}", s.utilisation)),
                ring.utilisation,
                human_ns(ring.overhead_per_page_ns.max(0.0)),
                kvm_apf.map_or_else(|| "n/a".into(), |w| human_ns(w.wall_ns.median)),
                kvm_apf.map_or_else(|| "n/a".into(), |w| speedup_of("kvm_apf", w)),
            );
        }
        out.push_str(&format!(
            "\n`kvm-apf` is KVM's async page fault ABI, served by the host stub: the same tasks at CPL 3, \"page not present\" as a #PF, \"page ready\" as an interrupt. Not measured: `ve` ({}), and `kvm-apf-kernel` ({}).\n",
            super::analysis::VE_WORKLOAD_NOT_MEASURED,
            super::analysis::KVM_APF_KERNEL_NOT_MEASURED
        ));
        let _ = writeln!(
            out,
            "\n![completion time]({chart_dir}/workload.svg)\n\n![efficiency]({chart_dir}/efficiency.svg)\n\n![speed-up]({chart_dir}/speedup.svg)\n"
        );
        out.push_str("### Scaling with outstanding tokens\n\n");
        if self.scaling.is_empty() {
            out.push_str("Not measured: the figure is a count of the guest kernel's instructions, which KVM does not emulate here.\n\n");
        } else {
            out.push_str(
                "K tasks park at once (the k-th event finds k - 1 tokens outstanding); guest kernel instructions per event: the burst's counting window less the same tasks over present pages, over its K events, the burst's own cost (the release, the runner's turn) spread over them.\n\n| outstanding | instructions per event |\n| --- | --- |\n",
            );
            for p in &self.scaling {
                let s = &p.insns_per_event;
                let range = if s.min == s.max {
                    String::new()
                } else {
                    format!(" ({}–{})", budgets::count(s.min), budgets::count(s.max))
                };
                let _ = writeln!(out, "| {} | {}{range} |", p.outstanding, budgets::count(s.median));
            }
            let _ = writeln!(out, "\n![scaling]({chart_dir}/scaling.svg)\n");
        }
        out.push_str(&super::smp::section(&self.smp, self.machine.cpus));
        let boot = &self.boot;
        let mem = &self.memory;
        let counted = counts_cells(&self.counts, "boot");
        let _ = write!(
            out,
            "\n### Boot and footprint\n\nBoots run the product guest (`pvagent-guest`, no benchmark code) with `{}`.\n\n| | time |\n| --- | --- |\n| host stub: `main` to the first `KVM_RUN` | {} |\n| host stub: the first `KVM_RUN` to the first task (the milestone): the boot the counts below are of | {} |\n| host stub: `main` to the guest's exit, self-tests done | {} |\n| host stub: whole process (spawn to exit) | {} |\n| QEMU TCG: whole process (spawn to exit; QEMU does not report the first instruction) | {} |\n\n| boot, first guest instruction to the self-test runner's start (the milestone) | count |\n| --- | --- |\n| guest instructions KVM emulated | {} |\n| string iterations (the same boots, reported at the milestone) | {} |\n| exits the guest caused | {} |\n| exits as KVM counted them | {} |\n\n| footprint | size |\n| --- | --- |\n| product guest ELF file | {} KiB |\n| product guest loaded image | {} KiB |\n| host stub peak RSS, boot | {:.0} KiB |\n| host stub peak RSS, benchmark run | {:.0} KiB |\n",
            boot.tests,
            human_summary_ns(&boot.host_stub_first_entry_ns),
            human_summary_ns(&boot.first_task_ns),
            human_summary_ns(&boot.host_stub_tests_done_ns),
            human_summary_ns(&boot.host_stub_process_ns),
            human_summary_ns(&boot.qemu_tcg_process_ns),
            counted.insns,
            counted.string_iters,
            counted.exits,
            counted.kvm_exits,
            mem.guest_elf_bytes / 1024,
            mem.guest_loaded_bytes / 1024,
            mem.host_boot_peak_rss_kib.median,
            mem.host_bench_peak_rss_kib.median,
        );
        out.push_str("\n### Budgets\n\nEach path's count per event against `xtask/budgets.toml`: the limit `cargo xtask test` enforces (it fails above it) and the target the project aims at (on a hard path, the issue's budget, which the limit may not exceed). A count is judged on the least of its repetitions; a repetition in which the host was late with a resolution is run again, so they are the same.\n\n");
        out.push_str(&budgets::table(&self.budgets, !self.machine.quick && self.machine.profile == "release"));
        out
    }

    /// The charts, as (file name, SVG).
    pub fn charts(&self) -> Vec<(&'static str, String)> {
        let mut charts = Vec::new();
        let bars: Vec<Bar> = self
            .injection
            .iter()
            .chain(&self.page_not_present)
            .filter_map(|c| {
                let b = c.baselines?;
                Some(Bar { label: chart_label(&c.name), value: b.median, whisker: Some((b.min, b.max)) })
            })
            .collect();
        charts.push((
            "costs.svg",
            BarChart {
                title: "Cost per event, in port-I/O round trips".into(),
                y_label: "baselines (log)".into(),
                bars,
                scale: Scale::Log,
                goal: Some(GoalLine { value: 1.5, label: "goal for exceptions".into() }),
            }
            .render(),
        ));
        let latencies: Vec<u64> = {
            let mut l: Vec<u64> = self.workload.iter().map(|w| w.workload.latency_ns).collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        let mut tasks: Vec<u64> = self.workload.iter().map(|w| w.workload.tasks).collect();
        tasks.sort_unstable();
        tasks.dedup();
        let categories: Vec<String> = latencies.iter().map(|l| latency_label(*l)).collect();
        let find = |mode: &str, k: u64, l: u64| {
            self.workload.iter().find(|w| w.mode == mode && w.workload.tasks == k && w.workload.latency_ns == l)
        };
        let most = tasks.iter().copied().filter(|k| *k <= 8).max().unwrap_or(1);
        let mut series = Vec::new();
        for mode in ["sync", "ring", "kvm_apf"] {
            series.push(Series {
                name: format!("{}, {most} tasks", mode.replace('_', "-")),
                values: latencies.iter().map(|l| find(mode, most, *l).map(|w| w.wall_ns.median / 1e6)).collect(),
                dashed: false,
            });
        }
        series.push(Series {
            name: "ideal".into(),
            values: latencies.iter().map(|l| find("ring", most, *l).map(|w| w.ideal_ns / 1e6)).collect(),
            dashed: true,
        });
        charts.push((
            "workload.svg",
            LineChart {
                title: format!("Completion time, {most} tasks"),
                x_label: "page-in latency".into(),
                y_label: "ms (log)".into(),
                categories: categories.clone(),
                series,
                scale: Scale::Log,
                goal: None,
            }
            .render(),
        ));
        let per_k = |value: &dyn Fn(&WorkloadResult) -> Option<f64>| -> Vec<Series> {
            tasks
                .iter()
                .map(|k| Series {
                    name: format!("{k} task{}", if *k == 1 { "" } else { "s" }),
                    values: latencies.iter().map(|l| find("ring", *k, *l).and_then(value)).collect(),
                    dashed: false,
                })
                .collect()
        };
        charts.push((
            "efficiency.svg",
            LineChart {
                title: "Ring mode: achieved / ideal throughput".into(),
                x_label: "page-in latency".into(),
                y_label: "efficiency".into(),
                categories: categories.clone(),
                series: per_k(&|w| Some(w.efficiency)),
                scale: Scale::Linear,
                goal: Some(GoalLine { value: 0.9, label: "goal (8 tasks, >= 200 µs)".into() }),
            }
            .render(),
        ));
        let speedup = |k: u64, l: u64| {
            self.speedups.iter().find(|s| s.mode == "ring" && s.tasks == k && s.latency_ns == l).map(|s| s.speedup)
        };
        charts.push((
            "speedup.svg",
            LineChart {
                title: "Speed-up of ring over sync".into(),
                x_label: "page-in latency".into(),
                y_label: "sync time / ring time".into(),
                categories,
                series: tasks
                    .iter()
                    .map(|k| Series {
                        name: format!("{k} task{}", if *k == 1 { "" } else { "s" }),
                        values: latencies.iter().map(|l| speedup(*k, *l)).collect(),
                        dashed: false,
                    })
                    .collect(),
                scale: Scale::Linear,
                goal: Some(GoalLine { value: 1.0, label: "break-even".into() }),
            }
            .render(),
        ));
        charts.push((
            "scaling.svg",
            LineChart {
                title: "Guest instructions per event vs outstanding tokens".into(),
                x_label: "outstanding tokens".into(),
                y_label: "instructions per event".into(),
                categories: self.scaling.iter().map(|p| p.outstanding.to_string()).collect(),
                series: vec![Series {
                    name: "ring".into(),
                    values: self.scaling.iter().map(|p| Some(p.insns_per_event.median)).collect(),
                    dashed: false,
                }],
                scale: Scale::Linear,
                goal: None,
            }
            .render(),
        ));
        charts
    }
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(project_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine this run measured, read from it.
pub fn machine(profile: Profile, quick: bool) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "KVM with the PVM module (software virtualization: guest kernel code is emulated)".into()
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "KVM on VMX (kvm_intel)".into()
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "KVM on SVM (kvm_amd)".into()
    } else {
        "KVM (module unknown)".into()
    };
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: shell("uname", &["-r"]),
        kvm,
        commit: shell("git", &["rev-parse", "--short", "HEAD"]),
        date: shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        profile: profile.name().into(),
        quick,
    }
}
