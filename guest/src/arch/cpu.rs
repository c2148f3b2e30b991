//! The CPU instructions the kernel needs beyond the `x86_64` crate's typed registers, the
//! interrupt-flag guard, and the CPU's identity: the few features the kernel uses and which
//! hypervisor (if any) it runs under.

use core::arch::asm;

use pvagent_abi::cpuid as abi_cpuid;
use pvagent_abi::{ABI_VERSION, AbiVersion};
use x86_64::instructions::interrupts;

// Registers the `x86_64` crate types are used from there directly (`Cr0`, `Cr2`, `Cr3`,
// `RFlags`, `Msr`, `GsBase`, ...). Its register writes are compiler barriers (no `nomem`): a
// write that changes how memory is reached (CR0, CR3, the GS base, an MSR with side effects) is
// never reordered with the accesses around it. Its register reads are `nomem`, which is right for
// what the kernel reads: CR0, RFLAGS and the MSRs it reads do not change with memory accesses,
// and CR2 changes only with a new page fault, while the kernel reads it first thing on the #PF
// path, before anything there could fault.

/// Enables interrupts and halts until one arrives, atomically: STI's one-instruction shadow
/// keeps an interrupt from slipping in between, so a wake-up cannot be missed. Returns with
/// interrupts enabled, after the interrupt's handler ran.
pub fn enable_interrupts_and_halt() {
    // SAFETY: every vector has a stub and the IDT is loaded before the first call; HLT resumes
    // on the next interrupt. Not `nomem` (unlike the `x86_64` crate's `enable_and_hlt`): the
    // handler that ends the halt changes memory (the condition the caller waits for), so this is
    // a compiler barrier like any change of the interrupt flag, and the caller's next check
    // reads memory afresh.
    unsafe { asm!("sti", "hlt", options(nostack, preserves_flags)) };
}

/// Reads the time-stamp counter. Always inlined: the page-not-present events that wait stamp
/// their wait with it (`pv::deadline`), and a call would cost them more than the read.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear). `nomem`: it neither reads nor
    // writes memory and is no ordering point (the kernel never uses it as a fence).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Disables interrupts for its lifetime and restores the previous state on drop. Both ends
/// are compiler barriers (the `x86_64` crate's `disable`/`enable` are `asm!` without `nomem`,
/// like a lock's acquire and release), so no access of the section moves out of it.
#[derive(Debug)]
pub struct IrqGuard {
    were_enabled: bool,
}

impl IrqGuard {
    /// Disables interrupts, remembering whether they were on.
    pub fn new() -> Self {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        Self { were_enabled }
    }

    /// Whether interrupts were enabled when the guard was taken.
    pub fn were_enabled(&self) -> bool {
        self.were_enabled
    }
}

impl Default for IrqGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IrqGuard {
    fn drop(&mut self) {
        if self.were_enabled {
            // `sti; nop`: the nop ends STI's shadow inside this call, so an interrupt that is
            // pending is taken here even when the caller's next instruction is a CLI.
            interrupts::enable();
        }
    }
}

/// Executes CPUID (raw-cpuid's wrapper of the instruction).
pub fn cpuid(leaf: u32, subleaf: u32) -> raw_cpuid::CpuIdResult {
    raw_cpuid::cpuid!(leaf, subleaf)
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

    /// Where KVM's CPUID leaves are, on every host that shows them (KVM's own ABI, whoever
    /// serves it).
    pub fn kvm_base(&self) -> Option<u32> {
        match *self {
            Hypervisor::Kvm { base } => Some(base),
            Hypervisor::HostStub { kvm_base, .. } | Hypervisor::HostStubOtherMajor { kvm_base, .. } => kvm_base,
            Hypervisor::QemuTcg | Hypervisor::Other(_) | Hypervisor::None => None,
        }
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
    /// 1 GiB pages (CPUID.80000001H:EDX.Page1GB).
    pub huge_pages: bool,
    pub hypervisor: Hypervisor,
    /// TSC frequency in kHz, when some leaf tells it.
    pub tsc_khz: Option<u32>,
    /// Local APIC timer input frequency in kHz, when some leaf tells it.
    pub apic_khz: Option<u32>,
    /// Physical address width (CPUID.80000008H:EAX bits 7:0; 36 when the leaf is absent, as the
    /// SDM says). What the identity map can reach follows from it (`layout::identity_map_reach`).
    pub phys_addr_bits: u8,
}

/// The CPUID bits the kernel reads (SDM vol. 2A, CPUID). Read directly: a handful of leaves
/// and bits, where raw-cpuid's typed view of every leaf cost an emulated guest kernel several
/// hundred instructions of every boot.
mod bits {
    /// CPUID.1:ECX: x2APIC.
    pub const X2APIC: u32 = 1 << 21;
    /// CPUID.1:ECX: running under a hypervisor.
    pub const HYPERVISOR: u32 = 1 << 31;
    /// The extended leaves' base: EAX the highest extended leaf.
    pub const EXTENDED: u32 = 0x8000_0000;
    /// CPUID.8000_0001H:EDX: 1 GiB pages.
    pub const PAGE_1GB: u32 = 1 << 26;
    /// The leaf whose EAX bits 7:0 are the physical address width.
    pub const ADDRESS_SIZES: u32 = 0x8000_0008;
    /// The leaf that relates the TSC to the core crystal clock.
    pub const TSC_CRYSTAL: u32 = 0x15;
}

/// Reads the CPU's identity and features.
pub fn identify() -> CpuInfo {
    let basic = cpuid(0, 0);
    // The vendor string is EBX, EDX, ECX.
    let vendor = abi_cpuid::signature_bytes(basic.ebx, basic.edx, basic.ecx);
    let features = cpuid(1, 0);
    let x2apic = features.ecx & bits::X2APIC != 0;
    let under_hypervisor = features.ecx & bits::HYPERVISOR != 0;
    let max_extended = cpuid(bits::EXTENDED, 0).eax;
    let huge_pages = max_extended > bits::EXTENDED && cpuid(bits::EXTENDED + 1, 0).edx & bits::PAGE_1GB != 0;
    // 36 when the leaf is absent, as the SDM says.
    let phys_addr_bits = if max_extended >= bits::ADDRESS_SIZES { cpuid(bits::ADDRESS_SIZES, 0).eax as u8 } else { 36 };
    let hypervisor = if under_hypervisor { find_hypervisor() } else { Hypervisor::None };

    let mut tsc_khz = None;
    let mut apic_khz = None;
    if let Hypervisor::HostStub { .. } = hypervisor {
        let info = cpuid(abi_cpuid::LEAF_INFO, 0);
        tsc_khz = (info.ecx != 0).then_some(info.ecx);
        apic_khz = (info.edx != 0).then_some(info.edx);
    }
    if tsc_khz.is_none() && basic.eax >= bits::TSC_CRYSTAL {
        // TSC = crystal (ECX, Hz) * EBX / EAX, when all three are given.
        let t = cpuid(bits::TSC_CRYSTAL, 0);
        if t.eax != 0 && t.ebx != 0 && t.ecx != 0 {
            let hz = u64::from(t.ecx) * u64::from(t.ebx) / u64::from(t.eax);
            tsc_khz = u32::try_from(hz / 1000).ok();
        }
    }
    if let Some(base) = hypervisor.kvm_base() {
        // KVM's timing leaf (base + 0x10): EAX TSC kHz, EBX APIC bus kHz, when the VMM fills it.
        let max = cpuid(base, 0).eax;
        if max >= base + 0x10 {
            let timing = cpuid(base + 0x10, 0);
            tsc_khz = tsc_khz.or((timing.eax != 0).then_some(timing.eax));
            apic_khz = apic_khz.or((timing.ebx != 0).then_some(timing.ebx));
        }
    }
    CpuInfo { vendor, x2apic, huge_pages, hypervisor, tsc_khz, apic_khz, phys_addr_bits }
}

/// Finds the hypervisor among the signatures the kernel knows (`docs/abi.md`, "Identifying
/// the host"). The host stub's block is always the first, `0x4000_0000`, with KVM's (when it
/// runs on KVM) right after it, so under the host stub two leaves decide. On other hosts the
/// blocks are scanned in steps of `0x100` up to the first signature the kernel knows, or the
/// first step that holds no block: hypervisors lay their blocks out one after another from
/// `0x4000_0000`. Visiting all 256 steps, as the scan once did, cost an emulated guest kernel
/// about 7,000 instructions of every boot (and a VMX guest 256 CPUID exits).
fn find_hypervisor() -> Hypervisor {
    const STUB: [u32; 3] = abi_cpuid::signature_regs(&abi_cpuid::SIGNATURE);
    const KVM: [u32; 3] = abi_cpuid::signature_regs(&abi_cpuid::KVM_SIGNATURE);
    const TCG: [u32; 3] = abi_cpuid::signature_regs(&abi_cpuid::TCG_SIGNATURE);
    let signature = |r: &raw_cpuid::CpuIdResult| [r.ebx, r.ecx, r.edx];
    let first = cpuid(abi_cpuid::LEAF_BASE, 0);
    if signature(&first) == STUB {
        let relocated = cpuid(abi_cpuid::KVM_LEAVES_RELOCATED, 0);
        let kvm_base = (signature(&relocated) == KVM).then_some(abi_cpuid::KVM_LEAVES_RELOCATED);
        // EAX of the info leaf is the one field every major keeps: read the rest only after it.
        let info = cpuid(abi_cpuid::LEAF_INFO, 0);
        let abi_version = AbiVersion::from_raw(info.eax);
        if !ABI_VERSION.is_compatible_with(abi_version) {
            return Hypervisor::HostStubOtherMajor { abi_version, kvm_base };
        }
        return Hypervisor::HostStub { abi_version, features: abi_cpuid::Features(info.ebx), kvm_base };
    }
    let mut leaf = abi_cpuid::LEAF_BASE;
    let mut r = first;
    while leaf < abi_cpuid::LEAF_RANGE_END {
        match signature(&r) {
            KVM => return Hypervisor::Kvm { base: leaf },
            TCG => return Hypervisor::QemuTcg,
            // EAX is the block's highest leaf: outside this step, no block is here (a CPU then
            // answers with its highest basic leaf).
            _ if !(leaf..leaf + abi_cpuid::LEAF_BLOCK_STEP).contains(&r.eax) => break,
            _ => {}
        }
        leaf += abi_cpuid::LEAF_BLOCK_STEP;
        r = cpuid(leaf, 0);
    }
    // Not one the kernel knows: named by the first block's signature, if there is a block.
    if (abi_cpuid::LEAF_BASE..abi_cpuid::LEAF_BASE + abi_cpuid::LEAF_BLOCK_STEP).contains(&first.eax) {
        Hypervisor::Other(abi_cpuid::signature_bytes(first.ebx, first.ecx, first.edx))
    } else {
        Hypervisor::Other([0; 12])
    }
}
