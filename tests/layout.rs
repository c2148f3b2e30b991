//! Guest memory changed under running vCPUs (seed 003): guest RAM, which the guest executes
//! from and keeps its data and page tables in, is split into two memslots (dirty logging on the
//! upper half) and merged again, over and over, while four vCPUs run every self-test. Each
//! update holds every vCPU out of KVM_RUN, so the guest must see nothing: every test passes, no
//! exit hits an update's window, and the report says how long the vCPUs were held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pvagent_abi::pnp::HostMode;
use pvagent_host::kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use pvagent_host::layout::table::{Backing, Region, Update};
use pvagent_host::layout::{Hold, LayoutHandle};
use pvagent_host::producers::Producers;
use pvagent_host::producers::churn::ChurnConfig;
use pvagent_host::producers::pager::config::PagerConfig;
use pvagent_host::producers::pager::uffd::{Missing, Uffd};
use pvagent_host::producers::released::ReleasedConfig;
use pvagent_host::vm_memory::mmap::MmapRegionBuilder;
use pvagent_host::{AttachCtx, ExitHandler, Handled, RunResult, VcpuCtx, Vm};
use pvagent_tests::{Code32, config, guest_elf, run_stub_configured, temp_file, tiny_elf};

/// An update every this many vCPU entries: a boot and its self-tests make thousands of entries,
/// so every run makes many updates, by the guest's work rather than the clock.
const EVERY: u64 = 20;

fn run(cmdline: &str, vcpus: usize, pager: Option<PagerConfig>) -> RunResult {
    run_churning(cmdline, vcpus, ChurnConfig { ram_every: Some(EVERY), hold: true }, pager)
}

fn run_churning(cmdline: &str, vcpus: usize, churn: ChurnConfig, pager: Option<PagerConfig>) -> RunResult {
    let mut c = config(guest_elf(), cmdline);
    c.vcpus = vcpus;
    run_stub_configured(c, &Producers { churn: Some(churn), pager, ..Producers::defaults() })
}

fn assert_atomic(r: &RunResult, vcpus: usize) {
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    let c = &r.report;
    let (splits, merges) = (c.get("churn.ram_splits"), c.get("churn.ram_merges"));
    assert!(splits >= 1 && merges >= 1, "RAM was split and merged again: {splits} splits, {merges} merges");
    let others = c.get("churn.other_splits") + c.get("churn.other_merges");
    assert!(c.get("churn.other_splits") >= 1, "the demand pager's region was split too");
    let region =
        c.get("churn.region_splits") + c.get("churn.region_merges") + c.get("churn.hot_added") + c.get("churn.moved");
    assert_eq!(c.get("layout.held_updates"), splits + merges + others + region, "every update held the vCPUs");
    assert_eq!(c.get("layout.unheld_updates"), 0);
    // Zero race exits: none classified as the window (none could be: no update left one open
    // to a running vCPU), no MMIO exit at an address no device claims, and no emulation
    // failure or triple fault (the run passed).
    assert_eq!(c.get("layout.exits_update_window"), 0);
    for i in 0..vcpus {
        assert_eq!(c.get(&format!("vcpu{i}.unclaimed_mmio")), 0, "vCPU {i}");
    }
    assert!(c.get("layout.hold_us_max") > 0, "the hold time is measured");
    assert!(
        r.report.lines.iter().any(|l| l.starts_with("layout: ") && l.contains("updates holding every vCPU")),
        "{:?}",
        r.report.lines
    );
}

#[test]
fn every_self_test_passes_on_four_vcpus_while_ram_is_split_and_merged() {
    let r = run("", 4, Some(PagerConfig::default()));
    assert_atomic(&r, 4);
}

/// The page-not-present tests in every pager mode, while guest RAM and the demand pager's own
/// region (its fetches in flight) are split and merged in turn: vCPUs wait for pages outside
/// KVM_RUN (sync, and a fault no event can be delivered for: in the host, after its exit) and
/// inside it (kvm-apf-kernel: in KVM, on a userfaultfd page, where no signal reaches it), and an
/// update holds them all the same, waiting for that page.
#[test]
fn vcpus_waiting_for_pages_in_the_host_or_in_kvm_are_held_too() {
    for mode in [HostMode::Ring, HostMode::Sync, HostMode::KvmApf, HostMode::KvmApfKernel] {
        let r = run("tests=pnp,kvm_apf", 2, Some(PagerConfig { mode, ..PagerConfig::default() }));
        assert_atomic(&r, 2);
    }
}

/// The memslot self-tests, with the released region in the run too (a memslot the layout does
/// not manage: the guest's move onto it must be refused).
fn run_memslot_tests(hold: bool, vcpus: usize) -> RunResult {
    let mut c = config(guest_elf(), "tests=memslot");
    c.vcpus = vcpus;
    let producers = Producers {
        churn: Some(ChurnConfig { ram_every: None, hold }),
        pager: Some(PagerConfig::default()),
        released: Some(ReleasedConfig::default()),
        ..Producers::defaults()
    };
    run_stub_configured(c, &producers)
}

const MEMSLOT_TESTS: [&str; 2] = [
    "memslot::code_and_data_stay_right_while_the_host_splits_and_merges_their_memslot",
    "memslot::a_hot_added_region_is_found_mapped_used_and_moved",
];

fn assert_memslot_tests_passed(r: &RunResult) {
    assert!(r.passed(), "{:?}\n{}", r.host_error, r.serial.join("\n"));
    let passed: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(passed, MEMSLOT_TESTS, "the self-tests that ran (and passed)");
    let c = &r.report;
    // The guest asked for four splits and four merges, one hot-add and two moves.
    assert_eq!((c.get("churn.region_splits"), c.get("churn.region_merges")), (4, 4));
    assert_eq!((c.get("churn.hot_added"), c.get("churn.moved")), (1, 2));
    // And four moves the host cannot make (wrapping, unaligned, above any physical address,
    // onto the released region), answered status 2 with the run going on.
    assert_eq!(c.get("churn.refused"), 4, "{:?}", r.report.lines);
}

/// Workers on three vCPUs execute code from the churn region and write and check data in it
/// while the host splits and merges its memslot, each change holding every vCPU: the values
/// stay right, no exit hits a change, the dirty log lists every page written; a region
/// hot-added is found, mapped and used, and keeps its data when moved and moved back.
#[test]
fn the_memslot_self_tests_pass_with_every_change_holding_the_vcpus() {
    let r = run_memslot_tests(true, 4);
    assert_memslot_tests_passed(&r);
    let c = &r.report;
    assert_eq!(c.get("layout.held_updates"), 11, "every change held the vCPUs");
    assert_eq!(c.get("layout.unheld_updates"), 0);
    // With every update held no window is ever recorded, so a race exit would be classified as
    // the guest's own error, not the window's: that is the counter that must stay 0 here.
    assert_eq!((c.get("layout.exits_guest_error"), c.get("layout.exits_update_window")), (0, 0));
}

/// The diagnostic mode: the same changes hold no vCPU, and each keeps its window open until a
/// worker hit it, so the race is reproduced by construction, in every window; the host
/// classifies each such exit as the window's (none as the guest's own error), completes it or
/// runs the instruction again, and the guest's values stay right.
#[test]
fn the_diagnostic_mode_reproduces_the_race_in_every_window_and_classifies_each_exit() {
    let r = run_memslot_tests(false, 4);
    assert_memslot_tests_passed(&r);
    let c = &r.report;
    assert_eq!((c.get("layout.held_updates"), c.get("layout.unheld_updates")), (0, 11));
    // Splits and merges have a window (moves far away and the hot-add have none): all eight hit.
    assert_eq!(c.get("churn.windows_missed"), 0, "{:?}", r.report.lines);
    assert!(c.get("layout.exits_update_window") >= 8, "at least one exit per window: {:?}", r.report.lines);
    assert_eq!(c.get("layout.exits_guest_error"), 0, "no exit taken for the guest's own error");
    assert_eq!(c.get("layout.exits_absent_page"), 0);
}

/// Runs `code` as a tiny guest with `handler`, on a thread of its own: the VM's layout, and the
/// run to join.
fn start_tiny(name: &str, code: &[u8], handler: Box<dyn ExitHandler>) -> (LayoutHandle, JoinHandle<RunResult>) {
    let image = temp_file(name, &tiny_elf(code, true, 0));
    let vm = Vm::new(config(&image, ""), vec![handler]).expect("the VM");
    let layout = vm.layout();
    (layout, std::thread::spawn(move || vm.run()))
}

/// Waits until `done` says so, looking every millisecond; the bound only turns a hang into a
/// failure that names `what`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where the blocking region lies: below 4 GiB (the tiny guest's 32-bit code reaches it with
/// paging off), above guest RAM, clear of the local APIC, the IOAPIC and the TSS pages.
const BLOCKING_GPA: u64 = 0xC000_0000;

/// A region whose pages wait in the kernel for the test to supply them (userfaultfd without
/// SIGBUS): a vCPU that touches one blocks inside KVM_RUN, where no signal reaches it.
struct Blocking {
    uffd: Arc<Uffd>,
    host: Arc<std::sync::atomic::AtomicU64>,
}

impl ExitHandler for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> pvagent_host::Result<()> {
        let bytes = 2 << 20;
        let map: pvagent_host::vm_memory::MmapRegion = MmapRegionBuilder::new(bytes)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .expect("map the blocking region");
        let map = Arc::new(map);
        self.uffd.register(map.as_ptr() as u64, bytes as u64).expect("register it with the userfaultfd");
        self.host.store(map.as_ptr() as u64, Ordering::SeqCst);
        // SAFETY: the mapping is `bytes` long, readable and writable, kept by the Arc.
        let backing = unsafe { Backing::new(map.as_ptr() as u64, bytes as u64, map.clone()) };
        ctx.layout.add_before_run(Region { gpa: BLOCKING_GPA, bytes: bytes as u64, backing, flags: 0 })
    }
}

/// A vCPU blocked inside KVM on a userfaultfd page takes no signal here: holding the vCPUs
/// waits until the page is supplied. Forced by events: the test waits for the vCPU's fault to
/// arrive (it is blocked), then until either the hold says it is waiting for that vCPU or the
/// hold returned (which it must not do while the vCPU is blocked: the test fails at once if it
/// did), and only then supplies the page. Then an update (which KVM itself would also make wait:
/// its memslot change waits for the fault's SRCU read section) and the guest reads the supplied
/// value.
#[test]
fn an_update_waits_for_a_vcpu_blocked_in_kvm_on_a_userfaultfd_page() {
    pvagent_tests::require_kvm();
    const VALUE: u32 = 0x5EED_1234;
    let code = Code32::new().load(BLOCKING_GPA as u32).exit_with_eax();
    let uffd = Arc::new(Uffd::new(Missing::Waits).expect("a userfaultfd"));
    let host = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let blocking = Blocking { uffd: uffd.clone(), host: host.clone() };
    let (layout, run) = start_tiny("blocked-in-kvm.elf", &code, Box::new(blocking));
    // The vCPU's load faulted on the page: it waits inside KVM.
    wait_for("fault", || uffd.read_fault().expect("read the userfaultfd").is_some());
    let supplied = Arc::new(AtomicBool::new(false));
    let got_hold = Arc::new(AtomicBool::new(false));
    let update = {
        let (layout, supplied, got_hold) = (layout.clone(), supplied.clone(), got_hold.clone());
        std::thread::spawn(move || {
            let held = layout.hold().expect("the hold");
            got_hold.store(true, Ordering::SeqCst);
            let supplied_first = supplied.load(Ordering::SeqCst);
            drop(held);
            let applied =
                layout.update(&Update::SetFlags { gpa: BLOCKING_GPA, flags: KVM_MEM_LOG_DIRTY_PAGES }, Hold::Vcpus);
            (applied.map(|a| a.stopping), supplied_first)
        })
    };
    wait_for("hold waiting for the blocked vCPU", || {
        assert!(!got_hold.load(Ordering::SeqCst), "the hold returned while the vCPU was blocked inside KVM_RUN");
        layout.waiting_for_vcpus()
    });
    supplied.store(true, Ordering::SeqCst);
    let mut page = [0u8; 4096];
    page[..4].copy_from_slice(&VALUE.to_le_bytes());
    uffd.copy(host.load(Ordering::SeqCst), &page).expect("supply the page");
    let (stopping, supplied_first) = update.join().expect("the update thread");
    let stopping = stopping.expect("the update");
    assert!(supplied_first, "the hold had every vCPU out before the page the blocked vCPU waited for was supplied");
    assert!(stopping.is_some(), "it held the vCPUs");
    let r = run.join().expect("the run");
    assert_eq!(r.guest_exit_code, Some(VALUE), "{:?}", r.host_error);
}

/// The port the tiny guest below writes to, which [`SlowHandling`] handles (no device's).
const SLOW_PORT: u16 = 0x0600;

/// Handles an `out` to [`SLOW_PORT`] slowly: says it started, waits until the test lets it go,
/// says it finished. Handlers read the guest through KVM (KVM_TRANSLATE walks its page tables
/// through the memslots), so an exit being handled must keep a hold waiting like a vCPU in
/// KVM_RUN.
struct SlowHandling {
    handling: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    handled: Arc<AtomicBool>,
}

impl ExitHandler for SlowHandling {
    fn name(&self) -> &'static str {
        "slow-handling"
    }

    fn io_out(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, _data: &[u8]) -> pvagent_host::Result<Handled> {
        if port != SLOW_PORT {
            return Ok(Handled::No);
        }
        self.handling.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.release.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the test did not release the exit within 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.handled.store(true, Ordering::SeqCst);
        Ok(Handled::Yes)
    }
}

/// A vCPU handling an exit is held like one inside KVM_RUN: the hold has every vCPU out only
/// once the exit is handled. Forced by events: the test waits until the vCPU's exit is being
/// handled, asks for a hold on another thread, waits for it to close the gate, and only then
/// lets the handling finish; the hold must see it finished once it has every vCPU out (a gate
/// left as KVM_RUN returns would not: checked by breaking it). The guest then exits normally.
#[test]
fn an_update_waits_for_a_vcpu_handling_an_exit() {
    pvagent_tests::require_kvm();
    const VALUE: u32 = 0x0EA7_0042;
    let code = Code32::new().out(SLOW_PORT, 1).mov_eax(VALUE).exit_with_eax();
    let (handling, release, handled) = (Arc::default(), Arc::default(), Arc::default());
    let slow =
        SlowHandling { handling: Arc::clone(&handling), release: Arc::clone(&release), handled: Arc::clone(&handled) };
    let (layout, run) = start_tiny("slow-handling.elf", &code, Box::new(slow));
    wait_for("exit being handled", || handling.load(Ordering::SeqCst));
    let hold = {
        let (layout, handled) = (layout.clone(), Arc::clone(&handled));
        std::thread::spawn(move || {
            let held = layout.hold().expect("the hold");
            let handled_first = handled.load(Ordering::SeqCst);
            drop(held);
            handled_first
        })
    };
    // Closed, or (a hold that did not wait for the exit) already over.
    wait_for("hold", || layout.holding() || hold.is_finished());
    release.store(true, Ordering::SeqCst);
    let handled_first = hold.join().expect("the hold thread");
    assert!(handled_first, "the hold had every vCPU out while a vCPU's exit was still being handled");
    let r = run.join().expect("the run");
    assert_eq!(r.guest_exit_code, Some(VALUE), "{:?}", r.host_error);
}
