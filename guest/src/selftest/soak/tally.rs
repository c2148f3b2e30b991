//! The soak's accounting: every vCPU's protocol counters summed (each vCPU's own, read by a
//! task placed there), beside the host's, and the check that they balance: each token the host
//! handed out resolved exactly once, and nothing rejected, spurious, stale or failed.

use core::fmt;

use pvagent_abi::pnp::HostCounter;

use super::host;
use crate::arch;
use crate::pv::{halt, kvm_apf, pnp, ve};
use crate::selftest::{Failure, fail};
use crate::sync::IrqGuard;
use crate::task::remote;

/// Collections a settling round makes before it gives up: each waits for a timer tick on every
/// vCPU, at which the host's pending events and interrupts are taken (what the host sent is
/// taken at the vCPU's next exit). What is still owed then is a fetch in flight (a CPL 0 access
/// on PVM completes before its page is in), milliseconds away: a few collections suffice, and
/// the bound (30 s at 100 Hz) only turns a token the host never resolves into a failure
/// instead of a hang, as the other self-tests' deadlines do.
const SETTLE_TRIES: u32 = 3_000;

/// The counters the soak checks, summed over the vCPUs, and the host's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ring_events: u64,
    pub ring_consumed: u64,
    pub ring_parked: u64,
    pub ring_halted: u64,
    pub apf_events: u64,
    pub apf_page_ready: u64,
    pub ve_taken: u64,
    pub ve_parked: u64,
    pub ve_suspended: u64,
    /// Tokens waited for, and resolutions kept for events not seen yet (both protocols).
    pub pending: u64,
    /// Of those, KVM "page ready"s kept for a "page not present" not seen yet.
    pub apf_kept: u64,
    /// Protocol errors the guest counted: rejected, spurious, stale, corrupt, bogus, failed.
    pub errors: u64,
    pub host_events: u64,
    pub host_resolved: u64,
    pub host_failed: u64,
    pub host_ve: u64,
    pub host_sync: u64,
    pub host_fetched: u64,
    /// "Page not present"s the host owes now, their "page ready" sent first.
    pub host_owed: u64,
}

/// One vCPU's counters, as its own task read them.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    pnp: pnp::Stats,
    pnp_pending: (usize, usize),
    apf: kvm_apf::Stats,
    apf_pending: (usize, usize),
}

static CPUS: [spin::Mutex<Option<Cpu>>; arch::MAX_CPUS] = [const { spin::Mutex::new(None) }; arch::MAX_CPUS];

/// Halts until this vCPU's next timer tick.
fn halt_until_next_tick() {
    let now = arch::ticks();
    let _irq = IrqGuard::new();
    halt::wait_until(|| (arch::ticks() != now).then_some(()));
}

/// Placed on each vCPU: lets a timer tick pass (what the host sent is taken meanwhile), then
/// records this vCPU's counters.
fn collect(cpu: u64) -> u64 {
    halt_until_next_tick();
    let counts =
        Cpu { pnp: pnp::stats(), pnp_pending: pnp::pending(), apf: kvm_apf::stats(), apf_pending: kvm_apf::pending() };
    *CPUS[cpu as usize].lock() = Some(counts);
    0
}

impl Tally {
    /// Every vCPU's counters and the host's, now.
    pub fn now(cpus: usize) -> Result<Self, Failure> {
        let mut t = Tally::default();
        for (cpu, slot) in CPUS.iter().enumerate().take(cpus) {
            let placed = remote::spawn_kernel_on(cpu, "soak-tally", collect, cpu as u64)
                .map_err(|e| fail(format_args!("placing the tally on vCPU {cpu}: {e:?}")))?;
            placed.join().map_err(|e| fail(format_args!("the tally on vCPU {cpu}: {e:?}")))?;
            let Some(c) = slot.lock().take() else {
                return Err(fail(format_args!("the tally on vCPU {cpu} recorded nothing")));
            };
            let (p, a, v) = (c.pnp, c.apf, ve::stats_of(cpu));
            t.ring_events += p.events;
            t.ring_consumed += p.consumed;
            t.ring_parked += p.slept;
            t.ring_halted += p.halted;
            t.apf_events += a.events;
            t.apf_page_ready += a.page_ready - a.wake_alls;
            t.ve_taken += v.taken;
            t.ve_parked += v.parked;
            t.ve_suspended += v.suspended;
            t.pending += (c.pnp_pending.0 + c.pnp_pending.1 + c.apf_pending.0 + c.apf_pending.1) as u64;
            t.apf_kept += c.apf_pending.1 as u64;
            t.errors += p.spurious + p.ring_corrupt + p.stale_wakes + p.tokens.rejected() + p.tokens.failed;
            t.errors += a.spurious + a.stale_wakes + a.bogus_flags + a.rejected_events + a.tokens.rejected();
            t.errors += v.failed
                + v.not_busy
                + v.unknown_reason
                + v.busy_violations
                + v.outside_region
                + v.bad_answers
                + v.token_rejected;
        }
        t.host_events = host(HostCounter::EventsDelivered)?;
        t.host_resolved = host(HostCounter::ResolvedRetry)? + host(HostCounter::ResolvedFailed)?;
        t.host_failed = host(HostCounter::ResolvedFailed)?;
        t.host_ve = host(HostCounter::VeDelivered)?;
        t.host_sync = host(HostCounter::SyncWaits)?;
        t.host_fetched = host(HostCounter::PagesFetched)?;
        t.host_owed = host(HostCounter::KvmApfOwed)?;
        Ok(t)
    }

    /// The counters once every vCPU has taken everything the host sent it, checked against
    /// `start`: the guest's events equal the host's, every resolution the host wrote was
    /// consumed, no token is left waiting or kept (but for a KVM "page ready" kept for a "page
    /// not present" the host owes), and no protocol error was counted.
    pub fn settled(cpus: usize, start: &Tally) -> Result<Self, Failure> {
        let mut last = Tally::default();
        for _ in 0..SETTLE_TRIES {
            last = Tally::now(cpus)?;
            let d = last.since(start);
            let guest_resolved = d.ring_consumed + d.apf_page_ready;
            // A wake kept for a "page not present" the host still owes is no leak: the #PF comes
            // at the vCPU's next access that can carry it (the round may have made none).
            if d.pending == d.host_owed
                && d.apf_kept == d.host_owed
                && d.ring_events + d.apf_events == d.host_events
                && guest_resolved == d.host_resolved
                && d.ve_taken == d.host_ve
            {
                if d.errors != 0 || d.host_failed != 0 {
                    return Err(fail(format_args!(
                        "{} protocol errors counted by the guest, {} failed resolutions: {d}",
                        d.errors, d.host_failed
                    )));
                }
                return Ok(last);
            }
        }
        let d = last.since(start);
        Err(fail(format_args!(
            "the tokens do not balance after {SETTLE_TRIES} ticks on every vCPU: guest events {} + {} (ring, KVM) vs host {}, resolutions consumed {} + {} vs written {}, #VE {} vs {}, {} left waiting or kept ({} KVM wakes kept, {} page not present owed by the host)",
            d.ring_events,
            d.apf_events,
            d.host_events,
            d.ring_consumed,
            d.apf_page_ready,
            d.host_resolved,
            d.ve_taken,
            d.host_ve,
            d.pending,
            d.apf_kept,
            d.host_owed
        )))
    }

    /// The counts since `start` (`pending` as it is now).
    pub fn since(&self, start: &Tally) -> Tally {
        Tally {
            ring_events: self.ring_events - start.ring_events,
            ring_consumed: self.ring_consumed - start.ring_consumed,
            ring_parked: self.ring_parked - start.ring_parked,
            ring_halted: self.ring_halted - start.ring_halted,
            apf_events: self.apf_events - start.apf_events,
            apf_page_ready: self.apf_page_ready - start.apf_page_ready,
            ve_taken: self.ve_taken - start.ve_taken,
            ve_parked: self.ve_parked - start.ve_parked,
            ve_suspended: self.ve_suspended - start.ve_suspended,
            pending: self.pending,
            apf_kept: self.apf_kept,
            errors: self.errors - start.errors,
            host_events: self.host_events - start.host_events,
            host_resolved: self.host_resolved - start.host_resolved,
            host_failed: self.host_failed - start.host_failed,
            host_ve: self.host_ve - start.host_ve,
            host_sync: self.host_sync - start.host_sync,
            host_fetched: self.host_fetched - start.host_fetched,
            host_owed: self.host_owed,
        }
    }

    /// The protocol events in the total the soak runs to: events (ring, KVM's and #VE), the
    /// resolutions that ended them, and the accesses that waited synchronously.
    pub fn events(&self) -> u64 {
        self.ring_events + self.apf_events + self.ve_taken + self.ring_consumed + self.apf_page_ready + self.host_sync
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ring events {} ({} parked, {} HLT-loop waits), ring resolutions {}, KVM page not present {}, KVM page ready {}, #VE {} ({} parked, {} suspended), synchronous waits {}, pages fetched {}",
            self.ring_events,
            self.ring_parked,
            self.ring_halted,
            self.ring_consumed,
            self.apf_events,
            self.apf_page_ready,
            self.ve_taken,
            self.ve_parked,
            self.ve_suspended,
            self.host_sync,
            self.host_fetched
        )
    }
}
