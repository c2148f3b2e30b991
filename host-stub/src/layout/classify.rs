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
    if state == MemoryState::Absent {
        // Whether or not a window was open too: the page was not there to be read.
        return Verdict::AbsentPage;
    }
    let overlapped = |w: &Window| w.opened <= span.returned && w.closed.is_none_or(|closed| closed > span.entered);
    if windows.iter().any(|w| overlapped(w) && w.ranges.iter().any(|r| r.contains(&gpa))) {
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
    log: Mutex<Vec<Window>>,
    closed: Condvar,
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
        log.push(Window { opened, closed: None, ranges });
        log.len() - 1
    }

    /// Closes window `index`.
    pub fn close(&self, index: usize) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let closed = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(w) = log.get_mut(index) {
            w.closed = Some(closed);
        }
        self.closed.notify_all();
    }

    /// Classifies an exit (see [`classify`]).
    pub fn classify(&self, gpa: Option<u64>, span: RunSpan, state: MemoryState) -> Verdict {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        classify(gpa, span, &log, state)
    }

    /// Waits until no window holding `gpa` is open: the access can then be completed against
    /// the layout after the update. Checks `stopped()` (the run ended) every `check`, and gives
    /// up then: `false`.
    pub fn wait_closed(&self, gpa: u64, check: Duration, stopped: impl Fn() -> bool) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        while log.iter().any(|w| w.closed.is_none() && w.ranges.iter().any(|r| r.contains(&gpa))) {
            if stopped() {
                return false;
            }
            log = self.closed.wait_timeout(log, check).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// How many windows there were.
    pub fn count(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        assert!(!w.wait_closed(0x2000, Duration::from_millis(1), || true), "gave up");
        w.close(i);
        assert!(w.wait_closed(0x2000, Duration::from_millis(1), || false));
        let after = w.generation();
        assert_eq!(w.classify(Some(0x2000), span(after, after), MemoryState::NotPaged), Verdict::GuestError);
        assert_eq!(w.count(), 1);
    }
}
