//! Tests of the scheduler and of CPL 3 tasks.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{SelfTest, TestResult};
use crate::arch::fault::pf;
use crate::task::event::Event;
use crate::task::table::{ExitStatus, FaultInfo};
use crate::task::{self, user};
use crate::{ensure, ensure_eq};

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("task::kernel_task_returns_its_value", kernel_task_returns_its_value),
    SelfTest::new("task::user_task_runs_at_cpl3_and_returns", user_task_runs_at_cpl3_and_returns),
    SelfTest::new("task::user_fault_ends_only_that_task", user_fault_ends_only_that_task),
    SelfTest::new("task::blocked_task_is_woken_by_event", blocked_task_is_woken_by_event),
    SelfTest::new("task::yielding_tasks_interleave", yielding_tasks_interleave),
    SelfTest::new("task::sleep_waits_for_ticks", sleep_waits_for_ticks),
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
            ensure_eq!(address, addr, "CR2");
            ensure_eq!(error_code, pf::PRESENT | pf::USER, "error code (present, read, user)");
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
            ensure_eq!(error_code, pf::USER, "error code (not present, read, user)");
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
    ensure_eq!(LOG.load(Ordering::SeqCst), 0xABABAB, "order of the workers' steps");
    Ok(())
}

fn sleep_waits_for_ticks() -> TestResult {
    let before = crate::arch::ticks();
    task::sleep_ticks(3);
    let slept = crate::arch::ticks() - before;
    ensure!(slept >= 3, "woke after {slept} ticks, asked for 3");
    Ok(())
}
