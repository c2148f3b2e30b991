//! CPU registers and instructions the kernel uses, behind small typed wrappers, and the CPU's
//! identity: its features and which hypervisor (if any) it runs under.

use core::arch::asm;
use pvagent_abi::cpuid as abi_cpuid;
use pvagent_abi::{ABI_VERSION, AbiVersion};

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_EFER.
pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_GS_BASE: the active GS base.
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE: the value `swapgs` exchanges with the GS base.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// CR0.AM: alignment checks at CPL 3 when RFLAGS.AC is set.
pub const CR0_AM: u64 = 1 << 18;

/// Reads an MSR.
///
/// # Safety
///
/// `msr` must exist on this CPU (a missing MSR raises #GP in kernel mode).
pub unsafe fn read_msr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
///
/// `msr` must exist, `value` must be valid for it, and the write must not break the kernel's
/// assumptions (GS base, EFER, APIC base...).
pub unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR exists and the value is acceptable.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, nomem, preserves_flags));
    }
}

/// CR0.
pub fn read_cr0() -> u64 {
    let value: u64;
    // SAFETY: reading CR0 has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nostack, nomem, preserves_flags)) };
    value
}

/// Writes CR0.
///
/// # Safety
///
/// The new value must keep paging, protection and write-protect as the kernel set them.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: the caller guarantees the value keeps the kernel's mode.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, nomem, preserves_flags)) };
}

/// CR2: the linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nostack, nomem, preserves_flags)) };
    value
}

/// RFLAGS.
pub fn read_rflags() -> u64 {
    let value: u64;
    // SAFETY: pushfq/pop only touch the stack slot they use.
    unsafe { asm!("pushfq", "pop {}", out(reg) value, options(nomem, preserves_flags)) };
    value
}

/// Whether interrupts are enabled on this vCPU.
pub fn interrupts_enabled() -> bool {
    read_rflags() & super::trap::RFLAGS_IF != 0
}

/// Disables interrupts.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nostack, nomem)) };
}

/// Enables interrupts.
pub fn enable_interrupts() {
    // SAFETY: every vector has a stub and the IDT is loaded before the first call.
    unsafe { asm!("sti", options(nostack, nomem)) };
}

/// Enables interrupts and halts until one arrives, atomically: STI's one-instruction shadow
/// keeps an interrupt from slipping in between, so a wake-up cannot be missed. Returns with
/// interrupts enabled, after the interrupt's handler ran.
pub fn enable_interrupts_and_halt() {
    // SAFETY: as in `enable_interrupts`; HLT resumes on the next interrupt.
    unsafe { asm!("sti", "hlt", options(nostack, nomem)) };
}

/// Executes CPUID.
pub fn cpuid(leaf: u32, subleaf: u32) -> raw_cpuid::CpuIdResult {
    raw_cpuid::cpuid!(leaf, subleaf)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Who runs this vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// pvagent's host stub (on KVM), of this guest's ABI major. `kvm_base` is where KVM's own
    /// leaves were found.
    HostStub { abi_version: AbiVersion, features: abi_cpuid::Features, kvm_base: Option<u32> },
    /// pvagent's host stub of another ABI major: nothing of it is used (`pvagent_abi::version`),
    /// so to this guest it is an unknown hypervisor, beside KVM's leaves when it shows them.
    HostStubOtherMajor { abi_version: AbiVersion, kvm_base: Option<u32> },
    /// KVM without the host stub (e.g. QEMU `-accel kvm`).
    Kvm { base: u32 },
    /// QEMU's TCG emulator.
    QemuTcg,
    /// Some other hypervisor, by signature.
    Other([u8; 12]),
    /// CPUID.1:ECX.hypervisor is clear.
    None,
}

impl Hypervisor {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Hypervisor::HostStub { .. } => "pvagent host stub",
            Hypervisor::HostStubOtherMajor { .. } => "pvagent host stub of another ABI major (not used)",
            Hypervisor::Kvm { .. } => "KVM",
            Hypervisor::QemuTcg => "QEMU TCG",
            Hypervisor::Other(_) => "another hypervisor",
            Hypervisor::None => "no hypervisor",
        }
    }

    /// Whether the host stub runs this guest (its ports, MSRs and producers exist).
    pub fn is_host_stub(&self) -> bool {
        matches!(self, Hypervisor::HostStub { .. })
    }

    /// The host stub's features, empty on every other host.
    pub fn host_features(&self) -> abi_cpuid::Features {
        match self {
            Hypervisor::HostStub { features, .. } => *features,
            _ => abi_cpuid::Features::default(),
        }
    }
}

/// What the kernel learned about its CPU at boot.
#[derive(Clone, Copy, Debug)]
pub struct CpuInfo {
    pub vendor: [u8; 12],
    pub x2apic: bool,
    pub hypervisor: Hypervisor,
    /// TSC frequency in kHz, when some leaf tells it.
    pub tsc_khz: Option<u32>,
    /// Local APIC timer input frequency in kHz, when some leaf tells it.
    pub apic_khz: Option<u32>,
}

/// Reads the CPU's identity and features.
pub fn identify() -> CpuInfo {
    let leaf0 = cpuid(0, 0);
    let vendor = abi_cpuid::signature_bytes(leaf0.ebx, leaf0.edx, leaf0.ecx);
    let leaf1 = cpuid(1, 0);
    let x2apic = leaf1.ecx & (1 << 21) != 0;
    let under_hypervisor = leaf1.ecx & (1 << 31) != 0;
    let hypervisor = if under_hypervisor { find_hypervisor() } else { Hypervisor::None };

    let mut tsc_khz = None;
    let mut apic_khz = None;
    if let Hypervisor::HostStub { .. } = hypervisor {
        let info = cpuid(abi_cpuid::LEAF_INFO, 0);
        tsc_khz = (info.ecx != 0).then_some(info.ecx);
        apic_khz = (info.edx != 0).then_some(info.edx);
    }
    if tsc_khz.is_none() && leaf0.eax >= 0x15 {
        // CPUID.15H: TSC = crystal * EBX / EAX.
        let l15 = cpuid(0x15, 0);
        if l15.eax != 0 && l15.ebx != 0 && l15.ecx != 0 {
            tsc_khz = Some((u64::from(l15.ecx) * u64::from(l15.ebx) / u64::from(l15.eax) / 1000) as u32);
        }
    }
    if let Hypervisor::Kvm { base }
    | Hypervisor::HostStub { kvm_base: Some(base), .. }
    | Hypervisor::HostStubOtherMajor { kvm_base: Some(base), .. } = hypervisor
    {
        // KVM's timing leaf (base + 0x10): EAX TSC kHz, EBX APIC bus kHz, when the VMM fills it.
        let max = cpuid(base, 0).eax;
        if max >= base + 0x10 {
            let timing = cpuid(base + 0x10, 0);
            tsc_khz = tsc_khz.or((timing.eax != 0).then_some(timing.eax));
            apic_khz = apic_khz.or((timing.ebx != 0).then_some(timing.ebx));
        }
    }
    CpuInfo { vendor, x2apic, hypervisor, tsc_khz, apic_khz }
}

/// Scans the hypervisor leaf blocks for the signatures the kernel knows.
fn find_hypervisor() -> Hypervisor {
    let mut first_other = None;
    let mut host_stub = None;
    let mut kvm = None;
    let mut leaf = abi_cpuid::LEAF_BASE;
    while leaf < abi_cpuid::LEAF_RANGE_END {
        let r = cpuid(leaf, 0);
        let sig = abi_cpuid::signature_bytes(r.ebx, r.ecx, r.edx);
        if sig == abi_cpuid::SIGNATURE {
            host_stub = Some(leaf);
        } else if sig == abi_cpuid::KVM_SIGNATURE {
            kvm = Some(leaf);
        } else if sig == abi_cpuid::TCG_SIGNATURE {
            return Hypervisor::QemuTcg;
        } else if leaf == abi_cpuid::LEAF_BASE && r.eax >= leaf {
            first_other = Some(sig);
        }
        leaf += abi_cpuid::LEAF_BLOCK_STEP;
    }
    if host_stub.is_some() {
        // EAX of the info leaf is the one field every major keeps: read the rest only after it.
        let info = cpuid(abi_cpuid::LEAF_INFO, 0);
        let abi_version = AbiVersion::from_raw(info.eax);
        if !ABI_VERSION.is_compatible_with(abi_version) {
            return Hypervisor::HostStubOtherMajor { abi_version, kvm_base: kvm };
        }
        return Hypervisor::HostStub { abi_version, features: abi_cpuid::Features(info.ebx), kvm_base: kvm };
    }
    match (kvm, first_other) {
        (Some(base), _) => Hypervisor::Kvm { base },
        (None, Some(sig)) => Hypervisor::Other(sig),
        (None, None) => Hypervisor::Other([0; 12]),
    }
}
