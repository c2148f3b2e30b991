//! `LayoutHandle` against a real VM (no vCPU): what KVM does with the slots when an update fails
//! part-way, and the dirty log with the host's own writes.

use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::MmapRegion;

use super::classify::{MemoryState, RunSpan, Verdict};
use super::table::{Backing, Layout, Region, Update};
use super::{FIRST_LAYOUT_SLOT, Hold, LayoutHandle};
use crate::error::Error;
use crate::watchdog::VcpuThreads;

const MIB2: u64 = 2 << 20;
const GPA: u64 = 0x1_0000_0000;

/// A VM with one 2 MiB region at [`GPA`] in its layout, with `flags`; and the VM itself.
fn vm_with_region(flags: u32) -> (LayoutHandle, Arc<VmFd>, Arc<MmapRegion>) {
    let (layout, vm, map, _) = vm_with_region_and_threads(flags);
    (layout, vm, map)
}

fn vm_with_region_and_threads(flags: u32) -> (LayoutHandle, Arc<VmFd>, Arc<MmapRegion>, Arc<VcpuThreads>) {
    let vm = Arc::new(Kvm::new().expect("/dev/kvm").create_vm().expect("a VM"));
    let threads = Arc::new(VcpuThreads::default());
    let layout = LayoutHandle::new(vm.clone(), threads.clone(), Layout::new(FIRST_LAYOUT_SLOT, 46));
    let map = Arc::new(MmapRegion::new(MIB2 as usize).expect("memory"));
    // SAFETY: the mapping is 2 MiB, readable and writable, kept by the Arc.
    let backing = unsafe { Backing::new(map.as_ptr() as u64, MIB2, map.clone()) };
    layout.add_before_run(Region { gpa: GPA, bytes: MIB2, backing, flags }).expect("added");
    (layout, vm, map, threads)
}

/// Whether KVM still has a slot over `gpa`: a new slot there is refused (EEXIST) if so.
fn kvm_has_slot_at(vm: &VmFd, gpa: u64, map: &MmapRegion) -> bool {
    let probe = kvm_userspace_memory_region {
        slot: 7,
        guest_phys_addr: gpa,
        memory_size: 0x1000,
        userspace_addr: map.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `map` outlives the VM's use of it: the probe slot is deleted at once if made.
    let made = unsafe { vm.set_user_memory_region(probe) }.is_ok();
    if made {
        // SAFETY: deleting a slot maps nothing.
        unsafe { vm.set_user_memory_region(kvm_userspace_memory_region { slot: 7, ..Default::default() }) }
            .expect("probe deleted");
    }
    !made
}

/// A move whose create KVM refuses (onto a slot the layout was not told about) is undone: the
/// region is created again where it was, instead of the guest losing that memory, and the error
/// says the layout is as before.
#[test]
fn a_failed_create_after_a_delete_recreates_the_old_slot() {
    let (layout, vm, map) = vm_with_region(0);
    let elsewhere = GPA + 0x1000_0000;
    let foreign = kvm_userspace_memory_region {
        slot: 3,
        guest_phys_addr: elsewhere,
        memory_size: MIB2,
        userspace_addr: map.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `map` lives until the end of the test, after the VM.
    unsafe { vm.set_user_memory_region(foreign) }.expect("a slot the layout does not know");
    let failed = layout.update(&Update::Move { gpa: GPA, to: elsewhere }, Hold::Nothing).unwrap_err();
    assert!(matches!(failed, Error::LayoutUndone(_)), "{failed}");
    assert!(kvm_has_slot_at(&vm, GPA, &map), "the region's slot was not created again");
    assert_eq!(layout.find(GPA).map(|(_, r)| r.gpa), Some(GPA), "the table still has it where it was");
    // Told about the foreign slot, the layout refuses the move without touching KVM.
    layout.add_foreign(elsewhere..elsewhere + MIB2);
    let refused = layout.update(&Update::Move { gpa: GPA, to: elsewhere }, Hold::Nothing).unwrap_err();
    assert!(matches!(refused, Error::Layout(_)), "{refused}");
}

/// A write the host completes for the guest (an access that hit an update's window) is in the
/// dirty log, as KVM's own log would have it had the guest made it.
#[test]
fn a_write_the_host_completes_is_in_the_dirty_log() {
    let (layout, _vm, _map) = vm_with_region(KVM_MEM_LOG_DIRTY_PAGES);
    assert!(layout.dirty_log(GPA).expect("a log").iter().all(|w| *w == 0), "nothing written yet");
    // Eight bytes across pages 3 and 4.
    assert!(layout.complete_access(GPA + 0x4000 - 4, RunSpan::default(), None, Some(&[0xAB; 8])));
    assert!(layout.complete_access(GPA + 0x9000, RunSpan::default(), Some(&mut [0; 8]), None));
    let log = layout.dirty_log(GPA).expect("a log");
    assert_eq!(log[0], (1 << 3) | (1 << 4), "the pages written, and no page only read");
    assert!(layout.dirty_log(GPA).expect("a log").iter().all(|w| *w == 0), "reading the log cleared it");
}

/// A lingering update no vCPU hits gives up when the run ends, not after [`super::LINGER_BOUND`]:
/// the run's time limit holds. (The deadline only turns a wait that ignores the run's end into a
/// failure.)
#[test]
fn a_lingering_window_ends_with_the_run() {
    let (layout, _vm, _map, threads) = vm_with_region_and_threads(0);
    threads.stop_all();
    let started = std::time::Instant::now();
    let applied =
        layout.update_lingering(&Update::Split { gpa: GPA, at: GPA + MIB2 / 2, upper_flags: 0 }).expect("split");
    assert!(!applied.hit, "no vCPU to hit it");
    assert!(started.elapsed() < super::LINGER_BOUND / 2, "the window lingered after the run ended");
}

/// A held update records its window too: an exit whose KVM_RUN overlapped it (which a working
/// hold makes impossible) is a race exit even at a demand page present now, which outside any
/// window is the pager's; one that entered after the update is not.
#[test]
fn an_exit_overlapping_a_held_update_is_a_race_exit_even_at_a_present_page() {
    let (layout, _vm, _map) = vm_with_region(0);
    let before = layout.generation();
    layout.update(&Update::Split { gpa: GPA, at: GPA + MIB2 / 2, upper_flags: 0 }, Hold::Vcpus).expect("split");
    let after = layout.generation();
    let across = RunSpan { entered: before, returned: after };
    assert_eq!(layout.classify(Some(GPA + 0x1000), across, MemoryState::Present, false), Verdict::UpdateWindow);
    let later = RunSpan { entered: after, returned: after };
    assert_eq!(layout.classify(Some(GPA + 0x1000), later, MemoryState::Present, false), Verdict::AbsentPage);
    assert_eq!(layout.exits_at_memory(), 1, "the race exit counts against the held run");
}
