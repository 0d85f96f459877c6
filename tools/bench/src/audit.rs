//! `lupus-bench audit`: the auditor's speed, through the same code as `lupus-audit
//! bench` ([`lupus_audit::bench::run_bench`]).

use std::path::PathBuf;

use anyhow::Result;
use lupus_audit::bench::{BenchOptions, Phase, run_bench};

use super::report::{Report, bar, spinner};

/// Measures how fast the auditor verifies a whole log.
///
/// Builds a protocol-correct synthetic log of about --entries entries (64 workers a
/// round) as a static tlog-tiles directory, then times the full audit (entry
/// signatures, protocol rules, the shares fold, the epochs) against a tree-only
/// baseline in the same run (read every entry bundle, hash the leaves, compare the
/// root: what a plain tlog-tiles client checks), and a second audit with nothing new.
#[derive(clap::Args, Clone, Debug)]
pub struct AuditArgs {
    /// Entries in the log (rounded up to whole rounds).
    #[arg(long, default_value_t = 100_000)]
    pub entries: u64,
    /// Where the log is written, and reused when it holds a log of that size (default:
    /// a temporary directory, built afresh).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Threads that check entry signatures (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub async fn run(args: &AuditArgs) -> Result<Report> {
    let temp = tempfile::tempdir()?;
    let options = BenchOptions {
        entries: args.entries,
        dir: args.dir.clone().unwrap_or_else(|| temp.path().to_owned()),
        threads: args.threads,
    };
    let r = tokio::task::spawn_blocking(move || {
        let build = spinner("building the sample log, then the tree-only baseline");
        let mut verify: Option<indicatif::ProgressBar> = None;
        let r = run_bench(&options, &mut |phase, done, total| {
            if phase == Phase::Verify {
                build.finish_and_clear();
                let v = verify.get_or_insert_with(|| bar(total, "verifying"));
                v.set_length(total);
                v.set_position(done);
            }
        });
        build.finish_and_clear();
        if let Some(v) = verify {
            v.finish_and_clear();
        }
        r
    })
    .await??;
    drop(temp);
    println!("\naudit of a synthetic log of {} entries\n", r.entries);
    println!("{}", r.table());
    let mut report = Report::new("audit");
    report.against(
        format!("full audit, {} entries", r.entries),
        r.verify.entries_per_second,
        "entries/s",
        "tree only",
        r.tree_only_entries_per_second,
    );
    report.against(
        "full audit, batch signatures against each signature alone",
        r.verify.entries_per_second,
        "entries/s",
        "--strict-signatures",
        r.strict.entries_per_second,
    );
    report.add("second audit, nothing new", r.resume_seconds * 1e3, "ms");
    report.write_json(args.json.as_deref())?;
    Ok(report)
}
