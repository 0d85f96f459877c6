//! `lupus bench`: benchmarks that print figures against a baseline measured in the
//! same run.
//!
//! - `diloco`: the same job trained federated (W workers, DiLoCo outer Nesterov over
//!   int8 deltas) and centralised (one AdamW run over the same number of samples);
//!   both validation losses, and the bytes a worker sends per round against fp32
//!   data-parallel training (a full fp32 gradient every inner step).
//! - `load` ([`load`]): many simulated workers and verifiers against one coordinator
//!   (a child process) on loopback for minutes; requests per second, latency
//!   percentiles, errors, lost submissions and the coordinator's memory over time.
//!
//! The other crates' micro-benchmarks are criterion benches: `cargo bench -p
//! lupus-ledger`, `cargo bench -p lupus-prover`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use lupus_coordinator::dataset;
use lupus_coordinator::engine::Coordinator;
use lupus_prover::data::Corpus;
use lupus_prover::graph::train_step_untraced;
use lupus_prover::model::init_params;
use lupus_prover::optim::{TrainState, merge_deltas, outer_step};
use lupus_prover::prf::prf;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{job_sampler, run_task, task_batch};
use lupus_prover::tensor::Tensor;

use crate::job_text;

mod load;

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
    /// Simulated workers against one coordinator (a child `lupus up`) on loopback:
    /// throughput, latency, errors and the coordinator's memory over time.
    Load(load::LoadArgs),
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
        BenchCommand::Load(args) => load::run(args).await,
    }
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
