//! The local APIC: x2APIC through MSRs when CPUID offers it, xAPIC through its MMIO page
//! otherwise. EOI, the timer tick, and the IDs the scheduler needs.

use core::sync::atomic::{AtomicU8, Ordering};

use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::{ApicBase, ApicBaseFlags, Msr};

use super::calibration::{self, CalibrationFailed, Clocks};
use super::cpu;

/// Physical address of the xAPIC register page (the architectural default).
pub const XAPIC_BASE: u64 = 0xFEE0_0000;

/// Register offsets (xAPIC MMIO offsets; the x2APIC MSR is `0x800 + offset / 16`).
mod reg {
    pub const ID: u32 = 0x20;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xB0;
    pub const SVR: u32 = 0xF0;
    pub const ISR_BASE: u32 = 0x100;
    pub const LVT_TIMER: u32 = 0x320;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 1".
const DIVIDE_BY_1: u32 = 0b1011;

/// Spurious interrupt vector: no EOI, nothing to do.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

const MODE_UNSET: u8 = 0;
const MODE_XAPIC: u8 = 1;
const MODE_X2APIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// Which interface the kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

/// The interface in use (after [`init`]).
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => Mode::X2Apic,
        _ => Mode::XApic,
    }
}

fn read(offset: u32) -> u32 {
    match mode() {
        // SAFETY: x2APIC is enabled (init) and the MSR is the architectural alias of `offset`;
        // reading an APIC register has no side effect.
        Mode::X2Apic => unsafe { Msr::new(0x800 + offset / 16).read() as u32 },
        // SAFETY: the xAPIC page is mapped uncached (arch init) and `offset` is a register.
        Mode::XApic => unsafe { core::ptr::read_volatile((XAPIC_BASE + u64::from(offset)) as *const u32) },
    }
}

fn write(offset: u32, value: u32) {
    match mode() {
        // SAFETY: as in `read`; the callers write values valid for each register.
        Mode::X2Apic => unsafe { Msr::new(0x800 + offset / 16).write(u64::from(value)) },
        // SAFETY: as in `read`.
        Mode::XApic => unsafe { core::ptr::write_volatile((XAPIC_BASE + u64::from(offset)) as *mut u32, value) },
    }
}

/// Enables this vCPU's local APIC (x2APIC when `use_x2apic`), with TPR 0 and the spurious
/// vector set. Returns the APIC ID.
pub fn init(use_x2apic: bool) -> u32 {
    let (base, raw) = ApicBase::read_raw();
    let mut enable = ApicBaseFlags::LAPIC_ENABLE;
    if use_x2apic {
        enable |= ApicBaseFlags::X2APIC_ENABLE;
    }
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting EN (and EXTD when CPUID offers
    // x2APIC) keeps the base address and every other bit.
    unsafe { ApicBase::write_raw(base, raw | enable.bits()) };
    MODE.store(if use_x2apic { MODE_X2APIC } else { MODE_XAPIC }, Ordering::Relaxed);
    write(reg::TPR, 0);
    write(reg::SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(reg::LVT_TIMER, LVT_MASKED);
    id()
}

/// This vCPU's APIC ID.
pub fn id() -> u32 {
    let raw = read(reg::ID);
    match mode() {
        Mode::X2Apic => raw,
        Mode::XApic => raw >> 24,
    }
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// The task priority register.
pub fn tpr() -> u32 {
    read(reg::TPR)
}

/// Sets the task priority register (interrupts at or below this priority class wait).
pub fn set_tpr(value: u32) {
    write(reg::TPR, value & 0xFF);
}

/// The interrupt command register (ICR): its low half, and in xAPIC mode its high half
/// (x2APIC has one 64-bit MSR, `0x830`, the destination in its high 32 bits).
const ICR_LOW: u32 = 0x300;
const ICR_HIGH: u32 = 0x310;
/// ICR delivery modes (bits 10:8), the level bit, and the xAPIC's delivery status.
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;

/// Sends this vCPU a fixed interrupt on `vector` (an IPI to itself, through the interrupt
/// command register's "self" shorthand: the same register in both modes, no host involved).
pub fn send_self_ipi(vector: u8) {
    const SHORTHAND_SELF: u32 = 0b01 << 18;
    write(ICR_LOW, SHORTHAND_SELF | u32::from(vector));
}

/// Writes the ICR: `command` to the vCPU with local APIC ID `dest` (physical destination mode).
///
/// Every IPI to another vCPU goes through here, and its receiver reads what the sender stored
/// just before (a shootdown's range, an inbox's request, the online mask), so the stores must be
/// visible before the IPI can arrive. An xAPIC ICR write is a store to uncached memory, ordered
/// after earlier stores. An x2APIC ICR write is a WRMSR, which the SDM (vol. 3A, "Interrupt
/// Command Register (ICR)" in x2APIC mode, and "Serializing Instructions") says is *not*
/// serializing for the x2APIC MSRs: the IPI may be sent before earlier stores are globally
/// visible. MFENCE orders those stores, and LFENCE keeps the WRMSR from starting before the
/// MFENCE completed (the pair Linux calls `weak_wrmsr_fence`). Self-IPIs ([`send_self_ipi`])
/// need no fence: their handler runs on the vCPU that made the stores.
fn send_ipi(dest: u32, command: u32) {
    match mode() {
        Mode::X2Apic => {
            // SAFETY: MFENCE and LFENCE only order memory accesses and instructions; x2APIC is
            // enabled (init) and one WRMSR of the ICR sends the IPI (its high half is the
            // destination).
            unsafe {
                core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags));
                Msr::new(0x830).write((u64::from(dest) << 32) | u64::from(command));
            }
        }
        Mode::XApic => {
            // The two halves are two writes: an interrupt handler that sent an IPI between them
            // would leave its own destination in ICR_HIGH, and this command would go there.
            // Interrupts stay off across the pair (restored after, as they were).
            let _irq = super::cpu::IrqGuard::new();
            // An xAPIC takes one command at a time: wait until the previous one left (bounded,
            // the APIC accepts within microseconds; a stuck bit is not worth a hang).
            for _ in 0..1_000_000 {
                if read(ICR_LOW) & ICR_SEND_PENDING == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            write(ICR_HIGH, dest << 24);
            write(ICR_LOW, command);
        }
    }
}

/// Sends a fixed interrupt on `vector` to the vCPU with APIC ID `dest`.
pub fn send_fixed_ipi(dest: u32, vector: u8) {
    send_ipi(dest, ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(vector));
}

/// Sends INIT to the vCPU with APIC ID `dest`: it resets and waits for a start-up IPI.
pub fn send_init(dest: u32) {
    send_ipi(dest, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a start-up IPI (SIPI) to the vCPU with APIC ID `dest`: after INIT it starts in real
/// mode at `page << 12` (CS = `page << 8`, IP = 0).
pub fn send_startup(dest: u32, page: u32) {
    send_ipi(dest, ICR_STARTUP | (page & 0xFF));
}

/// Whether `vector` is in service (its handler started and has not sent EOI).
pub fn in_service(vector: u8) -> bool {
    let offset = reg::ISR_BASE + u32::from(vector / 32) * 0x10;
    read(offset) & (1 << (vector % 32)) != 0
}

/// Starts the periodic timer: `vector` every `period` timer-input cycles.
pub fn start_periodic_timer(vector: u8, period: u32) {
    write(reg::TIMER_DIVIDE, DIVIDE_BY_1);
    write(reg::LVT_TIMER, u32::from(vector) | LVT_PERIODIC);
    write(reg::TIMER_INITIAL, period);
}

/// How the timer is programmed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSetting {
    /// The vector it raises.
    pub vector: u8,
    /// Periodic (rather than one-shot or TSC-deadline).
    pub periodic: bool,
    /// Masked: it raises nothing.
    pub masked: bool,
    /// Input cycles per period (the initial count, with the divider at 1).
    pub period: u32,
    /// The divider is 1.
    pub divide_by_1: bool,
}

/// Reads the timer's programming back.
pub fn timer_setting() -> TimerSetting {
    let lvt = read(reg::LVT_TIMER);
    TimerSetting {
        vector: lvt as u8,
        periodic: lvt & LVT_PERIODIC != 0,
        masked: lvt & LVT_MASKED != 0,
        period: read(reg::TIMER_INITIAL),
        divide_by_1: read(reg::TIMER_DIVIDE) & 0b1011 == DIVIDE_BY_1,
    }
}

/// The local APIC timer and the TSC, as the calibration sees them.
struct TimerAndTsc;

impl Clocks for TimerAndTsc {
    fn start_timer(&mut self, initial: u32) {
        write(reg::TIMER_DIVIDE, DIVIDE_BY_1);
        write(reg::LVT_TIMER, LVT_MASKED);
        write(reg::TIMER_INITIAL, initial);
    }

    fn timer_count(&mut self) -> u32 {
        read(reg::TIMER_CURRENT)
    }

    fn tsc(&mut self) -> u64 {
        cpu::rdtsc()
    }
}

/// Measures how many TSC cycles pass while the (masked) timer counts down `cycles` input
/// cycles, retrying a measurement the host disturbed (see `calibration`); used to calibrate
/// the TSC when no CPUID leaf gives its frequency.
pub fn measure_tsc_against_timer(cycles: u32) -> Result<u64, CalibrationFailed> {
    calibration::tsc_cycles_per(&mut TimerAndTsc, cycles)
}

/// Remaps the legacy 8259 PICs away from the exception vectors and masks every line: the
/// kernel uses the local APIC only, but firmware (QEMU's, under PVH) may have left the PIC
/// live with IRQ 0 on vector 8.
pub fn disable_legacy_pic() {
    // SAFETY: these are the 8259 command/data ports; the sequence is the standard ICW1-4
    // initialisation followed by masking all lines.
    unsafe {
        let (mut cmd1, mut data1) = (Port::<u8>::new(0x20), Port::<u8>::new(0x21));
        let (mut cmd2, mut data2) = (Port::<u8>::new(0xA0), Port::<u8>::new(0xA1));
        cmd1.write(0x11); // ICW1: init, ICW4 follows
        cmd2.write(0x11);
        data1.write(0x20); // ICW2: vector base 0x20
        data2.write(0x28);
        data1.write(0x04); // ICW3: slave on IRQ 2
        data2.write(0x02);
        data1.write(0x01); // ICW4: 8086 mode
        data2.write(0x01);
        data1.write(0xFF); // mask everything
        data2.write(0xFF);
    }
}
