//! Every way a run can fail on the host side: one variant per failing operation, each with a
//! one-line message that says what to do about it.

use std::fmt;
use std::path::PathBuf;

use vm_memory::GuestMemoryError;
use vm_memory::mmap::FromRangesError;

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
    #[error("KVM_SET_LAPIC failed: {0}")]
    SetLapic(kvm_ioctls::Error),
    #[error("KVM_SIGNAL_MSI failed: {0}")]
    SignalMsi(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {0}: {1}")]
    SetMemoryRegion(u32, kvm_ioctls::Error),
    #[error("memory layout update refused: {0}")]
    Layout(crate::layout::table::LayoutError),
    #[error("a memory layout update failed and was undone (the layout is as before): {0}")]
    LayoutUndone(Box<Error>),
    #[error("a layout update could not hold the vCPUs: {in_guest} still inside KVM_RUN or handling an exit after {}s (a vCPU waiting in KVM for memory nobody supplies)", crate::layout::hold::HOLD_BOUND.as_secs())]
    LayoutHold { in_guest: usize },
    #[error("the run ended while a layout update waited for {in_guest} vCPUs to come out of KVM_RUN")]
    LayoutHoldEnded { in_guest: usize },
    #[error("{exits} exits at guest memory while layout updates held every vCPU: an update was not atomic")]
    RaceExits { exits: u64 },
    #[error("KVM_GET_DIRTY_LOG failed for slot {0}: {1}")]
    GetDirtyLog(u32, kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION2 failed for slot {0}: {1}")]
    SetMemoryRegion2(u32, kvm_ioctls::Error),
    #[error("KVM_CREATE_GUEST_MEMFD of {bytes:#x} bytes failed: {source}")]
    CreateGuestMemfd { bytes: u64, source: kvm_ioctls::Error },
    #[error("mapping {bytes:#x} bytes of memory for {what} failed: {source}")]
    MapMemory { what: &'static str, bytes: u64, source: std::io::Error },
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    #[error("cannot start a vCPU thread: {0}")]
    SpawnVcpuThread(std::io::Error),
    #[error("every vCPU thread stopped without one of them ending the run (a host stub bug)")]
    NoVcpuEndedTheRun,
    /// What stopped a VM of several vCPUs, and on which: the whole VM stops with it.
    #[error("vCPU {index}: {source}")]
    OnVcpu { index: usize, source: Box<Error> },

    #[error("guest memory of {requested_mib} MiB is outside the supported {min_mib}..={max_mib} MiB")]
    MemorySize { requested_mib: u64, min_mib: u64, max_mib: u64 },
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    AllocateMemory { mib: u64, source: FromRangesError },
    #[error("guest memory at {gpa:#x} has no host mapping: {source}")]
    RamHostAddress { gpa: u64, source: GuestMemoryError },
    #[error("cannot read the guest image {path}: {source}")]
    ReadImage { path: PathBuf, source: std::io::Error },
    #[error("the guest image {path} is not a usable x86-64 ELF: {problem}")]
    BadImage { path: PathBuf, problem: ImageProblem },
    #[error("loading the guest image {path} failed: {source}")]
    LoadImage { path: PathBuf, source: linux_loader::loader::Error },
    #[error(
        "the guest image {path} needs memory up to {end:#x} but the guest has only {mem:#x} bytes (use a larger --mem)"
    )]
    ImageTooBig { path: PathBuf, end: u64, mem: u64 },
    #[error("zeroing the guest image {path}'s bytes beyond its file contents (.bss) failed: {source}")]
    ZeroFillImage { path: PathBuf, source: GuestMemoryError },
    #[error("the guest image {path} has no PVH entry point (no Xen PHYS32_ENTRY note)")]
    NoPvhEntry { path: PathBuf },
    #[error("{requested} vCPUs is outside the supported 1..={max}")]
    VcpuCount { requested: usize, max: usize },
    #[error("{requested} threads per core: the host stub simulates 1 (no SMT) or 2 (SMT siblings)")]
    ThreadsPerCore { requested: u32 },
    #[error("the benchmark's bare loop runs one vCPU, not {vcpus}: run the `io` benchmark with --vcpus 1")]
    BareLoopOnOneVcpu { vcpus: usize },
    #[error("seed 000's SMT rule ({siblings}): {conflict}")]
    SldWithSmt { siblings: crate::config::Siblings, conflict: crate::producers::sld::policy::SmtConflict },
    #[error("--break {rule}: {why}")]
    BreakNotServed { rule: String, why: &'static str },
    #[error("the guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the ACPI tables cannot list {cpus} processors (1..={max}, local APIC IDs below 0xff)")]
    AcpiCpus { cpus: usize, max: usize },
    #[error("the memory map has {entries} entries; at most {max} fit")]
    MemoryMapTooLong { entries: usize, max: usize },
    #[error("writing the boot information ({part}) into guest memory failed: {source}")]
    WriteBootInfo { part: BootInfoPart, source: GuestMemoryError },
    #[error("cannot open the serial log {path}: {source}")]
    SerialLog { path: PathBuf, source: std::io::Error },
    #[error("cannot write the guest's console to {to}: {source}")]
    ConsoleOutput { to: ConsoleTo, source: std::io::Error },
    /// The host's own lines (`--window-stats`'s) on stdout.
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("cannot create the trace file {path}: {source}")]
    CreateTraceFile { path: PathBuf, source: std::io::Error },
    #[error("cannot write the trace file {path}: {source}")]
    WriteTraceFile { path: PathBuf, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),

    #[error("the guest triple-faulted (KVM_EXIT_SHUTDOWN) at rip {rip:#x}")]
    TripleFault { rip: u64 },
    #[error(
        "KVM could not emulate a guest instruction (internal error, suberror {suberror}) at rip {rip:#x}, instruction bytes {}",
        HexBytes(bytes)
    )]
    Emulation { suberror: u32, rip: u64, bytes: Vec<u8> },
    #[error("KVM failed to enter the guest (hardware reason {reason:#x}) at rip {rip:#x}")]
    FailEntry { reason: u64, rip: u64 },
    #[error("unexpected exit {exit} at rip {rip:#x}")]
    UnexpectedExit { exit: String, rip: u64 },
    #[error("KVM_EXIT_MEMORY_FAULT no handler claimed: {fault}, at rip {rip:#x}")]
    UnclaimedMemoryFault { fault: crate::memory_fault::MemoryFault, rip: u64 },
    #[error("{}", no_progress(.0))]
    NoProgress(crate::memory_fault::NoProgress),
    #[error("KVM_RUN failed with EFAULT (guest memory KVM could not reach) no handler claimed, at rip {rip:#x}")]
    UnclaimedEfault { rip: u64 },
    #[error("KVM_EXIT_DEBUG no handler claimed at pc {pc:#x} (dr6 {dr6:#x}, dr7 {dr7:#x})")]
    UnclaimedDebug { pc: u64, dr6: u64, dr7: u64 },
    #[error("KVM_EXIT_X86_BUS_LOCK no handler claimed, at rip {rip:#x}")]
    UnclaimedBusLock { rip: u64 },
    #[error("the guest did not finish within {seconds} s")]
    Timeout { seconds: u64 },
    #[error("the guest's hypercall block at {gpa:#x} is not {align}-byte aligned")]
    MisalignedHypercallBlock { gpa: u64, align: u64 },
    #[error("reading the guest's hypercall block at {gpa:#x} failed: {source}")]
    ReadHypercallBlock { gpa: u64, source: GuestMemoryError },
    #[error("writing the answer to the guest's hypercall block at {gpa:#x} failed: {source}")]
    WriteHypercallBlock { gpa: u64, source: GuestMemoryError },
    #[error("the guest's console record at {gpa:#x} is not {align}-byte aligned")]
    MisalignedConsoleRecord { gpa: u64, align: u64 },
    #[error("the guest's console record at {gpa:#x} claims {len} bytes; a record carries at most {max}")]
    ConsoleRecordTooLong { gpa: u64, len: u32, max: u32 },
    #[error("reading the guest's console record at {gpa:#x} failed: {source}")]
    ReadConsoleRecord { gpa: u64, source: GuestMemoryError },
    #[error(
        "the guest split-locked with its split-lock detection off, on vCPU {vcpu} at rip {rip:#x}: {insn} ({size} bytes at {address:#x}) (policy exit)"
    )]
    SplitLockExit { vcpu: usize, rip: u64, insn: String, address: u64, size: u64 },
    #[error(
        "the guest announced ABI {guest}, but this host stub speaks ABI {host}: another major version, whose interfaces neither side can interpret (a guest must check CPUID leaf 0x4000_0001 before it announces)"
    )]
    GuestAbiMajor { guest: pvagent_abi::AbiVersion, host: pvagent_abi::AbiVersion },
    #[error("too many MSR ranges to intercept ({ranges}; KVM takes at most {max})")]
    TooManyMsrRanges { ranges: usize, max: usize },
    #[error("pager: {0}")]
    Pager(#[from] crate::producers::pager::error::PagerError),
    /// A producer from outside this crate failed (an [`crate::ExitHandler`] of a library
    /// user's own) with an error of its own type: [`Error::producer`] makes it. The built-in
    /// producers have variants of their own instead (`Pager`), each per failing operation.
    #[error("{producer}: {source}")]
    Producer {
        /// The producer's [`crate::ExitHandler::name`].
        producer: &'static str,
        /// Its own error; `source.downcast_ref::<TheirError>()` gets the value back.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The error of a library user's producer named `producer`, of its own type `error`:
    /// what its hooks return (`Err(Error::producer(self.name(), MyError::...))`) to stop the
    /// run, or its `finish` to fail it. The run's `RunResult::host_error` keeps the value, so a
    /// test matches on the producer's own type:
    ///
    /// ```
    /// use pvagent_host::Error;
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum CounterError {
    ///     Overflow { msr: u32 },
    /// }
    ///
    /// impl std::fmt::Display for CounterError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         match self {
    ///             CounterError::Overflow { msr } => write!(f, "the count of MSR {msr:#x} overflowed"),
    ///         }
    ///     }
    /// }
    ///
    /// impl std::error::Error for CounterError {}
    ///
    /// let error = Error::producer("counter", CounterError::Overflow { msr: 0x33 });
    /// assert_eq!(error.to_string(), "counter: the count of MSR 0x33 overflowed");
    /// let Error::Producer { producer, source } = &error else { unreachable!() };
    /// assert_eq!(*producer, "counter");
    /// assert_eq!(source.downcast_ref::<CounterError>(), Some(&CounterError::Overflow { msr: 0x33 }));
    /// ```
    pub fn producer(producer: &'static str, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Producer { producer, source: Box::new(error) }
    }

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
        if let Error::OnVcpu { source, .. } = self {
            return source.is_guest_fault();
        }
        matches!(
            self,
            Error::TripleFault { .. }
                | Error::Emulation { .. }
                | Error::FailEntry { .. }
                | Error::UnexpectedExit { .. }
                | Error::UnclaimedMemoryFault { .. }
                | Error::NoProgress(_)
                | Error::UnclaimedEfault { .. }
                | Error::UnclaimedDebug { .. }
                | Error::UnclaimedBusLock { .. }
                | Error::Timeout { .. }
                | Error::SplitLockExit { .. }
                | Error::GuestAbiMajor { .. }
                | Error::MisalignedConsoleRecord { .. }
                | Error::ConsoleRecordTooLong { .. }
                | Error::ReadConsoleRecord { .. }
        )
    }
}

/// Where the guest's console is echoed, for the error that says it could not be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleTo {
    Stdout,
    /// `--serial-log`.
    Log(PathBuf),
}

impl std::fmt::Display for ConsoleTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleTo::Stdout => f.write_str("stdout"),
            ConsoleTo::Log(path) => write!(f, "the serial log {}", path.display()),
        }
    }
}

impl Error {
    /// Whether the run stopped because stdout was closed under it (a reader such as
    /// `| head -1` that has what it wanted): the binary then stops quietly, as a pipe's writer
    /// does, but not with success.
    pub fn is_closed_stdout(&self) -> bool {
        self.stdout_console_error() == Some(std::io::ErrorKind::BrokenPipe)
    }

    /// The kind of error writing to stdout met (the guest's console, or the host's own lines
    /// during the run), when that failed the run.
    pub fn stdout_console_error(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::ConsoleOutput { to: ConsoleTo::Stdout, source } | Error::Stdout(source) => Some(source.kind()),
            Error::OnVcpu { source, .. } => source.stdout_console_error(),
            _ => None,
        }
    }
}

/// What is wrong with a guest image, found before anything is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageProblem {
    #[error("no ELF magic")]
    NoElfMagic,
    #[error("not a 64-bit little-endian ELF")]
    NotElf64LittleEndian,
    #[error("not an x86-64 ELF (e_machine is not EM_X86_64)")]
    NotX86_64,
    #[error("truncated ELF header")]
    TruncatedHeader,
    #[error("program header entries are too small")]
    ProgramHeaderTooSmall,
    #[error("program header offset overflows")]
    ProgramHeaderOffsetOverflows,
    #[error("program headers run past the end of the file")]
    ProgramHeadersPastEnd,
    #[error("truncated program header")]
    TruncatedProgramHeader,
    #[error("a segment's end overflows")]
    SegmentEndOverflows,
    #[error("a segment holds more bytes in the file than in memory (filesz above memsz)")]
    FileSizeAboveMemorySize,
    #[error("no loadable segment")]
    NoLoadableSegment,
    #[error("a segment loads below 1 MiB, where the boot information goes")]
    SegmentBelowImageMin,
}

/// A part of the boot information the host writes into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootInfoPart {
    #[error("memory map")]
    MemoryMap,
    #[error("ACPI tables")]
    AcpiTables,
    #[error("command line")]
    CommandLine,
    #[error("start info")]
    StartInfo,
}

/// Instruction bytes as the report shows them: hex, space-separated, or `unknown`.
struct HexBytes<'a>(&'a [u8]);

impl fmt::Display for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("unknown");
        }
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Result of host stub operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of [`Error::NoProgress`].
fn no_progress(p: &crate::memory_fault::NoProgress) -> String {
    use crate::memory_fault::FaultSeen;
    let what = match p.seen {
        FaultSeen::MemoryFault { fault, rip } => format!("KVM_EXIT_MEMORY_FAULT ({fault}) at rip {rip:#x}"),
        FaultSeen::Efault { rip, rcx, rsp } => {
            format!("KVM_RUN's bare EFAULT at rip {rip:#x} (rcx {rcx:#x}, rsp {rsp:#x})")
        }
    };
    format!(
        "the same {what} came {} times in a row: the handler that took it did not make the access possible",
        p.repeats
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulation_failure_prints_its_bytes_in_hex() {
        let e = Error::Emulation { suberror: 1, rip: 0x10_000a, bytes: vec![0xcc, 0xeb, 0xfe] };
        assert!(e.to_string().ends_with("at rip 0x10000a, instruction bytes cc eb fe"), "{e}");
        let e = Error::Emulation { suberror: 1, rip: 0, bytes: Vec::new() };
        assert!(e.to_string().ends_with("instruction bytes unknown"), "{e}");
    }
}
