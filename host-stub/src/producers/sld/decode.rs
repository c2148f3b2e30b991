//! Decoding the instruction at an armed address with `iced-x86`: is it a locked access, and
//! which bytes does its memory operand touch. Plain code over the instruction bytes and a
//! register lookup, so it is tested without a guest.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register};

use super::policy::Access;

/// A decoded instruction: what the decision needs and a text for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub access: Access,
    /// Intel syntax, e.g. `lock add dword ptr [rdi+3Eh],1`.
    pub text: String,
    pub len: usize,
}

/// The general registers and segment bases `iced` may ask for.
pub trait Registers {
    /// A 64-bit general register (RAX...R15) or a segment's base (FS, GS; the others are 0
    /// in 64-bit mode).
    fn value(&self, register: Register) -> Option<u64>;
}

/// Decodes the 64-bit instruction at `rip` from `bytes`; `None` if it is not a valid one.
pub fn decode(bytes: &[u8], rip: u64, regs: &impl Registers) -> Option<Decoded> {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return None;
    }
    let memory = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory).and_then(|operand| {
        let address = insn.virtual_address(operand, 0, |register, _, _| lookup(regs, register))?;
        Some((address, insn.memory_size().size() as u64))
    });
    // XCHG with a memory operand is locked without a prefix.
    let locked = insn.has_lock_prefix() || (insn.mnemonic() == Mnemonic::Xchg && memory.is_some());
    Some(Decoded { access: Access { locked, memory }, text: format_intel(&insn), len: insn.len() })
}

/// A register's value as the instruction uses it (32-bit registers under 0x67 are truncated).
fn lookup(regs: &impl Registers, register: Register) -> Option<u64> {
    match register {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        Register::FS | Register::GS => regs.value(register),
        _ => {
            let full = regs.value(register.full_register())?;
            Some(match register.size() {
                8 => full,
                4 => full & 0xFFFF_FFFF,
                _ => return None,
            })
        }
    }
}

fn format_intel(insn: &Instruction) -> String {
    let mut text = String::new();
    IntelFormatter::new().format(insn, &mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Regs;

    impl Registers for Regs {
        fn value(&self, register: Register) -> Option<u64> {
            match register {
                Register::RDI => Some(0x1_0000_1000),
                Register::RSI => Some(0x2000),
                Register::RCX => Some(3),
                Register::FS => Some(0x7000_0000),
                Register::GS => Some(0),
                _ => Some(0),
            }
        }
    }

    fn access(bytes: &[u8]) -> Access {
        decode(bytes, 0x1000, &Regs).expect("valid instruction").access
    }

    #[test]
    fn locked_accesses_and_their_operands_are_found() {
        // lock add dword ptr [rdi+3Eh],1: 4 bytes at 0x1_0000_103E, crossing a line.
        let d = decode(&[0xF0, 0x83, 0x47, 0x3E, 0x01], 0x1000, &Regs).unwrap();
        assert_eq!(d.access, Access { locked: true, memory: Some((0x1_0000_103E, 4)) });
        assert!(d.access.is_split_lock());
        assert_eq!(d.len, 5);
        assert!(d.text.starts_with("lock add dword ptr [rdi+3Eh]"), "{}", d.text);
        // Without the prefix the same access is not locked.
        assert!(!access(&[0x83, 0x47, 0x3E, 0x01]).locked);
        // xchg [rsi+3Ch],rax: locked without a prefix, 8 bytes.
        assert_eq!(access(&[0x48, 0x87, 0x46, 0x3C]), Access { locked: true, memory: Some((0x203C, 8)) });
        // xchg between registers touches no memory and is not a locked access.
        assert_eq!(access(&[0x48, 0x87, 0xC8]), Access { locked: false, memory: None });
        // lock cmpxchg16b [rdi+38h]: 16 bytes.
        assert_eq!(access(&[0xF0, 0x48, 0x0F, 0xC7, 0x4F, 0x38]).memory, Some((0x1_0000_1038, 16)));
        // FS-relative: the segment base counts.
        assert_eq!(access(&[0x64, 0xF0, 0xFF, 0x06]).memory, Some((0x7000_2000, 4)));
        // 0x67: 32-bit addressing truncates.
        assert_eq!(access(&[0x67, 0xF0, 0xFF, 0x07]).memory, Some((0x1000, 4)));
        // lock bts dword ptr [rsi+rcx*8],1
        assert_eq!(access(&[0xF0, 0x0F, 0xBA, 0x2C, 0xCE, 0x01]).memory, Some((0x2018, 4)));
    }

    #[test]
    fn invalid_bytes_are_not_decoded() {
        // LOCK on an instruction that cannot take it is #UD, not a locked access.
        assert_eq!(decode(&[0xF0, 0x90], 0, &Regs), None);
        assert_eq!(decode(&[0x06], 0, &Regs), None, "push es does not exist in 64-bit mode");
        assert_eq!(decode(&[], 0, &Regs), None);
    }
}
