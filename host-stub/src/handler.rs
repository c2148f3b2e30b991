//! The trait every device and event producer implements, and the view of the vCPU it gets.
//!
//! The run loop turns each VM exit into one call per handler, in registration order, until a
//! handler claims it; before each entry into the guest every handler that asks to may inject
//! events. A new
//! producer (#AC, #VE, page-not-present) is a new implementation of [`ExitHandler`] added to
//! the VM's list, not a new arm in the run loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use pvagent_abi::hypercall::Status;
use pvagent_abi::pvh::HvmMemmapEntry;
use vm_memory::GuestMemoryMmap;

use crate::cpuid::CpuidTable;
use crate::error::{Error, Result};
use crate::kvm_stats::VcpuStats;
use crate::layout::LayoutHandle;
use crate::layout::classify::MemoryState;
use crate::memory_fault::MemoryFault;
use crate::trace::Tracer;

/// Whether a handler took care of an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Done; no other handler sees this exit.
    Yes,
    /// Not this handler's; try the next one.
    No,
}

/// A handler's answer to an MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAnswer {
    /// Not this handler's MSR.
    NotMine,
    /// RDMSR returns this value / WRMSR is accepted.
    Value(u64),
    /// The access raises #GP in the guest.
    Fault,
}

/// A handler's answer to a hypercall: `None` when the number is not its own; otherwise the
/// results, or the status that refuses the call.
pub type HypercallAnswer = Option<HypercallResult>;

/// A hypercall's results, or the status that refuses it.
pub type HypercallResult = std::result::Result<[u64; 2], Status>;

/// Why the run loop stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest wrote this code to the debug-exit port.
    GuestExit(u32),
    /// The guest asked for its next exits to be handled by the bare loop (a benchmark's
    /// baseline, [`pvagent_abi::port::BenchLoop`]); the run goes on in this loop afterwards.
    BareLoop,
}

/// What a handler gets to set itself up with, once the VM exists and before the guest is
/// loaded: it may add memslots and tell the guest about memory through the memory map.
#[derive(Debug)]
pub struct AttachCtx<'a> {
    pub kvm: &'a Kvm,
    pub vm: &'a Arc<VmFd>,
    /// Guest RAM (memslot 0).
    pub ram: &'a GuestMemoryMmap,
    /// Bytes of guest RAM.
    pub ram_size: u64,
    /// Memory-map entries added for the guest.
    pub memmap: Vec<HvmMemmapEntry>,
    /// The run's timeline (off unless the run is traced): keep a clone to record into it.
    pub trace: Tracer,
    pub(crate) next_slot: u32,
    /// The VM's vCPUs: indices `0..vcpus`, vCPU `i` with local APIC ID `i`. Per-vCPU state
    /// is sized by it; an exit's [`VcpuCtx::index`] says whose it is.
    pub vcpus: usize,
    /// Whether (and why) a vCPU may share its core with an SMT sibling: per-core state such as
    /// MSR_TEST_CTRL cannot then be virtualized per vCPU (seed 000).
    pub siblings: Option<crate::config::Siblings>,
    /// Whether KVM reports memory faults as `KVM_EXIT_MEMORY_FAULT` (`KVM_CAP_MEMORY_FAULT_INFO`);
    /// without it they come as a bare EFAULT ([`ExitHandler::efault`]).
    pub memory_fault_info: bool,
    /// The VM's memory layout, for a handler that changes it while the guest runs
    /// ([`LayoutHandle::update`], from its after-exit work or a thread of its own).
    pub layout: LayoutHandle,
}

impl AttachCtx<'_> {
    /// The guest RAM the memory map lists (`loader::ram_ranges`): memory the guest may share
    /// with the host. Entries a handler adds to [`AttachCtx::memmap`] are not RAM.
    pub fn ram_ranges(&self) -> Vec<std::ops::Range<u64>> {
        crate::loader::ram_ranges(self.ram_size)
    }

    /// Claims a memslot number.
    pub fn take_slot(&mut self) -> u32 {
        let slot = self.next_slot;
        self.next_slot += 1;
        slot
    }
}

/// Work a handler leaves for its vCPU's thread, to do once the exit is handled and the
/// handlers' lock released, before the vCPU runs again ([`VcpuCtx::after_exit`]): a wait that
/// must not hold up every other vCPU's exits, such as the pager's synchronous wait for a page.
pub struct AfterExit(Box<dyn FnOnce() -> Result<()> + Send>);

impl AfterExit {
    /// Work to do after the exit; an error ends the run as a handler's error would.
    pub fn new(work: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        Self(Box::new(work))
    }

    pub(crate) fn run(self) -> Result<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for AfterExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterExit(..)")
    }
}

/// Whether a handler's entry hook has work ([`ExitHandler::entry_pending`]).
pub type EntryPending = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a handler sees of the vCPU that exited.
#[derive(Debug)]
pub struct VcpuCtx<'a> {
    /// Dense vCPU index.
    pub index: usize,
    pub vcpu: &'a VcpuFd,
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    /// The vCPU's KVM statistics, where KVM keeps them: a handler takes a snapshot at an exit
    /// that marks a point of the guest's execution (a milestone, a benchmark's window).
    pub stats: Option<&'a VcpuStats>,
    /// The vCPU's exits the host stub has seen so far, this one included.
    pub exits: u64,
    /// The vCPU's entries into the guest so far; in an entry hook, the coming one included.
    pub entries: u64,
    /// Set by a handler to end the run after this exit.
    pub stop: Option<Stop>,
    /// What [`VcpuCtx::after_exit`] left, in order.
    pub(crate) after: &'a mut Vec<AfterExit>,
    /// While a hypercall is handled: its parameter block's guest-physical address, until a
    /// handler takes the answer over ([`VcpuCtx::answer_after_exit`]).
    pub(crate) hypercall_block: Option<u64>,
}

impl VcpuCtx<'_> {
    /// Leaves `work` for this vCPU's thread to do after the exit, outside the handlers' lock and
    /// before the vCPU runs again (every handler's part of the exit is done by then). For waits:
    /// other vCPUs' exits go on meanwhile.
    pub fn after_exit(&mut self, work: AfterExit) {
        self.after.push(work);
    }

    /// While handling a hypercall: answers it only after the exit, with what `work` returns
    /// (after the handlers' lock is released, before the vCPU runs again: the guest's `out`
    /// completes with that answer, whatever the handler returns now). For a hypercall that
    /// waits, such as the pager's `VeSuspend`. Outside a hypercall, or a second time, `work`
    /// is not run and this returns false.
    pub fn answer_after_exit(&mut self, work: impl FnOnce() -> Result<HypercallResult> + Send + 'static) -> bool {
        let Some(gpa) = self.hypercall_block.take() else { return false };
        let mem = self.mem.clone();
        self.after.push(AfterExit::new(move || {
            let answer = work()?;
            crate::vcpu::write_hypercall_answer(&mem, gpa, answer)
        }));
        true
    }

    /// Injects exception `vector` into the vCPU, delivered at the next entry, with `error_code`
    /// when the vector pushes one. Only the exception changes: NMI, SIPI, SMM and the interrupt
    /// shadow are left as they are.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<()> {
        let mut events = self.vcpu.get_vcpu_events().map_err(Error::GetVcpuEvents)?;
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        events.flags = 0;
        self.vcpu.set_vcpu_events(&events).map_err(Error::SetVcpuEvents)
    }
}

/// The first (up to) eight bytes of a port or MMIO write, little-endian: the value it stored.
pub fn out_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = data.len().min(8);
    bytes[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(bytes)
}

/// The first (up to) four bytes of an `out`, little-endian: the value a 32-bit port write stored.
pub fn out_word(data: &[u8]) -> u32 {
    out_value(data) as u32
}

/// Fills an `in`'s data with the low bytes of `value`, little-endian.
pub fn fill_in(data: &mut [u8], value: u32) {
    for (d, b) in data.iter_mut().zip(value.to_le_bytes().into_iter().chain(std::iter::repeat(0))) {
        *d = b;
    }
}

/// What became of a page-not-present event the benchmark device asked the pager for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageEventInjection {
    /// Delivered, its resolution written first.
    Delivered,
    /// Not deliverable now, and nothing was done: the page is not present, the pager is in
    /// `sync` mode, the vCPU has not registered the protocol or cannot take the event vector
    /// now, its event area is busy, or no token is free.
    NotDeliverable,
    /// The page is beyond the demand-paged region.
    OutsideRegion,
}

/// The benchmark device's one way into the demand pager (`crate::bench`, only with
/// `Config::bench`): an already-resolved page-not-present event for a present page, on the
/// way back into the guest, so that the cost of the guest's no-wait path can be measured on
/// the exit the baseline measures. Nothing else uses it.
pub trait PageEventInjector: Send + std::fmt::Debug {
    /// Delivers an event for `page` of the region to the vCPU with its resolution written
    /// first, if one can be delivered now. An error (a ring the guest broke, an ioctl that
    /// failed) is the one the pager's access path raises for the same cause, and stops the
    /// run.
    fn inject_resolved(&self, ctx: &VcpuCtx<'_>, page: u64) -> Result<PageEventInjection>;
}

/// What the watchdog runs, once, when the run's time is up and the vCPU thread may wait inside
/// KVM where no signal reaches it ([`ExitHandler::unblocker`]).
pub type Unblock = Box<dyn FnOnce() + Send>;

/// End-of-run numbers and notes from every handler.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// `handler.counter` -> value.
    pub counters: BTreeMap<String, u64>,
    /// Human-readable lines, in order.
    pub lines: Vec<String>,
}

impl Report {
    /// Records a counter under `handler.name`.
    pub fn counter(&mut self, handler: &str, name: &str, value: u64) {
        self.counters.insert(format!("{handler}.{name}"), value);
    }

    /// Adds a line for the run's output.
    pub fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    /// A counter's value (0 when absent).
    pub fn get(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

/// A device or event producer. Every method has a default that declines, so an
/// implementation only writes what it handles.
///
/// The run loop offers an exit to the built-in devices first (console, exit port, basics, the
/// trace port; the benchmark device with `--bench`), then to the producers in the order given
/// to [`crate::Vm::new`], until one claims it: a handler that only watches declines
/// ([`Handled::No`], [`MsrAnswer::NotMine`], `None`) and so sees what no handler before it
/// took.
///
/// ```
/// use pvagent_host::{ExitHandler, MsrAnswer, Report, Result, VcpuCtx};
///
/// /// Counts the guest's MSR writes that reach the producers, and lets them go on.
/// #[derive(Default)]
/// struct MsrWatcher {
///     writes: u64,
/// }
///
/// impl ExitHandler for MsrWatcher {
///     fn name(&self) -> &'static str {
///         "msr-watcher"
///     }
///
///     fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, _index: u32, _value: u64) -> Result<MsrAnswer> {
///         self.writes += 1;
///         Ok(MsrAnswer::NotMine)
///     }
///
///     fn finish(&mut self, report: &mut Report) -> Result<()> {
///         report.counter(self.name(), "writes", self.writes);
///         Ok(())
///     }
/// }
///
/// // First in the list, so it sees the writes the producers after it answer.
/// let mut producers = pvagent_host::Producers::defaults().build()?;
/// producers.insert(0, Box::new(MsrWatcher::default()));
/// # Ok::<(), pvagent_host::Error>(())
/// ```
pub trait ExitHandler: Send {
    /// Short name, used in reports and counter keys.
    fn name(&self) -> &'static str;

    /// Sets itself up once the VM exists, before the guest is loaded and before any vCPU
    /// exists: check and enable the capabilities it needs (a missing one is an error naming
    /// it), add memslots, tell the guest about memory through the memory map.
    fn attach(&mut self, _ctx: &mut AttachCtx<'_>) -> Result<()> {
        Ok(())
    }

    /// Adds or changes CPUID entries (advertise a feature) before the vCPU starts.
    fn cpuid(&self, _table: &mut CpuidTable) {}

    /// MSRs this handler virtualizes that KVM may know itself (architectural ones): the VM
    /// installs a KVM_X86_SET_MSR_FILTER that denies them inside KVM, so that every access
    /// exits to [`ExitHandler::rdmsr`]/[`ExitHandler::wrmsr`] whatever KVM implements.
    /// MSRs KVM does not know exit anyway and need not be listed.
    fn intercepted_msrs(&self) -> Vec<u32> {
        Vec::new()
    }

    /// Called before every entry into the guest, if [`ExitHandler::has_before_entry`] says so:
    /// inject pending events here.
    fn before_entry(&mut self, _ctx: &mut VcpuCtx<'_>) -> Result<()> {
        Ok(())
    }

    /// Whether [`ExitHandler::before_entry`] does anything. Asked once per run: the run loop
    /// calls only the handlers that say yes, because every call before every entry is paid on
    /// every exit.
    fn has_before_entry(&self) -> bool {
        false
    }

    /// With [`ExitHandler::has_before_entry`]: when [`ExitHandler::before_entry`] has work.
    /// `None` (the default): before every entry. `Some(pending)`: before each vCPU's first
    /// entry, then only before an entry at which `pending()` is true; the run loop reads it
    /// without the handlers' lock (every vCPU thread does, so it reads atomics), and takes that
    /// lock for the hook only then. Asked once per run.
    fn entry_pending(&self) -> Option<EntryPending> {
        None
    }

    /// `in` from `port`: fill `data`.
    fn io_in(&mut self, _ctx: &mut VcpuCtx<'_>, _port: u16, _data: &mut [u8]) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// `out` to `port` of `data`.
    fn io_out(&mut self, _ctx: &mut VcpuCtx<'_>, _port: u16, _data: &[u8]) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// A load from `addr` that KVM could not satisfy from memory: fill `data`.
    fn mmio_read(&mut self, _ctx: &mut VcpuCtx<'_>, _addr: u64, _data: &mut [u8]) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// A store of `data` to `addr` that KVM could not satisfy from memory.
    fn mmio_write(&mut self, _ctx: &mut VcpuCtx<'_>, _addr: u64, _data: &[u8]) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// KVM_EXIT_MEMORY_FAULT: an access KVM could not resolve (the instruction has not run;
    /// re-entering retries it). The fault says the range, whether the memory is private, and on
    /// kernels that report it the access kind ([`MemoryFault`]). The run stops if the same fault
    /// comes back [`crate::memory_fault::MAX_REPEATS`] times in a row.
    fn memory_fault(&mut self, _ctx: &mut VcpuCtx<'_>, _fault: &MemoryFault) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// What this handler knows of guest address `gpa`: whether it pages it, and whether the page
    /// is present. The layout's exit classifier asks it (an absent demand page exits as MMIO at
    /// a RAM address, as an access in a layout update's window does: `layout::classify`).
    fn memory_state(&self, _gpa: u64) -> MemoryState {
        MemoryState::NotPaged
    }

    /// KVM_RUN failed with EFAULT and no memory-fault information: KVM could not access guest
    /// memory for the instruction at RIP, which has not run (PVM does this for a guest CPL 3
    /// access to a page the host made inaccessible). The handler that owns the memory decodes
    /// the instruction (`guest_insn`), makes it accessible or delivers an event, and says `Yes`.
    fn efault(&mut self, _ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// RDMSR of `index` that KVM passed to user space.
    fn rdmsr(&mut self, _ctx: &mut VcpuCtx<'_>, _index: u32) -> Result<MsrAnswer> {
        Ok(MsrAnswer::NotMine)
    }

    /// WRMSR of `value` to `index` that KVM passed to user space.
    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, _index: u32, _value: u64) -> Result<MsrAnswer> {
        Ok(MsrAnswer::NotMine)
    }

    /// KVM_EXIT_DEBUG (a guest-debug breakpoint the host set).
    fn debug(&mut self, _ctx: &mut VcpuCtx<'_>, _exit: &kvm_bindings::kvm_debug_exit_arch) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// KVM_EXIT_X86_BUS_LOCK: the guest's previous instruction took a bus lock (only when a
    /// handler enabled KVM_CAP_X86_BUS_LOCK_EXIT).
    fn bus_lock(&mut self, _ctx: &mut VcpuCtx<'_>) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// An emulation failure KVM reported: a handler that caused it (e.g. a locked access to a
    /// page the pager has not supplied) may repair the cause and return `Yes` to retry.
    fn emulation_failure(&mut self, _ctx: &mut VcpuCtx<'_>, _insn: &[u8]) -> Result<Handled> {
        Ok(Handled::No)
    }

    /// Hypercall `nr` (see `pvagent_abi::hypercall`): `Ok(None)` if not this handler's;
    /// `Ok(Some(..))` the answer for the guest (its results, or a status that refuses it); an
    /// error is the host failing, and stops the run.
    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, _nr: u32, _args: [u64; 4]) -> Result<HypercallAnswer> {
        Ok(None)
    }

    /// The page-not-present injector the benchmark device may use (the demand pager's); asked
    /// once, when the VM is set up with its benchmark device.
    fn page_event_injector(&self) -> Option<Box<dyn PageEventInjector>> {
        None
    }

    /// What ends a wait of the vCPU thread inside KVM on memory this handler serves, where the
    /// watchdog's signal does not reach it (a userfaultfd fault): the watchdog calls it when the
    /// run's time is up, before it signals. `None` (the default): nothing of this handler's can
    /// block the vCPU there.
    fn unblocker(&self) -> Option<Unblock> {
        None
    }

    /// After the guest stopped: record counters and notes; an error fails the run (e.g. a
    /// producer found a protocol violation or a leaked token).
    fn finish(&mut self, _report: &mut Report) -> Result<()> {
        Ok(())
    }
}
