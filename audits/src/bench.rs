//! The audit benchmark: how fast [`verify_log`] checks a whole log, against a
//! tree-only baseline measured in the same run.
//!
//! A protocol-correct synthetic log ([`crate::sample`], 64 workers per round) is written
//! once as a static `tlog-tiles` directory, reused while it holds the size asked for.
//! The baseline reads every entry bundle and rebuilds the RFC 9162 tree only (what a
//! plain `tlog-tiles` client checks: no entry decoding, no signatures, no protocol);
//! the measured run is the full audit (signatures, protocol rules, the shares fold, the
//! epochs). A second run over the same state shows what an auditor pays when nothing
//! is new. `lupus-audit bench` and `lupus-bench audit` both call [`run_bench`].

use std::path::PathBuf;
use std::time::Instant;

use lupus_ledger::checkpoint::Checkpoint;
use lupus_ledger::hash::leaf_hash;
use lupus_ledger::note::parse_note;
use lupus_ledger::tiles::{EntryBundle, decode_entry_bundle};
use lupus_ledger::tree::Frontier;

use crate::sample::{SampleError, SampleJob, write_static};
use crate::source::{DirSource, LogSource};
use crate::state::StateDir;
use crate::verify::{AuditError, Options, Outcome, verify_log};

/// Workers per round of the synthetic log.
const WORKERS: usize = 64;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Entries in the log (rounded up to whole rounds).
    pub entries: u64,
    /// Where the log is written; reused when it already holds a log of that size.
    pub dir: PathBuf,
    /// Threads that check entry signatures (0: one per CPU).
    pub threads: usize,
}

/// The phase a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Building and writing the synthetic log (`done`, `total` in rounds).
    Build,
    /// The full audit (`done`, `total` in entries).
    Verify,
}

/// The figures of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Entries in the log.
    pub entries: u64,
    /// Seconds spent building the log, `None` when an existing one was reused.
    pub build_seconds: Option<f64>,
    /// Seconds of the tree-only baseline.
    pub tree_only_seconds: f64,
    /// Entries per second of the tree-only baseline.
    pub tree_only_entries_per_second: f64,
    /// The full audit.
    pub verify: Outcome,
    /// CPU seconds (all threads) of the full audit, where the OS reports them.
    pub verify_cpu_seconds: Option<f64>,
    /// Seconds of a second audit over the same state (nothing new).
    pub resume_seconds: f64,
    /// The same full audit checking each signature alone (`--strict-signatures`),
    /// in the same run: what batch verification gains.
    pub strict: Outcome,
    /// Signature threads asked for (0: one per CPU).
    pub threads: usize,
}

impl BenchReport {
    /// Full audit speed over the tree-only baseline.
    pub fn ratio(&self) -> f64 {
        self.verify.entries_per_second / self.tree_only_entries_per_second
    }

    /// The figures as a Markdown table and a closing line against the target.
    pub fn table(&self) -> String {
        let o = &self.verify;
        let mut t = String::new();
        t += "| what | entries | seconds | entries/s |\n|---|---|---|---|\n";
        t += &format!(
            "| baseline: tree only (read bundles, hash leaves, compare root) | {} | {:.2} | {:.0} |\n",
            self.entries, self.tree_only_seconds, self.tree_only_entries_per_second
        );
        t += &format!(
            "| lupus-audit verify (signatures, protocol, fold, epochs) | {} | {:.2} | {:.0} |\n",
            o.size, o.seconds, o.entries_per_second
        );
        t += &format!(
            "| lupus-audit verify --strict-signatures (each signature alone) | {} | {:.2} | {:.0} |\n",
            self.strict.size, self.strict.seconds, self.strict.entries_per_second
        );
        t += &format!(
            "| second run (nothing new) | 0 | {:.3} | - |\n",
            self.resume_seconds
        );
        if let Some(cpu) = self.verify_cpu_seconds {
            t += &format!(
                "verify used {cpu:.2} s of CPU (all threads): {:.0} entries per CPU-second\n",
                o.size as f64 / cpu
            );
        }
        t += &format!(
            "full verify runs at {:.2}x the tree-only baseline and {:.2}x the strict path; target 200,000 entries/s: {}",
            self.ratio(),
            o.entries_per_second / self.strict.entries_per_second.max(1e-9),
            if o.entries_per_second >= 200_000.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        t
    }
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The synthetic log could not be built or written.
    #[error("building the sample log: {0}")]
    Sample(#[from] SampleError),
    /// The bench directory could not be prepared.
    #[error("preparing the bench directory {path}: {source}; pass another --dir")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The audit (or the baseline's reading of the log) failed: the sample log on disk
    /// was damaged, or the auditor has a bug.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The baseline's tree does not match the signed checkpoint.
    #[error("tree-only baseline: {0}; delete the bench directory and run again")]
    Baseline(String),
}

/// Builds (or reuses) the sample log in `options.dir`, then measures the tree-only
/// baseline, the full audit and a second audit with nothing new. `progress` is called
/// with the phase and `(done, total)`.
pub fn run_bench(
    options: &BenchOptions,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<BenchReport, BenchError> {
    let job = SampleJob::new("lupus.example/bench", WORKERS)?;
    // Entries per round: opened, 6 per task, closed, epoch.
    let per_round = 3 + 6 * job.workers.len() as u64;
    let prologue = 2 + job.workers.len() as u64;
    let rounds = options
        .entries
        .saturating_sub(prologue)
        .div_ceil(per_round)
        .max(1);
    let log_dir = options.dir.join("log");
    let size_file = options.dir.join("size");
    let dir_error = |source| BenchError::Dir {
        path: options.dir.clone(),
        source,
    };
    let have = std::fs::read_to_string(&size_file).ok();
    let build_seconds = if have.as_deref().map(str::trim) != Some(&rounds.to_string()) {
        let t = Instant::now();
        if log_dir.exists() {
            std::fs::remove_dir_all(&log_dir).map_err(dir_error)?;
        }
        std::fs::create_dir_all(&options.dir).map_err(dir_error)?;
        progress(Phase::Build, 0, rounds);
        let encoded: Vec<Vec<u8>> = job.entries(rounds)?.iter().map(|e| e.encode()).collect();
        write_static(&log_dir, &encoded, &job.signer)?;
        std::fs::write(&size_file, rounds.to_string()).map_err(dir_error)?;
        progress(Phase::Build, rounds, rounds);
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let source = DirSource::new(&log_dir);
    let state = tempfile::tempdir().map_err(dir_error)?;

    let t = Instant::now();
    let size = tree_only(&source)?;
    let tree_only_seconds = t.elapsed().as_secs_f64();

    let cpu_before = cpu_seconds();
    let verify = verify_log(
        &source,
        &StateDir::new(state.path()),
        Some(&job.vkey()),
        &Options {
            threads: options.threads,
            replay: 0,
            seed: None,
            tiles: crate::verify::TileCheck::default(),
            replay_merge: false,
            strict_signatures: false,
        },
        &mut |done, total| progress(Phase::Verify, done, total),
    )?;
    let verify_cpu_seconds = cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let t = Instant::now();
    verify_log(
        &source,
        &StateDir::new(state.path()),
        None,
        &Options {
            threads: options.threads,
            replay: 0,
            seed: None,
            tiles: crate::verify::TileCheck::default(),
            replay_merge: false,
            strict_signatures: false,
        },
        &mut |_, _| {},
    )?;
    let resume_seconds = t.elapsed().as_secs_f64();
    let strict_state = tempfile::tempdir().map_err(dir_error)?;
    let strict = verify_log(
        &source,
        &StateDir::new(strict_state.path()),
        Some(&job.vkey()),
        &Options {
            threads: options.threads,
            strict_signatures: true,
            ..Options::default()
        },
        &mut |done, total| progress(Phase::Verify, done, total),
    )?;
    if verify.size != size {
        return Err(BenchError::Baseline(format!(
            "the audit checked {} entries but the tree holds {size}",
            verify.size
        )));
    }
    Ok(BenchReport {
        entries: size,
        build_seconds,
        tree_only_seconds,
        tree_only_entries_per_second: size as f64 / tree_only_seconds,
        verify,
        verify_cpu_seconds,
        resume_seconds,
        strict,
        threads: options.threads,
    })
}

/// CPU time (user + system, all threads) this process has used, from
/// `/proc/self/stat` (Linux; clock ticks of 1/100 s). `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Reads every bundle and rebuilds the tree; returns the size after checking the root.
fn tree_only(source: &DirSource) -> Result<u64, BenchError> {
    let note = source.checkpoint().map_err(AuditError::from)?;
    let bad = |e: &dyn std::fmt::Display| BenchError::Baseline(e.to_string());
    let text = parse_note(note.as_bytes()).map_err(|e| bad(&e))?.text;
    let cp = Checkpoint::parse_body(&text).map_err(|e| bad(&e))?;
    let mut frontier = Frontier::empty();
    let size = cp.size.0;
    let mut b = 0;
    while b * 256 < size {
        let width = (size - b * 256).min(256) as u16;
        let bundle = source
            .entry_bundle(&EntryBundle { index: b, width })
            .map_err(AuditError::from)?;
        for e in decode_entry_bundle(&bundle).map_err(|e| bad(&e))? {
            frontier.append(leaf_hash(&e));
        }
        b += 1;
    }
    if frontier.root() != cp.root {
        return Err(BenchError::Baseline("root mismatch".into()));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_bench_verifies_every_entry_and_reuses_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = BenchOptions {
            entries: 1000,
            dir: dir.path().to_owned(),
            threads: 1,
        };
        let mut phases = Vec::new();
        let first = run_bench(&options, &mut |p, _, _| phases.push(p)).unwrap();
        assert!(first.entries >= 1000, "{}", first.entries);
        assert_eq!(first.verify.size, first.entries);
        assert!(first.build_seconds.is_some());
        assert!(phases.contains(&Phase::Build) && phases.contains(&Phase::Verify));
        let second = run_bench(&options, &mut |_, _, _| {}).unwrap();
        assert_eq!(second.entries, first.entries);
        assert!(second.build_seconds.is_none(), "the log is reused");
    }
}
