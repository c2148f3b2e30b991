//! End-to-end tests of the guest's memory layout: kernel stacks whose size the command line
//! chooses (`kstack=`), carved from RAM at boot, each above a guard page that is never mapped;
//! RAM mapped whatever its amount and shape; and a layout that cannot fit ending the boot with
//! the sizes instead of crashing later.
//!
//! The guest checks the guard pages itself (`arch::stack_guard_pages_are_unmapped` probes every
//! guard of its vCPU, IST and boot stack included) and fills every task slot at once with a task
//! that recurses down to the bottom of its stack (`task::every_slot_runs_on_its_whole_stack`).
//!
//! A host that lies about memory (a memory map with entries that wrap, lie beyond the CPU's
//! physical address width, or overlap; a demand-paged region out of reach or over RAM) gets a
//! guest that drops what it cannot use, says so in one line, and runs.

use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RAM, MEMMAP_TYPE_RESERVED};
use pvagent_abi::report::{Line, Status};
use pvagent_host::cpuid::CpuidTable;
use pvagent_host::handler::AttachCtx;
use pvagent_host::producers::Producers;
use pvagent_host::{ExitHandler, RunResult, Vm};
use pvagent_tests::{config, guest_elf, require_kvm, run_stub, run_stub_configured};
use xtask::qemu::{self, Accel};

/// The self-tests that look at the layout from inside.
const LAYOUT_TESTS: [&str; 3] = [
    "arch::stack_guard_pages_are_unmapped",
    "arch::ram_is_mapped_with_large_pages",
    "task::every_slot_runs_on_its_whole_stack",
];

/// 256 KiB task stacks: for 8 vCPUs x 32 slots (and their 8 KiB user stacks) a 70 MiB stack area,
/// more than 16 vCPUs' worth of 64 KiB stacks. With the old layout, 64 KiB stacks already
/// panicked at boot.
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
    assert!(line.contains("task stacks 256 KiB x 32 x 8 vCPUs"), "{line}");
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
    // 4 MiB stacks for 8 x 32 task slots need 1 GiB; the guest has 64.
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

/// A host that lies about memory: it adds `entries` to the memory map, says the CPU has
/// `phys_bits` physical address bits, and moves the demand-paged region to `pnp_base_2mib`
/// (in 2 MiB units, as the leaf says it).
struct LyingHost {
    entries: Vec<HvmMemmapEntry>,
    phys_bits: u8,
    pnp_base_2mib: u32,
}

impl ExitHandler for LyingHost {
    fn name(&self) -> &'static str {
        "lying-host"
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> pvagent_host::Result<()> {
        ctx.memmap.extend_from_slice(&self.entries);
        Ok(())
    }

    fn cpuid(&self, table: &mut CpuidTable) {
        // Registered after the pager, so these win.
        let width = table.entry(0x8000_0008, 0);
        width.eax = (width.eax & !0xFF) | u32::from(self.phys_bits);
        table.entry(pvagent_abi::pnp::LEAF_PNP, 0).eax = self.pnp_base_2mib;
    }
}

fn run_lying(host: LyingHost, tests: &str) -> RunResult {
    require_kvm();
    let mut handlers = Producers::defaults().build().unwrap_or_else(|e| panic!("producers: {e}"));
    handlers.push(Box::new(host));
    let c = config(guest_elf(), &format!("tests={tests}"));
    Vm::new(c, handlers).unwrap_or_else(|e| panic!("the host stub could not start the guest: {e}")).run()
}

fn entry(addr: u64, size: u64, type_: u32) -> HvmMemmapEntry {
    HvmMemmapEntry { addr, size, type_, reserved: 0 }
}

#[test]
fn a_hostile_memory_map_is_clipped_reported_and_survived() {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let reach = 1u64 << 40;
    let host = LyingHost {
        entries: vec![
            // Beyond 48 bits: its page table indices would wrap onto the first GiB's.
            entry(1 << 48, GIB, MEMMAP_TYPE_RAM),
            // Wraps past 2^64 (in a release build the sum was 0: stacks at physical 0).
            entry(u64::MAX - 0xFFF, 0x2000, MEMMAP_TYPE_RAM),
            // Ends far beyond the reach: clipped to it, the 2 GiB below it mapped.
            entry(reach - 2 * GIB, 1 << 62, MEMMAP_TYPE_RAM),
            // Empty.
            entry(8 * GIB, 0, MEMMAP_TYPE_RAM),
            // A reserved page inside the guest's RAM: the RAM around it is used, it is not.
            entry(96 * MIB, MIB, MEMMAP_TYPE_RESERVED),
        ],
        phys_bits: 40,
        // The pager's region moved to 2^48, beyond the reach.
        pnp_base_2mib: 1 << 27,
    };
    let r = run_lying(
        host,
        "arch::stack_guard_pages_are_unmapped,arch::ram_is_mapped_with_large_pages,task::kernel_task_returns_its_value,pnp::registration_is_accepted",
    );
    assert_eq!(r.guest_exit_code, Some(exit::SUCCESS), "{:#?}\n{:?}", r.serial, r.host_error);
    let expected = format!(
        "boot: warning: memory map: 3 entries not used (1 wrapping around, 1 empty, 1 at or beyond the reach), 1 clipped at the reach, 1 cut where entries overlap, the reach being 40-bit addresses; {} KiB of RAM not used",
        (GIB + (1u64 << 62) - 2 * GIB + MIB) >> 10
    );
    assert!(r.serial.contains(&expected), "no line {expected:?} in {:#?}", r.serial);
    let pnp = r.serial.iter().find(|l| l.starts_with("pnp: the host's region is not used:")).expect("the pnp refusal");
    assert!(pnp.contains("BeyondReach"), "{pnp}");
    for name in [
        "arch::stack_guard_pages_are_unmapped",
        "arch::ram_is_mapped_with_large_pages",
        "task::kernel_task_returns_its_value",
    ] {
        let t = r.test(name).unwrap_or_else(|| panic!("{name} did not report"));
        assert_eq!(t.status, Status::Pass, "{name}: {}", t.reason);
    }
    let t = r.test("pnp::registration_is_accepted").expect("reported");
    assert_eq!(t.status, Status::Skip, "without a usable region the protocol is not there: {}", t.reason);
    // The clipped RAM (2 GiB below the reach) and the guest's own count in the boot line.
    let line = memory_line(&r.serial);
    assert!(line.contains(&format!("boot: ram {} MiB", 127 + 2048 - 1)), "{line}");
}

#[test]
fn a_demand_paged_region_over_ram_is_not_used() {
    // At 0: over the kernel's own image and page tables. Mapped for CPL 3 it would have
    // replaced their mappings.
    let host = LyingHost { entries: Vec::new(), phys_bits: 46, pnp_base_2mib: 0 };
    let r = run_lying(host, "task::kernel_task_returns_its_value,pnp::registration_is_accepted");
    assert_eq!(r.guest_exit_code, Some(exit::SUCCESS), "{:#?}\n{:?}", r.serial, r.host_error);
    let pnp = r.serial.iter().find(|l| l.starts_with("pnp: the host's region is not used:")).expect("the pnp refusal");
    assert!(pnp.contains("Overlaps"), "{pnp}");
    assert_eq!(r.test("pnp::registration_is_accepted").map(|t| t.status), Some(Status::Skip));
}
