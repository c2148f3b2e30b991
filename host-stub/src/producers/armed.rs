//! Which breaches of the ABI a producer is to commit, per vCPU (`pvagent_abi::breach`): armed by
//! the guest's `HostBreak` hypercall (one rule, replacing what was armed on that vCPU) or from the
//! start by the host stub's `--break RULE` (every such rule, on every vCPU), and each used up at
//! the vCPU's next occasion for it. A test control: a production host arms nothing.

use pvagent_abi::breach::Breach;

/// One bit per rule, by [`Breach::index`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Set(u128);

const _: () = assert!(Breach::COUNT <= 128, "one bit per rule");

impl Set {
    fn bit(rule: Breach) -> u128 {
        1 << rule.index()
    }
}

/// A producer's armed breaches.
#[derive(Clone, Debug, Default)]
pub struct Armed {
    /// What each vCPU starts with (`--break`).
    from_start: Set,
    /// Per vCPU, grown as vCPUs show up.
    vcpus: Vec<Set>,
}

impl Armed {
    /// Arms, on every vCPU from its start, those of `rules` that `owns` says are this
    /// producer's; returns the rules it took.
    pub fn from_start(rules: &[Breach], owns: impl Fn(Breach) -> bool) -> (Self, Vec<Breach>) {
        let mut set = Set::default();
        let mut taken = Vec::new();
        for &rule in rules.iter().filter(|&&r| owns(r)) {
            set.0 |= Set::bit(rule);
            taken.push(rule);
        }
        (Self { from_start: set, vcpus: Vec::new() }, taken)
    }

    fn vcpu(&mut self, vcpu: usize) -> &mut Set {
        if self.vcpus.len() <= vcpu {
            self.vcpus.resize(vcpu + 1, self.from_start);
        }
        &mut self.vcpus[vcpu]
    }

    /// `HostBreak`: arms `rule` alone on `vcpu`, replacing what was armed there; whether a
    /// breach was armed and not yet used.
    pub fn arm(&mut self, vcpu: usize, rule: Breach) -> bool {
        let set = self.vcpu(vcpu);
        let unused = set.0 != 0;
        *set = Set(Set::bit(rule));
        unused
    }

    /// Whether `rule` is armed on `vcpu`, using it up: the caller breaks it now.
    pub fn take(&mut self, vcpu: usize, rule: Breach) -> bool {
        let set = self.vcpu(vcpu);
        let armed = set.0 & Set::bit(rule) != 0;
        set.0 &= !Set::bit(rule);
        armed
    }

    /// Whether `rule` is armed on `vcpu` (not using it up).
    pub fn is_armed(&mut self, vcpu: usize, rule: Breach) -> bool {
        self.vcpu(vcpu).0 & Set::bit(rule) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_used_once_per_vcpu_and_arming_replaces() {
        let rules = [Breach::TestCtrlFaults, Breach::VeOverBusyArea];
        let (mut armed, taken) = Armed::from_start(&rules, |r| r != Breach::VeOverBusyArea);
        assert_eq!(taken, [Breach::TestCtrlFaults]);
        for vcpu in [1, 0] {
            assert!(!armed.take(vcpu, Breach::VeOverBusyArea));
            assert!(armed.take(vcpu, Breach::TestCtrlFaults));
            assert!(!armed.take(vcpu, Breach::TestCtrlFaults), "used up");
        }
        assert!(!armed.arm(0, Breach::AcErrorCodeNotZero), "nothing armed before");
        assert!(armed.arm(0, Breach::AcNoSplitLockAtRip), "the first one unused");
        assert!(!armed.take(0, Breach::AcErrorCodeNotZero), "replaced");
        assert!(armed.is_armed(0, Breach::AcNoSplitLockAtRip) && armed.take(0, Breach::AcNoSplitLockAtRip));
    }
}
