//! The kernel glue of the token deadline: the setting, the check each vCPU's tick runs, the
//! report line and the counts the self-tests and the run's summary read.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{BadValue, CMDLINE_KEY, DEFAULT_MS, check_interval, cycles_to_ms, ms_to_cycles, parse};
use crate::arch::percpu::{self, CpuLocal, MAX_CPUS};
use crate::arch::{cpu, time};
use crate::kprintln;
use crate::pv::tokens::{Overdue, Waiter};
use crate::pv::{kvm_apf, pnp};
use crate::sync::IrqMutex;

/// The deadline in milliseconds (0: off); [`UNSET`] until the first check reads the command
/// line or a self-test sets it.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(UNSET);
const UNSET: u64 = u64::MAX;
/// Each vCPU's tick count at which it checks next.
static NEXT_CHECK: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// Waits reported, on every vCPU.
static REPORTED: AtomicU64 = AtomicU64::new(0);
/// Checks that ran to the end (looked at both tables), on every vCPU.
static CHECKS: AtomicU64 = AtomicU64::new(0);
/// The TSC when the protocols came up at boot: reports say "since" from there (the TSC does
/// not start at 0 with every guest: under the host stub on PVM it goes on from the host's).
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// The last report.
static LAST: IrqMutex<Option<Report>> = IrqMutex::new(None);
/// Reports one check hands over at most (each is a console line, in a tick); more waiting
/// ones come at the next tick.
const BATCH: usize = 4;

/// Which table the token waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The page-not-present ring's: an event's token, or a #VE's `VePark` token.
    Ring,
    /// KVM's async page faults'.
    KvmApf,
}

/// One wait past its deadline, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub cpu: usize,
    pub protocol: Protocol,
    pub token: u32,
    /// The page's guest-physical address, 0 if the event named none (KVM's).
    pub gpa: u64,
    pub waiter: Waiter,
    /// When the wait began, in milliseconds since the boot brought the protocols up.
    pub since_ms: u64,
    /// How long it had waited when the check found it.
    pub waited_ms: u64,
    /// The deadline it went past.
    pub deadline_ms: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Protocol::Ring => "page-not-present ring",
            Protocol::KvmApf => "KVM async page fault",
        };
        write!(f, "deadline: vCPU {}: {protocol} token {:#x}, page ", self.cpu, self.token)?;
        match self.gpa {
            0 => f.write_str("unknown")?,
            gpa => write!(f, "{gpa:#x}")?,
        }
        write!(
            f,
            ", has waited {} ms, since {} ms after boot, past the deadline of {} ms (",
            self.waited_ms, self.since_ms, self.deadline_ms
        )?;
        match self.waiter {
            Waiter::Task(id) => write!(f, "task {} {:?}", id.slot, crate::task::name(id))?,
            Waiter::Halt => f.write_str("a context waiting in the HLT loop")?,
        }
        f.write_str("); reported only, the wait goes on")
    }
}

/// Runs the check on every vCPU's tick (the boot vCPU's call sets it for all), and notes the
/// boot's TSC.
pub fn init() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    time::set_check_hook(on_tick);
}

/// The deadline in milliseconds, 0 when the check is off.
pub fn deadline_ms() -> u64 {
    match DEADLINE_MS.load(Ordering::Relaxed) {
        UNSET => from_cmdline(),
        ms => ms,
    }
}

/// The first check's: the deadline the command line sets (a bad value is reported, once, and
/// the default used).
#[cold]
#[inline(never)]
fn from_cmdline() -> u64 {
    let value = crate::boot::info::get().cmdline.get(CMDLINE_KEY);
    let (ms, bad) = match parse(value) {
        Ok(ms) => (ms.min(UNSET - 1), false),
        Err(BadValue) => (DEFAULT_MS, true),
    };
    // Another vCPU's first check, or a self-test, may have set it meanwhile: theirs stands.
    if DEADLINE_MS.compare_exchange(UNSET, ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() && bad {
        kprintln!(
            "deadline: warning: {CMDLINE_KEY}={} is neither milliseconds nor off; using {DEFAULT_MS} ms",
            value.unwrap_or("")
        );
    }
    DEADLINE_MS.load(Ordering::Relaxed)
}

/// Sets the deadline to `ms` milliseconds (0: off) from now on; every vCPU checks at its next
/// tick. Returns the deadline before.
pub fn set_ms(ms: u64) -> u64 {
    let before = deadline_ms();
    DEADLINE_MS.store(ms.min(UNSET - 1), Ordering::Relaxed);
    for cpu in 0..MAX_CPUS {
        NEXT_CHECK.of(cpu).store(0, Ordering::Relaxed);
    }
    before
}

/// Waits reported so far, on every vCPU.
pub fn reported() -> u64 {
    REPORTED.load(Ordering::Acquire)
}

/// Checks that ran to the end so far, on every vCPU.
pub fn checks() -> u64 {
    CHECKS.load(Ordering::Acquire)
}

/// The last report, if any.
pub fn last() -> Option<Report> {
    *LAST.lock()
}

/// Every tick: a load and a compare, until the next check is due.
fn on_tick(now: u64) {
    if now >= NEXT_CHECK.get().load(Ordering::Relaxed) {
        check(now);
    }
}

/// Looks at this vCPU's two tables and reports each wait past the deadline not reported yet.
#[cold]
#[inline(never)]
fn check(now: u64) {
    let ms = deadline_ms();
    NEXT_CHECK.get().store(now + check_interval(ms, time::HZ), Ordering::Relaxed);
    if ms == 0 {
        return;
    }
    let khz = time::tsc_khz();
    let (tsc, deadline) = (cpu::rdtsc(), ms_to_cycles(ms, khz));
    let mut found: heapless::Vec<(Protocol, Overdue), BATCH> = heapless::Vec::new();
    pnp::take_overdue(tsc, deadline, |o| found.push((Protocol::Ring, o)).is_ok());
    kvm_apf::take_overdue(tsc, deadline, |o| found.push((Protocol::KvmApf, o)).is_ok());
    if found.is_full() {
        // More may be waiting: look again at the next tick.
        NEXT_CHECK.get().store(now + 1, Ordering::Relaxed);
    }
    let cpu = percpu::index();
    for (protocol, o) in found {
        let report = Report {
            cpu,
            protocol,
            token: o.token,
            gpa: o.gpa,
            waiter: o.waiter,
            since_ms: cycles_to_ms(o.since.saturating_sub(BOOT_TSC.load(Ordering::Relaxed)), khz),
            waited_ms: cycles_to_ms(tsc.saturating_sub(o.since), khz),
            deadline_ms: ms,
        };
        *LAST.lock() = Some(report);
        kprintln!("{report}");
        REPORTED.fetch_add(1, Ordering::Release);
    }
    CHECKS.fetch_add(1, Ordering::Release);
}
