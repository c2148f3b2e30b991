//! Whether the instruction at a vCPU's RIP may be the one right after `sti`, `mov ss` or `pop
//! ss` (in their interrupt shadow), found from the bytes before it: for an exit that does not
//! report the shadow. PVM's bare EFAULT at CPL 3 is one (`KVM_GET_VCPU_EVENTS` says no shadow
//! there, measured); VMX's exits and PVM's emulated accesses report it.
//!
//! x86 cannot be decoded backwards, so every start 1 to 15 bytes before RIP is tried: the answer
//! is "may be" when any of them decodes to a shadowing instruction that ends exactly at RIP. A
//! wrong "may be" (the bytes of a longer instruction that happen to end so) only sends an access
//! down the synchronous path, which is always correct; a shadowing instruction that ends at RIP
//! is never missed while its bytes can be read.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, Register};
use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::{InsnError, MAX_INSN_LEN, code_linear, fetch, in_64_bit_mode};

/// Whether the instruction at the vCPU's RIP may sit in an STI or MOV SS shadow.
pub fn may_be_in_shadow(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<bool, InsnError> {
    let regs = vcpu.get_regs().map_err(InsnError::Registers)?;
    let sregs = vcpu.get_sregs().map_err(InsnError::Registers)?;
    let before = bytes_before(vcpu, mem, code_linear(regs.rip, &sregs));
    // STI runs only at a CPL at or below IOPL (elsewhere it faults, or with CR4.PVI sets VIF,
    // which opens no shadow): the byte 0xFB ends many instructions (`cmp rbx, rdi`), and user
    // code with IOPL 0 is never in STI's shadow.
    let sti_runs = u64::from(sregs.cs.selector & 3) <= (regs.rflags >> 12) & 3;
    Ok(ends_with_shadowing(&before, regs.rip, bitness(&sregs), sti_runs))
}

/// The code segment's bitness, as `decode` takes it.
fn bitness(sregs: &kvm_sregs) -> u32 {
    match (in_64_bit_mode(sregs), sregs.cs.db) {
        (true, _) => 64,
        (_, 1) => 32,
        _ => 16,
    }
}

/// Up to [`MAX_INSN_LEN`] bytes that end right before linear `rip`: from 15 bytes back, or from
/// the start of RIP's page when the page before does not translate (no instruction ends at RIP
/// from there), or none.
fn bytes_before(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let far = rip.saturating_sub(MAX_INSN_LEN as u64);
    for from in [far, far.max(rip & !0xFFF)] {
        if from == rip {
            break;
        }
        if let Ok(mut bytes) = fetch(vcpu, mem, from) {
            let want = (rip - from) as usize;
            if bytes.len() >= want {
                bytes.truncate(want);
                return bytes;
            }
        }
    }
    Vec::new()
}

/// Whether some suffix of `before` (the bytes right before `rip`) decodes, in `bitness`-bit
/// code, to an instruction that ends exactly at `rip` and opens an interrupt shadow (`sti` only
/// if `sti_runs`).
fn ends_with_shadowing(before: &[u8], rip: u64, bitness: u32, sti_runs: bool) -> bool {
    (1..=before.len()).any(|k| {
        let start = &before[before.len() - k..];
        let mut decoder = Decoder::with_ip(bitness, start, rip.wrapping_sub(k as u64), DecoderOptions::NONE);
        let instruction = decoder.decode();
        !instruction.is_invalid() && instruction.len() == k && opens_shadow(&instruction, sti_runs)
    })
}

/// `sti`, and a load of SS (`mov ss, r/m16` or `pop ss`): the instructions after which the
/// processor holds interrupts for one instruction.
fn opens_shadow(instruction: &Instruction, sti_runs: bool) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Sti => sti_runs,
        Mnemonic::Mov | Mnemonic::Pop => instruction.op0_register() == Register::SS,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadowing_instruction_right_before_rip_is_found() {
        let rip = 0x40_1000;
        // mov ss, ax; sti; mov ss, [rax + 8]; mov ss, [rip + 0x1234] with an operand-size prefix
        for before in [&[0x8E, 0xD0][..], &[0xFB], &[0x8E, 0x50, 0x08], &[0x66, 0x8E, 0x15, 0x34, 0x12, 0, 0]] {
            assert!(ends_with_shadowing(before, rip, 64, true), "{before:x?}");
            // Preceded by anything: the suffix still ends at RIP.
            let mut padded = vec![0x90, 0x48, 0x89, 0xC3];
            padded.extend_from_slice(before);
            assert!(ends_with_shadowing(&padded, rip, 64, true), "{padded:x?}");
        }
        // pop ss exists outside 64-bit mode only.
        assert!(ends_with_shadowing(&[0x17], rip, 32, false));
        assert!(!ends_with_shadowing(&[0x17], rip, 64, true));
        // sti where it cannot run (CPL 3, IOPL 0), or the last byte of `cmp rbx, rdi`: none.
        assert!(!ends_with_shadowing(&[0xFB], rip, 64, false));
        assert!(!ends_with_shadowing(&[0x48, 0x39, 0xFB], rip, 64, false));
    }

    #[test]
    fn other_instructions_and_loads_of_other_segments_open_none() {
        let rip = 0x40_1000;
        // mov ds, ax; cli; nop; mov rax, [rbx]; mov ax, ss (a store of SS, not a load)
        for before in [&[0x8E, 0xD8][..], &[0xFA], &[0x90], &[0x48, 0x8B, 0x03], &[0x8C, 0xD0], &[]] {
            assert!(!ends_with_shadowing(before, rip, 64, true), "{before:x?}");
        }
        // A shadowing instruction that ends before RIP, one byte short.
        assert!(!ends_with_shadowing(&[0x8E, 0xD0, 0x90], rip, 64, true));
    }
}
