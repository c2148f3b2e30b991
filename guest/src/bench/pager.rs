//! The host's demand pager as the benchmarks steer it: its region, its counters, and the
//! settings that force each page-not-present path (mode, latency, resolution timing).

use pvagent_abi::pnp::{HostCounter, HostMode, ResolutionTiming};
use pvagent_guest::arch::{self, time};
use pvagent_guest::pv::{halt, pnp};
use pvagent_guest::sync::IrqGuard;

use crate::{BenchError, Result};

/// The demand-paged region, when the host has one and the protocol is registered.
pub fn region() -> Result<pnp::Region> {
    match pnp::host_region() {
        Some((r, _)) if r.pages > 0 && pnp::registered_entries() > 0 => Ok(r),
        _ => Err(BenchError("needs the host stub's demand pager")),
    }
}

pub fn host_counter(c: HostCounter) -> Result<u64> {
    pnp::host_counter(c).map_err(|_| BenchError("the host did not report its pager counters"))
}

pub fn set_timing(timing: ResolutionTiming) -> Result<()> {
    pnp::set_timing(timing).map_err(|_| BenchError("cannot set the pager's resolution timing"))
}

pub fn set_mode(mode: HostMode) -> Result<()> {
    pnp::set_host_mode(mode).map_err(|_| BenchError("cannot set the pager's mode"))
}

pub fn set_latency(ns: u64) -> Result<()> {
    pnp::set_latency_ns(ns, ns).map_err(|_| BenchError("cannot set the pager's latency"))
}

/// Waits until this vCPU has taken every page-not-present event the host delivered since its
/// counter read `host_events`, so that the sample counts each one where it was handled. On PVM
/// an event pending behind a resolution is injected at the vCPU's next exit, which a task that
/// found its page present may not make; a HLT (or the hypercall reading the counter) is one.
/// The deadline only turns a lost event into an error; an event is microseconds away.
pub fn settle(guest_events: u64, host_events: u64) -> Result<()> {
    let target = guest_events + host_counter(HostCounter::EventsDelivered)? - host_events;
    let deadline = arch::ticks() + 10 * time::HZ;
    let taken = {
        let _irq = IrqGuard::new();
        halt::wait_until(|| {
            let events_now = pnp::stats().events;
            (events_now >= target || arch::ticks() > deadline).then_some(events_now >= target)
        })
    };
    if taken { Ok(()) } else { Err(BenchError("an event the host delivered was never taken")) }
}
