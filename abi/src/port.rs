//! I/O ports the guest uses. Each one is served by both QEMU and the host stub unless its
//! documentation says it is the host stub's own.

/// COM1, a 16550 UART: the guest's console. The host stub serves its registers with no receive
/// path and no interrupt (the guest polls the line status register); QEMU implements a full
/// UART.
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

/// The host stub's paravirtual console: a 32-bit `out` of the guest-physical address of a
/// [`crate::console::ConsoleRecord`] prints its bytes, a whole line in one exit. QEMU ignores
/// writes here; a guest only uses it when [`crate::cpuid::Features::CONSOLE`] is set.
pub const CONSOLE: u16 = 0x0511;

/// The host stub's own ports, [`HYPERCALL`] to [`BENCH_NULL`] (docs/abi.md, "Number
/// allocation"): served only once the guest announced its version
/// ([`crate::version::MSR_GUEST_VERSION`]).
pub const HOST_STUB_PORTS: core::ops::RangeInclusive<u16> = HYPERCALL..=BENCH_NULL;

/// The host stub's milestone port: a 32-bit `out` of a [`Milestone`] says the guest got there.
/// The host stub takes a snapshot of the vCPU's KVM statistics at that exit, so that it can say
/// what reaching the milestone cost in guest instructions KVM emulated and in exits, counted from
/// the vCPU's first instruction. With [`Milestone::FirstTask`] the guest passes in RSI the
/// iterations of string instructions its kernel has run so far, which KVM's count of emulated
/// instructions counts only once per 1,024 (a host that does not know this reads no register,
/// so nothing changed for it). Written only to a host stub of the guest's ABI major, after the
/// announcement (docs/abi.md, "Versions"); one exit each. A host stub counts and ignores values
/// it does not know; other hosts (QEMU) ignore the port.
pub const MILESTONE: u16 = 0x051B;

crate::wire_enum! {
/// What a write to [`MILESTONE`] says the guest reached.
pub enum Milestone: u32 {
    /// The kernel is up and its first task (the self-test runner, the benchmark runner) has
    /// started: the end of boot.
    FirstTask = 1,
}
}

/// The host stub's counting port, for benchmarks: a window over the vCPU's KVM statistics, so
/// that a timed loop can also say how many guest instructions KVM emulated and how many exits
/// it took. An `out` of a [`BenchCount`] value opens or closes this vCPU's window, or selects
/// which of the closed window's figures the next 32-bit `in` reads. Served only with the
/// benchmark device, like [`BENCH_NULL`].
pub const BENCH_COUNT: u16 = 0x051C;

crate::wire_enum! {
/// What an `out` to [`BENCH_COUNT`] does.
pub enum BenchCount: u32 {
    /// Opens the window: the host takes a snapshot of the statistics at this exit.
    Open = 1,
    /// Closes it: the figures are the statistics at this exit less those at the opening one,
    /// kept until the next window closes.
    Close = 2,
    /// The next `in` reads the closed window's emulated guest instructions.
    ReadInstructions = 3,
    /// The next `in` reads the closed window's exits the guest caused: those that reached the
    /// host stub, and its HLTs. (KVM's own total also counts what the host does to the vCPU's
    /// thread, which depends on the machine's load.)
    ReadExits = 4,
    /// The next `in` reads the closed window's exits as KVM counted them, for the report.
    ReadKvmExits = 5,
    /// The next `in` reads how long the vCPU was halted in the closed window, in whole
    /// microseconds, as KVM measured it (its `halt_wait_ns` and halt-polling times): the
    /// benchmarks' idle time, which the kernel itself then need not keep.
    ReadHaltedMicros = 6,
}
}

/// What an `in` from [`BENCH_COUNT`] reads when there is no figure: no window was closed, or
/// KVM keeps no such statistic. A larger figure reads as `COUNT_UNAVAILABLE - 1`.
pub const COUNT_UNAVAILABLE: u32 = u32::MAX;

/// The host stub's trace port: a 32-bit `out` of a [`crate::trace`] record reports a guest event
/// (a task switch) for the run's timeline. Written only while
/// [`crate::cpuid::Features::TRACE`] is set; QEMU ignores it.
pub const TRACE: u16 = 0x051D;

/// The host stub's null port: an `out` of 0 here exits to the host, which does nothing and
/// resumes the guest: the benchmarks' baseline (one port-I/O round trip). An `out` of a
/// [`BenchLoop`] value makes the host handle the following exits in that loop; an `in` says
/// which loop is handling exits now. Served only by a host stub run with its benchmark device
/// (`--bench`); elsewhere (QEMU too) writes are ignored and reads return all-ones.
pub const BENCH_NULL: u16 = 0x051F;

crate::wire_enum! {
/// Which host loop handles the guest's exits, for the baseline benchmark ([`BENCH_NULL`]): the
/// host stub's own, or a bare `kvm-ioctls` loop in the same process that only knows the
/// console, the exit port and this port. The guest switches between them to compare the two
/// within milliseconds, so that the machine's drift does not decide the comparison.
pub enum BenchLoop: u32 {
    /// The host stub's run loop, with every device and producer.
    Stub = 1,
    /// The bare loop, until the guest writes [`BenchLoop::Stub`].
    Bare = 2,
}
}

/// The host stub's injection port, for benchmarks: a 32-bit `out` of a [`BenchInject`] value
/// makes the host inject that event on the way back into the guest. A port rather than a
/// hypercall, so that the event rides on exactly the exit the baseline measures. Served only
/// with the benchmark device, like [`BENCH_NULL`].
pub const BENCH_INJECT: u16 = 0x051E;

crate::wire_enum! {
/// What [`BENCH_INJECT`] injects: bits 7:0 of the value written. Bits 15:8 are the vector
/// (interrupt, exception); bits 31:16 a page index in the demand-paged region (event).
pub enum BenchInject: u32 {
    /// Nothing: the round trip alone.
    None = 0,
    /// An interrupt of the vector, through the local APIC (an MSI), as a device raises it.
    Interrupt = 1,
    /// The exception vector with error code 0 (KVM_SET_VCPU_EVENTS), as #AC is injected.
    Exception = 2,
    /// A page-not-present event for that page, which must be present, with its resolution
    /// written first: the guest's no-wait path. Carried out by the demand pager for the
    /// benchmark device; nothing happens when no event can be delivered now (docs/abi.md).
    PageNotPresent = 3,
}
}

impl BenchInject {
    /// The value to write for this kind with `vector` and `page`.
    pub const fn encode(self, vector: u8, page: u16) -> u32 {
        self as u32 | (vector as u32) << 8 | (page as u32) << 16
    }

    /// Splits a written value into kind, vector and page; `None` for an unknown kind.
    pub fn decode(value: u32) -> Option<(Self, u8, u16)> {
        let kind = Self::try_from(value & 0xFF).ok()?;
        Some((kind, (value >> 8) as u8, (value >> 16) as u16))
    }
}
