//! The pager's state machine under #VE: what an access raising #VE does to its page, and the
//! answers to the guest's two requests (present, failed, held, no ring, tokens exhausted).

use super::*;
use crate::producers::pager::tokens::TokenPool;

fn ve_core() -> PagerCore {
    PagerCore::new(8, HostMode::Ve)
}

/// A ring with no tokens left.
fn exhausted(entries: u32) -> TokenPool {
    let mut pool = TokenPool::new(entries);
    while pool.alloc().is_some() {}
    pool
}

#[test]
fn a_ve_starts_the_fetch_with_nobody_waiting_and_a_second_one_starts_nothing() {
    let mut core = ve_core();
    assert_eq!(core.on_ve_access(2), VeAccess::Raise { fetch: Some(Fetch::Normal), make_present: false });
    assert_eq!(core.state(2), Some(&PageState::Fetching { failing: false, held: false, waiters: vec![] }));
    assert_eq!(core.on_ve_access(2), VeAccess::Raise { fetch: None, make_present: false });
    assert_eq!(core.on_fetch_done(2), (RESULT_RETRY, vec![]));
    assert_eq!(core.on_ve_access(2), VeAccess::Continue, "present: no #VE");
    assert_eq!(core.counters.ve_delivered, 2);
    assert_eq!(core.on_ve_access(8), VeAccess::Continue, "beyond the region");
}

#[test]
fn page_behaviours_apply_to_a_ve_access() {
    let mut core = ve_core();
    core.set_behaviour(1, PageBehaviour::Held);
    assert_eq!(core.on_ve_access(1), VeAccess::Raise { fetch: None, make_present: false });
    assert_eq!(core.state(1), Some(&PageState::Fetching { failing: false, held: true, waiters: vec![] }));
    core.set_behaviour(2, PageBehaviour::Immediate);
    assert_eq!(core.on_ve_access(2), VeAccess::Raise { fetch: None, make_present: true });
    assert_eq!(core.state(2), Some(&PageState::Present));
    core.set_behaviour(3, PageBehaviour::Fail);
    assert_eq!(core.on_ve_access(3), VeAccess::Raise { fetch: Some(Fetch::Failing), make_present: false });
    assert_eq!(core.on_fetch_done(3), (RESULT_FAILED, vec![]));
    assert_eq!(core.on_ve_access(3), VeAccess::Raise { fetch: None, make_present: false }, "a failed page too");
    core.timing = ResolutionTiming::BeforeEvent;
    assert_eq!(core.on_ve_access(4), VeAccess::Raise { fetch: None, make_present: true });
}

#[test]
fn requests_for_a_present_or_failed_page_answer_at_once() {
    let mut core = ve_core();
    core.set_behaviour(3, PageBehaviour::Fail);
    for page in [2, 3] {
        core.on_ve_access(page);
        core.on_fetch_done(page);
    }
    let mut pool = TokenPool::new(4);
    assert_eq!(
        core.on_ve_request(0, 2, VeRequest::Suspend),
        VeAnswer::Now { result: RESULT_RETRY, make_present: false }
    );
    assert_eq!(
        core.on_ve_request(0, 3, VeRequest::Suspend),
        VeAnswer::Now { result: RESULT_FAILED, make_present: false }
    );
    assert_eq!(
        core.on_ve_request(0, 2, VeRequest::Park(Some(&mut pool))),
        VeAnswer::Now { result: RESULT_RETRY, make_present: false }
    );
    // No ring needed to learn that.
    assert_eq!(
        core.on_ve_request(0, 3, VeRequest::Park(None)),
        VeAnswer::Now { result: RESULT_FAILED, make_present: false }
    );
    assert_eq!(pool.outstanding(), 0, "no token taken");
    assert_eq!((core.counters.ve_suspends, core.counters.ve_parks), (2, 0));
    assert_eq!(core.on_ve_request(0, 8, VeRequest::Suspend), VeAnswer::OutOfRange);
}

#[test]
fn a_park_takes_a_token_that_the_fetch_resolves() {
    let mut core = ve_core();
    let mut pool = TokenPool::new(4);
    core.on_ve_access(1);
    let VeAnswer::Parked { token, fetch: None } = core.on_ve_request(1, 1, VeRequest::Park(Some(&mut pool))) else {
        panic!("no token")
    };
    let out = TokenOut { vcpu: 1, via: Via::Ring, token };
    assert_eq!(core.on_fetch_done(1), (RESULT_RETRY, vec![out]));
    assert_eq!((core.counters.ve_parks, core.counters.resolved_retry), (1, 1));
}

#[test]
fn a_park_without_a_ring_or_a_free_token_changes_nothing() {
    let mut core = ve_core();
    core.on_ve_access(1);
    let before = core.state(1).cloned();
    assert_eq!(core.on_ve_request(0, 1, VeRequest::Park(None)), VeAnswer::NoToken);
    let mut pool = exhausted(2);
    assert_eq!(core.on_ve_request(0, 1, VeRequest::Park(Some(&mut pool))), VeAnswer::NoToken);
    assert_eq!(core.state(1).cloned(), before);
    // An absent page keeps its behaviour for the access that will fetch it.
    core.set_behaviour(5, PageBehaviour::Held);
    assert_eq!(core.on_ve_request(0, 5, VeRequest::Park(Some(&mut pool))), VeAnswer::NoToken);
    assert_eq!(core.state(5), Some(&PageState::Absent));
    assert_eq!(core.on_ve_access(5), VeAccess::Raise { fetch: None, make_present: false }, "still held");
    assert_eq!(core.counters.ve_parks, 0);
}

#[test]
fn a_suspend_releases_a_held_page_and_a_park_leaves_it_held() {
    let mut core = ve_core();
    let mut pool = TokenPool::new(4);
    core.set_behaviour(1, PageBehaviour::Held);
    core.on_ve_access(1);
    let VeAnswer::Parked { fetch: None, .. } = core.on_ve_request(0, 1, VeRequest::Park(Some(&mut pool))) else {
        panic!("not parked")
    };
    assert!(matches!(core.state(1), Some(PageState::Fetching { held: true, .. })), "the park waits for the release");
    assert_eq!(core.on_ve_request(0, 1, VeRequest::Suspend), VeAnswer::Wait { fetch: Some(Fetch::Normal) });
    assert!(matches!(core.state(1), Some(PageState::Fetching { held: false, .. })));
    assert_eq!(core.on_ve_request(0, 1, VeRequest::Suspend), VeAnswer::Wait { fetch: None }, "its fetch is on");
    assert_eq!(core.counters.holds_released_by_sync_wait, 1);
}

#[test]
fn a_request_for_an_absent_page_starts_its_fetch() {
    let mut core = ve_core();
    let mut pool = TokenPool::new(4);
    assert_eq!(core.on_ve_request(0, 1, VeRequest::Suspend), VeAnswer::Wait { fetch: Some(Fetch::Normal) });
    let VeAnswer::Parked { fetch: Some(Fetch::Normal), .. } =
        core.on_ve_request(0, 2, VeRequest::Park(Some(&mut pool)))
    else {
        panic!("not parked")
    };
    // A held page parks held; suspended on, its hold is dropped; an immediate one is present.
    core.set_behaviour(3, PageBehaviour::Held);
    assert!(matches!(core.on_ve_request(0, 3, VeRequest::Park(Some(&mut pool))), VeAnswer::Parked { fetch: None, .. }));
    core.set_behaviour(4, PageBehaviour::Held);
    assert_eq!(core.on_ve_request(0, 4, VeRequest::Suspend), VeAnswer::Wait { fetch: Some(Fetch::Normal) });
    core.set_behaviour(5, PageBehaviour::Immediate);
    let parked = pool.outstanding();
    assert_eq!(
        core.on_ve_request(0, 5, VeRequest::Park(Some(&mut pool))),
        VeAnswer::Now { result: RESULT_RETRY, make_present: true }
    );
    assert_eq!(pool.outstanding(), parked, "no token taken for a page present at once");
}
