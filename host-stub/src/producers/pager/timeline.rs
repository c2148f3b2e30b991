//! The pager's vocabulary on the run's timeline (`--trace`): one span per token, from its
//! event's delivery to its resolution, on the vCPU's track; one span per fetch, from submission
//! to completion (its latency), and each completion's work, on the fetchers' track.
//!
//! A resolution can be posted before its event (the guest's no-wait path): it is remembered
//! here until the event comes, and the token's span is then zero-length and says so. Every call
//! is made under the pager's lock, which orders an event and its resolution.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pvagent_abi::pnp::{RESULT_FAILED, RESULT_RETRY};

use super::state::PageIndex;
use crate::trace::{Arg, Tracer, Track};

/// Category and name of a token's span.
const CAT_PNP: &str = "pnp";
const PNP_SPAN: &str = "page not present";
/// Category and name of a fetch's span.
const CAT_FETCH: &str = "fetch";
const FETCH_SPAN: &str = "fetch";
/// The fetcher threads' track.
const FETCHERS: Track = Track::Host("pager fetchers");

/// The pager's timeline: the run's recorder, and the resolutions posted before their events.
#[derive(Debug, Default)]
pub struct PagerTimeline {
    tracer: Tracer,
    /// (vCPU, token) -> when its resolution was posted, and its result.
    early_resolutions: HashMap<(usize, u32), (Instant, u32)>,
}

fn token_span(vcpu: usize, token: u32) -> u64 {
    (vcpu as u64) << 32 | u64::from(token)
}

fn result_name(result: u32) -> Cow<'static, str> {
    match result {
        RESULT_RETRY => "present".into(),
        RESULT_FAILED => "failed".into(),
        other => format!("unknown ({other})").into(),
    }
}

impl PagerTimeline {
    /// Records into `tracer` (which may be off: then nothing is kept).
    pub fn new(tracer: Tracer) -> Self {
        Self { tracer, early_resolutions: HashMap::new() }
    }

    /// The run's recorder, for spans of the pager's own (a synchronous wait).
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The host delivered a page-not-present event with `token` to `vcpu`: the token's span
    /// begins. If its resolution was posted first, the span ends at once (zero length) and says
    /// so.
    pub fn event(&mut self, vcpu: usize, token: u32, gpa: u64, gva: Option<u64>) {
        if !self.tracer.is_on() {
            return;
        }
        let at = Instant::now();
        let id = token_span(vcpu, token);
        self.tracer.begin_span(Track::Vcpu(vcpu), CAT_PNP, PNP_SPAN, id, at, || {
            let mut args = vec![("token", Arg::Hex(token.into())), ("gpa", Arg::Hex(gpa))];
            if let Some(gva) = gva {
                args.push(("gva", Arg::Hex(gva)));
            }
            args
        });
        if let Some((posted, result)) = self.early_resolutions.remove(&(vcpu, token)) {
            self.tracer.end_span(CAT_PNP, id, at, || {
                vec![
                    ("result", Arg::Text(result_name(result))),
                    ("resolved_before_event", Arg::Bool(true)),
                    (
                        "resolution_posted_us_earlier",
                        Arg::Uint(at.saturating_duration_since(posted).as_micros() as u64),
                    ),
                ]
            });
        }
    }

    /// The host posted `token`'s resolution to `vcpu`'s ring: the token's span ends (or, for a
    /// resolution before its event, is remembered for the event).
    pub fn resolution(&mut self, vcpu: usize, token: u32, result: u32) {
        if !self.tracer.is_on() {
            return;
        }
        let at = Instant::now();
        let ended = self
            .tracer
            .end_span(CAT_PNP, token_span(vcpu, token), at, || vec![("result", Arg::Text(result_name(result)))]);
        if !ended {
            self.early_resolutions.insert((vcpu, token), (at, result));
        }
    }

    /// The pager starts fetching `page` (its own span id: a page has at most one fetch in
    /// flight), due after `latency`.
    pub fn fetch_submitted(&self, page: PageIndex, gpa: u64, latency: Duration) {
        self.tracer.begin_span(FETCHERS, CAT_FETCH, FETCH_SPAN, page, Instant::now(), || {
            vec![
                ("page", Arg::Uint(page)),
                ("gpa", Arg::Hex(gpa)),
                ("latency_us", Arg::Uint(latency.as_micros() as u64)),
            ]
        });
    }

    /// `page`'s fetch is over: its span ends, and the completion's work (filling the page,
    /// posting the resolutions of `waiters` tokens), from `started` until now, is a span on the
    /// fetchers' track.
    pub fn fetch_completed(&self, page: PageIndex, result: u32, waiters: usize, started: Instant) {
        if !self.tracer.is_on() {
            return;
        }
        let at = Instant::now();
        self.tracer.end_span(CAT_FETCH, page, at, || vec![("result", Arg::Text(result_name(result)))]);
        self.tracer.complete(FETCHERS, "complete fetch", started, at, || {
            vec![
                ("page", Arg::Uint(page)),
                ("result", Arg::Text(result_name(result))),
                ("tokens_resolved", Arg::Uint(waiters as u64)),
            ]
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn written(tracer: &Tracer) -> Vec<Value> {
        let mut bytes = Vec::new();
        tracer.write_json(&mut bytes, Instant::now(), Instant::now()).unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        json["traceEvents"].as_array().unwrap().clone()
    }

    fn of_phase<'a>(events: &'a [Value], ph: &str) -> Vec<&'a Value> {
        events.iter().filter(|e| e["ph"] == ph).collect()
    }

    #[test]
    fn every_token_span_ends_once_whatever_came_first() {
        let tracer = Tracer::start(100);
        let mut t = PagerTimeline::new(tracer.clone());
        // Event, then resolution.
        t.event(0, 0x1_0001, 0x4000_0000, Some(0x7000));
        t.resolution(0, 0x1_0001, RESULT_RETRY);
        // Resolution first (the "resolved before its event" path).
        t.resolution(0, 0x1_0002, RESULT_FAILED);
        t.event(0, 0x1_0002, 0x4000_1000, None);
        // The same token on another vCPU is another span.
        t.event(1, 0x1_0001, 0x4000_2000, None);
        let events = written(&tracer);
        let begins = of_phase(&events, "b");
        let ends = of_phase(&events, "e");
        assert_eq!(begins.len(), 3);
        assert_eq!(ends.len(), 3, "the span still open at the end of the run is closed");
        for b in &begins {
            let end = ends.iter().find(|e| e["id"] == b["id"] && e["cat"] == b["cat"]).unwrap();
            assert_eq!(end["name"], b["name"]);
            assert!(end["ts"].as_f64() >= b["ts"].as_f64());
        }
        assert_eq!(begins[0]["args"]["gva"], "0x7000");
        let early = ends.iter().find(|e| e["args"]["resolved_before_event"] == true).unwrap();
        assert_eq!(early["args"]["result"], "failed");
        assert_eq!(ends.iter().filter(|e| e["args"]["open_at_end_of_run"] == true).count(), 1);
        assert!(t.early_resolutions.is_empty());
    }

    #[test]
    fn a_fetch_is_a_span_on_the_fetchers_track_and_its_completion_the_work_inside_it() {
        let tracer = Tracer::start(100);
        let t = PagerTimeline::new(tracer.clone());
        t.fetch_submitted(7, 0x4000_7000, Duration::from_micros(50));
        t.fetch_completed(7, RESULT_RETRY, 2, Instant::now());
        let events = written(&tracer);
        let fetcher_tid = events
            .iter()
            .find(|e| e["ph"] == "M" && e["args"]["name"] == "pager fetchers")
            .and_then(|e| e["tid"].as_u64())
            .unwrap();
        let begin = of_phase(&events, "b")[0];
        assert_eq!((begin["cat"].as_str(), begin["args"]["latency_us"].as_u64()), (Some("fetch"), Some(50)));
        assert_eq!(of_phase(&events, "e")[0]["args"]["result"], "present");
        let work = of_phase(&events, "X")[0];
        assert_eq!(
            (work["name"].as_str(), work["args"]["tokens_resolved"].as_u64()),
            (Some("complete fetch"), Some(2))
        );
        assert!(events.iter().filter(|e| e["ph"] != "M").all(|e| e["tid"].as_u64() == Some(fetcher_tid)));
    }

    #[test]
    fn an_untraced_run_remembers_nothing() {
        let mut t = PagerTimeline::new(Tracer::off());
        t.resolution(0, 1, RESULT_RETRY);
        assert!(t.early_resolutions.is_empty(), "an untraced run must not grow");
    }
}
