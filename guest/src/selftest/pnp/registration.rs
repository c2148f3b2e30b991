//! Registration of the page-not-present protocol: accepted, refused where the ABI says so, and
//! safe against a late resolution interrupt.

use super::*;

pub(super) fn registration_is_accepted() -> TestResult {
    let region = pager()?;
    ensure!(region.base % (2 << 20) == 0, "region base {:#x} is not 2 MiB aligned", region.base);
    ensure!(pnp::registered_entries().is_power_of_two(), "ring size {}", pnp::registered_entries());
    ensure_eq!(counter(HostCounter::Outstanding)?, 0, "tokens outstanding at the start");
    Ok(())
}

pub(super) fn bad_registrations_are_refused() -> TestResult {
    use crate::arch::fault::probe_write_msr;
    use pvagent_abi::pnp as abi;
    pager()?;
    let gp = |r: Result<(), crate::arch::fault::Fault>| matches!(r, Err(f) if f.vector == 13);
    // The protocol is on: its vectors cannot change.
    ensure!(gp(probe_write_msr(abi::MSR_VECTORS, 0x6261)), "vectors changed while the protocol is on");
    // Reserved bits, a ring beyond 256 entries, an area outside RAM.
    ensure!(gp(probe_write_msr(abi::MSR_DATA, 0x1000 | 0x10 | 1)), "reserved bits in the event area MSR");
    ensure!(gp(probe_write_msr(abi::MSR_RING, 0x2000 | (9 << 1) | 1)), "a ring of 512 entries");
    ensure!(gp(probe_write_msr(abi::MSR_DATA, (1 << 40) | 1)), "an event area outside RAM");
    // The legacy hole is memory but not RAM: the memory map says so, and the host checks.
    ensure!(gp(probe_write_msr(abi::MSR_DATA, 0xA_0000 | 1)), "an event area in the legacy hole");
    ensure!(gp(probe_write_msr(abi::MSR_RING, 0xF_F000 | 1)), "a ring in the legacy hole");
    // Registration survives the refused writes: the host still serves events.
    ensure_eq!(counter(HostCounter::Outstanding)?, 0, "tokens outstanding");
    let region = pager()?;
    let gpa = fresh_pages(&region, 1)?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data after refused writes");
    // That access's token must be back before the areas may go (under the host stub with
    // several vCPUs on one CPU, its event was seen to come after the read had its data).
    await_no_token_outstanding()?;

    // Partial registrations. No token is outstanding, so the areas may be disabled; the
    // protocol is registered again when `again` drops, whatever happens below.
    let again = Reregister(pnp::registered_entries());
    let vectors = u64::from(pnp::EVENT_VECTOR) | (u64::from(pnp::RESOLUTION_VECTOR) << 8);
    ensure!(probe_write_msr(abi::MSR_DATA, 0).is_ok(), "disabling the event area was refused");
    ensure!(gp(probe_write_msr(abi::MSR_VECTORS, vectors)), "vectors written while the ring is enabled");
    pnp::unregister().map_err(|e| fail(format_args!("unregister: {e:?}")))?;
    // A resolution interrupt that comes after unregistering (on PVM a second one, coalesced
    // behind a burst, is injected at the next exit: the WRMSR of unregistering) finds no ring.
    let before = pnp::stats();
    crate::arch::apic::send_self_ipi(pnp::RESOLUTION_VECTOR);
    {
        // The deadline only turns a lost interrupt into a failure; a self-IPI is immediate.
        let deadline = crate::arch::ticks() + 10 * crate::arch::time::HZ;
        let _irq = IrqGuard::new();
        halt::wait_until(|| {
            (pnp::stats().resolution_irqs > before.resolution_irqs || crate::arch::ticks() > deadline).then_some(())
        });
    }
    ensure!(pnp::stats().resolution_irqs > before.resolution_irqs, "the resolution self-IPI never came");
    ensure_eq!(pnp::stats().ring_corrupt, before.ring_corrupt, "rings called corrupt by a late resolution interrupt");
    ensure!(probe_write_msr(abi::MSR_VECTORS, vectors).is_ok(), "vectors refused with both areas disabled");
    // The guest zeroes `head` and `tail` before it enables a ring; the host checks.
    let ring = SCRATCH_RING.get() as u64;
    let tail = (ring + abi::ring_tail_offset(1)) as *mut u32;
    // SAFETY: the scratch ring is this test's own static page, registered with no host only
    // between the writes below.
    unsafe { core::ptr::write_volatile(tail, 5) };
    ensure!(gp(probe_write_msr(abi::MSR_RING, ring | abi::MSR_ENABLE)), "a ring whose tail is not 0");
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(tail, 0) };
    ensure!(probe_write_msr(abi::MSR_RING, ring | abi::MSR_ENABLE).is_ok(), "a zeroed ring was refused");
    ensure!(probe_write_msr(abi::MSR_RING, 0).is_ok(), "disabling the scratch ring was refused");
    drop(again);
    ensure!(pnp::registered_entries() > 0, "the protocol was not registered again");
    let gpa = fresh_pages(&region, 1)?;
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data after registering again");
    Ok(())
}

/// A page-aligned ring page of this test's own, never the one the protocol uses.
#[repr(C, align(4096))]
struct RingPage([u8; 4096]);

/// Only `bad_registrations_are_refused` touches it, through volatile raw-pointer writes.
static SCRATCH_RING: StaticCell<RingPage> = StaticCell::new(RingPage([0; 4096]));

/// Registers the protocol with a ring of this many entries when dropped.
struct Reregister(u32);

impl Drop for Reregister {
    fn drop(&mut self) {
        if let Err(e) = pnp::register(self.0) {
            kprintln!("pnp: registering again failed: {e:?}");
        }
    }
}
