//! The exit protocol: how a run ends and what its status means, identical for both hosts.
//!
//! The guest writes a code to [`crate::port::DEBUG_EXIT`]. QEMU's isa-debug-exit device makes
//! QEMU exit with `(code << 1) | 1`, so no code can produce QEMU's own success status 0. The host
//! stub emulates the same device and maps the code to its own process status with
//! [`host_stub_status`].

/// Every self-test that ran passed.
pub const SUCCESS: u32 = 0x10;
/// A self-test failed, the kernel panicked, an unexpected exception ended the run, or the
/// test filter selected nothing.
pub const FAILURE: u32 = 0x11;

/// The status QEMU exits with after the guest wrote `code` to the isa-debug-exit port.
pub const fn qemu_status(code: u32) -> i32 {
    ((code << 1) | 1) as i32
}

/// The host stub's process status for a guest exit code: 0 for [`SUCCESS`], 1 for anything
/// else. (Status 2 is the host stub's own: a host-side error, see its documentation.)
pub const fn host_stub_status(code: u32) -> i32 {
    if code == SUCCESS { 0 } else { 1 }
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
        assert_eq!(host_stub_status(0), 1);
    }
}
