//! #VE, the virtualization exception (`pvagent_abi::ve`), as the fast path for page-not-present:
//! the guest's side. This file is the plain logic, unit-tested on the host: what the handler
//! makes of the area it copied ([`check_copy`]), how the interrupted context waits for the page
//! ([`decide`]), and what a failed page ends ([`on_failure`]). `kernel.rs` is the glue: the
//! per-vCPU area and its registration, the vector 20 handler, the test hooks.
//!
//! The handler copies the area to its stack, checks the copy, re-arms the area (`busy = 0`),
//! then decides from the copy and the trap frame alone: from the store of 0 on, another #VE
//! may come (the architecture allows it), so nothing between the copy and the decision lives
//! anywhere a nested handler could change it. docs/design.md ("#VE: the guest's handler") says
//! why that is enough.

use core::ops::Range;

use pvagent_abi::pnp::{RESULT_FAILED, RESULT_RETRY, Token};
use pvagent_abi::ve::{BUSY, EXIT_REASON_EPT_VIOLATION, NO_TOKEN, VeInfo};

#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub use kernel::*;

/// What the handler makes of the area it copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// An EPT violation the host marked busy: act on the GPA.
    Page { gpa: u64 },
    /// The busy word was not [`BUSY`]: a #VE the host did not mark as delivered (it broke the
    /// contract, or the vector was raised by someone else). Counted, reported once, ignored.
    NotBusy { busy: u32 },
    /// An exit reason other than an EPT violation: nothing this guest knows how to answer.
    UnknownReason { reason: u32 },
    /// An EPT violation outside the demand-paged region: the host has no page to fetch there,
    /// so asking it to park or suspend on it would be refused (and the refusal would stop the
    /// run). Counted, reported once, ignored, like the two above.
    OutsideRegion { gpa: u64 },
}

/// Checks a copy of the area: the busy word first (a copy of an area the host did not mark is
/// no report at all), then the reason, then that the page lies in `region`, the demand-paged
/// region's guest-physical range.
pub fn check_copy(info: &VeInfo, region: Range<u64>) -> Copied {
    let gpa = info.guest_physical_address;
    if info.busy != BUSY {
        Copied::NotBusy { busy: info.busy }
    } else if info.exit_reason != EXIT_REASON_EPT_VIOLATION {
        Copied::UnknownReason { reason: info.exit_reason }
    } else if !region.contains(&gpa) {
        Copied::OutsideRegion { gpa }
    } else {
        Copied::Page { gpa }
    }
}

/// A page's outcome as the host answers it (`VePark` with no token, `VeSuspend`): exactly
/// [`RESULT_RETRY`] or [`RESULT_FAILED`], or `None`, a host that broke the ABI (a value that
/// only truncates to one of them is no answer either).
pub fn check_outcome(answer: u64) -> Option<u32> {
    [RESULT_RETRY, RESULT_FAILED].into_iter().find(|&outcome| answer == u64::from(outcome))
}

/// What a `VePark` answer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkAnswer {
    /// A ring token to wait on: 32 bits with a sequence number that is not 0
    /// (`pvagent_abi::pnp::Token`; whether its slot is one the ring handed out is the ring's
    /// table to say).
    Token(Token),
    /// No token: the page's outcome at once.
    AtOnce { outcome: u32 },
    /// Neither: a token wider than 32 bits or with sequence 0 (which, cut to 32 bits, could
    /// alias a live token and take another access's resolution), or no token and an outcome
    /// that is no outcome. The handler counts it and suspends instead.
    Malformed,
}

/// Reads a `VePark` answer (`ret[0]`, `ret[1]`).
pub fn check_park_answer(ret: [u64; 2]) -> ParkAnswer {
    match ret {
        [NO_TOKEN, outcome] => {
            check_outcome(outcome).map_or(ParkAnswer::Malformed, |outcome| ParkAnswer::AtOnce { outcome })
        }
        [token, _] => match u32::try_from(token) {
            Ok(token) if Token(token).sequence() != 0 => ParkAnswer::Token(Token(token)),
            _ => ParkAnswer::Malformed,
        },
    }
}

/// What the decision looks at: the interrupted context, as the trap frame and the scheduler
/// say it is, read after the copy and the re-arm. With `interrupts_were_on` false the handler
/// asks the scheduler and the ring nothing (the context may be inside a borrow of their state)
/// and leaves the fields from `idle` to `ring_registered` false except `cpl`: [`decide`] and
/// [`on_failure`] do not look at them then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// RFLAGS.IF of the interrupted context (the trap frame's).
    pub interrupts_were_on: bool,
    /// Trap handlers active on this vCPU, this one included: 1 when the #VE interrupted task
    /// context, more when it interrupted another handler (or another #VE's).
    pub trap_depth: u32,
    /// The interrupted context is the idle task.
    pub idle: bool,
    /// The interrupted context is inside a no-sleep section (`task::NoSleepGuard`).
    pub no_sleep: bool,
    /// Another task of this vCPU is ready to run.
    pub other_ready: bool,
    /// The interrupted context's privilege level (0 or 3).
    pub cpl: u8,
    /// This vCPU has a page-not-present ring registered: the only source of a park's token.
    pub ring_registered: bool,
}

/// How the interrupted context waits for its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// It can sleep: `VePark` for a token, then the task parks on it in the scheduler and the
    /// resolution (through the ring) wakes it; other tasks run meanwhile.
    Park,
    /// Interrupts were on but it cannot sleep (the idle task, a lone task, a nested handler with
    /// interrupts on, a no-sleep section): `VePark` for a token, then the HLT loop until its
    /// resolution, taking every interrupt meanwhile.
    HltLoop,
    /// Interrupts were off (the HLT loop would turn them on inside a section that has them
    /// off), or there is no ring to give a token: `VeSuspend`, the host keeps the vCPU.
    Suspend,
}

/// The decision, from the context alone. The same rules as the ring's event (`pv::wait`), with
/// one more row, because a #VE, unlike an event, comes whatever RFLAGS.IF says: a context with
/// interrupts off can neither sleep nor halt, so the host must hold the vCPU.
pub fn decide(c: Context) -> Choice {
    if !c.interrupts_were_on || !c.ring_registered {
        Choice::Suspend
    } else if c.trap_depth == 1 && !c.idle && !c.no_sleep && c.other_ready {
        Choice::Park
    } else {
        Choice::HltLoop
    }
}

/// What a page that failed ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// The task that touched it, and nobody else (`Killed(PageFailed)`, as the ring does).
    EndTask,
    /// The run, with a report naming the page: the context is no task that can be ended (the
    /// idle task, a handler, the NMI path, a section with interrupts off or no sleeping, which
    /// may hold a lock that ending it would leave held for good), and returning would retry
    /// the access or go on without its data.
    StopRun,
}

/// What a failed page ends, for a #VE taken in context `c`: a task can be ended where it could
/// have been parked: the #VE interrupted it directly (trap depth 1), it is not the idle task,
/// and it was in no section with interrupts off or sleeping forbidden (the ring's rule,
/// `task::may_sleep_in_trap`, with the interrupts that a #VE, unlike an event, does not imply).
pub fn on_failure(c: Context) -> OnFailure {
    if c.trap_depth == 1 && !c.idle && !c.no_sleep && c.interrupts_were_on {
        OnFailure::EndTask
    } else {
        OnFailure::StopRun
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(gpa: u64) -> VeInfo {
        VeInfo {
            exit_reason: EXIT_REASON_EPT_VIOLATION,
            busy: BUSY,
            exit_qualification: pvagent_abi::ve::QUAL_READ,
            guest_linear_address: gpa,
            guest_physical_address: gpa,
            eptp_index: 0,
            reserved: [0; 6],
        }
    }

    /// A CPL 3 task with interrupts on, another task ready: every condition for a park.
    fn sleeper() -> Context {
        Context {
            interrupts_were_on: true,
            trap_depth: 1,
            idle: false,
            no_sleep: false,
            other_ready: true,
            cpl: 3,
            ring_registered: true,
        }
    }

    const REGION: Range<u64> = 0x4000_0000..0x4010_0000;

    fn check(info: &VeInfo) -> Copied {
        check_copy(info, REGION)
    }

    #[test]
    fn a_marked_ept_violation_names_its_page() {
        assert_eq!(check(&area(0x4000_1000)), Copied::Page { gpa: 0x4000_1000 });
        assert_eq!(check(&area(0x400F_FFFF)), Copied::Page { gpa: 0x400F_FFFF }, "the region's last byte");
    }

    #[test]
    fn a_page_outside_the_region_is_no_report_to_act_on() {
        for gpa in [0, 0x3FFF_FFFF, 0x4010_0000, u64::MAX] {
            assert_eq!(check(&area(gpa)), Copied::OutsideRegion { gpa }, "{gpa:#x}");
        }
    }

    #[test]
    fn only_exact_outcomes_are_outcomes() {
        assert_eq!(check_outcome(0), Some(RESULT_RETRY));
        assert_eq!(check_outcome(1), Some(RESULT_FAILED));
        for bad in [2, 0x1_0000_0000, 0x1_0000_0001, u64::MAX] {
            assert_eq!(check_outcome(bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn a_park_answer_is_a_token_an_outcome_or_malformed() {
        assert_eq!(check_park_answer([0x0001_0003, 0]), ParkAnswer::Token(Token::new(3, 1)));
        assert_eq!(check_park_answer([0xFFFF_FFFF, 9]), ParkAnswer::Token(Token(0xFFFF_FFFF)), "ret[1] unused");
        assert_eq!(check_park_answer([NO_TOKEN, 0]), ParkAnswer::AtOnce { outcome: RESULT_RETRY });
        assert_eq!(check_park_answer([NO_TOKEN, 1]), ParkAnswer::AtOnce { outcome: RESULT_FAILED });
        for (ret, why) in [
            ([NO_TOKEN, 2], "no outcome"),
            ([NO_TOKEN, 0x1_0000_0001], "an outcome only after truncation"),
            ([0x1_0000_0000, 0], "a token that truncates to 0"),
            ([0x1_0001_0003, 0], "a token that truncates to a live one"),
            ([0x0000_0003, 0], "sequence 0"),
        ] {
            assert_eq!(check_park_answer(ret), ParkAnswer::Malformed, "{why}");
        }
    }

    #[test]
    fn an_area_the_host_did_not_mark_busy_is_no_report() {
        for busy in [0, 1, 0x7FFF_FFFF] {
            assert_eq!(check(&VeInfo { busy, ..area(0x1000) }), Copied::NotBusy { busy });
        }
        // Busy is looked at first: an unmarked area says nothing, not even its reason.
        assert_eq!(check(&VeInfo { busy: 0, exit_reason: 7, ..area(0) }), Copied::NotBusy { busy: 0 });
        assert_eq!(check(&VeInfo { exit_reason: 49, ..area(0) }), Copied::UnknownReason { reason: 49 });
    }

    #[test]
    fn a_task_that_can_sleep_parks() {
        assert_eq!(decide(sleeper()), Choice::Park);
        assert_eq!(decide(Context { cpl: 0, ..sleeper() }), Choice::Park, "a kernel task too");
    }

    #[test]
    fn interrupts_on_but_no_sleep_means_the_hlt_loop() {
        for (c, why) in [
            (Context { other_ready: false, ..sleeper() }, "a lone task"),
            (Context { idle: true, ..sleeper() }, "the idle task"),
            (Context { no_sleep: true, ..sleeper() }, "a no-sleep section"),
            (Context { trap_depth: 2, cpl: 0, ..sleeper() }, "a handler with interrupts on"),
        ] {
            assert_eq!(decide(c), Choice::HltLoop, "{why}");
        }
    }

    #[test]
    fn interrupts_off_or_no_ring_means_suspend() {
        for (c, why) in [
            (Context { interrupts_were_on: false, cpl: 0, ..sleeper() }, "a section with interrupts off"),
            (Context { interrupts_were_on: false, trap_depth: 2, cpl: 0, ..sleeper() }, "nested in a #VE handler"),
            (Context { interrupts_were_on: false, idle: true, other_ready: false, ..sleeper() }, "idle, off"),
            (Context { ring_registered: false, ..sleeper() }, "no ring: no token to park on"),
            (Context { ring_registered: false, other_ready: false, ..sleeper() }, "no ring, lone task"),
        ] {
            assert_eq!(decide(c), Choice::Suspend, "{why}");
        }
    }

    #[test]
    fn with_interrupts_off_nothing_else_is_looked_at() {
        // Every combination of the fields the handler does not ask for then.
        for bits in 0..16u32 {
            let c = Context {
                interrupts_were_on: false,
                idle: bits & 1 != 0,
                no_sleep: bits & 2 != 0,
                other_ready: bits & 4 != 0,
                ring_registered: bits & 8 != 0,
                ..sleeper()
            };
            assert_eq!((decide(c), on_failure(c)), (Choice::Suspend, OnFailure::StopRun), "{c:?}");
        }
    }

    #[test]
    fn a_failed_page_ends_only_a_task_it_can_end() {
        assert_eq!(on_failure(sleeper()), OnFailure::EndTask);
        assert_eq!(on_failure(Context { other_ready: false, ..sleeper() }), OnFailure::EndTask, "a lone task");
        assert_eq!(on_failure(Context { ring_registered: false, ..sleeper() }), OnFailure::EndTask, "suspended");
        assert_eq!(on_failure(Context { idle: true, ..sleeper() }), OnFailure::StopRun, "the idle task");
        assert_eq!(on_failure(Context { trap_depth: 2, ..sleeper() }), OnFailure::StopRun, "a handler");
        assert_eq!(on_failure(Context { no_sleep: true, ..sleeper() }), OnFailure::StopRun, "no-sleep section");
        let irqs_off = Context { interrupts_were_on: false, cpl: 0, ..sleeper() };
        assert_eq!(on_failure(irqs_off), OnFailure::StopRun, "interrupts off: it may hold a lock");
    }
}
