//! End-to-end tests of the host's #VE (mode `ve`) with hand-made 32-bit guests: what a #VE
//! reports and when it arrives on each form of access this machine produces, the busy word's
//! rules, the two requests, the test switches (and the order in which KVM delivers a #VE and an
//! NMI injected together), and the run's time limit over a suspended vCPU. The guest's own
//! #VE handler and its self-tests are the guest's (`cargo xtask run` runs them in mode `ve`).

use pvagent_abi::exit;
use pvagent_abi::hypercall::{Nr, Request, Status};
use pvagent_abi::pnp::{self as pnp, HostMode, RESULT_FAILED, RESULT_RETRY};
use pvagent_abi::ve::{self as abi, fault};
use pvagent_host::producers::Producers;
use pvagent_host::producers::pager::config::{Latency, PagerConfig};
use pvagent_host::producers::pager::error::PagerError;
use pvagent_host::test_images::TINY_LOAD;
use pvagent_host::{Error, RunResult};
use pvagent_tests::{Code32, config, require_kvm, run_stub_configured, run_stub_with, temp_file, tiny_elf};

/// The demand-paged region, below 4 GiB so that 32-bit code with paging off reaches it.
const REGION: u32 = 0x8000_0000;
/// The address the tests access: a word of the region's first page.
const TARGET: u32 = REGION + 0x10;
/// The VE information area (a page of RAM the host zeroed).
const AREA: u32 = 0x22_0000;
/// The GDT and IDT (`Code32::flat_tables`).
const TABLES: u32 = 0x23_0000;
/// A ring of one entry and, a page above, its event area.
const RING: u32 = 0x20_0000;
/// Hypercall parameter blocks: one for the main code, one for the handlers.
const BLOCK: u32 = 0x30_0000;
const HANDLER_BLOCK: u32 = 0x30_0100;
/// Where the #VE handler and the NMI handler begin, from the image's start.
const VE_HANDLER: usize = 0x400;
const NMI_HANDLER: usize = 0x600;
/// Where the event-interrupt handler (vector 0x51) begins.
const EVENT_HANDLER: usize = 0x700;
/// Where the resolution-interrupt handler (vector 0x52) begins.
const RESOLUTION_HANDLER: usize = 0x800;
/// The exit code of a handler that saw what it expected.
const OK: u32 = exit::SUCCESS;
/// The main code's exit code when no #VE came.
const NO_VE: u32 = 0x7E;

/// `ret[0]` and `ret[1]` of a parameter block.
fn ret(block: u32, i: u32) -> u32 {
    block + std::mem::offset_of!(Request, ret) as u32 + 8 * i
}

fn addr(offset: usize) -> u32 {
    (TINY_LOAD as usize + offset) as u32
}

/// The code every test starts with: a stack, the tables with a #VE, an NMI and an event gate,
/// the ABI version announced, and the VE area registered (unless `area` is false).
fn prologue(area: bool) -> Code32 {
    let code = Code32::new()
        .mov_esp(0x28_0000)
        .flat_tables(
            TABLES,
            &[
                (abi::VECTOR, addr(VE_HANDLER)),
                (2, addr(NMI_HANDLER)),
                (0x51, addr(EVENT_HANDLER)),
                (0x52, addr(RESOLUTION_HANDLER)),
            ],
        )
        .announce(pvagent_abi::ABI_VERSION);
    if area { code.wrmsr(abi::MSR_VE_INFO, u64::from(AREA) | abi::MSR_ENABLE) } else { code }
}

/// A ring of one entry registered, its event vector 0x51.
fn with_ring(code: Code32) -> Code32 {
    code.wrmsr(pnp::MSR_VECTORS, 0x5251)
        .wrmsr(pnp::MSR_RING, u64::from(RING) | pnp::MSR_ENABLE)
        .wrmsr(pnp::MSR_DATA, u64::from(RING + 0x1000) | pnp::MSR_ENABLE)
}

/// An image of `main`, then at their offsets the #VE handler, the NMI handler (which exits with
/// the EIP it interrupted), the event handler (which exits with 0x51) and the resolution handler.
fn image(main: Vec<u8>, ve_handler: Vec<u8>) -> Vec<u8> {
    // It waits for the page first, so that no fetch is left running when the guest stops.
    let nmi = Code32::new()
        .load_stack(0)
        .store_eax(0x31_0100)
        .hypercall(0x30_0200, Nr::VeSuspend as u32, TARGET)
        .load(0x31_0100)
        .exit_eax();
    Code32::new()
        .emit(&main)
        .pad_to(VE_HANDLER)
        .emit(&ve_handler)
        .pad_to(NMI_HANDLER)
        .then(nmi)
        .pad_to(EVENT_HANDLER)
        // The event's token comes back once its resolution is consumed.
        .then(spin_until(RING + pnp::ring_head_offset(1) as u32, 1))
        .store(RING + pnp::ring_tail_offset(1) as u32, 1)
        .mov_eax(0x51)
        .exit_eax()
        .pad_to(RESOLUTION_HANDLER)
        // The resolution's interrupt (it outranks the event's) can come first when the fetch
        // completed before the vCPU entered again (a loaded machine): EOI and return, and the
        // event's interrupt follows.
        .store(0xFEE0_00B0, 0)
        .iret()
}

fn run(name: &str, code: Vec<u8>, pager: PagerConfig, timeout_s: u64) -> RunResult {
    require_kvm();
    let image = temp_file(name, &tiny_elf(&code, true, 0));
    let mut c = config(&image, "");
    c.timeout = Some(std::time::Duration::from_secs(timeout_s));
    run_stub_configured(
        c,
        &Producers { sld: None, pager: Some(pager), released: None, churn: None, breaks: Vec::new() },
    )
}

fn ve_pager() -> PagerConfig {
    PagerConfig { region_gpa: u64::from(REGION), region_mib: 2, mode: HostMode::Ve, ..PagerConfig::default() }
}

/// What a handler does once it has read the area: re-arm (`busy` = 0), then request `nr` for
/// `gpa`; the run stops with `code` unless the request succeeded; `ret[0]` left in EAX.
fn rearm_then_request(code: Code32, nr: Nr, gpa: u32, status_code: u32) -> Code32 {
    code.store(AREA + abi::BUSY_OFFSET as u32, 0)
        .hypercall(HANDLER_BLOCK, nr as u32, gpa)
        .expect_eax(Status::Ok as u32, status_code)
        .load(ret(HANDLER_BLOCK, 0))
}

/// Holds the page's fetch back until the #VE's request (`AfterEventTaken`), so that `VePark`
/// always finds the page absent and hands out a token: with the default timing a fetch that
/// completed before the request (a loaded machine delays the handler) made it answer
/// `NO_TOKEN`, and a handler waiting for the token's resolution spun until the run's limit.
fn hold_until_requested(code: Code32, status_code: u32) -> Code32 {
    code.hypercall(BLOCK, Nr::PnpSetTiming as u32, pnp::ResolutionTiming::AfterEventTaken as u32)
        .expect_eax(Status::Ok as u32, status_code)
}

/// Exits with `code` unless EAX holds a token (non-zero): the park path was not taken.
fn expect_token(code: Code32, exit_code: u32) -> Code32 {
    let exit = Code32::new().mov_eax(exit_code).exit_eax();
    // test eax, eax; jnz over the exit.
    code.emit(&[0x85, 0xC0, 0x75, exit.len() as u8]).then(exit)
}

/// The handler's checks of the area a CPL 0 access filled: busy set, an EPT violation of
/// `qualification` at [`TARGET`], no linear address (the MMIO exit does not give one).
fn check_area(code: Code32, qualification: u32) -> Code32 {
    code.load(AREA + abi::BUSY_OFFSET as u32)
        .expect_eax(abi::BUSY, 3)
        .load(AREA + abi::EXIT_REASON_OFFSET as u32)
        .expect_eax(abi::EXIT_REASON_EPT_VIOLATION, 4)
        .load(AREA + abi::QUALIFICATION_OFFSET as u32)
        .expect_eax(qualification, 5)
        .load(AREA + abi::GPA_OFFSET as u32)
        .expect_eax(TARGET, 6)
        .load(AREA + abi::GPA_OFFSET as u32 + 4)
        .expect_eax(0, 7)
}

/// PVM, guest CPL 0: the load is an MMIO exit, completed with the page's true contents before
/// the #VE, which is a trap (EIP after the load). The handler re-arms and suspends: answered
/// "retry" once the page is in.
#[test]
fn a_cpl0_load_completes_then_raises_ve_with_the_area_filled() {
    let main = prologue(true);
    let load_at = addr(main.len());
    let main = main.load(TARGET).exit(NO_VE);
    let handler = Code32::new()
        .expect_eax(pnp::backing_pattern(u64::from(TARGET)) as u32, 1)
        .load_stack(0)
        .expect_eax(load_at + 5, 2);
    let handler = rearm_then_request(check_area(handler, abi::QUAL_READ as u32), Nr::VeSuspend, TARGET, 8)
        .expect_eax(RESULT_RETRY, 9)
        // The page is in now: the load reads it without an exit.
        .load(TARGET)
        .expect_eax(pnp::backing_pattern(u64::from(TARGET)) as u32, 10)
        .exit(OK);
    let r = run("ve-cpl0-load.elf", image(main, handler), ve_pager(), 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    let c = &r.report;
    assert_eq!((c.get("pager.ve_delivered"), c.get("pager.ve_suspends")), (1, 1), "{:?}", c.counters);
    assert_eq!((c.get("pager.mmio_accesses"), c.get("pager.events_delivered")), (1, 0));
    assert!(
        c.lines.iter().any(|l| l.starts_with("pager: #VE: 1 delivered, 0 busy waits, 1 suspends")),
        "{:#?}",
        c.lines
    );
}

/// A CPL 0 store: the area says "write", and the stored value is in the page afterwards.
#[test]
fn a_cpl0_store_raises_ve_reporting_a_write_and_lands_in_the_page() {
    let main = prologue(true).store(TARGET, 0x1234_5678).exit(NO_VE);
    let handler = check_area(Code32::new(), abi::QUAL_WRITE as u32)
        .store(AREA + abi::BUSY_OFFSET as u32, 0)
        .hypercall(HANDLER_BLOCK, Nr::VeSuspend as u32, TARGET)
        .load(TARGET)
        .expect_eax(0x1234_5678, 11)
        .exit(OK);
    let r = run("ve-cpl0-store.elf", image(main, handler), ve_pager(), 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    assert_eq!(r.report.get("pager.ve_delivered"), 1);
}

/// The busy word set: no #VE, the vCPU waits for the page (as VMX makes an ordinary exit);
/// with `IGNORE_BUSY` armed, the host breaks that rule once, as told: the handler's own access
/// to a third absent page (the busy word still set) waits again, and nothing is left armed.
#[test]
fn a_set_busy_word_means_a_synchronous_wait_unless_the_host_is_told_to_ignore_it() {
    let main = prologue(true)
        .store(AREA + abi::BUSY_OFFSET as u32, abi::BUSY)
        .load(TARGET)
        .expect_eax(pnp::backing_pattern(u64::from(TARGET)) as u32, 20)
        .hypercall(BLOCK, Nr::VeSetFaults as u32, fault::IGNORE_BUSY as u32)
        .expect_eax(Status::Ok as u32, 21)
        .load(ret(BLOCK, 0))
        .expect_eax(0, 22)
        .load(TARGET + 0x1000)
        .exit(NO_VE);
    let handler = Code32::new()
        .load(AREA + abi::GPA_OFFSET as u32)
        .expect_eax(TARGET + 0x1000, 6)
        .hypercall(HANDLER_BLOCK, Nr::VeSuspend as u32, TARGET + 0x1000)
        // A second #VE would enter this handler again, and fail its check of the GPA above.
        .load(TARGET + 0x2000)
        .expect_eax(pnp::backing_pattern(u64::from(TARGET + 0x2000)) as u32, 23)
        .hypercall(HANDLER_BLOCK, Nr::VeSetFaults as u32, 0)
        .load(ret(HANDLER_BLOCK, 0))
        .expect_eax(0, 24)
        .exit(OK);
    let r = run("ve-busy.elf", image(main, handler), ve_pager(), 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    let c = &r.report;
    assert_eq!((c.get("pager.ve_busy_waits"), c.get("pager.ve_delivered")), (2, 1), "{:?}", c.counters);
}

/// `VePark`: without a ring, `NoToken`; with one, a token whose resolution comes through the
/// ring; once the page is present, no token and the outcome at once. Every token comes back.
#[test]
fn ve_park_hands_out_a_ring_token_and_answers_a_present_page_at_once() {
    let head = RING + pnp::ring_head_offset(1) as u32;
    let tail = RING + pnp::ring_tail_offset(1) as u32;
    let main = hold_until_requested(prologue(true), 29)
        .hypercall(BLOCK, Nr::VePark as u32, TARGET)
        .expect_eax(Status::NoToken as u32, 30)
        .hypercall(BLOCK, Nr::VePark as u32, 0x1000)
        .expect_eax(Status::InvalidArgument as u32, 31);
    let main = with_ring(main).load(TARGET).exit(NO_VE);
    // Resolution entry 0: `result` then `token`.
    let handler = expect_token(rearm_then_request(Code32::new(), Nr::VePark, TARGET, 32), 37)
        .store_eax(0x31_0000)
        // Wait for the resolution (interrupts are off in the handler): the ring's head.
        .then(spin_until(head, 1))
        .load(RING)
        .expect_eax(RESULT_RETRY, 33)
        .load(RING + 4)
        .then(cmp_eax_with(0x31_0000, 34))
        .store(tail, 1)
        .hypercall(HANDLER_BLOCK, Nr::VePark as u32, TARGET)
        .expect_eax(Status::Ok as u32, 35)
        .load(ret(HANDLER_BLOCK, 0))
        .expect_eax(abi::NO_TOKEN as u32, 36)
        .load(ret(HANDLER_BLOCK, 1))
        .expect_eax(RESULT_RETRY, 37)
        .exit(OK);
    let r = run("ve-park.elf", image(main, handler), ve_pager(), 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    let c = &r.report;
    assert_eq!((c.get("pager.ve_parks"), c.get("pager.resolved_retry"), c.get("pager.outstanding")), (1, 1, 0));
}

/// `jmp` back to a load of `addr` until it reads `value` (waiting on the host's store, not on
/// time).
fn spin_until(addr: u32, value: u32) -> Code32 {
    let body = Code32::new().load(addr).emit(&[0x3D]).emit(&value.to_le_bytes());
    let back = -(body.len() as i8 + 2);
    body.emit(&[0x75, back as u8])
}

/// `cmp eax, [addr]`, exiting with `code` if they differ.
fn cmp_eax_with(addr: u32, code: u32) -> Code32 {
    let exit = Code32::new().mov_eax(code).exit_eax();
    Code32::new().emit(&[0x3B, 0x05]).emit(&addr.to_le_bytes()).emit(&[0x74, exit.len() as u8]).then(exit)
}

/// A failed page: the #VE comes (a failed page is still reported), and the suspend answers
/// "failed" instead of stopping the run.
#[test]
fn a_suspend_on_a_failed_page_answers_failed() {
    let main = prologue(true).load(TARGET).exit(NO_VE);
    let handler = rearm_then_request(Code32::new(), Nr::VeSuspend, TARGET, 40).expect_eax(RESULT_FAILED, 41).exit(OK);
    let r = run("ve-failed.elf", image(main, handler), PagerConfig { fail_pages: vec![0], ..ve_pager() }, 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    assert_eq!(r.report.get("pager.resolved_failed"), 0, "no token: nothing resolved on a ring");
}

/// `NMI_WITH_NEXT_VE`: the #VE is injected as in delivery with a hardware execute breakpoint
/// on the #VE handler's address; at that breakpoint's exit, before the handler's first
/// instruction runs, the host injects the NMI. The NMI handler reports the EIP it interrupted:
/// the #VE handler's first instruction. (An NMI merely made pending with the #VE was measured to
/// arrive only at the handler's first exit, some instructions in.)
#[test]
fn an_nmi_armed_with_the_next_ve_is_taken_at_the_ve_handlers_first_instruction() {
    let main = prologue(true)
        .hypercall(BLOCK, Nr::VeSetFaults as u32, fault::NMI_WITH_NEXT_VE as u32)
        .expect_eax(Status::Ok as u32, 50)
        .hypercall(BLOCK, Nr::VeSetFaults as u32, 1 << 5)
        .expect_eax(Status::InvalidArgument as u32, 51)
        .load(TARGET)
        .exit(NO_VE);
    // Reached only if the NMI is not taken first.
    let handler = Code32::new().exit(0x52);
    let r = run("ve-nmi-with-ve.elf", image(main, handler), ve_pager(), 60);
    assert_eq!(r.guest_exit_code, Some(addr(VE_HANDLER)), "the EIP the NMI interrupted; {:?}", r.host_error);
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.report.get("pager.ve_delivered"), 1);
}

/// `NMI_WITH_NEXT_VE` with a #VE gate whose present bit is clear (the handler's address and
/// selector in it as before): the host places no breakpoint, and stops the run before
/// injecting the #VE, instead of arming one at a handler the #VE would never reach.
#[test]
fn an_nmi_armed_with_no_present_ve_gate_stops_the_run_before_the_ve() {
    let (gate, handler) = (TABLES + 0x100 + 8 * u32::from(abi::VECTOR), addr(VE_HANDLER));
    let main = Code32::new()
        .mov_esp(0x28_0000)
        .flat_tables(TABLES, &[(2, addr(NMI_HANDLER))])
        // `flat_tables`'s gate with P (bit 15 of the second word) clear.
        .store(gate, (0x08 << 16) | (handler & 0xFFFF))
        .store(gate + 4, (handler & 0xFFFF_0000) | 0x0E00)
        .announce(pvagent_abi::ABI_VERSION)
        .wrmsr(abi::MSR_VE_INFO, u64::from(AREA) | abi::MSR_ENABLE)
        .hypercall(BLOCK, Nr::VeSetFaults as u32, fault::NMI_WITH_NEXT_VE as u32)
        .expect_eax(Status::Ok as u32, 50)
        .load(TARGET)
        .exit(NO_VE);
    let r = run("ve-nmi-no-gate.elf", image(main, Code32::new().exit(0x52)), ve_pager(), 60);
    assert!(matches!(r.host_error, Some(Error::Pager(PagerError::NoVeHandler { vcpu: 0 }))), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, None);
}

/// Under `AfterEventTaken` a #VE the handler leaves unanswered holds its page's fetch back (a
/// zero latency: the fetch is done, and held back, before the #VE is delivered); `forget` (run
/// by the handler) must end that: the handler then waits, polling `PnpStats`, until the page
/// has been fetched. Without the release it would poll until the run's limit.
fn an_unanswered_ve_stops_holding_its_fetch(name: &str, forget: Code32) {
    let main = prologue(true)
        .hypercall(BLOCK, Nr::PnpSetTiming as u32, pnp::ResolutionTiming::AfterEventTaken as u32)
        .expect_eax(Status::Ok as u32, 70)
        .load(TARGET)
        .exit(NO_VE);
    let poll = Code32::new()
        .hypercall(HANDLER_BLOCK, Nr::PnpStats as u32, pnp::HostCounter::PagesFetched as u32)
        .load(ret(HANDLER_BLOCK, 0))
        // cmp eax, 1
        .emit(&[0x83, 0xF8, 0x01]);
    // jne rel32 back to the poll's start.
    let back = -(poll.len() as i32 + 6);
    let handler = forget.then(poll).emit(&[0x0F, 0x85]).emit(&back.to_le_bytes()).exit(OK);
    let latency = Latency { min: std::time::Duration::ZERO, max: std::time::Duration::ZERO };
    let r = run(name, image(main, handler), PagerConfig { latency, ..ve_pager() }, 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    let c = &r.report;
    let counts = ["pager.ve_delivered", "pager.fetches_held_back", "pager.ve_suspends"];
    assert_eq!(counts.map(|k| c.get(k)), [1, 1, 0], "{:?}", c.counters);
}

/// Disabling the VE area forgets its unanswered #VE.
#[test]
fn disabling_the_ve_area_releases_the_fetch_its_unanswered_ve_held() {
    an_unanswered_ve_stops_holding_its_fetch("ve-forget-msr.elf", Code32::new().wrmsr(abi::MSR_VE_INFO, 0));
}

/// Leaving mode `ve` forgets every unanswered #VE.
#[test]
fn leaving_mode_ve_releases_the_fetch_an_unanswered_ve_held() {
    let forget = Code32::new()
        .hypercall(HANDLER_BLOCK, Nr::PnpSetMode as u32, HostMode::Ring as u32)
        .expect_eax(Status::Ok as u32, 71);
    an_unanswered_ve_stops_holding_its_fetch("ve-forget-mode.elf", forget);
}

/// `VeInjectNmi`: the NMI is taken right after the hypercall's `out`.
#[test]
fn ve_inject_nmi_lands_right_after_the_out() {
    let main = prologue(true).store(BLOCK, Nr::VeInjectNmi as u32).mov_eax(BLOCK);
    let after_out = addr(main.len() + Code32::new().out_eax(pvagent_abi::port::HYPERCALL).len());
    let main = main.out_eax(pvagent_abi::port::HYPERCALL).exit(NO_VE);
    let r = run("ve-inject-nmi.elf", image(main, Code32::new().exit(0x52)), ve_pager(), 60);
    assert_eq!(r.guest_exit_code, Some(after_out), "{:?}", r.host_error);
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
}

/// A vCPU with no VE area in mode `ve` gets what mode `ring` gives it: an event on its ring
/// (interrupts on), no #VE.
#[test]
fn a_vcpu_without_a_ve_area_gets_the_ring_in_mode_ve() {
    // The local APIC software-enabled (SVR bit 8), or no interrupt is delivered.
    let main = with_ring(prologue(false)).store(0xFEE0_00F0, 0x1FF).sti().load(TARGET).spin();
    let r = run("ve-no-area.elf", image(main, Code32::new().exit(0x52)), ve_pager(), 60);
    assert_eq!(r.guest_exit_code, Some(0x51), "the event handler ran; {:?}", r.host_error);
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    let c = &r.report;
    assert_eq!((c.get("pager.events_delivered"), c.get("pager.ve_delivered"), c.get("pager.outstanding")), (1, 0, 0));
}

/// `--timeout` holds while a vCPU is suspended: a page 10 s away (the longest latency), a limit of a few seconds; the
/// wait ends at the limit (the report counts it), not when the page arrives. The limit must come
/// while the vCPU waits, after the guest reached its suspend: a run whose limit came first (no
/// suspend yet, on a loaded machine) did not take the path and is run again with a longer limit,
/// still short of the page.
fn the_time_limit_ends_a_suspend(name: &str, mode: HostMode, code: Vec<u8>) {
    let page_after = std::time::Duration::from_secs(10);
    let latency = Latency { min: page_after, max: page_after };
    for (attempt, seconds) in [3u64, 6].into_iter().enumerate() {
        let r = run(name, code.clone(), PagerConfig { latency, mode, ..ve_pager() }, seconds);
        assert!(matches!(r.host_error, Some(Error::Timeout { seconds: s }) if s == seconds), "{:?}", r.host_error);
        if attempt == 0 && r.report.get("pager.ve_suspends") == 0 {
            eprintln!("the limit of {seconds} s came before the suspend (a loaded machine): again with a longer one");
            continue;
        }
        assert_eq!(r.guest_exit_code, None, "the guest did not run on");
        assert_eq!(r.report.get("pager.ve_suspends"), 1, "{:?}", r.report.counters);
        assert_eq!(r.report.get("pager.waits_ended_at_time_limit"), 1, "{:?}", r.report.counters);
        // Ending before the page came is the time limit's doing; this bound only turns a wait
        // for the page into a failure.
        assert!(r.run_time < page_after, "the run took {:?}", r.run_time);
        return;
    }
    panic!("the limit came before the suspend twice");
}

/// Mode `ve`: the suspend a #VE handler makes.
#[test]
fn the_time_limit_ends_a_suspended_vcpus_wait() {
    let main = prologue(true).load(TARGET).exit(NO_VE);
    let handler = Code32::new()
        .store(AREA + abi::BUSY_OFFSET as u32, 0)
        .hypercall(HANDLER_BLOCK, Nr::VeSuspend as u32, TARGET)
        .exit(OK);
    the_time_limit_ends_a_suspend("ve-timeout.elf", HostMode::Ve, image(main, handler));
}

/// Mode `kvm-apf-kernel`, where KVM serves the region's faults but the host still serves
/// `VeSuspend`: the limit ends that wait too (it once ended only when the page came).
#[test]
fn the_time_limit_ends_a_suspend_where_kvm_serves_the_faults() {
    let main = prologue(true).hypercall(BLOCK, Nr::VeSuspend as u32, TARGET).exit(NO_VE);
    let code = image(main, Code32::new().exit(0x52));
    the_time_limit_ends_a_suspend("ve-timeout-kernel.elf", HostMode::KvmApfKernel, code);
}

/// PVM, guest CPL 0, a LOCKed read-modify-write: its load is an MMIO exit, which raises #VE as
/// any CPL 0 load does; then KVM cannot emulate the locked write and gives up on the whole
/// instruction: the host makes the page present on the synchronous path, and the #VE, still
/// being injected, is delivered as a fault (EIP at the instruction, which has not run). The
/// handler returns to it, and it runs natively, once.
#[test]
fn a_locked_add_to_an_absent_page_adds_once_in_mode_ve() {
    let marker = 0x31_0200;
    // The page stays absent until the #VE's request, so that the locked write always finds it
    // so (a fetch that beat KVM's attempt would make the path a different one).
    let main = prologue(true)
        .hypercall(BLOCK, Nr::PnpSetTiming as u32, pnp::ResolutionTiming::AfterEventTaken as u32)
        .expect_eax(Status::Ok as u32, 62);
    let add_at = addr(main.len());
    // lock add dword [TARGET], 1
    let main = main
        .emit(&[0xF0, 0x83, 0x05])
        .emit(&TARGET.to_le_bytes())
        .emit(&[1])
        .load(TARGET)
        .expect_eax((pnp::backing_pattern(u64::from(TARGET)) as u32).wrapping_add(1), 60)
        .load(marker)
        .expect_eax(1, 61)
        .load(marker + 4)
        .exit_with_eax();
    let handler = Code32::new()
        .store(marker, 1)
        .load_stack(0)
        .store_eax(marker + 4)
        .store(AREA + abi::BUSY_OFFSET as u32, 0)
        .hypercall(HANDLER_BLOCK, Nr::VeSuspend as u32, TARGET)
        .expect_eax(Status::Ok as u32, 63)
        // The page is present by now (the synchronous path made it so): "retry" at once.
        .load(ret(HANDLER_BLOCK, 0))
        .expect_eax(RESULT_RETRY, 64)
        // IRETD by hand (KVM cannot emulate a 32-bit protected-mode IRET; interrupts stay
        // off): drop the frame, jump to the EIP it held.
        .emit(&[0x83, 0xC4, 0x0C, 0xFF, 0x25])
        .emit(&(marker + 4).to_le_bytes())
        .spin();
    let r = run("ve-locked-add.elf", image(main, handler), ve_pager(), 60);
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, Some(add_at), "the EIP the #VE reported: the locked add's own");
    let c = &r.report;
    let counts = ["pager.ve_delivered", "pager.unemulated_accesses", "pager.sync_waits", "pager.ve_suspends"];
    assert_eq!(counts.map(|k| c.get(k)), [1, 1, 1, 1], "{:?}", c.counters);
}

/// The guest registers a VE area on every vCPU, so in mode `ve` its accesses to absent pages
/// come as #VE, never as the ring's events: its #VE self-tests pass (every path: park, HLT loop,
/// suspend, the re-entries, failed pages), and the host's accounting balances (every park token
/// consumed). A vCPU without an area getting the ring's protocol is the hand-made guests' row
/// above.
#[test]
fn the_guests_ve_self_tests_pass_in_mode_ve_and_every_token_is_consumed() {
    let pager = PagerConfig { mode: HostMode::Ve, ..PagerConfig::default() };
    let r = run_stub_with(
        "tests=ve",
        &Producers { sld: None, pager: Some(pager), released: None, churn: None, breaks: Vec::new() },
    );
    // A deadline report names only a wait that lasted past the deadline (its own tests' readers
    // aside): none early, whatever the machine's speed.
    assert_eq!(pvagent_tests::early_deadline_reports(&r), Vec::<&String>::new());
    let failed: Vec<_> = r.tests.iter().filter(|t| t.status == pvagent_abi::report::Status::Fail).collect();
    assert!(r.passed(), "{failed:#?}\n{:?}", r.host_error);
    assert!(r.tests.len() >= 13, "{:#?}", r.tests);
    assert!(r.tests.iter().all(|t| t.status == pvagent_abi::report::Status::Pass), "{:#?}", r.tests);
    let c = &r.report;
    assert!(c.get("pager.ve_delivered") > 0 && c.get("pager.ve_parks") > 0, "{:?}", c.counters);
    assert!(c.get("pager.ve_suspends") > 0 && c.get("pager.ve_busy_waits") > 0, "{:?}", c.counters);
    assert_eq!((c.get("pager.events_delivered"), c.get("pager.outstanding")), (0, 0), "{:?}", c.counters);
}

/// A park token the guest never consumes is a leaked ring token: the run fails as for an
/// event's.
#[test]
fn a_park_token_left_out_fails_the_run() {
    let main = hold_until_requested(with_ring(prologue(true)), 72).load(TARGET).exit(NO_VE);
    // Parked, the resolution waited for (so that no fetch is left running), never consumed.
    let handler = expect_token(rearm_then_request(Code32::new(), Nr::VePark, TARGET, 70), 73)
        .then(spin_until(RING + pnp::ring_head_offset(1) as u32, 1))
        .exit(OK);
    let r = run("ve-park-leak.elf", image(main, handler), ve_pager(), 60);
    assert_eq!(r.guest_exit_code, Some(OK));
    assert!(
        matches!(r.host_error, Some(Error::Pager(PagerError::LeakedTokens { outstanding: 1, fetching: 0 }))),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.report.get("pager.ve_parks"), 1);
}

/// Where the CPL 3 test's user code begins, from the image's start.
const USER_CODE: usize = 0xA00;

/// A #VE raised for CPL 3 code: delivered through the TSS's kernel stack, the frame holding the
/// user CS. These hand-made guests run with paging off, and PVM then emulates CPL 3 code too
/// (measured: with paging off the load is an MMIO exit, as at CPL 0; enabling 32-bit or PAE
/// paging from them triple-faulted here, so the EFAULT row is left to the guest's self-tests):
/// the load completes first and the #VE is a trap, EIP past it, no linear address. CPL 3 is
/// reached with SYSEXIT, which KVM emulates in 32-bit protected mode (it cannot emulate a
/// protected-mode IRET).
#[test]
fn a_cpl3_load_raises_ve_on_the_kernel_stack_with_the_user_frame() {
    let tss = TABLES + 0x800;
    let gdtr = TABLES + 0x80;
    let main = prologue(true)
        // GDT entries 3 and 4: flat user code and data (DPL 3), as SYSEXIT expects them
        // 16 and 24 bytes above SYSENTER_CS; entry 5: the TSS.
        .store(TABLES + 24, 0xFFFF)
        .store(TABLES + 28, 0x00CF_FA00)
        .store(TABLES + 32, 0xFFFF)
        .store(TABLES + 36, 0x00CF_F200)
        .store(TABLES + 40, ((tss & 0xFFFF) << 16) | 0x67)
        .store(TABLES + 44, (tss & 0xFF00_0000) | 0x8900 | ((tss >> 16) & 0xFF))
        .store(gdtr, (TABLES << 16) | 47)
        .lgdt(gdtr)
        // The TSS's ESP0 and SS0: the #VE's stack.
        .store(tss + 4, 0x27_0000)
        .store(tss + 8, 0x10)
        .mov_eax(0x28)
        .emit(&[0x0F, 0x00, 0xD8]) // ltr ax
        .wrmsr(0x174, 0x08) // IA32_SYSENTER_CS
        .imm_ecx_edx(0x26_0000, addr(USER_CODE))
        .emit(&[0x0F, 0x35]) // sysexit
        .spin();
    let after_load = addr(USER_CODE + 5);
    let handler = Code32::new()
        .load_stack(0)
        .expect_eax(after_load, 80)
        .load_stack(4)
        .expect_eax(0x1B, 81)
        // The user stack pointer SYSEXIT set, saved by the privilege change.
        .load_stack(12)
        .expect_eax(0x26_0000, 82);
    let handler = check_area(handler, abi::QUAL_READ as u32);
    let handler = rearm_then_request(handler, Nr::VeSuspend, TARGET, 85).expect_eax(RESULT_RETRY, 86).exit(OK);
    let code = Code32::new().emit(&image(main, handler)).pad_to(USER_CODE).load(TARGET).spin();
    let r = run("ve-cpl3-load.elf", code, ve_pager(), 60);
    assert!(r.passed(), "exit {:?}: {:?}", r.guest_exit_code, r.host_error);
    let c = &r.report;
    assert_eq!((c.get("pager.mmio_accesses"), c.get("pager.ve_delivered")), (1, 1), "{:?}", c.counters);
}
