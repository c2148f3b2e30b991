//! `cargo xtask bench`: every measurement of the benchmark issue in one command, on one
//! machine, in one go. It boots the benchmark guest (`pvagent-bench`) under the host stub with
//! its benchmark device (`--bench`: the injection and null ports, the bare `kvm-ioctls` loop),
//! once per vCPU count (1, 2, 4) for the workload over several vCPUs (`smp.rs`), and the
//! product guest under the host stub and QEMU TCG for boot times and footprint; it reads
//! back what the guest and the host printed, and writes
//! `target/bench/results.json`, `target/bench/report.md` and its charts. Costs are given as
//! medians with their spread and as multiples of a baseline measured in the same run, because
//! these machines are noisy. `--quick` runs fewer and smaller measurements with the dev build:
//! CI runs it to check that everything runs and gives sane numbers, not to judge timings.

pub mod analysis;
pub mod counts;
pub mod model;
pub mod report;
pub mod samples;
pub mod smp;
pub mod stats;
pub mod svg;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::budgets::Budgets;
use crate::qemu::{self, Accel};
use crate::{Profile, Result, err, guest, proc, project_root, setup};
use analysis::Goal;
use report::{Baseline, Boot, Memory, Results, machine};
use samples::RunOutput;
use stats::Summary;

/// What `cargo xtask bench` was asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub quick: bool,
    /// Write a Chrome trace of an extra guest-benchmark run (not measured) here.
    pub trace: Option<PathBuf>,
    /// Also copy the report and charts into `docs/` (full runs only).
    pub update_docs: bool,
}

/// How much of everything to run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Processes measuring the host stub's loop against the bare loop.
    baseline_runs: usize,
    /// Pairs of timed loops in each of them.
    baseline_reps: u64,
    /// Repetitions inside each guest (`bench-reps=`).
    reps: u64,
    /// Processes of the guest benchmark, pooled.
    bench_runs: usize,
    boots: usize,
    qemu_boots: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { baseline_runs: 1, baseline_reps: 6, reps: 3, bench_runs: 1, boots: 2, qemu_boots: 1 }
        } else {
            Self { baseline_runs: 6, baseline_reps: 10, reps: 5, bench_runs: 3, boots: 5, qemu_boots: 3 }
        }
    }

    fn steps(&self, traced: bool) -> u64 {
        (self.baseline_runs
            + self.bench_runs
            + smp::VCPU_COUNTS.len()
            + self.boots
            + self.qemu_boots
            + usize::from(traced)) as u64
    }
}

/// The self-tests the boot measurement runs.
const BOOT_TESTS: &str = "arch";
/// The boot measurement's command line: its length is part of what boot costs (the kernel
/// prints it), so the boots the budget check counts use the same one.
const BOOT_CMDLINE: &str = "expect-host=stub tests=arch";
/// The benchmark guest's counting benchmarks, as the budget check runs them: one process,
/// small loops, three repetitions (a count is judged on the least of them).
const COUNTING_CMDLINE: &str = "bench=io,console,inject,pnp sld=off bench-quick bench-reps=3";
/// The host stub's option that serves the benchmark device, for the benchmark guest's runs.
const BENCH_DEVICE: &str = "--bench";
/// Time one process may take.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the results go.
fn out_dir() -> PathBuf {
    project_root().join("target").join("bench")
}

/// Progress: a bar on a terminal, one line per step otherwise (CI logs).
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(steps: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(steps);
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar }
    }

    fn step(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_owned()),
            None => eprintln!("xtask bench: {what}"),
        }
    }

    fn detail(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_owned());
        }
    }

    fn done_one(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Whether KVM emulates the guest kernel here (the PVM module), so that its count of emulated
/// instructions is a count of the guest kernel's instructions. Elsewhere (VMX, SVM) it counts
/// only the rare instruction KVM emulates, and the benchmark says the count is not available.
pub fn guest_kernel_emulated() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// One boot of the product guest `elf` under the host stub `host`, as the boot measurement
/// runs it (`tests=arch`, quiet): what it printed, with the boot milestone's counters.
pub fn boot_run(host: &Path, elf: &Path) -> Result<RunOutput> {
    Ok(host_stub(host, elf, BOOT_CMDLINE, &["--quiet"], &Progress { bar: None })?.0)
}

/// One run of the benchmark guest `bench_elf`'s counting benchmarks (the null exit, the
/// console, the injections, the page-not-present round trips) under `host`, quick.
pub fn counting_run(host: &Path, bench_elf: &Path) -> Result<RunOutput> {
    Ok(host_stub(host, bench_elf, COUNTING_CMDLINE, &[BENCH_DEVICE], &Progress { bar: None })?.0)
}

/// One host stub process; fails unless it exits 0. Returns what it printed and how long it
/// took from spawn to exit.
fn host_stub(
    host: &Path,
    elf: &Path,
    cmdline: &str,
    args: &[&str],
    progress: &Progress,
) -> Result<(RunOutput, Duration)> {
    let mut cmd = Command::new(host);
    cmd.arg(elf).args(["--cmdline", cmdline, "--counters", "--timeout", "280"]).args(args);
    let label = cmdline.to_owned();
    let outcome = proc::run_observed(cmd, PROCESS_TIMEOUT, &mut |line| {
        if let Some(rest) = line.strip_prefix(pvagent_abi::report::BENCH_PREFIX) {
            progress.detail(&format!("{label}: {}", rest.split_whitespace().next().unwrap_or("")));
        }
    })?;
    let out = RunOutput::parse(outcome.output.iter().map(String::as_str));
    if !outcome.status.success() {
        // The guest's own reason comes first: it is far above the host's closing counters.
        let reasons: Vec<String> = out.errors.iter().map(|e| format!("the guest: {e}")).collect();
        let tail: Vec<&str> = outcome.output.iter().rev().take(12).rev().map(String::as_str).collect();
        return Err(err!(
            "the host stub failed ({}) for `{cmdline}` {}:\n{}{}",
            outcome.status,
            args.join(" "),
            reasons.iter().map(|r| format!("{r}\n")).collect::<String>(),
            tail.join("\n")
        ));
    }
    if let Some(e) = out.errors.first() {
        return Err(err!("the guest could not run a benchmark: {e}"));
    }
    if let Some(refused) = out.counter("bench.refused").filter(|n| *n > 0) {
        return Err(err!("the host stub refused {refused} of the guest's benchmark requests for `{cmdline}`"));
    }
    Ok((out, outcome.elapsed))
}

fn summary(what: &str, values: &[f64]) -> Result<Summary> {
    Summary::of(values).ok_or_else(|| err!("{what}: no usable measurement ({values:?})"))
}

/// Runs every measurement and writes the results.
pub fn run(opts: &Options) -> Result<()> {
    if opts.update_docs && opts.quick {
        return Err(err!("--update-docs needs the full benchmark, not --quick"));
    }
    setup::check_kvm()?;
    setup::ensure_qemu()?;
    let plan = Plan::new(opts.quick);
    // The full benchmark measures what users run; the quick one reuses CI's dev build.
    let profile = if opts.quick { Profile::Dev } else { Profile::Release };
    eprintln!("xtask bench: building the guests and the host stub ({})", profile.dir());
    let elf = guest::build_guest(profile)?;
    let bench_elf = guest::build_bench_guest(profile)?;
    let host = guest::build_host_stub(profile)?;
    if let Some(parent) = opts.trace.as_deref().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
        // The trace may go where nothing exists yet (target/bench on a fresh clone).
        std::fs::create_dir_all(parent).map_err(|e| err!("creating {}: {e}", parent.display()))?;
    }
    let progress = Progress::new(plan.steps(opts.trace.is_some()));
    let results = measure(&plan, opts, profile, Guests { product: &elf, bench: &bench_elf }, &host, &progress);
    progress.finish();
    let (results, mut problems) = results?;
    problems.extend(insane(&results));
    if let Some(path) = &opts.trace {
        match trace_events(path) {
            Ok(events) => {
                println!(
                    "xtask bench: timeline of a guest-benchmark run of its own: {} ({events} events)",
                    path.display()
                )
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    write(&results)?;
    print_summary(&results);
    if !problems.is_empty() {
        return Err(err!(
            "the benchmark produced figures that cannot be right{}:\n  {}",
            if opts.update_docs { " (docs/performance.md left as it was)" } else { "" },
            problems.join("\n  ")
        ));
    }
    if opts.update_docs {
        update_docs(&results)?;
    }
    Ok(())
}

/// The two guest images a benchmark run boots.
#[derive(Clone, Copy, Debug)]
struct Guests<'a> {
    /// The product kernel: boot times and footprint are what users get.
    product: &'a Path,
    /// The benchmark kernel, for everything the guest measures.
    bench: &'a Path,
}

fn measure(
    plan: &Plan,
    opts: &Options,
    profile: Profile,
    guests: Guests<'_>,
    host: &Path,
    progress: &Progress,
) -> Result<(Results, Vec<String>)> {
    let elf = guests.product;
    let reps = plan.reps.to_string();
    let quick_word = if opts.quick { " bench-quick" } else { "" };

    // 1. The baseline: the host stub's loop against the bare loop. The guest switches the
    // host between the two around each timed loop (alternating which goes first), so each
    // pair is measured within milliseconds: this machine's speed drifts by a third between
    // phases lasting seconds, which would decide a comparison of separate processes.
    let io_cmdline = format!("bench=io bench-reps={}{quick_word}", plan.baseline_reps);
    let mut baseline_runs = Vec::new();
    for run in 0..plan.baseline_runs {
        progress.step(&format!("baseline {}/{}: host stub loop against the bare loop", run + 1, plan.baseline_runs));
        let (out, _) = host_stub(host, guests.bench, &io_cmdline, &[BENCH_DEVICE], progress)?;
        baseline_runs.push(out);
        progress.done_one();
    }
    let baseline =
        RunOutput { samples: baseline_runs.into_iter().flat_map(|r| r.samples).collect(), ..Default::default() };
    let host_stub_ns = summary("the host stub's round trip", &analysis::per_op(&baseline, "io"))?;
    let bare_ns = summary("the bare loop's round trip", &analysis::per_op(&baseline, "io_bare"))?;
    let ratios = analysis::loop_ratios(&baseline);
    let pair_ratios = summary("host stub / bare loop", &ratios)?;
    let ratio_interval = stats::median_interval_95(&ratios);

    // 2. The guest's benchmarks, in as many processes as the plan says, pooled.
    let bench_cmdline = format!("bench=io,console,inject,pnp,workload,scaling sld=off bench-reps={reps}{quick_word}");
    let mut bench = RunOutput::default();
    let mut bench_rss = Vec::new();
    for run in 0..plan.bench_runs {
        progress.step(&format!("guest benchmarks {}/{}", run + 1, plan.bench_runs));
        let (out, _) = host_stub(host, guests.bench, &bench_cmdline, &[BENCH_DEVICE], progress)?;
        if !out.done {
            return Err(err!("the guest benchmark run ended without `bench: done`"));
        }
        bench_rss.extend(out.counter("host.peak_rss_kib").map(|v| v as f64));
        bench.samples.extend(out.samples);
        progress.done_one();
    }
    // The timeline comes from a run of its own: tracing costs exits (one per guest task switch)
    // and host time per exit, which must not leak into the figures.
    if let Some(path) = &opts.trace {
        progress.step("guest benchmarks, traced (for the timeline only)");
        let path = path.display().to_string();
        let (out, _) = host_stub(host, guests.bench, &bench_cmdline, &[BENCH_DEVICE, "--trace", &path], progress)?;
        if !out.done {
            return Err(err!("the traced guest benchmark run ended without `bench: done`"));
        }
        progress.done_one();
    }
    let kernel_instruction_ns = summary("a guest kernel instruction", &analysis::per_op(&bench, "kernel_insn"))?;
    let injection = analysis::injection_costs(&bench);
    let page_not_present = analysis::page_not_present_costs(&bench);
    let mut problems = analysis::path_problems(&baseline);
    problems.extend(analysis::path_problems(&bench));
    let workload = analysis::workload_results(&bench);
    let speedups = analysis::speedups(&workload);
    let scaling = analysis::scaling(&bench, guest_kernel_emulated());
    let (smp, smp_problems) = smp::measure(host, guests.bench, opts.quick, plan.reps.min(3), progress)?;
    problems.extend(smp_problems);

    // 3. Boot, under the host stub and under QEMU TCG.
    let (mut first_entry, mut done, mut process, mut boot_rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_task = Vec::new();
    let mut boot_runs = Vec::new();
    for boot in 0..plan.boots {
        progress.step(&format!("boot under the host stub {}/{}", boot + 1, plan.boots));
        let (out, elapsed) = host_stub(host, elf, BOOT_CMDLINE, &["--quiet"], progress)?;
        let to_entry = out.counter("host.main_to_entry_us").ok_or_else(|| err!("no host.main_to_entry_us counter"))?;
        let run = out.counter("host.run_us").ok_or_else(|| err!("no host.run_us counter"))?;
        first_entry.push(to_entry as f64 * 1e3);
        let to_first_task =
            out.counter("boot.first_task_us").ok_or_else(|| err!("no boot.first_task_us counter (the milestone)"))?;
        first_task.push(to_first_task as f64 * 1e3);
        done.push((to_entry + run) as f64 * 1e3);
        process.push(elapsed.as_nanos() as f64);
        boot_rss.extend(out.counter("host.peak_rss_kib").map(|v| v as f64));
        boot_runs.push(out);
        progress.done_one();
    }
    let mut qemu_process = Vec::new();
    for boot in 0..plan.qemu_boots {
        progress.step(&format!("boot under QEMU TCG {}/{}", boot + 1, plan.qemu_boots));
        let run = qemu::run(elf, Accel::Tcg, &format!("expect-host=tcg tests={BOOT_TESTS}"), PROCESS_TIMEOUT, false)?;
        if !run.passed() {
            return Err(err!("the boot under QEMU TCG failed (guest code {:?})", run.guest_code));
        }
        qemu_process.push(run.outcome.elapsed.as_nanos() as f64);
        progress.done_one();
    }
    let boot = Boot {
        tests: format!("tests={BOOT_TESTS}"),
        host_stub_first_entry_ns: summary("boot to first entry", &first_entry)?,
        first_task_ns: summary("first entry to the first task", &first_task)?,
        host_stub_tests_done_ns: summary("boot to self-tests done", &done)?,
        host_stub_process_ns: summary("host stub process", &process)?,
        qemu_tcg_process_ns: summary("QEMU TCG process", &qemu_process)?,
    };

    // 4. Footprint.
    let guest_elf_bytes = std::fs::metadata(elf).map_err(|e| err!("{}: {e}", elf.display()))?.len();
    let (lo, hi) = pvagent_host::loader::check_image(elf, u64::MAX).map_err(|e| err!("{e}"))?;
    let memory = Memory {
        guest_elf_bytes,
        guest_loaded_bytes: hi - lo,
        host_boot_peak_rss_kib: summary("host RSS at boot", &boot_rss)?,
        host_bench_peak_rss_kib: summary("host RSS in the benchmark", &bench_rss)?,
    };

    // 5. What KVM counted for each path, against the budgets (judged on the release build).
    let emulated = guest_kernel_emulated();
    let mut counts = counts::of_samples(&bench, emulated)?;
    counts.push(counts::of_boots(&boot_runs, emulated));
    let budgets = Budgets::load()?;
    let (verdicts, budget_problems) = crate::budgets::judge(&budgets, &counts);
    problems.extend(budget_problems);

    let ratio = pair_ratios.median;
    let ratio_goal = budgets.host_stub_loop_ratio;
    let exception = injection.iter().find(|c| c.name == "exception").and_then(|c| c.baselines);
    let goals = vec![
        Goal {
            what: "host stub run loop over a bare kvm-ioctls loop".into(),
            goal: format!("<= {ratio_goal:.2}"),
            measured: Some(match ratio_interval {
                Some((lo, hi)) => format!("{ratio:.3} (median; 95% interval {lo:.3}–{hi:.3})"),
                None => format!("{ratio:.3}"),
            }),
            // The budget is on the median of the pairs (xtask/budgets.toml), judged only where
            // its 95% interval lies on one side of it: an interval that straddles the goal
            // cannot tell whether it is met.
            met: match ratio_interval {
                Some((_, hi)) if hi <= ratio_goal => Some(true),
                Some((lo, _)) if lo > ratio_goal => Some(false),
                // Fewer than six pairs give no interval: not judged.
                Some(_) | None => None,
            },
        },
        Goal {
            what: "an injected exception (#AC), end to end, in baselines".into(),
            goal: "<= 1.5".into(),
            measured: exception.map(|b| format!("{:.1} ({:.1}–{:.1})", b.median, b.min, b.max)),
            met: exception.map(|b| b.median <= 1.5),
        },
        Goal {
            what: "an injected #VE, end to end, in baselines".into(),
            goal: "<= 1.5".into(),
            measured: None,
            met: None,
        },
        analysis::efficiency_goal(&workload),
    ];

    let mut goals = goals;
    if opts.quick {
        // A quick run uses the dev build and small workloads: it checks that everything runs,
        // and judges no goal.
        for goal in &mut goals {
            goal.met = None;
        }
    }
    let results = Results {
        machine: machine(profile, opts.quick),
        baseline: Baseline { host_stub_ns, bare_ns, ratio, pair_ratios, kernel_instruction_ns },
        injection,
        page_not_present,
        workload,
        speedups,
        scaling,
        smp,
        boot,
        memory,
        goals,
        counts,
        budgets: verdicts,
    };
    Ok((results, problems))
}

/// What cannot be right in the results: every figure must be a positive finite number, and
/// every path that exists here must have been measured.
fn insane(r: &Results) -> Vec<String> {
    let mut problems = Vec::new();
    let mut summaries: Vec<(String, &Summary)> = vec![
        ("baseline, host stub".into(), &r.baseline.host_stub_ns),
        ("baseline, bare loop".into(), &r.baseline.bare_ns),
        ("baseline, ratio".into(), &r.baseline.pair_ratios),
        ("a guest kernel instruction".into(), &r.baseline.kernel_instruction_ns),
        ("boot, first entry".into(), &r.boot.host_stub_first_entry_ns),
        ("boot, to the first task".into(), &r.boot.first_task_ns),
        ("boot, self-tests done".into(), &r.boot.host_stub_tests_done_ns),
        ("boot, QEMU TCG".into(), &r.boot.qemu_tcg_process_ns),
        ("host RSS".into(), &r.memory.host_boot_peak_rss_kib),
    ];
    for c in r.injection.iter().chain(&r.page_not_present) {
        match (&c.per_event_ns, c.name.as_str()) {
            (Some(s), _) => summaries.push((format!("cost of {}", c.name), s)),
            (None, "ve" | "kvm_apf_kernel") => {}
            (None, name) => problems.push(format!("cost of {name}: not measured ({:?})", c.unavailable)),
        }
    }
    for w in &r.workload {
        summaries.push((format!("workload {} {:?}", w.mode, w.workload), &w.wall_ns));
        // Efficiency above 1 means the run beat its own lower bound: pages that were not
        // absent, or a clock that is wrong.
        if !(w.efficiency > 0.0 && w.efficiency <= 1.05 && (0.0..=1.0).contains(&w.utilisation)) {
            problems.push(format!(
                "workload {} {:?}: efficiency {} utilisation {}",
                w.mode, w.workload, w.efficiency, w.utilisation
            ));
        }
    }
    for p in &r.scaling {
        summaries.push((format!("scaling at {}", p.outstanding), &p.insns_per_event));
    }
    for p in &r.smp {
        summaries.push((format!("smp with {} vCPUs at {} ns", p.vcpus, p.latency_ns), &p.wall_ns));
        if p.speedup.is_none_or(|s| !(s.is_finite() && s > 0.0)) {
            problems.push(format!("smp with {} vCPUs: no speed-up over 1 vCPU ({:?})", p.vcpus, p.speedup));
        }
    }
    problems.extend(summaries.into_iter().filter(|(_, s)| !s.is_sane()).map(|(what, s)| format!("{what}: {s:?}")));
    for (empty, what) in [
        (r.workload.is_empty(), "no workload results"),
        (r.speedups.is_empty(), "no speed-ups over sync"),
        (r.scaling.is_empty() && guest_kernel_emulated(), "no scaling points"),
        (r.memory.guest_loaded_bytes == 0, "a guest image of 0 bytes"),
    ] {
        if empty {
            problems.push(what.into());
        }
    }
    problems
}

/// How many events the trace file at `path` holds, once it parsed as a trace.
fn trace_events(path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).map_err(|e| err!("the trace {}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err!("the trace {} is not JSON: {e}", path.display()))?;
    match json.get("traceEvents").and_then(|e| e.as_array()) {
        Some(events) if !events.is_empty() => Ok(events.len()),
        _ => Err(err!("the trace {} has no traceEvents", path.display())),
    }
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| err!("writing {}: {e}", path.display()))
}

fn write(results: &Results) -> Result<()> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).map_err(|e| err!("creating {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| err!("encoding the results: {e}"))?;
    write_file(&dir.join("results.json"), &json)?;
    write_file(&dir.join("report.md"), &results.markdown("."))?;
    for (name, svg) in results.charts() {
        write_file(&dir.join(name), &svg)?;
    }
    Ok(())
}

/// Markers in `docs/performance.md` between which the generated report goes.
const DOCS_BEGIN: &str = "<!-- bench:begin (generated by `cargo xtask bench --update-docs`) -->";
const DOCS_END: &str = "<!-- bench:end -->";

/// Puts the report between the markers of `docs/performance.md` and the charts in
/// `docs/performance/`; the hand-written reading around them stays.
fn update_docs(results: &Results) -> Result<()> {
    let docs = project_root().join("docs");
    let charts = docs.join("performance");
    std::fs::create_dir_all(&charts).map_err(|e| err!("creating {}: {e}", charts.display()))?;
    for (name, svg) in results.charts() {
        write_file(&charts.join(name), &svg)?;
    }
    let path = docs.join("performance.md");
    let text = std::fs::read_to_string(&path).map_err(|e| err!("reading {}: {e}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(DOCS_BEGIN), text.find(DOCS_END)) else {
        return Err(err!("{} lacks the markers {DOCS_BEGIN:?} and {DOCS_END:?}", path.display()));
    };
    if end < begin {
        return Err(err!("{}: the end marker comes before the begin marker", path.display()));
    }
    let updated = format!("{}{DOCS_BEGIN}\n\n{}\n{}", &text[..begin], results.markdown("performance"), &text[end..]);
    write_file(&path, &updated)
}

fn print_summary(r: &Results) {
    println!("\nxtask bench: results in {}", out_dir().display());
    println!(
        "  baseline round trip: host stub {}, bare {}; host stub / bare per pair {:.3} ({:.3}–{:.3})",
        stats::human_summary_ns(&r.baseline.host_stub_ns),
        stats::human_summary_ns(&r.baseline.bare_ns),
        r.baseline.ratio,
        r.baseline.pair_ratios.min,
        r.baseline.pair_ratios.max
    );
    println!(
        "  one guest kernel instruction: {} (the empty loop around the exits)",
        stats::human_summary_ns(&r.baseline.kernel_instruction_ns)
    );
    let counted = |path: &str| -> String {
        match r.counts.iter().find(|c| c.path == path) {
            None => String::new(),
            Some(c) => {
                let insns = c.insns.map_or_else(
                    || format!("instructions n/a ({})", c.unavailable.as_deref().unwrap_or("not counted")),
                    |s| format!("{} instructions", crate::budgets::count(s.min)),
                );
                let exits =
                    c.exits.map_or_else(|| "exits n/a".into(), |s| format!("{} exits", crate::budgets::count(s.min)));
                let kvm = c.kvm_exits.map_or_else(String::new, |s| format!(" (KVM {:.2})", s.median));
                let iters = c
                    .string_iters
                    .map_or_else(String::new, |s| format!(", {} string iterations", crate::budgets::count(s.min)));
                format!("; {insns}{iters}, {exits}{kvm} per {}", c.per)
            }
        }
    };
    println!("  boot, first entry to the first task: {}", stats::human_summary_ns(&r.boot.first_task_ns));
    for path in ["boot", "console", "null_exit"] {
        println!("  {path:<18} {}", counted(path).trim_start_matches("; "));
    }
    for c in r.injection.iter().chain(&r.page_not_present) {
        match (c.per_event_ns, c.baselines) {
            (Some(p), Some(b)) => println!(
                "  {:<18} {:>10} per event = {:>7.1} baselines{}",
                c.name,
                stats::human_ns(p.median),
                b.median,
                counted(&c.name)
            ),
            _ => println!("  {:<18} n/a: {}", c.name, c.unavailable.as_deref().unwrap_or("")),
        }
    }
    for p in &r.smp {
        let speedup = p.speedup.map_or("n/a".into(), |s| format!("{s:.2}"));
        let insns = p.insns_per_event.as_ref().map_or("n/a".into(), |s| format!("{:.0}", s.median));
        println!(
            "  smp {} vCPUs (host: {} cores), latency {}: {}, speed-up {speedup}, {insns} instructions per event",
            p.vcpus,
            r.machine.cpus,
            stats::human_ns(p.latency_ns as f64),
            stats::human_summary_ns(&p.wall_ns)
        );
    }
    let over: Vec<String> = crate::budgets::failures(&r.budgets);
    if r.machine.quick {
        println!("  budgets: not judged (dev build); `cargo xtask budgets` counts the release guests");
    } else if over.is_empty() {
        println!("  budgets: every path within its limit (xtask/budgets.toml)");
    } else {
        println!("  budgets: over the limit:\n    {}", over.join("\n    "));
    }
    for s in r.speedups.iter().filter(|s| s.tasks == 8) {
        println!(
            "  8 tasks, page-in {:>8}: {} is {:.2}x sync",
            stats::human_ns(s.latency_ns as f64),
            s.mode.replace('_', "-"),
            s.speedup
        );
    }
    for g in &r.goals {
        println!(
            "  goal: {} {}: {} ({})",
            g.what,
            g.goal,
            g.measured.as_deref().unwrap_or("not measurable here"),
            report::goal_status(g, r.machine.quick)
        );
    }
}
