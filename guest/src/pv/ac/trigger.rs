//! The host stub's split-lock trigger (`pvagent_abi::sld`): a store to the trigger page right
//! before a locked instruction makes the host decide on that instruction; a hypercall tells
//! what it decided. Only the self-tests trigger; a host without the trigger (QEMU, or the host
//! stub without its split-lock producer) makes those tests skip.

use pvagent_abi::cpuid::Features;
use pvagent_abi::hypercall::Nr;
use pvagent_abi::sld::{self, Verdict};

use crate::arch::hypercall::{self, HypercallError};
use crate::arch::paging::{self, Access};

/// Whether this host serves the trigger.
pub fn available() -> bool {
    crate::arch::platform().hypervisor.host_features().has(Features::SPLIT_LOCK_TRIGGER)
}

/// Maps the trigger page, uncached and reachable from CPL 3 (user tests trigger too). Call
/// once at boot, on the boot vCPU, with the trigger available.
pub(super) fn map() {
    paging::map_range(sld::TRIGGER_GPA, sld::TRIGGER_GPA + pvagent_abi::PAGE_SIZE, Access::UserMmio);
}

/// The host's last decision: how many triggers it decided on so far (the last one's sequence
/// number), and its verdict (`Err` with the raw value if the host answered something outside
/// the ABI).
pub fn verdict() -> Result<(u64, Result<Verdict, u64>), HypercallError> {
    hypercall::call(Nr::SplitLockVerdict, [0; 4]).map(|ret| (ret[0], Verdict::try_from(ret[1])))
}

/// The host's policy for split locks of a guest whose detection is off (`Err` with the raw
/// value if the host answered something outside the ABI).
pub fn host_policy() -> Result<Result<sld::HostPolicy, u64>, HypercallError> {
    hypercall::call(Nr::SplitLockPolicy, [0; 4]).map(|ret| sld::HostPolicy::try_from(ret[0]))
}
