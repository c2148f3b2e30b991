//! Memory the host changes under the guest. A region whose host memory is gone, which the
//! guest's first access makes the host repair (seed 004's memory-fault exit); the churn region,
//! whose memslots the host splits and merges while vCPUs keep executing code from it and
//! writing and checking data in it (seed 003), its dirty log checked against what they wrote;
//! a region the host hot-adds, which the guest finds, maps wherever it lies and uses, and which
//! the host then moves with its memory and moves back. None is in the boot memory map's RAM:
//! the host announces them ([`Nr::LayoutRegion`]) and the tests map them themselves.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::layout::{self, LayoutStepKind, RegionKind};
use pvagent_abi::report::Need;

use super::{Failure, SelfTest, TestResult, fail};
use crate::arch::hypercall::{self, HypercallError};
use crate::arch::paging::{self, Access};
use crate::arch::{self, smp};
use crate::task::table::ExitStatus;
use crate::task::{self, remote, user};
use crate::{ensure, ensure_eq, ensure_eq_hex, kprintln};

pub const TESTS: &[SelfTest] = &[
    SelfTest::on_request(
        "memslot::a_cpl3_access_to_released_memory_is_repaired_by_the_host",
        a_cpl3_access_to_released_memory_is_repaired_by_the_host,
    )
    .needs(&[Need::HostStub]),
    SelfTest::new(
        "memslot::code_and_data_stay_right_while_the_host_splits_and_merges_their_memslot",
        code_and_data_stay_right_while_the_host_splits_and_merges_their_memslot,
    )
    .needs(&[Need::HostStub, Need::SeveralCpus]),
    SelfTest::new(
        "memslot::a_hot_added_region_is_found_mapped_used_and_moved",
        a_hot_added_region_is_found_mapped_used_and_moved,
    )
    .needs(&[Need::HostStub]),
];

/// The region the host announced with `index`: `(gpa, bytes, kind)`; `None` past the last.
fn announced(index: u64) -> Result<Option<(u64, u64, u8)>, Failure> {
    match hypercall::call(Nr::LayoutRegion, [index, 0, 0, 0]) {
        Ok([gpa, word]) => Ok(Some((gpa, word & layout::SIZE_MASK, (word >> 56) as u8))),
        Err(HypercallError::Status(Status::UnknownNr | Status::InvalidArgument)) => Ok(None),
        Err(e) => Err(fail(format_args!("LayoutRegion({index}): {e:?}"))),
    }
}

/// The first announced region of `kind` and its index: `(index, gpa, bytes)`.
fn find(kind: RegionKind, skip: &'static str) -> Result<(u64, u64, u64), Failure> {
    for index in 0.. {
        match announced(index)? {
            Some((gpa, bytes, k)) if k == kind as u8 => {
                ensure!(gpa % 0x1000 == 0 && bytes >= 0x2000, "region {index}: {gpa:#x}, {bytes:#x} bytes");
                return Ok((index, gpa, bytes));
            }
            Some(_) => {}
            None => break,
        }
    }
    Err(Failure::Skip(skip))
}

fn call(nr: Nr, args: [u64; 4]) -> Result<[u64; 2], Failure> {
    hypercall::call(nr, args).map_err(|e| fail(format_args!("{nr:?}{args:x?}: {e:?}")))
}

/// The ranges this boot mapped for announced regions, so none is mapped twice.
static MAPPED: spin::Mutex<heapless::Vec<(u64, u64), 8>> = spin::Mutex::new(heapless::Vec::new());

/// The host's code in the churn region ([`layout::CHURN_CODE`]).
type HostCode = extern "sysv64" fn() -> u32;
// SAFETY: a function pointer type.
unsafe impl crate::cell::FnPtr for HostCode {}

/// Maps `[gpa, gpa + bytes)` (its first page executable, when `code`) unless this boot did.
fn map_once(gpa: u64, bytes: u64, code: bool) -> TestResult {
    let first = {
        let mut mapped = MAPPED.lock();
        let new = !mapped.contains(&(gpa, bytes));
        new && mapped.push((gpa, bytes)).is_ok()
    };
    if first {
        if code {
            paging::map_range(gpa, gpa + 0x1000, Access::KernelText);
            paging::map_range(gpa + 0x1000, gpa + bytes, Access::KernelData);
        } else {
            paging::map_range(gpa, gpa + bytes, Access::KernelData);
        }
    }
    Ok(())
}

#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read(gpa: u64) -> ! {
    user::exit(user::read_u64(gpa))
}

/// The host released the region's memory before boot: a CPL 3 load from it reaches the host as
/// a memory fault (`KVM_EXIT_MEMORY_FAULT` here, a bare EFAULT where KVM does not annotate it),
/// the host gives the region fresh memory and re-enters, and the load, retried, reads what the
/// host put there. The host's side (which exit came, how many) is checked by its end-to-end test.
fn a_cpl3_access_to_released_memory_is_repaired_by_the_host() -> TestResult {
    let (_, gpa, bytes) =
        find(RegionKind::ReleasedBacking, "the host announces no released region (the host stub's --released-region)")?;
    // Mapped once per boot: the test runs once (the runner runs each selected test once).
    paging::map_range(gpa, gpa + bytes, Access::UserData);
    let word = gpa + 0x100;
    let id = task::spawn_user("memslot-user", user_read, word).map_err(|e| fail(format_args!("spawn: {e:?}")))?;
    let status = task::join(id).map_err(|e| fail(format_args!("join: {e:?}")))?;
    let ExitStatus::Returned(value) = status else {
        return Err(fail(format_args!("the CPL 3 task did not return: {status:?}")));
    };
    ensure_eq_hex!(value, layout::fill_value(word), "the word the CPL 3 task read");
    // The repair holds for CPL 0 too: the kernel reads the same memory.
    let next = gpa + 0x108;
    // SAFETY: `next` is in the region just mapped, 8-byte aligned; the host owns its contents,
    // hence the volatile read.
    let kernel = unsafe { core::ptr::read_volatile(next as *const u64) };
    ensure_eq_hex!(kernel, layout::fill_value(next), "the word the kernel read");
    Ok(())
}

/// Each worker's slice of the churn region's upper (dirty-logged) half, and how far apart the
/// words it checks lie (eight per page).
const SLICE: u64 = 0x4000;
const STRIDE: u64 = 0x200;
/// Changes the test asks for: split, merge, four times.
const STEPS: u64 = 8;
/// Workers at most (one per vCPU but the test's own).
const MAX_WORKERS: usize = 8;

static STOP: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicU64 = AtomicU64::new(0);
/// The first wrong word a worker saw (its GPA), 0 while none.
static WRONG_AT: AtomicU64 = AtomicU64::new(0);
/// How many workers run.
static WORKERS: AtomicU64 = AtomicU64::new(0);
/// The churn region's first GPA, for the workers.
static CHURN_BASE: AtomicU64 = AtomicU64::new(0);
/// Each worker's rounds so far (by its slice number).
static ROUNDS: [AtomicU64; MAX_WORKERS] = [const { AtomicU64::new(0) }; MAX_WORKERS];

/// What a worker writes to the word at `gpa` in `round` (round 0: what the host put there).
fn word_value(gpa: u64, round: u64) -> u64 {
    if round == 0 { layout::fill_value(gpa) } else { layout::fill_value(gpa) ^ round.rotate_left(17) }
}

/// The slice of worker `n`.
fn slice(n: u64) -> u64 {
    CHURN_BASE.load(Ordering::Acquire) + layout::CHURN_REGION_SPLIT + n * SLICE
}

fn note_wrong(gpa: u64) {
    let _ = WRONG_AT.compare_exchange(0, gpa, Ordering::SeqCst, Ordering::SeqCst);
}

/// On its vCPU until told to stop: call the code the host put in the churn region, check every
/// word of its slice holds what it wrote last (or the host's fill), write the next round's.
/// Returns the rounds it made; records the first wrong value it saw.
fn worker(n: u64) -> u64 {
    let code = CHURN_BASE.load(Ordering::Acquire) + layout::CHURN_CODE_OFFSET;
    // SAFETY: the host put `mov eax, CHURN_CODE_VALUE; ret` at `code` (the ABI), which the test
    // mapped executable for the rest of the boot; it reads and writes no memory.
    let host_code: HostCode = unsafe { crate::cell::code_at(code as usize) };
    let base = slice(n);
    // With two workers or more, the last one only executes the host's code, so that a window
    // finds code being fetched from the region as well as data being accessed.
    let code_only = n > 0 && n + 1 == WORKERS.load(Ordering::Acquire);
    STARTED.fetch_add(1, Ordering::SeqCst);
    let mut round = 0;
    while !STOP.load(Ordering::Acquire) {
        if host_code() != layout::CHURN_CODE_VALUE {
            note_wrong(code);
            return round;
        }
        if code_only {
            round += 1;
            ROUNDS[n as usize].store(round, Ordering::Release);
            continue;
        }
        for gpa in (base..base + SLICE).step_by(STRIDE as usize) {
            // SAFETY: `gpa` is in this worker's own slice of the region the test mapped, 8-byte
            // aligned; volatile: the host changes the memslots under it.
            let seen = unsafe { core::ptr::read_volatile(gpa as *const u64) };
            if seen != word_value(gpa, round) {
                note_wrong(gpa);
                return round;
            }
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(gpa as *mut u64, word_value(gpa, round + 1)) };
        }
        round += 1;
        ROUNDS[n as usize].store(round, Ordering::Release);
    }
    round
}

/// Waits (yielding) until `done()`, or a worker saw a wrong value.
fn wait_until(done: impl Fn() -> bool) {
    while !done() && WRONG_AT.load(Ordering::SeqCst) == 0 {
        task::yield_now();
    }
}

/// A worker on every other vCPU executes code from the churn region and writes and checks data
/// in it (with two workers or more, one only executes the code), while this vCPU asks the host to split the region's memslot (dirty logging on the
/// upper half, where the data is) and merge it again, `STEPS` times. Where the host holds every
/// vCPU for each change, the guest sees nothing; in its diagnostic mode it holds none and keeps
/// each window open until a worker hit it, and completes those accesses (the report counts
/// them): the values stay right either way. Before each merge every worker has written its
/// slice again, and the host's dirty log, read before the merge, must list each of those pages
/// and no other.
fn code_and_data_stay_right_while_the_host_splits_and_merges_their_memslot() -> TestResult {
    let (_, gpa, bytes) = find(RegionKind::Churn, "the host offers no churn region (the host stub's --layout-churn)")?;
    ensure!(bytes == 2 * layout::CHURN_REGION_SPLIT, "the churn region's size {bytes:#x}");
    map_once(gpa, bytes, true)?;
    CHURN_BASE.store(gpa, Ordering::Release);
    STOP.store(false, Ordering::SeqCst);
    STARTED.store(0, Ordering::SeqCst);
    WRONG_AT.store(0, Ordering::SeqCst);
    let here = arch::percpu::index();
    let cpus: heapless::Vec<usize, MAX_WORKERS> =
        (0..arch::platform().cpus.count()).filter(|&c| c != here && smp::is_online(c)).take(MAX_WORKERS).collect();
    ensure!(!cpus.is_empty(), "no other vCPU online");
    WORKERS.store(cpus.len() as u64, Ordering::Release);
    let mut workers: heapless::Vec<remote::RemoteTask, MAX_WORKERS> = heapless::Vec::new();
    for (n, &cpu) in cpus.iter().enumerate() {
        ROUNDS[n].store(0, Ordering::SeqCst);
        let placed = remote::spawn_kernel_on(cpu, "memslot-worker", worker, n as u64)
            .map_err(|e| fail(format_args!("placing a worker on vCPU {cpu}: {e:?}")));
        match placed {
            Ok(task) => {
                let _ = workers.push(task);
            }
            Err(e) => {
                STOP.store(true, Ordering::SeqCst);
                for w in workers {
                    let _ = w.join();
                }
                return Err(e);
            }
        }
    }
    let outcome = steps(workers.len());
    STOP.store(true, Ordering::SeqCst);
    let mut rounds: heapless::Vec<u64, MAX_WORKERS> = heapless::Vec::new();
    for w in workers {
        let _ = rounds.push(w.join().map_err(|e| fail(format_args!("a worker: {e:?}")))?);
    }
    let window_exits = outcome?;
    let wrong = WRONG_AT.load(Ordering::SeqCst);
    ensure!(wrong == 0, "a worker read a wrong value at {wrong:#x} (rounds {rounds:?})");
    kprintln!(
        "memslot: {STEPS} changes under {} workers (rounds {rounds:?}); {window_exits} exits hit a change's window; the dirty log listed exactly the pages written",
        rounds.len()
    );
    Ok(())
}

/// The changes, with the workers running: how many exits hit a change's window.
fn steps(workers: usize) -> Result<u64, Failure> {
    wait_until(|| STARTED.load(Ordering::SeqCst) == workers as u64);
    let [updates_before, windows_before] = call(Nr::LayoutStats, [0; 4])?;
    for step in 0..STEPS {
        let merge = step % 2 == 1;
        if merge {
            // Every worker writes its whole slice again after the split: the log must show it.
            let seen: heapless::Vec<u64, MAX_WORKERS> =
                (0..workers).map(|n| ROUNDS[n].load(Ordering::Acquire)).collect();
            wait_until(|| (0..workers).all(|n| ROUNDS[n].load(Ordering::Acquire) >= seen[n] + 2));
        }
        call(Nr::LayoutStep, [LayoutStepKind::SplitOrMerge as u64, 0, 0, 0])?;
        ensure!(WRONG_AT.load(Ordering::SeqCst) == 0, "a worker saw a wrong value (step {step})");
        if merge {
            let first_page = layout::CHURN_REGION_SPLIT / 0x1000;
            let data_workers = if workers > 1 { workers - 1 } else { workers };
            let written = data_workers as u64 * SLICE / 0x1000;
            for page in first_page..first_page + written {
                let [logged, _] = call(Nr::LayoutDirty, [page, 0, 0, 0])?;
                ensure_eq!(logged, 1, "page {page} of the churn region (written since the split) in the dirty log");
            }
            let [_, total] = call(Nr::LayoutDirty, [first_page, 0, 0, 0])?;
            // Every written page is logged (checked above), so `total >= written`. No other may
            // be: the test maps the region with 4 KiB pages and touches no page of this half
            // outside the workers' slices, which each worker both reads and writes, so no page is
            // logged for sharing a large guest page with a written one or for being only read. A
            // log listing more (every page, say) is wrong.
            let extra = total - written;
            ensure!(
                extra == 0,
                "the dirty log lists {total} pages of the churn region's upper half, {written} written: {extra} never touched"
            );
        }
    }
    let [updates_after, windows_after] = call(Nr::LayoutStats, [0; 4])?;
    ensure!(updates_after - updates_before >= STEPS, "the host made {} changes", updates_after - updates_before);
    Ok(windows_after - windows_before)
}

/// The host hot-adds a region while the guest runs and announces it; the guest finds it, maps it
/// where it lies (outside its boot map), reads what the host put there and writes its own; the
/// host moves it with its memory to another place, where the guest maps and reads it again, and
/// moves it back, where the guest finds its data still.
fn a_hot_added_region_is_found_mapped_used_and_moved() -> TestResult {
    find(RegionKind::Churn, "the host offers no churn region (the host stub's --layout-churn)")?;
    let before = count_of(RegionKind::HotAdded)?;
    call(Nr::LayoutStep, [LayoutStepKind::HotAdd as u64, 0, 0, 0])?;
    ensure_eq!(count_of(RegionKind::HotAdded)?, before + 1, "hot-added regions announced");
    let (index, gpa, bytes) = nth(RegionKind::HotAdded, before)?;
    map_once(gpa, bytes, false)?;
    let word = gpa + 0x1238;
    ensure_eq_hex!(read(word), layout::fill_value(word), "a word of the new region");
    write(word, !layout::fill_value(word));
    // Moves the host cannot make are refused (status 2) and leave the region where it was:
    // past the end of the address space, not 2 MiB aligned, above any physical address, onto
    // the released region (a memslot the host's layout does not manage).
    let released = find(RegionKind::ReleasedBacking, "").ok().map(|(_, g, _)| g);
    for bad in [0xFFFF_FFFF_FFE0_0000, gpa + 0x1000, 1 << 62].into_iter().chain(released) {
        match hypercall::call(Nr::LayoutStep, [LayoutStepKind::Move as u64, index, bad, 0]) {
            Err(HypercallError::Status(Status::InvalidArgument)) => {}
            other => return Err(fail(format_args!("a move to {bad:#x}: {other:?}, not status 2"))),
        }
        ensure_eq_hex!(nth(RegionKind::HotAdded, before)?.1, gpa, "where the region is after a refused move");
        ensure_eq_hex!(read(word), !layout::fill_value(word), "the word written, after a refused move");
    }
    // Moved 32 MiB on (the host keeps 2 MiB steps), with its memory.
    let to = gpa + bytes.next_multiple_of(2 << 20) * 16;
    call(Nr::LayoutStep, [LayoutStepKind::Move as u64, index, to, 0])?;
    let (_, moved, _) = nth(RegionKind::HotAdded, before)?;
    ensure_eq_hex!(moved, to, "where the host says the region is now");
    map_once(to, bytes, false)?;
    let there = to + (word - gpa);
    ensure_eq_hex!(read(there), !layout::fill_value(word), "the word written, at the region's new place");
    ensure_eq_hex!(read(there + 8), layout::fill_value(word + 8), "its neighbour, at the new place");
    call(Nr::LayoutStep, [LayoutStepKind::Move as u64, index, gpa, 0])?;
    ensure_eq_hex!(read(word), !layout::fill_value(word), "the word written, back at the old place");
    Ok(())
}

/// How many regions of `kind` are announced.
fn count_of(kind: RegionKind) -> Result<u64, Failure> {
    let mut count = 0;
    for index in 0.. {
        match announced(index)? {
            Some((_, _, k)) if k == kind as u8 => count += 1,
            Some(_) => {}
            None => break,
        }
    }
    Ok(count)
}

/// The `n`-th announced region of `kind`: `(index, gpa, bytes)`.
fn nth(kind: RegionKind, n: u64) -> Result<(u64, u64, u64), Failure> {
    let mut seen = 0;
    for index in 0.. {
        match announced(index)? {
            Some((gpa, bytes, k)) if k == kind as u8 => {
                if seen == n {
                    return Ok((index, gpa, bytes));
                }
                seen += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    Err(fail(format_args!("no {kind:?} region number {n}")))
}

fn read(gpa: u64) -> u64 {
    // SAFETY: callers pass an 8-byte-aligned address of an announced region the test mapped;
    // volatile, as the host owns its memory.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

fn write(gpa: u64, value: u64) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, value) }
}
