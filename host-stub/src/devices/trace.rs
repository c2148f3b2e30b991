//! The trace port (`pvagent_abi::trace`): the guest's records for the run's timeline. Each task
//! switch ends the span of the task the vCPU ran until then, on the vCPU's guest track.

use std::time::Instant;

use pvagent_abi::port::TRACE;
use pvagent_abi::trace::{TaskKind, TaskSwitch, TraceRecord};

use crate::error::Result;
use crate::handler::{ExitHandler, Handled, Report, VcpuCtx};
use crate::trace::{Arg, Tracer, Track};

/// The trace port device.
#[derive(Debug)]
pub struct TracePort {
    tracer: Tracer,
    /// Per vCPU: the task it runs, and since when, from its last record.
    running: Vec<Option<(Instant, TaskSwitch)>>,
    /// Every write to the port, traced or not (an untraced guest must write none).
    records: u64,
    task_switches: u64,
    /// Writes that were not a record this ABI defines (bad width, kind or field).
    rejected: u64,
}

impl TracePort {
    /// The port, recording to `tracer` (which may be off: then it only counts).
    pub fn new(tracer: Tracer) -> Self {
        Self { tracer, running: Vec::new(), records: 0, task_switches: 0, rejected: 0 }
    }

    /// The run is over at `end`: the task each vCPU was running ends its span there.
    pub fn end_of_run(&mut self, end: Instant) {
        for (vcpu, running) in self.running.iter_mut().enumerate() {
            if let Some((since, task)) = running.take() {
                record_task(&self.tracer, vcpu, task, since, end);
            }
        }
    }
}

fn task_name(task: TaskSwitch) -> String {
    match task.kind {
        TaskKind::Idle => "idle".into(),
        TaskKind::Kernel => format!("task {} (gen {})", task.slot, task.generation),
        TaskKind::User => format!("user task {} (gen {})", task.slot, task.generation),
    }
}

fn record_task(tracer: &Tracer, vcpu: usize, task: TaskSwitch, since: Instant, until: Instant) {
    tracer.complete(Track::GuestVcpu(vcpu), task_name(task), since, until, || {
        let kind = match task.kind {
            TaskKind::Idle => "idle",
            TaskKind::Kernel => "kernel",
            TaskKind::User => "user",
        };
        vec![
            ("slot", Arg::Uint(task.slot.into())),
            ("generation_low_bits", Arg::Uint(task.generation.into())),
            ("kind", Arg::Text(kind.into())),
        ]
    });
}

impl ExitHandler for TracePort {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        if port != TRACE {
            return Ok(Handled::No);
        }
        self.records += 1;
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            self.rejected += 1;
            return Ok(Handled::Yes);
        };
        match TraceRecord::decode(u32::from_le_bytes(word)) {
            Ok(TraceRecord::TaskSwitch(task)) => {
                self.task_switches += 1;
                if self.tracer.is_on() {
                    let now = Instant::now();
                    if self.running.len() <= ctx.index {
                        self.running.resize(ctx.index + 1, None);
                    }
                    if let Some((since, previous)) = self.running[ctx.index].replace((now, task)) {
                        record_task(&self.tracer, ctx.index, previous, since, now);
                    }
                }
            }
            Err(_) => self.rejected += 1,
        }
        Ok(Handled::Yes)
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(self.name(), "records", self.records);
        report.counter(self.name(), "task_switches", self.task_switches);
        report.counter(self.name(), "rejected", self.rejected);
        Ok(())
    }
}
