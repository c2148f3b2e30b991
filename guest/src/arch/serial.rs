//! COM1: a 16550 UART driven by polling (no receive path). The console under hosts without the
//! host stub's console port (QEMU), and the fatal path's last resort.

use x86_64::instructions::port::Port;

/// Transmit holding register empty (LSR bit 5); with the FIFOs on, the transmit FIFO is empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Bytes the 16550A's transmit FIFO holds: once the line status says it is empty, this many
/// bytes go out without asking again (as Linux's 8250 driver does), so a line costs one
/// status read per 16 bytes, not one per byte.
const TX_FIFO_BYTES: u8 = 16;

/// The UART at one base port.
#[derive(Debug)]
pub struct Serial {
    base: u16,
    /// Bytes that can be written before the line status must be read again: the FIFO's size
    /// once [`Serial::init`] turned the FIFOs on, one before.
    burst: u8,
    /// Room left in the current burst.
    room: u8,
}

impl Serial {
    /// A UART at `base`, whose FIFOs may be off: [`Serial::init`] programs it.
    pub const fn new(base: u16) -> Self {
        Self { base, burst: 1, room: 0 }
    }

    /// 115200 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        let b = self.base;
        // SAFETY: these ports belong to the UART at `base` (COM1) and these writes only
        // program it.
        unsafe {
            Port::<u8>::new(b + 1).write(0x00); // IER: no interrupts
            Port::<u8>::new(b + 3).write(0x80); // LCR: DLAB on
            Port::<u8>::new(b).write(0x01); // divisor 1: 115200 baud
            Port::<u8>::new(b + 1).write(0x00);
            Port::<u8>::new(b + 3).write(0x03); // 8N1, DLAB off
            Port::<u8>::new(b + 2).write(0xC7); // FIFO on, cleared, 14-byte threshold
            Port::<u8>::new(b + 4).write(0x03); // DTR | RTS
        }
        self.burst = TX_FIFO_BYTES;
        self.room = 0;
    }

    /// Sends one byte, waiting for room.
    pub fn write_byte(&mut self, byte: u8) {
        if self.room == 0 {
            self.wait_until_empty();
            self.room = self.burst;
        }
        // SAFETY: writing the transmit register sends the byte.
        unsafe { Port::<u8>::new(self.base).write(byte) };
        self.room -= 1;
    }

    /// Sends `bytes`, each `\n` as `\r\n`.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
    }

    /// Waits until the transmitter is empty. A bounded wait: a host that never drains must not
    /// hang the kernel forever.
    fn wait_until_empty(&mut self) {
        for _ in 0..100_000 {
            // SAFETY: reading the line status register has no side effects.
            let lsr = unsafe { Port::<u8>::new(self.base + 5).read() };
            if lsr & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}
