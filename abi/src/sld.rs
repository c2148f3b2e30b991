//! Split-lock detection: the architectural CPUID/MSR interface (which the host stub virtualizes)
//! and the host stub's split-lock trigger, the test interface that makes the host produce the
//! #AC a split-lock-detecting CPU would raise.
//!
//! Enumeration is the architectural one: CPUID.(EAX=7,ECX=0):EDX bit 30 says that
//! IA32_CORE_CAPABILITIES ([`MSR_CORE_CAPABILITIES`]) exists; its bit 5 says that bit 29 of
//! [`MSR_TEST_CTRL`] turns split-lock detection on. A guest touches neither MSR unless the bit
//! before it says so.
//!
//! The trigger, a test interface of the host stub: the machines this project runs on cannot
//! detect split locks, so a guest test stores a byte to the trigger page ([`TRIGGER_GPA`])
//! right before its locked instruction. The page is not memory: the store exits to the host,
//! at any privilege level, once retired, so the vCPU is stopped before the next instruction. The host decodes that instruction, computes its memory
//! operand from the vCPU's registers, and injects #AC (RIP of that instruction, not executed)
//! only when it really is a locked access that crosses a [`CACHE_LINE`] boundary and the
//! guest's detection is on (or when the guest's own alignment checking asks for it).
//! [`Verdict`] says what the host decided ([`crate::hypercall::Nr::SplitLockVerdict`]).

/// CPUID leaf and subleaf whose EDX carries [`CPUID7_EDX_CORE_CAPABILITIES`].
pub const CPUID_LEAF: u32 = 7;
/// Subleaf of [`CPUID_LEAF`].
pub const CPUID_SUBLEAF: u32 = 0;
/// CPUID.(7,0):EDX bit 30: IA32_CORE_CAPABILITIES exists.
pub const CPUID7_EDX_CORE_CAPABILITIES: u32 = 1 << 30;

/// IA32_CORE_CAPABILITIES, read-only.
pub const MSR_CORE_CAPABILITIES: u32 = 0xCF;
/// IA32_CORE_CAPABILITIES bit 5: [`TEST_CTRL_SPLIT_LOCK_DETECT`] exists.
pub const CORE_CAPS_SPLIT_LOCK_DETECT: u64 = 1 << 5;

/// IA32_CORE_CAPABILITIES' bits Intel defines: 0 STLB QoS, 1 remote action request (RAR),
/// 2 FuSa/integrity capabilities (Linux's `MSR_IA32_CORE_CAPS_INTEGRITY_CAPS`), 3 RSM in CPL 0
/// only, 4 UC-lock disable, 5 split-lock detection, 6 snoop-filter QoS, 7 UC-store throttling,
/// 8 LAM; 63:9 are reserved. Linux names only 2 and 5, but real CPUs set others (a Sapphire
/// Rapids sets several), so only a reserved bit is a host's garbage
/// ([`crate::breach::Breach::CoreCapabilitiesGarbage`]). A later CPU that defines bit 9 would be
/// reported too: the report changes nothing (bit 5 is followed, MSR_TEST_CTRL read back).
pub const CORE_CAPS_DEFINED: u64 = (1 << 9) - 1;

/// MSR_TEST_CTRL.
pub const MSR_TEST_CTRL: u32 = 0x33;
/// MSR_TEST_CTRL bit 29: raise #AC for a split-locked access (set = detection on).
pub const TEST_CTRL_SPLIT_LOCK_DETECT: u64 = 1 << 29;

/// The #AC vector. Its error code is always 0.
pub const AC_VECTOR: u8 = 17;

/// Size of the cache line a locked access must stay within to avoid a bus lock.
pub const CACHE_LINE: u64 = 64;

/// Guest-physical address of the trigger page (4 KiB, above any RAM the host stub gives, below
/// the IOAPIC). A store to it arms the host for the instruction right after the store; the
/// stored byte (the first, for wider stores) holds flags ([`ARM_FORCE_INJECT`]). The store
/// must be a plain MOV, which changes no register, so that the host sees the registers the
/// armed instruction will use. Loads read 0 and arm nothing. A guest maps the page (uncached,
/// user-accessible for CPL 3 tests) only when [`crate::cpuid::Features::SPLIT_LOCK_TRIGGER`] is
/// set.
pub const TRIGGER_GPA: u64 = 0xFEB0_0000;

/// Trigger flag: inject #AC at the armed instruction whatever it is and whatever the
/// detection state. This is a misbehaving host on
/// purpose, so that a guest can test how it treats an #AC nothing real could have raised.
pub const ARM_FORCE_INJECT: u64 = 1 << 0;

/// Whether an access of `size` bytes at linear address `addr` touches two cache lines (a
/// locked one is then a split lock). Lines never cross pages, so the linear address decides
/// as well as the physical one. A zero-sized access crosses nothing; one that runs past the
/// top of the address space (from a guest's registers) crosses its last line.
pub const fn crosses_cache_line(addr: u64, size: u64) -> bool {
    if size == 0 {
        return false;
    }
    match addr.checked_add(size - 1) {
        Some(last) => addr / CACHE_LINE != last / CACHE_LINE,
        None => true,
    }
}

crate::wire_enum! {
    /// What the host decided for the last armed instruction; returned by
    /// [`crate::hypercall::Nr::SplitLockVerdict`].
    pub enum Verdict: u64 {
        /// No trigger was decided on yet.
        Pending = 0,
        /// A split lock with the guest's detection on: #AC injected.
        InjectedSplitLock = 1,
        /// A split lock at CPL 3 with the guest's own alignment checking on (CR0.AM and
        /// RFLAGS.AC): #AC injected whatever the detection state, because a split lock and a
        /// misaligned access cannot be told apart there.
        InjectedAlignmentCheck = 2,
        /// The instruction makes no locked memory access: it ran.
        NotLocked = 3,
        /// A locked access within one cache line: it ran.
        NotSplit = 4,
        /// A split lock from a guest whose detection is off, under the host policy
        /// `inject-if-enabled`: it ran, and the guest got no #AC it did not ask for.
        GuestDetectionOff = 5,
        /// A split lock after the host switched detection off for the whole VM (policy
        /// `disable-globally`, now or earlier): it ran.
        DisabledGlobally = 6,
        /// The host could not read or decode the instruction: it ran.
        Undecodable = 7,
        /// Triggered with [`ARM_FORCE_INJECT`]: #AC injected without looking at the instruction.
        InjectedForced = 8,
    }
}

crate::wire_enum! {
    /// What the host does about a split lock from a guest whose detection is off (seed 000's
    /// three answers); returned by [`crate::hypercall::Nr::SplitLockPolicy`], so that a
    /// guest's self-tests know which of them hold on this host.
    pub enum HostPolicy: u64 {
        /// Let it run: the guest gets no #AC it did not ask for (the default).
        InjectIfEnabled = 0,
        /// Stop the run and report the vCPU, RIP and instruction (for debugging guests).
        Exit = 1,
        /// Switch detection off for the whole VM, log it once, let it run (for production).
        DisableGlobally = 2,
    }
}

impl Verdict {
    /// Whether the host injected #AC.
    pub const fn injected(self) -> bool {
        matches!(self, Verdict::InjectedSplitLock | Verdict::InjectedAlignmentCheck | Verdict::InjectedForced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_capabilities_bit_intel_defines_is_no_garbage() {
        for bit in 0..9 {
            assert_eq!((1u64 << bit) & !CORE_CAPS_DEFINED, 0, "bit {bit} is defined");
        }
        // Bits 2, 4 and 5 together, as a CPU with FuSa, UC-lock disable and split-lock
        // detection reports them.
        assert_eq!(0x34 & !CORE_CAPS_DEFINED, 0);
        for bit in 9..64 {
            assert_ne!((1u64 << bit) & !CORE_CAPS_DEFINED, 0, "bit {bit} is reserved");
        }
    }

    #[test]
    fn cache_line_crossing_is_decided_by_the_first_and_last_byte() {
        assert!(!crosses_cache_line(0x1000, 64), "a whole line");
        assert!(!crosses_cache_line(0x103C, 4), "the last dword of a line");
        assert!(crosses_cache_line(0x103E, 4), "a dword two bytes before the end");
        assert!(crosses_cache_line(0x103F, 2));
        assert!(!crosses_cache_line(0x103F, 1));
        assert!(!crosses_cache_line(0x103F, 0));
        assert!(crosses_cache_line(0x1038, 16), "cmpxchg16b half in each line");
        assert!(!crosses_cache_line(u64::MAX, 1));
        assert!(crosses_cache_line(u64::MAX, 2), "past the top of the address space");
        assert!(crosses_cache_line(u64::MAX - 3, 16));
        assert!(crosses_cache_line(0x40, u64::MAX));
    }

    #[test]
    fn verdicts_round_trip_and_only_injections_inject() {
        for (raw, &v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(Verdict::try_from(raw as u64), Ok(v), "verdicts are numbered densely from 0");
            assert_eq!(v.injected(), matches!(raw, 1 | 2 | 8));
        }
        let past_the_end = Verdict::ALL.len() as u64;
        assert_eq!(Verdict::try_from(past_the_end), Err(past_the_end));
    }
}
