//! The run's timeline (`--trace FILE`): a recorder that the run loop, the devices and the
//! producers report to, and a writer for the Chrome trace-event JSON format, which
//! <https://ui.perfetto.dev> (and `chrome://tracing`) opens.
//!
//! One recorder per VM, shared through [`Tracer`] handles (the pager reports from its fetcher
//! threads too). It is per VM rather than process-wide because tests run several VMs in one
//! process at once, and one run's trace must not collect another's events. A run without
//! `--trace` holds [`Tracer::off`]: every call is one branch on a `None`, and the arguments of an
//! event are built by a closure that is then never called.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many events a trace keeps. Past it, new events are dropped and counted, except the ends
/// of spans whose begin was kept (so every kept span is whole). An event takes about 250 bytes
/// in memory with its arguments and 120 in the file; the first boot of `cargo xtask run`
/// records about 11,000, so the cap (about 125 MB of memory at most) is for long benchmarks.
pub const MAX_EVENTS: usize = 500_000;

/// The Chrome trace "process" of the host stub's own tracks.
const HOST_PID: u32 = 1;
/// The "process" of the guest's tracks.
const GUEST_PID: u32 = 2;

/// Where an event is drawn: one row ("thread") of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Track {
    /// The host's view of a vCPU: its exits, the events injected into it, its synchronous waits.
    Vcpu(usize),
    /// The pager's fetcher threads: each fetch's completion.
    Fetchers,
    /// The guest's view of a vCPU: which task it runs (from the guest's trace records).
    GuestVcpu(usize),
}

impl Track {
    fn pid(self) -> u32 {
        match self {
            Track::Vcpu(_) | Track::Fetchers => HOST_PID,
            Track::GuestVcpu(_) => GUEST_PID,
        }
    }

    /// Thread ids are unique across both processes (viewers may merge equal ones).
    fn tid(self) -> u64 {
        match self {
            Track::Vcpu(i) => 1000 + i as u64,
            Track::Fetchers => 1900,
            Track::GuestVcpu(i) => 2000 + i as u64,
        }
    }

    fn name(self) -> String {
        match self {
            Track::Vcpu(i) => format!("vCPU {i} (exits)"),
            Track::Fetchers => "pager fetchers".into(),
            Track::GuestVcpu(i) => format!("vCPU {i} (tasks)"),
        }
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Complete { duration: Duration },
    Instant,
    AsyncBegin { id: u64 },
    AsyncEnd { id: u64 },
}

#[derive(Clone, Debug)]
struct Event {
    phase: Phase,
    track: Track,
    category: &'static str,
    name: Cow<'static, str>,
    at: Instant,
    args: Args,
}

/// Category of page-not-present token spans.
const CAT_PNP: &str = "pnp";
/// Category of fetch spans.
const CAT_FETCH: &str = "fetch";
/// Name of a page-not-present token's span.
const PNP_SPAN: &str = "page not present";
/// Name of a fetch's span.
const FETCH_SPAN: &str = "fetch";

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    dropped: u64,
    /// Async spans begun and kept, not yet ended: (category, id) -> the begin's track and name.
    open: HashMap<(&'static str, u64), (Track, Cow<'static, str>)>,
    /// Async spans whose begin was dropped: their end is dropped too.
    dropped_open: HashSet<(&'static str, u64)>,
    /// Page-not-present resolutions posted before their event: (vCPU, token) -> (when, result).
    early_resolutions: HashMap<(usize, u32), (Instant, u32)>,
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

    /// Ends span `id` of `category` where and under the name it began, if it was kept.
    fn end(&mut self, category: &'static str, id: u64, at: Instant, args: Args) {
        if let Some((track, name)) = self.open.remove(&(category, id)) {
            // Never capped: the begin was kept, so its end is too.
            self.events.push(Event { phase: Phase::AsyncEnd { id }, track, category, name, at, args });
        } else {
            self.dropped_open.remove(&(category, id));
            self.dropped += 1;
        }
    }
}

#[derive(Debug)]
struct Recorder {
    cap: usize,
    log: Mutex<Log>,
}

/// What [`Tracer::write_json`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Events in the file (metadata included).
    pub events: usize,
    /// Events dropped because the trace was full.
    pub dropped: u64,
    /// The cap that dropped them.
    pub cap: usize,
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

    /// Something that happened on `track` now (an injection).
    pub fn instant(&self, track: Track, name: &'static str, args: impl FnOnce() -> Args) {
        let Some((cap, mut log)) = self.log() else { return };
        let event =
            Event { phase: Phase::Instant, track, category: "", name: name.into(), at: Instant::now(), args: args() };
        log.push(cap, event);
    }

    /// The host delivered a page-not-present event with `token` to `vcpu`: the token's span
    /// begins. If its resolution was posted first, the span ends at once (zero length) and says
    /// so.
    pub fn page_not_present_event(&self, vcpu: usize, token: u32, gpa: u64, gva: Option<u64>) {
        let Some((cap, mut log)) = self.log() else { return };
        let at = Instant::now();
        let id = pnp_id(vcpu, token);
        let mut args = vec![("token", Arg::Hex(token.into())), ("gpa", Arg::Hex(gpa))];
        if let Some(gva) = gva {
            args.push(("gva", Arg::Hex(gva)));
        }
        let begin = Event {
            phase: Phase::AsyncBegin { id },
            track: Track::Vcpu(vcpu),
            category: CAT_PNP,
            name: PNP_SPAN.into(),
            at,
            args,
        };
        log.begin(cap, begin, id);
        if let Some((posted, result)) = log.early_resolutions.remove(&(vcpu, token)) {
            let early_by = at.saturating_duration_since(posted);
            let args = vec![
                ("result", Arg::Text(result_name(result))),
                ("resolved_before_event", Arg::Bool(true)),
                ("resolution_posted_us_earlier", Arg::Uint(early_by.as_micros() as u64)),
            ];
            log.end(CAT_PNP, id, at, args);
        }
    }

    /// The host posted `token`'s resolution to `vcpu`'s ring: the token's span ends (or, for a
    /// resolution before its event, is remembered for the event).
    pub fn page_not_present_resolution(&self, vcpu: usize, token: u32, result: u32) {
        let Some((_, mut log)) = self.log() else { return };
        let at = Instant::now();
        let id = pnp_id(vcpu, token);
        if log.open.contains_key(&(CAT_PNP, id)) || log.dropped_open.contains(&(CAT_PNP, id)) {
            log.end(CAT_PNP, id, at, vec![("result", Arg::Text(result_name(result)))]);
        } else {
            log.early_resolutions.insert((vcpu, token), (at, result));
        }
    }

    /// The pager starts fetching `page` (its own id: a page has at most one fetch in flight),
    /// due after `latency`.
    pub fn fetch_submitted(&self, page: u64, gpa: u64, latency: Duration) {
        let Some((cap, mut log)) = self.log() else { return };
        let args = vec![
            ("page", Arg::Uint(page)),
            ("gpa", Arg::Hex(gpa)),
            ("latency_us", Arg::Uint(latency.as_micros() as u64)),
        ];
        let begin = Event {
            phase: Phase::AsyncBegin { id: page },
            track: Track::Fetchers,
            category: CAT_FETCH,
            name: FETCH_SPAN.into(),
            at: Instant::now(),
            args,
        };
        log.begin(cap, begin, page);
    }

    /// `page`'s fetch is over: its span ends, and the completion's work (filling the page,
    /// posting the resolutions of `waiters` tokens), from `started` until now, is a span on the
    /// fetcher track.
    pub fn fetch_completed(&self, page: u64, result: u32, waiters: usize, started: Instant) {
        let Some((cap, mut log)) = self.log() else { return };
        let at = Instant::now();
        let result = result_name(result);
        log.end(CAT_FETCH, page, at, vec![("result", Arg::Text(result.clone()))]);
        let work = Event {
            phase: Phase::Complete { duration: at.saturating_duration_since(started) },
            track: Track::Fetchers,
            category: "",
            name: "complete fetch".into(),
            at: started,
            args: vec![
                ("page", Arg::Uint(page)),
                ("result", Arg::Text(result)),
                ("tokens_resolved", Arg::Uint(waiters as u64)),
            ],
        };
        log.push(cap, work);
    }

    /// Ends every span still open at `end` (a token or a fetch the run ended before resolving:
    /// the span says so), then writes the trace, with timestamps in microseconds since
    /// `run_start`. The recorder is empty afterwards.
    pub fn write_json(&self, out: &mut impl Write, run_start: Instant, end: Instant) -> io::Result<Written> {
        let Some((cap, mut log)) = self.log() else {
            return Ok(Written { events: 0, dropped: 0, cap: 0 });
        };
        let open: Vec<(&'static str, u64)> = log.open.keys().copied().collect();
        for (category, id) in open {
            log.end(category, id, end, vec![("open_at_end_of_run", Arg::Bool(true))]);
        }
        let mut events = std::mem::take(&mut log.events);
        let dropped = log.dropped;
        *log = Log::default();
        drop(log);

        // In time order, and a longer span first when two start together, so a span that
        // contains another comes first (the legacy viewer nests by order).
        events.sort_by_key(|e| {
            let duration = match e.phase {
                Phase::Complete { duration } => duration,
                _ => Duration::ZERO,
            };
            (e.at, std::cmp::Reverse(duration))
        });
        let tracks: BTreeSet<Track> = events.iter().map(|e| e.track).collect();
        let mut written = 0;
        out.write_all(b"{\"traceEvents\":[\n")?;
        let mut first = true;
        let mut separator = |out: &mut dyn Write| -> io::Result<()> {
            if !std::mem::take(&mut first) {
                out.write_all(b",\n")?;
            }
            Ok(())
        };
        let pids: BTreeSet<u32> = tracks.iter().map(|t| t.pid()).collect();
        for pid in pids {
            let name = if pid == HOST_PID { "host stub" } else { "guest" };
            separator(out)?;
            write!(out, r#"{{"ph":"M","name":"process_name","ts":0,"pid":{pid},"tid":0,"args":{{"name":"{name}"}}}}"#)?;
            separator(out)?;
            write!(
                out,
                r#"{{"ph":"M","name":"process_sort_index","ts":0,"pid":{pid},"tid":0,"args":{{"sort_index":{pid}}}}}"#
            )?;
            written += 2;
        }
        for track in &tracks {
            let (pid, tid) = (track.pid(), track.tid());
            separator(out)?;
            write!(out, r#"{{"ph":"M","name":"thread_name","ts":0,"pid":{pid},"tid":{tid},"args":{{"name":"#)?;
            write_string(out, &track.name())?;
            out.write_all(b"}}")?;
            separator(out)?;
            write!(
                out,
                r#"{{"ph":"M","name":"thread_sort_index","ts":0,"pid":{pid},"tid":{tid},"args":{{"sort_index":{tid}}}}}"#
            )?;
            written += 2;
        }
        for event in &events {
            separator(out)?;
            write_event(out, event, run_start)?;
            written += 1;
        }
        write!(
            out,
            "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{{\"producer\":\"pvagent-host\",\"dropped_events\":{dropped},\"max_events\":{cap}}}}}\n"
        )?;
        out.flush()?;
        Ok(Written { events: written, dropped, cap })
    }
}

fn pnp_id(vcpu: usize, token: u32) -> u64 {
    (vcpu as u64) << 32 | u64::from(token)
}

fn result_name(result: u32) -> Cow<'static, str> {
    match result {
        pvagent_abi::pnp::RESULT_RETRY => "present".into(),
        pvagent_abi::pnp::RESULT_FAILED => "failed".into(),
        other => format!("unknown ({other})").into(),
    }
}

/// Microseconds with nanosecond digits, the unit of `ts` and `dur`.
fn micros(d: Duration) -> String {
    let ns = d.as_nanos();
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn write_event(out: &mut dyn Write, e: &Event, run_start: Instant) -> io::Result<()> {
    let ts = micros(e.at.saturating_duration_since(run_start));
    out.write_all(b"{\"name\":")?;
    write_string(out, &e.name)?;
    if !e.category.is_empty() {
        write!(out, ",\"cat\":\"{}\"", e.category)?;
    }
    match e.phase {
        Phase::Complete { duration } => write!(out, ",\"ph\":\"X\",\"dur\":{}", micros(duration))?,
        // Thread-scoped: drawn on its track, not across the whole process.
        Phase::Instant => out.write_all(b",\"ph\":\"i\",\"s\":\"t\"")?,
        Phase::AsyncBegin { id } => write!(out, ",\"ph\":\"b\",\"id\":\"{id:#x}\"")?,
        Phase::AsyncEnd { id } => write!(out, ",\"ph\":\"e\",\"id\":\"{id:#x}\"")?,
    }
    write!(out, ",\"ts\":{ts},\"pid\":{},\"tid\":{}", e.track.pid(), e.track.tid())?;
    if !e.args.is_empty() {
        out.write_all(b",\"args\":{")?;
        for (i, (key, value)) in e.args.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write_string(out, key)?;
            out.write_all(b":")?;
            match value {
                Arg::Hex(v) => write!(out, "\"{v:#x}\"")?,
                Arg::Uint(v) => write!(out, "{v}")?,
                Arg::Text(s) => write_string(out, s)?,
                Arg::Bool(b) => write!(out, "{b}")?,
            }
        }
        out.write_all(b"}")?;
    }
    out.write_all(b"}")
}

/// Writes `s` as a JSON string: quotes, backslashes and control characters escaped.
fn write_string(out: &mut dyn Write, s: &str) -> io::Result<()> {
    out.write_all(b"\"")?;
    let mut rest = s;
    while let Some(pos) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.write_all(&rest.as_bytes()[..pos])?;
        let c = rest.as_bytes()[pos];
        match c {
            b'"' => out.write_all(b"\\\"")?,
            b'\\' => out.write_all(b"\\\\")?,
            b'\n' => out.write_all(b"\\n")?,
            b'\r' => out.write_all(b"\\r")?,
            b'\t' => out.write_all(b"\\t")?,
            _ => write!(out, "\\u{c:04x}")?,
        }
        rest = &rest[pos + 1..];
    }
    out.write_all(rest.as_bytes())?;
    out.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn written(tracer: &Tracer, run_start: Instant) -> (Value, Written) {
        let mut bytes = Vec::new();
        let summary = tracer.write_json(&mut bytes, run_start, Instant::now()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        (serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}")), summary)
    }

    fn events(json: &Value) -> &Vec<Value> {
        json["traceEvents"].as_array().unwrap()
    }

    fn of_phase<'a>(json: &'a Value, ph: &str) -> Vec<&'a Value> {
        events(json).iter().filter(|e| e["ph"] == ph).collect()
    }

    #[test]
    fn an_off_tracer_records_nothing_and_never_builds_arguments() {
        let t = Tracer::off();
        assert!(!t.is_on());
        t.instant(Track::Vcpu(0), "x", || unreachable!("arguments built for an untraced run"));
        t.complete(Track::Vcpu(0), "x", Instant::now(), Instant::now(), || unreachable!());
        t.page_not_present_event(0, 1, 0, None);
        let mut out = Vec::new();
        assert_eq!(t.write_json(&mut out, Instant::now(), Instant::now()).unwrap().events, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn the_output_is_chrome_trace_json_with_named_tracks() {
        let start = Instant::now();
        let t = Tracer::start(100);
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é";
        t.complete(Track::Vcpu(0), "io out", start, start + Duration::from_nanos(2_500), || {
            vec![("port", Arg::Hex(0x3F8)), ("size", Arg::Uint(1))]
        });
        t.instant(Track::Vcpu(0), "inject #AC", || vec![("why", Arg::Text(nasty.into()))]);
        t.complete(Track::GuestVcpu(0), nasty.to_string(), start, start + Duration::from_millis(1), Vec::new);
        let (json, summary) = written(&t, start);
        assert_eq!(json["displayTimeUnit"], "ns");
        assert_eq!(json["otherData"]["dropped_events"], 0);
        assert_eq!(summary, Written { events: events(&json).len(), dropped: 0, cap: 100 });

        let exit = events(&json).iter().find(|e| e["name"] == "io out").unwrap();
        assert_eq!((exit["ph"].as_str(), exit["pid"].as_u64(), exit["tid"].as_u64()), (Some("X"), Some(1), Some(1000)));
        assert_eq!(exit["ts"].as_f64(), Some(0.0));
        assert_eq!(exit["dur"].as_f64(), Some(2.5), "microseconds with nanosecond digits");
        assert_eq!(exit["args"]["port"], "0x3f8");
        assert_eq!(exit["args"]["size"], 1);
        let instant = events(&json).iter().find(|e| e["name"] == "inject #AC").unwrap();
        assert_eq!((instant["ph"].as_str(), instant["s"].as_str()), (Some("i"), Some("t")));
        assert_eq!(instant["args"]["why"], nasty, "strings survive escaping");
        assert!(events(&json).iter().any(|e| e["name"] == nasty && e["pid"] == 2 && e["dur"].as_f64() == Some(1000.0)));

        let names: Vec<(&str, u64, u64)> = of_phase(&json, "M")
            .iter()
            .filter(|m| m["name"] == "process_name" || m["name"] == "thread_name")
            .map(|m| (m["args"]["name"].as_str().unwrap(), m["pid"].as_u64().unwrap(), m["tid"].as_u64().unwrap()))
            .collect();
        assert!(names.contains(&("host stub", 1, 0)) && names.contains(&("guest", 2, 0)), "{names:?}");
        assert!(names.contains(&("vCPU 0 (exits)", 1, 1000)) && names.contains(&("vCPU 0 (tasks)", 2, 2000)));
    }

    #[test]
    fn every_page_not_present_span_ends_once_whatever_came_first() {
        let t = Tracer::start(100);
        // Event, then resolution.
        t.page_not_present_event(0, 0x1_0001, 0x4000_0000, Some(0x7000));
        t.page_not_present_resolution(0, 0x1_0001, pvagent_abi::pnp::RESULT_RETRY);
        // Resolution first (the "resolved before its event" path).
        t.page_not_present_resolution(0, 0x1_0002, pvagent_abi::pnp::RESULT_FAILED);
        t.page_not_present_event(0, 0x1_0002, 0x4000_1000, None);
        // The same token on another vCPU is another span.
        t.page_not_present_event(1, 0x1_0001, 0x4000_2000, None);
        let (json, _) = written(&t, Instant::now());
        let begins = of_phase(&json, "b");
        let ends = of_phase(&json, "e");
        assert_eq!(begins.len(), 3);
        assert_eq!(ends.len(), 3, "the span still open at the end of the run is closed");
        for b in &begins {
            let end = ends.iter().find(|e| e["id"] == b["id"] && e["cat"] == b["cat"]).unwrap();
            assert_eq!(end["name"], b["name"]);
            assert!(end["ts"].as_f64() >= b["ts"].as_f64());
        }
        let early = ends.iter().find(|e| e["args"]["resolved_before_event"] == true).unwrap();
        assert_eq!(early["args"]["result"], "failed");
        assert_eq!(ends.iter().filter(|e| e["args"]["open_at_end_of_run"] == true).count(), 1);
    }

    #[test]
    fn a_full_trace_drops_and_counts_but_keeps_every_kept_span_whole() {
        let t = Tracer::start(3);
        t.fetch_submitted(7, 0x4000_7000, Duration::from_micros(50));
        t.instant(Track::Vcpu(0), "a", Vec::new);
        t.instant(Track::Vcpu(0), "b", Vec::new);
        // Full: these are dropped...
        t.instant(Track::Vcpu(0), "c", Vec::new);
        t.fetch_submitted(8, 0x4000_8000, Duration::from_micros(50));
        // ...and so is the end of a dropped begin, but not the end of a kept one.
        t.fetch_completed(8, pvagent_abi::pnp::RESULT_RETRY, 0, Instant::now());
        t.fetch_completed(7, pvagent_abi::pnp::RESULT_RETRY, 1, Instant::now());
        let (json, summary) = written(&t, Instant::now());
        // c, begin 8, end 8, the completion span of 8 and that of 7.
        assert_eq!(summary.dropped, 5);
        assert_eq!(json["otherData"]["dropped_events"], 5);
        assert_eq!(of_phase(&json, "b").len(), 1);
        assert_eq!(of_phase(&json, "e").len(), 1);
        assert_eq!(of_phase(&json, "e")[0]["id"], "0x7");
    }

    #[test]
    fn events_come_out_in_time_order_with_containing_spans_first() {
        let start = Instant::now();
        let t = Tracer::start(100);
        let later = start + Duration::from_micros(10);
        t.complete(Track::Vcpu(0), "inner", later, later + Duration::from_micros(1), Vec::new);
        t.complete(Track::Vcpu(0), "outer", later, later + Duration::from_micros(5), Vec::new);
        t.complete(Track::Vcpu(0), "first", start, start + Duration::from_micros(1), Vec::new);
        let (json, _) = written(&t, start);
        let order: Vec<&str> = of_phase(&json, "X").iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(order, ["first", "outer", "inner"]);
    }
}
