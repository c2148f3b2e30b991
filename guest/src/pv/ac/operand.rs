//! The address an alignment check was about. The CPU reports only the RIP of an #AC, so the
//! kernel decodes the instruction's ModRM memory operand itself: legacy and REX prefixes, the
//! one-byte, 0F, 0F38 and 0F3A maps, SIB, displacements, RIP-relative addressing. VEX, EVEX
//! and XOP instructions, string instructions (no ModRM) and FS/GS-relative operands are not
//! decoded; the report then says so. Plain code, cross-checked against `iced-x86` in the
//! host tests.

/// A decoded memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register number (0 = RAX ... 15 = R15), if any.
    pub base: Option<u8>,
    /// Index register number and scale, if any.
    pub index: Option<(u8, u8)>,
    pub displacement: i64,
    /// Relative to the next instruction's RIP.
    pub rip_relative: bool,
    /// 0x67: the address is computed in 32 bits.
    pub address_32: bool,
    /// Length of the whole instruction.
    pub len: usize,
}

impl MemOperand {
    /// The linear address, given the registers and the instruction's RIP.
    pub fn address(&self, rip: u64, reg: impl Fn(u8) -> u64) -> u64 {
        let mut addr = self.displacement as u64;
        if self.rip_relative {
            addr = addr.wrapping_add(rip).wrapping_add(self.len as u64);
        }
        if let Some(base) = self.base {
            addr = addr.wrapping_add(reg(base));
        }
        if let Some((index, scale)) = self.index {
            addr = addr.wrapping_add(reg(index).wrapping_mul(u64::from(scale)));
        }
        if self.address_32 { addr & 0xFFFF_FFFF } else { addr }
    }
}

/// Opcode maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Map {
    One,
    TwoByte,
    ThreeByte38,
    ThreeByte3A,
}

/// Whether a one-byte opcode has a ModRM byte (64-bit mode; VEX/EVEX escapes excluded).
fn one_byte_has_modrm(op: u8) -> bool {
    matches!(op,
        0x00..=0x03 | 0x08..=0x0B | 0x10..=0x13 | 0x18..=0x1B | 0x20..=0x23 | 0x28..=0x2B | 0x30..=0x33
        | 0x38..=0x3B | 0x63 | 0x69 | 0x6B | 0x80 | 0x81 | 0x83..=0x8F | 0xC0 | 0xC1 | 0xC6 | 0xC7
        | 0xD0..=0xD3 | 0xD8..=0xDF | 0xF6 | 0xF7 | 0xFE | 0xFF)
}

/// Whether a 0F-map opcode has a ModRM byte that may name memory. (MOV to and from control
/// and debug registers always use registers whatever ModRM says, so they are left out.)
fn two_byte_has_modrm(op: u8) -> bool {
    matches!(op,
        0x00..=0x03 | 0x0D | 0x10..=0x1F | 0x28..=0x2F | 0x40..=0x76 | 0x78..=0x7F | 0x90..=0x9F
        | 0xA3..=0xA5 | 0xAB..=0xAF | 0xB0..=0xBF | 0xC0..=0xC7 | 0xD0..=0xFE)
}

/// Size of the immediate that follows the ModRM operand (needed for RIP-relative operands).
fn immediate_size(map: Map, op: u8, reg: u8, operand_16: bool) -> usize {
    let full = if operand_16 { 2 } else { 4 };
    match map {
        Map::One => match op {
            0x80 | 0x83 | 0xC0 | 0xC1 | 0xC6 | 0x6B => 1,
            0x81 | 0xC7 | 0x69 => full,
            0xF6 if reg < 2 => 1,
            0xF7 if reg < 2 => full,
            _ => 0,
        },
        Map::TwoByte => match op {
            0x70..=0x73 | 0xA4 | 0xAC | 0xBA | 0xC2 | 0xC4..=0xC6 => 1,
            _ => 0,
        },
        Map::ThreeByte38 => 0,
        Map::ThreeByte3A => 1,
    }
}

/// Decodes the memory operand of the instruction in `bytes`; `None` when it has none or the
/// decoder does not cover it.
pub fn decode(bytes: &[u8]) -> Option<MemOperand> {
    let mut at = 0;
    let mut rex = 0u8;
    let (mut operand_16, mut address_32) = (false, false);
    loop {
        let b = *bytes.get(at)?;
        match b {
            0xF0 | 0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E => rex = 0,
            // FS and GS bases are not in the trap frame.
            0x64 | 0x65 => return None,
            0x66 => {
                operand_16 = true;
                rex = 0;
            }
            0x67 => {
                address_32 = true;
                rex = 0;
            }
            0x40..=0x4F => rex = b,
            _ => break,
        }
        at += 1;
        if at >= 15 {
            return None;
        }
    }
    let rex_w = rex & 0x8 != 0;
    let operand_16 = operand_16 && !rex_w;
    let mut op = bytes[at];
    at += 1;
    let map = if op == 0x0F {
        op = *bytes.get(at)?;
        at += 1;
        match op {
            0x38 | 0x3A => {
                let map = if op == 0x38 { Map::ThreeByte38 } else { Map::ThreeByte3A };
                op = *bytes.get(at)?;
                at += 1;
                map
            }
            _ if two_byte_has_modrm(op) => Map::TwoByte,
            _ => return None,
        }
    } else if one_byte_has_modrm(op) {
        Map::One
    } else {
        return None;
    };
    let modrm = *bytes.get(at)?;
    at += 1;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    // POP r/m is 8F /0; other reg values are the XOP escape.
    if map == Map::One && op == 0x8F && reg != 0 {
        return None;
    }
    if md == 3 {
        return None;
    }
    let (rex_x, rex_b) = ((rex >> 1) & 1, rex & 1);
    let mut operand = MemOperand { base: None, index: None, displacement: 0, rip_relative: false, address_32, len: 0 };
    let mut disp_size = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *bytes.get(at)?;
        at += 1;
        let index = ((sib >> 3) & 7) | (rex_x << 3);
        if index != 4 {
            operand.index = Some((index, 1 << (sib >> 6)));
        }
        if sib & 7 == 5 && md == 0 {
            disp_size = 4;
        } else {
            operand.base = Some((sib & 7) | (rex_b << 3));
        }
    } else if rm == 5 && md == 0 {
        operand.rip_relative = true;
        disp_size = 4;
    } else {
        operand.base = Some(rm | (rex_b << 3));
    }
    operand.displacement = match disp_size {
        1 => i64::from(*bytes.get(at)? as i8),
        4 => i64::from(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)),
        _ => 0,
    };
    at += disp_size;
    at += immediate_size(map, op, reg, operand_16);
    if at > 15 || at > bytes.len() {
        return None;
    }
    operand.len = at;
    Some(operand)
}

/// What an instruction is, for an #AC that claims a split lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockedAccess {
    /// A locked memory access (a LOCK prefix on an instruction that takes one, or XCHG with
    /// memory) of `size` bytes at `operand`, moved by the bit offset in register `bit_offset`
    /// for BTS, BTR and BTC with a register offset ([`LockedAccess::address`]).
    Locked { operand: MemOperand, size: u64, bit_offset: Option<u8> },
    /// No locked memory access: no #AC for a split lock can come from it.
    NotLocked,
    /// Not decoded (see [`decode`]'s limits): whether it is a split lock cannot be said.
    Unknown,
}

impl LockedAccess {
    /// The linear address a [`LockedAccess::Locked`] access touches, given the instruction's
    /// RIP and the registers (`None` for the others). BTS/BTR/BTC with a register bit offset
    /// access the `size` bytes that hold the bit: the operand's address plus `size` times the
    /// signed offset divided (rounding down) by the bits in `size` (SDM, BT: "Effective Address
    /// + (4 * (BitOffset DIV 32))"), which may lie in another cache line than the operand's.
    pub fn address(&self, rip: u64, reg: impl Fn(u8) -> u64) -> Option<u64> {
        let LockedAccess::Locked { operand, size, bit_offset } = *self else {
            return None;
        };
        let address = operand.address(rip, &reg);
        let Some(r) = bit_offset else {
            return Some(address);
        };
        let value = reg(r);
        let offset = match size {
            2 => i64::from(value as i16),
            4 => i64::from(value as i32),
            _ => value as i64,
        };
        // `size` is 2, 4 or 8: `offset >> log2(bits)` rounds down, as the processor does.
        let bytes = (offset >> (size * 8).trailing_zeros()).wrapping_mul(size as i64);
        let moved = address.wrapping_add(bytes as u64);
        Some(if operand.address_32 { moved & 0xFFFF_FFFF } else { moved })
    }
}

/// Whether the instruction in `bytes` is a locked memory access, and of how many bytes: the
/// instructions a LOCK prefix is allowed on (ADD, OR, ADC, SBB, AND, SUB, XOR, NOT, NEG, INC,
/// DEC, XCHG, CMPXCHG, CMPXCHG8B/16B, XADD, BTS, BTR, BTC), with a memory operand.
pub fn locked_access(bytes: &[u8]) -> LockedAccess {
    let (mut lock, mut operand_16, mut fs_gs) = (false, false, false);
    let mut rex = 0u8;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            0xF0 => lock = true,
            0x66 => operand_16 = true,
            0x64 | 0x65 => fs_gs = true,
            0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E | 0x67 => {}
            // REX counts only right before the opcode: a legacy prefix after it cancels it.
            0x40..=0x4F => {
                rex = b;
                at += 1;
                continue;
            }
            _ => break,
        }
        rex = 0;
        at += 1;
    }
    let rex_w = rex & 0x8 != 0;
    let full = if rex_w {
        8
    } else if operand_16 {
        2
    } else {
        4
    };
    let Some(&op) = bytes.get(at) else {
        return LockedAccess::Unknown;
    };
    let (second, modrm) = (bytes.get(at + 1).copied(), bytes.get(at + 1).copied());
    let reg_of = |m: Option<u8>| m.map(|m| (m >> 3) & 7);
    let (size, needs_lock) = match op {
        0x86 => (Some(1), false),
        0x87 => (Some(full), false),
        0x00 | 0x08 | 0x10 | 0x18 | 0x20 | 0x28 | 0x30 | 0x80 => (Some(1), true),
        0x01 | 0x09 | 0x11 | 0x19 | 0x21 | 0x29 | 0x31 | 0x81 | 0x83 => (Some(full), true),
        0xF6 if matches!(reg_of(modrm), Some(2 | 3)) => (Some(1), true),
        0xF7 if matches!(reg_of(modrm), Some(2 | 3)) => (Some(full), true),
        0xFE if matches!(reg_of(modrm), Some(0 | 1)) => (Some(1), true),
        0xFF if matches!(reg_of(modrm), Some(0 | 1)) => (Some(full), true),
        0x0F => {
            let modrm = bytes.get(at + 2).copied();
            let size = match second {
                Some(0xB0 | 0xC0) => Some(1),
                Some(0xB1 | 0xC1 | 0xAB | 0xB3 | 0xBB) => Some(full),
                Some(0xBA) if matches!(reg_of(modrm), Some(5..=7)) => Some(full),
                Some(0xC7) if reg_of(modrm) == Some(1) => Some(if rex_w { 16 } else { 8 }),
                _ => None,
            };
            (size, true)
        }
        _ => (None, true),
    };
    // BTS, BTR, BTC with the bit offset in ModRM.reg (REX.R extends it).
    let bit_offset = match (op, second) {
        (0x0F, Some(0xAB | 0xB3 | 0xBB)) => bytes.get(at + 2).map(|m| ((m >> 3) & 7) | ((rex & 0x4) << 1)),
        _ => None,
    };
    match (size, needs_lock && !lock) {
        (Some(size), false) => match decode(bytes) {
            Some(operand) => LockedAccess::Locked { operand, size, bit_offset },
            // Its operand is a register (or one the decoder does not cover).
            None if fs_gs => LockedAccess::Unknown,
            None => LockedAccess::NotLocked,
        },
        _ => LockedAccess::NotLocked,
    }
}

/// Up to 16 bytes at `rip`, as `read` (a probe of one aligned u64, `None` where it faults)
/// gives them: aligned words never straddle two pages, so an instruction that ends right before
/// a page that is not mapped is read whole, and the bytes stop where the mapping does. The
/// second value is how many bytes were read. An instruction cut short by that stop could not
/// have been fetched, so it raised nothing: decoding the short slice finds no locked access.
pub fn read_instruction(rip: u64, mut read: impl FnMut(u64) -> Option<u64>) -> ([u8; 16], usize) {
    let (start, skip) = (rip & !7, (rip & 7) as usize);
    let mut words = [0u8; 24];
    let mut got = 0usize;
    for (i, chunk) in words.chunks_mut(8).enumerate() {
        let Some(word) = start.checked_add(8 * i as u64).and_then(&mut read) else { break };
        chunk.copy_from_slice(&word.to_le_bytes());
        got += 8;
    }
    let mut bytes = [0u8; 16];
    let len = got.saturating_sub(skip).min(16);
    bytes[..len].copy_from_slice(&words[skip..skip + len]);
    (bytes, len)
}

/// The bytes at `rip` ([`read_instruction`]), read with probes, so that an instruction at the
/// end of its mapping cannot fault the kernel; `None` if not even its first byte is readable.
#[cfg(kernel)]
pub fn instruction_at(rip: u64) -> Option<([u8; 16], usize)> {
    let (bytes, len) = read_instruction(rip, |at| crate::arch::fault::probe_read_u64(at).ok());
    (len > 0).then_some((bytes, len))
}

/// General register `r` (0 = RAX ... 15 = R15) of the interrupted context.
#[cfg(kernel)]
pub fn register(f: &crate::arch::trap::TrapFrame, r: u8) -> u64 {
    let regs =
        [f.rax, f.rcx, f.rdx, f.rbx, f.rsp, f.rbp, f.rsi, f.rdi, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
    regs[usize::from(r & 15)]
}

/// The address of the memory operand of the CPL 3 instruction at the frame's RIP.
#[cfg(kernel)]
pub fn address_at(frame: &crate::arch::trap::TrapFrame) -> Option<u64> {
    let (bytes, len) = instruction_at(frame.rip)?;
    decode(&bytes[..len]).map(|operand| operand.address(frame.rip, |r| register(frame, r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, OpKind, Register};

    const RIP: u64 = 0x7000_1000;

    fn reg_value(r: u8) -> u64 {
        0x1000_0000_0000 + u64::from(r) * 0x1_0001_0101
    }

    fn iced_register(r: Register) -> Option<u64> {
        let full = r.full_register();
        let number = match full {
            Register::RAX => 0,
            Register::RCX => 1,
            Register::RDX => 2,
            Register::RBX => 3,
            Register::RSP => 4,
            Register::RBP => 5,
            Register::RSI => 6,
            Register::RDI => 7,
            Register::R8 => 8,
            Register::R9 => 9,
            Register::R10 => 10,
            Register::R11 => 11,
            Register::R12 => 12,
            Register::R13 => 13,
            Register::R14 => 14,
            Register::R15 => 15,
            Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
            _ => return None,
        };
        let value = reg_value(number);
        Some(if r.size() == 4 { value & 0xFFFF_FFFF } else { value })
    }

    /// What iced says: the instruction's length and its first memory operand's address.
    fn iced(bytes: &[u8]) -> Option<(usize, Option<u64>)> {
        let mut decoder = Decoder::with_ip(64, bytes, RIP, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        let mem = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
        Some((insn.len(), mem.and_then(|i| insn.virtual_address(i, 0, |r, _, _| iced_register(r)))))
    }

    fn ours(bytes: &[u8]) -> Option<(usize, u64)> {
        decode(bytes).map(|m| (m.len, m.address(RIP, reg_value)))
    }

    #[test]
    fn common_forms_decode_like_iced() {
        let cases: &[&[u8]] = &[
            &[0xF0, 0x83, 0x47, 0x3E, 0x01],                         // lock add dword [rdi+0x3e], 1
            &[0x48, 0x8B, 0x3F],                                     // mov rdi, [rdi]
            &[0x87, 0x06],                                           // xchg [rsi], eax
            &[0xF0, 0x0F, 0xB1, 0x0C, 0x8D, 0x10, 0x00, 0x00, 0x00], // lock cmpxchg [rcx*4+0x10], ecx
            &[0x42, 0x01, 0xB4, 0xE7, 0x34, 0x12, 0x5A, 0xA5],       // add [rdi+r12*8-0x5aa5edcc], esi
            &[0x81, 0x05, 0x10, 0x00, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12], // add [rip+0x10], imm32
            &[0x66, 0xC7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x34, 0x12], // mov word [rip+0x10], imm16
            &[0x67, 0x8B, 0x04, 0x24],                               // mov eax, [esp]
            &[0x41, 0xFF, 0x44, 0x24, 0x08],                         // inc dword [r12+8]
            &[0x48, 0x0F, 0xC7, 0x0F],                               // cmpxchg16b [rdi]
            &[0x66, 0x0F, 0x3A, 0x0F, 0x05, 1, 0, 0, 0, 4],          // palignr xmm0, [rip+1], 4
        ];
        for bytes in cases {
            let (len, addr) = iced(bytes).expect("iced decodes the case");
            assert_eq!(ours(bytes), Some((len, addr.expect("iced finds a memory operand"))), "{bytes:02x?}");
        }
        assert_eq!(decode(&[0x89, 0xC8]), None, "mov eax, ecx has no memory operand");
        assert_eq!(decode(&[0xA4]), None, "movsb has no ModRM");
        assert_eq!(decode(&[0x64, 0x8B, 0x00]), None, "FS-relative operands are not decoded");
    }

    /// What iced says of a locked access: the size of its memory operand, if it is one (as the
    /// host stub decides: a LOCK prefix, or XCHG, with memory).
    fn iced_locked(bytes: &[u8]) -> Option<Option<u64>> {
        let mut decoder = Decoder::with_ip(64, bytes, RIP, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        let mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
        let locked = mem && (insn.has_lock_prefix() || insn.mnemonic() == iced_x86::Mnemonic::Xchg);
        Some(locked.then(|| insn.memory_size().size() as u64))
    }

    #[test]
    fn locked_accesses_and_their_sizes() {
        let size = |bytes: &[u8]| match locked_access(bytes) {
            LockedAccess::Locked { size, .. } => Some(size),
            LockedAccess::NotLocked => None,
            LockedAccess::Unknown => Some(0),
        };
        assert_eq!(size(&[0xF0, 0x0F, 0xB1, 0x0F]), Some(4), "lock cmpxchg [rdi], ecx");
        assert_eq!(size(&[0xF0, 0x48, 0x0F, 0xC1, 0x07]), Some(8), "lock xadd [rdi], rax");
        assert_eq!(size(&[0x87, 0x07]), Some(4), "xchg [rdi], eax: locked without a prefix");
        assert_eq!(size(&[0x48, 0x87, 0x37]), Some(8), "xchg [rdi], rsi");
        assert_eq!(size(&[0xF0, 0x83, 0x07, 0x01]), Some(4), "lock add dword [rdi], 1");
        assert_eq!(size(&[0xF0, 0x66, 0x83, 0x07, 0x01]), Some(2), "lock add word [rdi], 1");
        assert_eq!(size(&[0xF0, 0x48, 0x0F, 0xC7, 0x0F]), Some(16), "lock cmpxchg16b [rdi]");
        assert_eq!(size(&[0xF0, 0xFE, 0x07]), Some(1), "lock inc byte [rdi]");
        assert_eq!(size(&[0x83, 0x07, 0x01]), None, "add dword [rdi], 1: no LOCK");
        assert_eq!(size(&[0x8B, 0x07]), None, "mov eax, [rdi]");
        assert_eq!(size(&[0x87, 0xC8]), None, "xchg eax, ecx: no memory");
        assert_eq!(size(&[0x64, 0xF0, 0xFF, 0x07]), Some(0), "FS-relative: not decoded");
    }

    /// An instruction right before a page that is not mapped is read whole (the old 16-byte read
    /// straddled into that page and gave nothing, so a host's claim there was taken at its
    /// word); one cut short by the page end decodes as no locked access.
    #[test]
    fn an_instruction_at_the_end_of_its_mapping_is_read_up_to_there() {
        // One mapped page at 0x1000 holding `lock add dword [rdi], 1` in its last 4 bytes.
        let page =
            |at: u64| (0x1000..0x2000).contains(&at).then_some(if at == 0x1FF8 { 0x0107_83F0_0000_0000 } else { 0 });
        let (bytes, len) = read_instruction(0x1FFC, page);
        assert_eq!((len, &bytes[..len]), (4, &[0xF0, 0x83, 0x07, 0x01][..]));
        assert!(matches!(locked_access(&bytes[..len]), LockedAccess::Locked { size: 4, .. }));
        // Its first 3 bytes only: cut short, nothing the processor could have run.
        let (bytes, len) = read_instruction(0x1FFD, page);
        assert_eq!((len, &bytes[..len]), (3, &[0x83, 0x07, 0x01][..]));
        assert_eq!(locked_access(&[0xF0, 0x83, 0x07][..3]), LockedAccess::NotLocked);
        // Well inside the page: 16 bytes; nothing mapped: none; the top of the address space.
        assert_eq!(read_instruction(0x1003, page).1, 16);
        assert_eq!(read_instruction(0x5000, page).1, 0);
        assert_eq!(read_instruction(u64::MAX, |_| Some(u64::MAX)).1, 1);
    }

    /// BTS/BTR/BTC with a register bit offset touch the operand's address moved by the offset:
    /// a split lock there is judged where the processor accesses, not at the ModRM address.
    #[test]
    fn a_register_bit_offset_moves_the_locked_access() {
        let at = |bytes: &[u8], rax: u64, rcx: u64| {
            let access = locked_access(bytes);
            let reg = |r: u8| match r {
                0 => rax,
                1 => rcx,
                _ => 0,
            };
            access.address(RIP, reg).map(|a| (a, sld_crosses(a, bytes)))
        };
        fn sld_crosses(address: u64, bytes: &[u8]) -> bool {
            match locked_access(bytes) {
                LockedAccess::Locked { size, .. } => pvagent_abi::sld::crosses_cache_line(address, size),
                _ => unreachable!(),
            }
        }
        let lock_bts_rax_rcx = [0xF0, 0x48, 0x0F, 0xAB, 0x08];
        assert_eq!(at(&lock_bts_rax_rcx, 0x1034, 0), Some((0x1034, false)), "bit 0: the operand's qword");
        assert_eq!(at(&lock_bts_rax_rcx, 0x1034, 64), Some((0x103C, true)), "bit 64: the next qword, split");
        assert_eq!(at(&lock_bts_rax_rcx, 0x103C, 64), Some((0x1044, false)), "the operand split, the access not");
        assert_eq!(at(&lock_bts_rax_rcx, 0x1044, (-1i64) as u64), Some((0x103C, true)), "bit -1: the qword before");
        // 32-bit operand: the offset is the low 32 bits, signed; dword steps.
        let lock_btr_eax_ecx = [0xF0, 0x0F, 0xB3, 0x08];
        assert_eq!(at(&lock_btr_eax_ecx, 0x1000, 0xFFFF_FFFF_0000_0040), Some((0x1008, false)), "bit 64: 2 dwords on");
        assert_eq!(at(&lock_btr_eax_ecx, 0x1000, 0xFFFF_FFE0), Some((0x0FFC, false)), "bit -32: the dword before");
        // REX.R names R9: lock btc [rax], r9 with r9 = 0 moves nothing.
        assert_eq!(at(&[0xF0, 0x4C, 0x0F, 0xBB, 0x08], 0x2000, 1 << 40), Some((0x2000, false)), "r9, not rcx");
        // The immediate form accesses the operand itself (the offset is taken modulo the size).
        assert_eq!(at(&[0xF0, 0x48, 0x0F, 0xBA, 0x28, 0x40], 0x103C, 1 << 20), Some((0x103C, true)), "bts [rax], 64");
    }

    /// Random valid instructions: the guest's decoding of a locked access agrees with iced's
    /// (the host's) wherever the guest decodes it.
    #[test]
    fn locked_access_agrees_with_iced() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut locked = 0;
        for _ in 0..300_000 {
            let mut bytes = [0u8; 16];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            let r = next();
            if r % 2 == 0 {
                bytes[0] = 0xF0;
                bytes[1] = [0x66, 0x48, 0x0F, 0x83, 0x81, 0xFF, 0xF7, 0x09][(r >> 8) as usize % 8];
            }
            let Some(iced_says) = iced_locked(&bytes) else { continue };
            let ours = match locked_access(&bytes) {
                LockedAccess::Locked { size, operand, .. } => {
                    assert_eq!(Some(operand.address(RIP, reg_value)), iced(&bytes).and_then(|i| i.1), "{bytes:02x?}");
                    Some(size)
                }
                LockedAccess::NotLocked => None,
                LockedAccess::Unknown => continue,
            };
            locked += u32::from(ours.is_some());
            assert_eq!(ours, iced_says, "{bytes:02x?}");
        }
        assert!(locked > 5_000, "only {locked} locked accesses seen");
    }

    /// Random byte strings: for every one that is a valid instruction (iced decodes it) and for
    /// which our decoder claims an address, the length and the address agree with iced's. Bytes
    /// that are not an instruction are out of scope: the decoder only ever sees an instruction
    /// that just raised #AC, which the CPU decoded (it does not validate opcodes, e.g. it
    /// "decodes" a MOV to CS, which is #UD).
    #[test]
    fn random_instructions_never_decode_differently_from_iced() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut claimed = 0;
        for _ in 0..300_000 {
            let mut bytes = [0u8; 16];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            // Bias towards the interesting starts: prefixes, REX, the 0F escape.
            let r = next();
            match r % 4 {
                0 => bytes[0] = [0xF0, 0x66, 0x67, 0x48, 0x41, 0x0F][(r >> 8) as usize % 6],
                1 => bytes[1] = 0x0F,
                _ => {}
            }
            let Some((len, addr)) = ours(&bytes) else { continue };
            let Some((iced_len, iced_addr)) = iced(&bytes) else { continue };
            claimed += 1;
            assert_eq!((len, Some(addr)), (iced_len, iced_addr), "{bytes:02x?}");
        }
        assert!(claimed > 50_000, "the decoder claimed only {claimed} instructions");
    }
}
