//! `cargo xtask`: the project's commands. Thin: parses arguments (clap: `--help` everywhere)
//! and calls the library; maps its result to the exit status (0 success, 1 a test failed, 2 a
//! host-side or usage error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use xtask::qemu::{self, Accel};
use xtask::run::RunOptions;
use xtask::{Profile, Result, print};

/// What every command's exit status means (printed under each `--help`).
const EXIT_STATUS: &str = "Exit status: 0 when everything passed; 1 when a test failed (a guest self-test,
a unit or end-to-end test, a documented command); 2 for a host-side error, a build or
setup that failed, or bad usage (a one-line message says which).";

/// Builds the pvagent guest kernel and drives its hosts.
///
/// The first command on a new machine may install what it lacks: `rustup target add
/// x86_64-unknown-none`, and QEMU with `sudo apt-get install --no-install-recommends
/// --no-remove qemu-system-x86` (never removing a package: when apt would, xtask unpacks the
/// same Debian packages into `target/qemu/` instead).
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", after_help = EXIT_STATUS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the guest under the host stub and print every self-test's result.
    ///
    /// Every test with the pager in ring mode, then the page-not-present tests in sync mode and,
    /// with KVM's async page fault tests, in kvm-apf and kvm-apf-kernel mode (a filtered run,
    /// one with --pnp-mode, or one without the pager boots once); each boot says what it runs. A --tests that selects no test is a usage error (exit status 2).
    #[command(after_help = EXIT_STATUS)]
    Run(RunArgs),
    /// Boot the same guest under QEMU (TCG by default).
    #[command(after_help = EXIT_STATUS)]
    Qemu(QemuArgs),
    /// The test suite, every stage of it.
    ///
    /// Host unit tests, the examples, the guest under the host stub and under QEMU TCG, the
    /// end-to-end tests, and every command the README and docs/ show.
    #[command(after_help = EXIT_STATUS)]
    Test,
    /// Measure what each event costs (results in target/bench).
    #[command(after_help = EXIT_STATUS)]
    Bench(BenchArgs),
    /// Count every path with the release guests against xtask/budgets.toml (a stage of `test`).
    #[command(after_help = EXIT_STATUS)]
    Budgets,
    /// A seeded random storm of every event kind on several vCPUs (the self-test soak::storm
    /// against the pager's versioned pages), checking that every token is resolved once, every
    /// page holds what it must and no task is lost; sized by events, not time.
    ///
    /// A failure names the seed and the round; the same --seed makes the same guest choices.
    /// `cargo xtask test` runs the default (short) soak.
    #[command(after_help = EXIT_STATUS)]
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Events to survive (events, resolutions, synchronous waits, split-lock #ACs, evictions).
    #[arg(long, default_value_t = xtask::soak::SHORT_EVENTS)]
    events: u64,
    /// Seed of the guest's choices (decimal, or hex with 0x).
    #[arg(long, default_value_t = xtask::soak::DEFAULT_SEED, value_parser = parse_seed)]
    seed: u64,
    /// vCPUs, 1..=8.
    #[arg(long, default_value_t = xtask::soak::DEFAULT_VCPUS as u64, value_parser = clap::value_parser!(u64).range(1..=8))]
    vcpus: u64,
    /// Build the release profile (a long soak goes faster).
    #[arg(long)]
    release: bool,
}

fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a seed: {e}"))
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Build the release profile.
    #[arg(long)]
    release: bool,
    /// Only these self-tests: comma-separated names, modules (`pnp`) or prefixes (`pnp::ring*`).
    #[arg(long, value_name = "PATTERNS")]
    tests: Option<String>,
    /// Record the first boot's timeline to FILE (Chrome trace JSON: open it at ui.perfetto.dev);
    /// the same as `-- --trace FILE`. Only the first boot is traced.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// List the self-tests (suite, name, what each needs from its host) instead of running them.
    /// The guest lists them itself: this boots it once under the host stub (so it needs
    /// /dev/kvm) with the command line word `list`, and takes no host stub options.
    #[arg(long, conflicts_with_all = ["tests", "trace", "results_json", "results_junit", "host_args"])]
    list: bool,
    /// Write every boot's self-test results to FILE, one JSON object per line (a boot that
    /// failed with no test to blame, or never ran, has a `(run)` record saying why).
    #[arg(long, value_name = "FILE")]
    results_json: Option<PathBuf>,
    /// Write every boot's self-test results to FILE as JUnit XML (one test suite per boot).
    #[arg(long, value_name = "FILE")]
    results_junit: Option<PathBuf>,
    /// Options for the host stub (`target/debug/pvagent-host --help`), for every boot. One
    /// xtask sets too (--timeout, --pnp-mode, --trace) replaces xtask's; --cmdline adds guest
    /// command line words after xtask's own. Options that name a file: --trace (with
    /// --trace-omit-console) goes to the first boot only; --serial-log FILE is the first boot's
    /// console, and boot N's is FILE with .bootN before its extension; --results-json and
    /// --results-junit are refused here (give them before `--`: xtask merges every boot's
    /// results).
    #[arg(last = true, value_name = "HOST-STUB ARGS")]
    host_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    /// QEMU's own emulator.
    Tcg,
    /// KVM (on these machines' software KVM, QEMU's firmware takes seconds).
    Kvm,
}

#[derive(Debug, clap::Args)]
struct QemuArgs {
    /// QEMU's accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// Build the release profile.
    #[arg(long)]
    release: bool,
    /// Only these self-tests (as for `run`).
    #[arg(long, value_name = "PATTERNS")]
    tests: Option<String>,
    /// CPUs for the guest (QEMU's -smp), 1..=8.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(qemu::MAX_SMP)))]
    smp: u32,
    /// More words for the guest's command line.
    #[arg(last = true, value_name = "GUEST CMDLINE")]
    guest_words: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Fewer, smaller runs with the dev build (CI's check): everything runs, timings are not
    /// judged.
    #[arg(long)]
    quick: bool,
    /// Also record the timeline of one extra guest-benchmark run to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Also rewrite the results in docs/performance.md.
    #[arg(long)]
    update_docs: bool,
}

fn profile(release: bool) -> Profile {
    if release { Profile::Release } else { Profile::Dev }
}

fn cmd_qemu(args: &QemuArgs) -> Result<()> {
    let accel = match args.accel {
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Kvm => Accel::Kvm,
    };
    qemu::run_suite(profile(args.release), accel, args.smp, args.tests.as_deref(), &args.guest_words)
}

fn cmd_run(args: RunArgs) -> Result<()> {
    if args.list {
        let tests = xtask::run::list(profile(args.release))?;
        print!("{}", xtask::run::format_list(&tests));
        return Ok(());
    }
    let options = RunOptions {
        release: args.release,
        tests: args.tests,
        trace: args.trace,
        results_json: args.results_json,
        results_junit: args.results_junit,
        host_args: args.host_args,
        on_one_host_cpu: false,
    };
    xtask::run::scenario(&options)
}

/// A closed stdout (`cargo xtask run | head -1`) ends xtask as it ends any Unix filter, by
/// SIGPIPE (status 141 in the shell), quietly. Rust's runtime ignores SIGPIPE, so each write to
/// the closed pipe fails instead, and `println!` panics on it: a backtrace and status 101 for a
/// reader that merely had what it wanted. The host stub a boot runs then sees its own stdout
/// (xtask's reader) closed, and stops by its own rule (141, quietly).
fn end_on_closed_stdout() {
    // SAFETY: called first in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE, and no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    end_on_closed_stdout();
    // clap prints --help and exits 0, and prints a usage error and exits 2.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Qemu(args) => cmd_qemu(&args),
        Command::Test => xtask::test::run_all().map(|_| ()),
        Command::Bench(args) => {
            let bench = xtask::bench::Options { quick: args.quick, trace: args.trace, update_docs: args.update_docs };
            xtask::bench::run(&bench)
        }
        Command::Soak(args) => xtask::soak::run(&xtask::soak::Options {
            events: args.events,
            seed: args.seed,
            vcpus: args.vcpus as usize,
            release: args.release,
            on_one_host_cpu: false,
        }),
        Command::Budgets => {
            xtask::guest::build_host_stub(xtask::Profile::Dev).and_then(|host| xtask::budgets::check(&host))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(e.kind.exit_status())
        }
    }
}
