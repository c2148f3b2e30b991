//! The guest's handling time per page-not-present event as more tokens are outstanding.

use pvagent_abi::pnp::HostMode;
use pvagent_guest::kprintln;
use pvagent_guest::pv::pnp;

use crate::calibrate::cycles_to_ns;
use crate::pager::{region, set_latency, set_mode};
use crate::workload::{self, Arrival};
use crate::{Result, Settings};

/// K tasks park on K tokens at once (their pages are held until all K have parked). The figure
/// is the mean over the K events: the k-th event of the burst finds k - 1 tokens already
/// outstanding.
pub fn scaling(s: Settings) -> Result<()> {
    let region = region()?;
    let counts: &[u64] = if s.quick { &[1, 8] } else { &[1, 2, 4, 8, 16, 24] };
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ring)?;
    set_latency(0)?;
    for &outstanding in counts {
        for rep in 0..s.reps.min(3) {
            let before = pnp::stats();
            workload::run(&region, outstanding, 1, 0, Arrival::WhenAllParked)?;
            let after = pnp::stats();
            kprintln!(
                "bench: scaling rep={rep} outstanding={outstanding} events={} handler_ns={}",
                after.events - before.events,
                cycles_to_ns(after.handler_cycles - before.handler_cycles)
            );
        }
    }
    set_mode(boot_mode)
}
