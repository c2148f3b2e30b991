//! End-to-end tests of the run's timeline (`--trace`): a traced run's file is Chrome trace JSON
//! with the host's exits and injections, the guest's task switches and whole page-not-present
//! spans, each counted the way the host's own counters count them; an untraced run offers the
//! guest no trace port and hears nothing on it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use pvagent_abi::cpuid::Features;
use pvagent_host::producers::Producers;
use pvagent_host::{Error, RunResult, Vm};
use pvagent_tests::{config, guest_elf, require_kvm, run_stub_configured, temp_path};
use serde_json::Value;

fn run(cmdline: &str, trace: Option<PathBuf>) -> RunResult {
    let mut config = config(guest_elf(), cmdline);
    config.trace = trace;
    let r = run_stub_configured(config, &Producers::defaults());
    assert!(r.passed(), "{:?}\n{:#?}", r.host_error, r.tests);
    r
}

/// The host stub's feature bits as the guest printed them at boot.
fn features_seen_by_guest(r: &RunResult) -> Features {
    let line = r.serial.iter().find(|l| l.starts_with("boot: host stub ABI")).expect("the guest names its host");
    let hex = line.split("features 0x").nth(1).and_then(|rest| rest.split(',').next()).expect("a features field");
    Features(u32::from_str_radix(hex, 16).expect("hex features"))
}

/// The `tid` of the thread the metadata names `name`.
fn tid_named(events: &[Value], name: &str) -> u64 {
    events
        .iter()
        .find(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["args"]["name"] == name)
        .and_then(|e| e["tid"].as_u64())
        .unwrap_or_else(|| panic!("no track named {name:?}"))
}

#[test]
fn a_traced_run_shows_exits_injections_tasks_and_whole_page_not_present_spans() {
    let path = temp_path("pnp-ac.json");
    let r = run("tests=pnp,ac", Some(path.clone()));
    assert!(features_seen_by_guest(&r).has(Features::TRACE));
    let c = &r.report;

    let text = std::fs::read_to_string(&path).expect("the trace file was written");
    let json: Value = serde_json::from_str(&text).expect("the trace is JSON");
    assert_eq!(json["displayTimeUnit"], "ns");
    assert_eq!(json["otherData"]["dropped_events"], 0);
    assert_eq!(c.get("trace.events_dropped"), 0);
    let events = json["traceEvents"].as_array().expect("a traceEvents array");
    assert_eq!(events.len() as u64, c.get("trace.events_written"));
    let line = format!("trace: {} events written to {}", events.len(), path.display());
    assert!(c.lines.iter().any(|l| l.starts_with(&line)), "{:#?}", c.lines);

    // Exits on vCPU 0's host track, one span per exit the run loop counted.
    let vcpu0 = tid_named(events, "vCPU 0 (exits)");
    let on_vcpu0 =
        |ph: &'static str| events.iter().filter(move |e| e["ph"] == ph && e["pid"] == 1 && e["tid"] == vcpu0);
    let exits = on_vcpu0("X").filter(|e| e["name"] != "pnp synchronous wait").count() as u64;
    assert_eq!(exits, c.get("vcpu0.exits"));
    assert!(on_vcpu0("X").any(|e| e["name"] == "io out" && e["args"]["port"] == "0x511"), "console records");
    assert!(on_vcpu0("X").any(|e| e["name"] == "hypercall"));
    assert!(on_vcpu0("X").any(|e| e["name"] == "wrmsr" && e["args"]["msr"] == "0x50564100"), "pnp registration");
    // The #AC the split-lock producer injected, each an instant on that track.
    let injected_ac =
        c.get("sld.injected_split_lock") + c.get("sld.injected_alignment_check") + c.get("sld.injected_forced");
    assert!(injected_ac > 0);
    assert_eq!(on_vcpu0("i").filter(|e| e["name"] == "inject #AC").count() as u64, injected_ac);

    // The guest's tasks: one span per reported switch, more than one task, idle among them.
    let tasks = tid_named(events, "vCPU 0 (tasks)");
    let task_spans: Vec<&Value> =
        events.iter().filter(|e| e["ph"] == "X" && e["pid"] == 2 && e["tid"] == tasks).collect();
    assert!(c.get("trace.task_switches") > 0);
    assert_eq!(task_spans.len() as u64, c.get("trace.task_switches"));
    assert_eq!(c.get("trace.rejected"), 0);
    let names: BTreeSet<&str> = task_spans.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.len() > 1, "{names:?}");
    // Tasks by the names the guest gave them: the runner, and its user tasks.
    assert!(names.contains("idle") && names.contains("selftest"), "{names:?}");
    assert!(names.contains("ac-split-warn (user)"), "{names:?}");
    assert!(c.get("trace.task_names") > 1);
    assert_eq!(c.get("trace.task_names_refused"), 0);
    // Each task (but idle) has a track of its own, named by its name, with a span per time
    // it ran: together as many as the vCPU track's spans that are not idle.
    let runner = tid_named(events, "selftest (task 1, gen 1)");
    let task_tracks: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 2 && e["tid"] != tasks)
        .filter_map(|e| e["tid"].as_u64())
        .collect();
    assert!(task_tracks.contains(&runner) && task_tracks.len() > 2, "{task_tracks:?}");
    let on_task_tracks = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 2 && e["tid"].as_u64().is_some_and(|t| task_tracks.contains(&t)))
        .count();
    assert_eq!(on_task_tracks, task_spans.iter().filter(|e| e["name"] != "idle").count());

    // Every page-not-present event's span ends, with the same id, as often as the pager says
    // it delivered events.
    let mut open: HashMap<&str, u64> = HashMap::new();
    let (mut begins, mut ends) = (0, 0);
    for e in events.iter().filter(|e| e["cat"] == "pnp") {
        let id = e["id"].as_str().expect("an async id");
        match e["ph"].as_str() {
            Some("b") => {
                begins += 1;
                *open.entry(id).or_default() += 1;
            }
            Some("e") => {
                ends += 1;
                let n = open.get_mut(id).unwrap_or_else(|| panic!("an end without its begin: {e}"));
                *n -= 1;
                assert!(e["args"]["open_at_end_of_run"].is_null(), "a token left unresolved: {e}");
            }
            other => panic!("unexpected phase {other:?} in {e}"),
        }
    }
    assert!(open.values().all(|n| *n == 0), "unended spans: {open:?}");
    assert_eq!(begins, ends);
    assert!(begins > 0);
    assert_eq!(begins, c.get("pager.events_delivered"));
    assert!(events.iter().any(|e| e["ph"] == "e" && e["args"]["resolved_before_event"] == true));
    // Fetches: each one's span on the fetcher track, and its completion's work.
    let fetched = events.iter().filter(|e| e["cat"] == "fetch" && e["ph"] == "e").count() as u64;
    assert_eq!(fetched, c.get("pager.pages_fetched"));
}

#[test]
fn the_console_exits_can_be_left_out() {
    let path = temp_path("quiet-console.json");
    let mut config = config(guest_elf(), "tests=task");
    config.trace = Some(path.clone());
    config.trace_console = false;
    let r = run_stub_configured(config, &Producers::defaults());
    assert!(r.passed(), "{:?}\n{:#?}", r.host_error, r.tests);
    assert!(r.serial.iter().any(|l| l.starts_with("selftest: PASS")), "the console itself works");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the file")).expect("JSON");
    let events = json["traceEvents"].as_array().expect("events");
    let exits: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X" && e["pid"] == 1).collect();
    assert!(exits.iter().any(|e| e["name"] == "hypercall"), "other exits stay");
    let console = ["0x3f8", "0x3f9", "0x3fa", "0x3fb", "0x3fc", "0x3fd", "0x3fe", "0x3ff", "0x511"];
    assert!(
        !exits.iter().any(|e| e["args"]["port"].as_str().is_some_and(|p| console.contains(&p))),
        "a console exit on the timeline"
    );
    assert!(r.report.lines.iter().any(|l| l.ends_with("the console's exits left out")), "{:#?}", r.report.lines);
}

#[test]
fn an_untraced_run_offers_no_trace_port_and_the_guest_writes_none() {
    let r = run("tests=task", None);
    assert!(!features_seen_by_guest(&r).has(Features::TRACE));
    assert!(!r.serial.iter().any(|l| l.starts_with("trace:")), "{:#?}", r.serial);
    assert_eq!(r.report.get("trace.records"), 0);
    assert_eq!(r.report.get("trace.task_switches"), 0);
    assert!(!r.report.counters.contains_key("trace.events_written"));
    assert!(!r.report.lines.iter().any(|l| l.starts_with("trace:")), "{:#?}", r.report.lines);
}

#[test]
fn a_trace_file_that_cannot_be_created_fails_before_the_run() {
    require_kvm();
    let mut config = config(guest_elf(), "tests=task");
    let path = temp_path("no-such-directory").join("trace.json");
    config.trace = Some(path.clone());
    match Vm::new(config, Vec::new()) {
        Err(Error::CreateTraceFile { path: refused, .. }) => assert_eq!(refused, path),
        other => panic!("expected CreateTraceFile, got {other:?}"),
    }
}

#[test]
fn the_binary_takes_trace_and_says_where_the_file_went() {
    require_kvm();
    let host = xtask::guest::build_host_stub(xtask::Profile::Dev).expect("build the host stub");
    let guest = guest_elf().to_str().expect("utf-8 path");
    let path = temp_path("binary.json");
    let file = path.to_str().expect("utf-8 path");
    let out = Command::new(&host)
        .args([guest, "--cmdline", "tests=task", "--quiet", "--trace", file])
        .output()
        .expect("run the host stub");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the file")).expect("JSON");
    let events = json["traceEvents"].as_array().expect("events").len();
    assert!(stdout.contains(&format!("host: trace: {events} events written to {file}")), "{stdout}");

    // A path that cannot be created: one line, status 2, before the guest ran.
    let bad = temp_path("no-such-directory").join("trace.json");
    let out = Command::new(&host)
        .args([guest, "--quiet", "--trace", bad.to_str().expect("utf-8 path")])
        .output()
        .expect("run the host stub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("pvagent-host: error: cannot create the trace file") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
