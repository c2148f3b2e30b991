//! The NMI: counted per vCPU, and nothing else. Its entry (`nmi_common` in `trap`) is paranoid
//! about GS, since an NMI can land anywhere, also between an entry from CPL 3 and its `swapgs`
//! (the host's `fault::NMI_WITH_NEXT_VE` puts one exactly there) or between the exit path's
//! `swapgs` and its `iretq`.
//!
//! It runs on its IST stack and never touches demand-paged memory: a #VE inside it would end
//! with IRETQ, which unblocks NMIs while this handler still runs on the IST stack, and the next
//! NMI would start at the top of that stack again, over this one's frame.

use core::sync::atomic::{AtomicU64, Ordering};

use super::percpu::{self, CpuLocal, MAX_CPUS};
use super::trap::TrapFrame;

/// NMIs each vCPU has taken.
static TAKEN: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// Of those, the ones whose entry found the user's GS base and swapped (the frame's error code
/// slot says so): an NMI between an entry from CPL 3 and its `swapgs`, or at CPL 3 itself.
static SWAPPED_GS: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);
/// Of those, the ones that interrupted a trap handler (trap depth above 0 at entry): an NMI
/// inside a handler, not after its IRETQ.
static IN_HANDLER: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

/// Called by `nmi_common` with the frame it built, GS already the kernel's.
#[unsafe(no_mangle)]
extern "sysv64" fn nmi_dispatch(frame: &mut TrapFrame) {
    if frame.error_code == 1 {
        SWAPPED_GS.get().fetch_add(1, Ordering::Relaxed);
    }
    if percpu::trap_depth() > 0 {
        IN_HANDLER.get().fetch_add(1, Ordering::Relaxed);
    }
    percpu::enter_trap();
    TAKEN.get().fetch_add(1, Ordering::Relaxed);
    percpu::leave_trap();
}

/// What vCPU `cpu`'s NMIs were so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// NMIs taken.
    pub taken: u64,
    /// Of those, entries that found the user's GS base and swapped it.
    pub swapped_gs: u64,
    /// Of those, NMIs that interrupted a trap handler.
    pub in_handler: u64,
}

/// [`Counts`] of vCPU `cpu`.
pub fn counts(cpu: usize) -> Counts {
    let get = |c: &CpuLocal<AtomicU64>| c.of(cpu).load(Ordering::Relaxed);
    Counts { taken: get(&TAKEN), swapped_gs: get(&SWAPPED_GS), in_handler: get(&IN_HANDLER) }
}
