//! Helpers shared by the end-to-end tests: the guest image (built once per test process), runs
//! under the host stub library and under QEMU, and hand-made guest images for the host's
//! error paths.
//!
//! These tests need `/dev/kvm` and QEMU. Where either is missing they fail with a message that
//! says so: an end-to-end test never skips silently.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pvagent_host::{Config, ExitHandler, RunResult, SerialSink, Vm};
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

/// Runs the guest under the host stub library, with the default producers (as
/// `cargo xtask run` does).
pub fn run_stub(cmdline: &str) -> RunResult {
    run_stub_with(cmdline, pvagent_host::producers::defaults())
}

/// Runs the guest under the host stub library with these producers.
pub fn run_stub_with(cmdline: &str, producers: Vec<Box<dyn ExitHandler>>) -> RunResult {
    require_kvm();
    match Vm::new(config(guest_elf(), cmdline), producers) {
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

/// Builds a minimal ELF64 image: `code` loaded at 1 MiB (entry there), with a PVH note unless
/// `pvh_note` is false, and `extra_memsz` bytes of zero-fill after the code.
pub fn tiny_elf(code: &[u8], pvh_note: bool, extra_memsz: u64) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let phnum: u16 = if pvh_note { 2 } else { 1 };
    let code_off = 64 + 56 * u64::from(phnum);
    let note_off = code_off + code.len() as u64;
    let note: Vec<u8> = [4u32, 4, pvagent_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .chain(*b"Xen\0")
        .chain((LOAD as u32).to_le_bytes())
        .collect();
    let mut b = Vec::new();
    // ELF header.
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, phnum, 64, 0, 0] {
        b.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    let mut phdr = |p_type: u32, flags: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        b.extend_from_slice(&p_type.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        for v in [off, addr, addr, filesz, memsz, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, 5, code_off, LOAD, code.len() as u64, code.len() as u64 + extra_memsz);
    if pvh_note {
        phdr(4, 4, note_off, 0, note.len() as u64, note.len() as u64);
    }
    b.extend_from_slice(code);
    if pvh_note {
        b.extend_from_slice(&note);
    }
    b
}

/// Writes `bytes` to a fresh file in the test's temporary directory.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pvagent-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the temporary directory");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the temporary file");
    path
}
