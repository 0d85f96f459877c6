//! `lupus-audit`: the auditor's command line. Parsing and printing only; the work is
//! in the `lupus_audit` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lupus_audit::bench::{BenchError, BenchOptions, Phase};
use lupus_audit::monitor::{Alert, MonitorOptions, monitor};
use lupus_audit::source::open_source;
use lupus_audit::state::StateDir;
use lupus_audit::verify::{
    AuditError, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Options, Outcome, TileCheck,
    verify_log,
};
use lupus_audit::{statement, witness};
use lupus_ledger::note::{CosignatureVerifier, NoteSigner};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit status:
  0  everything checked out
  1  verification failed: the report names the entry index (if any) and the reason
  2  usage or input error (bad flags, malformed key or file, key other than the pinned one)
  3  the log could not be read (network error, missing file)
  4  the auditor's own state could not be read or written
  5  monitor: the log stalled (did not grow within --stall-after)";

/// Audits a Lupus ledger without trusting the coordinator.
#[derive(Parser, Debug)]
#[command(name = "lupus-audit", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print one JSON object instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify a log (a URL or a static tlog-tiles directory); a second run reads only
    /// what is new.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// `http://host:port` of a coordinator or mirror, or a tiles directory.
        source: String,
        /// The log's checkpoint verifier key (or a file holding it). Pinned on the
        /// first run; later runs may omit it.
        #[arg(long)]
        key: Option<String>,
        /// Directory of the auditor's state for this log.
        #[arg(long, default_value = "lupus-audit-state")]
        state: PathBuf,
        /// Threads that check entry signatures (0: one per CPU).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Replay the challenges of K judged tasks of this run (acceptances and
        /// the referee's rejections alike) from the coordinator's stored openings
        /// (needs the coordinator's URL). The sample is drawn from this auditor's
        /// own randomness, so the operator cannot steer it; the run prints its seed.
        #[arg(long, default_value_t = 0)]
        replay: usize,
        /// Fix the seed of the samples (replayed tasks, checked tiles; 64 hex
        /// digits) to reproduce an earlier run.
        #[arg(long, value_name = "HEX", value_parser = parse_seed)]
        seed: Option<[u8; 32]>,
        /// Hash tiles the log serves for this run's entries to check against the
        /// verified tree: `all`, or how many to sample (0: none).
        #[arg(long, value_name = "all|N", default_value = "16", value_parser = parse_tiles)]
        tiles: TileCheck,
        /// Recompute every round closed in this run from the coordinator's blobs:
        /// the merged deltas against the commitments, the merge and outer step, the
        /// new model and momentum hashes and the validation loss, bit for bit (needs
        /// the coordinator's URL).
        #[arg(long)]
        replay_merge: bool,
        /// Check each participant signature alone with the strict Ed25519 equation
        /// (what the coordinator does) instead of in batches, which take about half
        /// the CPU and also accept signatures whose R or key carry a torsion
        /// component (only the key's holder can make those).
        #[arg(long)]
        strict_signatures: bool,
    },
    /// Verify a stake statement (JSON) or a C2SP tlog-proof file offline.
    #[command(after_help = EXIT_CODES)]
    Stake {
        /// The statement or proof file.
        file: PathBuf,
        /// The log's checkpoint verifier key (or a file holding it).
        #[arg(long)]
        key: String,
        /// For a tlog-proof: the entry's canonical bytes.
        #[arg(long)]
        entry: Option<PathBuf>,
        /// A witness whose tlog-cosignature the checkpoint must carry (its
        /// `<name>+<id>+<key>`, or a file holding it); repeatable.
        #[arg(long = "witness", value_name = "KEY")]
        witnesses: Vec<String>,
        /// Refuse a checkpoint whose newest required cosignature is older than
        /// this (`90s`, `10m`, `2h`, `1d`); needs --witness.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_age: Option<std::time::Duration>,
    },
    /// Run a C2SP tlog-witness (POST /add-checkpoint).
    #[command(after_help = EXIT_CODES)]
    Witness {
        /// The witness's private key file (PRIVATE+KEY+...); created if missing.
        #[arg(long)]
        key_file: PathBuf,
        /// Name of a key created by --key-file.
        #[arg(long, default_value = "lupus-audit-witness")]
        name: String,
        /// Verifier key of a log to witness (or a file holding it); repeatable.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
        /// The witness's state file (latest cosigned checkpoint per log).
        #[arg(long, default_value = "lupus-witness.json")]
        state: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7380")]
        listen: String,
    },
    /// Follow a log and alert on inconsistency, bad signatures or a stall.
    #[command(after_help = EXIT_CODES)]
    Monitor {
        /// `http://host:port` or a tiles directory.
        source: String,
        /// The log's checkpoint verifier key (or a file); pinned on the first run.
        #[arg(long)]
        key: Option<String>,
        /// Directory of the auditor's state for this log.
        #[arg(long, default_value = "lupus-audit-state")]
        state: PathBuf,
        /// Seconds between polls.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Alert when the log has not grown for this many seconds.
        #[arg(long)]
        stall_after: Option<u64>,
        /// Shell command to run on an alert (see the docs for its environment).
        #[arg(long)]
        hook: Option<String>,
        /// Stop after this many polls without an alert.
        #[arg(long)]
        polls: Option<u64>,
    },
    /// Build a synthetic protocol-correct log of about N entries once (in --dir)
    /// and report how fast `verify` checks it.
    Bench {
        /// Entries in the log (rounded up to whole rounds).
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Where the log is written (reused when it holds a log of that size).
        #[arg(long, default_value = "target/lupus-audit-bench")]
        dir: PathBuf,
        /// Threads that check entry signatures (0: one per CPU).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            report_error(cli.json, "usage", &format!("{e:#}"), None, &[]);
            EXIT_USAGE
        }
    };
    ExitCode::from(code as u8)
}

/// A key given inline or as a file that holds it.
fn key_arg(arg: &str) -> anyhow::Result<String> {
    let path = Path::new(arg);
    if !arg.contains('+') && path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {arg}"))?;
        return Ok(text.trim().to_owned());
    }
    Ok(arg.trim().to_owned())
}

fn report_error(json: bool, kind: &str, message: &str, index: Option<u64>, evidence: &[&str]) {
    if json {
        let v = json!({"ok": false, "kind": kind, "index": index, "message": message, "evidence": evidence});
        println!("{v}");
    } else {
        eprintln!("lupus-audit: FAILED ({kind}): {message}");
        for (i, e) in evidence.iter().enumerate() {
            eprintln!("--- evidence {} ---\n{e}", i + 1);
        }
    }
}

fn report_audit_error(json: bool, e: &AuditError) -> i32 {
    report_error(json, e.kind(), &e.to_string(), e.index(), &e.evidence());
    e.exit_code()
}

fn print_outcome(json: bool, o: &Outcome) {
    if json {
        println!("{}", json!({"ok": true, "outcome": o}));
    } else if o.new_entries == 0 {
        println!(
            "ok: log of {} entries, root {}, nothing new since the last run",
            o.size, o.root
        );
    } else {
        println!(
            "ok: verified entries {}..{} ({} new) in {:.2} s ({:.0} entries/s); root {}; {} shares over {} accounts; {} earlier checkpoints proven consistent; {} challenges replayed",
            o.from_size,
            o.size,
            o.new_entries,
            o.seconds,
            o.entries_per_second,
            o.root,
            o.total_shares,
            o.accounts,
            o.consistency_proofs,
            o.replayed,
        );
        println!(
            "{} hash tiles checked; {} rounds recomputed; samples drawn with --seed {}",
            o.tiles_checked, o.rounds_recomputed, o.seed
        );
    }
}

fn parse_tiles(s: &str) -> Result<TileCheck, String> {
    match s {
        "all" => Ok(TileCheck::All),
        n => n
            .parse()
            .map(TileCheck::Sample)
            .map_err(|_| format!("{n:?}: `all` or a number of tiles")),
    }
}

fn parse_seed(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes; a seed is 32 (64 hex digits)", b.len()))
}

fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    let bar = if hidden {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "verifying {bar:40} {pos}/{len} entries, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Verify {
            source,
            key,
            state,
            threads,
            replay,
            seed,
            tiles,
            replay_merge,
            strict_signatures,
        } => {
            let key = key.as_deref().map(key_arg).transpose()?;
            let src = open_source(source);
            let bar = progress_bar(cli.json || cli.quiet);
            let result = verify_log(
                src.as_ref(),
                &StateDir::new(state),
                key.as_deref(),
                &Options {
                    threads: *threads,
                    replay: *replay,
                    seed: *seed,
                    tiles: *tiles,
                    replay_merge: *replay_merge,
                    strict_signatures: *strict_signatures,
                },
                &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            );
            bar.finish_and_clear();
            Ok(match result {
                Ok(o) => {
                    print_outcome(cli.json, &o);
                    EXIT_OK
                }
                Err(e) => report_audit_error(cli.json, &e),
            })
        }
        Command::Stake {
            file,
            key,
            entry,
            witnesses,
            max_age,
        } => {
            let key = key_arg(key)?;
            let fresh = statement::Freshness {
                witnesses: witnesses
                    .iter()
                    .map(|w| {
                        let w = key_arg(w)?;
                        CosignatureVerifier::parse(w.trim())
                            .with_context(|| format!("--witness {w}: not a witness key"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                max_age_s: max_age.map(|d| d.as_secs()),
                now_s: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            let entry = entry
                .as_ref()
                .map(|p| std::fs::read(p).with_context(|| format!("read {}", p.display())))
                .transpose()?;
            Ok(
                match statement::check_fresh(&text, &key, entry.as_deref(), &fresh) {
                    Ok(proven) => {
                        if cli.json {
                            println!("{}", json!({"ok": true, "proven": proven}));
                        } else {
                            println!("ok: {}", serde_json::to_string_pretty(&proven)?);
                        }
                        EXIT_OK
                    }
                    Err(e) => {
                        let kind = match e {
                            statement::StatementError::Format(_)
                            | statement::StatementError::Key(_)
                            | statement::StatementError::NoEntry
                            | statement::StatementError::AgeWithoutWitness => "usage",
                            statement::StatementError::NotCosigned { .. }
                            | statement::StatementError::Stale { .. }
                            | statement::StatementError::FromTheFuture { .. } => "not_fresh",
                            _ => "bad_statement",
                        };
                        report_error(cli.json, kind, &e.to_string(), None, &[]);
                        if kind == "usage" {
                            EXIT_USAGE
                        } else {
                            EXIT_FAILED
                        }
                    }
                },
            )
        }
        Command::Witness {
            key_file,
            name,
            logs,
            state,
            listen,
        } => run_witness(key_file, name, logs, state, listen),
        Command::Monitor {
            source,
            key,
            state,
            interval,
            stall_after,
            hook,
            polls,
        } => {
            let key = key.as_deref().map(key_arg).transpose()?;
            let src = open_source(source);
            let options = MonitorOptions {
                interval: Duration::from_secs(*interval),
                stall_after: stall_after.map(Duration::from_secs),
                max_polls: *polls,
                hook: hook.clone(),
            };
            let json = cli.json;
            let alert = monitor(
                src.as_ref(),
                &StateDir::new(state),
                key.as_deref(),
                &options,
                &mut |o| print_outcome(json, o),
            );
            Ok(match alert {
                None => EXIT_OK,
                Some(Alert::Failed(e)) => report_audit_error(cli.json, &e),
                Some(a) => {
                    report_error(cli.json, a.kind(), &a.message(), None, &[]);
                    a.exit_code()
                }
            })
        }
        Command::Bench {
            entries,
            dir,
            threads,
        } => run_bench(*entries, dir, *threads, cli.json, cli.quiet),
    }
}

fn run_witness(
    key_file: &Path,
    name: &str,
    logs: &[String],
    state: &Path,
    listen: &str,
) -> anyhow::Result<i32> {
    let skey = match std::fs::read_to_string(key_file) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = NoteSigner::generate(name).context("generate the witness key")?;
            let skey = signer.private_key();
            write_private(key_file, &skey)?;
            skey
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", key_file.display())),
    };
    let logs = logs
        .iter()
        .map(|l| key_arg(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let w = witness::Witness::open(&skey, &logs, state).context("open the witness")?;
    eprintln!(
        "lupus-audit witness: cosigning key {} on http://{listen}{}",
        w.verifier_key(),
        witness::ADD_CHECKPOINT
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lupus-audit: cannot listen on {listen}: {e}");
                return Ok(EXIT_UNREACHABLE);
            }
        };
        axum::serve(listener, witness::router(Arc::new(w)))
            .await
            .context("serve")?;
        Ok(EXIT_OK)
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

fn run_bench(
    entries: u64,
    dir: &Path,
    threads: usize,
    json: bool,
    quiet: bool,
) -> anyhow::Result<i32> {
    let options = BenchOptions {
        entries,
        dir: dir.to_owned(),
        threads,
    };
    let bar = progress_bar(json || quiet);
    let result = lupus_audit::bench::run_bench(&options, &mut |phase, done, total| {
        if phase == Phase::Build && done == 0 {
            bar.suspend(|| {
                eprintln!(
                    "building a sample log of about {entries} entries in {} ...",
                    dir.display()
                )
            });
        }
        if phase == Phase::Verify {
            bar.set_length(total);
            bar.set_position(done);
        }
    });
    bar.finish_and_clear();
    let r = match result {
        Ok(r) => r,
        Err(BenchError::Audit(e)) => return Ok(report_audit_error(json, &e)),
        Err(e) => return Err(e.into()),
    };
    let outcome = &r.verify;
    if json {
        println!(
            "{}",
            json!({"ok": true, "entries": outcome.size, "build_seconds": r.build_seconds,
                "verify_seconds": outcome.seconds, "verify_entries_per_second": outcome.entries_per_second,
                "tree_only_entries_per_second": r.tree_only_entries_per_second, "resume_seconds": r.resume_seconds,
                "verify_cpu_seconds": r.verify_cpu_seconds,
                "threads": threads})
        );
    } else {
        println!("{}", r.table());
    }
    Ok(EXIT_OK)
}
