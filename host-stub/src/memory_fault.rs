//! Memory faults KVM hands to user space: what a `KVM_EXIT_MEMORY_FAULT` says (range, access,
//! private or shared), whether this KVM reports them at all, and the guard that stops a run whose
//! vCPU keeps faulting on the same access without getting anywhere (seed 004's advice to any host
//! that resolves faults and retries: a handler that resolves nothing would otherwise loop forever).
//!
//! The three forms an access KVM cannot back takes, by host (`docs/design.md`, "Memory faults"):
//! - `KVM_EXIT_MEMORY_FAULT` (KVM_RUN fails with EFAULT or EHWPOISON and `exit_reason` says 39):
//!   VMX/SVM KVM for a page-fault path that cannot be resolved; on this PVM `/dev/kvm` only a
//!   guest_memfd slot whose backing is gone, accessed at CPL 3.
//! - A bare EFAULT (exit reason not 39): mainline x86 for a host address with no mapping, and
//!   this PVM for any CPL 3 access KVM cannot back. The instruction at RIP has not run; the
//!   handler decodes it to find the address (`guest_insn`).
//! - `KVM_EXIT_MMIO` at a RAM address: this PVM for CPL 0 accesses (its emulator treats memory
//!   it cannot reach as MMIO), and every KVM while a memslot is being replaced (seed 003).

use std::fmt;

use kvm_ioctls::{Cap, Kvm};

/// The bits of `kvm_run.memory_fault.flags`.
///
/// Mainline KVM defines only [`flags::PRIVATE`] (bit 3); bits 0-2 were left free for the access
/// kind, so that they match `PROT_READ`/`PROT_WRITE`/`PROT_EXEC` and EPT's R/W/X, as proposed on
/// the list in the series seed 004 comes from. A kernel that sets none of them does not say what
/// the access was ([`FaultAccess::Unknown`]); a handler that needs it decodes the instruction.
pub mod flags {
    /// The access was a read (proposed; not in mainline).
    pub const READ: u64 = 1 << 0;
    /// The access was a write (proposed; not in mainline).
    pub const WRITE: u64 = 1 << 1;
    /// The access was an instruction fetch (proposed; not in mainline).
    pub const EXEC: u64 = 1 << 2;
    /// The access was to private memory (guest_memfd with the private attribute): mainline's
    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
    pub const PRIVATE: u64 = kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64;
    /// Every bit this host stub knows.
    pub const KNOWN: u64 = READ | WRITE | EXEC | PRIVATE;
}

/// What kind of access faulted, as far as the exit says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAccess {
    Read,
    Write,
    Exec,
    /// The exit does not say (mainline KVM), or says something impossible (more than one kind).
    Unknown,
}

/// A `KVM_EXIT_MEMORY_FAULT`: the guest accessed `[gpa, gpa + size)` and KVM could not resolve
/// it; the instruction has not run and re-entering retries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    pub gpa: u64,
    /// Bytes; KVM names the whole mapping it tried to install (4 KiB on x86 today, which need
    /// not be the accessed page's size in the guest).
    pub size: u64,
    /// Raw [`flags`].
    pub flags: u64,
}

impl MemoryFault {
    /// Whether the access was to private memory.
    pub fn private(&self) -> bool {
        self.flags & flags::PRIVATE != 0
    }

    /// The access kind, where the exit says it.
    pub fn access(&self) -> FaultAccess {
        match self.flags & (flags::READ | flags::WRITE | flags::EXEC) {
            flags::READ => FaultAccess::Read,
            flags::WRITE => FaultAccess::Write,
            flags::EXEC => FaultAccess::Exec,
            _ => FaultAccess::Unknown,
        }
    }

    /// Flag bits this host stub does not know (a newer kernel's).
    pub fn unknown_flags(&self) -> u64 {
        self.flags & !flags::KNOWN
    }

    /// The range, or `None` when it is empty or runs past the top of the address space (a bare
    /// EFAULT's stale or garbage fields would look like that).
    pub fn range(&self) -> Option<std::ops::Range<u64>> {
        let end = self.gpa.checked_add(self.size)?;
        (self.size > 0).then_some(self.gpa..end)
    }

    /// The address the fault names when its range lies within one 4 KiB page: `None` for a
    /// range over several pages (a huge mapping KVM tried: the instruction says which page the
    /// guest touched), and for an empty or wrapping one, which names nothing.
    pub fn page(&self) -> Option<u64> {
        let range = self.range()?;
        (range.start >> 12 == (range.end - 1) >> 12).then_some(self.gpa)
    }

    /// The 4 KiB pages the range touches, as page-aligned GPAs.
    pub fn pages(&self) -> impl Iterator<Item = u64> + use<> {
        let (first, end) = match self.range() {
            Some(r) => (r.start & !0xFFF, r.end),
            None => (0, 0),
        };
        (first..end).step_by(0x1000)
    }
}

impl fmt::Display for MemoryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access() {
            FaultAccess::Read => "read",
            FaultAccess::Write => "write",
            FaultAccess::Exec => "exec",
            FaultAccess::Unknown => "access of unstated kind",
        };
        let memory = if self.private() { "private" } else { "shared" };
        write!(f, "{access} of {memory} memory [{:#x}, +{:#x}) (flags {:#x})", self.gpa, self.size, self.flags)
    }
}

/// Whether this KVM reports memory faults with `KVM_EXIT_MEMORY_FAULT`
/// (`KVM_CAP_MEMORY_FAULT_INFO`). The capability only informs: `KVM_ENABLE_CAP` refuses it
/// (EINVAL, measured here), and a KVM that reports it still returns a bare EFAULT on paths it
/// does not annotate, so a host keeps both forms either way.
pub fn fault_info_reported(kvm: &Kvm) -> bool {
    kvm.check_extension(Cap::MemoryFaultInfo)
}

/// Forgets a memory-fault exit in `kvm_run` once it is handled: KVM writes `exit_reason` on every
/// exit but not on a bare EFAULT, which a reader tells from a memory fault by `exit_reason`
/// alone; left at 39, the next bare EFAULT would read as the old fault again.
pub fn forget_fault(run: &mut kvm_bindings::kvm_run) {
    if run.exit_reason == kvm_bindings::KVM_EXIT_MEMORY_FAULT {
        run.exit_reason = kvm_bindings::KVM_EXIT_UNKNOWN;
    }
}

/// How many times in a row the same fault may come back before the run stops.
pub const MAX_REPEATS: u32 = 16;

/// An access that came back to the host, as the repeat guard compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultSeen {
    /// A `KVM_EXIT_MEMORY_FAULT`, at this RIP.
    MemoryFault { fault: MemoryFault, rip: u64 },
    /// A bare EFAULT at this RIP, with RCX (a `rep` string instruction that progresses keeps its
    /// RIP but not its count) and RSP: a bare EFAULT names no address, and several tasks running
    /// the same code each touch their own page at the same RIP in turn, with no other exit in
    /// between where the guest switches tasks without one (the benchmark's workload did it 16
    /// times in a row); each task has its own stack.
    Efault { rip: u64, rcx: u64, rsp: u64 },
}

/// The same fault came back [`MAX_REPEATS`] times with nothing else in between: whatever
/// handled it did not make the access possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoProgress {
    pub seen: FaultSeen,
    pub repeats: u32,
}

/// Per vCPU: the last fault and how often it came in a row. Any other exit (but a kick) resets
/// it, since the guest ran something in between.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepeatGuard {
    last: Option<FaultSeen>,
    repeats: u32,
}

impl RepeatGuard {
    /// Records a fault; an error when it is the same one for the [`MAX_REPEATS`]th time in a row.
    pub fn fault(&mut self, seen: FaultSeen) -> Result<(), NoProgress> {
        if self.last == Some(seen) {
            self.repeats += 1;
        } else {
            self.last = Some(seen);
            self.repeats = 1;
        }
        if self.repeats >= MAX_REPEATS { Err(NoProgress { seen, repeats: self.repeats }) } else { Ok(()) }
    }

    /// Another exit: the guest made progress.
    pub fn progress(&mut self) {
        self.last = None;
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(gpa: u64, size: u64, flags: u64) -> MemoryFault {
        MemoryFault { gpa, size, flags }
    }

    #[test]
    fn mainline_flags_say_only_private_or_shared() {
        // What this machine's KVM produced for the guest_memfd trigger: flags 0.
        let shared = fault(0x1_0000_0000, 0x1000, 0);
        assert!(!shared.private());
        assert_eq!(shared.access(), FaultAccess::Unknown, "mainline does not say the access kind");
        let private = fault(0x1_0000_0000, 0x1000, u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE));
        assert!(private.private());
        assert_eq!(private.unknown_flags(), 0);
        assert_eq!(private.to_string(), "access of unstated kind of private memory [0x100000000, +0x1000) (flags 0x8)");
    }

    #[test]
    fn proposed_access_bits_are_decoded_one_kind_at_a_time() {
        assert_eq!(fault(0, 0x1000, flags::READ).access(), FaultAccess::Read);
        assert_eq!(fault(0, 0x1000, flags::WRITE | flags::PRIVATE).access(), FaultAccess::Write);
        assert!(fault(0, 0x1000, flags::WRITE | flags::PRIVATE).private());
        assert_eq!(fault(0, 0x1000, flags::EXEC).access(), FaultAccess::Exec);
        assert_eq!(fault(0, 0x1000, flags::READ | flags::WRITE).access(), FaultAccess::Unknown, "two kinds at once");
        assert_eq!(fault(0, 0x1000, 1 << 40 | flags::READ).unknown_flags(), 1 << 40);
        assert_eq!(
            fault(0x2000, 0x1000, flags::WRITE).to_string(),
            "write of shared memory [0x2000, +0x1000) (flags 0x2)"
        );
    }

    #[test]
    fn a_range_names_every_page_it_touches_and_a_bad_one_none() {
        assert_eq!(fault(0x3000, 0x1000, 0).pages().collect::<Vec<_>>(), [0x3000]);
        assert_eq!(fault(0x3ff8, 0x10, 0).pages().collect::<Vec<_>>(), [0x3000, 0x4000], "across a page boundary");
        assert_eq!(fault(0x20_0000, 0x20_0000, 0).pages().count(), 512, "a 2 MiB mapping");
        assert_eq!(fault(0x3000, 0, 0).pages().count(), 0, "empty");
        assert_eq!(fault(u64::MAX - 0xFFF, 0x2000, 0).range(), None, "past the top");
        assert_eq!(fault(u64::MAX - 0xFFF, 0x2000, 0).pages().count(), 0);
    }

    /// A fault whose range is empty or wraps names no page: the pager took
    /// `{ gpa: <a page of its region>, size: 0 }` (or size 2^64 - 1) as an access to that page,
    /// since such a range has no second page either, where it decodes the instruction for a
    /// range that does not name one page.
    #[test]
    fn only_a_range_within_one_page_names_a_page() {
        assert_eq!(fault(0x4000_1008, 0x1000, 0).page(), None, "two pages");
        assert_eq!(fault(0x4000_1000, 0x1000, 0).page(), Some(0x4000_1000));
        assert_eq!(fault(0x4000_1ff8, 8, 0).page(), Some(0x4000_1ff8));
        assert_eq!(fault(0x4000_1000, 0, 0).page(), None, "empty");
        assert_eq!(fault(0x4000_1000, u64::MAX, 0).page(), None, "wraps");
        assert_eq!(fault(0x4000_1000, 0x20_0000, 0).page(), None, "a 2 MiB mapping");
    }

    /// Any range KVM (or a stale `kvm_run`) could hold: the range is refused exactly when it is
    /// empty or runs past 2^64; otherwise `pages` names, in order, every 4 KiB page it touches
    /// and no other, and `page` names the fault's address exactly when that is one page.
    #[test]
    fn a_faults_pages_are_those_its_range_touches() {
        use crate::props::{check, edge_u64};
        use proptest::prelude::*;
        check("memory fault pages", 4000, (edge_u64(), edge_u64(), any::<u64>()), |(gpa, size, flags)| {
            let f = fault(gpa, size, flags);
            let Some(end) = gpa.checked_add(size).filter(|_| size > 0) else {
                prop_assert_eq!(f.range(), None);
                prop_assert_eq!(f.pages().next(), None);
                prop_assert_eq!(f.page(), None);
                return Ok(());
            };
            prop_assert_eq!(f.range(), Some(gpa..end));
            let (first, last) = (gpa >> 12, (end - 1) >> 12);
            let count = last - first + 1;
            // Counted without walking them (a garbage size may span 2^52 pages).
            prop_assert_eq!(f.pages().size_hint(), (count as usize, Some(count as usize)));
            let shown: Vec<u64> = f.pages().take(1024).collect();
            prop_assert_eq!(shown.first(), Some(&(first << 12)));
            prop_assert!(shown.windows(2).all(|w| w[1] == w[0] + 0x1000));
            prop_assert!(shown.iter().all(|p| p % 0x1000 == 0 && *p < end && p + 0xFFF >= gpa));
            if count <= 1024 {
                prop_assert_eq!(shown.last(), Some(&(last << 12)));
            }
            prop_assert_eq!(f.page(), (count == 1).then_some(gpa));
            Ok(())
        });
    }

    #[test]
    fn a_handled_exit_is_forgotten_so_a_later_bare_efault_is_not_read_as_it() {
        let mut run = kvm_bindings::kvm_run { exit_reason: kvm_bindings::KVM_EXIT_MEMORY_FAULT, ..Default::default() };
        forget_fault(&mut run);
        assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_UNKNOWN);
        let mut io = kvm_bindings::kvm_run { exit_reason: kvm_bindings::KVM_EXIT_IO, ..Default::default() };
        forget_fault(&mut io);
        assert_eq!(io.exit_reason, kvm_bindings::KVM_EXIT_IO, "another exit is left alone");
    }

    #[test]
    fn the_guard_stops_the_same_fault_repeating_and_only_that() {
        let same = FaultSeen::MemoryFault { fault: fault(0x5000, 0x1000, 0), rip: 0x40_0000 };
        let mut guard = RepeatGuard::default();
        for _ in 1..MAX_REPEATS {
            assert_eq!(guard.fault(same), Ok(()));
        }
        assert_eq!(guard.fault(same), Err(NoProgress { seen: same, repeats: MAX_REPEATS }));

        // Progress in between, another RIP, another RCX: never stopped.
        let mut guard = RepeatGuard::default();
        for i in 0..4 * MAX_REPEATS {
            assert_eq!(guard.fault(same), Ok(()));
            if i % 4 == 3 {
                guard.progress();
            }
        }
        let mut guard = RepeatGuard::default();
        for rcx in 0..4 * u64::from(MAX_REPEATS) {
            assert_eq!(
                guard.fault(FaultSeen::Efault { rip: 0x40_0000, rcx, rsp: 0x8000 }),
                Ok(()),
                "a rep movs going on"
            );
        }
        let mut guard = RepeatGuard::default();
        for rsp in 0..4 * u64::from(MAX_REPEATS) {
            let task = FaultSeen::Efault { rip: 0x40_0000, rcx: 0, rsp: 0x10_0000 + rsp * 0x1000 };
            assert_eq!(guard.fault(task), Ok(()), "tasks running the same code, each on its own stack");
        }
        let mut guard = RepeatGuard::default();
        let stuck = FaultSeen::Efault { rip: 0x40_0000, rcx: 0, rsp: 0x8000 };
        let results: Vec<_> = (0..MAX_REPEATS).map(|_| guard.fault(stuck)).collect();
        assert!(results[..results.len() - 1].iter().all(Result::is_ok) && results.last().unwrap().is_err());
        let mut guard = RepeatGuard::default();
        for i in 0..4 * u64::from(MAX_REPEATS) {
            let other = FaultSeen::MemoryFault { fault: fault(0x5000, 0x1000, 0), rip: 0x40_0000 + (i % 2) };
            assert_eq!(guard.fault(other), Ok(()), "two instructions taking turns");
        }
    }
}
