//! The recorder: events on tracks, kept in memory until the run ends.
//!
//! One recorder per VM, shared through [`Tracer`] handles (the pager reports from its fetcher
//! threads too). It is per VM rather than process-wide because tests run several VMs in one
//! process at once, and one run's trace must not collect another's events. A run without
//! `--trace` holds [`Tracer::off`]: every call is one branch on a `None`, and the arguments of an
//! event are built by a closure that is then never called.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many events a trace keeps. Past it, new events are dropped and counted, except the ends
/// of spans whose begin was kept (so every kept span is whole). An event takes about 250 bytes
/// in memory with its arguments and 120 in the file; the first boot of `cargo xtask run`
/// records about 11,000, so the cap (about 125 MB of memory at most) is for long benchmarks.
pub const MAX_EVENTS: usize = 500_000;

/// Where an event is drawn: one row ("thread") of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Track {
    /// The host's view of a vCPU: its exits, the events injected into it, its synchronous waits.
    Vcpu(usize),
    /// Host work that is no vCPU's, by name (e.g. a producer's worker threads).
    Host(&'static str),
    /// The guest's view of a vCPU: which task it runs (from the guest's trace records).
    GuestVcpu(usize),
    /// One guest task (a vCPU's task slot, in one generation): when it ran. Named by the task's
    /// name where the guest told it ([`Tracer::name_track`]).
    GuestTask {
        /// The vCPU whose slot it is.
        vcpu: usize,
        /// Its slot.
        slot: u16,
        /// The low bits of the slot's generation (`pvagent_abi::trace::TaskSwitch`).
        generation: u8,
    },
}

/// An event argument's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A number, written in hex (a port, an address, an MSR): a string in the JSON.
    Hex(u64),
    /// A number, written as a JSON number.
    Uint(u64),
    /// Text.
    Text(Cow<'static, str>),
    /// A flag.
    Bool(bool),
}

/// An event's arguments, shown with it in the viewer.
pub type Args = Vec<(&'static str, Arg)>;

/// What kind of event, with what only that kind has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// A span whose begin and length are known when it is recorded.
    Complete {
        duration: Duration,
    },
    Instant,
    /// The begin and the end of a span recorded apart (possibly on different threads),
    /// matched by category and id.
    AsyncBegin {
        id: u64,
    },
    AsyncEnd {
        id: u64,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Event {
    pub phase: Phase,
    pub track: Track,
    /// Empty for events that are not async spans.
    pub category: &'static str,
    pub name: Cow<'static, str>,
    pub at: Instant,
    pub args: Args,
}

/// Everything recorded, handed to the writer.
#[derive(Debug)]
pub(super) struct Recorded {
    pub events: Vec<Event>,
    pub dropped: u64,
    pub cap: usize,
    /// Names given to tracks ([`Tracer::name_track`]); other tracks have their default name.
    pub track_names: HashMap<Track, String>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    dropped: u64,
    /// Async spans begun and kept, not yet ended: (category, id) -> the begin's track and name.
    open: HashMap<(&'static str, u64), (Track, Cow<'static, str>)>,
    /// Async spans whose begin was dropped: their end is dropped too.
    dropped_open: HashSet<(&'static str, u64)>,
    /// Names given to tracks (not events: never capped, one per track).
    track_names: HashMap<Track, String>,
}

impl Log {
    fn has_room(&self, cap: usize) -> bool {
        self.events.len() < cap
    }

    fn push(&mut self, cap: usize, event: Event) {
        if self.has_room(cap) {
            self.events.push(event);
        } else {
            self.dropped += 1;
        }
    }

    fn begin(&mut self, cap: usize, event: Event, id: u64) {
        let key = (event.category, id);
        if self.has_room(cap) {
            self.open.insert(key, (event.track, event.name.clone()));
            self.events.push(event);
        } else {
            self.dropped_open.insert(key);
            self.dropped += 1;
        }
    }

    /// Ends span `id` of `category` where and under the name it began. Whether it had begun
    /// (kept or dropped); a span that never began is not recorded.
    fn end(&mut self, category: &'static str, id: u64, at: Instant, args: impl FnOnce() -> Args) -> bool {
        if let Some((track, name)) = self.open.remove(&(category, id)) {
            // Never capped: the begin was kept, so its end is too.
            let args = args();
            self.events.push(Event { phase: Phase::AsyncEnd { id }, track, category, name, at, args });
            true
        } else if self.dropped_open.remove(&(category, id)) {
            self.dropped += 1;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Recorder {
    cap: usize,
    log: Mutex<Log>,
}

/// A handle to a run's recorder, or to none (tracing off). Cheap to clone; thread-safe.
#[derive(Clone, Debug, Default)]
pub struct Tracer(Option<Arc<Recorder>>);

impl Tracer {
    /// A handle that records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// A new recorder keeping at most `cap` events.
    pub fn start(cap: usize) -> Self {
        Self(Some(Arc::new(Recorder { cap, log: Mutex::new(Log::default()) })))
    }

    /// Whether this run is traced.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    fn log(&self) -> Option<(usize, MutexGuard<'_, Log>)> {
        let recorder = self.0.as_ref()?;
        // A thread that panicked while recording left the log consistent (every update is one
        // push or insert): keep recording.
        Some((recorder.cap, recorder.log.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// A span on `track` from `start` to `end`.
    pub fn complete(
        &self,
        track: Track,
        name: impl Into<Cow<'static, str>>,
        start: Instant,
        end: Instant,
        args: impl FnOnce() -> Args,
    ) {
        let Some((cap, mut log)) = self.log() else { return };
        let duration = end.saturating_duration_since(start);
        let event = Event {
            phase: Phase::Complete { duration },
            track,
            category: "",
            name: name.into(),
            at: start,
            args: args(),
        };
        log.push(cap, event);
    }

    /// Names `track` (the last name given wins).
    pub fn name_track(&self, track: Track, name: String) {
        let Some((_, mut log)) = self.log() else { return };
        log.track_names.insert(track, name);
    }

    /// Something that happened on `track` now (an injection).
    pub fn instant(&self, track: Track, name: &'static str, args: impl FnOnce() -> Args) {
        let Some((cap, mut log)) = self.log() else { return };
        let event =
            Event { phase: Phase::Instant, track, category: "", name: name.into(), at: Instant::now(), args: args() };
        log.push(cap, event);
    }

    /// Span `id` of `category` begins on `track` at `at`; it ends with [`Tracer::end_span`],
    /// from any thread. An id is unique within its category while its span is open.
    pub fn begin_span(
        &self,
        track: Track,
        category: &'static str,
        name: &'static str,
        id: u64,
        at: Instant,
        args: impl FnOnce() -> Args,
    ) {
        let Some((cap, mut log)) = self.log() else { return };
        let event = Event { phase: Phase::AsyncBegin { id }, track, category, name: name.into(), at, args: args() };
        log.begin(cap, event, id);
    }

    /// Span `id` of `category` ends at `at`, where and under the name it began. Returns whether
    /// it had begun (false also when tracing is off); nothing is recorded for a span that did
    /// not.
    pub fn end_span(&self, category: &'static str, id: u64, at: Instant, args: impl FnOnce() -> Args) -> bool {
        let Some((_, mut log)) = self.log() else { return false };
        log.end(category, id, at, args)
    }

    /// Ends every span still open at `end` (the span says so), and takes everything recorded:
    /// the recorder is empty afterwards.
    pub(super) fn take(&self, end: Instant) -> Recorded {
        let Some((cap, mut log)) = self.log() else {
            return Recorded { events: Vec::new(), dropped: 0, cap: 0, track_names: HashMap::new() };
        };
        let open: Vec<(&'static str, u64)> = log.open.keys().copied().collect();
        for (category, id) in open {
            log.end(category, id, end, || vec![("open_at_end_of_run", Arg::Bool(true))]);
        }
        let log = std::mem::take(&mut *log);
        Recorded { events: log.events, dropped: log.dropped, cap, track_names: log.track_names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(recorded: &Recorded) -> Vec<Phase> {
        recorded.events.iter().map(|e| e.phase).collect()
    }

    #[test]
    fn an_off_tracer_records_nothing_and_never_builds_arguments() {
        let t = Tracer::off();
        assert!(!t.is_on());
        t.instant(Track::Vcpu(0), "x", || unreachable!("arguments built for an untraced run"));
        t.complete(Track::Vcpu(0), "x", Instant::now(), Instant::now(), || unreachable!());
        t.begin_span(Track::Vcpu(0), "c", "x", 1, Instant::now(), || unreachable!());
        assert!(!t.end_span("c", 1, Instant::now(), || unreachable!()));
        assert!(t.take(Instant::now()).events.is_empty());
    }

    #[test]
    fn a_span_ends_where_it_began_and_an_unknown_one_is_not_recorded() {
        let t = Tracer::start(10);
        let at = Instant::now();
        t.begin_span(Track::Host("workers"), "job", "job", 7, at, Vec::new);
        assert!(t.end_span("job", 7, at, || vec![("result", Arg::Uint(1))]));
        assert!(!t.end_span("job", 7, at, || unreachable!("ended twice")), "already ended");
        assert!(!t.end_span("job", 8, at, || unreachable!("never began")));
        let recorded = t.take(at);
        assert_eq!(phases(&recorded), [Phase::AsyncBegin { id: 7 }, Phase::AsyncEnd { id: 7 }]);
        assert_eq!(recorded.events[1].track, Track::Host("workers"));
        assert_eq!(recorded.dropped, 0);
    }

    #[test]
    fn a_full_trace_drops_and_counts_but_keeps_every_kept_span_whole() {
        let t = Tracer::start(3);
        let at = Instant::now();
        t.begin_span(Track::Vcpu(0), "c", "kept", 7, at, Vec::new);
        t.instant(Track::Vcpu(0), "a", Vec::new);
        t.instant(Track::Vcpu(0), "b", Vec::new);
        // Full: these are dropped...
        t.instant(Track::Vcpu(0), "c", Vec::new);
        t.begin_span(Track::Vcpu(0), "c", "dropped", 8, at, Vec::new);
        // ...and so is the end of a dropped begin (which still counts as begun), but not the
        // end of a kept one.
        assert!(t.end_span("c", 8, at, Vec::new));
        assert!(t.end_span("c", 7, at, Vec::new));
        let recorded = t.take(at);
        assert_eq!(recorded.dropped, 3, "c, begin 8, end 8");
        assert_eq!(recorded.events.len(), 4);
        assert_eq!(recorded.events[3].phase, Phase::AsyncEnd { id: 7 });
    }

    #[test]
    fn spans_open_at_the_end_of_the_run_are_closed_and_say_so() {
        let t = Tracer::start(10);
        let at = Instant::now();
        t.begin_span(Track::Vcpu(0), "c", "open", 1, at, Vec::new);
        let recorded = t.take(at);
        assert_eq!(recorded.events[1].phase, Phase::AsyncEnd { id: 1 });
        assert_eq!(recorded.events[1].args, vec![("open_at_end_of_run", Arg::Bool(true))]);
        assert!(t.take(at).events.is_empty(), "taken");
    }

    #[test]
    fn a_named_track_keeps_its_last_name() {
        let t = Tracer::start(1);
        let task = Track::GuestTask { vcpu: 0, slot: 3, generation: 1 };
        t.name_track(task, "first".into());
        t.name_track(task, "pnp-reader".into());
        Tracer::off().name_track(task, "ignored".into());
        assert_eq!(t.take(Instant::now()).track_names.get(&task).map(String::as_str), Some("pnp-reader"));
    }
}
