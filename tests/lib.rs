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
