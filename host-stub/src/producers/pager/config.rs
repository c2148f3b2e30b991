//! The pager's settings, and the parsing of the values users give on the command line.

use std::path::PathBuf;
use std::time::Duration;

use pvagent_abi::pnp::HostMode;

/// Where the demand-paged region starts by default: 4 GiB, above every RAM configuration and
/// the 32-bit device hole.
pub const DEFAULT_REGION_GPA: u64 = 1 << 32;
/// Default region size.
pub const DEFAULT_REGION_MIB: u64 = 16;
/// Largest region.
pub const MAX_REGION_MIB: u64 = 4096;
/// Longest latency accepted.
pub const MAX_LATENCY: Duration = Duration::from_secs(10);
/// Most fetcher threads (a bound against typos: each is a thread).
pub const MAX_FETCHERS: usize = 64;
/// Default fetcher threads.
pub const DEFAULT_FETCHERS: usize = 2;

/// A configuration value the pager refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the region of {mib} MiB is outside 1..={MAX_REGION_MIB} MiB")]
    RegionSize { mib: u64 },
    #[error("the region's address {gpa:#x} is not 2 MiB aligned")]
    RegionAlignment { gpa: u64 },
    #[error("the latency {latency} is not a range within 0..={MAX_LATENCY:?}")]
    Latency { latency: Latency },
    #[error("failing page {page} is beyond the region's {pages} pages")]
    FailPageBeyondRegion { page: u64, pages: u64 },
    #[error("{fetchers} fetcher threads is outside 1..={MAX_FETCHERS}")]
    Fetchers { fetchers: usize },
    #[error(
        "failing pages need a mode whose host side the host stub serves: in kvm-apf-kernel mode KVM delivers, and KVM has no \"failed\" result"
    )]
    FailingPagesUnderKvm,
}

/// A fetch latency: fixed (`min == max`) or uniform in `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub min: Duration,
    pub max: Duration,
}

impl Latency {
    /// A fixed latency.
    pub const fn fixed(d: Duration) -> Self {
        Self { min: d, max: d }
    }

    /// Whether it is a range (minimum not above maximum) within [`MAX_LATENCY`].
    pub fn is_valid(&self) -> bool {
        self.min <= self.max && self.max <= MAX_LATENCY
    }
}

/// A duration the way [`parse_duration`] reads it: in the largest unit that says it exactly.
struct Short(Duration);

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0.as_nanos();
        let (value, unit) = [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"), (1, "ns")]
            .into_iter()
            .find(|(per, _)| ns.is_multiple_of(*per))
            .map(|(per, unit)| (ns / per, unit))
            .unwrap_or((ns, "ns"));
        if ns == 0 { write!(f, "0") } else { write!(f, "{value}{unit}") }
    }
}

/// As the command line takes it: `200us`, `50us..2ms`.
impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", Short(self.min))
        } else {
            write!(f, "{}..{}", Short(self.min), Short(self.max))
        }
    }
}

/// The pager's configuration.
#[derive(Clone, Debug)]
pub struct PagerConfig {
    /// Size of the demand-paged region in MiB.
    pub region_mib: u64,
    /// Its guest-physical address (2 MiB aligned).
    pub region_gpa: u64,
    pub mode: HostMode,
    pub latency: Latency,
    /// Fetcher threads.
    pub fetchers: usize,
    /// Pages (indices in the region) whose first fetch fails.
    pub fail_pages: Vec<u64>,
    /// The backing image (default: `pvagent_abi::pnp::backing_pattern`).
    pub image: Option<PathBuf>,
    /// Serve every page with its address and version in its first two words
    /// (`pvagent_abi::pnp::versioned_header`; the soak checks them).
    pub versioned: bool,
    /// A deliberate fault for the soak's own test, with `versioned` (no command line option):
    /// from the Nth page made present on, versions stop counting, so a page fetched again
    /// serves its previous version.
    pub stale_versions_from: Option<u64>,
    /// Seed of the latency draws.
    pub seed: u64,
}

impl Default for PagerConfig {
    fn default() -> Self {
        Self {
            region_mib: DEFAULT_REGION_MIB,
            region_gpa: DEFAULT_REGION_GPA,
            mode: HostMode::Ring,
            latency: Latency { min: Duration::from_micros(50), max: Duration::from_millis(2) },
            fetchers: DEFAULT_FETCHERS,
            fail_pages: Vec::new(),
            image: None,
            versioned: false,
            stale_versions_from: None,
            seed: 0x5EED,
        }
    }
}

impl PagerConfig {
    /// Checks the values; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.region_mib == 0 || self.region_mib > MAX_REGION_MIB {
            return Err(ConfigError::RegionSize { mib: self.region_mib });
        }
        if !self.region_gpa.is_multiple_of(2 << 20) {
            return Err(ConfigError::RegionAlignment { gpa: self.region_gpa });
        }
        if !self.latency.is_valid() {
            return Err(ConfigError::Latency { latency: self.latency });
        }
        let pages = self.pages();
        if let Some(&page) = self.fail_pages.iter().find(|p| **p >= pages) {
            return Err(ConfigError::FailPageBeyondRegion { page, pages });
        }
        if !(1..=MAX_FETCHERS).contains(&self.fetchers) {
            return Err(ConfigError::Fetchers { fetchers: self.fetchers });
        }
        if self.mode == HostMode::KvmApfKernel && !self.fail_pages.is_empty() {
            return Err(ConfigError::FailingPagesUnderKvm);
        }
        Ok(())
    }

    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.region_mib << 8
    }

    /// The region's length in bytes (checked by `validate` not to overflow).
    pub fn region_bytes(&self) -> u64 {
        self.region_mib << 20
    }
}

/// The command line's name of each mode.
pub const MODE_NAMES: [(&str, HostMode); 5] = [
    ("sync", HostMode::Sync),
    ("ring", HostMode::Ring),
    ("kvm-apf", HostMode::KvmApf),
    ("kvm-apf-kernel", HostMode::KvmApfKernel),
    ("ve", HostMode::Ve),
];

/// The command line's name of `mode`.
pub fn mode_name(mode: HostMode) -> &'static str {
    MODE_NAMES.iter().find(|(_, m)| *m == mode).map_or("?", |(name, _)| name)
}

/// Parses `sync`, `ring`, `kvm-apf`, `kvm-apf-kernel` or `ve`.
pub fn parse_mode(s: &str) -> Result<HostMode, String> {
    MODE_NAMES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, mode)| *mode)
        .ok_or_else(|| format!("unknown pager mode {s:?}: use sync, ring, kvm-apf, kvm-apf-kernel or ve"))
}

/// Parses a duration such as `0`, `750ns`, `50us`, `2ms` or `1s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("{s:?} needs a unit (ns, us, ms, s)"))?;
    let (digits, unit) = s.split_at(split);
    let value: u64 = digits.parse().map_err(|_| format!("{s:?} does not start with a number"))?;
    let nanos_per = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use ns, us, ms or s")),
    };
    value.checked_mul(nanos_per).map(Duration::from_nanos).ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses a latency: `200us` (fixed) or `50us..5ms` (uniform).
pub fn parse_latency(s: &str) -> Result<Latency, String> {
    let latency = match s.split_once("..") {
        Some((min, max)) => Latency { min: parse_duration(min)?, max: parse_duration(max)? },
        None => Latency::fixed(parse_duration(s)?),
    };
    if latency.min > latency.max {
        return Err(format!("latency range {s:?} has its minimum above its maximum"));
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_latencies_parse_with_units() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_latency("200us"), Ok(Latency::fixed(Duration::from_micros(200))));
        assert_eq!(
            parse_latency("50us..5ms"),
            Ok(Latency { min: Duration::from_micros(50), max: Duration::from_millis(5) })
        );
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_latency("5ms..1ms").unwrap_err().contains("minimum above"));
        assert!(parse_mode("async").is_err());
        for (name, mode) in MODE_NAMES {
            assert_eq!(parse_mode(name), Ok(mode));
        }
    }

    #[test]
    fn a_latency_prints_the_way_it_is_written() {
        for text in ["0", "750ns", "50us", "1500us", "2ms", "1s", "50us..2ms", "0..10s"] {
            let latency = parse_latency(text).unwrap();
            assert_eq!(latency.to_string(), text);
            assert_eq!(parse_latency(&latency.to_string()), Ok(latency));
        }
        assert_eq!(PagerConfig::default().latency.to_string(), "50us..2ms");
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut c = PagerConfig::default();
        c.validate().unwrap();
        c.fail_pages = vec![c.pages()];
        assert_eq!(c.validate(), Err(ConfigError::FailPageBeyondRegion { page: 4096, pages: 4096 }));
        c.fail_pages.clear();
        c.region_gpa += 4096;
        assert_eq!(c.validate(), Err(ConfigError::RegionAlignment { gpa: DEFAULT_REGION_GPA + 4096 }));
        c.region_gpa = DEFAULT_REGION_GPA;
        c.latency = Latency::fixed(Duration::from_secs(11));
        assert!(matches!(c.validate(), Err(ConfigError::Latency { .. })));
        c.latency = Latency::fixed(Duration::ZERO);
        for fetchers in [0, MAX_FETCHERS + 1] {
            c.fetchers = fetchers;
            assert_eq!(c.validate(), Err(ConfigError::Fetchers { fetchers }), "no silent replacement");
        }
        c.fetchers = MAX_FETCHERS;
        c.mode = HostMode::KvmApfKernel;
        c.fail_pages = vec![1];
        assert_eq!(c.validate(), Err(ConfigError::FailingPagesUnderKvm));
        c.fail_pages.clear();
        c.validate().unwrap();
        c.region_mib = 0;
        assert_eq!(c.validate(), Err(ConfigError::RegionSize { mib: 0 }));
    }
}
