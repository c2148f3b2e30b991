//! End-to-end tests of the ABI version exchange (`pvagent_abi::version`): a guest tells a host
//! of its major its version, once, before it uses anything else; a guest uses nothing of a host
//! of another major; a host told another major stops the run; and before the announcement the
//! host stub serves none of its own interfaces.

use pvagent_abi::report::Status;
use pvagent_abi::{ABI_VERSION, AbiVersion};
use pvagent_host::Error;
use pvagent_host::producers::Producers;
use pvagent_host::test_images::TINY_LOAD;
use pvagent_tests::{Code32, config, guest_elf, run_stub, run_stub_configured, temp_file, tiny_elf};

#[test]
fn the_guest_tells_a_host_of_its_major_its_version_once_before_anything_else() {
    let r = run_stub("tests=arch::hypercall_round_trip,arch::the_abi_version_is_announced_once,pnp,ac");
    assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
    let c = &r.report;
    assert_eq!(c.get("basics.guest_abi_version"), u64::from(ABI_VERSION.to_raw()));
    assert!(c.get("basics.pings") >= 1, "the guest used the host's hypercalls");
    assert!(c.get("pager.events_delivered") > 0 && c.get("sld.triggers") > 0, "the guest used the producers");
    // Nothing came before the announcement (the host would have refused it), and the guest's
    // self-test tried one second announcement, which the host refused.
    assert_eq!(c.get("basics.refused_before_announcement"), 0);
    assert_eq!(c.get("basics.version_writes_refused"), 1);
}

#[test]
fn a_guest_uses_nothing_of_a_host_of_another_major() {
    // Every arch test (the timer's included: without the host stub's leaf the guest calibrates
    // its TSC against the APIC timer, and `arch::timer_ticks` checks the timer's programming and
    // that ticks arrive, not how long they take), and every protocol.
    let mut c = config(guest_elf(), "tests=arch,pnp,ac");
    let other = AbiVersion::new(ABI_VERSION.major + 1, 0);
    c.abi_version = other;
    let r = run_stub_configured(c, &Producers::defaults());
    assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
    let expected = format!("boot: the host stub speaks ABI {other}, this guest ABI {ABI_VERSION}: another major");
    assert!(r.serial.iter().any(|l| l.starts_with(&expected)), "{:#?}", r.serial);
    let c = &r.report;
    assert_eq!(c.get("basics.guest_abi_version"), 0, "the guest announced itself");
    assert_eq!(c.get("basics.refused_before_announcement"), 0, "the guest touched the host stub's interfaces");
    assert_eq!(c.get("basics.pings"), 0, "the guest made a hypercall");
    assert_eq!(c.get("pager.events_delivered") + c.get("pager.sync_waits"), 0, "the guest used the pager");
    assert_eq!(c.get("sld.triggers"), 0, "the guest used the split-lock trigger");
    let ticks = r.test("arch::timer_ticks").expect("arch::timer_ticks reported");
    assert_eq!(ticks.status, Status::Pass, "{}", ticks.reason);
    // Every test that needs the host stub says so instead of running.
    for name in
        ["arch::hypercall_round_trip", "pnp::registration_is_accepted", "ac::host_injects_only_real_split_locks"]
    {
        let t = r.test(name).unwrap_or_else(|| panic!("{name} did not report"));
        assert_eq!(t.status, Status::Skip, "{name}: {}", t.reason);
    }
}

#[test]
fn a_guest_announcing_another_major_stops_the_run() {
    let r = run_stub("tests=arch::deliberately_announce_another_abi_major");
    let other = AbiVersion::new(ABI_VERSION.major + 1, 0);
    assert!(
        matches!(r.host_error, Some(Error::GuestAbiMajor { guest, host }) if guest == other && host == ABI_VERSION),
        "{:?}",
        r.host_error
    );
    assert_eq!(r.exit_status(), 2);
    assert!(r.test("arch::deliberately_announce_another_abi_major").is_none(), "the guest ran on to report");
    assert!(r.crash_tail.is_some(), "the guest's fault comes with its last console lines");
}

/// Where the tiny images keep their descriptor tables (GDT at +0, GDTR at +0x100, IDTR at
/// +0x108, IDT at +0x1000) and, at `STEP`, what they did last.
const TABLES: u32 = 0x40_0000;
const STEP: u32 = 0x40_2000;
/// A #GP exits with this code, or'ed with the word at `STEP`.
const GP_EXIT: u32 = 0x1300;
/// The code a tiny image exits with when nothing faulted, or'ed with EAX.
const RAN_ON: u32 = 0xA000;

/// A tiny image whose #GP handler exits with `GP_EXIT | [STEP]`, running `body` (32-bit
/// protected mode, flat segments of its own GDT, interrupts off).
fn with_gp_handler(body: impl FnOnce(Code32) -> Code32) -> Vec<u8> {
    let handler = Code32::new().load(STEP).or_eax(GP_EXIT).exit_eax();
    // The image starts with a jump over the handler, 2 bytes long.
    let handler_gpa = TINY_LOAD as u32 + 2;
    let idt = TABLES + 0x1000;
    let setup = Code32::new()
        .mov_esp(0x50_0000)
        // Flat 32-bit code (0x08) and data (0x10), as the PVH entry state describes them.
        .store(TABLES + 8, 0x0000_FFFF)
        .store(TABLES + 12, 0x00CF_9A00)
        .store(TABLES + 16, 0x0000_FFFF)
        .store(TABLES + 20, 0x00CF_9200)
        .store(TABLES + 0x100, 23 | (TABLES & 0xFFFF) << 16)
        .store(TABLES + 0x104, TABLES >> 16)
        // Vector 13: a 32-bit interrupt gate to the handler through selector 0x08.
        .store(idt + 13 * 8, (handler_gpa & 0xFFFF) | 0x08 << 16)
        .store(idt + 13 * 8 + 4, (handler_gpa & 0xFFFF_0000) | 0x8E00)
        .store(TABLES + 0x108, (14 * 8 - 1) | (idt & 0xFFFF) << 16)
        .store(TABLES + 0x10C, idt >> 16)
        .lgdt(TABLES + 0x100)
        .lidt(TABLES + 0x108);
    Code32::new().skip(handler.len() as u8).then(handler).then(body(setup)).exit_with_eax()
}

/// A ping, a store to the split-lock trigger page, a trace record and a read of a
/// page-not-present MSR; exits with `RAN_ON | ` what the MSR read, unless it faulted. The ping's
/// status goes to `STEP`.
fn touch_the_host_stubs_interfaces(code: Code32) -> Code32 {
    use pvagent_abi::{hypercall, pnp, port, sld};
    code.hypercall(0x30_0000, hypercall::Nr::Ping as u32, 5)
        .store_eax(STEP)
        .store(sld::TRIGGER_GPA as u32, 0)
        .out(port::TRACE, 1)
        .rdmsr(pnp::MSR_VECTORS)
        .or_eax(RAN_ON)
}

fn run_tiny(name: &str, code: &[u8]) -> pvagent_host::RunResult {
    let image = temp_file(name, &tiny_elf(code, true, 0));
    run_stub_configured(config(&image, ""), &Producers::defaults())
}

#[test]
fn before_the_announcement_the_host_stubs_own_interfaces_are_closed() {
    use pvagent_abi::hypercall::Status as HypercallStatus;
    let closed = run_tiny("not-announced.elf", &with_gp_handler(touch_the_host_stubs_interfaces));
    assert!(closed.host_error.is_none(), "{:?}", closed.host_error);
    assert_eq!(
        closed.guest_exit_code,
        Some(GP_EXIT | HypercallStatus::Unavailable as u32),
        "the ping is answered Unavailable, and the MSR read raises #GP"
    );
    let c = &closed.report;
    assert_eq!(c.get("basics.refused_before_announcement"), 4, "{:?}", c.counters);
    for (counter, what) in [("basics.pings", "a ping"), ("sld.triggers", "a trigger"), ("trace.records", "a record")] {
        assert_eq!(c.get(counter), 0, "{what} reached its handler");
    }

    // The same code after the announcement: each reaches its handler.
    let open =
        run_tiny("announced.elf", &with_gp_handler(|code| touch_the_host_stubs_interfaces(code.announce(ABI_VERSION))));
    assert!(open.host_error.is_none(), "{:?}", open.host_error);
    assert_eq!(open.guest_exit_code, Some(RAN_ON), "the MSR read 0 (no vectors registered)");
    let c = &open.report;
    assert_eq!(c.get("basics.refused_before_announcement"), 0, "{:?}", c.counters);
    for counter in ["basics.pings", "sld.triggers", "trace.records"] {
        assert_eq!(c.get(counter), 1, "{counter}");
    }
}

#[test]
fn a_second_announcement_of_another_version_raises_gp() {
    let other = AbiVersion::new(ABI_VERSION.major, ABI_VERSION.minor + 1);
    let code =
        with_gp_handler(|code| code.announce(ABI_VERSION).announce(ABI_VERSION).store(STEP, 0x20).announce(other));
    let r = run_tiny("announced-twice.elf", &code);
    assert!(r.host_error.is_none(), "{:?}", r.host_error);
    assert_eq!(r.guest_exit_code, Some(GP_EXIT | 0x20), "the second version was accepted");
    assert_eq!(r.report.get("basics.version_writes_refused"), 1);
    assert_eq!(r.report.get("basics.guest_abi_version"), u64::from(ABI_VERSION.to_raw()), "the first one stays");
}
