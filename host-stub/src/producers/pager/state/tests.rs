//! The pager's state machine: each page's life and every access decision, for the ring's and
//! KVM's rules.

use super::*;
use crate::producers::pager::tokens::TokenPool;

/// A ring token handed to `vcpu`.
fn out(vcpu: usize, token: Token) -> TokenOut {
    TokenOut { vcpu, via: Via::Ring, token }
}

fn ring(entries: u32) -> TokenPool {
    TokenPool::new(entries)
}

/// Evicts one page with no memory to take back: whether it was present.
fn evict(core: &mut PagerCore, page: PageIndex) -> Result<bool, EvictError> {
    let mut was_present = false;
    let Ok(outcome) = core.evict_range(page..page + 1, |_, present| {
        was_present = present;
        Ok::<(), std::convert::Infallible>(())
    });
    outcome.map(|()| was_present)
}

#[test]
fn first_access_delivers_an_event_and_starts_the_fetch() {
    let mut core = PagerCore::new(4, HostMode::Ring);
    let mut pool = ring(4);
    let d = core.on_access(0, 1, Some(&mut pool));
    let Decision::Deliver { token, fetch: Some(Fetch::Normal) } = d else { panic!("{d:?}") };
    assert_eq!(core.state(1), Some(&PageState::Fetching { failing: false, held: false, waiters: vec![out(0, token)] }));
    assert_eq!(core.on_fetch_done(1), (RESULT_RETRY, vec![out(0, token)]));
    assert_eq!(core.state(1), Some(&PageState::Present));
    assert_eq!(core.on_access(0, 1, Some(&mut pool)), Decision::Continue);
    assert_eq!((core.counters.events_delivered, core.counters.resolved_retry), (1, 1));
}

#[test]
fn a_large_region_keeps_only_the_pages_it_touched() {
    // 4 GiB of pages: untouched ones read as absent, and only touched ones are stored.
    let pages = 1 << 20;
    let mut core = PagerCore::new(pages, HostMode::Sync);
    assert_eq!((core.len(), core.state(pages - 1)), (pages, Some(&PageState::Absent)));
    assert_eq!(core.state(pages), None, "beyond the region");
    assert_eq!(core.on_access(0, pages - 1, None), Decision::Wait { fetch: Some(Fetch::Normal) });
    assert!(core.set_behaviour(7, PageBehaviour::Fail));
    assert!(core.next_fetch_fails(7) && !core.next_fetch_fails(8));
    assert_eq!((core.pages.touched.len(), core.fetching()), (2, 1));
    // Evicting pages that were never touched stores nothing.
    for page in 100..200 {
        assert_eq!(evict(&mut core, page), Ok(false));
    }
    assert_eq!(core.pages.touched.len(), 2);
}

#[test]
fn a_second_access_to_a_page_being_fetched_gets_its_own_token() {
    let mut core = PagerCore::new(4, HostMode::Ring);
    let mut pool = ring(4);
    let Decision::Deliver { token: a, .. } = core.on_access(0, 2, Some(&mut pool)) else { panic!() };
    let Decision::Deliver { token: b, fetch: None } = core.on_access(0, 2, Some(&mut pool)) else {
        panic!("no second fetch")
    };
    assert_ne!(a, b);
    let (_, waiters) = core.on_fetch_done(2);
    assert_eq!(waiters, vec![out(0, a), out(0, b)]);
}

#[test]
fn sync_mode_never_delivers_and_counts_waits() {
    let mut core = PagerCore::new(4, HostMode::Sync);
    let mut pool = ring(4);
    assert_eq!(core.on_access(0, 0, Some(&mut pool)), Decision::Wait { fetch: Some(Fetch::Normal) });
    assert_eq!(core.on_access(0, 0, Some(&mut pool)), Decision::Wait { fetch: None });
    assert_eq!(pool.outstanding(), 0);
    assert_eq!(core.counters.sync_waits, 2);
    assert_eq!(core.counters.sync_waits_in_ring_mode, 0);
    assert_eq!(core.on_fetch_done(0), (RESULT_RETRY, vec![]));
    // The guest switches to ring and back: two changes; the same mode again is none.
    core.set_mode(HostMode::Ring);
    core.set_mode(HostMode::Ring);
    core.set_mode(HostMode::Sync);
    assert_eq!(core.counters.mode_changes, 2);
}

#[test]
fn no_free_token_means_the_synchronous_path() {
    let mut core = PagerCore::new(8, HostMode::Ring);
    let mut pool = ring(2);
    assert!(matches!(core.on_access(0, 0, Some(&mut pool)), Decision::Deliver { .. }));
    assert!(matches!(core.on_access(0, 1, Some(&mut pool)), Decision::Deliver { .. }));
    assert_eq!(core.on_access(0, 2, Some(&mut pool)), Decision::Wait { fetch: Some(Fetch::Normal) });
    assert_eq!(pool.outstanding(), 2);
    // Not deliverable (interrupts off, area busy...) is the same path.
    assert_eq!(core.on_access(0, 3, None), Decision::Wait { fetch: Some(Fetch::Normal) });
    assert_eq!((core.counters.sync_waits, core.counters.sync_waits_in_ring_mode), (2, 2));
}

#[test]
fn an_immediate_page_is_resolved_before_its_event() {
    let mut core = PagerCore::new(2, HostMode::Ring);
    let mut pool = ring(2);
    core.set_behaviour(0, PageBehaviour::Immediate);
    let d = core.on_access(0, 0, Some(&mut pool));
    assert!(matches!(d, Decision::DeliverResolved { result: RESULT_RETRY, make_present: true, .. }), "{d:?}");
    assert_eq!(core.state(0), Some(&PageState::Present));
    assert_eq!(core.counters.resolved_before_event, 1);
    // Without a token it is simply present at once.
    evict(&mut core, 0).unwrap();
    core.set_behaviour(0, PageBehaviour::Immediate);
    assert_eq!(core.on_access(0, 0, None), Decision::PresentNow);
}

#[test]
fn a_failing_fetch_resolves_failed_and_a_later_access_gets_a_resolved_event_or_stops() {
    let mut core = PagerCore::new(2, HostMode::Ring);
    let mut pool = ring(4);
    core.set_behaviour(1, PageBehaviour::Fail);
    let Decision::Deliver { token, fetch: Some(Fetch::Failing) } = core.on_access(0, 1, Some(&mut pool)) else {
        panic!()
    };
    assert_eq!(core.on_fetch_done(1), (RESULT_FAILED, vec![out(0, token)]));
    assert_eq!(core.state(1), Some(&PageState::Failed));
    let d = core.on_access(0, 1, Some(&mut pool));
    assert!(matches!(d, Decision::DeliverResolved { result: RESULT_FAILED, make_present: false, .. }), "{d:?}");
    assert_eq!(core.on_access(0, 1, None), Decision::StopFailedPage);
    assert_eq!(core.counters.resolved_failed, 2);
    // The behaviour applied to one fetch only: after eviction the page is served again.
    evict(&mut core, 1).unwrap();
    assert!(matches!(core.on_access(0, 1, Some(&mut pool)), Decision::Deliver { fetch: Some(Fetch::Normal), .. }));
}

#[test]
fn a_held_page_is_fetched_only_once_released() {
    let mut core = PagerCore::new(4, HostMode::Ring);
    let mut pool = ring(4);
    core.set_behaviour(1, PageBehaviour::Held);
    let Decision::Deliver { token: a, fetch: None } = core.on_access(0, 1, Some(&mut pool)) else {
        panic!("a held page starts no fetch")
    };
    // A second waiter joins the held page; still no fetch.
    let Decision::Deliver { token: b, fetch: None } = core.on_access(0, 1, Some(&mut pool)) else { panic!() };
    assert_eq!(evict(&mut core, 1), Err(EvictError::Fetching(1)), "a held page is in flight");
    assert_eq!(core.release(1), Release::Start(Fetch::Normal));
    assert_eq!(core.release(1), Release::NotHeld, "released once");
    assert_eq!(core.on_fetch_done(1), (RESULT_RETRY, vec![out(0, a), out(0, b)]));
    // Releasing a page never touched drops its hold; out of range is said.
    core.set_behaviour(2, PageBehaviour::Held);
    assert_eq!(core.release(2), Release::NotHeld);
    assert!(matches!(core.on_access(0, 2, Some(&mut pool)), Decision::Deliver { fetch: Some(Fetch::Normal), .. }));
    assert_eq!(core.release(9), Release::OutOfRange);
}

#[test]
fn a_synchronous_access_releases_a_held_page() {
    let mut core = PagerCore::new(4, HostMode::Ring);
    let mut pool = ring(4);
    core.set_behaviour(0, PageBehaviour::Held);
    assert!(matches!(core.on_access(0, 0, Some(&mut pool)), Decision::Deliver { fetch: None, .. }));
    assert_eq!(core.on_access(0, 0, None), Decision::Wait { fetch: Some(Fetch::Normal) });
    // Held and never delivered: the synchronous access starts it at once.
    core.set_behaviour(1, PageBehaviour::Held);
    assert_eq!(core.on_access(0, 1, None), Decision::Wait { fetch: Some(Fetch::Normal) });
    assert_eq!(core.counters.holds_released_by_sync_wait, 2);
}

#[test]
fn an_event_is_taken_once_the_area_is_free_or_holds_another_token() {
    let t = Token::new(3, 7);
    assert!(!event_taken(1, t.0, t), "still in the area");
    assert!(event_taken(0, t.0, t), "taken: inuse cleared");
    assert!(event_taken(1, Token::new(4, 1).0, t), "a later event fills the area only once this one was taken");
}

#[test]
fn waiters_are_the_tokens_of_a_page_being_fetched() {
    let mut core = PagerCore::new(2, HostMode::Ring);
    let mut pool = ring(4);
    assert!(core.waiters(0).is_empty());
    let Decision::Deliver { token, .. } = core.on_access(0, 0, Some(&mut pool)) else { panic!() };
    assert_eq!(core.waiters(0), &[out(0, token)]);
    core.on_fetch_done(0);
    assert!(core.waiters(0).is_empty(), "present");
    assert!(core.waiters(9).is_empty(), "out of range");
}

#[test]
fn before_event_timing_resolves_every_normal_page_first() {
    let mut core = PagerCore::new(4, HostMode::Ring);
    let mut pool = ring(4);
    core.timing = ResolutionTiming::BeforeEvent;
    let d = core.on_access(0, 0, Some(&mut pool));
    assert!(matches!(d, Decision::DeliverResolved { result: RESULT_RETRY, make_present: true, .. }), "{d:?}");
    // A page set to fail keeps its behaviour.
    core.set_behaviour(1, PageBehaviour::Fail);
    assert!(matches!(core.on_access(0, 1, Some(&mut pool)), Decision::Deliver { fetch: Some(Fetch::Failing), .. }));
}

#[test]
fn a_failed_page_fails_each_access_with_a_new_token_until_it_is_set_again() {
    let mut core = PagerCore::new(2, HostMode::Ring);
    let mut pool = ring(4);
    core.set_behaviour(1, PageBehaviour::Fail);
    let Decision::Deliver { token: first, fetch: Some(Fetch::Failing) } = core.on_access(0, 1, Some(&mut pool)) else {
        panic!("the first access delivers and starts the failing fetch")
    };
    core.on_fetch_done(1);
    assert_eq!(core.state(1), Some(&PageState::Failed));
    let d = core.on_access(0, 1, Some(&mut pool));
    let Decision::DeliverResolved { token: again, result: RESULT_FAILED, make_present: false } = d else {
        panic!("a failed page touched again: {d:?}")
    };
    assert_ne!(again, first, "a new token");
    assert_eq!(core.on_access(0, 1, None), Decision::StopFailedPage, "no event deliverable");
    // The host has it now: the next access fetches it.
    core.set_behaviour(1, PageBehaviour::Normal);
    assert_eq!(core.state(1), Some(&PageState::Absent));
    assert!(matches!(core.on_access(0, 1, Some(&mut pool)), Decision::Deliver { fetch: Some(Fetch::Normal), .. }));
}

#[test]
fn eviction_refuses_pages_in_flight_and_reports_present_ones() {
    let mut core = PagerCore::new(3, HostMode::Ring);
    let mut pool = ring(2);
    core.on_access(0, 0, Some(&mut pool));
    assert_eq!(evict(&mut core, 0), Err(EvictError::Fetching(0)));
    core.on_fetch_done(0);
    assert_eq!(evict(&mut core, 0), Ok(true));
    assert_eq!(evict(&mut core, 0), Ok(false));
    assert_eq!(evict(&mut core, 9), Err(EvictError::OutOfRange(9)));
    assert_eq!(core.counters.pages_evicted, 1);
}

/// The memory work comes first: a page is recorded absent only once its memory was taken
/// back, and a failure stops the range there, the page it failed on still present.
#[test]
fn eviction_takes_the_memory_back_before_the_state_and_stops_at_a_failure() {
    let mut core = PagerCore::new(4, HostMode::Sync);
    for page in 0..4 {
        core.on_access(0, page, None);
        core.on_fetch_done(page);
    }
    let mut taken = Vec::new();
    let failed = core.evict_range(0..4, |page, was_present| {
        assert!(was_present);
        if page == 2 {
            return Err("mprotect failed");
        }
        taken.push(page);
        Ok(())
    });
    assert_eq!(failed, Err("mprotect failed"));
    assert_eq!(taken, vec![0, 1]);
    let states: Vec<_> = (0..4).map(|p| core.state(p).cloned()).collect();
    let (absent, present) = (Some(PageState::Absent), Some(PageState::Present));
    assert_eq!(states, vec![absent.clone(), absent, present.clone(), present]);
    assert_eq!(core.counters.pages_evicted, 2);
    // A refusal changes nothing and does no memory work.
    core.on_access(0, 0, None);
    let refused = core.evict_range(0..4, |_, _| -> Result<(), ()> { panic!("memory work for a refused range") });
    assert_eq!(refused, Ok(Err(EvictError::Fetching(0))));
    assert_eq!(core.evict_range(3..5, |_, _| Ok::<(), ()>(())), Ok(Err(EvictError::OutOfRange(4))));
    assert_eq!(core.state(3), Some(&PageState::Present));
}

/// KVM's rules where they differ from the ring's: a page on its way gives a further access no
/// token (the vCPU waits), a failed page cannot be reported, and no token is used up for it.
#[test]
fn kvm_gives_a_page_one_token_and_reports_no_failure() {
    use crate::producers::pager::kvm_apf::ApfVcpu;
    use pvagent_abi::kvm_apf as apf;
    let ram = [0..0xA_0000, 0x10_0000..0x400_0000];
    let mut apf = ApfVcpu::new(0);
    apf.write(apf::MSR_ASYNC_PF_INT, 0x53, &ram).unwrap();
    apf.write(apf::MSR_ASYNC_PF_EN, 0x20_0000 | apf::EN_ENABLED | apf::EN_DELIVERY_AS_INT, &ram).unwrap();
    let mut core = PagerCore::new(4, HostMode::KvmApf);
    let Decision::Deliver { token, fetch: Some(Fetch::Normal) } = core.on_access(0, 0, Some(&mut apf)) else {
        panic!("the first access delivers")
    };
    assert_eq!(token, Token(0x1000), "KVM's token for vCPU 0");
    assert_eq!(core.waiters(0), &[TokenOut { vcpu: 0, via: Via::KvmApf, token }]);
    assert_eq!(core.on_access(0, 0, Some(&mut apf)), Decision::Wait { fetch: None }, "one token per page");
    assert_eq!(apf.outstanding(), 1);
    core.set_behaviour(1, PageBehaviour::Fail);
    let Decision::Deliver { fetch: Some(Fetch::Failing), .. } = core.on_access(0, 1, Some(&mut apf)) else { panic!() };
    core.on_fetch_done(1);
    assert_eq!(core.on_access(0, 1, Some(&mut apf)), Decision::StopFailedPage, "no failed result to deliver");
    assert_eq!(apf.outstanding(), 2, "no token was taken for it");
}

#[test]
fn kvm_apf_kernel_mode_counts_kvms_events_with_tokens_of_its_own() {
    use crate::producers::pager::kvm_apf::KernelTokens;
    let mut core = PagerCore::new(4, HostMode::KvmApfKernel);
    let mut tokens = KernelTokens::default();
    assert!(matches!(core.on_access(0, 0, Some(&mut tokens)), Decision::Deliver { fetch: Some(Fetch::Normal), .. }));
    assert_eq!(core.waiting_tokens(), 1);
    assert_eq!(core.on_access(0, 0, None), Decision::Wait { fetch: None }, "the vCPU thread's own fault waits");
    core.on_fetch_done(0);
    assert_eq!((core.waiting_tokens(), core.counters.events_delivered, core.counters.sync_waits), (0, 1, 1));
}
