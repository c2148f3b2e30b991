//! A minimal userfaultfd wrapper: create one (with `UFFD_FEATURE_SIGBUS`, or with
//! `UFFD_FEATURE_THREAD_ID` for a reader of its faults), register a range for missing-page
//! tracking, fill pages atomically with `UFFDIO_COPY`, read the faults of a range without
//! SIGBUS, and unregister it (which lets every waiting fault go on without it).
//!
//! Written against the kernel's uAPI (`linux/userfaultfd.h`) rather than with the `userfaultfd`
//! crate: its `-sys` part runs bindgen at build time whatever its features, and bindgen needs
//! libclang, which a fresh machine lacks (`userfaultfd` 0.9 fails to build there: "Unable to
//! find libclang"); xtask, which could install it, itself depends on this crate. Three ioctls
//! and four structures, sizes asserted below (docs/design.md, "Crates from elsewhere"). With
//! `UFFD_FEATURE_SIGBUS` an access to a missing page does not wait for a handler: a user access
//! gets SIGBUS, and KVM's synchronous access on behalf of a vCPU fails, so KVM_RUN returns to
//! the host instead of blocking. KVM's asynchronous page-fault path (taken whenever the guest
//! has interrupts on) reads the failure as "needs I/O" and retries for ever, which is why the
//! region also keeps absent pages inaccessible (`region`): that is what makes every access exit.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

const UFFDIO: u32 = 0xAA;
/// The API version `UFFDIO_API` negotiates.
const UFFD_API: u64 = 0xAA;
/// `UFFD_FEATURE_SIGBUS`: missing-page faults raise SIGBUS / fail instead of waiting.
const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_THREAD_ID`: each fault message names the faulting thread.
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_EVENT_PAGEFAULT`: a message's event for a missing-page fault.
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1;
/// Bit of `UFFDIO_COPY` in the ioctls a registered range supports (`_UFFDIO_COPY`).
const IOCTL_COPY_BIT: u64 = 1 << 0x03;

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` for a page fault: the event, then (at 8) `flags`, `address`, and the
/// faulting thread's id with `UFFD_FEATURE_THREAD_ID`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u32,
    reserved_tail: u32,
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);
const _: () = assert!(std::mem::offset_of!(UffdMsg, address) == 16);
const _: () = assert!(std::mem::offset_of!(UffdMsg, ptid) == 24);
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_ior_nr!(UFFDIO_UNREGISTER, UFFDIO, 0x01, UffdioRange);

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    file: File,
}

fn check(ret: i32) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// What accessing a missing page does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// The access fails (SIGBUS for the host, an error for KVM): nothing ever waits.
    Fails,
    /// The access waits until the page is filled; [`Uffd::read_fault`] reports it, with the
    /// faulting thread.
    Waits,
}

/// A missing-page fault someone waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The host address that faulted.
    pub address: u64,
    /// The faulting thread's id.
    pub thread: u32,
}

impl Uffd {
    /// Opens a userfaultfd whose missing pages behave as `missing` says.
    pub fn new(missing: Missing) -> io::Result<Self> {
        // SAFETY: the userfaultfd syscall takes only flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd as i32) };
        let wanted = match missing {
            Missing::Fails => UFFD_FEATURE_SIGBUS,
            Missing::Waits => UFFD_FEATURE_THREAD_ID,
        };
        let mut api = UffdioApi { api: UFFD_API, features: wanted, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes exactly one UffdioApi, which lives on our stack.
        check(unsafe { libc::ioctl(file.as_raw_fd(), UFFDIO_API(), &mut api) })?;
        if api.features & wanted != wanted {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel lacks userfaultfd features {wanted:#x}"),
            ));
        }
        Ok(Self { file })
    }

    /// Another handle on the same userfaultfd (to unregister from another thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { file: self.file.try_clone()? })
    }

    /// The descriptor, to wait for faults with `poll`.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// The next page fault waiting to be read, if any (non-blocking); other events are skipped.
    pub fn read_fault(&self) -> io::Result<Option<Fault>> {
        loop {
            let mut msg = UffdMsg::default();
            // SAFETY: reads at most one message into a buffer of exactly its size on our stack.
            let n = unsafe {
                libc::read(self.file.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), std::mem::size_of::<UffdMsg>())
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
            }
            if n as usize != std::mem::size_of::<UffdMsg>() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a userfaultfd message of {n} bytes")));
            }
            if msg.event == UFFD_EVENT_PAGEFAULT {
                return Ok(Some(Fault { address: msg.address, thread: msg.ptid }));
            }
        }
    }

    /// Stops tracking `[start, start + len)`: every fault waiting in it goes on without the
    /// userfaultfd (a missing anonymous page then reads as zeros).
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one UffdioRange on our stack.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_UNREGISTER(), &mut range) })
    }

    /// Tracks missing pages in `[start, start + len)` (page-aligned host addresses).
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode: REGISTER_MODE_MISSING, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER reads and writes one UffdioRegister on our stack; the range
        // is a mapping the caller owns.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_REGISTER(), &mut reg) })?;
        if reg.ioctls & IOCTL_COPY_BIT == 0 {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "UFFDIO_COPY is not available on the range"));
        }
        Ok(())
    }

    /// Fills the missing page at host address `dst` with `page` (atomically: no access sees a
    /// partial page). `EEXIST` means the page was already present.
    pub fn copy(&self, dst: u64, page: &[u8; 4096]) -> io::Result<()> {
        let mut copy = UffdioCopy { dst, src: page.as_ptr() as u64, len: 4096, mode: 0, copy: 0 };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (our page buffer) into the registered
        // range at `dst`, and writes the `copy` field of the struct on our stack.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_COPY(), &mut copy) })
    }
}
