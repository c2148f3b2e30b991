//! The guest instruction at a vCPU's RIP: its bytes (fetched through the guest's page tables),
//! its decoding (`iced-x86`), and the linear address, size and access of each memory operand,
//! computed from the vCPU's registers. Producers use it when KVM tells them *that* an
//! instruction stopped but not *what* it touched.

use iced_x86::{
    Decoder, DecoderOptions, Formatter, Instruction, InstructionInfoFactory, IntelFormatter, Mnemonic, OpAccess,
    Register,
};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// One memory operand of a decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryOperand {
    /// Linear (guest-virtual) address of its first byte.
    pub linear: u64,
    /// Bytes accessed.
    pub size: u64,
    pub reads: bool,
    pub writes: bool,
    /// Decoded outside 64-bit mode, where linear addresses are 32 bits: the processor computes
    /// them modulo 4 GiB, so an operand that runs past the top goes on at 0.
    pub linear_32: bool,
}

impl MemoryOperand {
    /// The linear address of its last byte (of its first for a zero-sized operand). In 64-bit
    /// mode `None` when the guest's registers put it past the top of the address space: such an
    /// access is non-canonical on the way and faults (#GP) before it touches memory. Outside
    /// 64-bit mode it wraps at 4 GiB, as the processor's address does.
    pub fn last_byte(&self) -> Option<u64> {
        let span = self.size.saturating_sub(1);
        if self.linear_32 { Some(self.linear.wrapping_add(span) & 0xFFFF_FFFF) } else { self.linear.checked_add(span) }
    }
}

/// A decoded guest instruction.
#[derive(Clone, Debug)]
pub struct GuestInsn {
    pub rip: u64,
    pub instruction: Instruction,
    pub bytes: Vec<u8>,
    pub memory: Vec<MemoryOperand>,
}

impl GuestInsn {
    /// The instruction's length in bytes.
    #[allow(clippy::len_without_is_empty, reason = "an instruction is never empty")]
    pub fn len(&self) -> usize {
        self.instruction.len()
    }

    /// Whether it is a locked memory access: a LOCK prefix, or XCHG with a memory operand
    /// (locked without a prefix).
    pub fn is_locked_access(&self) -> bool {
        !self.memory.is_empty() && (self.instruction.has_lock_prefix() || self.instruction.mnemonic() == Mnemonic::Xchg)
    }

    /// Intel syntax, e.g. `lock add dword ptr [rdi+3Eh],1`, for reports.
    pub fn text(&self) -> String {
        let mut text = String::new();
        IntelFormatter::new().format(&self.instruction, &mut text);
        text
    }
}

/// Why the instruction could not be examined.
#[derive(Debug, thiserror::Error)]
pub enum InsnError {
    #[error("reading the vCPU's registers: {0}")]
    Registers(kvm_ioctls::Error),
    #[error("RIP {0:#x} does not translate to guest memory")]
    Unmapped(u64),
    #[error("the bytes at RIP {0:#x} are not a valid instruction")]
    Invalid(u64),
}

/// Guest-physical address of linear `addr` under the vCPU's current page tables.
pub fn translate(vcpu: &VcpuFd, addr: u64) -> Option<u64> {
    let t = vcpu.translate_gva(addr).ok()?;
    (t.valid != 0).then_some(t.physical_address)
}

/// Reads up to [`MAX_INSN_LEN`] bytes of guest-virtual memory at `rip` through the vCPU's
/// page tables, page by page.
pub fn fetch(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Result<Vec<u8>, InsnError> {
    fetch_with(rip, |at| translate(vcpu, at), |gpa, chunk| mem.read_slice(chunk, GuestAddress(gpa)).is_ok())
}

/// [`fetch`] with the page tables (`translate`: linear to guest-physical) and guest memory
/// (`read`: fills a chunk, or says it cannot) given: the bytes up to the first page that does
/// not translate or read, or the top of the address space.
fn fetch_with(
    rip: u64,
    translate: impl Fn(u64) -> Option<u64>,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> Result<Vec<u8>, InsnError> {
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    let mut at = rip;
    while bytes.len() < MAX_INSN_LEN {
        let in_page = (0x1000 - (at & 0xFFF)) as usize;
        let want = in_page.min(MAX_INSN_LEN - bytes.len());
        let Some(gpa) = translate(at) else { break };
        let mut chunk = vec![0u8; want];
        if !read(gpa, &mut chunk) {
            break;
        }
        bytes.extend_from_slice(&chunk);
        // A RIP the guest chose can sit at the top of the address space: stop there rather
        // than wrap (the CPU would fault too).
        let Some(next) = at.checked_add(want as u64) else { break };
        at = next;
    }
    if bytes.is_empty() { Err(InsnError::Unmapped(rip)) } else { Ok(bytes) }
}

fn register_value(regs: &kvm_regs, sregs: &kvm_sregs, reg: Register) -> Option<u64> {
    let full = reg.full_register();
    let value = match full {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RBP => regs.rbp,
        Register::RSP => regs.rsp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        // In 64-bit mode only FS and GS have bases; the others are 0.
        Register::ES | Register::CS | Register::SS | Register::DS if in_64_bit_mode(sregs) => 0,
        // Otherwise (compatibility, protected and real mode) each has its base, as KVM reports
        // it (in real mode that is selector * 16).
        Register::ES => sregs.es.base,
        Register::CS => sregs.cs.base,
        Register::SS => sregs.ss.base,
        Register::DS => sregs.ds.base,
        _ => return None,
    };
    // Narrow registers (e.g. a 32-bit address) are masked to their width.
    let bits = reg.size() * 8;
    Some(if bits >= 64 || reg.is_segment_register() { value } else { value & ((1u64 << bits) - 1) })
}

/// Whether the vCPU runs 64-bit code (CS.L set: IA-32e mode's 64-bit sub-mode).
fn in_64_bit_mode(sregs: &kvm_sregs) -> bool {
    sregs.cs.l == 1
}

/// The linear address of `rip`: CS's base added outside 64-bit mode, within the segment's
/// width (a 32-bit sum wraps at 4 GiB, as the processor's does).
pub fn code_linear(rip: u64, sregs: &kvm_sregs) -> u64 {
    if in_64_bit_mode(sregs) { rip } else { (sregs.cs.base.wrapping_add(rip)) & 0xFFFF_FFFF }
}

/// Decodes `bytes` (fetched at `rip`) in the code segment's mode (64-bit, or 32- or 16-bit
/// protected mode: the same bytes address memory differently) and computes its memory operands.
pub fn decode(rip: u64, bytes: &[u8], regs: &kvm_regs, sregs: &kvm_sregs) -> Result<GuestInsn, InsnError> {
    let long = in_64_bit_mode(sregs);
    let bitness = match (long, sregs.cs.db) {
        (true, _) => 64,
        (_, 1) => 32,
        _ => 16,
    };
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return Err(InsnError::Invalid(rip));
    }
    // The RIP-relative base is the address of the next instruction.
    let mut regs_after = *regs;
    regs_after.rip = instruction.next_ip();
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instruction);
    let memory = info
        .used_memory()
        .iter()
        .filter_map(|m| {
            let linear = m.virtual_address(0, |reg, _, _| register_value(&regs_after, sregs, reg))?;
            // iced-x86 adds the segment's base modulo 2^64; outside 64-bit mode the processor
            // adds it modulo 2^32 (a base of 0xFFFF_F000 and an offset of 0x2000 reach 0x1000).
            let linear = if long { linear } else { linear & 0xFFFF_FFFF };
            let (reads, writes) = match m.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write | OpAccess::CondWrite => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                _ => return None, // NoMemAccess (LEA, prefetch) and the like
            };
            Some(MemoryOperand { linear, size: m.memory_size().size() as u64, reads, writes, linear_32: !long })
        })
        .collect();
    Ok(GuestInsn { rip, instruction, bytes: bytes[..instruction.len()].to_vec(), memory })
}

/// Fetches and decodes the instruction at `rip`, with the registers it would run with.
pub fn at(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    rip: u64,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Result<GuestInsn, InsnError> {
    let bytes = fetch(vcpu, mem, code_linear(rip, sregs))?;
    decode(rip, &bytes, regs, sregs)
}

/// Fetches and decodes the instruction at the vCPU's RIP.
pub fn at_rip(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<GuestInsn, InsnError> {
    let regs = vcpu.get_regs().map_err(InsnError::Registers)?;
    let sregs = vcpu.get_sregs().map_err(InsnError::Registers)?;
    at(vcpu, mem, regs.rip, &regs, &sregs)
}

mod shadow;

pub use shadow::may_be_in_shadow;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    /// 64-bit code (CS.L set), as the guest's kernel runs.
    fn long_mode() -> kvm_sregs {
        let mut sregs = kvm_sregs::default();
        sregs.cs.l = 1;
        sregs
    }

    #[test]
    fn the_code_segment_says_how_the_bytes_decode() {
        // mov eax, [0x80000010]: an absolute address in 32-bit code, RIP-relative in 64-bit code.
        let bytes = [0x8B, 0x05, 0x10, 0, 0, 0x80];
        let mut sregs = kvm_sregs::default();
        sregs.cs.db = 1;
        assert_eq!(decode(0x10_0000, &bytes, &regs(), &sregs).unwrap().memory[0].linear, 0x8000_0010);
        let i = decode(0x10_0000, &bytes, &regs(), &long_mode()).unwrap();
        assert_eq!(i.memory[0].linear, (0x10_0006u64).wrapping_add(0xFFFF_FFFF_8000_0010));
    }

    #[test]
    fn outside_64_bit_mode_segment_bases_are_added() {
        // mov eax, [0x10] (32-bit code): DS's base added; in 64-bit mode it would not be.
        let bytes = [0x8B, 0x05, 0x10, 0, 0, 0];
        let mut sregs = kvm_sregs::default();
        sregs.cs.db = 1;
        sregs.ds.base = 0x8000_0000;
        sregs.cs.base = 0x1_0000;
        assert_eq!(decode(0x100, &bytes, &regs(), &sregs).unwrap().memory[0].linear, 0x8000_0010);
        assert_eq!(code_linear(0x100, &sregs), 0x1_0100);
        // Real mode: mov ax, [es:bx] with ES = 0x1234 (base 0x12340, as KVM reports it).
        let mut real = kvm_sregs::default();
        real.es.selector = 0x1234;
        real.es.base = 0x12340;
        let i = decode(0, &[0x26, 0x8B, 0x07], &regs(), &real).unwrap();
        assert_eq!(i.memory[0].linear, 0x12340 + 0x20);
        let mut long = long_mode();
        long.ds.base = 0x8000_0000;
        long.cs.base = 0x1_0000;
        assert_eq!(decode(0x100, &bytes, &regs(), &long).unwrap().memory[0].linear, 0x106 + 0x10, "RIP-relative");
        assert_eq!(code_linear(0x100, &long), 0x100);
    }

    fn regs() -> kvm_regs {
        kvm_regs { rax: 0x1000, rbx: 0x20, rdi: 0x5000, rsi: 0x6000, rip: 0x40_0000, ..Default::default() }
    }

    #[test]
    fn a_load_through_a_base_register() {
        // mov rax, [rdi]
        let i = decode(0x40_0000, &[0x48, 0x8B, 0x07], &regs(), &long_mode()).unwrap();
        assert_eq!(
            i.memory,
            vec![MemoryOperand { linear: 0x5000, size: 8, reads: true, writes: false, linear_32: false }]
        );
        assert_eq!(i.bytes.len(), 3);
    }

    #[test]
    fn base_index_scale_displacement_and_a_locked_read_modify_write() {
        // lock add dword [rax + rbx*4 + 0x3e], 1
        let i = decode(0x40_0000, &[0xF0, 0x83, 0x44, 0x98, 0x3E, 0x01], &regs(), &long_mode()).unwrap();
        assert!(i.instruction.has_lock_prefix());
        assert_eq!(
            i.memory,
            vec![MemoryOperand { linear: 0x1000 + 0x80 + 0x3e, size: 4, reads: true, writes: true, linear_32: false }]
        );
    }

    #[test]
    fn rip_relative_and_gs_based_operands() {
        // mov eax, [rip + 0x10]: relative to the next instruction (6 bytes long).
        let i = decode(0x40_0000, &[0x8B, 0x05, 0x10, 0, 0, 0], &regs(), &long_mode()).unwrap();
        assert_eq!(i.memory[0].linear, 0x40_0006 + 0x10);
        // mov rax, gs:[8]
        let mut sregs = long_mode();
        sregs.gs.base = 0x7000;
        let i = decode(0x40_0000, &[0x65, 0x48, 0x8B, 0x04, 0x25, 8, 0, 0, 0], &regs(), &sregs).unwrap();
        assert_eq!(i.memory[0].linear, 0x7008);
    }

    #[test]
    fn string_moves_touch_two_locations_and_lea_touches_none() {
        // movsq: reads [rsi], writes [rdi]
        let i = decode(0x40_0000, &[0x48, 0xA5], &regs(), &long_mode()).unwrap();
        assert_eq!(i.memory.len(), 2);
        assert!(i.memory.iter().any(|m| m.linear == 0x6000 && m.reads));
        assert!(i.memory.iter().any(|m| m.linear == 0x5000 && m.writes));
        // lea rax, [rdi + 8]
        let i = decode(0x40_0000, &[0x48, 0x8D, 0x47, 0x08], &regs(), &long_mode()).unwrap();
        assert!(i.memory.is_empty());
    }

    #[test]
    fn garbage_is_not_an_instruction() {
        assert!(matches!(decode(0, &[0x0F, 0xFF], &regs(), &long_mode()), Err(InsnError::Invalid(0))));
        // LOCK on an instruction that cannot take it is #UD, not a locked access.
        assert!(decode(0, &[0xF0, 0x90], &regs(), &long_mode()).is_err());
        assert!(decode(0, &[0x06], &regs(), &long_mode()).is_err(), "push es does not exist in 64-bit mode");
        assert!(decode(0, &[], &regs(), &long_mode()).is_err());
    }

    fn locked(bytes: &[u8]) -> (bool, Option<(u64, u64)>) {
        let regs = kvm_regs { rdi: 0x1_0000_1000, rsi: 0x2000, rcx: 3, ..Default::default() };
        let mut sregs = long_mode();
        sregs.fs.base = 0x7000_0000;
        let i = decode(0x1000, bytes, &regs, &sregs).expect("valid instruction");
        (i.is_locked_access(), i.memory.first().map(|m| (m.linear, m.size)))
    }

    #[test]
    fn locked_accesses_and_their_operands_are_found() {
        // lock add dword ptr [rdi+3Eh],1: 4 bytes crossing a line.
        assert_eq!(locked(&[0xF0, 0x83, 0x47, 0x3E, 0x01]), (true, Some((0x1_0000_103E, 4))));
        // Without the prefix the same access is not locked.
        assert!(!locked(&[0x83, 0x47, 0x3E, 0x01]).0);
        // xchg [rsi+3Ch],rax: locked without a prefix, 8 bytes.
        assert_eq!(locked(&[0x48, 0x87, 0x46, 0x3C]), (true, Some((0x203C, 8))));
        // xchg between registers touches no memory and is not a locked access.
        assert_eq!(locked(&[0x48, 0x87, 0xC8]), (false, None));
        // lock cmpxchg16b [rdi+38h]: 16 bytes.
        assert_eq!(locked(&[0xF0, 0x48, 0x0F, 0xC7, 0x4F, 0x38]).1, Some((0x1_0000_1038, 16)));
        // FS-relative: the segment base counts.
        assert_eq!(locked(&[0x64, 0xF0, 0xFF, 0x06]).1, Some((0x7000_2000, 4)));
        // 0x67: 32-bit addressing truncates.
        assert_eq!(locked(&[0x67, 0xF0, 0xFF, 0x07]).1, Some((0x1000, 4)));
        // lock bts dword ptr [rsi+rcx*8],1
        assert_eq!(locked(&[0xF0, 0x0F, 0xBA, 0x2C, 0xCE, 0x01]).1, Some((0x2018, 4)));
    }

    /// Registers are the guest's: an operand computed from them may wrap the address space
    /// (iced-x86 computes addresses modulo 2^64), and its last byte must not overflow.
    #[test]
    fn hostile_registers_give_operands_without_overflow() {
        let hostile = kvm_regs { rdi: u64::MAX - 2, rax: u64::MAX, rbx: u64::MAX, rip: u64::MAX - 4, ..regs() };
        // mov rax, [rdi]: 8 bytes from 3 below the top.
        let i = decode(hostile.rip, &[0x48, 0x8B, 0x07], &hostile, &long_mode()).unwrap();
        assert_eq!(i.memory[0].linear, u64::MAX - 2);
        assert_eq!(i.memory[0].last_byte(), None, "past the top of the address space");
        // lock add dword [rax + rbx*4 + 0x3e], 1: the sum wraps.
        let i = decode(hostile.rip, &[0xF0, 0x83, 0x44, 0x98, 0x3E, 0x01], &hostile, &long_mode()).unwrap();
        let expected = u64::MAX.wrapping_add(u64::MAX.wrapping_mul(4)).wrapping_add(0x3e);
        assert_eq!(i.memory[0].linear, expected);
        assert_eq!(i.memory[0].last_byte(), Some(expected + 3));
        // mov eax, [rip + 0x10] at the top: RIP-relative wraps too.
        let i = decode(hostile.rip, &[0x8B, 0x05, 0x10, 0, 0, 0], &hostile, &long_mode()).unwrap();
        assert_eq!(i.memory[0].linear, (u64::MAX - 4).wrapping_add(6 + 0x10));
        let top = MemoryOperand { linear: u64::MAX, size: 1, reads: true, writes: false, linear_32: false };
        assert_eq!(top.last_byte(), Some(u64::MAX), "the very last byte");
        assert_eq!(MemoryOperand { size: 0, ..top }.last_byte(), Some(u64::MAX), "zero-sized");
        assert_eq!(MemoryOperand { size: u64::MAX, ..top }.last_byte(), None);
    }

    /// Found by `props::decoding_any_bytes_with_any_registers_gives_operands_in_the_address_space`:
    /// 32-bit code's `movsb` with DS's base at 0xFFFF_F000 and ESI 0x2000 read at 0x1_0000_1000
    /// (iced-x86 adds segment bases modulo 2^64), where the processor reads at 0x1000.
    #[test]
    fn outside_64_bit_mode_a_segment_base_wraps_the_address_at_4_gib() {
        let mut sregs = kvm_sregs::default();
        sregs.cs.db = 1;
        sregs.ds.base = 0xFFFF_F000;
        let regs = kvm_regs { rsi: 0x2000, rdi: 0x10, ..Default::default() };
        let i = decode(0, &[0xA4], &regs, &sregs).unwrap();
        let read = i.memory.iter().find(|m| m.reads).unwrap();
        assert_eq!(read.linear, 0x1000);
        // mov eax, [0xFFFF_FFFE] with DS's base 0: 4 bytes from 2 below 4 GiB, the last at 1.
        sregs.ds.base = 0;
        let i = decode(0, &[0x8B, 0x05, 0xFE, 0xFF, 0xFF, 0xFF], &regs, &sregs).unwrap();
        assert_eq!((i.memory[0].linear, i.memory[0].last_byte()), (0xFFFF_FFFE, Some(1)));
    }

    #[test]
    fn reports_show_intel_syntax() {
        let i = decode(0x1000, &[0xF0, 0x83, 0x47, 0x3E, 0x01], &regs(), &long_mode()).unwrap();
        assert!(i.text().starts_with("lock add dword ptr [rdi+3Eh]"), "{}", i.text());
        assert_eq!(i.len(), 5);
    }
}
