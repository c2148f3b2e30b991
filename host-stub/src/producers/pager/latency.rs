//! The fetch latency in effect, as plain code: the configured range, the guest's changes to it
//! (`PnpSetLatency`: self-tests and benchmarks set their own), the draws, and an account of what
//! actually applied for the pager's report. Unit-tested here.

use std::time::Duration;

use super::config::Latency;

/// The latency of the fetches, and what it was over a run.
#[derive(Clone, Debug)]
pub struct LatencyControl {
    /// What the configuration (the command line) asked for.
    configured: Latency,
    /// What new fetches draw from now.
    current: Latency,
    /// xorshift64 state: a reproducible spread of latencies for a given seed.
    rng: u64,
    /// How often the guest changed it.
    guest_changes: u64,
    /// Fetches drawn, and the shortest and longest latency drawn.
    drawn: u64,
    shortest: Duration,
    longest: Duration,
}

impl LatencyControl {
    /// Latencies from `configured`, spread by `seed`.
    pub fn new(configured: Latency, seed: u64) -> Self {
        Self {
            configured,
            current: configured,
            rng: seed | 1,
            guest_changes: 0,
            drawn: 0,
            shortest: Duration::MAX,
            longest: Duration::ZERO,
        }
    }

    /// The guest asked for `latency` (the caller checked it is valid).
    pub fn set_by_guest(&mut self, latency: Latency) {
        self.current = latency;
        self.guest_changes += 1;
    }

    /// The latency of one more fetch: the fixed value, or uniform in the range.
    pub fn draw(&mut self) -> Duration {
        let (min, max) = (self.current.min.as_nanos() as u64, self.current.max.as_nanos() as u64);
        let nanos = if max > min {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            min + self.rng % (max - min + 1)
        } else {
            min
        };
        let latency = Duration::from_nanos(nanos);
        self.drawn += 1;
        self.shortest = self.shortest.min(latency);
        self.longest = self.longest.max(latency);
        latency
    }

    /// What applied, in one line: the configured latency, whether the guest changed it (and to
    /// what last), and the range of the latencies the fetches actually drew.
    pub fn describe(&self) -> String {
        let mut line = format!("latency {} configured", self.configured);
        match self.guest_changes {
            0 => line.push_str(", never changed by the guest"),
            n => line.push_str(&format!(", set by the guest {n} time(s), last to {}", self.current)),
        }
        match self.drawn {
            0 => line.push_str("; no fetch drew a latency"),
            n => {
                let drawn = Latency { min: self.shortest, max: self.longest };
                line.push_str(&format!("; {n} fetch(es) drew {drawn}"));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn draws_stay_in_the_range_and_a_fixed_latency_is_exact() {
        let mut c = LatencyControl::new(Latency { min: 50 * US, max: 2000 * US }, 0x5EED);
        for _ in 0..1000 {
            let d = c.draw();
            assert!((50 * US..=2000 * US).contains(&d), "{d:?}");
        }
        c.set_by_guest(Latency::fixed(200 * US));
        assert_eq!(c.draw(), 200 * US);
    }

    #[test]
    fn the_description_says_what_applied_not_only_what_was_asked() {
        let mut c = LatencyControl::new(Latency { min: 50 * US, max: 2000 * US }, 1);
        assert_eq!(c.describe(), "latency 50us..2ms configured, never changed by the guest; no fetch drew a latency");
        c.set_by_guest(Latency::fixed(Duration::ZERO));
        c.draw();
        c.set_by_guest(Latency::fixed(300 * US));
        c.draw();
        assert_eq!(
            c.describe(),
            "latency 50us..2ms configured, set by the guest 2 time(s), last to 300us; 2 fetch(es) drew 0..300us"
        );
    }
}
