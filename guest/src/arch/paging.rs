//! The kernel's page tables, built with the `x86_64` crate's structures.
//!
//! Everything is identity mapped (virtual = physical). The image gets per-section permissions
//! (text RX, rodata R, data RW+NX); the pages CPL 3 tasks use (`.user_text`, `.user_data`) are
//! the only user-accessible ones; page 0 and every kernel stack's guard page are unmapped, so a
//! null dereference or a stack overflow faults instead of corrupting memory.

use core::cell::UnsafeCell;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PageTable, PageTableFlags as F};

const PAGE: u64 = 0x1000;
const LARGE: u64 = 0x20_0000;
/// Page tables the kernel can allocate (each maps 2 MiB of 4 KiB pages or 1 GiB of 2 MiB
/// pages).
const POOL_SIZE: usize = 64;

/// Permissions of a mapping, in the kernel's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Kernel code: read, execute.
    KernelText,
    /// Kernel read-only data.
    KernelRodata,
    /// Kernel data: read, write, no execute.
    KernelData,
    /// CPL 3 code: read, execute, user.
    UserText,
    /// CPL 3 data: read, write, no execute, user.
    UserData,
    /// Device registers: read, write, no execute, uncached.
    Mmio,
    /// Device registers CPL 3 may touch too (a host's test page): as `Mmio`, plus user.
    UserMmio,
}

impl Access {
    fn flags(self) -> F {
        let base = F::PRESENT;
        match self {
            Access::KernelText => base,
            Access::KernelRodata => base | F::NO_EXECUTE,
            Access::KernelData => base | F::WRITABLE | F::NO_EXECUTE,
            Access::UserText => base | F::USER_ACCESSIBLE,
            Access::UserData => base | F::WRITABLE | F::NO_EXECUTE | F::USER_ACCESSIBLE,
            Access::Mmio => base | F::WRITABLE | F::NO_EXECUTE | F::NO_CACHE | F::WRITE_THROUGH,
            Access::UserMmio => Access::Mmio.flags() | F::USER_ACCESSIBLE,
        }
    }
}

struct Pool {
    tables: [PageTable; POOL_SIZE],
    used: usize,
}

struct PoolCell(UnsafeCell<Pool>);
// SAFETY: only the boot vCPU builds and changes the page tables, with interrupts disabled
// (`init`, `map_range`, `unmap_page` document this), so accesses never overlap.
unsafe impl Sync for PoolCell {}

static POOL: PoolCell = PoolCell(UnsafeCell::new(Pool { tables: [const { PageTable::new() }; POOL_SIZE], used: 0 }));

fn pool() -> &'static mut Pool {
    // SAFETY: see `PoolCell`; callers hold the single-writer discipline described there.
    unsafe { &mut *POOL.0.get() }
}

fn alloc_table() -> &'static mut PageTable {
    let pool = pool();
    assert!(pool.used < POOL_SIZE, "page table pool exhausted ({POOL_SIZE} tables)");
    let index = pool.used;
    pool.used += 1;
    let table = &mut pool.tables[index];
    table.zero();
    table
}

fn root() -> &'static mut PageTable {
    &mut pool().tables[0]
}

/// Follows (creating if absent) the entry at `index` of `table` to the next level.
fn next_level(table: &mut PageTable, index: usize) -> &'static mut PageTable {
    let entry = &mut table[index];
    if entry.is_unused() {
        let new = alloc_table();
        // Upper levels allow everything; the leaf entry decides.
        entry.set_addr(PhysAddr::new(new as *mut PageTable as u64), F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE);
        return new;
    }
    assert!(!entry.flags().contains(F::HUGE_PAGE), "mapping inside a large page");
    // SAFETY: the entry is present and not a large page, so it points at a table from the pool
    // (identity mapped), which lives for the kernel's lifetime.
    unsafe { &mut *(entry.addr().as_u64() as *mut PageTable) }
}

fn index(addr: u64, level: u32) -> usize {
    ((addr >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

fn map_4k(addr: u64, flags: F) {
    let pdpt = next_level(root(), index(addr, 4));
    let pd = next_level(pdpt, index(addr, 3));
    let pt = next_level(pd, index(addr, 2));
    pt[index(addr, 1)].set_addr(PhysAddr::new(addr), flags);
}

fn map_2m(addr: u64, flags: F) {
    let pdpt = next_level(root(), index(addr, 4));
    let pd = next_level(pdpt, index(addr, 3));
    let entry = &mut pd[index(addr, 2)];
    assert!(entry.is_unused(), "2 MiB mapping over an existing one at {addr:#x}");
    entry.set_addr(PhysAddr::new(addr), flags | F::HUGE_PAGE);
}

/// Identity-maps `[start, end)` (rounded out to pages) with `access`, using 2 MiB pages where
/// a whole aligned one fits and nothing smaller was mapped there.
///
/// Call on the boot vCPU with interrupts disabled; after [`init`], only for ranges not mapped
/// yet (no TLB shootdown is needed for a new mapping).
pub fn map_range(start: u64, end: u64, access: Access) {
    let flags = access.flags();
    let mut addr = start & !(PAGE - 1);
    let end = end.next_multiple_of(PAGE);
    while addr < end {
        if addr.is_multiple_of(LARGE)
            && addr + LARGE <= end
            && !matches!(access, Access::Mmio | Access::UserMmio)
            && pd_slot_free(addr)
        {
            map_2m(addr, flags);
            addr += LARGE;
        } else {
            map_4k(addr, flags);
            addr += PAGE;
        }
    }
}

fn pd_slot_free(addr: u64) -> bool {
    let pdpt = next_level(root(), index(addr, 4));
    let pd = next_level(pdpt, index(addr, 3));
    pd[index(addr, 2)].is_unused()
}

/// Whether `addr` is mapped (by a 4 KiB or a 2 MiB page).
pub fn is_mapped(addr: u64) -> bool {
    let mut table: &PageTable = root();
    for level in (2..=4).rev() {
        let entry = &table[index(addr, level)];
        if entry.is_unused() {
            return false;
        }
        if level == 2 && entry.flags().contains(F::HUGE_PAGE) {
            return true;
        }
        // SAFETY: a present, non-large upper-level entry points at a pool table.
        table = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
    }
    !table[index(addr, 1)].is_unused()
}

/// Maps the pages of `[start, end)` that are not mapped yet, with 4 KiB pages (for firmware
/// tables found in reserved memory). Same calling rules as [`map_range`].
pub fn ensure_mapped(start: u64, end: u64, access: Access) {
    let mut page = start & !(PAGE - 1);
    while page < end {
        if !is_mapped(page) {
            map_4k(page, access.flags());
        }
        page += PAGE;
    }
}

/// Removes the 4 KiB mapping of `addr` (a guard page) and flushes it from this vCPU's TLB.
pub fn unmap_page(addr: u64) {
    let pdpt = next_level(root(), index(addr, 4));
    let pd = next_level(pdpt, index(addr, 3));
    let pt = next_level(pd, index(addr, 2));
    pt[index(addr, 1)].set_unused();
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(addr));
}

unsafe extern "C" {
    static __image_start: u8;
    static __user_text_start: u8;
    static __user_text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __user_data_start: u8;
    static __user_data_end: u8;
    static __image_end: u8;
}

/// Address of a linker symbol.
macro_rules! sym {
    ($s:ident) => {
        core::ptr::addr_of!($s) as u64
    };
}

/// The image's sections, from the linker script's symbols.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub start: u64,
    pub user_text: (u64, u64),
    pub rodata: (u64, u64),
    pub user_data: (u64, u64),
    pub end: u64,
}

/// Where the linker put each part of the image.
pub fn image_layout() -> ImageLayout {
    ImageLayout {
        start: sym!(__image_start),
        user_text: (sym!(__user_text_start), sym!(__user_text_end)),
        rodata: (sym!(__rodata_start), sym!(__rodata_end)),
        user_data: (sym!(__user_data_start), sym!(__user_data_end)),
        end: sym!(__image_end),
    }
}

/// Below this, memory is mapped with 4 KiB pages so permissions can differ per page.
const FINE_GRAINED_LIMIT: u64 = 0x100_0000;

/// A region of physical memory to identity-map.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub access: Access,
}

/// Builds the kernel's page tables and switches to them.
///
/// `ram` lists the other regions to map (RAM, ACPI tables, the local APIC, ...); the image
/// and low memory are laid out here.
///
/// # Safety
///
/// Call once, on the boot vCPU, with interrupts disabled, while the boot page tables (which map
/// the first GiB) are active.
pub unsafe fn init(regions: &[Region]) {
    let root = alloc_table();
    debug_assert!(core::ptr::eq(root, &pool().tables[0]));
    let l = image_layout();

    // Page 0 stays unmapped: a null dereference faults.
    map_range(PAGE, l.start, Access::KernelData);
    map_range(l.start, l.user_text.0, Access::KernelText);
    map_range(l.user_text.0, l.user_text.1, Access::UserText);
    map_range(l.rodata.0, l.rodata.1, Access::KernelRodata);
    map_range(l.rodata.1, l.user_data.0, Access::KernelData);
    map_range(l.user_data.0, l.user_data.1, Access::UserData);
    map_range(l.user_data.1, l.end, Access::KernelData);
    map_range(l.end, FINE_GRAINED_LIMIT, Access::KernelData);
    for region in regions {
        let start = region.start.max(FINE_GRAINED_LIMIT);
        if region.end > start {
            map_range(start, region.end, region.access);
        }
    }

    let root_addr = &pool().tables[0] as *const PageTable as u64;
    // SAFETY: the new tables identity-map the running code, its stack and every static (the
    // whole image), with the same addresses as the boot tables, so execution continues.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) root_addr, options(nostack, preserves_flags));
    }
}

/// How many page tables are in use (for the boot report).
pub fn tables_used() -> usize {
    pool().used
}
