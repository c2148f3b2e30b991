//! The pager controls the page-not-present tests force their paths with: resolution timing,
//! held pages, a runner that stays runnable while tasks park, and waits for events the host
//! delivered; each undoes itself when dropped, so a failing test leaves the next the defaults.

use super::*;

/// The pager's latency and resolution timing for one test; the timing goes back to
/// `WhenReady` when this is dropped, so a failing test leaves the next one the default.
pub(super) struct Pacing;

impl Drop for Pacing {
    fn drop(&mut self) {
        if let Err(e) = pnp::set_timing(ResolutionTiming::WhenReady) {
            kprintln!("pnp: cannot restore the resolution timing: {e:?}");
        }
    }
}

/// Sets a fixed latency of `latency_us` and `timing` for the rest of the test.
pub(super) fn pacing(latency_us: u64, timing: ResolutionTiming) -> Result<Pacing, Failure> {
    latency(latency_us, latency_us)?;
    pnp::set_timing(timing).map_err(|e| fail(format_args!("set resolution timing {timing:?}: {e:?}")))?;
    Ok(Pacing)
}

/// Pages whose fetch waits until the test releases them; released when dropped, so that a
/// failing test leaves no task parked for ever.
pub(in crate::selftest) struct Held(heapless::Vec<u64, 8>);

impl Held {
    pub(in crate::selftest) fn new() -> Self {
        Held(heapless::Vec::new())
    }

    /// Holds the page at `gpa` (not touched yet).
    pub(in crate::selftest) fn hold(&mut self, gpa: u64) -> TestResult {
        pnp::set_page_behaviour(gpa, PageBehaviour::Held).map_err(|e| fail(format_args!("hold {gpa:#x}: {e:?}")))?;
        self.0.push(gpa).map_err(|_| fail(format_args!("more than 8 held pages")))
    }

    /// Releases every held page: their fetches start now. Returns how many the host still
    /// held (in sync mode an access that waited has released its page already).
    pub(in crate::selftest) fn release_all(&mut self) -> Result<u64, Failure> {
        let mut released = 0;
        while let Some(gpa) = self.0.pop() {
            released += pnp::release(gpa, 1).map_err(|e| fail(format_args!("release {gpa:#x}: {e:?}")))?;
        }
        Ok(released)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for &gpa in &self.0 {
            let _ = pnp::release(gpa, 1);
        }
    }
}

/// Yields until `tasks` tasks of this vCPU wait on tokens. The caller stays runnable while it
/// yields, so a task that takes an event for a page that is held (or whose resolution is held
/// back) always has another task to switch to and parks: the path is taken by construction,
/// and the bound on yields is reached only if it was not.
pub(in crate::selftest) fn yield_until_parked(tasks: usize) -> TestResult {
    const YIELDS: u32 = 1000;
    for _ in 0..YIELDS {
        if pnp::pending().0 >= tasks {
            return Ok(());
        }
        task::yield_now();
    }
    Err(fail(format_args!(
        "the park path was not taken: {} of {tasks} tasks parked on a token after {YIELDS} yields",
        pnp::pending().0
    )))
}

/// Halts until this vCPU has taken every page-not-present event the host delivered since it
/// counted `host_events` (its `EventsDelivered`, read before the accesses). An event comes with
/// interrupt semantics: on PVM the second of two pending interrupts is injected at the vCPU's
/// next exit rather than at the IRET of the first, and a HLT (or the hypercall that reads the
/// counter) is such an exit. The deadline only turns a lost event into a failure instead of a
/// hang; an event is microseconds away.
pub(super) fn await_events(guest_events: u64, host_events: u64) -> Result<pnp::Stats, Failure> {
    let delivered = counter(HostCounter::EventsDelivered)? - host_events;
    let target = guest_events + delivered;
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (pnp::stats().events >= target || crate::arch::ticks() > deadline).then_some(()));
    }
    let stats = pnp::stats();
    if stats.events < target {
        return Err(fail(format_args!(
            "an event the host delivered was never taken: {} of {delivered} after ten seconds",
            stats.events - guest_events
        )));
    }
    Ok(stats)
}

/// Waits until the host has no token of this protocol out: a CPL 0 access on PVM completes at
/// once (KVM_EXIT_MMIO answered with the data) and its event may be taken after it
/// (docs/abi.md), so a test that takes the areas away after such an access waits for its token
/// first, as the protocol's rule requires. Each counter read is an exit, at which a pending event
/// is delivered; between reads the vCPU halts until the next interrupt. The deadline only turns
/// a lost resolution into a failure instead of a hang.
pub(in crate::selftest) fn await_no_token_outstanding() -> Result<(), Failure> {
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    loop {
        let outstanding = counter(HostCounter::Outstanding)?;
        if outstanding == 0 {
            return Ok(());
        }
        if crate::arch::ticks() > deadline {
            return Err(fail(format_args!("{outstanding} tokens still outstanding at the host after ten seconds")));
        }
        let (now, events) = (crate::arch::ticks(), pnp::stats().events);
        let _irq = IrqGuard::new();
        halt::wait_until(|| (crate::arch::ticks() != now || pnp::stats().events != events).then_some(()));
    }
}

/// Re-registers the default ring when dropped, so a failing test leaves the protocol usable.
pub(super) struct RestoreRing;

impl Drop for RestoreRing {
    fn drop(&mut self) {
        if let Err(e) = pnp::register(pnp::DEFAULT_RING_ENTRIES) {
            kprintln!("pnp: cannot restore the default ring: {e:?}");
        }
    }
}
