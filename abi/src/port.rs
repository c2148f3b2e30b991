//! I/O ports the guest uses. Each one is served by both QEMU and the host stub unless its
//! documentation says it is the host stub's own.

/// COM1, a 16550 UART: the guest's console. The host stub implements the transmit path and the
/// line status register; QEMU implements a full UART.
pub const COM1: u16 = 0x3F8;

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`), which the
/// host stub emulates: a 32-bit `out` of code `c` ends the run. QEMU's process then exits with
/// status `(c << 1) | 1`; see [`crate::exit`].
pub const DEBUG_EXIT: u16 = 0xF4;

/// The host stub's hypercall port: a 32-bit `out` of the guest-physical address of a
/// [`crate::hypercall::Request`] asks the host to carry it out before the `out` completes.
/// QEMU ignores writes here; a guest only uses it when [`crate::cpuid::Features::HYPERCALL`] is
/// set.
pub const HYPERCALL: u16 = 0x0510;
