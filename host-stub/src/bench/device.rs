//! The benchmarks' device: a counting port (a window over the vCPU's KVM statistics around a
//! timed loop, `count.rs`), a null port (one exit, nothing done: the baseline round trip; also
//! the switch to the bare loop the baseline is compared with) and an injection port that
//! injects an interrupt, an exception or an already-resolved page-not-present event on the way
//! back into the guest, so that the cost of producing and handling an event can be measured
//! against the baseline. The page-not-present kind reaches the demand pager through the one
//! narrow way it offers (`PageEventInjector`); without this device, nothing of it is served.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use pvagent_abi::port::{BENCH_COUNT, BENCH_INJECT, BENCH_NULL, BenchInject, BenchLoop};

use super::count::Counting;
use crate::error::{Error, Result};
use crate::handler::{
    ExitHandler, Handled, PageEventInjection, PageEventInjector, Report, Stop, VcpuCtx, fill_in, out_word,
};
use crate::trace::{Arg, Tracer, Track};

/// The bench device.
#[derive(Debug)]
pub struct Bench {
    vm: Arc<VmFd>,
    tracer: Tracer,
    /// The demand pager's injector, when the run has a pager.
    page_events: Option<Box<dyn PageEventInjector>>,
    null_exits: u64,
    injected: u64,
    /// Page-not-present injections that found no event deliverable (nothing was done).
    page_events_not_deliverable: u64,
    refused: u64,
    bare_loop_requests: u64,
    /// The VM's vCPUs: the bare loop runs vCPU 0 alone, so it is refused when there are more.
    vcpus: usize,
    /// The counting port's windows.
    counting: Counting,
}

impl Bench {
    /// A bench device for the VM behind `vm`; its injections go on `tracer`'s timeline, and its
    /// page-not-present events through `page_events` (none: that kind is refused). With
    /// `window_stats`, each counting window prints every KVM statistic that changed in it. The
    /// VM has `vcpus` vCPUs.
    pub fn new(
        vm: Arc<VmFd>,
        vcpus: usize,
        tracer: Tracer,
        page_events: Option<Box<dyn PageEventInjector>>,
        window_stats: bool,
    ) -> Self {
        Self {
            vm,
            tracer,
            page_events,
            null_exits: 0,
            injected: 0,
            page_events_not_deliverable: 0,
            refused: 0,
            bare_loop_requests: 0,
            vcpus,
            counting: if window_stats { Counting::with_all_stats() } else { Counting::default() },
        }
    }
}

/// Whether the bench port may inject exception `vector`, and if so whether it pushes an error
/// code (SDM vol. 3, table 6-1). NMI, #DF and #MC are not faults a handler returns from, and
/// reserved vectors are not exceptions at all: those are refused.
fn injectable(vector: u8) -> Option<bool> {
    match vector {
        10..=14 | 17 | 21 | 29 | 30 => Some(true),
        0 | 1 | 3..=7 | 16 | 19 | 20 | 28 => Some(false),
        _ => None,
    }
}

impl ExitHandler for Bench {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        match port {
            BENCH_NULL => {
                match out_word(data) {
                    0 => self.null_exits += 1,
                    // The bare loop is one thread running vCPU 0: with others running beside it
                    // the run loop would have to stop and restart them around it. The baseline
                    // needs one vCPU only, so with several it is refused, clearly.
                    v if v == BenchLoop::Bare as u32 && self.vcpus > 1 => {
                        return Err(Error::BareLoopOnOneVcpu { vcpus: self.vcpus });
                    }
                    v if v == BenchLoop::Bare as u32 => {
                        self.bare_loop_requests += 1;
                        ctx.stop = Some(Stop::BareLoop);
                    }
                    // Already in this loop.
                    v if v == BenchLoop::Stub as u32 => self.null_exits += 1,
                    _ => self.refused += 1,
                }
                Ok(Handled::Yes)
            }
            BENCH_INJECT => {
                match BenchInject::decode(out_word(data)) {
                    Some((BenchInject::None, _, _)) => self.null_exits += 1,
                    Some((BenchInject::Interrupt, vector, _)) if vector >= 32 => {
                        let msi = crate::vcpu::fixed_msi(crate::vcpu::apic_id(ctx.index), vector);
                        self.vm.signal_msi(msi).map_err(Error::SignalMsi)?;
                        self.injected += 1;
                        self.tracer.instant(Track::Vcpu(ctx.index), "inject interrupt", || {
                            vec![("vector", Arg::Hex(vector.into())), ("by", Arg::Text("bench".into()))]
                        });
                    }
                    Some((BenchInject::Exception, vector, _)) if let Some(has_error_code) = injectable(vector) => {
                        ctx.inject_exception(vector, has_error_code.then_some(0))?;
                        self.injected += 1;
                        self.tracer.instant(Track::Vcpu(ctx.index), "inject exception", || {
                            vec![("vector", Arg::Uint(vector.into())), ("by", Arg::Text("bench".into()))]
                        });
                    }
                    Some((BenchInject::PageNotPresent, _, page)) => match &self.page_events {
                        Some(pager) => match pager.inject_resolved(ctx, u64::from(page))? {
                            PageEventInjection::Delivered => self.injected += 1,
                            PageEventInjection::NotDeliverable => self.page_events_not_deliverable += 1,
                            PageEventInjection::OutsideRegion => self.refused += 1,
                        },
                        None => self.refused += 1,
                    },
                    _ => self.refused += 1,
                }
                Ok(Handled::Yes)
            }
            BENCH_COUNT => {
                self.counting.write(ctx, out_word(data));
                Ok(Handled::Yes)
            }
            _ => Ok(Handled::No),
        }
    }

    fn io_in(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Result<Handled> {
        match port {
            BENCH_NULL => fill_in(data, BenchLoop::Stub as u32),
            BENCH_COUNT => fill_in(data, self.counting.read(ctx.index)),
            _ => return Ok(Handled::No),
        }
        Ok(Handled::Yes)
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(self.name(), "null_exits", self.null_exits);
        report.counter(self.name(), "bare_loop_requests", self.bare_loop_requests);
        report.counter(self.name(), "injected", self.injected);
        report.counter(self.name(), "page_events_not_deliverable", self.page_events_not_deliverable);
        report.counter(self.name(), "refused", self.refused + self.counting.refused);
        report.counter(self.name(), "count_windows", self.counting.windows_closed);
        report.counter(self.name(), "count_unavailable", self.counting.unavailable);
        match self.counting.lost_output.take() {
            Some(source) => Err(crate::Error::Stdout(source)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_returnable_exceptions_are_injected_each_with_its_error_code() {
        assert_eq!(injectable(17), Some(true), "#AC pushes an error code");
        assert_eq!(injectable(14), Some(true), "#PF too");
        assert_eq!(injectable(6), Some(false), "#UD does not");
        for refused in [2, 8, 9, 15, 18, 22, 31, 32, 255] {
            assert_eq!(injectable(refused), None, "vector {refused}");
        }
    }
}
