//! The counting port (`pvagent_abi::port::BENCH_COUNT`): a window over a vCPU's KVM statistics
//! that the benchmark guest opens and closes around a timed loop, so that the loop also says how
//! many guest instructions KVM emulated in it and how many exits it took. A count is exact where
//! the time is not: the benchmark takes the window's own fixed cost out with an empty window.
//!
//! With `--window-stats` every window also prints, when it closes, each of KVM's statistics that
//! changed in it (`host: window vcpu=0 exits=270 pf_fixed=64 ...`): what KVM's exit count is
//! made of, for `docs/performance.md`'s breakdown. Reading all of them costs the host about a
//! hundred reads per window, so it is off unless asked for.

use std::collections::BTreeMap;

use pvagent_abi::port::{BenchCount, COUNT_UNAVAILABLE};

use crate::handler::VcpuCtx;
use crate::kvm_stats::Snapshot;

/// One vCPU's window.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// The snapshot at the opening exit, while the window is open.
    opened: Option<Snapshot>,
    /// The last closed window's figures.
    closed: Option<Snapshot>,
    /// What the next `in` reads.
    selected: Option<BenchCount>,
}

/// Every KVM statistic of a vCPU at a window's opening, for `--window-stats`.
type AllStats = BTreeMap<String, u64>;

/// Every vCPU's window, and what the guest asked that could not be done.
#[derive(Debug, Default)]
pub struct Counting {
    windows: Vec<Window>,
    pub windows_closed: u64,
    /// Closes without an open window, reads without a selection, unknown values.
    pub refused: u64,
    /// Snapshots that failed to read, or a vCPU without statistics: its figures read as
    /// [`COUNT_UNAVAILABLE`].
    pub unavailable: u64,
    /// With `--window-stats`: every statistic at each vCPU's open window's opening.
    all_stats: Option<Vec<Option<AllStats>>>,
    /// The first error printing a window's statistics met (nothing more is printed then): the
    /// run fails with it at its end rather than a vCPU thread panicking as `println!` does.
    pub lost_output: Option<std::io::Error>,
}

/// The statistics that changed from `before` to `after`, as `name=delta` words; histograms and
/// times (`_ns`, `_hist`) are left out.
fn changed(before: &AllStats, after: &AllStats) -> String {
    let words: Vec<String> = after
        .iter()
        .filter(|(name, _)| !name.ends_with("_ns") && !name.contains("hist"))
        .filter_map(|(name, now)| {
            let delta = now.wrapping_sub(before.get(name).copied().unwrap_or(0));
            (delta != 0).then(|| format!("{name}={delta}"))
        })
        .collect();
    words.join(" ")
}

impl Counting {
    /// Windows that also print every KVM statistic that changed in them, when they close.
    pub fn with_all_stats() -> Self {
        Self { all_stats: Some(Vec::new()), ..Self::default() }
    }

    /// `--window-stats`: at an opening, remember every statistic; at a close, print what
    /// changed. Nothing when not asked for, or when the vCPU has no statistics.
    fn all_stats(&mut self, ctx: &VcpuCtx<'_>, opening: bool) {
        let (Some(per_vcpu), Some(stats)) = (self.all_stats.as_mut(), ctx.stats) else { return };
        if per_vcpu.len() <= ctx.index {
            per_vcpu.resize(ctx.index + 1, None);
        }
        let Ok(now) = stats.read_all() else { return };
        if opening {
            per_vcpu[ctx.index] = Some(now);
        } else if let Some(before) = per_vcpu[ctx.index].take()
            && self.lost_output.is_none()
        {
            use std::io::Write;
            let line = format!("host: window vcpu={} {}", ctx.index, changed(&before, &now));
            if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
                self.lost_output = Some(e);
            }
        }
    }

    fn window(&mut self, vcpu: usize) -> &mut Window {
        if self.windows.len() <= vcpu {
            self.windows.resize(vcpu + 1, Window::default());
        }
        &mut self.windows[vcpu]
    }

    fn snapshot(&mut self, ctx: &VcpuCtx<'_>) -> Snapshot {
        match ctx.stats.map(|stats| stats.snapshot(ctx.exits)) {
            Some(Ok(snapshot)) => snapshot,
            Some(Err(_)) | None => {
                self.unavailable += 1;
                Snapshot::default()
            }
        }
    }

    /// An `out` of `value` by the vCPU in `ctx`.
    pub fn write(&mut self, ctx: &VcpuCtx<'_>, value: u32) {
        match BenchCount::try_from(value) {
            Ok(BenchCount::Open) => {
                self.all_stats(ctx, true);
                let now = self.snapshot(ctx);
                self.window(ctx.index).opened = Some(now);
            }
            Ok(BenchCount::Close) => {
                let now = self.snapshot(ctx);
                self.all_stats(ctx, false);
                let window = self.window(ctx.index);
                match window.opened.take() {
                    Some(opened) => {
                        window.closed = Some(now.since(opened));
                        self.windows_closed += 1;
                    }
                    None => self.refused += 1,
                }
            }
            Ok(
                read @ (BenchCount::ReadInstructions
                | BenchCount::ReadExits
                | BenchCount::ReadKvmExits
                | BenchCount::ReadHaltedMicros),
            ) => self.window(ctx.index).selected = Some(read),
            Err(_) => self.refused += 1,
        }
    }

    /// What an `in` by vCPU `vcpu` reads: the selected figure of its last closed window.
    pub fn read(&mut self, vcpu: usize) -> u32 {
        let window = *self.window(vcpu);
        let figure = match (window.selected, window.closed) {
            (Some(BenchCount::ReadInstructions), Some(closed)) => closed.insn_emulation,
            (Some(BenchCount::ReadExits), Some(closed)) => Some(closed.guest_exits()),
            (Some(BenchCount::ReadKvmExits), Some(closed)) => closed.exits,
            (Some(BenchCount::ReadHaltedMicros), Some(closed)) => closed.halt_ns.map(|ns| ns / 1000),
            (Some(_), _) => None,
            (None, _) => {
                self.refused += 1;
                None
            }
        };
        figure.map_or(COUNT_UNAVAILABLE, |n| n.min(u64::from(COUNT_UNAVAILABLE - 1)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breakdown_names_what_changed_and_leaves_times_out() {
        let before: AllStats = [("exits", 10), ("pf_fixed", 3), ("halt_wait_ns", 5), ("io_exits", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut after = before.clone();
        *after.get_mut("exits").unwrap() = 14;
        *after.get_mut("pf_fixed").unwrap() = 4;
        *after.get_mut("halt_wait_ns").unwrap() = 900;
        after.insert("irq_window_exits".into(), 1);
        assert_eq!(changed(&before, &after), "exits=4 irq_window_exits=1 pf_fixed=1");
    }

    #[test]
    fn without_a_closed_window_or_a_selection_nothing_is_read() {
        let mut c = Counting::default();
        assert_eq!(c.read(0), COUNT_UNAVAILABLE);
        assert_eq!(c.refused, 1, "a read with nothing selected");
        c.window(0).selected = Some(BenchCount::ReadExits);
        assert_eq!(c.read(0), COUNT_UNAVAILABLE, "selected, but no window closed yet");
        assert_eq!(c.refused, 1);
    }

    #[test]
    fn a_closed_window_reads_its_figures_saturated_below_the_unavailable_value() {
        let mut c = Counting::default();
        let w = c.window(1);
        w.closed = Some(Snapshot {
            insn_emulation: Some(1234),
            exits: Some(u64::MAX),
            halt_exits: Some(2),
            halt_ns: Some(7_654_321),
            user_exits: 5,
        });
        w.selected = Some(BenchCount::ReadInstructions);
        assert_eq!(c.read(1), 1234);
        c.window(1).selected = Some(BenchCount::ReadKvmExits);
        assert_eq!(c.read(1), COUNT_UNAVAILABLE - 1);
        c.window(1).selected = Some(BenchCount::ReadExits);
        assert_eq!(c.read(1), 7, "the exits the guest caused: 5 to the host stub, 2 HLTs");
        c.window(1).selected = Some(BenchCount::ReadHaltedMicros);
        assert_eq!(c.read(1), 7654, "the time halted, in whole microseconds");
        c.window(1).closed =
            Some(Snapshot { insn_emulation: None, exits: Some(3), halt_exits: None, halt_ns: None, user_exits: 1 });
        c.window(1).selected = Some(BenchCount::ReadInstructions);
        assert_eq!(c.read(1), COUNT_UNAVAILABLE, "KVM keeps no such statistic");
        assert_eq!(c.read(0), COUNT_UNAVAILABLE, "another vCPU's window is its own");
    }
}
