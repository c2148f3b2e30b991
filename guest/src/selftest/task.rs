//! Tests of the scheduler and of CPL 3 tasks.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{SelfTest, TestResult};
use crate::arch::fault::{self, pf};
use crate::arch::percpu;
use crate::cell::StaticCell;
use crate::task::event::Event;
use crate::task::table::{ExitStatus, FaultInfo, State};
use crate::task::{self, user};
use crate::{ensure, ensure_eq, ensure_eq_hex};

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("task::kernel_task_returns_its_value", kernel_task_returns_its_value),
    SelfTest::new("task::user_task_runs_at_cpl3_and_returns", user_task_runs_at_cpl3_and_returns),
    SelfTest::new("task::user_fault_ends_only_that_task", user_fault_ends_only_that_task),
    SelfTest::new("task::blocked_task_is_woken_by_event", blocked_task_is_woken_by_event),
    SelfTest::new("task::yielding_tasks_interleave", yielding_tasks_interleave),
    SelfTest::new("task::sleep_waits_for_ticks", sleep_waits_for_ticks),
    SelfTest::new("task::every_slot_runs_on_its_whole_stack", every_slot_runs_on_its_whole_stack),
    SelfTest::new("task::user_stack_overflow_ends_only_that_task", user_stack_overflow_ends_only_that_task),
    SelfTest::new("task::user_tasks_block_on_a_word_until_woken", user_tasks_block_on_a_word_until_woken),
    SelfTest::on_request("task::stack_overflow_hits_the_guard_page", stack_overflow_hits_the_guard_page),
];

fn join(id: task::table::TaskId) -> Result<ExitStatus, super::Failure> {
    task::join(id).map_err(|e| super::fail(format_args!("join {id:?}: {e:?}")))
}

fn spawned<T, E: core::fmt::Debug>(r: Result<T, E>) -> Result<T, super::Failure> {
    r.map_err(|e| super::fail(format_args!("spawn failed: {e:?}")))
}

fn kernel_task_returns_its_value() -> TestResult {
    fn body(arg: u64) -> u64 {
        arg * 3
    }
    let id = spawned(task::spawn_kernel("triple", body, 14))?;
    ensure_eq!(join(id)?, ExitStatus::Returned(42), "exit status");
    Ok(())
}

#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_double(arg: u64) -> ! {
    user::yield_now();
    user::exit(arg.wrapping_mul(2))
}

#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read(addr: u64) -> ! {
    let value = user::read_u64(addr);
    user::exit(value)
}

fn user_task_runs_at_cpl3_and_returns() -> TestResult {
    // Runs user code, which yields through a kernel call and exits with a value.
    let id = spawned(task::spawn_user("user-double", user_double, 21))?;
    ensure_eq!(join(id)?, ExitStatus::Returned(42), "exit status");

    // The CPU itself says the code runs at CPL 3: reading a supervisor-only page faults with
    // the user bit in the error code (reading CS is not reliable under PVM).
    static KERNEL_ONLY: AtomicU64 = AtomicU64::new(7);
    let addr = KERNEL_ONLY.as_ptr() as u64;
    let id = spawned(task::spawn_user("user-read-kernel", user_read, addr))?;
    match join(id)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, error_code, address, .. }) => {
            ensure_eq_hex!(address, addr, "CR2");
            ensure_eq_hex!(error_code, pf::PRESENT | pf::USER, "error code (present, read, user)");
        }
        other => {
            return Err(super::fail(format_args!("user read of kernel data ended with {other:?}")));
        }
    }
    Ok(())
}

fn user_fault_ends_only_that_task() -> TestResult {
    static DONE: AtomicU32 = AtomicU32::new(0);
    fn bystander(_: u64) -> u64 {
        task::yield_now();
        DONE.fetch_add(1, Ordering::SeqCst);
        0
    }
    DONE.store(0, Ordering::SeqCst);
    let bystander = spawned(task::spawn_kernel("bystander", bystander, 0))?;
    let faulter = spawned(task::spawn_user("user-null", user_read, 0x10))?;
    match join(faulter)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, address: 0x10, error_code, .. }) => {
            ensure_eq_hex!(error_code, pf::USER, "error code (not present, read, user)");
        }
        other => return Err(super::fail(format_args!("null read ended with {other:?}"))),
    }
    ensure_eq!(join(bystander)?, ExitStatus::Returned(0), "bystander status");
    ensure_eq!(DONE.load(Ordering::SeqCst), 1, "bystander completions");
    Ok(())
}

static EVENT: Event = Event::new();
static STEPS: AtomicU32 = AtomicU32::new(0);

fn blocked_task_is_woken_by_event() -> TestResult {
    fn waiter(_: u64) -> u64 {
        STEPS.store(1, Ordering::SeqCst);
        EVENT.wait();
        STEPS.store(2, Ordering::SeqCst);
        0
    }
    STEPS.store(0, Ordering::SeqCst);
    let id = spawned(task::spawn_kernel("waiter", waiter, 0))?;
    task::yield_now();
    ensure_eq!(STEPS.load(Ordering::SeqCst), 1, "waiter ran up to its wait");
    ensure!(
        matches!(task::state(id), Some(task::table::State::Blocked(_))),
        "waiter is {:?}, not blocked",
        task::state(id)
    );
    task::yield_now();
    ensure_eq!(STEPS.load(Ordering::SeqCst), 1, "waiter stays blocked until signaled");
    ensure_eq!(EVENT.signal(), 1, "waiters woken");
    ensure_eq!(join(id)?, ExitStatus::Returned(0), "waiter status");
    ensure_eq!(STEPS.load(Ordering::SeqCst), 2, "waiter continued after the wake-up");
    Ok(())
}

fn yielding_tasks_interleave() -> TestResult {
    static LOG: AtomicU64 = AtomicU64::new(0);
    fn worker(tag: u64) -> u64 {
        for _ in 0..3 {
            // Append a 4-bit tag to the log.
            let log = LOG.load(Ordering::SeqCst);
            LOG.store((log << 4) | tag, Ordering::SeqCst);
            task::yield_now();
        }
        0
    }
    LOG.store(0, Ordering::SeqCst);
    let a = spawned(task::spawn_kernel("worker-a", worker, 0xA))?;
    let b = spawned(task::spawn_kernel("worker-b", worker, 0xB))?;
    join(a)?;
    join(b)?;
    ensure_eq_hex!(LOG.load(Ordering::SeqCst), 0xABABAB, "order of the workers' steps (a nibble per step)");
    Ok(())
}

fn sleep_waits_for_ticks() -> TestResult {
    let before = crate::arch::ticks();
    task::sleep_ticks(3);
    let slept = crate::arch::ticks() - before;
    ensure!(slept >= 3, "woke after {slept} ticks, asked for 3");
    Ok(())
}

/// Room left at the bottom of a stack for what may run on top of a task's deepest frame: a
/// switch, a timer interrupt and its handler.
const STACK_HEADROOM: u64 = 8 * 1024;
/// The frame size of each level of `descend`.
const FRAME: usize = 2048;

/// Recurses with `FRAME`-byte frames, each written, until the next one would pass `floor`;
/// at the deepest, yields (so that every such task is at its deepest at once). Returns the
/// lowest frame's address.
#[inline(never)]
fn descend(floor: u64) -> u64 {
    let mut frame = [0u8; FRAME];
    let here = frame.as_ptr() as u64;
    // SAFETY: writes to this function's own local array.
    unsafe {
        core::ptr::write_volatile(frame.as_mut_ptr(), 1);
        core::ptr::write_volatile(frame.as_mut_ptr().add(FRAME - 1), 1);
    }
    let lowest = if here > floor + FRAME as u64 {
        descend(floor)
    } else {
        task::yield_now();
        here
    };
    // Keeps the frame alive across the call, so that the recursion cannot become a loop.
    core::hint::black_box(&mut frame);
    lowest
}

/// Fills every free task slot at once with a task that uses its whole kernel stack (down to a
/// few KiB above the guard page) and waits there for the others: every stack is mapped and
/// usable to its bottom, whatever size `kstack=` gave them, and none runs into another.
fn every_slot_runs_on_its_whole_stack() -> TestResult {
    fn deep(_: u64) -> u64 {
        let stack = task::stack::kernel_stack(percpu::index(), task::current().slot);
        // The very first page above the guard, written directly (this task does not reach it).
        // SAFETY: this task's own stack, below anything it uses.
        unsafe { core::ptr::write_volatile(stack.bottom() as *mut u64, 0x5ac) };
        descend(stack.bottom() + STACK_HEADROOM)
    }
    let mut ids: heapless::Vec<task::table::TaskId, { task::table::MAX_TASKS }> = heapless::Vec::new();
    while let Ok(id) = task::spawn_kernel("deep", deep, 0) {
        let _ = ids.push(id);
    }
    let live = task::live_count();
    ensure_eq!(live, task::table::MAX_TASKS, "tasks alive with every slot taken");
    let cpu = percpu::index();
    for id in ids {
        let stack = task::stack::kernel_stack(cpu, id.slot);
        let ExitStatus::Returned(lowest) = join(id)? else {
            return Err(super::fail(format_args!("task in slot {} did not return", id.slot)));
        };
        ensure!(
            (stack.bottom() + STACK_HEADROOM..stack.bottom() + STACK_HEADROOM + 2 * FRAME as u64).contains(&lowest),
            "slot {}: the deepest frame at {lowest:#x} is not just above {:#x}",
            id.slot,
            stack.bottom() + STACK_HEADROOM
        );
        // SAFETY: the task ended; its stack is mapped and nobody uses it.
        let marker = unsafe { core::ptr::read_volatile(stack.bottom() as *const u64) };
        ensure_eq_hex!(marker, 0x5ac, "the word at the bottom of slot {}'s stack", id.slot);
        ensure!(fault::probe_read_u64(stack.guard).is_err(), "the guard page of slot {} is mapped", id.slot);
    }
    Ok(())
}

/// Pushes until its CPL 3 stack runs into the guard page below it.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_overflow(_: u64) -> ! {
    // SAFETY: writes only below this task's own stack pointer, on its own stack, until the
    // write to the guard page faults and the kernel ends the task: it never returns.
    unsafe { core::arch::asm!("2:", "push rax", "jmp 2b", options(noreturn)) }
}

/// Keeps `marker` on the top of its CPL 3 stack across a yield, then exits with what is there.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_keep_marker(marker: u64) -> ! {
    let mut kept = marker;
    // In memory, at the top of this task's stack: what an overflowing neighbour would hit first.
    core::hint::black_box(&mut kept);
    user::yield_now();
    user::exit(core::hint::black_box(kept))
}

/// A CPL 3 task that overflows its stack faults on the guard page below it and ends; the task
/// whose stack lies right below that guard page keeps what it had there and ends normally.
fn user_stack_overflow_ends_only_that_task() -> TestResult {
    const MARKER: u64 = 0x5afe_57ac;
    let neighbour = spawned(task::spawn_user("user-neighbour", user_keep_marker, MARKER))?;
    let overflow = spawned(task::spawn_user("user-overflow", user_overflow, 0))?;
    // Slots are handed out lowest first: the neighbour's user stack is the one right below the
    // overflowing task's guard page, the first thing it would overwrite without that page.
    ensure_eq!(overflow.slot, neighbour.slot + 1, "the two tasks' slots (the test needs neighbours)");
    let guard = task::stack::user_stack(percpu::index(), overflow.slot).guard;
    match join(overflow)? {
        ExitStatus::Faulted(FaultInfo { vector: 14, address, error_code, .. }) => {
            ensure!((guard..guard + 4096).contains(&address), "CR2 {address:#x} is not on the guard page {guard:#x}");
            ensure_eq_hex!(error_code, pf::WRITE | pf::USER, "error code (not present, write, user)");
        }
        other => return Err(super::fail(format_args!("the overflowing task ended with {other:?}"))),
    }
    ensure_eq!(join(neighbour)?, ExitStatus::Returned(MARKER), "the neighbour's exit (its marker)");
    Ok(())
}

/// Recurses until the stack runs into its guard page.
#[inline(never)]
#[allow(unconditional_recursion, reason = "it ends at the guard page, which is what it is for")]
fn overflow(depth: u64) -> u64 {
    let mut frame = [0u8; FRAME];
    // SAFETY: writes to this function's own local array.
    unsafe { core::ptr::write_volatile(frame.as_mut_ptr(), depth as u8) };
    let deeper = overflow(depth + 1);
    core::hint::black_box(&mut frame);
    deeper
}

/// Ends the run on purpose (on request only, from `tests/memory.rs`): a kernel task overflows
/// its stack. The write to the guard page faults; the CPU cannot push the #PF's frame there
/// either, so it raises #DF on its IST stack, whose report (with CR2: the guard page) fails this
/// test and ends the run.
fn stack_overflow_hits_the_guard_page() -> TestResult {
    fn body(_: u64) -> u64 {
        overflow(0)
    }
    let id = spawned(task::spawn_kernel("overflow", body, 0))?;
    let guard = task::stack::kernel_stack(percpu::index(), id.slot).guard;
    crate::kprintln!("task: the overflowing task's guard page is at {guard:#x}");
    let status = join(id)?;
    Err(super::fail(format_args!("the overflowing task ended with {status:?} instead of ending the run")))
}

/// The word the wait test's tasks wait on and change: in `.user_data`, where CPL 3 may.
#[unsafe(link_section = ".user_data.selftest")]
static WAIT_WORD: StaticCell<u64> = StaticCell::new(0);

/// CPL 3: waits until the word at `addr` is no longer 0 (blocking, not spinning); exits with it.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_wait_for_word(addr: u64) -> ! {
    while user::read_u64(addr) == 0 {
        user::wait(addr, 0);
    }
    user::exit(user::read_u64(addr))
}

/// CPL 3: sets the word at `addr` to 7 and wakes its waiters; exits with how many it woke.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_set_word_and_wake(addr: u64) -> ! {
    user::write_u64(addr, 7);
    user::exit(user::wake(addr))
}

/// A CPL 3 task that waits on a word blocks (it is not ready, so it spends nothing) until
/// another task changes the word and wakes it; a wait on a word that changed already returns at
/// once, and one on an address outside `.user_data` is refused.
fn user_tasks_block_on_a_word_until_woken() -> TestResult {
    let addr = WAIT_WORD.get() as u64;
    // SAFETY: no task of this test runs yet; the word is ours to reset.
    unsafe { core::ptr::write_volatile(WAIT_WORD.get(), 0) };
    let waiter = spawned(task::spawn_user("user-waiter", user_wait_for_word, addr))?;
    // The waiter runs to its wait at its first turn and blocks there.
    for _ in 0..10 {
        if matches!(task::state(waiter), Some(State::Blocked(_))) {
            break;
        }
        task::yield_now();
    }
    ensure!(
        matches!(task::state(waiter), Some(State::Blocked(_))),
        "the waiter is {:?}, not blocked",
        task::state(waiter)
    );
    for _ in 0..3 {
        task::yield_now();
        ensure!(matches!(task::state(waiter), Some(State::Blocked(_))), "the waiter ran without a wake");
    }
    let waker = spawned(task::spawn_user("user-waker", user_set_word_and_wake, addr))?;
    ensure_eq!(join(waker)?, ExitStatus::Returned(1), "waiters the waker woke");
    ensure_eq!(join(waiter)?, ExitStatus::Returned(7), "what the waiter saw when woken");
    let returned = user_calls(addr, 0);
    ensure_eq!(returned, (user::CHANGED, 0), "a wait on a word that changed, and a wake of nobody");
    ensure_eq!(user_calls(0x1000, 0), (user::EINVAL, user::EINVAL), "a wait and a wake outside .user_data");
    Ok(())
}

/// Where [`user_calls`]' task leaves what its two calls returned, and what they take.
#[unsafe(link_section = ".user_data.selftest")]
static CALLS: StaticCell<[u64; 3]> = StaticCell::new([0; 3]);

/// What [`user::wait`] (for `expected`) and then [`user::wake`] on `addr` return to a CPL 3 task.
fn user_calls(addr: u64, expected: u64) -> (u64, u64) {
    #[unsafe(link_section = ".user_text")]
    extern "sysv64" fn body(calls: u64) -> ! {
        let (addr, expected) = (user::read_u64(calls), user::read_u64(calls + 8));
        user::write_u64(calls, user::wait(addr, expected));
        user::write_u64(calls + 8, user::wake(addr));
        user::exit(0)
    }
    let calls = CALLS.get().cast::<u64>();
    // SAFETY: no task uses the slots now (the last one was joined).
    unsafe { core::ptr::write_volatile(CALLS.get(), [addr, expected, 0]) };
    let Ok(id) = task::spawn_user("user-calls", body, calls as u64) else { return (u64::MAX, u64::MAX) };
    let _ = task::join(id);
    // SAFETY: as above: the task was joined.
    let results = unsafe { core::ptr::read_volatile(CALLS.get()) };
    (results[0], results[1])
}
