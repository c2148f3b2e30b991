//! Writing a recorded timeline as Chrome trace-event JSON (the "JSON Object Format": a
//! `traceEvents` array, metadata events naming the processes and threads, `displayTimeUnit`,
//! `otherData`), serialized by `serde_json` straight to the file, one event at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::recorder::{Arg, Args, Event, Phase, Tracer, Track};

/// The Chrome trace "process" of the host stub's own tracks.
const HOST_PID: u32 = 1;
/// The "process" of the guest's tracks.
const GUEST_PID: u32 = 2;

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

/// Process and thread ids of the tracks, unique across both processes (viewers may merge equal
/// thread ids): vCPU N's host track 1000 + N, host work tracks from 1900 in name order, vCPU N's
/// guest track 2000 + N, guest tasks from 3000 in (vCPU, slot, generation) order.
fn track_ids(tracks: &BTreeSet<Track>) -> BTreeMap<Track, (u32, u64)> {
    let mut host_work = 1900;
    let mut guest_task = 3000;
    tracks
        .iter()
        .map(|&track| {
            let ids = match track {
                Track::Vcpu(i) => (HOST_PID, 1000 + i as u64),
                Track::Host(_) => {
                    host_work += 1;
                    (HOST_PID, host_work - 1)
                }
                Track::GuestVcpu(i) => (GUEST_PID, 2000 + i as u64),
                Track::GuestTask { .. } => {
                    guest_task += 1;
                    (GUEST_PID, guest_task - 1)
                }
            };
            (track, ids)
        })
        .collect()
}

/// A track's name: the one given ([`Tracer::name_track`]), or the default for its kind.
fn track_name(track: Track, names: &HashMap<Track, String>) -> String {
    if let Some(name) = names.get(&track) {
        return name.clone();
    }
    match track {
        Track::Vcpu(i) => format!("vCPU {i} (exits)"),
        Track::Host(name) => name.into(),
        Track::GuestVcpu(i) => format!("vCPU {i} (tasks)"),
        Track::GuestTask { vcpu, slot, generation } => format!("vCPU {vcpu} task {slot} (gen {generation})"),
    }
}

/// Microseconds (the unit of `ts` and `dur`), with nanosecond digits.
fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

/// A metadata event (`"ph": "M"`): a process's or a thread's name or sort order.
#[derive(Serialize)]
struct Metadata<V: Serialize> {
    ph: &'static str,
    name: &'static str,
    ts: u32,
    pid: u32,
    tid: u64,
    args: V,
}

#[derive(Serialize)]
struct Name<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct SortIndex {
    sort_index: u64,
}

fn metadata<V: Serialize>(name: &'static str, pid: u32, tid: u64, args: V) -> Metadata<V> {
    Metadata { ph: "M", name, ts: 0, pid, tid, args }
}

/// A recorded event as it goes into the file.
struct ChromeEvent<'a> {
    event: &'a Event,
    pid: u32,
    tid: u64,
    run_start: Instant,
}

impl Serialize for ChromeEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &e.name)?;
        if !e.category.is_empty() {
            map.serialize_entry("cat", e.category)?;
        }
        match e.phase {
            Phase::Complete { duration } => {
                map.serialize_entry("ph", "X")?;
                map.serialize_entry("dur", &micros(duration))?;
            }
            Phase::Instant => {
                map.serialize_entry("ph", "i")?;
                // Thread-scoped: drawn on its track, not across the whole process.
                map.serialize_entry("s", "t")?;
            }
            Phase::AsyncBegin { id } => {
                map.serialize_entry("ph", "b")?;
                map.serialize_entry("id", &format!("{id:#x}"))?;
            }
            Phase::AsyncEnd { id } => {
                map.serialize_entry("ph", "e")?;
                map.serialize_entry("id", &format!("{id:#x}"))?;
            }
        }
        map.serialize_entry("ts", &micros(e.at.saturating_duration_since(self.run_start)))?;
        map.serialize_entry("pid", &self.pid)?;
        map.serialize_entry("tid", &self.tid)?;
        if !e.args.is_empty() {
            map.serialize_entry("args", &ChromeArgs(&e.args))?;
        }
        map.end()
    }
}

struct ChromeArgs<'a>(&'a Args);

impl Serialize for ChromeArgs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match value {
                // Addresses, ports and MSRs read best in hex, which JSON numbers cannot say.
                Arg::Hex(v) => map.serialize_entry(key, &format!("{v:#x}"))?,
                Arg::Uint(v) => map.serialize_entry(key, v)?,
                Arg::Text(s) => map.serialize_entry(key, s)?,
                Arg::Bool(b) => map.serialize_entry(key, b)?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct OtherData {
    producer: &'static str,
    dropped_events: u64,
    max_events: usize,
}

/// Writes one JSON value, then a separator, as the array's elements go.
fn element(out: &mut impl Write, first: &mut bool, value: &impl Serialize) -> io::Result<()> {
    if !std::mem::take(first) {
        out.write_all(b",\n")?;
    }
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)
}

impl Tracer {
    /// Ends every span still open at `end` (a token or a fetch the run ended before resolving:
    /// the span says so), then writes the trace, with timestamps in microseconds since
    /// `run_start`. The recorder is empty afterwards.
    pub fn write_json(&self, out: &mut impl Write, run_start: Instant, end: Instant) -> io::Result<Written> {
        if !self.is_on() {
            return Ok(Written { events: 0, dropped: 0, cap: 0 });
        }
        let recorded = self.take(end);
        let mut events = recorded.events;
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
        let ids = track_ids(&tracks);

        let mut written = 0;
        let mut first = true;
        out.write_all(b"{\"traceEvents\":[\n")?;
        let pids: BTreeSet<u32> = ids.values().map(|&(pid, _)| pid).collect();
        for pid in pids {
            let name = if pid == HOST_PID { "host stub" } else { "guest" };
            element(out, &mut first, &metadata("process_name", pid, 0, Name { name }))?;
            element(out, &mut first, &metadata("process_sort_index", pid, 0, SortIndex { sort_index: pid.into() }))?;
            written += 2;
        }
        for (&track, &(pid, tid)) in &ids {
            let name = track_name(track, &recorded.track_names);
            element(out, &mut first, &metadata("thread_name", pid, tid, Name { name: &name }))?;
            element(out, &mut first, &metadata("thread_sort_index", pid, tid, SortIndex { sort_index: tid }))?;
            written += 2;
        }
        for event in &events {
            let (pid, tid) = ids[&event.track];
            element(out, &mut first, &ChromeEvent { event, pid, tid, run_start })?;
            written += 1;
        }
        out.write_all(b"\n],\"displayTimeUnit\":\"ns\",\"otherData\":")?;
        let other = OtherData { producer: "pvagent-host", dropped_events: recorded.dropped, max_events: recorded.cap };
        serde_json::to_writer(&mut *out, &other).map_err(io::Error::from)?;
        out.write_all(b"}\n")?;
        out.flush()?;
        Ok(Written { events: written, dropped: recorded.dropped, cap: recorded.cap })
    }
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
    fn an_off_tracer_writes_nothing() {
        let mut out = Vec::new();
        assert_eq!(Tracer::off().write_json(&mut out, Instant::now(), Instant::now()).unwrap().events, 0);
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
        let (named, unnamed) = (
            Track::GuestTask { vcpu: 0, slot: 1, generation: 1 },
            Track::GuestTask { vcpu: 0, slot: 2, generation: 5 },
        );
        t.complete(named, "selftest", start, start + Duration::from_micros(1), Vec::new);
        t.complete(unnamed, "?", start, start + Duration::from_micros(1), Vec::new);
        t.name_track(named, "selftest (task 1)".into());
        t.begin_span(Track::Host("workers"), "job", "job", 0x2a, start, || vec![("done", Arg::Bool(false))]);
        t.end_span("job", 0x2a, start + Duration::from_micros(3), Vec::new);
        let (json, summary) = written(&t, start);
        assert_eq!(json["displayTimeUnit"], "ns");
        assert_eq!(json["otherData"]["dropped_events"], 0);
        assert_eq!(json["otherData"]["max_events"], 100);
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
        let begin = &of_phase(&json, "b")[0];
        assert_eq!(
            (begin["cat"].as_str(), begin["id"].as_str(), begin["tid"].as_u64()),
            (Some("job"), Some("0x2a"), Some(1900))
        );
        assert_eq!(begin["args"]["done"], false);
        assert_eq!(of_phase(&json, "e")[0]["ts"].as_f64(), Some(3.0));

        let names: Vec<(&str, u64, u64)> = of_phase(&json, "M")
            .iter()
            .filter(|m| m["name"] == "process_name" || m["name"] == "thread_name")
            .map(|m| (m["args"]["name"].as_str().unwrap(), m["pid"].as_u64().unwrap(), m["tid"].as_u64().unwrap()))
            .collect();
        assert!(names.contains(&("host stub", 1, 0)) && names.contains(&("guest", 2, 0)), "{names:?}");
        assert!(names.contains(&("vCPU 0 (exits)", 1, 1000)) && names.contains(&("vCPU 0 (tasks)", 2, 2000)));
        assert!(names.contains(&("workers", 1, 1900)), "{names:?}");
        assert!(names.contains(&("selftest (task 1)", 2, 3000)), "a task's track by the name it was given: {names:?}");
        assert!(names.contains(&("vCPU 0 task 2 (gen 5)", 2, 3001)), "{names:?}");
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

    #[test]
    fn dropped_events_are_counted_in_the_file() {
        let t = Tracer::start(1);
        t.instant(Track::Vcpu(0), "kept", Vec::new);
        t.instant(Track::Vcpu(0), "dropped", Vec::new);
        let (json, summary) = written(&t, Instant::now());
        assert_eq!((summary.dropped, json["otherData"]["dropped_events"].as_u64()), (1, Some(1)));
    }
}
