//! The milestone port (`pvagent_abi::port::MILESTONE`): the guest says it reached a point of its
//! boot, and the host takes a snapshot of the vCPU's KVM statistics there. KVM counts from the
//! vCPU's first instruction, so the snapshot is what getting there cost: guest instructions KVM
//! emulated (on PVM, every guest kernel instruction) and exits, including those the host stub
//! never saw. Served by [`super::Basics`], behind its gate.

use std::time::{Duration, Instant};

use pvagent_abi::port::Milestone;

use crate::handler::{Report, VcpuCtx};
use crate::kvm_stats::Snapshot;

/// A milestone the guest reached: when, and what KVM had counted by then.
#[derive(Clone, Copy, Debug)]
struct Reached {
    at: Instant,
    /// `None` where the vCPU has no statistics.
    counts: Option<Snapshot>,
    /// The guest's string iterations to here (RSI at the milestone's `out`); `None` where the
    /// registers could not be read.
    string_iters: Option<u64>,
}

/// The milestones of a run.
#[derive(Debug, Default)]
pub struct Milestones {
    /// When the guest began to run (the first `KVM_RUN`), set by the VM.
    run_start: Option<Instant>,
    first_task: Option<Reached>,
    /// Writes of a value this host does not know, or of a milestone reached before.
    ignored: u64,
    /// Snapshots or registers that failed to read (the milestone is still recorded, without
    /// those counts).
    unreadable: u64,
}

impl Milestones {
    /// The guest starts running now.
    pub fn run_starts(&mut self, at: Instant) {
        self.run_start = Some(at);
    }

    /// A write of `value` to the milestone port by the vCPU in `ctx`.
    pub fn write(&mut self, ctx: &VcpuCtx<'_>, value: u32) {
        // The first task runs on the boot vCPU, once; anything else is not a milestone we know.
        if Milestone::try_from(value) != Ok(Milestone::FirstTask) || ctx.index != 0 || self.first_task.is_some() {
            self.ignored += 1;
            return;
        }
        let counts = ctx.stats.and_then(|stats| stats.snapshot(ctx.exits).inspect_err(|_| self.unreadable += 1).ok());
        let string_iters = ctx.vcpu.get_regs().inspect_err(|_| self.unreadable += 1).ok().map(|regs| regs.rsi);
        self.first_task = Some(Reached { at: Instant::now(), counts, string_iters });
    }

    /// Reports each milestone reached: `boot.insn_emulation` and `boot.kvm_exits` (as KVM counted
    /// them from the first guest instruction to the milestone's exit, itself included),
    /// `boot.exits` (the exits the guest caused: see [`Snapshot::guest_exits`]),
    /// `boot.string_iters` (what the guest said its string instructions ran) and
    /// `boot.first_task_us` (from the first `KVM_RUN`), and a line.
    pub fn finish(&self, report: &mut Report) {
        report.counter("basics", "milestones_ignored", self.ignored);
        if self.unreadable > 0 {
            report.counter("basics", "milestone_stats_unreadable", self.unreadable);
        }
        let Some(reached) = self.first_task else { return };
        let since_start = self.run_start.map_or(Duration::ZERO, |start| reached.at.saturating_duration_since(start));
        report.counter("boot", "first_task_us", since_start.as_micros() as u64);
        let counts = reached.counts.unwrap_or_default();
        if let Some(insns) = counts.insn_emulation {
            report.counter("boot", "insn_emulation", insns);
        }
        report.counter("boot", "exits", counts.guest_exits());
        if let Some(exits) = counts.exits {
            report.counter("boot", "kvm_exits", exits);
        }
        if let Some(iters) = reached.string_iters {
            report.counter("boot", "string_iters", iters);
        }
        let count =
            |c: Option<u64>, what: &str| c.map_or_else(|| format!("{what} not counted"), |n| format!("{n} {what}"));
        report.line(format!(
            "boot: the first task started {:.1} ms after the first entry: {}, {} ({})",
            since_start.as_secs_f64() * 1e3,
            count(counts.insn_emulation, "guest instructions emulated"),
            count(Some(counts.guest_exits()), "exits the guest caused"),
            count(counts.exits, "exits KVM counted")
        ));
    }
}
