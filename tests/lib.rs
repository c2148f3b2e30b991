//! Helpers shared by the end-to-end tests: the guest image (built once per test process), runs
//! under the host stub library and under QEMU, and hand-made guest images for the host's
//! error paths.
//!
//! These tests need `/dev/kvm` and QEMU. Where either is missing they fail with a message that
//! says so: an end-to-end test never skips silently.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pvagent_host::producers::Producers;
use pvagent_host::{Config, RunResult, SerialSink, Vm};
use xtask::qemu::{self, Accel, QemuRun};

/// The guest ELF, built once per test process.
pub fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| match xtask::guest::build_guest(xtask::Profile::Dev) {
        Ok(path) => path,
        Err(e) => panic!("cannot build the guest: {e}"),
    })
}

/// Panics with a clear message when this machine cannot run the host stub.
pub fn require_kvm() {
    if let Err(e) = xtask::setup::check_kvm() {
        panic!("end-to-end tests need KVM: {e}");
    }
}

/// A host stub configuration for `image` with a quiet console.
pub fn config(image: &Path, cmdline: &str) -> Config {
    let mut config = Config::new(image);
    config.cmdline = cmdline.to_string();
    config.serial = SerialSink::Quiet;
    config.timeout = Some(Duration::from_secs(120));
    config
}

/// The page-not-present self-tests that need the pager in ring mode at boot: in the other
/// modes they skip, saying so.
pub const PNP_RING_ONLY: &[&str] = &[
    "pnp::failed_page_ends_only_its_task",
    "pnp::failed_page_touched_again_fails_again_until_the_host_has_it",
    "pnp::events_with_and_without_a_linear_address_are_handled_alike",
    "pnp::busy_event_area_sends_the_next_accesses_down_the_sync_path",
    "pnp::a_token_past_its_deadline_is_reported",
];

/// The self-tests that skip on PVM, saying why: the one that needs a vector shown in service
/// (PVM's local APIC shows none inside a handler).
pub const PVM_SKIPS: &[&str] = &["pnp::in_service_vector_access_takes_the_sync_path"];

/// Runs the guest under the host stub library with every producer at its defaults.
pub fn run_stub(cmdline: &str) -> RunResult {
    run_stub_with(cmdline, &Producers::defaults())
}

/// Runs the guest under the host stub library with these producers.
pub fn run_stub_with(cmdline: &str, producers: &Producers) -> RunResult {
    run_stub_configured(config(guest_elf(), cmdline), producers)
}

/// Runs under the host stub library with this configuration (e.g. [`config`] plus a trace
/// file) and these producers.
pub fn run_stub_configured(config: Config, producers: &Producers) -> RunResult {
    require_kvm();
    let producers = producers.build().unwrap_or_else(|e| panic!("the producers could not be set up: {e}"));
    match Vm::new(config, producers) {
        Ok(vm) => vm.run(),
        Err(e) => panic!("the host stub could not start the guest: {e}"),
    }
}

/// Runs the guest under QEMU TCG.
pub fn run_qemu(cmdline: &str) -> QemuRun {
    match qemu::run(guest_elf(), Accel::Tcg, cmdline, Duration::from_secs(120), false) {
        Ok(run) => run,
        Err(e) => panic!("QEMU run failed: {e}"),
    }
}

/// Runs the guest under QEMU with KVM (on these machines, KVM's PVM module: firmware and all
/// run emulated, seconds to boot).
pub fn run_qemu_kvm(cmdline: &str) -> QemuRun {
    require_kvm();
    match qemu::run(guest_elf(), Accel::Kvm, cmdline, Duration::from_secs(120), false) {
        Ok(run) => run,
        Err(e) => panic!("QEMU run failed: {e}"),
    }
}

/// A minimal ELF64 image with `code` at 1 MiB (see `pvagent_host::test_images::tiny_pvh_image`).
pub use pvagent_host::test_images::tiny_pvh_image as tiny_elf;

/// A path for file `name` in the test process's temporary directory (created).
pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pvagent-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the temporary directory");
    dir.join(name)
}

/// Writes `bytes` to a fresh file in the test's temporary directory.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, bytes).expect("write the temporary file");
    path
}

/// A few 32-bit instructions, assembled by hand for [`tiny_elf`] images: the host stub's edges
/// are reached with a handful of MSR, port and memory accesses, no kernel needed. The code runs
/// at the PVH entry: 32-bit protected mode, paging off, flat segments, interrupts off.
#[derive(Clone, Debug, Default)]
pub struct Code32(Vec<u8>);

impl Code32 {
    /// Empty code.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw bytes `bytes` (an instruction this builder has no method for).
    pub fn emit(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn imm32(self, opcode: &[u8], value: u32) -> Self {
        self.emit(opcode).emit(&value.to_le_bytes())
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `code` appended.
    pub fn then(self, code: Code32) -> Self {
        self.emit(&code.0)
    }

    /// `jmp short` over the next `bytes` bytes.
    pub fn skip(self, bytes: u8) -> Self {
        assert!(bytes < 0x80, "a short jump reaches 127 bytes");
        self.emit(&[0xEB, bytes])
    }

    /// `mov eax, value`
    pub fn mov_eax(self, value: u32) -> Self {
        self.imm32(&[0xB8], value)
    }

    /// `or eax, value`
    pub fn or_eax(self, value: u32) -> Self {
        self.imm32(&[0x0D], value)
    }

    /// `mov ecx, ecx_value; mov edx, edx_value` (SYSEXIT's ESP and EIP)
    pub fn imm_ecx_edx(self, ecx_value: u32, edx_value: u32) -> Self {
        self.imm32(&[0xB9], ecx_value).imm32(&[0xBA], edx_value)
    }

    /// `mov esp, value`
    pub fn mov_esp(self, value: u32) -> Self {
        self.imm32(&[0xBC], value)
    }

    /// `lgdt [addr]`
    pub fn lgdt(self, addr: u32) -> Self {
        self.imm32(&[0x0F, 0x01, 0x15], addr)
    }

    /// `lidt [addr]`
    pub fn lidt(self, addr: u32) -> Self {
        self.imm32(&[0x0F, 0x01, 0x1D], addr)
    }

    /// `mov ecx, msr; mov eax, low; mov edx, high; wrmsr`
    pub fn wrmsr(self, msr: u32, value: u64) -> Self {
        self.imm32(&[0xB9], msr).mov_eax(value as u32).imm32(&[0xBA], (value >> 32) as u32).emit(&[0x0F, 0x30])
    }

    /// `mov ecx, msr; rdmsr` (the value in EDX:EAX)
    pub fn rdmsr(self, msr: u32) -> Self {
        self.imm32(&[0xB9], msr).emit(&[0x0F, 0x32])
    }

    /// The guest's ABI version announced to the host stub (`MSR_GUEST_VERSION`).
    pub fn announce(self, version: pvagent_abi::AbiVersion) -> Self {
        self.wrmsr(pvagent_abi::version::MSR_GUEST_VERSION, u64::from(version.to_raw()))
    }

    /// `mov dx, port; out dx, eax`
    pub fn out_eax(self, port: u16) -> Self {
        self.emit(&[0x66, 0xBA]).emit(&port.to_le_bytes()).emit(&[0xEF])
    }

    /// `mov eax, value; mov dx, port; out dx, eax`
    pub fn out(self, port: u16, value: u32) -> Self {
        self.mov_eax(value).out_eax(port)
    }

    /// `mov dx, port; in eax, dx`
    pub fn in_eax(self, port: u16) -> Self {
        self.emit(&[0x66, 0xBA]).emit(&port.to_le_bytes()).emit(&[0xED])
    }

    /// `mov eax, [addr]`
    pub fn load(self, addr: u32) -> Self {
        self.imm32(&[0xA1], addr)
    }

    /// `mov [addr], eax`
    pub fn store_eax(self, addr: u32) -> Self {
        self.imm32(&[0xA3], addr)
    }

    /// `mov eax, value; mov [addr], eax`
    pub fn store(self, addr: u32, value: u32) -> Self {
        self.mov_eax(value).store_eax(addr)
    }

    /// Hypercall `nr` with `args[0] = arg` (the other arguments 0, as RAM starts), its request
    /// block at `block` in RAM; leaves the status the host wrote in EAX.
    pub fn hypercall(self, block: u32, nr: u32, arg: u32) -> Self {
        self.store(block, nr)
            .store(block + 8, arg)
            .out(pvagent_abi::port::HYPERCALL, block)
            .load(block + std::mem::offset_of!(pvagent_abi::hypercall::Request, status) as u32)
    }

    /// `nop`s up to `offset` bytes (where a handler the code's IDT names begins).
    pub fn pad_to(self, offset: usize) -> Self {
        assert!(self.0.len() <= offset, "the code is {} bytes, past {offset}", self.0.len());
        let nops = vec![0x90; offset - self.0.len()];
        self.emit(&nops)
    }

    /// `mov eax, [esp + offset]`: a word of the interrupt frame (0: EIP, 4: CS, 8: EFLAGS).
    pub fn load_stack(self, offset: u8) -> Self {
        self.emit(&[0x8B, 0x44, 0x24, offset])
    }

    /// `cmp eax, value; je over`, then `code` to the exit port: the run stops with `code`
    /// unless EAX holds `value`.
    pub fn expect_eax(self, value: u32, code: u32) -> Self {
        let exit = Code32::new().mov_eax(code).exit_eax();
        self.imm32(&[0x3D], value).emit(&[0x74, exit.len() as u8]).then(exit)
    }

    /// A flat GDT (code `0x08`, data `0x10`, as at the PVH entry) and an IDT of 32-bit interrupt
    /// gates for `gates` (vector, handler address), both built at `tables` (a page of zeroed
    /// RAM) and loaded: the PVH entry state has neither in memory, and delivering an exception
    /// needs both.
    pub fn flat_tables(mut self, tables: u32, gates: &[(u8, u32)]) -> Self {
        let (gdt, idt, gdtr, idtr) = (tables, tables + 0x100, tables + 0x80, tables + 0x90);
        for (i, descriptor) in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF].into_iter().enumerate() {
            let at = gdt + 8 * i as u32;
            self = self.store(at, descriptor as u32).store(at + 4, (descriptor >> 32) as u32);
        }
        for &(vector, handler) in gates {
            let at = idt + 8 * u32::from(vector);
            self = self.store(at, (0x08 << 16) | (handler & 0xFFFF)).store(at + 4, (handler & 0xFFFF_0000) | 0x8E00);
        }
        // Pseudo-descriptors: a 16-bit limit, then the 32-bit base.
        self.store(gdtr, (gdt << 16) | 23)
            .store(gdtr + 4, gdt >> 16)
            .store(idtr, (idt << 16) | (256 * 8 - 1))
            .store(idtr + 4, idt >> 16)
            .lgdt(gdtr)
            .lidt(idtr)
    }

    /// `sti; nop`: interrupts on, and past STI's one-instruction shadow.
    pub fn sti(self) -> Self {
        self.emit(&[0xFB, 0x90])
    }

    /// Writes EAX to the exit port and stops there (`jmp $`).
    pub fn exit_eax(self) -> Self {
        self.out_eax(pvagent_abi::port::DEBUG_EXIT).emit(&[0xEB, 0xFE])
    }

    /// Writes EAX to the exit port and stops there: the finished code.
    pub fn exit_with_eax(self) -> Vec<u8> {
        self.exit_eax().0
    }

    /// Spins there (`jmp $`) until the host stops the run: the finished code.
    pub fn spin(self) -> Vec<u8> {
        self.emit(&[0xEB, 0xFE]).0
    }

    /// Returns from an interrupt handler (`iret`): the finished code.
    pub fn iret(self) -> Vec<u8> {
        self.emit(&[0xCF]).0
    }

    /// Writes `code` to the exit port and stops there.
    pub fn exit(self, code: u32) -> Vec<u8> {
        self.mov_eax(code).exit_with_eax()
    }
}

/// The threads this process has now that are not exiting (`/proc/self/task`). A thread that
/// was joined can still be listed for a moment: joining waits for the kernel to clear its id,
/// which it does partway through the thread's exit; by then the thread carries `PF_EXITING`,
/// so it is not counted, and the count does not depend on how soon the kernel finishes.
pub fn thread_count() -> usize {
    /// `PF_EXITING` in the flags of `/proc/<pid>/task/<tid>/stat` (include/linux/sched.h).
    const PF_EXITING: u64 = 0x4;
    let exiting = |stat: &str| {
        // After the command name's closing parenthesis: state, ppid, pgrp, session, tty_nr,
        // tpgid, flags.
        let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        fields.split_whitespace().nth(6).and_then(|f| f.parse::<u64>().ok()).is_none_or(|f| f & PF_EXITING != 0)
    };
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter(|stat| !exiting(stat))
        .count()
}

/// For a test that counts the process's threads, which other tests running beside it would
/// change: `true` in a process of the test's own (this test binary run again with only test
/// `name`, on one test thread), where the caller does the work; `false` in the first process,
/// after that child ran and passed (its output is shown if it failed).
pub fn alone_in_a_process(name: &str) -> bool {
    const CHILD: &str = "PVAGENT_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--test-threads", "1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the test in a process of its own");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name}, alone in a process:\n{text}");
    assert!(text.contains("1 passed"), "{name} did not run alone in its process:\n{text}");
    false
}

/// The token deadline's reports (`pv::deadline`) in a run's console, other than those of the
/// deadline self-tests' own reader (which waits past a short deadline on purpose), that came
/// before their wait was past the deadline: a report must name a wait that really lasted that
/// long. A report of a wait that did (a machine so slow that a fetch took 10 s) is the guest
/// telling the truth, not a failure: the deadline only reports.
pub fn early_deadline_reports(r: &RunResult) -> Vec<&String> {
    let ms_after = |line: &str, words: &str| -> Option<u64> {
        let rest = &line[line.find(words)? + words.len()..];
        rest.split(' ').next()?.parse().ok()
    };
    r.serial
        .iter()
        .filter(|l| l.starts_with("deadline: vCPU") && !l.contains(" \"deadline-reader\")"))
        .filter(|l| match (ms_after(l, "has waited "), ms_after(l, "past the deadline of ")) {
            (Some(waited), Some(deadline)) => waited < deadline,
            _ => true,
        })
        .collect()
}
