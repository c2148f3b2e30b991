//! #VE against the host stub's pager in mode `ve` (`pv::ve`): each way the handler can answer
//! (park, HLT loop, suspend), the re-entry cases the architecture allows (a #VE right after the
//! busy word is cleared, an NMI at the handler's entry and in its middle), the one it forbids
//! (a #VE over a set busy word: no second #VE and a synchronous wait; a host that breaks the
//! rule is detected), failed pages, and every vCPU's own area. Each test forces its path (held
//! pages, the resolution timing, the handler's test hook, the host's switches) and checks it by
//! the guest's and the host's counters, naming the path when it was not taken.

use pvagent_abi::ve::fault;

use super::*;
use crate::arch::{self, nmi, percpu};
use crate::console;
use crate::pv::ve::{self, hook};
use crate::task::remote::{self, RemoteTask};

/// What every test here needs: the pager in mode `ve` with the areas registered.
const VE: &[Need] = &[Need::Pager, Need::VeMode];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("ve::kernel_task_parks_and_resumes_with_the_right_data", kernel_task_parks).needs(VE),
    SelfTest::new("ve::user_task_parks_and_resumes_with_the_right_data", user_task_parks).needs(VE),
    SelfTest::new("ve::lone_task_waits_in_the_hlt_loop", lone_task_waits_in_the_hlt_loop).needs(VE),
    SelfTest::new("ve::interrupts_off_access_suspends", interrupts_off_access_suspends).needs(VE),
    SelfTest::new("ve::busy_word_set_means_no_second_ve_and_a_sync_wait", busy_word_set_means_a_sync_wait).needs(VE),
    SelfTest::new("ve::nested_ve_right_after_busy_is_cleared", nested_ve_right_after_busy_is_cleared).needs(VE),
    SelfTest::new("ve::nmi_at_the_entry_of_a_ve_from_cpl3", nmi_at_the_entry_of_a_ve_from_cpl3).needs(VE),
    SelfTest::new("ve::nmi_in_the_middle_of_the_handler", nmi_in_the_middle_of_the_handler).needs(VE),
    SelfTest::new("ve::failed_page_ends_only_its_task", failed_page_ends_only_its_task).needs(VE),
    SelfTest::new("ve::failed_page_on_the_suspend_path_ends_only_its_task", failed_page_on_the_suspend_path).needs(VE),
    SelfTest::new("ve::ve_over_a_set_busy_word_is_detected", ve_over_a_set_busy_word_is_detected).needs(VE),
    SelfTest::new("ve::every_cpu_takes_ve_in_its_own_area", every_cpu_takes_ve_in_its_own_area).needs(VE),
    SelfTest::new("ve::a_park_token_past_its_deadline_is_reported", a_park_token_past_its_deadline_is_reported)
        .needs(VE),
    SelfTest::new("ve::accounting_is_balanced", ve_accounting_is_balanced).needs(VE),
    // Ends the run: an end-to-end test runs it with the region's first page failing.
    SelfTest::on_request("ve::touch_the_first_page_with_interrupts_off", touch_the_first_page_with_interrupts_off)
        .needs(VE),
];

/// The host's #VE counters and the guest's, before and after.
struct Snapshot {
    delivered: u64,
    busy_waits: u64,
    suspends: u64,
    parks: u64,
    guest: ve::Stats,
}

fn snapshot() -> Result<Snapshot, Failure> {
    Ok(Snapshot {
        delivered: counter(HostCounter::VeDelivered)?,
        busy_waits: counter(HostCounter::VeBusyWaits)?,
        suspends: counter(HostCounter::VeSuspends)?,
        parks: counter(HostCounter::VeParks)?,
        guest: ve::stats(),
    })
}

impl Snapshot {
    /// Host: #VEs delivered, busy waits, suspends, parks since `self`.
    fn host_since(&self) -> Result<[u64; 4], Failure> {
        let now = snapshot()?;
        Ok([
            now.delivered - self.delivered,
            now.busy_waits - self.busy_waits,
            now.suspends - self.suspends,
            now.parks - self.parks,
        ])
    }
}

fn hooked(expected_value: u64) -> TestResult {
    let (armed, value) = ve::hook_state();
    ensure!(!armed, "no #VE took the handler's test hook");
    ensure_eq_hex!(value, expected_value, "what the hook read inside the handler");
    Ok(())
}

/// A read with interrupts off: the #VE it raises must suspend (or, over a set busy word, wait).
fn read_with_interrupts_off(gpa: u64) -> u64 {
    let _irq = IrqGuard::new();
    read(gpa)
}

fn set_faults(switches: u64) -> TestResult {
    ve::set_faults(switches).map(|_| ()).map_err(|e| fail(format_args!("VeSetFaults({switches:#x}): {e:?}")))
}

/// Two fresh pages under `timing`: the first's address, and a word at `offset` in the second
/// (the one the handler's hook touches).
fn two_pages(timing: ResolutionTiming, offset: u64) -> Result<(u64, u64, Pacing), Failure> {
    let region = pager()?;
    let pacing = pacing(0, timing)?;
    let gpa = fresh_pages(&region, 2)?;
    Ok((gpa, gpa + 4096 + offset, pacing))
}

/// Yields until a task of this vCPU is parked on a ring token (a `VePark` token is one): the
/// page is held, so only the park path gets there; the bound on yields is reached otherwise.
fn yield_until_ve_parked() -> TestResult {
    for _ in 0..1000 {
        if pnp::pending().0 >= 1 {
            return Ok(());
        }
        task::yield_now();
    }
    Err(fail(format_args!("the park path was not taken: no task parked on a VePark token after 1000 yields")))
}

/// A task spawned by `spawn` reads a held page at `offset` in a fresh page: it parks on a
/// `VePark` token until the test releases the page, and then ends with `expected(gpa)`.
fn task_parks_on_a_held_page(
    what: &str,
    offset: u64,
    spawn: impl FnOnce(u64) -> Result<TaskId, crate::task::table::SpawnError>,
    expected: impl FnOnce(u64) -> u64,
) -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)? + offset;
    // Held: the page comes only when the test releases it, so the reader must park meanwhile.
    let mut held = Held::new();
    held.hold(gpa & !0xFFF)?;
    let before = snapshot()?;
    let id = spawned(spawn(gpa))?;
    yield_until_ve_parked()?;
    ensure_eq!(held.release_all()?, 1, "held pages released");
    ensure_eq!(join(id)?, ExitStatus::Returned(expected(gpa)), "the {what}'s data");
    ensure_eq!(ve::stats().parked - before.guest.parked, 1, "tasks parked on a VePark token (the park path)");
    ensure_eq!(before.host_since()?, [1, 0, 0, 1], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// A task parked on a `VePark` token for a held page (the ring's table) is reported past a
/// short deadline, once, naming the token and the page, and reads its page once released.
fn a_park_token_past_its_deadline_is_reported() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)?;
    let parked = ve::stats().parked;
    super::deadline::reported_once(super::deadline::RING, gpa, true, super::deadline::spawn_kernel_reader)?;
    ensure_eq!(ve::stats().parked - parked, 1, "tasks parked on a VePark token (the park path)");
    Ok(())
}

/// On PVM a CPL 0 access completes before its #VE (a trap, with the data): the park waits for
/// the protocol, and the data is right either way.
fn kernel_task_parks() -> TestResult {
    fn reader(gpa: u64) -> u64 {
        read(gpa)
    }
    task_parks_on_a_held_page("kernel task", 0x40, |gpa| task::spawn_kernel("ve-reader", reader, gpa), backing_pattern)
}

/// At CPL 3 the #VE is a fault: the access is retried after the wait and reads the page.
fn user_task_parks() -> TestResult {
    task_parks_on_a_held_page(
        "CPL 3 task",
        0x100,
        |gpa| task::spawn_user("ve-user", user_read_two_words, gpa),
        |gpa| backing_pattern(gpa) ^ backing_pattern(gpa + 8).rotate_left(1),
    )
}

fn lone_task_waits_in_the_hlt_loop() -> TestResult {
    let region = pager()?;
    // The fetch completes only after the park request: the HLT loop waits for its resolution.
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    ensure!(!task::has_other_runnable(), "another task is runnable");
    let before = snapshot()?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    let after = ve::stats();
    ensure_eq!(after.halted - before.guest.halted, 1, "waits in the HLT loop (the HLT-loop path)");
    ensure_eq!(after.parked - before.guest.parked, 0, "parks");
    ensure_eq!(before.host_since()?, [1, 0, 0, 1], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

fn interrupts_off_access_suspends() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    let before = snapshot()?;
    let value = read_with_interrupts_off(gpa);
    ensure_eq_hex!(value, backing_pattern(gpa), "data");
    ensure_eq!(ve::stats().suspended - before.guest.suspended, 1, "VeSuspend requests (the suspend path)");
    ensure_eq!(before.host_since()?, [1, 0, 1, 0], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// The hook reads a second absent page before the handler clears the busy word: the host
/// delivers no #VE for it and the vCPU waits for the page synchronously.
fn busy_word_set_means_a_sync_wait() -> TestResult {
    let (gpa, second, _pacing) = two_pages(ResolutionTiming::WhenReady, 0x20)?;
    let before = snapshot()?;
    ve::arm_hook(hook::TOUCH_BEFORE_CLEAR, second);
    let value = read_with_interrupts_off(gpa);
    hooked(backing_pattern(second))?;
    ensure_eq_hex!(value, backing_pattern(gpa), "data of the page that raised the #VE");
    ensure_eq!(
        before.host_since()?,
        [1, 1, 1, 0],
        "host: [#VEs, busy waits, suspends, parks]: one #VE, and the access under the set busy word waited"
    );
    ensure_eq!(ve::stats().nested - before.guest.nested, 0, "#VEs taken inside the handler");
    Ok(())
}

/// The hook reads a second absent page right after the handler cleared the busy word: a #VE
/// nested in the handler, before its IRET, which suspends (interrupts are off in there); then
/// the outer one goes on with its own copy.
fn nested_ve_right_after_busy_is_cleared() -> TestResult {
    let (gpa, second, _pacing) = two_pages(ResolutionTiming::AfterEventTaken, 0x30)?;
    ensure!(!task::has_other_runnable(), "another task is runnable");
    let before = snapshot()?;
    ve::arm_hook(hook::TOUCH_AFTER_CLEAR, second);
    let value = read(gpa);
    hooked(backing_pattern(second))?;
    ensure_eq_hex!(value, backing_pattern(gpa), "data of the outer #VE's page");
    let after = ve::stats();
    ensure_eq!(after.nested - before.guest.nested, 1, "#VEs taken inside the handler (the nested path)");
    ensure_eq!(after.suspended - before.guest.suspended, 1, "suspends (the nested #VE's, interrupts off)");
    ensure_eq!(after.halted - before.guest.halted, 1, "HLT-loop waits (the outer #VE's, a lone task)");
    ensure_eq!(before.host_since()?, [2, 0, 1, 1], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// The host raises an NMI with the #VE of a CPL 3 access: it lands on the #VE entry's first
/// instruction, before its `swapgs`, with the user's GS loaded; the NMI's own entry must see
/// that (a wrong GS would fault inside the NMI handler and end the run).
fn nmi_at_the_entry_of_a_ve_from_cpl3() -> TestResult {
    fn bystander(_: u64) -> u64 {
        task::yield_now();
        0
    }
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)? + 0x200;
    let (before, nmis) = (snapshot()?, nmi::counts(percpu::index()));
    set_faults(fault::NMI_WITH_NEXT_VE)?;
    let user = spawned(task::spawn_user("ve-nmi-user", user_read_two_words, gpa))?;
    let other = spawned(task::spawn_kernel("ve-bystander", bystander, 0))?;
    let expected = backing_pattern(gpa) ^ backing_pattern(gpa + 8).rotate_left(1);
    ensure_eq!(join(user)?, ExitStatus::Returned(expected), "the CPL 3 task's data");
    join(other)?;
    let after = nmi::counts(percpu::index());
    ensure_eq!(after.taken - nmis.taken, 1, "NMIs taken with the #VE");
    ensure_eq!(after.swapped_gs - nmis.swapped_gs, 1, "NMI entries that found the user's GS and swapped (the path)");
    ensure_eq!(before.host_since()?[0], 1, "host: #VEs delivered");
    Ok(())
}

fn nmi_in_the_middle_of_the_handler() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    let (before, nmis) = (snapshot()?, nmi::counts(percpu::index()));
    ve::arm_hook(hook::NMI_AFTER_CLEAR, 0);
    let value = read(gpa);
    hooked(0)?;
    ensure_eq_hex!(value, backing_pattern(gpa), "data");
    let after = nmi::counts(percpu::index());
    ensure_eq!(after.taken - nmis.taken, 1, "NMIs taken");
    ensure_eq!(after.in_handler - nmis.in_handler, 1, "NMIs that interrupted a trap handler (not after its IRETQ)");
    ensure_eq!(after.swapped_gs - nmis.swapped_gs, 0, "NMI entries that swapped GS (kernel code was interrupted)");
    ensure_eq!(before.host_since()?, [1, 0, 0, 1], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// A CPL 3 task reads the failed page at `gpa` beside a bystander: the victim ends, `Killed`
/// with the page, the bystander returns, and the handler counted one failed page. Returns the
/// guest's counters after.
fn only_the_victim_ends(gpa: u64, before: &Snapshot) -> Result<ve::Stats, Failure> {
    fn bystander(_: u64) -> u64 {
        for _ in 0..3 {
            task::yield_now();
        }
        7
    }
    let victim = spawned(task::spawn_user("ve-victim", user_read_two_words, gpa))?;
    let other = spawned(task::spawn_kernel("ve-bystander", bystander, 0))?;
    let victim_end = join(victim)?;
    ensure_eq!(join(other)?, ExitStatus::Returned(7), "the bystander");
    match victim_end {
        ExitStatus::Killed(reason) if let Some(failed) = pnp::PageFailed::from_reason(&reason) => {
            ensure_eq_hex!(failed.gpa, gpa, "failed page reported")
        }
        other => return Err(fail(format_args!("the task that touched a failed page ended with {other:?}"))),
    }
    let after = ve::stats();
    ensure_eq!(after.failed - before.guest.failed, 1, "failed pages the handler saw");
    Ok(after)
}

fn failed_page_ends_only_its_task() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::AfterEventTaken)?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::set_page_behaviour(gpa, PageBehaviour::Fail).map_err(|e| fail(format_args!("{e:?}")))?;
    let before = snapshot()?;
    let after = only_the_victim_ends(gpa, &before)?;
    // The fetch starts only at the park request, so the answer is a token, never the outcome
    // at once, and the victim parks on it (the bystander is ready meanwhile).
    ensure_eq!(after.parked - before.guest.parked, 1, "tasks parked on a VePark token (the park path)");
    ensure_eq!(after.answered_at_once - before.guest.answered_at_once, 0, "parks answered at once");
    ensure_eq!(before.host_since()?, [1, 0, 0, 1], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// With no ring registered there is no token to park on: the handler suspends even a task that
/// could sleep, and a failed page still ends only that task.
fn failed_page_on_the_suspend_path() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::set_page_behaviour(gpa, PageBehaviour::Fail).map_err(|e| fail(format_args!("{e:?}")))?;
    await_no_token_outstanding()?;
    let _restore = RestoreRing;
    pnp::unregister().map_err(|e| fail(format_args!("unregister the ring: {e:?}")))?;
    let before = snapshot()?;
    let after = only_the_victim_ends(gpa, &before)?;
    ensure_eq!(after.suspended - before.guest.suspended, 1, "suspends (the suspend path: no ring)");
    ensure_eq!(before.host_since()?, [1, 0, 1, 0], "host: [#VEs, busy waits, suspends, parks]");
    Ok(())
}

/// The host is told to ignore the busy word right when the hook, before the handler clears it,
/// reads a second absent page: a #VE over a set busy word. The guest counts the violation,
/// acts on neither report, and both accesses (CPL 0 traps, their data supplied) are right.
/// All of it with this vCPU holding the console, as a #VE (which comes whatever RFLAGS.IF says)
/// can find it: the handler's report of the violation must not wait for the console (it would
/// wait for good), so it is dropped and counted instead.
fn ve_over_a_set_busy_word_is_detected() -> TestResult {
    let (gpa, second, _pacing) = two_pages(ResolutionTiming::WhenReady, 0x48)?;
    let before = snapshot()?;
    // The handler reports only a vCPU's first violation: this one must be it.
    ensure_eq!(before.guest.busy_violations, 0, "busy violations before the test (only the first is reported)");
    let dropped = console::dropped_reports();
    ve::arm_hook(hook::TOUCH_BEFORE_CLEAR | hook::IGNORE_BUSY_FOR_TOUCH, second);
    let value = console::while_busy(|| read_with_interrupts_off(gpa));
    ensure!(console::dropped_reports() > dropped, "the handler's report, made with the console held, was not dropped");
    hooked(backing_pattern(second))?;
    ensure_eq_hex!(value, backing_pattern(gpa), "data of the first page");
    let after = ve::stats();
    ensure_eq!(after.busy_violations - before.guest.busy_violations, 1, "#VEs over a set busy word detected");
    ensure_eq!(after.discarded - before.guest.discarded, 1, "copies discarded for it");
    ensure_eq!(
        before.host_since()?,
        [2, 0, 0, 0],
        "host: [#VEs, busy waits, suspends, parks]: two #VEs, neither answered"
    );
    Ok(())
}

/// On every vCPU a kernel task checks that the host holds that vCPU's own area, then reads an
/// absent page with interrupts off: the #VE comes to that vCPU, in its area, and it suspends.
/// Returns 1 when its registration was its own, in bit 63, and the data in the rest.
fn own_area_reader(gpa: u64) -> u64 {
    let (held, mine) = ve::registration();
    let before = ve::stats();
    let value = read_with_interrupts_off(gpa);
    let after = ve::stats();
    let took_own = after.taken - before.taken == 1 && after.suspended - before.suspended == 1;
    let flags = u64::from(held == mine) << 63 | u64::from(took_own) << 62;
    flags | (value & !(3 << 62))
}

fn every_cpu_takes_ve_in_its_own_area() -> TestResult {
    let region = pager()?;
    let _pacing = pacing(0, ResolutionTiming::WhenReady)?;
    let cpus = arch::platform().cpus.count();
    let base = fresh_pages(&region, cpus as u64)?;
    let before: heapless::Vec<ve::Stats, { arch::MAX_CPUS }> = (0..cpus).map(ve::stats_of).collect();
    let delivered = counter(HostCounter::VeDelivered)?;
    let mut tasks: heapless::Vec<RemoteTask, { arch::MAX_CPUS }> = heapless::Vec::new();
    for cpu in 0..cpus {
        let task = remote::spawn_kernel_on(cpu, "ve-own-area", own_area_reader, base + cpu as u64 * 4096)
            .map_err(|e| fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
        let _ = tasks.push(task);
    }
    let mut results: heapless::Vec<u64, { arch::MAX_CPUS }> = heapless::Vec::new();
    for t in tasks {
        let cpu = t.cpu();
        let _ = results.push(t.join().map_err(|e| fail(format_args!("the task on vCPU {cpu}: {e:?}")))?);
    }
    for (cpu, &r) in results.iter().enumerate() {
        ensure!(r >> 63 == 1, "vCPU {cpu}: the host holds another area than this vCPU's for it");
        ensure!(r >> 62 & 1 == 1, "vCPU {cpu}: its read's #VE was not taken on it (one #VE, one suspend)");
        let gpa = base + cpu as u64 * 4096;
        ensure_eq_hex!(r & !(3 << 62), backing_pattern(gpa) & !(3 << 62), "vCPU {cpu}'s data");
        ensure_eq!(ve::stats_of(cpu).taken - before[cpu].taken, 1, "#VEs vCPU {cpu} took");
    }
    ensure_eq!(counter(HostCounter::VeDelivered)? - delivered, cpus as u64, "host: #VEs delivered");
    Ok(())
}

fn ve_accounting_is_balanced() -> TestResult {
    let s = ve::stats();
    kprintln!(
        "ve: vCPU 0: {} #VEs ({} nested), {} parked, {} HLT-loop waits, {} suspended, {} answered at once, {} park refused, {} failed; {} not busy, {} unknown reason, {} busy violations",
        s.taken,
        s.nested,
        s.parked,
        s.halted,
        s.suspended,
        s.answered_at_once,
        s.park_refused,
        s.failed,
        s.not_busy,
        s.unknown_reason,
        s.busy_violations
    );
    await_no_token_outstanding()?;
    ensure_eq!(pnp::pending(), (0, 0), "tokens waiting and early resolutions left in the guest");
    ensure_eq!(
        (s.not_busy, s.unknown_reason, s.token_rejected, s.outside_region, s.bad_answers),
        (0, 0, 0, 0, 0),
        "protocol errors"
    );
    ensure!(s.taken > 0, "no #VE was taken in mode ve");
    Ok(())
}

/// Reads the region's first page with interrupts off: its #VE suspends, and if the page failed
/// the run stops with a report naming it (no task can be ended there: it may hold a lock).
fn touch_the_first_page_with_interrupts_off() -> TestResult {
    let region = pager()?;
    let value = read_with_interrupts_off(region.page(0));
    Err(fail(format_args!("read {value:#x} from page 0, which the host was told to fail")))
}
