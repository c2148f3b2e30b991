//! The ring consumer against a model, over random sequences of what a hostile host may do to
//! the shared ring: write any entry with any token and result, set `head` to anything (ahead of
//! the guest's `tail` by up to the ring's size and beyond, behind it, any `u32`), scribble on
//! `tail`; and the guest draining in between. The model is a `tail` of its own and the rule of
//! docs/abi.md: `head - tail` more than the ring holds is corrupt and nothing is consumed,
//! otherwise each entry from `tail` on is copied in order and `tail` published after each.

use std::cell::{Cell, RefCell};

use proptest::prelude::*;
use pvagent_abi::pnp::Resolution;

use super::*;
use crate::testing::check;

/// Shared memory as a hostile host keeps it, recording what the guest does to it.
struct HostileRing {
    events: RefCell<Vec<Resolution>>,
    head: Cell<u32>,
    tail: Cell<u32>,
    head_loads: Cell<u32>,
    reads: RefCell<Vec<u32>>,
    stores: RefCell<Vec<u32>>,
}

impl RingMemory for HostileRing {
    fn load_head(&self) -> u32 {
        self.head_loads.set(self.head_loads.get() + 1);
        self.head.get()
    }
    fn read_entry(&self, index: u32) -> Resolution {
        let events = self.events.borrow();
        assert!((index as usize) < events.len(), "entry {index} read in a ring of {}", events.len());
        self.reads.borrow_mut().push(index);
        events[index as usize]
    }
    fn store_tail(&self, tail: u32) {
        self.stores.borrow_mut().push(tail);
        self.tail.set(tail);
    }
}

/// What the host does next.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Writes entry `index % N`.
    Write {
        index: u32,
        entry: Resolution,
    },
    /// `head` = the guest's tail + `ahead` (wrapping: a large value is behind it).
    HeadAhead {
        ahead: u32,
    },
    /// `head` = anything.
    Head {
        head: u32,
    },
    /// The guest's `tail` word, overwritten.
    ScribbleTail {
        tail: u32,
    },
    Drain,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let entry = (any::<u32>(), any::<u32>()).prop_map(|(result, token)| Resolution { result, token });
    let op = prop_oneof![
        4 => (any::<u32>(), entry).prop_map(|(index, entry)| Op::Write { index, entry }),
        // Mostly a few entries ahead (at most a ring of 256 and a few more), sometimes behind.
        3 => prop_oneof![0u32..=260, (1u32..4).prop_map(u32::wrapping_neg)].prop_map(|ahead| Op::HeadAhead { ahead }),
        1 => any::<u32>().prop_map(|head| Op::Head { head }),
        1 => any::<u32>().prop_map(|tail| Op::ScribbleTail { tail }),
        4 => Just(Op::Drain),
    ];
    prop::collection::vec(op, 1..60)
}

#[test]
fn the_consumer_takes_exactly_what_head_publishes_and_nothing_when_it_cannot_be() {
    let entries = prop::sample::select(vec![0u32, 1, 2, 4, 8, 32, 256]);
    check(2000, (entries, any::<u32>(), ops()), |(entries, start, ops)| {
        let ring = HostileRing {
            events: RefCell::new(vec![Resolution::default(); entries as usize]),
            head: Cell::new(start),
            tail: Cell::new(start),
            head_loads: Cell::new(0),
            reads: RefCell::new(Vec::new()),
            stores: RefCell::new(Vec::new()),
        };
        let mut c = RingConsumer { tail: start, ..RingConsumer::new(entries) };
        // The model: the guest's own tail and counters.
        let (mut tail, mut consumed, mut corrupt) = (start, 0u64, 0u64);
        for (step, &op) in ops.iter().enumerate() {
            match op {
                Op::Write { index, entry } => {
                    if entries > 0 {
                        ring.events.borrow_mut()[(index % entries) as usize] = entry;
                    }
                }
                Op::HeadAhead { ahead } => ring.head.set(tail.wrapping_add(ahead)),
                Op::Head { head } => ring.head.set(head),
                Op::ScribbleTail { tail } => ring.tail.set(tail),
                Op::Drain => {
                    let (head, shared_tail) = (ring.head.get(), ring.tail.get());
                    ring.head_loads.set(0);
                    ring.reads.borrow_mut().clear();
                    ring.stores.borrow_mut().clear();
                    let mut got = Vec::new();
                    let drained = c.drain(&ring, |r| got.push(r));
                    let available = head.wrapping_sub(tail);
                    let (want, indices): (Drain, Vec<u32>) = if entries == 0 {
                        (Drain::Consumed(0), Vec::new())
                    } else if available > entries {
                        corrupt += 1;
                        (Drain::Corrupt { head, tail }, Vec::new())
                    } else {
                        (Drain::Consumed(available), (0..available).map(|k| tail.wrapping_add(k) % entries).collect())
                    };
                    prop_assert_eq!(drained, want, "step {}", step);
                    let events = ring.events.borrow();
                    let want_entries: Vec<Resolution> = indices.iter().map(|&i| events[i as usize]).collect();
                    prop_assert_eq!(&got, &want_entries, "step {}: entries handed on", step);
                    prop_assert_eq!(&*ring.reads.borrow(), &indices, "step {}: entries read", step);
                    // `tail` published after each entry, and only then; the host's scribble stays
                    // when there was nothing to consume.
                    let stores: Vec<u32> = (1..=indices.len() as u32).map(|k| tail.wrapping_add(k)).collect();
                    prop_assert_eq!(&*ring.stores.borrow(), &stores, "step {}: tails published", step);
                    if stores.is_empty() {
                        prop_assert_eq!(ring.tail.get(), shared_tail, "step {}", step);
                    }
                    prop_assert!(
                        ring.head_loads.get() <= 1,
                        "step {}: head loaded {} times",
                        step,
                        ring.head_loads.get()
                    );
                    tail = tail.wrapping_add(indices.len() as u32);
                    consumed += indices.len() as u64;
                }
            }
            prop_assert_eq!((c.tail(), c.consumed, c.corrupt), (tail, consumed, corrupt), "step {}", step);
        }
        Ok(())
    });
}
