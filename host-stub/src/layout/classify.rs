//! Telling an exit caused by a layout update from a guest that went astray (seed 003's missing
//! piece: KVM gives the same `KVM_EXIT_MMIO` or emulation failure for both). Only the host knows
//! which addresses were memory before and after an update and when the update left them without a
//! memslot, and which of its own absent demand pages exit as MMIO at a RAM address too; given
//! that, the rule is plain code, here, unit-tested.
//!
//! Time is counted in update generations, not clock time: each unheld update's window opens
//! (generation + 1) and closes (+ 1 again); a vCPU reads the generation before KVM_RUN and after
//! it returns. A window whose open and close bracket overlaps that pair could have been seen by
//! that KVM_RUN; one that closed before the entry or opened after the return could not.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// One unheld update's window: the guest addresses that were memory before and after it but
/// had no memslot in between, and the generations that bracket it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub opened: u64,
    /// `None` while it is open.
    pub closed: Option<u64>,
    pub ranges: Vec<Range<u64>>,
}

/// What the host's own memory handlers say about an address (`ExitHandler::memory_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryState {
    /// No handler pages it: plain memory, or no memory.
    NotPaged,
    /// A demand-paged page that is present.
    Present,
    /// A demand-paged page that is absent (or being fetched): its accesses exit by design.
    Absent,
}

/// What an exit at a guest address was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The address was memory before and after an update whose window this KVM_RUN overlapped:
    /// the guest did nothing wrong; complete or retry the access.
    UpdateWindow,
    /// A demand page absent when the vCPU touched it (it may be present by now: its fetch may
    /// have completed since): the pager's exit, not a race.
    AbsentPage,
    /// Neither: the guest touched what is not memory (or the exit names no address).
    GuestError,
}

/// The KVM_RUN an exit ended: the update generation read before it and after it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSpan {
    pub entered: u64,
    pub returned: u64,
}

/// The rule. `gpa`: the address the exit names (an MMIO exit's; an emulation failure's RIP
/// translated), `None` when there is none.
pub fn classify(gpa: Option<u64>, span: RunSpan, windows: &[Window], state: MemoryState) -> Verdict {
    let Some(gpa) = gpa else { return Verdict::GuestError };
    decide(windows.iter().any(|w| could_hit(w, gpa, span)), state)
}

/// Whether an exit at `gpa` of the KVM_RUN `span` could have hit window `w`: the window's open
/// and close bracket overlaps the span, and `gpa` is in its ranges.
fn could_hit(w: &Window, gpa: u64, span: RunSpan) -> bool {
    let overlapped = w.opened <= span.returned && w.closed.is_none_or(|closed| closed > span.entered);
    overlapped && w.ranges.iter().any(|r| r.contains(&gpa))
}

/// The verdict for an exit at an address, given whether it could have hit a window.
fn decide(in_window: bool, state: MemoryState) -> Verdict {
    if state == MemoryState::Absent {
        // Whether or not a window was open too: the page was not there to be read.
        Verdict::AbsentPage
    } else if in_window {
        Verdict::UpdateWindow
    } else if state == MemoryState::Present {
        // A demand page present now but not when the vCPU touched it (its fetch completed in
        // between): still the pager's exit, and the pager answers it from the page.
        Verdict::AbsentPage
    } else {
        Verdict::GuestError
    }
}

/// The windows of a run's unheld updates, and the generation counter.
#[derive(Debug, Default)]
pub struct Windows {
    generation: AtomicU64,
    /// Each window, with how many exits were classified as hitting it.
    log: Mutex<Vec<(Window, u64)>>,
    /// Signalled when a window closes or is hit.
    changed: Condvar,
}

impl Windows {
    /// The generation now (a vCPU reads it before KVM_RUN and after).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether any unheld update ever ran (nothing to classify otherwise).
    pub fn any(&self) -> bool {
        self.generation() > 0
    }

    /// Opens a window over `ranges`; returns its index for [`Windows::close`].
    pub fn open(&self, ranges: Vec<Range<u64>>) -> usize {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let opened = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        log.push((Window { opened, closed: None, ranges }, 0));
        log.len() - 1
    }

    /// Closes window `index`.
    pub fn close(&self, index: usize) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let closed = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((w, _)) = log.get_mut(index) {
            w.closed = Some(closed);
        }
        self.changed.notify_all();
    }

    /// Classifies an exit (see [`classify`]); one that hit a window counts as a hit of each
    /// window it could have hit.
    pub fn classify(&self, gpa: Option<u64>, span: RunSpan, state: MemoryState) -> Verdict {
        let Some(gpa) = gpa else { return Verdict::GuestError };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let hit: Vec<usize> = (0..log.len()).filter(|&i| could_hit(&log[i].0, gpa, span)).collect();
        let verdict = decide(!hit.is_empty(), state);
        if verdict == Verdict::UpdateWindow {
            for i in hit {
                log[i].1 += 1;
            }
            self.changed.notify_all();
        }
        verdict
    }

    /// Waits until an exit was classified as hitting window `index`, `bound` passed, or
    /// `stopped()` (checked every `check`); says whether one was.
    pub fn wait_hit(&self, index: usize, bound: Duration, check: Duration, stopped: impl Fn() -> bool) -> bool {
        let since = std::time::Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if log.get(index).is_some_and(|(_, hits)| *hits > 0) {
                return true;
            }
            let waited = since.elapsed();
            if waited >= bound || stopped() {
                return false;
            }
            log = self.changed.wait_timeout(log, (bound - waited).min(check)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until every window the exit at `gpa` of the KVM_RUN `span` could have hit is
    /// closed: the access can then be completed against the layout that update left. A window
    /// opened after the KVM_RUN returned is not waited for: the access came before that update,
    /// and its vCPU, which holds the handlers' lock meanwhile, would keep the other vCPUs' exits
    /// from hitting that window, which a lingering update waits for (each waited for the other
    /// until `LINGER_BOUND`). Checks `stopped()` (the run ended) every `check`, and gives up
    /// then: `false`.
    pub fn wait_closed(&self, gpa: u64, span: RunSpan, check: Duration, stopped: impl Fn() -> bool) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        while log.iter().any(|(w, _)| w.closed.is_none() && could_hit(w, gpa, span)) {
            if stopped() {
                return false;
            }
            log = self.changed.wait_timeout(log, check).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// How many windows there were.
    pub fn count(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many exits hit window `index`.
    pub fn hits(&self, index: usize) -> u64 {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).get(index).map_or(0, |(_, hits)| *hits)
    }
}

#[cfg(test)]
// A window is a list of ranges; these have one.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const RAM: Range<u64> = 0..0x40_0000;

    fn window(opened: u64, closed: Option<u64>) -> Window {
        Window { opened, closed, ranges: vec![RAM] }
    }

    fn span(entered: u64, returned: u64) -> RunSpan {
        RunSpan { entered, returned }
    }

    #[test]
    fn an_exit_at_ram_during_a_window_it_overlapped_is_the_update() {
        let windows = [window(1, Some(2))];
        // Entered before the window opened and returned while it was open, or after it closed.
        assert_eq!(classify(Some(0x1000), span(0, 1), &windows, MemoryState::NotPaged), Verdict::UpdateWindow);
        assert_eq!(classify(Some(0x1000), span(0, 2), &windows, MemoryState::NotPaged), Verdict::UpdateWindow);
        assert_eq!(classify(Some(0x1000), span(1, 1), &windows, MemoryState::NotPaged), Verdict::UpdateWindow);
        // A window still open.
        assert_eq!(
            classify(Some(0x1000), span(1, 1), &[window(1, None)], MemoryState::NotPaged),
            Verdict::UpdateWindow
        );
    }

    #[test]
    fn the_same_exit_outside_any_window_or_address_is_the_guests() {
        let windows = [window(1, Some(2)), window(3, Some(4))];
        // Entered after the first closed and returned before the second opened.
        assert_eq!(classify(Some(0x1000), span(2, 2), &windows, MemoryState::NotPaged), Verdict::GuestError);
        // Before any window.
        assert_eq!(classify(Some(0x1000), span(0, 0), &windows, MemoryState::NotPaged), Verdict::GuestError);
        // An address that was not memory before and after (outside the window's ranges).
        assert_eq!(classify(Some(0x40_0000), span(0, 4), &windows, MemoryState::NotPaged), Verdict::GuestError);
        assert_eq!(classify(Some(0xFEE0_0000), span(0, 4), &windows, MemoryState::NotPaged), Verdict::GuestError);
        // No address at all (an emulation failure whose RIP does not translate).
        assert_eq!(classify(None, span(0, 4), &windows, MemoryState::NotPaged), Verdict::GuestError);
    }

    #[test]
    fn an_absent_demand_page_is_the_pagers_window_or_not() {
        let windows = [window(1, Some(2))];
        assert_eq!(classify(Some(0x1000), span(0, 0), &windows, MemoryState::Absent), Verdict::AbsentPage);
        assert_eq!(classify(Some(0x1000), span(0, 2), &windows, MemoryState::Absent), Verdict::AbsentPage);
        // A present demand page in a window is the window's; outside one, it was absent when
        // touched and its fetch completed since: the pager's, never the guest's error.
        assert_eq!(classify(Some(0x1000), span(0, 2), &windows, MemoryState::Present), Verdict::UpdateWindow);
        assert_eq!(classify(Some(0x1000), span(3, 3), &windows, MemoryState::Present), Verdict::AbsentPage);
        assert_eq!(classify(Some(0x1000), span(3, 3), &windows, MemoryState::NotPaged), Verdict::GuestError);
    }

    #[test]
    fn the_log_brackets_each_window_with_generations() {
        let w = Windows::default();
        assert!(!w.any());
        let before = w.generation();
        let i = w.open(vec![RAM]);
        let during = w.generation();
        assert_eq!(w.classify(Some(0x2000), span(before, during), MemoryState::NotPaged), Verdict::UpdateWindow);
        // Still open: a wait for it gives up once the run ended.
        assert!(!w.wait_closed(0x2000, span(before, during), Duration::from_millis(1), || true), "gave up");
        w.close(i);
        assert!(w.wait_closed(0x2000, span(before, during), Duration::from_millis(1), || false));
        let after = w.generation();
        assert_eq!(w.classify(Some(0x2000), span(after, after), MemoryState::NotPaged), Verdict::GuestError);
        assert_eq!(w.count(), 1);
    }

    /// An access that hit a window is completed once that window is closed, even while a later
    /// update's window over the same address is open (found as a lingering update that waited
    /// its whole bound: the vCPU completing the earlier access held the handlers' lock, waiting
    /// for the later window, which waited for another vCPU's exit, which needed that lock).
    #[test]
    fn an_access_waits_only_for_the_windows_it_could_have_hit() {
        let w = Windows::default();
        let entered = w.generation();
        let first = w.open(vec![RAM]);
        let returned = w.generation();
        let hit_first = span(entered, returned);
        assert_eq!(w.classify(Some(0x2000), hit_first, MemoryState::NotPaged), Verdict::UpdateWindow);
        w.close(first);
        let later = w.open(vec![RAM]);
        assert!(w.wait_closed(0x2000, hit_first, Duration::from_millis(1), || true), "not held by the later window");
        // An exit of a KVM_RUN that overlapped the later window waits for it.
        let now = span(w.generation(), w.generation());
        assert!(!w.wait_closed(0x2000, now, Duration::from_millis(1), || true), "held by the window it could hit");
        w.close(later);
        assert!(w.wait_closed(0x2000, now, Duration::from_millis(1), || false));
    }

    /// A lingering update waits for a hit of its own window: an exit that could only have hit
    /// another (earlier) window does not count for it.
    #[test]
    fn hits_are_counted_per_window() {
        let w = Windows::default();
        let first = w.open(vec![RAM]);
        let entered_first = w.generation();
        w.close(first);
        let second = w.open(vec![0x100_0000..0x110_0000]);
        let now = w.generation();
        // A KVM_RUN that spanned both windows exits at RAM: only the first could be hit there.
        assert_eq!(
            w.classify(Some(0x2000), span(entered_first - 1, now), MemoryState::NotPaged),
            Verdict::UpdateWindow
        );
        assert_eq!((w.hits(first), w.hits(second)), (1, 0));
        assert!(!w.wait_hit(second, Duration::from_secs(30), Duration::from_millis(1), || true), "not hit");
        assert_eq!(w.classify(Some(0x100_2000), span(now, now), MemoryState::NotPaged), Verdict::UpdateWindow);
        assert!(w.wait_hit(second, Duration::from_secs(30), Duration::from_millis(1), || false));
        w.close(second);
    }

    /// Any windows (generations and ranges at the edges of u64), any exit address and any
    /// KVM_RUN span: an exit is the update's exactly when its address lies in a window whose
    /// open and close bracket overlaps the span and the pager does not call the page absent;
    /// an absent demand page is always the pager's, and an exit with no address the guest's.
    #[test]
    fn an_exit_is_the_updates_exactly_when_a_window_it_overlapped_holds_its_address() {
        use crate::props::{check, edge_u64};
        use proptest::prelude::*;
        let window = (edge_u64(), proptest::option::of(edge_u64()), edge_u64(), edge_u64())
            .prop_map(|(opened, closed, a, b)| Window { opened, closed, ranges: vec![a.min(b)..a.max(b)] });
        let state = proptest::sample::select(&[MemoryState::NotPaged, MemoryState::Present, MemoryState::Absent][..]);
        let case =
            (proptest::collection::vec(window, 0..4), proptest::option::of(edge_u64()), edge_u64(), edge_u64(), state);
        check("classify", 3000, case, |(windows, gpa, entered, returned, state)| {
            let span = RunSpan { entered, returned };
            let verdict = classify(gpa, span, &windows, state);
            let Some(gpa) = gpa else {
                prop_assert_eq!(verdict, Verdict::GuestError);
                return Ok(());
            };
            let hit = windows.iter().any(|w| {
                w.opened <= returned
                    && w.closed.is_none_or(|c| c > entered)
                    && w.ranges[0].start <= gpa
                    && gpa < w.ranges[0].end
            });
            let expected = match state {
                MemoryState::Absent => Verdict::AbsentPage,
                _ if hit => Verdict::UpdateWindow,
                MemoryState::Present => Verdict::AbsentPage,
                MemoryState::NotPaged => Verdict::GuestError,
            };
            prop_assert_eq!(verdict, expected);
            Ok(())
        });
    }
}
