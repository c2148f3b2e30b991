//! End-to-end tests of the host stub against a hostile guest, with hand-made 32-bit guests:
//! registrations that break the ABI's rules (areas outside RAM, in MMIO, misaligned, over each
//! other; reserved bits) get #GP at the very WRMSR; a guest that never drains its ring gets its
//! pages synchronously and a run that ends naming the cause; the time limit ends a wait in the
//! host for a page; and no run leaves a thread behind.

use pvagent_abi::pnp::{self as pnp, HostMode};
use pvagent_abi::{exit, sld, ve};
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::{Latency, PagerConfig};
use pvagent_host::producers::pager::error::PagerError;
use pvagent_host::producers::sld::SldConfig;
use pvagent_host::test_images::TINY_LOAD;
use pvagent_host::{Error, RunResult};
use pvagent_tests::{Code32, config, require_kvm, run_stub_configured, temp_file, tiny_elf};

/// The demand-paged region, below 4 GiB so that 32-bit code with paging off reaches it.
const REGION: u32 = 0x8000_0000;
/// Words of the region's first two pages.
const PAGE_0: u32 = REGION + 0x10;
const PAGE_1: u32 = REGION + 0x1010;
/// The GDT and IDT (`Code32::flat_tables`).
const TABLES: u32 = 0x23_0000;
/// A ring of one entry (16 bytes) and, a page above, its event area.
const RING: u32 = 0x20_0000;
const EVENTS: u32 = 0x20_1000;
/// Where the handlers begin, from the image's start.
const GP_HANDLER: usize = 0x400;
const EVENT_HANDLER: usize = 0x500;
/// The event and resolution vectors: the event's priority class (6) above the resolution's (5),
/// so that a task priority of 0x50 lets events in and keeps resolution interrupts out.
const VECTORS: u64 = 0x5261;
const EVENT_VECTOR: u8 = 0x61;
/// The local APIC's task priority, spurious-interrupt and EOI registers (xAPIC MMIO).
const APIC_TPR: u32 = 0xFEE0_0080;
const APIC_SVR: u32 = 0xFEE0_00F0;
const APIC_EOI: u32 = 0xFEE0_00B0;
/// Exit codes: the code ran past the write that should have raised #GP.
const NO_GP: u32 = 0x7E;

fn addr(offset: usize) -> u32 {
    (TINY_LOAD as usize + offset) as u32
}

/// A stack, the tables with a #GP gate and the page-not-present vectors' gates, the ABI version
/// announced (until then every MSR of the host's raises #GP, which would pass for the answer).
fn prologue() -> Code32 {
    Code32::new()
        .mov_esp(0x28_0000)
        .flat_tables(TABLES, &[(13, addr(GP_HANDLER)), (EVENT_VECTOR, addr(EVENT_HANDLER))])
        .announce(pvagent_abi::ABI_VERSION)
}

/// The image: `main`, a #GP handler that exits with the EIP it interrupted (above the error
/// code), and `event` at the event vector's gate. (No handler returns: `iretd` in a 32-bit
/// kernel is an instruction this machine's emulator cannot run.)
fn image(main: Code32, event: Code32) -> Vec<u8> {
    main.pad_to(GP_HANDLER).then(Code32::new().load_stack(4).exit_eax()).pad_to(EVENT_HANDLER).then(event).spin()
}

fn pager(mode: HostMode) -> PagerConfig {
    PagerConfig { region_gpa: u64::from(REGION), region_mib: 2, mode, ..PagerConfig::default() }
}

fn run(name: &str, code: Vec<u8>, pager: PagerConfig, timeout_s: u64) -> RunResult {
    require_kvm();
    let image = temp_file(name, &tiny_elf(&code, true, 0));
    let mut c = config(&image, "");
    c.timeout = Some(std::time::Duration::from_secs(timeout_s));
    let producers = Producers {
        sld: Some(SldConfig::default()),
        pager: Some(pager),
        released: None,
        churn: None,
        breaks: Vec::new(),
    };
    run_stub_configured(c, &producers)
}

/// `setup`, then a WRMSR of `value` to `msr` that must raise #GP: the #GP handler exits with
/// that WRMSR's address (a #GP anywhere else, or none, is another exit code).
fn expect_gp(name: &str, setup: Code32, msr: u32, value: u64) -> RunResult {
    // `Code32::wrmsr` is three 5-byte moves, then the WRMSR.
    let wrmsr_at = addr(setup.len() + 15);
    let r =
        run(name, image(setup.wrmsr(msr, value).mov_eax(NO_GP).exit_eax(), Code32::new()), pager(HostMode::Ring), 60);
    assert_eq!(
        r.guest_exit_code,
        Some(wrmsr_at),
        "{name}: #GP at the WRMSR of {value:#x} to {msr:#x}; {:?}",
        r.host_error
    );
    assert!(r.host_error.is_none(), "{name}: {:?}", r.host_error);
    r
}

fn vectors(code: Code32) -> Code32 {
    code.wrmsr(pnp::MSR_VECTORS, VECTORS)
}

fn with_ring(code: Code32) -> Code32 {
    vectors(code).wrmsr(pnp::MSR_RING, u64::from(RING) | pnp::MSR_ENABLE)
}

/// Every registration that breaks a rule of docs/abi.md raises #GP at its WRMSR: outside RAM,
/// in the local APIC's MMIO page, misaligned, with reserved bits, and over another area (the
/// vCPU's own ring, another protocol's); the same areas side by side are accepted.
#[test]
fn registrations_that_break_the_rules_get_gp_at_the_wrmsr() {
    let enable = pnp::MSR_ENABLE;
    // Side by side, not overlapping: accepted (the cases below are refused for their own reason).
    let adjacent = with_ring(prologue())
        .wrmsr(pnp::MSR_DATA, u64::from(RING + 0x40) | enable)
        .wrmsr(ve::MSR_VE_INFO, u64::from(RING + 0x1000) | ve::MSR_ENABLE);
    let r = run(
        "hostile-adjacent.elf",
        image(adjacent.mov_eax(NO_GP).exit_eax(), Code32::new()),
        pager(HostMode::Ring),
        60,
    );
    assert_eq!(r.guest_exit_code, Some(NO_GP), "{:?}", r.host_error);
    assert_eq!(r.report.get("pager.overlapping_areas_refused"), 0);

    let ram_end = 128u64 << 20;
    expect_gp("hostile-ring-past-ram.elf", vectors(prologue()), pnp::MSR_RING, ram_end | enable);
    expect_gp("hostile-ring-in-the-apic.elf", vectors(prologue()), pnp::MSR_RING, 0xFEE0_0000 | enable);
    expect_gp("hostile-ve-in-the-apic.elf", prologue(), ve::MSR_VE_INFO, 0xFEE0_0000 | ve::MSR_ENABLE);
    expect_gp("hostile-events-misaligned.elf", with_ring(prologue()), pnp::MSR_DATA, u64::from(EVENTS + 0x20) | enable);
    expect_gp("hostile-vectors-reserved.elf", prologue(), pnp::MSR_VECTORS, 0x5251 | 1 << 17);
    expect_gp("hostile-test-ctrl-reserved.elf", prologue(), sld::MSR_TEST_CTRL, 1);
    let r = expect_gp("hostile-events-over-ring.elf", with_ring(prologue()), pnp::MSR_DATA, u64::from(RING) | enable);
    assert_eq!(r.report.get("pager.overlapping_areas_refused"), 1);
    let r = expect_gp("hostile-ve-over-ring.elf", with_ring(prologue()), ve::MSR_VE_INFO, u64::from(RING) | 1);
    assert_eq!(r.report.get("pager.overlapping_areas_refused"), 1);
    // A ring of 256 entries (2056 bytes) over an event area registered first.
    let events = vectors(prologue()).wrmsr(pnp::MSR_DATA, u64::from(RING + 0x800) | enable);
    let r = expect_gp("hostile-ring-over-events.elf", events, pnp::MSR_RING, u64::from(RING) | 8 << 1 | enable);
    assert_eq!(r.report.get("pager.overlapping_areas_refused"), 1);
}

/// A guest that takes its events but never drains its ring: its one token stays outstanding,
/// so no further event can be delivered (docs/abi.md, "When the event is delivered": a token
/// must be free) though everything else allows one (interrupts on, the event area free, the task
/// priority below the event's), and its absent pages are served synchronously; the run does not
/// hang, and ends with the leaked token and a report line naming the ring the guest never
/// consumed. The task priority keeps the resolution interrupt out, as a guest that ignores it.
#[test]
fn a_guest_that_never_drains_its_ring_is_served_synchronously_and_named() {
    const NO_EVENT: u32 = 0x7D;
    let main = with_ring(prologue())
        .wrmsr(pnp::MSR_DATA, u64::from(EVENTS) | pnp::MSR_ENABLE)
        .store(APIC_SVR, 0x1FF)
        .store(APIC_TPR, 0x50)
        .sti()
        .load(PAGE_0)
        .mov_eax(NO_EVENT)
        .exit_eax();
    // The event taken: the area freed, interrupts on again, and on without returning (the
    // access is made again, then another page's).
    let event = Code32::new()
        .store(EVENTS, 0)
        .store(APIC_EOI, 0)
        .sti()
        .load(PAGE_0)
        .load(PAGE_1)
        .mov_eax(exit::SUCCESS)
        .exit_eax();
    let code = image(main, event);
    let r = run("hostile-never-drains.elf", code, pager(HostMode::Ring), 60);
    assert_eq!(r.guest_exit_code, Some(exit::SUCCESS), "{:?}", r.host_error);
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::LeakedTokens { outstanding: 1, fetching: 0 }))),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
    let c = &r.report;
    assert_eq!(c.get("pager.events_delivered"), 1, "{:?}", c.counters);
    assert!(c.get("pager.sync_waits") >= 1, "{:?}", c.counters);
    assert_eq!(c.get("pager.pages_fetched"), 2, "{:?}", c.counters);
    let line = "pager: vCPU 0 never consumed 1 resolution(s) the host posted to its ring (head 1, its tail 0)";
    assert!(r.report.lines.iter().any(|l| l.starts_with(line)), "{:#?}", r.report.lines);
}

/// `--timeout` holds while the host waits for a page on the vCPU's behalf: in mode `sync`, an
/// access to a page 10 s away (the longest latency), a limit of a few seconds; the wait ends at
/// the limit (counted), not when the page comes, and the pager's threads (fetchers, poller) and
/// the vCPU's are all joined. A run whose limit came before the access (a loaded machine) did
/// not take the path and is run again with a longer limit, still short of the page. Alone in a
/// process, so that no other test's threads are counted.
#[test]
fn the_time_limit_ends_a_synchronous_wait_and_leaves_no_thread_behind() {
    use pvagent_tests::{alone_in_a_process, thread_count};
    if !alone_in_a_process("the_time_limit_ends_a_synchronous_wait_and_leaves_no_thread_behind") {
        return;
    }
    let page_after = std::time::Duration::from_secs(10);
    let slow = PagerConfig { latency: Latency { min: page_after, max: page_after }, ..pager(HostMode::Sync) };
    let code = image(prologue().load(PAGE_0).mov_eax(exit::SUCCESS).exit_eax(), Code32::new());
    // A first run, so that anything started for good (none is known) is not counted as left.
    let _ = run("hostile-sync-warm-up.elf", code.clone(), pager(HostMode::Sync), 60);
    let before = thread_count();
    for (attempt, seconds) in [3u64, 6].into_iter().enumerate() {
        let r = run("hostile-sync-timeout.elf", code.clone(), slow.clone(), seconds);
        assert!(matches!(r.host_error, Some(Error::Timeout { seconds: s }) if s == seconds), "{:?}", r.host_error);
        assert_eq!(r.exit_status(), 2);
        assert_eq!(thread_count(), before, "threads left behind");
        if attempt == 0 && r.report.get("pager.sync_waits") == 0 {
            eprintln!("the limit of {seconds} s came before the access (a loaded machine): again with a longer one");
            continue;
        }
        assert_eq!(r.guest_exit_code, None, "the guest did not run on");
        assert_eq!(r.report.get("pager.sync_waits"), 1, "{:?}", r.report.counters);
        assert_eq!(r.report.get("pager.waits_ended_at_time_limit"), 1, "{:?}", r.report.counters);
        // This bound only turns a wait for the page into a failure.
        assert!(r.run_time < page_after, "the run took {:?}", r.run_time);
        return;
    }
    panic!("the limit came before the access twice");
}
