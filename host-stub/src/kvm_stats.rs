//! KVM's binary statistics of a vCPU (KVM_GET_STATS_FD): per-vCPU counters such as exits,
//! emulated instructions and injections, by name. They count what KVM did, including what never
//! reached user space: `exits` counts every exit, `insn_emulation` every guest instruction KVM's
//! emulator ran (on the PVM `/dev/kvm` of our machines, every guest kernel instruction).
//!
//! The file is opened and its descriptors parsed once per vCPU ([`VcpuStats::open`]); reading a
//! value afterwards is one `pread` of 8 bytes, so a snapshot can be taken at any exit.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// The statistic that counts the guest instructions KVM emulated.
pub const INSN_EMULATION: &str = "insn_emulation";
/// The statistic that counts every exit of the vCPU, to user space or not.
pub const EXITS: &str = "exits";

/// One vCPU's statistics file, its descriptors read.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    /// Each plain counter (cumulative, instant or peak; one u64): its name and its offset in
    /// the file. Histograms are left out.
    counters: Vec<(String, u64)>,
    /// Where [`INSN_EMULATION`] and [`EXITS`] are, when KVM has them.
    insn_emulation: Option<u64>,
    exits: Option<u64>,
}

/// Two statistics at one moment: what a window of guest execution is measured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Guest instructions KVM emulated so far; `None` where KVM has no such statistic.
    pub insn_emulation: Option<u64>,
    /// Exits so far; `None` where KVM has no such statistic.
    pub exits: Option<u64>,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot (a statistic missing from either is
    /// missing from the result).
    pub fn since(self, earlier: Snapshot) -> Snapshot {
        let delta = |now: Option<u64>, then: Option<u64>| Some(now?.wrapping_sub(then?));
        Snapshot {
            insn_emulation: delta(self.insn_emulation, earlier.insn_emulation),
            exits: delta(self.exits, earlier.exits),
        }
    }
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl VcpuStats {
    /// Opens `vcpu`'s statistics and reads their descriptors (KVM 5.14 and later have them).
    pub fn open(vcpu: &VcpuFd) -> std::io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; std::mem::size_of::<kvm_stats_header>()];
        file.read_exact_at(&mut header, 0)?;
        let (name_size, num_desc, desc_offset, data_offset) =
            (word(&header, 4), word(&header, 8), word(&header, 16), word(&header, 20));
        let desc_len = std::mem::size_of::<kvm_stats_desc>() + name_size as usize;
        let mut descs = vec![0u8; desc_len * num_desc as usize];
        file.read_exact_at(&mut descs, u64::from(desc_offset))?;
        let mut counters = Vec::new();
        for d in descs.chunks_exact(desc_len) {
            let flags = word(d, 0);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = word(d, 8);
            // Type bits 3:0: 0 cumulative, 1 instant, 2 peak; histograms (3, 4) are skipped.
            if flags & 0xF > 2 || size != 1 {
                continue;
            }
            let name_bytes = &d[16..];
            let name = &name_bytes[..name_bytes.iter().position(|b| *b == 0).unwrap_or(name_bytes.len())];
            counters.push((String::from_utf8_lossy(name).into_owned(), u64::from(data_offset) + u64::from(offset)));
        }
        let find = |wanted: &str| counters.iter().find(|(name, _)| name == wanted).map(|(_, at)| *at);
        let (insn_emulation, exits) = (find(INSN_EMULATION), find(EXITS));
        Ok(Self { file, counters, insn_emulation, exits })
    }

    fn value_at(&self, at: u64) -> std::io::Result<u64> {
        let mut value = [0u8; 8];
        self.file.read_exact_at(&mut value, at)?;
        Ok(u64::from_le_bytes(value))
    }

    /// Every plain counter, by name.
    pub fn read_all(&self) -> std::io::Result<BTreeMap<String, u64>> {
        self.counters.iter().map(|(name, at)| Ok((name.clone(), self.value_at(*at)?))).collect()
    }

    /// The emulated instructions and exits so far.
    pub fn snapshot(&self) -> std::io::Result<Snapshot> {
        Ok(Snapshot {
            insn_emulation: self.insn_emulation.map(|at| self.value_at(at)).transpose()?,
            exits: self.exits.map(|at| self.value_at(at)).transpose()?,
        })
    }
}

/// The report's handler name for vCPU `index`'s KVM statistics in a VM of `vcpus` vCPUs: `kvm`
/// while there is one (`kvm.exits`), `kvm.vcpu<N>` once there are several (`kvm.vcpu1.exits`).
pub fn report_handler(index: usize, vcpus: usize) -> String {
    if vcpus <= 1 { "kvm".into() } else { format!("kvm.vcpu{index}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_difference_of_its_ends_and_missing_stays_missing() {
        let open = Snapshot { insn_emulation: Some(100), exits: Some(7) };
        let close = Snapshot { insn_emulation: Some(350), exits: Some(9) };
        assert_eq!(close.since(open), Snapshot { insn_emulation: Some(250), exits: Some(2) });
        let no_insns = Snapshot { insn_emulation: None, exits: Some(9) };
        assert_eq!(no_insns.since(open), Snapshot { insn_emulation: None, exits: Some(2) });
    }

    #[test]
    fn one_vcpu_keeps_the_short_names_several_are_numbered() {
        assert_eq!(report_handler(0, 1), "kvm");
        assert_eq!(report_handler(0, 2), "kvm.vcpu0");
        assert_eq!(report_handler(3, 4), "kvm.vcpu3");
    }
}
