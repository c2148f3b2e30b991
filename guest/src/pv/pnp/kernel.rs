//! The kernel glue of the page-not-present protocol: shared pages, registration, the two
//! handlers, and the hooks self-tests use to steer the host's pager.

use core::sync::atomic::{AtomicU32, Ordering};

use pvagent_abi::breach::Breach;
use pvagent_abi::cpuid::Features;
use pvagent_abi::hypercall::Nr;
use pvagent_abi::pnp::{
    self as abi, HostCounter, HostMode, PageBehaviour, PageNotPresentData, Resolution, ResolutionTiming, Token,
};

use super::ring::{Drain, RingConsumer, RingMemory};
use super::{DEFAULT_RING_ENTRIES, EVENT_VECTOR, RESOLUTION_VECTOR, Region};
use crate::arch::fault::{self, Fault};
use crate::arch::hypercall::{self, HypercallError};
use crate::arch::paging::{self, Access};
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::trap::{self, TrapFrame};
use crate::arch::{apic, cpu};
use crate::boot::cmdline::Cmdline;
use crate::boot::info::MemKind;
use crate::cell::StaticCell;
use crate::kprintln;
use crate::pv::breach;
use crate::pv::tokens::{BySlot, EventOutcome, Overdue, Rejection, TokenStats, TokenTable, Waiter, WakeOutcome};
use crate::pv::wait;
use crate::sync::{CpuCell, IrqGuard};
use crate::task::{self, table::ExitStatus};

/// The two pages a vCPU shares with the host: the ring (page-aligned) and the event area.
#[repr(C, align(4096))]
struct SharedPages {
    ring: [u8; 4096],
    data: [u8; 64],
}

/// Shared with the host: only ever accessed through raw pointers with volatile or atomic
/// operations (`SharedView`); no Rust reference to it is formed.
static SHARED: StaticCell<[SharedPages; MAX_CPUS]> =
    StaticCell::new([const { SharedPages { ring: [0; 4096], data: [0; 64] } }; MAX_CPUS]);

/// Raw access to one vCPU's shared pages.
#[derive(Clone, Copy, Debug)]
struct SharedView {
    ring: *mut u8,
    data: *mut u8,
    entries: u32,
}

impl SharedView {
    fn of(cpu: usize, entries: u32) -> Self {
        let pages = SHARED.get().cast::<SharedPages>().wrapping_add(cpu);
        // Only addresses are computed; the pages are accessed through the methods below.
        let ring = pages as *mut u8;
        let data = ring.wrapping_add(core::mem::offset_of!(SharedPages, data));
        Self { ring, data, entries }
    }

    fn u32_at(base: *mut u8, offset: u64) -> &'static AtomicU32 {
        // SAFETY: `offset` is inside the static shared pages and 4-byte aligned (ABI layout);
        // AtomicU32 is the sanctioned way to access memory another agent changes concurrently.
        unsafe { AtomicU32::from_ptr(base.add(offset as usize) as *mut u32) }
    }

    /// Makes the pages ready for registration, as the ABI asks: `head` and `tail` 0 (the
    /// entries may hold anything; only those between the two are ever read) and the event area
    /// free. Not the whole ring page: on an emulated guest kernel that is 512 string iterations.
    fn clear(&self) {
        Self::u32_at(self.ring, abi::ring_head_offset(self.entries)).store(0, Ordering::Relaxed);
        self.store_tail(0);
        // SAFETY: our own event area, while the protocol is off for this vCPU: the host does
        // not access it until registration.
        unsafe { core::ptr::write_bytes(self.data, 0, 64) };
    }

    fn inuse(&self) -> &'static AtomicU32 {
        Self::u32_at(self.data, abi::DATA_INUSE_OFFSET)
    }

    /// The event: its token, GPA, GVA, and `flags` with `reserved` (bits 63:32) in one word.
    fn read_event(&self) -> (Token, u64, u64, u64) {
        let data = self.data as *const PageNotPresentData;
        // SAFETY: the event area is 64-byte aligned static memory, and the fields lie in it;
        // volatile reads, because the host writes them outside the compiler's view. `flags`
        // and `reserved` are the area's last 8 bytes, 8-byte aligned (`abi::DATA_FLAGS_OFFSET`).
        unsafe {
            let token = core::ptr::read_volatile(&raw const (*data).token);
            let gpa = core::ptr::read_volatile(&raw const (*data).gpa);
            let gva = core::ptr::read_volatile(&raw const (*data).gva);
            let flags_reserved = core::ptr::read_volatile(self.data.add(abi::DATA_FLAGS_OFFSET as usize) as *const u64);
            (Token(token), gpa, gva, flags_reserved)
        }
    }

    /// The event's addresses: its GPA, and its GVA when `flags` says the host knew it (a test's
    /// view: the handler keys on the token and never needs the GVA).
    fn read_addresses(&self) -> (u64, Option<u64>) {
        let data = self.data as *const PageNotPresentData;
        // SAFETY: as in `read_token_gpa`.
        unsafe {
            let gpa = core::ptr::read_volatile(&raw const (*data).gpa);
            let gva = core::ptr::read_volatile(&raw const (*data).gva);
            let flags = core::ptr::read_volatile(&raw const (*data).flags);
            (gpa, (flags & abi::FLAG_GVA_VALID != 0).then_some(gva))
        }
    }
}

impl RingMemory for SharedView {
    fn load_head(&self) -> u32 {
        Self::u32_at(self.ring, abi::ring_head_offset(self.entries)).load(Ordering::Acquire)
    }

    fn read_entry(&self, index: u32) -> Resolution {
        let at = self.ring.wrapping_add(index as usize * core::mem::size_of::<Resolution>());
        // SAFETY: `index < entries`, so the entry lies inside the ring page; a volatile copy.
        unsafe { core::ptr::read_volatile(at as *const Resolution) }
    }

    fn store_tail(&self, tail: u32) {
        Self::u32_at(self.ring, abi::ring_tail_offset(self.entries)).store(tail, Ordering::Release);
    }
}

/// What this vCPU saw of the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events taken.
    pub events: u64,
    /// Events with `inuse` not set (nothing to take).
    pub spurious: u64,
    /// Tasks parked in the scheduler (the token table's count).
    pub slept: u64,
    /// Waits in the HLT loop (the token table's count).
    pub halted: u64,
    /// Resolution interrupts taken.
    pub resolution_irqs: u64,
    /// Events whose handler found resolutions in the ring (`VECTORS_DRAIN_AT_EVENT`).
    pub drains_at_event: u64,
    /// Drains that found a `head` that makes no sense.
    pub ring_corrupt: u64,
    /// Resolutions consumed.
    pub consumed: u64,
    /// Woken tasks that were no longer waiting.
    pub stale_wakes: u64,
    /// The token table's counters.
    pub tokens: TokenStats,
}

#[derive(Debug)]
struct PnpCpu {
    entries: u32,
    /// Registered with `VECTORS_DRAIN_AT_EVENT`: the event handler drains the ring, and the host
    /// leaves out the interrupt for a resolution posted before its event was taken.
    drains_at_event: bool,
    /// The shared token table, by ring slot: a slot holds one live token.
    table: TokenTable<BySlot, { abi::MAX_RING_ENTRIES as usize }>,
    /// The demand-paged region's first address and size: an event's GPA lies in it.
    region: (u64, u64),
    ring: RingConsumer,
    stats: Stats,
}

static STATE: CpuCell<PnpCpu> = CpuCell::new(
    [const {
        PnpCpu {
            entries: 0,
            drains_at_event: false,
            table: TokenTable::new(BySlot { entries: 0 }),
            region: (0, 0),
            ring: RingConsumer::new(0),
            stats: Stats::new(),
        }
    }; MAX_CPUS],
);

impl PnpCpu {
    /// Consumes every resolution the host has posted, waking each token's waiter as its entry
    /// comes (a resolution whose event has not come yet is kept for it).
    #[inline(always)]
    fn drain(&mut self, cpu: usize) -> Drain {
        // The view's layout comes from the consumer itself, so the two cannot disagree.
        let view = SharedView::of(cpu, self.ring.entries());
        let (table, stats) = (&mut self.table, &mut self.stats);
        self.ring.drain(&view, |r| consume(table, stats, r))
    }
}

/// One resolution from the ring: its waiter is woken (a resolution whose event has not come
/// yet is kept for it).
#[inline(always)]
fn consume(table: &mut TokenTable<BySlot, { abi::MAX_RING_ENTRIES as usize }>, stats: &mut Stats, r: Resolution) {
    // A result the ABI does not define wakes its waiter to retry the access: the page is
    // present by then, or the host answers the retry (a failed page gets a new event whose
    // resolution says so), so a task neither waits for ever nor ends for a word it cannot read.
    let result = if r.result > abi::RESULT_FAILED {
        bad_result(r);
        abi::RESULT_RETRY
    } else {
        r.result
    };
    match table.on_wake(r.token, result) {
        WakeOutcome::Wake { task, result, .. } => {
            stats.stale_wakes += u64::from(task::wake(task, u64::from(result)) != task::table::WakeOutcome::Woken);
        }
        WakeOutcome::Rejected(why) => rejected_resolution(r, why),
        _ => {}
    }
}

/// A resolution whose result is neither retry nor failed: counted, read as retry.
#[cold]
#[inline(never)]
fn bad_result(r: Resolution) {
    breach::note(Breach::ResolutionBadResult, u64::from(r.token), u64::from(r.result));
}

/// A resolution the token table refused (it woke nobody): which rule the host broke.
#[cold]
#[inline(never)]
fn rejected_resolution(r: Resolution, why: Rejection) {
    let rule = match why {
        Rejection::Duplicate => Breach::ResolutionTwice,
        // Another token's slot, an impossible slot or sequence: never handed out.
        _ => Breach::ResolutionForUnknownToken,
    };
    breach::note(rule, u64::from(r.token), u64::from(r.result));
}

impl Stats {
    const fn new() -> Self {
        Self {
            events: 0,
            spurious: 0,
            slept: 0,
            halted: 0,
            resolution_irqs: 0,
            drains_at_event: 0,
            ring_corrupt: 0,
            consumed: 0,
            stale_wakes: 0,
            tokens: TokenStats::new(),
        }
    }
}

static REGION: spin::Once<Option<(Region, u32)>> = spin::Once::new();
static MODE: AtomicU32 = AtomicU32::new(HostMode::Sync as u32);

/// The demand-paged region and the largest ring the host takes, if the host stub offers the
/// protocol.
pub fn host_region() -> Option<(Region, u32)> {
    *REGION.get().unwrap_or(&None)
}

/// The host's current mode (as set at boot, or by [`set_host_mode`]).
pub fn host_mode() -> HostMode {
    HostMode::try_from(MODE.load(Ordering::Relaxed)).unwrap_or(HostMode::Sync)
}

/// Reads what the host offers, maps the region, installs the handlers and registers the
/// protocol on this vCPU. `pnp=off` leaves it unregistered; `pnp-ring=N` sets the ring size.
pub fn init(cmdline: &Cmdline) {
    let platform = crate::arch::platform();
    let offered = platform.hypervisor.host_features().has(Features::PAGE_NOT_PRESENT);
    let info = offered.then(|| cpu::cpuid(abi::LEAF_PNP, 0)).and_then(|leaf| {
        MODE.store(leaf.edx, Ordering::Relaxed);
        // What the kernel maps itself: RAM and ACPI data (the memory map lists the region
        // itself as reserved), and the local APIC's page.
        let mapped =
            crate::boot::info::get().memmap.ranges.iter().filter(|r| matches!(r.kind, MemKind::Ram | MemKind::Acpi));
        let apic = (apic::XAPIC_BASE, apic::XAPIC_BASE + pvagent_abi::PAGE_SIZE);
        match Region::from_leaf(leaf.eax, leaf.ebx, platform.reach(), mapped.map(|r| (r.start, r.end)).chain([apic])) {
            Ok(region) => Some((region, leaf.ecx)),
            Err(why) => {
                kprintln!("pnp: the host's region is not used: {why:x?}");
                None
            }
        }
    });
    REGION.call_once(|| info);
    let Some((region, max_entries)) = info else { return };
    if region.pages == 0 {
        return;
    }
    paging::map_range(region.base, region.end(), Access::UserData);
    trap::register(EVENT_VECTOR, on_event);
    trap::register(RESOLUTION_VECTOR, on_resolution);
    if cmdline.get("pnp") == Some("off") {
        kprintln!("pnp: not registered (pnp=off)");
        return;
    }
    let entries = cmdline.get("pnp-ring").and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_RING_ENTRIES).min(max_entries);
    match register(entries) {
        Ok(()) => {
            BOOT_ENTRIES.store(entries, Ordering::Relaxed);
            kprintln!(
                "pnp: registered, ring of {entries}, region {:#x} ({} pages), host mode {:?}",
                region.base,
                region.pages,
                host_mode()
            );
        }
        Err(e) => {
            REFUSED_AT_BOOT.call_once(|| e);
            kprintln!("pnp: registration refused: {e:?}");
        }
    }
}

/// The ring size the boot vCPU registered with (0: it registered none): each AP registers
/// its own ring of this size.
static BOOT_ENTRIES: AtomicU32 = AtomicU32::new(0);

/// An AP's part of [`init`] (which ran on the boot vCPU, mapped the region and registered the
/// handlers): this vCPU's own ring and event area, of the boot vCPU's size.
pub fn init_cpu() {
    let entries = BOOT_ENTRIES.load(Ordering::Relaxed);
    if entries == 0 {
        return;
    }
    if let Err(e) = register(entries) {
        kprintln!("pnp: registration refused on vCPU {}: {e:?}", percpu::index());
    }
}

/// Why registering at boot failed, when it did: the self-tests fail on a refusal nobody
/// asked for, where `pnp=off` makes them skip.
static REFUSED_AT_BOOT: spin::Once<RegisterError> = spin::Once::new();

/// Why registering the protocol at boot failed; `None` if it was registered, or never tried
/// (no demand pager, `pnp=off`).
pub fn refused_at_boot() -> Option<RegisterError> {
    REFUSED_AT_BOOT.get().copied()
}

/// Why registration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The ring size is not a power of two in 1..=256.
    BadSize(u32),
    /// Tokens are outstanding: the ring cannot change now.
    Busy,
    /// The host refused an MSR write (#GP).
    Refused { msr: u32, fault: Fault },
}

fn write_msr(msr: u32, value: u64) -> Result<(), RegisterError> {
    fault::probe_write_msr(msr, value).map_err(|fault| RegisterError::Refused { msr, fault })
}

/// Registers (or re-registers) the protocol on this vCPU with a ring of `entries`.
///
/// Runs with interrupts off: the resolution handler must never see a half-changed
/// registration (a consumer of one ring reading the `head` of another, or of a cleared page).
/// A resolution interrupt raised for the old ring and still pending is taken afterwards and
/// finds nothing to consume.
pub fn register(entries: u32) -> Result<(), RegisterError> {
    if !entries.is_power_of_two() || entries > abi::MAX_RING_ENTRIES {
        return Err(RegisterError::BadSize(entries));
    }
    let _irq = IrqGuard::new();
    let busy = STATE.with(|s| s.entries != 0 && (s.table.waiting() > 0 || s.table.kept() > 0));
    if busy {
        return Err(RegisterError::Busy);
    }
    unregister()?;
    let cpu = percpu::index();
    let view = SharedView::of(cpu, entries);
    view.clear();
    let order = u64::from(entries.trailing_zeros());
    // Where the host offers it, the event handler drains the ring and the no-wait path needs no
    // resolution interrupt.
    let drains_at_event = crate::arch::platform().hypervisor.host_features().has(Features::PNP_DRAIN_AT_EVENT);
    let drain_bit = if drains_at_event { abi::VECTORS_DRAIN_AT_EVENT } else { 0 };
    let vectors = u64::from(EVENT_VECTOR) | (u64::from(RESOLUTION_VECTOR) << 8) | drain_bit;
    let registered = write_msr(abi::MSR_VECTORS, vectors)
        .and_then(|()| write_msr(abi::MSR_RING, view.ring as u64 | (order << abi::RING_ORDER_SHIFT) | abi::MSR_ENABLE))
        .and_then(|()| write_msr(abi::MSR_DATA, view.data as u64 | abi::MSR_ENABLE));
    if let Err(e) = registered {
        // Leave nothing half-registered at the host either (it may have taken the ring).
        let _ = write_msr(abi::MSR_RING, 0);
        return Err(e);
    }
    let region = host_region().map_or((0, 0), |(r, _)| (r.base, r.end() - r.base));
    STATE.with(|s| {
        s.entries = entries;
        s.region = region;
        s.drains_at_event = drains_at_event;
        s.table.reset(BySlot { entries });
        s.ring = RingConsumer::new(entries);
    });
    Ok(())
}

/// Turns the protocol off on this vCPU (the host then takes the synchronous path). With
/// interrupts off, as [`register`]; the guest's state changes only once the host agreed.
pub fn unregister() -> Result<(), RegisterError> {
    let _irq = IrqGuard::new();
    if STATE.with(|s| s.entries) == 0 {
        return Ok(());
    }
    write_msr(abi::MSR_DATA, 0)?;
    write_msr(abi::MSR_RING, 0)?;
    STATE.with(|s| {
        // Keep the counters of the ring being replaced.
        s.stats.consumed += s.ring.consumed;
        s.stats.ring_corrupt += s.ring.corrupt;
        s.entries = 0;
        s.ring = RingConsumer::new(0);
        // No slot from now on: an event the host still raises (it broke the ABI) finds none
        // and parks nobody, where the old ring's slots would park its context on a token no
        // ring resolves. Nothing the host will resolve is dropped: it refused this
        // unregistration while a token was outstanding; a resolution kept for an event that
        // never came (the host's forgery) goes.
        s.table.reset(BySlot { entries: 0 });
    });
    Ok(())
}

/// The ring size registered on this vCPU (0: not registered).
pub fn registered_entries() -> u32 {
    STATE.with(|s| s.entries)
}

/// This vCPU's counters.
pub fn stats() -> Stats {
    STATE.with(|s| {
        let mut stats = s.stats;
        stats.tokens = s.table.stats;
        (stats.slept, stats.halted) = (s.table.stats.slept, s.table.stats.halted);
        stats.consumed += s.ring.consumed;
        stats.ring_corrupt += s.ring.corrupt;
        stats
    })
}

/// Overwrites this vCPU's ring `tail` with `tail` (the harness's deliberate protocol breach:
/// the host must notice and stop the guest).
pub fn corrupt_ring_tail(tail: u32) {
    let entries = registered_entries();
    if entries > 0 {
        SharedView::of(percpu::index(), entries).store_tail(tail);
    }
}

/// The addresses of the last event the host filled this vCPU's area with: its GPA, and its
/// linear address if the host knew it (`flags` bit 0). The area keeps them after the event was
/// taken, until the host fills it again.
pub fn last_event_addresses() -> (u64, Option<u64>) {
    SharedView::of(percpu::index(), registered_entries()).read_addresses()
}

/// Events whose interrupt was taken while [`leave_next_event_untaken`] was armed.
static LEFT_UNTAKEN: AtomicU32 = AtomicU32::new(0);

/// A test control: the next event interrupt is taken, but the event is left in its area
/// (`inuse` stays 1) as if its interrupt had not come yet, until [`take_left_event`]. The host
/// sees an area busy with an event it delivered, the state seed 001 answers with the
/// synchronous path. It swaps the vector's handler (every vCPU's, for as long as it is armed),
/// so the event path costs nothing more when no test uses it.
pub fn leave_next_event_untaken() {
    trap::register(EVENT_VECTOR, on_event_left_untaken);
}

/// Events left in their area by [`leave_next_event_untaken`] so far.
pub fn events_left_untaken() -> u32 {
    LEFT_UNTAKEN.load(Ordering::Acquire)
}

/// Takes the event [`leave_next_event_untaken`] left in this vCPU's area, as its interrupt
/// would have: the handler is back, and a self-IPI of the event vector runs it.
pub fn take_left_event() {
    trap::register(EVENT_VECTOR, on_event);
    apic::send_self_ipi(EVENT_VECTOR);
}

/// The event vector while [`leave_next_event_untaken`] is armed: EOI, count, nothing taken.
fn on_event_left_untaken(_frame: &mut TrapFrame) {
    apic::eoi();
    LEFT_UNTAKEN.fetch_add(1, Ordering::Release);
}

/// Tokens with a waiter, and resolutions kept for events not yet seen.
pub fn pending() -> (usize, usize) {
    STATE.with(|s| (s.table.waiting(), s.table.kept()))
}

/// This vCPU's waits that began `deadline` TSC cycles or more before `now` and were not
/// reported yet, to `report` (`pv::deadline`'s check; `TokenTable::take_overdue`).
pub fn take_overdue(now: u64, deadline: u64, report: impl FnMut(Overdue) -> bool) -> usize {
    STATE.with(|s| s.table.take_overdue(now, deadline, report))
}

/// Who waits on this vCPU for `token`, and for which page, while it waits.
pub fn waiter_of(token: u32) -> Option<(Waiter, u64)> {
    STATE.with(|s| s.table.waiter_of(token))
}

/// The event vector. Its common case does one borrow of this vCPU's state: take the event,
/// look its token up, count it; the scheduler is asked who would wait only when the token must
/// be waited for.
fn on_event(frame: &mut TrapFrame) {
    apic::eoi();
    let cpu = percpu::index();
    let taken = STATE.with(|s| {
        let view = SharedView::of(cpu, s.entries);
        if view.inuse().load(Ordering::Acquire) != 1 {
            s.stats.spurious += 1;
            breach::note(Breach::EventSpurious, 0, 0);
            return None;
        }
        let (token, mut gpa, gva, flags_reserved) = view.read_event();
        // The event's own rules, a few instructions on every event: no flag but `gva` known,
        // `reserved` 0, the GPA in the region, and a known `gva` on the GPA's page (the guest's
        // one address space maps the region one to one, `init`, so that is where its tables
        // translate it). A breach is counted and the event served all the same: its token is
        // what the waiter needs, and a GPA outside the region is dropped (0: unknown).
        let (base, size) = s.region;
        let gva_off = flags_reserved & u64::from(abi::FLAG_GVA_VALID) != 0 && (gva ^ gpa) >> 12 != 0;
        if flags_reserved & !u64::from(abi::FLAG_GVA_VALID) != 0 || gpa.wrapping_sub(base) >= size || gva_off {
            gpa = odd_event(token, gpa, gva, flags_reserved, s.region);
        }
        // A resolution the host posted before it delivered this event is in the ring now (it
        // published `head` before `inuse`, `VECTORS_DRAIN_AT_EVENT`), and comes with no
        // interrupt: take it before the token is looked up. Drained before the area is given
        // back, so a resolution posted after the event was taken is never found here: it comes
        // with its interrupt, once the task is parked (below).
        if s.drains_at_event {
            let drained = s.drain(cpu);
            if drained != Drain::Consumed(0) {
                s.stats.drains_at_event += 1;
                report_corrupt(drained);
            }
        }
        // Interrupts stay off (an interrupt gate) from here until the task is parked or the HLT
        // loop halts: a resolution written after this store always finds its waiter registered.
        // Hosts rely on it to force the waiting paths (`ResolutionTiming::AfterEventTaken`).
        view.inuse().store(0, Ordering::Release);
        s.stats.events += 1;
        let outcome = s.table.on_event_at(token.0, gpa, || wait::waiter(frame), cpu::rdtsc);
        Some((token, gpa, outcome))
    });
    let Some((token, gpa, outcome)) = taken else { return };
    let result = match outcome {
        EventOutcome::AlreadyResolved { result } => result,
        EventOutcome::Rejected(why) => {
            rejected_event(token, gpa, why);
            return;
        }
        EventOutcome::Park(parked) => {
            let take_halt_result = || STATE.with(|s| s.table.take_halt_result(token.0));
            wait::wait(parked, super::WAIT_OWNER, token.0, take_halt_result)
        }
    };
    if result == abi::RESULT_FAILED {
        page_failed(frame, token, gpa);
    }
}

/// An event that broke one of the area's rules (`on_event`): each broken rule counted; returns
/// the GPA to go on with (0, unknown, when it is outside the region).
#[cold]
#[inline(never)]
fn odd_event(token: Token, gpa: u64, gva: u64, flags_reserved: u64, (base, size): (u64, u64)) -> u64 {
    let (flags, reserved) = (flags_reserved as u32, (flags_reserved >> 32) as u32);
    if flags & !abi::FLAG_GVA_VALID != 0 {
        breach::note(Breach::EventUnknownFlags, u64::from(token.0), u64::from(flags));
    }
    if reserved != 0 {
        breach::note(Breach::EventReservedNonzero, u64::from(token.0), u64::from(reserved));
    }
    if gpa.wrapping_sub(base) >= size {
        // A `gva` is not judged against a GPA that is wrong already.
        breach::note(Breach::EventGpaOutsideRegion, u64::from(token.0), gpa);
        return 0;
    }
    if flags & abi::FLAG_GVA_VALID != 0 && (gva ^ gpa) >> 12 != 0 {
        breach::note(Breach::EventGvaMismatch, gva, gpa);
    }
    gpa
}

/// An event whose token the table refused: nothing waits; which rule the host broke.
#[cold]
#[inline(never)]
fn rejected_event(token: Token, gpa: u64, why: Rejection) {
    let rule = match why {
        // No ring: every token is refused (`unregister`), whatever it is.
        Rejection::Malformed if registered_entries() == 0 => Breach::EventWhileUnregistered,
        Rejection::Malformed if token.0 == 0 => Breach::EventTokenZero,
        Rejection::Malformed if token.sequence() == 0 => Breach::EventSequenceZero,
        Rejection::Malformed => Breach::EventSlotBeyondRing,
        // A slot whose token still has a waiter or an unclaimed result.
        _ => Breach::EventTokenOutstanding,
    };
    if breach::note(rule, u64::from(token.0), gpa) {
        kprintln!("pnp: event with token {:#x} rejected: {why:?} (host broke {rule})", token.0);
    }
}

/// Waits for a token of this vCPU's ring that came otherwise than through the event area (#VE's
/// park request, `pv::ve`), as the event handler waits for an event's: `waiter` waits (parked,
/// or in the HLT loop) unless the resolution is already here. Returns the result and whether it
/// waited, or why the table rejected the token (the caller then waits another way). Call with
/// interrupts off, from the trap handler that got the token.
pub fn wait_for_token(token: Token, gpa: u64, waiter: crate::pv::tokens::Waiter) -> Result<(u32, bool), Rejection> {
    match STATE.with(|s| s.table.on_event_at(token.0, gpa, || waiter, cpu::rdtsc)) {
        EventOutcome::AlreadyResolved { result } => Ok((result, false)),
        EventOutcome::Rejected(why) => Err(why),
        EventOutcome::Park(parked) => {
            let take_halt_result = || STATE.with(|s| s.table.take_halt_result(token.0));
            Ok((wait::wait(parked, super::WAIT_OWNER, token.0, take_halt_result), true))
        }
    }
}

/// The page behind `token` failed: the task that touched it ends, nobody else is affected.
fn page_failed(frame: &TrapFrame, token: Token, gpa: u64) {
    if !task::may_sleep_in_trap() {
        fault::fatal(format_args!(
            "page {gpa:#x} (token {:#x}) failed under a context that cannot be ended (rip {:#x})",
            token.0, frame.rip
        ));
    }
    kprintln!("task {} ended: its page {gpa:#x} failed (token {:#x})", task::name(task::current()), token.0);
    task::exit_current(ExitStatus::Killed(super::PageFailed { token: token.0, gpa }.into()));
}

/// The resolution vector: drain the ring, waking each token's waiter as its entry comes, in one
/// borrow of this vCPU's state (the scheduler's is another).
fn on_resolution(_frame: &mut TrapFrame) {
    apic::eoi();
    let cpu = percpu::index();
    STATE.with(|s| {
        s.stats.resolution_irqs += 1;
        report_corrupt(s.drain(cpu));
    });
}

fn report_corrupt(drained: Drain) {
    if let Drain::Corrupt { head, tail } = drained {
        corrupt_ring(head, tail);
    }
}

/// A `head` more than the ring's size ahead of `tail`: nothing was consumed; counted, the first
/// one printed (the true `head`, when the host writes it, is drained as ever).
#[cold]
#[inline(never)]
fn corrupt_ring(head: u32, tail: u32) {
    if breach::note(Breach::RingHeadBeyondSize, u64::from(head), u64::from(tail)) {
        kprintln!("pnp: ring head {head} is impossible with tail {tail}: nothing consumed");
    }
}

fn host_call(nr: Nr, args: [u64; 4]) -> Result<[u64; 2], HypercallError> {
    hypercall::call(nr, args)
}

/// Switches the host's mode for accesses from now on.
pub fn set_host_mode(mode: HostMode) -> Result<(), HypercallError> {
    host_call(Nr::PnpSetMode, [mode as u64, 0, 0, 0])?;
    MODE.store(mode as u32, Ordering::Relaxed);
    Ok(())
}

/// Sets the host's fetch latency range for pages fetched from now on.
pub fn set_latency_ns(min: u64, max: u64) -> Result<(), HypercallError> {
    host_call(Nr::PnpSetLatency, [min, max, 0, 0]).map(|_| ())
}

/// Sets how the host treats the next fetch of the page at `gpa`.
pub fn set_page_behaviour(gpa: u64, behaviour: PageBehaviour) -> Result<(), HypercallError> {
    host_call(Nr::PnpSetPage, [gpa, behaviour as u64, 0, 0]).map(|_| ())
}

/// Sets when the host writes resolutions relative to their events, from now on (a test and
/// benchmark control: it decides which path the next events take).
pub fn set_timing(timing: ResolutionTiming) -> Result<(), HypercallError> {
    host_call(Nr::PnpSetTiming, [timing as u64, 0, 0, 0]).map(|_| ())
}

/// Starts the fetches of the held pages among `pages` pages from `gpa`
/// ([`PageBehaviour::Held`]), all in one exit. Returns how many were held.
pub fn release(gpa: u64, pages: u64) -> Result<u64, HypercallError> {
    host_call(Nr::PnpRelease, [gpa, pages, 0, 0]).map(|r| r[0])
}

/// Makes `pages` pages from `gpa` absent again.
pub fn evict(gpa: u64, pages: u64) -> Result<(), HypercallError> {
    host_call(Nr::PnpEvict, [gpa, pages, 0, 0]).map(|_| ())
}

/// One of the host's counters.
pub fn host_counter(counter: HostCounter) -> Result<u64, HypercallError> {
    host_call(Nr::PnpStats, [counter as u64, 0, 0, 0]).map(|r| r[0])
}
