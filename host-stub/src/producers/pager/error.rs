//! Every way the demand pager can fail: one variant per failing operation. A failure found on a
//! fetcher or poller thread travels to the vCPU thread as one of these values (`shared`), so
//! the run ends with the same typed error wherever the pager noticed it.

use std::io;
use std::path::PathBuf;

use vm_memory::GuestMemoryError;

use super::config::ConfigError;
use super::region::RegionError;
use super::state::PageIndex;
use super::tokens::RingViolation;

/// A demand pager failure.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use the backing image {path}: {source}")]
    OpenImage { path: PathBuf, source: super::backing::ImageError },
    #[error("cannot read page {page} of the backing image {path}: {source}")]
    ReadImage { path: PathBuf, page: PageIndex, source: io::Error },
    #[error("cannot set up the demand-paged region: {0}")]
    CreateRegion(#[source] RegionError),
    #[error("cannot start the fetcher threads: {0}")]
    StartFetchers(io::Error),
    #[error("cannot start the held-back resolution poller: {0}")]
    StartPoller(io::Error),
    /// The pager was used before `attach` gave it the VM (a host stub bug).
    #[error("the pager was used before it was attached to the VM")]
    NotAttached,
    #[error("making page {page} present failed: {source}")]
    FillPage { page: PageIndex, source: io::Error },
    #[error("taking page {page}'s memory back for an eviction (mprotect, madvise) failed: {source}")]
    EvictPage { page: PageIndex, source: io::Error },
    #[error("reading vCPU {vcpu}'s event area at {gpa:#x} failed: {source}")]
    ReadEventArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("writing vCPU {vcpu}'s event area at {gpa:#x} failed: {source}")]
    WriteEventArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("reading vCPU {vcpu}'s ring tail at {gpa:#x} failed: {source}")]
    ReadRingTail { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("writing vCPU {vcpu}'s ring entry at {gpa:#x} failed: {source}")]
    WriteRingEntry { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("writing vCPU {vcpu}'s ring head at {gpa:#x} failed: {source}")]
    WriteRingHead { vcpu: usize, gpa: u64, source: GuestMemoryError },
    /// The guest broke the ring protocol (or the host would have: a full ring).
    #[error("vCPU {vcpu}: {violation}")]
    Ring { vcpu: usize, violation: RingViolation },
    #[error("reading vCPU {vcpu}'s async page fault area at {gpa:#x} failed: {source}")]
    ReadApfArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("writing vCPU {vcpu}'s async page fault area at {gpa:#x} failed: {source}")]
    WriteApfArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("injecting a \"page not present\" #PF into vCPU {vcpu} (KVM_GET/SET_VCPU_EVENTS) failed: {source}")]
    InjectNotPresent { vcpu: usize, source: kvm_ioctls::Error },
    #[error("reading vCPU {vcpu}'s VE information area at {gpa:#x} failed: {source}")]
    ReadVeArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("writing vCPU {vcpu}'s VE information area at {gpa:#x} failed: {source}")]
    WriteVeArea { vcpu: usize, gpa: u64, source: GuestMemoryError },
    #[error("injecting an NMI into vCPU {vcpu} (KVM_NMI) failed: {source}")]
    InjectNmi { vcpu: usize, source: kvm_ioctls::Error },
    #[error("vCPU {vcpu}: NMI_WITH_NEXT_VE is armed, but the guest's IDT gives no #VE handler the host can read")]
    NoVeHandler { vcpu: usize },
    #[error("setting or clearing vCPU {vcpu}'s breakpoint on its #VE handler (KVM_SET_GUEST_DEBUG) failed: {source}")]
    SetBreakpoint { vcpu: usize, source: kvm_ioctls::Error },
    #[error("enabling KVM_CAP_EXCEPTION_PAYLOAD (a #PF's CR2 as its payload) failed: {0}")]
    EnableExceptionPayload(kvm_ioctls::Error),
    #[error("cannot start the userfaultfd fault reader: {0}")]
    StartFaultReader(io::Error),
    #[error("reading the region's userfaultfd failed: {0}")]
    ReadFaults(io::Error),
    #[error("a userfaultfd fault at host address {address:#x}, outside the demand-paged region")]
    FaultOutsideRegion { address: u64 },
    #[error("an event for vCPU {vcpu}, which has not registered the protocol")]
    EventWithoutRegistration { vcpu: usize },
    #[error("vCPU {vcpu} would owe a second KVM \"page not present\" (a host stub bug)")]
    SecondOwedNotPresent { vcpu: usize },
    #[error("a resolution for vCPU {vcpu}, which has not registered the protocol")]
    ResolutionWithoutRegistration { vcpu: usize },
    #[error("KVM_SIGNAL_MSI (vector {vector:#x} to vCPU {vcpu}) failed: {source}")]
    SignalMsi { vcpu: usize, vector: u8, source: kvm_ioctls::Error },
    #[error("the guest accessed page {gpa:#x}, which failed, when no page-not-present event could be delivered")]
    FailedPageUndeliverable { gpa: u64 },
    #[error(
        "the guest accessed page {gpa:#x} again after its page ready, and the page failed: KVM's async page fault ABI has no failed result to tell the guest"
    )]
    FailedPageKvmCannotReport { gpa: u64 },
    #[error("page {gpa:#x} failed while the vCPU waited for it synchronously: the guest cannot be told")]
    FailedDuringSyncWait { gpa: u64 },
    #[error(
        "leaked tokens: {outstanding} outstanding and {fetching} page(s) still being fetched when the guest stopped"
    )]
    LeakedTokens { outstanding: usize, fetching: usize },
}
