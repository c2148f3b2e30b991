//! The demand pager: produces page-not-present events (seed 001) for a region of guest memory
//! that is populated lazily from a backing store, and resolves them through the per-vCPU ring
//! after a configurable latency.
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
//!
//! The glue here does memory and KVM work; every decision is made by `state::PagerCore`.

pub mod backing;
pub mod config;
pub mod fetch;
pub mod poller;
pub mod region;
pub mod registration;
pub mod state;
pub mod uffd;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use pvagent_abi::cpuid::{self as abi_cpuid, Features};
use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::pnp::{
    self as abi, HostCounter, HostMode, PageBehaviour, PageNotPresentData, Resolution, ResolutionTiming, Token,
};
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RESERVED};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::backing::BackingStore;
use self::config::PagerConfig;
use self::fetch::FetchPool;
use self::poller::Poller;
use self::region::{DemandRegion, PAGE};
use self::registration::{Registration, interrupt_deliverable, is_protocol_msr, processor_priority_class};
use self::state::{Decision, PageIndex, PageState, PagerCore, Release};
use crate::cpuid::CpuidTable;
use crate::error::{Error, Result};
use crate::handler::{AttachCtx, ExitHandler, Handled, MsrAnswer, Report, VcpuCtx};
use crate::memory;
use crate::trace::{Arg, Tracer, Track};

const NAME: &str = "pager";

/// How often the poller looks for events the guest took while their resolutions are held back.
/// It only sets how soon the host notices; the guest's path does not depend on it.
const HELD_BACK_POLL_INTERVAL: Duration = Duration::from_micros(20);

fn failure(message: impl Into<String>) -> Error {
    Error::Producer { producer: NAME, message: message.into() }
}

/// How an access reached the host.
enum Access<'a> {
    /// KVM_EXIT_MMIO read: fill `data` before the vCPU runs again.
    Read(&'a mut [u8]),
    /// KVM_EXIT_MMIO write of `data`.
    Write(&'a [u8]),
    /// KVM_EXIT_MEMORY_FAULT, or a bare EFAULT: the instruction has not run and will be retried.
    Retry,
}

/// State shared between the vCPU thread and the fetchers.
struct Inner {
    core: PagerCore,
    region: Option<DemandRegion>,
    /// Where pages come from (made page by page, when first needed) and evicted pages go.
    backing: BackingStore,
    /// Copies of pages being fetched (MMIO-completed stores go here).
    staging: HashMap<PageIndex, Box<[u8; PAGE]>>,
    vcpus: Vec<Registration>,
    ram: Option<GuestMemoryMmap>,
    ram_size: u64,
    vm: Option<Arc<VmFd>>,
    latency_ns: (u64, u64),
    rng: u64,
    /// A protocol violation found off the vCPU thread; the vCPU stops the guest with it.
    violation: Option<String>,
    /// The vCPU thread, to kick out of KVM_RUN when a violation must stop the guest.
    vcpu_thread: Option<libc::pthread_t>,
    msi_refused: u64,
    /// Resolutions whose page is ready but whose event the guest has not taken yet
    /// ([`ResolutionTiming::AfterEventTaken`]): (vCPU, token, result).
    held_back: Vec<(usize, Token, u32)>,
    /// Arms the poller that writes them once their events are taken.
    held_back_poller: Option<poller::Arm>,
    /// The run's timeline: tokens, fetches and synchronous waits go on it.
    trace: Tracer,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled whenever a fetch completes (the synchronous path waits on it).
    fetched: Condvar,
    /// Set (under the lock) with `Inner::violation`, so that the vCPU need not take the lock
    /// before every entry to learn that there is none.
    violation_pending: AtomicBool,
    /// Set (under the lock) while `Inner::held_back` is not empty, for the same reason.
    held_back_pending: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The demand pager producer.
pub struct Pager {
    config: PagerConfig,
    shared: Arc<Shared>,
    fetchers: Option<FetchPool>,
    /// Watches for the guest taking events whose resolutions are held back.
    poller: Option<Poller>,
    /// Accesses that reached the host as a bare EFAULT (PVM, guest CPL 3) and were decoded.
    efaults: u64,
    /// Whether the fetchers know the vCPU thread (to kick it) yet.
    vcpu_thread_known: bool,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Pager {
    /// A pager for `config` (checked).
    pub fn new(config: PagerConfig) -> Result<Self> {
        config.validate().map_err(failure)?;
        let mut core = PagerCore::new(config.pages(), config.mode);
        for &page in &config.fail_pages {
            core.set_behaviour(page, PageBehaviour::Fail);
        }
        let backing = match &config.image {
            Some(path) => BackingStore::image(config.region_gpa, path)
                .map_err(|e| failure(format!("cannot read the backing image {}: {e}", path.display())))?,
            None => BackingStore::pattern(config.region_gpa),
        };
        let inner = Inner {
            core,
            region: None,
            backing,
            staging: HashMap::new(),
            vcpus: vec![Registration::default()],
            ram: None,
            ram_size: 0,
            vm: None,
            latency_ns: (config.latency.min.as_nanos() as u64, config.latency.max.as_nanos() as u64),
            rng: config.seed | 1,
            violation: None,
            vcpu_thread: None,
            msi_refused: 0,
            held_back: Vec::new(),
            held_back_poller: None,
            trace: Tracer::off(),
        };
        Ok(Self {
            config,
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                fetched: Condvar::new(),
                violation_pending: AtomicBool::new(false),
                held_back_pending: AtomicBool::new(false),
            }),
            fetchers: None,
            poller: None,
            efaults: 0,
            vcpu_thread_known: false,
        })
    }

    /// Starts fetching `page` after a latency drawn from the configured range. A zero latency
    /// means the page is available now: returns true, and the caller completes the fetch itself
    /// (once it has released the lock) instead of handing it to a fetcher thread.
    #[must_use]
    fn submit(&self, inner: &mut Inner, page: PageIndex) -> bool {
        let (min, max) = inner.latency_ns;
        let nanos = if max > min {
            // xorshift64: a reproducible spread of latencies for a given seed.
            inner.rng ^= inner.rng << 13;
            inner.rng ^= inner.rng >> 7;
            inner.rng ^= inner.rng << 17;
            min + inner.rng % (max - min + 1)
        } else {
            min
        };
        let gpa = self.config.region_gpa + page * PAGE as u64;
        inner.trace.fetch_submitted(page, gpa, Duration::from_nanos(nanos));
        if nanos == 0 {
            return true;
        }
        if let Some(f) = &self.fetchers {
            f.submit(page, Duration::from_nanos(nanos));
        }
        false
    }

    /// Handles one access to `gpa` in the region (`gva` when the host knows it).
    fn access(&mut self, ctx: &mut VcpuCtx<'_>, gpa: u64, gva: Option<u64>, access: Access<'_>) -> Result<Handled> {
        let vcpu = ctx.index;
        let (page, offset, active) = {
            let inner = self.shared.lock();
            let Some(page) = inner.region.as_ref().and_then(|r| r.page_of(gpa)) else {
                return Ok(Handled::No);
            };
            let offset = (gpa % PAGE as u64) as usize;
            (page, offset, inner.vcpus.get(vcpu).and_then(Registration::active))
        };
        // The interrupt window is read before taking the lock: these ioctls do not touch the
        // pager's state, and the vCPU cannot change while it is stopped here.
        let window_open = match active {
            Some(a) if self.shared.lock().core.mode == HostMode::Ring => event_window_open(ctx, a.event_vector)?,
            _ => false,
        };

        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let retry = matches!(access, Access::Retry);

        let area_free = match active {
            Some(a) if window_open => {
                let ram = inner.ram.as_ref().ok_or_else(|| failure("not attached"))?;
                let inuse: u32 = ram
                    .load(GuestAddress(a.data_gpa + abi::DATA_INUSE_OFFSET), Ordering::Acquire)
                    .map_err(|e| failure(format!("reading the event area: {e}")))?;
                if inuse != 0 && retry {
                    // An event is pending and the vCPU can take it: re-entering delivers it before
                    // the instruction is retried (KVM injects pending interrupts at entry). On PVM
                    // a second pending interrupt waits for the next exit; this is that exit.
                    inner.core.counters.retries_for_pending_event += 1;
                    return Ok(Handled::Yes);
                }
                inuse == 0
            }
            _ => false,
        };
        apply_to_page(inner, page, offset, access)?;
        if let (Some(a), true) = (active, area_free) {
            observe_tail(inner, vcpu, a)?;
        }
        let pool = if area_free { inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()) } else { None };
        let decision = inner.core.on_access(vcpu, page, pool);
        let mut complete_now = false;
        match decision {
            Decision::Continue => {}
            Decision::PresentNow => fill(inner, page)?,
            Decision::Deliver { token, fetch } => {
                if fetch.is_some() {
                    complete_now = self.submit(inner, page);
                }
                deliver_event(inner, vcpu, token, gpa, gva)?;
            }
            Decision::DeliverResolved { token, result, make_present } => {
                if make_present {
                    fill(inner, page)?;
                }
                post_resolution(inner, vcpu, token, result).map_err(failure)?;
                deliver_event(inner, vcpu, token, gpa, gva)?;
            }
            Decision::Wait { fetch } => {
                let trace = inner.trace.clone();
                if fetch.is_some() && self.submit(inner, page) {
                    drop(guard);
                    complete_fetch(&self.shared, page);
                } else {
                    drop(guard);
                }
                let waited_since = Instant::now();
                let outcome = self.wait_for(page, gpa);
                let waited_until = Instant::now();
                self.shared.lock().core.counters.sync_wait_ns += (waited_until - waited_since).as_nanos() as u64;
                trace.complete(Track::Vcpu(vcpu), "pnp synchronous wait", waited_since, waited_until, || {
                    vec![("page", Arg::Uint(page)), ("gpa", Arg::Hex(gpa))]
                });
                return outcome;
            }
            Decision::StopFailedPage => {
                return Err(failure(format!(
                    "the guest accessed page {gpa:#x}, which failed, when no page-not-present event could be delivered"
                )));
            }
        }
        drop(guard);
        if complete_now {
            complete_fetch(&self.shared, page);
        }
        Ok(Handled::Yes)
    }

    /// `PnpRelease`: starts the fetch of a held page.
    fn release(&self, gpa: u64) -> Result<[u64; 2], Status> {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let page = inner.region.as_ref().and_then(|r| r.page_of(gpa)).ok_or(Status::InvalidArgument)?;
        match inner.core.release(page) {
            Release::Start(_) => {
                let complete_now = self.submit(inner, page);
                drop(guard);
                if complete_now {
                    complete_fetch(&self.shared, page);
                }
                Ok([1, 0])
            }
            Release::NotHeld => Ok([0; 2]),
            Release::OutOfRange => Err(Status::InvalidArgument),
        }
    }

    /// The synchronous path: block the vCPU until the page's fetch is over.
    fn wait_for(&self, page: PageIndex, gpa: u64) -> Result<Handled> {
        let mut inner = self.shared.lock();
        while matches!(inner.core.state(page), Some(PageState::Fetching { .. })) {
            inner = self.shared.fetched.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        if inner.core.state(page) == Some(&PageState::Failed) {
            return Err(failure(format!(
                "page {gpa:#x} failed while the vCPU waited for it synchronously: the guest cannot be told"
            )));
        }
        Ok(Handled::Yes)
    }
}

/// Whether the vCPU could take the event interrupt now.
fn event_window_open(ctx: &VcpuCtx<'_>, vector: u8) -> Result<bool> {
    let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
    let events = ctx.vcpu.get_vcpu_events().map_err(Error::GetVcpuEvents)?;
    let lapic = ctx.vcpu.get_lapic().map_err(Error::GetLapic)?;
    let reg = |offset: usize| -> u32 {
        let b = &lapic.regs[offset..offset + 4];
        u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
    };
    let isr = std::array::from_fn(|i| reg(0x100 + i * 0x10));
    let ppr_class = processor_priority_class(reg(0x80), isr);
    Ok(interrupt_deliverable(regs.rflags, events.interrupt.shadow, ppr_class, vector))
}

/// Completes an emulated access against the page's true contents: the present page, the
/// staging copy of a page being fetched, or nothing for a page that fails (loads read all-ones,
/// stores are dropped: the access's task is told its page failed and ends before it runs on).
fn apply_to_page(inner: &mut Inner, page: PageIndex, offset: usize, access: Access<'_>) -> Result<()> {
    let Some(region) = inner.region.as_ref() else { return Ok(()) };
    let (data_read, data_write): (Option<&mut [u8]>, Option<&[u8]>) = match access {
        Access::Retry => return Ok(()),
        Access::Read(d) => (Some(d), None),
        Access::Write(d) => (None, Some(d)),
    };
    let len = data_read.as_ref().map(|d| d.len()).or(data_write.map(|d| d.len())).unwrap_or(0);
    if offset + len > PAGE {
        // An access crossing into the next page: KVM splits those; keep to this page.
        return Ok(());
    }
    let source = match inner.core.state(page) {
        Some(PageState::Present) => PageSource::Present,
        Some(PageState::Failed) | None => PageSource::Poison,
        Some(PageState::Fetching { failing: true, .. }) => PageSource::Poison,
        Some(PageState::Fetching { failing: false, .. }) => PageSource::Staging,
        Some(PageState::Absent) if inner.core.next_fetch_fails(page) => PageSource::Poison,
        Some(PageState::Absent) => PageSource::Staging,
    };
    match source {
        PageSource::Present => {
            if let Some(d) = data_read {
                region.read_present(page, offset, d);
            }
            if let Some(d) = data_write {
                region.write_present(page, offset, d);
            }
        }
        PageSource::Staging => {
            let staged = match inner.staging.entry(page) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(backing_page(&inner.backing, page)?),
            };
            if let Some(d) = data_read {
                d.copy_from_slice(&staged[offset..offset + d.len()]);
            }
            if let Some(d) = data_write {
                staged[offset..offset + d.len()].copy_from_slice(d);
            }
        }
        PageSource::Poison => {
            if let Some(d) = data_read {
                d.fill(0xFF);
            }
        }
    }
    Ok(())
}

fn backing_page(backing: &BackingStore, page: PageIndex) -> Result<backing::PageBuf> {
    backing.page(page).map_err(|e| failure(format!("reading page {page} of the backing image: {e}")))
}

enum PageSource {
    Present,
    Staging,
    Poison,
}

/// Makes `page` present from its staging copy (or the backing store).
fn fill(inner: &mut Inner, page: PageIndex) -> Result<()> {
    let region = inner.region.as_ref().ok_or_else(|| failure("not attached"))?;
    let contents = match inner.staging.remove(&page) {
        Some(staged) => staged,
        None => backing_page(&inner.backing, page)?,
    };
    region.fill(page, &contents).map_err(|e| failure(format!("making page {page} present failed: {e}")))
}

/// Frees the tokens whose resolutions the guest has consumed.
fn observe_tail(inner: &mut Inner, vcpu: usize, a: registration::Active) -> Result<()> {
    let ram = inner.ram.as_ref().ok_or_else(|| failure("not attached"))?;
    let tail: u32 = ram
        .load(GuestAddress(a.ring_gpa + abi::ring_tail_offset(a.entries)), Ordering::Acquire)
        .map_err(|e| failure(format!("reading the ring tail: {e}")))?;
    if let Some(pool) = inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()) {
        pool.observe_tail(tail).map_err(|v| failure(v.to_string()))?;
    }
    Ok(())
}

fn signal(inner: &mut Inner, vcpu: usize, vector: u8) -> Result<()> {
    let vm = inner.vm.as_ref().ok_or_else(|| failure("not attached"))?;
    // Fixed delivery, physical destination = the vCPU's APIC ID (its index).
    let msi =
        kvm_msi { address_lo: 0xFEE0_0000 | ((vcpu as u32) << 12), data: u32::from(vector), ..Default::default() };
    let delivered = vm.signal_msi(msi).map_err(Error::SignalMsi)?;
    if delivered <= 0 {
        inner.msi_refused += 1;
    }
    Ok(())
}

/// Fills the event area (`inuse` last, with release) and raises the event interrupt.
fn deliver_event(inner: &mut Inner, vcpu: usize, token: Token, gpa: u64, gva: Option<u64>) -> Result<()> {
    let a =
        inner.vcpus.get(vcpu).and_then(Registration::active).ok_or_else(|| failure("event without registration"))?;
    let ram = inner.ram.as_ref().ok_or_else(|| failure("not attached"))?;
    let flags = if gva.is_some() { abi::FLAG_GVA_VALID } else { 0 };
    let data = PageNotPresentData { inuse: 0, token: token.0, gpa, gva: gva.unwrap_or(0), flags, reserved: 0 };
    memory::write_plain(ram, a.data_gpa, data).ok_or_else(|| failure("writing the event area"))?;
    ram.store(1u32, GuestAddress(a.data_gpa + abi::DATA_INUSE_OFFSET), Ordering::Release)
        .map_err(|e| failure(format!("writing the event area: {e}")))?;
    signal(inner, vcpu, a.event_vector)?;
    inner.trace.page_not_present_event(vcpu, token.0, gpa, gva);
    Ok(())
}

/// Writes `{result, token}` to the vCPU's ring, publishes `head` with release, and raises the
/// resolution interrupt.
fn post_resolution(inner: &mut Inner, vcpu: usize, token: Token, result: u32) -> Result<(), String> {
    let a = inner.vcpus.get(vcpu).and_then(Registration::active).ok_or("resolution without registration")?;
    observe_tail(inner, vcpu, a).map_err(|e| e.to_string())?;
    let pool = inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()).ok_or("resolution without a ring")?;
    let index = pool.post(token).map_err(|v| v.to_string())?;
    let head = pool.head();
    let ram = inner.ram.as_ref().ok_or("not attached")?;
    let entry_gpa = a.ring_gpa + u64::from(index) * std::mem::size_of::<Resolution>() as u64;
    memory::write_plain(ram, entry_gpa, Resolution { result, token: token.0 }).ok_or("writing a ring entry")?;
    ram.store(head, GuestAddress(a.ring_gpa + abi::ring_head_offset(a.entries)), Ordering::Release)
        .map_err(|e| format!("writing the ring head: {e}"))?;
    signal(inner, vcpu, a.resolution_vector).map_err(|e| e.to_string())?;
    inner.trace.page_not_present_resolution(vcpu, token.0, result);
    Ok(())
}

/// A fetch finished (on a fetcher thread): make the page present or failed, and resolve every
/// token waiting for it.
fn complete_fetch(shared: &Shared, page: PageIndex) {
    let mut guard = shared.lock();
    let started = Instant::now();
    let inner = &mut *guard;
    let (result, waiters) = inner.core.on_fetch_done(page);
    let tokens = waiters.len();
    let outcome = if result == abi::RESULT_RETRY {
        fill(inner, page).map_err(|e| e.to_string())
    } else {
        inner.staging.remove(&page);
        Ok(())
    };
    let mut problem = outcome.err();
    for (vcpu, token) in waiters {
        if let Err(e) = resolve(shared, inner, vcpu, token, result) {
            problem.get_or_insert(e);
        }
    }
    if let Some(problem) = problem {
        report_violation(shared, inner, problem);
    }
    inner.trace.fetch_completed(page, result, tokens, started);
    drop(guard);
    shared.fetched.notify_all();
}

/// Hands a protocol violation found off the vCPU thread to the vCPU thread, which stops the
/// guest with it.
fn report_violation(shared: &Shared, inner: &mut Inner, problem: String) {
    inner.violation.get_or_insert(problem);
    shared.violation_pending.store(true, Ordering::Release);
    if let Some(thread) = inner.vcpu_thread {
        // SAFETY: the vCPU thread outlives the fetchers and the poller (they are joined when
        // the pager, owned by the VM that runs on that thread, is dropped); the kick signal has
        // a handler (watchdog::install_handler).
        unsafe { libc::pthread_kill(thread, crate::watchdog::kick_signal()) };
    }
}

/// Writes the resolution of `token` now, or holds it back until the guest has taken the
/// token's event when the timing asks for that.
fn resolve(shared: &Shared, inner: &mut Inner, vcpu: usize, token: Token, result: u32) -> Result<(), String> {
    if inner.core.timing == ResolutionTiming::AfterEventTaken && !event_taken(inner, vcpu, token)? {
        inner.core.counters.resolutions_held_back += 1;
        inner.held_back.push((vcpu, token, result));
        shared.held_back_pending.store(true, Ordering::Release);
        if let Some(arm) = &inner.held_back_poller {
            arm.arm();
        }
        return Ok(());
    }
    post_resolution(inner, vcpu, token, result)
}

/// Whether the guest has taken the event that carried `token`: its event area no longer holds
/// it (the host fills the area only when it is free, so a different token there means this one
/// was taken too).
fn event_taken(inner: &Inner, vcpu: usize, token: Token) -> Result<bool, String> {
    let Some(a) = inner.vcpus.get(vcpu).and_then(Registration::active) else {
        // Unregistered: nothing will take it; writing the resolution reports that.
        return Ok(true);
    };
    let ram = inner.ram.as_ref().ok_or("not attached")?;
    let inuse: u32 = ram
        .load(GuestAddress(a.data_gpa + abi::DATA_INUSE_OFFSET), Ordering::Acquire)
        .map_err(|e| format!("reading the event area: {e}"))?;
    if inuse == 0 {
        return Ok(true);
    }
    let held: u32 = ram
        .load(GuestAddress(a.data_gpa + abi::DATA_TOKEN_OFFSET), Ordering::Relaxed)
        .map_err(|e| format!("reading the event area: {e}"))?;
    Ok(held != token.0)
}

/// Writes every held-back resolution whose event the guest has taken since. Returns whether
/// some are still held back.
fn write_taken_resolutions(shared: &Shared, inner: &mut Inner) -> bool {
    let mut problem = None;
    let held = std::mem::take(&mut inner.held_back);
    for (vcpu, token, result) in held {
        match event_taken(inner, vcpu, token) {
            Ok(false) => inner.held_back.push((vcpu, token, result)),
            Ok(true) => {
                if let Err(e) = post_resolution(inner, vcpu, token, result) {
                    problem.get_or_insert(e);
                }
            }
            Err(e) => {
                problem.get_or_insert(e);
            }
        }
    }
    let pending = !inner.held_back.is_empty();
    shared.held_back_pending.store(pending, Ordering::Release);
    if let Some(problem) = problem {
        report_violation(shared, inner, problem);
    }
    pending
}

impl ExitHandler for Pager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        let region = DemandRegion::new(self.config.region_gpa, self.config.pages()).map_err(|e| {
            failure(format!(
                "cannot set up the demand-paged region with userfaultfd: {e} (the host stub needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)"
            ))
        })?;
        let slot = ctx.take_slot();
        region.add_memslot(ctx.vm, slot).map_err(|e| Error::SetMemoryRegion(slot, e))?;
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
            inner.ram_size = ctx.ram_size;
            inner.vm = Some(ctx.vm.clone());
            inner.trace = ctx.trace.clone();
        }
        let shared = self.shared.clone();
        let complete: fetch::Complete = Arc::new(move |page| complete_fetch(&shared, page));
        self.fetchers = Some(
            FetchPool::start(self.config.fetchers, complete)
                .map_err(|e| failure(format!("cannot start the fetcher threads: {e}")))?,
        );
        let shared = self.shared.clone();
        let check: poller::Check = Box::new(move || write_taken_resolutions(&shared, &mut shared.lock()));
        let poller = Poller::start("pnp-held-back", HELD_BACK_POLL_INTERVAL, check)
            .map_err(|e| failure(format!("cannot start the held-back resolution poller: {e}")))?;
        self.shared.lock().held_back_poller = Some(poller.arm_handle());
        self.poller = Some(poller);
        Ok(())
    }

    fn cpuid(&self, table: &mut CpuidTable) {
        table.entry(abi_cpuid::LEAF_INFO, 0).ebx |= Features::PAGE_NOT_PRESENT;
        let base = table.entry(abi_cpuid::LEAF_BASE, 0);
        base.eax = base.eax.max(abi::LEAF_PNP);
        let leaf = table.entry(abi::LEAF_PNP, 0);
        leaf.eax = (self.config.region_gpa >> 21) as u32;
        leaf.ebx = self.config.pages() as u32;
        leaf.ecx = abi::MAX_RING_ENTRIES;
        leaf.edx = self.config.mode as u32;
    }

    fn has_before_entry(&self) -> bool {
        true
    }

    fn before_entry(&mut self, _ctx: &mut VcpuCtx<'_>) -> Result<()> {
        // Every entry comes through here: the lock only when there is something to do.
        if !self.vcpu_thread_known {
            // SAFETY: pthread_self has no preconditions.
            self.shared.lock().vcpu_thread = Some(unsafe { libc::pthread_self() });
            self.vcpu_thread_known = true;
        }
        if self.shared.held_back_pending.load(Ordering::Acquire) {
            // The vCPU is about to run: an event it took since is worth acting on now, before
            // it runs on (the poller would do it too, a little later).
            let mut inner = self.shared.lock();
            write_taken_resolutions(&self.shared, &mut inner);
        }
        if !self.shared.violation_pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut inner = self.shared.lock();
        self.shared.violation_pending.store(false, Ordering::Relaxed);
        match inner.violation.take() {
            Some(problem) => Err(failure(problem)),
            None => Ok(()),
        }
    }

    fn mmio_read(&mut self, ctx: &mut VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Result<Handled> {
        self.access(ctx, addr, None, Access::Read(data))
    }

    fn mmio_write(&mut self, ctx: &mut VcpuCtx<'_>, addr: u64, data: &[u8]) -> Result<Handled> {
        self.access(ctx, addr, None, Access::Write(data))
    }

    fn memory_fault(&mut self, ctx: &mut VcpuCtx<'_>, gpa: u64, _size: u64, _flags: u64) -> Result<Handled> {
        self.access(ctx, gpa, None, Access::Retry)
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        use pvagent_abi::port::{BENCH_INJECT, BenchInject};
        if port != BENCH_INJECT || data.len() != 4 {
            return Ok(Handled::No);
        }
        let Some((BenchInject::PageNotPresent, _, page)) = BenchInject::decode(crate::handler::out_word(data)) else {
            return Ok(Handled::No);
        };
        let mut inner = self.shared.lock();
        let gpa = self.config.region_gpa + u64::from(page) * PAGE as u64;
        if inner.core.state(u64::from(page)) == Some(&PageState::Present) {
            // Not deliverable now (window closed, area busy, no token) is not an error for a
            // benchmark: it simply measures a round trip without an event.
            let _ = deliver_resolved(&mut inner, ctx, gpa);
        }
        Ok(Handled::Yes)
    }

    fn efault(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        // Find which absent page of the region the instruction at RIP touches.
        let Ok(insn) = crate::guest_insn::at_rip(ctx.vcpu, ctx.mem) else {
            return Ok(Handled::No);
        };
        for operand in &insn.memory {
            let last = operand.linear + operand.size.max(1) - 1;
            for linear in [operand.linear, last] {
                let Some(gpa) = crate::guest_insn::translate(ctx.vcpu, linear) else { continue };
                let absent = {
                    let inner = self.shared.lock();
                    let page = inner.region.as_ref().and_then(|r| r.page_of(gpa));
                    page.is_some_and(|p| inner.core.state(p) != Some(&PageState::Present))
                };
                if absent {
                    self.efaults += 1;
                    return self.access(ctx, gpa, Some(linear), Access::Retry);
                }
            }
        }
        Ok(Handled::No)
    }

    fn rdmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32) -> Result<MsrAnswer> {
        if !is_protocol_msr(index) {
            return Ok(MsrAnswer::NotMine);
        }
        let inner = self.shared.lock();
        Ok(inner.vcpus.get(ctx.index).map_or(MsrAnswer::Fault, |r| MsrAnswer::Value(r.read(index))))
    }

    fn wrmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32, value: u64) -> Result<MsrAnswer> {
        if !is_protocol_msr(index) {
            return Ok(MsrAnswer::NotMine);
        }
        let mut inner = self.shared.lock();
        let ram_size = inner.ram_size;
        if let Some(active) = inner.vcpus.get(ctx.index).and_then(Registration::active) {
            // Account for consumed resolutions first, so "no token outstanding" is current.
            observe_tail(&mut inner, ctx.index, active)?;
        }
        let Some(reg) = inner.vcpus.get_mut(ctx.index) else { return Ok(MsrAnswer::Fault) };
        Ok(match reg.write(index, value, ram_size) {
            Ok(()) => MsrAnswer::Value(value),
            Err(_) => MsrAnswer::Fault,
        })
    }

    fn hypercall(&mut self, ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Option<Result<[u64; 2], Status>> {
        let nr = Nr::try_from(nr).ok()?;
        if nr == Nr::PnpRelease {
            return Some(self.release(args[0]));
        }
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let page_of = |inner: &Inner, gpa: u64| inner.region.as_ref().and_then(|r| r.page_of(gpa));
        Some(match nr {
            Nr::PnpSetMode => match HostMode::try_from(args[0] as u32) {
                Ok(mode) if args[0] <= u64::from(u32::MAX) => {
                    inner.core.mode = mode;
                    Ok([0; 2])
                }
                _ => Err(Status::InvalidArgument),
            },
            Nr::PnpSetLatency => {
                if args[0] > args[1] || args[1] > config::MAX_LATENCY.as_nanos() as u64 {
                    Err(Status::InvalidArgument)
                } else {
                    inner.latency_ns = (args[0], args[1]);
                    Ok([0; 2])
                }
            }
            Nr::PnpSetPage => match (page_of(inner, args[0]), PageBehaviour::try_from(args[1])) {
                (Some(page), Ok(behaviour)) => {
                    inner.core.set_behaviour(page, behaviour);
                    Ok([0; 2])
                }
                _ => Err(Status::InvalidArgument),
            },
            Nr::PnpEvict => evict(inner, args[0], args[1]),
            Nr::PnpSetTiming => match ResolutionTiming::try_from(args[0]) {
                Ok(timing) => {
                    inner.core.timing = timing;
                    Ok([0; 2])
                }
                Err(_) => Err(Status::InvalidArgument),
            },
            Nr::PnpStats => {
                if let Some(a) = inner.vcpus.get(ctx.index).and_then(Registration::active)
                    && observe_tail(inner, ctx.index, a).is_err()
                {
                    return Some(Err(Status::Unavailable));
                }
                match HostCounter::try_from(args[0]) {
                    Ok(counter) => Ok([counter_value(inner, counter), 0]),
                    Err(_) => Err(Status::InvalidArgument),
                }
            }
            _ => return None,
        })
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        // Stop the fetchers and the poller first: nothing changes after this.
        self.fetchers = None;
        self.poller = None;
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        for vcpu in 0..inner.vcpus.len() {
            if let Some(a) = inner.vcpus[vcpu].active() {
                let _ = observe_tail(inner, vcpu, a);
            }
        }
        let c = inner.core.counters;
        let outstanding: usize = inner.vcpus.iter().filter_map(|r| r.pool.as_ref()).map(|p| p.outstanding()).sum();
        let fetching = inner.core.fetching();
        for (key, value) in [
            ("events_delivered", c.events_delivered),
            ("resolved_retry", c.resolved_retry),
            ("resolved_failed", c.resolved_failed),
            ("resolved_before_event", c.resolved_before_event),
            ("sync_waits", c.sync_waits),
            ("sync_wait_ns", c.sync_wait_ns),
            ("pages_fetched", c.pages_fetched),
            ("pages_evicted", c.pages_evicted),
            ("outstanding", outstanding as u64),
            ("fetching", fetching as u64),
            ("msi_refused", inner.msi_refused),
            ("decoded_efaults", self.efaults),
            ("retries_for_pending_event", c.retries_for_pending_event),
            ("resolutions_held_back", c.resolutions_held_back),
            ("holds_released_by_sync_wait", c.holds_released_by_sync_wait),
        ] {
            report.counter(NAME, key, value);
        }
        report.line(format!(
            "pager: mode {:?} at exit, {} pages of {} KiB at {:#x}, latency {}",
            inner.core.mode,
            inner.core.len(),
            PAGE / 1024,
            self.config.region_gpa,
            self.config.latency
        ));
        report.line(format!(
            "pager: tokens: {} events delivered, {} resolved ({} retry, {} failed; {} before their event), {} synchronous waits, {} outstanding",
            c.events_delivered,
            c.resolved_retry + c.resolved_failed,
            c.resolved_retry,
            c.resolved_failed,
            c.resolved_before_event,
            c.sync_waits,
            outstanding
        ));
        report.line(format!(
            "pager: {} pages fetched ({} failed), {} evicted",
            c.pages_fetched, c.fetches_failed, c.pages_evicted
        ));
        if outstanding > 0 || fetching > 0 {
            return Err(failure(format!(
                "leaked tokens: {outstanding} outstanding and {fetching} page(s) still being fetched when the guest stopped"
            )));
        }
        Ok(())
    }
}

/// An event for a present page whose resolution is written first (the guest's no-wait path,
/// for benchmarks).
fn deliver_resolved(inner: &mut Inner, ctx: &VcpuCtx<'_>, gpa: u64) -> Result<(), Status> {
    let vcpu = ctx.index;
    let a = inner.vcpus.get(vcpu).and_then(Registration::active).ok_or(Status::Unavailable)?;
    if !event_window_open(ctx, a.event_vector).map_err(|_| Status::Unavailable)? {
        return Err(Status::Unavailable);
    }
    let ram = inner.ram.as_ref().ok_or(Status::Unavailable)?;
    let inuse: u32 = ram
        .load(GuestAddress(a.data_gpa + abi::DATA_INUSE_OFFSET), Ordering::Acquire)
        .map_err(|_| Status::Unavailable)?;
    observe_tail(inner, vcpu, a).map_err(|_| Status::Unavailable)?;
    let token = match inner.vcpus.get_mut(vcpu).and_then(|r| r.pool.as_mut()) {
        Some(pool) if inuse == 0 => pool.alloc().ok_or(Status::Unavailable)?,
        _ => return Err(Status::Unavailable),
    };
    let c = &mut inner.core.counters;
    c.events_delivered += 1;
    c.resolved_before_event += 1;
    c.resolved_retry += 1;
    post_resolution(inner, vcpu, token, abi::RESULT_RETRY).map_err(|_| Status::Unavailable)?;
    deliver_event(inner, vcpu, token, gpa, None).map_err(|_| Status::Unavailable)
}

fn counter_value(inner: &Inner, counter: HostCounter) -> u64 {
    let c = inner.core.counters;
    match counter {
        HostCounter::EventsDelivered => c.events_delivered,
        HostCounter::ResolvedRetry => c.resolved_retry,
        HostCounter::ResolvedFailed => c.resolved_failed,
        HostCounter::SyncWaits => c.sync_waits,
        HostCounter::Outstanding => {
            inner.vcpus.iter().filter_map(|r| r.pool.as_ref()).map(|p| p.outstanding() as u64).sum()
        }
        HostCounter::PagesFetched => c.pages_fetched,
        HostCounter::ResolvedBeforeEvent => c.resolved_before_event,
        HostCounter::SyncWaitNanos => c.sync_wait_ns,
    }
}

/// Makes `count` pages from `gpa` absent again; refuses the whole request if any is in flight.
fn evict(inner: &mut Inner, gpa: u64, count: u64) -> Result<[u64; 2], Status> {
    let region = inner.region.as_mut().ok_or(Status::Unavailable)?;
    let first = region.page_of(gpa).ok_or(Status::InvalidArgument)?;
    let last = first.checked_add(count).filter(|end| *end <= region.pages()).ok_or(Status::InvalidArgument)?;
    if (first..last).any(|p| matches!(inner.core.state(p), Some(PageState::Fetching { .. }))) {
        return Err(Status::InvalidArgument);
    }
    for page in first..last {
        let was_present = inner.core.evict(page).map_err(|_| Status::InvalidArgument)?;
        inner.staging.remove(&page);
        if let Some(contents) = region.evict(page, was_present).map_err(|_| Status::Unavailable)? {
            inner.backing.save(page, contents);
        }
    }
    Ok([count, 0])
}
