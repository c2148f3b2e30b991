//! COM1, the console: a 16550 UART driven by polling (no receive path).

use x86_64::instructions::port::Port;

/// Transmit holding register empty (LSR bit 5).
const LSR_THR_EMPTY: u8 = 1 << 5;

/// The UART at one base port.
#[derive(Debug)]
pub struct Serial {
    base: u16,
}

impl Serial {
    /// A UART at `base`; call [`Serial::init`] before writing.
    pub const fn new(base: u16) -> Self {
        Self { base }
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
    }

    /// Sends one byte, waiting for room.
    pub fn write_byte(&mut self, byte: u8) {
        // A bounded wait: a host that never drains must not hang the kernel forever.
        for _ in 0..100_000 {
            // SAFETY: reading the line status register has no side effects.
            let lsr = unsafe { Port::<u8>::new(self.base + 5).read() };
            if lsr & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the transmit register sends the byte.
        unsafe { Port::<u8>::new(self.base).write(byte) };
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}
