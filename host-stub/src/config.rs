//! What one run of the host stub is asked to do, independent of how it was asked (the CLI in
//! `main.rs`, or a test calling the library).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Smallest guest memory: the image below 16 MiB plus room for the page tables' RAM mapping.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest memory: RAM stays below the 3 GiB mark, under the 32-bit device hole.
pub const MAX_MEM_MIB: u64 = 3072;
/// Default guest memory.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Most vCPUs: the guest's `MAX_CPUS` is at least this, and the local APIC IDs `0..N` stay
/// well inside the xAPIC's 8-bit IDs the MADT's entries carry.
pub const MAX_VCPUS: usize = 8;

/// Where Linux says whether the host's SMT is active (`1`) or not (`0`).
pub const HOST_SMT_ACTIVE: &str = "/sys/devices/system/cpu/smt/active";

/// Why a vCPU may share its core's MSRs with an SMT sibling, so that seed 000's rule applies
/// (`producers::sld::policy::check_smt_rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Siblings {
    /// The host stub simulates SMT (`threads_per_core` 2).
    Simulated,
    /// The host's own SMT is active: a vCPU thread's sibling thread runs something else.
    Host,
}

impl std::fmt::Display for Siblings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Siblings::Simulated => f.write_str("SMT simulated with --threads-per-core 2"),
            Siblings::Host => write!(f, "the host's SMT is active ({HOST_SMT_ACTIVE})"),
        }
    }
}

/// Whether there are SMT siblings, from the simulated topology and what [`HOST_SMT_ACTIVE`]
/// reads (`None`: absent, as on a kernel or machine without SMT control).
pub fn siblings(threads_per_core: u32, host_smt_active: Option<&str>) -> Option<Siblings> {
    if threads_per_core > 1 {
        Some(Siblings::Simulated)
    } else if host_smt_active.map(str::trim) == Some("1") {
        Some(Siblings::Host)
    } else {
        None
    }
}

/// Where the guest's console output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSink {
    /// Echo each line on the host's stdout as it completes.
    Stdout,
    /// Keep it in the run result only.
    Quiet,
    /// Append it to a file.
    File(PathBuf),
}

/// One run's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The guest ELF image.
    pub guest: PathBuf,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// The guest's command line (PVH start info).
    pub cmdline: String,
    pub serial: SerialSink,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Record the run's timeline and write it here (Chrome trace-event JSON).
    pub trace: Option<PathBuf>,
    /// Whether the timeline shows the console's exits (one per line through the console port;
    /// through the UART one per byte, most of a run's exits). `false` leaves them out of the
    /// file; they are still counted.
    pub trace_console: bool,
    /// The ABI version this host stub reports (CPUID leaf 0x4000_0001) and holds the guest's
    /// announced version to. Always [`pvagent_abi::ABI_VERSION`], except in tests of the
    /// version check, which pretend to be a host of another version.
    pub abi_version: pvagent_abi::AbiVersion,
    /// Serve the benchmark device (ports `0x51C`, `0x51E`, `0x51F`) and its bare loop, for
    /// `cargo xtask bench`'s guest (`crate::bench`). Off: those ports are unclaimed.
    pub bench: bool,
    /// With `bench`: each counting window also prints every KVM statistic that changed in it
    /// (a breakdown of KVM's exits, `docs/performance.md`).
    pub bench_window_stats: bool,
    /// Offer the paravirtual console (`pvagent_abi::console`: a line per exit). Off: the guest
    /// finds no `Features::CONSOLE` and prints through the UART, an exit a byte.
    pub pv_console: bool,
    /// vCPUs, `1..=`[`MAX_VCPUS`]: vCPU `i` has local APIC ID `i`; vCPU 0 boots, the guest
    /// starts the others with INIT-SIPI-SIPI.
    pub vcpus: usize,
    /// The topology the guest is shown (CPUID leaves 0xB and 0x1F): 1, or 2 to simulate SMT
    /// (vCPUs `2k` and `2k + 1` are the two threads of core `k`).
    pub threads_per_core: u32,
    /// Whether the host's SMT is active: `None` reads it from [`HOST_SMT_ACTIVE`] (what every
    /// real run does); `Some` overrides that, so that a test takes the host-SMT path (or the
    /// other) whatever machine it runs on.
    pub host_smt_active: Option<bool>,
}

impl Config {
    /// A configuration with defaults for everything but the image.
    pub fn new(guest: impl Into<PathBuf>) -> Self {
        Self {
            guest: guest.into(),
            mem_mib: DEFAULT_MEM_MIB,
            cmdline: String::new(),
            serial: SerialSink::Stdout,
            timeout: Some(Duration::from_secs(300)),
            trace: None,
            trace_console: true,
            abi_version: pvagent_abi::ABI_VERSION,
            bench: false,
            bench_window_stats: false,
            pv_console: true,
            vcpus: 1,
            threads_per_core: 1,
            host_smt_active: None,
        }
    }

    /// Checks the values that do not need the image or KVM.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(Error::MemorySize { requested_mib: self.mem_mib, min_mib: MIN_MEM_MIB, max_mib: MAX_MEM_MIB });
        }
        let max = crate::memory::CMDLINE_MAX;
        if self.cmdline.len() > max {
            return Err(Error::CmdlineTooLong { len: self.cmdline.len(), max });
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(Error::VcpuCount { requested: self.vcpus, max: MAX_VCPUS });
        }
        if !(1..=2).contains(&self.threads_per_core) {
            return Err(Error::ThreadsPerCore { requested: self.threads_per_core });
        }
        Ok(())
    }

    /// Whether seed 000's SMT rule applies to this run: SMT simulated, or the host's active.
    pub fn siblings(&self) -> Option<Siblings> {
        match self.host_smt_active {
            Some(active) => siblings(self.threads_per_core, Some(if active { "1" } else { "0" })),
            None => siblings(self.threads_per_core, std::fs::read_to_string(HOST_SMT_ACTIVE).ok().as_deref()),
        }
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_bounds_are_enforced_with_a_clear_error() {
        let mut c = Config::new("guest.elf");
        c.validate().unwrap();
        c.mem_mib = 8;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("8 MiB") && msg.contains("32..=3072"), "{msg}");
        c.mem_mib = 1 << 20;
        assert!(matches!(c.validate(), Err(Error::MemorySize { .. })));
    }

    #[test]
    fn vcpu_counts_and_topologies_out_of_range_are_refused() {
        let mut c = Config::new("guest.elf");
        for vcpus in 1..=MAX_VCPUS {
            c.vcpus = vcpus;
            c.validate().unwrap();
        }
        for vcpus in [0, MAX_VCPUS + 1] {
            c.vcpus = vcpus;
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(&format!("{vcpus} vCPUs")) && msg.contains("1..=8"), "{msg}");
        }
        c.vcpus = 4;
        c.threads_per_core = 2;
        c.validate().unwrap();
        c.threads_per_core = 3;
        assert!(matches!(c.validate(), Err(Error::ThreadsPerCore { requested: 3 })));
        c.threads_per_core = 1;
        // The benchmark runs with several vCPUs; only its bare loop is refused then, when the
        // guest asks for it (`bench::device`).
        c.bench = true;
        c.validate().unwrap();
    }

    #[test]
    fn siblings_come_from_the_simulated_topology_or_the_hosts_active_smt() {
        assert_eq!(siblings(2, None), Some(Siblings::Simulated));
        assert_eq!(siblings(2, Some("0\n")), Some(Siblings::Simulated));
        assert_eq!(siblings(1, Some("1\n")), Some(Siblings::Host));
        assert_eq!(siblings(1, Some("0\n")), None);
        assert_eq!(siblings(1, None), None, "no SMT control: no SMT");
    }

    #[test]
    fn an_overlong_command_line_is_refused() {
        let mut c = Config::new("guest.elf");
        c.cmdline = "x".repeat(crate::memory::CMDLINE_MAX + 1);
        assert!(matches!(c.validate(), Err(Error::CmdlineTooLong { .. })));
    }
}
