//! The memory map, made trustworthy once: the host wrote it, so every entry is checked here,
//! where the boot information is parsed, and the kernel above sees only ranges it can use.
//! Plain logic, unit-tested on the host with hostile maps.
//!
//! What comes out: at most [`MEMMAP_MAX`] ranges, sorted by start, disjoint, none empty, none
//! reaching beyond the limit the caller gives (the identity map's reach: the CPU's physical
//! address width, and what 4-level page tables can map). What does not fit that is dropped or
//! cut, and counted in [`Dropped`], which the boot reports in one line:
//! - an entry whose end wraps past 2^64, or of size 0: dropped;
//! - an entry that starts at or beyond the limit: dropped; one that ends beyond it: clipped;
//! - entries beyond the first [`MEMMAP_MAX`] usable ones: dropped (their RAM counted);
//! - overlapping entries (rare; only a confused or hostile host writes them): where RAM overlaps
//!   anything else, the other kind wins, so that the kernel never puts its own data where the
//!   host says something else lives; overlapping RAM entries become one; of two other entries
//!   that overlap, the one that starts first keeps the overlap.
//!
//! A well-formed map (sorted, disjoint) costs one pass to check, which matters on a machine
//! whose guest kernel is emulated instruction by instruction.

use pvagent_abi::pvh;

/// Most memory map ranges kept.
pub const MEMMAP_MAX: usize = 32;

/// The type of a memory map range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Ram,
    Reserved,
    Acpi,
    Other(u32),
}

impl MemKind {
    /// The kind of a PVH memory map entry type.
    pub fn from_pvh(type_: u32) -> Self {
        match type_ {
            pvh::MEMMAP_TYPE_RAM => MemKind::Ram,
            pvh::MEMMAP_TYPE_RESERVED => MemKind::Reserved,
            pvh::MEMMAP_TYPE_ACPI => MemKind::Acpi,
            other => MemKind::Other(other),
        }
    }
}

/// One range of the memory map: `[start, end)`, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    pub start: u64,
    pub end: u64,
    pub kind: MemKind,
}

impl MemRange {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// What the checks dropped or cut, for the boot's one warning line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Entries whose end wraps past 2^64.
    pub wrapping: u32,
    /// Entries of size 0.
    pub empty: u32,
    /// Entries that start at or beyond the limit.
    pub beyond: u32,
    /// Entries that end beyond the limit, clipped to it.
    pub clipped: u32,
    /// Entries dropped because [`MEMMAP_MAX`] were already kept.
    pub over_capacity: u32,
    /// Entries cut or dropped because they overlap others.
    pub overlapping: u32,
    /// Bytes of RAM the kernel will not use because of all the above (beyond the limit,
    /// beyond capacity, under another kind of entry); a wrapping entry's size is not counted.
    pub ram: u64,
}

impl Dropped {
    /// Whether anything was dropped or cut.
    pub fn any(&self) -> bool {
        *self != Dropped::default()
    }
}

/// The memory map as the kernel uses it: see the module doc for what it promises.
#[derive(Clone, Debug)]
pub struct MemoryMap {
    pub ranges: heapless::Vec<MemRange, MEMMAP_MAX>,
    /// The exclusive limit every range was held below.
    pub limit: u64,
    pub dropped: Dropped,
}

impl MemoryMap {
    /// An empty map (a [`Builder`] fills it).
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
            limit: 0,
            dropped: Dropped { wrapping: 0, empty: 0, beyond: 0, clipped: 0, over_capacity: 0, overlapping: 0, ram: 0 },
        }
    }
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Display for MemoryMap {
    /// The one boot line about what was dropped or cut, naming only what happened (nothing when
    /// nothing did).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = &self.dropped;
        if !d.any() {
            return Ok(());
        }
        write!(f, "memory map:")?;
        let mut sep = " ";
        let not_used = d.wrapping + d.empty + d.beyond + d.over_capacity;
        if not_used != 0 {
            write!(f, "{sep}{not_used} entries not used")?;
            let why = [
                (d.wrapping, "wrapping around"),
                (d.empty, "empty"),
                (d.beyond, "at or beyond the reach"),
                (d.over_capacity, "beyond the number kept"),
            ];
            let mut open = " (";
            for (n, what) in why.into_iter().filter(|(n, _)| *n != 0) {
                write!(f, "{open}{n} {what}")?;
                open = ", ";
            }
            write!(f, ")")?;
            sep = ", ";
        }
        if d.clipped != 0 {
            write!(f, "{sep}{} clipped at the reach", d.clipped)?;
            sep = ", ";
        }
        if d.overlapping != 0 {
            write!(f, "{sep}{} cut where entries overlap", d.overlapping)?;
            sep = ", ";
        }
        write!(f, "{sep}the reach being {}-bit addresses", self.limit.trailing_zeros())?;
        if d.ram != 0 {
            write!(f, "; {} KiB of RAM not used", d.ram >> 10)?;
        }
        Ok(())
    }
}

/// Builds a [`MemoryMap`] from the host's entries, one at a time, in place: the map is where
/// the kernel keeps it (`boot::info`), never moved (on an emulated guest kernel, each move of
/// its 800 bytes is a hundred string iterations).
#[derive(Debug)]
pub struct Builder<'a> {
    map: &'a mut MemoryMap,
}

impl<'a> Builder<'a> {
    /// Empties `map` for ranges that all end at or below `limit` (a power of two: the identity
    /// map's reach).
    pub fn new(map: &'a mut MemoryMap, limit: u64) -> Self {
        map.ranges.clear();
        map.limit = limit;
        map.dropped = Dropped::default();
        Self { map }
    }

    /// Checks one entry of the host's map and keeps what is usable of it.
    pub fn add(&mut self, addr: u64, size: u64, kind: MemKind) {
        let d = &mut self.map.dropped;
        let ram = |bytes: u64| if kind == MemKind::Ram { bytes } else { 0 };
        if size == 0 {
            d.empty += 1;
            return;
        }
        let Some(mut end) = addr.checked_add(size) else {
            d.wrapping += 1;
            return;
        };
        let limit = self.map.limit;
        if addr >= limit {
            d.beyond += 1;
            d.ram = d.ram.saturating_add(ram(size));
            return;
        }
        if end > limit {
            d.clipped += 1;
            d.ram = d.ram.saturating_add(ram(end - limit));
            end = limit;
        }
        if self.map.ranges.push(MemRange { start: addr, end, kind }).is_err() {
            d.over_capacity += 1;
            d.ram = d.ram.saturating_add(ram(end - addr));
        }
    }

    /// Whether some RAM was kept so far.
    pub fn has_ram(&self) -> bool {
        self.map.ranges.iter().any(|r| r.kind == MemKind::Ram)
    }

    /// Sorts the ranges and resolves overlaps (see the module doc).
    pub fn finish(mut self) {
        let ranges = &mut self.map.ranges;
        // Insertion sort: a few dozen entries at most, usually sorted already (one pass).
        for i in 1..ranges.len() {
            let mut j = i;
            while j > 0 && ranges[j - 1].start > ranges[j].start {
                ranges.swap(j - 1, j);
                j -= 1;
            }
        }
        if ranges.windows(2).any(|w| w[1].start < w[0].end) {
            self.resolve_overlaps();
        }
    }

    /// The slow path, for maps with overlapping entries.
    fn resolve_overlaps(&mut self) {
        let d = &mut self.map.dropped;
        // Everything but RAM, made disjoint: the entry that starts first keeps the overlap.
        let mut others: heapless::Vec<MemRange, MEMMAP_MAX> = heapless::Vec::new();
        for r in self.map.ranges.iter().filter(|r| r.kind != MemKind::Ram) {
            let mut r = *r;
            if let Some(last) = others.last()
                && r.start < last.end
            {
                d.overlapping += 1;
                r.start = last.end.min(r.end);
            }
            if r.start < r.end {
                let _ = others.push(r);
            }
        }
        // RAM minus the others, in pieces (sorted: the RAM and the others are).
        let mut pieces: heapless::Vec<MemRange, { 2 * MEMMAP_MAX }> = heapless::Vec::new();
        for ram in self.map.ranges.iter().filter(|r| r.kind == MemKind::Ram) {
            let mut start = ram.start;
            let mut cut = false;
            for other in others.iter().filter(|o| o.end > ram.start && o.start < ram.end) {
                cut = true;
                if other.start > start {
                    let _ = pieces.push(MemRange { start, end: other.start, ..*ram });
                }
                d.ram = d.ram.saturating_add(other.end.min(ram.end) - other.start.max(ram.start));
                start = start.max(other.end);
            }
            if start < ram.end {
                let _ = pieces.push(MemRange { start, ..*ram });
            }
            d.overlapping += u32::from(cut);
        }
        // Overlapping RAM becomes one range (pieces are in order of their entry's start).
        let mut merged: heapless::Vec<MemRange, { 2 * MEMMAP_MAX }> = heapless::Vec::new();
        for piece in pieces {
            match merged.last_mut() {
                Some(last) if piece.start < last.end => {
                    d.overlapping += 1;
                    last.end = last.end.max(piece.end);
                }
                _ => {
                    let _ = merged.push(piece);
                }
            }
        }
        // Both lists are sorted and disjoint from each other: merge them, as many as fit.
        self.map.ranges.clear();
        let (mut a, mut b) = (merged.iter().peekable(), others.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.start <= y.start => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            let Some(&r) = next else { break };
            if self.map.ranges.push(r).is_err() {
                d.over_capacity += 1;
                if r.kind == MemKind::Ram {
                    d.ram = d.ram.saturating_add(r.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    /// The reach on a CPU with 46 physical address bits.
    const LIMIT: u64 = 1 << 46;

    fn map(entries: &[(u64, u64, MemKind)]) -> MemoryMap {
        built(|b| {
            for &(addr, size, kind) in entries {
                b.add(addr, size, kind);
            }
        })
    }

    fn built(add: impl FnOnce(&mut Builder<'_>)) -> MemoryMap {
        let mut m = MemoryMap::new();
        let mut b = Builder::new(&mut m, LIMIT);
        add(&mut b);
        b.finish();
        m
    }

    fn range(start: u64, end: u64, kind: MemKind) -> MemRange {
        MemRange { start, end, kind }
    }

    fn assert_sorted_disjoint_within(m: &MemoryMap) {
        for r in &m.ranges {
            assert!(r.start < r.end && r.end <= m.limit, "{r:x?}");
        }
        assert!(m.ranges.windows(2).all(|w| w[0].end <= w[1].start), "{:x?}", m.ranges);
    }

    use MemKind::{Acpi, Ram, Reserved};

    #[test]
    fn a_well_formed_map_passes_unchanged() {
        let entries = [(0, 0x9_FC00, Ram), (0xF_0000, 0x1_0000, Reserved), (MIB, 127 * MIB, Ram), (GIB, MIB, Acpi)];
        let m = map(&entries);
        let expected: Vec<_> = entries.iter().map(|&(a, s, k)| range(a, a + s, k)).collect();
        assert_eq!(m.ranges.as_slice(), expected.as_slice());
        assert!(!m.dropped.any());
        assert_eq!(m.to_string(), "", "nothing to report");
    }

    #[test]
    fn entries_that_wrap_or_are_empty_are_dropped() {
        let m = map(&[
            (MIB, 63 * MIB, Ram),
            (u64::MAX - 0xFFF, 0x2000, Ram),
            (u64::MAX - 0xFFF, 0x1000, Ram),
            (0x1000, u64::MAX, Ram),
            (8 * GIB, 0, Ram),
        ]);
        assert_eq!(m.ranges.as_slice(), [range(MIB, 64 * MIB, Ram)]);
        assert_eq!(m.dropped, Dropped { wrapping: 3, empty: 1, ..Dropped::default() });
    }

    #[test]
    fn what_lies_beyond_the_reach_is_dropped_or_clipped_and_its_ram_counted() {
        let m = map(&[
            (MIB, 63 * MIB, Ram),
            (1 << 48, GIB, Ram),
            (LIMIT, GIB, Ram),
            (LIMIT - GIB, 4 * GIB, Ram),
            (u64::MAX - GIB, GIB, Reserved),
            (1 << 40, 1 << 62, Ram),
        ]);
        assert_sorted_disjoint_within(&m);
        assert_eq!(m.dropped.beyond, 3);
        assert_eq!(m.dropped.clipped, 2);
        assert_eq!(m.dropped.ram, GIB + GIB + 3 * GIB + ((1 << 40) + (1 << 62) - LIMIT));
        // The huge entry reaches the limit and swallows the clipped one that overlaps it.
        assert_eq!(m.ranges.as_slice(), [range(MIB, 64 * MIB, Ram), range(1 << 40, LIMIT, Ram)]);
        let line = m.to_string();
        let expected = format!(
            "memory map: 3 entries not used (3 at or beyond the reach), 2 clipped at the reach, 1 cut where entries overlap, the reach being 46-bit addresses; {} KiB of RAM not used",
            m.dropped.ram >> 10
        );
        assert_eq!(line, expected);
    }

    #[test]
    fn an_unsorted_map_comes_out_sorted() {
        let m = map(&[(4 * GIB, GIB, Ram), (MIB, MIB, Acpi), (0, 0x9_F000, Ram), (2 * MIB, 62 * MIB, Ram)]);
        assert_eq!(
            m.ranges.as_slice(),
            [
                range(0, 0x9_F000, Ram),
                range(MIB, 2 * MIB, Acpi),
                range(2 * MIB, 64 * MIB, Ram),
                range(4 * GIB, 5 * GIB, Ram)
            ]
        );
        assert!(!m.dropped.any());
    }

    #[test]
    fn where_ram_overlaps_something_else_the_other_kind_wins() {
        // A reserved hole inside RAM, and ACPI data over the end of another RAM range.
        let m =
            map(&[(MIB, 127 * MIB, Ram), (16 * MIB, MIB, Reserved), (GIB, GIB, Ram), (2 * GIB - MIB, 2 * MIB, Acpi)]);
        assert_eq!(
            m.ranges.as_slice(),
            [
                range(MIB, 16 * MIB, Ram),
                range(16 * MIB, 17 * MIB, Reserved),
                range(17 * MIB, 128 * MIB, Ram),
                range(GIB, 2 * GIB - MIB, Ram),
                range(2 * GIB - MIB, 2 * GIB + MIB, Acpi),
            ]
        );
        assert_eq!(m.dropped.overlapping, 2);
        assert_eq!(m.dropped.ram, 2 * MIB, "the RAM under the other two");
    }

    #[test]
    fn overlapping_ram_becomes_one_range_and_counts_once() {
        let m = map(&[(MIB, 63 * MIB, Ram), (32 * MIB, 64 * MIB, Ram), (40 * MIB, MIB, Ram)]);
        assert_eq!(m.ranges.as_slice(), [range(MIB, 96 * MIB, Ram)]);
        assert_eq!(m.dropped.ram, 0, "nothing of it is lost");
        assert_eq!(m.dropped.overlapping, 2);
    }

    #[test]
    fn overlapping_other_kinds_keep_the_first() {
        let m = map(&[(MIB, 4 * MIB, Reserved), (2 * MIB, 4 * MIB, Acpi), (3 * MIB, MIB, Reserved)]);
        assert_eq!(m.ranges.as_slice(), [range(MIB, 5 * MIB, Reserved), range(5 * MIB, 6 * MIB, Acpi)]);
        assert_eq!(m.dropped.overlapping, 2);
    }

    #[test]
    fn entries_beyond_capacity_are_counted_with_their_ram() {
        let m = built(|b| {
            for i in 0..MEMMAP_MAX as u64 + 3 {
                b.add(i * 2 * MIB, MIB, Ram);
            }
        });
        assert_eq!(m.ranges.len(), MEMMAP_MAX);
        assert_eq!(m.dropped.over_capacity, 3);
        assert_eq!(m.dropped.ram, 3 * MIB);
    }

    #[test]
    fn a_hostile_map_of_every_kind_still_gives_sorted_disjoint_ranges_within_the_reach() {
        // Many overlapping, unsorted, clipped and wrapping entries at once; whatever the mix,
        // what comes out keeps the promise and the RAM sum cannot overflow.
        let m = built(|b| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let kind = [Ram, Reserved, Acpi][(x % 3) as usize];
                let addr = if x & 0x100 != 0 { x >> (x % 64) as u32 } else { x % (64 * GIB) };
                let size = if x & 0x200 != 0 { x.rotate_left(17) } else { (x >> 40) * 0x1000 };
                b.add(addr, size, kind);
            }
        });
        assert_sorted_disjoint_within(&m);
        let ram: u64 = m.ranges.iter().filter(|r| r.kind == Ram).map(MemRange::len).sum();
        assert!(ram <= LIMIT);
    }
}
