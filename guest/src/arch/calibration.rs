//! Calibrating the TSC against the local APIC timer, for hosts whose CPUID gives no TSC
//! frequency (QEMU TCG). Plain logic over a [`Clocks`] trait, unit-tested on the host with a
//! simulated timer and TSC that lose the CPU at the worst moments; `apic` supplies the real
//! clocks.
//!
//! One measurement: start the (masked, one-shot) timer at twice the window, take a stamp (a
//! timer read bracketed by two TSC reads) while it counts, wait until it has counted the
//! window, take another stamp while it still counts. Time the vCPU loses *between* the stamps
//! passes on both clocks alike and does not skew the ratio. Time lost elsewhere would, so a
//! measurement is thrown away and taken again when:
//! - the timer had already counted more than the window at the start stamp (the vCPU lost its
//!   CPU between starting the timer and the stamp);
//! - the timer had run out at the end stamp (lost after the wait: the end is not a count in
//!   flight, and the TSC would have run on alone);
//! - either stamp is wider than 1/128 of the window (lost inside a stamp: the stamp says only
//!   that the count was taken somewhere in that width). Each stamp is the narrowest of four.
//!
//! After [`ATTEMPTS`] such measurements the calibration gives up with the last reason; so does
//! a timer that does not count. Every loop here ends whatever the clocks do: the wait ends
//! when the timer has counted the window, has run out, or has not moved for [`STUCK_READS`]
//! reads in a row.

/// The two clocks the calibration compares.
pub trait Clocks {
    /// Starts the timer counting down from `initial`, masked and one-shot (it stops at 0).
    fn start_timer(&mut self, initial: u32);
    /// The timer's current count.
    fn timer_count(&mut self) -> u32;
    /// The time-stamp counter.
    fn tsc(&mut self) -> u64;
}

/// Measurements taken before giving up.
pub const ATTEMPTS: u32 = 4;
/// Timer reads in a row without the count moving after which the timer is taken as stopped.
/// A counting timer moves between any two reads (its input runs at MHz to GHz; one read takes
/// tens of nanoseconds at least), so this is only ever reached by a timer that does not count.
pub const STUCK_READS: u32 = 100_000;
/// A stamp may be at most this fraction of the window wide (1/128: under 1% error in all).
const STAMP_WIDTH_DIVISOR: u64 = 128;

/// Why a calibration gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationFailed {
    /// At the start stamp the timer had already counted more than the window.
    LostCpuBeforeStart,
    /// At the end stamp the timer had run out.
    LostCpuBeforeEnd,
    /// A stamp was too wide to tell when its count was taken.
    WideStamp,
    /// The timer did not count.
    TimerStuck,
}

/// A timer read with a TSC read on each side: the count was taken somewhere in between.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    tsc: u64,
    width: u64,
    count: u32,
}

/// The narrowest of four stamps. A wide one means the vCPU lost its CPU between the reads,
/// which on a loaded host happens; losing it during all of them is unlikely.
fn narrow_stamp(clocks: &mut impl Clocks) -> Stamp {
    let mut best: Option<Stamp> = None;
    for _ in 0..4 {
        let before = clocks.tsc();
        let count = clocks.timer_count();
        let width = clocks.tsc().saturating_sub(before);
        let stamp = Stamp { tsc: before + width / 2, width, count };
        if best.is_none_or(|b| stamp.width < b.width) {
            best = Some(stamp);
        }
    }
    best.expect("four stamps")
}

/// One measurement: TSC cycles per `cycles` timer cycles.
fn measure_once(clocks: &mut impl Clocks, cycles: u32) -> Result<u64, CalibrationFailed> {
    clocks.start_timer(cycles.saturating_mul(2));
    let start = narrow_stamp(clocks);
    if start.count < cycles {
        return Err(CalibrationFailed::LostCpuBeforeStart);
    }
    let (mut last, mut unchanged) = (start.count, 0);
    loop {
        let now = clocks.timer_count();
        if now == 0 || start.count - now.min(start.count) >= cycles {
            break;
        }
        if now == last {
            unchanged += 1;
            if unchanged >= STUCK_READS {
                return Err(CalibrationFailed::TimerStuck);
            }
        } else {
            (last, unchanged) = (now, 0);
        }
    }
    let end = narrow_stamp(clocks);
    if end.count == 0 || end.count > start.count {
        return Err(CalibrationFailed::LostCpuBeforeEnd);
    }
    let elapsed = end.tsc.saturating_sub(start.tsc);
    if start.width.max(end.width) > elapsed / STAMP_WIDTH_DIVISOR {
        return Err(CalibrationFailed::WideStamp);
    }
    let counted = u128::from(start.count - end.count);
    Ok((u128::from(elapsed) * u128::from(cycles) / counted) as u64)
}

/// TSC cycles per `cycles` timer cycles, measured as the module doc says (at most
/// [`ATTEMPTS`] times), or why it could not be.
pub fn tsc_cycles_per(clocks: &mut impl Clocks, cycles: u32) -> Result<u64, CalibrationFailed> {
    let mut last = Err(CalibrationFailed::TimerStuck);
    for _ in 0..ATTEMPTS {
        last = measure_once(clocks, cycles);
        if matches!(last, Ok(_) | Err(CalibrationFailed::TimerStuck)) {
            break;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated vCPU: the TSC runs at 3 TSC cycles per timer cycle; each read costs 10 timer
    /// cycles; `stalls` lists (read number, timer cycles lost before that read).
    struct Sim {
        now: u64,
        timer_start: u64,
        initial: u32,
        reads: u32,
        stalls: Vec<(u32, u64)>,
        stuck: bool,
        starts: u32,
    }

    const TSC_PER_TIMER: u64 = 3;

    impl Sim {
        fn new(stalls: &[(u32, u64)]) -> Self {
            Self { now: 0, timer_start: 0, initial: 0, reads: 0, stalls: stalls.to_vec(), stuck: false, starts: 0 }
        }

        fn step(&mut self) {
            self.reads += 1;
            let lost: u64 = self.stalls.iter().filter(|(at, _)| *at == self.reads).map(|(_, lost)| lost).sum();
            self.now += 10 + lost;
        }
    }

    impl Clocks for Sim {
        fn start_timer(&mut self, initial: u32) {
            self.starts += 1;
            self.step();
            self.initial = initial;
            self.timer_start = self.now;
        }

        fn timer_count(&mut self) -> u32 {
            self.step();
            if self.stuck {
                return self.initial;
            }
            u64::from(self.initial).saturating_sub(self.now - self.timer_start) as u32
        }

        fn tsc(&mut self) -> u64 {
            self.step();
            self.now * TSC_PER_TIMER
        }
    }

    const WINDOW: u32 = 1_000_000;
    const EXACT: u64 = WINDOW as u64 * TSC_PER_TIMER;

    fn close(measured: u64) -> bool {
        measured.abs_diff(EXACT) <= EXACT / 100
    }

    #[test]
    fn an_undisturbed_measurement_is_exact_within_a_stamps_width() {
        let mut sim = Sim::new(&[]);
        let tsc = tsc_cycles_per(&mut sim, WINDOW).expect("measured");
        assert!(close(tsc), "{tsc} vs {EXACT}");
        assert_eq!(sim.starts, 1);
    }

    #[test]
    fn losing_the_cpu_between_the_stamps_does_not_skew_it() {
        // 10x the window lost in the middle of the wait: both clocks run on alike.
        let mut sim = Sim::new(&[(30, 900_000)]);
        let tsc = tsc_cycles_per(&mut sim, WINDOW).expect("measured");
        assert!(close(tsc), "{tsc} vs {EXACT}");
    }

    #[test]
    fn losing_the_cpu_before_the_start_stamp_retries_instead_of_waiting_forever() {
        // Read 2 (the first TSC read of the start stamp) comes after 1.5 windows: the timer has
        // counted more than the window already. The old loop never ended here.
        let mut sim = Sim::new(&[(2, 3 * u64::from(WINDOW) / 2)]);
        let tsc = tsc_cycles_per(&mut sim, WINDOW).expect("measured on the second attempt");
        assert!(close(tsc), "{tsc} vs {EXACT}");
        assert_eq!(sim.starts, 2);
    }

    #[test]
    fn losing_the_cpu_after_the_wait_retries_instead_of_overestimating() {
        // Lost past the timer's end between the wait and the end stamp: the end stamp reads 0
        // and the TSC ran on alone (the old code came out far too fast here).
        let mut sim = Sim::new(&[]);
        // Find how many reads the undisturbed first attempt takes before its end stamp.
        let wait_reads = {
            let mut probe = Sim::new(&[]);
            let _ = measure_once(&mut probe, WINDOW);
            probe.reads - 12 + 1
        };
        sim.stalls.push((wait_reads, 2 * u64::from(WINDOW)));
        let tsc = tsc_cycles_per(&mut sim, WINDOW).expect("measured on the second attempt");
        assert!(close(tsc), "{tsc} vs {EXACT}");
        assert_eq!(sim.starts, 2);
    }

    #[test]
    fn a_stamp_that_lost_the_cpu_every_time_is_refused() {
        // Each of the four end-stamp timer reads comes after a long stall.
        let mut probe = Sim::new(&[]);
        let _ = measure_once(&mut probe, WINDOW);
        let end_first = probe.reads - 12 + 1;
        let stalls: Vec<_> = (0..4).map(|i| (end_first + 3 * i + 1, 50_000)).collect();
        let mut sim = Sim::new(&stalls);
        assert_eq!(measure_once(&mut sim, WINDOW), Err(CalibrationFailed::WideStamp));
    }

    #[test]
    fn a_host_that_always_steals_the_cpu_gets_a_bounded_number_of_attempts() {
        let stalls: Vec<_> = (1..10_000).map(|at| (at, 3 * u64::from(WINDOW))).collect();
        let mut sim = Sim::new(&stalls);
        assert_eq!(tsc_cycles_per(&mut sim, WINDOW), Err(CalibrationFailed::LostCpuBeforeStart));
        assert_eq!(sim.starts, ATTEMPTS);
    }

    #[test]
    fn a_timer_that_does_not_count_ends_the_calibration() {
        let mut sim = Sim::new(&[]);
        sim.stuck = true;
        assert_eq!(tsc_cycles_per(&mut sim, WINDOW), Err(CalibrationFailed::TimerStuck));
        assert_eq!(sim.starts, 1, "no point in trying again");
        assert!(sim.reads < STUCK_READS + 100);
    }
}
