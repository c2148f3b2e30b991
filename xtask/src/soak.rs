//! `cargo xtask soak`: the guest's `soak::storm` self-test under the host stub, on several
//! vCPUs, against the pager's versioned pages (`--pnp-versioned`), sized by events and seeded
//! (`soak-events=`, `soak-seed=` on the guest's command line). One boot of `cargo xtask run`'s,
//! filtered to the storm; a short one is a stage of `cargo xtask test`.

use std::time::Duration;

use crate::Result;
use crate::run::{self, RunOptions};

/// The short soak `cargo xtask test` runs: about ten seconds here.
pub const SHORT_EVENTS: u64 = 2_000;
/// Its seed, and the default one.
pub const DEFAULT_SEED: u64 = 1;
/// Its vCPUs, and the default.
pub const DEFAULT_VCPUS: usize = 4;
/// The slowest pace the run's time limit allows for (events a second): the limit only ends a
/// run that hangs, far beyond what a slow machine takes (about 200 a second here).
const SLOWEST_EVENTS_PER_SECOND: u64 = 5;

/// What to soak.
#[derive(Clone, Debug)]
pub struct Options {
    pub events: u64,
    pub seed: u64,
    pub vcpus: usize,
    pub release: bool,
    /// Every vCPU thread on one host CPU (`taskset -c 0`).
    pub on_one_host_cpu: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { events: SHORT_EVENTS, seed: DEFAULT_SEED, vcpus: DEFAULT_VCPUS, release: false, on_one_host_cpu: false }
    }
}

impl Options {
    /// The host stub's time limit for the run: only a hang reaches it.
    pub fn timeout(&self) -> Duration {
        run::BOOT_TIMEOUT + Duration::from_secs(self.events / SLOWEST_EVENTS_PER_SECOND)
    }

    /// The run: the storm alone, in one boot.
    pub fn run_options(&self) -> RunOptions {
        let host_args = [
            "--vcpus".to_string(),
            self.vcpus.to_string(),
            "--pnp-versioned".to_string(),
            "--timeout".to_string(),
            self.timeout().as_secs().to_string(),
            "--cmdline".to_string(),
            format!("soak-events={} soak-seed={}", self.events, self.seed),
        ];
        RunOptions {
            release: self.release,
            tests: Some("soak::storm".to_string()),
            host_args: host_args.to_vec(),
            on_one_host_cpu: self.on_one_host_cpu,
            ..RunOptions::default()
        }
    }
}

/// Runs the soak; a failure names the seed and round that reproduce it (the guest's line).
pub fn run(options: &Options) -> Result<()> {
    println!(
        "xtask: soak of {} events, seed {}, {} vCPUs{} (time limit {} s, against a hang only)",
        options.events,
        options.seed,
        options.vcpus,
        if options.on_one_host_cpu { ", every vCPU on host CPU 0" } else { "" },
        options.timeout().as_secs()
    );
    run::scenario(&options.run_options())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_is_one_filtered_boot_with_versioned_pages_and_its_size_and_seed_on_the_command_line() {
        let options = Options { events: 1_000_000, seed: 7, vcpus: 2, ..Options::default() };
        let run = options.run_options();
        assert_eq!(run.tests.as_deref(), Some("soak::storm"));
        let args = run.host_args.join(" ");
        assert!(args.contains("--vcpus 2 --pnp-versioned"), "{args}");
        assert!(args.contains("--cmdline soak-events=1000000 soak-seed=7"), "{args}");
        assert_eq!(options.timeout(), run::BOOT_TIMEOUT + Duration::from_secs(200_000));
        let (boots, _) = run::plan(run.tests.as_deref(), None, &run.host_args);
        assert_eq!(boots.len(), 1, "one boot");
    }
}
