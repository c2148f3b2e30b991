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

/// Called by `nmi_common` with the frame it built, GS already the kernel's.
#[unsafe(no_mangle)]
extern "sysv64" fn nmi_dispatch(_frame: &mut TrapFrame) {
    percpu::enter_trap();
    TAKEN.get().fetch_add(1, Ordering::Relaxed);
    percpu::leave_trap();
}

/// NMIs vCPU `cpu` has taken so far.
pub fn taken(cpu: usize) -> u64 {
    TAKEN.of(cpu).load(Ordering::Relaxed)
}
