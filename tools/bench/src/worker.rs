//! `lupus-bench worker`: a volunteer's step time natively, the baseline of the browser
//! benchmark (`worker-wasm/e2e/bench.mjs`, `bench_step_ms` in the page): the same job,
//! generated corpus, seeds and one warm-up step.
//!
//! The worker's committed step (`TaskBuilder::run_step` on the CPU reference, what
//! `lupus worker` and the page's CPU path run) against the bare training step
//! (`train_step_untraced`) on the same state and batch, interleaved. With the `gpu`
//! feature, the WGSL kernels on the native Vulkan device (lavapipe on a machine
//! without a GPU) against that CPU reference.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lupus_prover::data::Corpus;
use lupus_prover::graph::train_step_untraced;
use lupus_prover::model::init_params;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::TaskBuilder;

use super::report::{Report, bar, median};
use crate::job_text;

/// Measures a volunteer's training step natively.
///
/// The worker's committed step on the CPU reference (TaskBuilder::run_step: the step,
/// every op output hashed, the leaf), against the bare step (train_step_untraced) on
/// the same state and batch, interleaved; median of --steps after one warm-up step, on
/// a generated corpus with the seeds of the page's benchmark. The WGSL path (wgpu on
/// the native Vulkan device) is measured only when `lupus` is built with `--features
/// gpu`; the default build leaves lupus-worker's gpu feature off.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// The job (default: the embedded jobs/shakespeare-gpt.toml, the page's `gpt`).
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Steps measured, after one warm-up step (at most the job's H - 1).
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub async fn run(args: &WorkerArgs) -> Result<Report> {
    let job = JobSpec::parse(&job_text(&args.job)?).context("the job spec is invalid")?;
    let steps = args.steps.min(job.inner.steps.saturating_sub(1));
    ensure!(
        steps > 0,
        "--steps must be at least 1 and the job's H at least 2"
    );
    let corpus = Corpus::generated(1, 200_000);
    let (job, corpus, cpu, bare, report) = tokio::task::spawn_blocking(move || {
        let (cpu, bare) = cpu_steps(&job, &corpus, steps)?;
        let mut report = Report::new("worker");
        report.against(
            format!("{} committed step, native CPU reference", job.job.name),
            cpu * 1e3,
            "ms",
            "bare training step",
            bare * 1e3,
        );
        anyhow::Ok((job, corpus, cpu, bare, report))
    })
    .await??;
    println!(
        "\nworker step, job {} (batch {}, median of {steps} after one warm-up)\n",
        job.job.name, job.inner.batch_size
    );
    println!("| path                                         |   ms/step | vs bare step |");
    println!("|----------------------------------------------|-----------|--------------|");
    println!(
        "| bare training step (baseline)                | {:>9.2} |        1.00x |",
        bare * 1e3
    );
    println!(
        "| committed step, native CPU reference         | {:>9.2} | {:>11.2}x |",
        cpu * 1e3,
        cpu / bare
    );
    let report = gpu(&job, &corpus, steps, cpu, report).await?;
    report.write_json(args.json.as_deref())?;
    Ok(report)
}

/// Seconds per committed step and per bare step (medians).
fn cpu_steps(job: &JobSpec, corpus: &Corpus, steps: u32) -> Result<(f64, f64)> {
    let base = init_params(&job.model, [1; 32])?;
    let opt = job.inner.adamw();
    let mut b = TaskBuilder::new(job, corpus, &base, [2; 32])?;
    let (mut committed, mut bare) = (Vec::new(), Vec::new());
    let progress = bar(u64::from(steps) + 1, "worker steps");
    for i in 0..=steps {
        let batch = b.batch()?;
        let state = b.state().clone();
        let t0 = Instant::now();
        train_step_untraced(&job.model, &opt, &state, &batch)?;
        let t1 = Instant::now();
        b.run_step()?;
        let t2 = Instant::now();
        if i > 0 {
            bare.push(t1 - t0);
            committed.push(t2 - t1);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let secs = |v: Vec<Duration>| median(v).as_secs_f64();
    Ok((secs(committed), secs(bare)))
}

#[cfg(not(feature = "gpu"))]
async fn gpu(_: &JobSpec, _: &Corpus, _: u32, _: f64, report: Report) -> Result<Report> {
    println!(
        "\n(the WGSL path is not measured: this `lupus-bench` is built without the `gpu` feature; \
         `cargo run --release -p lupus-bench --features gpu -- worker` measures it)"
    );
    Ok(report)
}

/// The WGSL kernels on the native wgpu device, the same steps as the CPU reference.
#[cfg(feature = "gpu")]
async fn gpu(
    job: &JobSpec,
    corpus: &Corpus,
    steps: u32,
    cpu: f64,
    mut report: Report,
) -> Result<Report> {
    use lupus_worker::gpu::{GpuDevice, train_step_gpu};
    let dev = GpuDevice::new().await?;
    let base = init_params(&job.model, [1; 32])?;
    let mut b = TaskBuilder::new(job, corpus, &base, [2; 32])?;
    let mut times = Vec::new();
    let progress = bar(u64::from(steps) + 1, "WGSL steps");
    for i in 0..=steps {
        let t0 = Instant::now();
        let batch = b.batch()?;
        let out = train_step_gpu(&dev, &job.model, &job.inner.adamw(), b.state(), &batch).await?;
        b.record(&batch, out)?;
        if i > 0 {
            times.push(t0.elapsed());
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let wgsl = median(times).as_secs_f64();
    println!(
        "| committed step, WGSL on {:<20} | {:>9.2} | {:>8.2}x CPU |",
        dev.description,
        wgsl * 1e3,
        wgsl / cpu
    );
    report.against(
        format!(
            "{} committed step, WGSL on {}",
            job.job.name, dev.description
        ),
        wgsl * 1e3,
        "ms",
        "native CPU reference",
        cpu * 1e3,
    );
    Ok(report)
}
