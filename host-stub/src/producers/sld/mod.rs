//! The split-lock producer: virtualized split-lock detection for the guest (CPUID.7.0:EDX bit 30,
//! IA32_CORE_CAPABILITIES, MSR_TEST_CTRL through user-space MSR exits) and the #AC a
//! split-lock-detecting CPU would raise, produced where this hardware cannot.
//!
//! The signal: a split-locked instruction is invisible to these machines (no detection in the
//! CPU, no KVM_CAP_X86_BUS_LOCK_EXIT), so a guest test stores a byte to the trigger page
//! (`pvagent_abi::sld::TRIGGER_GPA`) right before its locked instruction. No memory backs
//! that page, so the store exits to the host as an MMIO write, from CPL 0 and CPL 3 alike; KVM
//! has retired the store by then (RIP is past it), so the vCPU stops right before the armed
//! instruction. The host decodes that instruction with
//! `iced-x86`, computes its memory operand from the vCPU's registers, and decides with
//! [`policy::decide`]: inject #AC (vector 17, error code 0, RIP of that instruction, not yet
//! executed) or let it run. Breakpoints would not need the store, but on the PVM `/dev/kvm` of
//! these machines neither a hardware execute breakpoint nor an `int3` stops the vCPU while the
//! guest runs at CPL 3 (measured: the first does not fire, the second reaches the guest as
//! #BP), and user split locks matter most. Where KVM offers bus-lock exits they are enabled
//! too and each real bus lock is counted and reported; they come after the instruction ran,
//! so #AC still comes from the trigger.

pub mod breaks;
pub mod policy;

use std::fmt::Write as _;

use kvm_bindings::{KVM_BUS_LOCK_DETECTION_EXIT, KVM_CAP_X86_BUS_LOCK_EXIT, kvm_enable_cap};

use pvagent_abi::breach::Breach;
use pvagent_abi::cpuid::{self as abi_cpuid, Features};
use pvagent_abi::hypercall::Nr;
use pvagent_abi::sld::{self, Verdict};

use crate::cpuid::CpuidTable;

use crate::error::{Error, Result};
use crate::handler::{AttachCtx, ExitHandler, Handled, HypercallAnswer, MsrAnswer, Report, VcpuCtx};
use crate::producers::armed::Armed;
use crate::trace::{Arg, Tracer, Track};
use policy::{Access, Decision, Enumeration, GuestState, Policy, VirtualMsrs};

/// This producer's name in reports and counter keys.
const NAME: &str = "sld";
/// How many per-decision lines the report keeps.
const DECISION_LINES_MAX: usize = 64;

/// How the split-lock producer is set up for a run. A field left `None` takes the value for the
/// run's topology ([`SldConfig::settings`]), so a plain run works on a host with SMT siblings too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SldConfig {
    /// How much of split-lock detection's enumeration the guest sees (CPUID.7.0:EDX bit 30,
    /// IA32_CORE_CAPABILITIES bit 5, MSR_TEST_CTRL). The MSRs it does not reach raise #GP; the
    /// trigger works whatever it is.
    pub enumeration: Option<Enumeration>,
    /// What happens to a split lock from a guest whose detection is off.
    pub policy: Option<Policy>,
}

/// The enumeration and policy a run uses: the configuration's, each one it left out taken from
/// the topology's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SldSettings {
    pub enumeration: Enumeration,
    pub policy: Policy,
}

impl SldConfig {
    /// Both chosen by the caller.
    pub fn chosen(enumeration: Enumeration, policy: Policy) -> Self {
        Self { enumeration: Some(enumeration), policy: Some(policy) }
    }

    /// What the run uses: with SMT siblings the fields left out take the values seed 000's rule
    /// allows ([`policy::SMT_DEFAULTS`]), without them the whole chain and `inject-if-enabled`.
    /// Fields given are kept as they are: the producer refuses, at attach, those the rule
    /// forbids, rather than run something other than what was asked.
    pub fn settings(self, siblings: Option<crate::config::Siblings>) -> SldSettings {
        let (enumeration, policy) = match siblings {
            Some(_) => policy::SMT_DEFAULTS,
            None => (Enumeration::default(), Policy::default()),
        };
        SldSettings { enumeration: self.enumeration.unwrap_or(enumeration), policy: self.policy.unwrap_or(policy) }
    }
}

#[derive(Debug, Default)]
struct VcpuState {
    msrs: VirtualMsrs,
}

/// Decisions by verdict, for counters.
#[derive(Debug, Default)]
struct Counts {
    triggers: u64,
    bad_flags: u64,
    /// Triggers that exited with RIP still at the store (the store not yet retired): not
    /// decided, because an #AC injected now would be taken with the store half done.
    before_store: u64,
    decided: u64,
    /// Indexed by the verdict's wire value (dense from 0, asserted in the ABI crate).
    by_verdict: [u64; Verdict::ALL.len()],
    bus_locks: u64,
}

impl Counts {
    /// Decisions that injected #AC and those that let the instruction run.
    fn injected_and_ran(&self) -> (u64, u64) {
        Verdict::ALL.iter().fold((0, 0), |(injected, ran), &v| {
            let n = self.by_verdict[v as usize];
            if v.injected() { (injected + n, ran) } else { (injected, ran + n) }
        })
    }
}

/// The split-lock producer.
#[derive(Debug)]
pub struct SplitLock {
    config: SldConfig,
    /// What the run uses: `config` for the topology without siblings until attach, which knows
    /// the topology.
    settings: SldSettings,
    vcpus: Vec<VcpuState>,
    last: (u64, Verdict),
    globally_disabled: bool,
    bus_lock_exits: bool,
    /// What the host CPU can detect itself, read at attach.
    host_cpu: HostDetection,
    counts: Counts,
    /// Per-decision lines, capped at [`DECISION_LINES_MAX`].
    lines: Vec<String>,
    /// Per-decision lines past the cap.
    lines_dropped: u64,
    /// Policy actions that change the VM (switching detection off): never capped.
    actions: Vec<String>,
    /// The run's timeline: each #AC injected is an instant on its vCPU's track.
    trace: Tracer,
    /// Why vCPUs may have SMT siblings, when they may: the configuration kept to seed 000's
    /// rule (checked at attach), which the report says.
    siblings: Option<crate::config::Siblings>,
    /// Breaches of the ABI to commit on purpose ([`breaks`]): a test control.
    armed: Armed,
    /// The rules `--break` armed from the start (checked at attach against the enumeration).
    from_start: Vec<Breach>,
    /// Breaches committed, for the report (never capped: each is one a test asked for).
    breaches: Vec<String>,
}

impl SplitLock {
    /// A producer with this configuration.
    pub fn new(config: SldConfig) -> Self {
        Self {
            config,
            settings: config.settings(None),
            vcpus: Vec::new(),
            last: (0, Verdict::Pending),
            globally_disabled: false,
            bus_lock_exits: false,
            host_cpu: HostDetection::default(),
            counts: Counts::default(),
            lines: Vec::new(),
            lines_dropped: 0,
            actions: Vec::new(),
            trace: Tracer::off(),
            siblings: None,
            armed: Armed::default(),
            from_start: Vec::new(),
            breaches: Vec::new(),
        }
    }

    fn vcpu(&mut self, index: usize) -> &mut VcpuState {
        if self.vcpus.len() <= index {
            self.vcpus.resize_with(index + 1, VcpuState::default);
        }
        &mut self.vcpus[index]
    }

    fn note(&mut self, line: String) {
        if self.lines.len() < DECISION_LINES_MAX {
            self.lines.push(line);
        } else {
            self.lines_dropped += 1;
        }
    }

    /// A store to the trigger page: decide on the instruction after it.
    fn triggered(&mut self, ctx: &mut VcpuCtx<'_>, flags: u8) -> Result<()> {
        self.counts.triggers += 1;
        if u64::from(flags) & !sld::ARM_FORCE_INJECT != 0 {
            self.counts.bad_flags += 1;
            self.note(format!("trigger on vCPU {} with unknown flags {flags:#x}: ignored", ctx.index));
            return Ok(());
        }
        self.decide(ctx, u64::from(flags) & sld::ARM_FORCE_INJECT != 0)
    }

    /// Decides on the armed instruction, and injects #AC or lets it run.
    fn decide(&mut self, ctx: &mut VcpuCtx<'_>, forced: bool) -> Result<()> {
        let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
        let sregs = ctx.vcpu.get_sregs().map_err(Error::GetSregs)?;
        let rip = regs.rip;
        // KVM retires an emulated MMIO store before it exits to user space (VMX and PVM alike:
        // RIP is past the store). A KVM that finished the store only on the next entry would
        // stop here with RIP still at it; an #AC injected now would be taken at the store, and
        // the store would run again after the handler. Decide nothing then, and say so.
        if let Ok(store) = crate::guest_insn::at(ctx.vcpu, ctx.mem, rip, &regs, &sregs)
            && store
                .memory
                .first()
                .and_then(|m| crate::guest_insn::translate(ctx.vcpu, m.linear))
                .is_some_and(is_trigger)
        {
            self.counts.before_store += 1;
            self.note(format!(
                "trigger on vCPU {} exited at rip {rip:#x} with the store not retired: no decision",
                ctx.index
            ));
            return Ok(());
        }
        let decoded = crate::guest_insn::at(ctx.vcpu, ctx.mem, rip, &regs, &sregs);
        let access = decoded
            .as_ref()
            .ok()
            .map(|i| Access { locked: i.is_locked_access(), memory: i.memory.first().map(|m| (m.linear, m.size)) });
        let guest = GuestState {
            // The CPL is CS.DPL in long mode (SS.DPL would do as well); the selector's RPL
            // need not match it.
            cpl: sregs.cs.dpl,
            cr0_am: sregs.cr0 & (1 << 18) != 0,
            rflags_ac: regs.rflags & (1 << 18) != 0,
            detection_on: self.vcpu(ctx.index).msrs.detection_on(),
        };
        let mut decision = if forced {
            Decision::Inject(Verdict::InjectedForced)
        } else {
            policy::decide(access, guest, self.settings.policy, self.globally_disabled)
        };
        let armed = &mut self.armed;
        if let Some(rule) = breaks::forced_ac(decision, guest, |r| armed.take(ctx.index, r)) {
            self.broke(ctx.index, rule, format_args!("#AC at rip {rip:#x} ({decision:?} was due)"));
            decision = Decision::Inject(Verdict::InjectedForced);
        }
        let what = match (&decoded, access.and_then(|a| a.memory)) {
            (Ok(i), Some((addr, size))) => format!("{} ({size} bytes at {addr:#x})", i.text()),
            (Ok(i), None) => i.text(),
            (Err(e), _) => format!("not decodable: {e}"),
        };
        let verdict = match decision {
            Decision::Inject(verdict) => {
                let armed = &mut self.armed;
                let error_code = breaks::ac_error_code(|r| armed.take(ctx.index, r));
                if error_code != 0 {
                    let rule = Breach::AcErrorCodeNotZero;
                    self.broke(ctx.index, rule, format_args!("#AC at rip {rip:#x} with error code {error_code:#x}"));
                }
                inject_ac(ctx, &self.trace, verdict, error_code)?;
                verdict
            }
            Decision::Run(verdict) => verdict,
            Decision::DisableGlobally => {
                self.globally_disabled = true;
                let action = format!(
                    "policy disable-globally: split-lock detection switched off for this VM after a split lock on vCPU {} at rip {rip:#x} ({what}) from a guest with detection off",
                    ctx.index
                );
                // A change to the whole VM is said at once (the run may not end cleanly) and
                // kept apart from the capped decision lines.
                eprintln!("host: {NAME}: {action}");
                self.actions.push(action);
                Verdict::DisabledGlobally
            }
            Decision::Exit => {
                // The policy says exit only for a decoded split lock, which has its operand.
                let insn = decoded.as_ref().map(|i| i.text()).unwrap_or_default();
                let (address, size) = access.and_then(|a| a.memory).unwrap_or_default();
                return Err(Error::SplitLockExit { vcpu: ctx.index, rip, insn, address, size });
            }
        };
        self.counts.decided += 1;
        self.counts.by_verdict[verdict as usize] += 1;
        let seq = self.last.0 + 1;
        self.last = (seq, verdict);
        let action = if verdict.injected() { "#AC injected" } else { "ran" };
        self.note(format!(
            "trigger {seq} on vCPU {} at rip {rip:#x}, cpl {}: {what}: {action} ({})",
            ctx.index,
            guest.cpl,
            verdict_name(verdict)
        ));
        Ok(())
    }
}

/// What the host CPU detects itself, as Linux reports it in `/proc/cpuinfo`.
///
/// With `split_lock_detect` a guest's real split lock raises #AC in hardware; KVM intercepts it
/// and, unless the guest's own alignment checking asks for it, handles it as the host's
/// `split_lock_detect=` mode says: a warning in the host's log (and the vCPU thread runs on
/// without detection), or with `fatal` a KVM_EXIT_EXCEPTION for vector 17, which ends the run
/// as an unexpected exit. Either way the guest's #AC still comes from the trigger. With
/// `bus_lock_detect` KVM can report bus locks after the fact (KVM_CAP_X86_BUS_LOCK_EXIT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDetection {
    pub split_lock_detect: bool,
    pub bus_lock_detect: bool,
}

impl HostDetection {
    /// The flags of the first processor in a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(text: &str) -> Self {
        let flags = text
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "flags").map(|(_, v)| v))
            .unwrap_or("");
        let has = |name| flags.split_whitespace().any(|f| f == name);
        Self { split_lock_detect: has("split_lock_detect"), bus_lock_detect: has("bus_lock_detect") }
    }

    /// This machine's (nothing detected if `/proc/cpuinfo` cannot be read).
    fn of_this_machine() -> Self {
        std::fs::read_to_string("/proc/cpuinfo").map(|t| Self::from_cpuinfo(&t)).unwrap_or_default()
    }
}

/// Whether a guest-physical address is on the trigger page.
fn is_trigger(gpa: u64) -> bool {
    (sld::TRIGGER_GPA..sld::TRIGGER_GPA + pvagent_abi::PAGE_SIZE).contains(&gpa)
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pending => "pending",
        Verdict::InjectedSplitLock => "split lock, guest detection on",
        Verdict::InjectedAlignmentCheck => "split lock at CPL 3 with the guest's alignment checking on",
        Verdict::NotLocked => "not a locked access",
        Verdict::NotSplit => "locked, within one cache line",
        Verdict::GuestDetectionOff => "split lock, guest detection off: policy inject-if-enabled",
        Verdict::DisabledGlobally => "split lock, detection disabled for the VM",
        Verdict::Undecodable => "could not be decoded",
        Verdict::InjectedForced => "forced by the guest test",
    }
}

/// The counter key of each verdict.
fn verdict_counter(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pending => "pending",
        Verdict::InjectedSplitLock => "injected_split_lock",
        Verdict::InjectedAlignmentCheck => "injected_alignment_check",
        Verdict::NotLocked => "not_locked",
        Verdict::NotSplit => "not_split",
        Verdict::GuestDetectionOff => "guest_detection_off",
        Verdict::DisabledGlobally => "disabled_globally",
        Verdict::Undecodable => "undecodable",
        Verdict::InjectedForced => "injected_forced",
    }
}

/// Injects #AC into the vCPU, to be delivered at the next entry; `why` goes on the timeline.
/// The error code is 0 unless a breach on purpose says otherwise ([`breaks::ac_error_code`]).
fn inject_ac(ctx: &VcpuCtx<'_>, trace: &Tracer, why: Verdict, error_code: u32) -> Result<()> {
    ctx.inject_exception(sld::AC_VECTOR, Some(error_code))?;
    trace.instant(Track::Vcpu(ctx.index), "inject #AC", || {
        vec![("vector", Arg::Uint(sld::AC_VECTOR.into())), ("verdict", Arg::Text(format!("{why:?}").into()))]
    });
    Ok(())
}

impl ExitHandler for SplitLock {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        self.trace = ctx.trace.clone();
        self.settings = self.config.settings(ctx.siblings);
        if let Some(siblings) = ctx.siblings {
            policy::check_smt_rule(self.settings.enumeration, self.settings.policy)
                .map_err(|conflict| Error::SldWithSmt { siblings, conflict })?;
            self.siblings = Some(siblings);
        }
        if let Some((rule, why)) =
            self.from_start.iter().find_map(|&r| breaks::cannot_break(r, self.settings.enumeration).map(|w| (r, w)))
        {
            return Err(Error::BreakNotServed { rule: rule.to_string(), why });
        }
        self.host_cpu = HostDetection::of_this_machine();
        let vm = ctx.vm;
        let bus_lock_modes = vm.check_extension_raw(u64::from(KVM_CAP_X86_BUS_LOCK_EXIT));
        if bus_lock_modes > 0 && bus_lock_modes as u32 & KVM_BUS_LOCK_DETECTION_EXIT != 0 {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_X86_BUS_LOCK_EXIT,
                args: [u64::from(KVM_BUS_LOCK_DETECTION_EXIT), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap).map_err(|e| Error::EnableCap("KVM_CAP_X86_BUS_LOCK_EXIT", e))?;
            self.bus_lock_exits = true;
        }
        Ok(())
    }

    fn cpuid(&self, table: &mut CpuidTable) {
        let leaf7 = table.entry(sld::CPUID_LEAF, sld::CPUID_SUBLEAF);
        if self.settings.enumeration.core_capabilities() {
            leaf7.edx |= sld::CPUID7_EDX_CORE_CAPABILITIES;
        } else {
            leaf7.edx &= !sld::CPUID7_EDX_CORE_CAPABILITIES;
        }
        let features = &mut table.entry(abi_cpuid::LEAF_INFO, 0).ebx;
        *features |= Features::SPLIT_LOCK_TRIGGER;
        // The same statement in the host stub's own leaf, which KVM passes through unchanged
        // where it filters the architectural bit.
        if self.settings.enumeration.core_capabilities() {
            *features |= Features::CORE_CAPABILITIES;
        }
    }

    fn intercepted_msrs(&self) -> Vec<u32> {
        vec![sld::MSR_TEST_CTRL, sld::MSR_CORE_CAPABILITIES]
    }

    fn rdmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32) -> Result<MsrAnswer> {
        Ok(self.read_msr(ctx.index, index))
    }

    fn wrmsr(&mut self, ctx: &mut VcpuCtx<'_>, index: u32, value: u64) -> Result<MsrAnswer> {
        Ok(self.write_msr(ctx.index, index, value))
    }

    fn hypercall(&mut self, ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        Ok(match Nr::try_from(nr) {
            Ok(Nr::SplitLockVerdict) => Some(Ok([self.last.0, self.last.1 as u64])),
            Ok(Nr::SplitLockPolicy) => Some(Ok([self.settings.policy.wire() as u64, 0])),
            Ok(Nr::HostBreak) => self.host_break(ctx.index, args[0]),
            _ => None,
        })
    }

    fn mmio_write(&mut self, ctx: &mut VcpuCtx<'_>, addr: u64, data: &[u8]) -> Result<Handled> {
        if !is_trigger(addr) {
            return Ok(Handled::No);
        }
        self.triggered(ctx, data.first().copied().unwrap_or(0))?;
        Ok(Handled::Yes)
    }

    fn mmio_read(&mut self, _ctx: &mut VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Result<Handled> {
        if !is_trigger(addr) {
            return Ok(Handled::No);
        }
        data.fill(0);
        Ok(Handled::Yes)
    }

    fn bus_lock(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        self.counts.bus_locks += 1;
        let rip = ctx.vcpu.get_regs().map_err(Error::GetRegs)?.rip;
        self.note(format!("bus lock reported by KVM on vCPU {} (the instruction before rip {rip:#x})", ctx.index));
        Ok(Handled::Yes)
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        let signal = match (self.bus_lock_exits, self.host_cpu.split_lock_detect) {
            (true, _) => {
                "KVM bus-lock exits (real, after the instruction) are counted; #AC comes from the trigger (trigger page + decoder)"
            }
            (false, true) => {
                "the host CPU detects split locks, but KVM keeps them (host log or KVM_EXIT_EXCEPTION); #AC comes from the trigger (trigger page + decoder)"
            }
            (false, false) => {
                "emulated: no split-lock detection in the host CPU and no KVM_CAP_X86_BUS_LOCK_EXIT, so #AC comes from the trigger (trigger page + decoder)"
            }
        };
        report.line(format!("{NAME}: signal: {signal}"));
        if let Some(siblings) = self.siblings {
            report.line(format!(
                "{NAME}: {siblings}: MSR_TEST_CTRL is per core, so not virtualized per vCPU (seed 000); policy {}",
                self.settings.policy.name()
            ));
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        report.line(format!(
            "{NAME}: host CPU: split_lock_detect {}, bus_lock_detect {}",
            yes_no(self.host_cpu.split_lock_detect),
            yes_no(self.host_cpu.bus_lock_detect)
        ));
        report.counter(NAME, "host_split_lock_detect", u64::from(self.host_cpu.split_lock_detect));
        report.counter(NAME, "host_bus_lock_detect", u64::from(self.host_cpu.bus_lock_detect));
        report.counter(NAME, "bus_lock_exits_enabled", u64::from(self.bus_lock_exits));
        report.line(format!(
            "{NAME}: detection {} to the guest (enumeration {}); policy for guests with detection off: {}{}",
            if self.settings.enumeration.split_lock_detect() { "advertised" } else { "not advertised" },
            self.settings.enumeration.name(),
            self.settings.policy.name(),
            if self.globally_disabled { " (detection now off for this VM)" } else { "" }
        ));
        let (mut writes, mut refused, mut caps_reads, mut test_ctrl_reads) = (0, 0, 0, 0);
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            let m = &vcpu.msrs;
            writes += m.write_count;
            refused += m.refused;
            caps_reads += m.core_caps_reads;
            test_ctrl_reads += m.test_ctrl_reads;
            let mut seq = String::new();
            for value in &m.writes {
                let _ = write!(seq, " {}", if value & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0 { "on" } else { "off" });
            }
            if m.write_count as usize > m.writes.len() {
                seq.push_str(" ...");
            }
            report.line(format!(
                "{NAME}: vCPU {index} MSR_TEST_CTRL: {} writes{}{seq}; now {:#x}; {} refused with #GP",
                m.write_count,
                if seq.is_empty() { "" } else { ":" },
                m.test_ctrl,
                m.refused
            ));
        }
        report.counter(NAME, "breaches_on_purpose", self.breaches.len() as u64);
        for line in self.actions.drain(..).chain(self.breaches.drain(..)).chain(self.lines.drain(..)) {
            report.line(format!("{NAME}: {line}"));
        }
        if self.lines_dropped > 0 {
            report.line(format!("{NAME}: ({} more lines not shown; the counters cover them)", self.lines_dropped));
        }
        report.counter(NAME, "test_ctrl_writes", writes);
        report.counter(NAME, "msr_refused", refused);
        report.counter(NAME, "core_caps_reads", caps_reads);
        report.counter(NAME, "test_ctrl_reads", test_ctrl_reads);
        report.counter(NAME, "triggers", self.counts.triggers);
        report.counter(NAME, "bad_flags", self.counts.bad_flags);
        report.counter(NAME, "trigger_before_store", self.counts.before_store);
        report.counter(NAME, "decided", self.counts.decided);
        for &verdict in Verdict::ALL {
            report.counter(NAME, verdict_counter(verdict), self.counts.by_verdict[verdict as usize]);
        }
        report.counter(NAME, "globally_disabled", u64::from(self.globally_disabled));
        report.counter(NAME, "bus_locks", self.counts.bus_locks);
        let (injected, ran) = self.counts.injected_and_ran();
        report.line(format!(
            "{NAME}: {} triggers, {} decided: {injected} #AC injected, {ran} ran",
            self.counts.triggers, self.counts.decided,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_trigger_page_triggers() {
        assert!(is_trigger(sld::TRIGGER_GPA) && is_trigger(sld::TRIGGER_GPA + 0xFFF));
        assert!(!is_trigger(sld::TRIGGER_GPA - 1) && !is_trigger(sld::TRIGGER_GPA + 0x1000));
    }

    #[test]
    fn options_left_out_take_the_topologys_defaults_and_those_given_are_kept() {
        use crate::config::Siblings;
        let none = SldConfig::default();
        let per_vcpu = SldSettings { enumeration: Enumeration::SplitLockDetect, policy: Policy::InjectIfEnabled };
        assert_eq!(none.settings(None), per_vcpu);
        let (enumeration, policy) = policy::SMT_DEFAULTS;
        for siblings in [Siblings::Simulated, Siblings::Host] {
            assert_eq!(none.settings(Some(siblings)), SldSettings { enumeration, policy });
            let given = SldConfig { enumeration: Some(Enumeration::SplitLockDetect), policy: None };
            assert_eq!(
                given.settings(Some(siblings)),
                SldSettings { enumeration: Enumeration::SplitLockDetect, policy }
            );
        }
    }

    #[test]
    fn advertising_is_a_cpuid_bit_and_the_trigger_a_feature_bit() {
        for enumeration in [Enumeration::Absent, Enumeration::CoreCapabilitiesOnly, Enumeration::SplitLockDetect] {
            let mut table = CpuidTable::from_entries(vec![kvm_bindings::kvm_cpuid_entry2 {
                function: 7,
                edx: sld::CPUID7_EDX_CORE_CAPABILITIES,
                ..Default::default()
            }]);
            SplitLock::new(SldConfig::chosen(enumeration, Policy::Exit)).cpuid(&mut table);
            let edx = table.get(7, 0).unwrap().edx;
            let step1 = enumeration != Enumeration::Absent;
            assert_eq!(edx & sld::CPUID7_EDX_CORE_CAPABILITIES != 0, step1);
            let features = Features(table.get(abi_cpuid::LEAF_INFO, 0).unwrap().ebx);
            assert!(features.has(Features::SPLIT_LOCK_TRIGGER));
            assert_eq!(features.has(Features::CORE_CAPABILITIES), step1);
        }
    }

    #[test]
    fn host_detection_reads_the_first_flags_line_only_whole_words() {
        let text =
            "processor\t: 0\nflags\t\t: fpu sse2 split_lock_detect\n\nprocessor\t: 1\nflags\t\t: fpu bus_lock_detect\n";
        let d = HostDetection::from_cpuinfo(text);
        assert_eq!(d, HostDetection { split_lock_detect: true, bus_lock_detect: false });
        let d = HostDetection::from_cpuinfo("flags : fpu split_lock_detect_x xbus_lock_detect\n");
        assert_eq!(d, HostDetection::default());
        assert_eq!(HostDetection::from_cpuinfo(""), HostDetection::default());
    }

    #[test]
    fn every_verdict_has_its_own_counter() {
        let mut names: Vec<_> = Verdict::ALL.iter().map(|&v| verdict_counter(v)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Verdict::ALL.len());
    }
}
