//! Tests of the page-not-present protocol against the host stub's demand pager. Each test
//! takes fresh (absent) pages of the demand-paged region and checks, for the mode the host runs
//! in, what the protocol promises: in `ring` mode the task that touched an absent page waits
//! while others run and resumes with the right data; in `sync` mode the vCPU waits instead.
//! Data is checked against the backing pattern the host stub's default image holds.
//!
//! Every test that needs a particular path takes it by construction, never by hoping that a
//! page-in delay is long or short enough on this machine: the pager's resolution timing
//! (`AfterEventTaken`: every event waits; `BeforeEvent` or an `Immediate` page: none does),
//! held pages that arrive only when the test releases them, and a runner that stays runnable
//! while tasks park. A test whose path was not taken fails and names the path.

use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::pnp::{HostCounter, HostMode, PageBehaviour, ResolutionTiming, backing_pattern};
use pvagent_abi::report::Need;

use super::{Failure, SelfTest, TestResult, fail};
use crate::cell::StaticCell;
use crate::pv::halt;
use crate::pv::pnp::{self, Region};
use crate::sync::IrqGuard;
use crate::task::table::{ExitStatus, TaskId};
use crate::task::{self, NoSleepGuard, user};
use crate::{ensure, ensure_eq, ensure_eq_hex, kprintln};

mod breaches;
pub(super) mod controls;
mod data;
mod deadline;
pub(super) mod kvm_apf;
mod paths;
mod registration;
mod seed_rules;
mod smp;
mod ve;

use breaches::*;
use controls::*;
use data::*;
use deadline::{a_token_past_its_deadline_is_reported, wait_for_a_held_page_for_ever};
use paths::*;
use registration::*;
use seed_rules::*;
use smp::*;

pub use kvm_apf::TESTS as KVM_APF_TESTS;
pub use ve::TESTS as VE_TESTS;

/// The protocol on several vCPUs, run after every accounting check (both protocols'): the host
/// reads another vCPU's ring tail only when it next posts there, so tokens these tests leave
/// consumed on other vCPUs' rings count as outstanding at the host until then.
pub const SMP_TESTS: &[SelfTest] = &[SelfTest::new(
    "smp::every_cpu_parks_on_its_own_page_not_present_token",
    every_cpu_parks_on_its_own_page_not_present_token,
)
.needs(&[Need::Pager, Need::PnpRingMode, Need::SeveralCpus])];

/// What every test here needs: the host stub's demand pager, the protocol registered.
const PAGER: &[Need] = &[Need::Pager];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("pnp::registration_is_accepted", registration_is_accepted).needs(PAGER),
    SelfTest::new("pnp::bad_registrations_are_refused", bad_registrations_are_refused).needs(PAGER),
    SelfTest::new("pnp::absent_page_parks_task_while_another_runs", absent_page_parks_task_while_another_runs)
        .needs(PAGER),
    SelfTest::new("pnp::user_task_resumes_with_the_right_data", user_task_resumes_with_the_right_data).needs(PAGER),
    SelfTest::new("pnp::two_tasks_on_one_absent_page_each_get_a_token", two_tasks_on_one_absent_page_each_get_a_token)
        .needs(&[Need::Pager, Need::PnpTwoTokens]),
    SelfTest::new("pnp::resolution_before_event_does_not_park", resolution_before_event_does_not_park).needs(PAGER),
    SelfTest::new("pnp::failed_page_ends_only_its_task", failed_page_ends_only_its_task)
        .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::new(
        "pnp::failed_page_touched_again_fails_again_until_the_host_has_it",
        failed_page_touched_again_fails_again_until_the_host_has_it,
    )
    .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::new(
        "pnp::events_with_and_without_a_linear_address_are_handled_alike",
        events_with_and_without_a_linear_address_are_handled_alike,
    )
    .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::new(
        "pnp::busy_event_area_sends_the_next_accesses_down_the_sync_path",
        busy_event_area_sends_the_next_accesses_down_the_sync_path,
    )
    .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::new("pnp::interrupts_off_access_takes_the_sync_path", interrupts_off_access_takes_the_sync_path)
        .needs(PAGER),
    SelfTest::new("pnp::sti_shadow_access_takes_the_sync_path", sti_shadow_access_takes_the_sync_path).needs(PAGER),
    SelfTest::new("pnp::mov_ss_shadow_access_takes_the_sync_path", mov_ss_shadow_access_takes_the_sync_path)
        .needs(PAGER),
    SelfTest::new("pnp::user_mov_ss_shadow_access_takes_the_sync_path", user_mov_ss_shadow_access_takes_the_sync_path)
        .needs(PAGER),
    SelfTest::new("pnp::task_priority_access_takes_the_sync_path", task_priority_access_takes_the_sync_path)
        .needs(PAGER),
    SelfTest::new("pnp::in_service_vector_access_takes_the_sync_path", in_service_vector_access_takes_the_sync_path)
        .needs(PAGER),
    SelfTest::new("pnp::single_task_waits_in_the_hlt_loop", single_task_waits_in_the_hlt_loop).needs(PAGER),
    SelfTest::new("pnp::no_sleep_section_waits_in_the_hlt_loop", no_sleep_section_waits_in_the_hlt_loop).needs(PAGER),
    SelfTest::new("pnp::n_tokens_outstanding_then_the_next_access_is_synchronous", n_tokens_outstanding_then_sync)
        .needs(PAGER),
    SelfTest::new("pnp::many_tasks_many_pages_get_the_right_data", many_tasks_many_pages_get_the_right_data)
        .needs(PAGER),
    SelfTest::new("pnp::evicted_page_comes_back_with_its_contents", evicted_page_comes_back_with_its_contents)
        .needs(PAGER),
    SelfTest::new("pnp::locked_add_to_an_absent_page_adds_once", locked_add_to_an_absent_page_adds_once).needs(PAGER),
    SelfTest::new("pnp::workload_ring_vs_sync", workload_ring_vs_sync).needs(PAGER),
    SelfTest::new("pnp::a_token_past_its_deadline_is_reported", a_token_past_its_deadline_is_reported)
        .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::new("pnp::accounting_is_balanced", accounting_is_balanced).needs(PAGER),
    // Deliberate breaches, run by the end-to-end tests to show the host stops the run.
    SelfTest::on_request("pnp::deliberately_leak_a_token", deliberately_leak_a_token).needs(PAGER),
    SelfTest::on_request("pnp::deliberately_corrupt_the_ring_tail", deliberately_corrupt_the_ring_tail).needs(PAGER),
    SelfTest::on_request("pnp::touch_the_first_page", touch_the_first_page).needs(PAGER),
    // Run by the end-to-end tests: the host never resolves, the deadline's report comes.
    SelfTest::on_request("pnp::wait_for_a_held_page_for_ever", wait_for_a_held_page_for_ever)
        .needs(&[Need::Pager, Need::PnpRingMode]),
    SelfTest::on_request(
        "pnp::touch_a_failed_page_again_with_interrupts_off",
        touch_a_failed_page_again_with_interrupts_off,
    )
    .needs(&[Need::Pager, Need::PnpRingMode]),
];

/// The demand-paged region (every test here needs [`Need::Pager`], which the runner checked).
pub(super) fn pager() -> Result<Region, Failure> {
    match pnp::host_region() {
        Some((region, _)) if region.pages > 0 && pnp::registered_entries() > 0 => Ok(region),
        _ => Err(fail(format_args!("no demand-paged region, though the runner checked Need::Pager"))),
    }
}

/// Fresh pages of the region, never touched before (a bump allocator over the region, shared
/// with the soak).
pub(super) fn fresh_pages(region: &Region, count: u64) -> Result<u64, Failure> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let first = NEXT.fetch_add(count, Ordering::Relaxed);
    if first + count > region.pages {
        return Err(fail(format_args!("the demand region's {} pages are used up", region.pages)));
    }
    Ok(region.page(first))
}

pub(super) fn counter(c: HostCounter) -> Result<u64, Failure> {
    pnp::host_counter(c).map_err(|e| fail(format_args!("host counter {c:?}: {e:?}")))
}

pub(super) fn latency(min_us: u64, max_us: u64) -> TestResult {
    pnp::set_latency_ns(min_us * 1000, max_us * 1000).map_err(|e| fail(format_args!("set latency: {e:?}")))
}

pub(super) fn read(gpa: u64) -> u64 {
    // SAFETY: `gpa` is in the demand region, identity mapped for the kernel; the load is what
    // makes the host page the memory in.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

fn write(gpa: u64, value: u64) {
    // SAFETY: as in `read`; the region is test memory.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, value) }
}

pub(super) fn join(id: TaskId) -> Result<ExitStatus, Failure> {
    task::join(id).map_err(|e| fail(format_args!("join {id:?}: {e:?}")))
}

pub(super) fn spawned<T, E: core::fmt::Debug>(r: Result<T, E>) -> Result<T, Failure> {
    r.map_err(|e| fail(format_args!("spawn failed: {e:?}")))
}

/// Whether the host delivers this guest's page-not-present events through the ring. Not in mode
/// `ve`: there this guest's vCPUs, each with its VE area registered, get #VE instead (the
/// `ve::` tests are that mode's; `xtask run` boots it with `tests=ve`).
fn ring_mode() -> bool {
    pnp::host_mode() == HostMode::Ring
}

/// Whether the host serves absent pages through KVM's async page fault ABI: an access at CPL 0
/// then waits synchronously (KVM delivers "page not present" to CPL 3 with interrupts on only),
/// and there is no "failed" result.
fn kvm_mode() -> bool {
    pnp::host_mode().is_kvm_apf()
}
