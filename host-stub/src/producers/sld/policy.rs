//! The host's split-lock rules as plain code, tested without KVM: the virtualized
//! MSR_TEST_CTRL of one vCPU, and the decision table for an armed instruction (seed 000's
//! policies for guests that did not ask for #AC, seed 002's rule for user alignment checks).

use pvagent_abi::sld::{self, Verdict};

use crate::handler::MsrAnswer;

/// What the host does about a split lock from a guest whose detection is off (seed 000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Never send #AC to a guest that did not ask for it: the instruction runs (the default:
    /// old guests keep working).
    #[default]
    InjectIfEnabled,
    /// Stop the run and report the vCPU and RIP to the host's user (for debugging guests).
    Exit,
    /// Switch split-lock detection off for the whole VM, log it once, and let the instruction
    /// run (the production choice). Later split locks never get #AC, even if the guest turns
    /// its detection on afterwards: it may still write the MSR, but nothing is propagated.
    DisableGlobally,
}

impl Policy {
    /// The policy as the guest reads it ([`pvagent_abi::hypercall::Nr::SplitLockPolicy`]).
    pub const fn wire(self) -> sld::HostPolicy {
        match self {
            Policy::InjectIfEnabled => sld::HostPolicy::InjectIfEnabled,
            Policy::Exit => sld::HostPolicy::Exit,
            Policy::DisableGlobally => sld::HostPolicy::DisableGlobally,
        }
    }

    /// The name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::InjectIfEnabled => "inject-if-enabled",
            Policy::Exit => "exit",
            Policy::DisableGlobally => "disable-globally",
        }
    }
}

/// What a configuration asks for that SMT siblings make impossible (seed 000): MSR_TEST_CTRL is
/// one register per core, shared by its threads, so the host cannot keep detection on for one
/// sibling and off for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmtConflict {
    /// Offering the guest MSR_TEST_CTRL means honouring one vCPU's write for that vCPU alone.
    #[error(
        "split-lock detection cannot be offered to the guest (--sld-enumeration split-lock-detect): a vCPU's MSR_TEST_CTRL write would change its SMT sibling's too; use core-capabilities-only or absent"
    )]
    PerVcpuMsr,
    /// `inject-if-enabled` lets a split lock run on a vCPU whose guest turned detection off, while
    /// detection stays on elsewhere: the per-vCPU toggling a shared register cannot do.
    #[error(
        "--sld-policy inject-if-enabled needs detection off on one vCPU and on on its SMT sibling; with siblings only exit or disable-globally apply"
    )]
    PerVcpuPolicy,
}

/// Seed 000's rule for hosts whose cores have SMT siblings: no per-vCPU virtualization of
/// MSR_TEST_CTRL (the guest is not offered it) and only the `exit` or `disable-globally`
/// policies. `Ok` when the configuration keeps to it.
pub fn check_smt_rule(enumeration: Enumeration, policy: Policy) -> Result<(), SmtConflict> {
    if enumeration == Enumeration::SplitLockDetect {
        return Err(SmtConflict::PerVcpuMsr);
    }
    if policy == Policy::InjectIfEnabled {
        return Err(SmtConflict::PerVcpuPolicy);
    }
    Ok(())
}

/// What a host with SMT siblings uses when not told otherwise (seed 000: "global disable ... is
/// for production use"): detection not offered, switched off for the VM at the first split lock.
pub const SMT_DEFAULTS: (Enumeration, Policy) = (Enumeration::CoreCapabilitiesOnly, Policy::DisableGlobally);

/// How far the host enumerates split-lock detection to the guest: the architectural chain
/// CPUID.(7,0):EDX bit 30 → IA32_CORE_CAPABILITIES bit 5 → MSR_TEST_CTRL bit 29, cut at any step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enumeration {
    /// CPUID.(7,0):EDX bit 30 clear: neither MSR exists (#GP), as on an older CPU.
    Absent,
    /// IA32_CORE_CAPABILITIES exists but its bit 5 is clear: MSR_TEST_CTRL does not exist
    /// (#GP), as on a CPU with core capabilities and no split-lock detection.
    CoreCapabilitiesOnly,
    /// The whole chain: the guest can turn detection on.
    #[default]
    SplitLockDetect,
}

impl Enumeration {
    /// Whether CPUID.(7,0):EDX bit 30 (and the host stub's `CORE_CAPABILITIES` feature) is set.
    pub const fn core_capabilities(self) -> bool {
        !matches!(self, Enumeration::Absent)
    }

    /// Whether MSR_TEST_CTRL and its detection bit exist.
    pub const fn split_lock_detect(self) -> bool {
        matches!(self, Enumeration::SplitLockDetect)
    }

    /// IA32_CORE_CAPABILITIES as the guest reads it.
    pub const fn core_capabilities_value(self) -> u64 {
        if self.split_lock_detect() { sld::CORE_CAPS_SPLIT_LOCK_DETECT } else { 0 }
    }

    /// The name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Enumeration::Absent => "absent",
            Enumeration::CoreCapabilitiesOnly => "core-capabilities-only",
            Enumeration::SplitLockDetect => "split-lock-detect",
        }
    }
}

/// One vCPU's virtualized MSR_TEST_CTRL and IA32_CORE_CAPABILITIES.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualMsrs {
    /// The guest's MSR_TEST_CTRL value.
    pub test_ctrl: u64,
    /// Every accepted write's value, in order (the first [`WRITE_LOG_MAX`]).
    pub writes: Vec<u64>,
    /// Accepted MSR_TEST_CTRL writes, all of them.
    pub write_count: u64,
    /// Accesses refused with #GP.
    pub refused: u64,
    /// Reads of IA32_CORE_CAPABILITIES that were answered.
    pub core_caps_reads: u64,
    /// Reads of MSR_TEST_CTRL that were answered.
    pub test_ctrl_reads: u64,
}

/// How many MSR_TEST_CTRL writes per vCPU are kept for the report.
pub const WRITE_LOG_MAX: usize = 64;

impl VirtualMsrs {
    /// The bits a guest may set: the detection bit, and only when it is enumerated.
    pub const fn valid_bits(enumeration: Enumeration) -> u64 {
        if enumeration.split_lock_detect() { sld::TEST_CTRL_SPLIT_LOCK_DETECT } else { 0 }
    }

    /// RDMSR of one of the two MSRs; `NotMine` for any other.
    pub fn read(&mut self, index: u32, enumeration: Enumeration) -> MsrAnswer {
        match index {
            sld::MSR_CORE_CAPABILITIES if enumeration.core_capabilities() => {
                self.core_caps_reads += 1;
                MsrAnswer::Value(enumeration.core_capabilities_value())
            }
            sld::MSR_TEST_CTRL if enumeration.split_lock_detect() => {
                self.test_ctrl_reads += 1;
                MsrAnswer::Value(self.test_ctrl)
            }
            // An MSR the enumeration does not reach does not exist, as on a CPU without it.
            sld::MSR_CORE_CAPABILITIES | sld::MSR_TEST_CTRL => {
                self.refused += 1;
                MsrAnswer::Fault
            }
            _ => MsrAnswer::NotMine,
        }
    }

    /// WRMSR of one of the two MSRs; `NotMine` for any other.
    pub fn write(&mut self, index: u32, value: u64, enumeration: Enumeration) -> MsrAnswer {
        match index {
            sld::MSR_TEST_CTRL if enumeration.split_lock_detect() && value & !Self::valid_bits(enumeration) == 0 => {
                self.test_ctrl = value;
                self.write_count += 1;
                if self.writes.len() < WRITE_LOG_MAX {
                    self.writes.push(value);
                }
                MsrAnswer::Value(value)
            }
            // Reserved bits, a missing MSR, or the read-only capabilities: #GP.
            sld::MSR_TEST_CTRL | sld::MSR_CORE_CAPABILITIES => {
                self.refused += 1;
                MsrAnswer::Fault
            }
            _ => MsrAnswer::NotMine,
        }
    }

    /// Whether the guest's detection is on.
    pub const fn detection_on(&self) -> bool {
        self.test_ctrl & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0
    }
}

/// The decoded instruction at an armed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// A LOCK prefix, or XCHG with a memory operand (locked without a prefix).
    pub locked: bool,
    /// The memory operand's linear address and size, if there is one.
    pub memory: Option<(u64, u64)>,
}

impl Access {
    /// A locked access that touches two cache lines.
    pub fn is_split_lock(&self) -> bool {
        self.locked && self.memory.is_some_and(|(addr, size)| sld::crosses_cache_line(addr, size))
    }
}

/// The guest state the decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    pub cpl: u8,
    pub cr0_am: bool,
    pub rflags_ac: bool,
    /// MSR_TEST_CTRL's detection bit, as the guest last wrote it.
    pub detection_on: bool,
}

/// What the host does with an armed instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject #AC (vector 17, error code 0, the instruction not executed).
    Inject(Verdict),
    /// Let it run.
    Run(Verdict),
    /// Policy `disable-globally`, first split lock: switch detection off for the VM, log it
    /// once, let it run.
    DisableGlobally,
    /// Policy `exit`: stop the run and report.
    Exit,
}

/// The decision table. `access` is `None` when the instruction could not be read or decoded;
/// `globally_disabled` is whether `disable-globally` already switched detection off.
pub fn decide(access: Option<Access>, guest: GuestState, policy: Policy, globally_disabled: bool) -> Decision {
    let Some(access) = access else {
        return Decision::Run(Verdict::Undecodable);
    };
    if !access.locked || access.memory.is_none() {
        return Decision::Run(Verdict::NotLocked);
    }
    if !access.is_split_lock() {
        return Decision::Run(Verdict::NotSplit);
    }
    // Seed 002: at CPL 3 with the guest's own alignment checking on, a split lock is also a
    // misaligned access and the two cannot be told apart: always inject, whatever the
    // detection state and the policy.
    if guest.cpl == 3 && guest.cr0_am && guest.rflags_ac {
        return Decision::Inject(Verdict::InjectedAlignmentCheck);
    }
    if globally_disabled {
        return Decision::Run(Verdict::DisabledGlobally);
    }
    if guest.detection_on {
        return Decision::Inject(Verdict::InjectedSplitLock);
    }
    match policy {
        Policy::InjectIfEnabled => Decision::Run(Verdict::GuestDetectionOff),
        Policy::Exit => Decision::Exit,
        Policy::DisableGlobally => Decision::DisableGlobally,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_smt_siblings_only_unoffered_detection_and_the_global_policies_pass() {
        use Enumeration::*;
        use Policy::*;
        for enumeration in [Absent, CoreCapabilitiesOnly] {
            for policy in [Exit, DisableGlobally] {
                assert_eq!(check_smt_rule(enumeration, policy), Ok(()), "{enumeration:?} {policy:?}");
            }
            assert_eq!(check_smt_rule(enumeration, InjectIfEnabled), Err(SmtConflict::PerVcpuPolicy));
        }
        for policy in [InjectIfEnabled, Exit, DisableGlobally] {
            assert_eq!(check_smt_rule(SplitLockDetect, policy), Err(SmtConflict::PerVcpuMsr));
        }
        assert_eq!(check_smt_rule(SMT_DEFAULTS.0, SMT_DEFAULTS.1), Ok(()), "the defaults keep to the rule");
    }

    const SPLIT: Access = Access { locked: true, memory: Some((0x103E, 4)) };
    const KERNEL_ON: GuestState = GuestState { cpl: 0, cr0_am: true, rflags_ac: false, detection_on: true };
    const KERNEL_OFF: GuestState = GuestState { detection_on: false, ..KERNEL_ON };
    const USER_AC_OFF: GuestState = GuestState { cpl: 3, cr0_am: true, rflags_ac: true, detection_on: false };
    const ALL_POLICIES: [Policy; 3] = [Policy::InjectIfEnabled, Policy::Exit, Policy::DisableGlobally];

    #[test]
    fn only_split_locks_are_considered() {
        for policy in ALL_POLICIES {
            let not_locked = Access { locked: false, ..SPLIT };
            assert_eq!(decide(Some(not_locked), KERNEL_ON, policy, false), Decision::Run(Verdict::NotLocked));
            let no_memory = Access { locked: true, memory: None };
            assert_eq!(decide(Some(no_memory), KERNEL_ON, policy, false), Decision::Run(Verdict::NotLocked));
            let within_line = Access { locked: true, memory: Some((0x103C, 4)) };
            assert_eq!(decide(Some(within_line), KERNEL_ON, policy, false), Decision::Run(Verdict::NotSplit));
            assert_eq!(decide(None, KERNEL_ON, policy, false), Decision::Run(Verdict::Undecodable));
        }
    }

    #[test]
    fn a_guest_with_detection_on_gets_its_ac_under_every_policy() {
        for policy in ALL_POLICIES {
            assert_eq!(decide(Some(SPLIT), KERNEL_ON, policy, false), Decision::Inject(Verdict::InjectedSplitLock));
        }
    }

    #[test]
    fn each_policy_treats_a_guest_that_did_not_ask_its_own_way() {
        let d = |policy| decide(Some(SPLIT), KERNEL_OFF, policy, false);
        assert_eq!(d(Policy::InjectIfEnabled), Decision::Run(Verdict::GuestDetectionOff));
        assert_eq!(d(Policy::Exit), Decision::Exit);
        assert_eq!(d(Policy::DisableGlobally), Decision::DisableGlobally);
        assert_eq!(Policy::default(), Policy::InjectIfEnabled, "old guests are never broken by default");
    }

    #[test]
    fn the_guest_reads_each_policy_as_its_own_wire_value() {
        let wire: Vec<sld::HostPolicy> = ALL_POLICIES.iter().map(|p| p.wire()).collect();
        assert_eq!(wire, sld::HostPolicy::ALL, "one wire value per policy, in the same order");
        assert_eq!(Policy::default().wire(), sld::HostPolicy::InjectIfEnabled);
    }

    #[test]
    fn after_a_global_disable_no_split_lock_is_injected() {
        assert_eq!(
            decide(Some(SPLIT), KERNEL_ON, Policy::DisableGlobally, true),
            Decision::Run(Verdict::DisabledGlobally)
        );
        assert_eq!(
            decide(Some(SPLIT), KERNEL_OFF, Policy::DisableGlobally, true),
            Decision::Run(Verdict::DisabledGlobally)
        );
    }

    #[test]
    fn user_alignment_checks_are_always_injected() {
        for policy in ALL_POLICIES {
            for globally_disabled in [false, true] {
                for detection_on in [false, true] {
                    let guest = GuestState { detection_on, ..USER_AC_OFF };
                    assert_eq!(
                        decide(Some(SPLIT), guest, policy, globally_disabled),
                        Decision::Inject(Verdict::InjectedAlignmentCheck),
                        "{policy:?} {globally_disabled} {detection_on}"
                    );
                }
            }
        }
        // RFLAGS.AC at CPL 0 is no alignment check, and AC without CR0.AM checks nothing.
        let kernel_ac = GuestState { cpl: 0, ..USER_AC_OFF };
        assert_eq!(decide(Some(SPLIT), kernel_ac, Policy::Exit, false), Decision::Exit);
        let no_am = GuestState { cr0_am: false, ..USER_AC_OFF };
        assert_eq!(decide(Some(SPLIT), no_am, Policy::Exit, false), Decision::Exit);
    }

    #[test]
    fn test_ctrl_keeps_the_guests_value_and_refuses_other_bits() {
        let mut m = VirtualMsrs::default();
        let on = sld::TEST_CTRL_SPLIT_LOCK_DETECT;
        assert_eq!(
            m.read(sld::MSR_CORE_CAPABILITIES, Enumeration::SplitLockDetect),
            MsrAnswer::Value(sld::CORE_CAPS_SPLIT_LOCK_DETECT)
        );
        assert_eq!(m.write(sld::MSR_TEST_CTRL, on, Enumeration::SplitLockDetect), MsrAnswer::Value(on));
        assert!(m.detection_on());
        assert_eq!(m.read(sld::MSR_TEST_CTRL, Enumeration::SplitLockDetect), MsrAnswer::Value(on));
        // Bit 31 (disable LOCK# assertion) and every other bit are not virtualized: #GP, and
        // the value stays.
        assert_eq!(m.write(sld::MSR_TEST_CTRL, on | 1 << 31, Enumeration::SplitLockDetect), MsrAnswer::Fault);
        assert_eq!(m.write(sld::MSR_TEST_CTRL, 1, Enumeration::SplitLockDetect), MsrAnswer::Fault);
        assert_eq!(m.read(sld::MSR_TEST_CTRL, Enumeration::SplitLockDetect), MsrAnswer::Value(on));
        assert_eq!(m.write(sld::MSR_TEST_CTRL, 0, Enumeration::SplitLockDetect), MsrAnswer::Value(0));
        assert!(!m.detection_on());
        assert_eq!(m.write(sld::MSR_CORE_CAPABILITIES, 0, Enumeration::SplitLockDetect), MsrAnswer::Fault, "read-only");
        assert_eq!((m.writes.clone(), m.write_count, m.refused), (vec![on, 0], 2, 3));
        assert_eq!(m.read(0x10, Enumeration::SplitLockDetect), MsrAnswer::NotMine);
        assert_eq!(m.write(0x10, 0, Enumeration::SplitLockDetect), MsrAnswer::NotMine);
    }

    #[test]
    fn without_the_advertisement_both_msrs_do_not_exist() {
        let mut m = VirtualMsrs::default();
        assert_eq!(m.read(sld::MSR_CORE_CAPABILITIES, Enumeration::Absent), MsrAnswer::Fault);
        assert_eq!(m.read(sld::MSR_TEST_CTRL, Enumeration::Absent), MsrAnswer::Fault);
        assert_eq!(
            m.write(sld::MSR_TEST_CTRL, sld::TEST_CTRL_SPLIT_LOCK_DETECT, Enumeration::Absent),
            MsrAnswer::Fault
        );
        assert_eq!(m.write(sld::MSR_TEST_CTRL, 0, Enumeration::Absent), MsrAnswer::Fault);
        assert_eq!((m.write_count, m.refused, m.core_caps_reads), (0, 4, 0));
    }

    #[test]
    fn core_capabilities_without_bit_5_hide_test_ctrl() {
        let mut m = VirtualMsrs::default();
        let e = Enumeration::CoreCapabilitiesOnly;
        assert_eq!(m.read(sld::MSR_CORE_CAPABILITIES, e), MsrAnswer::Value(0));
        assert_eq!(m.read(sld::MSR_TEST_CTRL, e), MsrAnswer::Fault);
        assert_eq!(m.write(sld::MSR_TEST_CTRL, sld::TEST_CTRL_SPLIT_LOCK_DETECT, e), MsrAnswer::Fault);
        assert_eq!(m.write(sld::MSR_TEST_CTRL, 0, e), MsrAnswer::Fault);
        assert!(!m.detection_on());
        assert_eq!((m.write_count, m.refused, m.core_caps_reads, m.test_ctrl_reads), (0, 3, 1, 0));
    }
}
