//! What the host stub adds for `cargo xtask bench`, and only when asked (`Config::bench`, the
//! binary's `--bench`): the benchmark device on ports `0x51C`, `0x51E` and `0x51F` (`device.rs`;
//! the counting window, `count.rs`) and the bare `kvm-ioctls` loop the host stub's own run loop
//! is compared with (`bare_loop.rs`). Without it those ports are ordinary unclaimed ports and
//! the bare loop is never entered.

pub mod bare_loop;
pub mod count;
pub mod device;

pub use device::Bench;
