//! The counting port (`pvagent_abi::port::BENCH_COUNT`): a window over a vCPU's KVM statistics
//! that the benchmark guest opens and closes around a timed loop, so that the loop also says how
//! many guest instructions KVM emulated in it and how many exits it took. A count is exact where
//! the time is not: the benchmark takes the window's own fixed cost out with an empty window.

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
}

impl Counting {
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
                let now = self.snapshot(ctx);
                self.window(ctx.index).opened = Some(now);
            }
            Ok(BenchCount::Close) => {
                let now = self.snapshot(ctx);
                let window = self.window(ctx.index);
                match window.opened.take() {
                    Some(opened) => {
                        window.closed = Some(now.since(opened));
                        self.windows_closed += 1;
                    }
                    None => self.refused += 1,
                }
            }
            Ok(read @ (BenchCount::ReadInstructions | BenchCount::ReadExits | BenchCount::ReadKvmExits)) => {
                self.window(ctx.index).selected = Some(read)
            }
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
        w.closed =
            Some(Snapshot { insn_emulation: Some(1234), exits: Some(u64::MAX), halt_exits: Some(2), user_exits: 5 });
        w.selected = Some(BenchCount::ReadInstructions);
        assert_eq!(c.read(1), 1234);
        c.window(1).selected = Some(BenchCount::ReadKvmExits);
        assert_eq!(c.read(1), COUNT_UNAVAILABLE - 1);
        c.window(1).selected = Some(BenchCount::ReadExits);
        assert_eq!(c.read(1), 7, "the exits the guest caused: 5 to the host stub, 2 HLTs");
        c.window(1).closed = Some(Snapshot { insn_emulation: None, exits: Some(3), halt_exits: None, user_exits: 1 });
        c.window(1).selected = Some(BenchCount::ReadInstructions);
        assert_eq!(c.read(1), COUNT_UNAVAILABLE, "KVM keeps no such statistic");
        assert_eq!(c.read(0), COUNT_UNAVAILABLE, "another vCPU's window is its own");
    }
}
