//! The two doors through which the kernel shares statics that Rust's own types cannot: memory
//! reached only by address ([`StaticCell`]), and a replaceable function pointer ([`FnSlot`]).
//! Every `unsafe impl Sync` of the kernel and every function-pointer transmute is here, once
//! (`sync::CpuCell` builds on `StaticCell`; the locks are `spin`'s).
//!
//! The bottom layer: plain Rust that imports nothing of the kernel, unit-tested on the host.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A static whose contents are reached only through the raw pointer [`StaticCell::get`] returns:
/// kernel stacks, page tables, pages shared with the host, CPU tables the hardware reads. Each
/// dereference is an `unsafe` block of its user that states who may touch the memory when (one
/// vCPU, interrupts off, before it is shared, ...). A stable stand-in for core's unstable
/// `SyncUnsafeCell`.
#[derive(Debug)]
#[repr(transparent)]
pub struct StaticCell<T>(UnsafeCell<T>);

// SAFETY: sharing a `&StaticCell<T>` hands out nothing but a `*mut T`; reading or writing
// through it is `unsafe` at every use, where the user upholds its own exclusivity rule. `T: Send`
// because under such a rule the value is used from whichever vCPU the rule names.
unsafe impl<T: Send> Sync for StaticCell<T> {}

impl<T> StaticCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// The address of the contents. Taking it is safe; using it is the caller's `unsafe`.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// A function pointer type that a [`FnSlot`] can hold.
///
/// # Safety
///
/// Implement it only for `fn` pointer types (any ABI and signature, including higher-ranked
/// ones such as `fn(&mut T)`): those are `Copy`, exactly as large as a data pointer, and never
/// null, which is what lets a slot keep one in an `AtomicPtr<()>` and use null for "empty".
pub unsafe trait FnPtr: Copy + 'static {}

/// A function pointer that one context installs and others call, possibly from a trap handler
/// on another vCPU: an atomic pointer, null while empty. Installing publishes with Release and
/// reading takes it with Acquire, so whatever the installer set up before is visible to the
/// caller.
///
/// The slot holds the function pointer *as a pointer* (`*mut ()`), never as an integer: a
/// pointer-to-pointer transmute keeps its provenance, so the pointer read back may be called.
/// One that made a round trip through `usize` would have none, and calling it would be undefined
/// behaviour under Rust's memory model (Miri reports it: "pointer not dereferenceable ... it has
/// no provenance"; the `cell` tests run under Miri in a scratch crate show the difference).
#[derive(Debug)]
pub struct FnSlot<F: FnPtr> {
    raw: AtomicPtr<()>,
    _holds: PhantomData<F>,
}

impl<F: FnPtr> FnSlot<F> {
    /// An empty slot.
    pub const fn empty() -> Self {
        Self { raw: AtomicPtr::new(core::ptr::null_mut()), _holds: PhantomData }
    }

    /// Installs `f`, replacing what was there.
    pub fn set(&self, f: F) {
        self.raw.store(to_raw(f), Ordering::Release);
    }

    /// Installs `f` if the slot is empty; whether it did.
    pub fn set_if_empty(&self, f: F) -> bool {
        let empty = core::ptr::null_mut();
        self.raw.compare_exchange(empty, to_raw(f), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// What the slot holds.
    pub fn get(&self) -> Option<F> {
        let raw = self.raw.load(Ordering::Acquire);
        if raw.is_null() {
            return None;
        }
        const { assert!(size_of::<F>() == size_of::<*mut ()>()) };
        // SAFETY: a non-null value in `raw` was stored by `set`/`set_if_empty` from an `F` by
        // `to_raw`, a pointer-to-pointer transmute that kept its provenance; `F` is a function
        // pointer type of the size of `*mut ()` (its `FnPtr` impl promises it, the assert checks
        // it), so transmuting back gives that same `F`, provenance included.
        Some(unsafe { core::mem::transmute_copy::<*mut (), F>(&raw) })
    }
}

fn to_raw<F: FnPtr>(f: F) -> *mut () {
    const { assert!(size_of::<F>() == size_of::<*mut ()>()) };
    // SAFETY: `F` is a function pointer type (its `FnPtr` impl promises it) of the size of
    // `*mut ()` (asserted above), never null: reading its bytes as a data pointer is a
    // pointer-to-pointer transmute, which keeps the pointer's provenance (no integer in between).
    unsafe { core::mem::transmute_copy::<F, *mut ()>(&f) }
}

/// The function at `addr`: code the kernel did not link, placed at an address an ABI names (the
/// host's code in the memslot self-tests' churn region). Its provenance is the exposed one of an
/// address that came from outside Rust, as for any memory the host hands the guest by address.
///
/// # Safety
///
/// `addr` must hold code of `F`'s ABI and signature, mapped executable, for as long as the
/// result is called.
pub unsafe fn code_at<F: FnPtr>(addr: usize) -> F {
    let raw: *mut () = core::ptr::with_exposed_provenance_mut(addr);
    // SAFETY: `F` is a function pointer type (`FnPtr`'s contract: as large as a data pointer,
    // never null, which `addr`, the caller's code, is not); the caller vouches for the code.
    unsafe { core::mem::transmute_copy::<*mut (), F>(&raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Hook = fn(u64) -> u64;
    // SAFETY: a fn pointer type.
    unsafe impl FnPtr for Hook {}

    type Borrowing = fn(&mut u64);
    // SAFETY: a fn pointer type (higher-ranked over the borrow's lifetime).
    unsafe impl FnPtr for Borrowing {}

    fn double(x: u64) -> u64 {
        2 * x
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    fn bump(x: &mut u64) {
        *x += 1;
    }

    #[test]
    fn an_empty_slot_holds_nothing_and_a_set_one_calls_what_was_set() {
        let slot = FnSlot::<Hook>::empty();
        assert!(slot.get().is_none());
        slot.set(double);
        assert_eq!(slot.get().map(|f| f(21)), Some(42));
        slot.set(square);
        assert_eq!(slot.get().map(|f| f(9)), Some(81), "set replaces");
    }

    #[test]
    fn set_if_empty_never_replaces() {
        let slot = FnSlot::<Hook>::empty();
        assert!(slot.set_if_empty(double));
        assert!(!slot.set_if_empty(square));
        assert_eq!(slot.get().map(|f| f(5)), Some(10));
    }

    #[test]
    fn higher_ranked_fn_pointers_round_trip() {
        static SLOT: FnSlot<Borrowing> = FnSlot::empty();
        SLOT.set(bump);
        let mut n = 41;
        (SLOT.get().expect("set above"))(&mut n);
        assert_eq!(n, 42);
    }

    #[test]
    fn a_static_cell_hands_out_the_address_of_its_contents() {
        static CELL: StaticCell<[u64; 4]> = StaticCell::new([1, 2, 3, 4]);
        let p = CELL.get();
        assert_eq!(p, CELL.get(), "one place, every time");
        // SAFETY: this test is the only user of CELL.
        unsafe { (*p)[2] = 30 };
        // SAFETY: as above.
        assert_eq!(unsafe { *p }, [1, 2, 30, 4]);
    }
}
