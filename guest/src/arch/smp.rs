//! Starting the application processors (APs): every vCPU the MADT lists besides the boot vCPU,
//! by INIT-SIPI-SIPI through the local APIC, on every host (QEMU and the host stub alike).
//!
//! A started AP runs a real-mode trampoline the boot vCPU copied to [`TRAMPOLINE`] (the SIPI
//! page: the vector names it, `0x8000 >> 12`), which climbs to long mode on the boot page tables
//! (they identity-map the first GiB, the trampoline among it, executable), jumps into the image,
//! switches to the kernel's page tables and its own stack, and calls `ap_main`: its GDT, TSS
//! and IST stacks, its per-vCPU area, the IDT, its local APIC, then the upper layers' entry
//! (scheduler, protocols, idle loop), which reports it online with [`report_online`]. The boot
//! vCPU starts one AP at a time (they share one parameter block, `AP_BOOT`) and waits for
//! each: the wait is on an event (the online flag, with an IPI that ends the boot vCPU's HLT), and
//! its bound only turns a hang into a report naming the vCPU.
//!
//! ```text
//!   0x8000  real mode (CS base 0x8000, DS 0)  lgdt the trampoline's GDT, CR0.PE
//!           32-bit (selector 0x08)            CR4 = KERNEL_CR4, CR3 = boot_pml4, EFER.LME|NXE, CR0 = KERNEL_CR0
//!   image   64-bit (selector 0x18)            CR3 = the kernel's, RSP = the AP's stack, call ap_main
//! ```

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::layout::Access;
use super::percpu::MAX_CPUS;
use super::{apic, cpu, fault, gdt, idt, paging, percpu, stacks, time, trap};
use crate::boot::info::{BootInfo, MemKind};
use crate::cell::{FnPtr, FnSlot, StaticCell};

/// Where the trampoline runs: the SIPI page (4 KiB of conventional memory every host keeps
/// free and lists as RAM; the host stub's contract is in `docs/abi.md`).
pub const TRAMPOLINE: u64 = pvagent_abi::pvh::AP_TRAMPOLINE_GPA;
/// The SIPI vector: the page number of [`TRAMPOLINE`].
const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;
const _: () = assert!(TRAMPOLINE.is_multiple_of(4096) && TRAMPOLINE < 0x10_0000);

/// The vector of the IPI that wakes a vCPU from HLT so that it looks at shared state again (an
/// AP that came online, later a task made ready from another vCPU). Its handler only ends the
/// interrupt.
pub const WAKE_VECTOR: u8 = 0xF0;

/// How long the boot vCPU waits for one AP before it reports it as failed. Generous: an AP's
/// INIT to its first instruction took up to 4 ms on the PVM `/dev/kvm` of these machines, its
/// bring-up is a few thousand emulated instructions, and several vCPU threads may share one host
/// CPU. The bound is no part of any test's path: an AP that works is waited for as an event.
pub const AP_START_TIMEOUT_NS: u64 = 5_000_000_000;

/// What the trampoline's 64-bit part reads: written by the boot vCPU before each SIPI, read by
/// the one AP being started (the boot vCPU starts the next only after this one is online or given
/// up on).
#[repr(C)]
struct ApBoot {
    /// The kernel's page tables (CR3).
    cr3: u64,
    /// The top of the AP's first stack (its idle task's).
    stack_top: u64,
    /// The AP's dense vCPU index.
    cpu: u64,
}

const AP_BOOT_CR3: usize = 0;
const AP_BOOT_STACK: usize = 8;
const AP_BOOT_CPU: usize = 16;
const _: () = assert!(core::mem::offset_of!(ApBoot, cr3) == AP_BOOT_CR3);
const _: () = assert!(core::mem::offset_of!(ApBoot, stack_top) == AP_BOOT_STACK);
const _: () = assert!(core::mem::offset_of!(ApBoot, cpu) == AP_BOOT_CPU);

/// Written only by the boot vCPU in [`start_aps`] while no AP is between its SIPI and
/// [`ap_main`]; read by the trampoline of the AP being started.
static AP_BOOT: StaticCell<ApBoot> = StaticCell::new(ApBoot { cr3: 0, stack_top: 0, cpu: 0 });

global_asm!(
    r#"
    # The real-mode trampoline, copied to {base} and run there by an AP after its SIPI. Only
    # its bytes are used from here (it is data in the image); every address in it is one it has
    # at {base}.
    .pushsection .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds                    # DS = 0: the operands below are absolute addresses
    lgdtl {base} + (ap_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax                     # CR0.PE
    mov %eax, %cr0
    ljmpl $0x08, ${base} + (ap_tramp32 - ap_trampoline_start)

    .code32
ap_tramp32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov ${cr4}, %eax                # CR4 whole (KERNEL_CR4: PAE only; FSGSBASE clear)
    mov %eax, %cr4
    mov $boot_pml4, %eax            # the boot tables: they map this page, executable
    mov %eax, %cr3
    mov $0xC0000080, %ecx           # IA32_EFER
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax  # EFER.LME | EFER.NXE
    wrmsr
    # CR0 loaded whole, not ORed: after INIT it is 0x60000010, CD and NW set, and an AP that
    # kept them would run uncached on a host that honours CR0.CD. The boot vCPU's value
    # (boot/entry.rs loads the same constant).
    mov ${cr0}, %eax
    mov %eax, %cr0
    ljmp $0x18, $ap_start64         # into the image, 64-bit

    .balign 8
ap_gdt:
    .quad 0                         # null
    .quad 0x00cf9a000000ffff        # 0x08: 32-bit code, DPL 0
    .quad 0x00cf92000000ffff        # 0x10: data, DPL 0
    .quad 0x00af9a000000ffff        # 0x18: 64-bit code, DPL 0
ap_gdt_ptr:
    .word ap_gdt_ptr - ap_gdt - 1
    .long {base} + (ap_gdt - ap_trampoline_start)
    .global ap_trampoline_end
ap_trampoline_end:
    .popsection

    # The AP's first 64-bit code, in the image: the kernel's page tables, its stack, Rust.
    .pushsection .text.ap_start64, "ax"
    .code64
ap_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov {ap_boot} + {off_cr3}(%rip), %rax
    mov %rax, %cr3
    mov {ap_boot} + {off_stack}(%rip), %rsp
    mov {ap_boot} + {off_cpu}(%rip), %rdi
    xor %ebp, %ebp
    call {ap_main}
2:  hlt                             # ap_main never returns
    jmp 2b
    .popsection
"#,
    base = const TRAMPOLINE,
    cr0 = const crate::boot::entry::KERNEL_CR0,
    cr4 = const crate::boot::entry::KERNEL_CR4,
    ap_boot = sym AP_BOOT,
    off_cr3 = const AP_BOOT_CR3,
    off_stack = const AP_BOOT_STACK,
    off_cpu = const AP_BOOT_CPU,
    ap_main = sym ap_main,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// What an AP runs once the hardware layer has brought it up: the upper layers' per-vCPU set-up,
/// which calls [`report_online`] and then becomes the vCPU's idle loop.
pub type ApEntry = fn(cpu: usize) -> !;
// SAFETY: a fn pointer type.
unsafe impl FnPtr for ApEntry {}

static AP_ENTRY: FnSlot<ApEntry> = FnSlot::empty();

/// Each vCPU's bring-up state, in one word so that an AP reporting online and the boot vCPU
/// giving up on it decide in one compare-and-swap: bit `i` (low half), vCPU `i` is online (the
/// boot vCPU's is set from the start); bit `32 + i`, vCPU `i` was given up on (it did not come
/// online in time, or was never started), and stays out even if it turns up later.
static STATE: AtomicU64 = AtomicU64::new(1);
const FAILED_SHIFT: u32 = 32;
const _: () = assert!(MAX_CPUS <= 32, "one bit per vCPU in each half");
/// Bit `i`: AP `i` reached `ap_main`, so it has read its parameter block (`AP_BOOT`) and the
/// block may be written for the next AP.
static BLOCK_READ: AtomicU32 = AtomicU32::new(0);

/// Whether vCPU `cpu` is online.
pub fn is_online(cpu: usize) -> bool {
    STATE.load(Ordering::Acquire) & (1 << cpu) != 0
}

/// How many vCPUs are online.
pub fn online_count() -> usize {
    (STATE.load(Ordering::Acquire) as u32).count_ones() as usize
}

/// The vCPUs that did not come online, as a bit mask by index.
pub fn failed_mask() -> u32 {
    (STATE.load(Ordering::Acquire) >> FAILED_SHIFT) as u32
}

/// Marks vCPU `cpu` given up on unless it came online first; returns whether it is online.
fn give_up_unless_online(cpu: usize) -> bool {
    let previous = STATE
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s & (1 << cpu) == 0).then_some(s | 1 << (FAILED_SHIFT as usize + cpu))
        })
        .unwrap_or_else(|s| s);
    previous & (1 << cpu) != 0
}

/// An AP the boot vCPU gave up on stops here for good, interrupts off: it is no part of the
/// system (no vCPU sends it anything), and whatever it holds stays as it is.
fn park_given_up() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Sends vCPU `cpu` a wake IPI ([`WAKE_VECTOR`]): a HLT there ends, and the vCPU looks at
/// whatever it waits for again. Nothing if no such vCPU is online, or if it is the running one
/// (which is not halted).
pub fn wake(cpu: usize) {
    if cpu != percpu::index()
        && is_online(cpu)
        && let Some(apic_id) = super::platform().cpus.apic_id(cpu)
    {
        apic::send_fixed_ipi(apic_id, WAKE_VECTOR);
    }
}

/// Called by an AP's entry once it can run tasks: publishes it and wakes the boot vCPU. An AP
/// the boot vCPU already gave up on (it came too late) parks instead, forever: the run goes on
/// without it, as boot reported.
pub fn report_online() {
    let cpu = percpu::index();
    let failed = 1u64 << (FAILED_SHIFT as usize + cpu);
    if STATE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s & failed == 0).then_some(s | 1 << cpu)).is_err() {
        park_given_up();
    }
    if let Some(boot) = super::platform().cpus.apic_id(0) {
        apic::send_fixed_ipi(boot, WAKE_VECTOR);
    }
}

/// Why not every AP came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApFailure {
    /// The memory map does not list the SIPI page as RAM: no AP was started.
    NoSipiPage,
    /// This AP (the first of those that failed) did not come online in time.
    Timeout { cpu: usize, apic_id: u32 },
}

impl core::fmt::Display for ApFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSipiPage => {
                write!(f, "the memory map does not list the SIPI page {TRAMPOLINE:#x} as RAM: no AP started")
            }
            Self::Timeout { cpu, apic_id } => write!(
                f,
                "vCPU {cpu} (APIC ID {apic_id}) did not come online within {} s of its INIT-SIPI-SIPI",
                AP_START_TIMEOUT_NS / 1_000_000_000
            ),
        }
    }
}

/// Starts every AP the platform's CPU map lists, one at a time, each running `entry` once its
/// hardware is up; returns the first AP that did not come online within
/// [`AP_START_TIMEOUT_NS`]. The others are still started, unless that AP never read its
/// parameter block (it may still, so the block cannot be reused): the rest are then given up on
/// unstarted. With the boot vCPU alone it does
/// nothing: one-vCPU boots pay a few instructions for it.
///
/// # Safety
///
/// Call once, on the boot vCPU, after `arch::init`, with interrupts disabled; nothing else may
/// use the SIPI page ([`TRAMPOLINE`]).
pub unsafe fn start_aps(boot: &BootInfo, entry: ApEntry) -> Result<(), ApFailure> {
    let cpus = &super::platform().cpus;
    if cpus.count() == 1 {
        return Ok(());
    }
    let sipi_page_is_ram = boot
        .memmap
        .ranges
        .iter()
        .any(|r| r.kind == MemKind::Ram && r.start <= TRAMPOLINE && TRAMPOLINE + 4096 <= r.end);
    if !sipi_page_is_ram {
        return Err(ApFailure::NoSipiPage);
    }
    AP_ENTRY.set(entry);
    trap::register(WAKE_VECTOR, |_| apic::eoi());
    super::tlb::init();
    install_trampoline();
    let mut first_failure = None;
    for (cpu, &apic_id) in cpus.ids().iter().enumerate().skip(1) {
        let stack = stacks::map_ap_boot_stack(cpu);
        // Mapped before the AP can take an NMI, #DF or #MC on the kernel's tables.
        stacks::start_cpu(cpu);
        let (cr3, _) = x86_64::registers::control::Cr3::read_raw();
        // SAFETY: no AP is between its SIPI and `ap_main` now (each one before was waited for,
        // or given up on: see below), so nothing reads the block while it is written.
        unsafe {
            *AP_BOOT.get() = ApBoot { cr3: cr3.start_address().as_u64(), stack_top: stack.top, cpu: cpu as u64 };
        }
        // No delays between the three (the SDM's MP start-up waits 10 ms after INIT and 200 us
        // after each SIPI, for real hardware): KVM and QEMU TCG latch INIT and SIPI in the
        // target's state, so the AP starts however late its thread runs.
        apic::send_init(apic_id);
        apic::send_startup(apic_id, SIPI_VECTOR);
        apic::send_startup(apic_id, SIPI_VECTOR);
        if !wait_online(cpu) && !give_up_unless_online(cpu) {
            // Given up on, and left alone: no INIT, which could reset it while it holds a lock
            // (the allocator's, a console's) and leave that lock taken for good; its per-vCPU
            // state stays its own. If it comes online later it parks (`report_online`).
            first_failure.get_or_insert(ApFailure::Timeout { cpu, apic_id });
            if BLOCK_READ.load(Ordering::Acquire) & (1 << cpu) == 0 {
                // It has not read its parameter block yet and may still do so: the block must
                // not change under it, so no further AP is started.
                for rest in cpu + 1..cpus.count() {
                    give_up_unless_online(rest);
                }
                break;
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Copies the trampoline to the SIPI page (mapping that page for the copy).
fn install_trampoline() {
    let start = core::ptr::addr_of!(ap_trampoline_start);
    let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
    assert!(len <= 4096, "the AP trampoline outgrew its page");
    paging::ensure_mapped(TRAMPOLINE, TRAMPOLINE + 4096, Access::KernelData);
    // SAFETY: the SIPI page is RAM nobody else uses (the caller's contract), mapped just above;
    // the source is the trampoline's bytes in the image. The two do not overlap (the image is at
    // 1 MiB).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
}

/// Waits (halting, interrupts taken) until vCPU `cpu` is online or the bound passes.
fn wait_online(cpu: usize) -> bool {
    let deadline = time::now_ns().saturating_add(AP_START_TIMEOUT_NS);
    loop {
        x86_64::instructions::interrupts::disable();
        if is_online(cpu) {
            return true;
        }
        if time::now_ns() > deadline {
            return false;
        }
        // The AP's wake IPI or the next tick ends the halt; STI;HLT cannot lose the IPI.
        cpu::enable_interrupts_and_halt();
    }
}

/// The command line key that makes AP `N` (a vCPU index) stop right after it started, to show
/// that an AP which never comes online is reported and the run goes on without it.
pub const STUCK_AP_KEY: &str = "smp-stuck-ap";

fn deliberately_stuck(cpu: usize) -> bool {
    crate::boot::info::get().cmdline.get(STUCK_AP_KEY).and_then(|n| n.parse::<usize>().ok()) == Some(cpu)
}

/// The AP's first Rust code, on its own stack and the kernel's page tables, interrupts off.
extern "sysv64" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    // The parameter block is read (`ap_start64`): the boot vCPU may write the next AP's.
    BLOCK_READ.fetch_or(1 << cpu, Ordering::Release);
    if failed_mask() & (1 << cpu) != 0 {
        // Too late: given up on before it got here. Nothing of the system touched yet.
        park_given_up();
    }
    // SAFETY: this AP's first Rust code, interrupts off; `cpu` is the index the boot vCPU gave
    // only this AP. GS base first: the string functions count through it (`arch::mem`), so no
    // code that might copy may run before it (`gdt::init` loads no GS selector, which would
    // clear the base).
    unsafe {
        percpu::init(cpu);
        gdt::init(cpu);
    }
    idt::load();
    // SAFETY: on vCPU `cpu` after `gdt::init`, interrupts off; the boot vCPU mapped its IST
    // stacks before the SIPI.
    unsafe { gdt::set_ist_stacks(cpu, stacks::ist_tops(cpu)) };
    if deliberately_stuck(cpu) {
        // A deliberate failure for the tests (`smp-stuck-ap=N`): this AP started, but never
        // reports online, as an AP that hangs in its bring-up would.
        park_given_up();
    }
    let platform = super::platform();
    let apic_id = apic::init(platform.cpu.x2apic);
    percpu::set_apic_id(apic_id);
    if platform.cpus.apic_id(cpu) != Some(apic_id) {
        fault::fatal(format_args!(
            "vCPU {cpu} was started as APIC ID {:?} but has APIC ID {apic_id}",
            platform.cpus.apic_id(cpu)
        ));
    }
    match AP_ENTRY.get() {
        Some(entry) => entry(cpu),
        None => fault::fatal(format_args!("vCPU {cpu} started with no entry to run")),
    }
}
