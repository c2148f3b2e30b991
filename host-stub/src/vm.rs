//! One virtual machine: KVM objects, guest memory, the loaded guest, the devices and the event
//! producers. `Vm::new` sets everything up (every failure is a clear `Error`); `Vm::run` runs
//! the guest to its end and reports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap, kvm_segment,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use pvagent_abi::cpuid::Features;
use vm_memory::GuestMemoryMmap;

use crate::bench::{Bench, bare_loop};
use crate::config::Config;
use crate::cpuid::{CpuidTable, Topology};
use crate::devices::{Basics, debug_exit::DebugExit, serial::Serial, trace::TracePort};
use crate::error::{Error, Result};
use crate::handler::{AttachCtx, ExitHandler, Report, Stop};
use crate::kvm_stats::VcpuStats;
use crate::layout::table::{Backing, Layout, Region};
use crate::layout::{FIRST_LAYOUT_SLOT, LayoutHandle};
use crate::loader::{self, Loaded};
use crate::memory::{self, START_INFO_GPA};
use crate::memory_fault;
use crate::report::RunResult;
use crate::trace::{self, Tracer};
use crate::vcpu::{SharedHandlers, Vcpu};
use crate::watchdog::{self, VcpuThreads, Watchdog};

/// Where KVM may put its real-mode TSS (three pages below 4 GiB, outside guest RAM).
const TSS_ADDRESS: usize = 0xFFFB_D000;
/// PVH's initial segment selectors (any values work; these match the guest's boot GDT).
const BOOT_CS: u16 = 0x08;
const BOOT_DS: u16 = 0x10;

/// A VM ready to run.
pub struct Vm {
    // Field order is drop order: the vCPU and VM fds close before guest memory is unmapped.
    /// vCPU `i` has local APIC ID `i`; vCPU 0 is the boot processor.
    vcpus: Vec<Vcpu>,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    mem: GuestMemoryMmap,
    serial: Serial,
    debug_exit: DebugExit,
    basics: Basics,
    /// The benchmark device, only when the configuration asks for it.
    bench: Option<Bench>,
    trace_port: TracePort,
    producers: Vec<Box<dyn ExitHandler>>,
    /// The run's timeline, and the file it goes to (created up front, so a bad path fails
    /// before the run rather than after it).
    tracer: Tracer,
    trace_file: Option<std::fs::File>,
    loaded: Loaded,
    config: Config,
    setup_time: Duration,
    /// Why the vCPUs have no KVM statistics, when they have none.
    stats_missing: Option<std::io::Error>,
    /// KVM_CAP_MEMORY_FAULT_INFO (reported, never enabled: it only informs).
    memory_fault_info: bool,
    /// The vCPU threads of the run (for stopping them, and for holding them in a layout update).
    threads: Arc<VcpuThreads>,
    /// The memslots, for changing them while the guest runs.
    layout: LayoutHandle,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("config", &self.config).field("loaded", &self.loaded).finish_non_exhaustive()
    }
}

fn require(kvm: &Kvm, cap: Cap, name: &'static str) -> Result<()> {
    if kvm.check_extension(cap) { Ok(()) } else { Err(Error::MissingCapability(name)) }
}

impl Vm {
    /// Creates the VM, loads the guest and prepares its vCPU; `producers` are the event
    /// producers this run uses (usually [`crate::Producers::build`]'s, plus any of one's own).
    /// Every failure is an [`Error`] with a one-line message: `/dev/kvm` missing or not
    /// permitted, a KVM capability missing, a bad image, a configuration out of range.
    ///
    /// ```no_run
    /// let config = pvagent_host::Config::new("target/x86_64-unknown-none/debug/pvagent-guest");
    /// let vm = pvagent_host::Vm::new(config, pvagent_host::Producers::defaults().build()?)?;
    /// std::process::exit(vm.run().exit_status());
    /// # Ok::<(), pvagent_host::Error>(())
    /// ```
    pub fn new(config: Config, mut producers: Vec<Box<dyn ExitHandler>>) -> Result<Self> {
        let start = Instant::now();
        config.validate()?;
        let (tracer, trace_file) = match &config.trace {
            Some(path) => {
                let file = crate::files::open_output(path, crate::files::OutputMode::Truncate)
                    .map_err(|source| Error::CreateTraceFile { path: path.clone(), source })?;
                (Tracer::start(trace::MAX_EVENTS), Some(file))
            }
            None => (Tracer::off(), None),
        };
        let kvm = Kvm::new().map_err(Error::open_kvm)?;
        require(&kvm, Cap::Irqchip, "KVM_CAP_IRQCHIP")?;
        require(&kvm, Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR")?;
        require(&kvm, Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI")?;
        require(&kvm, Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS")?;
        watchdog::install_handler()?;

        let mem_size = config.mem_bytes();
        let mem = memory::allocate_ram(mem_size)?;
        // The image is checked before KVM is asked for anything, so bad input fails fast.
        let image = loader::read_image(&config.guest, mem_size)?;
        let serial = Serial::new(&config.serial, config.pv_console)?;

        let vm = Arc::new(kvm.create_vm().map_err(Error::CreateVm)?);
        vm.set_tss_address(TSS_ADDRESS).map_err(Error::SetTssAddress)?;
        vm.create_irq_chip().map_err(Error::CreateIrqChip)?;
        let next_slot = memory::register(&vm, &mem, 0)?;
        let memory_fault_info = memory_fault::fault_info_reported(&kvm);
        let threads = Arc::new(VcpuThreads::default());
        let layout = LayoutHandle::new(
            vm.clone(),
            threads.clone(),
            ram_layout(&mem, CpuidTable::supported(&kvm)?.phys_addr_bits())?,
        );
        let mut attach = AttachCtx {
            kvm: &kvm,
            vm: &vm,
            ram: &mem,
            ram_size: mem_size,
            memmap: Vec::new(),
            trace: tracer.clone(),
            next_slot,
            vcpus: config.vcpus,
            siblings: config.siblings(),
            memory_fault_info,
            layout: layout.clone(),
        };
        for p in &mut producers {
            p.attach(&mut attach)?;
        }
        let extra_memmap = attach.memmap;
        let loaded = loader::load(&config.guest, &image, &mem, mem_size, &config.cmdline, &extra_memmap, config.vcpus)?;
        let user_msrs = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&user_msrs).map_err(|e| Error::EnableCap("KVM_CAP_X86_USER_SPACE_MSR", e))?;
        let intercepted: Vec<u32> = producers.iter().flat_map(|p| p.intercepted_msrs()).collect();
        if !intercepted.is_empty() {
            require(&kvm, Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER")?;
            deny_in_kvm(&vm, &intercepted)?;
        }

        let topology = Topology { vcpus: config.vcpus as u32, threads_per_core: config.threads_per_core };
        let mut vcpus = Vec::with_capacity(config.vcpus);
        let mut stats_missing = None;
        for index in 0..config.vcpus {
            // KVM's vcpu_id is the vCPU's initial local APIC ID; vCPU 0 starts runnable, the
            // others wait for the guest's INIT and SIPI.
            let fd = vm.create_vcpu(index as u64).map_err(Error::CreateVcpu)?;
            // KVM's own counts of what the guest cost (KVM 5.14 and later): reported after every
            // run, and the snapshots milestones and benchmark windows take. Without them the run
            // goes on and says so.
            let stats = match VcpuStats::open(&fd) {
                Ok(stats) => Some(stats),
                Err(e) => {
                    stats_missing.get_or_insert(e);
                    None
                }
            };
            let tsc_khz = fd.get_tsc_khz().unwrap_or(0);
            let mut cpuid = CpuidTable::supported(&kvm)?;
            // The guest reports its side of the timeline only when asked: the bit costs an exit
            // per task switch.
            let trace_bit = if tracer.is_on() { Features::TRACE } else { 0 };
            let console_bit = if config.pv_console { Features::CONSOLE } else { 0 };
            let features = Features::HYPERCALL | console_bit | trace_bit;
            cpuid.install_host_stub_leaves(config.abi_version, Features(features), tsc_khz);
            cpuid.set_topology(crate::vcpu::apic_id(index), topology);
            for p in &producers {
                p.cpuid(&mut cpuid);
            }
            fd.set_cpuid2(&cpuid.to_kvm()?).map_err(Error::SetCpuid)?;
            if index == 0 {
                set_pvh_entry_state(&fd, loaded.entry)?;
            }
            vcpus.push(Vcpu {
                index,
                fd,
                exits: 0,
                unclaimed: Default::default(),
                stats,
                trace: tracer.clone(),
                trace_console: config.trace_console,
                entries: 0,
                after_exit: Vec::new(),
                fault_guard: Default::default(),
                layout: layout.clone(),
                span: Default::default(),
            });
        }
        // KVM routes an interrupt by its destination APIC ID through a map it rebuilds when a
        // local APIC changes; the map built while the last vCPU was being created leaves that
        // vCPU out (it was not online yet), and an INIT or SIPI sent to its ID then reaches no
        // one (measured here: with N vCPUs, vCPU N-1 never started). Writing a local APIC's
        // state back unchanged rebuilds the map with every vCPU in it.
        if let Some(last) = vcpus.last().filter(|_| config.vcpus > 1) {
            let lapic = last.fd.get_lapic().map_err(Error::GetLapic)?;
            last.fd.set_lapic(&lapic).map_err(Error::SetLapic)?;
        }

        let bench = config.bench.then(|| {
            let page_events = producers.iter().find_map(|p| p.page_event_injector());
            Bench::new(vm.clone(), config.vcpus, tracer.clone(), page_events, config.bench_window_stats)
        });
        Ok(Self {
            vcpus,
            stats_missing,
            vm,
            _kvm: kvm,
            mem,
            serial,
            debug_exit: DebugExit,
            basics: Basics::new(config.abi_version),
            bench,
            trace_port: TracePort::new(tracer.clone()),
            producers,
            tracer,
            trace_file,
            loaded,
            config,
            setup_time: start.elapsed(),
            memory_fault_info,
            threads,
            layout,
        })
    }

    /// Runs the guest until it exits, fails, or times out.
    pub fn run(mut self) -> RunResult {
        let start = Instant::now();
        self.basics.run_starts(start);
        let unblockers =
            self.producers.iter().filter_map(|p| p.unblocker()).chain(ExitHandler::unblocker(&self.serial)).collect();
        let threads = self.threads.clone();
        let watchdog = Watchdog::arm(self.config.timeout, unblockers, threads.clone());
        // This thread runs vCPU 0 for the whole run (the bare loop too): the producers that
        // signal "the" vCPU thread signal this one, which outlives them.
        let registered = threads.register(0);
        let mut bare = bare_loop::BareStats::default();
        let outcome = loop {
            let outcome = {
                // The basics before every handler of the host stub's own interfaces (the console's
                // port among them): until the guest announced its version, they answer for them
                // all (`devices::Basics`).
                let mut handlers: Vec<&mut dyn ExitHandler> =
                    vec![&mut self.debug_exit, &mut self.basics, &mut self.serial];
                if let Some(bench) = self.bench.as_mut() {
                    handlers.push(bench);
                }
                handlers.push(&mut self.trace_port);
                handlers.push(&mut self.layout);
                handlers.extend(self.producers.iter_mut().map(|p| p.as_mut() as &mut dyn ExitHandler));
                let handlers = Mutex::new(handlers);
                run_vcpus(&mut self.vcpus, &self.vm, &self.mem, &handlers, &watchdog, &threads)
            };
            // A benchmark's baseline: some exits in the bare loop, then back here. Only the
            // bench device stops the loop for it, and only with one vCPU (`bench::device`).
            if let Ok(Stop::BareLoop) = outcome {
                let since = Instant::now();
                let vcpu = &mut self.vcpus[0];
                let ended = bare_loop::run(&mut vcpu.fd, &self.mem, &mut self.serial, &watchdog, &mut bare);
                let track = crate::trace::Track::Vcpu(vcpu.index);
                self.tracer.complete(track, "bare loop (benchmark baseline)", since, Instant::now(), Vec::new);
                match ended {
                    Ok(bare_loop::BareEnd::SwitchedBack) => continue,
                    Ok(bare_loop::BareEnd::GuestExit(code)) => break Ok(Stop::GuestExit(code)),
                    Err(e) => break Err(e),
                }
            }
            break outcome;
        };
        drop(registered);
        // A run that went on past its deadline still ran out of time: at the deadline the
        // unblockers let a fault waiting inside KVM go on, and the guest may reach its exit
        // before the watchdog's signal reaches the vCPU.
        let outcome = outcome.and_then(|stop| watchdog.check().map(|()| stop));
        drop(watchdog);
        let end = Instant::now();
        let elapsed = end - start;
        self.trace_port.end_of_run(end);

        let mut report = Report::default();
        let fatal = outcome.as_ref().err().is_some_and(Error::is_guest_fault);
        let (outcome, mut error) = match outcome {
            Ok(stop) => (Some(stop), None),
            Err(e) => (None, Some(e)),
        };
        let mut finish = |h: &mut dyn ExitHandler, report: &mut Report| {
            if let Err(e) = h.finish(report) {
                report.line(e.to_string());
                error.get_or_insert(e);
            }
        };
        finish(&mut self.serial, &mut report);
        finish(&mut self.basics, &mut report);
        if let Some(bench) = self.bench.as_mut() {
            finish(bench, &mut report);
            report.counter("bare", "exits", bare.exits);
            report.counter("bare", "run_us", bare.time.as_micros() as u64);
        }
        finish(&mut self.trace_port, &mut report);
        for p in &mut self.producers {
            finish(p.as_mut(), &mut report);
        }
        // Last: the producers' `finish` stopped their threads, so nothing records any more.
        if let (Some(file), Some(path)) = (self.trace_file.take(), self.config.trace.as_ref()) {
            match write_trace(&self.tracer, file, path, start, end) {
                Ok(written) => {
                    report.line(format!(
                        "trace: {} events written to {} (open it at https://ui.perfetto.dev){}",
                        written.events,
                        path.display(),
                        if self.config.trace_console { "" } else { "; the console's exits left out" }
                    ));
                    if written.dropped > 0 {
                        report.line(format!(
                            "trace: {} events dropped: a trace keeps at most {} (the file says so too)",
                            written.dropped, written.cap
                        ));
                    }
                    report.counter("trace", "events_written", written.events as u64);
                    report.counter("trace", "events_dropped", written.dropped);
                }
                Err(e) => {
                    report.line(e.to_string());
                    error.get_or_insert(e);
                }
            }
        }
        self.report_kvm_stats(&mut report);
        for vcpu in &self.vcpus {
            let name = format!("vcpu{}", vcpu.index);
            report.counter(&name, "exits", vcpu.exits);
            report.counter(&name, "unclaimed_io", vcpu.unclaimed.io);
            report.counter(&name, "unclaimed_mmio", vcpu.unclaimed.mmio);
            report.counter(&name, "unclaimed_msr", vcpu.unclaimed.msr);
        }
        report.counter("host", "memory_fault_info_cap", u64::from(self.memory_fault_info));
        self.layout.report(&mut report);
        report.counter("host", "setup_us", self.setup_time.as_micros() as u64);
        report.counter("host", "run_us", elapsed.as_micros() as u64);
        if let Some(kib) = peak_rss_kib() {
            report.counter("host", "peak_rss_kib", kib);
        }

        let guest_exit_code = match outcome {
            Some(Stop::GuestExit(code)) => Some(code),
            Some(Stop::BareLoop) | None => None,
        };
        let serial_tail = self.serial.tail(20);
        RunResult::new(
            guest_exit_code,
            self.serial.take_timed_lines(),
            report,
            error,
            fatal.then_some(serial_tail),
            self.setup_time,
            elapsed,
        )
    }
}

impl Vm {
    /// The VM's memory layout: change it while the guest runs ([`LayoutHandle::update`]) from
    /// any thread.
    pub fn layout(&self) -> LayoutHandle {
        self.layout.clone()
    }

    /// Puts KVM's statistics of each vCPU in the report: every one that is not 0, as
    /// `kvm.<name>` (`kvm.vcpu<N>.<name>` once there are several vCPUs).
    fn report_kvm_stats(&self, report: &mut Report) {
        let vcpus = &self.vcpus;
        for vcpu in vcpus {
            let handler = crate::kvm_stats::report_handler(vcpu.index, vcpus.len());
            let read = match (&vcpu.stats, &self.stats_missing) {
                (Some(stats), _) => stats.read_all(),
                (None, Some(why)) => Err(std::io::Error::new(why.kind(), why.to_string())),
                (None, None) => continue,
            };
            match read {
                Ok(stats) => {
                    for (name, value) in stats.iter().filter(|(_, v)| **v != 0) {
                        report.counter(&handler, name, *value);
                    }
                }
                Err(e) => report.line(format!("{handler}: KVM's statistics of vCPU {} unavailable: {e}", vcpu.index)),
            }
        }
    }
}

/// Runs every vCPU until one ends the run: vCPU 0 on the calling thread (registered in
/// `threads` by the caller), each other vCPU on a thread of its own, which calls KVM_RUN from the
/// start (KVM holds it until the guest's INIT and SIPI). The first vCPU to stop (a handler's
/// stop, such as the guest's exit code, or a failure) stops them all; every thread is joined
/// before this returns. A failure names its vCPU on a line of the report once there are several.
fn run_vcpus(
    vcpus: &mut [Vcpu],
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    handlers: &SharedHandlers<'_>,
    watchdog: &Watchdog,
    threads: &VcpuThreads,
) -> Result<Stop> {
    // The first vCPU to end the run, and how (`None` until one did).
    let first: Mutex<Option<(usize, Result<Stop>)>> = Mutex::new(None);
    let end = |index: usize, outcome: Result<Option<Stop>>| {
        let claimed = match outcome {
            Ok(None) => None,
            Ok(Some(stop)) => Some(Ok(stop)),
            Err(e) => Some(Err(e)),
        };
        if let Some(outcome) = claimed {
            first.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert((index, outcome));
        }
        threads.stop_all();
    };
    threads.resume();
    let several = vcpus.len() > 1;
    let Some((boot, aps)) = vcpus.split_first_mut() else { return Err(Error::VcpuCount { requested: 0, max: 0 }) };
    let aps_count = aps.len();
    std::thread::scope(|scope| {
        // Joined explicitly: the scope's own wait ends when each thread's closure returned, while
        // the thread itself may still be exiting, and a run leaves no thread behind.
        let mut spawned_threads = Vec::new();
        for vcpu in aps {
            let (index, end) = (vcpu.index, &end);
            let spawned = std::thread::Builder::new().name(format!("vcpu{index}")).spawn_scoped(scope, move || {
                let registered = threads.register(vcpu.index);
                let outcome = vcpu.run(vm, mem, handlers, watchdog, threads);
                drop(registered);
                end(vcpu.index, outcome);
            });
            match spawned {
                Ok(handle) => spawned_threads.push(handle),
                Err(e) => {
                    // The threads already started see the run stopping.
                    end(index, Err(Error::SpawnVcpuThread(e)));
                    break;
                }
            }
        }
        if spawned_threads.len() == aps_count {
            let outcome = boot.run(vm, mem, handlers, watchdog, threads);
            end(boot.index, outcome);
        }
        for handle in spawned_threads {
            if let Err(panic) = handle.join() {
                // A host stub bug on that thread: the scope would have panicked with it too.
                std::panic::resume_unwind(panic);
            }
        }
    });
    // A vCPU only sees the run stopping after another one ended it with an outcome.
    let Some((index, outcome)) = first.into_inner().unwrap_or_else(|p| p.into_inner()) else {
        return Err(Error::NoVcpuEndedTheRun);
    };
    outcome.map_err(|e| match e {
        Error::Timeout { .. } | Error::SpawnVcpuThread(_) => e,
        e if several => Error::OnVcpu { index, source: Box::new(e) },
        e => e,
    })
}

/// The layout of guest RAM as `memory::register` set it up: one slot per region, from slot 0.
/// `phys_bits`: the guest's physical address width, which no region may pass.
fn ram_layout(mem: &GuestMemoryMmap, phys_bits: u32) -> Result<Layout> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut layout = Layout::new(FIRST_LAYOUT_SLOT, phys_bits);
    let keep: Arc<dyn Send + Sync> = Arc::new(mem.clone());
    for (slot, region) in mem.iter().enumerate() {
        let gpa = region.start_addr().0;
        let host = mem.get_host_address(region.start_addr()).map_err(|source| Error::RamHostAddress { gpa, source })?;
        // SAFETY: the region's mapping lives as long as any clone of `mem`, which `keep` is.
        let backing = unsafe { Backing::new(host as u64, region.len(), Arc::clone(&keep)) };
        layout.adopt(slot as u32, Region { gpa, bytes: region.len(), backing, flags: 0 });
    }
    Ok(layout)
}

/// Writes the run's timeline to `file` (at `path`), timed from `run_start`; spans still open
/// end at `end`.
fn write_trace(
    tracer: &Tracer,
    file: std::fs::File,
    path: &std::path::Path,
    run_start: Instant,
    end: Instant,
) -> Result<trace::Written> {
    let mut out = std::io::BufWriter::new(file);
    tracer
        .write_json(&mut out, run_start, end)
        .map_err(|source| Error::WriteTraceFile { path: path.to_path_buf(), source })
}

/// Installs an MSR filter that allows everything except `msrs`, which KVM then refuses to
/// handle itself: each access exits to user space (KVM_MSR_EXIT_REASON_FILTER).
fn deny_in_kvm(vm: &VmFd, msrs: &[u32]) -> Result<()> {
    let ranges = msr_ranges(msrs);
    let max = kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize;
    if ranges.len() > max {
        return Err(Error::TooManyMsrRanges { ranges: ranges.len(), max });
    }
    // A clear bit denies the access; one zeroed bitmap covers the longest range.
    let longest = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let deny_all = vec![0u8; longest.div_ceil(8) as usize];
    let ranges: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .map(|&(base, msr_count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            bitmap: &deny_all,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges).map_err(Error::SetMsrFilter)
}

/// Groups MSR numbers into `(base, count)` runs of consecutive numbers.
fn msr_ranges(msrs: &[u32]) -> Vec<(u32, u32)> {
    let mut sorted = msrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for msr in sorted {
        match ranges.last_mut() {
            Some((base, count)) if base.checked_add(*count) == Some(msr) => *count += 1,
            _ => ranges.push((msr, 1)),
        }
    }
    ranges
}

/// The process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The vCPU state the PVH ABI prescribes at the 32-bit entry.
pub(crate) fn set_pvh_entry_state(fd: &kvm_ioctls::VcpuFd, entry: u64) -> Result<()> {
    let mut sregs = fd.get_sregs().map_err(Error::GetSregs)?;
    let code = kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: BOOT_CS,
        type_: 0xB, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 1, // 32-bit
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment { selector: BOOT_DS, type_: 0x3, ..code }; // read/write, accessed
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    fd.set_sregs(&sregs).map_err(Error::SetSregs)?;
    let mut regs = fd.get_regs().map_err(Error::GetRegs)?;
    regs.rip = entry;
    regs.rflags = 0x2;
    regs.rbx = START_INFO_GPA;
    fd.set_regs(&regs).map_err(Error::SetRegs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intercepted_msrs_become_runs_of_consecutive_numbers() {
        assert_eq!(msr_ranges(&[0xCF, 0x33]), vec![(0x33, 1), (0xCF, 1)]);
        assert_eq!(msr_ranges(&[0x5056_4101, 0x5056_4100, 0x5056_4102, 0x33, 0x33]), vec![(0x33, 1), (0x5056_4100, 3)]);
        assert_eq!(msr_ranges(&[u32::MAX, u32::MAX - 1]), vec![(u32::MAX - 1, 2)]);
        assert!(msr_ranges(&[]).is_empty());
    }
}
