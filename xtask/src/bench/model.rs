//! What the workload benchmark could achieve at best, so that what it did achieve can be read
//! as an efficiency.
//!
//! K tasks each do M rounds of "compute C, then touch an absent page that takes L to page in".
//! With no cost for events, switches or waits, two things still bound the run from below. The
//! vCPU must do all the compute, one segment at a time, and whichever segment ends last is
//! followed by a page-in: K·M·C + L. And each task's rounds are a chain nothing can shorten:
//! M·(C+L). With enough tasks to hide the latency the first bound is the ideal; with too few,
//! the second. The synchronous path achieves K·M·(C+L) at best.

use serde::Serialize;

/// One workload configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Workload {
    pub tasks: u64,
    pub pages: u64,
    pub compute_ns: u64,
    pub latency_ns: u64,
}

impl Workload {
    /// The shortest possible completion time, in ns.
    pub fn ideal_ns(&self) -> f64 {
        let (k, m, c, l) = (self.tasks as f64, self.pages as f64, self.compute_ns as f64, self.latency_ns as f64);
        (k * m * c + l).max(m * (c + l))
    }

    /// Achieved throughput over ideal throughput for a run that took `wall_ns`.
    pub fn efficiency(&self, wall_ns: f64) -> f64 {
        if wall_ns > 0.0 { self.ideal_ns() / wall_ns } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Workload = Workload { tasks: 8, pages: 4, compute_ns: 100_000, latency_ns: 200_000 };

    #[test]
    fn enough_tasks_make_compute_the_bound() {
        // 8 x 4 x 100 us of compute and the last page-in = 3.4 ms; one chain is 4 x 300 us.
        assert_eq!(W.ideal_ns(), 3_400_000.0);
        assert!((W.efficiency(3_400_000.0 / 0.8) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn one_task_is_bound_by_its_chain() {
        let w = Workload { tasks: 1, latency_ns: 5_000_000, ..W };
        assert_eq!(w.ideal_ns(), 4.0 * 5_100_000.0, "one task cannot overlap anything");
        assert_eq!(w.efficiency(0.0), 0.0);
    }
}
