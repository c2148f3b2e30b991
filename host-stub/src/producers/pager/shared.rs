//! What the vCPU thread, the fetchers and the poller share: the pager's state under one lock,
//! and the hand-off of a failure found off the vCPU thread to the vCPU thread, which stops the
//! guest with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::backing::{BackingStore, PageBuf};
use super::error::PagerError;
use super::fetch::Submitter;
use super::kvm_apf::{ApfVcpu, KernelTokens};
use super::kvm_apf_delivery::ApfCounters;
use super::latency::LatencyControl;
use super::poller;
use super::region::DemandRegion;
use super::registration::Registration;
use super::state::{PageIndex, PagerCore};
use super::timeline::PagerTimeline;
use super::ve::VeVcpu;
use crate::trace::{Args, Track};

/// The pager's state, under [`Shared`]'s lock.
#[derive(Debug)]
pub struct Inner {
    pub core: PagerCore,
    pub region: Option<DemandRegion>,
    /// Where pages come from (made page by page, when first needed) and evicted pages go.
    pub backing: BackingStore,
    /// Copies of pages being fetched (MMIO-completed stores go here).
    pub staging: HashMap<PageIndex, PageBuf>,
    pub vcpus: Vec<Registration>,
    pub ram: Option<GuestMemoryMmap>,
    /// Guest RAM as the memory map lists it: where the shared areas may be.
    pub ram_ranges: Vec<std::ops::Range<u64>>,
    pub vm: Option<Arc<VmFd>>,
    pub latency: LatencyControl,
    /// A failure found off the vCPU thread; the vCPU stops the guest with it.
    pub violation: Option<PagerError>,
    /// The vCPU thread, to kick out of KVM_RUN when a violation must stop the guest.
    pub vcpu_thread: Option<libc::pthread_t>,
    pub msi_refused: u64,
    /// Resolutions posted without the resolution interrupt: the guest drains its ring at every
    /// event, and their events were delivered after them (`abi::VECTORS_DRAIN_AT_EVENT`).
    pub resolutions_without_interrupt: u64,
    /// Pages whose fetch is done but whose completion waits until the guest has taken the
    /// events of every token waiting for them
    /// ([`pvagent_abi::pnp::ResolutionTiming::AfterEventTaken`]).
    pub held_back: Vec<PageIndex>,
    /// Arms the poller that completes them once their events are taken.
    pub held_back_poller: Option<poller::Arm>,
    /// The run's timeline: tokens, fetches and synchronous waits go on it.
    pub timeline: PagerTimeline,
    /// Each vCPU's side of KVM's async page fault ABI (served in the user-space modes).
    pub apf: Vec<ApfVcpu>,
    pub apf_counters: ApfCounters,
    /// The tokens of `kvm-apf-kernel` mode (the host stub's own numbers for KVM's).
    pub kernel_tokens: KernelTokens,
    /// Each vCPU thread's id (by vCPU index, once it entered the guest), to tell a vCPU's
    /// userfaultfd faults (it waits) from KVM's worker's (an async page fault) in
    /// `kvm-apf-kernel` mode, and whose they are.
    pub vcpu_tids: Vec<Option<u32>>,
    /// `kvm-apf-kernel` mode: the vCPUs waiting for a page inside KVM (vCPU, page), since when.
    pub kernel_sync_since: HashMap<(usize, PageIndex), std::time::Instant>,
    /// `kvm-apf-kernel` mode: faults of a vCPU on a page it already waited for (the same wait).
    pub kernel_repeat_faults: u64,
    /// `kvm-apf-kernel` mode: waits of vCPU threads for pages inside KVM (one per vCPU and
    /// page) when the run's time limit unregistered the region (which let those faults go on).
    pub vcpu_waits_released_at_time_limit: u64,
    /// `kvm-apf-kernel` mode: why unregistering the region at the time limit failed, if it did.
    pub unregister_at_time_limit_failed: Option<String>,
    /// Queues fetches on the fetcher threads (from any thread holding the lock).
    pub fetch: Option<Submitter>,
    /// Each vCPU's side of #VE (its VE area, test switches, unanswered #VEs).
    pub ve: Vec<VeVcpu>,
    /// #VE breaches to commit on purpose, per vCPU (`ve_breaks`), and those committed.
    pub ve_breaks: crate::producers::armed::Armed,
    pub ve_breaches: Vec<String>,
    /// Waits in the host for a page (the synchronous path, `VeSuspend`) that the run's time
    /// limit ended.
    pub waits_ended_at_time_limit: u64,
    /// Registrations refused (#GP) because their area would overlap another (`areas`).
    pub overlapping_areas_refused: u64,
    /// Pages made present so far (`access::fill`): tells a vCPU's retries whether a page was
    /// filled between two of its exits (`retries`).
    pub fills: u64,
    /// The pages vCPUs are waiting for in [`Shared::wait_fetched`] (once per waiting vCPU):
    /// their fetches are never held back (`held_back::hold_back`), as a waiting vCPU cannot take
    /// the event a held-back fetch would wait for.
    pub sync_waiting: Vec<PageIndex>,
    /// Each vCPU's rules armed to be broken on purpose (`Nr::HostBreak`).
    pub breaks: Vec<super::breaks::Armed>,
}

impl Inner {
    /// Guest RAM (where the rings and event areas are).
    pub fn ram(&self) -> Result<&GuestMemoryMmap, PagerError> {
        self.ram.as_ref().ok_or(PagerError::NotAttached)
    }

    /// The demand-paged region.
    pub fn region(&self) -> Result<&DemandRegion, PagerError> {
        self.region.as_ref().ok_or(PagerError::NotAttached)
    }

    /// The page of the region holding `gpa`, if any.
    pub fn page_of(&self, gpa: u64) -> Option<PageIndex> {
        self.region.as_ref().and_then(|r| r.page_of(gpa))
    }
}

/// The state and the signals between the threads.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    /// Signalled whenever a fetch completes (the synchronous path waits on it).
    pub fetched: Condvar,
    /// Set (under the lock) with `Inner::violation`, so that the vCPU need not take the lock
    /// before every entry to learn that there is none.
    pub violation_pending: AtomicBool,
    /// Set (under the lock) while `Inner::held_back` is not empty, for the same reason.
    pub held_back_pending: AtomicBool,
    /// Set (under the lock, `fetched` then signalled) when the run's time is up: a vCPU waiting
    /// in the host for a page stops waiting ([`Shared::wait_fetched`]).
    pub time_up: AtomicBool,
}

impl Shared {
    pub fn new(inner: Inner) -> Self {
        Self {
            inner: Mutex::new(inner),
            fetched: Condvar::new(),
            violation_pending: AtomicBool::new(false),
            held_back_pending: AtomicBool::new(false),
            time_up: AtomicBool::new(false),
        }
    }

    /// On a vCPU thread: blocks until `page` is no longer being fetched, and returns the lock
    /// with whether the wait ended because the run's time is up (then the page may still be on
    /// its way; the thread's next KVM_RUN is made to return at once, so the watchdog ends the
    /// run there and the guest does not run on).
    pub fn wait_fetched(&self, page: PageIndex) -> (MutexGuard<'_, Inner>, bool) {
        let mut inner = self.lock();
        inner.sync_waiting.push(page);
        // Held back since the exit that decided to wait: it would be for good.
        super::held_back::complete_held_back_now(self, &mut inner, page);
        let mut time_up = false;
        while matches!(inner.core.state(page), Some(super::state::PageState::Fetching { .. })) {
            if self.time_up.load(Ordering::Acquire) {
                // SAFETY: raising the kick signal (which has a handler, watchdog::install_handler)
                // on the calling thread, a vCPU thread, only marks its vCPU's next entry as an
                // immediate exit.
                unsafe { libc::raise(crate::watchdog::kick_signal()) };
                inner.waits_ended_at_time_limit += 1;
                time_up = true;
                break;
            }
            inner = self.fetched.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(at) = inner.sync_waiting.iter().position(|&p| p == page) {
            inner.sync_waiting.swap_remove(at);
        }
        (inner, time_up)
    }

    /// The synchronous path's wait (an access's, or `VeSuspend`'s), on the vCPU thread:
    /// [`Shared::wait_fetched`], the time waited added to `sync_wait_ns` and traced on the
    /// vCPU's track as `what`. `outcome` reads the page's end state under the wait's lock (with
    /// whether the time is up); `args` describes it for the trace.
    pub fn timed_wait<R>(
        &self,
        vcpu: usize,
        page: PageIndex,
        what: &'static str,
        outcome: impl FnOnce(&Inner, bool) -> R,
        args: impl FnOnce(&R) -> Args,
    ) -> R {
        let since = Instant::now();
        let (mut inner, time_up) = self.wait_fetched(page);
        let until = Instant::now();
        inner.core.counters.sync_wait_ns += (until - since).as_nanos() as u64;
        let result = outcome(&inner, time_up);
        let trace = inner.timeline.tracer().clone();
        drop(inner);
        trace.complete(Track::Vcpu(vcpu), what, since, until, || args(&result));
        result
    }

    /// The run's time is up: every vCPU waiting in [`Shared::wait_fetched`] stops waiting.
    pub fn end_waits(&self) {
        let guard = self.lock();
        self.time_up.store(true, Ordering::Release);
        drop(guard);
        self.fetched.notify_all();
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a failure found off the vCPU thread to the vCPU thread, which stops the guest with
    /// it (the first one found; later ones are consequences).
    pub fn report_violation(&self, inner: &mut Inner, problem: PagerError) {
        inner.violation.get_or_insert(problem);
        self.violation_pending.store(true, Ordering::Release);
        if let Some(thread) = inner.vcpu_thread {
            // SAFETY: the vCPU thread outlives the fetchers and the poller (they are joined when
            // the pager, owned by the VM that runs on that thread, is dropped); the kick signal
            // has a handler (watchdog::install_handler).
            unsafe { libc::pthread_kill(thread, crate::watchdog::kick_signal()) };
        }
    }

    /// On the vCPU thread, before an entry: the failure handed over, if any.
    pub fn take_violation(&self) -> Option<PagerError> {
        if !self.violation_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        self.violation_pending.store(false, Ordering::Relaxed);
        inner.violation.take()
    }
}
