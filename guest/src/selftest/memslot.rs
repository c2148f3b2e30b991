//! Memory the host changes under the guest: a region whose host memory is gone, which the
//! guest's first access makes the host repair (seed 004's memory-fault exit, handled by the host
//! stub). The region is not in the boot memory map's RAM: the host announces it
//! ([`Nr::LayoutRegion`]) and the test maps it itself.

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::layout::{self, RegionKind};
use pvagent_abi::report::Need;

use super::{Failure, SelfTest, TestResult, fail};
use crate::arch::hypercall::{self, HypercallError};
use crate::arch::paging::{self, Access};
use crate::task::table::ExitStatus;
use crate::task::{self, user};
use crate::{ensure, ensure_eq, ensure_eq_hex};

pub const TESTS: &[SelfTest] = &[SelfTest::on_request(
    "memslot::a_cpl3_access_to_released_memory_is_repaired_by_the_host",
    a_cpl3_access_to_released_memory_is_repaired_by_the_host,
)
.needs(&[Need::HostStub])];

/// The region the host announced with `index`: `(gpa, bytes, kind)`.
fn announced(index: u64) -> Result<(u64, u64, u8), Failure> {
    match hypercall::call(Nr::LayoutRegion, [index, 0, 0, 0]) {
        Ok([gpa, word]) => Ok((gpa, word & layout::SIZE_MASK, (word >> 56) as u8)),
        Err(HypercallError::Status(Status::UnknownNr | Status::InvalidArgument)) => {
            Err(Failure::Skip("the host announces no region (the host stub's released-backing region is off)"))
        }
        Err(e) => Err(fail(format_args!("LayoutRegion({index}): {e:?}"))),
    }
}

#[unsafe(link_section = ".user_text")]
extern "sysv64" fn user_read(gpa: u64) -> ! {
    user::exit(user::read_u64(gpa))
}

/// The host released the region's memory before boot: a CPL 3 load from it reaches the host as
/// a memory fault (`KVM_EXIT_MEMORY_FAULT` here, a bare EFAULT where KVM does not annotate it),
/// the host gives the region fresh memory and re-enters, and the load, retried, reads what the
/// host put there. The host's side (which exit came, how many) is checked by its end-to-end test.
fn a_cpl3_access_to_released_memory_is_repaired_by_the_host() -> TestResult {
    let (gpa, bytes, kind) = announced(0)?;
    ensure_eq!(RegionKind::try_from(kind), Ok(RegionKind::ReleasedBacking), "the announced region's kind");
    ensure!(gpa % 0x1000 == 0 && bytes > 0x1000, "a page-aligned region of more than a page: {gpa:#x}, {bytes:#x} bytes");
    // Mapped once per boot: the test runs once (the runner runs each selected test once).
    paging::map_range(gpa, gpa + bytes, Access::UserData);
    let word = gpa + 0x100;
    let id = task::spawn_user("memslot-user", user_read, word).map_err(|e| fail(format_args!("spawn: {e:?}")))?;
    let status = task::join(id).map_err(|e| fail(format_args!("join: {e:?}")))?;
    let ExitStatus::Returned(value) = status else {
        return Err(fail(format_args!("the CPL 3 task did not return: {status:?}")));
    };
    ensure_eq_hex!(value, layout::fill_value(word), "the word the CPL 3 task read");
    // The repair holds for CPL 0 too: the kernel reads the same memory.
    let next = gpa + 0x108;
    // SAFETY: `next` is in the region just mapped, 8-byte aligned; the host owns its contents,
    // hence the volatile read.
    let kernel = unsafe { core::ptr::read_volatile(next as *const u64) };
    ensure_eq_hex!(kernel, layout::fill_value(next), "the word the kernel read");
    Ok(())
}
