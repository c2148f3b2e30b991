//! Changing guest memory while vCPUs run (seed 003): add, remove, move, resize, change flags,
//! split, merge, replace backing, made atomic as the guest sees it.
//!
//! KVM offers only delete-then-create for most of these, so a vCPU running meanwhile can touch an
//! address with no memslot and exit (`KVM_EXIT_MMIO`, or an emulation failure for code), which a
//! VMM cannot tell from a guest gone astray. [`LayoutHandle::update`] with [`Hold::Vcpus`] brings
//! every vCPU out of KVM_RUN and keeps it out (`hold`), carries out the memslot operations
//! (`table` plans them), and lets the vCPUs go on; it measures how long they were held. With
//! [`Hold::Nothing`], the diagnostic mode, it makes the same change without holding anyone, to
//! reproduce the race: it records each window (`classify::Windows`), and the run loop classifies
//! the exits that hit one (`classify`) and completes or retries them.

mod access;
pub mod classify;
pub mod hold;
pub mod table;

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::layout::{RegionKind, size_and_kind};

use self::classify::{MemoryState, RunSpan, Verdict, Windows};
use self::table::{Layout, Plan, Region, SlotOp, Update};
use crate::error::{Error, Result};
use crate::handler::{ExitHandler, HypercallAnswer, Report, VcpuCtx};
use crate::watchdog::VcpuThreads;

/// Whether an update holds the vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Every vCPU out of KVM_RUN for the update: atomic as the guest sees it.
    Vcpus,
    /// Nobody held (diagnostic): the guest may see the window.
    Nothing,
}

/// What one update cost.
#[derive(Clone, Debug)]
pub struct Applied {
    /// How long the vCPUs were held ([`Hold::Vcpus`]): from the request to their release.
    pub hold: Option<Duration>,
    /// Of that, how long they took to come out of KVM_RUN.
    pub stopping: Option<Duration>,
    /// How long the memslot operations took (the window, when nobody is held).
    pub operations: Duration,
    /// Addresses that were memory before and after but had no memslot for a while.
    pub window: Vec<Range<u64>>,
    /// A lingering update ([`LayoutHandle::update_lingering`]): whether a vCPU hit its window.
    pub hit: bool,
}

/// How long a lingering update keeps its window open at most for a vCPU to hit it: far longer
/// than a vCPU that touches the memory takes on a loaded machine, so that only a guest that
/// does not touch it makes the update give up (and say so) instead of waiting for good.
pub const LINGER_BOUND: Duration = Duration::from_secs(30);

/// The run's record of updates, for the report.
#[derive(Debug, Default)]
struct Record {
    held: Vec<Duration>,
    stopping: Vec<Duration>,
    /// The memslot operations of the held updates.
    operations: Vec<Duration>,
    unheld: u64,
    update_window: u64,
    /// Of those, instruction fetches (emulation failures).
    update_window_code: u64,
    absent_page: u64,
    guest_error: u64,
}

#[derive(Debug)]
struct Shared {
    /// Whether any update ran (the run loop classifies exits at guest memory from then on).
    updated: std::sync::atomic::AtomicBool,
    vm: Arc<VmFd>,
    threads: Arc<VcpuThreads>,
    /// Held for a whole update: updates take turns.
    updating: Mutex<()>,
    table: Mutex<Layout>,
    windows: Windows,
    record: Mutex<Record>,
    /// The regions announced to the guest (`Nr::LayoutRegion`), by index.
    announced: Mutex<Vec<(u64, u64, RegionKind)>>,
    /// Pages (GPA / 4 KiB) of dirty-logged regions the host wrote itself (`complete_access`):
    /// KVM's log records only the guest's writes, so [`LayoutHandle::dirty_log`] adds these.
    host_dirty: Mutex<Vec<u64>>,
}

/// The run's memory layout, shared by whoever changes it (any thread, a handler's after-exit
/// work included) and by the vCPU loops that classify exits. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LayoutHandle(Arc<Shared>);

/// How often a wait for another thread's event (a vCPU hitting a window, a window closing)
/// checks whether the run ended, which has no event of its own for those waits: the run's time
/// limit then holds within this.
const STOP_CHECK: Duration = Duration::from_millis(20);

fn hold_error(e: hold::HoldTimedOut) -> Error {
    if e.stopped { Error::LayoutHoldEnded { in_guest: e.in_guest } } else { Error::LayoutHold { in_guest: e.in_guest } }
}

/// The page size of KVM's dirty log.
const PAGE: u64 = 0x1000;

/// The slot numbers the layout gives new slots: far above those the VM and the producers take
/// at setup (`AttachCtx::take_slot`), below KVM's limit of 32764 user slots.
pub const FIRST_LAYOUT_SLOT: u32 = 0x100;

impl LayoutHandle {
    pub(crate) fn new(vm: Arc<VmFd>, threads: Arc<VcpuThreads>, table: Layout) -> Self {
        Self(Arc::new(Shared {
            updated: std::sync::atomic::AtomicBool::new(false),
            vm,
            threads,
            updating: Mutex::new(()),
            table: Mutex::new(table),
            windows: Windows::default(),
            record: Mutex::default(),
            announced: Mutex::default(),
            host_dirty: Mutex::default(),
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Layout> {
        self.0.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every vCPU out of KVM_RUN until the guard is dropped, for a change of the caller's
    /// own that the guest must not see half-done (copying memory before a
    /// [`Update::ReplaceBacking`], say). Not to be mixed with [`LayoutHandle::update`] on the
    /// same thread while held (updates take the hold themselves).
    pub fn hold(&self) -> Result<hold::Held<'_>> {
        self.0.threads.gate.hold(&self.0.threads).map_err(hold_error)
    }

    /// Whether an update holds the vCPUs right now.
    pub fn holding(&self) -> bool {
        self.0.threads.gate.is_closed()
    }

    /// Whether a hold (an update's or [`LayoutHandle::hold`]'s) is waiting for a vCPU that is
    /// still inside KVM_RUN: the gate is closed and it has not got every vCPU out yet.
    pub fn waiting_for_vcpus(&self) -> bool {
        self.0.threads.gate.is_waiting()
    }

    /// Every region now.
    pub fn regions(&self) -> Vec<Region> {
        self.table().slots().map(|(_, r)| r.clone()).collect()
    }

    /// The region holding `gpa` now, and its slot.
    pub fn find(&self, gpa: u64) -> Option<(u32, Region)> {
        self.table().find(gpa).map(|(slot, r)| (slot, r.clone()))
    }

    /// Makes `update`. Updates take turns; with [`Hold::Vcpus`] no vCPU runs between the first
    /// memslot operation and the last. An error leaves KVM's slots part-way when an operation
    /// failed (the table is then not changed): the run should stop.
    pub fn update(&self, update: &Update, hold: Hold) -> Result<Applied> {
        self.apply(update, hold, false)
    }

    /// The diagnostic mode's update that reproduces the race by construction: like
    /// [`Hold::Nothing`], but it keeps the window open (after the deletes, before the creates)
    /// until a vCPU's exit was classified as hitting it, or [`LINGER_BOUND`] passed. Whether it
    /// was hit is in [`Applied::hit`].
    pub fn update_lingering(&self, update: &Update) -> Result<Applied> {
        self.apply(update, Hold::Nothing, true)
    }

    /// Records a memslot a producer created itself at setup (the demand pager's region), so
    /// that updates may change it too; its slot number must be below [`FIRST_LAYOUT_SLOT`].
    pub fn adopt(&self, slot: u32, region: Region) {
        self.table().adopt(slot, region);
    }

    /// Records a memslot a producer created itself and the layout does not manage (the released
    /// region's guest_memfd slot): no update may put a region over it.
    pub fn add_foreign(&self, range: Range<u64>) {
        self.table().add_foreign(range);
    }

    /// Adds `region` before the guest runs (no vCPU can see a window; not counted as an update).
    pub fn add_before_run(&self, region: Region) -> Result<()> {
        let mut table = self.table();
        let plan = table.plan(&Update::Add(region)).map_err(Error::Layout)?;
        self.carry_out(&plan.ops, None).map_err(|(done, e)| self.undo(&plan.ops[..done], &table, e))?;
        *table = plan.after;
        Ok(())
    }

    /// Announces a region to the guest at the next index (`Nr::LayoutRegion`).
    pub fn announce(&self, gpa: u64, bytes: u64, kind: RegionKind) -> u64 {
        let mut announced = self.0.announced.lock().unwrap_or_else(|p| p.into_inner());
        announced.push((gpa, bytes, kind));
        announced.len() as u64 - 1
    }

    /// The region announced with `index`, where it is now.
    pub fn announced(&self, index: u64) -> Option<(u64, u64, RegionKind)> {
        self.0.announced.lock().unwrap_or_else(|p| p.into_inner()).get(index as usize).copied()
    }

    /// Records that the region announced with `index` moved to `gpa`.
    pub fn announce_moved(&self, index: u64, gpa: u64) {
        if let Some(entry) = self.0.announced.lock().unwrap_or_else(|p| p.into_inner()).get_mut(index as usize) {
            entry.0 = gpa;
        }
    }

    fn apply(&self, update: &Update, hold: Hold, linger: bool) -> Result<Applied> {
        // One update at a time; the table itself is locked only to plan and to install, so that
        // a vCPU classifying an exit meanwhile (it reads the table) never waits for an update,
        // which may be waiting for that very exit (`update_lingering`).
        let _one_update = self.0.updating.lock().unwrap_or_else(|p| p.into_inner());
        let (Plan { ops, after, window: ranges }, before) = {
            let table = self.table();
            (table.plan(update).map_err(Error::Layout)?, table.clone())
        };
        self.0.updated.store(true, std::sync::atomic::Ordering::Release);
        let held = match hold {
            Hold::Vcpus => Some(self.0.threads.gate.hold(&self.0.threads).map_err(hold_error)?),
            Hold::Nothing => None,
        };
        // Held updates record their window too: no vCPU's KVM_RUN can overlap it while the hold
        // works (a vCPU reads the generation inside the gate), so an exit that does is a race
        // exit whatever the pager says of the page, and fails a held run.
        let window = (!ranges.is_empty()).then(|| self.0.windows.open(ranges.clone()));
        let started = Instant::now();
        let outcome = self.carry_out(&ops, window.filter(|_| linger));
        let outcome = outcome.map_err(|(done, e)| self.undo(&ops[..done], &before, e));
        let operations = started.elapsed();
        // The new table is in place before the window closes: an access completed after the
        // close (`complete_access`) goes to the new layout.
        if outcome.is_ok() {
            *self.table() = after;
        }
        if let Some(index) = window {
            self.0.windows.close(index);
        }
        let (hold_time, stopping) = match held {
            Some(h) => {
                let stopping = h.stopping;
                (Some(h.release()), Some(stopping))
            }
            None => (None, None),
        };
        let hit = outcome?;
        let mut record = self.record();
        match (hold_time, stopping) {
            (Some(h), Some(s)) => {
                record.held.push(h);
                record.stopping.push(s);
                record.operations.push(operations);
            }
            _ => record.unheld += 1,
        }
        Ok(Applied { hold: hold_time, stopping, operations, window: ranges, hit })
    }

    /// Carries `ops` out; with `linger` (the update's window), waits for an exit in that window
    /// right before the first create that follows a delete, and says whether one came. On a
    /// failure: how many operations were done, and the error.
    fn carry_out(&self, ops: &[SlotOp], linger: Option<usize>) -> std::result::Result<bool, (usize, Error)> {
        let mut deleted = false;
        let mut hit = false;
        for (done, op) in ops.iter().enumerate() {
            match op {
                SlotOp::Delete { .. } => deleted = true,
                SlotOp::Create { .. } if deleted && let Some(window) = linger => {
                    hit = self.0.windows.wait_hit(window, LINGER_BOUND, STOP_CHECK, || self.0.threads.stopping());
                    deleted = false;
                }
                _ => {}
            }
            let (slot, desc) = match op {
                SlotOp::Delete { slot } => (*slot, kvm_userspace_memory_region { slot: *slot, ..Default::default() }),
                SlotOp::Create { slot, region } | SlotOp::SetFlags { slot, region } => (
                    *slot,
                    kvm_userspace_memory_region {
                        slot: *slot,
                        flags: region.flags,
                        guest_phys_addr: region.gpa,
                        memory_size: region.bytes,
                        userspace_addr: region.backing.host(),
                    },
                ),
            };
            self.set_slot(slot, desc).map_err(|e| (done, e))?;
        }
        Ok(hit)
    }

    fn set_slot(&self, slot: u32, desc: kvm_userspace_memory_region) -> Result<()> {
        // SAFETY: a region's backing stays mapped while the region is in a table (`Backing::new`'s
        // contract), and a deleted slot's is dropped only after KVM let go of it (`apply` keeps
        // the old table until the update is done).
        unsafe { self.0.vm.set_user_memory_region(desc) }.map_err(|e| Error::SetMemoryRegion(slot, e))
    }

    /// Undoes `done`, the operations of an update carried out before one failed with `error`,
    /// newest first, so that KVM's slots are `before` again (a region the update deleted is
    /// created again, rather than the guest losing its memory). [`Error::LayoutUndone`] when that
    /// worked (the run may go on); the first error otherwise (the slots are part-way).
    fn undo(&self, done: &[SlotOp], before: &Layout, error: Error) -> Error {
        let old = |slot: u32| before.slots().find(|(s, _)| *s == slot).map(|(_, r)| r.clone());
        let desc = |slot: u32, r: &Region| kvm_userspace_memory_region {
            slot,
            flags: r.flags,
            guest_phys_addr: r.gpa,
            memory_size: r.bytes,
            userspace_addr: r.backing.host(),
        };
        for op in done.iter().rev() {
            let undone = match op {
                // Deleted (a slot the update also deleted first is created as it was by undoing
                // that delete, which comes next).
                SlotOp::Create { slot, .. } => {
                    self.set_slot(*slot, kvm_userspace_memory_region { slot: *slot, ..Default::default() })
                }
                SlotOp::Delete { slot } | SlotOp::SetFlags { slot, .. } => match old(*slot) {
                    Some(r) => self.set_slot(*slot, desc(*slot, &r)),
                    None => Ok(()),
                },
            };
            if undone.is_err() {
                return error;
            }
        }
        Error::LayoutUndone(Box::new(error))
    }

    /// KVM's dirty log of the region at `gpa` (one bit per 4 KiB page, cleared by reading), with
    /// the pages the host wrote itself for the guest (`complete_access`) added: KVM logs only the
    /// guest's own writes, and a VMM migrating the guest must copy those pages too.
    pub fn dirty_log(&self, gpa: u64) -> Result<Vec<u64>> {
        let (slot, region) =
            self.find(gpa).filter(|(_, r)| r.gpa == gpa).ok_or(Error::Layout(table::LayoutError::NoRegion(gpa)))?;
        let mut log = self.0.vm.get_dirty_log(slot, region.bytes as usize).map_err(|e| Error::GetDirtyLog(slot, e))?;
        let mut host_dirty = self.0.host_dirty.lock().unwrap_or_else(|p| p.into_inner());
        host_dirty.retain(|page| {
            let Some(bit) = (page * PAGE).checked_sub(region.gpa).map(|offset| offset / PAGE) else { return true };
            match log.get_mut((bit / 64) as usize) {
                Some(word) => {
                    *word |= 1 << (bit % 64);
                    false
                }
                None => true,
            }
        });
        Ok(log)
    }

    /// The update generation now, which a vCPU reads before KVM_RUN and after it.
    pub fn generation(&self) -> u64 {
        self.0.windows.generation()
    }

    /// Whether any update ran: the run loop classifies exits at guest memory from then on
    /// (none is expected while every update holds the vCPUs; each is counted).
    pub fn updates_ran(&self) -> bool {
        self.0.updated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Exits at guest memory classified so far that were not absent demand pages: race exits
    /// (or a guest's own errors at addresses an update changed).
    pub fn exits_at_memory(&self) -> u64 {
        let record = self.record();
        record.update_window + record.guest_error
    }

    /// Classifies an exit at `gpa` of the KVM_RUN `span` (see `classify`), and counts it;
    /// `code`: an instruction fetch (an emulation failure), not a data access (MMIO).
    pub fn classify(&self, gpa: Option<u64>, span: RunSpan, state: MemoryState, code: bool) -> Verdict {
        let verdict = self.0.windows.classify(gpa, span, state);
        let mut record = self.record();
        match verdict {
            Verdict::UpdateWindow => {
                record.update_window += 1;
                record.update_window_code += u64::from(code);
            }
            Verdict::AbsentPage => record.absent_page += 1,
            Verdict::GuestError => record.guest_error += 1,
        }
        verdict
    }

    /// For the run loop, once an update ran: what an exit at `gpa` (an address the layout holds
    /// as memory) of the KVM_RUN `span` was, with the handlers' word on demand pages; `code`: an
    /// instruction fetch. `None` when there is nothing to classify (no update ran, or `gpa` is
    /// no memory of the layout's).
    pub fn verdict(&self, span: RunSpan, gpa: u64, handlers: &[&mut dyn ExitHandler], code: bool) -> Option<Verdict> {
        if !self.updates_ran() || self.find(gpa).is_none() {
            return None;
        }
        let state = handlers
            .iter()
            .map(|h| h.memory_state(gpa))
            .find(|s| *s != MemoryState::NotPaged)
            .unwrap_or(MemoryState::NotPaged);
        Some(self.classify(Some(gpa), span, state, code))
    }

    /// Completes an access that hit an update's window, against the layout after the update
    /// (waiting for it to be in place: for every window the KVM_RUN `span` could have hit): a read fills `read`, a write stores `write`. `false`
    /// when the address is no memory after all, or the run ended first.
    pub fn complete_access(&self, gpa: u64, span: RunSpan, read: Option<&mut [u8]>, write: Option<&[u8]>) -> bool {
        if !self.0.windows.wait_closed(gpa, span, STOP_CHECK, || self.0.threads.stopping()) {
            return false;
        }
        let Some((_, region)) = self.find(gpa) else { return false };
        let len = read.as_ref().map_or(0, |d| d.len()).max(write.map_or(0, <[u8]>::len));
        if gpa.checked_add(len as u64).is_none_or(|end| end > region.range().end) {
            return false;
        }
        if write.is_some() && region.flags & KVM_MEM_LOG_DIRTY_PAGES != 0 && len > 0 {
            // The guest's write, made by the host: KVM's log will not show it.
            let pages = gpa / PAGE..=(gpa + len as u64 - 1) / PAGE;
            self.0.host_dirty.lock().unwrap_or_else(|p| p.into_inner()).extend(pages);
        }
        let host = (region.backing.host() + (gpa - region.gpa)) as *mut u8;
        // SAFETY: `host..host + len` is inside the region's backing (checked above: a region is
        // never larger than its backing), mapped while `region` (a clone holding the backing)
        // lives; the guest may change it meanwhile, so it is copied, never referenced.
        unsafe {
            if let Some(data) = read {
                access::load(host, data);
            }
            if let Some(data) = write {
                access::store(host, data);
            }
        }
        true
    }

    /// The report: how many updates, how long the vCPUs were held, what the exits were.
    pub(crate) fn report(&self, report: &mut Report) {
        let record = self.record();
        let held = &record.held;
        if held.is_empty() && record.unheld == 0 {
            return;
        }
        let us = |d: &Duration| d.as_micros() as u64;
        let mut sorted: Vec<u64> = held.iter().map(us).collect();
        sorted.sort_unstable();
        let max = sorted.last().copied().unwrap_or(0);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let stopping_max = record.stopping.iter().map(us).max().unwrap_or(0);
        let mut operations: Vec<u64> = record.operations.iter().map(us).collect();
        operations.sort_unstable();
        let (operations_median, operations_max) =
            (operations.get(operations.len() / 2).copied().unwrap_or(0), operations.last().copied().unwrap_or(0));
        report.counter("layout", "held_updates", held.len() as u64);
        report.counter("layout", "unheld_updates", record.unheld);
        report.counter("layout", "hold_us_max", max);
        report.counter("layout", "hold_us_median", median);
        report.counter("layout", "stopping_us_max", stopping_max);
        report.counter("layout", "operations_us_median", operations_median);
        report.counter("layout", "operations_us_max", operations_max);
        report.counter("layout", "exits_update_window", record.update_window);
        report.counter("layout", "exits_update_window_code", record.update_window_code);
        report.counter("layout", "exits_absent_page", record.absent_page);
        report.counter("layout", "exits_guest_error", record.guest_error);
        if !held.is_empty() {
            report.line(format!(
                "layout: {} updates holding every vCPU: held {median} us (median), {max} us (max), of which bringing the vCPUs out of KVM_RUN {stopping_max} us (max) and the memslot operations {operations_median} us (median), {operations_max} us (max); {} exits at guest memory (race exits)",
                held.len(),
                record.update_window + record.guest_error
            ));
        }
        if record.unheld > 0 {
            report.line(format!(
                "layout: {} updates without holding the vCPUs (diagnostic): {} exits hit an update's window ({} of them instruction fetches, emulation failures; the others MMIO), {} were absent demand pages, {} the guest's own",
                record.unheld, record.update_window, record.update_window_code, record.absent_page, record.guest_error
            ));
        }
    }
}

/// The layout's own hypercalls: where the announced regions are, and how many updates and
/// window exits there were. (The changes a guest may ask for belong to the producer that owns
/// the regions: `producers::churn`.)
impl ExitHandler for LayoutHandle {
    fn name(&self) -> &'static str {
        "layout"
    }

    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        Ok(match Nr::try_from(nr) {
            Ok(Nr::LayoutRegion) => Some(match self.announced(args[0]) {
                Some((gpa, bytes, kind)) => Ok([gpa, size_and_kind(bytes, kind)]),
                None if self.0.announced.lock().unwrap_or_else(|p| p.into_inner()).is_empty() => Err(Status::UnknownNr),
                None => Err(Status::InvalidArgument),
            }),
            Ok(Nr::LayoutStats) => {
                let record = self.record();
                Some(Ok([record.held.len() as u64 + record.unheld, record.update_window]))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
