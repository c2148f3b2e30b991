//! The demand pager: produces page-not-present events for a region of guest memory that is
//! populated lazily from a backing store, and resolves them after a configurable latency,
//! through the protocol of its mode (`delivery`): the per-vCPU ring of seed 001 (`ring`), or
//! KVM's async page fault ABI, served by the host stub itself (`kvm-apf`: `kvm_apf`,
//! `kvm_apf_delivery`) or by KVM (`kvm-apf-kernel`: `kernel_faults`, where everything below
//! about exits does not apply: the region is backed so that KVM's own path takes the access).
//!
//! An access to an absent page never blocks in the kernel (the page is inaccessible and
//! userfaultfd-missing in SIGBUS mode, see `region`); it returns to the host in one of three
//! forms, all handled:
//! - **KVM_EXIT_MEMORY_FAULT** (VMX/SVM KVM): the instruction has not run. The host delivers
//!   the event (or waits for the page) and re-enters; the guest retries the access later.
//! - **KVM_EXIT_MMIO** (PVM, guest CPL 0): the instruction is being emulated and must be
//!   completed before the vCPU runs again. The host completes that one access from the page's
//!   true contents at once (from the staging copy of the page being fetched; a store goes into
//!   that copy), then delivers the event; the latency applies to making the page present and
//!   posting the resolution. The guest's task waits as long as on VMX, one instruction later.
//! - **EFAULT from KVM_RUN without memory-fault information** (PVM, guest CPL 3): the
//!   instruction has not run, as on VMX, but KVM does not say where it faulted: the host
//!   decodes the instruction at RIP (`guest_insn`) to find the page, then proceeds as on VMX.
//! - **An emulation failure** (PVM, guest CPL 0, a LOCKed read-modify-write): its load came as
//!   an MMIO exit (above), but KVM cannot carry out the locked write to a closed page. The
//!   instruction has not run; the host decodes it, makes its pages present on the synchronous
//!   path and re-enters, and the instruction runs natively.
//!
//! Every decision is made by plain code (`state`, `tokens`, `latency`); the other files do the
//! memory and KVM work it calls for: `access` (the vCPU thread's path), `ring` (the shared areas
//! and their interrupts), `completion` (a fetch's start and end), `held_back` (resolution
//! timing), `controls` (hypercalls), `end_report` (the counters and lines at the end). This file
//! is the `ExitHandler` that hands exits to them.

pub mod access;
pub mod areas;
pub mod backing;
pub mod breaks;
pub mod completion;
pub mod config;
pub mod controls;
pub mod delivery;
pub mod end_report;
pub mod error;
pub mod fetch;
pub mod held_back;
pub mod kernel_faults;
pub mod kvm_apf;
pub mod kvm_apf_delivery;
pub mod latency;
pub mod poller;
pub mod region;
pub mod registration;
pub mod retries;
pub mod ring;
pub mod shared;
pub mod state;
pub mod timeline;
pub mod tokens;
pub mod uffd;
pub mod ve;
pub mod ve_breaks;
pub mod ve_delivery;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pvagent_abi::cpuid::{self as abi_cpuid, Features};
use pvagent_abi::hypercall::Nr;
use pvagent_abi::kvm_apf as apf_abi;
use pvagent_abi::pnp::{self as abi, HostMode, PageBehaviour};
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RESERVED};
use vm_memory::{Bytes, GuestAddress};

use self::access::{Access, Decoded, event_window_open};
use self::backing::BackingStore;
use self::config::{ConfigError, PagerConfig};
use self::error::PagerError;
use self::fetch::FetchPool;
use self::kernel_faults::FaultReader;
use self::kvm_apf::{ApfVcpu, KernelTokens};
use self::latency::LatencyControl;
use self::poller::Poller;
use self::region::{DemandRegion, Gate, PAGE};
use self::registration::{Registration, is_protocol_msr};
use self::retries::PresentRetries;
use self::ring::{deliver_resolved, observe_tail};
use self::shared::{Inner, Shared};
use self::state::{PageState, PagerCore};
use self::timeline::PagerTimeline;
use self::ve::VeVcpu;
use crate::cpuid::CpuidTable;
use crate::error::{Error, Result};
use crate::handler::{
    AttachCtx, EntryPending, ExitHandler, Handled, HypercallAnswer, MsrAnswer, PageEventInjection, PageEventInjector,
    Report, Unblock, VcpuCtx,
};
use crate::layout::classify::MemoryState;
use crate::memory_fault::{FaultAccess, MemoryFault};

const NAME: &str = "pager";

/// The demand pager producer.
pub struct Pager {
    config: PagerConfig,
    shared: Arc<Shared>,
    fetchers: Option<FetchPool>,
    /// Watches for the guest taking the events that held-back fetches wait for.
    poller: Option<Poller>,
    /// `kvm-apf-kernel` mode: reads the region's faults.
    fault_reader: Option<FaultReader>,
    /// Accesses that reached the host as a bare EFAULT (PVM, guest CPL 3) and were decoded.
    efaults: u64,
    /// Accesses that reached the host as MMIO exits (a SIGBUS page under PVM's emulation,
    /// guest CPL 0).
    mmio_accesses: u64,
    /// Accesses that reached the host as `KVM_EXIT_MEMORY_FAULT` (VMX and SVM KVM).
    memory_fault_exits: u64,
    /// Instructions KVM could not emulate (PVM, guest CPL 0: a LOCKed read-modify-write) whose
    /// pages of the region the pager made present.
    unemulated: u64,
    /// Per vCPU: the emulation failures the pager served, so that the same failure right at
    /// the next entry is not served again (`retries`).
    unemulated_retries: Vec<PresentRetries>,
    /// Exits decoded to find their page (a bare EFAULT, a memory fault spanning pages) whose
    /// pages of the region were all present by the decode (a fill on another thread came
    /// between the exit and the decode): retried, not counted as accesses.
    present_at_decode: u64,
    /// Per vCPU: those retries (`retries`).
    present_at_decode_retries: Vec<PresentRetries>,
    /// Whether the fetchers know vCPU 0's thread (to kick it) yet.
    vcpu_thread_known: bool,
    /// Per vCPU: whether the fault reader knows its thread's id yet.
    vcpu_tid_known: Vec<bool>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Pager {
    /// A pager for `config` (checked; the backing image, if any, is opened).
    pub fn new(config: PagerConfig) -> Result<Self, PagerError> {
        config.validate()?;
        let mut core = PagerCore::new(config.pages(), config.mode);
        for &page in &config.fail_pages {
            core.set_behaviour(page, PageBehaviour::Fail);
        }
        let backing = match &config.image {
            Some(path) => BackingStore::image(config.region_gpa, config.region_bytes(), path)
                .map_err(|source| PagerError::OpenImage { path: path.clone(), source })?,
            None => BackingStore::pattern(config.region_gpa),
        };
        let backing = if config.versioned { backing.versioned() } else { backing };
        let backing = match config.stale_versions_from {
            Some(n) => backing.stale_from(n),
            None => backing,
        };
        let inner = Inner {
            core,
            region: None,
            backing,
            staging: HashMap::new(),
            vcpus: vec![Registration::default()],
            ram: None,
            ram_ranges: Vec::new(),
            vm: None,
            latency: LatencyControl::new(config.latency, config.seed),
            violation: None,
            vcpu_thread: None,
            msi_refused: 0,
            resolutions_without_interrupt: 0,
            held_back: Vec::new(),
            held_back_poller: None,
            timeline: PagerTimeline::default(),
            apf: vec![ApfVcpu::new(0)],
            apf_counters: Default::default(),
            kernel_tokens: KernelTokens::default(),
            vcpu_tids: Vec::new(),
            kernel_sync_since: HashMap::new(),
            kernel_repeat_faults: 0,
            vcpu_waits_released_at_time_limit: 0,
            unregister_at_time_limit_failed: None,
            fetch: None,
            ve: vec![VeVcpu::default()],
            ve_breaks: Default::default(),
            ve_breaches: Vec::new(),
            waits_ended_at_time_limit: 0,
            overlapping_areas_refused: 0,
            fills: 0,
            sync_waiting: Vec::new(),
            breaks: vec![Default::default()],
        };
        Ok(Self {
            config,
            shared: Arc::new(Shared::new(inner)),
            fetchers: None,
            poller: None,
            fault_reader: None,
            efaults: 0,
            mmio_accesses: 0,
            memory_fault_exits: 0,
            unemulated: 0,
            unemulated_retries: Vec::new(),
            present_at_decode: 0,
            present_at_decode_retries: Vec::new(),
            vcpu_thread_known: false,
            vcpu_tid_known: Vec::new(),
        })
    }

    /// Whether KVM serves the ABI itself (and the host stub only supplies pages).
    fn kernel_serves(&self) -> bool {
        self.config.mode == HostMode::KvmApfKernel
    }
}

/// Tokens handed out and not yet consumed, over every vCPU and protocol (in `kvm-apf-kernel`
/// mode: the async page faults whose pages are not in yet).
pub(super) fn outstanding(inner: &Inner) -> usize {
    let ring: usize = inner.vcpus.iter().filter_map(|r| r.pool.as_ref()).map(|p| p.outstanding()).sum();
    let apf: usize = inner.apf.iter().map(ApfVcpu::outstanding).sum();
    let kernel = if inner.core.mode == HostMode::KvmApfKernel { inner.core.waiting_tokens() } else { 0 };
    ring + apf + kernel
}

/// What the benchmark device reaches the pager through ([`PageEventInjector`]): events for
/// present pages, their resolutions written first.
#[derive(Debug)]
struct ResolvedEvents {
    shared: Arc<Shared>,
}

impl PageEventInjector for ResolvedEvents {
    fn inject_resolved(&self, ctx: &VcpuCtx<'_>, page: u64) -> Result<PageEventInjection> {
        let (gpa, active, ring_mode) = {
            let inner = self.shared.lock();
            let region = inner.region()?;
            if page >= region.pages() {
                return Ok(PageEventInjection::OutsideRegion);
            }
            if inner.core.state(page) != Some(&PageState::Present) {
                return Ok(PageEventInjection::NotDeliverable);
            }
            let gpa = region.gpa() + page * PAGE as u64;
            (gpa, inner.vcpus.get(ctx.index).and_then(Registration::active), inner.core.mode == HostMode::Ring)
        };
        // As on the access path, the vCPU's state is read without the lock (the vCPU is stopped).
        let window_open = match active {
            Some(a) if ring_mode => event_window_open(ctx, a.event_vector)?,
            _ => return Ok(PageEventInjection::NotDeliverable),
        };
        let mut inner = self.shared.lock();
        Ok(if deliver_resolved(&mut inner, ctx.index, window_open, gpa)? {
            PageEventInjection::Delivered
        } else {
            PageEventInjection::NotDeliverable
        })
    }
}

impl ExitHandler for Pager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        let gate = if self.kernel_serves() { Gate::KvmAsync } else { Gate::Closed };
        let region =
            DemandRegion::new(self.config.region_gpa, self.config.pages(), gate).map_err(PagerError::CreateRegion)?;
        if !self.kernel_serves() {
            // "Page not present" carries its token as the #PF's CR2, set at delivery.
            if ctx.kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_EXCEPTION_PAYLOAD)) <= 0 {
                return Err(Error::MissingCapability("KVM_CAP_EXCEPTION_PAYLOAD"));
            }
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_EXCEPTION_PAYLOAD,
                args: [1, 0, 0, 0],
                ..Default::default()
            };
            ctx.vm.enable_cap(&cap).map_err(PagerError::EnableExceptionPayload)?;
        }
        let uffd = region.uffd().map_err(|e| PagerError::CreateRegion(region::RegionError::Userfaultfd(e)))?;
        let slot = ctx.take_slot();
        region.add_memslot(ctx.vm, slot).map_err(|e| Error::SetMemoryRegion(slot, e))?;
        // In the layout too, so that memslot updates may change this slot (its GPAs stay: a
        // split or a merge) while fetches are in flight. The mapping lives in `shared` from here
        // on, never replaced, and the backing keeps `shared`.
        let (host, bytes) = region.host_range();
        let keep: Arc<dyn Send + Sync> = self.shared.clone();
        // SAFETY: `host..host + bytes` is the region's own mapping, kept by `keep` (above).
        let backing = unsafe { crate::layout::table::Backing::new(host, bytes, keep) };
        ctx.layout.adopt(slot, crate::layout::table::Region { gpa: self.config.region_gpa, bytes, backing, flags: 0 });
        ctx.memmap.push(HvmMemmapEntry {
            addr: self.config.region_gpa,
            size: self.config.pages() * PAGE as u64,
            type_: MEMMAP_TYPE_RESERVED,
            reserved: 0,
        });
        {
            let mut inner = self.shared.lock();
            inner.region = Some(region);
            inner.ram = Some(ctx.ram.clone());
            inner.ram_ranges = ctx.ram_ranges();
            inner.vm = Some(ctx.vm.clone());
            inner.timeline = PagerTimeline::new(ctx.trace.clone());
            // Each vCPU registers its own ring and event area, and its own KVM async-PF area.
            inner.vcpus.resize_with(ctx.vcpus, Registration::default);
            inner.apf = (0..ctx.vcpus).map(|i| ApfVcpu::new(i as u32)).collect();
            inner.ve = vec![VeVcpu::default(); ctx.vcpus];
            inner.breaks = vec![Default::default(); ctx.vcpus];
            inner.vcpu_tids = vec![None; ctx.vcpus];
            self.vcpu_tid_known = vec![false; ctx.vcpus];
            self.unemulated_retries = vec![PresentRetries::default(); ctx.vcpus];
            self.present_at_decode_retries = vec![PresentRetries::default(); ctx.vcpus];
        }
        let shared = self.shared.clone();
        let complete: fetch::Complete = Arc::new(move |page| completion::complete_fetch(&shared, page));
        let workers = NonZeroUsize::new(self.config.fetchers)
            .ok_or(ConfigError::Fetchers { fetchers: self.config.fetchers })
            .map_err(PagerError::from)?;
        let fetchers = FetchPool::start(workers, complete).map_err(PagerError::StartFetchers)?;
        self.shared.lock().fetch = Some(fetchers.submitter());
        self.fetchers = Some(fetchers);
        if self.kernel_serves() {
            self.fault_reader =
                Some(FaultReader::start(self.shared.clone(), uffd).map_err(PagerError::StartFaultReader)?);
        }
        let shared = self.shared.clone();
        let check: poller::Check = Box::new(move || held_back::complete_taken_fetches(&shared, &mut shared.lock()));
        let poller =
            Poller::start("pnp-held-back", held_back::POLL_INTERVAL, check).map_err(PagerError::StartPoller)?;
        self.shared.lock().held_back_poller = Some(poller.arm_handle());
        self.poller = Some(poller);
        Ok(())
    }

    fn cpuid(&self, table: &mut CpuidTable) {
        // #VE's MSR and requests are served in every mode (#VE itself is raised in mode `ve`).
        table.entry(abi_cpuid::LEAF_INFO, 0).ebx |=
            Features::PAGE_NOT_PRESENT | Features::PNP_DRAIN_AT_EVENT | Features::VE;
        let base = table.entry(abi_cpuid::LEAF_BASE, 0);
        base.eax = base.eax.max(abi::LEAF_PNP);
        let leaf = table.entry(abi::LEAF_PNP, 0);
        leaf.eax = (self.config.region_gpa >> 21) as u32;
        leaf.ebx = self.config.pages() as u32;
        leaf.ecx = abi::MAX_RING_ENTRIES;
        leaf.edx = self.config.mode as u32;
        // KVM's async page faults: served by the host stub (which offers neither delivery to a
        // nested hypervisor nor anything else of KVM's it does not implement), or by KVM as
        // its own leaf says.
        if !self.kernel_serves() && table.get(abi_cpuid::KVM_LEAVES_RELOCATED, 0).is_some() {
            let kvm = table.entry(abi_cpuid::KVM_LEAVES_RELOCATED + apf_abi::FEATURES_LEAF_OFFSET, 0);
            kvm.eax = (kvm.eax | apf_abi::FEATURE_ASYNC_PF | apf_abi::FEATURE_ASYNC_PF_INT)
                & !apf_abi::FEATURE_ASYNC_PF_VMEXIT;
        }
    }

    fn intercepted_msrs(&self) -> Vec<u32> {
        // KVM knows these: without the filter it would answer them, and deliver async page
        // faults of its own besides the host stub's.
        if self.kernel_serves() {
            Vec::new()
        } else {
            vec![apf_abi::MSR_ASYNC_PF_EN, apf_abi::MSR_ASYNC_PF_INT, apf_abi::MSR_ASYNC_PF_ACK]
        }
    }

    fn unblocker(&self) -> Option<Unblock> {
        // A vCPU waiting in the host for a page (the synchronous path; `VeSuspend`, served in
        // every mode, `kvm-apf-kernel` too) stops waiting at the run's time limit, and its next
        // entry ends at once.
        // A vCPU waiting inside KVM on a userfaultfd fault (`kvm-apf-kernel`) takes no signal:
        // at the run's time limit, the region stops being tracked, every waiting fault goes on
        // (reading zeros), and the vCPU sees the watchdog's signal at its next entry.
        let kernel_region = if self.kernel_serves() {
            let inner = self.shared.lock();
            inner.region.as_ref().and_then(|region| Some((region.host_range(), region.uffd().ok()?)))
        } else {
            None
        };
        let shared = Arc::clone(&self.shared);
        Some(Box::new(move || {
            if let Some(((start, len), uffd)) = &kernel_region {
                let unregistered = uffd.unregister(*start, *len);
                // What the unregistering released: the waits of vCPU threads for pages in KVM
                // (the end-to-end test checks that its vCPU was one), and whether it failed (a
                // vCPU waiting in the region may then not see the limit).
                let mut inner = shared.lock();
                inner.vcpu_waits_released_at_time_limit = inner.kernel_sync_since.len() as u64;
                inner.unregister_at_time_limit_failed = unregistered.err().map(|e| e.to_string());
            }
            shared.end_waits();
        }))
    }

    fn has_before_entry(&self) -> bool {
        true
    }

    fn entry_pending(&self) -> Option<EntryPending> {
        // After a vCPU's first entry (its thread's ids, below), the hook has work only for a
        // held-back fetch an event was taken for, or a violation found off the vCPU threads.
        let shared = Arc::clone(&self.shared);
        Some(Arc::new(move || {
            shared.held_back_pending.load(Ordering::Acquire) || shared.violation_pending.load(Ordering::Acquire)
        }))
    }

    fn before_entry(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<()> {
        // Called on each vCPU's first entry and when `entry_pending` says so: the lock only when
        // there is something to do.
        // vCPU 0's thread is the one the VM's caller runs, alive until after the pager stops
        // its threads: the one the fetchers and the poller may signal.
        if !self.vcpu_thread_known && ctx.index == 0 {
            // SAFETY: pthread_self has no preconditions.
            self.shared.lock().vcpu_thread = Some(unsafe { libc::pthread_self() });
            self.vcpu_thread_known = true;
        }
        // Each vCPU's thread id, for the fault reader to tell whose fault a fault is.
        if let Some(known @ false) = self.vcpu_tid_known.get_mut(ctx.index) {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            if let Some(slot) = self.shared.lock().vcpu_tids.get_mut(ctx.index) {
                *slot = Some(tid);
            }
            *known = true;
        }
        if self.shared.held_back_pending.load(Ordering::Acquire) {
            // The vCPU is about to run: an event it took since is worth acting on now, before
            // it runs on (the poller would do it too, a little later).
            let mut inner = self.shared.lock();
            held_back::complete_taken_fetches(&self.shared, &mut inner);
        }
        match self.shared.take_violation() {
            Some(problem) => Err(problem.into()),
            None => Ok(()),
        }
    }

    fn mmio_read(&mut self, ctx: &mut VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Result<Handled> {
        let handled = self.access(ctx, addr, None, Access::Read(data))?;
        self.mmio_accesses += u64::from(handled == Handled::Yes);
        Ok(handled)
    }

    fn mmio_write(&mut self, ctx: &mut VcpuCtx<'_>, addr: u64, data: &[u8]) -> Result<Handled> {
        let handled = self.access(ctx, addr, None, Access::Write(data))?;
        self.mmio_accesses += u64::from(handled == Handled::Yes);
        Ok(handled)
    }

    fn memory_fault(&mut self, ctx: &mut VcpuCtx<'_>, fault: &MemoryFault) -> Result<Handled> {
        // The region is ordinary shared memory: a private access is not the pager's. A range of
        // one page names the page; a larger one (a huge mapping KVM tried) does not say which of
        // its pages the guest touched, which the instruction does. The access kind comes from
        // the fault's flags where the kernel sets them.
        if fault.private() {
            return Ok(Handled::No);
        }
        let handled = match fault.page() {
            Some(gpa) => {
                let kind = fault.access();
                let (reads, writes) = (kind == FaultAccess::Read, kind == FaultAccess::Write);
                self.access(ctx, gpa, None, Access::Retry { reads, writes })?
            }
            // Several pages, or an empty or wrapping range (naming nothing).
            None => match self.decoded_access(ctx)? {
                Decoded::Access(handled) => handled,
                Decoded::PresentRetry => return Ok(Handled::Yes),
                Decoded::NotTheRegions => Handled::No,
            },
        };
        self.memory_fault_exits += u64::from(handled == Handled::Yes);
        Ok(handled)
    }

    fn memory_state(&self, gpa: u64) -> MemoryState {
        let inner = self.shared.lock();
        let Some(page) = inner.page_of(gpa) else { return MemoryState::NotPaged };
        // A page owed a "page not present" is present by its state only until its memory is
        // filled: an access to it must reach the pager, which fills it.
        let unfilled = inner.apf.iter().any(|v| v.owes_fill_of(page));
        match inner.core.state(page) {
            Some(PageState::Present) if !unfilled => MemoryState::Present,
            _ => MemoryState::Absent,
        }
    }

    fn efault(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        Ok(match self.decoded_access(ctx)? {
            Decoded::Access(handled) => {
                self.efaults += u64::from(handled == Handled::Yes);
                handled
            }
            Decoded::PresentRetry => Handled::Yes,
            Decoded::NotTheRegions => Handled::No,
        })
    }

    fn debug(&mut self, ctx: &mut VcpuCtx<'_>, exit: &kvm_bindings::kvm_debug_exit_arch) -> Result<Handled> {
        let hit = ve_delivery::breakpoint_hit(&mut self.shared.lock(), ctx, exit.pc)?;
        Ok(if hit { Handled::Yes } else { Handled::No })
    }

    fn emulation_failure(&mut self, ctx: &mut VcpuCtx<'_>, insn: &[u8]) -> Result<Handled> {
        self.unemulated_access(ctx, insn)
    }

    fn rdmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32) -> Result<MsrAnswer> {
        if index == pvagent_abi::ve::MSR_VE_INFO {
            return Ok(ve_delivery::msr(&mut self.shared.lock(), ctx.index, None));
        }
        if ApfVcpu::is_msr(index) && !self.kernel_serves() {
            return Ok(kvm_apf_delivery::msr(&mut self.shared.lock(), ctx.index, index, None)?);
        }
        if !is_protocol_msr(index) {
            return Ok(MsrAnswer::NotMine);
        }
        let inner = self.shared.lock();
        Ok(inner.vcpus.get(ctx.index).map_or(MsrAnswer::Fault, |r| MsrAnswer::Value(r.read(index))))
    }

    fn wrmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32, value: u64) -> Result<MsrAnswer> {
        // One lock section from the overlap check to the write that enables the area: two
        // vCPUs registering overlapping areas at once must not both pass the check before
        // either is enabled.
        let mut inner = self.shared.lock();
        // An area of pvagent's own in the bytes of another (any vCPU's, any protocol's): #GP.
        if let Some((kind, bytes)) = areas::enabled_by(index, value)
            && areas::overlapped(&areas::enabled(&inner), ctx.index, kind, &bytes).is_some()
        {
            inner.overlapping_areas_refused += 1;
            return Ok(MsrAnswer::Fault);
        }
        if index == pvagent_abi::ve::MSR_VE_INFO {
            if ve_breaks::msr_write_faults(&mut inner, ctx.index, value) {
                return Ok(MsrAnswer::Fault);
            }
            return Ok(ve_delivery::msr(&mut inner, ctx.index, Some(value)));
        }
        if ApfVcpu::is_msr(index) && !self.kernel_serves() {
            return Ok(kvm_apf_delivery::msr(&mut inner, ctx.index, index, Some(value))?);
        }
        if !is_protocol_msr(index) {
            return Ok(MsrAnswer::NotMine);
        }
        breaks::restore_head(&mut inner, ctx.index)?;
        let before = inner.vcpus.get(ctx.index).and_then(Registration::active);
        if let Some(active) = before {
            // Account for consumed resolutions first, so "no token outstanding" is current.
            observe_tail(&mut inner, ctx.index, active)?;
        }
        let inner = &mut *inner;
        let Some(reg) = inner.vcpus.get_mut(ctx.index) else { return Ok(MsrAnswer::Fault) };
        // The ring's `head` and `tail` are checked when it is enabled: atomic loads, as the guest
        // could be writing them.
        let mem = ctx.mem;
        let read_u32 = |gpa: u64| mem.load::<u32>(GuestAddress(gpa), Ordering::Acquire).ok();
        let answer = match reg.write(index, value, &inner.ram_ranges, read_u32) {
            Ok(()) => MsrAnswer::Value(value),
            Err(_) => MsrAnswer::Fault,
        };
        if let Some(a) = before.filter(|_| reg.active().is_none()) {
            // This write unregistered the protocol: a breach on purpose may follow it.
            breaks::at_unregistration(inner, ctx.index, a)?;
        }
        Ok(answer)
    }

    fn hypercall(&mut self, ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        let Ok(nr) = Nr::try_from(nr) else { return Ok(None) };
        {
            let mut inner = self.shared.lock();
            // The true ring `head` back after a breach on purpose hid it: the guest took its
            // interrupt before this call's `out`.
            breaks::restore_head(&mut inner, ctx.index)?;
            // The ring's and KVM's rules here, #VE's in `ve_control`: each answers only its own.
            if nr == Nr::HostBreak
                && let Some(answer) = breaks::host_break(&mut inner, ctx, args[0])?
            {
                return Ok(Some(answer));
            }
        }
        if let Some(answer) = self.ve_control(ctx, nr, args)? {
            return Ok(answer);
        }
        Ok(self.control(ctx, nr, args)?)
    }

    fn page_event_injector(&self) -> Option<Box<dyn PageEventInjector>> {
        Some(Box::new(ResolvedEvents { shared: self.shared.clone() }))
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        // Stop the fetchers, the poller and the fault reader first: nothing changes after this.
        self.fetchers = None;
        self.poller = None;
        self.fault_reader = None;
        // A failure a fetcher handed over after the guest's last entry, which no entry took.
        let mut problem = self.shared.take_violation();
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        // Every token the guest consumed is accounted for: the `tail` it wrote last, checked
        // like every other (a bad one written just before the guest stopped is still a
        // violation, and the cause of any token that looks leaked).
        for vcpu in 0..inner.vcpus.len() {
            if let Some(a) = inner.vcpus[vcpu].active()
                && let Err(e) = observe_tail(&mut inner, vcpu, a)
            {
                problem.get_or_insert(e);
            }
        }
        let (outstanding, fetching) = self.report(&inner, report);
        ve_breaks::finish(&mut inner, report);
        if let Some(problem) = problem {
            return Err(problem.into());
        }
        if outstanding > 0 || fetching > 0 {
            return Err(PagerError::LeakedTokens { outstanding, fetching }.into());
        }
        Ok(())
    }
}
