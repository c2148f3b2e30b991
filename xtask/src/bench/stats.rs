//! Medians and spreads of repeated measurements, and the ratios between them.

use serde::Serialize;

/// What repeated measurements of one quantity came to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many measurements.
    pub n: usize,
}

impl Summary {
    /// The summary of `values`; `None` when there are none, or any is negative, NaN or
    /// infinite (a broken measurement is not averaged away).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Self { median, min: sorted[0], max: sorted[n - 1], n })
    }

    /// The spread as a fraction of the median: (max - min) / median.
    pub fn spread(&self) -> f64 {
        if self.median > 0.0 { (self.max - self.min) / self.median } else { 0.0 }
    }

    /// Every value divided by `unit` (for example ns to µs).
    pub fn scaled(&self, unit: f64) -> Self {
        Self { median: self.median / unit, min: self.min / unit, max: self.max / unit, n: self.n }
    }

    /// Whether every figure is a positive finite number: what CI checks of a quick run.
    pub fn is_sane(&self) -> bool {
        [self.median, self.min, self.max].iter().all(|v| v.is_finite() && *v > 0.0) && self.n > 0
    }
}

/// An approximate 95% confidence interval for the median of `values`, from order statistics
/// (distribution-free: the count of values below the true median is binomial(n, 1/2)); `None`
/// for fewer than 6 values, where such an interval spans everything.
pub fn median_interval_95(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 6 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let half_width = 1.96 * (n as f64).sqrt() / 2.0;
    let lower = ((n as f64 / 2.0 - half_width).floor() as usize).min(n - 1);
    let upper = ((n as f64 / 2.0 + half_width).ceil() as usize).min(n - 1);
    Some((sorted[lower], sorted[upper]))
}

/// A number with the unit that reads best: ns, µs, ms or s.
pub fn human_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// `median (min–max, n=N)` with the median in the best unit.
pub fn human_summary_ns(s: &Summary) -> String {
    format!("{} ({}–{}, n={})", human_ns(s.median), human_ns(s.min), human_ns(s.max), s.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 3));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!((Summary::of(&[9.0, 10.0, 11.0]).unwrap().spread() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn broken_measurements_give_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[1.0, f64::INFINITY]), None);
        assert_eq!(Summary::of(&[1.0, -1.0]), None);
        assert!(!Summary::of(&[0.0]).unwrap().is_sane(), "zero is no cost");
        assert!(Summary::of(&[0.5]).unwrap().is_sane());
    }

    #[test]
    fn the_median_interval_narrows_with_more_values() {
        assert_eq!(median_interval_95(&[1.0, 2.0, 3.0]), None);
        let values: Vec<f64> = (1..=60).map(f64::from).collect();
        // 60 values: ranks 30 -/+ 7.6, so the 22nd and 38th smallest (0-based 22 and 38).
        assert_eq!(median_interval_95(&values), Some((23.0, 39.0)));
        let (lo, hi) = median_interval_95(&(1..=600).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert!(lo > 270.0 && hi < 330.0, "{lo} {hi}");
    }

    #[test]
    fn units_are_chosen_by_size() {
        assert_eq!(human_ns(512.0), "512 ns");
        assert_eq!(human_ns(8_210.0), "8.2 µs");
        assert_eq!(human_ns(2_500_000.0), "2.50 ms");
        assert_eq!(human_ns(3.2e9), "3.20 s");
    }
}
