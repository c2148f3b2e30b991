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
        Ok(())
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
    fn an_overlong_command_line_is_refused() {
        let mut c = Config::new("guest.elf");
        c.cmdline = "x".repeat(crate::memory::CMDLINE_MAX + 1);
        assert!(matches!(c.validate(), Err(Error::CmdlineTooLong { .. })));
    }
}
