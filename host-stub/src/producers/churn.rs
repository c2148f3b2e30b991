//! Memory changed under running vCPUs, on purpose (seed 003's scenarios):
//!
//! - **Guest RAM** (the memory the guest executes from, with its data and page tables) and the
//!   **demand pager's region** (with its fetches in flight), with `ram_every`: every
//!   `ram_every`-th vCPU entry, counted over all vCPUs, the next of them in turn is split in two
//!   memslots with dirty logging on the upper half, or merged again. How many updates a run makes
//!   follows from the guest's work, not the clock; each is done by the vCPU thread that made that
//!   entry, as after-exit work (outside the handlers' lock), while the other vCPUs run on. Only
//!   with the vCPUs held: without, KVM's own page walks find no memslot and the guest
//!   triple-faults (seen here), which no classifier can repair.
//! - **The churn region**, a data region the guest's self-tests use ([`RegionKind::Churn`]): the
//!   guest asks for each change ([`Nr::LayoutStep`]): split with dirty logging on the upper half
//!   or merged again (its dirty log read first and kept for [`Nr::LayoutDirty`]); a region
//!   hot-added and announced; a hot-added region moved with its memory.
//!
//! With `hold`, every update holds every vCPU (`layout::hold`) and any exit at guest memory fails
//! the run. Without (the diagnostic mode) the churn region's updates hold no one and linger in
//! their window until a vCPU hits it: the race is reproduced by construction, and the run loop
//! classifies and completes those exits (`layout::classify`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::layout::{CHURN_CODE, CHURN_CODE_OFFSET, CHURN_REGION_SPLIT, LayoutStepKind, RegionKind, fill_value};
use pvagent_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RESERVED};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{MmapRegion, VolatileMemory};

use crate::error::{Error, Result};
use crate::handler::{AfterExit, AttachCtx, EntryPending, ExitHandler, HypercallAnswer, Report, VcpuCtx};
use crate::layout::table::{Backing, LayoutError, Region, Update};
use crate::layout::{Hold, LayoutHandle};

const NAME: &str = "churn";
/// Where the churn region is (above the demand pager's and the released region's defaults).
pub const CHURN_GPA: u64 = 6 << 30;
/// Its size: twice the ABI's split point (the split is at its middle).
pub const CHURN_BYTES: u64 = 2 * CHURN_REGION_SPLIT;
/// Where hot-added regions go: one after another from here, 2 MiB each.
pub const HOT_ADD_GPA: u64 = 7 << 30;
pub const HOT_ADD_BYTES: u64 = 2 << 20;
/// Hot-adds a run allows at most (each allocates [`HOT_ADD_BYTES`] of host memory); more are
/// answered status 2.
pub const MAX_HOT_ADDS: u64 = 64;

/// What changes, and whether the vCPUs are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnConfig {
    /// Split or merge guest RAM every this many vCPU entries (over all vCPUs); `None`: RAM is
    /// left alone. Only with `hold`.
    pub ram_every: Option<u64>,
    /// Hold every vCPU for each update (`false`: the diagnostic mode).
    pub hold: bool,
}

#[derive(Debug, Default)]
struct Progress {
    ram_splits: u64,
    ram_merges: u64,
    /// Splits and merges of the other regions in turn (the demand pager's).
    other_splits: u64,
    other_merges: u64,
    region_splits: u64,
    region_merges: u64,
    hot_added: u64,
    moved: u64,
    /// Unheld updates of the churn region whose lingering window no vCPU hit.
    windows_missed: u64,
    /// The churn region's upper half's dirty log at its last merge, and how many pages it had.
    dirty: Vec<u64>,
    dirty_pages: u64,
    /// Changes the guest asked for that the layout refused (answered status 2).
    refused: u64,
    /// The first update that failed, if any (the run stops on it).
    failed: Option<String>,
}

/// The producer.
#[derive(Debug)]
pub struct Churn {
    config: ChurnConfig,
    entries: Arc<AtomicU64>,
    due: Arc<AtomicBool>,
    /// What the entry-counted churn changes, in turn: guest RAM, and each region a producer put
    /// in the layout at setup (the demand pager's), as `(first GPA, where it is split)`.
    targets: Vec<(u64, u64)>,
    /// The next of `targets`.
    next_target: Arc<AtomicU64>,
    layout: Option<LayoutHandle>,
    progress: Arc<Mutex<Progress>>,
    /// Held by a change that first reads the layout to decide what to do (split or merge, where
    /// a region is), so that two such changes at once do not both decide from the same state.
    steps: Arc<Mutex<()>>,
    /// Hot-adds asked for so far (each takes the next place from [`HOT_ADD_GPA`]).
    hot_adds: AtomicU64,
}

impl Churn {
    pub fn new(config: ChurnConfig) -> Self {
        Self {
            config: ChurnConfig { ram_every: config.ram_every.filter(|_| config.hold).map(|n| n.max(1)), ..config },
            entries: Arc::default(),
            due: Arc::default(),
            targets: Vec::new(),
            next_target: Arc::default(),
            layout: None,
            progress: Arc::default(),
            steps: Arc::default(),
            hot_adds: AtomicU64::new(0),
        }
    }

    fn hold(&self) -> Hold {
        if self.config.hold { Hold::Vcpus } else { Hold::Nothing }
    }
}

/// Fresh anonymous memory of `bytes`, every 8-byte word at guest address `gpa + offset` holding
/// `fill_value(gpa + offset)`, as a backing (also the released region's repair).
pub(crate) fn fresh_memory(gpa: u64, bytes: u64) -> Result<(Arc<MmapRegion>, Backing)> {
    let map = MmapRegionBuilder::new(bytes as usize)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| Error::MapMemory { what: "a layout region", bytes, source: std::io::Error::other(e) })?;
    let slice = map.get_slice(0, bytes as usize).expect("the whole mapping");
    let words: Vec<u8> = (0..bytes).step_by(8).flat_map(|offset| fill_value(gpa + offset).to_le_bytes()).collect();
    slice.copy_from(&words);
    let map = Arc::new(map);
    // SAFETY: the mapping is `bytes` long, readable and writable, and `keep` (the Arc) keeps it.
    let backing = unsafe { Backing::new(map.as_ptr() as u64, bytes, map.clone()) };
    Ok((map, backing))
}

/// The next change of the region at `gpa`, with every vCPU held: a split at `at` when it is one
/// slot, a merge when it is two.
fn target_step(layout: &LayoutHandle, gpa: u64, at: u64, progress: &Mutex<Progress>) -> Result<()> {
    let split = layout.find(at).is_some_and(|(_, r)| r.gpa != at);
    let update =
        if split { Update::Split { gpa, at, upper_flags: KVM_MEM_LOG_DIRTY_PAGES } } else { Update::Merge { gpa } };
    layout.update(&update, Hold::Vcpus)?;
    let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
    match (gpa == 0, split) {
        (true, true) => p.ram_splits += 1,
        (true, false) => p.ram_merges += 1,
        (false, true) => p.other_splits += 1,
        (false, false) => p.other_merges += 1,
    }
    Ok(())
}

/// Makes `update` as the run's mode says: holding the vCPUs, or lingering in its window.
fn churn_update(layout: &LayoutHandle, update: &Update, hold: Hold, progress: &Mutex<Progress>) -> Result<()> {
    match hold {
        Hold::Vcpus => {
            layout.update(update, hold)?;
        }
        Hold::Nothing => {
            let applied = layout.update_lingering(update)?;
            if !applied.window.is_empty() && !applied.hit {
                progress.lock().unwrap_or_else(|p| p.into_inner()).windows_missed += 1;
            }
        }
    }
    Ok(())
}

/// The churn region's next change.
fn region_step(layout: &LayoutHandle, hold: Hold, progress: &Mutex<Progress>) -> Result<()> {
    let middle = CHURN_GPA + CHURN_REGION_SPLIT;
    let split = layout.find(middle).is_some_and(|(_, r)| r.gpa != middle);
    if split {
        churn_update(
            layout,
            &Update::Split { gpa: CHURN_GPA, at: middle, upper_flags: KVM_MEM_LOG_DIRTY_PAGES },
            hold,
            progress,
        )?;
        progress.lock().unwrap_or_else(|p| p.into_inner()).region_splits += 1;
    } else {
        let dirty = layout.dirty_log(middle)?;
        churn_update(layout, &Update::Merge { gpa: CHURN_GPA }, hold, progress)?;
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.region_merges += 1;
        p.dirty_pages = dirty.iter().map(|w| u64::from(w.count_ones())).sum();
        p.dirty = dirty;
    }
    Ok(())
}

impl Churn {
    /// `Nr::LayoutStep`: makes the change after the exit (outside the handlers' lock: other
    /// vCPUs' exits, which may hit its window, go on meanwhile) and answers then: status 2 for a
    /// change the layout refuses (or one KVM failed and the layout undid); any other failure ends
    /// the run.
    fn step(&mut self, ctx: &mut VcpuCtx<'_>, args: [u64; 4]) -> Result<HypercallAnswer> {
        let Some(layout) = self.layout.clone() else { return Ok(None) };
        let (hold, progress, steps) = (self.hold(), self.progress.clone(), self.steps.clone());
        let work: Box<dyn FnOnce() -> Result<()> + Send> = match LayoutStepKind::try_from(args[0]) {
            Ok(LayoutStepKind::SplitOrMerge) => Box::new(move || {
                let _one = steps.lock().unwrap_or_else(|p| p.into_inner());
                region_step(&layout, hold, &progress)
            }),
            Ok(LayoutStepKind::HotAdd) => {
                // Each hot-add its own place, taken now: two at once never get the same one.
                let n = self.hot_adds.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_HOT_ADDS {
                    progress.lock().unwrap_or_else(|p| p.into_inner()).refused += 1;
                    return Ok(Some(Err(Status::InvalidArgument)));
                }
                let gpa = HOT_ADD_GPA + n * HOT_ADD_BYTES;
                Box::new(move || {
                    let (_map, backing) = fresh_memory(gpa, HOT_ADD_BYTES)?;
                    let region = Region { gpa, bytes: HOT_ADD_BYTES, backing, flags: 0 };
                    layout.update(&Update::Add(region), hold)?;
                    layout.announce(gpa, HOT_ADD_BYTES, RegionKind::HotAdded);
                    progress.lock().unwrap_or_else(|p| p.into_inner()).hot_added += 1;
                    Ok(())
                })
            }
            Ok(LayoutStepKind::Move) => {
                let (index, to) = (args[1], args[2]);
                if !to.is_multiple_of(HOT_ADD_BYTES) {
                    progress.lock().unwrap_or_else(|p| p.into_inner()).refused += 1;
                    return Ok(Some(Err(Status::InvalidArgument)));
                }
                Box::new(move || {
                    let _one = steps.lock().unwrap_or_else(|p| p.into_inner());
                    // Where it is now, read under the lock: moves of it take turns.
                    let Some((from, _, RegionKind::HotAdded)) = layout.announced(index) else {
                        return Err(Error::Layout(LayoutError::NoRegion(to)));
                    };
                    if from == to {
                        return Ok(());
                    }
                    // The layout checks `to` (no wrap, below the guest's physical address
                    // limit, clear of every memslot) before it deletes anything.
                    churn_update(&layout, &Update::Move { gpa: from, to }, hold, &progress)?;
                    layout.announce_moved(index, to);
                    progress.lock().unwrap_or_else(|p| p.into_inner()).moved += 1;
                    Ok(())
                })
            }
            Err(_) => return Ok(Some(Err(Status::InvalidArgument))),
        };
        let progress = self.progress.clone();
        ctx.answer_after_exit(move || match work() {
            Ok(()) => Ok(Ok([0, 0])),
            Err(Error::Layout(_) | Error::LayoutUndone(_)) => {
                progress.lock().unwrap_or_else(|p| p.into_inner()).refused += 1;
                Ok(Err(Status::InvalidArgument))
            }
            Err(e) => {
                progress.lock().unwrap_or_else(|p| p.into_inner()).failed.get_or_insert(e.to_string());
                Err(e)
            }
        });
        Ok(Some(Ok([0, 0])))
    }

    /// `Nr::LayoutDirty`.
    fn dirty(&self, page: u64) -> HypercallAnswer {
        let first = CHURN_REGION_SPLIT / 0x1000;
        let Some(bit) = page.checked_sub(first).filter(|b| *b < first) else {
            return Some(Err(Status::InvalidArgument));
        };
        let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let logged = p.dirty.get((bit / 64) as usize).is_some_and(|w| w & (1 << (bit % 64)) != 0);
        Some(Ok([u64::from(logged), p.dirty_pages]))
    }
}

impl ExitHandler for Churn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        // Each region the layout holds now (RAM, the demand pager's), split at its middle
        // rounded down to 2 MiB, where that leaves two parts.
        let middle = |r: &Region| r.gpa + ((r.bytes / 2) & !((2 << 20) - 1));
        self.targets = ctx.layout.regions().iter().map(|r| (r.gpa, middle(r))).filter(|(gpa, at)| at > gpa).collect();
        self.targets.sort_unstable();
        let (map, backing) = fresh_memory(CHURN_GPA, CHURN_BYTES)?;
        let code = map.get_slice(CHURN_CODE_OFFSET as usize, CHURN_CODE.len()).expect("inside the mapping");
        code.copy_from(&CHURN_CODE);
        ctx.layout.add_before_run(Region { gpa: CHURN_GPA, bytes: CHURN_BYTES, backing, flags: 0 })?;
        ctx.layout.announce(CHURN_GPA, CHURN_BYTES, RegionKind::Churn);
        // Reserved: the guest maps the announced regions itself, never as RAM.
        ctx.memmap.push(HvmMemmapEntry {
            addr: CHURN_GPA,
            size: CHURN_BYTES,
            type_: MEMMAP_TYPE_RESERVED,
            reserved: 0,
        });
        self.layout = Some(ctx.layout.clone());
        Ok(())
    }

    fn has_before_entry(&self) -> bool {
        self.config.ram_every.is_some()
    }

    fn entry_pending(&self) -> Option<EntryPending> {
        let (entries, due, every) = (self.entries.clone(), self.due.clone(), self.config.ram_every.unwrap_or(u64::MAX));
        Some(Arc::new(move || {
            let n = entries.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(every) {
                due.store(true, Ordering::Release);
            }
            due.load(Ordering::Acquire)
        }))
    }

    fn before_entry(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<()> {
        if !self.due.swap(false, Ordering::AcqRel) || self.targets.is_empty() {
            return Ok(());
        }
        let Some(layout) = self.layout.clone() else { return Ok(()) };
        let n = self.next_target.fetch_add(1, Ordering::Relaxed) as usize;
        let (gpa, at) = self.targets[n % self.targets.len()];
        let (progress, steps) = (self.progress.clone(), self.steps.clone());
        ctx.after_exit(AfterExit::new(move || {
            let _one = steps.lock().unwrap_or_else(|p| p.into_inner());
            let done = target_step(&layout, gpa, at, &progress);
            if let Err(e) = &done {
                progress.lock().unwrap_or_else(|p| p.into_inner()).failed.get_or_insert(e.to_string());
            }
            done
        }));
        Ok(())
    }

    fn hypercall(&mut self, ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        match Nr::try_from(nr) {
            Ok(Nr::LayoutStep) => self.step(ctx, args),
            Ok(Nr::LayoutDirty) => Ok(self.dirty(args[0])),
            _ => Ok(None),
        }
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        for (name, value) in [
            ("ram_splits", p.ram_splits),
            ("ram_merges", p.ram_merges),
            ("other_splits", p.other_splits),
            ("other_merges", p.other_merges),
            ("region_splits", p.region_splits),
            ("region_merges", p.region_merges),
            ("hot_added", p.hot_added),
            ("moved", p.moved),
            ("windows_missed", p.windows_missed),
            ("refused", p.refused),
            ("dirty_pages_at_last_merge", p.dirty_pages),
        ] {
            report.counter(NAME, name, value);
        }
        let how = if self.config.hold { "every vCPU held for each" } else { "no vCPU held (diagnostic)" };
        if self.config.ram_every.is_some() {
            report.line(format!(
                "churn: guest RAM split (upper half dirty-logged) {} times and merged {} times, the other regions ({}) {} and {} times, {how}",
                p.ram_splits,
                p.ram_merges,
                self.targets.iter().filter(|(gpa, _)| *gpa != 0).map(|(gpa, _)| format!("{gpa:#x}")).collect::<Vec<_>>().join(", "),
                p.other_splits,
                p.other_merges
            ));
        }
        report.line(format!(
            "churn: the churn region at {CHURN_GPA:#x} split {} times and merged {} times, {} regions hot-added, {} moved, {how}{}",
            p.region_splits,
            p.region_merges,
            p.hot_added,
            p.moved,
            if self.config.hold {
                String::new()
            } else {
                format!("; {} windows no vCPU hit within {} s", p.windows_missed, crate::layout::LINGER_BOUND.as_secs())
            }
        ));
        if let Some(failed) = &p.failed {
            report.line(format!("churn: an update failed: {failed}"));
        }
        // With every vCPU held, no exit can have hit an update: one that did is the hold failing.
        let race_exits = self.layout.as_ref().map_or(0, LayoutHandle::exits_at_memory);
        if self.config.hold && race_exits > 0 {
            return Err(Error::RaceExits { exits: race_exits });
        }
        Ok(())
    }
}
