//! Injection costs: the host injects an event on the way back from each `out` to its injection
//! port (an interrupt, an #AC, an already-resolved page-not-present event); the guest handles
//! it and the loop goes on.

use core::sync::atomic::{AtomicU64, Ordering};

use pvagent_abi::port::{BENCH_INJECT, BenchInject};
use pvagent_guest::arch::{apic, trap};
use pvagent_guest::kprintln;
use pvagent_guest::pv::{ac, pnp};

use crate::calibrate::{counted_port_loop, cycles_to_ns, port_loop};
use crate::count::Fields;
use crate::{Result, Settings};

/// The vector of the benchmark interrupt (its handler only counts and signals EOI).
pub const BENCH_VECTOR: u8 = 0x60;

static BENCH_IRQS: AtomicU64 = AtomicU64::new(0);

fn on_bench_interrupt(_frame: &mut trap::TrapFrame) {
    BENCH_IRQS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

/// Each measurement comes with the plain round trip through the same port measured right
/// before it (`plain_ns`), and each with what KVM counted (`insns=`, `exits=`, `plain_insns=`,
/// `plain_exits=`, per loop).
pub fn inject(s: Settings) -> Result<()> {
    let ops = if s.quick { 50 } else { 200 };
    trap::register(BENCH_VECTOR, on_bench_interrupt);
    // The page-not-present kind needs a present page of the region: page 0, touched now.
    let pnp_page = pnp::host_region().filter(|(r, _)| r.pages > 0 && pnp::registered_entries() > 0);
    if let Some((region, _)) = pnp_page {
        // SAFETY: the region is mapped; this read makes page 0 present.
        let _ = unsafe { core::ptr::read_volatile(region.base as *const u64) };
    }
    let plain = BenchInject::None.encode(0, 0);
    let kinds: [(&str, u32); 3] = [
        ("interrupt", BenchInject::Interrupt.encode(BENCH_VECTOR, 0)),
        ("exception_ac", BenchInject::Exception.encode(pvagent_abi::sld::AC_VECTOR, 0)),
        ("page_not_present", BenchInject::PageNotPresent.encode(0, 0)),
    ];
    for (name, value) in kinds {
        if name == "page_not_present" && pnp_page.is_none() {
            kprintln!("bench: inject_{name} unavailable=1");
            continue;
        }
        // One pass untimed: what happens only the first time (a rate-limited report of the
        // first spurious #AC, first touches) is not the cost per event.
        port_loop(BENCH_INJECT, value, ops, s.empty);
        for rep in 0..s.reps {
            let plain_loop = counted_port_loop(BENCH_INJECT, plain, ops, s.empty)?;
            let (events, irqs, spurious) =
                (pnp::stats().events, BENCH_IRQS.load(Ordering::Relaxed), ac::stats().spurious);
            let event_loop = counted_port_loop(BENCH_INJECT, value, ops, s.empty)?;
            // Counted where the guest handled them, so an event the host did not deliver is
            // not taken for one that was.
            let handled = match name {
                "interrupt" => BENCH_IRQS.load(Ordering::Relaxed) - irqs,
                "exception_ac" => ac::stats().spurious - spurious,
                _ => pnp::stats().events - events,
            };
            kprintln!(
                "bench: inject_{name} rep={rep} ops={ops} handled={handled} total_ns={} plain_ns={}{}{}",
                cycles_to_ns(event_loop.cycles),
                cycles_to_ns(plain_loop.cycles),
                Fields("", event_loop.counts),
                Fields("plain_", plain_loop.counts)
            );
        }
    }
    Ok(())
}
