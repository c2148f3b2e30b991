//! Hypercalls to the host stub through its port (see `pvagent_abi::hypercall`).

use pvagent_abi::hypercall::{Nr, Request, Status};

/// Why a hypercall did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallError {
    /// The host stub is not there (no hypercall feature in its CPUID leaf).
    NoHost,
    /// The host answered with this status.
    Status(Status),
    /// The host wrote a status that is not in the ABI.
    BadStatus(u32),
}

/// Calls hypercall `nr` with `args`; returns `ret`.
pub fn call(nr: Nr, args: [u64; 4]) -> Result<[u64; 2], HypercallError> {
    if !super::platform().hypervisor.host_features().has(pvagent_abi::cpuid::Features::HYPERCALL) {
        return Err(HypercallError::NoHost);
    }
    let mut request = Request { nr: nr as u32, status: u32::MAX, args, ret: [0; 2] };
    let addr = &mut request as *mut Request as u64;
    // The request is on this kernel stack: identity mapped, and below 1 GiB (`arch::layout`).
    debug_assert!(addr < pvagent_abi::hypercall::REQUEST_ADDR_LIMIT);
    // SAFETY: the host stub reads and writes only the request at `addr` while the vCPU is
    // stopped in this `out`. The asm has no `nomem`: the compiler must store the request
    // before it and may not cache it across it.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") pvagent_abi::port::HYPERCALL, in("eax") addr as u32,
            options(nostack, preserves_flags));
    }
    // SAFETY: `request` is a live local; volatile because the host wrote it behind the
    // compiler's back.
    let answer = unsafe { core::ptr::read_volatile(&request) };
    match Status::try_from(answer.status) {
        Ok(Status::Ok) => Ok(answer.ret),
        Ok(status) => Err(HypercallError::Status(status)),
        Err(raw) => Err(HypercallError::BadStatus(raw)),
    }
}
