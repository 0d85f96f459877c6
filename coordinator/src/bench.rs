//! `lupus bench`: benchmarks that print figures against a baseline measured in the
//! same run.
//!
//! - `diloco`: the same job trained federated (W workers, DiLoCo outer Nesterov over
//!   int8 deltas) and centralised (one AdamW run over the same number of samples);
//!   both validation losses, and the bytes a worker sends per round against fp32
//!   data-parallel training (a full fp32 gradient every inner step).
//! - `load`: many simulated workers and verifiers against one coordinator on
//!   loopback; requests per second, latency percentiles, errors, lost submissions.
//! - `adversaries`: the adversary zoo (`lupus_coordinator::zoo`): per cheat, tasks,
//!   detections, rate against the theory, shares kept, and the validation loss
//!   against an honest-only run.
//!
//! The other crates' micro-benchmarks are criterion benches: `cargo bench -p
//! lupus-ledger`, `cargo bench -p lupus-prover`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use lupus_coordinator::dataset;
use lupus_coordinator::engine::{Config, Coordinator};
use lupus_coordinator::server::Server;
use lupus_ledger::entry::{Entry, EntryBody};
use lupus_ledger::hash::LeafIndex;
use lupus_prover::data::Corpus;
use lupus_prover::graph::train_step_untraced;
use lupus_prover::model::init_params;
use lupus_prover::optim::{TrainState, merge_deltas, outer_step};
use lupus_prover::prf::prf;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{job_sampler, run_task, task_batch};
use lupus_prover::tensor::Tensor;
use lupus_worker::native::{Member, NativeConfig, Stats, spawn_group};

use crate::job_text;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Federated (DiLoCo) against centralised training on the same samples.
    Diloco {
        #[arg(long)]
        job: Option<PathBuf>,
        #[arg(long, default_value = "lupus-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[arg(long, default_value_t = 6)]
        rounds: u64,
    },
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
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Diloco {
            job,
            data_dir,
            workers,
            rounds,
        } => {
            let text = job_text(&job)?;
            let job = JobSpec::parse(&text)?;
            let corpus = dataset::load_or_fetch(&data_dir, &job)?;
            tokio::task::spawn_blocking(move || diloco(&job, &corpus, workers, rounds)).await?
        }
        BenchCommand::Load {
            workers,
            verifiers,
            seconds,
            job,
        } => load(workers, verifiers, seconds, job).await,
        BenchCommand::Adversaries {
            rounds,
            tasks_per_round,
            double_check,
            job,
            json,
        } => adversaries(rounds, tasks_per_round, double_check, job, json).await,
    }
}

async fn adversaries(
    rounds: u64,
    tasks_per_round: u32,
    double_check: f64,
    job: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<()> {
    use lupus_coordinator::zoo;
    ensure!(
        (0.0..=1.0).contains(&double_check),
        "--double-check is a fraction in [0, 1]"
    );
    let text = match &job {
        Some(p) => std::fs::read_to_string(p)?,
        None => include_str!("../../jobs/tiny-test.toml").to_owned(),
    };
    let mut spec: toml::Table = text.parse()?;
    if let Some(v) = spec.get_mut("verify").and_then(|v| v.as_table_mut()) {
        v.insert(
            "double_check_fraction".into(),
            toml::Value::Float(double_check),
        );
    }
    let text = toml::to_string(&spec)?;
    let parsed = JobSpec::parse(&text)?;
    let corpus = match &job {
        Some(_) => dataset::load_or_fetch(std::path::Path::new("lupus-data"), &parsed)?,
        None => Corpus::generated(7, 24_000),
    };
    let cfg = zoo::ZooConfig::full(&text, corpus, rounds, tasks_per_round);
    let report = zoo::run(&cfg).await?;
    print!("{}", zoo::table(&report));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn val(job: &JobSpec, corpus: &Corpus, p: &[Tensor]) -> Result<f32> {
    Coordinator::validation_loss(job, corpus, p, 512).map_err(anyhow::Error::msg)
}

fn diloco(job: &JobSpec, corpus: &Corpus, workers: usize, rounds: u64) -> Result<()> {
    ensure!(
        workers > 0 && rounds > 0,
        "need at least one worker and one round"
    );
    let p0 = init_params(&job.model, job.hash().0)?;
    let initial = val(job, corpus, &p0)?;
    let h = job.inner.steps;
    let params_count: usize = p0.iter().map(Tensor::len).sum();
    println!(
        "DiLoCo parity: job {}, {workers} workers x {rounds} rounds x H={h} steps x batch {}",
        job.job.name, job.inner.batch_size
    );

    let t = Instant::now();
    let mut params = p0.clone();
    let mut momentum = Vec::new();
    let mut delta_bytes = 0usize;
    for r in 0..rounds {
        let seeds: Vec<[u8; 32]> = (0..workers)
            .map(|w| {
                prf(
                    &[1; 32],
                    "lupus bench seed v1",
                    &(r * 1000 + w as u64).to_le_bytes(),
                )
            })
            .collect();
        let runs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = seeds
                .iter()
                .map(|seed| {
                    let base = &params;
                    s.spawn(move || run_task(job, corpus, base, *seed, &mut |_, _| {}))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut deltas = Vec::new();
        for run in runs {
            let run = run.map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            delta_bytes = run.delta.to_bytes().len();
            deltas.push((run.delta.dequantise()?, 1.0f32));
        }
        let mean = merge_deltas(&deltas, job.outer.clip_norm)?;
        params = outer_step(&params, &mut momentum, &mean, &job.outer.nesterov())?;
        println!(
            "  federated round {}: validation loss {:.4}",
            r + 1,
            val(job, corpus, &params)?
        );
    }
    let federated = val(job, corpus, &params)?;
    let fed_time = t.elapsed();

    let t = Instant::now();
    let sampler = job_sampler(job, corpus)?;
    let mut state = TrainState::fresh(p0.clone());
    let steps = rounds as u32 * workers as u32 * h;
    let seed = prf(&[2; 32], "lupus bench central v1", b"");
    for step in 0..steps {
        let batch = task_batch(job, &sampler, &seed, step)?;
        state = train_step_untraced(&job.model, &job.inner.adamw(), &state, &batch)?.0;
    }
    let central = val(job, corpus, &state.params)?;
    let central_time = t.elapsed();

    let fp32_per_round = 4 * params_count * h as usize;
    let ratio = fp32_per_round as f64 / delta_bytes.max(1) as f64;
    let gap = (federated - central) / central * 100.0;
    println!();
    println!("| run | samples | validation loss | wall time |");
    println!("|---|---|---|---|");
    println!("| initial | 0 | {initial:.4} | |");
    let samples = u64::from(steps) * u64::from(job.inner.batch_size);
    println!(
        "| centralised AdamW (baseline) | {samples} | {central:.4} | {:.1} s |",
        central_time.as_secs_f64()
    );
    println!(
        "| federated DiLoCo, {workers} workers | {samples} | {federated:.4} | {:.1} s |",
        fed_time.as_secs_f64()
    );
    println!();
    println!("federated loss is {gap:+.2}% against centralised (target: within 5%)");
    println!(
        "bytes sent per worker per round: {delta_bytes} (int8 delta) vs {fp32_per_round} (fp32 gradient x {h} steps): {ratio:.0}x less (target: >= 100x)"
    );
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
    // The real worker and verifier loop, many participants to a thread: they take
    // turns at every request, as hundreds of volunteers' browsers would.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let mut groups: Vec<Vec<(Member, Arc<Stats>)>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..workers + verifiers {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let name = if i < workers {
            format!("load-w{i}")
        } else {
            format!("load-v{i}")
        };
        let cfg = NativeConfig {
            latencies: Some(Arc::clone(&latencies)),
            ..NativeConfig::new(&url, key, &name)
        };
        let s = Arc::new(Stats::default());
        stats.push((i < workers, Arc::clone(&s)));
        let member = if i < workers {
            Member::Worker(cfg)
        } else {
            Member::Verifier(cfg)
        };
        groups[i % threads].push((member, s));
    }
    for g in groups {
        // Detached: the threads see `stop` and end with the process.
        drop(spawn_group(g, Arc::clone(&stop)));
    }
    println!("load: {workers} workers, {verifiers} verifiers against {url} for {seconds} s");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
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
    for (_, s) in &stats {
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
    let done = |worker: bool| -> u64 {
        stats
            .iter()
            .filter(|(w, _)| *w == worker)
            .map(|(_, s)| s.done.load(Ordering::Relaxed))
            .sum()
    };
    let (tasks, verdicts) = (done(true), done(false));
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
