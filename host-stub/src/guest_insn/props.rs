//! Property tests of the instruction decoding with what a hostile guest controls: any bytes
//! (0 to 20 of them) at any RIP, any register values (biased toward 0, 2^63, 2^64 - 1 and page
//! and 4 GiB boundaries), any segment bases, in each code size. Each property states the right
//! answer, checked against an independent computation, not only that nothing panicked.

use kvm_bindings::{kvm_regs, kvm_sregs};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::props::{check, edge_u64};

/// The code size a test decodes in: 64-bit, 32-bit or 16-bit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Long,
    Protected32,
    Code16,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![2 => Just(Mode::Long), 1 => Just(Mode::Protected32), 1 => Just(Mode::Code16)]
}

/// Registers from edge values; [`kvm_regs`] has 18 words (RFLAGS among them).
fn regs() -> impl Strategy<Value = kvm_regs> {
    proptest::array::uniform18(edge_u64()).prop_map(|v| kvm_regs {
        rax: v[0],
        rbx: v[1],
        rcx: v[2],
        rdx: v[3],
        rsi: v[4],
        rdi: v[5],
        rsp: v[6],
        rbp: v[7],
        r8: v[8],
        r9: v[9],
        r10: v[10],
        r11: v[11],
        r12: v[12],
        r13: v[13],
        r14: v[14],
        r15: v[15],
        rip: v[16],
        rflags: v[17],
    })
}

/// Segment registers for `mode`, with any bases (FS and GS keep 64-bit bases written through
/// their MSRs in any mode; the others as a guest's descriptors or KVM_SET_SREGS put them).
fn sregs() -> impl Strategy<Value = (Mode, kvm_sregs)> {
    (mode(), proptest::array::uniform6(edge_u64())).prop_map(|(mode, bases)| {
        let mut s = kvm_sregs::default();
        for (seg, base) in [&mut s.es, &mut s.cs, &mut s.ss, &mut s.ds, &mut s.fs, &mut s.gs].into_iter().zip(bases) {
            seg.base = base;
        }
        match mode {
            Mode::Long => s.cs.l = 1,
            Mode::Protected32 => s.cs.db = 1,
            Mode::Code16 => {}
        }
        (mode, s)
    })
}

/// Any bytes, often starting with prefixes and opcodes that take memory operands, so that
/// many cases decode to an instruction with one.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = proptest::sample::select(
        &[
            0x0F, 0x26, 0x2E, 0x36, 0x3E, 0x48, 0x4C, 0x64, 0x65, 0x66, 0x67, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0xA4, 0xA5,
            0xAA, 0xAB, 0xC7, 0xF0, 0xF3, 0xFF, 0x04, 0x05, 0x44, 0x84, 0x24, 0x25,
        ][..],
    );
    prop_oneof![
        vec(any::<u8>(), 0..=20),
        (vec(interesting, 0..=4), vec(any::<u8>(), 0..=16)).prop_map(|(mut a, b)| {
            a.extend(b);
            a
        }),
    ]
}

/// The top of the linear address space in `mode` (linear addresses wrap there outside 64-bit
/// mode, as the processor's 32-bit ones do).
fn linear_top(mode: Mode) -> u64 {
    if mode == Mode::Long { u64::MAX } else { u64::from(u32::MAX) }
}

/// Whatever the bytes and registers, decoding gives an instruction of 1 to 15 of the bytes, or
/// says they are not one; each memory operand lies in the mode's linear address space, and its
/// last byte is its first plus its size less one there, or (64-bit mode only) `None` exactly
/// when that passes the top of the address space.
#[test]
fn decoding_any_bytes_with_any_registers_gives_operands_in_the_address_space() {
    check("decode", 6000, (bytes(), regs(), sregs()), |(bytes, regs, (mode, sregs))| {
        let insn = match decode(regs.rip, &bytes, &regs, &sregs) {
            Ok(insn) => insn,
            Err(InsnError::Invalid(rip)) => {
                prop_assert_eq!(rip, regs.rip);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
        };
        let len = insn.len();
        prop_assert!((1..=MAX_INSN_LEN).contains(&len) && len <= bytes.len(), "length {len} of {} bytes", bytes.len());
        prop_assert_eq!(&insn.bytes[..], &bytes[..len]);
        let top = linear_top(mode);
        for m in &insn.memory {
            prop_assert!(m.linear <= top, "{m:x?} outside the {mode:?} address space");
            prop_assert!(m.reads || m.writes, "{m:x?} accesses nothing");
            let span = m.size.saturating_sub(1);
            match (mode, m.last_byte()) {
                (Mode::Long, None) => prop_assert!(m.linear.checked_add(span).is_none(), "{m:x?}"),
                (Mode::Long, Some(last)) => prop_assert_eq!(Some(last), m.linear.checked_add(span)),
                (_, last) => prop_assert_eq!(last, Some(m.linear.wrapping_add(span) & top), "{:x?}", m),
            }
        }
        Ok(())
    });
}

/// The decoder reads no byte past the instruction: the same bytes with anything after them
/// decode to the same instruction, operands and all, and so do the instruction's own bytes
/// alone.
#[test]
fn trailing_bytes_do_not_change_a_decoded_instruction() {
    let strategy = (bytes(), vec(any::<u8>(), 1..=16), regs(), sregs());
    check("decode with trailing garbage", 4000, strategy, |(bytes, garbage, regs, (_, sregs))| {
        let Ok(insn) = decode(regs.rip, &bytes, &regs, &sregs) else { return Ok(()) };
        let longer: Vec<u8> = bytes.iter().chain(&garbage).copied().collect();
        for other in [&longer[..], &bytes[..insn.len()]] {
            let again = decode(regs.rip, other, &regs, &sregs).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again.bytes, &insn.bytes);
            prop_assert_eq!(&again.memory, &insn.memory);
            prop_assert_eq!(again.text(), insn.text());
        }
        Ok(())
    });
}

/// An operand's address as the processor computes it: `mov r, [base + index * scale + disp32]`
/// (ModRM mod 10, a SIB byte), built from random fields, against base + index * scale + disp
/// computed here: modulo 2^64 in 64-bit mode, modulo 2^32 with the 0x67 prefix, and outside
/// 64-bit mode with the segment's base added (DS, or SS for a base of RSP or RBP) modulo 2^32.
#[test]
fn a_base_index_scale_displacement_operand_is_where_the_processor_puts_it() {
    let fields = (0u8..16, 0u8..16, 0u8..4, any::<i32>(), any::<bool>(), any::<bool>());
    check(
        "modrm address",
        6000,
        (fields, regs(), sregs()),
        |((base, index, scale, disp, a32, wide), regs, (mode, sregs))| {
            let long = mode == Mode::Long;
            // Registers 8-15 exist only in 64-bit mode; index 4 (RSP) means no index.
            let (base, index) = if long { (base, index) } else { (base & 7, index & 7) };
            let mut bytes = Vec::new();
            // A SIB byte needs 32- or 64-bit addressing: 0x67 gives it to 16-bit code, and 32-bit
            // addressing to 64-bit code (in 32-bit code it would select 16-bit addressing).
            let prefix_67 = mode == Mode::Code16 || (long && a32);
            if prefix_67 {
                bytes.push(0x67);
            }
            let rex = 0x40 | u8::from(wide) << 3 | (index >> 3) << 1 | (base >> 3);
            if long && rex != 0x40 {
                bytes.push(rex);
            }
            bytes.push(0x8B); // mov r, r/m
            bytes.push(0b10_000_100); // mod 10, reg 0, rm 100: a SIB byte follows
            bytes.push(scale << 6 | (index & 7) << 3 | (base & 7));
            bytes.extend_from_slice(&disp.to_le_bytes());

            let gpr = |n: u8| {
                [
                    regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8, regs.r9,
                    regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
                ][usize::from(n)]
            };
            let index_value = if index == 4 { 0 } else { gpr(index) };
            let mut effective =
                gpr(base).wrapping_add(index_value.wrapping_mul(1 << scale)).wrapping_add(i64::from(disp) as u64);
            let address_32 = !long || a32;
            if address_32 {
                effective &= 0xFFFF_FFFF;
            }
            let expected = if long {
                effective
            } else {
                let segment = if base & 7 == 4 || base & 7 == 5 { sregs.ss.base } else { sregs.ds.base };
                segment.wrapping_add(effective) & 0xFFFF_FFFF
            };
            let insn = decode(regs.rip, &bytes, &regs, &sregs).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(insn.len(), bytes.len());
            prop_assert_eq!(insn.memory.len(), 1);
            let m = insn.memory[0];
            let size = if wide && long {
                8
            } else if mode == Mode::Code16 {
                2
            } else {
                4
            };
            prop_assert_eq!((m.linear, m.size, m.reads, m.writes), (expected, size, true, false), "{:02x?}", bytes);
            Ok(())
        },
    );
}

/// RIP-relative operands in 64-bit mode are relative to the next instruction, modulo 2^64;
/// outside 64-bit mode the code's linear address wraps at 4 GiB with CS's base added.
#[test]
fn rip_relative_operands_and_code_addresses_wrap_as_the_processor_wraps_them() {
    check("rip-relative", 3000, (any::<i32>(), regs(), sregs()), |(disp, regs, (mode, sregs))| {
        if mode != Mode::Long {
            prop_assert_eq!(code_linear(regs.rip, &sregs), sregs.cs.base.wrapping_add(regs.rip) & 0xFFFF_FFFF);
            return Ok(());
        }
        prop_assert_eq!(code_linear(regs.rip, &sregs), regs.rip);
        // mov eax, [rip + disp32]: 6 bytes.
        let mut bytes = vec![0x8B, 0x05];
        bytes.extend_from_slice(&disp.to_le_bytes());
        let insn = decode(regs.rip, &bytes, &regs, &sregs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(insn.memory[0].linear, regs.rip.wrapping_add(6).wrapping_add(i64::from(disp) as u64));
        Ok(())
    });
}

/// The bytes at any RIP through page tables that map some pages, to RAM or past its end
/// (`vm-memory` reads them as the host stub does): the first 15 bytes up to the first page
/// that does not translate or is not RAM, or the top of the address space, each the byte
/// its own translation names; an error when there is none.
#[test]
fn fetching_reads_the_bytes_the_page_tables_name_up_to_the_first_gap() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    const RAM_PAGES: u64 = 16;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (RAM_PAGES * 0x1000) as usize)]).expect("RAM");
    let contents: Vec<u8> = (0..RAM_PAGES * 0x1000).map(|a| (a * 7 + (a >> 12)) as u8).collect();
    mem.write_slice(&contents, GuestAddress(0)).expect("fill");
    // A page table: a linear page maps (most of the time) to one of 24 physical pages, 8 of
    // them past RAM's end.
    let table = |seed: u64, linear: u64| -> Option<u64> {
        let h = ((linear >> 12) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 60 != 0).then_some(((h >> 32) % 24) << 12 | (linear & 0xFFF))
    };
    check("fetch", 3000, (edge_u64(), any::<u64>()), |(rip, seed)| {
        let fetched =
            fetch_with(rip, |at| table(seed, at), |gpa, chunk| mem.read_slice(chunk, GuestAddress(gpa)).is_ok());
        let mut expected = Vec::new();
        for i in 0..MAX_INSN_LEN as u64 {
            let Some(gpa) = rip.checked_add(i).and_then(|at| table(seed, at)).filter(|gpa| *gpa < RAM_PAGES << 12)
            else {
                break;
            };
            expected.push(contents[gpa as usize]);
        }
        match fetched {
            Ok(bytes) => prop_assert_eq!(bytes, expected),
            Err(InsnError::Unmapped(at)) => prop_assert!(expected.is_empty() && at == rip),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
        Ok(())
    });
}
