//! The host stub's command line: parse, build a `Config`, run, map the result to an exit status
//! (0: the guest passed; 1: the guest reported failure; 2: a host-side error or bad usage,
//! printed as one line, a guest command line whose `tests=` selects nothing included, and
//! output that could not be written; 141: stdout was closed under the run, see [`Out`]).
//!
//! Every option's help states what it accepts, from the constants the checks use: a value is
//! checked once, by the library (`Config::validate`, `PagerConfig::validate`), whose refusal is
//! the one-line error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use pvagent_abi::breach::Breach;
use pvagent_host::config::{MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB};
use pvagent_host::memory::CMDLINE_MAX;
use pvagent_host::producers::Producers;
use pvagent_host::producers::churn::ChurnConfig;
use pvagent_host::producers::pager::config::{MAX_FETCHERS, MAX_LATENCY, MAX_REGION_MIB};
use pvagent_host::producers::pager::region::PAGE;
use pvagent_host::producers::pager::{self, config::PagerConfig};
use pvagent_host::producers::released::ReleasedConfig;
use pvagent_host::producers::sld::SldConfig;
use pvagent_host::producers::sld::policy::{Enumeration, Policy};
use pvagent_host::{Config, SerialSink, Vm};

/// `eprintln!` that does not panic when stderr cannot be written (`2>/dev/full`): there is
/// nowhere left to say anything then, and the exit status still tells.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Boots the pvagent guest under KVM and reports its self-tests.
#[derive(Debug, Parser)]
#[command(name = "pvagent-host", version)]
struct Args {
    /// The guest ELF image.
    guest: PathBuf,
    #[arg(long, default_value_t = pvagent_host::config::DEFAULT_MEM_MIB,
          help = format!("Guest memory in MiB, {MIN_MEM_MIB}..={MAX_MEM_MIB}"))]
    mem: u64,
    #[arg(long, default_value = "",
          help = format!("The guest's command line (e.g. \"tests=arch,task\"), at most {CMDLINE_MAX} bytes"))]
    cmdline: String,
    /// Write the guest's console to this file instead of stdout.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Do not echo the guest's console.
    #[arg(long, conflicts_with = "serial_log")]
    quiet: bool,
    /// Do not offer the paravirtual console: the guest then prints through the UART (COM1), as
    /// under QEMU.
    #[arg(long)]
    no_pv_console: bool,
    /// Print every host counter (`host: counter KEY VALUE`) after the run.
    #[arg(long)]
    counters: bool,
    /// Write one JSON object per self-test (name, suite, status, reason, duration) to FILE.
    #[arg(long, value_name = "FILE")]
    results_json: Option<PathBuf>,
    /// Write the self-test results to FILE as JUnit XML, for CI systems.
    #[arg(long, value_name = "FILE")]
    results_junit: Option<PathBuf>,
    /// Record the run's timeline (every exit, injection, page-not-present event and guest task
    /// switch) and write it to FILE as Chrome trace-event JSON, for https://ui.perfetto.dev.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Leave the console's exits out of the --trace timeline (one per line through the console
    /// port; through the UART, one per byte printed and most of a run's exits).
    #[arg(long, requires = "trace")]
    trace_omit_console: bool,
    /// Serve the benchmark ports (0x51C, 0x51E, 0x51F) and the bare kvm-ioctls loop the benchmark
    /// compares this host's run loop with, for the benchmark guest (`cargo xtask bench`).
    #[arg(long)]
    bench: bool,
    #[arg(long, default_value_t = 1,
          help = format!("vCPUs, 1..={MAX_VCPUS}: vCPU i has local APIC ID i; the guest starts vCPUs 1.. \
                          with INIT-SIPI-SIPI"))]
    vcpus: usize,
    /// The topology shown to the guest (CPUID leaves 0xB and 0x1F): 1, or 2 to simulate SMT
    /// (vCPUs 2k and 2k+1 are the threads of core k), which restricts the split-lock policies.
    #[arg(long, default_value_t = 1)]
    threads_per_core: u32,
    /// With --bench: each counting window also prints every KVM statistic that changed in it
    /// (`host: window vcpu=N NAME=DELTA ...`): what KVM's exit count is made of.
    #[arg(long, requires = "bench")]
    window_stats: bool,
    /// Stop the guest after this many seconds (0: never), any whole number.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Run without the split-lock producer: no trigger, no MSR_TEST_CTRL virtualization.
    #[arg(long)]
    no_sld: bool,
    /// How far split-lock detection is enumerated to the guest (the trigger works whatever it
    /// is): `absent` (no CPUID.7.0:EDX bit 30), `core-capabilities-only` (IA32_CORE_CAPABILITIES
    /// without bit 5), `split-lock-detect` (the whole chain). Default: split-lock-detect, or
    /// core-capabilities-only with SMT siblings (--threads-per-core 2, or the host's SMT active),
    /// where split-lock-detect is refused (seed 000).
    #[arg(long, value_enum, conflicts_with = "no_sld")]
    sld_enumeration: Option<EnumerationArg>,
    /// What the host does about a split lock from a guest whose detection is off. Default:
    /// inject-if-enabled, or disable-globally with SMT siblings, where inject-if-enabled is
    /// refused (seed 000).
    #[arg(long, value_enum, conflicts_with = "no_sld")]
    sld_policy: Option<PolicyArg>,
    /// Change guest RAM's memslots while the guest runs: every N-th vCPU entry (counted over
    /// all vCPUs; 0: never, the default), split RAM in two memslots with dirty logging on the
    /// upper half, or merge them again. Each update holds every vCPU out of KVM_RUN (the report
    /// says how long), as do the changes of the churn region at 6 GiB, which the memslot
    /// self-tests ask for (split, merge, hot-add, move).
    #[arg(long, value_name = "N", default_value_t = 0)]
    layout_churn: u64,
    /// The diagnostic mode: the churn region's changes hold no vCPU and keep their window open
    /// until a vCPU hits it; the report classifies the exits. Guest RAM is then left alone
    /// (without a hold the guest triple-faults: KVM's page walks find no memslot), so
    /// `--layout-churn` is refused with it.
    #[arg(long, conflicts_with = "layout_churn")]
    layout_unheld: bool,
    /// A guest_memfd region at 5 GiB whose memory is released before boot: the guest's first
    /// access to it is a memory fault (KVM_EXIT_MEMORY_FAULT at CPL 3 here), which the host
    /// repairs (the self-test memslot::a_cpl3_access_to_released_memory_is_repaired_by_the_host).
    #[arg(long)]
    released_region: bool,
    #[command(flatten)]
    pager: PagerArgs,
    /// Break this rule of the ABI on purpose, on every vCPU from its start, once each: a test
    /// of the guest (the rules a host can break are docs/robustness.md's; names in kebab case,
    /// e.g. `test-ctrl-faults`, `ve-info-msr-faults`). Repeatable.
    #[arg(long = "break", value_name = "RULE", value_parser = parse_breach)]
    breaks: Vec<Breach>,
}

/// A `--break` rule by its kebab-case name.
fn parse_breach(name: &str) -> Result<Breach, String> {
    Breach::from_name(name)
        .ok_or_else(|| format!("no rule of the ABI is named {name:?} (docs/robustness.md lists them)"))
}

/// The demand pager (page-not-present events).
#[derive(Debug, clap::Args)]
struct PagerArgs {
    #[arg(long = "pnp-mib", default_value_t = pager::config::DEFAULT_REGION_MIB,
          help = format!("Size of the demand-paged region in MiB, 1..={MAX_REGION_MIB}, or 0 for no pager; \
                          it costs memory only for the pages the guest touches"))]
    mib: u64,
    /// How absent pages are served: `ring` (page-not-present events through the ring), `sync`
    /// (the vCPU waits), `kvm-apf` (KVM's async page fault ABI, served by the host stub: CPL 3
    /// accesses with interrupts on), `kvm-apf-kernel` (the same ABI served by KVM itself; no
    /// --pnp-fail, and the run stays in that mode), `ve` (#VE to a vCPU that registered a VE
    /// information area, what `ring` does to one that did not).
    #[arg(long = "pnp-mode", default_value = "ring", value_parser = pager::config::parse_mode)]
    mode: pvagent_abi::pnp::HostMode,
    #[arg(long = "pnp-latency", default_value_t = PagerConfig::default().latency,
          value_parser = pager::config::parse_latency,
          help = format!("Fetch latency: fixed (`200us`) or uniform in a range (`50us..5ms`), each bound \
                          0..={MAX_LATENCY:?} in ns, us, ms or s; self-tests and benchmarks set their own \
                          (the exit line says what applied)"))]
    latency: pager::config::Latency,
    #[arg(long = "pnp-fetchers", default_value_t = pager::config::DEFAULT_FETCHERS,
          help = format!("Fetcher threads (fetches in flight are not limited by it), 1..={MAX_FETCHERS}"))]
    fetchers: usize,
    #[arg(long = "pnp-fail", value_delimiter = ',',
          help = format!("Pages whose first fetch fails, comma-separated: indices in the region, below its \
                          page count ({} per MiB of --pnp-mib)", (1 << 20) / PAGE))]
    fail: Vec<u64>,
    /// Backing image for the region, read a page at a time when each page is first fetched: a
    /// regular file of at most the region's length (a longer one is refused), its bytes the
    /// region's first; past its end pages read as zeros, and the report says from which page.
    /// Default: a known pattern the self-tests check.
    #[arg(long = "pnp-image")]
    image: Option<PathBuf>,
    /// Serve every page with its address and version in its first two words, rewritten at each
    /// fetch (the page's other words as without it): the soak's pages
    /// (`pvagent_abi::pnp::versioned_header`, docs/abi.md).
    #[arg(long = "pnp-versioned")]
    versioned: bool,
}

impl PagerArgs {
    fn config(&self) -> Option<PagerConfig> {
        if self.mib == 0 {
            return None;
        }
        Some(PagerConfig {
            region_mib: self.mib,
            mode: self.mode,
            latency: self.latency,
            fetchers: self.fetchers,
            fail_pages: self.fail.clone(),
            image: self.image.clone(),
            versioned: self.versioned,
            ..PagerConfig::default()
        })
    }
}

/// `--sld-policy` values (seed 000's three answers).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    /// Never send #AC to a guest that did not ask for it.
    InjectIfEnabled,
    /// Stop the run and report the vCPU and RIP (for debugging guests).
    Exit,
    /// Switch detection off for the VM and log it once (for production).
    DisableGlobally,
}

/// `--sld-enumeration` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum EnumerationArg {
    /// CPUID.7.0:EDX bit 30 clear: neither MSR exists.
    Absent,
    /// IA32_CORE_CAPABILITIES reads 0: no MSR_TEST_CTRL.
    CoreCapabilitiesOnly,
    /// The whole chain: the guest can turn detection on.
    SplitLockDetect,
}

impl From<EnumerationArg> for Enumeration {
    fn from(arg: EnumerationArg) -> Self {
        match arg {
            EnumerationArg::Absent => Enumeration::Absent,
            EnumerationArg::CoreCapabilitiesOnly => Enumeration::CoreCapabilitiesOnly,
            EnumerationArg::SplitLockDetect => Enumeration::SplitLockDetect,
        }
    }
}

impl From<PolicyArg> for Policy {
    fn from(arg: PolicyArg) -> Self {
        match arg {
            PolicyArg::InjectIfEnabled => Policy::InjectIfEnabled,
            PolicyArg::Exit => Policy::Exit,
            PolicyArg::DisableGlobally => Policy::DisableGlobally,
        }
    }
}

/// The producers `args` ask for. The split-lock options not given are left for the library to
/// choose for the run's topology (`SldConfig::settings`: seed 000's defaults with SMT siblings).
fn producers(args: &Args) -> Producers {
    let sld = (!args.no_sld).then(|| SldConfig {
        enumeration: args.sld_enumeration.map(Into::into),
        policy: args.sld_policy.map(Into::into),
    });
    let churn = Some(ChurnConfig {
        ram_every: (args.layout_churn > 0).then_some(args.layout_churn),
        hold: !args.layout_unheld,
    });
    let released = args.released_region.then(ReleasedConfig::default);
    Producers { sld, pager: args.pager.config(), released, churn, breaks: args.breaks.clone() }
}

/// The exit status of a run whose stdout was closed under it: 128 + SIGPIPE, what a shell
/// reports for a writer a closed pipe ended (the host stub ignores SIGPIPE, as every Rust
/// program does, and stops itself instead).
const CLOSED_STDOUT: u8 = 141;

/// The binary's own lines on stdout. A write error never panics (`println!` does): the first
/// one is kept, nothing more is written, and the run's exit status says output was lost. A
/// closed pipe (`| head -1`, whose reader has what it wanted) ends quietly with
/// [`CLOSED_STDOUT`]; any other error (`> /dev/full`) is a one-line error with status 2.
#[derive(Debug, Default)]
struct Out {
    lost: Option<std::io::Error>,
    /// The loss was already reported (the run's own error: the console could not be echoed).
    said: bool,
}

impl Out {
    fn line(&mut self, line: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if self.lost.is_none()
            && let Err(e) = writeln!(std::io::stdout().lock(), "{line}")
        {
            self.lost = Some(e);
        }
    }

    /// Flushes stdout, then the status to exit with when output was lost (`None`: none was),
    /// having said why on stderr unless the pipe was merely closed or it was said already.
    fn finish(&mut self) -> Option<ExitCode> {
        use std::io::Write;
        if self.lost.is_none()
            && let Err(e) = std::io::stdout().lock().flush()
        {
            self.lost = Some(e);
        }
        match &self.lost {
            Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Some(ExitCode::from(CLOSED_STDOUT)),
            Some(e) => {
                if !self.said {
                    eprintln!("pvagent-host: error: cannot write to stdout: {e}");
                }
                Some(ExitCode::from(2))
            }
            None => None,
        }
    }
}

/// `println!` through [`Out`].
macro_rules! out {
    ($out:expr, $($arg:tt)*) => { $out.line(format_args!($($arg)*)) };
}

/// A command line clap refused: `--help` and `--version` print as clap prints them; anything
/// else is the one-line error every bad input gets, with status 2.
fn command_line_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Through `Out`: clap's own printing ignores a failed write and exits 0.
        let mut out = Out::default();
        out!(out, "{}", e.render().to_string().trim_end());
        return out.finish().unwrap_or(ExitCode::SUCCESS);
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit();
    }
    // clap's message, without its "error: " tag, its usage and its pointer to --help.
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    eprintln!("pvagent-host: error: {}", message.strip_prefix("error: ").unwrap_or(&message));
    ExitCode::from(2)
}

/// With the console not echoed (`--quiet`, `--serial-log`), what the user must still see: every
/// failed test with its reason and the summary, or, from a guest that failed without a failed
/// test (a crash before the tests), its last console lines.
fn show_what_the_console_said(out: &mut Out, result: &pvagent_host::RunResult) {
    use pvagent_abi::report::{Line, Status};
    let mut failed = 0;
    for t in result.tests.iter().filter(|t| t.status == Status::Fail) {
        failed += 1;
        out!(out, "{}", Line::Result { status: t.status, name: &t.name, reason: &t.reason });
    }
    if let Some((passed, failed, skipped)) = result.summary {
        out!(out, "{}", Line::Summary { passed, failed, skipped });
    }
    if failed == 0 && result.host_error.is_none() && !result.passed() {
        out!(out, "host: the guest failed without a failed test; its last console lines:");
        for line in result.serial.iter().rev().take(10).rev() {
            out!(out, "  | {line}");
        }
    }
}

/// Writes the results files asked for; the error is the one-line message.
fn write_results(
    json: &Option<PathBuf>,
    junit: &Option<PathBuf>,
    result: &pvagent_host::RunResult,
) -> Result<(), String> {
    use pvagent_host::results;
    let records = results::records(result, "host-stub");
    for (path, text) in [(json, results::json_lines(&records)), (junit, results::junit(&records))] {
        if let Some(path) = path {
            let write = |path| {
                use std::io::Write;
                let mut file = pvagent_host::files::open_output(path, pvagent_host::files::OutputMode::Truncate)?;
                file.write_all(text.as_bytes())
            };
            write(path).map_err(|e| format!("cannot write the results to {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Boot timing starts here: "process start" as near as the process itself can tell.
    let started = std::time::Instant::now();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return command_line_error(e),
    };
    let mut config = Config::new(args.guest.clone());
    config.threads_per_core = args.threads_per_core;
    let producers = producers(&args);
    config.mem_mib = args.mem;
    config.cmdline = args.cmdline;
    config.serial = match (args.serial_log, args.quiet) {
        (Some(path), _) => SerialSink::File(path),
        (None, true) => SerialSink::Quiet,
        (None, false) => SerialSink::Stdout,
    };
    let console_echoed = config.serial == SerialSink::Stdout;
    config.timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    config.trace = args.trace;
    config.trace_console = !args.trace_omit_console;
    config.bench = args.bench;
    config.bench_window_stats = args.window_stats;
    config.pv_console = !args.no_pv_console;
    config.vcpus = args.vcpus;
    config.threads_per_core = args.threads_per_core;

    // A results file that cannot be written fails before the run, not after it.
    for path in [&args.results_json, &args.results_junit].into_iter().flatten() {
        if let Err(e) = pvagent_host::files::open_output(path, pvagent_host::files::OutputMode::Truncate) {
            eprintln!("pvagent-host: error: cannot create the results file {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let producers = match producers.build() {
        Ok(producers) => producers,
        Err(e) => {
            eprintln!("pvagent-host: error: {e}");
            return ExitCode::from(2);
        }
    };
    let vm = match Vm::new(config, producers) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("pvagent-host: error: {e}");
            return ExitCode::from(2);
        }
    };
    let to_first_entry = started.elapsed();
    let mut result = vm.run();
    result.report.counter("host", "main_to_entry_us", to_first_entry.as_micros() as u64);
    // Stdout closed under the run: nothing more goes there, and nothing is said about it (a
    // pipe's reader that stopped reading had what it wanted), but the results files are
    // written and the status is not success.
    let console_closed = result.host_error.as_ref().is_some_and(pvagent_host::Error::is_closed_stdout);
    let mut out = Out::default();
    if let Some(kind) = result.host_error.as_ref().and_then(pvagent_host::Error::stdout_console_error) {
        // Stdout already failed the run: writing more there would only fail again.
        out.lost = Some(kind.into());
        out.said = true;
    }
    if !console_echoed {
        show_what_the_console_said(&mut out, &result);
    }
    for line in &result.report.lines {
        out!(out, "host: {line}");
    }
    if args.counters {
        for (key, value) in &result.report.counters {
            out!(out, "host: counter {key} {value}");
        }
    }
    if let Some(error) = result.host_error.as_ref().filter(|_| !console_closed) {
        eprintln!("pvagent-host: error: {error}");
        if let Some(tail) = &result.crash_tail {
            eprintln!("pvagent-host: the guest's last console lines:");
            for line in tail {
                eprintln!("  | {line}");
            }
        }
    }
    if let Err(e) = write_results(&args.results_json, &args.results_junit, &result) {
        eprintln!("pvagent-host: error: {e}");
        return out.finish().unwrap_or(ExitCode::from(2));
    }
    if result.guest_exit_code == Some(pvagent_abi::exit::NO_TEST_SELECTED) {
        eprintln!(
            "pvagent-host: error: the guest's tests= selects no self-test (the command line word `list`, or `cargo xtask run --list`, lists them)"
        );
    }
    match result.guest_exit_code {
        Some(code) => out!(
            out,
            "host: guest exited with code {code:#x} after {:.2} s ({} exits)",
            result.run_time.as_secs_f64(),
            // Every vCPU's (`vcpu<i>.exits`).
            result
                .report
                .counters
                .iter()
                .filter(|(key, _)| key.strip_prefix("vcpu").is_some_and(|k| k.ends_with(".exits")))
                .map(|(_, n)| n)
                .sum::<u64>()
        ),
        None if result.host_error.is_none() => eprintln!("pvagent-host: the guest never wrote its exit code"),
        None => {}
    }
    // Lost output fails the run even if the guest passed.
    out.finish().unwrap_or(ExitCode::from(result.exit_status() as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The diagnostic mode leaves guest RAM alone: asking for both is an error, not a silent drop.
    #[test]
    fn layout_churn_and_layout_unheld_conflict() {
        let both = Args::try_parse_from(["pvagent-host", "guest.elf", "--layout-churn", "20", "--layout-unheld"]);
        assert_eq!(both.unwrap_err().kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(Args::try_parse_from(["pvagent-host", "guest.elf", "--layout-unheld"]).is_ok());
    }
}
