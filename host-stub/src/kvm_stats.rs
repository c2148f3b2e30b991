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
/// The statistic that counts the guest's HLTs that stopped the vCPU.
pub const HALT_EXITS: &str = "halt_exits";
/// The statistics that together are the time the vCPU spent halted, in nanoseconds: blocked
/// waiting for a wake-up, and polling for one before blocking (successfully or not).
pub const HALT_TIME_NS: [&str; 3] = ["halt_wait_ns", "halt_poll_success_ns", "halt_poll_fail_ns"];

/// One vCPU's statistics file, its descriptors read.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    /// Each plain counter (cumulative, instant or peak; one u64): its name and its offset in
    /// the file. Histograms are left out.
    counters: Vec<(String, u64)>,
    /// Where [`INSN_EMULATION`], [`EXITS`] and [`HALT_EXITS`] are, when KVM has them.
    insn_emulation: Option<u64>,
    exits: Option<u64>,
    halt_exits: Option<u64>,
    /// Where [`HALT_TIME_NS`] are (those KVM has).
    halt_time_ns: Vec<u64>,
}

/// What a window of guest execution is measured with, at one moment: KVM's statistics and the
/// host stub's own count of the vCPU's exits.
///
/// Two exit figures, because only one is a property of the guest. KVM's `exits` counts every
/// exit, and on the PVM `/dev/kvm` of our machines it also counts what the host does to the
/// vCPU's thread (measured: a HLT-loop round trip took 4 such exits on a quiet machine and 13
/// with the other core busy). The exits the guest causes are those that reach the host stub,
/// which it counts exactly, and its HLTs, which KVM counts exactly ([`Snapshot::guest_exits`]):
/// budgets judge those, and KVM's figure is reported beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Guest instructions KVM emulated so far; `None` where KVM has no such statistic.
    pub insn_emulation: Option<u64>,
    /// KVM's exits so far; `None` where KVM has no such statistic.
    pub exits: Option<u64>,
    /// The guest's HLTs so far; `None` where KVM has no such statistic.
    pub halt_exits: Option<u64>,
    /// Nanoseconds the vCPU spent halted so far ([`HALT_TIME_NS`] summed); `None` where KVM
    /// has none of them.
    pub halt_ns: Option<u64>,
    /// Exits of this vCPU that reached the host stub so far.
    pub user_exits: u64,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot (a statistic missing from either is
    /// missing from the result).
    pub fn since(self, earlier: Snapshot) -> Snapshot {
        let delta = |now: Option<u64>, then: Option<u64>| Some(now?.wrapping_sub(then?));
        Snapshot {
            insn_emulation: delta(self.insn_emulation, earlier.insn_emulation),
            exits: delta(self.exits, earlier.exits),
            halt_exits: delta(self.halt_exits, earlier.halt_exits),
            halt_ns: delta(self.halt_ns, earlier.halt_ns),
            user_exits: self.user_exits.wrapping_sub(earlier.user_exits),
        }
    }

    /// The exits the guest caused: those that reached the host stub, and its HLTs (where KVM
    /// counts them; a KVM without the statistic counts none).
    pub fn guest_exits(self) -> u64 {
        self.user_exits + self.halt_exits.unwrap_or(0)
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
        let (insn_emulation, exits, halt_exits) = (find(INSN_EMULATION), find(EXITS), find(HALT_EXITS));
        let halt_time_ns = HALT_TIME_NS.iter().filter_map(|name| find(name)).collect();
        Ok(Self { file, counters, insn_emulation, exits, halt_exits, halt_time_ns })
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

    /// The emulated instructions and exits so far; `user_exits` is the host stub's own count.
    pub fn snapshot(&self, user_exits: u64) -> std::io::Result<Snapshot> {
        let read = |at: Option<u64>| at.map(|at| self.value_at(at)).transpose();
        Ok(Snapshot {
            insn_emulation: read(self.insn_emulation)?,
            exits: read(self.exits)?,
            halt_exits: read(self.halt_exits)?,
            halt_ns: if self.halt_time_ns.is_empty() {
                None
            } else {
                Some(self.halt_time_ns.iter().map(|at| self.value_at(*at)).sum::<std::io::Result<u64>>()?)
            },
            user_exits,
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
        let open = Snapshot {
            insn_emulation: Some(100),
            exits: Some(7),
            halt_exits: Some(1),
            halt_ns: Some(10),
            user_exits: 5,
        };
        let close = Snapshot {
            insn_emulation: Some(350),
            exits: Some(19),
            halt_exits: Some(2),
            halt_ns: Some(990),
            user_exits: 7,
        };
        let window = close.since(open);
        assert_eq!(
            window,
            Snapshot {
                insn_emulation: Some(250),
                exits: Some(12),
                halt_exits: Some(1),
                halt_ns: Some(980),
                user_exits: 2
            }
        );
        assert_eq!(window.guest_exits(), 3, "the host stub's exits and the HLTs, not KVM's noisy total");
        let bare = Snapshot { insn_emulation: None, exits: Some(9), halt_exits: None, halt_ns: None, user_exits: 6 };
        let window = bare.since(open);
        assert_eq!((window.insn_emulation, window.exits, window.halt_exits), (None, Some(2), None));
        assert_eq!(window.guest_exits(), 1);
    }

    #[test]
    fn one_vcpu_keeps_the_short_names_several_are_numbered() {
        assert_eq!(report_handler(0, 1), "kvm");
        assert_eq!(report_handler(0, 2), "kvm.vcpu0");
        assert_eq!(report_handler(3, 4), "kvm.vcpu3");
    }
}
