//! The kernel's page tables, built with the `x86_64` crate's structures as [`layout`] decided:
//! the largest pages alignment and permissions allow, 4 KiB pages only where a guard page or a
//! permission boundary needs them. Page tables are frames from the image's `.bss` first
//! ([`ZEROED_TABLES`] of them, which the loader zeroed: the boot's tables and the first few the
//! stacks need cost no clearing), then from the RAM the layout set aside, zeroed when taken
//! (512 `rep stosq` iterations each, which an emulated guest kernel pays one by one).
//!
//! Everything is identity mapped (virtual = physical). Mappings made at boot and on demand are
//! only ever added (unmapped to mapped), which needs no TLB flush on any vCPU; a page taken away
//! again ([`unmap_page`]) is shot down on every vCPU (`tlb`). Every change happens under one
//! lock, with interrupts off; no trap handler maps memory.
//!
//! [`layout`]: super::layout

use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::{PageTable, PageTableFlags as F, PhysFrame};

use super::cpu::IrqGuard;
pub use super::layout::Access;
use super::layout::{self, IDENTITY_MAP_LIMIT, ImageLayout, PAGE, Region};
use crate::cell::StaticCell;

/// Flags of a leaf entry with `access`.
fn flags(access: Access) -> F {
    let base = F::PRESENT;
    match access {
        Access::KernelText => base,
        Access::KernelRodata => base | F::NO_EXECUTE,
        Access::KernelData => base | F::WRITABLE | F::NO_EXECUTE,
        Access::UserText => base | F::USER_ACCESSIBLE,
        Access::UserData => base | F::WRITABLE | F::NO_EXECUTE | F::USER_ACCESSIBLE,
        Access::Mmio => base | F::WRITABLE | F::NO_EXECUTE | F::NO_CACHE | F::WRITE_THROUGH,
        Access::UserMmio => flags(Access::Mmio) | F::USER_ACCESSIBLE,
    }
}

/// Page-table frames in the image, enough for the boot's tables on the hosts we know (about
/// ten) and a few more; 64 KiB of `.bss`, which costs the boot nothing.
pub const ZEROED_TABLES: usize = 16;

/// The frames themselves: zero from the loader (`.bss`), handed out once each by
/// [`Tables::alloc`], under the `TABLES` lock, and touched by nothing else before.
#[repr(C, align(4096))]
struct ZeroedFrames([[u64; 512]; ZEROED_TABLES]);
static ZEROED_FRAMES: StaticCell<ZeroedFrames> = StaticCell::new(ZeroedFrames([[0; 512]; ZEROED_TABLES]));

/// The page tables: the root, and the frames left for new tables.
#[derive(Debug)]
struct Tables {
    root: u64,
    /// The image's zeroed frames not handed out yet: `[next_zeroed, zeroed_end)`.
    next_zeroed: u64,
    zeroed_end: u64,
    /// The RAM frames not handed out yet: `[next_frame, frames_end)`.
    next_frame: u64,
    frames_end: u64,
    huge_pages: bool,
    /// The last walk: which table (level and window, [`walk_key`]) it ended at, and that
    /// table. Tables are never replaced once made, so it stays right; consecutive runs in one
    /// table (the image's sections, a vCPU's IST stacks) skip the walk.
    last_walk: (u64, u64),
}

/// No walk yet: a key no walk has.
const NO_WALK: (u64, u64) = (u64::MAX, 0);

static TABLES: spin::Mutex<Tables> = spin::Mutex::new(Tables {
    root: 0,
    next_zeroed: 0,
    zeroed_end: 0,
    next_frame: 0,
    frames_end: 0,
    huge_pages: false,
    last_walk: NO_WALK,
});

/// Which table of `level` (1: a page table) maps `addr`: the table's level and the window of
/// addresses it covers, as one number (addresses are below 2^47, so the window fits in 35 bits).
fn walk_key(addr: u64, level: u32) -> u64 {
    ((addr >> (12 + 9 * level)) << 3) | u64::from(level)
}

/// Runs `f` on the page tables, under their lock, with interrupts off (so that a vCPU never
/// spins on a lock it holds itself).
fn with_tables<R>(f: impl FnOnce(&mut Tables) -> R) -> R {
    let _irq = IrqGuard::new();
    f(&mut TABLES.lock())
}

/// The page table in the frame at `addr`.
///
/// # Safety
///
/// `addr` must be a page table of this module (the root or a frame handed out by `alloc`),
/// the caller must hold the `TABLES` lock, and no other reference to that table may be live.
unsafe fn table<'a>(addr: u64) -> &'a mut PageTable {
    // SAFETY: identity mapped, page aligned, owned by this module (the caller's contract).
    unsafe { &mut *(addr as *mut PageTable) }
}

impl Tables {
    /// A zeroed frame for a new page table: one of the image's, which are zero already, or
    /// one from RAM, cleared now.
    fn alloc(&mut self) -> u64 {
        if self.next_zeroed < self.zeroed_end {
            let frame = self.next_zeroed;
            self.next_zeroed += PAGE;
            return frame;
        }
        assert!(self.next_frame < self.frames_end, "no frame left for a page table: the layout's table area is full");
        let frame = self.next_frame;
        self.next_frame += PAGE;
        // SAFETY: the frame is in the area the layout reserved for page tables, mapped (by the
        // boot tables, and as RAM by these), and handed out once.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
        frame
    }

    /// The table the entry `index` of `table` points to, made if absent.
    fn next_level(&mut self, table_addr: u64, index: usize) -> u64 {
        // SAFETY: a table of ours, under the lock (we are `&mut self`); the reference ends
        // before `alloc` or the caller forms another.
        let entry = unsafe { &mut table(table_addr)[index] };
        if entry.is_unused() {
            let new = self.alloc();
            // SAFETY: as above; `alloc` touched only the new frame.
            let entry = unsafe { &mut table(table_addr)[index] };
            // Upper levels allow everything; the leaf entry decides.
            entry.set_addr(PhysAddr::new(new), F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE);
            return new;
        }
        assert!(
            !entry.flags().contains(F::HUGE_PAGE),
            "a mapping inside a large page at {:#x} (the layout gives every 4 KiB page its own window)",
            entry.addr().as_u64()
        );
        entry.addr().as_u64()
    }

    /// Identity-maps `[start, end)` (rounded out to pages) with `access`, in the largest pages
    /// that fit (see [`layout::chunks`]). The range must not be mapped yet.
    fn map(&mut self, start: u64, end: u64, access: Access) {
        let bits = flags(access).bits();
        for run in layout::chunks(start, end, access, self.huge_pages) {
            // Walk down to the table the run's entries are in, unless the last walk did.
            let key = walk_key(run.start, run.level());
            let table = if self.last_walk.0 == key {
                self.last_walk.1
            } else {
                let mut table = self.root;
                for level in (run.level() + 1..=4).rev() {
                    table = self.next_level(table, index(run.start, level));
                }
                self.last_walk = (key, table);
                table
            };
            let leaf = if run.level() == 1 { bits } else { bits | F::HUGE_PAGE.bits() };
            let first = index(run.start, run.level());
            let count = ((run.end - run.start) / run.page) as usize;
            // One tight loop per run, unrolled by four: the boot fills about five hundred 4 KiB
            // entries (the image's 2 MiB, low memory), and an emulated guest kernel pays for
            // every instruction of the loop (about 11 per four entries here, 20 rolled up).
            // SAFETY: `table` is a table of ours (under the lock, no reference to it live);
            // `PageTable` is 512 `PageTableEntry`s, each a transparent u64, and the run lies in
            // this table (`first + count <= 512`, as `chunks` promises).
            unsafe {
                let mut entry = (table as *mut u64).add(first);
                let (fours_end, entries_end) = (entry.add(count & !3), entry.add(count));
                let mut value = run.start | leaf;
                let step = run.page;
                while entry < fours_end {
                    entry.write(value);
                    entry.add(1).write(value.wrapping_add(step));
                    entry.add(2).write(value.wrapping_add(2 * step));
                    entry.add(3).write(value.wrapping_add(3 * step));
                    value = value.wrapping_add(4 * step);
                    entry = entry.add(4);
                }
                while entry < entries_end {
                    entry.write(value);
                    value = value.wrapping_add(step);
                    entry = entry.add(1);
                }
            }
        }
    }

    /// Clears the 4 KiB entry that maps `addr`.
    fn unmap_small(&mut self, addr: u64) -> Result<(), UnmapError> {
        let mut table_addr = self.root;
        for level in (2..=4).rev() {
            // SAFETY: a table of ours, under the lock; only read.
            let entry = unsafe { &table(table_addr)[index(addr, level)] };
            if entry.is_unused() {
                return Err(UnmapError::NotMapped);
            }
            if level < 4 && entry.flags().contains(F::HUGE_PAGE) {
                return Err(UnmapError::InLargePage { size: PAGE << (9 * (level - 1)) });
            }
            table_addr = entry.addr().as_u64();
        }
        // SAFETY: a page table of ours, under the lock, no other reference live.
        let entry = unsafe { &mut table(table_addr)[index(addr, 1)] };
        if entry.is_unused() {
            return Err(UnmapError::NotMapped);
        }
        entry.set_unused();
        Ok(())
    }

    /// Whether `addr` is mapped, and by a page of which size.
    fn lookup(&self, addr: u64) -> Option<u64> {
        if addr >= IDENTITY_MAP_LIMIT {
            // Its table indices would wrap around to those of a low address.
            return None;
        }
        let mut table_addr = self.root;
        for level in (1..=4).rev() {
            // SAFETY: a table of ours, under the lock; only read.
            let entry = unsafe { &table(table_addr)[index(addr, level)] };
            if entry.is_unused() {
                return None;
            }
            if level == 1 || (level < 4 && entry.flags().contains(F::HUGE_PAGE)) {
                return Some(PAGE << (9 * (level - 1)));
            }
            table_addr = entry.addr().as_u64();
        }
        unreachable!("level 1 returns")
    }
}

/// The index of `addr`'s entry in its page table of `level` (4: the root). The mask drops the
/// bits above the 48 that 4-level paging translates: callers pass only addresses below
/// [`IDENTITY_MAP_LIMIT`], where no two addresses share entries.
fn index(addr: u64, level: u32) -> usize {
    ((addr >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

/// Refuses a range the identity map cannot hold: a kernel bug, since every range the host
/// names is checked against the reach first (`boot::memmap`, the pnp region, ACPI tables).
fn check_range(start: u64, end: u64) {
    assert!(
        start <= end && end <= IDENTITY_MAP_LIMIT,
        "mapping [{start:#x}, {end:#x}): beyond the identity map's limit {IDENTITY_MAP_LIMIT:#x} or reversed"
    );
}

/// Builds the kernel's page tables, mapping `regions`, in the frames `tables` (`[start, end)`)
/// the layout set aside for them (they become active with [`activate`]).
///
/// # Safety
///
/// Call once, on the boot vCPU, with interrupts disabled, while the boot page tables (which map
/// the first GiB, where the layout put the page tables) are active.
pub unsafe fn init(regions: &[Region], tables: (u64, u64), huge_pages: bool) {
    with_tables(|t| {
        let zeroed = ZEROED_FRAMES.get() as u64;
        *t = Tables {
            root: 0,
            next_zeroed: zeroed,
            zeroed_end: zeroed + ZEROED_TABLES as u64 * PAGE,
            next_frame: tables.0,
            frames_end: tables.1,
            huge_pages,
            last_walk: NO_WALK,
        };
        t.root = t.alloc();
        for r in regions {
            t.map(r.start, r.end, r.access);
        }
    });
}

/// Switches this vCPU to the kernel's page tables.
///
/// # Safety
///
/// Call after [`init`], with interrupts disabled, once whatever this vCPU needs from then on is
/// mapped (its IST stacks: an NMI on unmapped ones would triple-fault).
pub unsafe fn activate() {
    let root = with_tables(|t| t.root);
    let root = PhysFrame::from_start_address(PhysAddr::new(root)).expect("page tables are page aligned");
    // SAFETY: the kernel's tables identity-map the running code, its stack and every static (the
    // whole image), with the same addresses as the boot tables, so execution continues. The
    // write is a compiler barrier (no `nomem`): no access moves across the switch.
    unsafe { Cr3::write(root, Cr3Flags::empty()) };
}

/// Identity-maps `[start, end)` (rounded out to pages) with `access`, in the largest pages that
/// fit. Only for ranges that are not mapped yet (no TLB shootdown is needed for a new mapping).
///
/// # Panics
///
/// If the range ends beyond [`IDENTITY_MAP_LIMIT`] (or `end < start`).
pub fn map_range(start: u64, end: u64, access: Access) {
    check_range(start, end);
    with_tables(|t| t.map(start, end, access));
}

/// Why a page could not be unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    NotMapped,
    /// A large page of `size` bytes maps it (the kernel does not split large pages).
    InLargePage {
        size: u64,
    },
}

/// Unmaps the 4 KiB page at `addr` and shoots it down on every vCPU: when this returns, no vCPU
/// can reach it through a stale TLB entry. Call with interrupts enabled (`tlb::shootdown`).
pub fn unmap_page(addr: u64) -> Result<(), UnmapError> {
    let page = addr & !(PAGE - 1);
    check_range(page, page + PAGE);
    with_tables(|t| t.unmap_small(page))?;
    super::tlb::shootdown(page, page + PAGE);
    Ok(())
}

/// The size of the page that maps `addr`, if one does.
pub fn page_size(addr: u64) -> Option<u64> {
    with_tables(|t| t.lookup(addr))
}

/// Maps the pages of `[start, end)` that are not mapped yet, with 4 KiB pages (for firmware
/// tables found in reserved memory).
///
/// # Panics
///
/// As [`map_range`].
pub fn ensure_mapped(start: u64, end: u64, access: Access) {
    check_range(start, end);
    with_tables(|t| {
        let mut page = start & !(PAGE - 1);
        while page < end {
            if t.lookup(page).is_none() {
                t.map(page, page + PAGE, access);
            }
            page += PAGE;
        }
    });
}

unsafe extern "C" {
    static __image_start: u8;
    static __user_text_start: u8;
    static __user_text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __user_data_start: u8;
    static __user_data_end: u8;
    static __boot_stack_guard: u8;
    static __image_end: u8;
}

/// Address of a linker symbol.
macro_rules! sym {
    ($s:ident) => {
        core::ptr::addr_of!($s) as u64
    };
}

/// Where the linker put each part of the image.
pub fn image_layout() -> ImageLayout {
    ImageLayout {
        start: sym!(__image_start),
        user_text: (sym!(__user_text_start), sym!(__user_text_end)),
        rodata: (sym!(__rodata_start), sym!(__rodata_end)),
        user_data: (sym!(__user_data_start), sym!(__user_data_end)),
        boot_stack_guard: sym!(__boot_stack_guard),
        end: sym!(__image_end),
        zeroed_tables: ZEROED_TABLES as u64,
    }
}
