//! Unit tests of the layout: page sizes, table counts, stacks and guards, and hostile input.

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
        zeroed_tables: 0,
    }
}

fn demand(cpus: usize, task_kib: u64) -> StackDemand {
    StackDemand {
        cpus,
        ist_per_cpu: 3,
        ist_size: 16 << 10,
        tasks_per_cpu: 32,
        task_size: task_kib << 10,
        user_size: 8 << 10,
    }
}

/// What [`plan`] decided: the regions it filled in and the placement it returned.
#[derive(Debug)]
struct Layout {
    regions: Regions,
    placement: Placement,
}

fn plan_for(ranges: &[(u64, u64)], d: StackDemand, huge: bool) -> Result<Layout, LayoutError> {
    let apic = [Region { start: 0xFEE0_0000, end: 0xFEE0_1000, access: Access::Mmio }];
    let mut regions = Regions::new();
    let placement = plan(&mut regions, &image(), ranges, &apic, d, huge)?;
    Ok(Layout { regions, placement })
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
fn guards_page_zero_and_the_stack_area_stay_unmapped_and_ram_in_whole_large_pages_is_mapped() {
    let layout = plan_for(&[(0, 0xA_0000), (MIB, 128 * MIB)], demand(4, 32), true).expect("fits");
    let img = image();
    assert_eq!(mapped(&layout, 0), None, "page 0");
    assert_eq!(mapped(&layout, 0x9_F000), None, "low RAM, which only 4 KiB pages could map");
    assert_eq!(mapped(&layout, img.end), None, "the RAM after the image in its last 2 MiB");
    assert_eq!(mapped(&layout, 0xB_8000), None, "the hole below 1 MiB is not RAM");
    assert_eq!(mapped(&layout, img.start), Some(Access::KernelText));
    assert_eq!(mapped(&layout, img.user_text.0), Some(Access::UserText));
    assert_eq!(mapped(&layout, img.rodata.0), Some(Access::KernelRodata));
    assert_eq!(mapped(&layout, img.user_data.0), Some(Access::UserData));
    assert_eq!(mapped(&layout, img.boot_stack_guard), None, "the boot stack's guard");
    assert_eq!(mapped(&layout, img.boot_stack_guard + PAGE), Some(Access::KernelData), "the boot stack");
    assert_eq!(mapped(&layout, layout.placement.tables.0), Some(Access::KernelData), "the page tables");
    let s = layout.placement.stacks;
    assert!(s.start().is_multiple_of(LARGE_PAGE) && s.start() >= img.end && layout.placement.tables.0 >= s.end());
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
    let s = StackArea::new(4 * MIB, demand(8, 64)).expect("fits");
    let mut all = Vec::new();
    for cpu in 0..8 {
        for i in 0..3 {
            all.push(s.ist(cpu, i));
        }
        for slot in 0..32 {
            all.push(s.task(cpu, slot));
        }
        for slot in 0..32 {
            all.push(s.user(cpu, slot));
        }
    }
    for w in all.windows(2) {
        assert_eq!(w[0].top, w[1].guard, "each guard sits right above the stack before it");
    }
    assert_eq!(all[0].guard, s.start());
    assert!(all.last().expect("stacks").top <= s.end());
    assert_eq!(s.task(0, 0).top - s.task(0, 0).bottom(), 64 << 10);
    assert_eq!(s.ist(7, 2).top - s.ist(7, 2).bottom(), 16 << 10);
    assert_eq!(s.user(7, 31).top - s.user(7, 31).bottom(), 8 << 10);
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
fn page_tables_the_image_holds_are_not_set_aside_again_in_ram() {
    let ranges = [(0, 0xA_0000), (MIB, 256 * MIB)];
    let apic = [Region { start: 0xFEE0_0000, end: 0xFEE0_1000, access: Access::Mmio }];
    let frames = |zeroed_tables: u64| {
        let mut regions = Regions::new();
        let image = ImageLayout { zeroed_tables, ..image() };
        let p = plan(&mut regions, &image, &ranges, &apic, demand(4, 32), true).expect("fits");
        (p.tables.1 - p.tables.0) / PAGE
    };
    assert_eq!(frames(16), frames(0) - 16);
    assert_eq!(frames(100_000), 0, "every table in the image: none in RAM");
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
    let layout = plan_for(&[(0, 0xA_0000), (MIB, 5 * MIB), (5 * MIB, 64 * MIB)], demand(1, 32), true).expect("fits");
    let s = layout.placement.stacks;
    let after = layout.regions.iter().find(|r| r.start == s.end()).expect("RAM right after the stack area");
    assert_eq!(after.end, 64 * MIB, "one region from the stack area to the end of RAM");
    assert_eq!(layout.regions.iter().filter(|r| r.access == Access::KernelData && r.start >= s.end()).count(), 1);
    let unmapped = layout.placement.ram - layout.placement.ram_mapped;
    let img = image();
    assert_eq!(
        unmapped,
        0xA_0000 + (img.end.next_multiple_of(LARGE_PAGE) - img.end) + PAGE + s.len(),
        "left out: low RAM, the rest of the image's last 2 MiB, the boot stack's guard and the stack area"
    );
}

#[test]
fn ram_that_only_small_pages_could_map_stays_unmapped() {
    // A range with no whole 2 MiB page, and one whose ends are not aligned.
    let layout = plan_for(&[(MIB, 64 * MIB), (65 * MIB, 66 * MIB), (67 * MIB + PAGE, 71 * MIB)], demand(1, 32), true)
        .expect("fits");
    assert_eq!(mapped(&layout, 65 * MIB), None);
    assert_eq!(mapped(&layout, 67 * MIB + PAGE), None);
    assert_eq!(mapped(&layout, 68 * MIB), Some(Access::KernelData));
    assert_eq!(mapped(&layout, 70 * MIB - 1), Some(Access::KernelData));
    assert_eq!(mapped(&layout, 70 * MIB), None);
    let four_k = |r: &&Region| !r.start.is_multiple_of(LARGE_PAGE) || !r.end.is_multiple_of(LARGE_PAGE);
    let small: Vec<_> = layout.regions.iter().filter(four_k).filter(|r| r.start >= image().end).collect();
    assert!(small.iter().all(|r| r.access != Access::KernelData), "RAM in 4 KiB pages: {small:#x?}");
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

// Hostile input: the memory map is the host's. `boot::memmap` clips it before the layout sees
// it; these show that the layout alone still cannot overflow, alias or hang on it.

#[test]
fn chunks_never_reach_the_identity_maps_limit_and_never_overflow() {
    assert_eq!(chunks(u64::MAX - 5, u64::MAX, Access::KernelData, true).count(), 0);
    assert_eq!(chunks(1 << 48, (1 << 48) + GIB, Access::KernelData, true).count(), 0, "beyond the limit");
    let all: Vec<_> = chunks(0, u64::MAX, Access::KernelData, true).collect();
    assert_eq!(all.last().map(|c| c.end), Some(IDENTITY_MAP_LIMIT));
    assert!(all.len() <= 256 + 2, "one run per 512 GiB table: {}", all.len());
    let near: Vec<_> = chunks(IDENTITY_MAP_LIMIT - 0x1800, u64::MAX, Access::Mmio, true).collect();
    assert_eq!(near, [Chunk { start: IDENTITY_MAP_LIMIT - 0x2000, end: IDENTITY_MAP_LIMIT, page: PAGE }]);
}

#[test]
fn the_reach_follows_the_physical_address_width_within_the_identity_maps_limit() {
    assert_eq!(identity_map_reach(39), 1 << 39);
    assert_eq!(identity_map_reach(46), 1 << 46);
    assert_eq!(identity_map_reach(48), IDENTITY_MAP_LIMIT, "48-bit CPUs: the page tables are the limit");
    assert_eq!(identity_map_reach(52), IDENTITY_MAP_LIMIT);
    assert_eq!(identity_map_reach(0), 1 << 36, "a missing or absurd width is the architecture's minimum");
    assert_eq!(identity_map_reach(255), IDENTITY_MAP_LIMIT);
}

#[test]
fn ram_near_the_top_of_the_address_space_is_left_out_not_wrapped() {
    let ranges =
        [(0, 0xA_0000), (MIB, 64 * MIB), (u64::MAX - 0x1000, u64::MAX), (1 << 62, u64::MAX), (1 << 63, u64::MAX)];
    let layout = plan_for(&ranges, demand(4, 32), true).expect("fits");
    let s = layout.placement.stacks;
    assert!(s.start() >= image().end && s.start() < 64 * MIB, "the stack area is in real RAM: {:#x}", s.start());
    assert!(layout.placement.tables.0 >= s.end(), "page tables after the stacks, not over the image");
    assert!(layout.regions.iter().all(|r| r.end <= IDENTITY_MAP_LIMIT), "{:#x?}", layout.regions);
    assert_eq!(layout.placement.ram, u64::MAX, "the host's sizes add up without overflowing");
}

#[test]
fn ram_beyond_the_identity_maps_limit_is_not_mapped_over_low_memory() {
    // At 1 << 48 a page table index would wrap to PML4[0] and PDPT[0], over the first GiB.
    let ranges = [(0, 0xA_0000), (MIB, 64 * MIB), (1 << 48, (1 << 48) + GIB), (IDENTITY_MAP_LIMIT, u64::MAX)];
    let layout = plan_for(&ranges, demand(4, 32), true).expect("fits");
    assert!(layout.regions.iter().all(|r| r.end <= IDENTITY_MAP_LIMIT), "{:#x?}", layout.regions);
    let clean = plan_for(&ranges[..2], demand(4, 32), true).expect("fits");
    assert_eq!(layout.regions, clean.regions, "the entries beyond the limit changed nothing");
    assert_eq!(layout.placement.boot_tables, clean.placement.boot_tables);
}

#[test]
fn a_huge_ram_entry_is_mapped_up_to_the_limit_with_few_tables() {
    let ranges = [(0, 0xA_0000), (MIB, 64 * MIB), (GIB, u64::MAX)];
    let layout = plan_for(&ranges, demand(4, 32), true).expect("fits");
    assert_eq!(mapped(&layout, IDENTITY_MAP_LIMIT - 1), Some(Access::KernelData));
    assert!(layout.placement.boot_tables < 300, "1 GiB pages: a PDPT per 512 GiB: {}", layout.placement.boot_tables);
    // Without 1 GiB pages a page directory per GiB: far more tables than fit below 1 GiB, which
    // is refused with the sizes (not a hang, not an overflow).
    let no_huge = plan_for(&ranges, demand(4, 32), false);
    assert!(matches!(no_huge, Err(LayoutError::NoRoomForStacks { .. })), "{no_huge:?}");
}

#[test]
fn unsorted_overlapping_and_empty_ranges_give_sorted_disjoint_regions() {
    let ranges = [(64 * MIB, 128 * MIB), (0, 0xA_0000), (5 * MIB, 5 * MIB), (MIB, 96 * MIB), (80 * MIB, 70 * MIB)];
    let layout = plan_for(&ranges, demand(1, 32), true).expect("fits");
    assert!(layout.regions.windows(2).all(|w| w[0].end <= w[1].start), "{:#x?}", layout.regions);
    assert_eq!(mapped(&layout, 128 * MIB - 1), Some(Access::KernelData));
    assert_eq!(mapped(&layout, 128 * MIB), None);
}

#[test]
fn stacks_larger_than_the_address_space_are_refused() {
    let huge = StackDemand { task_size: u64::MAX, cpus: usize::MAX, ..demand(1, 32) };
    assert_eq!(StackArea::new(0, huge), None);
    assert_eq!(StackArea::new(u64::MAX - MIB, demand(1, 32)), None, "an area whose end wraps");
    let err = plan_for(&[(0, 0xA_0000), (MIB, 64 * MIB)], huge, true).expect_err("too big");
    assert_eq!(err, LayoutError::StacksOverflow);
}
