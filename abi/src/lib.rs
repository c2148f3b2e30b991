//! The wire contract between the pvagent guest and its hosts (the host stub, and QEMU for the
//! parts QEMU implements). Every constant and shared layout is written here once; both sides
//! depend on this crate. `docs/abi.md` is the prose reference for what is defined here.
//!
//! Nothing in this crate touches hardware. Layouts are `#[repr(C)]` with their size and every
//! field offset the other side relies on asserted at compile time.

#![no_std]
#![warn(missing_docs)]

pub mod breach;
pub mod console;
pub mod cpuid;
pub mod exit;
pub mod hypercall;
pub mod kvm_apf;
pub mod layout;
pub mod msr;
pub mod pnp;
pub mod port;
pub mod pvh;
pub mod report;
pub mod sld;
pub mod trace;
pub mod ve;
pub mod version;

pub use version::{ABI_VERSION, AbiVersion};

/// Size of a guest page, the unit of every region in this ABI.
pub const PAGE_SIZE: u64 = 0x1000;

/// Defines a fieldless `#[repr($int)]` enum of the wire format with a `TryFrom<$int>` that
/// returns the unknown raw value as its error, so values coming off the wire are checked once,
/// and an `ALL` list of every variant in declaration order (for tables and exhaustive tests).
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $int:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr($int)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant ),+];
        }

        impl TryFrom<$int> for $name {
            type Error = $int;

            fn try_from(value: $int) -> Result<Self, $int> {
                $( if value == $value { return Ok($name::$variant); } )+
                Err(value)
            }
        }
    };
}

/// Marks a type whose every bit pattern is a valid value and that has no padding, so that it
/// can be copied to and from shared memory as plain bytes.
///
/// # Safety
///
/// Implement it only for `#[repr(C)]` types made of integers (or arrays of them) whose size
/// equals the sum of their fields' sizes, asserted next to the type.
pub unsafe trait Plain: Copy + 'static {}

// SAFETY: integers and arrays of integers have no padding and no invalid bit patterns.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
