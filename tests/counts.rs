//! End-to-end tests of what KVM counts for the guest: its per-vCPU statistics in every run's
//! counters, the boot milestone (`port::MILESTONE`), behind the version gate, and the
//! benchmarks' counting window (`port::BENCH_COUNT`), exact to the instruction where KVM
//! emulates the guest's code.

use pvagent_abi::ABI_VERSION;
use pvagent_abi::port::{BENCH_COUNT, BENCH_NULL, BenchCount, BenchLoop, COUNT_UNAVAILABLE, MILESTONE, Milestone};
use pvagent_host::producers::Producers;
use pvagent_tests::{Code32, config, run_stub, run_stub_configured, temp_file, tiny_elf};

/// Whether KVM emulates guest CPL 0 code here (the PVM module), so that it counts every
/// instruction of it: where it does not (VMX, SVM), `insn_emulation` counts only the few
/// instructions KVM emulates, and the exact counts below are not there to check.
fn guest_code_is_emulated() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn every_run_reports_kvms_statistics_and_the_boot_milestone() {
    let r = run_stub("tests=arch::hypercall_round_trip");
    assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
    let c = &r.report;
    let (exits, boot_exits) = (c.get("kvm.exits"), c.get("boot.exits"));
    assert!(exits >= c.get("vcpu0.exits"), "KVM counts every exit the host stub saw, and more: {:?}", c.counters);
    assert!(boot_exits > 0 && boot_exits < exits, "boot is a part of the run: {boot_exits} of {exits}");
    assert_eq!(c.get("basics.milestones_ignored"), 0);
    assert!(c.counters.contains_key("boot.first_task_us"));
    // The kernel's own count of its string iterations, passed in RSI with the milestone: the
    // boot copies its boot information and command line, so it is never 0.
    assert!(c.get("boot.string_iters") > 0, "{:?}", c.counters);
    assert!(c.counters.keys().filter(|k| k.starts_with("kvm.")).all(|k| c.get(k) != 0), "only non-zero statistics");
    if guest_code_is_emulated() {
        let (insns, boot_insns) = (c.get("kvm.insn_emulation"), c.get("boot.insn_emulation"));
        assert!(boot_insns > 1000 && boot_insns < insns, "boot {boot_insns} of {insns} emulated instructions");
    }
}

fn run_tiny(name: &str, code: &[u8], bench: bool) -> pvagent_host::RunResult {
    let image = temp_file(name, &tiny_elf(code, true, 0));
    let mut c = config(&image, "");
    c.bench = bench;
    run_stub_configured(c, &Producers::defaults())
}

#[test]
fn the_milestone_counts_only_after_the_announcement_and_once() {
    let first_task = Milestone::FirstTask as u32;
    let code = Code32::new()
        .out(MILESTONE, first_task)
        .announce(ABI_VERSION)
        .out(MILESTONE, first_task)
        .out(MILESTONE, first_task)
        .out(MILESTONE, 77)
        .exit(0x10);
    let r = run_tiny("milestones.elf", &code, false);
    assert!(r.passed(), "{:?}", r.host_error);
    let c = &r.report;
    assert_eq!(c.get("basics.refused_before_announcement"), 1, "the first, before the announcement");
    assert_eq!(c.get("basics.milestones_ignored"), 2, "a repeat and an unknown milestone: {:?}", c.counters);
    // Counted from the first instruction to the milestone's exit, that exit included: three
    // exits the guest caused (the refused write, the announcement's WRMSR, the milestone's
    // `out`: the host stub counts them exactly, and a preemption of the vCPU's thread is not one
    // of them), and ten instructions (three per `out`: two `mov`s and the `out`; four for the
    // announcement: three `mov`s and the `wrmsr`).
    assert_eq!(c.get("boot.exits"), 3, "{:?}", c.counters);
    assert!(c.get("boot.kvm_exits") >= 3, "KVM's own count has them too, and what the host did: {:?}", c.counters);
    if guest_code_is_emulated() {
        assert_eq!(c.get("boot.insn_emulation"), 10, "{:?}", c.counters);
    }
}

/// A tiny guest that counts `movs` instructions (`mov eax, 0`) in a window and exits with the
/// window's `figure`.
fn window(movs: usize, figure: BenchCount) -> Vec<u8> {
    let mut code = Code32::new().announce(ABI_VERSION).out(BENCH_COUNT, BenchCount::Open as u32);
    for _ in 0..movs {
        code = code.mov_eax(0);
    }
    code.out(BENCH_COUNT, BenchCount::Close as u32).out(BENCH_COUNT, figure as u32).in_eax(BENCH_COUNT).exit_with_eax()
}

#[test]
fn a_counting_window_counts_exactly_what_ran_in_it() {
    let counted = |movs, figure| {
        let r = run_tiny("window.elf", &window(movs, figure), true);
        assert!(r.host_error.is_none(), "{:?}", r.host_error);
        assert_eq!(r.report.get("bench.refused"), 0);
        r.guest_exit_code.expect("the guest exits with the figure")
    };
    assert_eq!(counted(0, BenchCount::ReadExits), 1, "the closing `out`, the only exit the guest caused in it");
    assert!(counted(0, BenchCount::ReadKvmExits) >= 1, "KVM counts it too, with whatever the host did");
    let (short, long) = (counted(3, BenchCount::ReadInstructions), counted(13, BenchCount::ReadInstructions));
    if guest_code_is_emulated() {
        assert_eq!(long - short, 10, "ten more instructions in the window");
    } else {
        assert!(short != COUNT_UNAVAILABLE && long != COUNT_UNAVAILABLE);
    }
    // Without the benchmark device, the port is an ordinary unclaimed one.
    let r = run_tiny("window-nobench.elf", &window(3, BenchCount::ReadInstructions), false);
    assert_eq!(r.guest_exit_code, Some(u32::MAX), "reads all-ones");
}

#[test]
fn the_bare_loop_is_refused_with_several_vcpus_and_counting_windows_are_not() {
    // A window on vCPU 0, then the switch to the bare loop, whose exit port ends the run.
    let code = Code32::new()
        .announce(ABI_VERSION)
        .out(BENCH_COUNT, BenchCount::Open as u32)
        .out(BENCH_COUNT, BenchCount::Close as u32)
        .out(BENCH_NULL, BenchLoop::Bare as u32)
        .exit(0x10);
    let image = temp_file("bare-loop-vcpus.elf", &tiny_elf(&code, true, 0));
    let run = |vcpus| {
        let mut c = config(&image, "");
        c.bench = true;
        c.vcpus = vcpus;
        run_stub_configured(c, &Producers::defaults())
    };
    let one = run(1);
    assert_eq!(one.guest_exit_code, Some(0x10), "the bare loop served the exit: {:?}", one.host_error);
    let two = run(2);
    assert_eq!(two.report.get("bench.refused"), 0, "the window was served on vCPU 0 of 2");
    let error = two.host_error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("bare loop runs one vCPU, not 2"), "{error:?}");
    assert_eq!(two.guest_exit_code, None);
}

#[test]
fn a_console_line_of_any_length_the_abi_allows_is_one_exit() {
    // The boot prints its command line on a line of its own: a short one and one of the longest
    // the guest keeps (512 bytes, more than 512 with the line's prefix) cost the boot the same
    // exits, one per line. (The unknown key's warning is a line in both.)
    let boot_exits = |cmdline: &str| {
        let r = run_stub(cmdline);
        assert!(r.passed(), "{:#?}\n{:?}", r.serial, r.host_error);
        assert!(r.serial.iter().any(|l| l.contains("boot: command line:")), "{:#?}", r.serial);
        r.report.get("boot.exits")
    };
    let test = "tests=arch::hypercall_round_trip";
    let short = boot_exits(&format!("{test} pad=x"));
    let long_value = "x".repeat(512 - test.len() - " pad=".len());
    let long = boot_exits(&format!("{test} pad={long_value}"));
    assert_eq!(long, short, "a 512-byte command line's boot line is one exit, as a short one's");
}
