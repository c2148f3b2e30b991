//! Time: the TSC as the clock, and the local APIC timer as the tick.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::calibration::CalibrationFailed;
use super::percpu::{CpuLocal, MAX_CPUS};
use super::{apic, cpu, trap};
use crate::cell::{FnPtr, FnSlot};

/// Vector of the local APIC timer tick.
pub const TIMER_VECTOR: u8 = 0x30;

/// Timer ticks per second.
pub const HZ: u64 = 100;
/// The APIC timer input frequency assumed when no CPUID leaf gives it: KVM's and QEMU's
/// emulated local APIC both count at 1 GHz.
pub const DEFAULT_APIC_KHZ: u32 = 1_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The TSC frequency assumed when neither CPUID gives it nor the calibration succeeds (the
/// boot says so): a common one. Times the kernel measures are then off by the ratio.
pub const DEFAULT_TSC_KHZ: u64 = 2_000_000;

/// Where the TSC frequency came from (for the boot report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Cpuid,
    CalibratedAgainstApicTimer,
    /// [`DEFAULT_TSC_KHZ`], because the calibration gave up (why).
    Assumed(CalibrationFailed),
}

/// Sets the TSC frequency from CPUID, or calibrates it against the APIC timer.
pub fn init(cpuid_khz: Option<u32>, apic_khz: u32) -> (u64, TscSource) {
    let (khz, source) = match cpuid_khz {
        Some(khz) => (u64::from(khz), TscSource::Cpuid),
        // 10 ms of timer input (a CPUID-given rate is the host's: no overflow).
        None => match super::apic::measure_tsc_against_timer(apic_khz.saturating_mul(10)) {
            Ok(tsc) => (tsc / 10, TscSource::CalibratedAgainstApicTimer),
            Err(why) => (DEFAULT_TSC_KHZ, TscSource::Assumed(why)),
        },
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

/// The timer's period in its input cycles (set by [`init_tick`]).
static TIMER_PERIOD: AtomicU32 = AtomicU32::new(0);
static TICK_HOOK: FnSlot<TickHook> = FnSlot::empty();
static CHECK_HOOK: FnSlot<TickHook> = FnSlot::empty();
static TICKS: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// Called on every tick, after EOI, with the tick count (the scheduler wakes sleepers).
pub type TickHook = fn(u64);
// SAFETY: a fn pointer type.
unsafe impl FnPtr for TickHook {}

/// Registers the tick's vector and sets its period for a timer input of `apic_khz`.
pub(super) fn init_tick(apic_khz: u32) {
    trap::register(TIMER_VECTOR, timer_tick);
    TIMER_PERIOD.store((u64::from(apic_khz) * 1000 / HZ) as u32, Ordering::Relaxed);
}

/// Starts this vCPU's periodic tick; `hook` runs on each one.
pub fn start_tick(hook: TickHook) {
    TICK_HOOK.set(hook);
    apic::start_periodic_timer(TIMER_VECTOR, TIMER_PERIOD.load(Ordering::Relaxed));
}

/// Sets `hook` to run on every tick of every vCPU, before the scheduler's: a periodic check
/// kept off the event paths (`pv::deadline`), which decides itself how often it does work.
pub fn set_check_hook(hook: TickHook) {
    CHECK_HOOK.set(hook);
}

/// The tick's period, in timer input cycles (`HZ` ticks a second at the APIC timer's frequency).
pub fn tick_period() -> u32 {
    TIMER_PERIOD.load(Ordering::Relaxed)
}

/// Ticks seen by this vCPU. Inlined: two instructions, read on handler paths (the #AC
/// handler's message budget), which must not pay for a call when the compiler's choices for
/// other code change (the exception path grew by 6 instructions once it stopped inlining it).
#[inline]
pub fn ticks() -> u64 {
    TICKS.get().load(Ordering::Relaxed)
}

/// Ticks seen by vCPU `cpu` (its own timer's, counted by its own handler).
pub fn ticks_of(cpu: usize) -> u64 {
    TICKS.of(cpu).load(Ordering::Relaxed)
}

fn timer_tick(_frame: &mut trap::TrapFrame) {
    let now = TICKS.get().fetch_add(1, Ordering::Relaxed) + 1;
    apic::eoi();
    if let Some(check) = CHECK_HOOK.get() {
        check(now);
    }
    if let Some(hook) = TICK_HOOK.get() {
        hook(now);
    }
}
