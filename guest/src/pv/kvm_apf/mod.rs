//! KVM's asynchronous page fault ABI, the guest side: the driver a guest needs on stock KVM
//! (and QEMU/KVM), and on the host stub, which implements the host side itself where KVM's own
//! cannot run (`pvagent_abi::kvm_apf` has the numbers, `docs/abi.md` the comparison with the
//! page-not-present ring).
//!
//! The decisions are plain code (below, host-tested) and the shared token table
//! (`pv::tokens`, hashed: KVM picks its tokens); the kernel glue (`kernel`) enables the ABI
//! per vCPU and handles two vectors:
//!
//! - **#PF**, first thing: read CR2, then read and clear the area's `flags`. 0: a real page
//!   fault, which goes where it always went (`arch::fault`). "Page not present" with error code
//!   0 (KVM's): the token is in CR2; park the task on it, or wait in the HLT loop when it cannot
//!   sleep (`pv::wait`), then return, so the access is retried. "Page not present" with another
//!   error code: `flags` is stale or bogus (KVM's #PF always has error code 0, and a real #PF
//!   from CPL 3 always has U set), so the fault is a real one, and the flags are counted.
//! - **"page ready"** ([`PAGE_READY_VECTOR`]): take the token, clear it, acknowledge, and wake
//!   its waiter; `0xFFFF_FFFF` wakes every waiter of the vCPU.

use pvagent_abi::kvm_apf as abi;

#[cfg(kernel)]
mod kernel;
#[cfg(kernel)]
pub use kernel::*;

/// The "page ready" vector this guest registers: in the page-not-present block of vectors,
/// the same priority class as the ring's resolution.
pub const PAGE_READY_VECTOR: u8 = 0x53;
/// Entries of each vCPU's token table: twice the tokens KVM keeps outstanding per vCPU, so
/// that early wakes and abandoned tokens fit beside them and probes stay short.
pub const TABLE_ENTRIES: usize = 2 * abi::MAX_OUTSTANDING;

/// What a task waiting for a token is blocked on, as the scheduler shows it.
pub const WAIT_OWNER: &str = "KVM async page fault token";

/// Whether KVM's features leaf (EAX) offers what this driver needs: the ABI, and "page ready"
/// as an interrupt (without it, current KVM delivers nothing).
pub fn offered(features: u32) -> bool {
    features & (abi::FEATURE_ASYNC_PF | abi::FEATURE_ASYNC_PF_INT) == abi::FEATURE_ASYNC_PF | abi::FEATURE_ASYNC_PF_INT
}

/// What a #PF is, from the `flags` the handler read and cleared, its error code and the
/// interrupted context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFault {
    /// `flags` was 0: a page fault of the guest's own.
    Real,
    /// `flags` said "page not present", but the error code is not KVM's 0: a page fault of the
    /// guest's own, with flags the host (or a stale write) left; counted, then handled as real.
    RealWithBogusFlags,
    /// KVM's "page not present": CR2 holds the token.
    PageNotPresent,
    /// A "page not present" where this guest registered for none (CPL 0, or interrupts off):
    /// the host broke the ABI, and the context cannot be parked safely.
    Misdelivered,
}

/// Classifies a #PF (see [`PageFault`]). Flags other than "page not present" are no event this
/// ABI defines: a real fault. KVM injects its "page not present" with error code 0
/// (`abi::PAGE_NOT_PRESENT_ERROR_CODE`); a real #PF from CPL 3 always has U (bit 2) set, so the
/// two cannot be confused there, whatever `flags` says.
pub fn classify(flags: u32, error_code: u64, from_user: bool, interrupts_were_enabled: bool) -> PageFault {
    if flags & abi::REASON_PAGE_NOT_PRESENT == 0 {
        PageFault::Real
    } else if error_code != abi::PAGE_NOT_PRESENT_ERROR_CODE {
        PageFault::RealWithBogusFlags
    } else if from_user && interrupts_were_enabled {
        PageFault::PageNotPresent
    } else {
        PageFault::Misdelivered
    }
}

/// What a "page ready" interrupt asks, from the token it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageReady {
    /// No token: nothing to do (an interrupt that was not KVM's, or one raised twice).
    Spurious,
    /// Wake every waiter of this vCPU.
    WakeAll,
    /// Wake the waiter of this token (or keep the wake for its event).
    Wake(u32),
}

/// Reads a "page ready" token.
pub fn page_ready(token: u32) -> PageReady {
    match token {
        0 => PageReady::Spurious,
        abi::TOKEN_WAKE_ALL => PageReady::WakeAll,
        token => PageReady::Wake(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_needs_the_abi_and_page_ready_as_an_interrupt() {
        assert!(offered(0x0100_7efb), "what KVM reports on these machines");
        assert!(!offered(abi::FEATURE_ASYNC_PF), "page ready as #PF only: KVM delivers nothing now");
        assert!(!offered(abi::FEATURE_ASYNC_PF_INT));
    }

    #[test]
    fn the_flags_and_kvms_error_code_make_a_page_fault_an_async_one() {
        assert_eq!(classify(0, 0, true, true), PageFault::Real);
        assert_eq!(classify(0, 0, false, false), PageFault::Real, "a kernel fault stays a kernel fault");
        assert_eq!(classify(1, 0, true, true), PageFault::PageNotPresent);
        assert_eq!(classify(1, 0, false, true), PageFault::Misdelivered, "CPL 0: this guest never asked");
        assert_eq!(classify(1, 0, true, false), PageFault::Misdelivered);
        assert_eq!(classify(2, 0, true, true), PageFault::Real, "no other flag is defined");
    }

    #[test]
    fn flags_beside_an_error_code_kvm_never_gives_are_a_real_fault() {
        // A user read of an absent page (U), a user write (U|W), a protection fault (U|P).
        for error_code in [0b100, 0b110, 0b101] {
            assert_eq!(classify(1, error_code, true, true), PageFault::RealWithBogusFlags, "{error_code:#b}");
        }
        assert_eq!(classify(1, 0b10, false, true), PageFault::RealWithBogusFlags, "a kernel write");
    }

    #[test]
    fn page_ready_tokens() {
        assert_eq!(page_ready(0), PageReady::Spurious);
        assert_eq!(page_ready(0xFFFF_FFFF), PageReady::WakeAll);
        assert_eq!(page_ready(0x3000), PageReady::Wake(0x3000));
    }
}
