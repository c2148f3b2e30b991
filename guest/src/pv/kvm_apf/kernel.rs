//! The kernel glue of KVM's async page fault ABI: the per-vCPU area, enabling, the #PF and
//! "page ready" handlers.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvagent_abi::breach::Breach;
use pvagent_abi::kvm_apf::{self as abi, ApfData};
use pvagent_abi::pnp::RESULT_RETRY;
use x86_64::registers::control::Cr2;
use x86_64::registers::model_specific::Msr;

use super::{PAGE_READY_VECTOR, PageFault, PageReady, TABLE_ENTRIES, classify, offered, page_ready};
use crate::arch::fault::{self, Fault};
use crate::arch::percpu::{self, CpuLocal, MAX_CPUS};
use crate::arch::trap::{self, TrapFrame};
use crate::arch::{apic, cpu};
use crate::cell::StaticCell;
use crate::kprintln;
use crate::pv::breach;
use crate::pv::tokens::{EventOutcome, Hashed, Overdue, Rejection, TokenStats, TokenTable, Waiter, WakeOutcome};
use crate::pv::wait;
use crate::sync::{CpuCell, IrqGuard};
use crate::task::table::TaskId;

/// The #PF vector.
const PAGE_FAULT: u8 = 14;

/// Each vCPU's area, shared with the host: only ever accessed through raw pointers with
/// atomic or volatile operations ([`Area`]); no Rust reference to it is formed.
static AREAS: StaticCell<[ApfData; MAX_CPUS]> = StaticCell::new([ApfData::ZERO; MAX_CPUS]);

/// Raw access to one vCPU's area.
#[derive(Clone, Copy, Debug)]
struct Area(*mut ApfData);

impl Area {
    fn of(cpu: usize) -> Self {
        // Only the address is computed; the area is accessed through the methods below.
        Area(AREAS.get().cast::<ApfData>().wrapping_add(cpu))
    }

    fn this_cpu() -> Self {
        Self::of(percpu::index())
    }

    fn u32_at(self, offset: u64) -> &'static AtomicU32 {
        // SAFETY: `offset` is a 4-byte aligned field of the static, 64-byte aligned area (the ABI
        // layout, asserted in `pvagent_abi::kvm_apf`); AtomicU32 is the sanctioned way to access
        // memory another agent changes concurrently.
        unsafe { AtomicU32::from_ptr(self.0.cast::<u8>().add(offset as usize).cast::<u32>()) }
    }

    fn flags(self) -> &'static AtomicU32 {
        self.u32_at(abi::FLAGS_OFFSET)
    }

    fn token(self) -> &'static AtomicU32 {
        self.u32_at(abi::TOKEN_OFFSET)
    }

    fn clear(self) {
        // SAFETY: zeroing this vCPU's own area while async page faults are off for it: the host
        // does not write it until it is registered.
        unsafe { core::ptr::write_volatile(self.0, ApfData::ZERO) }
    }

    fn gpa(self) -> u64 {
        // Identity mapped: the address is the guest-physical address.
        self.0 as u64
    }
}

/// #PFs that were the guest's own (`flags` 0), passed on: an atomic per vCPU, so that a real
/// page fault pays one instruction for it.
static REAL_FAULTS: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// What this vCPU saw of the ABI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// "Page not present" #PFs taken.
    pub events: u64,
    /// #PFs that were the guest's own (`flags` 0), passed on.
    pub real_faults: u64,
    /// Tasks parked in the scheduler (the token table's count).
    pub slept: u64,
    /// Waits in the HLT loop (the token table's count).
    pub halted: u64,
    /// "Page ready" interrupts taken (a wake-all and a spurious one included).
    pub page_ready: u64,
    /// Wake-alls among them.
    pub wake_alls: u64,
    /// "Page ready" interrupts with no token.
    pub spurious: u64,
    /// Woken tasks that were no longer waiting.
    pub stale_wakes: u64,
    /// #PFs whose `flags` said "page not present" beside an error code KVM never gives (not
    /// 0): handled as the real faults they are.
    pub bogus_flags: u64,
    /// "Page not present" events the token table rejected (the access was retried unparked):
    /// counted, the first one per vCPU printed (a hostile host could make every event one).
    pub rejected_events: u64,
    /// The token table's counters.
    pub tokens: TokenStats,
}

impl Stats {
    const fn new() -> Self {
        Self {
            events: 0,
            real_faults: 0,
            slept: 0,
            halted: 0,
            page_ready: 0,
            wake_alls: 0,
            spurious: 0,
            stale_wakes: 0,
            bogus_flags: 0,
            rejected_events: 0,
            tokens: TokenStats::new(),
        }
    }
}

#[derive(Debug)]
struct ApfCpu {
    /// [`MSR_ASYNC_PF_EN`](abi::MSR_ASYNC_PF_EN) as this vCPU last wrote it (0: off).
    en_msr: u64,
    table: TokenTable<Hashed, TABLE_ENTRIES>,
    stats: Stats,
    /// Why enabling at boot failed, when KVM's leaves offered the ABI and the host refused it.
    refused: Option<EnableError>,
}

static STATE: CpuCell<ApfCpu> = CpuCell::new(
    [const { ApfCpu { en_msr: 0, table: TokenTable::new(Hashed), stats: Stats::new(), refused: None } }; MAX_CPUS],
);

/// Why enabling failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableError {
    /// KVM's leaves do not offer the ABI with "page ready" as an interrupt.
    NotOffered,
    /// The host refused an MSR write (#GP).
    Refused { msr: u32, fault: Fault },
}

/// KVM's features leaf, when the host shows KVM's leaves.
fn kvm_features() -> Option<u32> {
    let base = crate::arch::platform().hypervisor.kvm_base()?;
    Some(cpu::cpuid(base + abi::FEATURES_LEAF_OFFSET, 0).eax)
}

/// Enables the ABI on this vCPU when KVM's leaves offer it. Silent when it succeeds: every
/// byte on the console is an exit of every boot (the `kvm_apf::` self-tests show it). No
/// command line key turns it off: looking one up would cost every boot hundreds of emulated
/// instructions, and a host that must not deliver async page faults does not offer them.
///
/// Both vectors are routed here only once enabling succeeded: with the ABI off, `flags` is
/// never set (every #PF is a real one), and a stray interrupt on [`PAGE_READY_VECTOR`] is the
/// unexpected interrupt any unrouted vector is, not an acknowledgement written to an MSR the
/// host may not have. Interrupts are still off at boot (the scheduler turns them on), so a
/// wake-all that follows the enabling finds its handler.
pub fn init() {
    match enable() {
        Ok(()) => {
            trap::register(PAGE_READY_VECTOR, on_page_ready);
            trap::register(PAGE_FAULT, on_page_fault);
            BOOT_ENABLED.store(true, Ordering::Relaxed);
        }
        Err(EnableError::NotOffered) => {}
        Err(e) => {
            kprintln!("kvm-apf: enabling refused: {e:?}");
            STATE.with(|s| s.refused = Some(e));
        }
    }
}

/// Why KVM's leaves offered the ABI and the host refused to enable it at boot, if it did.
pub fn refused() -> Option<EnableError> {
    STATE.with(|s| s.refused)
}

/// An AP's part of [`init`] (which ran on the boot vCPU and registered the handlers): enables
/// the ABI on this vCPU, with its own area, when the boot vCPU could.
pub fn init_cpu() {
    if !BOOT_ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = enable() {
        kprintln!("kvm-apf: enabling refused on vCPU {}: {e:?}", percpu::index());
        STATE.with(|s| s.refused = Some(e));
    }
}

/// The boot vCPU enabled the ABI (so the #PF handler is registered): the APs follow.
static BOOT_ENABLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn write_msr(msr: u32, value: u64) -> Result<(), EnableError> {
    fault::probe_write_msr(msr, value).map_err(|fault| EnableError::Refused { msr, fault })
}

/// Enables the ABI on this vCPU: the "page ready" vector first, then the area, with delivery
/// as an interrupt. The local APIC is software-enabled already (`arch::init`, before any
/// protocol): KVM raising the interrupt at a software-disabled APIC has made other VMMs spin.
/// Enabling again while enabled is allowed, and KVM answers it with a wake-all unless page
/// readies are already queued for this vCPU (`kvm_async_pf_wakeup_all` returns early then);
/// the table keeps its tokens for either.
pub fn enable() -> Result<(), EnableError> {
    if !kvm_features().is_some_and(offered) {
        return Err(EnableError::NotOffered);
    }
    let en = Area::this_cpu().gpa() | abi::EN_ENABLED | abi::EN_DELIVERY_AS_INT;
    // The area and the table are ready: zero and empty from the start, and made so again
    // whenever the ABI is turned off (`disable`). One borrow, interrupts off (a refused write
    // is a #GP the exception table fixes, which touches no state): a wake-all that follows
    // the enabling comes after it, and finds the table's keying set.
    STATE.with(|s| {
        if s.en_msr == 0 {
            write_msr(abi::MSR_ASYNC_PF_INT, u64::from(PAGE_READY_VECTOR))?;
        }
        write_msr(abi::MSR_ASYNC_PF_EN, en)?;
        s.en_msr = en;
        Ok(())
    })
}

/// Turns the ABI off on this vCPU, from a task. The host forgets its outstanding tokens (KVM
/// delivers none of them any more), so every parked task is woken as by a wake-all, and the
/// table starts over, its kept wakes and abandoned tokens dropped. No HLT-loop waiter can be
/// in the table then: one waits in the context that took its event, which cannot be running
/// a task's code on this vCPU until its wait is over (asserted, as the table's reset would
/// lose its result). KVM waits for any fetch already running before it answers.
pub fn disable() -> Result<(), EnableError> {
    let _irq = IrqGuard::new();
    assert!(
        !STATE.with(|s| s.table.has_halt_waiter()),
        "kvm-apf: turned off while a HLT-loop waiter of this vCPU is in the table"
    );
    write_msr(abi::MSR_ASYNC_PF_EN, 0)?;
    let mut woken = Woken::new();
    STATE.with(|s| {
        s.en_msr = 0;
        take_every_waiter(s, &mut woken);
        s.table.reset(Hashed);
        // The host writes the area no more: zeroed for the next enabling.
        Area::this_cpu().clear();
    });
    let stale = wait::wake_tasks(&woken, RESULT_RETRY);
    STATE.with(|s| s.stats.stale_wakes += stale);
    Ok(())
}

/// Whom a "page ready" wakes, once the table is given back.
enum Wake {
    Nobody,
    Task(TaskId, u32),
    /// A wake-all.
    All,
}

/// Tasks a wake-all woke, to be woken once the table is given back.
type Woken = heapless::Vec<TaskId, TABLE_ENTRIES>;

/// Wakes every waiter in the table, as a wake-all: the HLT-loop waiters find their result, the
/// tasks go to `woken` (filled in place: moving it would copy a kilobyte, 128 string iterations
/// that each cost an emulated kernel about an instruction's time).
fn take_every_waiter(s: &mut ApfCpu, woken: &mut Woken) {
    s.table.wake_all(|task| {
        // Cannot overflow: one entry per waiter.
        let _ = woken.push(task);
    });
}

/// A wake-all (token `0xFFFF_FFFF`): every waiter of this vCPU. Rare (KVM sends one at an
/// enabling, when no page ready is queued), so out of the common path and its stack frame.
#[cold]
#[inline(never)]
fn wake_every_waiter() {
    let mut woken = Woken::new();
    STATE.with(|s| {
        s.stats.wake_alls += 1;
        take_every_waiter(s, &mut woken);
    });
    let stale = wait::wake_tasks(&woken, RESULT_RETRY);
    STATE.with(|s| s.stats.stale_wakes += stale);
}

/// Whether the ABI is on for this vCPU.
pub fn enabled() -> bool {
    STATE.with(|s| abi::enabled(s.en_msr))
}

/// This vCPU's area's guest-physical address.
pub fn area_gpa() -> u64 {
    Area::this_cpu().gpa()
}

/// This vCPU's counters.
pub fn stats() -> Stats {
    let real_faults = REAL_FAULTS.get().load(Ordering::Relaxed);
    STATE.with(|s| {
        let t = s.table.stats;
        Stats { tokens: t, real_faults, slept: t.slept, halted: t.halted, ..s.stats }
    })
}

/// Tokens with a waiter, and entries without one (early wakes, abandoned tokens).
pub fn pending() -> (usize, usize) {
    STATE.with(|s| (s.table.waiting(), s.table.kept()))
}

/// This vCPU's waits that began `deadline` TSC cycles or more before `now` and were not
/// reported yet, to `report` (`pv::deadline`'s check; `TokenTable::take_overdue`).
pub fn take_overdue(now: u64, deadline: u64, report: impl FnMut(Overdue) -> bool) -> usize {
    STATE.with(|s| s.table.take_overdue(now, deadline, report))
}

/// Who waits on this vCPU for `token`, while it waits (KVM's events name no page: 0).
pub fn waiter_of(token: u32) -> Option<(Waiter, u64)> {
    STATE.with(|s| s.table.waiter_of(token))
}

/// #PF: KVM's "page not present", or a real page fault. Which one is decided first, from CR2
/// (read before anything else can fault and change it), the area's `flags`, read and cleared
/// in one instruction (after that, any #PF is a real one), and the error code.
fn on_page_fault(frame: &mut TrapFrame) {
    let cr2 = Cr2::read_raw();
    let flags = Area::this_cpu().flags().swap(0, Ordering::Acquire);
    if flags > abi::REASON_PAGE_NOT_PRESENT {
        // Bits KVM never sets: counted; bit 0 alone decides (as in Linux).
        unknown_flags(flags, cr2);
    }
    match classify(flags, frame.error_code, frame.from_user(), frame.interrupts_were_enabled()) {
        kind @ (PageFault::Real | PageFault::RealWithBogusFlags) => {
            if kind == PageFault::RealWithBogusFlags {
                bogus_flags(flags, frame.error_code);
            }
            REAL_FAULTS.get().fetch_add(1, Ordering::Relaxed);
            fault::unhandled(frame)
        }
        PageFault::Misdelivered => fault::fatal(format_args!(
            "host broke {}: an async page fault (token {:#x}) at cpl {} with interrupts {}: this guest registered for CPL 3 with interrupts on only (rip {:#x})",
            {
                breach::note(Breach::ApfMisdelivered, cr2, frame.rip);
                Breach::ApfMisdelivered
            },
            cr2,
            frame.cpl(),
            if frame.interrupts_were_enabled() { "on" } else { "off" },
            frame.rip
        )),
        PageFault::PageNotPresent => {
            let token = cr2 as u32;
            // One borrow: count, record, and say who waits (asked only if someone must).
            let outcome = STATE.with(|s| {
                s.stats.events += 1;
                s.table.on_event_at(token, 0, || wait::waiter(frame), cpu::rdtsc)
            });
            match outcome {
                EventOutcome::AlreadyResolved { .. } => {}
                EventOutcome::Rejected(why) => {
                    // Not parked: returning retries the access, and the host, with the page
                    // still coming, makes this vCPU wait for it.
                    rejected(token, why);
                }
                EventOutcome::Park(parked) => {
                    // Woken with "retry" (page ready, or a wake-all): KVM has no other result.
                    wait::wait(parked, super::WAIT_OWNER, token, || STATE.with(|s| s.table.take_halt_result(token)));
                }
            }
            // The access is retried on return.
        }
    }
}

/// A real #PF beside flags that said "page not present": counted, out of the real fault's way.
#[cold]
#[inline(never)]
fn bogus_flags(flags: u32, error_code: u64) {
    breach::note(Breach::ApfStaleFlags, u64::from(flags), error_code);
    STATE.with(|s| s.stats.bogus_flags += 1);
}

/// `flags` with bits KVM never sets.
#[cold]
#[inline(never)]
fn unknown_flags(flags: u32, cr2: u64) {
    breach::note(Breach::ApfUnknownFlags, u64::from(flags), cr2);
}

/// A "page ready" for a token with no "page not present" (kept, for an event that may come,
/// or absorbed): counted.
#[cold]
#[inline(never)]
fn unknown_ready(token: u32) {
    breach::note(Breach::ApfReadyForUnknownToken, u64::from(token), 0);
}

/// An event the table rejected: counted; only the first one per vCPU is printed, as every
/// console line is an exit and the host decides how many events there are.
#[cold]
#[inline(never)]
fn rejected(token: u32, why: Rejection) {
    let rule = match why {
        Rejection::Malformed => Some(Breach::ApfNotPresentTokenZero),
        Rejection::Busy => Some(Breach::ApfNotPresentTokenOutstanding),
        // A full table: not the host's doing alone (the guest's table has room for twice KVM's
        // limit, so only a host past that limit fills it).
        _ => None,
    };
    if let Some(rule) = rule {
        breach::note(rule, u64::from(token), 0);
    }
    let first = STATE.with(|s| {
        s.stats.rejected_events += 1;
        s.stats.rejected_events == 1
    });
    if first {
        kprintln!(
            "kvm-apf: page not present with token {token:#x} not waited for: {why:?} (further ones only counted)"
        );
    }
}

/// "Page ready": take the token, give the slot back (clear, then acknowledge, so that the host
/// may deliver the next), then wake its waiter, or every waiter for a wake-all.
fn on_page_ready(_frame: &mut TrapFrame) {
    apic::eoi();
    let area = Area::this_cpu();
    let token = area.token().load(Ordering::Acquire);
    area.token().store(0, Ordering::Release);
    // SAFETY: the ACK MSR exists: this vector is routed here only after enabling succeeded
    // (`init`), which needs the features leaf's ASYNC_PF_INT bit, the bit that makes the ACK
    // MSR exist, and the host's acceptance of MSR_ASYNC_PF_EN. The MSR stays after a `disable`.
    // Writing 1 only tells the host to look for the next page ready.
    unsafe { Msr::new(abi::MSR_ASYNC_PF_ACK).write(abi::ACK) };
    // One borrow: count, and look the token up; whoever is woken is woken after it.
    let wake = STATE.with(|s| {
        s.stats.page_ready += 1;
        match page_ready(token) {
            PageReady::Spurious => {
                s.stats.spurious += 1;
                breach::note(Breach::ApfReadySpurious, 0, 0);
            }
            PageReady::WakeAll => return Wake::All,
            PageReady::Wake(token) => match s.table.on_wake(token, RESULT_RETRY) {
                WakeOutcome::Wake { task, result, .. } => return Wake::Task(task, result),
                // No "page not present" for it (KVM sends "page ready" only after its "page
                // not present"): kept for one that may come, or refused.
                WakeOutcome::Early | WakeOutcome::Rejected(_) => unknown_ready(token),
                WakeOutcome::HaltDone | WakeOutcome::Late => {}
            },
        }
        // Nobody to wake (a spurious one, a wake kept or absorbed): done here.
        Wake::Nobody
    });
    let stale = match wake {
        Wake::Nobody => return,
        Wake::Task(task, result) => u64::from(wait::wake(task, result)),
        Wake::All => {
            wake_every_waiter();
            0
        }
    };
    STATE.with(|s| s.stats.stale_wakes += stale);
}
