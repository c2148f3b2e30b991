//! The demand-paged region's memory: an anonymous mapping behind its own memslot, plus the
//! backing store the pages come from and go back to.
//!
//! An absent page is kept two ways at once:
//! - **inaccessible** (`PROT_NONE`): KVM cannot map it, so every guest access returns to the
//!   host promptly. This is the gate that works at every privilege level: on the PVM
//!   `/dev/kvm` of these machines a guest CPL 3 access to a page that is merely userfaultfd-
//!   missing (SIGBUS mode) never leaves KVM (it retries the fault and the emulation forever),
//!   while a `PROT_NONE` page ends KVM_RUN with EFAULT (CPL 3) or KVM_EXIT_MMIO (CPL 0); on
//!   VMX/SVM KVM it is KVM_EXIT_MEMORY_FAULT either way;
//! - **missing** in a userfaultfd registered with `UFFD_FEATURE_SIGBUS`: a page is only ever
//!   filled whole and atomically (`UFFDIO_COPY`), and should the gate ever be opened on a page
//!   that was not filled, the access faults instead of reading a silently zero-filled page.
//!
//! A page becomes present by `UFFDIO_COPY` (still inaccessible) and then `mprotect` to
//! read/write; it becomes absent by saving it to the backing store, closing the gate and
//! dropping the memory. The host reads and writes the mapping only for present pages.

use std::io;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use super::uffd::Uffd;

/// Bytes per page.
pub const PAGE: usize = 4096;

/// The region and its backing store.
#[derive(Debug)]
pub struct DemandRegion {
    gpa: u64,
    pages: u64,
    host: *mut u8,
    uffd: Uffd,
    backing: Vec<u8>,
}

// SAFETY: `host` is a private mapping owned by this value; every access goes through `&self`/
// `&mut self` methods, and the pager serializes them under its lock.
unsafe impl Send for DemandRegion {}
// SAFETY: as above.
unsafe impl Sync for DemandRegion {}

impl DemandRegion {
    /// Maps `pages` pages for guest address `gpa` (all missing), with `backing` as their
    /// contents (its length must be `pages * PAGE`).
    pub fn new(gpa: u64, pages: u64, backing: Vec<u8>) -> io::Result<Self> {
        assert_eq!(backing.len() as u64, pages * PAGE as u64, "backing store size");
        let len = pages as usize * PAGE;
        // SAFETY: a fresh anonymous private mapping; the result is checked.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Self { gpa, pages, host: host as *mut u8, uffd: Uffd::new()?, backing };
        region.uffd.register(host as u64, len as u64)?;
        region.protect(0, pages, libc::PROT_NONE)?;
        Ok(region)
    }

    /// Registers the region as memslot `slot`.
    pub fn add_memslot(&self, vm: &VmFd, slot: u32) -> Result<(), kvm_ioctls::Error> {
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: self.gpa,
            memory_size: self.pages * PAGE as u64,
            userspace_addr: self.host as u64,
        };
        // SAFETY: the mapping lives as long as this value, which the VM's owner keeps until
        // after the VM is closed (the pager is dropped after the VM fd).
        unsafe { vm.set_user_memory_region(desc) }
    }

    /// The region's first guest address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The page holding `gpa`, if it is in the region.
    pub fn page_of(&self, gpa: u64) -> Option<u64> {
        let offset = gpa.checked_sub(self.gpa)?;
        let page = offset / PAGE as u64;
        (page < self.pages).then_some(page)
    }

    /// A copy of the backing store's page.
    pub fn backing_page(&self, page: u64) -> Box<[u8; PAGE]> {
        let start = page as usize * PAGE;
        let mut out = Box::new([0u8; PAGE]);
        out.copy_from_slice(&self.backing[start..start + PAGE]);
        out
    }

    fn protect(&self, page: u64, count: u64, prot: libc::c_int) -> io::Result<()> {
        assert!(page + count <= self.pages, "protection change outside the region");
        let addr = self.host.wrapping_add(page as usize * PAGE);
        // SAFETY: changes the protection of pages of our own mapping; the pager's state decides
        // which pages the guest may see.
        let ret = unsafe { libc::mprotect(addr as *mut libc::c_void, count as usize * PAGE, prot) };
        if ret != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Makes `page` present with `contents`: installs them atomically while the page is still
    /// inaccessible, then opens it to the guest.
    pub fn fill(&self, page: u64, contents: &[u8; PAGE]) -> io::Result<()> {
        match self.uffd.copy(self.host as u64 + page * PAGE as u64, contents) {
            Ok(()) => {}
            // Already filled (a page evicted while inaccessible keeps no memory, so this means
            // a double fill): opening it is still right.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.protect(page, 1, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn present_ptr(&self, page: u64, offset: usize, len: usize) -> *mut u8 {
        assert!(page < self.pages && offset + len <= PAGE, "access outside the page");
        self.host.wrapping_add(page as usize * PAGE + offset)
    }

    /// Reads from a page the pager's state says is present.
    pub fn read_present(&self, page: u64, offset: usize, out: &mut [u8]) {
        let src = self.present_ptr(page, offset, out.len());
        // SAFETY: inside the mapping (checked), and present, so the read does not fault; the
        // guest may write concurrently, which makes the bytes racy but not unsound for u8.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }

    /// Writes into a page the pager's state says is present.
    pub fn write_present(&self, page: u64, offset: usize, data: &[u8]) {
        let dst = self.present_ptr(page, offset, data.len());
        // SAFETY: as in `read_present`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    /// Saves a present page back to the backing store, closes it and drops its memory, so the
    /// next access misses again.
    pub fn evict(&mut self, page: u64, was_present: bool) -> io::Result<()> {
        let start = page as usize * PAGE;
        if was_present {
            // Read-only first: a guest store from another vCPU now exits to the host (and waits
            // for the pager's lock) instead of racing with the copy.
            self.protect(page, 1, libc::PROT_READ)?;
            let src = self.present_ptr(page, 0, PAGE);
            // SAFETY: the page is present and readable (just above) and inside the mapping.
            unsafe { std::ptr::copy_nonoverlapping(src, self.backing[start..].as_mut_ptr(), PAGE) };
        }
        self.protect(page, 1, libc::PROT_NONE)?;
        let addr = self.present_ptr(page, 0, PAGE);
        // SAFETY: drops one page of our own private mapping; missing pages are tracked by the
        // userfaultfd again afterwards.
        let ret = unsafe { libc::madvise(addr as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
        if ret != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl Drop for DemandRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, once; no access follows.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.pages as usize * PAGE) };
    }
}
