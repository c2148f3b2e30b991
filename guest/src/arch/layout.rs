//! Where everything lives in physical memory, decided once at boot from the memory map: the
//! image's sections, the kernel's page tables, the kernel stacks with their guard pages, and the
//! rest of RAM. And how a range is mapped: with the largest pages its alignment allows, 4 KiB
//! pages only where a guard page or a permission boundary needs them; RAM only in whole large
//! pages ([`plan`]). Plain logic, unit-tested on the host; `paging` and `stacks` carry it out.
//!
//! Memory is identity mapped (virtual = physical). The kernel stacks and page tables are carved
//! from RAM right above the image, below [`BOOT_MAPPED_LIMIT`] (the page tables are built while
//! the boot tables, which map only that much, are active; and the host reads hypercall requests,
//! which live on kernel stacks, by physical address):
//!
//! ```text
//!  image_end  2 MiB-aligned stack area, one block per vCPU:
//!  |          | guard | IST 1 | guard | IST 2 | guard | IST 3 |                               page tables
//!  |          | guard | task stack 0 | guard | task stack 1 | ... | guard | task stack N-1 |   |
//!  v          v guard | user stack 0 | guard | user stack 1 | ... | guard | user stack N-1 |   v
//!  ...........[cpu 0 block][cpu 1 block] ... [cpu M-1 block].................................[......]...
//! ```
//!
//! Nothing in the stack area is mapped at boot: a vCPU's IST stacks are mapped when it starts,
//! a task stack the first time its slot is used (a user stack the first time a CPL 3 task
//! uses it, for CPL 3), and the guard pages never. So the area costs boot nothing however large
//! the stacks are or however many vCPUs it has room for.

/// A 4 KiB page.
pub const PAGE: u64 = 0x1000;
/// A 2 MiB page (a page directory entry).
pub const LARGE_PAGE: u64 = 0x20_0000;
/// A 1 GiB page (a page directory pointer table entry).
pub const HUGE_PAGE: u64 = 0x4000_0000;
use crate::boot::BOOT_MAPPED_LIMIT;
/// How far the kernel's identity map can reach at most: its 4-level page tables translate 48-bit
/// virtual addresses, and an identity-mapped address must also be a canonical virtual address,
/// so below 2^47. [`chunks`] never yields a page at or above it (a page table index beyond it
/// would wrap around and overwrite the mapping of low memory).
pub const IDENTITY_MAP_LIMIT: u64 = 1 << 47;

/// The identity map's reach on a CPU with `phys_bits` physical address bits (CPUID
/// 0x8000_0008 EAX bits 7:0): physical addresses beyond that width do not exist, addresses beyond
/// [`IDENTITY_MAP_LIMIT`] cannot be mapped. A width outside what the architecture allows
/// (36 to 52 bits; 36 is also what it means when the leaf is absent) is taken as its nearest
/// bound. Always a power of two.
pub fn identity_map_reach(phys_bits: u8) -> u64 {
    IDENTITY_MAP_LIMIT.min(1 << phys_bits.clamp(36, 52))
}
/// Page tables kept free for what is mapped after boot (firmware tables, the host's pages).
pub const SPARE_TABLES: u64 = 16;

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
    /// Whether pages larger than 4 KiB may map it. Device registers get exact 4 KiB pages, so
    /// that no neighbouring address becomes accessible (and uncached) by accident.
    pub fn allows_large_pages(self) -> bool {
        !matches!(self, Access::Mmio | Access::UserMmio)
    }
}

/// A range of physical memory to identity-map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub access: Access,
}

/// One step of mapping a range: a run of pages of one size whose entries are consecutive in one
/// page table, so that one walk to that table and one tight loop map them all. 1 GiB pages fill
/// a page directory pointer table (a run never crosses a 512 GiB boundary), 2 MiB pages a page
/// directory (never crossing a 1 GiB boundary), 4 KiB pages a page table (a 2 MiB window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
    /// [`PAGE`], [`LARGE_PAGE`] or [`HUGE_PAGE`].
    pub page: u64,
}

impl Chunk {
    /// The page table level its entries are in: 1 for 4 KiB pages, 2 for 2 MiB, 3 for 1 GiB.
    pub fn level(&self) -> u32 {
        match self.page {
            PAGE => 1,
            LARGE_PAGE => 2,
            _ => 3,
        }
    }
}

/// Splits `[start, end)` (rounded out to pages) into runs of the largest pages that fit: 1 GiB
/// pages where `huge_pages` (the CPU has them) and the range covers whole aligned GiBs, 2 MiB
/// pages where it covers whole aligned 2 MiB, and 4 KiB pages for the rest. Nothing at or
/// above [`IDENTITY_MAP_LIMIT`] is yielded, whatever `end` is: below it nothing here can
/// overflow.
pub fn chunks(start: u64, end: u64, access: Access, huge_pages: bool) -> impl Iterator<Item = Chunk> {
    let large = access.allows_large_pages();
    let mut addr = start.min(IDENTITY_MAP_LIMIT) & !(PAGE - 1);
    let end = end.min(IDENTITY_MAP_LIMIT).next_multiple_of(PAGE);
    core::iter::from_fn(move || {
        if addr >= end {
            return None;
        }
        let fits = |size: u64| addr.is_multiple_of(size) && end - addr >= size;
        // The run's page size, and the size of the window its table maps.
        let (page, window) = if large && huge_pages && fits(HUGE_PAGE) {
            (HUGE_PAGE, HUGE_PAGE << 9)
        } else if large && fits(LARGE_PAGE) {
            (LARGE_PAGE, HUGE_PAGE)
        } else {
            (PAGE, LARGE_PAGE)
        };
        let window_end = (addr + 1).next_multiple_of(window);
        let run = Chunk { start: addr, end: (end & !(page - 1)).min(window_end), page };
        addr = run.end;
        Some(run)
    })
}

/// Counts the page tables that mapping `regions` creates, the root included. `regions` must be
/// sorted by start and must not overlap.
pub fn tables_for(regions: &[Region], huge_pages: bool) -> u64 {
    let mut tables = 1;
    let (mut last_pdpt, mut last_pd, mut last_pt) = (None, None, None);
    let mut count = |key: u64, last: &mut Option<u64>| {
        if *last != Some(key) {
            *last = Some(key);
            tables += 1;
        }
    };
    for r in regions {
        for chunk in chunks(r.start, r.end, r.access, huge_pages) {
            count(chunk.start >> 39, &mut last_pdpt);
            if chunk.level() <= 2 {
                count(chunk.start >> 30, &mut last_pd);
            }
            if chunk.level() == 1 {
                count(chunk.start >> 21, &mut last_pt);
            }
        }
    }
    tables
}

/// A stack: the unmapped guard page, then the stack up to `top` (exclusive; 16-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub guard: u64,
    pub top: u64,
}

impl Stack {
    /// The lowest byte of the stack proper (just above the guard).
    pub fn bottom(&self) -> u64 {
        self.guard + PAGE
    }
}

/// How many kernel stacks of which sizes the kernel wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackDemand {
    /// vCPUs to make room for.
    pub cpus: usize,
    /// Interrupt stacks (IST) per vCPU, and the size of each.
    pub ist_per_cpu: usize,
    pub ist_size: u64,
    /// Task stacks per vCPU (one per task slot), and the size of each.
    pub tasks_per_cpu: usize,
    pub task_size: u64,
    /// The size of each task slot's CPL 3 stack (one per task slot too).
    pub user_size: u64,
}

/// Where the kernel stacks are: `cpus` blocks, one per vCPU, as drawn in the module doc. Made
/// only by [`StackArea::new`], which checks that the whole area fits in the address space, so
/// that no address computed inside it can overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackArea {
    start: u64,
    demand: StackDemand,
    /// Bytes of one vCPU's block, and of the whole area: computed (and checked) once.
    cpu_block: u64,
    len: u64,
}

impl StackDemand {
    /// Bytes of one vCPU's block, if they fit in a `u64`.
    fn cpu_block(&self) -> Option<u64> {
        let ist = (self.ist_per_cpu as u64).checked_mul(PAGE.checked_add(self.ist_size)?)?;
        let tasks = (self.tasks_per_cpu as u64).checked_mul(PAGE.checked_add(self.task_size)?)?;
        let user = (self.tasks_per_cpu as u64).checked_mul(PAGE.checked_add(self.user_size)?)?;
        ist.checked_add(tasks)?.checked_add(user)
    }

    /// Bytes of the whole area (rounded up to a 2 MiB page), if they fit in a `u64`.
    fn area_len(&self) -> Option<u64> {
        (self.cpus as u64).checked_mul(self.cpu_block()?)?.checked_next_multiple_of(LARGE_PAGE)
    }
}

impl StackArea {
    /// The area for `demand` at `start`, or `None` if its sizes or its end overflow a `u64`.
    pub fn new(start: u64, demand: StackDemand) -> Option<Self> {
        let len = demand.area_len()?;
        start.checked_add(len)?;
        Some(Self { start, demand, cpu_block: demand.cpu_block()?, len })
    }

    /// The first address of the area (a guard page).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// What the area was laid out for.
    pub fn demand(&self) -> &StackDemand {
        &self.demand
    }

    fn cpu_block(&self) -> u64 {
        self.cpu_block
    }

    /// Bytes the area spans (the last 2 MiB page it touches included).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the area holds no stack at all.
    pub fn is_empty(&self) -> bool {
        self.demand.cpus == 0
    }

    /// The first address after the area.
    pub fn end(&self) -> u64 {
        self.start + self.len()
    }

    /// Interrupt stack `index` (0-based) of vCPU `cpu`.
    pub fn ist(&self, cpu: usize, index: usize) -> Stack {
        assert!(cpu < self.demand.cpus && index < self.demand.ist_per_cpu, "no IST stack {index} of vCPU {cpu}");
        // Inside the area (the indices are in range), whose end `new` checked.
        let guard = self.start + cpu as u64 * self.cpu_block() + index as u64 * (PAGE + self.demand.ist_size);
        Stack { guard, top: guard + PAGE + self.demand.ist_size }
    }

    /// The kernel stack of task slot `slot` on vCPU `cpu`.
    pub fn task(&self, cpu: usize, slot: usize) -> Stack {
        assert!(cpu < self.demand.cpus && slot < self.demand.tasks_per_cpu, "no stack for slot {slot} of vCPU {cpu}");
        let d = &self.demand;
        // Inside the area, as in `ist`.
        let guard = self.start
            + cpu as u64 * self.cpu_block()
            + d.ist_per_cpu as u64 * (PAGE + d.ist_size)
            + slot as u64 * (PAGE + d.task_size);
        Stack { guard, top: guard + PAGE + d.task_size }
    }

    /// The CPL 3 stack of task slot `slot` on vCPU `cpu`. The user stacks of a vCPU follow its
    /// task stacks, each above its own guard page: a task that overflows its user stack
    /// faults on that page instead of writing into its neighbour's.
    pub fn user(&self, cpu: usize, slot: usize) -> Stack {
        assert!(
            cpu < self.demand.cpus && slot < self.demand.tasks_per_cpu,
            "no user stack for slot {slot} of vCPU {cpu}"
        );
        let d = &self.demand;
        // Inside the area, as in `ist`.
        let guard = self.start
            + cpu as u64 * self.cpu_block()
            + d.ist_per_cpu as u64 * (PAGE + d.ist_size)
            + d.tasks_per_cpu as u64 * (PAGE + d.task_size)
            + slot as u64 * (PAGE + d.user_size);
        Stack { guard, top: guard + PAGE + d.user_size }
    }
}

/// The image's sections, from the linker script's symbols (all page aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    pub start: u64,
    pub user_text: (u64, u64),
    pub rodata: (u64, u64),
    pub user_data: (u64, u64),
    /// The unmapped page below the boot stack.
    pub boot_stack_guard: u64,
    pub end: u64,
    /// Page-table frames the image holds in `.bss`, zero from the loader (`paging` takes them
    /// first, so that the tables they become need no clearing): the RAM the layout sets aside
    /// for page tables is that many frames smaller.
    pub zeroed_tables: u64,
}

/// Task stack sizes the command line may ask for (`kstack=`, in KiB).
pub const TASK_STACK_KIB_RANGE: core::ops::RangeInclusive<u64> = 16..=4096;

/// Parses `kstack=KIB`: a task stack size in KiB, a multiple of 4 in [`TASK_STACK_KIB_RANGE`].
pub fn parse_task_stack_kib(text: &str) -> Result<u64, &'static str> {
    let kib: u64 = text.parse().map_err(|_| "not a number of KiB")?;
    if !TASK_STACK_KIB_RANGE.contains(&kib) {
        return Err("outside 16..=4096 KiB");
    }
    if !kib.is_multiple_of(PAGE / 1024) {
        return Err("not a whole number of 4 KiB pages");
    }
    Ok(kib)
}

/// The most regions a layout holds.
pub const MAX_REGIONS: usize = 96;

/// What the kernel's page tables map at boot, sorted by address: [`plan`] fills it in place
/// (2.3 KiB, which an emulated guest kernel would pay for again at every move).
pub type Regions = heapless::Vec<Region, MAX_REGIONS>;

/// Where the kernel put its own things, and what became of the RAM it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Frames for page tables in RAM, after those the image holds (`ImageLayout::zeroed_tables`):
    /// `[tables.0, tables.1)`.
    pub tables: (u64, u64),
    /// Page tables the boot mapping needs (the rest of `tables` serves later mappings).
    pub boot_tables: u64,
    pub stacks: StackArea,
    /// RAM the memory map lists, and how much of it the kernel maps at boot (what fills whole
    /// large pages, but the stack area, which is mapped as stacks are used; and the image).
    pub ram: u64,
    pub ram_mapped: u64,
    /// RAM the kernel itself occupies: the image, the stack area and the page tables.
    pub ram_used: u64,
}

/// Why no layout fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The stacks (and page tables) need `needed` bytes of RAM below the boot mapping's limit
    /// after the image, and the largest such piece of RAM has `largest`.
    NoRoomForStacks { needed: u64, largest: u64 },
    /// The memory map is split into more pieces than a layout can hold.
    TooManyRegions,
    /// The stacks asked for are larger than the address space.
    StacksOverflow,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::NoRoomForStacks { needed, largest } => write!(
                f,
                "the kernel stacks and page tables need {} KiB of RAM after the image and below {} MiB; the largest free piece there has {} KiB",
                needed >> 10,
                BOOT_MAPPED_LIMIT >> 20,
                largest >> 10
            ),
            LayoutError::TooManyRegions => write!(f, "the memory map has more pieces than {MAX_REGIONS}"),
            LayoutError::StacksOverflow => write!(f, "the kernel stacks asked for are larger than the address space"),
        }
    }
}

/// Decides the layout: fills `mapped` with what the page tables map at boot and returns where
/// the kernel put its own things. `ram` is the memory map's RAM (ranges may touch or overlap):
/// the kernel carves its stacks and page tables from it and maps the rest, in whole
/// large pages; `devices` are the device pages to map at boot.
///
/// RAM is mapped only where it fills whole 2 MiB pages (or 1 GiB pages): a piece that only
/// 4 KiB pages could map (the low 640 KiB, the rest of the image's 2 MiB, a range's unaligned
/// ends) stays unmapped. Nothing uses it (the kernel has no allocator yet), and each of its pages
/// would cost every boot a page table entry, about 450 of them on the host stub. Firmware
/// tables are mapped where they are read (`acpi`), wherever they lie.
///
/// The boot information checked the memory map already (`boot::memmap`), but nothing here
/// relies on it: every sum is checked or saturating, nothing beyond [`IDENTITY_MAP_LIMIT`] is
/// mapped, and hostile input gives an error or a smaller layout, never an overflow.
pub fn plan(
    mapped: &mut Regions,
    image: &ImageLayout,
    ram: &[(u64, u64)],
    devices: &[Region],
    demand: StackDemand,
    huge_pages: bool,
) -> Result<Placement, LayoutError> {
    mapped.clear();
    // The stack area starts at the first 2 MiB boundary after the image, in the piece of RAM
    // that holds it (its 4 KiB mappings then never share a page table with anything else);
    // the page tables follow it.
    let stacks_len = StackArea::new(0, demand).ok_or(LayoutError::StacksOverflow)?.len();
    // The stack area's page tables, if every stack were mapped: one per 2 MiB it touches, and
    // a directory where it crosses into another GiB.
    let stack_tables = stacks_len / LARGE_PAGE + 2;
    let mut largest = 0;
    let mut carve = None;
    for &(start, end) in ram {
        let Some(start) = start.max(image.end).checked_next_multiple_of(LARGE_PAGE) else { continue };
        let end = (end & !(PAGE - 1)).min(BOOT_MAPPED_LIMIT);
        if start >= end {
            continue;
        }
        largest = largest.max(end - start);
        if carve.is_none() && stacks_len <= end - start {
            carve = Some((start, end));
        }
    }
    let no_room = |tables: u64| LayoutError::NoRoomForStacks {
        needed: stacks_len.saturating_add(tables.saturating_mul(PAGE)),
        largest,
    };
    let (stacks_start, carve_end) = carve.ok_or(no_room(stack_tables + SPARE_TABLES))?;
    // It fits below the boot mapping's limit, so it fits in the address space.
    let stacks = StackArea::new(stacks_start, demand).ok_or(LayoutError::StacksOverflow)?;

    let mut regions = Regions::new();
    let mut push = |start: u64, end: u64, access: Access| {
        if start < end {
            regions.push(Region { start, end, access }).map_err(|_| LayoutError::TooManyRegions)
        } else {
            Ok(())
        }
    };
    // The image, section by section; page 0 and the boot stack's guard page stay unmapped.
    push(image.start, image.user_text.0, Access::KernelText)?;
    push(image.user_text.0, image.user_text.1, Access::UserText)?;
    push(image.rodata.0, image.rodata.1, Access::KernelRodata)?;
    push(image.rodata.1, image.user_data.0, Access::KernelData)?;
    push(image.user_data.0, image.user_data.1, Access::UserData)?;
    push(image.user_data.1, image.boot_stack_guard, Access::KernelData)?;
    push(image.boot_stack_guard + PAGE, image.end, Access::KernelData)?;
    // RAM in whole large pages, around the holes: page 0, the image, the stack area. (The page
    // tables are in RAM and mapped with it, in large pages: see the check below.) Ranges that
    // touch or overlap are joined first, so that large pages run across their borders; `unit`
    // is the page size a piece is rounded inward to (device pages are exact).
    let holes = [(0, PAGE), (image.start, image.end), (stacks.start, stacks.end())];
    let mut push_mapped = |start: u64, end: u64, access: Access, unit: u64| -> Result<(), LayoutError> {
        let end = end.min(IDENTITY_MAP_LIMIT);
        let mut piece = |start: u64, end: u64| match start.checked_next_multiple_of(unit) {
            Some(start) => push(start, end & !(unit - 1), access),
            None => Ok(()),
        };
        let mut start = start;
        // Holes are few and sorted; cut the range at each one it meets.
        for &(hole_start, hole_end) in &holes {
            if start < hole_start.min(end) {
                piece(start, hole_start.min(end))?;
            }
            start = start.max(hole_end);
        }
        piece(start, end)
    };
    let mut sorted: heapless::Vec<(u64, u64), MAX_REGIONS> = heapless::Vec::new();
    for &r in ram {
        sorted.push(r).map_err(|_| LayoutError::TooManyRegions)?;
    }
    // The memory map's RAM comes sorted (`boot::memmap`): then this is one pass.
    sorted.sort_unstable_by_key(|&(start, _)| start);
    let mut joined: Option<(u64, u64)> = None;
    for &(start, end) in &sorted {
        match joined {
            Some((s, e)) if start <= e => joined = Some((s, e.max(end))),
            _ => {
                if let Some((s, e)) = joined.replace((start, end)) {
                    push_mapped(s, e, Access::KernelData, LARGE_PAGE)?;
                }
            }
        }
    }
    if let Some((s, e)) = joined {
        push_mapped(s, e, Access::KernelData, LARGE_PAGE)?;
    }
    for r in devices {
        push_mapped(r.start, r.end, r.access, PAGE)?;
    }
    regions.sort_unstable_by_key(|r| r.start);
    // Two ranges may still overlap (a device page in RAM): the first one's mapping wins.
    // Neighbours with the same permissions become one region, so that pages can be large across
    // their border.
    // (By reference: a move of the list is a copy of 2.3 KiB.)
    let kept = mapped;
    for &r in &regions {
        match kept.last_mut() {
            Some(last) if r.start <= last.end && r.access == last.access => last.end = last.end.max(r.end),
            Some(last) if r.end <= last.end => {}
            Some(last) => {
                let start = r.start.max(last.end);
                let _ = kept.push(Region { start, ..r });
            }
            None => {
                let _ = kept.push(r);
            }
        }
    }

    let boot_tables = tables_for(kept, huge_pages);
    let table_frames = boot_tables.saturating_add(stack_tables + SPARE_TABLES).saturating_sub(image.zeroed_tables);
    let tables_end = table_frames.checked_mul(PAGE).and_then(|bytes| stacks.end().checked_add(bytes));
    // The tables must lie in large pages the RAM mapping has: in the same piece of RAM as the
    // stack area, up to a 2 MiB boundary.
    let tables = match tables_end.and_then(|end| end.checked_next_multiple_of(LARGE_PAGE).map(|whole| (end, whole))) {
        Some((end, whole)) if whole <= carve_end => (stacks.end(), end),
        _ => return Err(no_room(table_frames)),
    };
    // Saturating sums: the ranges' sizes are the host's numbers.
    let ram_total = ram.iter().fold(0u64, |sum, &(s, e)| sum.saturating_add(e.saturating_sub(s)));
    let ram_mapped = overlap(kept, &sorted);
    let ram_used = (image.end - image.start) + stacks.len() + (tables.1 - tables.0);
    Ok(Placement { tables, boot_tables, stacks, ram: ram_total, ram_mapped, ram_used })
}

/// Bytes of `ranges` (sorted by start; they may overlap each other) that `regions` (sorted and
/// disjoint) cover: one pass over both.
fn overlap(regions: &[Region], ranges: &[(u64, u64)]) -> u64 {
    let mut sum = 0u64;
    let mut first = 0;
    for r in regions {
        // Ranges that end before this region end before every later one too.
        while first < ranges.len() && ranges[first].1 <= r.start {
            first += 1;
        }
        for &(s, e) in ranges[first..].iter().take_while(|&&(s, _)| s < r.end) {
            sum = sum.saturating_add(r.end.min(e).saturating_sub(r.start.max(s)));
        }
    }
    sum
}

#[cfg(test)]
mod tests;
