//! Guest memory the host adds after boot: regions outside the boot memory map that the host
//! announces, and the guest asks for by index with [`crate::hypercall::Nr::LayoutRegion`]. The
//! guest maps a region wherever it lies (it is not in the boot identity map, which covers RAM
//! and ACPI data) before it touches it.
//!
//! A region's [`RegionKind`] says what it is for: test regions the host announces at boot, and
//! regions it hot-adds while the guest runs.

crate::wire_enum! {
/// What an announced region is, in `ret[1]` bits 63:56 of [`crate::hypercall::Nr::LayoutRegion`].
pub enum RegionKind: u8 {
    /// A test region whose memory the host released before boot, so that the guest's first
    /// access reaches the host as a memory fault (`KVM_EXIT_MEMORY_FAULT`, a bare EFAULT, or
    /// an MMIO exit, by host and privilege level); the host then gives it fresh memory holding
    /// [`fill_value`] and the access completes.
    ReleasedBacking = 1,
    /// A data region the host changes under the guest on request ([`crate::hypercall::Nr::LayoutStep`]):
    /// it starts holding [`fill_value`], with [`CHURN_CODE`] at [`CHURN_CODE_OFFSET`], and keeps
    /// whatever the guest writes through every change.
    Churn = 2,
    /// A region the host added while the guest ran ([`LayoutStepKind::HotAdd`]), holding
    /// [`fill_value`].
    HotAdded = 3,
}
}

crate::wire_enum! {
/// What [`crate::hypercall::Nr::LayoutStep`] asks the host to do (`args[0]`).
pub enum LayoutStepKind: u64 {
    /// The churn region's next change: split it at its middle (dirty logging on the upper half)
    /// when it is one memslot, merge the two again when it is split, reading the upper half's
    /// dirty log first ([`crate::hypercall::Nr::LayoutDirty`] answers from that read).
    SplitOrMerge = 0,
    /// Add a region of fresh memory ([`RegionKind::HotAdded`]) and announce it at the next index.
    HotAdd = 1,
    /// Move the hot-added region `args[1]` (its index) to `args[2]` (a GPA) with its memory.
    Move = 2,
}
}

/// Where the host splits the churn region ([`LayoutStepKind::SplitOrMerge`]): the upper part,
/// from here, is the one dirty-logged; the region is twice this size.
pub const CHURN_REGION_SPLIT: u64 = 1 << 20;

/// Where in the churn region the host puts code the guest calls: [`CHURN_CODE`].
pub const CHURN_CODE_OFFSET: u64 = 0;
/// What [`CHURN_CODE`] returns in EAX.
pub const CHURN_CODE_VALUE: u32 = 0x6368_7572; // "chur"
/// `mov eax, CHURN_CODE_VALUE; ret`: code a vCPU executes from the region while it changes.
pub const CHURN_CODE: [u8; 6] = {
    let v = CHURN_CODE_VALUE.to_le_bytes();
    [0xB8, v[0], v[1], v[2], v[3], 0xC3]
};

// The code is in the lower part, which is never dirty-logged: the guest's calls into it do not
// show in the log the test checks.
const _: () = assert!(CHURN_CODE_OFFSET + CHURN_CODE.len() as u64 <= CHURN_REGION_SPLIT);

/// [`crate::hypercall::Nr::LayoutRegion`]'s `ret[1]`: bits 55:0 the region's size in bytes (a
/// multiple of [`crate::PAGE_SIZE`]), bits 63:56 its [`RegionKind`].
pub const fn size_and_kind(bytes: u64, kind: RegionKind) -> u64 {
    (bytes & SIZE_MASK) | ((kind as u64) << 56)
}

/// The size bits of [`size_and_kind`].
pub const SIZE_MASK: u64 = (1 << 56) - 1;

/// What the eight bytes at `gpa` (8-byte aligned) of a region the host gave fresh memory hold:
/// a function of the address, so a word read from the wrong place or not at all shows.
pub const fn fill_value(gpa: u64) -> u64 {
    // "memslots" in ASCII, so a dump shows where it came from.
    gpa ^ 0x6D65_6D73_6C6F_7473
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_kind_share_one_word_without_overlap() {
        let word = size_and_kind(2 << 20, RegionKind::ReleasedBacking);
        assert_eq!(word & SIZE_MASK, 2 << 20);
        assert_eq!(RegionKind::try_from((word >> 56) as u8), Ok(RegionKind::ReleasedBacking));
        assert_eq!(RegionKind::try_from(0), Err(0), "0 is no kind");
        assert_ne!(fill_value(0x1000), fill_value(0x1008));
    }
}
