//! `cargo xtask`: the project's commands. Thin: parses arguments and calls the library.
//!
//! ```text
//! cargo xtask run   [--release] [--tests PATTERNS] [--trace FILE] [-- HOST-STUB ARGS...]
//! cargo xtask qemu  [--accel tcg|kvm] [--release] [--tests PATTERNS] [-- GUEST CMDLINE...]
//! cargo xtask test
//! cargo xtask bench [--quick] [--trace FILE] [--update-docs]
//! cargo xtask budgets
//! ```

use std::process::ExitCode;
use std::time::Duration;

use xtask::qemu::{self, Accel};
use xtask::{Profile, Result, err, guest};

const USAGE: &str = "usage: cargo xtask <run|qemu|test|bench|budgets> [options]
  run   [--release] [--tests PATTERNS] [--trace FILE] [-- HOST-STUB ARGS]
                                                             boot the guest under the host stub;
                                                             --trace writes the first boot's
                                                             timeline (ui.perfetto.dev opens it)
  qemu  [--accel tcg|kvm] [--release] [--tests PATTERNS] [-- GUEST CMDLINE]
                                                             boot the same guest under QEMU
  test                                                       unit tests, then both hosts, then
                                                             the end-to-end tests
  bench [--quick] [--trace FILE] [--update-docs]             measure every event's cost; results
                                                             in target/bench (--update-docs: and
                                                             in docs/performance.md)
  budgets                                                    count every path with the release
                                                             guests against xtask/budgets.toml
                                                             (a stage of `test`)";

/// Time a full self-test run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

struct Options {
    release: bool,
    quick: bool,
    update_docs: bool,
    tests: Option<String>,
    trace: Option<String>,
    accel: Accel,
    rest: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        release: false,
        quick: false,
        update_docs: false,
        tests: None,
        trace: None,
        accel: Accel::Tcg,
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--release" => opts.release = true,
            "--quick" => opts.quick = true,
            "--update-docs" => opts.update_docs = true,
            "--tests" => opts.tests = Some(it.next().ok_or_else(|| err!("--tests needs a value"))?.clone()),
            "--trace" => opts.trace = Some(it.next().ok_or_else(|| err!("--trace needs a file"))?.clone()),
            "--accel" => opts.accel = Accel::parse(it.next().ok_or_else(|| err!("--accel needs tcg or kvm"))?)?,
            "--" => {
                opts.rest = it.cloned().collect();
                break;
            }
            other => return Err(err!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn profile(opts: &Options) -> Profile {
    if opts.release { Profile::Release } else { Profile::Dev }
}

fn guest_cmdline(expect_host: &str, tests: Option<&str>, extra: &[String]) -> String {
    let mut words = vec![format!("expect-host={expect_host}")];
    if let Some(tests) = tests {
        words.push(format!("tests={tests}"));
    }
    words.extend(extra.iter().cloned());
    words.join(" ")
}

fn cmd_qemu(opts: &Options) -> Result<ExitCode> {
    if opts.trace.is_some() {
        return Err(err!("--trace records the host stub's timeline: use it with `cargo xtask run`"));
    }
    let elf = guest::build_guest(profile(opts))?;
    let cmdline = guest_cmdline(opts.accel.name(), opts.tests.as_deref(), &opts.rest);
    let run = qemu::run(&elf, opts.accel, &cmdline, RUN_TIMEOUT, true)?;
    match run.guest_code {
        Some(code) if run.passed() => {
            eprintln!(
                "xtask: guest exited with code {code:#x} (success) after {:.1} s",
                run.outcome.elapsed.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(code) => Err(err!("guest exited with code {code:#x} (failure)")),
        None => Err(err!("QEMU ended without the guest's exit code ({})", run.outcome.status)),
    }
}

fn cmd_run(opts: &Options) -> Result<ExitCode> {
    xtask::run::default_scenario(profile(opts), opts.tests.as_deref(), opts.trace.as_deref(), &opts.rest)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = parse(rest).and_then(|opts| match command.as_str() {
        "run" => cmd_run(&opts),
        "qemu" => cmd_qemu(&opts),
        "test" => xtask::test::run_all(),
        "budgets" => xtask::guest::build_host_stub(Profile::Dev)
            .and_then(|host| xtask::budgets::check(&host))
            .map(|()| ExitCode::SUCCESS),
        "bench" => {
            let bench = xtask::bench::Options {
                quick: opts.quick,
                trace: opts.trace.clone().map(Into::into),
                update_docs: opts.update_docs,
            };
            xtask::bench::run(&bench).map(|()| ExitCode::SUCCESS)
        }
        other => Err(err!("unknown command {other:?}\n{USAGE}")),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
