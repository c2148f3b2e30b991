//! The pager's #VE breaches on purpose (`pvagent_abi::breach`, section 0x400, and
//! [`Breach::VeInfoMsrFaults`] of 0x500): which rules it owns, and the broken answers. Armed per
//! vCPU by `Nr::HostBreak` or from the start by `--break`, each used up at the vCPU's next
//! occasion for it ([`Armed`]). A broken request answer changes nothing of the pager's state
//! (as a refusal does), so the guest's fallback (`VeSuspend`) finds the page as it was. A test
//! control; kept apart from `ve_delivery` so that the contract's code stays as it is.

use pvagent_abi::breach::Breach;
use pvagent_abi::hypercall::Status;
use pvagent_abi::ve as abi;

use super::shared::Inner;
use crate::handler::{HypercallAnswer, Report};
use crate::producers::armed::Armed;

/// The rules this part of the pager breaks.
pub const RULES: [Breach; 8] = [
    Breach::VeOverBusyArea,
    Breach::VeNotMarkedBusy,
    Breach::VeUnknownExitReason,
    Breach::VeGpaOutsideRegion,
    Breach::VeParkBadToken,
    Breach::VeParkBadOutcome,
    Breach::VeSuspendBadOutcome,
    Breach::VeInfoMsrFaults,
];

/// The exit reason a #VE reports under [`Breach::VeUnknownExitReason`] (49, EPT
/// misconfiguration: a real reason, not one this ABI reports).
pub const BAD_EXIT_REASON: u32 = 49;
/// The GPA a #VE reports under [`Breach::VeGpaOutsideRegion`]: the first page after the real
/// mode IVT, guest RAM that no demand-paged region holds.
pub const OUTSIDE_GPA: u64 = 0x1000;
/// `VePark`'s token under [`Breach::VeParkBadToken`]: wider than 32 bits (cut to 32 bits it
/// would be slot 1, sequence 1: a plausible live token).
pub const BAD_TOKEN: u64 = 0x1_0001_0001;
/// The outcome answered under [`Breach::VeParkBadOutcome`] and [`Breach::VeSuspendBadOutcome`].
pub const BAD_OUTCOME: u64 = 0x1_0000_0000;

/// Whether `rule` is this part's.
pub fn owns(rule: Breach) -> bool {
    RULES.contains(&rule)
}

/// `Nr::HostBreak` for a rule of this part (`None` for any other rule).
pub fn host_break(inner: &mut Inner, vcpu: usize, rule: u64) -> Option<HypercallAnswer> {
    let rule = u32::try_from(rule).ok().and_then(|r| Breach::try_from(r).ok()).filter(|&r| owns(r))?;
    if vcpu >= inner.ve.len() {
        return Some(Some(Err(Status::InvalidArgument)));
    }
    Some(Some(Ok([u64::from(inner.ve_breaks.arm(vcpu, rule)), 0])))
}

fn broke(inner: &mut Inner, vcpu: usize, rule: Breach, what: std::fmt::Arguments<'_>) {
    inner.ve_breaches.push(format!("broke {rule} on vCPU {vcpu} on purpose: {what}"));
}

/// Whether a #VE may be raised over a set busy word on `vcpu` (armed, not used up: the #VE
/// that is raised uses it, [`raised_over_busy`]).
pub fn over_busy_armed(inner: &mut Inner, vcpu: usize) -> bool {
    inner.ve_breaks.is_armed(vcpu, Breach::VeOverBusyArea)
}

/// A #VE is being raised over a set busy word: the armed breach (if it, not the `IGNORE_BUSY`
/// switch, allowed it) is used up.
pub fn raised_over_busy(inner: &mut Inner, vcpu: usize, gpa: u64) {
    if inner.ve_breaks.take(vcpu, Breach::VeOverBusyArea) {
        broke(inner, vcpu, Breach::VeOverBusyArea, format_args!("#VE for {gpa:#x} with the busy word set"));
    }
}

/// The exit reason and GPA a #VE about to be raised on `vcpu` reports.
pub fn report(inner: &mut Inner, vcpu: usize, gpa: u64) -> (u32, u64) {
    if inner.ve_breaks.take(vcpu, Breach::VeUnknownExitReason) {
        broke(
            inner,
            vcpu,
            Breach::VeUnknownExitReason,
            format_args!("#VE for {gpa:#x} with exit reason {BAD_EXIT_REASON}"),
        );
        return (BAD_EXIT_REASON, gpa);
    }
    if inner.ve_breaks.take(vcpu, Breach::VeGpaOutsideRegion) {
        broke(inner, vcpu, Breach::VeGpaOutsideRegion, format_args!("#VE for {gpa:#x} reporting {OUTSIDE_GPA:#x}"));
        return (abi::EXIT_REASON_EPT_VIOLATION, OUTSIDE_GPA);
    }
    (abi::EXIT_REASON_EPT_VIOLATION, gpa)
}

/// The `busy` word a #VE about to be raised on `vcpu` for `gpa` stores: [`abi::BUSY`], or 0
/// under [`Breach::VeNotMarkedBusy`] (the area then stays free, so the access's retry, if any,
/// raises the next #VE as the contract says).
pub fn busy_value(inner: &mut Inner, vcpu: usize, gpa: u64) -> u32 {
    if inner.ve_breaks.take(vcpu, Breach::VeNotMarkedBusy) {
        broke(inner, vcpu, Breach::VeNotMarkedBusy, format_args!("#VE for {gpa:#x} with the busy word left 0"));
        return 0;
    }
    abi::BUSY
}

/// A broken answer to `VePark` for `gpa`, if one is armed: given instead of serving the request.
pub fn park_answer(inner: &mut Inner, vcpu: usize, gpa: u64) -> Option<[u64; 2]> {
    let ret = if inner.ve_breaks.take(vcpu, Breach::VeParkBadToken) {
        broke(inner, vcpu, Breach::VeParkBadToken, format_args!("VePark({gpa:#x}) answered token {BAD_TOKEN:#x}"));
        [BAD_TOKEN, 0]
    } else if inner.ve_breaks.take(vcpu, Breach::VeParkBadOutcome) {
        let rule = Breach::VeParkBadOutcome;
        broke(inner, vcpu, rule, format_args!("VePark({gpa:#x}) answered no token, outcome {BAD_OUTCOME:#x}"));
        [abi::NO_TOKEN, BAD_OUTCOME]
    } else {
        return None;
    };
    Some(ret)
}

/// A broken answer to `VeSuspend` for `gpa`, if one is armed.
pub fn suspend_answer(inner: &mut Inner, vcpu: usize, gpa: u64) -> Option<[u64; 2]> {
    inner.ve_breaks.take(vcpu, Breach::VeSuspendBadOutcome).then(|| {
        let rule = Breach::VeSuspendBadOutcome;
        broke(inner, vcpu, rule, format_args!("VeSuspend({gpa:#x}) answered outcome {BAD_OUTCOME:#x}"));
        [BAD_OUTCOME, 0]
    })
}

/// Whether a WRMSR of `value` to `MSR_VE_INFO`, which the contract accepts, is refused with #GP
/// instead (armed; nothing is changed then).
pub fn msr_write_faults(inner: &mut Inner, vcpu: usize, value: u64) -> bool {
    let accepted = vcpu < inner.ve.len() && super::ve::check_msr(value, &inner.ram_ranges).is_ok();
    if accepted && inner.ve_breaks.take(vcpu, Breach::VeInfoMsrFaults) {
        broke(inner, vcpu, Breach::VeInfoMsrFaults, format_args!("WRMSR MSR_VE_INFO of {value:#x}: #GP"));
        return true;
    }
    false
}

impl super::Pager {
    /// Arms, on every vCPU from its start, those of `rules` this part breaks ([`RULES`]);
    /// returns the ones it took (`--break`).
    pub fn break_from_start(&mut self, rules: &[Breach]) -> Vec<Breach> {
        let (armed, taken) = Armed::from_start(rules, owns);
        self.shared.lock().ve_breaks = armed;
        taken
    }
}

/// The breaches committed, for the run's report.
pub fn finish(inner: &mut Inner, report: &mut Report) {
    report.counter("pager", "ve_breaches_on_purpose", inner.ve_breaches.len() as u64);
    for line in inner.ve_breaches.drain(..) {
        report.line(format!("pager: {line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broken_values_break_the_rules_the_guest_checks() {
        assert!(u32::try_from(BAD_TOKEN).is_err(), "wider than 32 bits");
        assert_ne!(BAD_EXIT_REASON, abi::EXIT_REASON_EPT_VIOLATION);
        assert!(BAD_OUTCOME != u64::from(pvagent_abi::pnp::RESULT_RETRY));
        assert!(BAD_OUTCOME != u64::from(pvagent_abi::pnp::RESULT_FAILED));
        assert_eq!(BAD_OUTCOME as u32, pvagent_abi::pnp::RESULT_RETRY, "only a truncating guest would take it");
        assert!(RULES.iter().all(|&r| (r as u32) >> 8 == 4 || r == Breach::VeInfoMsrFaults));
        assert_ne!(abi::BUSY, 0, "a busy word left 0 is not marked busy");
    }
}
