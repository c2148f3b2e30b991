//! Layout churn: while the guest runs, split guest RAM (the memory it executes from, its data and
//! its page tables) in two memslots with dirty logging on the upper half, read that half's dirty
//! log, merge the two again, and so on: seed 003's "split a region to change its flags" under
//! running vCPUs, every update a delete-then-create.
//!
//! The updates come at vCPU entries, every `every`-th entry counted over all vCPUs, so how many a
//! run makes follows from the guest's work, not from the clock; each is done by the vCPU thread
//! that made that entry, as after-exit work (outside the handlers' lock, before it enters again),
//! while the other vCPUs run on. With `hold` the update holds every vCPU (`layout::hold`): the
//! guest must see nothing. Without it (the diagnostic mode) the guest can hit the window; the run
//! loop classifies and completes those exits (`layout::classify`), and the report counts them.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

use crate::error::{Error, Result};
use crate::handler::{AfterExit, AttachCtx, EntryPending, ExitHandler, Report, VcpuCtx};
use crate::layout::table::Update;
use crate::layout::{Hold, LayoutHandle};

const NAME: &str = "churn";

/// How often, and whether the vCPUs are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnConfig {
    /// An update every this many vCPU entries (over all vCPUs), at least 1.
    pub every: u64,
    /// Hold every vCPU for each update (`false`: the diagnostic mode).
    pub hold: bool,
}

#[derive(Debug, Default)]
struct Progress {
    splits: u64,
    merges: u64,
    /// Pages the dirty log of the upper half reported, over every split.
    dirty_pages: u64,
    /// The first update that failed, if any (the run stops on it).
    failed: Option<String>,
}

/// The producer.
#[derive(Debug)]
pub struct Churn {
    config: ChurnConfig,
    entries: Arc<AtomicU64>,
    due: Arc<AtomicBool>,
    /// Where RAM is split: its middle, rounded down to 2 MiB.
    split_at: u64,
    layout: Option<LayoutHandle>,
    progress: Arc<Mutex<Progress>>,
}

impl Churn {
    pub fn new(config: ChurnConfig) -> Self {
        Self {
            config: ChurnConfig { every: config.every.max(1), ..config },
            entries: Arc::default(),
            due: Arc::default(),
            split_at: 0,
            layout: None,
            progress: Arc::default(),
        }
    }
}

/// The next update: a split when RAM is one slot, a merge when it is two (after reading the
/// upper half's dirty log).
fn step(layout: &LayoutHandle, split_at: u64, hold: Hold, progress: &Mutex<Progress>) -> Result<()> {
    let split = layout.find(split_at).is_some_and(|(_, r)| r.gpa != split_at);
    if split {
        layout.update(&Update::Split { gpa: 0, at: split_at, upper_flags: KVM_MEM_LOG_DIRTY_PAGES }, hold)?;
        progress.lock().unwrap_or_else(|p| p.into_inner()).splits += 1;
    } else {
        let dirty: u64 = layout.dirty_log(split_at)?.iter().map(|w| u64::from(w.count_ones())).sum();
        layout.update(&Update::Merge { gpa: 0 }, hold)?;
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.merges += 1;
        p.dirty_pages += dirty;
    }
    Ok(())
}

impl ExitHandler for Churn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&mut self, ctx: &mut AttachCtx<'_>) -> Result<()> {
        self.split_at = (ctx.ram_size / 2) & !((2 << 20) - 1);
        self.layout = Some(ctx.layout.clone());
        Ok(())
    }

    fn has_before_entry(&self) -> bool {
        true
    }

    fn entry_pending(&self) -> Option<EntryPending> {
        let (entries, due, every) = (self.entries.clone(), self.due.clone(), self.config.every);
        Some(Arc::new(move || {
            let n = entries.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(every) {
                due.store(true, Ordering::Release);
            }
            due.load(Ordering::Acquire)
        }))
    }

    fn before_entry(&mut self, ctx: &mut VcpuCtx<'_>) -> Result<()> {
        if !self.due.swap(false, Ordering::AcqRel) || self.split_at == 0 {
            return Ok(());
        }
        let Some(layout) = self.layout.clone() else { return Ok(()) };
        let (split_at, progress) = (self.split_at, self.progress.clone());
        let hold = if self.config.hold { Hold::Vcpus } else { Hold::Nothing };
        ctx.after_exit(AfterExit::new(move || {
            let done = step(&layout, split_at, hold, &progress);
            if let Err(e) = &done {
                progress.lock().unwrap_or_else(|p| p.into_inner()).failed.get_or_insert(e.to_string());
            }
            done
        }));
        Ok(())
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        report.counter(NAME, "splits", p.splits);
        report.counter(NAME, "merges", p.merges);
        report.counter(NAME, "dirty_pages_logged", p.dirty_pages);
        report.line(format!(
            "churn: RAM split at {:#x} (upper half dirty-logged) {} times and merged {} times, {}; the dirty log reported {} pages",
            self.split_at,
            p.splits,
            p.merges,
            if self.config.hold { "every vCPU held for each" } else { "no vCPU held (diagnostic)" },
            p.dirty_pages
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
