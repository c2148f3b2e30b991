//! The pager's end-of-run report: its counters, and lines saying per mode what happened.

use pvagent_abi::pnp::HostMode;

use super::region::PAGE;
use super::shared::Inner;
use super::state::Counters;
use super::{NAME, Pager, config, outstanding};
use crate::handler::Report;

impl Pager {
    /// The end-of-run counters and lines; the tokens still outstanding and the pages still
    /// being fetched (both must be none).
    pub(super) fn report(&self, inner: &Inner, report: &mut Report) -> (usize, usize) {
        let c = inner.core.counters;
        let outstanding = outstanding(inner);
        let fetching = inner.core.fetching();
        // A "page not present" still owed after its "page ready" (no access that could carry
        // it came): not delivered, so not in `events_delivered`; the guest still keeps its
        // wake. Reported, not a leak: the guest decides whether such an access comes.
        let owed_at_end = inner.apf.iter().filter(|v| v.owes()).count() as u64;
        for (key, value) in [
            ("events_delivered", c.events_delivered),
            ("resolved_retry", c.resolved_retry),
            ("resolved_failed", c.resolved_failed),
            ("resolved_before_event", c.resolved_before_event),
            ("sync_waits", c.sync_waits),
            ("sync_waits_in_ring_mode", c.sync_waits_in_ring_mode),
            ("mode_changes", c.mode_changes),
            ("sync_wait_ns", c.sync_wait_ns),
            ("pages_fetched", c.pages_fetched),
            ("pages_evicted", c.pages_evicted),
            ("outstanding", outstanding as u64),
            ("fetching", fetching as u64),
            ("msi_refused", inner.msi_refused),
            ("resolutions_without_interrupt", inner.resolutions_without_interrupt),
            ("decoded_efaults", self.efaults),
            ("present_at_decode_retries", self.present_at_decode),
            ("mmio_accesses", self.mmio_accesses),
            ("memory_fault_exits", self.memory_fault_exits),
            ("vcpu_waits_released_at_time_limit", inner.vcpu_waits_released_at_time_limit),
            ("kernel_repeat_faults", inner.kernel_repeat_faults),
            ("unemulated_accesses", self.unemulated),
            ("retries_for_pending_event", c.retries_for_pending_event),
            ("fetches_held_back", c.fetches_held_back),
            ("holds_released_by_sync_wait", c.holds_released_by_sync_wait),
            ("kvm_apf_not_present", inner.apf_counters.not_present),
            ("kvm_apf_page_ready", inner.apf_counters.page_ready),
            ("kvm_apf_wake_alls", inner.apf_counters.wake_alls),
            ("kvm_apf_acks", inner.apf_counters.acks),
            ("kvm_apf_forgotten", inner.apf_counters.forgotten),
            ("kvm_apf_ready_before_not_present", inner.apf_counters.ready_before_not_present),
            ("kvm_apf_retries_for_page_ready", inner.apf_counters.retries_for_page_ready),
            ("kvm_apf_owed_delivered_elsewhere", inner.apf_counters.owed_delivered_elsewhere),
            ("kvm_apf_owed_at_end", owed_at_end),
            ("ve_delivered", c.ve_delivered),
            ("ve_busy_waits", c.ve_busy_waits),
            ("ve_suspends", c.ve_suspends),
            ("ve_parks", c.ve_parks),
            ("sync_waits_in_ve_mode", c.sync_waits_in_ve_mode),
            ("waits_ended_at_time_limit", inner.waits_ended_at_time_limit),
            ("overlapping_areas_refused", inner.overlapping_areas_refused),
        ] {
            report.counter(NAME, key, value);
        }
        report.line(format!(
            "pager: {} pages of {} KiB at {:#x}; {}",
            inner.core.len(),
            PAGE / 1024,
            self.config.region_gpa,
            describe_modes(self.config.mode, inner.core.mode, c.mode_changes)
        ));
        report.line(format!("pager: first contents from {}", inner.backing.describe(self.config.region_bytes())));
        report.line(format!("pager: {}", inner.latency.describe()));
        if let Some(why) = &inner.unregister_at_time_limit_failed {
            report.line(format!(
                "pager: at the time limit, unregistering the region failed ({why}): a vCPU waiting in it inside KVM may not have seen the limit"
            ));
        }
        // Per mode, what happened in it: a run the guest switched (the self-tests do) must not
        // read as if the configured mode had delivered every event.
        let ring_used = matches!(self.config.mode, HostMode::Ring | HostMode::Ve) || c.mode_changes > 0;
        let sync_used = self.config.mode == HostMode::Sync || c.mode_changes > 0;
        if ring_used {
            // Mode `ve` gives the ring's protocol to a vCPU with no VE area: its events count here.
            let ve_too = self.config.mode == HostMode::Ve || c.sync_waits_in_ve_mode + c.ve_delivered > 0;
            let modes = if ve_too { "ring mode (and ve mode's vCPUs without a VE area)" } else { "ring mode" };
            report.line(format!(
                "pager: in {modes}: {} events delivered, {} resolved ({} retry, {} failed; {} before their event), {} synchronous waits (no event could be delivered)",
                c.events_delivered,
                c.resolved_retry + c.resolved_failed,
                c.resolved_retry,
                c.resolved_failed,
                c.resolved_before_event,
                c.sync_waits_in_ring_mode,
            ));
        }
        if sync_used {
            let waits = sync_mode_waits(&c);
            report.line(format!("pager: in sync mode: {waits} synchronous waits"));
        }
        if self.config.mode == HostMode::Ve || c.ve_delivered + c.ve_suspends + c.ve_parks > 0 {
            report.line(format!(
                "pager: #VE: {} delivered, {} busy waits, {} suspends, {} parks; {} other synchronous waits in ve mode",
                c.ve_delivered,
                c.ve_busy_waits,
                c.ve_suspends,
                c.ve_parks,
                other_ve_mode_waits(&c),
            ));
        }
        let unreached = inner.ve.iter().filter(|v| v.nmi_breakpoint.is_some()).count();
        if unreached > 0 {
            report.line(format!(
                "pager: {unreached} vCPU(s) stopped with an NMI_WITH_NEXT_VE breakpoint set, their #VE handler never reached (the VM's end takes it away)"
            ));
        }
        report.line(format!("pager: tokens outstanding at exit: {outstanding}"));
        // The cause, where it is the guest's: resolutions waiting in a ring it stopped draining.
        for (vcpu, pool) in inner.vcpus.iter().enumerate().filter_map(|(i, r)| Some((i, r.pool.as_ref()?))) {
            let unconsumed = pool.outstanding() - pool.unresolved();
            if unconsumed > 0 {
                report.line(format!(
                    "pager: vCPU {vcpu} never consumed {unconsumed} resolution(s) the host posted to its ring (head {}, its tail {}): their tokens stay outstanding, and while all {} are, its absent pages are served synchronously",
                    pool.head(),
                    pool.consumed(),
                    pool.entries()
                ));
            }
        }
        report.line(format!(
            "pager: {} pages fetched ({} failed), {} evicted",
            c.pages_fetched, c.fetches_failed, c.pages_evicted
        ));
        if self.present_at_decode > 0 {
            report.line(format!(
                "pager: {} exit(s) retried: the pages of the region their instruction touches were all present by its decode",
                self.present_at_decode
            ));
        }
        let a = inner.apf_counters;
        if a.not_present + a.wake_alls > 0 {
            report.line(format!(
                "pager: KVM async page faults: {} page not present, {} page ready ({} before their page not present, {} of those delivered at another page's access, {} still owed), {} wake-all, {} acknowledged, {} forgotten",
                a.not_present, a.page_ready, a.ready_before_not_present, a.owed_delivered_elsewhere, owed_at_end, a.wake_alls, a.acks, a.forgotten
            ));
        }
        (outstanding, fetching)
    }
}

/// The synchronous waits in sync mode: those in no other mode. Saturating: the counters are
/// read once the run is over, but a report must never panic on them.
fn sync_mode_waits(c: &Counters) -> u64 {
    c.sync_waits.saturating_sub(c.sync_waits_in_ring_mode).saturating_sub(c.sync_waits_in_ve_mode)
}

/// The synchronous waits in mode `ve` that were not for a set busy word. Both are counted in
/// the same lock section, in mode `ve` only, but the report does not rely on it: saturating.
fn other_ve_mode_waits(c: &Counters) -> u64 {
    c.sync_waits_in_ve_mode.saturating_sub(c.ve_busy_waits)
}

/// The modes a run served absent pages in: as configured, then as the guest switched them.
fn describe_modes(configured: HostMode, at_exit: HostMode, changes: u64) -> String {
    let name = config::mode_name;
    match changes {
        0 => format!("{} mode throughout", name(configured)),
        n => format!(
            "{} mode as configured, switched by the guest {n} time(s), {} mode at exit",
            name(configured),
            name(at_exit)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reports_differences_of_counters_never_underflow() {
        let c = Counters { ve_busy_waits: 1, sync_waits_in_ring_mode: 2, sync_waits: 1, ..Counters::default() };
        assert_eq!((other_ve_mode_waits(&c), sync_mode_waits(&c)), (0, 0));
        let c = Counters { sync_waits: 5, sync_waits_in_ring_mode: 1, sync_waits_in_ve_mode: 3, ve_busy_waits: 2, ..c };
        assert_eq!((other_ve_mode_waits(&c), sync_mode_waits(&c)), (1, 1));
    }

    #[test]
    fn the_modes_line_says_what_the_guest_switched() {
        assert_eq!(describe_modes(HostMode::Sync, HostMode::Sync, 0), "sync mode throughout");
        assert_eq!(
            describe_modes(HostMode::Sync, HostMode::Sync, 8),
            "sync mode as configured, switched by the guest 8 time(s), sync mode at exit"
        );
    }
}
