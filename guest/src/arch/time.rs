//! Time: the TSC as the clock, and the local APIC timer as the tick.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;

/// Timer ticks per second.
pub const HZ: u64 = 100;
/// The APIC timer input frequency assumed when no CPUID leaf gives it: KVM's and QEMU's
/// emulated local APIC both count at 1 GHz.
pub const DEFAULT_APIC_KHZ: u32 = 1_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency came from (for the boot report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Cpuid,
    CalibratedAgainstApicTimer,
}

/// Sets the TSC frequency from CPUID, or calibrates it against the APIC timer.
pub fn init(cpuid_khz: Option<u32>, apic_khz: u32) -> (u64, TscSource) {
    let (khz, source) = match cpuid_khz {
        Some(khz) => (u64::from(khz), TscSource::Cpuid),
        None => {
            // 10 ms of timer input.
            let cycles = apic_khz * 10;
            let tsc = super::apic::measure_tsc_against_timer(cycles);
            (tsc / 10, TscSource::CalibratedAgainstApicTimer)
        }
    };
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    (khz, source)
}

/// TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Nanoseconds since the TSC started (monotonic on one vCPU).
pub fn now_ns() -> u64 {
    let tsc = u128::from(cpu::rdtsc());
    (tsc * 1_000_000 / u128::from(tsc_khz())) as u64
}

/// Busy-waits for `us` microseconds.
pub fn spin_us(us: u64) {
    let end = now_ns() + us * 1000;
    while now_ns() < end {
        core::hint::spin_loop();
    }
}
