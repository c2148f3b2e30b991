//! The guest's side of the resolution ring: it owns `tail`, reads `head`, and copies entries
//! out before it publishes the new `tail`. Plain code over [`RingMemory`], so it is tested on
//! the host against an in-memory ring; the kernel implements `RingMemory` over the shared page.
//!
//! Ordering: `head` is loaded with acquire (the host stores entries before it releases
//! `head`); each entry is copied before `tail` is stored with release (the host may reuse the
//! entry's space once it sees `tail` pass it).

use pvagent_abi::pnp::Resolution;

/// Access to one vCPU's ring in shared memory.
pub trait RingMemory {
    /// `head`, with acquire ordering.
    fn load_head(&self) -> u32;
    /// A copy of `events[index]` (`index < N`).
    fn read_entry(&self, index: u32) -> Resolution;
    /// Publishes `tail`, with release ordering.
    fn store_tail(&self, tail: u32);
}

/// What a drain found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// This many entries were consumed.
    Consumed(u32),
    /// `head` claims more entries than the ring holds: nothing was consumed.
    Corrupt { head: u32, tail: u32 },
}

/// The consumer state of one ring.
#[derive(Debug, Clone, Copy)]
pub struct RingConsumer {
    entries: u32,
    tail: u32,
    pub consumed: u64,
    pub corrupt: u64,
}

impl RingConsumer {
    /// A consumer for a fresh ring of `entries` (a power of two, `head == tail == 0`).
    pub const fn new(entries: u32) -> Self {
        Self { entries, tail: 0, consumed: 0, corrupt: 0 }
    }

    /// The ring size this consumer was made for (0: none).
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The guest's own copy of `tail` (never re-read from shared memory).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Consumes every entry the host has produced, handing each to `sink`. Inlined into the
    /// two handlers that drain (the event's and the resolution's), which run on every event.
    #[inline(always)]
    pub fn drain(&mut self, mem: &impl RingMemory, mut sink: impl FnMut(Resolution)) -> Drain {
        if self.entries == 0 {
            return Drain::Consumed(0);
        }
        let head = mem.load_head();
        let available = head.wrapping_sub(self.tail);
        if available > self.entries {
            self.corrupt += 1;
            return Drain::Corrupt { head, tail: self.tail };
        }
        for _ in 0..available {
            let entry = mem.read_entry(self.tail % self.entries);
            self.tail = self.tail.wrapping_add(1);
            mem.store_tail(self.tail);
            self.consumed += 1;
            sink(entry);
        }
        Drain::Consumed(available)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// An in-memory ring with a host side that produces like the ABI says.
    struct TestRing {
        events: RefCell<Vec<Resolution>>,
        head: Cell<u32>,
        tail: Cell<u32>,
    }

    impl TestRing {
        fn new(n: usize) -> Self {
            Self { events: RefCell::new(vec![Resolution::default(); n]), head: Cell::new(0), tail: Cell::new(0) }
        }
        fn produce(&self, r: Resolution) -> bool {
            let n = self.events.borrow().len() as u32;
            if self.head.get().wrapping_sub(self.tail.get()) == n {
                return false; // full
            }
            self.events.borrow_mut()[(self.head.get() % n) as usize] = r;
            self.head.set(self.head.get().wrapping_add(1));
            true
        }
    }

    impl RingMemory for TestRing {
        fn load_head(&self) -> u32 {
            self.head.get()
        }
        fn read_entry(&self, index: u32) -> Resolution {
            self.events.borrow()[index as usize]
        }
        fn store_tail(&self, tail: u32) {
            self.tail.set(tail);
        }
    }

    fn r(token: u32) -> Resolution {
        Resolution { result: 0, token }
    }

    #[test]
    fn drains_in_order_and_publishes_tail() {
        let ring = TestRing::new(4);
        let mut c = RingConsumer::new(4);
        for t in 1..=3 {
            assert!(ring.produce(r(t)));
        }
        let mut got = Vec::new();
        assert_eq!(c.drain(&ring, |e| got.push(e.token)), Drain::Consumed(3));
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(ring.tail.get(), 3);
        assert_eq!(c.drain(&ring, |_| panic!("nothing new")), Drain::Consumed(0));
    }

    #[test]
    fn a_full_ring_is_drained_whole_and_indices_wrap_around_2_pow_32() {
        let ring = TestRing::new(4);
        let start = u32::MAX - 1;
        ring.head.set(start);
        ring.tail.set(start);
        let mut c = RingConsumer { tail: start, ..RingConsumer::new(4) };
        for t in 10..14 {
            assert!(ring.produce(r(t)));
        }
        assert!(!ring.produce(r(99)), "a ring of 4 holds 4");
        let mut got = Vec::new();
        assert_eq!(c.drain(&ring, |e| got.push(e.token)), Drain::Consumed(4));
        assert_eq!(got, [10, 11, 12, 13]);
        assert_eq!(c.tail(), start.wrapping_add(4));
    }

    #[test]
    fn a_head_beyond_the_ring_is_reported_and_nothing_is_consumed() {
        let ring = TestRing::new(4);
        ring.head.set(9);
        let mut c = RingConsumer::new(4);
        assert_eq!(c.drain(&ring, |_| panic!("must not consume")), Drain::Corrupt { head: 9, tail: 0 });
        assert_eq!(ring.tail.get(), 0);
        assert_eq!(c.corrupt, 1);
        // A head behind tail is as wrong.
        ring.head.set(u32::MAX);
        assert!(matches!(c.drain(&ring, |_| panic!("must not consume")), Drain::Corrupt { .. }));
    }

    #[test]
    fn the_guest_never_trusts_tail_in_shared_memory() {
        let ring = TestRing::new(4);
        let mut c = RingConsumer::new(4);
        ring.produce(r(1));
        ring.tail.set(77); // a host scribbling on the guest's index
        let mut got = Vec::new();
        c.drain(&ring, |e| got.push(e.token));
        assert_eq!(got, [1]);
        assert_eq!(ring.tail.get(), 1, "the guest republished its own tail");
    }
}
