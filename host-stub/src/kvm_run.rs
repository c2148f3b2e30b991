//! Writing results back into the shared `kvm_run` page for exits that return data to the
//! guest (port and MMIO reads, RDMSR) and reading the detail of internal errors. The run loop
//! copies each exit out first (handlers need the vCPU fd meanwhile), so the answers go back
//! through these helpers.

use kvm_bindings::{KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR};
use kvm_ioctls::VcpuFd;

/// Copies `data` into the data area of the pending port-input exit.
pub fn complete_io_in(vcpu: &mut VcpuFd, data: &[u8]) {
    let run = vcpu.get_kvm_run();
    assert_eq!(run.exit_reason, KVM_EXIT_IO, "completing a port read outside an I/O exit");
    // SAFETY: the exit reason says `io` is the active union member.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = (io.size as usize * io.count as usize).min(data.len());
    let base = run as *mut kvm_bindings::kvm_run as *mut u8;
    // SAFETY: KVM places the data at `data_offset` inside the mmap'ed kvm_run area, sized
    // `size * count` bytes; `len` does not exceed that, and `data` cannot overlap it.
    unsafe {
        let dest = base.add(io.data_offset as usize);
        std::ptr::copy_nonoverlapping(data.as_ptr(), dest, len);
    }
}

/// Copies `data` into the pending MMIO-read exit.
pub fn complete_mmio_read(vcpu: &mut VcpuFd, data: &[u8]) {
    let run = vcpu.get_kvm_run();
    assert_eq!(run.exit_reason, KVM_EXIT_MMIO, "completing an MMIO read outside an MMIO exit");
    // SAFETY: the exit reason says `mmio` is the active union member.
    let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
    let len = (mmio.len as usize).min(data.len()).min(mmio.data.len());
    mmio.data[..len].copy_from_slice(&data[..len]);
}

/// Completes the pending RDMSR/WRMSR exit: `Some(value)` succeeds, `None` injects #GP.
pub fn complete_msr(vcpu: &mut VcpuFd, value: Option<u64>) {
    let run = vcpu.get_kvm_run();
    assert!(
        run.exit_reason == KVM_EXIT_X86_RDMSR || run.exit_reason == KVM_EXIT_X86_WRMSR,
        "completing an MSR access outside an MSR exit"
    );
    // SAFETY: the exit reason says `msr` is the active union member.
    let msr = unsafe { &mut run.__bindgen_anon_1.msr };
    match value {
        Some(v) => {
            if run.exit_reason == KVM_EXIT_X86_RDMSR {
                msr.data = v;
            }
            msr.error = 0;
        }
        None => msr.error = 1,
    }
}

/// The suberror and the instruction bytes of a KVM_EXIT_INTERNAL_ERROR.
pub fn internal_error(vcpu: &mut VcpuFd) -> (u32, Vec<u8>) {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return (0, Vec::new());
    }
    // SAFETY: the exit reason says `internal` is the active union member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    (internal.suberror, instruction_bytes(internal.suberror, internal.ndata, &internal.data))
}

/// The instruction bytes of an internal error's `data` words (`ndata` of them, as KVM says):
/// an emulation failure (suberror 1) is KVM's `emulation_failure` layout: data[0] holds
/// flags; with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES (bit 0), the next 16 bytes
/// are `insn_size` followed by up to 15 instruction bytes. Nothing for any other error, for
/// flags without the bit, or for too few words.
fn instruction_bytes(suberror: u32, ndata: u32, data: &[u64]) -> Vec<u8> {
    let words = &data[..(ndata as usize).min(data.len())];
    let mut bytes = Vec::new();
    if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && words.len() >= 3 && words[0] & 1 != 0 {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&words[1].to_le_bytes());
        raw[8..].copy_from_slice(&words[2].to_le_bytes());
        let size = usize::from(raw[0]).min(15);
        bytes.extend_from_slice(&raw[1..1 + size]);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::check;
    use proptest::prelude::*;

    /// Any internal error KVM could report (any suberror, count and words: the bytes are the
    /// guest's, `insn_size` KVM's): at most 15 instruction bytes, exactly `insn_size` of them
    /// (capped at 15) from the two words after the flags, and only for an emulation failure
    /// that says it carries them.
    #[test]
    fn an_internal_errors_instruction_bytes_are_the_ones_it_carries() {
        let error = (0u32..4, any::<u32>(), any::<[u64; 16]>(), any::<bool>(), 0u8..=20);
        check("internal error", 3000, error, |(suberror, ndata, mut data, flagged, size)| {
            data[0] = (data[0] & !1) | u64::from(flagged);
            data[1] = (data[1] & !0xFF) | u64::from(size);
            let ndata = if ndata % 2 == 0 { ndata % 20 } else { ndata };
            let bytes = instruction_bytes(suberror, ndata, &data);
            let carried = suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && flagged && ndata >= 3;
            if !carried {
                prop_assert!(bytes.is_empty());
                return Ok(());
            }
            let raw: Vec<u8> = data[1].to_le_bytes().into_iter().chain(data[2].to_le_bytes()).collect();
            let size = usize::from(size.min(15));
            prop_assert_eq!(&bytes[..], &raw[1..1 + size]);
            Ok(())
        });
    }
}
