//! The exit protocol: how a run ends and what its status means, identical for both hosts.
//!
//! The guest writes a code to [`crate::port::DEBUG_EXIT`]. QEMU's isa-debug-exit device makes
//! QEMU exit with `(code << 1) | 1`, so no code can produce QEMU's own success status 0. The host
//! stub emulates the same device and maps the code to its own process status with
//! [`host_stub_status`].

/// Every self-test that ran passed.
pub const SUCCESS: u32 = 0x10;
/// A self-test failed, the kernel panicked, or an unexpected exception ended the run.
pub const FAILURE: u32 = 0x11;
/// The test filter (`tests=` on the command line) selected no test: nothing was judged, and
/// the mistake is the command line's (a host reports it as bad usage, not as a failed test).
pub const NO_TEST_SELECTED: u32 = 0x12;

/// The status QEMU exits with after the guest wrote `code` to the isa-debug-exit port.
pub const fn qemu_status(code: u32) -> i32 {
    ((code << 1) | 1) as i32
}

/// The host stub's process status for a guest exit code: 0 for [`SUCCESS`], 2 (bad usage)
/// for [`NO_TEST_SELECTED`], 1 for anything else. (Status 2 is otherwise the host stub's own:
/// a host-side error, see its documentation.)
pub const fn host_stub_status(code: u32) -> i32 {
    match code {
        SUCCESS => 0,
        NO_TEST_SELECTED => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_statuses_are_distinct_and_never_zero() {
        assert_eq!(qemu_status(SUCCESS), 33);
        assert_eq!(qemu_status(FAILURE), 35);
        assert_eq!(host_stub_status(SUCCESS), 0);
        assert_eq!(host_stub_status(FAILURE), 1);
        assert_eq!(qemu_status(NO_TEST_SELECTED), 37);
        assert_eq!(host_stub_status(NO_TEST_SELECTED), 2, "a filter that selects nothing is bad usage");
        assert_eq!(host_stub_status(0), 1);
    }
}
