//! The token deadline (`pv::deadline`) against a host that holds a page: with a short deadline,
//! a task parked on the held page is reported once, naming its token and page, while the wait
//! goes on; released, the page reaches the task as always. One body for each table a token
//! waits in (the ring's, which #VE's `VePark` tokens share, and KVM's).

use super::*;
use crate::pv::deadline::{self, Protocol, Report};
use crate::pv::tokens::Waiter;
use crate::task::table::SpawnError;

/// The deadline these tests set: short, so that they are quick; a wait on a held page lasts
/// until the test releases it, however slow the machine.
const SHORT_MS: u64 = 50;

/// The name of every task these tests park past the deadline: the end-to-end tests check that
/// a run's reports name no other (a token resolved in time is never reported).
pub(super) const READER: &str = "deadline-reader";

/// The deadline set for one test; the one before is restored when dropped.
struct ShortDeadline(u64);

impl ShortDeadline {
    fn set(ms: u64) -> Self {
        Self(deadline::set_ms(ms))
    }
}

impl Drop for ShortDeadline {
    fn drop(&mut self) {
        deadline::set_ms(self.0);
    }
}

/// The table a test's token waits in, as the test reads it.
pub(super) struct Table {
    pub(super) protocol: Protocol,
    /// Tokens of this vCPU with a waiter.
    pub(super) waiting: fn() -> usize,
    pub(super) waiter_of: fn(u32) -> Option<(Waiter, u64)>,
    /// The table's count of waits reported.
    pub(super) overdue: fn() -> u64,
}

pub(super) const RING: Table = Table {
    protocol: Protocol::Ring,
    waiting: || pnp::pending().0,
    waiter_of: pnp::waiter_of,
    overdue: || pnp::stats().tokens.overdue,
};

pub(super) const KVM: Table = Table {
    protocol: Protocol::KvmApf,
    waiting: || crate::pv::kvm_apf::pending().0,
    waiter_of: crate::pv::kvm_apf::waiter_of,
    overdue: || crate::pv::kvm_apf::stats().tokens.overdue,
};

/// Halts until `done` holds (a tick's check brings it). The bound only turns a report that
/// never comes into a failure instead of a hang: ten seconds past the deadline.
fn await_check(what: &str, done: impl Fn() -> bool) -> TestResult {
    let bound = crate::arch::ticks() + (SHORT_MS * crate::arch::time::HZ).div_ceil(1000) + 10 * crate::arch::time::HZ;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (done() || crate::arch::ticks() > bound).then_some(()));
    }
    if done() { Ok(()) } else { Err(fail(format_args!("{what} never came (ten seconds past the deadline)"))) }
}

/// A task `spawn` starts reads the held page at `gpa` (page-aligned, in `table`'s protocol) and
/// parks; the report must come, once, naming its token, its page (when `names_page`: KVM's
/// events name none) and this vCPU; then the page is released and the task reads its data.
pub(super) fn reported_once(
    table: Table,
    gpa: u64,
    names_page: bool,
    spawn: impl FnOnce(u64) -> Result<TaskId, SpawnError>,
) -> TestResult {
    let mut held = Held::new();
    held.hold(gpa)?;
    let _deadline = ShortDeadline::set(SHORT_MS);
    let (reported, overdue) = (deadline::reported(), (table.overdue)());
    let id = spawned(spawn(gpa))?;
    for _ in 0..1000 {
        if (table.waiting)() >= 1 {
            break;
        }
        task::yield_now();
    }
    ensure_eq!((table.waiting)(), 1, "tasks parked on the held page's token after up to 1000 yields");
    await_check("the report", || deadline::reported() != reported)?;
    let Some(report) = deadline::last() else { return Err(fail(format_args!("a count but no report"))) };
    let Report { cpu, protocol, token, gpa: page, waiter, waited_ms, deadline_ms, .. } = report;
    ensure_eq!(deadline::reported() - reported, 1, "waits reported");
    ensure_eq!((table.overdue)() - overdue, 1, "the table's count of waits reported");
    ensure_eq!((cpu, protocol, deadline_ms), (crate::arch::percpu::index(), table.protocol, SHORT_MS), "the report");
    ensure_eq!(waiter, Waiter::Task(id), "the waiter reported");
    ensure_eq_hex!(page & !0xFFF, if names_page { gpa } else { 0 }, "the page reported");
    ensure_eq!((table.waiter_of)(token).map(|(w, _)| w), Some(Waiter::Task(id)), "the reported token's waiter");
    ensure!(waited_ms >= SHORT_MS, "reported after {waited_ms} ms, before the deadline of {SHORT_MS} ms");
    // Once: the checks that follow find the same wait and say nothing more.
    let checks = deadline::checks();
    await_check("two more checks", || deadline::checks() >= checks + 2)?;
    ensure_eq!(deadline::reported() - reported, 1, "waits reported, two checks later");
    ensure_eq!((table.waiting)(), 1, "tasks still waiting: the deadline only reports");
    ensure_eq!(held.release_all()?, 1, "held pages released");
    ensure_eq!(join(id)?, ExitStatus::Returned(backing_pattern(gpa)), "the reader's data");
    ensure_eq!((table.waiting)(), 0, "tokens waiting at the end");
    Ok(())
}

/// A kernel task that reads the page at `gpa`.
pub(super) fn spawn_kernel_reader(gpa: u64) -> Result<TaskId, SpawnError> {
    fn reader(gpa: u64) -> u64 {
        read(gpa)
    }
    task::spawn_kernel(READER, reader, gpa)
}

/// The ring's tokens (the page-not-present event's).
pub(super) fn a_token_past_its_deadline_is_reported() -> TestResult {
    let region = pager()?;
    let gpa = fresh_pages(&region, 1)?;
    reported_once(RING, gpa, true, spawn_kernel_reader)
}

/// Run by the end-to-end tests: a task waits for ever on a page the host holds (never
/// released), with the deadline the command line sets; the run ends at its time limit, and
/// the deadline's report must have come before.
pub(super) fn wait_for_a_held_page_for_ever() -> TestResult {
    let region = pager()?;
    let gpa = fresh_pages(&region, 1)?;
    // Deliberately no `Held` guard: the page stays held.
    pnp::set_page_behaviour(gpa, PageBehaviour::Held).map_err(|e| fail(format_args!("hold: {e:?}")))?;
    kprintln!("deadline: waiting for ever for page {gpa:#x}, with a deadline of {} ms", deadline::deadline_ms());
    let id = spawned(spawn_kernel_reader(gpa))?;
    join(id)?;
    Err(fail(format_args!("the page {gpa:#x} came, though the host holds it")))
}
