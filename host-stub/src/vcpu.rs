//! The vCPU run loop: enter the guest, turn the exit into calls on the handlers, write their
//! answers back, repeat until a handler stops the run or the guest does something fatal.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::error::{Error, Result};
use crate::handler::{AfterExit, EntryPending, ExitHandler, Handled, MsrAnswer, Stop, VcpuCtx, out_value, out_word};
use crate::kvm_run;
use crate::kvm_stats::VcpuStats;
use crate::layout::LayoutHandle;
use crate::layout::classify::{RunSpan, Verdict};
use crate::memory;
use crate::memory_fault::{self, FaultSeen, MemoryFault, RepeatGuard};
use crate::trace::{Arg, Args, Tracer, Track};
use crate::watchdog::{RunningVcpu, VcpuThreads, Watchdog};

/// The local APIC ID of vCPU `index`: KVM gives a vCPU's local APIC its vcpu_id, which the host
/// stub makes the vCPU's index (the MADT and CPUID say the same).
pub fn apic_id(index: usize) -> u32 {
    index as u32
}

/// The MSI that raises `vector` on the local APIC `apic_id` alone: fixed delivery, physical
/// destination mode, edge-triggered (the address's destination field is bits 19:12).
pub fn fixed_msi(apic_id: u32, vector: u8) -> kvm_bindings::kvm_msi {
    kvm_bindings::kvm_msi {
        address_lo: crate::acpi::LAPIC_ADDRESS | (apic_id << 12),
        data: u32::from(vector),
        ..Default::default()
    }
}

/// The run's handlers, shared by its vCPU threads: a thread holds the lock while it handles an
/// exit (and while it calls the entry hooks), never while it is inside KVM_RUN. Handling is
/// serialized across vCPUs; the guest's own execution is not.
pub type SharedHandlers<'a> = Mutex<Vec<&'a mut dyn ExitHandler>>;

/// Does, in order, the work handlers left for after the exit ([`VcpuCtx::after_exit`]), with
/// the handlers' lock released.
fn run_after_exit(after: &mut Vec<AfterExit>) -> Result<()> {
    for work in after.drain(..) {
        work.run()?;
    }
    Ok(())
}

fn lock<'m, 'a>(handlers: &'m SharedHandlers<'a>) -> MutexGuard<'m, Vec<&'a mut dyn ExitHandler>> {
    handlers.lock().unwrap_or_else(|p| p.into_inner())
}

/// An exit, copied out of `kvm_run` so the handlers can use the vCPU fd. The bytes an `out` or
/// an MMIO write carries go to the loop's one buffer ([`ExitData`]), not into the exit: no exit
/// allocates.
#[derive(Debug)]
enum Exit {
    IoIn {
        port: u16,
        len: usize,
    },
    /// Its bytes are in the [`ExitData`].
    IoOut {
        port: u16,
    },
    MmioRead {
        addr: u64,
        len: usize,
    },
    /// Its bytes are in the [`ExitData`].
    MmioWrite {
        addr: u64,
    },
    Rdmsr {
        index: u32,
    },
    Wrmsr {
        index: u32,
        value: u64,
    },
    MemoryFault(MemoryFault),
    Efault,
    Debug(kvm_bindings::kvm_debug_exit_arch),
    BusLock,
    Interrupted,
    Shutdown,
    InternalError,
    FailEntry(u64),
    Other(String),
}

/// The bytes of the exit being handled (an `out`'s or an MMIO write's; for an `in` or an MMIO
/// read, the answer being filled in): one buffer for the whole run, so that its allocation is
/// paid once, not on every exit. A port string instruction can carry up to a page.
#[derive(Debug, Default)]
struct ExitData(Vec<u8>);

impl ExitData {
    /// Holds `bytes` (an exit's).
    fn hold(&mut self, bytes: &[u8]) {
        self.0.clear();
        self.0.extend_from_slice(bytes);
    }

    /// `len` bytes of all-ones, for a handler to fill in as the answer to a read (what an
    /// unclaimed read returns).
    fn answer(&mut self, len: usize) -> &mut [u8] {
        self.0.clear();
        self.0.resize(len, 0xFF);
        &mut self.0
    }
}

/// What KVM_RUN's outcome is, as the loop handles it: an exit (copied), a kick, a bare EFAULT,
/// or a failure of KVM_RUN itself.
fn exit_of(run: std::result::Result<VcpuExit<'_>, kvm_ioctls::Error>, data: &mut ExitData) -> Result<Exit> {
    match run {
        // `kvm-ioctls` makes KVM_RUN's EFAULT (or EHWPOISON) with `exit_reason` 39 the
        // `MemoryFault` exit: KVM_CAP_MEMORY_FAULT_INFO's form.
        Ok(exit) => Ok(copy_exit(exit, data)),
        // A kick (EINTR), or an AP's first entry after its SIPI (EAGAIN).
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(Exit::Interrupted),
        // EFAULT without memory-fault information: KVM could not reach guest memory for the
        // instruction at RIP, which has not run, and did not say where.
        Err(e) if e.errno() == libc::EFAULT => Ok(Exit::Efault),
        Err(e) => Err(Error::Run(e)),
    }
}

fn copy_exit(exit: VcpuExit<'_>, data: &mut ExitData) -> Exit {
    match exit {
        VcpuExit::IoIn(port, bytes) => Exit::IoIn { port, len: bytes.len() },
        VcpuExit::IoOut(port, bytes) => {
            data.hold(bytes);
            Exit::IoOut { port }
        }
        VcpuExit::MmioRead(addr, bytes) => Exit::MmioRead { addr, len: bytes.len() },
        VcpuExit::MmioWrite(addr, bytes) => {
            data.hold(bytes);
            Exit::MmioWrite { addr }
        }
        VcpuExit::X86Rdmsr(msr) => Exit::Rdmsr { index: msr.index },
        VcpuExit::X86Wrmsr(msr) => Exit::Wrmsr { index: msr.index, value: msr.data },
        VcpuExit::MemoryFault { flags, gpa, size } => Exit::MemoryFault(MemoryFault { gpa, size, flags }),
        VcpuExit::Debug(arch) => Exit::Debug(arch),
        VcpuExit::Unsupported(kvm_bindings::KVM_EXIT_X86_BUS_LOCK) => Exit::BusLock,
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::FailEntry(reason, _cpu) => Exit::FailEntry(reason),
        other => Exit::Other(format!("{other:?}")),
    }
}

/// An exit as the timeline shows it: its name and what identifies it (port, address, MSR).
fn timeline_entry(exit: &Exit, data: &ExitData) -> (&'static str, Args) {
    let size = |len: usize| ("size", Arg::Uint(len as u64));
    let data = &data.0;
    match exit {
        Exit::IoOut { port } if *port == pvagent_abi::port::HYPERCALL => {
            ("hypercall", vec![("request_gpa", Arg::Hex(out_value(data)))])
        }
        Exit::IoOut { port } => {
            ("io out", vec![("port", Arg::Hex((*port).into())), size(data.len()), ("value", Arg::Hex(out_value(data)))])
        }
        Exit::IoIn { port, len } => ("io in", vec![("port", Arg::Hex((*port).into())), size(*len)]),
        Exit::MmioRead { addr, len } => ("mmio read", vec![("address", Arg::Hex(*addr)), size(*len)]),
        Exit::MmioWrite { addr } => {
            ("mmio write", vec![("address", Arg::Hex(*addr)), size(data.len()), ("value", Arg::Hex(out_value(data)))])
        }
        Exit::Rdmsr { index } => ("rdmsr", vec![("msr", Arg::Hex((*index).into()))]),
        Exit::Wrmsr { index, value } => {
            ("wrmsr", vec![("msr", Arg::Hex((*index).into())), ("value", Arg::Hex(*value))])
        }
        Exit::MemoryFault(f) => {
            ("memory fault", vec![("gpa", Arg::Hex(f.gpa)), ("size", Arg::Uint(f.size)), ("flags", Arg::Hex(f.flags))])
        }
        Exit::Efault => ("efault", Vec::new()),
        Exit::Debug(arch) => ("debug", vec![("pc", Arg::Hex(arch.pc))]),
        Exit::BusLock => ("bus lock", Vec::new()),
        Exit::Interrupted => ("interrupted", Vec::new()),
        Exit::Shutdown => ("shutdown", Vec::new()),
        Exit::InternalError => ("internal error", Vec::new()),
        Exit::FailEntry(reason) => ("fail entry", vec![("reason", Arg::Hex(*reason))]),
        Exit::Other(what) => ("other exit", vec![("exit", Arg::Text(what.clone().into()))]),
    }
}

/// An exit being handled, for the timeline: when KVM_RUN returned, and what the exit was.
#[derive(Debug)]
struct ExitInProgress {
    since: Instant,
    name: &'static str,
    args: Args,
}

/// Whether `PVAGENT_DEBUG_EXITS` asks for every exit to be printed (read once: looking the
/// environment up on every exit would cost more than the exit).
pub fn debug_exits() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PVAGENT_DEBUG_EXITS").is_some())
}

/// Counts of exits no handler claimed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unclaimed {
    pub io: u64,
    pub mmio: u64,
    pub msr: u64,
}

/// One vCPU and what its loop needs.
#[derive(Debug)]
pub struct Vcpu {
    pub index: usize,
    pub fd: VcpuFd,
    pub exits: u64,
    pub unclaimed: Unclaimed,
    /// KVM's statistics of this vCPU (`None` where KVM_GET_STATS_FD is missing).
    pub stats: Option<VcpuStats>,
    /// The run's timeline (off unless traced): each exit is a span on this vCPU's track.
    pub trace: Tracer,
    /// Whether the console's exits go on the timeline too (`Config::trace_console`).
    pub trace_console: bool,
    /// Entries into the guest so far (`VcpuCtx::entries`).
    pub entries: u64,
    /// The work handlers left for after the exit being handled (`VcpuCtx::after_exit`): empty
    /// between exits; kept here so that its allocation is reused.
    pub after_exit: Vec<AfterExit>,
    /// Stops the run when the same memory fault keeps coming back (`memory_fault`).
    pub fault_guard: RepeatGuard,
    /// The VM's memory layout: its update generation is read around each KVM_RUN, and exits
    /// are classified against its windows once an unheld update ran.
    pub layout: LayoutHandle,
    /// The last KVM_RUN's update generations.
    pub span: RunSpan,
}

/// Whether `exit` is the console's (COM1's registers, and the console port: `devices::serial`).
fn is_console(exit: &Exit) -> bool {
    let com1 = |port: u16| (pvagent_abi::port::COM1..pvagent_abi::port::COM1 + 8).contains(&port);
    match exit {
        Exit::IoOut { port, .. } => com1(*port) || *port == pvagent_abi::port::CONSOLE,
        Exit::IoIn { port, .. } => com1(*port),
        _ => false,
    }
}

fn rip(fd: &VcpuFd) -> u64 {
    fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
}

impl Vcpu {
    /// Runs until a handler stops the run (`Ok(Some)`), another vCPU ended it (`Ok(None)`:
    /// `threads` says it is stopping), or something fatal happens (`Err`).
    pub fn run(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        handlers: &SharedHandlers<'_>,
        watchdog: &Watchdog,
        threads: &VcpuThreads,
    ) -> Result<Option<Stop>> {
        let mut in_progress = None;
        let running = RunningVcpu::enter(self.fd.get_kvm_run());
        let outcome = self.run_loop(vm, mem, handlers, watchdog, threads, &mut in_progress);
        drop(running);
        // The last exit (the guest's exit code, or whatever failed) lasts until the loop ended.
        self.end_exit_span(in_progress.take());
        outcome
    }

    /// Puts the exit that was being handled on the timeline: it lasted until now.
    fn end_exit_span(&self, exit: Option<ExitInProgress>) {
        if let Some(ExitInProgress { since, name, args }) = exit {
            self.trace.complete(Track::Vcpu(self.index), name, since, Instant::now(), || args);
        }
    }

    fn run_loop(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        handlers: &SharedHandlers<'_>,
        watchdog: &Watchdog,
        threads: &VcpuThreads,
        in_progress: &mut Option<ExitInProgress>,
    ) -> Result<Option<Stop>> {
        // Each entry hook, with what says when it has work (`None`: always).
        let with_entry_hook: Vec<(usize, Option<EntryPending>)> = {
            let handlers = lock(handlers);
            (0..handlers.len())
                .filter(|&i| handlers[i].has_before_entry())
                .map(|i| (i, handlers[i].entry_pending()))
                .collect()
        };
        let mut due: Vec<usize> = Vec::with_capacity(with_entry_hook.len());
        let mut data = ExitData::default();
        loop {
            if threads.stopping() {
                return Ok(None);
            }
            self.entries += 1;
            // The hooks with work before this entry, read without the handlers' lock: the lock
            // (which every vCPU's exits share) only when one has.
            due.clear();
            let first_entry = self.entries == 1;
            due.extend(
                with_entry_hook
                    .iter()
                    .filter(|(_, pending)| first_entry || pending.as_ref().is_none_or(|p| p()))
                    .map(|(i, _)| *i),
            );
            if !due.is_empty() {
                let mut handlers = lock(handlers);
                let mut ctx = VcpuCtx {
                    index: self.index,
                    vcpu: &self.fd,
                    vm,
                    mem,
                    stats: self.stats.as_ref(),
                    exits: self.exits,
                    entries: self.entries,
                    stop: None,
                    after: &mut self.after_exit,
                    hypercall_block: None,
                };
                for &i in &due {
                    handlers[i].before_entry(&mut ctx)?;
                }
                let stop = ctx.stop;
                drop(handlers);
                run_after_exit(&mut self.after_exit)?;
                if let Some(stop) = stop {
                    return Ok(Some(stop));
                }
            }
            // An exit lasts from KVM_RUN's return to the next KVM_RUN: handling it and the
            // injections before the next entry are what the host spent on it.
            self.end_exit_span(in_progress.take());
            // Through the gate a layout update closes (`layout::hold`), and out of it again once
            // the exit is handled, not when KVM_RUN returns: handlers read the guest's state
            // through KVM (KVM_TRANSLATE walks its page tables through the memslots), which a
            // memslot operation must not pull from under them.
            let Some(in_guest) = threads.gate.enter(|| threads.stopping()) else { return Ok(None) };
            self.span.entered = self.layout.generation();
            let exit = exit_of(self.fd.run(), &mut data);
            self.span.returned = self.layout.generation();
            let exit = exit?;
            if matches!(exit, Exit::Interrupted) {
                // A kick may have asked for this immediate exit: cleared before anything the
                // kick announced is checked, so a later kick is never lost.
                self.fd.set_kvm_immediate_exit(0);
            }
            if self.trace.is_on() && (self.trace_console || !is_console(&exit)) {
                let since = Instant::now();
                let (name, args) = timeline_entry(&exit, &data);
                *in_progress = Some(ExitInProgress { since, name, args });
            }
            self.exits += 1;
            if debug_exits() {
                static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                let t = START.get_or_init(std::time::Instant::now).elapsed();
                let rip = rip(&self.fd);
                eprintln!(
                    "{:10.3} ms vCPU {} exit {} rip {rip:#x}: {exit:?} {:x?}",
                    t.as_secs_f64() * 1e3,
                    self.index,
                    self.exits,
                    data.0
                );
            }
            let mut handlers = lock(handlers);
            let stop = self.dispatch(exit, &mut data, vm, mem, &mut handlers, watchdog)?;
            drop(handlers);
            // Handled. The after-exit work may wait long (for a page) or make an update itself.
            drop(in_guest);
            run_after_exit(&mut self.after_exit)?;
            if let Some(stop) = stop {
                return Ok(Some(stop));
            }
        }
    }

    /// Answers an MSR exit: the value read or accepted, or #GP for a fault and for an MSR no
    /// handler knows (counted).
    fn complete_msr(&mut self, answer: MsrAnswer) {
        if answer == MsrAnswer::NotMine {
            self.unclaimed.msr += 1;
        }
        let value = match answer {
            MsrAnswer::Value(v) => Some(v),
            MsrAnswer::NotMine | MsrAnswer::Fault => None,
        };
        kvm_run::complete_msr(&mut self.fd, value);
    }

    fn dispatch(
        &mut self,
        exit: Exit,
        data: &mut ExitData,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        handlers: &mut [&mut dyn ExitHandler],
        watchdog: &Watchdog,
    ) -> Result<Option<Stop>> {
        // Any exit but a fault or a kick shows the guest ran since the last fault.
        if !matches!(exit, Exit::MemoryFault(_) | Exit::Efault | Exit::Interrupted) {
            self.fault_guard.progress();
        }
        let mut ctx = VcpuCtx {
            index: self.index,
            vcpu: &self.fd,
            vm,
            mem,
            stats: self.stats.as_ref(),
            exits: self.exits,
            entries: self.entries,
            stop: None,
            after: &mut self.after_exit,
            hypercall_block: None,
        };
        match exit {
            Exit::IoOut { port } if port == pvagent_abi::port::HYPERCALL && data.0.len() == 4 => {
                let gpa = u64::from(out_word(&data.0));
                hypercall(&mut ctx, handlers, gpa)?;
            }
            Exit::IoOut { port } => {
                if !claim(handlers, |h| h.io_out(&mut ctx, port, &data.0))? {
                    self.unclaimed.io += 1;
                }
            }
            Exit::IoIn { port, len } => {
                let answer = data.answer(len);
                if !claim(handlers, |h| h.io_in(&mut ctx, port, answer))? {
                    self.unclaimed.io += 1;
                }
                let stop = ctx.stop;
                kvm_run::complete_io_in(&mut self.fd, &data.0);
                return Ok(stop);
            }
            Exit::MmioRead { addr, len } => {
                let answer = data.answer(len);
                if self.layout.verdict(self.span, addr, handlers, false) == Some(Verdict::UpdateWindow)
                    && self.layout.complete_access(addr, self.span, Some(answer), None)
                {
                    kvm_run::complete_mmio_read(&mut self.fd, &data.0);
                    return Ok(None);
                }
                if !claim(handlers, |h| h.mmio_read(&mut ctx, addr, answer))? {
                    self.unclaimed.mmio += 1;
                }
                let stop = ctx.stop;
                kvm_run::complete_mmio_read(&mut self.fd, &data.0);
                return Ok(stop);
            }
            Exit::MmioWrite { addr } => {
                if self.layout.verdict(self.span, addr, handlers, false) == Some(Verdict::UpdateWindow)
                    && self.layout.complete_access(addr, self.span, None, Some(&data.0))
                {
                    return Ok(None);
                }
                if !claim(handlers, |h| h.mmio_write(&mut ctx, addr, &data.0))? {
                    self.unclaimed.mmio += 1;
                }
            }
            Exit::Rdmsr { index } => {
                let answer = msr(handlers, |h| h.rdmsr(&mut ctx, index))?;
                let stop = ctx.stop;
                self.complete_msr(answer);
                return Ok(stop);
            }
            Exit::Wrmsr { index, value } => {
                let answer = msr(handlers, |h| h.wrmsr(&mut ctx, index, value))?;
                let stop = ctx.stop;
                self.complete_msr(answer);
                return Ok(stop);
            }
            Exit::MemoryFault(fault) => {
                let rip = rip(ctx.vcpu);
                self.fault_guard.fault(FaultSeen::MemoryFault { fault, rip }).map_err(Error::NoProgress)?;
                if !claim(handlers, |h| h.memory_fault(&mut ctx, &fault))? {
                    return Err(Error::UnclaimedMemoryFault { fault, rip });
                }
                let stop = ctx.stop;
                memory_fault::forget_fault(self.fd.get_kvm_run());
                return Ok(stop);
            }
            Exit::Efault => {
                let regs = ctx.vcpu.get_regs().map_err(Error::GetRegs)?;
                self.fault_guard
                    .fault(FaultSeen::Efault { rip: regs.rip, rcx: regs.rcx, rsp: regs.rsp })
                    .map_err(Error::NoProgress)?;
                if !claim(handlers, |h| h.efault(&mut ctx))? {
                    return Err(Error::UnclaimedEfault { rip: regs.rip });
                }
            }
            Exit::Debug(arch) => {
                if !claim(handlers, |h| h.debug(&mut ctx, &arch))? {
                    return Err(Error::UnclaimedDebug { pc: arch.pc, dr6: arch.dr6, dr7: arch.dr7 });
                }
            }
            Exit::BusLock => {
                if !claim(handlers, |h| h.bus_lock(&mut ctx))? {
                    return Err(Error::UnclaimedBusLock { rip: rip(&self.fd) });
                }
            }
            Exit::Interrupted => watchdog.check()?,
            Exit::Shutdown => return Err(Error::TripleFault { rip: rip(&self.fd) }),
            Exit::InternalError => {
                let (suberror, bytes) = kvm_run::internal_error(&mut self.fd);
                let mut ctx = VcpuCtx {
                    index: self.index,
                    vcpu: &self.fd,
                    vm,
                    mem,
                    stats: self.stats.as_ref(),
                    exits: self.exits,
                    entries: self.entries,
                    stop: None,
                    after: &mut self.after_exit,
                    hypercall_block: None,
                };
                if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
                    && claim(handlers, |h| h.emulation_failure(&mut ctx, &bytes))?
                {
                    return Ok(ctx.stop);
                }
                // Code fetched from an address an unheld layout update left without a memslot (an
                // emulation failure; other internal errors are never a window's): once the window
                // is closed the instruction runs again, unchanged.
                let at = rip(&self.fd);
                if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
                    && let Some(gpa) = crate::guest_insn::translate(&self.fd, at)
                    && self.layout.verdict(self.span, gpa, handlers, true) == Some(Verdict::UpdateWindow)
                {
                    self.layout.complete_access(gpa, self.span, None, None);
                    return Ok(None);
                }
                return Err(Error::Emulation { suberror, rip: at, bytes });
            }
            Exit::FailEntry(reason) => return Err(Error::FailEntry { reason, rip: rip(&self.fd) }),
            Exit::Other(exit) => return Err(Error::UnexpectedExit { exit, rip: rip(&self.fd) }),
        }
        Ok(ctx.stop)
    }
}

/// Offers an exit to each handler in turn; whether one claimed it.
fn claim(
    handlers: &mut [&mut dyn ExitHandler],
    mut offer: impl FnMut(&mut dyn ExitHandler) -> Result<Handled>,
) -> Result<bool> {
    for h in handlers.iter_mut() {
        if offer(&mut **h)? == Handled::Yes {
            return Ok(true);
        }
    }
    Ok(false)
}

fn msr(
    handlers: &mut [&mut dyn ExitHandler],
    mut offer: impl FnMut(&mut dyn ExitHandler) -> Result<MsrAnswer>,
) -> Result<MsrAnswer> {
    for h in handlers.iter_mut() {
        let answer = offer(&mut **h)?;
        if answer != MsrAnswer::NotMine {
            return Ok(answer);
        }
    }
    Ok(MsrAnswer::NotMine)
}

/// Carries out the hypercall whose parameter block is at `gpa`.
fn hypercall(ctx: &mut VcpuCtx<'_>, handlers: &mut [&mut dyn ExitHandler], gpa: u64) -> Result<()> {
    use pvagent_abi::hypercall::{REQUEST_ALIGN, Request, Status};
    if !gpa.is_multiple_of(REQUEST_ALIGN) {
        return Err(Error::MisalignedHypercallBlock { gpa, align: REQUEST_ALIGN });
    }
    // A copy: the guest's other vCPUs could change the block while the host reads it.
    let request =
        memory::read_plain::<Request>(ctx.mem, gpa).map_err(|source| Error::ReadHypercallBlock { gpa, source })?;
    ctx.hypercall_block = Some(gpa);
    let mut answer = None;
    for h in handlers.iter_mut() {
        answer = h.hypercall(ctx, request.nr, request.args)?;
        if answer.is_some() {
            break;
        }
    }
    // A handler that took the answer over (`VcpuCtx::answer_after_exit`) writes it later.
    if ctx.hypercall_block.take().is_none() {
        return Ok(());
    }
    write_hypercall_answer(ctx.mem, gpa, answer.unwrap_or(Err(Status::UnknownNr)))
}

/// Writes a hypercall's answer into its parameter block at `gpa` (`status` and `ret`; the
/// guest's fields as it left them).
pub(crate) fn write_hypercall_answer(
    mem: &GuestMemoryMmap,
    gpa: u64,
    answer: crate::handler::HypercallResult,
) -> Result<()> {
    use pvagent_abi::hypercall::{Request, Status};
    let mut request =
        memory::read_plain::<Request>(mem, gpa).map_err(|source| Error::ReadHypercallBlock { gpa, source })?;
    match answer {
        Ok(ret) => {
            request.status = Status::Ok as u32;
            request.ret = ret;
        }
        Err(status) => request.status = status as u32,
    }
    memory::write_plain(mem, gpa, request).map_err(|source| Error::WriteHypercallBlock { gpa, source })
}

#[cfg(test)]
mod tests;
