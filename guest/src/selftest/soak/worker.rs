//! One soak worker: a kernel task placed on a vCPU that owns a few pages of the demand region
//! and does a seeded random series of operations on them (reads at CPL 0 and CPL 3, reads with
//! interrupts off, writes, evictions, a page resolved before its event, split locks), checking
//! every word it reads against what it knows the page must hold.
//!
//! What the guest can know about a page's version: the host makes a page present once per
//! fetch and stamps its version (`versioned_header`); only the page's owner touches or evicts
//! it, so the owner knows whether the page is present, and its next access after an eviction
//! that the host accepted must find the version one higher. An eviction the host refuses (the
//! page's fetch is still in flight: on PVM a CPL 0 access completes from the fetch's copy
//! before the page is in) leaves the page present, with the version that access saw. Words 2
//! and up hold the backing pattern, or the last value the owner wrote there (the host keeps an
//! evicted page's contents).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::pnp::{PageBehaviour, backing_pattern, versioned_header};
use pvagent_abi::sld;

use super::{Rng, fail_first};
use crate::arch::percpu;
use crate::pv::{ac, pnp};
use crate::sync::IrqGuard;
use crate::task::table::ExitStatus;
use crate::task::{self, user};

/// Pages each worker owns.
pub const PAGES: usize = 8;
/// Words of a page the owner remembers having written (a later write goes to one of them).
const WRITES: usize = 8;
/// The most workers (two per vCPU).
pub const MAX_WORKERS: usize = 2 * crate::arch::MAX_CPUS;

/// What the owner knows of one page.
#[derive(Clone, Copy, Debug, Default)]
struct Page {
    /// The version the page has (0: never fetched).
    version: u64,
    /// Whether the page is present (no eviction since its last access).
    present: bool,
    /// Words written: (index, value).
    writes: [(u16, u64); WRITES],
    written: usize,
}

/// One worker's pages and tallies, kept from round to round.
#[derive(Debug)]
pub struct Worker {
    /// The first of its pages (consecutive).
    pub base: u64,
    pages: [Page; PAGES],
    /// A dword crossing two cache lines, its own, for split locks.
    lines: Lines,
}

#[repr(C, align(64))]
#[derive(Debug)]
struct Lines([u8; 128]);

/// Offset of the dword in [`Lines`] that crosses the line boundary.
const SPLIT: usize = 62;

impl Worker {
    pub const fn new() -> Self {
        Worker {
            base: 0,
            pages: [Page { version: 0, present: false, writes: [(0, 0); WRITES], written: 0 }; PAGES],
            lines: Lines([0; 128]),
        }
    }
}

/// Operations done, by kind, over every worker (the soak's report and its check of the #AC
/// count).
pub struct Ops {
    pub kernel_reads: AtomicU64,
    pub user_reads: AtomicU64,
    pub irqs_off_reads: AtomicU64,
    pub writes: AtomicU64,
    pub evictions: AtomicU64,
    pub evictions_refused: AtomicU64,
    pub evictions_of_absent: AtomicU64,
    pub immediate: AtomicU64,
    pub split_locks: AtomicU64,
    /// Split locks made with detection on: each must have raised one #AC.
    pub split_locks_detected: AtomicU64,
}

pub static OPS: Ops = Ops {
    kernel_reads: AtomicU64::new(0),
    user_reads: AtomicU64::new(0),
    irqs_off_reads: AtomicU64::new(0),
    writes: AtomicU64::new(0),
    evictions: AtomicU64::new(0),
    evictions_refused: AtomicU64::new(0),
    evictions_of_absent: AtomicU64::new(0),
    immediate: AtomicU64::new(0),
    split_locks: AtomicU64::new(0),
    split_locks_detected: AtomicU64::new(0),
};

impl Ops {
    /// Every count back to 0, for a new storm.
    pub fn reset(&self) {
        for c in [
            &self.kernel_reads,
            &self.user_reads,
            &self.irqs_off_reads,
            &self.writes,
            &self.evictions,
            &self.evictions_refused,
            &self.evictions_of_absent,
            &self.immediate,
            &self.split_locks,
            &self.split_locks_detected,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Every worker's state: worker `i` locks only its own, once per round.
pub static WORKERS: [spin::Mutex<Worker>; MAX_WORKERS] = [const { spin::Mutex::new(Worker::new()) }; MAX_WORKERS];

/// What one round asks of a worker, packed into the task's argument.
#[derive(Clone, Copy, Debug)]
pub struct Orders {
    pub worker: usize,
    pub ops: u64,
    /// Split locks are in the mix (the trigger, detection and the host's default policy).
    pub split_locks: bool,
    /// The round's seed (the worker's own stream is drawn from it and its index).
    pub seed: u32,
}

impl Orders {
    pub fn pack(self) -> u64 {
        (self.worker as u64) | (self.ops << 8) | (u64::from(self.split_locks) << 31) | (u64::from(self.seed) << 32)
    }

    fn unpack(arg: u64) -> Self {
        Orders {
            worker: (arg & 0xFF) as usize,
            ops: (arg >> 8) & 0x3F_FFFF,
            split_locks: arg & (1 << 31) != 0,
            seed: (arg >> 32) as u32,
        }
    }
}

/// The task: does its orders on its worker's pages; 0 when every check held, 1 after the first
/// that did not (recorded by [`fail_first`]).
pub fn run(arg: u64) -> u64 {
    let orders = Orders::unpack(arg);
    let mut rng = Rng::new((u64::from(orders.seed) << 16) ^ orders.worker as u64);
    let Some(mut worker) = WORKERS[orders.worker].try_lock() else {
        fail_first(format_args!("worker {}'s state is held by another task", orders.worker));
        return 1;
    };
    for _ in 0..orders.ops {
        if step(&mut worker, &mut rng, orders).is_err() {
            return 1;
        }
        // Now and then another task of this vCPU runs (and detection comes back after a split
        // lock under `warn`).
        if rng.below(4) == 0 {
            task::yield_now();
        }
    }
    0
}

/// One random operation on one random page.
fn step(worker: &mut Worker, rng: &mut Rng, orders: Orders) -> Result<(), ()> {
    let index = rng.below(PAGES as u64) as usize;
    let gpa = worker.base + index as u64 * 4096;
    let who = (orders.worker, gpa);
    match rng.below(100) {
        0..30 => {
            let word = 2 + rng.below(510);
            let got = read(gpa + word * 8, false);
            OPS.kernel_reads.fetch_add(1, Ordering::Relaxed);
            check(&mut worker.pages[index], who, word, got, "a CPL 0 read")
        }
        30..35 => {
            let word = 2 + rng.below(510);
            let got = read(gpa + word * 8, true);
            OPS.irqs_off_reads.fetch_add(1, Ordering::Relaxed);
            check(&mut worker.pages[index], who, word, got, "a CPL 0 read with interrupts off")
        }
        35..55 => {
            let word = 2 + rng.below(510);
            let page = &mut worker.pages[index];
            let got = user_read(gpa, word, who)?;
            OPS.user_reads.fetch_add(1, Ordering::Relaxed);
            // The task folded the version and the word together; the page is present now.
            let version = expected_version(page);
            let expected = version ^ expected_word(page, gpa, word).rotate_left(1);
            if got != expected {
                fail_first(format_args!(
                    "worker {} page {gpa:#x}: a CPL 3 read of the version and word {word} folded to {got:#x}, expected {expected:#x} (version {version}, word 1 now {:#x})",
                    orders.worker,
                    read(gpa + 8, false)
                ));
                return Err(());
            }
            accessed(page, version);
            check(page, who, word, read(gpa + word * 8, false), "a CPL 0 read after a CPL 3 read")
        }
        55..70 => {
            let page = &mut worker.pages[index];
            let mut word = 2 + rng.below(510) as u16;
            if page.written == WRITES && !page.writes.iter().any(|(w, _)| *w == word) {
                // Every slot is taken: write over a word written before, so all stay known.
                word = page.writes[rng.below(WRITES as u64) as usize].0;
            }
            let value = rng.next();
            // The write is an access like a read: the page comes in first, with its version.
            let version = expected_version(page);
            write(gpa + u64::from(word) * 8, value);
            accessed(page, version);
            remember(page, word, value);
            OPS.writes.fetch_add(1, Ordering::Relaxed);
            check(page, who, u64::from(word), read(gpa + u64::from(word) * 8, false), "a read after a write")
        }
        70..92 => evict(&mut worker.pages[index], who, rng),
        _ if orders.split_locks => split_lock(&mut worker.lines, orders.worker),
        _ => {
            let word = 2 + rng.below(510);
            let got = read(gpa + word * 8, false);
            OPS.kernel_reads.fetch_add(1, Ordering::Relaxed);
            check(&mut worker.pages[index], who, word, got, "a CPL 0 read")
        }
    }
}

/// The version the page has once it is accessed: the next one if it is absent.
fn expected_version(page: &Page) -> u64 {
    if page.present { page.version } else { page.version + 1 }
}

/// The page was accessed: present, with `version`.
fn accessed(page: &mut Page, version: u64) {
    page.version = version;
    page.present = true;
}

/// What word `word` of the page must hold (2 and up).
fn expected_word(page: &Page, gpa: u64, word: u64) -> u64 {
    page.writes[..page.written]
        .iter()
        .find(|(w, _)| u64::from(*w) == word)
        .map_or(backing_pattern(gpa + word * 8), |&(_, value)| value)
}

/// Checks the page's header and the word `word` read as `got` by the access `what` (which made
/// the page present); records the first mismatch.
fn check(page: &mut Page, (worker, gpa): (usize, u64), word: u64, got: u64, what: &str) -> Result<(), ()> {
    let version = expected_version(page);
    accessed(page, version);
    let header = [read(gpa, false), read(gpa + 8, false)];
    let expected_header = versioned_header(gpa, version);
    if header != expected_header {
        fail_first(format_args!(
            "worker {worker} page {gpa:#x} after {what}: header [{:#x}, {}], expected [{:#x}, {}] (its address, version)",
            header[0], header[1], expected_header[0], expected_header[1]
        ));
        return Err(());
    }
    let expected = expected_word(page, gpa, word);
    if got != expected {
        fail_first(format_args!(
            "worker {worker} page {gpa:#x} version {version}: word {word} read {got:#x} by {what}, expected {expected:#x}"
        ));
        return Err(());
    }
    Ok(())
}

/// Records a write: a word written before keeps its slot, a new one takes a free slot (the
/// caller writes a new word only while one is free).
fn remember(page: &mut Page, word: u16, value: u64) {
    if let Some(slot) = page.writes[..page.written].iter_mut().find(|(w, _)| *w == word) {
        slot.1 = value;
    } else if page.written < WRITES {
        page.writes[page.written] = (word, value);
        page.written += 1;
    }
}

/// Evicts the page (now and then asking the host to resolve its next fetch before its event).
fn evict(page: &mut Page, (worker, gpa): (usize, u64), rng: &mut Rng) -> Result<(), ()> {
    match pnp::evict(gpa, 1) {
        // An absent page evicted again stays absent: only a present one counts as an eviction.
        Ok(()) => {
            let counted = if page.present { &OPS.evictions } else { &OPS.evictions_of_absent };
            counted.fetch_add(1, Ordering::Relaxed);
            page.present = false;
        }
        // Refused as a whole: the page is being fetched (a CPL 0 access completed before it
        // was in). It stays present, with the version that access saw.
        Err(crate::arch::hypercall::HypercallError::Status(_)) if page.present => {
            OPS.evictions_refused.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            fail_first(format_args!("worker {worker}: evicting page {gpa:#x}: {e:?}"));
            return Err(());
        }
    }
    if rng.below(4) == 0 && !page.present {
        if let Err(e) = pnp::set_page_behaviour(gpa, PageBehaviour::Immediate) {
            fail_first(format_args!("worker {worker}: page {gpa:#x} immediate: {e:?}"));
            return Err(());
        }
        OPS.immediate.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

global_asm!(
    r#"
    .pushsection .text.soak, "ax"
    # (rdi = address) the split-lock trigger, then `lock add dword ptr [rdi], 1`.
    .global soak_kernel_split_lock
soak_kernel_split_lock:
    mov r11, {trigger}
    mov byte ptr [r11], 0           # the host decides on the next instruction
    lock add dword ptr [rdi], 1
    ret
    .popsection
"#,
    trigger = const sld::TRIGGER_GPA,
);

// SAFETY: defined above with this signature.
unsafe extern "sysv64" {
    fn soak_kernel_split_lock(addr: u64);
}

/// A kernel split lock on the worker's own dword, with interrupts off so that this vCPU's
/// detection cannot change between the look and the instruction: with detection on it raises
/// one #AC (counted for the soak's check), and the add happens once either way.
fn split_lock(lines: &mut Lines, worker: usize) -> Result<(), ()> {
    let at = core::ptr::addr_of_mut!(lines.0[SPLIT]);
    // SAFETY: four bytes inside this worker's own buffer.
    let before = unsafe { core::ptr::read_unaligned(at.cast::<u32>()) };
    let detected = {
        let _irq = IrqGuard::new();
        let on = ac::detection_in_msr() == Some(true);
        // SAFETY: the dword is this worker's; the trigger page is mapped (the soak checked the
        // trigger is available before it asked for split locks).
        unsafe { soak_kernel_split_lock(at as u64) };
        on
    };
    // SAFETY: as above.
    let after = unsafe { core::ptr::read_unaligned(at.cast::<u32>()) };
    OPS.split_locks.fetch_add(1, Ordering::Relaxed);
    OPS.split_locks_detected.fetch_add(u64::from(detected), Ordering::Relaxed);
    if after != before.wrapping_add(1) {
        fail_first(format_args!(
            "worker {worker} on vCPU {}: a split locked add made {before:#x} {after:#x}",
            percpu::index()
        ));
        return Err(());
    }
    Ok(())
}

fn read(gpa: u64, interrupts_off: bool) -> u64 {
    let _irq = interrupts_off.then(IrqGuard::new);
    // SAFETY: `gpa` is in the demand region, identity mapped for the kernel, in a page this
    // worker owns; the load is what makes the host page it in.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

fn write(gpa: u64, value: u64) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, value) }
}

/// Reads the version and word `word` of the page at `gpa` in a CPL 3 task, which folds them
/// into its exit value.
fn user_read(gpa: u64, word: u64, (worker, _): (usize, u64)) -> Result<u64, ()> {
    match task::spawn_user("soak-user", user_fold, gpa | word).map(task::join) {
        Ok(Ok(ExitStatus::Returned(value))) => Ok(value),
        other => {
            fail_first(format_args!("worker {worker}: the CPL 3 reader of page {gpa:#x} ended with {other:?}"));
            Err(())
        }
    }
}

/// CPL 3: `arg` is a page's address with a word index in its low bits; exits with the page's
/// version (word 1) XOR the word rotated left by one.
#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_fold(arg: u64) -> ! {
    let (page, word) = (arg & !0xFFF, arg & 0xFFF);
    let version = user::read_u64(page + 8);
    let value = user::read_u64(page + word * 8);
    user::exit(version ^ value.rotate_left(1))
}
