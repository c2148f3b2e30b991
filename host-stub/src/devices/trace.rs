//! The trace port (`pvagent_abi::trace`): the guest's records for the run's timeline. Each task
//! switch ends the span of the task the vCPU ran until then, on the vCPU's guest track and on
//! the task's own track; both show the task by the name the guest gave it
//! (`Nr::TraceTaskName`).

use std::collections::HashMap;
use std::time::Instant;

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::port::TRACE;
use pvagent_abi::trace::{TASK_NAME_MAX, TaskKind, TaskSwitch, TraceRecord};
use vm_memory::{Bytes, GuestAddress};

use crate::error::Result;
use crate::handler::{ExitHandler, Handled, HypercallAnswer, Report, VcpuCtx};
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
    /// The names the guest gave its tasks: (vCPU, slot, generation's low bits) -> name.
    names: HashMap<(usize, u16, u8), String>,
    /// Task names refused (not a task, too long, outside guest memory).
    names_refused: u64,
}

impl TracePort {
    /// The port, recording to `tracer` (which may be off: then it only counts).
    pub fn new(tracer: Tracer) -> Self {
        Self {
            tracer,
            running: Vec::new(),
            records: 0,
            task_switches: 0,
            rejected: 0,
            names: HashMap::new(),
            names_refused: 0,
        }
    }

    /// The run is over at `end`: the task each vCPU was running ends its span there.
    pub fn end_of_run(&mut self, end: Instant) {
        for (vcpu, running) in self.running.iter_mut().enumerate() {
            if let Some((since, task)) = running.take() {
                record_task(&self.tracer, &self.names, vcpu, task, since, end);
            }
        }
    }

    /// `Nr::TraceTaskName`: keeps the name for the task `args[0]` names and names its track.
    fn task_named(&mut self, ctx: &VcpuCtx<'_>, args: [u64; 4]) -> std::result::Result<[u64; 2], Status> {
        let task = match u32::try_from(args[0]).map(TraceRecord::decode) {
            Ok(Ok(TraceRecord::TaskSwitch(task))) => task,
            _ => return Err(Status::InvalidArgument),
        };
        if args[2] > TASK_NAME_MAX {
            return Err(Status::InvalidArgument);
        }
        let mut bytes = vec![0; args[2] as usize];
        // A copy out of guest RAM; an address outside it is refused.
        ctx.mem.read_slice(&mut bytes, GuestAddress(args[1])).map_err(|_| Status::InvalidArgument)?;
        let name = String::from_utf8_lossy(&bytes).into_owned();
        self.tracer
            .name_track(task_track(ctx.index, task), format!("{name} (task {}, gen {})", task.slot, task.generation));
        self.names.insert((ctx.index, task.slot, task.generation), name);
        Ok([0; 2])
    }
}

/// The track of one task: a slot of a vCPU, in one generation.
fn task_track(vcpu: usize, task: TaskSwitch) -> Track {
    Track::GuestTask { vcpu, slot: task.slot, generation: task.generation }
}

/// How the timeline names `task`: by its name if the guest gave one.
fn task_name(names: &HashMap<(usize, u16, u8), String>, vcpu: usize, task: TaskSwitch) -> String {
    let given = names.get(&(vcpu, task.slot, task.generation));
    match (task.kind, given) {
        (TaskKind::Idle, _) => "idle".into(),
        (TaskKind::Kernel, Some(name)) => name.clone(),
        (TaskKind::User, Some(name)) => format!("{name} (user)"),
        (TaskKind::Kernel, None) => format!("task {} (gen {})", task.slot, task.generation),
        (TaskKind::User, None) => format!("user task {} (gen {})", task.slot, task.generation),
    }
}

fn record_task(
    tracer: &Tracer,
    names: &HashMap<(usize, u16, u8), String>,
    vcpu: usize,
    task: TaskSwitch,
    since: Instant,
    until: Instant,
) {
    let name = task_name(names, vcpu, task);
    let args = || {
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
    };
    // The vCPU's track says which task ran; the task's own track, when it ran (idle has none:
    // the vCPU track shows it).
    if task.kind != TaskKind::Idle {
        tracer.complete(task_track(vcpu, task), name.clone(), since, until, args);
    }
    tracer.complete(Track::GuestVcpu(vcpu), name, since, until, args);
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
                        record_task(&self.tracer, &self.names, ctx.index, previous, since, now);
                    }
                }
            }
            Err(_) => self.rejected += 1,
        }
        Ok(Handled::Yes)
    }

    fn hypercall(&mut self, ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        // Served only while tracing, as the ABI says (otherwise: unknown to this run).
        if Nr::try_from(nr) != Ok(Nr::TraceTaskName) || !self.tracer.is_on() {
            return Ok(None);
        }
        let answer = self.task_named(ctx, args);
        self.names_refused += u64::from(answer.is_err());
        Ok(Some(answer))
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(self.name(), "task_names", self.names.len() as u64);
        report.counter(self.name(), "task_names_refused", self.names_refused);
        report.counter(self.name(), "records", self.records);
        report.counter(self.name(), "task_switches", self.task_switches);
        report.counter(self.name(), "rejected", self.rejected);
        Ok(())
    }
}
