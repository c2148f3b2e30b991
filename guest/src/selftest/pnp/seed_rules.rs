//! Seed 001's own rules, each shown end to end (docs/robustness.md, "Seed 001's rules, end to
//! end"): a failed page touched again, an event whose linear address is unknown or known, and
//! every condition beside RFLAGS.IF that makes an event undeliverable (the STI and MOV SS
//! shadows, the task priority, an event area the guest has not given back), each of which must
//! send the access down the synchronous path with the right data.

use core::arch::asm;
use core::sync::atomic::AtomicBool;

use x86_64::instructions::interrupts;

use super::*;

/// An access the host must serve without an event, and how it is made: `access(gpa)` returns
/// the word at `gpa`.
fn blocked_access_takes_the_sync_path(why: &str, access: fn(u64) -> u64) -> TestResult {
    let region = pager()?;
    ensure!(interrupts::are_enabled(), "the test must start with interrupts on (it checks more than IF)");
    latency(2_000, 2_000)?;
    let gpa = fresh_pages(&region, 1)? + 0x1C8;
    let (events, delivered, sync) =
        (pnp::stats().events, counter(HostCounter::EventsDelivered)?, counter(HostCounter::SyncWaits)?);
    let value = access(gpa);
    ensure!(interrupts::are_enabled(), "interrupts are off after the access");
    ensure_eq_hex!(value, backing_pattern(gpa), "data");
    ensure_eq!(counter(HostCounter::EventsDelivered)? - delivered, 0, "events the host delivered {}", why);
    ensure_eq!(pnp::stats().events - events, 0, "events taken {}", why);
    ensure_eq!(counter(HostCounter::SyncWaits)? - sync, 1, "synchronous waits {}", why);
    Ok(())
}

/// The load is the instruction right after `sti` (interrupts were off just before): STI's
/// shadow blocks an interrupt until it completes.
fn read_in_the_sti_shadow(gpa: u64) -> u64 {
    let value: u64;
    // SAFETY: `gpa` is a word of the demand region, identity mapped for the kernel; the caller
    // runs with interrupts on, so `cli; sti` leaves them as they were.
    unsafe {
        asm!("cli", "sti", "mov {v}, qword ptr [{a}]", a = in(reg) gpa, v = lateout(reg) value, options(nostack))
    };
    value
}

/// The word at `$gpa`, loaded by the instruction right after `mov ss` (SS reloaded with the
/// selector it holds, which changes nothing): MOV SS's shadow blocks an interrupt until the load
/// completes. A macro, so that the CPL 3 task's copy is expanded inside its own `.user_text`.
macro_rules! load_in_the_mov_ss_shadow {
    ($gpa:expr) => {{
        let value: u64;
        // SAFETY: the caller's `$gpa` is a mapped word of the demand region; reloading SS with
        // its own selector changes nothing.
        unsafe {
            asm!(
                "mov {s:x}, ss",
                "mov ss, {s:x}",
                "mov {v}, qword ptr [{a}]",
                a = in(reg) $gpa,
                s = out(reg) _,
                v = lateout(reg) value,
                options(nostack)
            )
        };
        value
    }};
}

/// The load is the instruction right after `mov ss`. Interrupts stay on throughout.
fn read_in_the_mov_ss_shadow(gpa: u64) -> u64 {
    load_in_the_mov_ss_shadow!(gpa)
}

/// The load runs with CR8 (the local APIC's task priority) at the event vector's priority
/// class: an interrupt of that class waits. CR8 goes back to what it was right after.
fn read_with_the_event_class_masked(gpa: u64) -> u64 {
    let value: u64;
    let class = u64::from(pnp::EVENT_VECTOR >> 4);
    // SAFETY: as above; CR8 is restored in the same block, so nothing else runs under it.
    unsafe {
        asm!(
            "mov {old}, cr8",
            "mov cr8, {class}",
            "mov {v}, qword ptr [{a}]",
            "mov cr8, {old}",
            a = in(reg) gpa,
            class = in(reg) class,
            old = out(reg) _,
            v = lateout(reg) value,
            options(nostack)
        )
    };
    value
}

/// A vector of a priority class above the event's (0x51, class 5), for the handler below.
const HIGHER_CLASS_VECTOR: u8 = 0x61;
/// The word the handler reads (0: none, only look), and what it read (`u64::MAX`: not yet).
static IN_SERVICE_GPA: AtomicU64 = AtomicU64::new(0);
static IN_SERVICE_VALUE: AtomicU64 = AtomicU64::new(u64::MAX);
/// Whether the handler found its own vector in service (the local APIC's ISR), as it should.
static IN_SERVICE_SEEN: AtomicBool = AtomicBool::new(false);

/// The handler of [`HIGHER_CLASS_VECTOR`]: reads the word `IN_SERVICE_GPA` names before its EOI,
/// with interrupts on again, so that the vector in service (not IF) is what holds the event.
fn higher_class_handler(_frame: &mut crate::arch::trap::TrapFrame) {
    IN_SERVICE_SEEN.store(crate::arch::apic::in_service(HIGHER_CLASS_VECTOR), Ordering::Release);
    let gpa = IN_SERVICE_GPA.load(Ordering::Acquire);
    let mut value = 0;
    if gpa != 0 {
        // SAFETY: `gpa` is a word of the demand region, identity mapped for the kernel. `sti;
        // nop` ends STI's shadow before the load (the shadow is not what is tested here), and
        // `cli` gives the handler back the state it had.
        unsafe {
            asm!("sti", "nop", "mov {v}, qword ptr [{a}]", "cli", a = in(reg) gpa, v = inout(reg) value, options(nostack))
        };
    }
    IN_SERVICE_VALUE.store(value, Ordering::Release);
    crate::arch::apic::eoi();
}

/// Raises [`HIGHER_CLASS_VECTOR`] on this vCPU and waits for its handler, which reads `gpa`
/// (0: nothing); returns what it read. The deadline only turns a lost interrupt into a wrong
/// value instead of a hang.
fn read_in_a_higher_class_handler(gpa: u64) -> u64 {
    IN_SERVICE_GPA.store(gpa, Ordering::Release);
    IN_SERVICE_VALUE.store(u64::MAX, Ordering::Release);
    crate::arch::trap::register(HIGHER_CLASS_VECTOR, higher_class_handler);
    crate::arch::apic::send_self_ipi(HIGHER_CLASS_VECTOR);
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    let _irq = IrqGuard::new();
    halt::wait_until(|| {
        let value = IN_SERVICE_VALUE.load(Ordering::Acquire);
        (value != u64::MAX || crate::arch::ticks() > deadline).then_some(value)
    })
}

/// A CPL 3 task whose load is the instruction right after `mov ss` (SS reloaded with itself):
/// exits with the word read.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read_in_the_mov_ss_shadow(gpa: u64) -> ! {
    // `gpa` is a word of the demand region, mapped for CPL 3.
    user::exit(load_in_the_mov_ss_shadow!(gpa))
}

/// The same in a CPL 3 task: its access reaches the host as a bare EFAULT, the instruction not
/// run, so an event would come before it, inside the shadow.
fn user_task_reads_in_the_mov_ss_shadow(gpa: u64) -> u64 {
    match task::spawn_user("pnp-mov-ss", user_read_in_the_mov_ss_shadow, gpa).map(task::join) {
        Ok(Ok(ExitStatus::Returned(value))) => value,
        other => {
            kprintln!("pnp: the CPL 3 task in MOV SS's shadow: {other:?}");
            !backing_pattern(gpa)
        }
    }
}

pub(super) fn user_mov_ss_shadow_access_takes_the_sync_path() -> TestResult {
    if pnp::host_mode() == HostMode::KvmApfKernel {
        // KVM itself decides there, and the PVM /dev/kvm of our machines raises its "page not
        // present" at CPL 3 in MOV SS's shadow (its EFAULT path does not see the shadow).
        return Err(Failure::Skip("KVM delivers its own async page faults in this mode, shadow or not (PVM)"));
    }
    blocked_access_takes_the_sync_path("in MOV SS's shadow at CPL 3", user_task_reads_in_the_mov_ss_shadow)
}

pub(super) fn sti_shadow_access_takes_the_sync_path() -> TestResult {
    blocked_access_takes_the_sync_path("in STI's shadow", read_in_the_sti_shadow)
}

pub(super) fn mov_ss_shadow_access_takes_the_sync_path() -> TestResult {
    blocked_access_takes_the_sync_path("in MOV SS's shadow", read_in_the_mov_ss_shadow)
}

pub(super) fn task_priority_access_takes_the_sync_path() -> TestResult {
    blocked_access_takes_the_sync_path("with CR8 at the event's class", read_with_the_event_class_masked)
}

pub(super) fn in_service_vector_access_takes_the_sync_path() -> TestResult {
    // The PVM /dev/kvm of our machines shows no vector in service inside its handler (the
    // guest's ISR read and the host's KVM_GET_LAPIC agree): the state cannot be made there.
    read_in_a_higher_class_handler(0);
    if !IN_SERVICE_SEEN.load(Ordering::Acquire) {
        return Err(Failure::Skip("this host's local APIC shows no vector in service inside its handler (PVM)"));
    }
    blocked_access_takes_the_sync_path("with a higher class in service", read_in_a_higher_class_handler)
}

/// A kernel task that reads the word at `gpa`.
fn kernel_reader(gpa: u64) -> u64 {
    read(gpa)
}

/// A kernel task that reads the word at `gpa`, then makes an exit (a host counter's hypercall):
/// on PVM an event held back behind another interrupt is injected at the vCPU's next exit at the
/// latest (docs/abi.md), so the event of a failed page ends this task before it returns.
fn kernel_reader_then_exit(gpa: u64) -> u64 {
    let value = read(gpa);
    let _ = pnp::host_counter(HostCounter::EventsDelivered);
    value
}

/// Joins `id` and returns the token it was told failed, checking that its page was `gpa`'s.
fn ended_by_failure(id: TaskId, gpa: u64) -> Result<u32, Failure> {
    match join(id)? {
        ExitStatus::Killed(reason) if let Some(failed) = pnp::PageFailed::from_reason(&reason) => {
            ensure_eq_hex!(failed.gpa & !0xFFF, gpa & !0xFFF, "failed page reported");
            Ok(failed.token)
        }
        other => Err(fail(format_args!("a task that touched a failed page ended with {other:?}"))),
    }
}

/// A failed page touched again gets a new event with a new token, resolved "failed" before the
/// event, with no new fetch: at CPL 3 (the access not run) and at CPL 0 (on PVM the access is
/// completed and the event comes right after it). Once the host has the page (`PnpSetPage` on
/// the failed page: it fetches it anew), the next access gets it, with the right data.
pub(super) fn failed_page_touched_again_fails_again_until_the_host_has_it() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::set_page_behaviour(gpa, PageBehaviour::Fail).map_err(|e| fail(format_args!("fail the page: {e:?}")))?;
    let delivered = counter(HostCounter::EventsDelivered)?;
    let failed = counter(HostCounter::ResolvedFailed)?;
    let fetched = counter(HostCounter::PagesFetched)?;
    let early = counter(HostCounter::ResolvedBeforeEvent)?;
    let first = ended_by_failure(spawned(task::spawn_user("pnp-failed-1", user_read_two_words, gpa + 0x40))?, gpa)?;
    let again = ended_by_failure(spawned(task::spawn_user("pnp-failed-2", user_read_two_words, gpa + 0x80))?, gpa)?;
    let kernel =
        ended_by_failure(spawned(task::spawn_kernel("pnp-failed-3", kernel_reader_then_exit, gpa + 0xC0))?, gpa)?;
    ensure!(
        first != again && again != kernel && first != kernel,
        "tokens {first:#x}, {again:#x}, {kernel:#x}: each touch must get a token of its own"
    );
    ensure_eq!(counter(HostCounter::EventsDelivered)? - delivered, 3, "events, one per touch");
    ensure_eq!(counter(HostCounter::ResolvedFailed)? - failed, 3, "resolutions 'failed'");
    ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 1, "fetches (the touches again start none)");
    ensure_eq!(counter(HostCounter::ResolvedBeforeEvent)? - early, 2, "resolutions written before their event");
    // The host has the page now: the next touch fetches it and gets its contents.
    pnp::set_page_behaviour(gpa, PageBehaviour::Normal).map_err(|e| fail(format_args!("set normal: {e:?}")))?;
    let user = spawned(task::spawn_user("pnp-failed-back", user_read_two_words, gpa + 0x100))?;
    let expected = backing_pattern(gpa + 0x100) ^ backing_pattern(gpa + 0x108).rotate_left(1);
    ensure_eq!(join(user)?, ExitStatus::Returned(expected), "the data once the host has the page");
    ensure_eq!(counter(HostCounter::EventsDelivered)? - delivered, 4, "events after the page came back");
    ensure_eq!(counter(HostCounter::PagesFetched)? - fetched, 2, "fetches after the page came back");
    Ok(())
}

/// The event's linear address, unknown and known: a CPL 0 access on PVM reaches the host as an
/// MMIO exit, which carries no linear address (`flags` bit 0 clear); a CPL 3 access is a bare
/// EFAULT whose instruction the host decodes, so it knows it (bit 0 set, `gva` the linear
/// address of the access, the kernel's identity map making it equal to the GPA here). Both are
/// handled alike: the task waits for its token and resumes with the right data.
pub(super) fn events_with_and_without_a_linear_address_are_handled_alike() -> TestResult {
    let region = pager()?;
    // Every event waits: each task parks, whatever its access's form.
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let base = fresh_pages(&region, 2)?;
    let (kernel_gpa, user_gpa) = (base + 0x128, base + 4096 + 0x238);
    let waited = || pnp::stats().slept + pnp::stats().halted;
    let before = waited();
    let kernel = spawned(task::spawn_kernel("pnp-gva-unknown", kernel_reader, kernel_gpa))?;
    ensure_eq!(join(kernel)?, ExitStatus::Returned(backing_pattern(kernel_gpa)), "the CPL 0 task's data");
    let (gpa, gva) = pnp::last_event_addresses();
    ensure_eq_hex!(gpa, kernel_gpa, "the CPL 0 event's GPA");
    ensure!(gva.is_none(), "the CPL 0 event claims a known linear address, {gva:#x?} (an MMIO exit carries none)");
    let user = spawned(task::spawn_user("pnp-gva-known", user_read_two_words, user_gpa))?;
    let expected = backing_pattern(user_gpa) ^ backing_pattern(user_gpa + 8).rotate_left(1);
    ensure_eq!(join(user)?, ExitStatus::Returned(expected), "the CPL 3 task's data");
    let (gpa, gva) = pnp::last_event_addresses();
    ensure_eq_hex!(gpa, user_gpa, "the CPL 3 event's GPA");
    ensure!(
        gva == Some(user_gpa),
        "the CPL 3 event's linear address: got {gva:#x?}, expected {user_gpa:#x} (the identity map's)"
    );
    ensure_eq!(waited() - before, 2, "waits for a token, parked or in the HLT loop (each event was taken)");
    Ok(())
}

/// Halts until the event vector's interrupt was taken `count` times in all by the handler that
/// leaves the event in its area (on PVM a second pending interrupt comes at the next exit, and
/// HLT is one). The deadline only turns a lost interrupt into a failure instead of a hang.
fn await_left_untaken(count: u32) -> TestResult {
    let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (pnp::events_left_untaken() >= count || crate::arch::ticks() > deadline).then_some(()));
    }
    ensure_eq!(pnp::events_left_untaken(), count, "event interrupts taken with the event left in its area");
    Ok(())
}

/// The event area busy (`inuse` still 1: the guest has not given it back) blocks delivery: the
/// next accesses, at CPL 0 (completed by the host at once) and at CPL 3 (not run: re-entering
/// would bring it straight back, since the event's interrupt was taken), wait synchronously with
/// the right data. Once the guest takes the event, its token is resolved as usual.
pub(super) fn busy_event_area_sends_the_next_accesses_down_the_sync_path() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let base = fresh_pages(&region, 3)?;
    let (held_gpa, kernel_gpa, user_gpa) = (base + 0x10, base + 4096 + 0x20, base + 2 * 4096 + 0x30);
    // The first page is held: its token stays outstanding until the test releases it.
    let mut held = Held::new();
    held.hold(held_gpa)?;
    let (events, slept) = (pnp::stats().events, pnp::stats().slept);
    let delivered = counter(HostCounter::EventsDelivered)?;
    let sync = counter(HostCounter::SyncWaits)?;
    let left = pnp::events_left_untaken();
    pnp::leave_next_event_untaken();
    let first = read(held_gpa);
    let taken = await_left_untaken(left + 1);
    if taken.is_err() {
        held.release_all()?;
        pnp::take_left_event();
        return taken;
    }
    let kernel_value = read(kernel_gpa);
    let user = spawned(task::spawn_user("pnp-busy-user", user_read_two_words, user_gpa))?;
    let user_value = join(user)?;
    let delivered_while_busy = counter(HostCounter::EventsDelivered)? - delivered;
    let sync_while_busy = counter(HostCounter::SyncWaits)? - sync;
    // Let the event's page come, then give the area back (the event is taken as its interrupt
    // would have taken it): in that order, because taking the event may wait for its token right
    // away (this task is the only one, so in the HLT loop), and a held page would never come.
    ensure_eq!(held.release_all()?, 1, "held pages released");
    pnp::take_left_event();
    await_no_token_outstanding()?;
    ensure_eq_hex!(first, backing_pattern(held_gpa), "data of the access whose event was left in the area");
    ensure_eq_hex!(kernel_value, backing_pattern(kernel_gpa), "data of the CPL 0 access while the area was busy");
    let expected = backing_pattern(user_gpa) ^ backing_pattern(user_gpa + 8).rotate_left(1);
    ensure_eq!(user_value, ExitStatus::Returned(expected), "the CPL 3 task's data while the area was busy");
    ensure_eq!(delivered_while_busy, 1, "events delivered (only the first, while the area was free)");
    ensure_eq!(sync_while_busy, 2, "synchronous waits while the area was busy (CPL 0 and CPL 3)");
    ensure_eq!(pnp::stats().events - events, 1, "events taken (the one left in the area, once given back)");
    ensure_eq!(pnp::stats().slept - slept, 0, "tasks parked (no access got an event while the area was busy)");
    Ok(())
}
