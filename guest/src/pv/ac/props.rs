//! #AC's plain code over arbitrary input: the operand decoder over any bytes (it never panics,
//! and what it claims is consistent with itself, with an encoder's view of the forms it
//! decodes, and with `iced-x86`), the classification over every hardware state (a split-lock
//! verdict only where the hardware raises one), the rate limit against the fixed-window rule,
//! the once-per-site record, and the command line's mode over any text. Fixed case counts and
//! seed (`crate::testing`).

use std::cell::Cell;
use std::collections::HashSet;

use iced_x86::{Decoder, DecoderOptions, OpKind, Register};
use proptest::prelude::*;
use pvagent_abi::sld;

use super::operand::{MemOperand, decode};
use super::policy::*;
use crate::testing::check;

/// A register file where each register's value tells which register it is.
fn reg(r: u8) -> u64 {
    0x1000_0000_0000 + u64::from(r) * 0x1_0001_0101
}

#[test]
fn the_decoder_never_panics_and_decodes_from_the_instructions_own_bytes() {
    let bytes = prop::collection::vec(any::<u8>(), 0..=20);
    check(20_000, (bytes, any::<u64>(), any::<[u64; 16]>()), |(bytes, rip, regs)| {
        let Some(m) = decode(&bytes) else { return Ok(()) };
        prop_assert!(m.len >= 2 && m.len <= 15 && m.len <= bytes.len(), "{:?}", m);
        // What follows the instruction changes nothing, and a cut one is not decoded.
        prop_assert_eq!(decode(&bytes[..m.len]), Some(m));
        prop_assert_eq!(decode(&bytes[..m.len - 1]), None);
        prop_assert!(
            m.base.is_none_or(|b| b < 16)
                && m.index.is_none_or(|(i, s)| i < 16 && i != 4 && s.is_power_of_two() && s <= 8)
        );
        prop_assert!(!(m.rip_relative && (m.base.is_some() || m.index.is_some())));
        // Any registers and RIP: the address wraps as the CPU's does, and never panics.
        let address = m.address(rip, |r| regs[usize::from(r)]);
        prop_assert!(!m.address_32 || address <= u64::from(u32::MAX));
        Ok(())
    });
}

/// An instruction with a ModRM memory operand, in parts: what the decoder must find follows
/// from them directly (the encoder's view), whatever the opcode.
#[derive(Clone, Debug)]
struct Form {
    /// Legacy prefixes (not FS/GS, which the decoder refuses).
    prefixes: Vec<u8>,
    /// REX's low nibble, when there is one (just before the opcode).
    rex: Option<u8>,
    /// The opcode's map escape (none, 0F, 0F 38, 0F 3A) and byte.
    map: u8,
    opcode: u8,
    md: u8,
    reg: u8,
    rm: u8,
    sib: u8,
    disp: i32,
    /// The immediate and whatever follows.
    tail: [u8; 8],
}

impl Form {
    fn bytes(&self) -> Vec<u8> {
        let mut b = self.prefixes.clone();
        b.extend(self.rex.map(|r| 0x40 | r));
        b.extend_from_slice(match self.map {
            0 => &[],
            1 => &[0x0F],
            2 => &[0x0F, 0x38],
            _ => &[0x0F, 0x3A],
        });
        b.extend([self.opcode, self.md << 6 | self.reg << 3 | self.rm]);
        if self.rm == 4 {
            b.push(self.sib);
        }
        match self.disp_size() {
            1 => b.push(self.disp as i8 as u8),
            4 => b.extend(self.disp.to_le_bytes()),
            _ => {}
        }
        b.extend(self.tail);
        b
    }

    fn no_base(&self) -> bool {
        self.md == 0 && (self.rm == 5 || (self.rm == 4 && self.sib & 7 == 5))
    }

    fn disp_size(&self) -> usize {
        match self.md {
            1 => 1,
            2 => 4,
            _ if self.no_base() => 4,
            _ => 0,
        }
    }

    /// The operand these parts encode; its length is the instruction's (iced's, the only
    /// thing the parts do not say: the opcode's immediate).
    fn operand(&self, len: usize) -> MemOperand {
        let rex = self.rex.unwrap_or(0);
        let (x, b) = ((rex >> 1) & 1, rex & 1);
        let (base, index) = if self.rm == 4 {
            let index = (self.sib >> 3) & 7 | x << 3;
            let base = (!self.no_base()).then_some(self.sib & 7 | b << 3);
            (base, (index != 4).then_some((index, 1 << (self.sib >> 6))))
        } else if self.no_base() {
            (None, None)
        } else {
            (Some(self.rm | b << 3), None)
        };
        let displacement = match self.disp_size() {
            1 => i64::from(self.disp as i8),
            4 => i64::from(self.disp),
            _ => 0,
        };
        let rip_relative = self.md == 0 && self.rm == 5;
        MemOperand { base, index, displacement, rip_relative, address_32: self.prefixes.contains(&0x67), len }
    }
}

fn forms() -> impl Strategy<Value = Form> {
    let prefix = prop::sample::select(vec![0xF0u8, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x66, 0x67]);
    (
        prop::collection::vec(prefix, 0..3),
        prop::option::of(0u8..16),
        (0u8..4, any::<u8>()).prop_filter("an opcode, not a prefix or an escape", |&(map, op)| match map {
            0 => !matches!(op, 0x0F | 0x26 | 0x2E | 0x36 | 0x3E | 0x40..=0x4F | 0x64..=0x67 | 0xF0 | 0xF2 | 0xF3),
            1 => !matches!(op, 0x38 | 0x3A),
            _ => true,
        }),
        (0u8..3, 0u8..8, 0u8..8, any::<u8>()),
        any::<i32>(),
        any::<[u8; 8]>(),
    )
        .prop_map(|(prefixes, rex, (map, opcode), (md, reg, rm, sib), disp, tail)| Form {
            prefixes,
            rex,
            map,
            opcode,
            md,
            reg,
            rm,
            sib,
            disp,
            tail,
        })
}

fn iced_register(r: Register) -> Option<u64> {
    let number = match r.full_register() {
        Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
        full if full >= Register::RAX && full <= Register::R15 => full as u8 - Register::RAX as u8,
        _ => return None,
    };
    Some(if r.size() == 4 { reg(number) & 0xFFFF_FFFF } else { reg(number) })
}

#[test]
fn every_form_the_decoder_claims_is_the_operand_its_parts_encode() {
    let compared = Cell::new(0u32);
    check(50_000, forms(), |form| {
        let bytes = form.bytes();
        let Some(got) = decode(&bytes) else { return Ok(()) };
        // An instruction the CPU would not execute cannot raise #AC: out of scope (iced
        // validates opcodes, the CPU's decoder is what the #AC came from).
        let insn = Decoder::with_ip(64, &bytes, 0x7000_1000, DecoderOptions::NONE).decode();
        if insn.is_invalid() {
            return Ok(());
        }
        prop_assert_eq!(got, form.operand(insn.len()), "{:02x?}", bytes);
        let memory = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
        let iced = memory.and_then(|i| insn.virtual_address(i, 0, |r, _, _| iced_register(r)));
        prop_assert_eq!(Some(got.address(0x7000_1000, reg)), iced, "{:02x?}", bytes);
        compared.set(compared.get() + 1);
        Ok(())
    });
    // Most forms are instructions the decoder claims (the rest: opcodes without ModRM, FS/GS,
    // VEX and friends, and what iced calls invalid).
    assert!(compared.get() > 10_000, "only {} forms compared", compared.get());
}

/// The classification over every state the handler can read: a split-lock verdict only with
/// detection on, and never for a task that asked for alignment checks (whose #AC the hardware
/// reports the same way); spurious exactly when nothing could have raised it.
#[test]
fn a_split_lock_verdict_only_where_the_hardware_raises_split_lock_ac() {
    for cpl in 0..=u8::MAX {
        for bits in 0..8u8 {
            let state = AcState { cpl, rflags_ac: bits & 1 != 0, cr0_am: bits & 2 != 0, detection_on: bits & 4 != 0 };
            let asked = cpl == 3 && state.rflags_ac && state.cr0_am;
            let want = match (asked, state.detection_on, cpl == 3) {
                (true, _, _) => AcKind::UserAlignmentCheck,
                (false, false, _) => AcKind::Spurious,
                (false, true, true) => AcKind::UserSplitLock,
                (false, true, false) => AcKind::KernelSplitLock,
            };
            assert_eq!(classify(state), want, "{state:?}");
        }
    }
}

/// The rate limit against its rule, as a model: windows of `interval` ticks, each starting at
/// its first event, at most `burst` events in each; an event over budget waits until the next
/// window starts (the earliest it may be counted) and is counted there, as that window's first.
#[test]
fn the_rate_limit_counts_at_most_burst_per_window() {
    let gaps = prop::collection::vec(prop_oneof![0u64..5, 0u64..300], 1..80);
    check(3000, (1u32..=5, 1u64..=100, 0u64..1 << 40, gaps), |(burst, interval, start, gaps)| {
        let mut budget = RateLimit::new();
        let mut now = start;
        // The model: the current window's start and count.
        let mut window: Option<(u64, u32)> = None;
        for (k, gap) in gaps.into_iter().enumerate() {
            let got = match user_action(Mode::Ratelimit(burst), &mut budget, now, interval) {
                UserAction::Continue { wait_ticks } => wait_ticks,
                UserAction::Kill => return Err(TestCaseError::fail("ratelimit never kills")),
            };
            let want = match window {
                Some((from, used)) if now < from + interval => {
                    if used < burst {
                        window = Some((from, used + 1));
                        0
                    } else {
                        window = Some((from + interval, 1));
                        from + interval - now
                    }
                }
                _ => {
                    window = Some((now, 1));
                    0
                }
            };
            prop_assert_eq!(got, want, "event {} at tick {}", k, now);
            // The task runs on once its wait is over.
            now += got + gap;
        }
        Ok(())
    });
}

#[test]
fn each_kernel_site_is_reported_once_until_the_record_is_full() {
    let rips = prop::collection::vec(prop_oneof![0u64..40, any::<u64>()], 1..200);
    check(2000, rips, |rips| {
        let mut sites = SiteSet::new();
        let mut recorded = HashSet::new();
        for rip in rips {
            let want = !recorded.contains(&rip);
            if want && recorded.len() < 32 {
                recorded.insert(rip);
            }
            prop_assert_eq!(sites.first_time(rip), want, "{:#x}", rip);
        }
        Ok(())
    });
}

#[test]
fn any_sld_text_parses_or_is_refused_and_modes_print_back() {
    // The canonical texts parse to their modes: without this a parser refusing everything
    // would pass the property below.
    assert_eq!(Mode::parse("off"), Ok(Mode::Off));
    assert_eq!(Mode::parse("warn"), Ok(Mode::Warn));
    assert_eq!(Mode::parse("fatal"), Ok(Mode::Fatal));
    for n in [1, RATELIMIT_MAX] {
        assert_eq!(Mode::parse(&format!("ratelimit:{n}")), Ok(Mode::Ratelimit(n)));
    }
    let text = prop_oneof!["\\PC{0,14}", "(off|warn|fatal|ratelimit:[0-9+-]{0,6})"];
    check(5000, text, |text| {
        if let Ok(mode) = Mode::parse(&text) {
            prop_assert_eq!(Mode::parse(&mode.to_string()), Ok(mode));
            if let Mode::Ratelimit(n) = mode {
                prop_assert!((1..=RATELIMIT_MAX).contains(&n));
            }
        }
        Ok(())
    });
}

/// IA32_CORE_CAPABILITIES is read only when CPUID or the host stub says it exists (reading a
/// missing MSR raises #GP), and detection is available only with its bit.
#[test]
fn the_enumeration_reads_the_msr_only_when_it_exists() {
    check(5000, (any::<u32>(), any::<bool>(), any::<u64>()), |(edx, host_says, caps)| {
        let mut read = false;
        let e = Enumeration::probe(edx, host_says, || {
            read = true;
            caps
        });
        let exists = edx & sld::CPUID7_EDX_CORE_CAPABILITIES != 0 || host_says;
        prop_assert_eq!(read, exists);
        prop_assert_eq!(e.available(), exists && caps & sld::CORE_CAPS_SPLIT_LOCK_DETECT != 0);
        Ok(())
    });
}
