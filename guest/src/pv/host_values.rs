//! The #VE and KVM async-#PF decisions over any values a host can write (areas, hypercall
//! answers, flags, error codes, tokens) and any context: none panics, and each answer that lets
//! the guest act (park, end a task, take a token, treat a #PF as KVM's) is given only when its
//! conditions hold. Fixed case counts and seed (`crate::testing`).

use proptest::prelude::*;
use pvagent_abi::pnp::{RESULT_FAILED, Token};
use pvagent_abi::ve::{BUSY, EXIT_REASON_EPT_VIOLATION, NO_TOKEN, VeInfo};

use super::kvm_apf::{self, PageFault, PageReady};
use super::ve::{self, Choice, Context, Copied, OnFailure, ParkAnswer};
use crate::testing::check;

fn contexts() -> impl Strategy<Value = Context> {
    (any::<[bool; 5]>(), prop_oneof![0u32..4, any::<u32>()], prop_oneof![Just(0u8), Just(3u8), any::<u8>()]).prop_map(
        |([interrupts_were_on, idle, no_sleep, other_ready, ring_registered], trap_depth, cpl)| Context {
            interrupts_were_on,
            trap_depth,
            idle,
            no_sleep,
            other_ready,
            cpl,
            ring_registered,
        },
    )
}

/// A context may sleep only where the ring's event would let it (`pv::wait::waiter`), halt
/// only with interrupts on, and be ended only where it could have been parked; without a ring
/// or with interrupts off the host must hold the vCPU.
#[test]
fn ve_parks_halts_and_ends_only_contexts_that_allow_it() {
    check(5000, contexts(), |c| {
        let sleeps = c.interrupts_were_on && c.trap_depth == 1 && !c.idle && !c.no_sleep;
        match ve::decide(c) {
            Choice::Park => prop_assert!(sleeps && c.other_ready && c.ring_registered, "{:?}", c),
            Choice::HltLoop => prop_assert!(c.interrupts_were_on && c.ring_registered, "{:?}", c),
            Choice::Suspend => prop_assert!(!c.interrupts_were_on || !c.ring_registered, "{:?}", c),
        }
        prop_assert_eq!(ve::on_failure(c) == OnFailure::EndTask, sleeps, "{:?}", c);
        Ok(())
    });
}

fn areas() -> impl Strategy<Value = VeInfo> {
    let busy = prop_oneof![Just(BUSY), any::<u32>()];
    let reason = prop_oneof![Just(EXIT_REASON_EPT_VIOLATION), any::<u32>()];
    (busy, reason, any::<[u64; 4]>(), any::<u16>()).prop_map(|(busy, exit_reason, [q, gla, gpa, _], eptp_index)| {
        VeInfo {
            exit_reason,
            busy,
            exit_qualification: q,
            guest_linear_address: gla,
            guest_physical_address: gpa,
            eptp_index,
            reserved: [0; 6],
        }
    })
}

#[test]
fn ve_acts_on_an_area_only_when_it_is_a_marked_ept_violation_in_the_region() {
    let region = (any::<u64>(), any::<u64>()).prop_map(|(a, b)| a.min(b)..a.max(b));
    check(5000, (areas(), region), |(info, region)| {
        let gpa = info.guest_physical_address;
        match ve::check_copy(&info, region.clone()) {
            Copied::Page { gpa: page } => prop_assert!(
                info.busy == BUSY
                    && info.exit_reason == EXIT_REASON_EPT_VIOLATION
                    && region.contains(&gpa)
                    && page == gpa
            ),
            Copied::NotBusy { busy } => prop_assert!(busy == info.busy && busy != BUSY),
            Copied::UnknownReason { reason } => prop_assert!(info.busy == BUSY && reason != EXIT_REASON_EPT_VIOLATION),
            Copied::OutsideRegion { gpa: outside } => prop_assert!(outside == gpa && !region.contains(&gpa)),
        }
        Ok(())
    });
}

/// A park answer is a token only when it is one exactly (32 bits, sequence not 0: cut to 32
/// bits a wider one could alias a live token), an outcome only when it is one exactly.
#[test]
fn ve_takes_a_token_or_an_outcome_only_when_the_answer_is_exactly_one() {
    let word = prop_oneof![Just(NO_TOKEN), 0u64..3, any::<u32>().prop_map(u64::from), any::<u64>()];
    check(10_000, (word.clone(), word), |ret| {
        match ve::check_park_answer([ret.0, ret.1]) {
            ParkAnswer::Token(t) => {
                prop_assert!(ret.0 != NO_TOKEN && ret.0 == u64::from(t.0) && t.sequence() != 0)
            }
            ParkAnswer::AtOnce { outcome } => {
                prop_assert!(ret.0 == NO_TOKEN && ret.1 == u64::from(outcome) && outcome <= RESULT_FAILED)
            }
            ParkAnswer::Malformed => prop_assert!(
                (ret.0 == NO_TOKEN && ret.1 > u64::from(RESULT_FAILED))
                    || u32::try_from(ret.0).map_or(true, |t| ret.0 != NO_TOKEN && Token(t).sequence() == 0)
            ),
        }
        prop_assert_eq!(ve::check_outcome(ret.1).map(u64::from), (ret.1 <= u64::from(RESULT_FAILED)).then_some(ret.1));
        Ok(())
    });
}

/// A #PF is KVM's "page not present" only with its flag, KVM's error code 0, and the context
/// this guest registered for; a fault with the U bit (every real #PF from CPL 3) never is.
#[test]
fn a_page_fault_is_kvms_only_with_its_flag_and_error_code() {
    let flags = prop_oneof![0u32..4, any::<u32>()];
    let error_code = prop_oneof![0u64..8, any::<u64>()];
    check(10_000, (flags, error_code, any::<bool>(), any::<bool>()), |(flags, error_code, user, irqs)| {
        let kind = kvm_apf::classify(flags, error_code, user, irqs);
        let flagged = flags & pvagent_abi::kvm_apf::REASON_PAGE_NOT_PRESENT != 0;
        prop_assert_eq!(kind == PageFault::Real, !flagged);
        prop_assert_eq!(kind == PageFault::PageNotPresent, flagged && error_code == 0 && user && irqs);
        if error_code & 0b100 != 0 {
            prop_assert!(matches!(kind, PageFault::Real | PageFault::RealWithBogusFlags));
        }
        Ok(())
    });
    check(2000, any::<u32>(), |token| {
        let want = match token {
            0 => PageReady::Spurious,
            u32::MAX => PageReady::WakeAll,
            t => PageReady::Wake(t),
        };
        prop_assert_eq!(kvm_apf::page_ready(token), want);
        Ok(())
    });
}
