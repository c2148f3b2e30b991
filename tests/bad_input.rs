//! End-to-end tests of the host stub binary against input and output it cannot use: special
//! files as its inputs and outputs (a FIFO, a device, a directory), a backing image of the wrong
//! length, and write errors on stdout and on its output files (a closed pipe, a full disk). Each
//! ends at once with one line on stderr naming the file and the real cause, or, for a closed
//! stdout, quietly as a pipe's writer does; none panics, hangs or reports success after losing
//! output.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use pvagent_abi::exit;
use pvagent_tests::{Code32, guest_elf, require_kvm, temp_file, temp_path, tiny_elf};

/// The host stub binary, built once per test process.
fn host() -> &'static Path {
    static HOST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOST.get_or_init(|| xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub"))
}

/// A guest that exits with success at once.
fn quick_guest() -> PathBuf {
    temp_file("bad-input-quick.elf", &tiny_elf(&Code32::new().exit(exit::SUCCESS), true, 0))
}

/// Runs the host stub with `args` and `stdout`, its stdin empty; returns its status and stderr.
/// The limit only turns a hang into a failure (the child is killed then): every case here ends
/// in well under a second, or in a run of a few self-tests.
fn run(args: &[&str], stdout: Stdio) -> (ExitStatus, String) {
    require_kvm();
    let mut child = Command::new(host())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the host stub");
    let mut stderr = child.stderr.take().expect("stderr");
    let pid = child.id() as libc::pid_t;
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: kill has no memory preconditions; `pid` is the child, not yet reaped
            // (the main thread reaps it only after this thread is told to stop).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut text = String::new();
    stderr.read_to_string(&mut text).expect("read stderr");
    let status = child.wait().expect("wait for the host stub");
    drop(done_tx);
    guard.join().expect("the guard thread");
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    (status, text)
}

/// Asserts that the run failed with status 2 and exactly one stderr line, which contains `what`.
fn refused(args: &[&str], stdout: Stdio, what: &str) {
    let (status, stderr) = run(args, stdout);
    assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("pvagent-host: error: ") && stderr.contains(what), "{args:?}: {stderr}");
}

/// A FIFO in the test's temporary directory, which no process opens.
fn fifo(name: &str) -> PathBuf {
    let path = temp_path(name);
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{}", std::io::Error::last_os_error());
    path
}

/// The write end of a pipe whose read end is already closed: every write to it fails with
/// EPIPE, the state `| head -1` leaves once it has its line, without the race of when it closes.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

fn full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
}

/// A FIFO nobody writes, a device that never ends, a directory: as the guest image or the
/// backing image, each is refused before anything is read, naming what it is, with no wait for
/// `--timeout` (a FIFO once hung the binary for good, `/dev/zero` read until memory ran out, a
/// directory as the backing image was accepted and failed at the first fetch).
#[test]
fn inputs_that_are_not_regular_files_are_refused_by_kind_at_once() {
    let fifo = fifo("input.fifo");
    let fifo = fifo.to_str().expect("utf-8 path");
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("utf-8 path");
    let guest = quick_guest();
    let guest = guest.to_str().expect("utf-8 path");
    for (path, kind) in [(fifo, "a FIFO"), ("/dev/zero", "a character device"), (dir, "a directory")] {
        let what = format!("{path}: {kind}, not a regular file");
        refused(&[path, "--timeout", "600"], Stdio::null(), &format!("cannot read the guest image {what}"));
        refused(
            &[guest, "--timeout", "600", "--pnp-image", path],
            Stdio::null(),
            &format!("cannot use the backing image {what}"),
        );
    }
}

/// The backing image's rule (docs/abi.md): at most the region's length, its bytes the region's
/// first, zeros after them and the report says from which page; a longer one is refused with
/// both lengths, never cut silently.
#[test]
fn a_backing_image_longer_than_the_region_is_refused_and_a_shorter_one_reported() {
    let guest = quick_guest();
    let guest = guest.to_str().expect("utf-8 path");
    let long = temp_file("long.img", &vec![7u8; (1 << 20) + 1]);
    refused(
        &[guest, "--pnp-mib", "1", "--pnp-image", long.to_str().expect("utf-8 path")],
        Stdio::null(),
        "1048577 bytes, longer than the region's 1048576",
    );
    let short = temp_file("short.img", &vec![7u8; 3 * 4096 + 5]);
    let short = short.to_str().expect("utf-8 path");
    let out = Command::new(host()).args([guest, "--pnp-mib", "1", "--pnp-image", short]).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = format!(
        "host: pager: first contents from the image {short} (12293 bytes: the region's first 12293; the other 1036283 bytes, from page 3 on, read as zeros)"
    );
    assert!(stdout.lines().any(|l| l == line), "{stdout}");
}

/// Outputs that cannot be opened without waiting, or written: a FIFO no process reads is
/// refused before the run (it once waited for a reader for good), and a full disk fails the run
/// with the file named, even though the guest passed.
#[test]
fn output_files_that_cannot_be_written_fail_the_run_naming_the_file() {
    let fifo = fifo("output.fifo");
    let fifo = fifo.to_str().expect("utf-8 path");
    let guest = quick_guest();
    let guest = guest.to_str().expect("utf-8 path");
    let no_reader = "a FIFO no process has open for reading";
    refused(&[guest, "--serial-log", fifo], Stdio::null(), &format!("cannot open the serial log {fifo}: {no_reader}"));
    refused(
        &[guest, "--results-json", fifo],
        Stdio::null(),
        &format!("cannot create the results file {fifo}: {no_reader}"),
    );
    refused(&[guest, "--trace", fifo], Stdio::null(), &format!("cannot create the trace file {fifo}: {no_reader}"));
    refused(
        &[guest, "--results-junit", "/dev/full"],
        Stdio::null(),
        "cannot write the results to /dev/full: No space left",
    );
    refused(&[guest, "--trace", "/dev/full"], Stdio::null(), "cannot write the trace file /dev/full: No space left");
    // The real guest, whose console has lines to lose.
    let elf = guest_elf().to_str().expect("utf-8 path");
    let one = ["--cmdline", "tests=arch::timer_ticks"];
    refused(
        &[&[elf, "--serial-log", "/dev/full"][..], &one].concat(),
        Stdio::null(),
        "cannot write the guest's console to the serial log /dev/full: No space left",
    );
}

/// Stdout full: the console's echo (or, with `--quiet`, the summary) fails, and the run fails
/// with one line saying so; `println!` once panicked there. `--help` too (clap ignored the
/// error and exited 0).
#[test]
fn a_full_stdout_fails_the_run_with_one_line() {
    let elf = guest_elf().to_str().expect("utf-8 path");
    let one = ["--cmdline", "tests=arch::timer_ticks"];
    refused(&[&[elf][..], &one].concat(), full(), "cannot write the guest's console to stdout: No space left");
    refused(&[&[elf, "--quiet"][..], &one].concat(), full(), "cannot write to stdout: No space left");
    refused(&["--help"], full(), "cannot write to stdout: No space left");
    // Stderr full too: nothing can be said, and the status still says it (no panic's 101).
    let quiet = Command::new(host()).args([elf, "--quiet"]).args(one).stdout(full()).stderr(full()).status();
    assert_eq!(quiet.expect("run the host stub").code(), Some(2));
}

/// Stdout closed under the run (`| head -1` once it has its line): the run stops quietly, as a
/// pipe's writer does (nothing on stderr), with 141 (128 + SIGPIPE, what a shell reports for
/// such a writer), never 0: the output was lost. It once panicked with a backtrace.
#[test]
fn a_closed_stdout_stops_the_run_quietly_and_not_with_success() {
    let elf = guest_elf().to_str().expect("utf-8 path");
    let one = ["--cmdline", "tests=arch::timer_ticks"];
    let results = temp_path("closed-stdout-results.json");
    let results = results.to_str().expect("utf-8 path");
    for quiet in [false, true] {
        let _ = std::fs::remove_file(results);
        let base = if quiet { vec![elf, "--quiet"] } else { vec![elf] };
        let args = [&base[..], &one, &["--results-json", results]].concat();
        let (status, stderr) = run(&args, closed_pipe());
        assert_eq!(status.code(), Some(141), "--quiet {quiet}: {stderr}");
        assert_eq!(stderr, "", "--quiet {quiet}");
        // The results files are another output, written all the same.
        let json = std::fs::read_to_string(results).expect("the results file");
        assert!(json.contains("\"name\""), "--quiet {quiet}: {json}");
    }
}

/// `--window-stats` prints a line from the vCPU's thread when a benchmark window closes: on a
/// lost stdout that once panicked the vCPU thread; now the run fails at its end as for any
/// other lost output (141 quietly for a closed pipe, 2 with one line for a full disk).
#[test]
fn the_benchmarks_window_lines_on_a_lost_stdout_fail_the_run_without_a_panic() {
    use pvagent_abi::port::{BENCH_COUNT, BenchCount};
    let code = Code32::new()
        .announce(pvagent_abi::ABI_VERSION)
        .out(BENCH_COUNT, BenchCount::Open as u32)
        .out(BENCH_COUNT, BenchCount::Close as u32)
        .exit(exit::SUCCESS);
    let guest = temp_file("bad-input-window.elf", &tiny_elf(&code, true, 0));
    let args = [guest.to_str().expect("utf-8 path"), "--quiet", "--bench", "--window-stats"];
    let (status, stderr) = run(&args, closed_pipe());
    assert_eq!((status.code(), stderr.as_str()), (Some(141), ""));
    refused(&args, full(), "cannot write to stdout: No space left");
}

/// Writes to `fd` (non-blocking for the time of it) until the pipe behind it is full.
fn fill_pipe(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL and write on a descriptor the caller owns; the buffer outlives
    // each call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
        let chunk = [b'x'; 4096];
        while libc::write(fd, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags), 0);
    }
}

/// A reader that holds its end open and reads nothing, behind stdout and behind a FIFO as
/// `--serial-log`, its pipe full before the run: the console's first line waits in `write` for
/// good, and `--timeout` must still end the run, with one line naming the output and the time
/// limit, status 2. It once waited past any `--timeout` (write_all retries the write the
/// watchdog's kick interrupts); here `run`'s guard would kill it after two minutes.
#[test]
fn a_reader_that_never_reads_does_not_hold_the_run_past_its_timeout() {
    let elf = guest_elf().to_str().expect("utf-8 path");
    let args = [elf, "--cmdline", "tests=arch::timer_ticks", "--timeout", "2"];
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    fill_pipe(&write);
    refused(&args, Stdio::from(write), "cannot write the guest's console to stdout: the run's time limit passed");
    drop(read);

    let fifo = fifo("stalled.fifo");
    let nonblocking = |write: bool| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(!write).write(write).custom_flags(libc::O_NONBLOCK);
        OwnedFd::from(options.open(&fifo).expect("open the FIFO"))
    };
    let reader = nonblocking(false);
    fill_pipe(&nonblocking(true));
    let log = fifo.to_str().expect("utf-8 path");
    refused(
        &[&args[..], &["--serial-log", log]].concat(),
        Stdio::null(),
        &format!("cannot write the guest's console to the serial log {log}: the run's time limit passed"),
    );
    drop(reader);
}
