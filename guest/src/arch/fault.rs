//! What happens to exceptions no protocol module claimed: recoverable probes (an exception
//! table, like Linux's), faults of CPL 3 tasks (handed to the task layer), and everything else
//! (a fatal, reported kernel bug).

use core::fmt::{self, Write};

use x86_64::registers::control::Cr2;

use super::serial::Serial;
use super::trap::{self, TrapFrame};
use crate::cell::{FnPtr, FnSlot};

/// A fault taken by a probe or a task: what the CPU reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: u64,
    /// CR2 for a page fault and a double fault (where it is the address of the page fault that
    /// could not be delivered, if that is what caused it: a stack overflow onto a guard page),
    /// 0 otherwise.
    pub address: u64,
    pub rip: u64,
}

/// #PF error code bits.
pub mod pf {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const INSTRUCTION_FETCH: u64 = 1 << 4;
}

/// Mnemonic of an exception vector.
pub fn vector_name(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "(9)", "#TS", "#NP", "#SS", "#GP", "#PF",
        "(15)", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "(22)", "(23)", "(24)", "(25)", "(26)", "(27)", "#HV", "#VC",
        "#SX", "(31)",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("interrupt")
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (vector {}) at rip {:#x}, error code {:#x}",
            vector_name(self.vector),
            self.vector,
            self.rip,
            self.error_code
        )?;
        if has_address(self.vector) {
            write!(f, ", address {:#x}", self.address)?;
        }
        Ok(())
    }
}

impl Fault {
    /// The fault described by a trap frame (CR2 read now, for #PF and #DF).
    pub fn from_frame(frame: &TrapFrame) -> Self {
        let vector = frame.vector as u8;
        // The raw value: whatever address faulted, canonical or not.
        let address = if has_address(vector) { Cr2::read_raw() } else { 0 };
        Fault { vector, error_code: frame.error_code, address, rip: frame.rip }
    }
}

/// #PF, and #DF (which a #PF that cannot be delivered raises, leaving its CR2).
fn has_address(vector: u8) -> bool {
    vector == 14 || vector == 8
}

/// Called for faults at CPL 3 that no vector handler claimed (the task layer ends the task).
pub type UserFaultHook = fn(&mut TrapFrame, Fault);
// SAFETY: a fn pointer type.
unsafe impl FnPtr for UserFaultHook {}
/// Called to end the run after a kernel bug; never returns.
pub type FatalHook = fn(fmt::Arguments<'_>) -> !;
// SAFETY: a fn pointer type.
unsafe impl FnPtr for FatalHook {}

/// What a layer above adds to a fatal report made without a hook (the console: how many lines
/// trap handlers dropped), printed after the message.
pub type FatalNote = fn();
// SAFETY: a fn pointer type.
unsafe impl FnPtr for FatalNote {}

static USER_FAULT_HOOK: FnSlot<UserFaultHook> = FnSlot::empty();
static FATAL_HOOK: FnSlot<FatalHook> = FnSlot::empty();
static FATAL_NOTE: FnSlot<FatalNote> = FnSlot::empty();

/// Sets who handles faults of CPL 3 code.
pub fn set_user_fault_hook(hook: UserFaultHook) {
    USER_FAULT_HOOK.set(hook);
}

/// Sets how the kernel reports a fatal error and ends the run.
pub fn set_fatal_hook(hook: FatalHook) {
    FATAL_HOOK.set(hook);
}

/// Sets what a fatal report without a hook adds after its message.
pub fn set_fatal_note(note: FatalNote) {
    FATAL_NOTE.set(note);
}

/// Ends the run with a report: the registered fatal hook, or a plain exit. Without a hook the
/// message goes straight to the UART, past the console's lock (the failing context may hold
/// it): output may interleave, but it is never lost and never deadlocks. Then the note the
/// layers above set ([`set_fatal_note`]: the console's count of the lines trap handlers
/// dropped), so that a boot or a benchmark that ends here does not lose them silently; a hook
/// reports them itself, as the self-test runner does in its summary.
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    if let Some(hook) = FATAL_HOOK.get() {
        hook(args);
    }
    let _ = Serial::new(pvagent_abi::port::COM1).write_fmt(format_args!("fatal: {args}\n"));
    if let Some(note) = FATAL_NOTE.get() {
        note();
    }
    super::exit::exit(pvagent_abi::exit::FAILURE)
}

/// Installs the fallback for every vector without a handler.
pub fn init() {
    trap::set_fallback(unhandled);
}

/// The default treatment of a trap: exception-table fixups for kernel probes, the user fault
/// hook for CPL 3 faults, a fatal report for everything else. Vector handlers that decline a
/// trap (e.g. a #UD that is not a system call) hand it here.
pub fn unhandled(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    if vector >= 32 {
        fatal(format_args!("unexpected interrupt, vector {vector:#x}, at rip {:#x}", frame.rip));
    }
    let fault = Fault::from_frame(frame);
    if !frame.from_user() && fixup(frame, &fault) {
        return;
    }
    if frame.from_user()
        && let Some(hook) = USER_FAULT_HOOK.get()
    {
        hook(frame, fault);
        return;
    }
    fatal(format_args!(
        "unexpected exception {fault} (cpl {}, rsp {:#x}, rflags {:#x}, rax {:#x}, rbx {:#x}, rcx {:#x}, rdx {:#x}, rsi {:#x}, rdi {:#x})",
        frame.cpl(),
        frame.rsp,
        frame.rflags,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi
    ));
}

/// One exception table entry: a probing instruction and where to continue if it faults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ExtableEntry {
    insn: u64,
    fixup: u64,
}

unsafe extern "C" {
    static __extable_start: ExtableEntry;
    static __extable_end: ExtableEntry;
}

fn extable() -> &'static [ExtableEntry] {
    let start = core::ptr::addr_of!(__extable_start);
    let end = core::ptr::addr_of!(__extable_end);
    let len = (end as usize - start as usize) / core::mem::size_of::<ExtableEntry>();
    // SAFETY: the linker script places every `.extable` entry between the two symbols, and
    // the entries are emitted as aligned pairs of quads by the probes below.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// RAX of a probe that did not fault (no vector is this large).
const NO_FAULT: u64 = u64::MAX;

/// A fault at a probing instruction resumes at its fixup with RAX = vector, RDX = error code,
/// RCX = CR2, RSI = the faulting RIP (see `probe_read_u64`).
fn fixup(frame: &mut TrapFrame, fault: &Fault) -> bool {
    let Some(entry) = extable().iter().find(|e| e.insn == frame.rip) else {
        return false;
    };
    frame.rsi = frame.rip;
    frame.rip = entry.fixup;
    frame.rax = u64::from(fault.vector);
    frame.rdx = fault.error_code;
    frame.rcx = fault.address;
    true
}

/// Reads a u64 at `addr`, turning a fault into an error instead of a crash.
pub fn probe_read_u64(addr: u64) -> Result<u64, Fault> {
    let value: u64;
    let (vector, error_code, address, rip): (u64, u64, u64, u64);
    // SAFETY: a fault at label 2 is caught by the exception table and resumes at label 3 with
    // the fault in RAX/RDX/RCX; no fault means a plain load. The asm touches no other state:
    // `readonly`, and it may move only as far as a load may.
    unsafe {
        core::arch::asm!(
            "2: mov {val}, qword ptr [{addr}]",
            "3:",
            ".pushsection .extable, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            addr = in(reg) addr,
            val = lateout(reg) value,
            inout("rax") NO_FAULT => vector,
            lateout("rdx") error_code,
            lateout("rcx") address,
            lateout("rsi") rip,
            options(nostack, readonly),
        );
    }
    check(vector, error_code, address, rip).map(|()| value)
}

/// Writes a u64 at `addr`, turning a fault into an error instead of a crash.
pub fn probe_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    let (vector, error_code, address, rip): (u64, u64, u64, u64);
    // SAFETY: as in `probe_read_u64`; callers probe addresses they may legitimately write (a
    // store: no `readonly`).
    unsafe {
        core::arch::asm!(
            "2: mov qword ptr [{addr}], {val}",
            "3:",
            ".pushsection .extable, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            addr = in(reg) addr,
            val = in(reg) value,
            inout("rax") NO_FAULT => vector,
            lateout("rdx") error_code,
            lateout("rcx") address,
            lateout("rsi") rip,
            options(nostack),
        );
    }
    check(vector, error_code, address, rip)
}

/// Writes an MSR, turning a #GP (an MSR the host refuses, or a value it rejects) into an error.
pub fn probe_write_msr(msr: u32, value: u64) -> Result<(), Fault> {
    let (vector, error_code, address, rip): (u64, u64, u64, u64);
    // SAFETY: as in `probe_read_u64`: a fault at label 2 resumes at label 3 with the fault in
    // RAX/RDX/RCX/RSI. WRMSR itself reads ECX/EDX:EAX, so the "no fault" sentinel travels in
    // RSI, which the fixup overwrites with the faulting RIP. Callers only write MSRs whose
    // effects they own (the paravirtual protocol MSRs). Not `nomem`: such an MSR can hand the
    // host memory to read and write (a shared page), so the write is a compiler barrier.
    unsafe {
        core::arch::asm!(
            "2: wrmsr",
            "3:",
            ".pushsection .extable, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            inout("rcx") u64::from(msr) => address,
            inout("rax") value & 0xFFFF_FFFF => vector,
            inout("rdx") value >> 32 => error_code,
            inout("rsi") NO_FAULT => rip,
            options(nostack),
        );
    }
    if rip == NO_FAULT {
        return Ok(());
    }
    Err(Fault { vector: vector as u8, error_code, address, rip })
}

/// Reads an MSR, turning a #GP (an MSR the host does not serve, though it may have promised
/// it) into an error.
pub fn probe_read_msr(msr: u32) -> Result<u64, Fault> {
    let (low, high, address, rip): (u64, u64, u64, u64);
    // SAFETY: as in `probe_write_msr`: a fault at label 2 resumes at label 3 with the fault in
    // RAX/RDX/RCX/RSI, and the "no fault" sentinel travels in RSI. RDMSR of an MSR that exists
    // has no side effect the compiler must know of (callers read only MSRs whose reads change
    // nothing).
    unsafe {
        core::arch::asm!(
            "2: rdmsr",
            "3:",
            ".pushsection .extable, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            inout("rcx") u64::from(msr) => address,
            lateout("rax") low,
            lateout("rdx") high,
            inout("rsi") NO_FAULT => rip,
            options(nostack, nomem),
        );
    }
    if rip == NO_FAULT {
        return Ok((high << 32) | (low & 0xFFFF_FFFF));
    }
    Err(Fault { vector: low as u8, error_code: high, address, rip })
}

fn check(vector: u64, error_code: u64, address: u64, rip: u64) -> Result<(), Fault> {
    if vector == NO_FAULT {
        return Ok(());
    }
    Err(Fault { vector: vector as u8, error_code, address, rip })
}
