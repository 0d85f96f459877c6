//! `lupus bench`: every crate's benchmarks, each printing its figures and a ratio
//! against a baseline measured in the same run, with `--json PATH` for the figures.
//!
//! - `ledger` ([`ledger`]): durable appends/s, proofs from storage, stake statements.
//! - `prover` ([`prover`]): matmul, training throughput, commitment and verifier cost.
//! - `worker` ([`worker`]): a volunteer's native step time (CPU, and WGSL with the
//!   `gpu` feature).
//! - `audit` ([`audit`]): whole-log verification speed.
//! - `diloco` ([`diloco`]): federated against centralised validation loss.
//! - `load` (here): many simulated workers and verifiers against one coordinator on
//!   loopback; requests per second, latency percentiles, errors, lost submissions.
//! - `all`: each of them with small settings, then one summary table.

mod audit;
mod diloco;
mod ledger;
mod prover;
mod report;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use lupus_coordinator::client::{Behaviour, Client, ParticipantStats, run_verifier, run_worker};
use lupus_coordinator::engine::{Config, Coordinator};
use lupus_coordinator::server::Server;
use lupus_ledger::entry::{Entry, EntryBody};
use lupus_ledger::hash::LeafIndex;
use lupus_prover::data::Corpus;

use report::Report;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    Ledger(ledger::LedgerArgs),
    Prover(prover::ProverArgs),
    Worker(worker::WorkerArgs),
    Audit(audit::AuditArgs),
    Diloco(diloco::DilocoArgs),
    /// Simulated workers against one coordinator on loopback.
    Load {
        #[arg(long, default_value_t = 200)]
        workers: usize,
        #[arg(long, default_value_t = 10)]
        verifiers: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The job the simulated workers train (default: jobs/tiny-test.toml, embedded).
        #[arg(long)]
        job: Option<PathBuf>,
    },
    All(AllArgs),
}

/// Runs every bench with small settings, then prints one summary table.
///
/// ledger (SQLite, 1 s per append row, 50,000-entry proof log, 20,000 accounts),
/// prover (matmul 64 and 256, 300 ms per timing, 10 committed steps, 2 lazy workers),
/// worker (5 steps), audit (50,000 entries), diloco (2 workers x 2 rounds; needs the
/// corpus in --data-dir, fetched when missing) and load (20 workers, 2 verifiers,
/// 10 s). Each prints its own tables as it goes; the summary lists every figure with
/// its same-run baseline and the ratio.
#[derive(clap::Args, Clone, Debug)]
pub struct AllArgs {
    /// Where the corpus of the diloco bench is (or is fetched to).
    #[arg(long, default_value = "lupus-data")]
    pub data_dir: PathBuf,
    /// Also write every report as one JSON array to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ledger(args) => ledger::run(&args).await.map(drop),
        BenchCommand::Prover(args) => tokio::task::spawn_blocking(move || prover::run(&args))
            .await?
            .map(drop),
        BenchCommand::Worker(args) => worker::run(&args).await.map(drop),
        BenchCommand::Audit(args) => audit::run(&args).await.map(drop),
        BenchCommand::Diloco(args) => diloco::run(&args).await.map(drop),
        BenchCommand::Load {
            workers,
            verifiers,
            seconds,
            job,
        } => load(workers, verifiers, seconds, job).await,
        BenchCommand::All(args) => all(&args).await,
    }
}

/// Every bench with small settings, then the summary.
async fn all(args: &AllArgs) -> Result<()> {
    let mut reports: Vec<Report> = Vec::new();
    let heading = |name: &str| println!("\n## lupus bench {name}\n");
    heading("ledger");
    reports.push(
        ledger::run(&ledger::LedgerArgs {
            database: None,
            append_seconds: 1.0,
            entries: 50_000,
            samples: 500,
            accounts: 20_000,
            budget_ms: 300,
            json: None,
        })
        .await?,
    );
    heading("prover");
    let prover_args = prover::ProverArgs {
        sizes: vec![64, 256],
        budget_ms: 300,
        job: None,
        batch: None,
        steps: 10,
        lazy_tasks: 2,
        json: None,
    };
    reports.push(tokio::task::spawn_blocking(move || prover::run(&prover_args)).await??);
    heading("worker");
    reports.push(
        worker::run(&worker::WorkerArgs {
            job: None,
            steps: 5,
            json: None,
        })
        .await?,
    );
    heading("audit");
    reports.push(
        audit::run(&audit::AuditArgs {
            entries: 50_000,
            dir: None,
            threads: 0,
            json: None,
        })
        .await?,
    );
    heading("diloco");
    reports.push(
        diloco::run(&diloco::DilocoArgs {
            job: None,
            data_dir: args.data_dir.clone(),
            workers: 2,
            rounds: 2,
            outer_lr: None,
            outer_momentum: None,
            clip_norm: None,
            inner_steps: None,
            inner_lr: None,
            json: None,
        })
        .await?,
    );
    heading("load");
    load(20, 2, 10, None).await?;
    println!("\n## Summary (load: see its table above)\n");
    print!("{}", report::summary(&reports));
    if let Some(path) = &args.json {
        report::write_json(path, &reports)?;
    }
    Ok(())
}

async fn load(workers: usize, verifiers: usize, seconds: u64, job: Option<PathBuf>) -> Result<()> {
    let text = match job {
        Some(p) => std::fs::read_to_string(p)?,
        None => include_str!("../../jobs/tiny-test.toml").to_owned(),
    };
    let dir = std::env::temp_dir().join(format!("lupus-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config {
        data_dir: dir.clone(),
        database_url: None,
        postgres_schema: None,
        job_spec: text,
        tasks_per_round: workers as u32,
        max_rounds: None,
        round_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(60),
        verify_timeout: Duration::from_secs(60),
        val_windows: 64,
    };
    let c = Coordinator::open(config, Corpus::generated(7, 50_000)).await?;
    let server = Server::start(Arc::clone(&c), "127.0.0.1:0".parse()?, None).await?;
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stats = Vec::new();
    let mut handles = Vec::new();
    for i in 0..workers + verifiers {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = Client::new(&url, ed25519_dalek::SigningKey::from_bytes(&seed))
            .with_latency_log(Arc::clone(&latencies));
        let s = Arc::new(ParticipantStats::default());
        stats.push(Arc::clone(&s));
        let stop = Arc::clone(&stop);
        handles.push(tokio::spawn(async move {
            if i < workers {
                run_worker(client, &format!("load-w{i}"), Behaviour::Honest, stop, s).await
            } else {
                run_verifier(client, &format!("load-v{i}"), stop, s).await
            }
        }));
    }
    println!("load: {workers} workers, {verifiers} verifiers against {url} for {seconds} s");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    for h in &handles {
        h.abort();
    }
    let m = &c.metrics;
    let requests = m.requests.load(Ordering::Relaxed);
    let client_errors = m.client_errors.load(Ordering::Relaxed);
    let server_errors = m.server_errors.load(Ordering::Relaxed);
    let mut lat = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    // Lost submissions: every acknowledged commitment must be in the log where the
    // receipt said.
    let mut acknowledged = 0usize;
    let mut lost = 0usize;
    for s in &stats {
        let acks = s
            .acknowledged
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        for (task, index) in acks {
            acknowledged += 1;
            let entries = c
                .log()
                .entries(LeafIndex(index), LeafIndex(index + 1))
                .await?;
            let ok = entries
                .first()
                .and_then(|b| Entry::decode(b).ok())
                .is_some_and(
                    |e| matches!(e.body(), EntryBody::WorkCommitted { task: t, .. } if t.0 == task),
                );
            if !ok {
                lost += 1;
            }
        }
    }
    let rounds = c.rounds().await.rounds;
    let closed = rounds.iter().filter(|r| r.new_model.is_some()).count();
    let tasks: u64 = stats.iter().map(|s| s.tasks.load(Ordering::Relaxed)).sum();
    let verdicts: u64 = stats
        .iter()
        .map(|s| s.verdicts.load(Ordering::Relaxed))
        .sum();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| requests | {requests} |");
    println!("| requests per second | {:.0} |", requests as f64 / elapsed);
    println!(
        "| latency p50 / p99 / max (ms) | {:.2} / {:.2} / {:.2} |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("| 4xx / 5xx answers | {client_errors} / {server_errors} |");
    println!("| tasks done / verdicts | {tasks} / {verdicts} |");
    println!("| rounds closed | {closed} |");
    println!("| acknowledged submissions / lost | {acknowledged} / {lost} |");
    println!("| log entries | {} |", c.log().head().size.0);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        lost == 0,
        "{lost} acknowledged submissions are not in the log"
    );
    Ok(())
}
