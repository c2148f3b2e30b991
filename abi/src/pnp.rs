//! The page-not-present protocol (seed 001): a per-vCPU event area the host fills when the
//! guest touches a page the host does not have yet, and a per-vCPU resolution ring the host
//! posts outcomes to. `docs/abi.md` states every rule; this file holds the numbers and
//! layouts, and the token format both sides decode.
//!
//! Registration is per vCPU, through three MSRs: [`MSR_VECTORS`] first, then [`MSR_RING`] and
//! [`MSR_DATA`]. The vectors are settled before any shared area: they can be written only
//! while neither area is enabled ([`vectors_writable`]), and an area can be enabled only once
//! valid vectors are set. The protocol is on for a vCPU (events are delivered) while both
//! `MSR_RING` and `MSR_DATA` have their enable bit set. The guest zeroes the ring's `head` and
//! `tail` before it enables the ring; the host checks. A write the host cannot accept raises
//! #GP and changes nothing.

use crate::Plain;

/// Event and resolution vectors: bits 7:0 the page-not-present event vector, bits 15:8 the
/// resolution interrupt vector, bit 16 [`VECTORS_DRAIN_AT_EVENT`]. Both vectors must be
/// 32..=255 and different; other bits are reserved (0). Writable only while neither
/// [`MSR_RING`] nor [`MSR_DATA`] is enabled ([`vectors_writable`]).
pub const MSR_VECTORS: u32 = crate::msr::PV_BASE;
/// [`MSR_VECTORS`] bit 16: the guest drains the ring every time it takes an event, after its
/// acquire load of `inuse == 1` and before it stores `inuse = 0`. The host may then leave out
/// the resolution interrupt for a resolution it posts before it delivers the event that carries
/// the same token (it publishes `head` before it stores `inuse = 1` with release, so that drain
/// finds it): the no-wait path costs one interrupt instead of two. A resolution posted once the
/// event is delivered still comes with its interrupt. Only where the host offers it
/// ([`crate::cpuid::Features::PNP_DRAIN_AT_EVENT`]); elsewhere a reserved bit.
pub const VECTORS_DRAIN_AT_EVENT: u64 = 1 << 16;
/// The resolution ring: bit 0 enable, bits 4:1 log2 of the ring size N (N = 1..=256), bits
/// 11:5 reserved (0), bits 63:12 the ring's page frame (the ring starts at a page boundary and
/// fits in that page, within one RAM range of the memory map). Enabling needs valid vectors,
/// and the ring's `head` and `tail` must be 0 (the guest zeroes them first). Any write while a
/// token is outstanding (changing or disabling the ring) is refused. Disabling is a write of
/// 0; bit 0 clear with any other bit set is refused.
pub const MSR_RING: u32 = crate::msr::PV_BASE + 1;
/// The event area: bit 0 enable, bits 5:1 reserved (0), bits 63:6 its address (64-byte
/// aligned; its 64 bytes within one RAM range of the memory map). Enabling needs valid
/// vectors. As for [`MSR_RING`], any write while a token is outstanding (moving or disabling
/// the area) is refused: an event left in the old area would never be taken. Disabling is a
/// write of 0.
pub const MSR_DATA: u32 = crate::msr::PV_BASE + 2;

/// Whether [`MSR_VECTORS`] may be written while [`MSR_RING`] and [`MSR_DATA`] hold these
/// values: only when neither is enabled. Vectors that could change under a registered area
/// would leave the host holding an area for a vector the guest no longer handles.
pub const fn vectors_writable(ring_msr: u64, data_msr: u64) -> bool {
    ring_msr & MSR_ENABLE == 0 && data_msr & MSR_ENABLE == 0
}

/// `MSR_RING` / `MSR_DATA` enable bit.
pub const MSR_ENABLE: u64 = 1;
/// `MSR_RING`: shift of the log2(N) field.
pub const RING_ORDER_SHIFT: u32 = 1;
/// `MSR_RING`: mask of the log2(N) field, after shifting.
pub const RING_ORDER_MASK: u64 = 0xF;
/// `MSR_RING`: reserved bits.
pub const RING_RESERVED: u64 = 0xFE0;
/// `MSR_DATA`: reserved bits.
pub const DATA_RESERVED: u64 = 0x3E;
/// Required alignment of the event area.
pub const DATA_ALIGN: u64 = 64;
/// Largest ring.
pub const MAX_RING_ENTRIES: u32 = 256;

/// The per-vCPU event area. 32 bytes, 64-byte aligned.
///
/// Only the host sets `inuse` from 0 to 1, after filling the other fields; only the guest sets
/// it from 1 to 0, after copying them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PageNotPresentData {
    /// 1 while the area holds an event the guest has not taken yet.
    pub inuse: u32,
    /// The token the resolution will carry.
    pub token: u32,
    /// Guest-physical address of the access.
    pub gpa: u64,
    /// Guest-virtual address of the access, when `flags & FLAG_GVA_VALID`.
    pub gva: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// 0.
    pub reserved: u32,
}

/// [`PageNotPresentData::flags`]: `gva` is known.
pub const FLAG_GVA_VALID: u32 = 1 << 0;

const _: () = assert!(core::mem::size_of::<PageNotPresentData>() == 32);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, inuse) == 0);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, token) == 4);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, gpa) == 8);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, gva) == 16);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, flags) == 24);

// SAFETY: only integers, and the asserts above show there is no padding.
unsafe impl Plain for PageNotPresentData {}

/// Offset of `inuse` (what both sides access atomically).
pub const DATA_INUSE_OFFSET: u64 = 0;
/// Offset of `token`.
pub const DATA_TOKEN_OFFSET: u64 = 4;

const _: () = assert!(core::mem::offset_of!(PageNotPresentData, inuse) as u64 == DATA_INUSE_OFFSET);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, token) as u64 == DATA_TOKEN_OFFSET);
/// Offset of `flags` in the event area; `reserved` follows it, so the two are one 8-byte
/// aligned word.
pub const DATA_FLAGS_OFFSET: u64 = 24;
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, flags) as u64 == DATA_FLAGS_OFFSET);
const _: () = assert!(core::mem::offset_of!(PageNotPresentData, reserved) as u64 == DATA_FLAGS_OFFSET + 4);

/// One ring entry. 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Resolution {
    /// [`RESULT_RETRY`] or [`RESULT_FAILED`].
    pub result: u32,
    /// The token of the event this resolves.
    pub token: u32,
}

const _: () = assert!(core::mem::size_of::<Resolution>() == 8);
const _: () = assert!(core::mem::offset_of!(Resolution, token) == 4);

// SAFETY: only integers, and the asserts above show there is no padding.
unsafe impl Plain for Resolution {}

/// The page is present now: retry the access.
pub const RESULT_RETRY: u32 = 0;
/// The page has failed and will not come.
pub const RESULT_FAILED: u32 = 1;

/// The ring is `events[N]` followed by `u32 head` and `u32 tail`. `head` is written only by
/// the host (entries it produced), `tail` only by the guest (entries it consumed); both count
/// up forever and wrap at 2^32; entry `i` lives at `events[i % N]`.
pub const fn ring_head_offset(entries: u32) -> u64 {
    entries as u64 * core::mem::size_of::<Resolution>() as u64
}

/// Offset of `tail`; see [`ring_head_offset`].
pub const fn ring_tail_offset(entries: u32) -> u64 {
    ring_head_offset(entries) + 4
}

/// Bytes a ring of `entries` occupies.
pub const fn ring_size(entries: u32) -> u64 {
    ring_head_offset(entries) + 8
}

const _: () = assert!(ring_size(MAX_RING_ENTRIES) <= crate::PAGE_SIZE);

/// A token: bits 15:0 the slot (< N), bits 31:16 a sequence number that is never 0 (so token 0
/// is never valid, and a slot's successive tokens differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub u32);

impl Token {
    /// The token for `slot` in its `sequence`-th use (`sequence` 1..=0xFFFF).
    pub const fn new(slot: u16, sequence: u16) -> Self {
        Token(((sequence as u32) << 16) | slot as u32)
    }

    /// The slot index.
    pub const fn slot(self) -> u16 {
        self.0 as u16
    }

    /// The sequence number.
    pub const fn sequence(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// Whether the token can be valid for a ring of `entries`.
    pub const fn is_well_formed(self, entries: u32) -> bool {
        self.sequence() != 0 && (self.slot() as u32) < entries
    }
}

/// The next sequence number after `sequence` (skipping 0).
pub const fn next_sequence(sequence: u16) -> u16 {
    match sequence.wrapping_add(1) {
        0 => 1,
        s => s,
    }
}

/// The host stub's demand-paged region and limits: EAX the region's base in 2 MiB units, EBX
/// its size in 4 KiB pages, ECX the largest ring the host accepts, EDX [`HostMode`] at boot.
pub const LEAF_PNP: u32 = 0x4000_0002;

crate::wire_enum! {
/// How the host treats accesses to absent pages.
pub enum HostMode: u32 {
    /// No events: the vCPU waits for every page (the synchronous path, always).
    Sync = 0,
    /// Page-not-present events and resolutions, as this protocol says.
    Ring = 1,
    /// KVM's async page fault ABI ([`crate::kvm_apf`]), served by the host stub itself: "page
    /// not present" as #PF to CPL 3 with interrupts on, "page ready" as the registered
    /// interrupt; every other access waits, as KVM's do.
    KvmApf = 2,
    /// KVM's async page fault ABI served by KVM itself: the host stub backs the region so that
    /// KVM's own asynchronous path takes a CPL 3 access, and only supplies the pages. The mode
    /// of a whole run: neither set nor left with [`crate::hypercall::Nr::PnpSetMode`].
    KvmApfKernel = 3,
    /// #VE ([`crate::ve`]): an access to an absent page by a vCPU with a registered VE
    /// information area whose busy word is 0 raises #VE; the guest answers with a request
    /// (suspend, or park with a token of this ring). With the busy word set the access waits
    /// (the synchronous path), as on hardware; a vCPU with no VE area registered gets what
    /// `Ring` mode gives it.
    Ve = 4,
}
}

impl HostMode {
    /// Whether events of this mode reach the guest through KVM's async page fault ABI.
    pub const fn is_kvm_apf(self) -> bool {
        matches!(self, HostMode::KvmApf | HostMode::KvmApfKernel)
    }
}

/// What a page of the demand region holds when the host stub's default backing image is used:
/// the u64 at guest-physical address `gpa` (8-byte aligned) is `backing_pattern(gpa)`, so a
/// guest can check that it got the right data without knowing anything else.
pub const fn backing_pattern(gpa: u64) -> u64 {
    (gpa ^ 0x5EED_0000_0000_0000).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Marks word 0 of a page the host stub serves with versions (`--pnp-versioned`).
pub const VERSIONED_TAG: u64 = 0x5645_5200_0000_0000;

/// The first two words of the page at `gpa` when the host stub serves the region with versions
/// (`--pnp-versioned`): word 0 is the page's address with [`VERSIONED_TAG`], word 1 its version,
/// the number of times the host has made the page present (1 after its first fetch, one more
/// after each fetch that follows an eviction). The host writes both at every fetch, over what
/// the page held; every other word is as without versions (the backing pattern, or what the
/// guest wrote before an eviction). So a guest that evicts a page knows which version its next
/// access must find, and a stale or misplaced page shows.
pub const fn versioned_header(gpa: u64, version: u64) -> [u64; 2] {
    [(gpa & !(crate::PAGE_SIZE - 1)) | VERSIONED_TAG, version]
}

crate::wire_enum! {
/// Per-page behaviours a test can ask for with [`crate::hypercall::Nr::PnpSetPage`].
pub enum PageBehaviour: u64 {
    /// Fetched after the configured latency.
    Normal = 0,
    /// The fetch fails: the resolution says [`RESULT_FAILED`].
    Fail = 1,
    /// Available at once: the host writes the resolution before it delivers the event.
    Immediate = 2,
    /// Held: the page's fetch starts only when the guest releases it with
    /// [`crate::hypercall::Nr::PnpRelease`], so a test can keep a token outstanding for as long
    /// as it needs, whatever the machine's speed. An access that must wait synchronously for a
    /// held page releases it (it could wait for ever otherwise).
    Held = 3,
}
}

crate::wire_enum! {
/// When the host writes a resolution, relative to the event it resolves (a test and benchmark
/// control, [`crate::hypercall::Nr::PnpSetTiming`]; not part of the protocol a production host
/// offers). Each value forces one of the guest's paths whatever the machine's speed or load.
pub enum ResolutionTiming: u64 {
    /// As the protocol allows: as soon as the page is ready, before or after the guest took the
    /// event. Which comes first depends on the page-in latency and on the machine.
    WhenReady = 0,
    /// A page's fetch completes (the page becomes present, its resolutions are written) only
    /// once the guest has taken every event waiting for it (its event area no longer holds
    /// their tokens); until then the page stays absent, so a retried access comes back to the
    /// host. The guest keeps interrupts off from taking an event to parking its task or
    /// halting, so every such event waits: a task parks, or the HLT loop halts. Limits, on
    /// PVM only: a CPL 0 access completes before its event is taken, and PVM injects one
    /// interrupt per entry, so with a resolution pending at the same time the event comes at the
    /// vCPU's next exit and the task runs on until then (docs/abi.md). A synchronous access to
    /// such a page completes it at once; pages resolved before their event (`Immediate`, a
    /// failed page touched again) are not affected.
    AfterEventTaken = 1,
    /// Every absent page whose next fetch is normal is made present at once and its resolution
    /// written before its event (as [`PageBehaviour::Immediate`]): the guest finds every such
    /// event already resolved and nobody waits. Failing and held pages keep their behaviour.
    BeforeEvent = 2,
}
}

crate::wire_enum! {
/// Counters the host reports with [`crate::hypercall::Nr::PnpStats`] (index in `args[0]`).
pub enum HostCounter: u64 {
    /// Page-not-present events delivered.
    EventsDelivered = 0,
    /// Resolutions with [`RESULT_RETRY`] written.
    ResolvedRetry = 1,
    /// Resolutions with [`RESULT_FAILED`] written.
    ResolvedFailed = 2,
    /// Accesses that took the synchronous path (the vCPU waited).
    SyncWaits = 3,
    /// Tokens delivered and not yet consumed by the guest.
    Outstanding = 4,
    /// Pages fetched.
    PagesFetched = 5,
    /// Resolutions written before their event was delivered.
    ResolvedBeforeEvent = 6,
    /// Nanoseconds vCPUs spent blocked in the host on the synchronous path (time the guest
    /// cannot see: to it, a stalled instruction looks like a busy one).
    SyncWaitNanos = 7,
    /// #VEs delivered.
    VeDelivered = 8,
    /// Accesses that would have raised #VE but found the busy word set, and waited.
    VeBusyWaits = 9,
    /// [`crate::hypercall::Nr::VeSuspend`] requests served.
    VeSuspends = 10,
    /// [`crate::hypercall::Nr::VePark`] requests that handed out a token.
    VeParks = 11,
    /// KVM "page not present" #PFs the host owes after their "page ready" went first (mode
    /// `kvm-apf`, a page resolved before its event), now: the guest keeps a wake for each,
    /// until the vCPU's next access that can carry it.
    KvmApfOwed = 12,
}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_encode_slot_and_sequence_and_zero_is_never_valid() {
        let t = Token::new(5, 9);
        assert_eq!((t.slot(), t.sequence()), (5, 9));
        assert!(t.is_well_formed(8));
        assert!(!t.is_well_formed(4), "slot beyond the ring");
        assert!(!Token(0).is_well_formed(8));
        assert!(!Token::new(0, 0).is_well_formed(8));
        assert_eq!(next_sequence(0xFFFF), 1);
        assert_eq!(next_sequence(1), 2);
    }

    #[test]
    fn vectors_are_writable_only_with_both_areas_disabled() {
        assert!(vectors_writable(0, 0));
        assert!(!vectors_writable(0x2000 | MSR_ENABLE, 0), "the ring alone");
        assert!(!vectors_writable(0, 0x3000 | MSR_ENABLE), "the event area alone");
        assert!(!vectors_writable(0x2000 | MSR_ENABLE, 0x3000 | MSR_ENABLE));
    }

    #[test]
    fn ring_layout_puts_head_and_tail_after_the_entries() {
        assert_eq!(ring_head_offset(16), 128);
        assert_eq!(ring_tail_offset(16), 132);
        assert_eq!(ring_size(256), 2056);
    }

    #[test]
    fn the_backing_pattern_differs_between_neighbouring_words() {
        assert_ne!(backing_pattern(0x1000), backing_pattern(0x1008));
        assert_ne!(backing_pattern(0x1000), backing_pattern(0x2000));
    }
}
