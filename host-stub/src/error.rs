//! Every way a run can fail on the host side: one variant per failing operation, each with a
//! one-line message that says what to do about it.

use std::path::PathBuf;

/// A host-side failure. The guest's own verdict is not an error (see `RunResult`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: it does not exist (this machine has no KVM)")]
    KvmMissing,
    #[error("cannot open /dev/kvm: permission denied (run as root or join the kvm group)")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM lacks a capability the host stub needs: {0}")]
    MissingCapability(&'static str),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    SetTssAddress(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    CreateIrqChip(kvm_ioctls::Error),
    #[error("enabling {0} failed: {1}")]
    EnableCap(&'static str, kvm_ioctls::Error),
    #[error("KVM_X86_SET_MSR_FILTER failed: {0}")]
    SetMsrFilter(kvm_ioctls::Error),
    #[error("KVM_CREATE_VCPU failed: {0}")]
    CreateVcpu(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetSupportedCpuid(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("KVM_GET_REGS failed: {0}")]
    GetRegs(kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_GET_VCPU_EVENTS failed: {0}")]
    GetVcpuEvents(kvm_ioctls::Error),
    #[error("KVM_SET_VCPU_EVENTS failed: {0}")]
    SetVcpuEvents(kvm_ioctls::Error),
    #[error("KVM_GET_LAPIC failed: {0}")]
    GetLapic(kvm_ioctls::Error),
    #[error("KVM_SIGNAL_MSI failed: {0}")]
    SignalMsi(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {0}: {1}")]
    SetMemoryRegion(u32, kvm_ioctls::Error),
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),

    #[error("guest memory of {requested_mib} MiB is outside the supported {min_mib}..={max_mib} MiB")]
    MemorySize { requested_mib: u64, min_mib: u64, max_mib: u64 },
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    AllocateMemory { mib: u64, reason: String },
    #[error("cannot read the guest image {path}: {source}")]
    ReadImage { path: PathBuf, source: std::io::Error },
    #[error("the guest image {path} is not a usable x86-64 ELF: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error(
        "the guest image {path} needs memory up to {end:#x} but the guest has only {mem:#x} bytes (use a larger --mem)"
    )]
    ImageTooBig { path: PathBuf, end: u64, mem: u64 },
    #[error("the guest image {path} has no PVH entry point (no Xen PHYS32_ENTRY note)")]
    NoPvhEntry { path: PathBuf },
    #[error("the guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing the boot information into guest memory failed: {0}")]
    WriteBootInfo(String),
    #[error("cannot open the serial log {path}: {source}")]
    SerialLog { path: PathBuf, source: std::io::Error },
    #[error("cannot create the trace file {path}: {source}")]
    CreateTraceFile { path: PathBuf, source: std::io::Error },
    #[error("cannot write the trace file {path}: {source}")]
    WriteTraceFile { path: PathBuf, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),

    #[error("the guest triple-faulted (KVM_EXIT_SHUTDOWN) at rip {rip:#x}")]
    TripleFault { rip: u64 },
    #[error(
        "KVM could not emulate a guest instruction (internal error, suberror {suberror}) at rip {rip:#x}, instruction bytes {bytes}"
    )]
    Emulation { suberror: u32, rip: u64, bytes: String },
    #[error("KVM failed to enter the guest (hardware reason {reason:#x}) at rip {rip:#x}")]
    FailEntry { reason: u64, rip: u64 },
    #[error("unexpected exit {exit} at rip {rip:#x}")]
    UnexpectedExit { exit: String, rip: u64 },
    #[error("the guest did not finish within {seconds} s")]
    Timeout { seconds: u64 },
    #[error("the guest's hypercall block at {gpa:#x} is not 8-byte aligned guest memory")]
    BadHypercallBlock { gpa: u64 },
    #[error(
        "the guest split-locked with its split-lock detection off, on vCPU {vcpu} at rip {rip:#x}: {insn} (policy exit)"
    )]
    SplitLockExit { vcpu: usize, rip: u64, insn: String },
    #[error("too many MSR ranges to intercept ({ranges}; KVM takes at most {max})")]
    TooManyMsrRanges { ranges: usize, max: usize },
    #[error("pager: {0}")]
    Pager(#[from] crate::producers::pager::error::PagerError),
}

impl Error {
    /// Maps the error of opening `/dev/kvm` to its clearest form.
    pub fn open_kvm(err: kvm_ioctls::Error) -> Self {
        match err.errno() {
            libc::ENOENT => Error::KvmMissing,
            libc::EACCES | libc::EPERM => Error::KvmPermission,
            _ => Error::OpenKvm(err),
        }
    }

    /// Whether the guest did something fatal (as opposed to the host failing), for reports.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            Error::TripleFault { .. }
                | Error::Emulation { .. }
                | Error::FailEntry { .. }
                | Error::UnexpectedExit { .. }
                | Error::Timeout { .. }
                | Error::SplitLockExit { .. }
        )
    }
}

/// Result of host stub operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
