//! `lupus-bench`: every crate's benchmarks, each printing its figures and a ratio
//! against a baseline measured in the same run, with `--json PATH` for the figures.
//!
//! A binary of its own, so that the product (`lupus`, `lupus-coordinator`) carries no
//! benchmark code: this crate depends on the coordinator, never the other way round.
//!
//! - `ledger` ([`ledger`]): durable appends/s, proofs from storage, stake statements.
//! - `prover` ([`prover`]): matmul, training throughput, commitment and verifier cost.
//! - `worker` ([`worker`]): a volunteer's native step time (CPU, and WGSL with the
//!   `gpu` feature).
//! - `audit` ([`audit`]): whole-log verification speed.
//! - `diloco` ([`diloco`]): federated against centralised and data-parallel validation loss.
//! - `load` ([`load`]): many simulated workers and verifiers against one coordinator
//!   (a child process) on loopback for minutes; requests per second, latency
//!   percentiles, errors, lost submissions and the coordinator's memory over time.
//! - `adversaries`: the adversary zoo (`lupus_zoo`): per cheat, tasks,
//!   detections, rate against the theory, shares kept, and the validation loss
//!   against an honest-only run.
//! - `tolerance` ([`tolerance`]): the spread between honest devices, emulated,
//!   against the tolerant class's bound.
//! - `all`: each of them with small settings, then one summary table.

mod audit;
mod diloco;
mod ledger;
mod load;
mod prover;
mod report;
mod tolerance;
mod worker;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use report::Report;

/// The job the benches run when no `--job` is given (as `lupus up` does).
const DEFAULT_JOB: &str = include_str!("../../../jobs/shakespeare-gpt.toml");

/// The job spec text of `--job`, or the embedded default.
fn job_text(job: &Option<PathBuf>) -> Result<String> {
    match job {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the job spec {}", p.display())),
        None => Ok(DEFAULT_JOB.to_owned()),
    }
}

/// Benchmarks of every Lupus crate, each against a baseline measured in the same run.
#[derive(Parser)]
#[command(name = "lupus-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    Ledger(ledger::LedgerArgs),
    Prover(prover::ProverArgs),
    Worker(worker::WorkerArgs),
    Audit(audit::AuditArgs),
    Diloco(diloco::DilocoArgs),
    /// Simulated workers against one coordinator (a child `lupus up`) on loopback:
    /// throughput, latency, errors and the coordinator's memory over time.
    Load(load::LoadArgs),
    /// The spread between honest devices (subnormals flushed, an ulp or a few per
    /// op output), emulated on the CPU, against each job's tolerant-class bound.
    Tolerance(tolerance::ToleranceArgs),
    /// The adversary zoo: every cheat against a coordinator, detection rates against
    /// the theory, shares kept and the effect on validation loss.
    Adversaries {
        /// Rounds per phase (more rounds, more tasks per case, tighter intervals).
        #[arg(long, default_value_t = 40)]
        rounds: u64,
        #[arg(long, default_value_t = 16)]
        tasks_per_round: u32,
        /// The fraction of tasks that need two verifiers (replaces the job's).
        #[arg(long, default_value_t = 0.25)]
        double_check: f64,
        /// The job (default: jobs/tiny-test.toml, embedded, on a generated corpus).
        #[arg(long)]
        job: Option<PathBuf>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The rational zoo (issue 13): strategies that a rational adversary with as many
    /// keys as it likes would try, each against honest workers and verifiers; credit
    /// per CPU-second against the honest participants of the same run, detection with
    /// its 99% interval, and the final validation loss against honest-only runs.
    Incentives {
        /// Rounds per run (more rounds, more acts per strategy, tighter intervals).
        #[arg(long, default_value_t = 6)]
        rounds: u64,
        #[arg(long, default_value_t = 8)]
        tasks_per_round: u32,
        /// Probation tasks of a new worker key (replaces the job's; 3 is the
        /// Shakespeare job's).
        #[arg(long, default_value_t = 3)]
        probation: u32,
        /// The floor of the referee's replay checks of acceptances (replaces the
        /// job's; 0.05 is the Shakespeare job's, 0 turns proof of replay off).
        #[arg(long, default_value_t = 0.05)]
        replay_checks: f64,
        /// The job (default: jobs/tiny-test.toml, embedded, on a generated corpus).
        #[arg(long)]
        job: Option<PathBuf>,
        /// Also write the figures as JSON here (the bench report format).
        #[arg(long)]
        json: Option<PathBuf>,
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

#[tokio::main]
async fn main() -> Result<()> {
    // A bench's tables are its output: info logs would bury them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        BenchCommand::Ledger(args) => ledger::run(&args).await.map(drop),
        BenchCommand::Prover(args) => tokio::task::spawn_blocking(move || prover::run(&args))
            .await?
            .map(drop),
        BenchCommand::Worker(args) => worker::run(&args).await.map(drop),
        BenchCommand::Audit(args) => audit::run(&args).await.map(drop),
        BenchCommand::Diloco(args) => diloco::run(&args).await.map(drop),
        BenchCommand::Load(args) => load::run(args).await,
        BenchCommand::Tolerance(args) => tolerance::run(&args).map(drop),
        BenchCommand::Adversaries {
            rounds,
            tasks_per_round,
            double_check,
            job,
            json,
        } => adversaries(rounds, tasks_per_round, double_check, job, json).await,
        BenchCommand::Incentives {
            rounds,
            tasks_per_round,
            probation,
            replay_checks,
            job,
            json,
        } => incentives(rounds, tasks_per_round, probation, replay_checks, job, json)
            .await
            .map(drop),
        BenchCommand::All(args) => all(&args).await,
    }
}

async fn adversaries(
    rounds: u64,
    tasks_per_round: u32,
    double_check: f64,
    job: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<()> {
    use lupus_zoo as zoo;
    anyhow::ensure!(
        (0.0..=1.0).contains(&double_check),
        "--double-check is a fraction in [0, 1]"
    );
    let (text, corpus) = zoo_job(
        job.as_deref(),
        &[("double_check_fraction", toml::Value::Float(double_check))],
    )?;
    let cfg = zoo::ZooConfig::full(&text, corpus, rounds, tasks_per_round);
    let report = zoo::run(&cfg).await?;
    print!("{}", zoo::table(&report));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

/// The job a zoo bench runs (`job`, or the embedded tiny test job on a generated
/// corpus) with `verify.<field>` set to `value`, and its corpus.
fn zoo_job(
    job: Option<&std::path::Path>,
    fields: &[(&str, toml::Value)],
) -> Result<(String, lupus_prover::data::Corpus)> {
    use lupus_coordinator::dataset;
    use lupus_prover::data::Corpus;
    use lupus_prover::spec::JobSpec;
    let text = match job {
        Some(p) => std::fs::read_to_string(p)?,
        None => include_str!("../../../jobs/tiny-test.toml").to_owned(),
    };
    let mut spec: toml::Table = text.parse()?;
    if let Some(v) = spec.get_mut("verify").and_then(|v| v.as_table_mut()) {
        for (field, value) in fields {
            v.insert((*field).into(), value.clone());
        }
    }
    let text = toml::to_string(&spec)?;
    let parsed = JobSpec::parse(&text)?;
    let corpus = match job {
        Some(_) => dataset::load_or_fetch(std::path::Path::new("lupus-data"), &parsed)?,
        None => Corpus::generated(7, 24_000),
    };
    Ok((text, corpus))
}

/// The rational zoo: `lupus-bench incentives`.
async fn incentives(
    rounds: u64,
    tasks_per_round: u32,
    probation: u32,
    replay_checks: f64,
    job: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<Report> {
    use lupus_zoo as zoo;
    let (text, corpus) = zoo_job(
        job.as_deref(),
        &[
            (
                "probation_tasks",
                toml::Value::Integer(i64::from(probation)),
            ),
            ("replay_checks", toml::Value::Float(replay_checks)),
        ],
    )?;
    let cfg = zoo::ZooConfig {
        honest_workers: 3,
        honest_verifiers: 2,
        task_timeout: std::time::Duration::from_secs(2),
        ..zoo::ZooConfig::full(&text, corpus, rounds, tasks_per_round)
    };
    let strategies = zoo::rational::Strategy::ALL;
    let spinner = report::spinner(&format!(
        "{} runs, one per strategy, then two honest-only runs",
        strategies.len()
    ));
    let r = zoo::rational::run(&cfg, &strategies).await?;
    spinner.finish_and_clear();
    print!("{}", zoo::rational::table(&r));
    let mut out = Report::new("incentives");
    for row in &r.rows {
        out.against(
            format!("{}: credit per CPU-second", row.name),
            row.rate(),
            "FLOP/cpu-s",
            "honest participants, same run",
            row.honest_rate(),
        );
        if row.acts > 0 {
            let (lo, hi) = row.interval().unwrap_or((0.0, 1.0));
            out.add(
                format!("{}: cheating acts that earned nothing", row.name),
                row.caught as f64 / row.acts as f64,
                "fraction",
            );
            out.add(format!("{}: 99% interval, low", row.name), lo, "fraction");
            out.add(format!("{}: 99% interval, high", row.name), hi, "fraction");
        }
        if let (Some(d), Some(h)) = (row.drift, r.honest_drift) {
            out.against(
                format!("{}: drift along the all-ones direction", row.name),
                d,
                "parameter units",
                "honest-only run",
                h,
            );
        }
        if let (Some(l), Some(h)) = (row.val_loss, r.honest_loss) {
            out.against(
                format!("{}: final validation loss", row.name),
                f64::from(l),
                "nats",
                "honest-only run",
                f64::from(h),
            );
        }
    }
    if let (Some(a), Some(h)) = (r.honest_again_drift, r.honest_drift) {
        out.against(
            "honest-only run again: drift along the all-ones direction",
            a,
            "parameter units",
            "honest-only run",
            h,
        );
    }
    if let (Some(a), Some(h)) = (r.honest_again_loss, r.honest_loss) {
        out.against(
            "honest-only run again: final validation loss",
            f64::from(a),
            "nats",
            "honest-only run",
            f64::from(h),
        );
    }
    out.write_json(json.as_deref())?;
    Ok(out)
}

/// Every bench with small settings, then the summary.
async fn all(args: &AllArgs) -> Result<()> {
    let mut reports: Vec<Report> = Vec::new();
    let heading = |name: &str| println!("\n## lupus-bench {name}\n");
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
            warmup_steps: None,
            batch_size: None,
            quick: false,
            json: None,
        })
        .await?,
    );
    heading("load");
    load::run(load::LoadArgs {
        workers: 20,
        verifiers: 2,
        minutes: None,
        seconds: 10,
        every: 5,
        tasks_per_round: None,
        threads: None,
        volunteer_nice: 10,
        job: None,
        coordinator_bin: None,
        baseline_bin: None,
        json: None,
    })
    .await?;
    println!("\n## Summary (load: see its table above)\n");
    print!("{}", report::summary(&reports));
    if let Some(path) = &args.json {
        report::write_json(path, &reports)?;
    }
    Ok(())
}
