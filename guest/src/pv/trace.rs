//! The guest's side of the host's timeline: while the host records one (`Features::TRACE`),
//! every task switch is reported on the trace port (`pvagent_abi::trace`), and each task's name
//! once, before the first switch to it, so that the timeline shows tasks by name.

use core::sync::atomic::{AtomicU32, Ordering};

use pvagent_abi::cpuid::Features;
use pvagent_abi::hypercall::Nr;
use pvagent_abi::port;
use pvagent_abi::trace::{TASK_NAME_MAX, TaskKind, TaskSwitch};
use x86_64::instructions::port::Port;

use crate::arch::percpu::{CpuLocal, MAX_CPUS};
use crate::kprintln;
use crate::task::{self, table::Kind, table::MAX_TASKS, table::TaskId};

/// Per vCPU and task slot: the generation (+1) whose name the host was told, 0 for none yet.
static NAMED: CpuLocal<[AtomicU32; MAX_TASKS]> =
    CpuLocal::new([const { [const { AtomicU32::new(0) }; MAX_TASKS] }; MAX_CPUS]);

/// Registers the switch hook when the host records a timeline. Otherwise nothing is
/// registered, so an untraced run never pays the port's exit (nor the hook's call).
pub fn init() {
    if !crate::arch::platform().hypervisor.host_features().has(Features::TRACE) {
        return;
    }
    // A missing timeline is no reason to end a run: say so and go on without it.
    match task::add_switch_hook(on_switch) {
        Ok(()) => kprintln!("trace: the host records a timeline; task switches go to port {:#x}", port::TRACE),
        Err(_) => kprintln!("trace: warning: no room for the task switch hook; task switches are not reported"),
    }
}

/// The switch hook (interrupts off, before the switch): one record naming the incoming task.
fn on_switch(_from: TaskId, to: TaskId) {
    let kind = match task::kind(to) {
        Some(Kind::Idle) => TaskKind::Idle,
        Some(Kind::User) => TaskKind::User,
        Some(Kind::Kernel) | None => TaskKind::Kernel,
    };
    // Only the low bits travel (`TaskSwitch::generation`); the cast keeps them.
    let record = TaskSwitch { slot: to.slot, kind, generation: to.generation as u8 }.encode();
    let named_as = u32::from(to.generation) + 1;
    if let Some(named) = NAMED.get().get(usize::from(to.slot))
        && named.swap(named_as, Ordering::Relaxed) != named_as
    {
        let name = task::name(to).as_bytes();
        let len = name.len().min(TASK_NAME_MAX as usize);
        // The kernel is identity mapped: the name's address is its guest-physical address. A
        // refusal costs only the name on the timeline, never the run.
        let _ =
            crate::arch::hypercall::call(Nr::TraceTaskName, [u64::from(record), name.as_ptr() as u64, len as u64, 0]);
    }
    // SAFETY: the trace port exists (the host offered Features::TRACE) and writing it changes
    // nothing in the guest: the host only records the value.
    unsafe { Port::<u32>::new(port::TRACE).write(record) };
}
