//! Work between vCPUs: placing a kernel task on a chosen vCPU ([`spawn_kernel_on`], joined
//! with [`RemoteTask::join`]) and waking a task that waits on another vCPU ([`wake_on`]).
//!
//! Each vCPU's scheduler state is its own (`sync::CpuCell`): no vCPU changes another's. So a
//! vCPU that wants something done to another's tasks posts a request to that vCPU's inbox and
//! sends it an IPI ([`TASK_VECTOR`]); the handler there drains the inbox and does it locally
//! (spawn, wake, reap), with interrupts off like every scheduler change. A spawn on the running
//! vCPU takes the same path (the request in its own inbox, the IPI addressed to its own APIC ID),
//! so placement is one path whatever the number of vCPUs (`smp::a_task_runs_on_the_cpu_it_was_placed_on`
//! places on vCPU 0, the runner's own, too). A wake-up or a reap for the running vCPU needs no
//! request: [`wake_on`] and [`RemoteTask::join`] do it at once, locally. Tasks do not migrate: a
//! task runs where it was spawned until it ends.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use super::KernelEntry;
use super::table::{ExitStatus, SpawnError, TaskId, Wait};
use crate::arch::percpu::{self, CpuLocal, MAX_CPUS};
use crate::arch::{self, apic, fault, smp, trap};
use crate::cell::{FnPtr, FnSlot};
use crate::sync::{IrqGuard, IrqMutex};

// SAFETY: a fn pointer type.
unsafe impl FnPtr for KernelEntry {}

/// The vector of the IPI that tells a vCPU to drain its inbox.
pub const TASK_VECTOR: u8 = 0xF1;
const _: () = assert!(TASK_VECTOR != smp::WAKE_VECTOR);

/// Requests one inbox holds: more than every task slot of a vCPU could ask for at once.
const INBOX_CAPACITY: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Request {
    /// Spawn a kernel task running `entry(arg)`, which reports to completion `completion`.
    Spawn { name: &'static str, entry: KernelEntry, arg: u64, completion: usize },
    /// Wake every task blocked on `wait` with `value` (`table::wake_all`).
    Wake { wait: Wait, value: u64 },
    /// Free the slot of `id`, a placed task that ended and was joined, then tell the joiner
    /// (completion `completion`) that it is gone.
    Reap { id: TaskId, completion: usize },
}

static INBOX: CpuLocal<IrqMutex<heapless::Deque<Request, INBOX_CAPACITY>>> =
    CpuLocal::new([const { IrqMutex::new(heapless::Deque::new()) }; MAX_CPUS]);

/// Why a request could not be posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// No vCPU with this index is online.
    NoSuchCpu(usize),
    /// The vCPU's inbox is full.
    InboxFull(usize),
    /// Every completion is in use (too many placed tasks not joined yet).
    NoCompletion,
}

/// Sets up the running vCPU's side (its handler). Called by `init_cpu` on every vCPU.
pub(super) fn init_cpu() {
    trap::register(TASK_VECTOR, on_task_ipi);
}

fn post(cpu: usize, request: Request) -> Result<(), PostError> {
    let apic_id =
        arch::platform().cpus.apic_id(cpu).filter(|_| smp::is_online(cpu)).ok_or(PostError::NoSuchCpu(cpu))?;
    INBOX.of(cpu).lock().push_back(request).map_err(|_| PostError::InboxFull(cpu))?;
    // After the push (the lock's release orders it): the handler finds the request.
    apic::send_fixed_ipi(apic_id, TASK_VECTOR);
    Ok(())
}

fn on_task_ipi(_frame: &mut trap::TrapFrame) {
    apic::eoi();
    loop {
        let Some(request) = INBOX.get().lock().pop_front() else { break };
        match request {
            Request::Spawn { name, entry, arg, completion } => {
                COMPLETIONS[completion].start(entry, arg);
                if let Err(err) = super::spawn_kernel(name, run_placed, completion as u64) {
                    COMPLETIONS[completion].finish(Err(err));
                }
            }
            Request::Wake { wait, value } => {
                super::wake_all(wait, value);
            }
            Request::Reap { id, completion } => {
                // Ended with interrupts off before its result was published: always exited.
                let _ = super::reap_ended(id);
                COMPLETIONS[completion].publish(REAPED);
            }
        }
    }
}

/// Wakes every task of vCPU `cpu` blocked on `wait` with `value`: at once on the running vCPU,
/// through its inbox on another. A wake-up nobody waits for any more changes nothing.
pub fn wake_on(cpu: usize, wait: Wait, value: u64) -> Result<(), PostError> {
    if cpu == percpu::index() {
        super::wake_all(wait, value);
        return Ok(());
    }
    post(cpu, Request::Wake { wait, value })
}

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const DONE: u8 = 2;
/// The task's vCPU reaped it (set only for a task joined from another vCPU).
const REAPED: u8 = 3;
const NO_WAITER: u32 = u32::MAX;

/// Where a placed task's result goes, and who waits for it.
struct Completion {
    state: AtomicU8,
    /// The entry and argument, for `run_placed` (set on the task's vCPU before it is spawned).
    entry: FnSlot<KernelEntry>,
    arg: AtomicU64,
    /// The result: the entry's return value, or (`failed` set) the spawn's failure.
    value: AtomicU64,
    failed: AtomicU8,
    /// The placed task (packed `TaskId`), for the reap.
    task: AtomicU32,
    /// The vCPU whose task waits in `join`, or `NO_WAITER`.
    waiter_cpu: AtomicU32,
}

/// How many placed tasks can be outstanding (spawned and not yet joined) at once.
const COMPLETIONS_MAX: usize = 4 * MAX_CPUS;
static COMPLETIONS: [Completion; COMPLETIONS_MAX] = [const {
    Completion {
        state: AtomicU8::new(FREE),
        entry: FnSlot::empty(),
        arg: AtomicU64::new(0),
        value: AtomicU64::new(0),
        failed: AtomicU8::new(0),
        task: AtomicU32::new(0),
        waiter_cpu: AtomicU32::new(NO_WAITER),
    }
}; COMPLETIONS_MAX];

impl Completion {
    fn claim() -> Option<usize> {
        COMPLETIONS
            .iter()
            .position(|c| c.state.compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    fn wait_key(&self) -> Wait {
        Wait::Key { owner: "placed task", key: self as *const Self as u64 }
    }

    fn start(&self, entry: KernelEntry, arg: u64) {
        self.entry.set(entry);
        self.arg.store(arg, Ordering::Relaxed);
    }

    /// Publishes the result and wakes the joiner, if it already waits. With `join`'s order
    /// (waiter, then state) each side sees the other's write: SeqCst on both.
    fn finish(&self, result: Result<u64, SpawnError>) {
        match result {
            Ok(value) => self.value.store(value, Ordering::Relaxed),
            Err(_) => self.failed.store(1, Ordering::Relaxed),
        }
        self.publish(DONE);
    }

    /// Sets `state` and wakes the joiner, if it already waits (see [`Completion::wait_for`]).
    fn publish(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let waiter = self.waiter_cpu.load(Ordering::SeqCst);
        if waiter != NO_WAITER
            && let Err(err) = wake_on(waiter as usize, self.wait_key(), 0)
        {
            fault::fatal(format_args!("a placed task's joiner on vCPU {waiter} cannot be woken: {err:?}"));
        }
    }

    /// Waits (blocked, or in the idle task's case halting) until the state is `state`. With
    /// [`Completion::publish`]'s order (state, then waiter) and this one's (waiter, then state)
    /// each side sees the other's write.
    fn wait_for(&self, state: u8) {
        loop {
            let _irq = IrqGuard::new();
            self.waiter_cpu.store(percpu::index() as u32, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) == state {
                return;
            }
            super::block_current(self.wait_key());
        }
    }
}

/// The body of every placed task: runs the entry its completion names, then publishes the
/// result and ends with interrupts still off, so that the joiner's reap (an IPI) finds it ended.
fn run_placed(completion: u64) -> u64 {
    let c = &COMPLETIONS[completion as usize];
    let Some(entry) = c.entry.get() else {
        fault::fatal(format_args!("placed task {completion} started with no entry"));
    };
    let value = entry(c.arg.load(Ordering::Relaxed));
    let _irq = IrqGuard::new();
    let me = super::current();
    c.task.store((u32::from(me.generation) << 16) | u32::from(me.slot), Ordering::Relaxed);
    c.finish(Ok(value));
    super::exit_current(ExitStatus::Returned(value))
}

/// A kernel task placed on a chosen vCPU, to be joined from any vCPU.
#[derive(Debug)]
#[must_use = "a placed task's completion is freed only by join"]
pub struct RemoteTask {
    cpu: usize,
    completion: usize,
}

/// Spawns a kernel task running `entry(arg)` on vCPU `cpu` (which may be the running one).
/// It runs when that vCPU's scheduler picks it; its result comes back through
/// [`RemoteTask::join`].
pub fn spawn_kernel_on(cpu: usize, name: &'static str, entry: KernelEntry, arg: u64) -> Result<RemoteTask, PostError> {
    let completion = Completion::claim().ok_or(PostError::NoCompletion)?;
    let c = &COMPLETIONS[completion];
    c.failed.store(0, Ordering::Relaxed);
    c.waiter_cpu.store(NO_WAITER, Ordering::Relaxed);
    if let Err(err) = post(cpu, Request::Spawn { name, entry, arg, completion }) {
        c.state.store(FREE, Ordering::Release);
        return Err(err);
    }
    Ok(RemoteTask { cpu, completion })
}

impl RemoteTask {
    /// The vCPU the task was placed on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Waits (blocked, or in the idle task's case halting) until the task returned and its
    /// vCPU freed it, and returns its value, or the spawn's failure on its vCPU. When this
    /// returns the task is gone from every vCPU's count (`task::spawned_everywhere`).
    pub fn join(self) -> Result<u64, SpawnError> {
        let c = &COMPLETIONS[self.completion];
        c.wait_for(DONE);
        let result = if c.failed.load(Ordering::Relaxed) != 0 {
            Err(SpawnError::NoFreeSlot)
        } else {
            let task = c.task.load(Ordering::Relaxed);
            let id = TaskId { slot: task as u16, generation: (task >> 16) as u16 };
            if self.cpu == percpu::index() {
                // Here it ended before this task could run again (it switched away as it
                // ended): reaped at once, so no one sees it left behind. A self-addressed IPI
                // may come late (PVM injects a second pending interrupt at the next exit).
                let _ = super::reap_ended(id);
            } else {
                if let Err(err) = post(self.cpu, Request::Reap { id, completion: self.completion }) {
                    fault::fatal(format_args!("the placed task {id:?} on vCPU {} cannot be reaped: {err:?}", self.cpu));
                }
                c.wait_for(REAPED);
            }
            Ok(c.value.load(Ordering::Relaxed))
        };
        c.state.store(FREE, Ordering::Release);
        result
    }
}
