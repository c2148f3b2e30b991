//! The CPL 3 side of the workload benchmarks: the user-accessible slots through which the kernel
//! hands each task its parameters and reads back its timing, the finish line the tasks wait at,
//! and the user programs themselves.

use pvagent_guest::arch::percpu::{self, MAX_CPUS};
use pvagent_guest::cell::StaticCell;
use pvagent_guest::task::user;

use crate::{BenchError, Result};

/// One CPL 3 workload task's parameters (written by the kernel before the task starts) and its
/// own timing (written by the task), in user-accessible memory. Offsets are what the user
/// program reads and writes (`slot + offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub base: u64,
    pub pages: u64,
    pub spin_iterations: u64,
    /// TSC when the task began its first round.
    pub start_tsc: u64,
    /// TSC when the task's last access completed.
    pub end_tsc: u64,
    /// The address of the run's [`Gate`].
    pub gate: u64,
    /// TSC cycles the task spent in its compute segments (written by the task).
    pub compute_tsc: u64,
}

const SLOT_BASE: u64 = 0;
const SLOT_PAGES: u64 = 8;
const SLOT_SPIN: u64 = 16;
const SLOT_START: u64 = 24;
const SLOT_END: u64 = 32;
const SLOT_GATE: u64 = 40;
const SLOT_COMPUTE: u64 = 48;
const _: () = assert!(core::mem::offset_of!(Slot, base) as u64 == SLOT_BASE);
const _: () = assert!(core::mem::offset_of!(Slot, pages) as u64 == SLOT_PAGES);
const _: () = assert!(core::mem::offset_of!(Slot, spin_iterations) as u64 == SLOT_SPIN);
const _: () = assert!(core::mem::offset_of!(Slot, start_tsc) as u64 == SLOT_START);
const _: () = assert!(core::mem::offset_of!(Slot, end_tsc) as u64 == SLOT_END);
const _: () = assert!(core::mem::offset_of!(Slot, gate) as u64 == SLOT_GATE);
const _: () = assert!(core::mem::offset_of!(Slot, compute_tsc) as u64 == SLOT_COMPUTE);

/// The finish line of one workload run, in user-accessible memory: each task counts itself in
/// when its last access is done and then stays until every task has, so that no task leaves
/// (exits, is joined) while others still work. Leaving costs the emulated kernel about a
/// millisecond here, which would otherwise land inside the measured window. A task that waits
/// blocks on the count (`user::wait`) and the last one in wakes it: spinning (yielding) would
/// cost a number of kernel calls that depends on when the host lets the others finish, and the
/// counting windows around these runs must count the same every time.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    finished: u64,
    tasks: u64,
}

const GATE_FINISHED: u64 = 0;
const GATE_TASKS: u64 = 8;
const _: () = assert!(core::mem::offset_of!(Gate, finished) as u64 == GATE_FINISHED);
const _: () = assert!(core::mem::offset_of!(Gate, tasks) as u64 == GATE_TASKS);

/// One gate per vCPU: a run's tasks on one vCPU wait at that vCPU's gate, because a wake
/// (`user::wake`) reaches the waiters of the vCPU that makes it. The kernel writes a gate before
/// it spawns a run's tasks and reads nothing of it; the tasks change it only with a locked add.
#[unsafe(link_section = ".user_data.bench")]
static USER_GATES: StaticCell<[Gate; MAX_CPUS]> = StaticCell::new([Gate { finished: 0, tasks: 0 }; MAX_CPUS]);

/// The running vCPU's gate's address, for [`Slot::gate`].
pub fn gate_addr() -> u64 {
    USER_GATES.get().cast::<Gate>().wrapping_add(percpu::index()) as u64
}

/// Opens the running vCPU's gate for a run of `tasks` tasks on it.
pub fn reset_gate(tasks: u64) {
    // SAFETY: the running vCPU's gate, in the table; no task of an earlier run on this vCPU is
    // left (all were joined), so nothing reads it.
    unsafe { core::ptr::write_volatile(gate_addr() as *mut Gate, Gate { finished: 0, tasks }) };
}

/// How many workload tasks can run at once.
pub const SLOTS: usize = 32;
pub const EMPTY_SLOT: Slot =
    Slot { base: 0, pages: 0, spin_iterations: 0, start_tsc: 0, end_tsc: 0, gate: 0, compute_tsc: 0 };

/// Each slot is written by the kernel before its task is spawned and read after it was joined;
/// the task itself is the only other user in between.
#[unsafe(link_section = ".user_data.bench")]
static USER_SLOTS: StaticCell<[Slot; SLOTS]> = StaticCell::new([EMPTY_SLOT; SLOTS]);

/// Slot `i`'s address; `None` beyond the table.
pub fn slot_addr(i: usize) -> Option<u64> {
    (i < SLOTS).then(|| USER_SLOTS.get().cast::<Slot>().wrapping_add(i) as u64)
}

pub fn set_slot(i: usize, slot: Slot) -> Result<()> {
    let addr = slot_addr(i).ok_or(BenchError("more workload tasks than slots"))?;
    // SAFETY: `addr` is slot `i` of the table, which no running task uses now (see `USER_SLOTS`).
    unsafe { core::ptr::write_volatile(addr as *mut Slot, slot) };
    Ok(())
}

pub fn get_slot(i: usize) -> Result<Slot> {
    let addr = slot_addr(i).ok_or(BenchError("more workload tasks than slots"))?;
    // SAFETY: as in `set_slot`; the slot's task has been joined.
    Ok(unsafe { core::ptr::read_volatile(addr as *const Slot) })
}

/// CPL 3: `iterations` rounds of a loop whose only cost is the CPU's own speed. A fixed amount
/// of work rather than a TSC deadline, so that an interrupt handled meanwhile does not eat into
/// the compute the ideal counts on.
#[inline(always)]
fn spin(iterations: u64) {
    let mut i = 0u64;
    while i < iterations {
        // SAFETY: an empty instruction sequence; it only keeps the loop from being removed.
        unsafe { core::arch::asm!("/* {0} */", inout(reg) i, options(nomem, nostack, preserves_flags)) };
        i += 1;
    }
}

/// CPL 3: times `spin` for the slot's iterations and exits with the TSC cycles it took.
#[unsafe(link_section = ".user_text")]
pub extern "sysv64" fn user_spin_timed(slot: u64) -> ! {
    let iterations = user::read_u64(slot + SLOT_SPIN);
    let start = user::rdtsc();
    spin(iterations);
    user::exit(user::rdtsc().wrapping_sub(start))
}

/// CPL 3: for each of `pages` pages from `base`, compute (`spin`), then read the page (which
/// may be absent). Records when it began and when its last access completed; exits with the
/// XOR of what it read.
#[unsafe(link_section = ".user_text")]
pub extern "sysv64" fn user_workload(slot: u64) -> ! {
    let base = user::read_u64(slot + SLOT_BASE);
    let pages = user::read_u64(slot + SLOT_PAGES);
    let iterations = user::read_u64(slot + SLOT_SPIN);
    user::write_u64(slot + SLOT_START, user::rdtsc());
    let (mut acc, mut compute) = (0u64, 0u64);
    let mut i = 0;
    while i < pages {
        let started = user::rdtsc();
        spin(iterations);
        compute += user::rdtsc().wrapping_sub(started);
        acc ^= user::read_u64(base + i * 4096 + (i % 512) * 8);
        i += 1;
    }
    user::write_u64(slot + SLOT_COMPUTE, compute);
    user::write_u64(slot + SLOT_END, user::rdtsc());
    let gate = user::read_u64(slot + SLOT_GATE);
    let mut finished = 1u64;
    // SAFETY: `gate` is the run's `Gate`, user-accessible and aligned; a locked add changes
    // nothing else. `finished` comes back as the count before this task's.
    unsafe {
        core::arch::asm!("lock xadd qword ptr [{}], {}", in(reg) gate + GATE_FINISHED, inout(reg) finished,
            options(nostack));
    }
    finished += 1;
    let tasks = user::read_u64(gate + GATE_TASKS);
    if finished == tasks {
        user::wake(gate + GATE_FINISHED);
    }
    while finished < tasks {
        user::wait(gate + GATE_FINISHED, finished);
        finished = user::read_u64(gate + GATE_FINISHED);
    }
    user::exit(acc)
}
