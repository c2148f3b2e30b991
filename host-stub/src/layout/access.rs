//! Guest memory accesses the host completes for a vCPU (an access that hit an update's window),
//! made the way the guest's instruction would: an aligned access of 2, 4 or 8 bytes as one
//! access, so that another vCPU never sees half of a value the guest wrote in one instruction.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

/// Reads `data.len()` bytes at `host` into `data`.
///
/// # Safety
///
/// `host..host + data.len()` is mapped, readable guest memory that stays mapped meanwhile.
pub unsafe fn load(host: *const u8, data: &mut [u8]) {
    let aligned = (host as usize).is_multiple_of(data.len().max(1));
    // SAFETY: the caller's range; the atomic views are aligned for their width (checked), and
    // the guest's own accesses to that memory are not Rust accesses, so an atomic view of it
    // races with nothing in Rust; any other size or alignment is copied byte by byte.
    unsafe {
        match (data.len(), aligned) {
            (8, true) => data.copy_from_slice(&AtomicU64::from_ptr(host as *mut u64).load(Relaxed).to_le_bytes()),
            (4, true) => data.copy_from_slice(&AtomicU32::from_ptr(host as *mut u32).load(Relaxed).to_le_bytes()),
            (2, true) => data.copy_from_slice(&AtomicU16::from_ptr(host as *mut u16).load(Relaxed).to_le_bytes()),
            _ => std::ptr::copy(host, data.as_mut_ptr(), data.len()),
        }
    }
}

/// Writes `data` at `host`.
///
/// # Safety
///
/// `host..host + data.len()` is mapped, writable guest memory that stays mapped meanwhile.
pub unsafe fn store(host: *mut u8, data: &[u8]) {
    let aligned = (host as usize).is_multiple_of(data.len().max(1));
    // SAFETY: as in `load`.
    unsafe {
        match (data.len(), aligned) {
            (8, true) => {
                AtomicU64::from_ptr(host.cast()).store(u64::from_le_bytes(data.try_into().unwrap_or_default()), Relaxed)
            }
            (4, true) => {
                AtomicU32::from_ptr(host.cast()).store(u32::from_le_bytes(data.try_into().unwrap_or_default()), Relaxed)
            }
            (2, true) => {
                AtomicU16::from_ptr(host.cast()).store(u16::from_le_bytes(data.try_into().unwrap_or_default()), Relaxed)
            }
            _ => std::ptr::copy(data.as_ptr(), host, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every width, aligned or not, reads and writes the same bytes a plain copy would.
    #[test]
    fn each_width_moves_the_bytes_it_names() {
        for len in [1usize, 2, 3, 4, 8, 16] {
            for misalign in [0usize, 1] {
                let mut memory = [0u64; 4];
                let base = memory.as_mut_ptr().cast::<u8>();
                let value: Vec<u8> = (0..len as u8).map(|b| b + 0xA0).collect();
                // SAFETY: inside `memory` (32 bytes; at most 17 from the start).
                unsafe { store(base.add(misalign), &value) };
                let mut back = vec![0; len];
                // SAFETY: as above.
                unsafe { load(base.add(misalign), &mut back) };
                assert_eq!(back, value, "{len} bytes at +{misalign}");
                // SAFETY: `memory` is 32 bytes.
                let bytes = unsafe { std::slice::from_raw_parts(base, 32) };
                assert_eq!(&bytes[misalign..misalign + len], &value[..], "{len} bytes at +{misalign}");
            }
        }
    }
}
