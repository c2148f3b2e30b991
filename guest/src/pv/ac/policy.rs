//! The #AC decisions as plain code, unit-tested on the host: how split-lock detection is
//! enumerated, the boot mode, which of the three cases an #AC is, what each mode does about it,
//! the per-task rate limit and the once-per-site record of kernel split locks.

use core::fmt;

use pvagent_abi::sld;

/// What the boot command line (`sld=`) asks the kernel to do about split locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Detection stays off; the kernel never writes MSR_TEST_CTRL.
    Off,
    /// A split lock is logged (rate-limited), detection is switched off on this vCPU so the
    /// instruction completes, and switched back on when the task is switched out.
    Warn,
    /// A user split lock ends the task; a kernel split lock ends the run.
    Fatal,
    /// As `Warn`, but a task may split-lock at most this many times per second before it is
    /// made to wait for the next second.
    Ratelimit(u32),
}

/// Largest `ratelimit:N` accepted (Linux accepts the same range).
pub const RATELIMIT_MAX: u32 = 1000;

impl Mode {
    /// The mode without `sld=` on the command line.
    pub const DEFAULT: Mode = Mode::Warn;

    /// Parses `off`, `warn`, `fatal` or `ratelimit:N` (1 <= N <= [`RATELIMIT_MAX`]).
    pub fn parse(text: &str) -> Result<Mode, ModeError> {
        match text {
            "off" => Ok(Mode::Off),
            "warn" => Ok(Mode::Warn),
            "fatal" => Ok(Mode::Fatal),
            _ => {
                let Some(rate) = text.strip_prefix("ratelimit:") else {
                    return Err(ModeError::Unknown);
                };
                match rate.parse::<u32>() {
                    Ok(n) if (1..=RATELIMIT_MAX).contains(&n) => Ok(Mode::Ratelimit(n)),
                    _ => Err(ModeError::BadRate),
                }
            }
        }
    }

    /// Whether detection should be on while tasks run.
    pub const fn wants_detection(self) -> bool {
        !matches!(self, Mode::Off)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Off => f.write_str("off"),
            Mode::Warn => f.write_str("warn"),
            Mode::Fatal => f.write_str("fatal"),
            Mode::Ratelimit(n) => write!(f, "ratelimit:{n}"),
        }
    }
}

/// Why an `sld=` value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeError {
    /// Not one of the four forms.
    Unknown,
    /// `ratelimit:` without a number in 1..=1000.
    BadRate,
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeError::Unknown => f.write_str("expected off, warn, fatal or ratelimit:N"),
            ModeError::BadRate => write!(f, "ratelimit:N needs N in 1..={RATELIMIT_MAX}"),
        }
    }
}

/// What CPUID and IA32_CORE_CAPABILITIES say about split-lock detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enumeration {
    /// CPUID.(7,0):EDX bit 30 is clear: there is no IA32_CORE_CAPABILITIES to ask.
    NoCoreCapabilities,
    /// IA32_CORE_CAPABILITIES bit 5 is clear: MSR_TEST_CTRL has no detection bit.
    NotInCoreCapabilities,
    /// Detection exists: MSR_TEST_CTRL bit 29 turns it on.
    Available,
}

impl Enumeration {
    /// Follows the architectural chain. `host_says_core_capabilities` is the host stub's
    /// repetition of CPUID.(7,0):EDX bit 30 (`Features::CORE_CAPABILITIES`), for hypervisors that
    /// filter the architectural bit. `read_core_capabilities` is called only when one of the two
    /// says the MSR exists (reading a missing MSR raises #GP).
    pub fn probe(
        cpuid7_edx: u32,
        host_says_core_capabilities: bool,
        read_core_capabilities: impl FnOnce() -> u64,
    ) -> Self {
        if cpuid7_edx & sld::CPUID7_EDX_CORE_CAPABILITIES == 0 && !host_says_core_capabilities {
            return Enumeration::NoCoreCapabilities;
        }
        if read_core_capabilities() & sld::CORE_CAPS_SPLIT_LOCK_DETECT == 0 {
            return Enumeration::NotInCoreCapabilities;
        }
        Enumeration::Available
    }

    /// Whether MSR_TEST_CTRL's detection bit may be used.
    pub const fn available(self) -> bool {
        matches!(self, Enumeration::Available)
    }
}

/// The hardware state an #AC arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcState {
    /// Privilege level of the interrupted code.
    pub cpl: u8,
    /// RFLAGS.AC of the interrupted code.
    pub rflags_ac: bool,
    /// CR0.AM.
    pub cr0_am: bool,
    /// Whether split-lock detection was on on this vCPU.
    pub detection_on: bool,
}

/// The cases the hardware lets the handler tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcKind {
    /// CPL 3 with RFLAGS.AC and CR0.AM: the task asked for alignment checks. A split lock
    /// there is also a misaligned access and the hardware reports both the same way, so this
    /// is never treated as a split lock.
    UserAlignmentCheck,
    /// CPL 3 otherwise, with detection on: a split lock by the task.
    UserSplitLock,
    /// CPL 0 with detection on: a split lock by the kernel, a kernel bug.
    KernelSplitLock,
    /// Detection was off and no alignment check was asked for: nothing can have raised this
    /// #AC but a confused or hostile host.
    Spurious,
}

/// Tells the cases apart, in the order the hardware forces: the alignment check first
/// (independent of detection), then the detection state, then the privilege level.
pub fn classify(state: AcState) -> AcKind {
    if state.cpl == 3 && state.rflags_ac && state.cr0_am {
        return AcKind::UserAlignmentCheck;
    }
    if !state.detection_on {
        return AcKind::Spurious;
    }
    if state.cpl == 3 { AcKind::UserSplitLock } else { AcKind::KernelSplitLock }
}

/// What to do about a user split lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    /// Wait this many ticks (0: none), then switch detection off on this vCPU until the task
    /// is switched out and let the instruction complete.
    Continue { wait_ticks: u64 },
    /// End the task.
    Kill,
}

/// What to do about a kernel split lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAction {
    /// Report it (once per site), switch detection off on this vCPU until the next task
    /// switch, and let the instruction complete.
    Continue,
    /// End the run with the report.
    Panic,
}

/// The mode's answer to a user split lock; `budget` is the task's own.
pub fn user_action(mode: Mode, budget: &mut RateLimit, now_tick: u64, hz: u64) -> UserAction {
    match mode {
        // `Off` cannot see a split lock (detection is off); should detection have been on
        // anyway, letting the instruction complete is the harmless answer.
        Mode::Off | Mode::Warn => UserAction::Continue { wait_ticks: 0 },
        Mode::Fatal => UserAction::Kill,
        Mode::Ratelimit(per_second) => {
            UserAction::Continue { wait_ticks: budget.take_or_wait(now_tick, per_second, hz) }
        }
    }
}

/// The mode's answer to a kernel split lock. The kernel is never made to wait: it may hold
/// locks other tasks need, so `ratelimit` treats it as `warn`.
pub fn kernel_action(mode: Mode) -> KernelAction {
    match mode {
        Mode::Fatal => KernelAction::Panic,
        Mode::Off | Mode::Warn | Mode::Ratelimit(_) => KernelAction::Continue,
    }
}

/// A fixed-window rate limit: at most `burst` events per `interval` ticks, counted from the
/// first event of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    window_start: u64,
    used: u32,
}

impl RateLimit {
    /// A rate limit with no events yet.
    pub const fn new() -> Self {
        Self { window_start: 0, used: 0 }
    }

    fn roll(&mut self, now: u64, interval: u64) {
        if self.used == 0 || now >= self.window_start.saturating_add(interval) {
            self.window_start = now;
            self.used = 0;
        }
    }

    /// Takes one event if the window has room (for messages: print or drop).
    pub fn try_take(&mut self, now: u64, burst: u32, interval: u64) -> bool {
        self.roll(now, interval);
        if self.used < burst {
            self.used += 1;
            true
        } else {
            false
        }
    }

    /// Takes one event, now if the window has room (returns 0), otherwise in the next window:
    /// returns the ticks to wait until it starts, and counts the event there.
    pub fn take_or_wait(&mut self, now: u64, burst: u32, interval: u64) -> u64 {
        if self.try_take(now, burst, interval) {
            return 0;
        }
        let next = self.window_start.saturating_add(interval);
        self.window_start = next;
        self.used = 1;
        next - now
    }
}

/// The kernel sites (RIPs) whose split lock was already reported. When it is full, every
/// further site is reported each time: a repeated line is better than a lost one.
#[derive(Clone, Debug, Default)]
pub struct SiteSet {
    sites: heapless::Vec<u64, 32>,
}

impl SiteSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self { sites: heapless::Vec::new() }
    }

    /// Whether `rip` is reported for the first time (and records it).
    pub fn first_time(&mut self, rip: u64) -> bool {
        if self.sites.contains(&rip) {
            return false;
        }
        let _ = self.sites.push(rip);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for text in ["off", "warn", "fatal", "ratelimit:1", "ratelimit:1000"] {
            assert_eq!(Mode::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Mode::parse("ratelimit:7"), Ok(Mode::Ratelimit(7)));
        assert_eq!(Mode::parse("ratelimit:0"), Err(ModeError::BadRate));
        assert_eq!(Mode::parse("ratelimit:1001"), Err(ModeError::BadRate));
        assert_eq!(Mode::parse("ratelimit:"), Err(ModeError::BadRate));
        assert_eq!(Mode::parse("ratelimit"), Err(ModeError::Unknown));
        assert_eq!(Mode::parse("Warn"), Err(ModeError::Unknown));
        assert_eq!(Mode::DEFAULT, Mode::Warn);
        assert!(!Mode::Off.wants_detection() && Mode::Ratelimit(3).wants_detection());
    }

    #[test]
    fn enumeration_never_reads_the_msr_without_the_cpuid_bit() {
        let mut read = false;
        let e = Enumeration::probe(0, false, || {
            read = true;
            u64::MAX
        });
        assert_eq!(e, Enumeration::NoCoreCapabilities);
        assert!(!read, "IA32_CORE_CAPABILITIES was read although CPUID says it does not exist");
        let bit30 = sld::CPUID7_EDX_CORE_CAPABILITIES;
        assert_eq!(
            Enumeration::probe(bit30, false, || !sld::CORE_CAPS_SPLIT_LOCK_DETECT),
            Enumeration::NotInCoreCapabilities
        );
        assert_eq!(Enumeration::probe(bit30, false, || sld::CORE_CAPS_SPLIT_LOCK_DETECT), Enumeration::Available);
        // The host stub's repetition of the CPUID bit, where KVM filters the bit itself.
        assert_eq!(Enumeration::probe(0, true, || sld::CORE_CAPS_SPLIT_LOCK_DETECT), Enumeration::Available);
        assert_eq!(Enumeration::probe(0, true, || 0), Enumeration::NotInCoreCapabilities);
        assert!(Enumeration::Available.available() && !Enumeration::NotInCoreCapabilities.available());
    }

    fn state(cpl: u8, rflags_ac: bool, cr0_am: bool, detection_on: bool) -> AcState {
        AcState { cpl, rflags_ac, cr0_am, detection_on }
    }

    #[test]
    fn the_three_cases_are_told_apart_as_the_hardware_forces() {
        // A task that asked for alignment checks gets them, detection on or off.
        assert_eq!(classify(state(3, true, true, true)), AcKind::UserAlignmentCheck);
        assert_eq!(classify(state(3, true, true, false)), AcKind::UserAlignmentCheck);
        // AC without AM (or AM without AC) checks nothing: with detection on it is a split lock.
        assert_eq!(classify(state(3, true, false, true)), AcKind::UserSplitLock);
        assert_eq!(classify(state(3, false, true, true)), AcKind::UserSplitLock);
        // RFLAGS.AC at CPL 0 is SMAP's flag, not an alignment check.
        assert_eq!(classify(state(0, true, true, true)), AcKind::KernelSplitLock);
        assert_eq!(classify(state(0, false, false, true)), AcKind::KernelSplitLock);
        // Detection off and no alignment check asked for: nothing real raised it.
        assert_eq!(classify(state(3, false, true, false)), AcKind::Spurious);
        assert_eq!(classify(state(0, true, true, false)), AcKind::Spurious);
    }

    #[test]
    fn each_mode_answers_a_user_split_lock_its_own_way() {
        let mut budget = RateLimit::new();
        assert_eq!(user_action(Mode::Warn, &mut budget, 5, 100), UserAction::Continue { wait_ticks: 0 });
        assert_eq!(user_action(Mode::Fatal, &mut budget, 5, 100), UserAction::Kill);
        assert_eq!(user_action(Mode::Off, &mut budget, 5, 100), UserAction::Continue { wait_ticks: 0 });
        assert_eq!(budget, RateLimit::new(), "only ratelimit spends the budget");
        let r = Mode::Ratelimit(2);
        assert_eq!(user_action(r, &mut budget, 10, 100), UserAction::Continue { wait_ticks: 0 });
        assert_eq!(user_action(r, &mut budget, 30, 100), UserAction::Continue { wait_ticks: 0 });
        assert_eq!(user_action(r, &mut budget, 40, 100), UserAction::Continue { wait_ticks: 70 }, "until tick 110");
    }

    #[test]
    fn kernel_split_locks_panic_only_in_fatal_mode() {
        assert_eq!(kernel_action(Mode::Fatal), KernelAction::Panic);
        for mode in [Mode::Off, Mode::Warn, Mode::Ratelimit(1)] {
            assert_eq!(kernel_action(mode), KernelAction::Continue, "{mode}");
        }
    }

    #[test]
    fn the_rate_limit_counts_windows_from_their_first_event() {
        let mut r = RateLimit::new();
        assert_eq!(r.take_or_wait(1000, 1, 100), 0);
        // Over budget at 1050: wait for the window starting at 1100, and be counted there.
        assert_eq!(r.take_or_wait(1050, 1, 100), 50);
        // Woken at 1100: that window's one event is used, so the next one waits again.
        assert_eq!(r.take_or_wait(1100, 1, 100), 100);
        // Long after: a fresh window.
        assert_eq!(r.take_or_wait(5000, 1, 100), 0);
        let mut m = RateLimit::new();
        assert!(m.try_take(0, 2, 10) && m.try_take(9, 2, 10));
        assert!(!m.try_take(9, 2, 10), "a third message in the window is dropped");
        assert!(m.try_take(10, 2, 10), "the window rolled");
    }

    #[test]
    fn kernel_sites_are_reported_once_and_overflow_reports_again() {
        let mut s = SiteSet::new();
        assert!(s.first_time(0x1000));
        assert!(!s.first_time(0x1000));
        for rip in 1..32u64 {
            assert!(s.first_time(rip));
        }
        assert!(s.first_time(0x9999) && s.first_time(0x9999), "a full table reports every time");
        assert!(!s.first_time(0x1000));
    }
}
