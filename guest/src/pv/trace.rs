//! The guest's side of the host's timeline: while the host records one (`Features::TRACE`),
//! every task switch is reported on the trace port (`pvagent_abi::trace`).

use pvagent_abi::cpuid::Features;
use pvagent_abi::port;
use pvagent_abi::trace::{TaskKind, TaskSwitch};
use x86_64::instructions::port::Port;

use crate::kprintln;
use crate::task::{self, table::Kind, table::TaskId};

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
    // SAFETY: the trace port exists (the host offered Features::TRACE) and writing it changes
    // nothing in the guest: the host only records the value.
    unsafe { Port::<u32>::new(port::TRACE).write(record) };
}
