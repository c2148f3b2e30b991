//! Mode `kvm-apf-kernel`: KVM's own async page fault path serves the guest, and the pager only
//! supplies pages. Every access to an absent page of the region faults on the userfaultfd
//! (`region::Gate::KvmAsync`) and waits there; this thread reads the faults and hands each to
//! the pager's state machine, telling two kinds apart by the faulting thread:
//!
//! - **the vCPU thread**: the access waits inside KVM (CPL 0, interrupts off, or no async page
//!   fault possible): the synchronous path, which starts the fetch (and releases a held page);
//! - **another thread** (KVM's async worker): KVM gave the guest "page not present" with a token
//!   of its own for a CPL 3 access with interrupts on (or halted the vCPU, where it could not):
//!   an event, whose fetch starts as for any event. Filling the page wakes the worker, and KVM
//!   then delivers "page ready" itself.
//!
//! The thread stops when its stop descriptor (an eventfd) is written.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::access::fill;
use super::completion::{complete_fetch, submit};
use super::error::PagerError;
use super::shared::Shared;
use super::state::{Decision, PageState};
use super::uffd::{Fault, Uffd};

/// The reading thread; dropping it stops and joins it.
#[derive(Debug)]
pub struct FaultReader {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl FaultReader {
    /// Starts reading the faults of `uffd` (the region's) for the pager's `shared` state.
    pub fn start(shared: Arc<Shared>, uffd: Uffd) -> io::Result<Self> {
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_fd = stop.as_raw_fd();
        let thread =
            std::thread::Builder::new().name("pnp-uffd-faults".into()).spawn(move || run(&shared, &uffd, stop_fd))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for FaultReader {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to the eventfd we own.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, uffd: &Uffd, stop: i32) {
    let mut fds = [
        libc::pollfd { fd: uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: polls the two descriptors in the array on our stack, with no timeout.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            shared.report_violation(&mut shared.lock(), PagerError::ReadFaults(e));
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        loop {
            match uffd.read_fault() {
                Ok(Some(fault)) => on_fault(shared, fault),
                Ok(None) => break,
                Err(e) => {
                    shared.report_violation(&mut shared.lock(), PagerError::ReadFaults(e));
                    return;
                }
            }
        }
    }
}

/// One fault: the state machine decides, and the fetch it calls for starts (or completes at
/// once). A vCPU thread's own fault is that vCPU's; KVM's worker does not say for which vCPU it
/// faults (KVM delivers its "page not present" and "page ready" to the right vCPU itself), so
/// the pager books its tokens to vCPU 0.
fn on_fault(shared: &Shared, fault: Fault) {
    /// Whose KVM's worker's faults are booked to.
    const WORKER_VCPU: usize = 0;
    let mut guard = shared.lock();
    let inner = &mut *guard;
    let Some(page) = inner.region.as_ref().and_then(|r| r.page_of_host_address(fault.address)) else {
        shared.report_violation(inner, PagerError::FaultOutsideRegion { address: fault.address });
        return;
    };
    let faulting_vcpu = inner.vcpu_tids.iter().position(|tid| *tid == Some(fault.thread));
    let from_vcpu = faulting_vcpu.is_some();
    let vcpu = faulting_vcpu.unwrap_or(WORKER_VCPU);
    let decision = match inner.core.state(page) {
        // Filled since the fault was queued (the fill woke it), or a second fault of KVM's
        // worker for a page already on its way: nothing to do.
        Some(PageState::Present) | None => return,
        Some(PageState::Fetching { .. }) if !from_vcpu => return,
        _ if from_vcpu => {
            // The same vCPU faulting again on a page it waits for is the same wait: its fault
            // was woken without the page (by a signal, say) and taken again. One decision, one
            // synchronous wait counted, per wait.
            if inner.kernel_sync_since.contains_key(&(vcpu, page)) {
                inner.kernel_repeat_faults += 1;
                return;
            }
            inner.kernel_sync_since.insert((vcpu, page), Instant::now());
            inner.core.on_access(vcpu, page, None)
        }
        _ => inner.core.on_access(vcpu, page, Some(&mut inner.kernel_tokens)),
    };
    let complete_now = match decision {
        Decision::Continue => false,
        Decision::PresentNow | Decision::DeliverResolved { make_present: true, .. } => {
            if let Err(e) = fill(inner, page) {
                shared.report_violation(inner, e);
            }
            false
        }
        Decision::Deliver { token, fetch } => {
            let gpa = inner.region.as_ref().map_or(0, |r| r.gpa()) + page * super::region::PAGE as u64;
            inner.timeline.event(vcpu, token.0, gpa, None);
            fetch.is_some() && submit(inner, page)
        }
        Decision::Wait { fetch } => fetch.is_some() && submit(inner, page),
        Decision::DeliverResolved { .. } | Decision::StopFailedPage => {
            // Failing pages are refused in this mode (`config`), so nothing here can fail.
            false
        }
    };
    drop(guard);
    if complete_now {
        complete_fetch(shared, page);
    }
}
