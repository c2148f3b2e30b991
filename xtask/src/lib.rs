//! The project's automation as a library, so that `cargo xtask` and the end-to-end tests build
//! the guest and start hosts the same way.

pub mod bench;
pub mod budgets;
pub mod guest;
pub mod proc;
pub mod qemu;
pub mod run;
pub mod setup;
pub mod test;

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// An xtask failure: one line for the user, never a backtrace.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Builds an [`Error`] from a format string.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::Error(format!($($arg)*)) };
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
