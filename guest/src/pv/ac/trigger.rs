//! The host stub's split-lock trigger (`pvagent_abi::sld`): arm the host at the address of a
//! locked instruction, run it, ask what the host decided. Only the self-tests use it; a host
//! without the trigger (QEMU, or the host stub without its split-lock producer) makes those
//! tests skip.

use pvagent_abi::cpuid::Features;
use pvagent_abi::hypercall::Nr;
use pvagent_abi::sld::{self, Verdict};

use crate::arch::hypercall::{self, HypercallError};

/// Whether this host serves the trigger.
pub fn available() -> bool {
    crate::arch::platform().hypervisor.host_features().has(Features::SPLIT_LOCK_TRIGGER)
}

/// Arms the host at `insn` (the next execution of that instruction is decided on); returns
/// the arm's sequence number.
pub fn arm(insn: u64) -> Result<u64, HypercallError> {
    hypercall::call(Nr::SplitLockArm, [insn, 0, 0, 0]).map(|ret| ret[0])
}

/// Arms the host to inject #AC at `insn` whatever it is: a deliberately misbehaving host.
pub fn arm_forced(insn: u64) -> Result<u64, HypercallError> {
    hypercall::call(Nr::SplitLockArm, [insn, sld::ARM_FORCE_INJECT, 0, 0]).map(|ret| ret[0])
}

/// The host's last decision: the sequence number of the arm it belongs to, and the verdict
/// (`Err` with the raw value if the host answered something outside the ABI).
pub fn verdict() -> Result<(u64, Result<Verdict, u64>), HypercallError> {
    hypercall::call(Nr::SplitLockVerdict, [0; 4]).map(|ret| (ret[0], Verdict::try_from(ret[1])))
}
