//! Hand-made guest images for tests that need a guest smaller than pvagent's kernel: a few
//! bytes of 32-bit code behind a PVH note.

/// Load address of [`tiny_pvh_image`]'s code.
pub const TINY_LOAD: u64 = 0x10_0000;

/// A minimal ELF64 image: `code` loaded at 1 MiB (entry there), with a PVH note unless
/// `pvh_note` is false, and `extra_memsz` bytes of zero-fill after the code.
pub fn tiny_pvh_image(code: &[u8], pvh_note: bool, extra_memsz: u64) -> Vec<u8> {
    let phnum: u16 = if pvh_note { 2 } else { 1 };
    let code_off = 64 + 56 * u64::from(phnum);
    let note_off = code_off + code.len() as u64;
    let note: Vec<u8> = [4u32, 4, pvagent_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .chain(*b"Xen\0")
        .chain((TINY_LOAD as u32).to_le_bytes())
        .collect();
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&TINY_LOAD.to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, phnum, 64, 0, 0] {
        b.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    let mut phdr = |p_type: u32, flags: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        b.extend_from_slice(&p_type.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        for v in [off, addr, addr, filesz, memsz, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, 5, code_off, TINY_LOAD, code.len() as u64, code.len() as u64 + extra_memsz);
    if pvh_note {
        phdr(4, 4, note_off, 0, note.len() as u64, note.len() as u64);
    }
    b.extend_from_slice(code);
    if pvh_note {
        b.extend_from_slice(&note);
    }
    b
}
