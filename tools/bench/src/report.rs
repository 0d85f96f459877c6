//! What every `lupus-bench` returns: named figures, each with the baseline it was
//! measured against in the same run; the JSON file of `--json`, the summary table of
//! `lupus-bench all`, progress bars and the timing helpers the benches share.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Its unit (`"appends/s"`, `"ms"`, ...).
    pub unit: String,
    /// The baseline measured in the same run, if this figure has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

/// A baseline of a figure, in the figure's unit.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// What the baseline is.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// The figure's value over the baseline's.
    pub ratio: f64,
}

/// The figures of one bench.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The bench's name (`ledger`, `prover`, ...).
    pub bench: String,
    /// Its figures, in the order printed.
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn new(bench: &str) -> Report {
        Report {
            bench: bench.to_owned(),
            figures: Vec::new(),
        }
    }

    /// A figure without a baseline (a count, a size).
    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            baseline: None,
        });
    }

    /// A figure and the baseline measured against it.
    pub fn against(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &str,
        baseline: impl Into<String>,
        baseline_value: f64,
    ) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            baseline: Some(Baseline {
                name: baseline.into(),
                value: baseline_value,
                ratio: value / baseline_value,
            }),
        });
    }

    /// Writes the report to `path` when `--json` gave one.
    pub fn write_json(&self, path: Option<&Path>) -> Result<()> {
        match path {
            Some(p) => write_json(p, self),
            None => Ok(()),
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// A value with as many digits as its size deserves.
fn show(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

/// One Markdown table of every figure of `reports`.
pub fn summary(reports: &[Report]) -> String {
    let mut t = String::from(
        "| bench | figure | value | baseline (same run) | ratio |\n|---|---|---|---|---|\n",
    );
    for r in reports {
        for f in &r.figures {
            let (base, ratio) = match &f.baseline {
                Some(b) => (
                    format!("{} {} {}", b.name, show(b.value), f.unit),
                    format!("{}x", show(b.ratio)),
                ),
                None => ("-".into(), "-".into()),
            };
            t += &format!(
                "| {} | {} | {} {} | {base} | {ratio} |\n",
                r.bench,
                f.name,
                show(f.value),
                f.unit
            );
        }
    }
    t
}

/// A progress bar of `len` steps on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {elapsed_precise}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// A spinner for a part whose length is a time, not a count.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Seconds this thread has run on a CPU (Linux `schedstat`), so that a busy shared
/// machine does not count other processes' time; elsewhere, wall-clock time.
fn thread_seconds(origin: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns * 1e-9)
        .unwrap_or_else(|| origin.elapsed().as_secs_f64())
}

/// Runs `f` repeatedly for at least `budget` of thread time and returns seconds per
/// call: the best of three thirds of the budget, to damp noise.
pub fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let origin = Instant::now();
    let mut best = f64::INFINITY;
    let round = budget.as_secs_f64() / 3.0;
    for _ in 0..3 {
        let start = thread_seconds(origin);
        let mut n = 0u32;
        while thread_seconds(origin) - start < round || n == 0 {
            f();
            n += 1;
        }
        best = best.min((thread_seconds(origin) - start) / f64::from(n));
    }
    best
}

/// The median of `v` (zero when empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_each_ratio_against_its_baseline() {
        let mut r = Report::new("ledger");
        r.against(
            "appends/s, 16 appenders",
            300.0,
            "appends/s",
            "1 appender",
            100.0,
        );
        r.add("entries", 5.0, "entries");
        let t = summary(&[r]);
        assert!(
            t.contains("| ledger | appends/s, 16 appenders | 300.0 appends/s | 1 appender 100.0 appends/s | 3.000x |"),
            "{t}"
        );
        assert!(
            t.contains("| ledger | entries | 5.000 entries | - | - |"),
            "{t}"
        );
    }

    #[test]
    fn median_of_nothing_is_zero() {
        assert_eq!(median(Vec::new()), Duration::ZERO);
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(3), ms(1), ms(2)]), ms(2));
    }
}
