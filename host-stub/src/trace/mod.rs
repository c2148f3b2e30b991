//! The run's timeline (`--trace FILE`): a recorder that the run loop, the devices and the
//! producers report to (`recorder`), written at the end of the run in the Chrome trace-event
//! JSON format (`chrome`), which <https://ui.perfetto.dev> (and `chrome://tracing`) opens.
//!
//! The recorder knows tracks, spans and instants, nothing about what they mean: each producer
//! keeps its own vocabulary (the pager's tokens and fetches are in
//! `producers::pager::timeline`).

mod chrome;
mod recorder;

pub use chrome::Written;
pub use recorder::{Arg, Args, MAX_EVENTS, Tracer, Track};
