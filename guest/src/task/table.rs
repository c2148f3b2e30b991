//! The task table: task slots, their states, the run queue, blocking and waking. The
//! scheduler's state machine, as plain code with no hardware access, so every transition is
//! unit-tested on the host; `task::kernel` gives it stacks and contexts and `task::switch`
//! does the stack switching it decides on.
//!
//! One `TaskTable` per vCPU; a task stays on the vCPU that spawned it. The table knows no
//! protocol: what a layer above waits for ([`Wait::Key`]) and why it ended a task
//! ([`KillReason`]) are opaque here, named only for reports.

use heapless::Deque;

/// Task slots per vCPU (the idle task included).
pub const MAX_TASKS: usize = 32;

/// A task, by slot and by the slot's generation (so a stale id never names a reused slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub slot: u16,
    pub generation: u16,
}

/// What a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs in the kernel (CPL 0) the whole time.
    Kernel,
    /// Runs at CPL 3 and enters the kernel through traps.
    User,
    /// The vCPU's idle task: runs when nothing else can, never blocks.
    Idle,
}

/// What a blocked task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// An [`crate::task`] event, by key.
    Event(u64),
    /// Another task's exit.
    Join(TaskId),
    /// The tick count reaching this value.
    Sleep { until_tick: u64 },
    /// Something a layer above `task` waits for and wakes the task from, by its id: `owner`
    /// names the layer's kind of key for reports, `key` is that layer's own value (e.g. a
    /// page-not-present token). The table only compares it.
    Key { owner: &'static str, key: u64 },
}

/// The fault that ended a task, as the CPU reported it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FaultInfo {
    pub vector: u8,
    pub error_code: u64,
    pub address: u64,
    pub rip: u64,
}

/// Addresses and the error code in hex, as every report shows them.
impl core::fmt::Debug for FaultInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let Self { vector, error_code, address, rip } = self;
        write!(f, "FaultInfo {{ vector: {vector}, error_code: {error_code:#x}, address: {address:#x}, rip: {rip:#x} }}")
    }
}

/// What ended a task, as the layer that ended it names it: a short name and what its two data
/// words mean. That layer defines its causes as constants and decodes its own reasons (e.g.
/// `pv::pnp::PageFailed`); the table only stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillCause {
    /// A few words, e.g. "split lock".
    pub name: &'static str,
    /// What each of [`KillReason::data`] holds, for reports ("" for an unused word).
    pub data_names: [&'static str; 2],
}

/// Why a layer above `task` ended a task: the task table carries it to whoever joins the task
/// without interpreting it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KillReason {
    pub cause: KillCause,
    /// The cause's data (addresses, a token), as [`KillCause::data_names`] says.
    pub data: [u64; 2],
}

impl KillReason {
    /// The reason `cause` with `data`, if it is that cause.
    pub fn data_if(&self, cause: KillCause) -> Option<[u64; 2]> {
        (self.cause == cause).then_some(self.data)
    }
}

impl core::fmt::Debug for KillReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.cause.name)?;
        let mut named = self.cause.data_names.iter().zip(self.data).filter(|(name, _)| !name.is_empty());
        if let Some((name, value)) = named.next() {
            write!(f, " ({name} {value:#x}")?;
            for (name, value) in named {
                write!(f, ", {name} {value:#x}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// How a task ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Returned (kernel task) or called exit (user task) with this value.
    Returned(u64),
    /// Ended by an exception nobody handled.
    Faulted(FaultInfo),
    /// Ended by a protocol decision.
    Killed(KillReason),
}

/// A returned value in hex: tasks return data words (page contents, counters read back), and a
/// test's failure message compares them with what it expected.
impl core::fmt::Debug for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ExitStatus::Returned(value) => write!(f, "Returned({value:#x})"),
            ExitStatus::Faulted(info) => write!(f, "Faulted({info:?})"),
            ExitStatus::Killed(reason) => write!(f, "Killed({reason:?})"),
        }
    }
}

/// A task's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free,
    Ready,
    Running,
    Blocked(Wait),
    Exited(ExitStatus),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    generation: u16,
    kind: Kind,
    name: &'static str,
    /// Value handed over by the waker (e.g. a token's result); read after waking.
    wake_value: u64,
}

const FREE_SLOT: Slot = Slot { state: State::Free, generation: 0, kind: Kind::Kernel, name: "", wake_value: 0 };

/// Why a spawn failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    NoFreeSlot,
}

/// Result of a wake-up attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The task was blocked and is now ready.
    Woken,
    /// The task exists but was not blocked (a late or duplicate wake-up): nothing changed.
    NotBlocked,
    /// No such task (stale id or free slot).
    NoSuchTask,
}

/// Why a task could not be reaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReapError {
    NoSuchTask,
    StillRunning,
}

/// Counters for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    pub switches: u64,
    pub spawned: u64,
    pub blocked: u64,
    pub woken: u64,
    pub spurious_wakes: u64,
}

/// One vCPU's scheduler state. (Host tests clone it: the exhaustive interleaving check in
/// `pv::interleavings` explores from copies of one state.)
#[derive(Debug)]
#[cfg_attr(test, derive(Clone))]
pub struct TaskTable {
    slots: [Slot; MAX_TASKS],
    run_queue: Deque<u16, MAX_TASKS>,
    current: u16,
    idle: Option<u16>,
    /// No sleeper's tick comes before this one (`u64::MAX`: none sleeps): a tick before it
    /// has nothing to wake and looks at no slot. It may be early (the task it was set for was
    /// killed or woken otherwise), never late.
    next_sleep_end: u64,
    pub stats: SchedStats,
}

impl Default for TaskTable {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskTable {
    /// An empty scheduler; [`TaskTable::adopt_idle`] must come first.
    pub const fn new() -> Self {
        Self {
            slots: [FREE_SLOT; MAX_TASKS],
            run_queue: Deque::new(),
            current: 0,
            idle: None,
            next_sleep_end: u64::MAX,
            stats: SchedStats { switches: 0, spawned: 0, blocked: 0, woken: 0, spurious_wakes: 0 },
        }
    }

    fn id_of(&self, slot: u16) -> TaskId {
        TaskId { slot, generation: self.slots[usize::from(slot)].generation }
    }

    // States are compared with `matches!` throughout: the derived `==` on `State` compares
    // whole payloads through a call, on the paths every event and switch takes.
    fn slot(&self, id: TaskId) -> Option<&Slot> {
        self.slots
            .get(usize::from(id.slot))
            .filter(|s| s.generation == id.generation && !matches!(s.state, State::Free))
    }

    fn slot_mut(&mut self, id: TaskId) -> Option<&mut Slot> {
        self.slots
            .get_mut(usize::from(id.slot))
            .filter(|s| s.generation == id.generation && !matches!(s.state, State::Free))
    }

    /// Makes the running context (the boot code, or a new vCPU's start code) this vCPU's idle
    /// task, in slot 0 (an AP's idle task runs on slot 0's stack: `stacks::map_ap_boot_stack`).
    pub fn adopt_idle(&mut self, name: &'static str) -> TaskId {
        assert!(self.idle.is_none(), "idle task adopted twice");
        self.slots[0] = Slot { state: State::Running, generation: 1, kind: Kind::Idle, name, wake_value: 0 };
        self.idle = Some(0);
        self.current = 0;
        self.id_of(0)
    }

    /// Claims a slot for a new task and queues it. The caller prepares its stack before the
    /// task can be picked (it is, at the earliest, at the next switch).
    pub fn spawn(&mut self, name: &'static str, kind: Kind) -> Result<TaskId, SpawnError> {
        assert!(kind != Kind::Idle, "only adopt_idle creates the idle task");
        let slot = self.slots.iter().position(|s| matches!(s.state, State::Free)).ok_or(SpawnError::NoFreeSlot)? as u16;
        let s = &mut self.slots[usize::from(slot)];
        s.generation = s.generation.wrapping_add(1).max(1);
        s.state = State::Ready;
        s.kind = kind;
        s.name = name;
        s.wake_value = 0;
        // Cannot fail: there are as many queue entries as slots and a slot is queued at most
        // once (only Ready tasks are queued).
        let _ = self.run_queue.push_back(slot);
        self.stats.spawned += 1;
        Ok(self.id_of(slot))
    }

    /// The running task.
    pub fn current(&self) -> TaskId {
        self.id_of(self.current)
    }

    /// The running task's kind.
    pub fn current_kind(&self) -> Kind {
        self.slots[usize::from(self.current)].kind
    }

    /// A task's name.
    pub fn name(&self, id: TaskId) -> Option<&'static str> {
        self.slot(id).map(|s| s.name)
    }

    /// A task's state.
    pub fn state(&self, id: TaskId) -> Option<State> {
        self.slot(id).map(|s| s.state)
    }

    /// A task's kind.
    pub fn kind(&self, id: TaskId) -> Option<Kind> {
        self.slot(id).map(|s| s.kind)
    }

    /// Whether a task other than the current one (and other than idle) could run now.
    pub fn has_other_runnable(&self) -> bool {
        !self.run_queue.is_empty()
    }

    /// The running task gives up the vCPU but stays runnable.
    pub fn yield_current(&mut self) {
        let cur = self.current;
        let slot = &mut self.slots[usize::from(cur)];
        if slot.kind == Kind::Idle || !matches!(slot.state, State::Running) {
            return;
        }
        slot.state = State::Ready;
        let _ = self.run_queue.push_back(cur);
    }

    /// The running task waits for `wait`. The idle task cannot block.
    pub fn block_current(&mut self, wait: Wait) {
        let slot = &mut self.slots[usize::from(self.current)];
        assert!(slot.kind != Kind::Idle, "the idle task tried to block on {wait:?}");
        assert!(matches!(slot.state, State::Running), "blocking a task that is not running: {:?}", slot.state);
        slot.state = State::Blocked(wait);
        slot.wake_value = 0;
        self.stats.blocked += 1;
        if let Wait::Sleep { until_tick } = wait {
            self.next_sleep_end = self.next_sleep_end.min(until_tick);
        }
    }

    /// Wakes `id` if it is blocked, handing it `value`.
    pub fn wake(&mut self, id: TaskId, value: u64) -> WakeOutcome {
        let Some(slot) = self.slot_mut(id) else {
            return WakeOutcome::NoSuchTask;
        };
        if !matches!(slot.state, State::Blocked(_)) {
            self.stats.spurious_wakes += 1;
            return WakeOutcome::NotBlocked;
        }
        slot.state = State::Ready;
        slot.wake_value = value;
        let _ = self.run_queue.push_back(id.slot);
        self.stats.woken += 1;
        WakeOutcome::Woken
    }

    /// Wakes every task blocked on exactly `wait`; returns how many.
    pub fn wake_all(&mut self, wait: Wait, value: u64) -> usize {
        let mut woken = 0;
        for slot in 0..MAX_TASKS as u16 {
            if matches!(self.slots[usize::from(slot)].state, State::Blocked(w) if w == wait) {
                let id = self.id_of(slot);
                if self.wake(id, value) == WakeOutcome::Woken {
                    woken += 1;
                }
            }
        }
        woken
    }

    /// The value the last waker handed the running task.
    pub fn current_wake_value(&self) -> u64 {
        self.slots[usize::from(self.current)].wake_value
    }

    /// The running task ends; whoever joins it is woken.
    pub fn exit_current(&mut self, status: ExitStatus) {
        let cur = self.current;
        let slot = &mut self.slots[usize::from(cur)];
        assert!(slot.kind != Kind::Idle, "the idle task tried to exit");
        slot.state = State::Exited(status);
        let me = self.id_of(cur);
        self.wake_all(Wait::Join(me), 0);
    }

    /// Ends a task that is not running (e.g. killed while blocked). Returns false when it is
    /// running, exited or unknown.
    pub fn kill(&mut self, id: TaskId, status: ExitStatus) -> bool {
        if id.slot == self.current || self.kind(id) == Some(Kind::Idle) {
            return false;
        }
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        match slot.state {
            State::Ready | State::Blocked(_) => {}
            _ => return false,
        }
        let was_ready = matches!(slot.state, State::Ready);
        slot.state = State::Exited(status);
        if was_ready {
            self.remove_from_queue(id.slot);
        }
        self.wake_all(Wait::Join(id), 0);
        true
    }

    fn remove_from_queue(&mut self, slot: u16) {
        let len = self.run_queue.len();
        for _ in 0..len {
            if let Some(s) = self.run_queue.pop_front()
                && s != slot
            {
                let _ = self.run_queue.push_back(s);
            }
        }
    }

    /// Frees an exited task's slot and returns how it ended.
    pub fn reap(&mut self, id: TaskId) -> Result<ExitStatus, ReapError> {
        let slot = self.slot_mut(id).ok_or(ReapError::NoSuchTask)?;
        match slot.state {
            State::Exited(status) => {
                slot.state = State::Free;
                Ok(status)
            }
            _ => Err(ReapError::StillRunning),
        }
    }

    /// Wakes the tasks whose sleep ended at tick `now`; returns how many. Called on every
    /// tick: a tick before the next sleeper's end only compares two numbers.
    pub fn tick(&mut self, now: u64) -> usize {
        if now < self.next_sleep_end {
            return 0;
        }
        let mut woken = 0;
        let mut next = u64::MAX;
        for slot in 0..MAX_TASKS as u16 {
            if let State::Blocked(Wait::Sleep { until_tick }) = self.slots[usize::from(slot)].state {
                if until_tick <= now {
                    let id = self.id_of(slot);
                    self.wake(id, now);
                    woken += 1;
                } else {
                    next = next.min(until_tick);
                }
            }
        }
        self.next_sleep_end = next;
        woken
    }

    /// Decides the next task. Returns `(from, to)` slots when a switch is needed and marks `to`
    /// running; `None` when the current task keeps the vCPU.
    pub fn pick_next(&mut self) -> Option<(u16, u16)> {
        let cur = self.current;
        let cur_running = matches!(self.slots[usize::from(cur)].state, State::Running);
        let next = match self.run_queue.pop_front() {
            Some(next) => next,
            None if cur_running => return None,
            None => self.idle.expect("no idle task: adopt_idle was not called"),
        };
        if next == cur {
            self.slots[usize::from(cur)].state = State::Running;
            return None;
        }
        if cur_running {
            // The idle task steps aside without being queued (it is the default choice); any
            // other task still running is preempted and goes to the back of the queue.
            self.slots[usize::from(cur)].state = State::Ready;
            if self.slots[usize::from(cur)].kind != Kind::Idle {
                let _ = self.run_queue.push_back(cur);
            }
        }
        self.slots[usize::from(next)].state = State::Running;
        self.current = next;
        self.stats.switches += 1;
        Some((cur, next))
    }

    /// Every task that is not free, for reports.
    pub fn live_tasks(&self) -> impl Iterator<Item = (TaskId, &'static str, State)> + '_ {
        (0..MAX_TASKS as u16).filter_map(move |slot| {
            let s = &self.slots[usize::from(slot)];
            (!matches!(s.state, State::Free)).then(|| (self.id_of(slot), s.name, s.state))
        })
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
