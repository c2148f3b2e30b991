//! The guest's memory layout as KVM memslots, and what each layout change costs in memslot
//! operations. Pure bookkeeping: [`Layout::plan`] says which slots are deleted, created or have
//! their flags changed, and the table after; nothing here talks to KVM (`layout::LayoutHandle`
//! carries a plan out), so every change is unit-tested without a VM.
//!
//! KVM changes a memslot's flags in place (dirty logging on or off: `KVM_MR_FLAGS_ONLY`), which
//! is atomic for the guest by itself. Everything else (moving, resizing, splitting, merging,
//! another backing) is a delete followed by a create: between the two, the guest addresses have
//! no memslot, and a vCPU that touches them exits to user space (seed 003's race).

use std::ops::Range;
use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};

/// Host memory behind guest memory: where it starts, how far it goes, and what keeps it mapped.
#[derive(Clone)]
pub struct Backing {
    host: u64,
    /// Bytes of the mapping from `host` on: no region on it may be larger (a resize or a merge
    /// past them would give KVM, and the host's own completed accesses, unmapped memory).
    bytes: u64,
    _keep: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backing({:#x})", self.host)
    }
}

impl Backing {
    /// `bytes` of memory at host address `host`, kept mapped by `keep` (the mapping's owner,
    /// e.g. an `Arc<MmapRegion>` or a clone of the `GuestMemoryMmap`). The layout never puts a
    /// region on more than `bytes` of it.
    ///
    /// # Safety
    ///
    /// `host..host + bytes` must lie inside one mapping that stays mapped, readable and writable
    /// for as long as `keep` lives: KVM reads and writes it on the guest's behalf.
    pub unsafe fn new(host: u64, bytes: u64, keep: Arc<dyn Send + Sync>) -> Self {
        Self { host, bytes, _keep: keep }
    }

    /// The same memory, `offset` bytes further on (at most `self.bytes`).
    fn offset(&self, offset: u64) -> Self {
        let offset = offset.min(self.bytes);
        Self { host: self.host + offset, bytes: self.bytes - offset, _keep: Arc::clone(&self._keep) }
    }

    /// Its host address.
    pub fn host(&self) -> u64 {
        self.host
    }
}

/// A region of guest memory: `bytes` at `gpa`, behind `backing`, with KVM's memslot flags.
#[derive(Clone, Debug)]
pub struct Region {
    pub gpa: u64,
    pub bytes: u64,
    pub backing: Backing,
    /// `KVM_MEM_LOG_DIRTY_PAGES`, `KVM_MEM_READONLY`.
    pub flags: u32,
}

impl Region {
    /// Its guest addresses. A region in a layout never wraps ([`Layout::plan`] refuses one that
    /// would); one built from a guest's numbers that would ends at `u64::MAX` here, and the plan
    /// refuses it.
    pub fn range(&self) -> Range<u64> {
        self.gpa..self.gpa.saturating_add(self.bytes)
    }
}

/// A change of the layout. A region is named by its first GPA.
#[derive(Clone, Debug)]
pub enum Update {
    /// A new region (hot-add).
    Add(Region),
    /// The region goes away.
    Remove { gpa: u64 },
    /// The region moves to `to`, keeping its memory.
    Move { gpa: u64, to: u64 },
    /// The region keeps its start and memory and gets `bytes` (its backing must cover them).
    Resize { gpa: u64, bytes: u64 },
    /// Other flags (KVM changes them in place).
    SetFlags { gpa: u64, flags: u32 },
    /// The region becomes two, `[gpa, at)` with its flags and `[at, end)` with `upper_flags`
    /// (to log writes to part of it, or make part read-only).
    Split { gpa: u64, at: u64, upper_flags: u32 },
    /// The region and the one right after it (contiguous in guest and host memory) become one,
    /// with the first one's flags.
    Merge { gpa: u64 },
    /// The region keeps its place and gets other memory.
    ReplaceBacking { gpa: u64, backing: Backing },
}

/// One memslot operation.
#[derive(Clone, Debug)]
pub enum SlotOp {
    Delete {
        slot: u32,
    },
    Create {
        slot: u32,
        region: Region,
    },
    /// KVM changes flags in place: no window.
    SetFlags {
        slot: u32,
        region: Region,
    },
}

impl SlotOp {
    /// The region a create or a flag change installs.
    pub fn region(&self) -> Option<&Region> {
        match self {
            SlotOp::Delete { .. } => None,
            SlotOp::Create { region, .. } | SlotOp::SetFlags { region, .. } => Some(region),
        }
    }
}

/// Why a change cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no region starts at {0:#x}")]
    NoRegion(u64),
    #[error("[{start:#x}, {end:#x}) is not 4 KiB aligned, or empty")]
    Unaligned { start: u64, end: u64 },
    #[error("[{start:#x}, {end:#x}) overlaps the region at {other:#x}")]
    Overlap { start: u64, end: u64, other: u64 },
    #[error("a split at {at:#x} is not inside the region at {gpa:#x}")]
    SplitOutside { gpa: u64, at: u64 },
    #[error("the region at {0:#x} has no region right after it, in guest and host memory, with the same memory")]
    NothingToMerge(u64),
    #[error("memslot flags {0:#x}: only KVM_MEM_LOG_DIRTY_PAGES and KVM_MEM_READONLY")]
    Flags(u32),
    #[error("a region of {bytes:#x} bytes at {start:#x} is larger than its host memory ({backing:#x} bytes)")]
    BeyondBacking { start: u64, bytes: u64, backing: u64 },
    #[error("{bytes:#x} bytes at {start:#x} do not fit below the guest's physical address limit {limit:#x}")]
    OutOfRange { start: u64, bytes: u64, limit: u64 },
}

/// What a change does: the memslot operations, in order, and the table after them.
#[derive(Debug)]
pub struct Plan {
    pub ops: Vec<SlotOp>,
    pub after: Layout,
    /// Guest addresses that are memory before and after the change but have no memslot for a
    /// while during it (between a delete and its create): what a vCPU may hit in the window.
    pub window: Vec<Range<u64>>,
}

/// The memslots: each region with its slot number.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    slots: Vec<(u32, Region)>,
    /// Slot numbers this layout may take for new slots (`first_free..`).
    next_free: u32,
    /// Guest addresses a region must end at or below: 2^MAXPHYADDR.
    limit: u64,
    /// Guest addresses of memslots the layout does not manage (a producer's own, such as the
    /// released region's guest_memfd slot): no region may overlap them.
    foreign: Vec<Range<u64>>,
}

const PAGE: u64 = 0x1000;
const KNOWN_FLAGS: u32 = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY;

impl Layout {
    /// An empty layout that numbers the slots it creates from `first_free` on, for a guest
    /// whose physical addresses have `phys_bits` bits (CPUID 0x8000_0008, EAX bits 7:0).
    pub fn new(first_free: u32, phys_bits: u32) -> Self {
        let limit = 1u64.checked_shl(phys_bits).unwrap_or(u64::MAX);
        Self { slots: Vec::new(), next_free: first_free, limit, foreign: Vec::new() }
    }

    /// Records a memslot the layout does not manage, which no region may overlap.
    pub fn add_foreign(&mut self, range: Range<u64>) {
        self.foreign.push(range);
    }

    /// Records a slot that already exists in KVM (set up before the layout took over).
    pub fn adopt(&mut self, slot: u32, region: Region) {
        self.slots.push((slot, region));
    }

    /// The regions, with their slots, in no particular order.
    pub fn slots(&self) -> impl Iterator<Item = (u32, &Region)> {
        self.slots.iter().map(|(s, r)| (*s, r))
    }

    /// The slot and region holding `gpa`.
    pub fn find(&self, gpa: u64) -> Option<(u32, &Region)> {
        self.slots().find(|(_, r)| r.range().contains(&gpa))
    }

    fn index_at(&self, gpa: u64) -> Result<usize, LayoutError> {
        self.slots.iter().position(|(_, r)| r.gpa == gpa).ok_or(LayoutError::NoRegion(gpa))
    }

    fn take_slot(&mut self) -> u32 {
        let slot = self.next_free;
        self.next_free += 1;
        slot
    }

    fn check(&self, region: &Region, ignoring: &[u32]) -> Result<(), LayoutError> {
        let (start, bytes) = (region.gpa, region.bytes);
        let Some(end) = start.checked_add(bytes).filter(|end| *end <= self.limit) else {
            return Err(LayoutError::OutOfRange { start, bytes, limit: self.limit });
        };
        if region.bytes == 0
            || !start.is_multiple_of(PAGE)
            || !region.bytes.is_multiple_of(PAGE)
            || !region.backing.host.is_multiple_of(PAGE)
        {
            return Err(LayoutError::Unaligned { start, end });
        }
        if region.bytes > region.backing.bytes {
            return Err(LayoutError::BeyondBacking { start, bytes, backing: region.backing.bytes });
        }
        if region.flags & !KNOWN_FLAGS != 0 {
            return Err(LayoutError::Flags(region.flags));
        }
        let other = self.slots.iter().find(|(s, r)| !ignoring.contains(s) && r.gpa < end && start < r.range().end);
        let foreign = self.foreign.iter().find(|r| r.start < end && start < r.end);
        match (other, foreign) {
            (Some((_, r)), _) => Err(LayoutError::Overlap { start, end, other: r.gpa }),
            (None, Some(r)) => Err(LayoutError::Overlap { start, end, other: r.start }),
            (None, None) => Ok(()),
        }
    }

    /// What `update` takes, and the layout after it; `self` is unchanged (the caller installs
    /// `after` once KVM carried the operations out).
    pub fn plan(&self, update: &Update) -> Result<Plan, LayoutError> {
        let mut after = self.clone();
        let mut ops = Vec::new();
        let mut window = Vec::new();
        match update {
            Update::Add(region) => {
                after.check(region, &[])?;
                let slot = after.take_slot();
                after.slots.push((slot, region.clone()));
                ops.push(SlotOp::Create { slot, region: region.clone() });
            }
            Update::Remove { gpa } => {
                let i = after.index_at(*gpa)?;
                let (slot, _) = after.slots.remove(i);
                ops.push(SlotOp::Delete { slot });
            }
            Update::Move { gpa, to } => {
                after.recreate(*gpa, |old| Region { gpa: *to, ..old }, &mut ops, &mut window)?
            }
            Update::Resize { gpa, bytes } => {
                after.recreate(*gpa, |old| Region { bytes: *bytes, ..old }, &mut ops, &mut window)?;
            }
            Update::SetFlags { gpa, flags } => {
                let i = after.index_at(*gpa)?;
                let (slot, old) = after.slots[i].clone();
                let changed = Region { flags: *flags, ..old };
                after.check(&changed, &[slot])?;
                after.slots[i].1 = changed.clone();
                ops.push(SlotOp::SetFlags { slot, region: changed });
            }
            Update::Split { gpa, at, upper_flags } => {
                let i = after.index_at(*gpa)?;
                let (slot, old) = after.slots[i].clone();
                if *at <= old.gpa || *at >= old.range().end || !at.is_multiple_of(PAGE) {
                    return Err(LayoutError::SplitOutside { gpa: *gpa, at: *at });
                }
                let lower = Region { bytes: at - old.gpa, ..old.clone() };
                let upper = Region {
                    gpa: *at,
                    bytes: old.range().end - at,
                    backing: old.backing.offset(at - old.gpa),
                    flags: *upper_flags,
                };
                after.check(&upper, &[slot])?;
                let upper_slot = after.take_slot();
                after.slots[i].1 = lower.clone();
                after.slots.push((upper_slot, upper.clone()));
                ops.push(SlotOp::Delete { slot });
                ops.push(SlotOp::Create { slot, region: lower });
                ops.push(SlotOp::Create { slot: upper_slot, region: upper });
                window.push(old.range());
            }
            Update::Merge { gpa } => {
                let i = after.index_at(*gpa)?;
                let (slot, first) = after.slots[i].clone();
                let end = first.range().end;
                let j = after
                    .slots
                    .iter()
                    .position(|(_, r)| r.gpa == end && r.backing.host == first.backing.host + first.bytes)
                    .ok_or(LayoutError::NothingToMerge(*gpa))?;
                let (second_slot, second) = after.slots[j].clone();
                let merged = Region { bytes: first.bytes + second.bytes, ..first.clone() };
                // Contiguous host addresses may still be two mappings: the first's must hold both.
                after.check(&merged, &[slot, second_slot])?;
                after.slots[i].1 = merged.clone();
                after.slots.retain(|(s, _)| *s != second_slot);
                ops.push(SlotOp::Delete { slot: second_slot });
                ops.push(SlotOp::Delete { slot });
                ops.push(SlotOp::Create { slot, region: merged.clone() });
                window.push(merged.range());
            }
            Update::ReplaceBacking { gpa, backing } => {
                let old = after.find(*gpa).map(|(_, r)| r.range());
                after.recreate(*gpa, |old| Region { backing: backing.clone(), ..old }, &mut ops, &mut window)?;
                // Every address of it is memory before and after, with other memory behind it.
                window.clear();
                window.extend(old);
            }
        }
        Ok(Plan { ops, after, window })
    }
}

impl Layout {
    /// The region at `gpa` deleted and created again as `change` makes it, in the same slot:
    /// the addresses it covers before and after go to the window.
    fn recreate(
        &mut self,
        gpa: u64,
        change: impl FnOnce(Region) -> Region,
        ops: &mut Vec<SlotOp>,
        window: &mut Vec<Range<u64>>,
    ) -> Result<(), LayoutError> {
        let i = self.index_at(gpa)?;
        let (slot, old) = self.slots[i].clone();
        let new = change(old.clone());
        self.check(&new, &[slot])?;
        self.slots[i].1 = new.clone();
        window.extend(overlap(&old.range(), &new.range()));
        ops.push(SlotOp::Delete { slot });
        ops.push(SlotOp::Create { slot, region: new });
        Ok(())
    }
}

/// The part two ranges share, if any.
fn overlap(a: &Range<u64>, b: &Range<u64>) -> Option<Range<u64>> {
    let (start, end) = (a.start.max(b.start), a.end.min(b.end));
    (start < end).then_some(start..end)
}

#[cfg(test)]
// A window is a list of ranges; these have one.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn backing(host: u64) -> Backing {
        // SAFETY: the tests never give these to KVM.
        unsafe { Backing::new(host, 0x1000_0000, Arc::new(())) }
    }

    fn region(gpa: u64, bytes: u64, host: u64) -> Region {
        Region { gpa, bytes, backing: backing(host), flags: 0 }
    }

    fn ram() -> Layout {
        let mut layout = Layout::new(10, 46);
        layout.adopt(0, region(0, 0x40_0000, 0x7f00_0000_0000));
        layout
    }

    fn shape(layout: &Layout) -> Vec<(u32, u64, u64, u64, u32)> {
        let mut v: Vec<_> = layout.slots().map(|(s, r)| (s, r.gpa, r.bytes, r.backing.host(), r.flags)).collect();
        v.sort_unstable();
        v
    }

    fn ops(plan: &Plan) -> Vec<String> {
        plan.ops
            .iter()
            .map(|op| match op {
                SlotOp::Delete { slot } => format!("delete {slot}"),
                SlotOp::Create { slot, region } => format!("create {slot} {:#x}+{:#x}", region.gpa, region.bytes),
                SlotOp::SetFlags { slot, region } => format!("flags {slot} {:#x}", region.flags),
            })
            .collect()
    }

    #[test]
    fn a_split_deletes_then_creates_both_halves_and_its_window_is_the_whole_region() {
        let plan = ram().plan(&Update::Split { gpa: 0, at: 0x20_0000, upper_flags: KVM_MEM_LOG_DIRTY_PAGES }).unwrap();
        assert_eq!(ops(&plan), ["delete 0", "create 0 0x0+0x200000", "create 10 0x200000+0x200000"]);
        assert_eq!(
            shape(&plan.after),
            [
                (0, 0, 0x20_0000, 0x7f00_0000_0000, 0),
                (10, 0x20_0000, 0x20_0000, 0x7f00_0020_0000, KVM_MEM_LOG_DIRTY_PAGES)
            ],
            "the upper half is the same memory, further on, with its own flags"
        );
        assert_eq!(plan.window, [0..0x40_0000]);
        // And back: a merge of the two is one slot again.
        let merged = plan.after.plan(&Update::Merge { gpa: 0 }).unwrap();
        assert_eq!(ops(&merged), ["delete 10", "delete 0", "create 0 0x0+0x400000"]);
        assert_eq!(shape(&merged.after), [(0, 0, 0x40_0000, 0x7f00_0000_0000, 0)]);
        assert_eq!(merged.window, [0..0x40_0000]);
    }

    #[test]
    fn flags_change_in_place_with_no_window() {
        let plan = ram().plan(&Update::SetFlags { gpa: 0, flags: KVM_MEM_LOG_DIRTY_PAGES }).unwrap();
        assert_eq!(ops(&plan), ["flags 0 0x1"]);
        assert!(plan.window.is_empty());
        assert_eq!(ram().plan(&Update::SetFlags { gpa: 0, flags: 1 << 2 }).unwrap_err(), LayoutError::Flags(4));
    }

    #[test]
    fn add_move_resize_remove_and_replace() {
        let mut layout = ram();
        let add = layout.plan(&Update::Add(region(0x100_0000, 0x10_0000, 0x7e00_0000_0000))).unwrap();
        assert_eq!(ops(&add), ["create 10 0x1000000+0x100000"]);
        assert!(add.window.is_empty(), "nothing was memory before");
        layout = add.after;
        // Moving it so that it overlaps its old place: the shared part is in the window.
        let moved = layout.plan(&Update::Move { gpa: 0x100_0000, to: 0x108_0000 }).unwrap();
        assert_eq!(ops(&moved), ["delete 10", "create 10 0x1080000+0x100000"]);
        assert_eq!(moved.window, [0x108_0000..0x110_0000]);
        let far = layout.plan(&Update::Move { gpa: 0x100_0000, to: 0x200_0000 }).unwrap();
        assert!(far.window.is_empty(), "no address is memory both before and after");
        let resized = layout.plan(&Update::Resize { gpa: 0x100_0000, bytes: 0x8_0000 }).unwrap();
        assert_eq!(resized.window, [0x100_0000..0x108_0000]);
        let replaced =
            layout.plan(&Update::ReplaceBacking { gpa: 0x100_0000, backing: backing(0x7d00_0000_0000) }).unwrap();
        assert_eq!(ops(&replaced), ["delete 10", "create 10 0x1000000+0x100000"]);
        assert_eq!(replaced.window, [0x100_0000..0x110_0000]);
        let removed = layout.plan(&Update::Remove { gpa: 0x100_0000 }).unwrap();
        assert_eq!(ops(&removed), ["delete 10"]);
        assert_eq!(shape(&removed.after), shape(&ram()));
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let layout = ram();
        let bad = [
            (
                Update::Add(region(0x20_0000, 0x1000, 0)),
                LayoutError::Overlap { start: 0x20_0000, end: 0x20_1000, other: 0 },
            ),
            (Update::Add(region(0x100_0800, 0x1000, 0)), LayoutError::Unaligned { start: 0x100_0800, end: 0x100_1800 }),
            (Update::Remove { gpa: 0x1000 }, LayoutError::NoRegion(0x1000)),
            (
                Update::Split { gpa: 0, at: 0x40_0000, upper_flags: 0 },
                LayoutError::SplitOutside { gpa: 0, at: 0x40_0000 },
            ),
            (Update::Split { gpa: 0, at: 0x800, upper_flags: 0 }, LayoutError::SplitOutside { gpa: 0, at: 0x800 }),
            (Update::Merge { gpa: 0 }, LayoutError::NothingToMerge(0)),
        ];
        for (update, error) in bad {
            assert_eq!(layout.plan(&update).unwrap_err(), error, "{update:?}");
        }
        // Two regions next to each other in the guest but not in host memory do not merge.
        let mut apart = ram();
        apart.adopt(1, region(0x40_0000, 0x1000, 0x1000));
        assert_eq!(apart.plan(&Update::Merge { gpa: 0 }).unwrap_err(), LayoutError::NothingToMerge(0));
        assert_eq!(shape(&layout), shape(&ram()));
    }

    /// A guest's numbers (a move's target) that wrap, pass the physical address limit or land
    /// on a memslot the layout does not manage are refused, never a panic or a KVM error.
    #[test]
    fn a_move_that_wraps_passes_the_address_limit_or_hits_a_foreign_slot_is_refused() {
        let mut layout = ram();
        layout.add_foreign(0x1_4000_0000..0x1_4020_0000);
        let limit = 1 << 46;
        let refused = [
            (0xFFFF_FFFF_FFE0_0000, LayoutError::OutOfRange { start: 0xFFFF_FFFF_FFE0_0000, bytes: 0x40_0000, limit }),
            (limit - 0x20_0000, LayoutError::OutOfRange { start: limit - 0x20_0000, bytes: 0x40_0000, limit }),
            (0x1_4000_0000, LayoutError::Overlap { start: 0x1_4000_0000, end: 0x1_4040_0000, other: 0x1_4000_0000 }),
            (0x1_3FE0_0000, LayoutError::Overlap { start: 0x1_3FE0_0000, end: 0x1_4020_0000, other: 0x1_4000_0000 }),
            (0x1_3FE0_0800, LayoutError::Unaligned { start: 0x1_3FE0_0800, end: 0x1_4020_0800 }),
        ];
        for (to, error) in refused {
            assert_eq!(layout.plan(&Update::Move { gpa: 0, to }).unwrap_err(), error, "to {to:#x}");
        }
        assert!(layout.plan(&Update::Move { gpa: 0, to: limit - 0x40_0000 }).is_ok(), "the last place below the limit");
        assert_eq!(
            layout.plan(&Update::Resize { gpa: 0, bytes: u64::MAX - 0xFFF }).unwrap_err(),
            LayoutError::OutOfRange { start: 0, bytes: u64::MAX - 0xFFF, limit }
        );
    }

    /// A region never gets more than its host memory: a resize past it, or a merge of two
    /// regions whose host memory is contiguous but not one mapping, is refused.
    #[test]
    fn a_region_never_outgrows_its_host_memory() {
        let mut layout = Layout::new(10, 46);
        // SAFETY: the tests never give these to KVM.
        let small = unsafe { Backing::new(0x7f00_0000_0000, 0x20_0000, Arc::new(())) };
        layout.adopt(0, Region { gpa: 0, bytes: 0x20_0000, backing: small, flags: 0 });
        assert_eq!(
            layout.plan(&Update::Resize { gpa: 0, bytes: 0x40_0000 }).unwrap_err(),
            LayoutError::BeyondBacking { start: 0, bytes: 0x40_0000, backing: 0x20_0000 }
        );
        // SAFETY: as above.
        let next = unsafe { Backing::new(0x7f00_0020_0000, 0x20_0000, Arc::new(())) };
        layout.adopt(1, Region { gpa: 0x20_0000, bytes: 0x20_0000, backing: next, flags: 0 });
        assert_eq!(
            layout.plan(&Update::Merge { gpa: 0 }).unwrap_err(),
            LayoutError::BeyondBacking { start: 0, bytes: 0x40_0000, backing: 0x20_0000 }
        );
        // The halves of a split are one mapping, and merge again.
        let split = ram().plan(&Update::Split { gpa: 0, at: 0x20_0000, upper_flags: 0 }).unwrap().after;
        assert!(split.plan(&Update::Merge { gpa: 0 }).is_ok());
    }

    /// Any change a guest's numbers could ask for (a target, a size, a split point, a new
    /// region anywhere, near 2^64 included), on RAM, two hot-added regions and a foreign
    /// slot: a plan that is made leaves every region aligned, non-empty, below the physical
    /// address limit, within its host memory and clear of every other region and of the
    /// foreign slot; its window lies in memory that was there before and after.
    #[test]
    fn a_plan_from_any_numbers_keeps_the_layout_sound() {
        use crate::props::{check, edge_u64};
        use proptest::prelude::*;
        let mut layout = ram();
        layout.adopt(1, region(0x1_C000_0000, 0x20_0000, 0x7e00_0000_0000));
        layout.adopt(2, region(0x1_C020_0000, 0x20_0000, 0x7e00_0020_0000));
        layout.add_foreign(0x1_4000_0000..0x1_4020_0000);
        let targets = [0, 0x1_C000_0000, 0x1_C020_0000];
        let update = (0u8..7, 0usize..3, edge_u64(), edge_u64(), 0u32..8).prop_map(move |(kind, at, a, b, flags)| {
            let gpa = targets[at];
            match kind {
                0 => Update::Move { gpa, to: a },
                1 => Update::Resize { gpa, bytes: a },
                2 => Update::Split { gpa, at: a, upper_flags: flags & 3 },
                3 => Update::Add(region(a, b, 0x7d00_0000_0000)),
                4 => Update::SetFlags { gpa, flags },
                5 => Update::Merge { gpa },
                _ => Update::Remove { gpa: a },
            }
        });
        check("layout plan", 3000, update, |update| {
            let Ok(plan) = layout.plan(&update) else { return Ok(()) };
            let regions: Vec<&Region> = plan.after.slots().map(|(_, r)| r).collect();
            for (i, r) in regions.iter().enumerate() {
                let end = r.gpa.checked_add(r.bytes);
                prop_assert!(end.is_some_and(|end| end <= 1 << 46), "{:?}: {:x?}", update, r);
                prop_assert!(r.bytes > 0 && r.gpa % PAGE == 0 && r.bytes % PAGE == 0, "{:?}: {:x?}", update, r);
                prop_assert!(r.bytes <= r.backing.bytes, "{:?}: {:x?}", update, r);
                prop_assert!(r.flags & !KNOWN_FLAGS == 0);
                prop_assert!(
                    !(r.gpa < 0x1_4020_0000 && 0x1_4000_0000 < r.range().end),
                    "{:?}: on the foreign slot",
                    update
                );
                for other in &regions[i + 1..] {
                    prop_assert!(
                        overlap(&r.range(), &other.range()).is_none(),
                        "{:?}: {:x?} and {:x?}",
                        update,
                        r,
                        other
                    );
                }
            }
            // Whether the regions of `l` cover all of `w` (a merge's window spans two).
            let covered = |l: &Layout, w: &Range<u64>| {
                let mut ranges: Vec<Range<u64>> = l.slots().map(|(_, r)| r.range()).collect();
                ranges.sort_by_key(|r| r.start);
                let mut at = w.start;
                for r in ranges {
                    if r.start <= at && at < r.end {
                        at = r.end;
                    }
                }
                at >= w.end
            };
            for w in &plan.window {
                prop_assert!(covered(&layout, w) && covered(&plan.after, w), "{:?}: window {:x?}", update, w);
            }
            Ok(())
        });
    }
}
