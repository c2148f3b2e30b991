//! Reading a host stub run back: the guest's `bench:` lines (one measurement each), its
//! `bench-error:` lines, and the host's `host: counter KEY VALUE` lines.

use std::collections::BTreeMap;

use pvagent_abi::report::parse_bench;

/// One `bench: NAME key=value ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub name: String,
    pub fields: BTreeMap<String, u64>,
}

impl Sample {
    /// A field's value; 0 when the line did not have it.
    pub fn get(&self, key: &str) -> u64 {
        self.fields.get(key).copied().unwrap_or(0)
    }

    /// A field's value; `None` when the line did not have it.
    pub fn field(&self, key: &str) -> Option<u64> {
        self.fields.get(key).copied()
    }

    /// A field's value as a float, for arithmetic.
    pub fn f(&self, key: &str) -> f64 {
        self.get(key) as f64
    }
}

/// Everything one run printed that the benchmark reads.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    pub samples: Vec<Sample>,
    pub counters: BTreeMap<String, u64>,
    /// `bench-error:` lines: a benchmark the guest could not run.
    pub errors: Vec<String>,
    /// Whether the guest printed `bench: done` (it ran to the end).
    pub done: bool,
}

const COUNTER_PREFIX: &str = "host: counter ";
const ERROR_PREFIX: &str = "bench-error: ";

impl RunOutput {
    /// Reads the lines of one run.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut out = Self::default();
        for line in lines {
            if let Some(rest) = line.strip_prefix(COUNTER_PREFIX) {
                if let Some((key, value)) = rest.split_once(' ')
                    && let Ok(value) = value.trim().parse()
                {
                    out.counters.insert(key.to_owned(), value);
                }
            } else if let Some(rest) = line.strip_prefix(ERROR_PREFIX) {
                out.errors.push(rest.to_owned());
            } else if let Some((name, fields)) = parse_bench(line) {
                match name {
                    "done" => out.done = true,
                    "start" => {}
                    _ => out.samples.push(Sample {
                        name: name.to_owned(),
                        fields: fields.map(|(k, v)| (k.to_owned(), v)).collect(),
                    }),
                }
            }
        }
        out
    }

    /// The samples named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// A host counter; `None` when the run did not print it.
    pub fn counter(&self, key: &str) -> Option<u64> {
        self.counters.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_counters_and_errors_and_ignores_the_rest() {
        let out = RunOutput::parse([
            "bench: start tsc_khz=2000000 quick=1",
            "bench: io rep=0 ops=500 total_ns=4124309",
            "ac: spurious #AC at rip 0x10167b (cpl 0): ignored",
            "bench: inject_page_not_present rep=1 ops=50 handled=25 total_ns=27386262",
            "bench-error: workload: needs the host stub's demand pager",
            "bench: done",
            "host: counter host.peak_rss_kib 10240",
            "host: counter broken x",
        ]);
        assert!(out.done);
        assert_eq!(out.samples.len(), 2);
        assert_eq!(out.named("io").next().unwrap().get("total_ns"), 4124309);
        assert_eq!(out.named("inject_page_not_present").next().unwrap().get("handled"), 25);
        assert_eq!(out.errors, ["workload: needs the host stub's demand pager"]);
        assert_eq!(out.counter("host.peak_rss_kib"), Some(10240));
        assert_eq!(out.counter("broken"), None);
    }
}
