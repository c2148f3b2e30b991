//! End-to-end tests of the guest's memory layout: kernel stacks whose size the command line
//! chooses (`kstack=`), carved from RAM at boot, each above a guard page that is never mapped;
//! RAM mapped whatever its amount and shape; and a layout that cannot fit ending the boot with
//! the sizes instead of crashing later.
//!
//! The guest checks the guard pages itself (`arch::stack_guard_pages_are_unmapped` probes every
//! guard of its vCPU, IST and boot stack included) and fills every task slot at once with a task
//! that recurses down to the bottom of its stack (`task::every_slot_runs_on_its_whole_stack`).

use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::report::{Line, Status};
use pvagent_host::producers::Producers;
use pvagent_tests::{config, guest_elf, run_stub, run_stub_configured};
use xtask::qemu::{self, Accel};

/// The self-tests that look at the layout from inside.
const LAYOUT_TESTS: [&str; 3] = [
    "arch::stack_guard_pages_are_unmapped",
    "arch::ram_is_mapped_with_large_pages",
    "task::every_slot_runs_on_its_whole_stack",
];

/// 256 KiB task stacks: for 4 vCPUs x 32 slots a 33 MiB stack area, more than 8 vCPUs' worth of
/// 64 KiB stacks (17 MiB). With the old layout, 64 KiB stacks already panicked at boot.
const LARGE_STACKS: &str = "kstack=256";

fn cmdline(extra: &str) -> String {
    format!("{extra} tests={}", LAYOUT_TESTS.join(","))
}

/// The boot line that describes memory.
fn memory_line(lines: &[String]) -> &str {
    lines.iter().find(|l| l.contains("boot: ram ")).map(String::as_str).expect("the guest reported its memory")
}

#[test]
fn larger_kernel_stacks_in_every_slot_keep_their_guard_pages() {
    let mut c = config(guest_elf(), &cmdline(LARGE_STACKS));
    c.mem_mib = 256;
    let r = run_stub_configured(c, &Producers::defaults());
    assert!(r.passed(), "{:#?}", r.serial);
    for name in LAYOUT_TESTS {
        let t = r.test(name).unwrap_or_else(|| panic!("{name} did not report"));
        assert_eq!(t.status, Status::Pass, "{name}: {}", t.reason);
    }
    let line = memory_line(&r.serial);
    assert!(line.contains("task stacks 256 KiB x 32 x 4 vCPUs"), "{line}");
}

#[test]
fn qemu_boots_with_larger_stacks_and_maps_ram_above_4_gib() {
    xtask::setup::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
    // QEMU's PC machine puts RAM beyond 3 GiB above the 4 GiB boundary: the memory map then has
    // a hole, and RAM on both sides of it (the later `-m` wins over the default one).
    let mut cmd = qemu::command(guest_elf(), Accel::Tcg, &cmdline(LARGE_STACKS));
    cmd.args(["-m", "5G"]);
    let outcome = xtask::proc::run(cmd, Duration::from_secs(120), false).unwrap_or_else(|e| panic!("{e}"));
    let code = outcome.status.code().and_then(qemu::guest_code_from_status);
    assert_eq!(code, Some(exit::SUCCESS), "{}", outcome.text());
    for name in LAYOUT_TESTS {
        let passed = outcome
            .output
            .iter()
            .any(|l| matches!(Line::parse(l), Some(Line::Result { status: Status::Pass, name: n, .. }) if n == name));
        assert!(passed, "{name} did not pass under QEMU:\n{}", outcome.text());
    }
    let line = memory_line(&outcome.output);
    assert!(line.contains("boot: ram 5119 MiB"), "all 5 GiB reported: {line}");
    assert!(line.contains("task stacks 256 KiB"), "{line}");
}

#[test]
fn stacks_that_do_not_fit_end_the_boot_with_the_sizes() {
    // 4 MiB stacks for 4 x 32 task slots need 512 MiB; the guest has 64.
    let mut c = config(guest_elf(), "kstack=4096 tests=arch");
    c.mem_mib = 64;
    let r = run_stub_configured(c, &Producers::defaults());
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    let fatal = r.serial.iter().find(|l| l.starts_with("fatal: memory:")).expect("a fatal report");
    assert!(fatal.contains("the kernel stacks and page tables need") && fatal.contains("kstack="), "{fatal}");
    assert!(r.tests.is_empty(), "no self-test ran on a kernel without stacks: {:?}", r.tests);
}

#[test]
fn a_kstack_the_guest_cannot_use_is_reported_and_the_default_kept() {
    let r = run_stub("kstack=66 tests=arch::stack_guard_pages_are_unmapped");
    assert!(r.passed(), "{:#?}", r.serial);
    assert!(
        r.serial.iter().any(|l| l.contains("kstack= not a whole number of 4 KiB pages; using 32 KiB")),
        "{:#?}",
        r.serial
    );
    assert!(memory_line(&r.serial).contains("task stacks 32 KiB"));
}

#[test]
fn a_kernel_stack_overflow_stops_at_its_guard_page() {
    // The task recurses until it writes below its stack: the write faults on the guard page, the
    // #PF cannot be pushed there either, and the #DF (on its own IST stack) ends the run with a
    // report whose CR2 is on the guard page.
    let r = run_stub("kstack=64 tests=task::stack_overflow_hits_the_guard_page");
    assert_eq!(r.guest_exit_code, Some(exit::FAILURE), "{:#?}", r.serial);
    let guard = r
        .serial
        .iter()
        .find_map(|l| l.strip_prefix("task: the overflowing task's guard page is at 0x"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("the guest said where the guard page is");
    let t = r.test("task::stack_overflow_hits_the_guard_page").expect("the test reported a line");
    assert_eq!(t.status, Status::Fail);
    assert!(t.reason.contains("unexpected exception #DF (vector 8)"), "{}", t.reason);
    let address = t
        .reason
        .split(", address 0x")
        .nth(1)
        .and_then(|rest| u64::from_str_radix(rest.split(' ').next()?, 16).ok())
        .expect("the #DF report carries CR2");
    assert!((guard..guard + 4096).contains(&address), "CR2 {address:#x} is not on the guard page {guard:#x}");
}
