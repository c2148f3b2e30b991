//! Boots the pvagent guest through the host stub library and prints each self-test's result:
//! what `pvagent-host` does, in a page, with nothing but `pvagent-host` as a dependency.
//!
//! ```sh
//! cargo run -p pvagent-host --example boot -- target/x86_64-unknown-none/debug/pvagent-guest tests=arch
//! ```
//!
//! Exit status as the binary's: 0 every self-test passed, 1 the guest reported a failure, 2 a
//! host-side error.

use std::process::ExitCode;

use pvagent_host::abi::report::Status;
use pvagent_host::{Config, Producers, SerialSink, Vm};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(guest) = args.next() else {
        eprintln!("usage: boot GUEST-ELF [GUEST COMMAND LINE WORDS...]");
        return ExitCode::from(2);
    };
    let mut config = Config::new(guest);
    config.cmdline = args.collect::<Vec<_>>().join(" ");
    // The console stays in the result; this program prints what it wants of it.
    config.serial = SerialSink::Quiet;

    // Every producer at its defaults: split-lock detection and the demand pager.
    let vm = match Producers::defaults().build().and_then(|producers| Vm::new(config, producers)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("boot: {e}");
            return ExitCode::from(2);
        }
    };
    let result = vm.run();

    for test in &result.tests {
        let took = test.duration.map(|d| format!(" ({:.1} ms)", d.as_secs_f64() * 1e3)).unwrap_or_default();
        match test.status {
            Status::Pass => println!("pass {}{took}", test.name),
            Status::Fail => println!("FAIL {}{took}: {}", test.name, test.reason),
            Status::Skip => println!("skip {}: {}", test.name, test.reason),
        }
    }
    if let Some((passed, failed, skipped)) = result.summary {
        println!("{passed} passed, {failed} failed, {skipped} skipped in {:.2} s", result.run_time.as_secs_f64());
    }
    if let Some(error) = &result.host_error {
        eprintln!("boot: host-side error: {error}");
    }
    ExitCode::from(result.exit_status() as u8)
}
