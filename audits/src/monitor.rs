//! Following a log: verify what is new every interval, and alert on the first
//! failure (a bad signature, a split view, a fork, a bad entry) or when the log stops
//! growing for longer than allowed.
//!
//! An alert ends the monitor with the failure's exit status (see
//! [`crate::verify::AuditError::exit_code`], and [`EXIT_STALLED`] for a stall), after
//! running the hook command if one is set. The hook runs under `sh -c` with the alert
//! in its environment: `LUPUS_AUDIT_ALERT` (the failure kind, or `stalled`),
//! `LUPUS_AUDIT_MESSAGE`, and `LUPUS_AUDIT_INDEX` when an entry is to blame. A log
//! that cannot be reached is retried; if it stays unreachable past the stall limit,
//! that is a stall.

use std::time::{Duration, Instant};

use crate::source::LogSource;
use crate::state::StateDir;
use crate::verify::{AuditError, EXIT_STALLED, Options, Outcome, verify_log};

/// How to follow a log.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Alert when the verified size has not grown for this long.
    pub stall_after: Option<Duration>,
    /// Stop (without an alert) after this many polls; `None` runs until an alert.
    pub max_polls: Option<u64>,
    /// Shell command run on an alert.
    pub hook: Option<String>,
}

/// Why the monitor stopped.
#[derive(Debug)]
pub enum Alert {
    /// A verification failure.
    Failed(AuditError),
    /// The log did not grow (or could not be read) for `seconds`.
    Stalled {
        size: u64,
        seconds: u64,
        last_error: Option<String>,
    },
}

impl Alert {
    /// The exit status of this alert.
    pub fn exit_code(&self) -> i32 {
        match self {
            Alert::Failed(e) => e.exit_code(),
            Alert::Stalled { .. } => EXIT_STALLED,
        }
    }

    /// The alert's kind for the hook and `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::Failed(e) => e.kind(),
            Alert::Stalled { .. } => "stalled",
        }
    }

    /// A human sentence.
    pub fn message(&self) -> String {
        match self {
            Alert::Failed(e) => e.to_string(),
            Alert::Stalled {
                size,
                seconds,
                last_error,
            } => {
                let mut m = format!("the log has not grown past size {size} for {seconds} s");
                if let Some(e) = last_error {
                    m.push_str(&format!(" (last error: {e})"));
                }
                m
            }
        }
    }
}

/// Follows the log until an alert (returned) or `max_polls` polls (`None`).
/// `on_poll` sees each successful poll.
pub fn monitor(
    source: &dyn LogSource,
    dir: &StateDir,
    key: Option<&str>,
    options: &MonitorOptions,
    on_poll: &mut dyn FnMut(&Outcome),
) -> Option<Alert> {
    let mut last_growth = Instant::now();
    let mut size: Option<u64> = None;
    let mut polls = 0u64;
    let mut last_error;
    loop {
        match verify_log(source, dir, key, &Options::default(), &mut |_, _| {}) {
            Ok(outcome) => {
                if size != Some(outcome.size) {
                    size = Some(outcome.size);
                    last_growth = Instant::now();
                }
                last_error = None;
                on_poll(&outcome);
            }
            Err(AuditError::Source(e)) => last_error = Some(e.to_string()),
            Err(e) => return Some(alert(Alert::Failed(e), options)),
        }
        if let Some(limit) = options.stall_after
            && last_growth.elapsed() >= limit
        {
            let stalled = Alert::Stalled {
                size: size.unwrap_or(0),
                seconds: last_growth.elapsed().as_secs(),
                last_error,
            };
            return Some(alert(stalled, options));
        }
        polls += 1;
        if options.max_polls.is_some_and(|m| polls >= m) {
            return None;
        }
        std::thread::sleep(options.interval);
    }
}

fn alert(alert: Alert, options: &MonitorOptions) -> Alert {
    if let Some(hook) = &options.hook {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(hook)
            .env("LUPUS_AUDIT_ALERT", alert.kind())
            .env("LUPUS_AUDIT_MESSAGE", alert.message());
        if let Alert::Failed(e) = &alert
            && let Some(i) = e.index()
        {
            cmd.env("LUPUS_AUDIT_INDEX", i.to_string());
        }
        // The alert stands whether or not the hook runs; its failure is reported.
        if let Err(e) = cmd.status() {
            eprintln!("lupus-audit: the alert hook did not run: {e}");
        }
    }
    alert
}
