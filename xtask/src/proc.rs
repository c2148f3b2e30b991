//! Child processes with a hard timeout, killed when dropped, whose output is both shown live
//! and kept for inspection.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Result, err};

/// How a supervised child ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Everything the child wrote to stdout and stderr, line by line, in arrival order.
    pub output: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    /// The output as one string.
    pub fn text(&self) -> String {
        self.output.join("\n")
    }
}

/// Kills the child when dropped (an xtask interrupted or failing never leaves a VM behind).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long the drain after a child's exit waits for one more line before it gives up on a pipe
/// that never closes.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

fn forward(reader: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Runs `cmd` to completion or until `timeout`, echoing its output when `echo` is set.
pub fn run(cmd: Command, timeout: Duration, echo: bool) -> Result<Outcome> {
    run_observed(cmd, timeout, &mut |line| {
        if echo {
            println!("{line}");
        }
    })
}

/// Runs `cmd` to completion or until `timeout`, handing each output line to `on_line` as it
/// arrives (for progress displays); a child still running at `timeout` is killed and is an
/// error that shows its last output.
pub fn run_observed(cmd: Command, timeout: Duration, on_line: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let program = format!("{:?}", cmd.get_program());
    match supervise(cmd, timeout, on_line)? {
        Ended::Exited(outcome) => Ok(outcome),
        Ended::Killed { output, .. } => Err(err!(
            "{program} did not finish within {} s and was killed; its last output:\n{}",
            timeout.as_secs(),
            output.iter().rev().take(15).rev().cloned().collect::<Vec<_>>().join("\n")
        )),
    }
}

/// How a supervised child ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited (or died of a signal) by itself.
    Exited(Outcome),
    /// It was still running at its deadline and was killed.
    Killed {
        /// What it wrote until then.
        output: Vec<String>,
        after: Duration,
    },
}

/// Runs `cmd` to completion or until `timeout` (then kills it), handing each output line to
/// `on_line` as it arrives. Only a child that cannot be started or waited for is an error.
pub fn supervise(mut cmd: Command, timeout: Duration, on_line: &mut dyn FnMut(&str)) -> Result<Ended> {
    let program = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| err!("cannot start {program}: {e}"))?;
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.0.stdout.take() {
        forward(out, tx.clone());
    }
    if let Some(errout) = child.0.stderr.take() {
        forward(errout, tx);
    }
    let mut output = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                on_line(&line);
                output.push(line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = child.0.try_wait().map_err(|e| err!("waiting for {program}: {e}"))? {
            // Drain what the reader threads still hold, until both have seen their pipe close
            // (the channel disconnects then): a reader the machine's load kept from its last
            // line must not lose it. The bound only guards against a grandchild that inherited
            // a pipe and keeps it open.
            while let Ok(line) = rx.recv_timeout(DRAIN_BOUND) {
                on_line(&line);
                output.push(line);
            }
            return Ok(Ended::Exited(Outcome { status, output, elapsed: start.elapsed() }));
        }
        if start.elapsed() > timeout {
            // Dropping the guard kills and reaps the child.
            drop(child);
            return Ok(Ended::Killed { output, after: start.elapsed() });
        }
    }
}

/// Runs a build or setup command, output inherited; fails with `what` if it fails.
pub fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| err!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() { Ok(()) } else { Err(err!("{what} failed ({status})")) }
}
