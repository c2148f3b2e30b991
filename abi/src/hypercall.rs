//! Hypercalls through the host stub's port ([`crate::port::HYPERCALL`]).
//!
//! The guest fills a [`Request`] in its memory, then writes the request's guest-physical address
//! (below 4 GiB, 8-byte aligned) to the port with a 32-bit `out`. The host stub reads the
//! request, carries it out, writes `status` and `ret`, and only then lets the `out` complete, so
//! the guest reads the answer right after its `out`. The same port-plus-parameter-block shape is
//! used by Hermit's uhyve.

use crate::Plain;

/// A hypercall's parameter block. 56 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Request {
    /// Which hypercall ([`Nr`]). Written by the guest.
    pub nr: u32,
    /// Outcome ([`Status`]). Written by the host.
    pub status: u32,
    /// Arguments. Written by the guest; their meaning depends on `nr`.
    pub args: [u64; 4],
    /// Results. Written by the host; their meaning depends on `nr`.
    pub ret: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<Request>() == 56);
const _: () = assert!(core::mem::offset_of!(Request, nr) == 0);
const _: () = assert!(core::mem::offset_of!(Request, status) == 4);
const _: () = assert!(core::mem::offset_of!(Request, args) == 8);
const _: () = assert!(core::mem::offset_of!(Request, ret) == 40);

// SAFETY: only integers, and the asserts above show there is no padding.
unsafe impl Plain for Request {}

crate::wire_enum! {
/// Hypercall numbers.
pub enum Nr: u32 {
    /// Round trip check: `ret[0] = !args[0]`, `ret[1]` = the host's ABI version (wire form,
    /// as in [`crate::cpuid::LEAF_INFO`]).
    Ping = 1,
    /// Timeline ([`crate::trace`], only while [`crate::cpuid::Features::TRACE`] is set): the
    /// name of a task, for the host to show it by. `args[0]`: the task as a
    /// [`crate::trace::TaskSwitch`] record would name it (its encoded value); `args[1]`: the
    /// guest-physical address of the name (UTF-8); `args[2]`: its length in bytes, at most
    /// [`crate::trace::TASK_NAME_MAX`] ([`Status::InvalidArgument`] otherwise, or for a record
    /// that is not a task switch or a name outside guest RAM).
    TraceTaskName = 2,
    /// Split-lock trigger ([`crate::sld`]): `ret[0]` = how many triggers the host decided on
    /// so far (the last one's sequence number; 0: none yet), `ret[1]` = the last one's
    /// [`crate::sld::Verdict`].
    SplitLockVerdict = 0x100,
    /// Split-lock trigger: `ret[0]` = the host's [`crate::sld::HostPolicy`] for split locks of
    /// a guest whose detection is off. A test interface, like the trigger: a guest's
    /// self-tests read it to know which outcome the host promises.
    SplitLockPolicy = 0x101,
    /// Page-not-present: switch the host's mode for accesses from now on. `args[0]`: a
    /// [`crate::pnp::HostMode`] other than `KvmApfKernel`; a run in `KvmApfKernel` mode stays
    /// in it (both: [`Status::InvalidArgument`]).
    PnpSetMode = 0x200,
    /// Page-not-present: the fetch latency for pages fetched from now on, drawn uniformly from
    /// `[args[0], args[1]]` nanoseconds (`args[0] <= args[1] <=` 10 s, otherwise
    /// [`Status::InvalidArgument`]).
    PnpSetLatency = 0x201,
    /// Page-not-present: `args[0]` a page's GPA, `args[1]` a [`crate::pnp::PageBehaviour`] for
    /// its next fetch.
    PnpSetPage = 0x202,
    /// Page-not-present: make `args[1]` pages from GPA `args[0]` absent again (their contents
    /// are kept by the host). Pages being fetched are refused (status 2).
    PnpEvict = 0x203,
    /// Page-not-present: `ret[0]` = the host counter `args[0]` (a
    /// [`crate::pnp::HostCounter`]), counted over the whole VM (every vCPU's events and
    /// tokens).
    PnpStats = 0x204,
    /// Page-not-present: release the held pages ([`crate::pnp::PageBehaviour::Held`]) among
    /// `args[1]` pages from GPA `args[0]` (0 counts as 1): their fetches start now, in this one
    /// exit. `ret[0]` = how many were held (a page not yet touched loses its hold: its next
    /// fetch is normal, and it is not counted).
    PnpRelease = 0x205,
    /// Page-not-present: when fetches complete relative to their events, from now on
    /// (`args[0]`: a [`crate::pnp::ResolutionTiming`]). A fetch held back under
    /// `AfterEventTaken` completes when its events are taken, whatever is set later.
    PnpSetTiming = 0x206,
    /// #VE ([`crate::ve`], only where [`crate::cpuid::Features::VE`] is set): "suspend me until
    /// this page is present". `args[0]`: the GPA the vCPU's #VE reported. The host keeps the
    /// vCPU (this `out` does not complete) until the page is present or has failed, then
    /// `ret[0]` = [`crate::pnp::RESULT_RETRY`] or [`crate::pnp::RESULT_FAILED`]. A page present
    /// already answers at once; a held page ([`crate::pnp::PageBehaviour::Held`]) is released.
    /// A GPA outside the demand-paged region: [`Status::InvalidArgument`].
    VeSuspend = 0x300,
    /// #VE: "I parked the task, tell me when this page is present". `args[0]`: the GPA the
    /// vCPU's #VE reported. `ret[0]` = a token of the calling vCPU's page-not-present ring
    /// ([`crate::pnp::Token`]), whose resolution the host posts to that ring as for an event
    /// (it may be there before this call returns); or [`crate::ve::NO_TOKEN`] with the outcome
    /// at once in `ret[1]` (the page is present, or has failed). [`Status::NoToken`] when the
    /// vCPU has no ring registered or every token of it is out: the guest must wait otherwise
    /// (suspend). A GPA outside the demand-paged region: [`Status::InvalidArgument`].
    VePark = 0x301,
    /// #VE test control: `args[0]` the [`crate::ve::fault`] switches for the next #VE delivered
    /// to the calling vCPU (other bits: [`Status::InvalidArgument`]); `ret[0]` = the switches
    /// that were set before (not yet used).
    VeSetFaults = 0x302,
    /// #VE test control: raise an NMI on the calling vCPU, taken right after this `out` (a
    /// test puts the call where it wants the NMI to land).
    VeInjectNmi = 0x303,
    /// Memory layout ([`crate::layout`]): the region the host announced with index `args[0]`
    /// (0, 1, ...). `ret[0]` = its GPA (page aligned), `ret[1]` = its size and kind
    /// ([`crate::layout::size_and_kind`]). An index past the last region:
    /// [`Status::InvalidArgument`]; a host that announces none does not know the number.
    LayoutRegion = 0x400,
    /// Memory layout, a test control: change the layout now ([`crate::layout::LayoutStepKind`]
    /// in `args[0]`, its arguments after it). The change is made before this call returns,
    /// holding every vCPU, or in the host's diagnostic mode without holding them (then the
    /// host keeps the window open until another vCPU touched it). A host without the churn
    /// region does not know the number; a change it cannot make: [`Status::InvalidArgument`].
    LayoutStep = 0x401,
    /// Memory layout: `ret[0]` = layout changes made so far, `ret[1]` = exits the host
    /// classified as hitting a change's window (0 wherever every change holds the vCPUs).
    LayoutStats = 0x402,
    /// Memory layout: whether the churn region's page `args[0]` (its index from the region's
    /// start) was in the dirty log the host read at its last merge: `ret[0]` 1 or 0, `ret[1]`
    /// the pages that log reported in all. A page outside the logged (upper) half:
    /// [`Status::InvalidArgument`].
    LayoutDirty = 0x403,
    /// Fault injection, a test control ([`crate::breach`]): break rule `args[0]` (a
    /// [`crate::breach::Breach`]) once, at the calling vCPU's next occasion for it, replacing
    /// any breach armed there before; `ret[0]` = 1 if one was armed and not yet used, else 0.
    /// The producer that owns the rule answers: a rule it cannot break in its present state
    /// (another mode, a protocol the vCPU has not registered) is [`Status::InvalidArgument`];
    /// an unknown rule, or one whose producer is not in this run, [`Status::UnknownNr`].
    HostBreak = 0x500,
}
}

crate::wire_enum! {
/// Outcome of a hypercall, in [`Request::status`].
pub enum Status: u32 {
    /// Done; `ret` holds the results.
    Ok = 0,
    /// The host does not know this hypercall number, or the producer that serves it is not in
    /// this run (the feature bits say which are).
    UnknownNr = 1,
    /// An argument was out of range; nothing was done.
    InvalidArgument = 2,
    /// The hypercall may exist in this run but the host cannot carry it out in the present
    /// state: the guest has not announced its ABI version ([`crate::version`]), and the host
    /// serves none of its own interfaces until it has. Also what a [`Nr::VeSuspend`] whose wait
    /// the run's time limit ended is answered (the guest does not run again to read it).
    Unavailable = 3,
    /// [`Nr::VePark`]: the host cannot hand out a token (no ring registered on this vCPU, or
    /// every token of it is out); nothing was done.
    NoToken = 4,
}
}

/// Required alignment of a [`Request`]'s guest-physical address.
pub const REQUEST_ALIGN: u64 = 8;
/// Exclusive upper bound of a [`Request`]'s guest-physical address (it travels in 32 bits).
pub const REQUEST_ADDR_LIMIT: u64 = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_refused() {
        for &nr in Nr::ALL {
            assert_eq!(Nr::try_from(nr as u32), Ok(nr));
        }
        assert_eq!(Nr::try_from(0x102), Err(0x102));
        assert_eq!(Nr::try_from(0), Err(0));
    }
}
