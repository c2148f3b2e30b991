//! TLB shootdowns: after a page-table entry is removed or narrowed, every vCPU that may have
//! cached the old translation drops it (INVLPG) before the change counts as done.
//!
//! Adding a mapping needs none (x86 caches no not-present entry, so a vCPU that never saw the
//! page present has nothing stale), which is why the boot-time and on-demand mappings (task
//! stacks, firmware tables, the host's pages) never shoot down. Removing one does: the vCPU that
//! changes the tables flushes its own TLB, sends the others an IPI ([`SHOOTDOWN_VECTOR`]) whose
//! handler flushes theirs and acknowledges, and waits for every acknowledgement, an event (each
//! vCPU takes the IPI as soon as its interrupts are on). One shootdown is in flight at a time;
//! a second initiator waits with interrupts on, so it keeps serving the first one's IPI.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::percpu::{self, CpuLocal, MAX_CPUS};
use super::{apic, smp, trap};

/// The vector of the shootdown IPI.
pub const SHOOTDOWN_VECTOR: u8 = 0xF2;
const _: () = assert!(SHOOTDOWN_VECTOR != smp::WAKE_VECTOR);

/// Above this many pages a flush reloads CR3 (the whole TLB but global pages) instead of one
/// INVLPG per page.
const INVLPG_MAX_PAGES: u64 = 32;

static BUSY: AtomicBool = AtomicBool::new(false);
static START: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);
/// Bit per vCPU that has not flushed yet.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Shootdown IPIs each vCPU handled (for the self-tests).
static HANDLED: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// The range each vCPU's handler last flushed, `[start, end)` (for the self-tests: on a host
/// whose TLB forgets by itself, the one thing they can check about a remote flush).
static FLUSHED: CpuLocal<[AtomicU64; 2]> = CpuLocal::new([const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_CPUS]);

/// Registers the IPI's handler (`smp::start_aps`, before any AP runs).
pub(super) fn init() {
    trap::register(SHOOTDOWN_VECTOR, on_shootdown);
}

/// Shootdown IPIs vCPU `cpu` has handled.
pub fn handled_by(cpu: usize) -> u64 {
    HANDLED.of(cpu).load(Ordering::Relaxed)
}

/// The range vCPU `cpu`'s shootdown handler last flushed, `(start, end)`; `(0, 0)` before its
/// first.
pub fn last_flushed_by(cpu: usize) -> (u64, u64) {
    let [start, end] = FLUSHED.of(cpu);
    (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed))
}

fn flush_local(start: u64, end: u64) {
    let pages = end.saturating_sub(start).div_ceil(4096);
    if pages > INVLPG_MAX_PAGES {
        x86_64::instructions::tlb::flush_all();
        return;
    }
    for page in 0..pages {
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(start + page * 4096));
    }
}

fn on_shootdown(_frame: &mut trap::TrapFrame) {
    let (start, end) = (START.load(Ordering::Acquire), END.load(Ordering::Acquire));
    flush_local(start, end);
    let cpu = percpu::index();
    let [flushed_start, flushed_end] = FLUSHED.get();
    flushed_start.store(start, Ordering::Relaxed);
    flushed_end.store(end, Ordering::Relaxed);
    HANDLED.get().fetch_add(1, Ordering::Relaxed);
    PENDING.fetch_and(!(1 << cpu), Ordering::AcqRel);
    apic::eoi();
}

/// Drops `[start, end)` from every online vCPU's TLB, this one's first, and returns once every
/// other vCPU has. Call with interrupts enabled (from a task): two vCPUs shooting down at once
/// each need the other to take its IPI.
pub fn shootdown(start: u64, end: u64) {
    flush_local(start, end);
    let me = percpu::index();
    let cpus = &super::platform().cpus;
    let others: u32 = (0..cpus.count()).filter(|&cpu| cpu != me && smp::is_online(cpu)).fold(0, |m, c| m | 1 << c);
    if others == 0 {
        return;
    }
    assert!(x86_64::instructions::interrupts::are_enabled(), "a TLB shootdown with interrupts off could deadlock");
    while BUSY.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    START.store(start, Ordering::Release);
    END.store(end, Ordering::Release);
    PENDING.store(others, Ordering::Release);
    for cpu in 0..cpus.count() {
        if others & (1 << cpu) != 0
            && let Some(apic_id) = cpus.apic_id(cpu)
        {
            apic::send_fixed_ipi(apic_id, SHOOTDOWN_VECTOR);
        }
    }
    while PENDING.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    BUSY.store(false, Ordering::Release);
}
