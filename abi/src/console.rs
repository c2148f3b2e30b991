//! The paravirtual console: the guest hands the host a whole line (or several) in one exit,
//! where the UART costs an exit per byte and one per 16 bytes for the line status poll.
//!
//! The guest writes the bytes into a [`ConsoleRecord`] in its memory, then writes the
//! record's guest-physical address (below 4 GiB, 4-byte aligned) to
//! [`crate::port::CONSOLE`] with a 32-bit `out`. The host reads `len`, then that many bytes
//! from `bytes`, and treats them exactly as bytes written to COM1 (the console is one stream:
//! `\n` ends a line, `\r` is dropped), before the `out` completes: the guest may reuse the
//! record right after it. A guest uses the port only when [`crate::cpuid::Features::CONSOLE`]
//! is set (and, as for every interface of the host stub, after announcing its version).

/// The most bytes one record may carry. A record that claims more, or that does not lie in
/// guest RAM, is a protocol violation: the host stops the run (docs/abi.md, "Console").
pub const MAX_RECORD_BYTES: u32 = 4096;

/// The alignment a record's guest-physical address must have.
pub const RECORD_ALIGN: u64 = 4;

/// A console record of up to `N` bytes: `len` (offset 0) says how many of `bytes` (offset 4)
/// the host reads. The guest picks `N`; the host reads only `len` (at most
/// [`MAX_RECORD_BYTES`]).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(4))]
pub struct ConsoleRecord<const N: usize> {
    /// How many bytes follow. Written by the guest.
    pub len: u32,
    /// The bytes; only the first `len` are read. Written by the guest.
    pub bytes: [u8; N],
}

/// Offset of [`ConsoleRecord::len`].
pub const RECORD_LEN_OFFSET: u64 = 0;
/// Offset of [`ConsoleRecord::bytes`].
pub const RECORD_BYTES_OFFSET: u64 = 4;

const _: () = assert!(core::mem::offset_of!(ConsoleRecord<1>, len) == RECORD_LEN_OFFSET as usize);
const _: () = assert!(core::mem::offset_of!(ConsoleRecord<1>, bytes) == RECORD_BYTES_OFFSET as usize);
const _: () = assert!(core::mem::offset_of!(ConsoleRecord<4096>, bytes) == RECORD_BYTES_OFFSET as usize);
const _: () = assert!(core::mem::size_of::<ConsoleRecord<4>>() == 8);
const _: () = assert!(core::mem::align_of::<ConsoleRecord<1>>() == RECORD_ALIGN as usize);

impl<const N: usize> ConsoleRecord<N> {
    /// An empty record.
    pub const fn new() -> Self {
        Self { len: 0, bytes: [0; N] }
    }
}

impl<const N: usize> Default for ConsoleRecord<N> {
    fn default() -> Self {
        Self::new()
    }
}
