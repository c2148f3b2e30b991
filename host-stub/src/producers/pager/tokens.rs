//! One vCPU's tokens and its view of the resolution ring, as plain code: which tokens are out,
//! which resolutions are posted and not yet consumed (the guest's `tail` says), and the
//! protocol violations that stop the guest. Unit-tested here.

use std::collections::VecDeque;

use pvagent_abi::pnp::{Token, next_sequence};

/// A broken ring protocol: the host stops the guest with this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingViolation {
    /// The guest's `tail` is beyond what the host produced.
    TailBeyondHead { tail: u32, head: u32 },
    /// No room for a resolution (it cannot happen while the guest follows the protocol: the
    /// host never hands out more tokens than the ring holds).
    Full { head: u32, tail: u32 },
    /// A resolution for a token that is not outstanding.
    NotOutstanding(Token),
}

impl std::fmt::Display for RingViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingViolation::TailBeyondHead { tail, head } => {
                write!(f, "the guest's ring tail {tail} is beyond the host's head {head}")
            }
            RingViolation::Full { head, tail } => write!(f, "the resolution ring is full (head {head}, tail {tail})"),
            RingViolation::NotOutstanding(t) => write!(f, "resolution for token {:#x}, which is not outstanding", t.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotUse {
    Free,
    /// Handed out with an event; no resolution yet.
    Outstanding,
    /// Its resolution is in the ring; free once the guest's tail passes it.
    Posted,
}

/// One vCPU's tokens and its view of the ring.
#[derive(Clone, Debug)]
pub struct TokenPool {
    entries: u32,
    slots: Vec<SlotUse>,
    sequence: Vec<u16>,
    /// Entries produced (the ring's `head`).
    head: u32,
    /// Entries the guest is known to have consumed (the last `tail` seen).
    consumed: u32,
    /// Slots of posted resolutions, in ring order ([`NO_SLOT`] for an entry that frees none).
    posted: VecDeque<u16>,
}

/// The slot of a ring entry that frees no slot when consumed: one the host wrote for no
/// outstanding token (a breach on purpose, `breaks`).
const NO_SLOT: u16 = u16::MAX;

impl TokenPool {
    /// A pool for a fresh ring of `entries`.
    pub fn new(entries: u32) -> Self {
        Self {
            entries,
            slots: vec![SlotUse::Free; entries as usize],
            sequence: vec![0; entries as usize],
            head: 0,
            consumed: 0,
            posted: VecDeque::new(),
        }
    }

    /// The ring size.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The ring's `head` as the host produced it.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Accounts for the guest's `tail`: frees the slots of consumed resolutions.
    pub fn observe_tail(&mut self, tail: u32) -> Result<(), RingViolation> {
        let newly = tail.wrapping_sub(self.consumed);
        if newly > self.head.wrapping_sub(self.consumed) {
            return Err(RingViolation::TailBeyondHead { tail, head: self.head });
        }
        for _ in 0..newly {
            if let Some(slot) = self.posted.pop_front().and_then(|slot| self.slots.get_mut(usize::from(slot))) {
                *slot = SlotUse::Free;
            }
        }
        self.consumed = tail;
        Ok(())
    }

    /// Hands out a token, if a slot is free.
    pub fn alloc(&mut self) -> Option<Token> {
        let slot = self.slots.iter().position(|s| *s == SlotUse::Free)?;
        self.slots[slot] = SlotUse::Outstanding;
        self.sequence[slot] = next_sequence(self.sequence[slot]);
        Some(Token::new(slot as u16, self.sequence[slot]))
    }

    /// Claims the ring entry for `token`'s resolution: returns the entry's index; `head` then
    /// counts it (the caller writes the entry, then publishes `head`).
    pub fn post(&mut self, token: Token) -> Result<u32, RingViolation> {
        let slot = usize::from(token.slot());
        let current = self.sequence.get(slot).copied();
        if current != Some(token.sequence()) || self.slots[slot] != SlotUse::Outstanding {
            return Err(RingViolation::NotOutstanding(token));
        }
        if self.head.wrapping_sub(self.consumed) >= self.entries {
            return Err(RingViolation::Full { head: self.head, tail: self.consumed });
        }
        let index = self.head % self.entries;
        self.head = self.head.wrapping_add(1);
        self.slots[slot] = SlotUse::Posted;
        self.posted.push_back(token.slot());
        Ok(index)
    }

    /// Ring entries free now (the guest's `tail` as last observed).
    pub fn room(&self) -> u32 {
        self.entries.saturating_sub(self.head.wrapping_sub(self.consumed))
    }

    /// Claims a ring entry for no outstanding token (a breach on purpose: a forged or repeated
    /// resolution); its consumption frees no slot. `None` when the ring is full.
    pub fn post_unowned(&mut self) -> Option<u32> {
        if self.room() == 0 {
            return None;
        }
        let index = self.head % self.entries;
        self.head = self.head.wrapping_add(1);
        self.posted.push_back(NO_SLOT);
        Some(index)
    }

    /// A token of `slot` this pool never hands out: the slot's next sequence number, which is
    /// skipped from now on (call it once the slot's current token is posted).
    pub fn never_issued(&mut self, slot: u16) -> Option<Token> {
        let sequence = self.sequence.get_mut(usize::from(slot))?;
        *sequence = next_sequence(*sequence);
        Some(Token::new(slot, *sequence))
    }

    /// The first token handed out whose resolution is not posted yet.
    pub fn unresolved_token(&self) -> Option<Token> {
        let slot = self.slots.iter().position(|s| *s == SlotUse::Outstanding)?;
        Some(Token::new(slot as u16, self.sequence[slot]))
    }

    /// Tokens handed out and not yet consumed by the guest.
    pub fn outstanding(&self) -> usize {
        self.slots.iter().filter(|s| **s != SlotUse::Free).count()
    }

    /// Tokens handed out whose resolution was not posted yet.
    pub fn unresolved(&self) -> usize {
        self.slots.iter().filter(|s| **s == SlotUse::Outstanding).count()
    }
}

impl super::state::TokenSource for TokenPool {
    fn via(&self) -> super::state::Via {
        super::state::Via::Ring
    }

    fn alloc(&mut self) -> Option<Token> {
        TokenPool::alloc(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(entries: u32) -> TokenPool {
        TokenPool::new(entries)
    }

    #[test]
    fn tokens_are_reused_only_after_the_guest_consumed_their_resolution() {
        let mut pool = ring(2);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.post(a), Ok(0));
        assert_eq!(pool.post(b), Ok(1));
        assert_eq!(pool.alloc(), None, "posted but not consumed");
        pool.observe_tail(1).unwrap();
        let c = pool.alloc().unwrap();
        assert_eq!(c.slot(), a.slot());
        assert_ne!(c, a, "a reused slot gets a new sequence number");
        assert_eq!(pool.post(a), Err(RingViolation::NotOutstanding(a)), "a stale token cannot be posted");
        assert_eq!(pool.post(c), Ok(0), "the ring wrapped");
        assert_eq!(pool.outstanding(), 2);
        pool.observe_tail(3).unwrap();
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn entries_for_no_token_take_room_and_free_nothing() {
        let mut pool = ring(4);
        let a = pool.alloc().unwrap();
        assert_eq!(pool.unresolved_token(), Some(a));
        assert_eq!(pool.post_unowned(), Some(0));
        assert_eq!(pool.post(a), Ok(1));
        let forged = pool.never_issued(a.slot()).unwrap();
        assert_eq!(forged.slot(), a.slot());
        assert_ne!(forged, a);
        assert_eq!(pool.room(), 2);
        pool.observe_tail(2).unwrap();
        assert_eq!(pool.outstanding(), 0);
        let b = pool.alloc().unwrap();
        assert_eq!(b.slot(), a.slot());
        assert!(b != a && b != forged, "a skipped sequence number is never handed out");
        for _ in 0..4 {
            pool.post_unowned().unwrap();
        }
        assert_eq!(pool.post_unowned(), None, "full");
        assert_eq!(pool.post(b), Err(RingViolation::Full { head: 6, tail: 2 }));
    }

    #[test]
    fn a_tail_beyond_head_is_a_violation() {
        let mut pool = ring(4);
        let a = pool.alloc().unwrap();
        pool.post(a).unwrap();
        assert_eq!(pool.observe_tail(2), Err(RingViolation::TailBeyondHead { tail: 2, head: 1 }));
        assert_eq!(pool.observe_tail(u32::MAX), Err(RingViolation::TailBeyondHead { tail: u32::MAX, head: 1 }));
        assert_eq!(pool.observe_tail(1), Ok(()));
    }

    /// One step a guest and the host take on a ring.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// The host hands out a token.
        Alloc,
        /// The host posts the resolution of the `n`-th token it holds (modulo how many), or of
        /// a token it never handed out.
        Post { n: usize, forged: Option<u32> },
        /// The guest writes `tail`: `ahead` entries past what it had consumed (wrapping), or
        /// any value.
        Tail { ahead: u32, any: Option<u32> },
    }

    fn step() -> impl Strategy<Value = Step> {
        use crate::props::edge_u32;
        // One plain mapping (proptest's unions are slow in a debug build).
        (any::<u8>(), any::<usize>(), edge_u32(), 0u32..6).prop_map(|(pick, n, value, ahead)| match pick % 6 {
            0 | 1 => Step::Alloc,
            2 | 3 => Step::Post { n, forged: (pick >= 240).then_some(value) },
            _ => Step::Tail { ahead, any: (pick >= 180).then_some(value) },
        })
    }

    use proptest::prelude::*;

    /// A ring of any size whose `head` and `tail` start anywhere (near 2^32 included), driven
    /// by any steps, a guest's `tail` hostile: a `tail` is refused exactly when it passes the
    /// host's `head` (counted modulo 2^32), and a refusal changes nothing; a resolution is
    /// posted exactly for a token handed out and not yet posted while the ring has room, at
    /// entry `head % N`; a slot is free again only once the guest's `tail` passed its
    /// resolution; and never more than N tokens are out.
    #[test]
    fn a_ring_driven_by_a_hostile_tail_keeps_its_accounts() {
        use crate::props::{check, edge_u32};
        let start = (0u32..=8, edge_u32(), proptest::collection::vec(step(), 1..=40));
        check("token ring", 2500, start, |(order, start, steps)| {
            let entries = 1u32 << order;
            let mut pool = TokenPool::new(entries);
            (pool.head, pool.consumed) = (start, start);
            // The model: tokens handed out and not posted; posted and not consumed, in order.
            let mut held: Vec<Token> = Vec::new();
            let mut posted: std::collections::VecDeque<Token> = Default::default();
            for step in steps {
                match step {
                    Step::Alloc => match pool.alloc() {
                        Some(token) => {
                            prop_assert!(usize::from(token.slot()) < entries as usize);
                            prop_assert!(!held.contains(&token) && !posted.contains(&token));
                            held.push(token);
                        }
                        None => prop_assert_eq!(held.len() + posted.len(), entries as usize, "a free slot"),
                    },
                    Step::Post { n, forged } => {
                        let token = match forged {
                            Some(raw) => Token(raw),
                            None if held.is_empty() => continue,
                            None => held[n % held.len()],
                        };
                        let head = pool.head;
                        match pool.post(token) {
                            Ok(index) => {
                                prop_assert_eq!(index, head % entries);
                                prop_assert_eq!(pool.head, head.wrapping_add(1));
                                let at = held.iter().position(|t| *t == token);
                                prop_assert!(at.is_some(), "posted {:x?}, never handed out", token);
                                posted.push_back(held.remove(at.unwrap_or(0)));
                            }
                            Err(RingViolation::NotOutstanding(t)) => {
                                prop_assert_eq!(t, token);
                                prop_assert!(!held.contains(&token), "{:x?} was outstanding", token);
                            }
                            Err(RingViolation::Full { .. }) => prop_assert_eq!(posted.len(), entries as usize),
                            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
                        }
                    }
                    Step::Tail { ahead, any } => {
                        let tail = any.unwrap_or(pool.consumed.wrapping_add(ahead));
                        let newly = tail.wrapping_sub(pool.consumed);
                        let before = (pool.head, pool.consumed, pool.outstanding());
                        match pool.observe_tail(tail) {
                            Ok(()) => {
                                prop_assert!(newly as usize <= posted.len());
                                posted.drain(..newly as usize);
                                prop_assert_eq!(pool.consumed, tail);
                            }
                            Err(RingViolation::TailBeyondHead { .. }) => {
                                prop_assert!(newly as usize > posted.len(), "tail {} refused", tail);
                                prop_assert_eq!((pool.head, pool.consumed, pool.outstanding()), before);
                            }
                            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
                        }
                    }
                }
                prop_assert_eq!(pool.head.wrapping_sub(pool.consumed) as usize, posted.len());
                prop_assert_eq!(pool.outstanding(), held.len() + posted.len());
                prop_assert_eq!(pool.unresolved(), held.len());
                prop_assert!(pool.outstanding() <= entries as usize);
            }
            Ok(())
        });
    }

    #[test]
    fn indices_wrap_at_2_pow_32() {
        let mut pool = ring(2);
        pool.head = u32::MAX;
        pool.consumed = u32::MAX;
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(pool.post(a), Ok(u32::MAX % 2));
        assert_eq!(pool.post(b), Ok(0));
        assert_eq!(pool.head(), 1);
        pool.observe_tail(1).unwrap();
        assert_eq!(pool.outstanding(), 0);
    }
}
