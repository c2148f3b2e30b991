//! The pager's hypercalls (`pvagent_abi::hypercall::Nr::Pnp*`): the controls self-tests and
//! benchmarks use to force a path (mode, latency, per-page behaviour, resolution timing, held
//! pages and their release, eviction) and the counters they read back. A bad argument is a
//! status for the guest, never an error of the run; a ring the guest broke, or the host failing
//! to carry a call out (taking an evicted page's memory back), is the run's error, the same the
//! access path raises.

use std::time::Duration;

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::pnp::{HostCounter, HostMode, PageBehaviour, ResolutionTiming};

use super::Pager;
use super::access::settle_owed;
use super::completion::{complete_fetch, submit};
use super::config::Latency;
use super::error::PagerError;
use super::registration::Registration;
use super::ring::observe_tail;
use super::shared::Inner;
use super::state::Release;
use super::ve::VeVcpu;
use crate::handler::{HypercallAnswer, VcpuCtx};

impl Pager {
    /// Carries out hypercall `nr` if it is one of the pager's.
    pub(super) fn control(&self, ctx: &VcpuCtx<'_>, nr: Nr, args: [u64; 4]) -> Result<HypercallAnswer, PagerError> {
        if nr == Nr::PnpRelease {
            return self.release(args[0], args[1]).map(Some);
        }
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        Ok(Some(match nr {
            Nr::PnpSetMode => match HostMode::try_from(args[0] as u32) {
                // How the region is backed decides between KVM serving it and the host stub:
                // a run in `kvm-apf-kernel` mode stays in it, and no other run enters it.
                Ok(mode)
                    if args[0] <= u64::from(u32::MAX)
                        && (mode == HostMode::KvmApfKernel) == (inner.core.mode == HostMode::KvmApfKernel) =>
                {
                    inner.core.set_mode(mode);
                    if mode != HostMode::Ve {
                        // No request will answer a #VE any more: none holds a fetch back.
                        inner.ve.iter_mut().for_each(VeVcpu::forget_unanswered);
                    }
                    Ok([0; 2])
                }
                _ => Err(Status::InvalidArgument),
            },
            Nr::PnpSetLatency => {
                let latency = Latency { min: Duration::from_nanos(args[0]), max: Duration::from_nanos(args[1]) };
                if latency.is_valid() {
                    inner.latency.set_by_guest(latency);
                    Ok([0; 2])
                } else {
                    Err(Status::InvalidArgument)
                }
            }
            Nr::PnpSetPage => match (inner.page_of(args[0]), PageBehaviour::try_from(args[1])) {
                // KVM serving the region cannot be made to fail a page (`config`).
                (Some(_), Ok(PageBehaviour::Fail)) if inner.core.mode == HostMode::KvmApfKernel => {
                    Err(Status::InvalidArgument)
                }
                (Some(page), Ok(behaviour)) => {
                    inner.core.set_behaviour(page, behaviour);
                    Ok([0; 2])
                }
                _ => Err(Status::InvalidArgument),
            },
            Nr::PnpEvict => evict(inner, args[0], args[1])?,
            Nr::PnpSetTiming => match ResolutionTiming::try_from(args[0]) {
                Ok(timing) => {
                    inner.core.timing = timing;
                    Ok([0; 2])
                }
                Err(_) => Err(Status::InvalidArgument),
            },
            Nr::PnpStats => {
                // Outstanding tokens are counted as of the guest's latest `tail`; a `tail` the
                // host refuses stops the run here as anywhere else.
                if let Some(a) = inner.vcpus.get(ctx.index).and_then(Registration::active) {
                    observe_tail(inner, ctx.index, a)?;
                }
                match HostCounter::try_from(args[0]) {
                    Ok(counter) => Ok([counter_value(inner, counter), 0]),
                    Err(_) => Err(Status::InvalidArgument),
                }
            }
            _ => return Ok(None),
        }))
    }

    /// `PnpRelease`: starts the fetches of the held pages among `count` pages from `gpa`, all
    /// in this one exit (with no latency they complete before the vCPU runs again). Returns how
    /// many were held.
    fn release(&self, gpa: u64, count: u64) -> Result<Result<[u64; 2], Status>, PagerError> {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let region = inner.region()?;
        let Some(pages) = region.span(gpa, count.max(1)) else { return Ok(Err(Status::InvalidArgument)) };
        let (mut released, mut now) = (0, Vec::new());
        for page in pages {
            match inner.core.release(page) {
                Release::Start(_) => {
                    released += 1;
                    if submit(inner, page) {
                        now.push(page);
                    }
                }
                Release::NotHeld => {}
                // Within the region, checked above.
                Release::OutOfRange => return Ok(Err(Status::InvalidArgument)),
            }
        }
        drop(guard);
        for page in now {
            complete_fetch(&self.shared, page);
        }
        Ok(Ok([released, 0]))
    }
}

/// The value of a counter the guest asks for.
fn counter_value(inner: &Inner, counter: HostCounter) -> u64 {
    let c = inner.core.counters;
    match counter {
        HostCounter::EventsDelivered => c.events_delivered,
        HostCounter::ResolvedRetry => c.resolved_retry,
        HostCounter::ResolvedFailed => c.resolved_failed,
        HostCounter::SyncWaits => c.sync_waits,
        HostCounter::Outstanding => super::outstanding(inner) as u64,
        HostCounter::PagesFetched => c.pages_fetched,
        HostCounter::ResolvedBeforeEvent => c.resolved_before_event,
        HostCounter::SyncWaitNanos => c.sync_wait_ns,
        HostCounter::VeDelivered => c.ve_delivered,
        HostCounter::VeBusyWaits => c.ve_busy_waits,
        HostCounter::VeSuspends => c.ve_suspends,
        HostCounter::VeParks => c.ve_parks,
        HostCounter::KvmApfOwed => inner.apf.iter().filter(|v| v.owes()).count() as u64,
    }
}

/// Makes `count` pages from `gpa` absent again, each page's memory first and its state only
/// then (`PagerCore::evict_range`); refuses the whole request, changing nothing, if one is in
/// flight or the range leaves the region. The host failing to take a page's memory back is
/// the run's error: that page stays present, as far as the host could restore it.
fn evict(inner: &mut Inner, gpa: u64, count: u64) -> Result<Result<[u64; 2], Status>, PagerError> {
    // A page whose "page not present" is still owed is present by its state: by its memory too
    // from here on, so that it can be saved.
    settle_owed(inner)?;
    let Inner { core, region, backing, staging, .. } = inner;
    let region = region.as_mut().ok_or(PagerError::NotAttached)?;
    let Some(pages) = region.span(gpa, count) else { return Ok(Err(Status::InvalidArgument)) };
    let evicted = core.evict_range(pages, |page, was_present| {
        let saved = region.evict(page, was_present).map_err(|source| PagerError::EvictPage { page, source })?;
        if let Some(contents) = saved {
            backing.save(page, contents);
        }
        // A copy staged for an earlier fetch is stale: the next fetch starts from the backing
        // store, which now holds what the page held.
        staging.remove(&page);
        Ok::<(), PagerError>(())
    })?;
    Ok(evicted.map(|()| [count, 0]).map_err(|_| Status::InvalidArgument))
}
