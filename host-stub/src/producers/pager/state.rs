//! The pager's protocol state, as plain code: each page's life (absent -> fetching -> present or
//! failed) and the decision for every access the guest makes to a page the host does not have,
//! with each vCPU's token pool (`tokens`). The other files of the pager do the memory and KVM
//! work these decisions call for. Unit-tested here.

use std::collections::HashMap;
use std::ops::Range;

use pvagent_abi::pnp::{HostMode, PageBehaviour, RESULT_FAILED, RESULT_RETRY, ResolutionTiming, Token};

use super::tokens::TokenPool;

/// A page of the demand region, by index.
pub type PageIndex = u64;

/// Where a page is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Not in guest memory; its contents are in the backing store.
    Absent,
    /// Being fetched; these tokens wait for it. `failing`: the fetch will fail. `held`: the
    /// fetch has not started and starts only when the guest releases the page
    /// ([`PageBehaviour::Held`]).
    Fetching { failing: bool, held: bool, waiters: Vec<(usize, Token)> },
    /// In guest memory.
    Present,
    /// The fetch failed; the page will not come (until evicted and fetched again).
    Failed,
}

#[derive(Clone, Debug)]
struct Page {
    state: PageState,
    next_fetch: PageBehaviour,
}

/// What every page is until the guest or a test touches it.
static UNTOUCHED: Page = Page { state: PageState::Absent, next_fetch: PageBehaviour::Normal };

/// The region's pages, stored only once touched: a region of gigabytes costs memory in
/// proportion to the pages the guest uses, not to its size.
#[derive(Clone, Debug)]
struct Pages {
    len: u64,
    touched: HashMap<PageIndex, Page>,
}

impl Pages {
    fn get(&self, page: PageIndex) -> Option<&Page> {
        (page < self.len).then(|| self.touched.get(&page).unwrap_or(&UNTOUCHED))
    }

    fn get_mut(&mut self, page: PageIndex) -> Option<&mut Page> {
        (page < self.len).then(|| self.touched.entry(page).or_insert_with(|| UNTOUCHED.clone()))
    }

    /// Stops storing `page` if it is back to what an untouched page is.
    fn forget_if_untouched(&mut self, page: PageIndex) {
        if self
            .touched
            .get(&page)
            .is_some_and(|p| p.state == PageState::Absent && p.next_fetch == PageBehaviour::Normal)
        {
            self.touched.remove(&page);
        }
    }
}

/// What the glue must do about an access to a page the guest does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The page is present (it arrived meanwhile): nothing to do.
    Continue,
    /// Make the page present now (from the backing store) and continue, no event.
    PresentNow,
    /// Deliver a page-not-present event with `token`; start a fetch if `fetch` says so.
    Deliver { token: Token, fetch: Option<Fetch> },
    /// Post the resolution first (making the page present first if `make_present`), then
    /// deliver the event: a resolution before its event.
    DeliverResolved { token: Token, result: u32, make_present: bool },
    /// The synchronous path: the vCPU waits until the page is no longer being fetched; start a
    /// fetch if `fetch` says so.
    Wait { fetch: Option<Fetch> },
    /// The page failed and no event can be delivered: the guest must be stopped.
    StopFailedPage,
}

/// What releasing a page did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The page was held: start this fetch now.
    Start(Fetch),
    /// The page was not held (a hold set for its next fetch, if any, is dropped).
    NotHeld,
    /// Beyond the region.
    OutOfRange,
}

/// A fetch to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Supply the page after the latency.
    Normal,
    /// Fail after the latency.
    Failing,
}

/// Whether the guest has taken the event that carried `token`, from its event area's `inuse`
/// and `token` words: the area no longer holds it. The host fills the area only when it is
/// free and a token is never handed out twice while outstanding, so a different token there
/// means this one was taken before.
pub fn event_taken(inuse: u32, area_token: u32, token: Token) -> bool {
    inuse == 0 || area_token != token.0
}

impl Fetch {
    fn of(failing: bool) -> Self {
        if failing { Fetch::Failing } else { Fetch::Normal }
    }
}

/// What the pager counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub events_delivered: u64,
    pub resolved_retry: u64,
    pub resolved_failed: u64,
    pub resolved_before_event: u64,
    pub sync_waits: u64,
    /// Of `sync_waits`, those in ring mode (no event could be delivered: interrupts off, no
    /// free token, the event area busy), as opposed to sync mode's every access.
    pub sync_waits_in_ring_mode: u64,
    /// Times the guest switched the mode (`PnpSetMode` to the other mode).
    pub mode_changes: u64,
    /// Nanoseconds vCPUs spent blocked on the synchronous path.
    pub sync_wait_ns: u64,
    pub pages_fetched: u64,
    pub fetches_failed: u64,
    pub pages_evicted: u64,
    /// Retried accesses re-entered so that an event still pending in the vCPU is taken first.
    pub retries_for_pending_event: u64,
    /// Fetches completed later than their page was ready, because an event waiting for the
    /// page had not been taken yet ([`ResolutionTiming::AfterEventTaken`]).
    pub fetches_held_back: u64,
    /// Held pages, and held-back completions, released because an access had to wait for the
    /// page synchronously.
    pub holds_released_by_sync_wait: u64,
}

/// Why an eviction was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictError {
    /// The page is being fetched.
    Fetching(PageIndex),
    /// Beyond the region.
    OutOfRange(PageIndex),
}

/// The pager's state for the whole region.
#[derive(Clone, Debug)]
pub struct PagerCore {
    pub mode: HostMode,
    /// When resolutions are written relative to their events (a test and benchmark control).
    pub timing: ResolutionTiming,
    pages: Pages,
    pub counters: Counters,
}

impl PagerCore {
    /// `pages` absent pages, served in `mode`.
    pub fn new(pages: u64, mode: HostMode) -> Self {
        Self {
            mode,
            timing: ResolutionTiming::WhenReady,
            pages: Pages { len: pages, touched: HashMap::new() },
            counters: Counters::default(),
        }
    }

    /// Serves accesses in `mode` from now on (counting a change).
    pub fn set_mode(&mut self, mode: HostMode) {
        if mode != self.mode {
            self.counters.mode_changes += 1;
            self.mode = mode;
        }
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.pages.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.pages.len == 0
    }

    /// A page's state.
    pub fn state(&self, page: PageIndex) -> Option<&PageState> {
        self.pages.get(page).map(|p| &p.state)
    }

    /// Sets how the next fetch of `page` behaves.
    pub fn set_behaviour(&mut self, page: PageIndex, behaviour: PageBehaviour) -> bool {
        match self.pages.get_mut(page) {
            Some(p) => {
                p.next_fetch = behaviour;
                true
            }
            None => false,
        }
    }

    /// Decides what happens to an access to `page` by `vcpu`. `pool` is the vCPU's token pool
    /// when an event could be delivered right now (the protocol is registered, the vCPU could
    /// take the interrupt, the event area is free); `None` otherwise. In sync mode no event is
    /// ever delivered.
    pub fn on_access(&mut self, vcpu: usize, page: PageIndex, pool: Option<&mut TokenPool>) -> Decision {
        let ring_mode = self.mode == HostMode::Ring;
        let token = || if ring_mode { pool.and_then(TokenPool::alloc) } else { None };
        let Some(p) = self.pages.get_mut(page) else {
            return Decision::Continue;
        };
        let decision = match &mut p.state {
            PageState::Present => Decision::Continue,
            PageState::Failed => match token() {
                Some(token) => Decision::DeliverResolved { token, result: RESULT_FAILED, make_present: false },
                None => Decision::StopFailedPage,
            },
            PageState::Fetching { failing, held, waiters } => match token() {
                Some(token) => {
                    waiters.push((vcpu, token));
                    Decision::Deliver { token, fetch: None }
                }
                None if *held => {
                    // Waiting synchronously for a held page would wait for ever: release it.
                    *held = false;
                    self.counters.holds_released_by_sync_wait += 1;
                    Decision::Wait { fetch: Some(Fetch::of(*failing)) }
                }
                None => Decision::Wait { fetch: None },
            },
            PageState::Absent => {
                let mut behaviour = std::mem::replace(&mut p.next_fetch, PageBehaviour::Normal);
                if self.timing == ResolutionTiming::BeforeEvent && behaviour == PageBehaviour::Normal {
                    behaviour = PageBehaviour::Immediate;
                }
                match behaviour {
                    PageBehaviour::Immediate => {
                        p.state = PageState::Present;
                        match token() {
                            Some(token) => {
                                Decision::DeliverResolved { token, result: RESULT_RETRY, make_present: true }
                            }
                            None => Decision::PresentNow,
                        }
                    }
                    PageBehaviour::Normal | PageBehaviour::Fail | PageBehaviour::Held => {
                        let failing = behaviour == PageBehaviour::Fail;
                        let fetch = Fetch::of(failing);
                        match token() {
                            Some(token) => {
                                let held = behaviour == PageBehaviour::Held;
                                p.state = PageState::Fetching { failing, held, waiters: vec![(vcpu, token)] };
                                Decision::Deliver { token, fetch: (!held).then_some(fetch) }
                            }
                            None => {
                                if behaviour == PageBehaviour::Held {
                                    self.counters.holds_released_by_sync_wait += 1;
                                }
                                p.state = PageState::Fetching { failing, held: false, waiters: Vec::new() };
                                Decision::Wait { fetch: Some(fetch) }
                            }
                        }
                    }
                }
            }
        };
        match decision {
            Decision::Deliver { .. } => self.counters.events_delivered += 1,
            Decision::DeliverResolved { result, .. } => {
                self.counters.events_delivered += 1;
                self.counters.resolved_before_event += 1;
                self.count_result(result);
            }
            Decision::Wait { .. } => {
                self.counters.sync_waits += 1;
                self.counters.sync_waits_in_ring_mode += u64::from(self.mode == HostMode::Ring);
            }
            Decision::Continue | Decision::PresentNow | Decision::StopFailedPage => {}
        }
        decision
    }

    fn count_result(&mut self, result: u32) {
        if result == RESULT_FAILED {
            self.counters.resolved_failed += 1;
        } else {
            self.counters.resolved_retry += 1;
        }
    }

    /// A fetch of `page` finished: the page is present (or failed). Returns the result and the
    /// tokens to resolve with it.
    pub fn on_fetch_done(&mut self, page: PageIndex) -> (u32, Vec<(usize, Token)>) {
        let Some(p) = self.pages.get_mut(page) else {
            return (RESULT_FAILED, Vec::new());
        };
        let PageState::Fetching { failing, waiters, .. } = std::mem::replace(&mut p.state, PageState::Absent) else {
            // Not being fetched (cannot happen: only the fetch started by a decision ends it).
            return (RESULT_FAILED, Vec::new());
        };
        p.state = if failing { PageState::Failed } else { PageState::Present };
        let result = if failing { RESULT_FAILED } else { RESULT_RETRY };
        self.counters.pages_fetched += 1;
        if failing {
            self.counters.fetches_failed += 1;
        }
        for _ in &waiters {
            self.count_result(result);
        }
        (result, waiters)
    }

    /// The tokens waiting for `page` (none unless it is being fetched).
    pub fn waiters(&self, page: PageIndex) -> &[(usize, Token)] {
        match self.pages.get(page).map(|p| &p.state) {
            Some(PageState::Fetching { waiters, .. }) => waiters,
            _ => &[],
        }
    }

    /// Releases a held page: its fetch starts now (see [`PageBehaviour::Held`]).
    pub fn release(&mut self, page: PageIndex) -> Release {
        let Some(p) = self.pages.get_mut(page) else {
            return Release::OutOfRange;
        };
        match &mut p.state {
            PageState::Fetching { failing, held: held @ true, .. } => {
                *held = false;
                Release::Start(Fetch::of(*failing))
            }
            _ => {
                if p.next_fetch == PageBehaviour::Held {
                    p.next_fetch = PageBehaviour::Normal;
                }
                self.pages.forget_if_untouched(page);
                Release::NotHeld
            }
        }
    }

    /// Makes the pages of `pages` absent again (a guest's `PnpEvict`). Refused as a whole,
    /// nothing changed, if one of them is being fetched or beyond the region. Otherwise, page
    /// by page, `take_back(page, was_present)` does the memory work (saves a present page's
    /// contents, closes the page, drops its memory), and only once it succeeded is the page
    /// recorded absent: state and memory stay in step. A failure of `take_back` (the host
    /// failing, not a refusal) is returned at once: the pages before it are absent, it and
    /// the rest keep their state.
    pub fn evict_range<E>(
        &mut self,
        pages: Range<PageIndex>,
        mut take_back: impl FnMut(PageIndex, bool) -> Result<(), E>,
    ) -> Result<Result<(), EvictError>, E> {
        for page in pages.clone() {
            match self.state(page) {
                None => return Ok(Err(EvictError::OutOfRange(page))),
                Some(PageState::Fetching { .. }) => return Ok(Err(EvictError::Fetching(page))),
                Some(_) => {}
            }
        }
        for page in pages {
            let Some(p) = self.pages.get(page) else { continue };
            let was_present = p.state == PageState::Present;
            take_back(page, was_present)?;
            if let Some(p) = self.pages.get_mut(page) {
                p.state = PageState::Absent;
            }
            self.pages.forget_if_untouched(page);
            if was_present {
                self.counters.pages_evicted += 1;
            }
        }
        Ok(Ok(()))
    }

    /// Whether the next fetch of an absent `page` is set to fail.
    pub fn next_fetch_fails(&self, page: PageIndex) -> bool {
        self.pages.get(page).is_some_and(|p| p.next_fetch == PageBehaviour::Fail)
    }

    /// Pages being fetched.
    pub fn fetching(&self) -> usize {
        self.pages.touched.values().filter(|p| matches!(p.state, PageState::Fetching { .. })).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            core.state(1),
            Some(&PageState::Fetching { failing: false, held: false, waiters: vec![(0, token)] })
        );
        assert_eq!(core.on_fetch_done(1), (RESULT_RETRY, vec![(0, token)]));
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
        assert_eq!(waiters, vec![(0, a), (0, b)]);
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
        assert_eq!(core.on_fetch_done(1), (RESULT_FAILED, vec![(0, token)]));
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
        assert_eq!(core.on_fetch_done(1), (RESULT_RETRY, vec![(0, a), (0, b)]));
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
        assert_eq!(core.waiters(0), &[(0, token)]);
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
}
