//! The hostile host of split-lock detection (`Breach` 0x300.. and the split-lock answers at boot,
//! 0x500..): an #AC that claims a split lock where the guest's own decoding finds none, one
//! with an error code, one for a guest whose detection is off, and MSR_TEST_CTRL and
//! IA32_CORE_CAPABILITIES answers that break what CPUID promised (armed from the start by the
//! end-to-end tests with `--break`; the check here holds on every run). Each #AC comes from the
//! host stub's trigger, armed with `HostBreak` for the rule.

use pvagent_abi::breach::Breach;
use pvagent_abi::report::Need;
use pvagent_abi::sld::{self, Verdict};

use super::{SelfTest, TestResult, arm, counted, fail, first};
use crate::cell::StaticCell;
use crate::pv::ac::policy::Mode;
use crate::pv::ac::{self, trigger};
use crate::pv::breach;
use crate::{ensure, ensure_eq, ensure_eq_hex};

/// The trigger, and detection to turn on.
const SPLIT_LOCKS: &[Need] = &[Need::HostStub, Need::SldTrigger, Need::SldDetection];
/// Only the trigger (a guest with detection off).
const TRIGGER: &[Need] = &[Need::HostStub, Need::SldTrigger];

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("hostile::ac::no_split_lock_at_rip_is_ignored", no_split_lock_at_rip_is_ignored).needs(SPLIT_LOCKS),
    SelfTest::new("hostile::ac::error_code_not_zero_is_ignored", error_code_not_zero_is_ignored).needs(SPLIT_LOCKS),
    SelfTest::new("hostile::ac::ac_while_detection_off_is_ignored", ac_while_detection_off_is_ignored).needs(TRIGGER),
    SelfTest::new("hostile::ac::detection_is_what_the_kernel_believes", detection_is_what_the_kernel_believes),
    // Leaves this vCPU's MSR_TEST_CTRL unused for the rest of the boot: run alone, from
    // `tests/hostile_boot.rs`.
    SelfTest::on_request("hostile::ac::test_ctrl_dropped_at_a_switch_is_found", test_ctrl_dropped_at_a_switch_is_found)
        .needs(SPLIT_LOCKS),
];

/// Two cache lines of the kernel's own, for the accesses the trigger arms.
#[repr(C, align(64))]
struct Lines([u8; 128]);
static LINES: StaticCell<Lines> = StaticCell::new(Lines([0; 128]));

/// A dword within the first line (no split lock), and one across the two lines.
const ALIGNED_DWORD: u64 = 8;
const SPLIT_DWORD: u64 = 62;

// SAFETY: defined in `selftest::ac`'s `global_asm!` with these signatures: each stores the flags
// `dl` to the trigger page, then makes one access to the dword at `rdi`.
unsafe extern "sysv64" {
    fn ac_kernel_locked_add(addr: u64, value: u64, flags: u64);
    fn ac_kernel_plain_add(addr: u64, value: u64, flags: u64);
}

fn dword(offset: u64) -> u64 {
    LINES.get() as u64 + offset
}

/// The dword at `addr`, at any alignment (the split one is not aligned).
fn load_u32(addr: u64) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        // SAFETY: `addr` is a dword inside LINES (callers pass `dword(..)`), read volatile
        // because the access under test changed it.
        *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
    }
    u32::from_le_bytes(bytes)
}

/// Runs `routine` on the dword at `offset` after a plain trigger (no flags), and checks that
/// the host decided on it with `expected` and the access ran exactly once.
fn triggered(routine: unsafe extern "sysv64" fn(u64, u64, u64), offset: u64, expected: Verdict) -> TestResult {
    let addr = dword(offset);
    let value = load_u32(addr);
    let (seq, _) = trigger::verdict().map_err(|e| fail(format_args!("the host's verdict: {e:?}")))?;
    // SAFETY: the dword lies inside LINES; the trigger page is mapped (the tests need the trigger).
    unsafe { routine(addr, 0, 0) };
    let (now, verdict) = trigger::verdict().map_err(|e| fail(format_args!("the host's verdict: {e:?}")))?;
    ensure_eq!((now - seq, verdict), (1, Ok(expected)), "(triggers decided, the host's verdict)");
    ensure_eq_hex!(load_u32(addr), value.wrapping_add(1), "the access ran once after the #AC");
    Ok(())
}

/// Detection on: the host injects a "split lock" #AC at a plain ADD and at a LOCK ADD within
/// one line. The guest decodes each, finds no split lock, counts the breach and ignores the
/// #AC: detection stays on, nothing is reported as a kernel split lock (which `warn` would
/// answer by switching detection off), and the instruction runs once.
fn no_split_lock_at_rip_is_ignored() -> TestResult {
    let rule = Breach::AcNoSplitLockAtRip;
    ac::with_mode(Mode::Warn, || {
        let (before, stats) = (breach::count(rule), ac::stats());
        arm(rule)?;
        triggered(ac_kernel_plain_add, ALIGNED_DWORD, Verdict::InjectedForced)?;
        arm(rule)?;
        triggered(ac_kernel_locked_add, ALIGNED_DWORD, Verdict::InjectedForced)?;
        counted(rule, before, 2)?;
        let after = ac::stats();
        ensure_eq!(
            after.claimed_split_locks_refuted - stats.claimed_split_locks_refuted,
            2,
            "#AC whose split lock the decoding refuted"
        );
        ensure_eq!(after.kernel_split_locks, stats.kernel_split_locks, "kernel split locks handled");
        let s = ac::status();
        ensure!(s.detection_on && !s.sld_disabled_until_switch, "detection switched off for a bogus #AC: {s:?}");
        ensure_eq!(ac::detection_in_msr(), Some(true), "MSR_TEST_CTRL's detection bit");
        // A real split lock right after is still one: the check is no blanket refusal.
        triggered(ac_kernel_locked_add, SPLIT_DWORD, Verdict::InjectedSplitLock)?;
        ensure_eq!(ac::stats().kernel_split_locks - stats.kernel_split_locks, 1, "the real split lock handled");
        counted(rule, before, 2)
    })
}

/// Detection on, a real split lock: the host's #AC carries error code 0x11. No processor
/// pushes one for #AC: the guest counts it and ignores it (the trigger is one-shot, so the
/// locked add then runs), neither handling a split lock nor touching detection.
fn error_code_not_zero_is_ignored() -> TestResult {
    let rule = Breach::AcErrorCodeNotZero;
    ac::with_mode(Mode::Warn, || {
        let (before, stats) = (breach::count(rule), ac::stats());
        arm(rule)?;
        triggered(ac_kernel_locked_add, SPLIT_DWORD, Verdict::InjectedSplitLock)?;
        counted(rule, before, 1)?;
        if before == 0 {
            ensure_eq_hex!(first(rule)?[0], 0x11, "the error code the guest recorded");
        }
        let after = ac::stats();
        ensure_eq!(after.bad_error_codes - stats.bad_error_codes, 1, "#AC with an error code");
        ensure_eq!(after.kernel_split_locks, stats.kernel_split_locks, "kernel split locks handled");
        ensure!(ac::status().detection_on, "detection switched off by a bogus #AC");
        Ok(())
    })
}

/// Detection off: the host injects #AC for a real split lock anyway (seed 000's host never
/// does). The guest counts it as this breach (and as a spurious #AC) and ignores it.
fn ac_while_detection_off_is_ignored() -> TestResult {
    let rule = Breach::AcWhileDetectionOff;
    ac::with_mode(Mode::Off, || {
        let (before, stats) = (breach::count(rule), ac::stats());
        arm(rule)?;
        triggered(ac_kernel_locked_add, SPLIT_DWORD, Verdict::InjectedForced)?;
        counted(rule, before, 1)?;
        let after = ac::stats();
        ensure_eq!(after.spurious - stats.spurious, 1, "spurious #AC");
        ensure_eq!(after.kernel_split_locks, stats.kernel_split_locks, "kernel split locks handled");
        ensure!(!ac::status().detection_on, "detection turned on by the #AC");
        // Not armed: the same split lock runs, as the default host policy lets it.
        let policy = trigger::host_policy().map_err(|e| fail(format_args!("the host's policy: {e:?}")))?;
        if policy == Ok(sld::HostPolicy::InjectIfEnabled) {
            triggered(ac_kernel_locked_add, SPLIT_DWORD, Verdict::GuestDetectionOff)?;
            counted(rule, before, 1)?;
        }
        Ok(())
    })
}

/// What the kernel believes of detection on this vCPU is what MSR_TEST_CTRL says, whatever the
/// host did at boot: where the host broke the MSR (it faulted, or dropped bit 29: `--break
/// test-ctrl-faults`, `test-ctrl-not-kept`), the kernel counted it and believes detection off;
/// where IA32_CORE_CAPABILITIES faulted, detection is not enumerated at all. Never "on" in the
/// kernel's books and off in the register: a protection silently off.
fn detection_is_what_the_kernel_believes() -> TestResult {
    let s = ac::status();
    let broken = breach::count(Breach::TestCtrlFaults) + breach::count(Breach::TestCtrlNotKept);
    if s.test_ctrl_broken {
        ensure!(broken > 0, "MSR_TEST_CTRL marked broken with no breach counted");
        ensure!(!s.detection_on, "detection believed on over a broken MSR_TEST_CTRL");
    } else if s.enumeration.available() {
        ensure_eq!(ac::detection_in_msr(), Some(s.detection_on), "MSR_TEST_CTRL's bit against the kernel's belief");
    }
    if breach::count(Breach::CoreCapabilitiesFaults) > 0 {
        ensure!(!s.enumeration.available(), "detection enumerated through an IA32_CORE_CAPABILITIES that faulted");
    }
    if breach::count(Breach::CoreCapabilitiesGarbage) > 0 {
        ensure!(
            breach::first(Breach::CoreCapabilitiesGarbage).is_some_and(|[v, _]| v & !sld::CORE_CAPS_DEFINED != 0),
            "a garbage IA32_CORE_CAPABILITIES recorded without undefined bits"
        );
    }
    Ok(())
}

/// `warn` switches detection off for a kernel split lock until the next task switch, whose hook
/// writes bit 29 again; the host accepts that write and drops the bit. The kernel reads the MSR
/// back there too: it counts the breach and believes detection off, as the register says,
/// instead of believing it on while nothing detects (a protection silently off).
fn test_ctrl_dropped_at_a_switch_is_found() -> TestResult {
    let rule = Breach::TestCtrlNotKept;
    ac::with_mode(Mode::Warn, || {
        let before = breach::count(rule);
        triggered(ac_kernel_locked_add, SPLIT_DWORD, Verdict::InjectedSplitLock)?;
        let s = ac::status();
        ensure!(s.sld_disabled_until_switch && !s.detection_on, "warn did not switch detection off: {s:?}");
        arm(rule)?;
        // A switch to the idle task and back: the hook turns detection on again.
        crate::task::sleep_ticks(1);
        counted(rule, before, 1)?;
        let s = ac::status();
        ensure!(s.test_ctrl_broken && !s.detection_on, "the dropped bit went unnoticed: {s:?}");
        ensure_eq!(ac::detection_in_msr(), Some(s.detection_on), "MSR_TEST_CTRL's bit against the kernel's belief");
        Ok(())
    })
}
