//! The #AC handler, the boot-time setup and the task-switch hook: the glue between the
//! hardware, the scheduler and [`super::policy`].
//!
//! Per-vCPU state records what the kernel last wrote to MSR_TEST_CTRL and whether detection
//! was switched off for the running task (or kernel code) and must come back on at the next
//! task switch, so that one task's split lock never switches detection off for the others.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvagent_abi::breach::Breach;
use pvagent_abi::sld;
use x86_64::registers::control::{Cr0, Cr0Flags};
use x86_64::registers::rflags::RFlags;

use super::hw::{self, TestCtrl};
use super::policy::{self, AcKind, AcState, Enumeration, KernelAction, Mode, RateLimit, SiteSet, UserAction};

use crate::arch::cpu;
use crate::arch::fault::Fault;
use crate::arch::percpu::{CpuLocal, MAX_CPUS};
use crate::arch::time::HZ;
use crate::arch::trap::{self, TrapFrame};
use crate::boot::cmdline::Cmdline;
use crate::pv::breach;
use crate::sync::CpuCell;
use crate::task::table::{ExitStatus, MAX_TASKS, TaskId};
use crate::task::{self, FaultAction};
use crate::{kprintln, kreport};

/// At most this many split-lock and spurious-#AC messages per [`MESSAGE_INTERVAL`] per vCPU.
const MESSAGE_BURST: u32 = 10;
/// Five seconds, as Linux's printk rate limit.
const MESSAGE_INTERVAL: u64 = 5 * HZ;

static ENUMERATION: spin::Once<Enumeration> = spin::Once::new();

const MODE_OFF: u8 = 0;
const MODE_WARN: u8 = 1;
const MODE_FATAL: u8 = 2;
const MODE_RATELIMIT: u8 = 3;
/// The mode as one word (kind in bits 7:0, the ratelimit budget in bits 63:8), so that kind and
/// budget are never read torn.
static MODE_WORD: AtomicU64 = AtomicU64::new(MODE_WARN as u64);

/// The split-lock mode in force.
pub fn mode() -> Mode {
    let word = MODE_WORD.load(Ordering::Acquire);
    match word as u8 {
        MODE_OFF => Mode::Off,
        MODE_FATAL => Mode::Fatal,
        MODE_RATELIMIT => Mode::Ratelimit((word >> 8) as u32),
        _ => Mode::Warn,
    }
}

fn store_mode(mode: Mode) {
    let word = match mode {
        Mode::Off => u64::from(MODE_OFF),
        Mode::Warn => u64::from(MODE_WARN),
        Mode::Fatal => u64::from(MODE_FATAL),
        Mode::Ratelimit(n) => u64::from(MODE_RATELIMIT) | (u64::from(n) << 8),
    };
    MODE_WORD.store(word, Ordering::Release);
}

/// What the enumeration found (before `init`: nothing yet, reported as absent).
pub fn enumeration() -> Enumeration {
    ENUMERATION.get().copied().unwrap_or(Enumeration::NoCoreCapabilities)
}

fn test_ctrl() -> Option<TestCtrl> {
    TestCtrl::new(enumeration())
}

#[derive(Clone, Copy, Debug)]
struct TaskAc {
    /// The task this slot's state belongs to; a new task in the slot starts afresh.
    id: Option<TaskId>,
    budget: RateLimit,
}

#[derive(Debug)]
struct CpuAc {
    /// Whether MSR_TEST_CTRL's detection bit is set on this vCPU, as the kernel last wrote it.
    detection_on: bool,
    /// The host broke MSR_TEST_CTRL on this vCPU (it faulted, or did not keep the detection
    /// bit): the kernel no longer uses it here, and said so.
    test_ctrl_broken: bool,
    tasks: [TaskAc; MAX_TASKS],
    kernel_sites: SiteSet,
    messages: RateLimit,
}

impl CpuAc {
    fn budget(&mut self, id: TaskId) -> &mut RateLimit {
        let t = &mut self.tasks[usize::from(id.slot)];
        if t.id != Some(id) {
            *t = TaskAc { id: Some(id), budget: RateLimit::new() };
        }
        &mut t.budget
    }

    /// Writes the detection bit if it changes (every write is an exit the host counts).
    fn set_detection(&mut self, on: bool) {
        let Some(msr) = test_ctrl() else {
            return;
        };
        if self.detection_on != on && !self.test_ctrl_broken {
            match msr.set_detection(on) {
                Ok(()) => self.detection_on = on,
                Err(f) => self.test_ctrl_broke(Breach::TestCtrlFaults, f.error_code),
            }
            COUNTERS.test_ctrl_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After turning detection on: reads MSR_TEST_CTRL back, so that a host that faults on it
    /// or drops the bit does not leave detection off while the kernel believes it on. Once per
    /// mode change (boot, `with_mode`) and once per switch that turns it back on after a split
    /// lock (`on_switch`), never on a switch that writes nothing.
    fn check_detection_stuck(&mut self) {
        let Some(msr) = test_ctrl().filter(|_| self.detection_on && !self.test_ctrl_broken) else {
            return;
        };
        match msr.read() {
            Ok(value) if value & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0 => {}
            Ok(value) => self.test_ctrl_broke(Breach::TestCtrlNotKept, value),
            Err(f) => self.test_ctrl_broke(Breach::TestCtrlFaults, f.error_code),
        }
    }

    /// The host broke MSR_TEST_CTRL on this vCPU: counted, said once, and the MSR left alone
    /// here from now on (detection is what the host made it: off, as far as anyone can tell).
    #[cold]
    fn test_ctrl_broke(&mut self, rule: Breach, value: u64) {
        self.test_ctrl_broken = true;
        self.detection_on = false;
        let cpu = crate::arch::percpu::index();
        if breach::note(rule, value, cpu as u64) {
            kreport!(
                "ac: MSR_TEST_CTRL on vCPU {cpu} (value or error code {value:#x}): host broke {rule}; split-lock detection is OFF on this vCPU, not used again"
            );
        }
    }

    fn disable_until_switch(&mut self) {
        self.set_detection(false);
        SLD_DISABLED_UNTIL_SWITCH.get().store(true, Ordering::Relaxed);
    }

    fn message_allowed(&mut self) -> bool {
        self.messages.try_take(crate::arch::ticks(), MESSAGE_BURST, MESSAGE_INTERVAL)
    }
}

static CPU: CpuCell<CpuAc> = CpuCell::new(
    [const {
        CpuAc {
            detection_on: false,
            test_ctrl_broken: false,
            tasks: [TaskAc { id: None, budget: RateLimit::new() }; MAX_TASKS],
            kernel_sites: SiteSet::new(),
            messages: RateLimit::new(),
        }
    }; MAX_CPUS],
);

fn with_cpu<R>(f: impl FnOnce(&mut CpuAc) -> R) -> R {
    CPU.with(f)
}

/// Per vCPU: detection was switched off for the running task (or kernel code) and is switched
/// back on at the next task switch. Outside [`CpuAc`], so that the switch hook, which runs on
/// every task switch, looks at it without borrowing the rest; only its own vCPU writes it, with
/// interrupts off (in [`CpuAc`]'s borrow or in the switch hook).
static SLD_DISABLED_UNTIL_SWITCH: CpuLocal<AtomicBool> = CpuLocal::new([const { AtomicBool::new(false) }; MAX_CPUS]);

/// Event counts since boot, for the self-tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Alignment checks tasks asked for (delivered to the task).
    pub alignment_checks: u64,
    pub user_split_locks: u64,
    pub kernel_split_locks: u64,
    /// #AC with detection off and no alignment check asked for.
    pub spurious: u64,
    /// Tasks ended for a split lock (`fatal`).
    pub tasks_killed: u64,
    /// Times a task over its `ratelimit` budget was made to wait, and the ticks it waited.
    pub waits: u64,
    pub wait_ticks: u64,
    /// Times detection came back on at a task switch.
    pub reenabled_at_switch: u64,
    /// Writes to MSR_TEST_CTRL.
    pub test_ctrl_writes: u64,
    /// #AC taken while this vCPU was inside its split-lock bookkeeping (injected by the host:
    /// nothing there splits a lock): ignored.
    pub reentered: u64,
    /// #AC with an error code other than 0: ignored.
    pub bad_error_codes: u64,
    /// #AC classified as a split lock at an instruction that is none: ignored.
    pub claimed_split_locks_refuted: u64,
}

struct Counters {
    alignment_checks: AtomicU64,
    user_split_locks: AtomicU64,
    kernel_split_locks: AtomicU64,
    spurious: AtomicU64,
    tasks_killed: AtomicU64,
    waits: AtomicU64,
    wait_ticks: AtomicU64,
    reenabled_at_switch: AtomicU64,
    test_ctrl_writes: AtomicU64,
    reentered: AtomicU64,
    bad_error_codes: AtomicU64,
    claimed_split_locks_refuted: AtomicU64,
}

static COUNTERS: Counters = Counters {
    alignment_checks: AtomicU64::new(0),
    user_split_locks: AtomicU64::new(0),
    kernel_split_locks: AtomicU64::new(0),
    spurious: AtomicU64::new(0),
    tasks_killed: AtomicU64::new(0),
    waits: AtomicU64::new(0),
    wait_ticks: AtomicU64::new(0),
    reenabled_at_switch: AtomicU64::new(0),
    test_ctrl_writes: AtomicU64::new(0),
    reentered: AtomicU64::new(0),
    bad_error_codes: AtomicU64::new(0),
    claimed_split_locks_refuted: AtomicU64::new(0),
};

/// The counters now.
pub fn stats() -> Stats {
    let c = &COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        alignment_checks: get(&c.alignment_checks),
        user_split_locks: get(&c.user_split_locks),
        kernel_split_locks: get(&c.kernel_split_locks),
        spurious: get(&c.spurious),
        tasks_killed: get(&c.tasks_killed),
        waits: get(&c.waits),
        wait_ticks: get(&c.wait_ticks),
        reenabled_at_switch: get(&c.reenabled_at_switch),
        test_ctrl_writes: get(&c.test_ctrl_writes),
        reentered: get(&c.reentered),
        bad_error_codes: get(&c.bad_error_codes),
        claimed_split_locks_refuted: get(&c.claimed_split_locks_refuted),
    }
}

/// This vCPU's split-lock state, for self-tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub enumeration: Enumeration,
    pub mode: Mode,
    /// Detection on this vCPU, as the kernel last wrote it.
    pub detection_on: bool,
    /// Detection was switched off until the next task switch.
    pub sld_disabled_until_switch: bool,
    /// The host broke MSR_TEST_CTRL on this vCPU: detection is not used here.
    pub test_ctrl_broken: bool,
}

/// This vCPU's state now.
pub fn status() -> Status {
    let (detection_on, sld_disabled_until_switch, test_ctrl_broken) =
        with_cpu(|c| (c.detection_on, SLD_DISABLED_UNTIL_SWITCH.get().load(Ordering::Relaxed), c.test_ctrl_broken));
    Status { enumeration: enumeration(), mode: mode(), detection_on, sld_disabled_until_switch, test_ctrl_broken }
}

/// Detection as MSR_TEST_CTRL itself reads back (under the host stub: the value the host
/// keeps for this vCPU); `None` when the MSR was not enumerated.
pub fn detection_in_msr() -> Option<bool> {
    test_ctrl().and_then(TestCtrl::detection_on)
}

/// Runs `f` under another split-lock mode, then restores the previous one, on every online
/// vCPU: the mode is one for the kernel, and each vCPU's MSR_TEST_CTRL follows it (see
/// `set_mode_everywhere`). The self-tests use it to cover every mode in one boot; the boot
/// mode comes from `sld=`. Call it from a task (it joins tasks placed on the other vCPUs), and
/// never while another vCPU's running task waits for this one without switching.
pub fn with_mode<R>(mode: Mode, f: impl FnOnce() -> R) -> R {
    let old = self::mode();
    set_mode_everywhere(mode);
    let result = f();
    set_mode_everywhere(old);
    result
}

/// Stores `mode` and puts detection where it wants it on every online vCPU: here at once, on
/// each other one by a task placed there, joined before the next (MSR_TEST_CTRL is per vCPU,
/// and only the vCPU itself can write its own). When this returns, every online vCPU's
/// detection says `mode`, and a task switched off by `warn` on any of them is switched back.
fn set_mode_everywhere(mode: Mode) {
    fn apply_here(_: u64) -> u64 {
        apply_mode_here();
        0
    }
    store_mode(mode);
    apply_mode_here();
    let here = crate::arch::percpu::index();
    for cpu in (0..crate::arch::platform().cpus.count()).filter(|&cpu| cpu != here && crate::arch::smp::is_online(cpu))
    {
        let applied = task::remote::spawn_kernel_on(cpu, "sld-mode", apply_here, 0).map(|t| t.join());
        if !matches!(applied, Ok(Ok(_))) {
            crate::arch::fault::fatal(format_args!(
                "ac: the split-lock mode could not be applied on vCPU {cpu}: {applied:?}"
            ));
        }
    }
}

/// Puts this vCPU's detection where the mode wants it.
fn apply_mode_here() {
    let on = mode().wants_detection();
    with_cpu(|c| {
        SLD_DISABLED_UNTIL_SWITCH.get().store(false, Ordering::Relaxed);
        c.set_detection(on);
        c.check_detection_stuck();
    });
}

/// Reads `sld=`, enumerates detection, turns on CR0.AM, registers the #AC handler and the
/// switch hook, and sets this vCPU's detection as the mode says.
pub fn init(cmdline: &Cmdline) {
    let mode = match cmdline.get("sld") {
        None => Mode::DEFAULT,
        Some(text) => Mode::parse(text).unwrap_or_else(|e| {
            kprintln!("ac: warning: sld={text:?} ignored ({e}); using sld={}", Mode::DEFAULT);
            Mode::DEFAULT
        }),
    };
    store_mode(mode);
    let enumeration = *ENUMERATION.call_once(hw::enumerate);
    // With CR0.AM set, alignment checks happen for exactly the CPL 3 code that sets RFLAGS.AC
    // itself (new tasks start with it clear); the kernel is never checked.
    // SAFETY: only CR0.AM changes; paging, protection and write protection stay as they are.
    unsafe { Cr0::write_raw(Cr0::read_raw() | Cr0Flags::ALIGNMENT_MASK.bits()) };
    if super::trigger::available() {
        super::trigger::map();
    }
    trap::register(sld::AC_VECTOR, on_alignment_check);
    if task::add_switch_hook(on_switch).is_err() {
        crate::arch::fault::fatal(format_args!("ac: no room for the task switch hook"));
    }
    apply_mode_here();
    let cpuid_bit = cpu::cpuid(sld::CPUID_LEAF, sld::CPUID_SUBLEAF).edx & sld::CPUID7_EDX_CORE_CAPABILITIES != 0;
    let found = match enumeration {
        Enumeration::Available if cpuid_bit => "available",
        Enumeration::Available => {
            "available (IA32_CORE_CAPABILITIES from the host stub's leaf: CPUID.7.0:EDX[30] is hidden here)"
        }
        Enumeration::NoCoreCapabilities => "unavailable (CPUID.7.0:EDX[30] clear)",
        Enumeration::NotInCoreCapabilities => "unavailable (IA32_CORE_CAPABILITIES bit 5 clear)",
    };
    kprintln!("ac: split-lock detection {found}, sld={mode}; alignment checks for tasks that set RFLAGS.AC");
}

/// An AP's part of [`init`] (which ran on the boot vCPU): CR0.AM and this vCPU's detection as
/// the mode says. The #AC handler and the switch hook are every vCPU's already.
pub fn init_cpu() {
    // SAFETY: only CR0.AM changes, as in `init`.
    unsafe { Cr0::write_raw(Cr0::read_raw() | Cr0Flags::ALIGNMENT_MASK.bits()) };
    apply_mode_here();
}

/// The switch hook: detection switched off for the outgoing task comes back on. Called with
/// interrupts off on every task switch, so the common case (nothing to do) is one load.
fn on_switch(_from: TaskId, _to: TaskId) {
    let disabled = SLD_DISABLED_UNTIL_SWITCH.get();
    if !disabled.load(Ordering::Relaxed) {
        return;
    }
    disabled.store(false, Ordering::Relaxed);
    // Read back, as at a mode change: a host that drops bit 29 from this write would otherwise
    // leave detection off for good while the kernel believes it on. Only after a split lock
    // switched it off (the rare path), so the common switch still costs one load.
    with_cpu(|c| {
        c.set_detection(mode().wants_detection());
        c.check_detection_stuck();
    });
    COUNTERS.reenabled_at_switch.fetch_add(1, Ordering::Relaxed);
}

/// Vector 17. An exception interrupts whatever runs, interrupts off or not: a host may inject
/// one while this vCPU is inside its own split-lock bookkeeping. Nothing real raises #AC there
/// (no split lock in it), so such an #AC is counted and ignored; and reports from here never
/// wait for the console.
fn on_alignment_check(frame: &mut TrapFrame) {
    if frame.error_code != 0 {
        return bad_error_code(frame);
    }
    let (cpl, rflags_ac) = (frame.cpl(), frame.flags().contains(RFlags::ALIGNMENT_CHECK));
    let cr0_am = Cr0::read().contains(Cr0Flags::ALIGNMENT_MASK);
    // Classified in the one borrow that reads this vCPU's detection state; a spurious #AC (the
    // benchmark's, a misbehaving host's) also takes its message budget there, so the common
    // case of an #AC that is only counted needs no second borrow.
    let classified = CPU.try_with(|c| {
        let kind = policy::classify(AcState { cpl, rflags_ac, cr0_am, detection_on: c.detection_on });
        (kind, kind == AcKind::Spurious && c.message_allowed())
    });
    let Some((kind, say)) = classified else {
        COUNTERS.reentered.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match kind {
        AcKind::UserAlignmentCheck => alignment_check(frame),
        // The rare path: the instruction is decoded to check the claim first.
        AcKind::UserSplitLock if split_lock_at_rip(frame) => user_split_lock(frame),
        AcKind::KernelSplitLock if split_lock_at_rip(frame) => kernel_split_lock(frame),
        AcKind::UserSplitLock | AcKind::KernelSplitLock => {}
        AcKind::Spurious => spurious(frame, say),
    }
}

fn alignment_check(frame: &mut TrapFrame) {
    COUNTERS.alignment_checks.fetch_add(1, Ordering::Relaxed);
    let fault = Fault::from_frame(frame);
    if task::run_fault_hook(frame, &fault) == Some(FaultAction::Resume) {
        return;
    }
    let id = task::current();
    let rip = frame.rip;
    let address = super::operand::address_at(frame);
    match address {
        Some(address) => {
            kreport!("ac: task {} (user) ended: alignment check at rip {rip:#x}, address {address:#x}", task::name(id))
        }
        None => {
            kreport!("ac: task {} (user) ended: alignment check at rip {rip:#x}, address not decodable", task::name(id))
        }
    }
    task::exit_current(ExitStatus::Killed(super::Kill::AlignmentCheck { rip, address }.into()));
}

fn user_split_lock(frame: &mut TrapFrame) {
    COUNTERS.user_split_locks.fetch_add(1, Ordering::Relaxed);
    let id = task::current();
    let mode = mode();
    let now = crate::arch::ticks();
    let (action, say) = with_cpu(|c| (policy::user_action(mode, c.budget(id), now, HZ), c.message_allowed()));
    match action {
        UserAction::Kill => {
            COUNTERS.tasks_killed.fetch_add(1, Ordering::Relaxed);
            kreport!("ac: task {} (user) ended: split lock at rip {:#x} (sld={mode})", task::name(id), frame.rip);
            task::exit_current(ExitStatus::Killed(super::Kill::SplitLock { rip: frame.rip }.into()));
        }
        UserAction::Continue { wait_ticks } => {
            if say {
                kreport!(
                    "ac: split lock by task {} at rip {:#x} (sld={mode}): detection off on this vCPU until the task is switched out",
                    task::name(id),
                    frame.rip
                );
            }
            if wait_ticks > 0 {
                COUNTERS.waits.fetch_add(1, Ordering::Relaxed);
                COUNTERS.wait_ticks.fetch_add(wait_ticks, Ordering::Relaxed);
                // The task waits here, inside its #AC; the switches meanwhile turn detection
                // back on, so it is switched off only once the task runs again.
                task::sleep_ticks(wait_ticks);
            }
            with_cpu(CpuAc::disable_until_switch);
        }
    }
}

fn kernel_split_lock(frame: &mut TrapFrame) {
    COUNTERS.kernel_split_locks.fetch_add(1, Ordering::Relaxed);
    match policy::kernel_action(mode()) {
        KernelAction::Panic => panic!("split lock in the kernel at rip {:#x} (sld=fatal)", frame.rip),
        KernelAction::Continue => {
            let first = with_cpu(|c| {
                c.disable_until_switch();
                c.kernel_sites.first_time(frame.rip)
            });
            if first {
                kreport!(
                    "ac: split lock in the kernel at rip {:#x}, a kernel bug (reported once per site): detection off on this vCPU until the next task switch",
                    frame.rip
                );
            }
        }
    }
}

/// An #AC with an error code: the processor always pushes 0, so no processor raised it. Counted,
/// reported once, ignored (the instruction runs again: a real split lock would raise a real #AC).
#[cold]
fn bad_error_code(frame: &TrapFrame) {
    COUNTERS.bad_error_codes.fetch_add(1, Ordering::Relaxed);
    if breach::note(Breach::AcErrorCodeNotZero, frame.error_code, frame.rip) {
        kreport!(
            "ac: #AC with error code {:#x} at rip {:#x} (host broke {}): the processor pushes 0; ignored",
            frame.error_code,
            frame.rip,
            Breach::AcErrorCodeNotZero
        );
    }
}

/// Whether the instruction at the frame's RIP, by the kernel's own decoding, is a split lock,
/// as an #AC classified as one claims. One that decodes to no locked access, or to one within a
/// cache line, is a host's breach: counted, reported once, ignored (detection stays on, no
/// task ends, `fatal` does not stop the run), and so is one whose bytes stop (at a page that is
/// not mapped) before the instruction ends, which the processor could not have fetched. One the
/// decoder does not cover is taken at its word.
#[cold]
fn split_lock_at_rip(frame: &TrapFrame) -> bool {
    use super::operand::{self, LockedAccess};
    let (access, bytes) = match operand::instruction_at(frame.rip) {
        Some((bytes, len)) => (operand::locked_access(&bytes[..len]), bytes),
        // Not a byte readable at RIP: no instruction the processor fetched there.
        None => (LockedAccess::NotLocked, [0; 16]),
    };
    let found = match access {
        LockedAccess::Unknown => return true,
        LockedAccess::Locked { size, .. } => {
            let address = access.address(frame.rip, |r| operand::register(frame, r)).unwrap_or_default();
            if sld::crosses_cache_line(address, size) {
                return true;
            }
            (address, size)
        }
        LockedAccess::NotLocked => (0, 0),
    };
    COUNTERS.claimed_split_locks_refuted.fetch_add(1, Ordering::Relaxed);
    let first_bytes =
        u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    if breach::note(Breach::AcNoSplitLockAtRip, frame.rip, first_bytes) {
        kreport!(
            "ac: #AC claimed a split lock at rip {:#x} (cpl {}), but the instruction there (bytes {first_bytes:#018x}: {}) is none (host broke {}); ignored",
            frame.rip,
            frame.cpl(),
            NoSplitLock(found),
            Breach::AcNoSplitLockAtRip
        );
    }
    false
}

/// What the decoding found instead of a split lock, for the report: `(address, size)`, size 0
/// for no locked access at all.
struct NoSplitLock((u64, u64));

impl core::fmt::Display for NoSplitLock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            (_, 0) => f.write_str("no locked memory access"),
            (address, size) => write!(f, "a locked access of {size} bytes at {address:#x}, within one cache line"),
        }
    }
}

/// A spurious #AC is counted, and reported when the message budget allowed (`say`). With
/// detection off and no alignment check asked for, only a host can have raised it
/// ([`Breach::AcWhileDetectionOff`]).
fn spurious(frame: &mut TrapFrame, say: bool) {
    COUNTERS.spurious.fetch_add(1, Ordering::Relaxed);
    breach::note(Breach::AcWhileDetectionOff, frame.rip, u64::from(frame.cpl()));
    if say {
        kreport!(
            "ac: spurious #AC at rip {:#x} (cpl {}): split-lock detection is off and no alignment check was asked for; ignored",
            frame.rip,
            frame.cpl()
        );
    }
}
