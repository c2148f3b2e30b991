//! The trace port's wire format: how the guest reports its side of a run's timeline to the host
//! stub, which records it with its own events (see `docs/design.md`, "Timeline").
//!
//! One 32-bit `out` to [`crate::port::TRACE`] is one record: bits 7:0 a [`TraceKind`], bits
//! 31:8 its payload. A guest writes there only while [`crate::cpuid::Features::TRACE`] is set,
//! so an untraced run pays nothing; each record costs one exit while tracing. A task's name
//! travels once per task, by hypercall ([`crate::hypercall::Nr::TraceTaskName`]), before the
//! first switch to it, so the host can show the task by its name.

crate::wire_enum! {
/// What a trace record reports: bits 7:0 of the value written. 0 is no kind, so that a stray
/// write of zero is rejected rather than read as a record.
pub enum TraceKind: u32 {
    /// This vCPU switches to another task; the payload is a [`TaskSwitch`].
    TaskSwitch = 1,
}
}

crate::wire_enum! {
/// What the incoming task of a [`TaskSwitch`] is: bits 25:24 of the value.
pub enum TaskKind: u32 {
    /// A kernel task (CPL 0 throughout).
    Kernel = 0,
    /// A task that runs at CPL 3.
    User = 1,
    /// The vCPU's idle task: the vCPU has nothing else to run (it halts when no interrupt is
    /// pending), so its time is the vCPU's idle time.
    Idle = 2,
}
}

/// Longest task name the host accepts ([`crate::hypercall::Nr::TraceTaskName`]).
pub const TASK_NAME_MAX: u64 = 64;

/// Shift of the incoming task's slot (16 bits) in a [`TaskSwitch`] record.
pub const TASK_SLOT_SHIFT: u32 = 8;
/// Shift of the [`TaskKind`] (2 bits).
pub const TASK_KIND_SHIFT: u32 = 24;
/// Shift of the low bits of the slot's generation.
pub const TASK_GENERATION_SHIFT: u32 = 26;
/// How many low bits of the generation a record carries: enough to tell consecutive tasks in
/// one slot apart on a timeline, not to name a task for ever.
pub const TASK_GENERATION_BITS: u32 = 6;

/// The guest switches the vCPU to the task in `slot` (per-vCPU task slots; the generation
/// counts the slot's reuses). Only the incoming task is reported: the host knows which task a
/// vCPU ran from the previous record.
///
/// ```text
///  31        26 25  24 23                 8 7        0
/// | generation | kind |        slot        | kind = 1 |
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSwitch {
    /// The incoming task's slot.
    pub slot: u16,
    /// What the incoming task is.
    pub kind: TaskKind,
    /// The low [`TASK_GENERATION_BITS`] of the slot's generation (higher bits are dropped).
    pub generation: u8,
}

impl TaskSwitch {
    /// The value to write for this switch.
    pub const fn encode(self) -> u32 {
        let generation = self.generation as u32 & ((1 << TASK_GENERATION_BITS) - 1);
        TraceKind::TaskSwitch as u32
            | (self.slot as u32) << TASK_SLOT_SHIFT
            | (self.kind as u32) << TASK_KIND_SHIFT
            | generation << TASK_GENERATION_SHIFT
    }
}

/// One decoded trace record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceRecord {
    /// See [`TaskSwitch`].
    TaskSwitch(TaskSwitch),
}

impl TraceRecord {
    /// Decodes a written value; the value itself is the error when its kind, or a field of its
    /// payload, is not one this ABI defines.
    pub fn decode(value: u32) -> Result<Self, u32> {
        match TraceKind::try_from(value & 0xFF)? {
            TraceKind::TaskSwitch => Ok(TraceRecord::TaskSwitch(TaskSwitch {
                slot: (value >> TASK_SLOT_SHIFT) as u16,
                kind: TaskKind::try_from((value >> TASK_KIND_SHIFT) & 0x3).map_err(|_| value)?,
                generation: (value >> TASK_GENERATION_SHIFT) as u8,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_switches_round_trip_for_every_kind_and_the_extreme_fields() {
        for &kind in TaskKind::ALL {
            for (slot, generation) in [(0, 0), (1, 1), (31, 63), (u16::MAX, 63)] {
                let switch = TaskSwitch { slot, kind, generation };
                assert_eq!(TraceRecord::decode(switch.encode()), Ok(TraceRecord::TaskSwitch(switch)));
            }
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let value = TaskSwitch { slot: 0x1234, kind: TaskKind::Idle, generation: 5 }.encode();
        assert_eq!(value, 0x01 | 0x1234 << 8 | 2 << 24 | 5 << 26);
    }

    #[test]
    fn only_the_low_generation_bits_are_sent() {
        let value = TaskSwitch { slot: 3, kind: TaskKind::Kernel, generation: 64 + 7 }.encode();
        let Ok(TraceRecord::TaskSwitch(decoded)) = TraceRecord::decode(value) else { panic!("{value:#x}") };
        assert_eq!((decoded.slot, decoded.generation), (3, 7));
    }

    #[test]
    fn unknown_kinds_and_task_kinds_are_rejected_with_the_raw_value() {
        assert_eq!(TraceRecord::decode(0), Err(0));
        assert_eq!(TraceRecord::decode(0xFF), Err(0xFF));
        let bad_task_kind = TraceKind::TaskSwitch as u32 | 3 << TASK_KIND_SHIFT;
        assert_eq!(TraceRecord::decode(bad_task_kind), Err(bad_task_kind));
    }
}
