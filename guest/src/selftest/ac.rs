//! Tests of #AC: real alignment checks of CPL 3 tasks (the hardware raises them), and split
//! locks in every mode, produced by the host stub's trigger (no CPU here detects them): each
//! test routine below stores to the trigger page right before its locked instruction.
//!
//! One boot covers every mode: each test runs under [`ac::with_mode`], which switches the mode
//! the handler applies on this vCPU and restores the boot mode afterwards. What ends a run (a
//! kernel split lock under `fatal`, the host policies `exit` and `disable-globally`, other boot
//! modes) runs only on request, from the end-to-end tests (`tests/ac.rs`).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvagent_abi::sld::{self, Verdict};
use x86_64::registers::rflags::RFlags;

use pvagent_abi::report::Need;

use super::{Failure, SelfTest, TestResult, fail};
use crate::arch::fault::Fault;
use crate::arch::trap::TrapFrame;
use crate::arch::{self, time::HZ};
use crate::cell::StaticCell;
use crate::pv::ac::policy::{Mode, ModeError};
use crate::pv::ac::{self, trigger};
use crate::task::table::{ExitStatus, State, TaskId};
use crate::task::{self, FaultAction};
use crate::{ensure, ensure_eq, ensure_eq_hex};

/// What the split-lock tests need: the host stub's trigger, and detection to turn on.
const SPLIT_LOCKS: &[Need] = &[Need::HostStub, Need::SldTrigger, Need::SldDetection];
/// What the tests of #AC for a guest whose detection is off need: only the trigger.
const TRIGGER: &[Need] = &[Need::HostStub, Need::SldTrigger];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new(
        "ac::boot_state_follows_enumeration_and_command_line",
        boot_state_follows_enumeration_and_command_line,
    ),
    SelfTest::new("ac::user_alignment_check_goes_to_the_task_hook", user_alignment_check_goes_to_the_task_hook)
        .needs(&[Need::AlignmentCheck]),
    SelfTest::new("ac::unhandled_alignment_check_ends_only_that_task", unhandled_alignment_check_ends_only_that_task)
        .needs(&[Need::AlignmentCheck]),
    SelfTest::new("ac::host_injects_only_real_split_locks", host_injects_only_real_split_locks).needs(SPLIT_LOCKS),
    SelfTest::new(
        "ac::user_split_lock_warn_completes_and_detection_returns",
        user_split_lock_warn_completes_and_detection_returns,
    )
    .needs(SPLIT_LOCKS),
    SelfTest::new("ac::user_split_lock_fatal_ends_only_that_task", user_split_lock_fatal_ends_only_that_task)
        .needs(SPLIT_LOCKS),
    SelfTest::new(
        "ac::user_split_lock_ratelimit_delays_a_task_over_budget",
        user_split_lock_ratelimit_delays_a_task_over_budget,
    )
    .needs(SPLIT_LOCKS),
    SelfTest::new(
        "ac::user_split_lock_with_alignment_checks_is_an_alignment_check",
        user_split_lock_with_alignment_checks_is_an_alignment_check,
    )
    .needs(SPLIT_LOCKS),
    SelfTest::new(
        "ac::kernel_split_lock_warn_continues_with_detection_off_until_switch",
        kernel_split_lock_warn_continues_with_detection_off_until_switch,
    )
    .needs(SPLIT_LOCKS),
    SelfTest::new("ac::host_spares_a_guest_with_detection_off", host_spares_a_guest_with_detection_off).needs(&[
        Need::HostStub,
        Need::SldTrigger,
        Need::SldDefaultPolicy,
    ]),
    SelfTest::new("ac::spurious_ac_is_ignored", spurious_ac_is_ignored).needs(TRIGGER),
    SelfTest::on_request("ac::kernel_split_lock_fatal_panics", kernel_split_lock_fatal_panics).needs(SPLIT_LOCKS),
    SelfTest::on_request("ac::host_policy_exit_stops_the_run", host_policy_exit_stops_the_run).needs(&[
        Need::HostStub,
        Need::SldTrigger,
        Need::SldExitPolicy,
    ]),
    SelfTest::on_request("ac::host_policy_disable_globally", host_policy_disable_globally).needs(&[
        Need::HostStub,
        Need::SldTrigger,
        Need::SldDetection,
        Need::SldDisableGloballyPolicy,
    ]),
];

/// Two cache lines.
#[repr(C, align(64))]
struct Lines([u8; 128]);

/// Only used through raw addresses, with volatile accesses from the test and the task.
#[unsafe(link_section = ".user_data.ac")]
static USER_LINES: StaticCell<Lines> = StaticCell::new(Lines([0; 128]));
/// The same for the kernel's own split locks.
static KERNEL_LINES: StaticCell<Lines> = StaticCell::new(Lines([0; 128]));

/// Offset of a dword that crosses the boundary between the two lines.
const SPLIT_DWORD: u64 = 62;
/// Offset of a qword that crosses it (XCHG test).
const SPLIT_QWORD: u64 = 60;

global_asm!(
    r#"
    .pushsection .user_text.ac, "ax"
    .balign 16
    # (rdi = a misaligned address) Sets RFLAGS.AC, loads 8 bytes there, exits with the value.
    .global ac_user_misaligned_load
ac_user_misaligned_load:
    pushfq
    or qword ptr [rsp], {rflags_ac}
    popfq
    .global ac_user_misaligned_load_insn
ac_user_misaligned_load_insn:
    mov rdi, qword ptr [rdi]
    xor eax, eax                    # kernel call EXIT, value in rdi
    ud2

    # (rdi = count) `count` times: trigger, `lock add` the dword that crosses the line, yield
    # (a switch turns detection back on under warn and ratelimit). Exits with the dword.
    .global ac_user_split_locks
ac_user_split_locks:
    mov rcx, rdi
2:  test rcx, rcx
    jz 3f
    mov r11, {trigger}
    mov byte ptr [r11], 0           # the trigger: the host decides on the next instruction
    .global ac_user_split_locks_insn
ac_user_split_locks_insn:
    lock add dword ptr [rip + {lines} + {split}], 1
    mov eax, 1                      # kernel call YIELD (preserves every other register)
    ud2
    dec rcx
    jmp 2b
3:  mov edi, dword ptr [rip + {lines} + {split}]
    xor eax, eax
    ud2

    # As one round of the above, with RFLAGS.AC set first: the task asked for alignment
    # checks. Exits with 0.
    .global ac_user_checked_split_lock
ac_user_checked_split_lock:
    pushfq
    or qword ptr [rsp], {rflags_ac}
    popfq
    mov r11, {trigger}
    mov byte ptr [r11], 0
    .global ac_user_checked_split_lock_insn
ac_user_checked_split_lock_insn:
    lock add dword ptr [rip + {lines} + {split}], 1
    xor edi, edi
    xor eax, eax
    ud2
    .popsection

    .pushsection .text.ac_selftest, "ax"
    # Each: (rdi = address, rsi = value, rdx = trigger flags) trigger, then one access.
    .global ac_kernel_locked_add    # lock add dword ptr [rdi], 1
ac_kernel_locked_add:
    mov r11, {trigger}
    mov byte ptr [r11], dl
    lock add dword ptr [rdi], 1
    ret
    .global ac_kernel_plain_add     # add dword ptr [rdi], 1 (no LOCK)
ac_kernel_plain_add:
    mov r11, {trigger}
    mov byte ptr [r11], dl
    add dword ptr [rdi], 1
    ret
    .global ac_kernel_xchg          # xchg qword ptr [rdi], rsi: locked without a prefix
ac_kernel_xchg:
    mov r11, {trigger}
    mov byte ptr [r11], dl
    xchg qword ptr [rdi], rsi
    mov rax, rsi
    ret
    .popsection
"#,
    rflags_ac = const RFlags::ALIGNMENT_CHECK.bits(),
    trigger = const sld::TRIGGER_GPA,
    lines = sym USER_LINES,
    split = const SPLIT_DWORD,
);

// SAFETY: the routines are defined above with these signatures. The user ones are `safe`: the
// kernel never calls them, it only starts CPL 3 tasks there (each is code in `.user_text` that
// ends with a kernel call), which cannot harm the kernel.
unsafe extern "sysv64" {
    safe fn ac_user_misaligned_load(addr: u64) -> !;
    static ac_user_misaligned_load_insn: u8;
    safe fn ac_user_split_locks(count: u64) -> !;
    static ac_user_split_locks_insn: u8;
    safe fn ac_user_checked_split_lock(_: u64) -> !;
    static ac_user_checked_split_lock_insn: u8;
    fn ac_kernel_locked_add(addr: u64, value: u64, flags: u64);
    fn ac_kernel_plain_add(addr: u64, value: u64, flags: u64);
    fn ac_kernel_xchg(addr: u64, value: u64, flags: u64) -> u64;
}

/// Runs a kernel test routine on `addr` (inside KERNEL_LINES) after a normal trigger.
fn kernel_access(routine: unsafe extern "sysv64" fn(u64, u64, u64), addr: u64) {
    debug_assert!((kernel_lines()..kernel_lines() + 124).contains(&addr));
    // SAFETY: the routines access 4 bytes at `addr`, inside this module's buffer, and store to
    // the trigger page, which init mapped when the trigger is available (the callers need Need::SldTrigger).
    unsafe { routine(addr, 0, 0) };
}

fn user_lines() -> u64 {
    USER_LINES.get() as u64
}

fn kernel_lines() -> u64 {
    KERNEL_LINES.get() as u64
}

/// Reads `N` bytes at any alignment, volatile (the task or the host changed them).
fn load<const N: usize>(addr: u64) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (i, b) in bytes.iter_mut().enumerate() {
        // SAFETY: callers pass addresses inside this module's static buffers.
        *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
    }
    bytes
}

fn store(addr: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: as in `load`.
        unsafe { core::ptr::write_volatile((addr + i as u64) as *mut u8, *b) };
    }
}

fn load_u32(addr: u64) -> u32 {
    u32::from_le_bytes(load(addr))
}

fn spawn_user(name: &'static str, entry: task::UserEntry, arg: u64) -> Result<TaskId, Failure> {
    task::spawn_user(name, entry, arg).map_err(|e| fail(format_args!("spawn {name}: {e:?}")))
}

fn join(id: TaskId) -> Result<ExitStatus, Failure> {
    task::join(id).map_err(|e| fail(format_args!("join {id:?}: {e:?}")))
}

/// Joins `id` while staying runnable, so that the task's yields really switch it out.
fn join_yielding(id: TaskId) -> Result<ExitStatus, Failure> {
    while !matches!(task::state(id), Some(State::Exited(_)) | None) {
        task::yield_now();
    }
    join(id)
}

fn host_verdict() -> Result<(u64, Result<Verdict, u64>), Failure> {
    trigger::verdict().map_err(|e| fail(format_args!("asking the host's verdict: {e:?}")))
}

/// How many triggers the host has decided on.
fn decided() -> Result<u64, Failure> {
    host_verdict().map(|(seq, _)| seq)
}

/// The host decided on exactly `count` triggers since `before`, the last one this way.
fn expect_verdicts(before: u64, count: u64, expected: Verdict) -> TestResult {
    let (seq, verdict) = host_verdict()?;
    ensure_eq!(seq - before, count, "triggers the host decided on");
    ensure_eq!(verdict, Ok(expected), "host verdict for trigger {seq}");
    Ok(())
}

/// One kernel split lock on the running vCPU, which the host must answer with a split-lock #AC
/// and the locked add must complete after (for the SMP tests: `selftest::smp`).
pub(super) fn kernel_split_lock_here() -> TestResult {
    let split = kernel_lines() + SPLIT_DWORD;
    let value = load_u32(split);
    let seq = decided()?;
    kernel_access(ac_kernel_locked_add, split);
    expect_verdicts(seq, 1, Verdict::InjectedSplitLock)?;
    ensure_eq_hex!(load_u32(split), value.wrapping_add(1), "the locked add ran once");
    Ok(())
}

fn boot_state_follows_enumeration_and_command_line() -> TestResult {
    let cmdline = &crate::boot::info::get().cmdline;
    let expected = match cmdline.get("sld").map(Mode::parse) {
        None => Mode::DEFAULT,
        Some(Ok(mode)) => mode,
        Some(Err(ModeError::Unknown | ModeError::BadRate)) => Mode::DEFAULT,
    };
    let s = ac::status();
    ensure_eq!(s.mode, expected, "boot mode");
    let host = arch::platform().hypervisor.host_features();
    if host.has(pvagent_abi::cpuid::Features::CORE_CAPABILITIES) {
        // Step 1 is the host stub's statement; whether step 2 follows is IA32_CORE_CAPABILITIES's.
        ensure!(
            s.enumeration != ac::policy::Enumeration::NoCoreCapabilities,
            "the host stub says IA32_CORE_CAPABILITIES exists, found {:?}",
            s.enumeration
        );
    }
    if s.enumeration.available() {
        let wanted = expected.wants_detection();
        ensure_eq!(s.detection_on, wanted, "detection on this vCPU under sld={expected}");
        ensure_eq!(ac::detection_in_msr(), Some(wanted), "MSR_TEST_CTRL's detection bit as it reads back");
    } else {
        // Not enumerated: the kernel never touched MSR_TEST_CTRL and says detection is off.
        ensure!(!s.detection_on, "detection on without enumeration");
        ensure_eq!(ac::detection_in_msr(), None, "MSR_TEST_CTRL access without enumeration");
        ensure_eq!(ac::stats().test_ctrl_writes, 0, "MSR_TEST_CTRL writes without enumeration");
    }
    Ok(())
}

static HOOK_CALLS: AtomicU32 = AtomicU32::new(0);
static HOOK_RIP: AtomicU64 = AtomicU64::new(0);
static HOOK_VECTOR: AtomicU32 = AtomicU32::new(0);

/// A task's own #AC handling: note the fault, turn alignment checks off, retry.
fn retry_without_alignment_checks(frame: &mut TrapFrame, fault: &Fault) -> FaultAction {
    HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    HOOK_RIP.store(fault.rip, Ordering::SeqCst);
    HOOK_VECTOR.store(u32::from(fault.vector), Ordering::SeqCst);
    frame.rflags &= !RFlags::ALIGNMENT_CHECK.bits();
    FaultAction::Resume
}

fn reset_hook() {
    HOOK_CALLS.store(0, Ordering::SeqCst);
    HOOK_RIP.store(0, Ordering::SeqCst);
    HOOK_VECTOR.store(0, Ordering::SeqCst);
}

/// The misaligned qword the alignment-check tests load, and its value.
fn misaligned_qword() -> (u64, u64) {
    let addr = user_lines() + 1;
    let value = 0x0123_4567_89AB_CDEFu64;
    store(addr, &value.to_le_bytes());
    (addr, value)
}

fn user_alignment_check_goes_to_the_task_hook() -> TestResult {
    let (addr, value) = misaligned_qword();
    reset_hook();
    let before = ac::stats();
    let id = spawn_user("ac-misaligned", ac_user_misaligned_load, addr)?;
    task::set_fault_hook(id, Some(retry_without_alignment_checks));
    let status = join(id)?;
    if HOOK_CALLS.load(Ordering::SeqCst) == 0 && status == ExitStatus::Returned(value) {
        return Err(fail(format_args!("a misaligned load with RFLAGS.AC and CR0.AM raised no #AC")));
    }
    ensure_eq!(HOOK_CALLS.load(Ordering::SeqCst), 1, "calls of the task's fault hook");
    ensure_eq!(HOOK_VECTOR.load(Ordering::SeqCst), u32::from(sld::AC_VECTOR), "vector the hook saw");
    let insn = core::ptr::addr_of!(ac_user_misaligned_load_insn) as u64;
    ensure_eq_hex!(HOOK_RIP.load(Ordering::SeqCst), insn, "RIP of the #AC (the load, not yet executed)");
    ensure_eq!(status, ExitStatus::Returned(value), "the task after its hook retried the load");
    let after = ac::stats();
    ensure_eq!(after.alignment_checks - before.alignment_checks, 1, "alignment checks counted");
    ensure_eq!(after.user_split_locks, before.user_split_locks, "user split locks counted");
    Ok(())
}

/// A kernel task that yields once, then returns [`BYSTANDER_RESULT`]: it must finish whatever
/// happens to the task under test.
fn spawn_bystander() -> Result<TaskId, Failure> {
    fn bystander(_: u64) -> u64 {
        task::yield_now();
        BYSTANDER_RESULT
    }
    task::spawn_kernel("ac-bystander", bystander, 0).map_err(|e| fail(format_args!("spawn the bystander: {e:?}")))
}

const BYSTANDER_RESULT: u64 = 7;

fn unhandled_alignment_check_ends_only_that_task() -> TestResult {
    let (addr, value) = misaligned_qword();
    let bystander = spawn_bystander()?;
    let id = spawn_user("ac-misaligned", ac_user_misaligned_load, addr)?;
    let status = join(id)?;
    ensure_eq!(join(bystander)?, ExitStatus::Returned(BYSTANDER_RESULT), "the bystander");
    ensure!(status != ExitStatus::Returned(value), "a misaligned load with RFLAGS.AC and CR0.AM raised no #AC");
    let insn = core::ptr::addr_of!(ac_user_misaligned_load_insn) as u64;
    let expected = ac::Kill::AlignmentCheck { rip: insn, address: Some(addr) };
    ensure_eq!(status, ExitStatus::Killed(expected.into()), "how the task ended");
    Ok(())
}

fn host_injects_only_real_split_locks() -> TestResult {
    ac::with_mode(Mode::Warn, || {
        let lines = kernel_lines();
        let before = ac::stats();
        // A locked access within one line runs without #AC.
        let seq = decided()?;
        let value = load_u32(lines + 60);
        kernel_access(ac_kernel_locked_add, lines + 60);
        expect_verdicts(seq, 1, Verdict::NotSplit)?;
        ensure_eq_hex!(load_u32(lines + 60), value.wrapping_add(1), "the aligned locked add ran once");
        // An access across the line without LOCK is no split lock.
        kernel_access(ac_kernel_plain_add, lines + SPLIT_DWORD);
        expect_verdicts(seq, 2, Verdict::NotLocked)?;
        ensure_eq!(
            ac::stats().kernel_split_locks,
            before.kernel_split_locks,
            "#AC for accesses that are no split lock"
        );
        // XCHG with memory is locked without a prefix: a split lock.
        // SAFETY: a qword inside KERNEL_LINES; the trigger page is mapped (the test needs Need::SldTrigger).
        unsafe { ac_kernel_xchg(lines + SPLIT_QWORD, 0x5a5a, 0) };
        expect_verdicts(seq, 3, Verdict::InjectedSplitLock)?;
        ensure_eq_hex!(u64::from_le_bytes(load(lines + SPLIT_QWORD)), 0x5a5a, "the xchg completed after its #AC");
        ensure_eq!(ac::stats().kernel_split_locks - before.kernel_split_locks, 1, "kernel split locks (the xchg)");
        // Back on at the next switch.
        task::sleep_ticks(1);
        ensure_eq!(ac::detection_in_msr(), Some(true), "detection after a switch");
        Ok(())
    })
}

fn user_split_lock_warn_completes_and_detection_returns() -> TestResult {
    ac::with_mode(Mode::Warn, || {
        let value = load_u32(user_lines() + SPLIT_DWORD);
        let before = ac::stats();
        let seq = decided()?;
        let id = spawn_user("ac-split-warn", ac_user_split_locks, 1)?;
        let status = join(id)?;
        ensure_eq!(status, ExitStatus::Returned(u64::from(value.wrapping_add(1))), "the task completed its locked add");
        expect_verdicts(seq, 1, Verdict::InjectedSplitLock)?;
        let after = ac::stats();
        ensure_eq!(after.user_split_locks - before.user_split_locks, 1, "user split locks");
        // Off for the task (the instruction completed), back on when it was switched out: the
        // host saw both writes.
        ensure_eq!(after.test_ctrl_writes - before.test_ctrl_writes, 2, "MSR_TEST_CTRL writes (off, on)");
        ensure_eq!(after.reenabled_at_switch - before.reenabled_at_switch, 1, "re-enables at a task switch");
        ensure_eq!(ac::detection_in_msr(), Some(true), "detection after the task was switched out");
        Ok(())
    })
}

fn user_split_lock_fatal_ends_only_that_task() -> TestResult {
    ac::with_mode(Mode::Fatal, || {
        let split = user_lines() + SPLIT_DWORD;
        let value = load_u32(split);
        let before = ac::stats();
        let seq = decided()?;
        let bystander = spawn_bystander()?;
        let id = spawn_user("ac-split-fatal", ac_user_split_locks, 1)?;
        let status = join(id)?;
        let insn = core::ptr::addr_of!(ac_user_split_locks_insn) as u64;
        ensure_eq!(status, ExitStatus::Killed(ac::Kill::SplitLock { rip: insn }.into()), "how the task ended");
        expect_verdicts(seq, 1, Verdict::InjectedSplitLock)?;
        ensure_eq_hex!(load_u32(split), value, "the locked add never ran");
        ensure_eq!(join(bystander)?, ExitStatus::Returned(BYSTANDER_RESULT), "the bystander");
        let after = ac::stats();
        ensure_eq!(after.tasks_killed - before.tasks_killed, 1, "tasks ended for a split lock");
        ensure_eq!(after.test_ctrl_writes, before.test_ctrl_writes, "MSR_TEST_CTRL writes (detection stays on)");
        ensure_eq!(ac::detection_in_msr(), Some(true), "detection");
        Ok(())
    })
}

fn user_split_lock_ratelimit_delays_a_task_over_budget() -> TestResult {
    const BUDGET: u64 = 2;
    ac::with_mode(Mode::Ratelimit(BUDGET as u32), || {
        let split = user_lines() + SPLIT_DWORD;
        // Within budget: no wait (counted by the handler, not timed: a busy host may take its
        // time over the split locks, which must still not count as a wait).
        let before = ac::stats();
        let id = spawn_user("ac-split-budget", ac_user_split_locks, BUDGET)?;
        join_yielding(id)?;
        ensure_eq!(ac::stats().waits, before.waits, "waits within the budget");
        // One over budget: the task waits for the next one-second window, which starts one
        // second after its first split lock (itself after `start`).
        let value = load_u32(split);
        let seq = decided()?;
        let start = arch::ticks();
        let id = spawn_user("ac-split-over", ac_user_split_locks, BUDGET + 1)?;
        let status = join_yielding(id)?;
        let over = arch::ticks() - start;
        ensure_eq!(status, ExitStatus::Returned(u64::from(value.wrapping_add(BUDGET as u32 + 1))), "the task's result");
        expect_verdicts(seq, BUDGET + 1, Verdict::InjectedSplitLock)?;
        let after = ac::stats();
        ensure_eq!(after.waits - before.waits, 1, "waits");
        ensure!(over >= HZ, "{} split locks took {over} ticks, expected a wait to at least {HZ}", BUDGET + 1);
        ensure_eq!(after.user_split_locks - before.user_split_locks, 2 * BUDGET + 1, "user split locks");
        Ok(())
    })
}

fn user_split_lock_with_alignment_checks_is_an_alignment_check() -> TestResult {
    // Even under `fatal`, the task that asked for alignment checks gets an alignment check (its
    // hook retries, the locked add completes); and with detection off it gets one all the same,
    // because the CPU cannot tell its split lock from a misaligned access.
    ac::with_mode(Mode::Fatal, checked_split_lock_is_an_alignment_check)?;
    ac::with_mode(Mode::Off, checked_split_lock_is_an_alignment_check)
}

/// A user task with RFLAGS.AC set split-locks: the host injects an alignment check, the task's
/// hook sees it and retries without checks.
fn checked_split_lock_is_an_alignment_check() -> TestResult {
    let split = user_lines() + SPLIT_DWORD;
    let value = load_u32(split);
    reset_hook();
    let before = ac::stats();
    let seq = decided()?;
    let id = spawn_user("ac-checked-split", ac_user_checked_split_lock, 0)?;
    task::set_fault_hook(id, Some(retry_without_alignment_checks));
    let status = join(id)?;
    ensure_eq!(status, ExitStatus::Returned(0), "the task after its hook retried");
    expect_verdicts(seq, 1, Verdict::InjectedAlignmentCheck)?;
    ensure_eq!(HOOK_CALLS.load(Ordering::SeqCst), 1, "calls of the task's fault hook");
    let insn = core::ptr::addr_of!(ac_user_checked_split_lock_insn) as u64;
    ensure_eq_hex!(HOOK_RIP.load(Ordering::SeqCst), insn, "RIP of the #AC");
    ensure_eq_hex!(load_u32(split), value.wrapping_add(1), "the locked add ran once");
    let after = ac::stats();
    ensure_eq!(after.alignment_checks - before.alignment_checks, 1, "alignment checks");
    ensure_eq!(after.user_split_locks, before.user_split_locks, "user split locks");
    ensure_eq!(after.tasks_killed, before.tasks_killed, "tasks ended");
    Ok(())
}

fn kernel_split_lock_warn_continues_with_detection_off_until_switch() -> TestResult {
    ac::with_mode(Mode::Warn, || {
        let split = kernel_lines() + SPLIT_DWORD;
        let before = ac::stats();
        for round in 1..=2u32 {
            let value = load_u32(split);
            let seq = decided()?;
            kernel_access(ac_kernel_locked_add, split);
            expect_verdicts(seq, 1, Verdict::InjectedSplitLock)?;
            ensure_eq_hex!(load_u32(split), value.wrapping_add(1), "round {round}: the locked add ran once");
            let s = ac::status();
            ensure!(s.sld_disabled_until_switch && !s.detection_on, "round {round}: detection not off after it: {s:?}");
            ensure_eq!(ac::detection_in_msr(), Some(false), "round {round}: MSR_TEST_CTRL right after the split lock");
            task::sleep_ticks(1);
            ensure_eq!(ac::detection_in_msr(), Some(true), "round {round}: MSR_TEST_CTRL after a task switch");
        }
        let after = ac::stats();
        ensure_eq!(after.kernel_split_locks - before.kernel_split_locks, 2, "kernel split locks");
        ensure_eq!(after.reenabled_at_switch - before.reenabled_at_switch, 2, "re-enables at a task switch");
        Ok(())
    })
}

fn host_spares_a_guest_with_detection_off() -> TestResult {
    // Detection off (mode `off`): under the default host policy the split lock just runs, in
    // the kernel and in a user task alike.
    ac::with_mode(Mode::Off, || {
        ensure_eq!(ac::status().detection_on, false, "detection under sld=off");
        let split = kernel_lines() + SPLIT_DWORD;
        let value = load_u32(split);
        let before = ac::stats();
        let seq = decided()?;
        kernel_access(ac_kernel_locked_add, split);
        expect_verdicts(seq, 1, Verdict::GuestDetectionOff)?;
        ensure_eq_hex!(load_u32(split), value.wrapping_add(1), "the kernel's locked add ran once");
        let value = load_u32(user_lines() + SPLIT_DWORD);
        let id = spawn_user("ac-split-off", ac_user_split_locks, 1)?;
        let status = join(id)?;
        ensure_eq!(status, ExitStatus::Returned(u64::from(value.wrapping_add(1))), "the user task's locked add");
        expect_verdicts(seq, 2, Verdict::GuestDetectionOff)?;
        ensure_eq!(ac::stats(), before, "#AC handling for a guest that did not ask for it");
        Ok(())
    })
}

fn spurious_ac_is_ignored() -> TestResult {
    ac::with_mode(Mode::Off, || {
        let target = kernel_lines();
        let value = load_u32(target);
        let before = ac::stats();
        let seq = decided()?;
        // SAFETY: a dword inside KERNEL_LINES; the trigger page is mapped (the test needs Need::SldTrigger).
        unsafe { ac_kernel_plain_add(target, 0, sld::ARM_FORCE_INJECT) };
        expect_verdicts(seq, 1, Verdict::InjectedForced)?;
        let after = ac::stats();
        ensure_eq!(after.spurious - before.spurious, 1, "spurious #AC counted");
        ensure_eq!(after.kernel_split_locks, before.kernel_split_locks, "kernel split locks");
        ensure_eq_hex!(load_u32(target), value.wrapping_add(1), "the instruction ran once after the ignored #AC");
        Ok(())
    })
}

fn kernel_split_lock_fatal_panics() -> TestResult {
    ac::with_mode(Mode::Fatal, || {
        kernel_access(ac_kernel_locked_add, kernel_lines() + SPLIT_DWORD);
        Err(fail(format_args!("a kernel split lock under sld=fatal did not end the run")))
    })
}

fn host_policy_exit_stops_the_run() -> TestResult {
    ac::with_mode(Mode::Off, || {
        kernel_access(ac_kernel_locked_add, kernel_lines() + SPLIT_DWORD);
        let verdict = host_verdict()?;
        Err(fail(format_args!("the host let the split lock run (verdict {verdict:?}); policy exit expected")))
    })
}

fn host_policy_disable_globally() -> TestResult {
    let split = kernel_lines() + SPLIT_DWORD;
    let before = ac::stats();
    let seq = decided()?;
    // A split lock from a guest with detection off makes the host switch detection off for
    // the whole VM...
    ac::with_mode(Mode::Off, || {
        kernel_access(ac_kernel_locked_add, split);
        expect_verdicts(seq, 1, Verdict::DisabledGlobally)
    })?;
    // ...so that even with the guest's detection on, no split lock gets #AC any more.
    ac::with_mode(Mode::Warn, || {
        ensure_eq!(ac::detection_in_msr(), Some(true), "the guest's own detection bit");
        kernel_access(ac_kernel_locked_add, split);
        expect_verdicts(seq, 2, Verdict::DisabledGlobally)
    })?;
    ensure_eq!(ac::stats().kernel_split_locks, before.kernel_split_locks, "#AC after the global disable");
    // A task's own alignment checks are not split-lock detection: they still raise #AC.
    ac::with_mode(Mode::Warn, checked_split_lock_is_an_alignment_check)
}
