//! A custom event producer: an [`ExitHandler`] of one's own, added to the host stub's list. This
//! one watches two kinds of the guest's paravirtual traffic, MSR writes and hypercalls (the
//! two hooks it implements), and lets each one go on to the producer that serves it; at the
//! end it reports what it saw through the run's [`Report`], like any producer, and fails the
//! run with an error of its own type (`Error::producer`) if it saw no MSR write at all.
//!
//! ```sh
//! cargo run -p pvagent-host --example watch -- target/x86_64-unknown-none/debug/pvagent-guest tests=pnp
//! ```
//!
//! Where it sits decides what it sees: the run loop offers each exit to the built-in devices
//! first (console, exit port, basics: the ABI version MSR and `Ping` never get here), then to
//! the producers in list order, until one claims it. First in the list, it sees every MSR write
//! and hypercall that the split-lock producer and the demand pager are asked to serve; the other
//! exits they are offered (MSR reads, port I/O, MMIO) it does not watch, as it implements no
//! hook for them.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;

use pvagent_host::abi::hypercall::Nr;
use pvagent_host::{
    Config, Error, ExitHandler, HypercallAnswer, MsrAnswer, Producers, Report, Result, SerialSink, VcpuCtx, Vm,
};

/// What the watcher finds wrong, as its own error type: it reaches the run's result inside
/// `Error::Producer`, where a test gets it back with `downcast_ref`.
#[derive(Debug, PartialEq, Eq)]
enum WatchError {
    /// No MSR write reached the watcher: it was not in the path it claims to watch. (The guest
    /// always registers the page-not-present protocol, with MSR writes the pager serves.)
    SawNoMsrWrite,
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::SawNoMsrWrite => f.write_str("no MSR write reached the watcher"),
        }
    }
}

impl std::error::Error for WatchError {}

/// Counts MSR writes by MSR and hypercalls by number, claiming none of them.
#[derive(Debug, Default)]
struct Watcher {
    msr_writes: BTreeMap<u32, u64>,
    hypercalls: BTreeMap<u32, u64>,
}

impl ExitHandler for Watcher {
    fn name(&self) -> &'static str {
        "watch"
    }

    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32, _value: u64) -> Result<MsrAnswer> {
        *self.msr_writes.entry(index).or_default() += 1;
        Ok(MsrAnswer::NotMine)
    }

    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, nr: u32, _args: [u64; 4]) -> Result<HypercallAnswer> {
        *self.hypercalls.entry(nr).or_default() += 1;
        Ok(None)
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        for (msr, count) in &self.msr_writes {
            report.line(format!("watch: wrmsr {msr:#x}: {count} time(s)"));
        }
        for (nr, count) in &self.hypercalls {
            let name = Nr::try_from(*nr).map(|nr| format!("{nr:?}")).unwrap_or_else(|raw| format!("{raw:#x}"));
            report.line(format!("watch: hypercall {name}: {count} time(s)"));
        }
        report.counter(self.name(), "msr_writes", self.msr_writes.values().sum());
        report.counter(self.name(), "hypercalls", self.hypercalls.values().sum());
        // An error from `finish` fails the run; its report lines are kept.
        if self.msr_writes.is_empty() {
            return Err(Error::producer(self.name(), WatchError::SawNoMsrWrite));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(guest) = args.next() else {
        eprintln!("usage: watch GUEST-ELF [GUEST COMMAND LINE WORDS...]");
        return ExitCode::from(2);
    };
    let mut config = Config::new(guest);
    config.cmdline = args.collect::<Vec<_>>().join(" ");
    config.serial = SerialSink::Quiet;

    let producers = Producers::defaults().build().map(|mut producers| {
        producers.insert(0, Box::new(Watcher::default()));
        producers
    });
    let vm = match producers.and_then(|producers| Vm::new(config, producers)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("watch: {e}");
            return ExitCode::from(2);
        }
    };
    let result = vm.run();
    for line in result.report.lines.iter().filter(|l| l.starts_with("watch:")) {
        println!("{line}");
    }
    let (writes, calls) = (result.report.get("watch.msr_writes"), result.report.get("watch.hypercalls"));
    println!(
        "watch: {writes} MSR writes and {calls} hypercalls reached the producers; the run passed: {}",
        result.passed()
    );
    match &result.host_error {
        // The watcher's own error, as its own type.
        Some(Error::Producer { producer: "watch", source }) if source.downcast_ref::<WatchError>().is_some() => {
            eprintln!("watch: the watcher failed the run: {source}");
        }
        Some(error) => eprintln!("watch: host-side error: {error}"),
        None if !result.passed() => eprintln!("watch: the guest reported a failure"),
        None => {}
    }
    ExitCode::from(result.exit_status() as u8)
}
