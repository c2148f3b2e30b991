//! When the pager may say "retry" for an instruction whose pages of the region it finds present:
//! per vCPU, plain code, unit-tested.
//!
//! An exit for an absent page can reach the pager after the page became present: another thread
//! filled it between KVM_RUN's return and the decode (a fetch completing, another vCPU's access
//! to a page owed a "page not present"). Re-entering is then right, as the instruction will find
//! its page. The same exit right again at the same RIP is different: it has another cause (a
//! page outside the region, a handler after the pager), and saying "retry" forever would hide
//! it. So a vCPU's retries at one RIP go on only while pages are filled in between (the page
//! may have been evicted and filled again), and at most [`MAX_IN_A_ROW`] times; then the exit
//! is not the pager's, and the handlers after it (or the run's error) get it. An entry that
//! exits for a kick comes between and starts the count again; the run loop's repeat guard,
//! which does not count kicks as progress, bounds that.

/// Retries in a row at one RIP, each after a fill, before the pager lets the exit go.
pub const MAX_IN_A_ROW: u32 = 4;

/// One vCPU's record of its last such retry.
#[derive(Clone, Copy, Debug, Default)]
pub struct PresentRetries {
    last: Option<Last>,
}

#[derive(Clone, Copy, Debug)]
struct Last {
    /// The vCPU's entry the answer was for (`VcpuCtx::entries`).
    entries: u64,
    rip: u64,
    /// The pager's fill count when it answered.
    fills: u64,
    /// Retries in a row at this RIP so far.
    in_a_row: u32,
    /// Whether the answer was no.
    refused: bool,
}

impl PresentRetries {
    /// Whether to retry the instruction at `rip`, whose pages of the region are all present, at
    /// the vCPU's entry `entries`, with `fills` pages filled by the pager so far; records the
    /// answer. A first exit is retried. The same exit at the next entry is retried again only if
    /// a page was filled since and fewer than [`MAX_IN_A_ROW`] retries went before; once
    /// refused, it stays refused while it comes back at every entry.
    pub fn retry(&mut self, entries: u64, rip: u64, fills: u64) -> bool {
        let again = self.last.filter(|last| last.entries == entries.wrapping_sub(1) && last.rip == rip);
        let (retry, in_a_row) = match again {
            None => (true, 1),
            Some(last) if last.refused || last.fills == fills || last.in_a_row >= MAX_IN_A_ROW => {
                (false, last.in_a_row)
            }
            Some(last) => (true, last.in_a_row + 1),
        };
        self.last = Some(Last { entries, rip, fills, in_a_row, refused: !retry });
        retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIP: u64 = 0x17e0fe;

    /// Found by the soak under one host CPU: a CPL 3 access faulted on a page that another
    /// thread filled before the vCPU's thread decoded the EFAULT; no absent page was left, and
    /// the run stopped with "no handler claimed".
    #[test]
    fn a_first_exit_is_retried_and_the_same_one_right_again_without_a_fill_is_not() {
        let mut retries = PresentRetries::default();
        assert!(retries.retry(40, RIP, 7), "filled between the exit and the decode");
        assert!(!retries.retry(41, RIP, 7), "nothing filled since: another cause");
        assert!(!retries.retry(42, RIP, 9), "once refused, refused while it comes back");
        assert!(!retries.retry(43, RIP, 11));
    }

    #[test]
    fn an_exit_at_another_entry_or_rip_is_a_new_one() {
        let mut retries = PresentRetries::default();
        assert!(retries.retry(40, RIP, 7));
        assert!(retries.retry(42, RIP, 7), "another exit came between");
        assert!(retries.retry(43, RIP + 4, 7), "another instruction");
        assert!(!retries.retry(44, RIP + 4, 7));
        assert!(retries.retry(46, RIP + 4, 7), "a refusal is forgotten once anything else comes between");
    }

    /// The page filled, evicted by another vCPU and filled again before the decode, more than
    /// once: retried while pages are filled in between, at most `MAX_IN_A_ROW` times.
    #[test]
    fn retries_in_a_row_need_a_fill_between_and_stop_at_the_limit() {
        let mut retries = PresentRetries::default();
        let granted = (0..10).take_while(|&i| retries.retry(40 + i, RIP, 7 + i)).count();
        assert_eq!(granted, MAX_IN_A_ROW as usize);
        assert!(!retries.retry(40 + granted as u64 + 1, RIP, 100), "refused stays refused, fills or not");
        assert!(retries.retry(60, RIP, 100), "after a gap: a new exit");
    }

    #[test]
    fn entries_wrap_without_a_panic() {
        let mut retries = PresentRetries::default();
        assert!(retries.retry(u64::MAX, RIP, 0));
        assert!(!retries.retry(0, RIP, 0), "entry 0 follows entry 2^64 - 1");
    }
}
