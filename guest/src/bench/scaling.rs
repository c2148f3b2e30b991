//! The guest's work per page-not-present event as more tokens are outstanding.

use pvagent_abi::pnp::{HostCounter, HostMode};
use pvagent_guest::kprintln;
use pvagent_guest::pv::pnp;

use crate::count::Fields;
use crate::pager::{host_counter, region, set_latency, set_mode, settle};
use crate::workload::{self, Arrival, Pages};
use crate::{Result, Settings};

/// K tasks park on K tokens at once (their pages are held until all K have parked, then
/// released in one exit), so that the k-th event of the burst finds k - 1 tokens outstanding.
/// What KVM counted in the burst's window, less the same K tasks over the pages they left
/// present, over the K events: the guest's instructions per event (taking the event, parking,
/// switching, the resolutions, the wakes), with the burst's own cost (the release, the runner's
/// turn while the tasks park) spread over its events. How the resolutions arrive (one
/// interrupt for several, or one each) is the host's timing: the figure is a median.
pub fn scaling(s: Settings) -> Result<()> {
    let region = region()?;
    let counts: &[u64] = if s.quick { &[1, 8] } else { &[1, 2, 4, 8, 16, 24] };
    let boot_mode = pnp::host_mode();
    set_mode(HostMode::Ring)?;
    set_latency(0)?;
    for &outstanding in counts {
        // Not counted: the first use of task slots maps their stacks.
        workload::run(&region, outstanding, 1, 0, Arrival::OnItsOwn)?;
        for rep in 0..s.reps.min(3) {
            let (before, delivered) = (pnp::stats(), host_counter(HostCounter::EventsDelivered)?);
            let (_, burst) =
                workload::run_counted(&region, outstanding, 1, 0, Arrival::WhenAllParked, Pages::Evicted, true)?;
            settle(before.events, delivered)?;
            let after = pnp::stats();
            let (_, present) =
                workload::run_counted(&region, outstanding, 1, 0, Arrival::OnItsOwn, Pages::AsTheyAre, true)?;
            let counts = burst.zip(present).map(|(burst, present)| burst.less(present)).transpose()?;
            kprintln!(
                "bench: scaling rep={rep} outstanding={outstanding} events={} slept={}{}",
                after.events - before.events,
                after.slept - before.slept,
                Fields("", counts)
            );
        }
    }
    set_mode(boot_mode)
}
