//! The guest's record of the rules its host broke (`pvagent_abi::breach`): one counter per rule
//! and the first breach's two values, so that a handler that detects a breach only counts it
//! (no console, no lock, callable with interrupts off and from NMI context) and the report says
//! later which rules were broken, how often, and with which values first. Self-tests read the
//! counts before and after they make the host break a rule (`arm`).

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvagent_abi::breach::Breach;

/// One rule's record.
struct Record {
    count: AtomicU32,
    /// The first breach's values (what they mean is the rule's: a token and a page, a head and
    /// a tail), written by whoever counted it first.
    first: [AtomicU64; 2],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Record = Record { count: AtomicU32::new(0), first: [AtomicU64::new(0), AtomicU64::new(0)] };
static RECORDS: [Record; Breach::COUNT] = [EMPTY; Breach::COUNT];

/// Counts a breach of `rule`, with the values that show it. Returns true for the rule's first
/// breach (a caller that reports at once reports only that one).
#[inline(always)]
pub fn note(rule: Breach, a: u64, b: u64) -> bool {
    let record = &RECORDS[rule.index()];
    let first = record.count.fetch_add(1, Ordering::Relaxed) == 0;
    if first {
        record.first[0].store(a, Ordering::Relaxed);
        record.first[1].store(b, Ordering::Relaxed);
    }
    first
}

/// How many breaches of `rule` the guest has counted (on every vCPU).
pub fn count(rule: Breach) -> u32 {
    RECORDS[rule.index()].count.load(Ordering::Relaxed)
}

/// The first breach's values, if any.
pub fn first(rule: Breach) -> Option<[u64; 2]> {
    let record = &RECORDS[rule.index()];
    (record.count.load(Ordering::Relaxed) > 0)
        .then(|| [record.first[0].load(Ordering::Relaxed), record.first[1].load(Ordering::Relaxed)])
}

/// Every rule broken so far, one line each: `host broke <rule>: N time(s), first (a, b)`.
#[derive(Debug)]
pub struct Summary;

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &rule in Breach::ALL {
            if let Some([a, b]) = first(rule) {
                writeln!(f, "host broke {rule}: {} time(s), first ({a:#x}, {b:#x})", count(rule))?;
            }
        }
        Ok(())
    }
}

/// Asks the host stub to break `rule` once, at this vCPU's next occasion for it (a test
/// control: `Nr::HostBreak`). Returns whether a breach armed before was still unused.
#[cfg(kernel)]
pub fn arm(rule: Breach) -> Result<bool, crate::arch::hypercall::HypercallError> {
    crate::arch::hypercall::call(pvagent_abi::hypercall::Nr::HostBreak, [rule as u64, 0, 0, 0]).map(|r| r[0] != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_breach_keeps_its_values_and_later_ones_only_count() {
        let rule = Breach::RingHeadBeyondSize;
        let before = count(rule);
        let was_first = note(rule, 1000, 3);
        note(rule, 7, 7);
        assert_eq!(count(rule), before + 2);
        if was_first {
            assert_eq!(first(rule), Some([1000, 3]));
        }
        assert!(std::format!("{Summary}").contains("host broke ring-head-beyond-size: "));
    }
}
