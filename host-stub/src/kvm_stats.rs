//! KVM's binary statistics of a vCPU (KVM_GET_STATS_FD): per-vCPU counters such as exits, page
//! faults and injections, read by name. They show where time goes, and what KVM did that never
//! reached user space.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// Reads every cumulative or instant u64 counter of `vcpu`, by name. Histograms are skipped.
pub fn read(vcpu: &VcpuFd) -> std::io::Result<BTreeMap<String, u64>> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut raw = [0u8; std::mem::size_of::<kvm_stats_header>()];
    file.read_exact_at(&mut raw, 0)?;
    let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (name_size, num_desc, desc_offset, data_offset) =
        (word(&raw, 4), word(&raw, 8), word(&raw, 16), word(&raw, 20));
    let desc_len = std::mem::size_of::<kvm_stats_desc>() + name_size as usize;
    let mut descs = vec![0u8; desc_len * num_desc as usize];
    file.read_exact_at(&mut descs, u64::from(desc_offset))?;
    let mut out = BTreeMap::new();
    for d in descs.chunks_exact(desc_len) {
        let flags = word(d, 0);
        let size = u16::from_le_bytes([d[6], d[7]]);
        let offset = word(d, 8);
        // Type bits 3:0: 0 cumulative, 1 instant, 2 peak; histograms (3, 4) are skipped.
        if flags & 0xF > 2 || size != 1 {
            continue;
        }
        let name_bytes = &d[16..];
        let name =
            String::from_utf8_lossy(&name_bytes[..name_bytes.iter().position(|b| *b == 0).unwrap_or(name_bytes.len())]);
        let mut value = [0u8; 8];
        file.read_exact_at(&mut value, u64::from(data_offset) + u64::from(offset))?;
        out.insert(name.into_owned(), u64::from_le_bytes(value));
    }
    Ok(out)
}
