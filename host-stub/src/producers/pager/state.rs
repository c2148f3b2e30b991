//! The pager's protocol state, as plain code: each page's life (absent -> fetching -> present or
//! failed) and the decision for every access the guest makes to a page the host does not have,
//! with the token source of the protocol that would carry the event (`tokens` for the ring,
//! `kvm_apf` for KVM's ABI), whose rules differ where the protocols do ([`Via`]). The other
//! files of the pager do the memory and KVM work these decisions call for. Unit-tested in
//! `state/tests.rs`.

use std::collections::HashMap;
use std::ops::Range;

use pvagent_abi::pnp::{HostMode, PageBehaviour, RESULT_FAILED, RESULT_RETRY, ResolutionTiming, Token};

/// A page of the demand region, by index.
pub type PageIndex = u64;

/// How an event reaches the guest, and so how its token is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The page-not-present ring: the event area and vector, a resolution in the ring.
    Ring,
    /// KVM's async page fault ABI served by the host stub: a #PF with the token in CR2, then
    /// "page ready".
    KvmApf,
    /// KVM's async page fault ABI served by KVM itself: the host stub only sees KVM's worker
    /// fault on the page and supplies it; the token is KVM's (its own is a placeholder).
    KvmApfKernel,
}

impl Via {
    /// Whether a page already being fetched gives a further access a token of its own (the
    /// ring does); KVM makes the vCPU wait for it instead (`kvm_find_async_pf_gfn`).
    pub fn token_per_access(self) -> bool {
        self == Via::Ring
    }

    /// Whether a resolution can say "failed" (the ring's can); KVM's ABI has no such result.
    pub fn reports_failure(self) -> bool {
        self == Via::Ring
    }
}

/// A token handed out with an event: to which vCPU, by which protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenOut {
    pub vcpu: usize,
    pub via: Via,
    pub token: Token,
}

/// Where an event's token comes from: a protocol's per-vCPU pool, when an event could be
/// delivered right now.
pub trait TokenSource {
    /// The protocol the tokens are for.
    fn via(&self) -> Via;
    /// A token, if one is free.
    fn alloc(&mut self) -> Option<Token>;
}

/// Where a page is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Not in guest memory; its contents are in the backing store.
    Absent,
    /// Being fetched; these tokens wait for it. `failing`: the fetch will fail. `held`: the
    /// fetch has not started and starts only when the guest releases the page
    /// ([`PageBehaviour::Held`]).
    Fetching { failing: bool, held: bool, waiters: Vec<TokenOut> },
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
    /// page synchronously (or a `VeSuspend` asked to).
    pub holds_released_by_sync_wait: u64,
    /// Of `sync_waits`, those in mode `ve` (the busy word set, an event already being injected,
    /// an instruction KVM cannot emulate, or a vCPU with no VE area that could take no event).
    pub sync_waits_in_ve_mode: u64,
    /// #VEs raised (`HostCounter::VeDelivered`).
    pub ve_delivered: u64,
    /// Accesses that found the busy word set and waited (`HostCounter::VeBusyWaits`).
    pub ve_busy_waits: u64,
    /// `VeSuspend` requests served (`HostCounter::VeSuspends`).
    pub ve_suspends: u64,
    /// `VePark` requests that handed out a token (`HostCounter::VeParks`).
    pub ve_parks: u64,
}

/// What an access raising #VE does to its page ([`PagerCore::on_ve_access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VeAccess {
    /// The page is present (it arrived meanwhile): no #VE.
    Continue,
    /// Raise #VE; make the page present first if `make_present` (an `Immediate` page: the
    /// guest's request then answers at once), start a fetch if `fetch` says so.
    Raise { fetch: Option<Fetch>, make_present: bool },
}

/// A #VE request ([`PagerCore::on_ve_request`]).
#[allow(missing_debug_implementations, reason = "a token source is a pool of the glue's, with nothing to show")]
pub enum VeRequest<'a> {
    /// `VeSuspend`: the vCPU waits for the page.
    Suspend,
    /// `VePark`: a token of the vCPU's ring, from this source (`None`: no ring registered).
    Park(Option<&'a mut dyn TokenSource>),
}

/// The answer to a #VE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VeAnswer {
    /// Beyond the region.
    OutOfRange,
    /// The outcome now (`RESULT_RETRY` or `RESULT_FAILED`); make the page present first if
    /// `make_present` (an `Immediate` page).
    Now { result: u32, make_present: bool },
    /// `VeSuspend`: the vCPU waits until the page is no longer being fetched; start a fetch if
    /// `fetch` says so (a held page released, or an absent one).
    Wait { fetch: Option<Fetch> },
    /// `VePark`: this token waits for the page; start a fetch if `fetch` says so.
    Parked { token: Token, fetch: Option<Fetch> },
    /// `VePark`: no token could be handed out; nothing changed.
    NoToken,
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

    /// Sets how the next fetch of `page` behaves. A failed page has no fetch ahead of it: it
    /// becomes absent again, so that its next access fetches it anew with this behaviour (the
    /// host "has it now", or fails it again).
    pub fn set_behaviour(&mut self, page: PageIndex, behaviour: PageBehaviour) -> bool {
        match self.pages.get_mut(page) {
            Some(p) => {
                if p.state == PageState::Failed {
                    p.state = PageState::Absent;
                }
                p.next_fetch = behaviour;
                self.pages.forget_if_untouched(page);
                true
            }
            None => false,
        }
    }

    /// Decides what happens to an access to `page` by `vcpu`. `source` gives the vCPU's tokens
    /// when an event could be delivered right now (the protocol is registered, the vCPU could
    /// take the event now, and for the ring its event area is free); `None` otherwise. In sync
    /// mode no event is ever delivered.
    pub fn on_access(&mut self, vcpu: usize, page: PageIndex, source: Option<&mut dyn TokenSource>) -> Decision {
        let delivers = self.mode != HostMode::Sync;
        let via = source.as_ref().map(|s| s.via());
        let token = || if delivers { alloc_with_via(source) } else { None };
        let Some(p) = self.pages.get_mut(page) else {
            return Decision::Continue;
        };
        let decision = match &mut p.state {
            PageState::Present => Decision::Continue,
            // Only a protocol with a "failed" result can tell the guest; no token is taken.
            PageState::Failed => match via.filter(|v| v.reports_failure()).and_then(|_| token()) {
                Some((token, _)) => Decision::DeliverResolved { token, result: RESULT_FAILED, make_present: false },
                None => Decision::StopFailedPage,
            },
            PageState::Fetching { failing, held, waiters } => {
                let token = if via.is_some_and(Via::token_per_access) { token() } else { None };
                match token {
                    Some((token, via)) => {
                        waiters.push(TokenOut { vcpu, via, token });
                        Decision::Deliver { token, fetch: None }
                    }
                    None if *held => {
                        // Waiting synchronously for a held page would wait for ever: release it.
                        *held = false;
                        self.counters.holds_released_by_sync_wait += 1;
                        Decision::Wait { fetch: Some(Fetch::of(*failing)) }
                    }
                    None => Decision::Wait { fetch: None },
                }
            }
            PageState::Absent => {
                let behaviour =
                    fetch_behaviour(self.timing, std::mem::replace(&mut p.next_fetch, PageBehaviour::Normal));
                match behaviour {
                    PageBehaviour::Immediate => {
                        p.state = PageState::Present;
                        match token() {
                            Some((token, _)) => {
                                Decision::DeliverResolved { token, result: RESULT_RETRY, make_present: true }
                            }
                            None => Decision::PresentNow,
                        }
                    }
                    PageBehaviour::Normal | PageBehaviour::Fail | PageBehaviour::Held => {
                        let failing = behaviour == PageBehaviour::Fail;
                        let fetch = Fetch::of(failing);
                        match token() {
                            Some((token, via)) => {
                                let held = behaviour == PageBehaviour::Held;
                                let waiters = vec![TokenOut { vcpu, via, token }];
                                p.state = PageState::Fetching { failing, held, waiters };
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
                self.counters.sync_waits_in_ve_mode += u64::from(self.mode == HostMode::Ve);
            }
            Decision::Continue | Decision::PresentNow | Decision::StopFailedPage => {}
        }
        decision
    }

    /// Decides what happens to an access that raises #VE (mode `ve`, the vCPU's VE area free:
    /// `ve::route`). A #VE carries no token: the page's fetch starts (unless held, or already
    /// under way) with nobody waiting for it yet; the guest's request says who will. A failed
    /// page raises #VE too: the request reports the failure.
    pub fn on_ve_access(&mut self, page: PageIndex) -> VeAccess {
        let Some(p) = self.pages.get_mut(page) else {
            return VeAccess::Continue;
        };
        let access = match &mut p.state {
            PageState::Present => VeAccess::Continue,
            PageState::Failed | PageState::Fetching { .. } => VeAccess::Raise { fetch: None, make_present: false },
            PageState::Absent => {
                let behaviour =
                    fetch_behaviour(self.timing, std::mem::replace(&mut p.next_fetch, PageBehaviour::Normal));
                let failing = behaviour == PageBehaviour::Fail;
                let held = behaviour == PageBehaviour::Held;
                if behaviour == PageBehaviour::Immediate {
                    p.state = PageState::Present;
                    VeAccess::Raise { fetch: None, make_present: true }
                } else {
                    p.state = PageState::Fetching { failing, held, waiters: Vec::new() };
                    VeAccess::Raise { fetch: (!held).then_some(Fetch::of(failing)), make_present: false }
                }
            }
        };
        if access != VeAccess::Continue {
            self.counters.ve_delivered += 1;
        }
        access
    }

    /// Decides a #VE request for `page` by `vcpu`. A present or failed page answers at once; a
    /// suspend waits for a page being fetched (releasing it if held) and starts the fetch of an
    /// absent one; a park takes a token (none: [`VeAnswer::NoToken`], nothing changed) that
    /// waits for the page like an event's, and starts the fetch of an absent page (which keeps
    /// its behaviour: a held page stays held).
    pub fn on_ve_request(&mut self, vcpu: usize, page: PageIndex, request: VeRequest<'_>) -> VeAnswer {
        let Some(p) = self.pages.get_mut(page) else {
            return VeAnswer::OutOfRange;
        };
        let suspend = matches!(request, VeRequest::Suspend);
        let answer = match (&mut p.state, request) {
            (PageState::Present, _) => VeAnswer::Now { result: RESULT_RETRY, make_present: false },
            (PageState::Failed, _) => VeAnswer::Now { result: RESULT_FAILED, make_present: false },
            (PageState::Fetching { failing, held, .. }, VeRequest::Suspend) => {
                if *held {
                    *held = false;
                    self.counters.holds_released_by_sync_wait += 1;
                    VeAnswer::Wait { fetch: Some(Fetch::of(*failing)) }
                } else {
                    VeAnswer::Wait { fetch: None }
                }
            }
            (PageState::Fetching { waiters, .. }, VeRequest::Park(source)) => match alloc_with_via(source) {
                Some((token, via)) => {
                    waiters.push(TokenOut { vcpu, via, token });
                    VeAnswer::Parked { token, fetch: None }
                }
                None => VeAnswer::NoToken,
            },
            (PageState::Absent, request) => {
                let behaviour = fetch_behaviour(self.timing, p.next_fetch);
                // Taken only when something will wait for the page: none back to return.
                let token = match request {
                    _ if behaviour == PageBehaviour::Immediate => None,
                    VeRequest::Suspend => None,
                    VeRequest::Park(source) => match alloc_with_via(source) {
                        Some(t) => Some(t),
                        None => return VeAnswer::NoToken,
                    },
                };
                p.next_fetch = PageBehaviour::Normal;
                let failing = behaviour == PageBehaviour::Fail;
                // A suspended vCPU would wait for ever for a held page: the hold is dropped.
                let held = behaviour == PageBehaviour::Held && token.is_some();
                if behaviour == PageBehaviour::Held && token.is_none() {
                    self.counters.holds_released_by_sync_wait += 1;
                }
                if behaviour == PageBehaviour::Immediate {
                    p.state = PageState::Present;
                    VeAnswer::Now { result: RESULT_RETRY, make_present: true }
                } else {
                    let fetch = (!held).then_some(Fetch::of(failing));
                    let waiters = token.map(|(token, via)| TokenOut { vcpu, via, token }).into_iter().collect();
                    p.state = PageState::Fetching { failing, held, waiters };
                    match token {
                        Some((token, _)) => VeAnswer::Parked { token, fetch },
                        None => VeAnswer::Wait { fetch },
                    }
                }
            }
        };
        match answer {
            VeAnswer::Parked { .. } => self.counters.ve_parks += 1,
            VeAnswer::OutOfRange | VeAnswer::NoToken => {}
            VeAnswer::Now { .. } | VeAnswer::Wait { .. } => self.counters.ve_suspends += u64::from(suspend),
        }
        answer
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
    pub fn on_fetch_done(&mut self, page: PageIndex) -> (u32, Vec<TokenOut>) {
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
    pub fn waiters(&self, page: PageIndex) -> &[TokenOut] {
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

    /// Tokens waiting for pages being fetched.
    pub fn waiting_tokens(&self) -> usize {
        self.pages
            .touched
            .values()
            .map(|p| if let PageState::Fetching { waiters, .. } = &p.state { waiters.len() } else { 0 })
            .sum()
    }

    /// Pages being fetched.
    pub fn fetching(&self) -> usize {
        self.pages.touched.values().filter(|p| matches!(p.state, PageState::Fetching { .. })).count()
    }
}

/// How the fetch of an absent page whose next fetch is `next` goes under `timing`: a normal
/// page is made present when touched under [`ResolutionTiming::BeforeEvent`].
fn fetch_behaviour(timing: ResolutionTiming, next: PageBehaviour) -> PageBehaviour {
    if timing == ResolutionTiming::BeforeEvent && next == PageBehaviour::Normal {
        PageBehaviour::Immediate
    } else {
        next
    }
}

/// A token of `source`, with the protocol it is from (`None`: no source, or no token free).
fn alloc_with_via(source: Option<&mut dyn TokenSource>) -> Option<(Token, Via)> {
    source.and_then(|s| s.alloc().map(|t| (t, s.via())))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod ve_tests;
