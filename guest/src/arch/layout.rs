//! Where everything lives in physical memory, decided once at boot from the memory map: the
//! image's sections, the kernel's page tables, the kernel stacks with their guard pages, and the
//! rest of RAM. And how a range is mapped: with the largest pages its alignment allows, 4 KiB
//! pages only where a guard page or a permission boundary needs them. Plain logic, unit-tested
//! on the host; `paging` and `stacks` carry it out.
//!
//! Memory is identity mapped (virtual = physical). The kernel stacks and page tables are carved
//! from RAM right above the image, below [`BOOT_MAPPED_LIMIT`] (the page tables are built while
//! the boot tables, which map only that much, are active; and the host reads hypercall requests,
//! which live on kernel stacks, by physical address):
//!
//! ```text
//!  image_end  2 MiB-aligned stack area, one block per vCPU:
//!  |          | guard | IST 1 | guard | IST 2 | guard | IST 3 |                               page tables
//!  v          v guard | task stack 0 | guard | task stack 1 | ... | guard | task stack N-1 |   v
//!  ...........[cpu 0 block][cpu 1 block] ... [cpu M-1 block].................................[......]...
//! ```
//!
//! Nothing in the stack area is mapped at boot: a vCPU's IST stacks are mapped when it starts,
//! a task stack the first time its slot is used, and the guard pages never. So the area costs
//! boot nothing however large the stacks are or however many vCPUs it has room for.

/// A 4 KiB page.
pub const PAGE: u64 = 0x1000;
/// A 2 MiB page (a page directory entry).
pub const LARGE_PAGE: u64 = 0x20_0000;
/// A 1 GiB page (a page directory pointer table entry).
pub const HUGE_PAGE: u64 = 0x4000_0000;
/// The boot page tables map the first GiB; the kernel's own tables must be built there.
pub const BOOT_MAPPED_LIMIT: u64 = HUGE_PAGE;
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
/// pages where it covers whole aligned 2 MiB, and 4 KiB pages for the rest.
pub fn chunks(start: u64, end: u64, access: Access, huge_pages: bool) -> impl Iterator<Item = Chunk> {
    let large = access.allows_large_pages();
    let mut addr = start & !(PAGE - 1);
    let end = end.next_multiple_of(PAGE);
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
}

/// Where the kernel stacks are: `cpus` blocks, one per vCPU, as drawn in the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackArea {
    pub start: u64,
    pub demand: StackDemand,
}

impl StackArea {
    fn cpu_block(&self) -> u64 {
        let d = &self.demand;
        d.ist_per_cpu as u64 * (PAGE + d.ist_size) + d.tasks_per_cpu as u64 * (PAGE + d.task_size)
    }

    /// Bytes the area spans (the last 2 MiB page it touches included).
    pub fn len(&self) -> u64 {
        (self.demand.cpus as u64 * self.cpu_block()).next_multiple_of(LARGE_PAGE)
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
        let guard = self.start + cpu as u64 * self.cpu_block() + index as u64 * (PAGE + self.demand.ist_size);
        Stack { guard, top: guard + PAGE + self.demand.ist_size }
    }

    /// The kernel stack of task slot `slot` on vCPU `cpu`.
    pub fn task(&self, cpu: usize, slot: usize) -> Stack {
        assert!(cpu < self.demand.cpus && slot < self.demand.tasks_per_cpu, "no stack for slot {slot} of vCPU {cpu}");
        let d = &self.demand;
        let guard = self.start
            + cpu as u64 * self.cpu_block()
            + d.ist_per_cpu as u64 * (PAGE + d.ist_size)
            + slot as u64 * (PAGE + d.task_size);
        Stack { guard, top: guard + PAGE + d.task_size }
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

/// The kernel's physical memory, decided.
#[derive(Clone, Debug)]
pub struct Layout {
    /// What the kernel's page tables map at boot, sorted by address.
    pub regions: heapless::Vec<Region, MAX_REGIONS>,
    pub placement: Placement,
}

/// Where the kernel put its own things, and what became of the RAM it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Frames for page tables: `[tables.0, tables.1)`.
    pub tables: (u64, u64),
    /// Page tables the boot mapping needs (the rest of `tables` serves later mappings).
    pub boot_tables: u64,
    pub stacks: StackArea,
    /// RAM the memory map lists, and how much of it the kernel maps at boot (all but page 0,
    /// partial pages and the stack area, which is mapped as stacks are used).
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
        }
    }
}

/// Decides the layout. `memory` lists what the memory map says to map (RAM, ACPI data) and
/// `devices` the device pages to map at boot; `ram` is the part of `memory` that is free RAM
/// the kernel may carve its page tables and stacks from (the ranges must not overlap).
pub fn plan(
    image: &ImageLayout,
    memory: &[Region],
    ram: &[(u64, u64)],
    devices: &[Region],
    demand: StackDemand,
    huge_pages: bool,
) -> Result<Layout, LayoutError> {
    // The stack area starts at the first 2 MiB boundary after the image, in the piece of RAM
    // that holds it (its 4 KiB mappings then never share a page table with anything else);
    // the page tables follow it.
    let stacks_len = StackArea { start: 0, demand }.len();
    // The stack area's page tables, if every stack were mapped: one per 2 MiB it touches, and
    // a directory where it crosses into another GiB.
    let stack_tables = stacks_len / LARGE_PAGE + 2;
    let mut largest = 0;
    let mut carve = None;
    for &(start, end) in ram {
        let start = start.max(image.end).next_multiple_of(LARGE_PAGE);
        let end = (end & !(PAGE - 1)).min(BOOT_MAPPED_LIMIT);
        if start >= end {
            continue;
        }
        largest = largest.max(end - start);
        if carve.is_none() && stacks_len <= end - start {
            carve = Some((start, end));
        }
    }
    let no_room = |tables: u64| LayoutError::NoRoomForStacks { needed: stacks_len + tables * PAGE, largest };
    let (stacks_start, carve_end) = carve.ok_or(no_room(stack_tables + SPARE_TABLES))?;
    let stacks = StackArea { start: stacks_start, demand };

    let mut regions: heapless::Vec<Region, MAX_REGIONS> = heapless::Vec::new();
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
    // The memory map's ranges around the holes: page 0, the image, the stack area. (The page
    // tables are in RAM and mapped with it: the kernel reads and writes them there.)
    let holes = [(0, PAGE), (image.start, image.end), (stacks.start, stacks.end())];
    for r in memory.iter().chain(devices) {
        let mut start = r.start.next_multiple_of(PAGE);
        let end = r.end & !(PAGE - 1);
        // Holes are few and sorted; cut the range at each one it meets.
        for &(hole_start, hole_end) in &holes {
            if start < hole_start.min(end) {
                push(start, hole_start.min(end), r.access)?;
            }
            start = start.max(hole_end);
        }
        push(start, end, r.access)?;
    }
    regions.sort_unstable_by_key(|r| r.start);
    // Two ranges of the memory map may overlap: the first one's mapping wins. Neighbours with
    // the same permissions become one region, so that pages can be large across their border.
    let mut kept: heapless::Vec<Region, MAX_REGIONS> = heapless::Vec::new();
    for r in regions {
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

    let boot_tables = tables_for(&kept, huge_pages);
    let table_frames = boot_tables + stack_tables + SPARE_TABLES;
    let tables = (stacks.end(), stacks.end() + table_frames * PAGE);
    if tables.1 > carve_end {
        return Err(no_room(table_frames));
    }
    let ram_total: u64 = ram.iter().map(|&(s, e)| e.saturating_sub(s)).sum();
    let overlap = |r: &Region, &(s, e): &(u64, u64)| r.end.min(e).saturating_sub(r.start.max(s));
    let ram_mapped = kept.iter().map(|r| ram.iter().map(|range| overlap(r, range)).sum::<u64>()).sum();
    let ram_used = (image.end - image.start) + stacks.len() + table_frames * PAGE;
    Ok(Layout {
        regions: kept,
        placement: Placement { tables, boot_tables, stacks, ram: ram_total, ram_mapped, ram_used },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn image() -> ImageLayout {
        ImageLayout {
            start: MIB,
            user_text: (0x13_5000, 0x13_6000),
            rodata: (0x13_6000, 0x14_5000),
            user_data: (0x1a_0000, 0x2a_2000),
            boot_stack_guard: 0x2a_2000,
            end: 0x2b_3000,
        }
    }

    fn demand(cpus: usize, task_kib: u64) -> StackDemand {
        StackDemand { cpus, ist_per_cpu: 3, ist_size: 16 << 10, tasks_per_cpu: 32, task_size: task_kib << 10 }
    }

    fn ram_map(ranges: &[(u64, u64)]) -> heapless::Vec<Region, 8> {
        ranges.iter().map(|&(start, end)| Region { start, end, access: Access::KernelData }).collect()
    }

    fn plan_for(ranges: &[(u64, u64)], d: StackDemand, huge: bool) -> Result<Layout, LayoutError> {
        let apic = [Region { start: 0xFEE0_0000, end: 0xFEE0_1000, access: Access::Mmio }];
        plan(&image(), &ram_map(ranges), ranges, &apic, d, huge)
    }

    fn mapped(layout: &Layout, addr: u64) -> Option<Access> {
        layout.regions.iter().find(|r| (r.start..r.end).contains(&addr)).map(|r| r.access)
    }

    #[test]
    fn pages_are_as_large_as_alignment_and_permissions_allow() {
        let run = |start, end, page| Chunk { start, end, page };
        let c: Vec<_> = chunks(0x1000, 3 * GIB + 0x3000, Access::KernelData, true).collect();
        assert_eq!(
            c,
            [
                run(0x1000, 2 * MIB, PAGE),
                run(2 * MIB, GIB, LARGE_PAGE),
                run(GIB, 3 * GIB, HUGE_PAGE),
                run(3 * GIB, 3 * GIB + 0x3000, PAGE),
            ],
            "4 KiB up to the first 2 MiB boundary, 2 MiB up to the first GiB, then GiBs"
        );
        let no_huge: Vec<_> = chunks(0, 2 * GIB, Access::KernelData, false).collect();
        assert_eq!(no_huge, [run(0, GIB, LARGE_PAGE), run(GIB, 2 * GIB, LARGE_PAGE)], "one run per page directory");
        let tail: Vec<_> = chunks(4 * MIB, 8 * MIB + 0x3000, Access::KernelData, true).collect();
        assert_eq!(tail, [run(4 * MIB, 8 * MIB, LARGE_PAGE), run(8 * MIB, 8 * MIB + 0x3000, PAGE)]);
        let mmio: Vec<_> = chunks(0, 4 * MIB, Access::Mmio, true).collect();
        assert_eq!(mmio, [run(0, 2 * MIB, PAGE), run(2 * MIB, 4 * MIB, PAGE)], "device pages are 4 KiB");
        let far: Vec<_> = chunks(511 * GIB, 513 * GIB, Access::KernelData, true).collect();
        assert_eq!(far, [run(511 * GIB, 512 * GIB, HUGE_PAGE), run(512 * GIB, 513 * GIB, HUGE_PAGE)]);
    }

    #[test]
    fn the_table_count_follows_the_pages_used() {
        let r = |start, end| Region { start, end, access: Access::KernelData };
        // Root, one PDPT, one PD, one PT for the first 2 MiB window.
        assert_eq!(tables_for(&[r(0x1000, 0x3000)], true), 4);
        // The same window twice: still one PT.
        assert_eq!(tables_for(&[r(0x1000, 0x3000), r(0x5000, 0x6000)], true), 4);
        // 1 GiB pages need no PD; 2 MiB pages need no PT.
        assert_eq!(tables_for(&[r(GIB, 3 * GIB)], true), 2);
        assert_eq!(tables_for(&[r(GIB, 3 * GIB)], false), 4);
        // Beyond 512 GiB: a second PDPT.
        assert_eq!(tables_for(&[r(0x1000, 0x2000), r(512 * GIB, 513 * GIB)], true), 5);
    }

    #[test]
    fn guards_page_zero_and_the_stack_area_stay_unmapped_and_everything_else_is_mapped() {
        let layout = plan_for(&[(0, 0xA_0000), (MIB, 128 * MIB)], demand(4, 32), true).expect("fits");
        let img = image();
        assert_eq!(mapped(&layout, 0), None, "page 0");
        assert_eq!(mapped(&layout, 0x9_F000), Some(Access::KernelData), "low RAM");
        assert_eq!(mapped(&layout, 0xB_8000), None, "the hole below 1 MiB is not RAM");
        assert_eq!(mapped(&layout, img.start), Some(Access::KernelText));
        assert_eq!(mapped(&layout, img.user_text.0), Some(Access::UserText));
        assert_eq!(mapped(&layout, img.rodata.0), Some(Access::KernelRodata));
        assert_eq!(mapped(&layout, img.user_data.0), Some(Access::UserData));
        assert_eq!(mapped(&layout, img.boot_stack_guard), None, "the boot stack's guard");
        assert_eq!(mapped(&layout, img.boot_stack_guard + PAGE), Some(Access::KernelData), "the boot stack");
        assert_eq!(mapped(&layout, layout.placement.tables.0), Some(Access::KernelData), "the page tables");
        let s = layout.placement.stacks;
        assert!(s.start.is_multiple_of(LARGE_PAGE) && s.start >= img.end && layout.placement.tables.0 >= s.end());
        for addr in [s.start, s.task(3, 31).guard, s.task(3, 31).top - 8, s.end() - 1] {
            assert_eq!(mapped(&layout, addr), None, "the stack area at {addr:#x} is mapped only on demand");
        }
        assert_eq!(mapped(&layout, s.end()), Some(Access::KernelData), "RAM after the stack area");
        assert_eq!(mapped(&layout, 128 * MIB - 1), Some(Access::KernelData));
        assert_eq!(mapped(&layout, 128 * MIB), None);
        assert_eq!(mapped(&layout, 0xFEE0_0000), Some(Access::Mmio));
        let sorted = layout.regions.windows(2).all(|w| w[0].end <= w[1].start);
        assert!(sorted, "regions sorted and disjoint: {:#x?}", layout.regions);
    }

    #[test]
    fn stacks_sit_on_their_guards_and_never_overlap() {
        let s = StackArea { start: 4 * MIB, demand: demand(8, 64) };
        let mut all = Vec::new();
        for cpu in 0..8 {
            for i in 0..3 {
                all.push(s.ist(cpu, i));
            }
            for slot in 0..32 {
                all.push(s.task(cpu, slot));
            }
        }
        for w in all.windows(2) {
            assert_eq!(w[0].top, w[1].guard, "each guard sits right above the stack before it");
        }
        assert_eq!(all[0].guard, s.start);
        assert!(all.last().expect("stacks").top <= s.end());
        assert_eq!(s.task(0, 0).top - s.task(0, 0).bottom(), 64 << 10);
        assert_eq!(s.ist(7, 2).top - s.ist(7, 2).bottom(), 16 << 10);
        assert!(all.iter().all(|st| st.guard.is_multiple_of(PAGE) && st.top.is_multiple_of(16)));
    }

    #[test]
    fn eight_vcpus_of_large_stacks_fit_and_the_tables_have_room_for_all_of_them() {
        for (cpus, kib) in [(4, 32), (8, 64), (8, 256), (16, 1024)] {
            let d = demand(cpus, kib);
            let layout = plan_for(&[(0, 0xA_0000), (MIB, 3 * GIB)], d, true).expect("fits");
            let s = layout.placement.stacks;
            assert!(s.task(cpus - 1, 31).top <= s.end());
            assert!(s.end() <= BOOT_MAPPED_LIMIT, "{cpus} x {kib} KiB: below the boot mapping");
            // Every stack mapped at once (the worst case) stays within the table area.
            let stack_pts = s.len() / LARGE_PAGE + 1;
            let frames = (layout.placement.tables.1 - layout.placement.tables.0) / PAGE;
            assert!(layout.placement.boot_tables + stack_pts + SPARE_TABLES <= frames, "{cpus} x {kib} KiB");
        }
    }

    #[test]
    fn boot_needs_few_tables_and_maps_the_rest_of_ram_with_large_pages() {
        let ranges = [(0, 0x9_FC00), (MIB, 3 * GIB), (4 * GIB, 9 * GIB)];
        let layout = plan_for(&ranges, demand(4, 32), true).expect("fits");
        // Root, PDPT, the PD of the first GiB, PTs for the first two 2 MiB windows (page 0,
        // the image) and the APIC page, the PD of the APIC's GiB.
        assert!(layout.placement.boot_tables <= 8, "{} tables", layout.placement.boot_tables);
        assert_eq!(mapped(&layout, 9 * GIB - 1), Some(Access::KernelData), "RAM above 4 GiB");
        assert_eq!(mapped(&layout, 3 * GIB + 5), None, "the PCI hole");
        assert_eq!(mapped(&layout, 0x9_F000), None, "a partial page of RAM is left alone");
        let unmapped_ram = layout.placement.ram - layout.placement.ram_mapped;
        assert!(
            unmapped_ram < layout.placement.stacks.len() + 2 * MIB,
            "only the stack area is held back: {unmapped_ram:#x}"
        );
    }

    #[test]
    fn stacks_that_do_not_fit_are_refused_with_the_sizes() {
        let err = plan_for(&[(0, 0xA_0000), (MIB, 32 * MIB)], demand(4, 1024), true).expect_err("too big");
        let LayoutError::NoRoomForStacks { needed, largest } = err else { panic!("{err:?}") };
        assert!(needed > 128 * MIB && largest < 32 * MIB, "{err}");
        // RAM above the boot mapping does not help: the stacks must be below it.
        let above = plan_for(&[(0, 0xA_0000), (MIB, 8 * MIB), (2 * GIB, 4 * GIB)], demand(4, 256), true);
        assert!(matches!(above, Err(LayoutError::NoRoomForStacks { .. })));
    }

    #[test]
    fn overlapping_map_entries_are_mapped_once() {
        let ranges = [(MIB, 64 * MIB), (32 * MIB, 96 * MIB)];
        let layout = plan_for(&ranges, demand(1, 32), true).expect("fits");
        assert!(layout.regions.windows(2).all(|w| w[0].end <= w[1].start));
        assert_eq!(mapped(&layout, 96 * MIB - 1), Some(Access::KernelData));
    }

    #[test]
    fn neighbours_with_the_same_permissions_share_large_pages_and_count_as_mapped_ram() {
        // Two map entries that meet at 5 MiB: one region, so 2 MiB pages run across the border.
        let layout =
            plan_for(&[(0, 0xA_0000), (MIB, 5 * MIB), (5 * MIB, 64 * MIB)], demand(1, 32), true).expect("fits");
        let s = layout.placement.stacks;
        let after = layout.regions.iter().find(|r| r.start == s.end()).expect("RAM right after the stack area");
        assert_eq!(after.end, 64 * MIB, "one region from the stack area to the end of RAM");
        let unmapped = layout.placement.ram - layout.placement.ram_mapped;
        assert_eq!(unmapped, 2 * PAGE + s.len(), "only page 0, the boot stack's guard and the stack area are left out");
    }

    #[test]
    fn kstack_is_a_whole_number_of_pages_in_range() {
        assert_eq!(parse_task_stack_kib("64"), Ok(64));
        assert_eq!(parse_task_stack_kib("4096"), Ok(4096));
        assert!(parse_task_stack_kib("8").is_err());
        assert!(parse_task_stack_kib("66").is_err());
        assert!(parse_task_stack_kib("8192").is_err());
        assert!(parse_task_stack_kib("64k").is_err());
    }
}
