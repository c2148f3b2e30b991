//! The kernel glue of #VE: each vCPU's VE information area and its registration, the vector 20
//! handler, its counters, and the per-vCPU test hook that lands an event at an exact point of
//! the handler.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, compiler_fence};

use pvagent_abi::breach::Breach;
use pvagent_abi::cpuid::Features;
use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::pnp::RESULT_FAILED;
use pvagent_abi::ve::{self as abi, VeInfo};

use super::{
    Choice, Context, Copied, OnFailure, ParkAnswer, check_copy, check_outcome, check_park_answer, decide, on_failure,
};
use crate::arch::fault::{self, Fault};
use crate::arch::hypercall::{self, HypercallError};
use crate::arch::percpu::{self, CpuLocal, MAX_CPUS};
use crate::arch::trap::{self, TrapFrame};
use crate::cell::StaticCell;
use crate::pv::tokens::Waiter;
use crate::pv::{breach, pnp};
use crate::task;
use crate::task::table::{ExitStatus, TaskId};
use crate::{kprintln, kreport};

/// One vCPU's VE information area: a whole page, 4 KiB aligned, as the VMCS field that would
/// name it on VMX must be. Zero from the loader (`.bss`), which is what registration needs.
#[repr(C, align(4096))]
struct AreaPage([u8; 4096]);

/// Shared with the host: accessed through raw pointers, atomically (`busy`, [`busy_word`]: the
/// one reference formed into it is an `AtomicU32`'s, which memory another agent writes allows)
/// or with volatile loads (the rest, [`copy_area`]); no plain Rust reference to it is formed.
static AREAS: StaticCell<[AreaPage; MAX_CPUS]> = StaticCell::new([const { AreaPage([0; 4096]) }; MAX_CPUS]);

/// vCPU `cpu`'s area.
fn area(cpu: usize) -> *mut VeInfo {
    AREAS.get().cast::<AreaPage>().wrapping_add(cpu).cast::<VeInfo>()
}

fn busy_word(area: *mut VeInfo) -> &'static AtomicU32 {
    // SAFETY: `busy` is a 4-byte aligned field of a static page; atomics are how memory the
    // host also writes is accessed.
    unsafe { AtomicU32::from_ptr(&raw mut (*area).busy) }
}

/// Copies the area to the stack: `busy` first, with acquire (the host stores it last, with
/// release), then every other field with a volatile load. Never a reference into the area.
#[inline(always)]
fn copy_area(area: *mut VeInfo) -> VeInfo {
    let busy = busy_word(area).load(Ordering::Acquire);
    // SAFETY: every field lies in the static page and is naturally aligned; volatile because
    // the host writes them behind the compiler's back.
    unsafe {
        VeInfo {
            exit_reason: core::ptr::read_volatile(&raw const (*area).exit_reason),
            busy,
            exit_qualification: core::ptr::read_volatile(&raw const (*area).exit_qualification),
            guest_linear_address: core::ptr::read_volatile(&raw const (*area).guest_linear_address),
            guest_physical_address: core::ptr::read_volatile(&raw const (*area).guest_physical_address),
            eptp_index: core::ptr::read_volatile(&raw const (*area).eptp_index),
            reserved: [0; 6],
        }
    }
}

/// Declares each vCPU's #VE counters once: [`Counters`] (atomics, so that any vCPU may read
/// another's; the tests do) and [`Stats`], a copy of them, with the same names and docs.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        #[derive(Debug)]
        struct Counters {
            $($(#[doc = $doc])* $name: AtomicU64,)*
        }

        impl Counters {
            const fn new() -> Self {
                Self { $($name: AtomicU64::new(0),)* }
            }

            fn stats(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        /// What a vCPU saw of #VE.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }
    };
}

counters! {
    /// #VEs that named a page (each is answered with one request or ends its context).
    taken,
    /// Of those, taken inside another handler (trap depth above 1): nested entries.
    nested,
    /// Tasks parked on a `VePark` token (counted once woken).
    parked,
    /// Waits in the HLT loop on a `VePark` token.
    halted,
    /// `VePark` tokens whose resolution the ring's table already held when the handler recorded
    /// the token, so nobody waited (rare: interrupts stay off from the request to the record).
    resolved_before_wait,
    /// `VeSuspend` requests.
    suspended,
    /// `VePark` answered "no token" (the ring's tokens are all out): suspended instead.
    park_refused,
    /// `VePark` answered with the outcome at once (no token).
    answered_at_once,
    /// Tokens the ring's table rejected (counted there too): suspended instead.
    token_rejected,
    /// Pages that failed.
    failed,
    /// #VEs whose area the host had not marked busy.
    not_busy,
    /// #VEs with an exit reason other than an EPT violation.
    unknown_reason,
    /// #VEs delivered while this vCPU's busy word was still set (the host broke the contract).
    busy_violations,
    /// Copies discarded because such a #VE came while they were taken.
    discarded,
    /// #VEs naming a page outside the demand-paged region.
    outside_region,
    /// Answers to `VePark` or `VeSuspend` the ABI does not allow (an outcome other than exactly
    /// retry or failed, a token wider than 32 bits or with sequence 0).
    bad_answers,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A vCPU's #VE state. Only its own vCPU writes it, from the handler (interrupts off) or, for
/// the hook, from a test about to cause a #VE.
#[derive(Debug)]
struct VeCpu {
    /// Set from the handler's entry until right after its store of `busy = 0`: a #VE that finds
    /// it set was delivered while the busy word was still set.
    copying: AtomicBool,
    /// A test hook ([`Hook`] bits) for the next #VE on this vCPU, taken by it; 0 almost always.
    hook: AtomicU32,
    /// The page the hook touches, and what it read there.
    hook_gpa: AtomicU64,
    hook_value: AtomicU64,
    counters: Counters,
}

static CPUS: CpuLocal<VeCpu> = CpuLocal::new(
    [const {
        VeCpu {
            copying: AtomicBool::new(false),
            hook: AtomicU32::new(0),
            hook_gpa: AtomicU64::new(0),
            hook_value: AtomicU64::new(0),
            counters: Counters::new(),
        }
    }; MAX_CPUS],
);

/// Whether the boot vCPU registered an area (each AP then registers its own).
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// The demand-paged region's guest-physical range, `[start, end)`: the only pages a #VE may
/// name ([`check_copy`]). Filled by the first #VE that finds `end` 0 ([`region`]), not at boot,
/// which is held to its own budget; asking `pnp::host_region` on every #VE cost 14
/// instructions more than these two loads.
static REGION_START: AtomicU64 = AtomicU64::new(0);
static REGION_END: AtomicU64 = AtomicU64::new(0);

/// The region's range, as [`REGION_START`] says.
#[inline(always)]
fn region() -> core::ops::Range<u64> {
    // Acquire: pairs with `fill_region`'s release store of `end`, after `start`.
    let end = REGION_END.load(Ordering::Acquire);
    if end == 0 {
        return fill_region();
    }
    REGION_START.load(Ordering::Relaxed)..end
}

/// The first #VE's part of [`region`]: the region `init` registered the handler for (every
/// vCPU that races here stores the same values).
#[cold]
#[inline(never)]
fn fill_region() -> core::ops::Range<u64> {
    let region = pnp::host_region().map_or(0..0, |(region, _)| region.base..region.end());
    REGION_START.store(region.start, Ordering::Relaxed);
    REGION_END.store(region.end, Ordering::Release);
    region
}

/// Registers this vCPU's area and the handler, when the host produces #VE
/// ([`Features::VE`]) and offers its demand pager; otherwise nothing (QEMU, AMD, a host without
/// it): the page-not-present ring and the synchronous path serve every access as before. No
/// console line and no command line key: boot is held to an instruction budget.
pub fn init() {
    let offered = crate::arch::platform().hypervisor.host_features().has(Features::VE);
    let pager = pnp::host_region().is_some_and(|(region, _)| region.pages > 0);
    if !(offered && pager) {
        return;
    }
    trap::register(abi::VECTOR, on_ve);
    match register() {
        Ok(()) => REGISTERED.store(true, Ordering::Relaxed),
        Err(e) => registration_refused(e),
    }
}

/// An AP's part of [`init`]: its own area.
pub fn init_cpu() {
    if REGISTERED.load(Ordering::Relaxed)
        && let Err(e) = register()
    {
        registration_refused(e);
    }
}

/// The host offered #VE (`Features::VE`) and refused a registration the ABI allows (a zeroed,
/// aligned page in RAM): it broke its promise. Counted and reported; this vCPU goes on without
/// #VE (the ring and the synchronous path serve its accesses).
#[cold]
fn registration_refused(e: Fault) {
    let cpu = percpu::index();
    breach::note(Breach::VeInfoMsrFaults, e.error_code, area(cpu) as u64);
    kprintln!(
        "ve: registration refused on vCPU {cpu} ({e}; host broke {}): no #VE on this vCPU",
        Breach::VeInfoMsrFaults
    );
}

/// Registers this vCPU's area (zero: its busy word is 0, so #VE is armed).
fn register() -> Result<(), Fault> {
    fault::probe_write_msr(abi::MSR_VE_INFO, area(percpu::index()) as u64 | abi::MSR_ENABLE)
}

/// This vCPU's busy word, and a test's way out of a #VE the handler left unanswered on purpose
/// (an unknown exit reason, a page outside the region: the word stays set and this vCPU's
/// accesses wait synchronously): with `clear`, stores 0, re-arming #VE here. Returns the word
/// as it was.
pub fn busy_word_for_test(clear: bool) -> u32 {
    let word = busy_word(area(percpu::index()));
    if clear { word.swap(0, Ordering::AcqRel) } else { word.load(Ordering::Acquire) }
}

/// Whether the boot vCPU registered its area.
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Relaxed)
}

/// `MSR_VE_INFO` as the host holds it for this vCPU, and the value this vCPU registered. Only
/// where [`registered`] (the host serves the MSR then).
pub fn registration() -> (u64, u64) {
    // SAFETY: the host accepted a write of this MSR at boot, so it serves its read; reading it
    // has no effect.
    let held = unsafe { x86_64::registers::model_specific::Msr::new(abi::MSR_VE_INFO).read() };
    (held, area(percpu::index()) as u64 | abi::MSR_ENABLE)
}

/// Test hooks: what the next #VE on this vCPU does at one exact point of its handler.
pub mod hook {
    /// Before `busy = 0`: read the hook's page (the host must not deliver a second #VE; the
    /// vCPU waits synchronously, unless the host was told to ignore the busy word).
    pub const TOUCH_BEFORE_CLEAR: u32 = 1 << 0;
    /// Right after `busy = 0`, before the decision: read the hook's page (a nested #VE, legal).
    pub const TOUCH_AFTER_CLEAR: u32 = 1 << 1;
    /// Right after `busy = 0`: `VeInjectNmi` (an NMI in the middle of the handler).
    pub const NMI_AFTER_CLEAR: u32 = 1 << 2;
    /// With [`TOUCH_BEFORE_CLEAR`]: arm the host's `fault::IGNORE_BUSY` right before the touch
    /// (armed earlier, the #VE this hook runs in would have used it up), so that the host
    /// breaks the contract exactly there.
    pub const IGNORE_BUSY_FOR_TOUCH: u32 = 1 << 3;
    /// As [`IGNORE_BUSY_FOR_TOUCH`], through the fault-injection hypercall instead
    /// (`HostBreak` of `Breach::VeOverBusyArea`).
    pub const BREAK_BUSY_FOR_TOUCH: u32 = 1 << 4;
}

/// Arms `hook` bits for the next #VE on this vCPU, with `gpa` the page the touching hooks read.
pub fn arm_hook(hook: u32, gpa: u64) {
    let me = CPUS.get();
    me.hook_gpa.store(gpa, Ordering::Relaxed);
    me.hook_value.store(0, Ordering::Relaxed);
    me.hook.store(hook, Ordering::Release);
}

/// Whether this vCPU's hook is still armed (no #VE took it yet), and what its touch read.
pub fn hook_state() -> (bool, u64) {
    let me = CPUS.get();
    (me.hook.load(Ordering::Acquire) != 0, me.hook_value.load(Ordering::Relaxed))
}

/// Runs the hook bits `hook` selects among `which`. Out of line: the handler's own path is a
/// load and a branch.
#[cold]
#[inline(never)]
fn run_hook(me: &VeCpu, hook: u32, which: u32) {
    if hook & which & hook::TOUCH_BEFORE_CLEAR != 0 && hook & hook::IGNORE_BUSY_FOR_TOUCH != 0 {
        let _ = set_faults(abi::fault::IGNORE_BUSY);
    }
    if hook & which & hook::TOUCH_BEFORE_CLEAR != 0 && hook & hook::BREAK_BUSY_FOR_TOUCH != 0 {
        let _ = breach::arm(Breach::VeOverBusyArea);
    }
    if hook & which & (hook::TOUCH_BEFORE_CLEAR | hook::TOUCH_AFTER_CLEAR) != 0 {
        let gpa = me.hook_gpa.load(Ordering::Relaxed);
        // SAFETY: the test gave a word of the demand-paged region, identity mapped for the
        // kernel; the load is what reaches the host.
        let value = unsafe { core::ptr::read_volatile(gpa as *const u64) };
        me.hook_value.store(value, Ordering::Relaxed);
    }
    if hook & which & hook::NMI_AFTER_CLEAR != 0 {
        let _ = hypercall::call(Nr::VeInjectNmi, [0; 4]);
    }
}

/// Vector 20. Copy, check, re-arm, then decide from the copy and the frame alone (module docs;
/// docs/design.md, "#VE: the guest's handler").
fn on_ve(frame: &mut TrapFrame) {
    let cpu = percpu::index();
    let (me, area) = (CPUS.of(cpu), area(cpu));
    // A #VE while an outer handler of this vCPU has not re-armed the area yet: the host
    // delivered it over a set busy word. The area may hold this one's report or a torn mix:
    // nothing here is acted on (the outer handler discards its copy, below).
    if me.copying.swap(true, Ordering::Relaxed) {
        busy_violation(me, frame);
        return;
    }
    let violations = me.counters.busy_violations.load(Ordering::Relaxed);
    let info = copy_area(area);
    let hook = me.hook.load(Ordering::Relaxed);
    if hook != 0 {
        me.hook.store(0, Ordering::Relaxed);
        run_hook(me, hook, hook::TOUCH_BEFORE_CLEAR);
    }
    let gpa = match check_copy(&info, region()) {
        Copied::Page { gpa } => gpa,
        // Not re-armed: a busy word the host set stays set, so a host that reports what this
        // guest does not know raises no further #VE here (its accesses wait synchronously).
        Copied::NotBusy { busy } => {
            let rule = Breach::VeNotMarkedBusy;
            breach::note(rule, u64::from(busy), frame.rip);
            return odd_ve(me, &me.counters.not_busy, "not marked busy", busy, frame, Some(rule));
        }
        Copied::UnknownReason { reason } => {
            let rule = Breach::VeUnknownExitReason;
            breach::note(rule, u64::from(reason), frame.rip);
            return odd_ve(me, &me.counters.unknown_reason, "with an unknown exit reason", reason, frame, Some(rule));
        }
        // Also not re-armed: an access the host keeps reporting outside the region then waits
        // in the host, synchronously, instead of raising the same report again and again.
        Copied::OutsideRegion { gpa } => {
            let rule = Breach::VeGpaOutsideRegion;
            breach::note(rule, gpa, frame.rip);
            return odd_ve(me, &me.counters.outside_region, "outside the demand-paged region", gpa, frame, Some(rule));
        }
    };
    // Re-arm: from here on the host may deliver the next #VE, which nests below this frame on
    // the same stack and overwrites nothing of this handler's.
    busy_word(area).store(0, Ordering::Release);
    me.copying.store(false, Ordering::Release);
    // Neither the store above nor the check below moves across the other.
    compiler_fence(Ordering::SeqCst);
    if me.counters.busy_violations.load(Ordering::Relaxed) != violations {
        // A #VE came over the set busy word while this copy was being taken: the copy may be
        // torn. Dropping it is safe: a fault-type #VE's access is retried and raises a fresh
        // #VE; a trap-type's access completed with its data already.
        Counters::add(&me.counters.discarded);
        return;
    }
    if hook != 0 {
        run_hook(me, hook, hook::TOUCH_AFTER_CLEAR | hook::NMI_AFTER_CLEAR);
    }
    Counters::add(&me.counters.taken);
    let (context, current) = context_of(frame);
    if context.trap_depth > 1 {
        Counters::add(&me.counters.nested);
    }
    let (token, result) = match decide(context) {
        // `decide` parks only a context it asked the scheduler about, which named its task.
        Choice::Park => park(me, gpa, current.map_or(Waiter::Halt, Waiter::Task)),
        Choice::HltLoop => park(me, gpa, Waiter::Halt),
        Choice::Suspend => (abi::NO_TOKEN as u32, suspend(me, gpa)),
    };
    if result == RESULT_FAILED {
        Counters::add(&me.counters.failed);
        page_failed(context, frame, token, gpa);
    }
}

/// The context the #VE interrupted, as [`decide`] takes it. The scheduler and the ring are asked
/// only when the context had interrupts on: one with them off may be inside a borrow of their
/// per-vCPU state (every borrow keeps interrupts off), which asking again from here would find
/// taken; nor is it needed, since with interrupts off the answer is to suspend whatever the rest
/// says (and a failed page stops the run). With the context, its task when it was asked.
fn context_of(frame: &TrapFrame) -> (Context, Option<TaskId>) {
    let mut context = Context {
        interrupts_were_on: frame.interrupts_were_enabled(),
        trap_depth: percpu::trap_depth(),
        idle: false,
        no_sleep: false,
        other_ready: false,
        cpl: frame.cpl(),
        ring_registered: false,
    };
    if !context.interrupts_were_on {
        return (context, None);
    }
    let scheduler = task::trap_context();
    (context.idle, context.no_sleep, context.other_ready) = (scheduler.idle, scheduler.no_sleep, scheduler.other_ready);
    context.ring_registered = pnp::registered_entries() != 0;
    (context, Some(scheduler.current))
}

/// `VePark`, then the wait its answer calls for; returns the token (or [`abi::NO_TOKEN`]) and
/// the page's outcome.
fn park(me: &VeCpu, gpa: u64, waiter: Waiter) -> (u32, u32) {
    let answer = hypercall::call(Nr::VePark, [gpa, 0, 0, 0]);
    match answer.map(check_park_answer) {
        Ok(ParkAnswer::AtOnce { outcome }) => {
            Counters::add(&me.counters.answered_at_once);
            (abi::NO_TOKEN as u32, outcome)
        }
        Ok(ParkAnswer::Malformed) => {
            // Neither a token the ring could hold nor an outcome: waiting on it could take
            // another access's resolution, or none would come. The host keeps the vCPU instead.
            let ret = answer.unwrap_or_default();
            let rule = if ret[0] == abi::NO_TOKEN { Breach::VeParkBadOutcome } else { Breach::VeParkBadToken };
            breach::note(rule, ret[0], ret[1]);
            bad_answer(me, "VePark", gpa, rule);
            (abi::NO_TOKEN as u32, suspend(me, gpa))
        }
        Ok(ParkAnswer::Token(token)) => {
            match pnp::wait_for_token(token, gpa, waiter) {
                Ok((result, waited)) => {
                    let count = match (waited, waiter) {
                        (false, _) => &me.counters.resolved_before_wait,
                        (true, Waiter::Task(_)) => &me.counters.parked,
                        (true, Waiter::Halt) => &me.counters.halted,
                    };
                    Counters::add(count);
                    (token.0, result)
                }
                Err(why) => {
                    // The table counted it; its resolution, when it comes, is dropped there.
                    Counters::add(&me.counters.token_rejected);
                    kreport!("ve: park token {:#x} rejected: {why:?}", token.0);
                    (abi::NO_TOKEN as u32, suspend(me, gpa))
                }
            }
        }
        Err(HypercallError::Status(Status::NoToken)) => {
            Counters::add(&me.counters.park_refused);
            (abi::NO_TOKEN as u32, suspend(me, gpa))
        }
        Err(e) => fault::fatal(format_args!("ve: VePark({gpa:#x}) failed: {e:?}")),
    }
}

/// `VeSuspend`: the host keeps the vCPU until the page is present or failed. An answer that is
/// no outcome ([`check_outcome`], as for `VePark`) is counted like `VePark`'s, and then stops
/// the run: suspending is already the fallback, and taking it for "present" could go on
/// without the page's data (a CPL 0 access completes before its #VE on PVM) while taking it
/// for "failed" could end a task whose page is fine.
fn suspend(me: &VeCpu, gpa: u64) -> u32 {
    Counters::add(&me.counters.suspended);
    match hypercall::call(Nr::VeSuspend, [gpa, 0, 0, 0]) {
        Ok([answer, _]) => check_outcome(answer).unwrap_or_else(|| {
            breach::note(Breach::VeSuspendBadOutcome, answer, gpa);
            bad_answer(me, "VeSuspend", gpa, Breach::VeSuspendBadOutcome);
            fault::fatal(format_args!(
                "ve: VeSuspend({gpa:#x}) answered {answer:#x}, not an outcome (host broke {})",
                Breach::VeSuspendBadOutcome
            ))
        }),
        Err(e) => fault::fatal(format_args!("ve: VeSuspend({gpa:#x}) failed: {e:?}")),
    }
}

/// An answer the ABI does not allow ([`check_park_answer`], [`check_outcome`]): counted, and
/// reported the first time per vCPU.
#[cold]
fn bad_answer(me: &VeCpu, request: &str, gpa: u64, rule: Breach) {
    if me.counters.bad_answers.fetch_add(1, Ordering::Relaxed) == 0 {
        kreport!(
            "ve: the host's answer to {request}({gpa:#x}) is no token and no outcome (host broke {rule}): suspended instead"
        );
    }
}

/// The page at `gpa` failed: the task that touched it ends, or, for a context that is no task
/// that can be ended, the run.
fn page_failed(context: Context, frame: &TrapFrame, token: u32, gpa: u64) {
    match on_failure(context) {
        OnFailure::EndTask => {
            kreport!("task {} ended: its page {gpa:#x} failed (#VE)", task::name(task::current()));
            task::exit_current(ExitStatus::Killed(pnp::PageFailed { token, gpa }.into()));
        }
        OnFailure::StopRun => fault::fatal(format_args!(
            "page {gpa:#x} failed under a context that cannot be ended (#VE at rip {:#x}, trap depth {}, interrupts {})",
            frame.rip,
            context.trap_depth,
            if context.interrupts_were_on { "on" } else { "off" }
        )),
    }
}

/// A #VE delivered over a set busy word: counted, reported once per vCPU naming the rule.
#[cold]
fn busy_violation(me: &VeCpu, frame: &TrapFrame) {
    breach::note(Breach::VeOverBusyArea, frame.rip, percpu::index() as u64);
    if me.counters.busy_violations.fetch_add(1, Ordering::Relaxed) == 0 {
        kreport!(
            "ve: the host delivered #VE while the busy word was set (rip {:#x}; host broke {}): the rule is no #VE until the guest writes 0; ignored",
            frame.rip,
            Breach::VeOverBusyArea
        );
    }
}

/// A #VE this guest cannot act on: counted, reported the first time per vCPU, returned from.
#[cold]
fn odd_ve(
    me: &VeCpu,
    counter: &AtomicU64,
    what: &str,
    value: impl core::fmt::LowerHex,
    frame: &TrapFrame,
    rule: Option<Breach>,
) {
    me.copying.store(false, Ordering::Release);
    if counter.fetch_add(1, Ordering::Relaxed) == 0 {
        match rule {
            Some(rule) => kreport!("ve: #VE {what} ({value:#x}) at rip {:#x} (host broke {rule}): ignored", frame.rip),
            None => kreport!("ve: #VE {what} ({value:#x}) at rip {:#x}: ignored", frame.rip),
        }
    }
}

/// vCPU `cpu`'s counters.
pub fn stats_of(cpu: usize) -> Stats {
    CPUS.of(cpu).counters.stats()
}

/// This vCPU's counters.
pub fn stats() -> Stats {
    stats_of(percpu::index())
}

/// Arms the host's [`abi::fault`] switches for the next #VE delivered to this vCPU.
pub fn set_faults(switches: u64) -> Result<u64, HypercallError> {
    hypercall::call(Nr::VeSetFaults, [switches, 0, 0, 0]).map(|r| r[0])
}
