//! The project's automation as a library, so that `cargo xtask` and the end-to-end tests build
//! the guest and start hosts the same way.

/// `print!` whose write error ends xtask with one line and status 2 ([`write_stdout`]) instead
/// of a panic; every module below uses it (a `macro_rules!` shadows the prelude's below it).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!` as [`print!`] is `print!`.
#[macro_export]
macro_rules! println {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod bench;
pub mod budgets;
pub mod doccheck;
pub mod guest;
pub mod proc;
pub mod qemu;
pub mod run;
pub mod setup;
pub mod soak;
pub mod test;

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// An xtask failure: one line for the user, never a backtrace, and which kind it is, because
/// the exit status says so.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

/// What went wrong, as `cargo xtask`'s exit status tells it (the host stub's own statuses,
/// kept through xtask).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A test failed: a guest self-test, a unit or end-to-end test, a documented command.
    /// Exit status 1.
    TestFailed,
    /// Nothing could be judged: a host-side error, a build or setup that failed, bad usage.
    /// Exit status 2.
    Host,
}

impl ErrorKind {
    /// The process exit status for this kind.
    pub fn exit_status(self) -> u8 {
        match self {
            ErrorKind::TestFailed => 1,
            ErrorKind::Host => 2,
        }
    }
}

impl Error {
    /// A host-side, setup or usage error.
    pub fn host(message: String) -> Self {
        Self { kind: ErrorKind::Host, message }
    }

    /// A test failure.
    pub fn test_failed(message: String) -> Self {
        Self { kind: ErrorKind::TestFailed, message }
    }

    /// The same error as a test failure (e.g. a `cargo test` that failed).
    pub fn as_test_failure(self) -> Self {
        Self { kind: ErrorKind::TestFailed, ..self }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Builds a host-side [`Error`] (exit status 2) from a format string.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::Error::host(format!($($arg)*)) };
}

/// Builds a test-failure [`Error`] (exit status 1) from a format string.
#[macro_export]
macro_rules! failed {
    ($($arg:tt)*) => { $crate::Error::test_failed(format!($($arg)*)) };
}

/// Writes to stdout; on a write error (`> /dev/full`) says so in one line and exits with status
/// 2, README's rule for output that could not be written, where `print!` would panic (a
/// backtrace and 101). A closed pipe never gets here: SIGPIPE ends xtask first (`main`). A host
/// stub a boot is running then finds its own stdout, xtask's reader, closed, and stops.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        let _ = writeln!(std::io::stderr(), "xtask: error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// Result of xtask operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which cargo profile to build with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    /// The profile's name, as cargo calls it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Release => "release",
        }
    }

    /// The target directory's subdirectory for this profile.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}
