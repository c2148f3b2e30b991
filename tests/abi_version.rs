//! End-to-end tests of the ABI version exchange (`pvagent_abi::version`): a guest tells a host
//! of its major its version; a guest uses nothing of a host of another major; a host told
//! another major stops the run.

use pvagent_abi::report::Status;
use pvagent_abi::{ABI_VERSION, AbiVersion};
use pvagent_host::Error;
use pvagent_host::producers::Producers;
use pvagent_tests::{config, guest_elf, run_stub, run_stub_configured};

#[test]
fn the_guest_tells_a_host_of_its_major_its_version() {
    let r = run_stub("tests=arch::hypercall_round_trip");
    assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
    assert_eq!(r.report.get("basics.guest_abi_version"), u64::from(ABI_VERSION.to_raw()));
    assert!(r.report.get("basics.pings") >= 1, "the guest used the host's hypercalls");
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
}
