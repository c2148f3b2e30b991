//! The split-lock producer's breaches on purpose (`pvagent_abi::breach`, sections 0x300 and the
//! split-lock part of 0x500): which rules it owns, when it can break each, and what the broken
//! answer is, and the producer's glue for them (`HostBreak`, the MSR answers). `Nr::HostBreak`
//! arms one on the calling vCPU, `--break RULE` on every vCPU from its start; each is used up
//! at the vCPU's next occasion for it. A test control.

use pvagent_abi::breach::Breach;
use pvagent_abi::hypercall::Status;
use pvagent_abi::sld::{self, Verdict};

use super::policy::{Decision, Enumeration, GuestState, VirtualMsrs};
use crate::handler::{HypercallAnswer, MsrAnswer};
use crate::producers::armed::Armed;

/// The rules this producer breaks.
pub const RULES: [Breach; 7] = [
    Breach::AcNoSplitLockAtRip,
    Breach::AcErrorCodeNotZero,
    Breach::AcWhileDetectionOff,
    Breach::TestCtrlFaults,
    Breach::TestCtrlNotKept,
    Breach::CoreCapabilitiesGarbage,
    Breach::CoreCapabilitiesFaults,
];

/// The error code an #AC carries under [`Breach::AcErrorCodeNotZero`] (architecturally 0).
pub const BAD_ERROR_CODE: u32 = 0x11;

/// What IA32_CORE_CAPABILITIES reads under [`Breach::CoreCapabilitiesGarbage`]: every bit set,
/// the split-lock bit among them (so the chain still promises MSR_TEST_CTRL).
pub const GARBAGE_CORE_CAPABILITIES: u64 = u64::MAX;

/// Whether `rule` is this producer's.
pub fn owns(rule: Breach) -> bool {
    RULES.contains(&rule)
}

/// Why `rule` cannot be broken under `enumeration` (the MSR it breaks is not offered), if so.
pub fn cannot_break(rule: Breach, enumeration: Enumeration) -> Option<&'static str> {
    match rule {
        Breach::TestCtrlFaults | Breach::TestCtrlNotKept if !enumeration.split_lock_detect() => {
            Some("MSR_TEST_CTRL is not offered (--sld-enumeration is not split-lock-detect)")
        }
        Breach::CoreCapabilitiesGarbage | Breach::CoreCapabilitiesFaults if !enumeration.core_capabilities() => {
            Some("IA32_CORE_CAPABILITIES is not offered (--sld-enumeration absent)")
        }
        _ => None,
    }
}

/// The rule a trigger decision breaks, if one armed applies to it: `armed(rule)` says whether it
/// is armed on the vCPU and uses it up. An #AC where the decision injects none: with the guest's
/// detection on, for an instruction the host decoded as no split lock (no locked access, or one
/// within a line: [`Breach::AcNoSplitLockAtRip`]); with it off, for any instruction
/// ([`Breach::AcWhileDetectionOff`]). A split lock the host let run with detection on (detection
/// disabled for the VM) or one it could not decode is no occasion: the #AC would break no rule.
pub fn forced_ac(decision: Decision, guest: GuestState, mut armed: impl FnMut(Breach) -> bool) -> Option<Breach> {
    let rule = match (decision, guest.detection_on) {
        (Decision::Inject(_), _) => return None,
        (Decision::Run(Verdict::NotLocked | Verdict::NotSplit), true) => Breach::AcNoSplitLockAtRip,
        (_, true) => return None,
        (_, false) => Breach::AcWhileDetectionOff,
    };
    armed(rule).then_some(rule)
}

/// The error code of an #AC about to be injected: [`BAD_ERROR_CODE`] when
/// [`Breach::AcErrorCodeNotZero`] is armed (used up), 0 otherwise.
pub fn ac_error_code(mut armed: impl FnMut(Breach) -> bool) -> u32 {
    if armed(Breach::AcErrorCodeNotZero) { BAD_ERROR_CODE } else { 0 }
}

/// RDMSR's answer once the armed breaches had their say: `honest` is the answer the ABI gives.
pub fn read(index: u32, honest: MsrAnswer, mut armed: impl FnMut(Breach) -> bool) -> MsrAnswer {
    match (index, honest) {
        (sld::MSR_TEST_CTRL, MsrAnswer::Value(_)) if armed(Breach::TestCtrlFaults) => MsrAnswer::Fault,
        (sld::MSR_CORE_CAPABILITIES, MsrAnswer::Value(_)) if armed(Breach::CoreCapabilitiesFaults) => MsrAnswer::Fault,
        (sld::MSR_CORE_CAPABILITIES, MsrAnswer::Value(_)) if armed(Breach::CoreCapabilitiesGarbage) => {
            MsrAnswer::Value(GARBAGE_CORE_CAPABILITIES)
        }
        _ => honest,
    }
}

/// What a WRMSR of MSR_TEST_CTRL does once the armed breaches had their say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// As the ABI says.
    Honest,
    /// #GP, nothing changed ([`Breach::TestCtrlFaults`]).
    Fault,
    /// Accepted, but this value kept: the detection bit dropped ([`Breach::TestCtrlNotKept`]).
    Keep(u64),
}

/// WRMSR of `value` to `index`, whose honest answer would accept it (`accepted`).
pub fn write(index: u32, value: u64, accepted: bool, mut armed: impl FnMut(Breach) -> bool) -> Write {
    if index != sld::MSR_TEST_CTRL || !accepted {
        return Write::Honest;
    }
    if armed(Breach::TestCtrlFaults) {
        Write::Fault
    } else if value & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0 && armed(Breach::TestCtrlNotKept) {
        Write::Keep(value & !sld::TEST_CTRL_SPLIT_LOCK_DETECT)
    } else {
        Write::Honest
    }
}

impl super::SplitLock {
    /// Arms, on every vCPU from its start, those of `rules` this producer breaks ([`RULES`]);
    /// returns the ones it took (`--break`).
    pub fn break_from_start(&mut self, rules: &[Breach]) -> Vec<Breach> {
        let (armed, taken) = Armed::from_start(rules, owns);
        self.armed = armed;
        self.from_start.clone_from(&taken);
        taken
    }

    /// Records a breach committed on `vcpu`, for the report.
    pub(super) fn broke(&mut self, vcpu: usize, rule: Breach, what: std::fmt::Arguments<'_>) {
        self.breaches.push(format!("broke {rule} on vCPU {vcpu} on purpose: {what}"));
    }

    /// `Nr::HostBreak` (`None` for a rule that is not this producer's).
    pub(super) fn host_break(&mut self, vcpu: usize, rule: u64) -> HypercallAnswer {
        let rule = u32::try_from(rule).ok().and_then(|r| Breach::try_from(r).ok()).filter(|&r| owns(r))?;
        Some(match cannot_break(rule, self.settings.enumeration) {
            Some(_) => Err(Status::InvalidArgument),
            None => Ok([u64::from(self.armed.arm(vcpu, rule)), 0]),
        })
    }

    /// RDMSR of `index` on `vcpu`: the ABI's answer, unless a breach is armed.
    pub(super) fn read_msr(&mut self, vcpu: usize, index: u32) -> MsrAnswer {
        let enumeration = self.settings.enumeration;
        let honest = self.vcpu(vcpu).msrs.read(index, enumeration);
        let armed = &mut self.armed;
        let answer = read(index, honest, |r| armed.take(vcpu, r));
        if answer != honest {
            let rule = match (index, answer) {
                (sld::MSR_TEST_CTRL, _) => Breach::TestCtrlFaults,
                (_, MsrAnswer::Fault) => Breach::CoreCapabilitiesFaults,
                _ => Breach::CoreCapabilitiesGarbage,
            };
            self.broke(vcpu, rule, format_args!("RDMSR {index:#x}: {answer:?}"));
        }
        answer
    }

    /// WRMSR of `value` to `index` on `vcpu`: the ABI's answer, unless a breach is armed.
    pub(super) fn write_msr(&mut self, vcpu: usize, index: u32, value: u64) -> MsrAnswer {
        let enumeration = self.settings.enumeration;
        let accepted = index == sld::MSR_TEST_CTRL
            && enumeration.split_lock_detect()
            && value & !VirtualMsrs::valid_bits(enumeration) == 0;
        let armed = &mut self.armed;
        match write(index, value, accepted, |r| armed.take(vcpu, r)) {
            Write::Honest => self.vcpu(vcpu).msrs.write(index, value, enumeration),
            Write::Fault => {
                self.broke(vcpu, Breach::TestCtrlFaults, format_args!("WRMSR {index:#x} of {value:#x}: #GP"));
                MsrAnswer::Fault
            }
            Write::Keep(kept) => {
                let rule = Breach::TestCtrlNotKept;
                self.broke(vcpu, rule, format_args!("WRMSR {index:#x} of {value:#x}: kept {kept:#x}"));
                self.vcpu(vcpu).msrs.write(index, kept, enumeration);
                MsrAnswer::Value(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(detection_on: bool) -> GuestState {
        GuestState { cpl: 0, cr0_am: true, rflags_ac: false, detection_on }
    }

    #[test]
    fn an_ac_is_forced_only_where_it_breaks_the_armed_rule() {
        let run = Decision::Run(Verdict::NotLocked);
        let all = |_| true;
        assert_eq!(forced_ac(run, guest(true), all), Some(Breach::AcNoSplitLockAtRip));
        assert_eq!(forced_ac(run, guest(false), all), Some(Breach::AcWhileDetectionOff));
        assert_eq!(forced_ac(Decision::DisableGlobally, guest(false), all), Some(Breach::AcWhileDetectionOff));
        assert_eq!(forced_ac(Decision::Inject(Verdict::InjectedSplitLock), guest(true), all), None);
        // A split lock that runs with detection on (disabled for the VM), or an undecodable one:
        // an #AC there would break no rule.
        assert_eq!(forced_ac(Decision::Run(Verdict::DisabledGlobally), guest(true), all), None);
        assert_eq!(forced_ac(Decision::Run(Verdict::Undecodable), guest(true), all), None);
        assert_eq!(forced_ac(Decision::Run(Verdict::NotSplit), guest(true), all), Some(Breach::AcNoSplitLockAtRip));
        // Armed for the other state: not used.
        let only = |rule| move |r| r == rule;
        assert_eq!(forced_ac(run, guest(false), only(Breach::AcNoSplitLockAtRip)), None);
        assert_eq!(forced_ac(run, guest(true), only(Breach::AcWhileDetectionOff)), None);
    }

    #[test]
    fn msr_breaches_change_only_answers_that_were_honest_values() {
        let yes = |_| true;
        assert_eq!(read(sld::MSR_TEST_CTRL, MsrAnswer::Value(0), yes), MsrAnswer::Fault);
        assert_eq!(read(sld::MSR_TEST_CTRL, MsrAnswer::Fault, yes), MsrAnswer::Fault);
        let garbage = |r| r == Breach::CoreCapabilitiesGarbage;
        assert_eq!(
            read(sld::MSR_CORE_CAPABILITIES, MsrAnswer::Value(32), garbage),
            MsrAnswer::Value(GARBAGE_CORE_CAPABILITIES)
        );
        assert_eq!(read(sld::MSR_CORE_CAPABILITIES, MsrAnswer::Value(32), yes), MsrAnswer::Fault, "faults first");
        assert_eq!(read(sld::MSR_CORE_CAPABILITIES, MsrAnswer::Value(32), |_| false), MsrAnswer::Value(32));
        assert_eq!(read(0x10, MsrAnswer::NotMine, yes), MsrAnswer::NotMine);
        let on = sld::TEST_CTRL_SPLIT_LOCK_DETECT;
        assert_eq!(write(sld::MSR_TEST_CTRL, on, true, yes), Write::Fault);
        assert_eq!(write(sld::MSR_TEST_CTRL, on, true, |r| r == Breach::TestCtrlNotKept), Write::Keep(0));
        assert_eq!(write(sld::MSR_TEST_CTRL, 0, true, |r| r == Breach::TestCtrlNotKept), Write::Honest);
        assert_eq!(write(sld::MSR_TEST_CTRL, on, false, yes), Write::Honest, "a refused write stays refused");
        assert_eq!(ac_error_code(yes), BAD_ERROR_CODE);
        assert_eq!(ac_error_code(|_| false), 0);
    }

    #[test]
    fn msr_rules_need_their_msr_offered() {
        assert!(cannot_break(Breach::TestCtrlFaults, Enumeration::CoreCapabilitiesOnly).is_some());
        assert!(cannot_break(Breach::CoreCapabilitiesGarbage, Enumeration::CoreCapabilitiesOnly).is_none());
        assert!(cannot_break(Breach::CoreCapabilitiesGarbage, Enumeration::Absent).is_some());
        assert!(RULES.iter().all(|&r| cannot_break(r, Enumeration::SplitLockDetect).is_none()));
    }
}
