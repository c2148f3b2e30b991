//! The kernel glue of the scheduler: the per-vCPU [`TaskTable`] given stacks, contexts and the
//! switch, and the calls the rest of the kernel uses (spawn, yield, block, wake, exit, join,
//! sleep).
//!
//! Every switch happens with interrupts disabled. A task switched out inside a trap handler (a
//! page-not-present event parks it there) resumes inside that handler; the trap depth of each
//! context is saved and restored with it.

use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::instructions::interrupts;

use super::table::{
    ExitStatus, FaultInfo, Kind, MAX_TASKS, ReapError, SpawnError, State, TaskId, TaskTable, Wait, WakeOutcome,
};
use super::{stack, switch};
use crate::arch::fault::Fault;
use crate::arch::gdt;
use crate::arch::percpu::{self, CpuLocal, MAX_CPUS};
use crate::arch::trap::TrapFrame;
use crate::cell::{FnPtr, FnSlot, StaticCell};
use crate::sync::{CpuCell, IrqGuard};

/// A kernel task's body: gets the spawn argument, returns its exit value.
pub type KernelEntry = fn(u64) -> u64;
/// A CPL 3 task's body: code in `.user_text`, argument in RDI; it ends with `user::exit`.
pub type UserEntry = extern "sysv64" fn(u64) -> !;

/// What a task's fault hook decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// The hook fixed things up (e.g. moved RIP); resume the task.
    Resume,
    /// End the task as if it had no hook.
    Kill,
}

/// Per-task handler for its own CPL 3 faults (e.g. an alignment check it asked for).
pub type FaultHook = fn(&mut TrapFrame, &Fault) -> FaultAction;

/// Called on every task switch, with interrupts disabled, after the scheduler picked `to` and
/// before the switch: per-vCPU state that belongs to the outgoing task is put right here (a
/// protocol that relaxed a CPU setting for `from` restores it).
pub type SwitchHook = fn(from: TaskId, to: TaskId);
// SAFETY: a fn pointer type.
unsafe impl FnPtr for SwitchHook {}

/// How many switch hooks can be registered.
pub const MAX_SWITCH_HOOKS: usize = 4;
static SWITCH_HOOKS: [FnSlot<SwitchHook>; MAX_SWITCH_HOOKS] = [const { FnSlot::empty() }; MAX_SWITCH_HOOKS];

/// The switch hook table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchHooksFull;

/// Registers a hook called on every task switch of every vCPU.
pub fn add_switch_hook(hook: SwitchHook) -> Result<(), SwitchHooksFull> {
    if SWITCH_HOOKS.iter().any(|slot| slot.set_if_empty(hook)) { Ok(()) } else { Err(SwitchHooksFull) }
}

fn run_switch_hooks(from: TaskId, to: TaskId) {
    // Hooks are only added, each into the first empty slot, so the first empty slot ends them.
    for slot in &SWITCH_HOOKS {
        let Some(hook) = slot.get() else { break };
        hook(from, to);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Context {
    rsp: u64,
    trap_depth: u32,
    /// The top of the task's kernel stack: RSP0 while it runs. 0 for the idle task (the boot
    /// context), which never runs at CPL 3.
    stack_top: u64,
}

/// The saved contexts of one vCPU's task slots. A vCPU only touches its own (CpuLocal), with
/// interrupts disabled, in `schedule` and `spawn`; `switch_context` writes the `from` RSP while
/// nothing else runs.
type Contexts = StaticCell<[Context; MAX_TASKS]>;

#[derive(Debug)]
struct CpuSched {
    table: TaskTable,
    fault_hooks: [Option<FaultHook>; MAX_TASKS],
    /// Which of each slot's stacks are mapped (mappings stay: a slot maps them once).
    stacks: [stack::Mapped; MAX_TASKS],
}

static SCHED: CpuCell<CpuSched> = CpuCell::new(
    [const {
        CpuSched {
            table: TaskTable::new(),
            fault_hooks: [None; MAX_TASKS],
            stacks: [stack::Mapped { kernel: false, user: false }; MAX_TASKS],
        }
    }; MAX_CPUS],
);
static CONTEXTS: CpuLocal<Contexts> =
    CpuLocal::new([const { StaticCell::new([Context { rsp: 0, trap_depth: 0, stack_top: 0 }; MAX_TASKS]) }; MAX_CPUS]);

/// The saved context of `slot` on this vCPU (an address: see `Contexts` for who may use it).
fn context(slot: u16) -> *mut Context {
    let contexts = CONTEXTS.get().get();
    // SAFETY: only an address is formed (of a bounds-checked element of the static array);
    // nothing is read or written here.
    unsafe { &raw mut (*contexts)[usize::from(slot)] }
}

fn with_sched<R>(f: impl FnOnce(&mut CpuSched) -> R) -> R {
    SCHED.with(f)
}

/// Tasks spawned on each vCPU and not yet reaped (the idle task not counted): written only by
/// its own vCPU, at the spawn and the reap, and readable from every vCPU, so that the
/// self-tests' leak check ([`spawned_everywhere`]) sees every vCPU's tasks, not only its own.
static SPAWNED: CpuLocal<AtomicUsize> = CpuLocal::new([const { AtomicUsize::new(0) }; MAX_CPUS]);

fn reap_counted(s: &mut CpuSched, id: TaskId) -> Result<ExitStatus, ReapError> {
    let reaped = s.table.reap(id);
    if reaped.is_ok() {
        SPAWNED.get().fetch_sub(1, Ordering::Relaxed);
    }
    reaped
}

/// A switch the table decided on: the outgoing and incoming tasks' slots and ids.
#[derive(Clone, Copy, Debug)]
struct Switch {
    from: u16,
    to: u16,
    from_id: TaskId,
    to_id: TaskId,
}

impl CpuSched {
    /// Picks the next task (see `TaskTable::pick_next`). Each caller changes the table and picks
    /// in one borrow of the scheduler's state: on an emulated guest kernel every borrow costs
    /// about fifteen instructions, and a page-not-present event blocks a task on its way.
    fn pick(&mut self) -> Option<Switch> {
        let from_id = self.table.current();
        let (from, to) = self.table.pick_next()?;
        Some(Switch { from, to, from_id, to_id: self.table.current() })
    }
}

/// Makes the running (boot) context this vCPU's idle task and starts the tick.
pub fn init_cpu() {
    with_sched(|s| s.table.adopt_idle("idle"));
    crate::arch::fault::set_user_fault_hook(on_user_fault);
    super::user::init();
    super::remote::init_cpu();
    crate::arch::start_tick(on_tick);
}

fn on_tick(now: u64) {
    with_sched(|s| s.table.tick(now));
}

/// Spawns a kernel task on this vCPU.
pub fn spawn_kernel(name: &'static str, entry: KernelEntry, arg: u64) -> Result<TaskId, SpawnError> {
    let cpu = percpu::index();
    with_sched(|s| {
        let id = s.table.spawn(name, Kind::Kernel)?;
        SPAWNED.get().fetch_add(1, Ordering::Relaxed);
        s.fault_hooks[usize::from(id.slot)] = None;
        let top = stack::map_kernel_stack(cpu, id.slot, &mut s.stacks[usize::from(id.slot)]).top;
        // SAFETY: the slot was free, so its stack is unused; stack tops are page aligned.
        let rsp = unsafe { switch::prepare_kernel_stack(top, entry as usize as u64, arg) };
        set_context(id.slot, Context { rsp, trap_depth: 0, stack_top: top });
        Ok(id)
    })
}

/// Spawns a CPL 3 task on this vCPU, starting at `entry` with `arg` in RDI.
pub fn spawn_user(name: &'static str, entry: UserEntry, arg: u64) -> Result<TaskId, SpawnError> {
    let cpu = percpu::index();
    let entry = entry as usize as u64;
    let layout = crate::arch::paging::image_layout();
    assert!(
        (layout.user_text.0..layout.user_text.1).contains(&entry),
        "user task {name} starts at {entry:#x}, outside .user_text"
    );
    with_sched(|s| {
        let id = s.table.spawn(name, Kind::User)?;
        SPAWNED.get().fetch_add(1, Ordering::Relaxed);
        let slot = usize::from(id.slot);
        s.fault_hooks[slot] = None;
        let top = stack::map_kernel_stack(cpu, id.slot, &mut s.stacks[slot]).top;
        let user_top = stack::map_user_stack(cpu, id.slot, &mut s.stacks[slot]).top;
        // SAFETY: the slot was free, so both stacks are unused; `entry` is in user text.
        let rsp = unsafe { switch::prepare_user_stack(top, entry, user_top, arg) };
        set_context(id.slot, Context { rsp, trap_depth: 0, stack_top: top });
        Ok(id)
    })
}

fn set_context(slot: u16, saved: Context) {
    // SAFETY: called with interrupts off (inside `with_sched`) for a slot that is not running,
    // so no switch reads or writes this context now.
    unsafe { *context(slot) = saved };
}

/// Installs a fault hook for `id` (its CPL 3 faults go there first).
pub fn set_fault_hook(id: TaskId, hook: Option<FaultHook>) {
    with_sched(|s| {
        if s.table.state(id).is_some() {
            s.fault_hooks[usize::from(id.slot)] = hook;
        }
    });
}

/// Switches to the next task if the scheduler picks one. Interrupts must be disabled; the
/// caller has already yielded, blocked or exited the current task (or is the idle task).
pub fn schedule() {
    assert!(!interrupts::are_enabled(), "schedule() with interrupts enabled");
    switch(with_sched(CpuSched::pick));
}

/// Carries out a switch the table decided on (interrupts disabled): the switch hooks, the
/// incoming task's kernel stack and trap depth, then the stacks themselves.
fn switch(next: Option<Switch>) {
    let Some(Switch { from, to, from_id, to_id }) = next else {
        return;
    };
    run_switch_hooks(from_id, to_id);
    let contexts = CONTEXTS.get().get();
    // SAFETY: only addresses are formed, of bounds-checked elements of this vCPU's array.
    let (from_ctx, to_ctx) =
        unsafe { (&raw mut (*contexts)[usize::from(from)], &raw mut (*contexts)[usize::from(to)]) };
    // SAFETY: interrupts are off; `from` is the running context (its RSP is written by the
    // switch) and `to` was prepared by spawn or saved by an earlier switch. Nothing else
    // accesses either context meanwhile. A non-zero `stack_top` is the top of `to`'s own
    // kernel stack, mapped at spawn and used by nothing else while `to` exists.
    unsafe {
        if (*to_ctx).stack_top != 0 {
            gdt::set_kernel_stack((*to_ctx).stack_top);
        }
        (*from_ctx).trap_depth = percpu::swap_trap_depth((*to_ctx).trap_depth);
        switch::switch_context(core::ptr::addr_of_mut!((*from_ctx).rsp), (*to_ctx).rsp);
    }
}

/// Lets other ready tasks run; the current task stays ready.
pub fn yield_now() {
    let _irq = IrqGuard::new();
    switch(with_sched(|s| {
        s.table.yield_current();
        s.pick()
    }));
}

/// Blocks the current task on `wait` until someone wakes it; returns the waker's value.
/// Interrupts must be disabled, so that the condition the caller checked cannot change before
/// the task is marked blocked.
pub fn block_current(wait: Wait) -> u64 {
    assert!(!interrupts::are_enabled(), "block_current() with interrupts enabled");
    switch(with_sched(|s| {
        s.table.block_current(wait);
        s.pick()
    }));
    with_sched(|s| s.table.current_wake_value())
}

/// Wakes task `id` with `value`.
pub fn wake(id: TaskId, value: u64) -> WakeOutcome {
    with_sched(|s| s.table.wake(id, value))
}

/// Wakes every task blocked on `wait`.
pub fn wake_all(wait: Wait, value: u64) -> usize {
    with_sched(|s| s.table.wake_all(wait, value))
}

/// The task whose end, other than by returning, ends the run (the self-test runner): packed
/// slot and generation, 0 for none.
static CRITICAL: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn pack(id: TaskId) -> u32 {
    (u32::from(id.generation) << 16) | u32::from(id.slot)
}

/// Marks `id` critical: if it is ended by a fault or a protocol decision, the run ends with a
/// report instead of waiting forever for it.
pub fn set_critical(id: TaskId) {
    CRITICAL.store(pack(id), core::sync::atomic::Ordering::Relaxed);
}

/// Ends the current task.
pub fn exit_current(status: ExitStatus) -> ! {
    let me = current();
    if !matches!(status, ExitStatus::Returned(_)) && CRITICAL.load(core::sync::atomic::Ordering::Relaxed) == pack(me) {
        crate::arch::fault::fatal(format_args!("the critical task {} was ended: {status:?}", name(me)));
    }
    let _irq = IrqGuard::new();
    switch(with_sched(|s| {
        s.table.exit_current(status);
        s.pick()
    }));
    unreachable!("an exited task was scheduled again");
}

/// Ends task `id`, which must not be running (it is woken from whatever it waited on).
pub fn kill(id: TaskId, status: ExitStatus) -> bool {
    with_sched(|s| s.table.kill(id, status))
}

/// Frees the slot of `id`, which has ended, without waiting (a placed task whose joiner runs
/// on another vCPU: `remote`).
pub(super) fn reap_ended(id: TaskId) -> Result<ExitStatus, ReapError> {
    with_sched(|s| reap_counted(s, id))
}

/// Waits for `id` to end, frees it and returns how it ended.
pub fn join(id: TaskId) -> Result<ExitStatus, ReapError> {
    loop {
        let _irq = IrqGuard::new();
        match with_sched(|s| s.table.state(id)) {
            None => return Err(ReapError::NoSuchTask),
            Some(State::Exited(_)) => return with_sched(|s| reap_counted(s, id)),
            Some(_) => {
                block_current(Wait::Join(id));
            }
        }
    }
}

/// Sleeps for at least `ticks` timer ticks.
pub fn sleep_ticks(ticks: u64) {
    let _irq = IrqGuard::new();
    let until_tick = crate::arch::ticks() + ticks.max(1);
    block_current(Wait::Sleep { until_tick });
}

/// The running task.
pub fn current() -> TaskId {
    with_sched(|s| s.table.current())
}

/// A task's state (`None` once it was reaped).
pub fn state(id: TaskId) -> Option<State> {
    with_sched(|s| s.table.state(id))
}

/// A task's kind (`None` once it was reaped).
pub fn kind(id: TaskId) -> Option<Kind> {
    with_sched(|s| s.table.kind(id))
}

/// The running task's kind.
pub fn current_kind() -> Kind {
    with_sched(|s| s.table.current_kind())
}

/// A task's name.
pub fn name(id: TaskId) -> &'static str {
    with_sched(|s| s.table.name(id)).unwrap_or("?")
}

/// Whether another task could run if the current one blocked.
pub fn has_other_runnable() -> bool {
    with_sched(|s| s.table.has_other_runnable())
}

/// How many tasks exist on this vCPU (idle included), for leak checks.
pub fn live_count() -> usize {
    with_sched(|s| s.table.live_tasks().count())
}

/// How many tasks exist on every vCPU together, spawned and not yet reaped (idle tasks not
/// counted), for the self-tests' leak check. Exact when no task is being spawned or reaped
/// meanwhile: a joined task is reaped before its join returns, on whichever vCPU it ran
/// (`remote::RemoteTask::join` waits for the reap).
pub fn spawned_everywhere() -> usize {
    (0..MAX_CPUS).map(|cpu| SPAWNED.of(cpu).load(Ordering::Relaxed)).sum()
}

/// Which of task slot `slot`'s stacks on this vCPU were ever used (and so are mapped).
pub fn stacks_mapped(slot: u16) -> stack::Mapped {
    with_sched(|s| s.stacks[usize::from(slot)])
}

/// Scheduler counters of this vCPU.
pub fn stats() -> super::table::SchedStats {
    with_sched(|s| s.table.stats)
}

static NO_SLEEP: CpuLocal<core::sync::atomic::AtomicU32> =
    CpuLocal::new([const { core::sync::atomic::AtomicU32::new(0) }; MAX_CPUS]);

/// While alive, the current context must not be switched out by a page-not-present event (it
/// holds something another task on this vCPU could need): such an event waits in the HLT loop
/// instead. Nests.
#[derive(Debug)]
pub struct NoSleepGuard(());

impl NoSleepGuard {
    /// Forbids sleeping until the guard is dropped.
    pub fn new() -> Self {
        NO_SLEEP.get().fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Self(())
    }
}

impl Default for NoSleepGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoSleepGuard {
    fn drop(&mut self) {
        NO_SLEEP.get().fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether the current context may be switched out from a trap handler: it is a task other
/// than idle, not inside a [`NoSleepGuard`], and the trap interrupted task context (not
/// another handler).
pub fn may_sleep_in_trap() -> bool {
    NO_SLEEP.get().load(core::sync::atomic::Ordering::Relaxed) == 0
        && percpu::trap_depth() == 1
        && current_kind() != Kind::Idle
}

/// The current task, if a trap handler may park it now and another task could run meanwhile
/// (as [`may_sleep_in_trap`] and [`has_other_runnable`] together, in one look at the
/// scheduler): what the page-not-present event asks before it parks.
pub fn sleeper_in_trap() -> Option<TaskId> {
    if NO_SLEEP.get().load(core::sync::atomic::Ordering::Relaxed) != 0 || percpu::trap_depth() != 1 {
        return None;
    }
    with_sched(|s| (s.table.current_kind() != Kind::Idle && s.table.has_other_runnable()).then(|| s.table.current()))
}

/// What a trap handler that must decide how its context waits needs of the scheduler, in one
/// look: the current task, whether it is the idle task, whether it is inside a
/// [`NoSleepGuard`], and whether another task could run meanwhile (`pv::ve` decides from these
/// with the trap frame and the trap depth).
pub fn trap_context() -> TrapContext {
    let no_sleep = NO_SLEEP.get().load(core::sync::atomic::Ordering::Relaxed) != 0;
    with_sched(|s| TrapContext {
        current: s.table.current(),
        idle: s.table.current_kind() == Kind::Idle,
        no_sleep,
        other_ready: s.table.has_other_runnable(),
    })
}

/// [`trap_context`]'s answer.
#[derive(Clone, Copy, Debug)]
pub struct TrapContext {
    pub current: TaskId,
    pub idle: bool,
    pub no_sleep: bool,
    pub other_ready: bool,
}

/// The idle loop: run whatever is ready, otherwise halt until an interrupt makes something
/// ready. The boot context ends here.
pub fn idle_loop() -> ! {
    loop {
        interrupts::disable();
        if has_other_runnable() {
            schedule();
        } else {
            crate::arch::cpu::enable_interrupts_and_halt();
        }
    }
}

/// First Rust code of every kernel task, called by `kernel_task_trampoline` with the entry and
/// argument `spawn_kernel` put in the task's first frame.
#[unsafe(no_mangle)]
#[allow(
    improper_ctypes_definitions,
    reason = "only the kernel's own trampoline calls this, passing on the `KernelEntry` spawn_kernel stored"
)]
extern "sysv64" fn task_start(entry: KernelEntry, arg: u64) -> ! {
    interrupts::enable();
    let value = entry(arg);
    exit_current(ExitStatus::Returned(value));
}

/// Offers a CPL 3 fault to the current task's own fault hook: `None` when it has none. A
/// vector handler that ends the task in its own way otherwise (e.g. #AC) calls this first.
pub fn run_fault_hook(frame: &mut TrapFrame, fault: &Fault) -> Option<FaultAction> {
    let id = current();
    let hook = with_sched(|s| s.fault_hooks[usize::from(id.slot)])?;
    Some(hook(frame, fault))
}

/// CPL 3 faults that no vector handler claimed: the task's hook decides, or the task ends.
fn on_user_fault(frame: &mut TrapFrame, fault: Fault) {
    let id = current();
    if run_fault_hook(frame, &fault) == Some(FaultAction::Resume) {
        return;
    }
    crate::kprintln!("task {} (user) ended by {fault}", name(id));
    exit_current(ExitStatus::Faulted(FaultInfo {
        vector: fault.vector,
        error_code: fault.error_code,
        address: fault.address,
        rip: fault.rip,
    }));
}
