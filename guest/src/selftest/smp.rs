//! Tests of several vCPUs: every processor the MADT lists is started and runs on its own
//! tables, APIC and timer. With one vCPU they check the one-vCPU case (nothing to start, nothing
//! failed), so they run on every host.

use core::sync::atomic::{AtomicU32, Ordering};

use pvagent_abi::report::Need;
use x86_64::registers::control::{Cr0, Cr0Flags};

use super::{SelfTest, TestResult};
use crate::arch::fault;
use crate::arch::paging::{self, Access};
use crate::arch::{self, apic, percpu, smp, time, tlb};
use crate::cell::StaticCell;
use crate::pv::ac::policy::Mode;
use crate::pv::{ac, halt, kvm_apf, pnp};
use crate::sync::IrqGuard;
use crate::task::{self, remote};
use crate::{ensure, ensure_eq, ensure_eq_hex};

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("smp::every_madt_cpu_is_online", every_madt_cpu_is_online),
    SelfTest::new("smp::every_cpu_takes_its_own_timer_ticks", every_cpu_takes_its_own_timer_ticks),
    SelfTest::new("smp::a_task_runs_on_the_cpu_it_was_placed_on", a_task_runs_on_the_cpu_it_was_placed_on),
    SelfTest::new("smp::every_cpu_sets_up_its_own_protocols", every_cpu_sets_up_its_own_protocols),
    SelfTest::new(
        "smp::a_task_blocked_on_one_cpu_is_woken_from_another",
        a_task_blocked_on_one_cpu_is_woken_from_another,
    ),
    SelfTest::new("smp::an_unmapped_page_faults_on_every_cpu", an_unmapped_page_faults_on_every_cpu),
    SelfTest::new("smp::the_split_lock_mode_applies_on_every_cpu", the_split_lock_mode_applies_on_every_cpu),
    SelfTest::new("smp::every_cpu_sees_the_host_stubs_topology", every_cpu_sees_the_host_stubs_topology)
        .needs(&[Need::HostStub]),
    SelfTest::new(
        "smp::split_lock_detection_off_on_one_cpu_stays_on_on_another",
        split_lock_detection_off_on_one_cpu_stays_on_on_another,
    )
    .needs(&[Need::HostStub, Need::SldTrigger, Need::SldDetection, Need::SeveralCpus]),
];

/// Every usable processor of the MADT (up to `MAX_CPUS`) has a dense index and came online;
/// none failed, and none was left out.
fn every_madt_cpu_is_online() -> TestResult {
    let p = arch::platform();
    let map = &p.cpus;
    ensure_eq!(map.apic_id(0), Some(p.boot_apic_id), "index 0 is the boot vCPU");
    if let Some(madt) = p.madt {
        for id in madt.ids() {
            ensure!(map.index_of(*id).is_some(), "the MADT's APIC ID {id} has no vCPU index: {:?}", map.ids());
        }
        ensure_eq!(map.count(), (madt.cpus as usize).min(arch::MAX_CPUS), "vCPUs used of those the MADT lists");
    }
    for cpu in 0..map.count() {
        ensure!(smp::is_online(cpu), "vCPU {cpu} (APIC ID {:?}) is not online", map.apic_id(cpu));
    }
    ensure_eq!(smp::failed_mask(), 0, "vCPUs that did not come online (bit per index)");
    ensure_eq!(smp::online_count(), map.count(), "vCPUs online");
    Ok(())
}

/// Each vCPU's timer ticks on that vCPU: its tick count, which only its own timer's handler
/// increments, grows by 3. Waited for by halting (the boot vCPU's own ticks wake it to look);
/// the deadline only turns a dead timer into a failure instead of a hang.
fn every_cpu_takes_its_own_timer_ticks() -> TestResult {
    let cpus = arch::platform().cpus.count();
    let targets: heapless::Vec<u64, { arch::MAX_CPUS }> = (0..cpus).map(|cpu| time::ticks_of(cpu) + 3).collect();
    let deadline_ns = time::now_ns() + 10_000_000_000;
    let all_ticked = || (0..cpus).all(|cpu| time::ticks_of(cpu) >= targets[cpu]);
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (all_ticked() || time::now_ns() > deadline_ns).then_some(()));
    }
    for (cpu, target) in targets.iter().enumerate() {
        let seen = time::ticks_of(cpu) + 3 - target;
        ensure!(seen >= 3, "vCPU {cpu}'s timer is not ticking: {seen} of 3 ticks in ten seconds");
    }
    Ok(())
}

/// A task placed on each vCPU in turn (the running one included) runs there: it reports the
/// vCPU index and the APIC ID it finds, which must be that vCPU's by the CPU map. Joined from
/// here: the result comes back across vCPUs, and the task's slot is freed on its own vCPU.
fn a_task_runs_on_the_cpu_it_was_placed_on() -> TestResult {
    fn where_am_i(tag: u64) -> u64 {
        (tag << 48) | ((percpu::index() as u64) << 32) | u64::from(apic::id())
    }
    let map = &arch::platform().cpus;
    for round in 0..2u64 {
        for cpu in 0..map.count() {
            let placed = remote::spawn_kernel_on(cpu, "placed", where_am_i, round)
                .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
            let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
            ensure_eq!(seen >> 48, round, "the task's own argument, round {round}");
            ensure_eq!((seen >> 32) & 0xFFFF, cpu as u64, "the vCPU index the placed task ran on");
            ensure_eq!(Some(seen as u32), map.apic_id(cpu), "the APIC ID the task on vCPU {cpu} read");
        }
    }
    Ok(())
}

/// What a vCPU set up for itself, packed by [`own_protocols`]: the ring size it registered (the
/// page-not-present protocol), then flags.
const CR0_AM: u64 = 1 << 0;
const DETECTION_AS_MODE: u64 = 1 << 1;
const KVM_APF_ENABLED: u64 = 1 << 2;

fn own_protocols(_: u64) -> u64 {
    let mut flags = 0;
    if Cr0::read().contains(Cr0Flags::ALIGNMENT_MASK) {
        flags |= CR0_AM;
    }
    let s = ac::status();
    if s.detection_on == s.mode.wants_detection() || s.enumeration != ac::policy::Enumeration::Available {
        flags |= DETECTION_AS_MODE;
    }
    if kvm_apf::enabled() {
        flags |= KVM_APF_ENABLED;
    }
    (u64::from(pnp::registered_entries()) << 32) | flags
}

/// Each vCPU registered its own protocol areas with the host as the boot vCPU did (the
/// page-not-present ring of the same size, KVM's async page faults where the boot vCPU enabled
/// them) and set its own #AC state (CR0.AM, detection as the mode says), with the same CR0 as the
/// boot vCPU's (caches on: CD and NW clear). Read on each vCPU by a
/// task placed there: every one of these is per-vCPU state no other vCPU can see.
fn every_cpu_sets_up_its_own_protocols() -> TestResult {
    let boot = own_protocols(0);
    ensure_eq!(boot & (CR0_AM | DETECTION_AS_MODE), CR0_AM | DETECTION_AS_MODE, "the boot vCPU's #AC state");
    for cpu in 1..arch::platform().cpus.count() {
        let placed = remote::spawn_kernel_on(cpu, "own-protocols", own_protocols, 0)
            .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
        let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
        ensure_eq!(seen >> 32, boot >> 32, "vCPU {cpu}'s page-not-present ring size against the boot vCPU's");
        ensure_eq!(seen & 0xFFFF_FFFF, boot & 0xFFFF_FFFF, "vCPU {cpu}'s CR0.AM, detection, KVM async PF flags");
    }
    // CR0 whole: each vCPU loaded its own (the boot entry, an AP's trampoline), and an AP that
    // kept INIT's CD or NW would run uncached.
    fn own_cr0(_: u64) -> u64 {
        Cr0::read_raw()
    }
    let boot_cr0 = own_cr0(0);
    let uncached = (Cr0Flags::CACHE_DISABLE | Cr0Flags::NOT_WRITE_THROUGH).bits();
    ensure_eq!(boot_cr0 & uncached, 0, "the boot vCPU's CR0.CD and CR0.NW (CR0 {boot_cr0:#x})");
    for cpu in 1..arch::platform().cpus.count() {
        let placed = remote::spawn_kernel_on(cpu, "own-cr0", own_cr0, 0)
            .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
        let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
        ensure_eq_hex!(seen, boot_cr0, "vCPU {cpu}'s CR0 against the boot vCPU's");
    }
    if boot & KVM_APF_ENABLED != 0 {
        // Each vCPU gave KVM its own area: no two registered the same address.
        fn area(_: u64) -> u64 {
            kvm_apf::area_gpa()
        }
        let mut areas: heapless::Vec<u64, { arch::MAX_CPUS }> = heapless::Vec::new();
        for cpu in 0..arch::platform().cpus.count() {
            let placed = remote::spawn_kernel_on(cpu, "own-apf-area", area, 0)
                .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
            let gpa = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
            ensure!(!areas.contains(&gpa), "vCPU {cpu}'s KVM async PF area {gpa:#x} is another vCPU's too: {areas:x?}");
            let _ = areas.push(gpa);
        }
    }
    Ok(())
}

/// `ac::with_mode` applies the mode on every online vCPU, not only the calling one: with the
/// mode `off` every vCPU's MSR_TEST_CTRL reads detection off, with `warn` on (each read on its
/// own vCPU by a task placed there). Where MSR_TEST_CTRL is not enumerated every vCPU reads
/// `None`: the same on every vCPU, which is all the test asks there.
fn the_split_lock_mode_applies_on_every_cpu() -> TestResult {
    fn detection_here(_: u64) -> u64 {
        match ac::detection_in_msr() {
            None => 2,
            Some(on) => u64::from(on),
        }
    }
    let enumerated = ac::detection_in_msr().is_some();
    for (mode, on) in [(Mode::Off, 0), (Mode::Warn, 1)] {
        let expected = if enumerated { on } else { 2 };
        ac::with_mode(mode, || -> TestResult {
            for cpu in 0..arch::platform().cpus.count() {
                let placed = remote::spawn_kernel_on(cpu, "sld-mode-read", detection_here, 0)
                    .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
                let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
                ensure_eq!(seen, expected, "vCPU {cpu}'s MSR_TEST_CTRL detection under sld={mode} (2: not enumerated)");
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// One vCPU's view of its topology leaves (0xB, and 0x1F when the highest basic leaf reaches
/// it), packed: the SMT level's shift and thread count, the core level's shift and count, and
/// flags for what the vCPU checked itself.
mod topo {
    pub const SMT_SHIFT: u32 = 0;
    pub const THREADS: u32 = 8;
    pub const CORE_SHIFT: u32 = 16;
    pub const COUNT: u32 = 24;
    /// Every subleaf's EDX is this vCPU's own x2APIC ID (its local APIC's ID).
    pub const OWN_APIC_ID: u64 = 1 << 32;
    /// Subleaf 0 is the SMT level, 1 the core level, 2 ends the list (type 0).
    pub const LEVEL_TYPES: u64 = 1 << 33;
    /// Leaf 0x1F says what 0xB says (or is not there).
    pub const LEAF_1F_SAME: u64 = 1 << 34;
    /// Leaf 0x1F is there.
    pub const LEAF_1F_PRESENT: u64 = 1 << 35;
}

fn own_topology(_: u64) -> u64 {
    const LEVEL_SMT: u32 = 1;
    const LEVEL_CORE: u32 = 2;
    let read = |leaf| [0, 1, 2].map(|subleaf| crate::arch::cpu::cpuid(leaf, subleaf));
    let b = read(0xB);
    let mut seen = u64::from(b[0].eax & 0x1F) << topo::SMT_SHIFT
        | u64::from(b[0].ebx & 0xFF) << topo::THREADS
        | u64::from(b[1].eax & 0x1F) << topo::CORE_SHIFT
        | u64::from(b[1].ebx & 0xFF) << topo::COUNT;
    let apic_id = apic::id();
    if b.iter().all(|r| r.edx == apic_id) {
        seen |= topo::OWN_APIC_ID;
    }
    let types = b.map(|r| (r.ecx >> 8) & 0xFF);
    if types == [LEVEL_SMT, LEVEL_CORE, 0] && b.iter().enumerate().all(|(i, r)| r.ecx & 0xFF == i as u32) {
        seen |= topo::LEVEL_TYPES;
    }
    if crate::arch::cpu::cpuid(0, 0).eax >= 0x1F {
        seen |= topo::LEAF_1F_PRESENT;
        if read(0x1F) == b {
            seen |= topo::LEAF_1F_SAME;
        }
    } else {
        seen |= topo::LEAF_1F_SAME;
    }
    seen
}

/// Each vCPU reads the topology the host stub reports (CPUID 0xB, and 0x1F), on itself: its own
/// x2APIC ID in every subleaf, an SMT level then a core level, the same levels on every vCPU,
/// one or two threads per core with the SMT shift to match, and a core level that counts every
/// vCPU. With two threads per core the host must not offer split-lock detection per vCPU (seed
/// 000: MSR_TEST_CTRL is the core's), which the guest sees as detection not enumerated.
fn every_cpu_sees_the_host_stubs_topology() -> TestResult {
    let cpus = arch::platform().cpus.count();
    let boot = own_topology(0);
    let field = |v: u64, shift: u32| (v >> shift) & 0xFF;
    let (smt_shift, threads) = (field(boot, topo::SMT_SHIFT), field(boot, topo::THREADS));
    let (core_shift, count) = (field(boot, topo::CORE_SHIFT), field(boot, topo::COUNT));
    ensure!(threads == 1 || threads == 2, "threads per core in leaf 0xB: {threads} (the host stub simulates 1 or 2)");
    ensure_eq!(smt_shift, threads - 1, "the SMT level's shift for {threads} thread(s) per core");
    ensure_eq!(count, cpus as u64, "logical processors at the core level against the vCPUs the MADT lists");
    ensure!(
        1 << core_shift >= count && core_shift >= smt_shift,
        "the core level's shift {core_shift} for {count} vCPUs"
    );
    let flags = topo::OWN_APIC_ID | topo::LEVEL_TYPES | topo::LEAF_1F_SAME;
    ensure_eq!(boot & flags, flags, "the boot vCPU's leaves: own APIC ID, level types, 0x1F as 0xB (bits 32-34)");
    for cpu in 1..cpus {
        let placed = remote::spawn_kernel_on(cpu, "own-topology", own_topology, 0)
            .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
        let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
        ensure_eq!(seen, boot, "vCPU {cpu}'s topology leaves against the boot vCPU's (bits 32-34: its own checks)");
    }
    if threads == 2 {
        ensure!(
            !ac::enumeration().available(),
            "two threads per core, yet split-lock detection is enumerated per vCPU: {:?}",
            ac::enumeration()
        );
    }
    Ok(())
}

/// Where the split-lock test's two sides are: 1 when the other vCPU's split lock is done and
/// its detection off, 2 when this vCPU has looked at its own.
static SLD_PHASE: AtomicU32 = AtomicU32::new(0);
/// What the other vCPU saw, as flags.
const OFF_AFTER_SPLIT_LOCK: u64 = 1 << 0;
const STILL_OFF_WITHOUT_A_SWITCH: u64 = 1 << 1;
const BACK_ON_AFTER_A_SWITCH: u64 = 1 << 2;
const SPLIT_LOCK_AS_EXPECTED: u64 = 1 << 3;

/// Split-lock `warn` on vCPU 1 switches detection off there for the running task only: vCPU 0
/// keeps it on meanwhile (its MSR_TEST_CTRL as the host keeps it for vCPU 0), vCPU 1 keeps it off
/// until its next task switch, and then has it back on. Each side waits for the other as an
/// event (a flag and a wake IPI); the task on vCPU 1 waits by halting, which switches no task.
fn split_lock_detection_off_on_one_cpu_stays_on_on_another() -> TestResult {
    // Under the runner's `with_mode(Warn)` below, which applies it on vCPU 1 too.
    fn split_lock_then_wait(_: u64) -> u64 {
        {
            let mut seen = 0;
            if super::ac::kernel_split_lock_here().is_ok() {
                seen |= SPLIT_LOCK_AS_EXPECTED;
            }
            let s = ac::status();
            if s.sld_disabled_until_switch && !s.detection_on && ac::detection_in_msr() == Some(false) {
                seen |= OFF_AFTER_SPLIT_LOCK;
            }
            SLD_PHASE.store(1, Ordering::SeqCst);
            smp::wake(0);
            {
                let _irq = IrqGuard::new();
                halt::wait_until(|| (SLD_PHASE.load(Ordering::SeqCst) == 2).then_some(()));
            }
            if ac::detection_in_msr() == Some(false) {
                seen |= STILL_OFF_WITHOUT_A_SWITCH;
            }
            task::sleep_ticks(1);
            if ac::detection_in_msr() == Some(true) {
                seen |= BACK_ON_AFTER_A_SWITCH;
            }
            seen
        }
    }
    ac::with_mode(Mode::Warn, || {
        SLD_PHASE.store(0, Ordering::SeqCst);
        let placed = remote::spawn_kernel_on(1, "sld-other-cpu", split_lock_then_wait, 0)
            .map_err(|e| super::fail(format_args!("placing a task on vCPU 1: {e:?}")))?;
        // The bound only turns a task that never gets there into a failure instead of a hang.
        let deadline_ns = time::now_ns() + 10_000_000_000;
        {
            let _irq = IrqGuard::new();
            halt::wait_until(|| (SLD_PHASE.load(Ordering::SeqCst) == 1 || time::now_ns() > deadline_ns).then_some(()));
        }
        let reached = SLD_PHASE.load(Ordering::SeqCst) == 1;
        let s = ac::status();
        let msr_here = ac::detection_in_msr();
        SLD_PHASE.store(2, Ordering::SeqCst);
        smp::wake(1);
        let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU 1: {e:?}")))?;
        ensure!(reached, "the task on vCPU 1 did not report its split lock within ten seconds");
        ensure!(s.detection_on && !s.sld_disabled_until_switch, "vCPU 0's detection while vCPU 1's was off: {s:?}");
        ensure_eq!(msr_here, Some(true), "vCPU 0's MSR_TEST_CTRL while vCPU 1's was off");
        ensure_eq!(seen & SPLIT_LOCK_AS_EXPECTED, SPLIT_LOCK_AS_EXPECTED, "vCPU 1's split lock answered with #AC");
        ensure_eq!(seen & OFF_AFTER_SPLIT_LOCK, OFF_AFTER_SPLIT_LOCK, "vCPU 1's detection off after its split lock");
        ensure_eq!(seen & STILL_OFF_WITHOUT_A_SWITCH, STILL_OFF_WITHOUT_A_SWITCH, "vCPU 1's, still off with no switch");
        ensure_eq!(seen & BACK_ON_AFTER_A_SWITCH, BACK_ON_AFTER_A_SWITCH, "vCPU 1's, back on after its next switch");
        Ok(())
    })
}

/// Set by the blocking task of the cross-vCPU wake test, with interrupts off, right before it
/// blocks.
static ABOUT_TO_BLOCK: AtomicU32 = AtomicU32::new(0);
const CROSS_WAKE_VALUE: u64 = 0x5EED_0001;

fn cross_wake_key() -> task::table::Wait {
    task::table::Wait::Key { owner: "smp self-test", key: core::ptr::addr_of!(ABOUT_TO_BLOCK) as u64 }
}

/// A task on the last vCPU blocks on a key; the runner (on vCPU 0) wakes it with a value
/// through that vCPU's inbox (`task::remote::wake_on`). By construction, not timing: the task
/// announces itself with interrupts already off and keeps them off until it is blocked, so the
/// request's IPI is taken there only once the task waits. With one vCPU the same path wakes a
/// task of the running vCPU (no IPI: `wake_on` wakes it at once).
fn a_task_blocked_on_one_cpu_is_woken_from_another() -> TestResult {
    fn blocker(_: u64) -> u64 {
        let _irq = IrqGuard::new();
        ABOUT_TO_BLOCK.store(1, Ordering::SeqCst);
        smp::wake(0);
        let value = task::block_current(cross_wake_key());
        (value << 8) | percpu::index() as u64
    }
    let cpu = arch::platform().cpus.count() - 1;
    ABOUT_TO_BLOCK.store(0, Ordering::SeqCst);
    let placed = remote::spawn_kernel_on(cpu, "cross-wake", blocker, 0)
        .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
    // The bound only turns a task that never starts into a failure instead of a hang.
    let deadline_ns = time::now_ns() + 10_000_000_000;
    if cpu == 0 {
        // One vCPU: let the task run up to its block.
        while ABOUT_TO_BLOCK.load(Ordering::SeqCst) == 0 && time::now_ns() <= deadline_ns {
            task::yield_now();
        }
    } else {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (ABOUT_TO_BLOCK.load(Ordering::SeqCst) == 1 || time::now_ns() > deadline_ns).then_some(()));
    }
    ensure_eq!(ABOUT_TO_BLOCK.load(Ordering::SeqCst), 1, "the task on vCPU {cpu} reached its block");
    remote::wake_on(cpu, cross_wake_key(), CROSS_WAKE_VALUE)
        .map_err(|e| super::fail(format_args!("waking the task on vCPU {cpu}: {e:?}")))?;
    let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
    ensure_eq!(seen & 0xFF, cpu as u64, "the vCPU the woken task ran on");
    ensure_eq!(seen >> 8, CROSS_WAKE_VALUE, "the value the wake-up handed over");
    Ok(())
}

/// A page of the image's own, mapped with a 4 KiB page (the image's 2 MiB window is mapped in
/// 4 KiB pages: its sections' permissions differ), which the shootdown test unmaps and maps
/// again.
#[repr(C, align(4096))]
struct TestPage([u64; 512]);
static SHOOTDOWN_PAGE: StaticCell<TestPage> = StaticCell::new(TestPage([0; 512]));

/// Reads the test page through the fault probe: its value, or the fault's error code with bit
/// 63 set.
fn probe_test_page(_: u64) -> u64 {
    match fault::probe_read_u64(SHOOTDOWN_PAGE.get() as u64) {
        Ok(value) => value & !(1 << 63),
        Err(f) if f.vector == 14 => (1 << 63) | f.error_code,
        Err(f) => (1 << 62) | u64::from(f.vector),
    }
}

/// A page every vCPU has just read (so each may cache its translation) is unmapped on vCPU 0:
/// when `unmap_page` returns, every vCPU's read of it faults, not present, and every other vCPU
/// took exactly one shootdown IPI, whose handler flushed exactly that page. Mapped again
/// afterwards. With one vCPU, the local flush.
fn an_unmapped_page_faults_on_every_cpu() -> TestResult {
    const VALUE: u64 = 0x0DDB_A11C_0FFE_E000;
    let addr = SHOOTDOWN_PAGE.get() as u64;
    let page_size = paging::page_size(addr);
    ensure_eq!(page_size, Some(4096), "the size of the page that maps the test page");
    // SAFETY: the test page is this test's own static; nothing else uses it.
    unsafe { core::ptr::write_volatile(addr as *mut u64, VALUE) };
    let cpus = arch::platform().cpus.count();
    let run_on = |cpu: usize| -> Result<u64, super::Failure> {
        let placed = remote::spawn_kernel_on(cpu, "tlb-probe", probe_test_page, 0)
            .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
        placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))
    };
    for cpu in 0..cpus {
        ensure_eq!(run_on(cpu)?, VALUE, "vCPU {cpu}'s read of the test page while mapped");
    }
    let handled: heapless::Vec<u64, { arch::MAX_CPUS }> = (0..cpus).map(tlb::handled_by).collect();
    let unmapped = paging::unmap_page(addr);
    let mut seen: heapless::Vec<u64, { arch::MAX_CPUS }> = heapless::Vec::new();
    let mut after: heapless::Vec<u64, { arch::MAX_CPUS }> = heapless::Vec::new();
    let mut flushed: heapless::Vec<(u64, u64), { arch::MAX_CPUS }> = heapless::Vec::new();
    if unmapped.is_ok() {
        for cpu in 0..cpus {
            let _ = seen.push(run_on(cpu)?);
        }
        for cpu in 0..cpus {
            let _ = after.push(tlb::handled_by(cpu) - handled[cpu]);
            let _ = flushed.push(tlb::last_flushed_by(cpu));
        }
        paging::map_range(addr, addr + 4096, Access::KernelData);
    }
    ensure_eq!(unmapped, Ok(()), "unmapping the test page");
    // A kernel read of a not-present page: error code 0 (not present, read, supervisor).
    const NOT_PRESENT_READ: u64 = 0;
    let not_present =
        (0..cpus).map(|_| (1 << 63) | NOT_PRESENT_READ).collect::<heapless::Vec<u64, { arch::MAX_CPUS }>>();
    ensure_eq!(seen, not_present, "each vCPU's read after the unmap (bit 63: #PF with this error code)");
    let expected = (0..cpus).map(|cpu| u64::from(cpu != 0)).collect::<heapless::Vec<u64, { arch::MAX_CPUS }>>();
    ensure_eq!(after, expected, "shootdown IPIs each vCPU handled");
    // What each other vCPU's handler flushed: the page asked for. The faults above cannot show a
    // missing or misdirected remote flush on a host that drops translations by itself (PVM's
    // shadow paging here); this can, on every host (vCPU 0 flushed its own without an IPI).
    for (cpu, &(start, end)) in flushed.iter().enumerate().skip(1) {
        ensure_eq_hex!(start, addr, "the start of the range vCPU {cpu}'s shootdown handler flushed");
        ensure_eq_hex!(end, addr + 4096, "the end of the range vCPU {cpu}'s shootdown handler flushed");
    }
    ensure_eq!(probe_test_page(0), VALUE, "the test page mapped again");
    Ok(())
}
