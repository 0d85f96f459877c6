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

/// The WGSL kernels on the native wgpu device, the same steps as the CPU reference:
/// the per-operator path (`train_step_gpu`: every operator its own submission, inputs
/// uploaded and outputs read back, then committed on the host) and the whole step
/// (`WholeStep`: one submission, state resident, tensor hashes on the device, only the
/// digests and the loss read back), with the GPU-to-CPU transfers of each.
#[cfg(feature = "gpu")]
async fn gpu(
    job: &JobSpec,
    corpus: &Corpus,
    steps: u32,
    cpu: f64,
    mut report: Report,
) -> Result<Report> {
    use lupus_worker::gpu::{GpuDevice, WholeStep, record_whole_step, train_step_gpu};
    let dev = GpuDevice::new().await?;
    let base = init_params(&job.model, [1; 32])?;

    // The two paths interleaved, step by step, so that a change in the machine's load
    // falls on both; they run the same kernels, so their losses must agree to the bit.
    let mut bw = TaskBuilder::new(job, corpus, &base, [2; 32])?;
    let mut whole = WholeStep::new(
        &dev,
        &job.model,
        &job.inner.adamw(),
        bw.state(),
        &bw.batch()?,
    )
    .await?;
    let mut bp = TaskBuilder::new(job, corpus, &base, [2; 32])?;
    let (mut whole_times, mut whole_moved) = (Vec::new(), Vec::new());
    let (mut op_times, mut op_moved) = (Vec::new(), Vec::new());
    let progress = bar(u64::from(steps) + 1, "WGSL steps");
    for i in 0..=steps {
        let before = dev.transfers();
        let t0 = Instant::now();
        let loss = record_whole_step(&dev, &mut whole, &mut bw).await?;
        let t1 = Instant::now();
        let mid = dev.transfers();
        let batch = bp.batch()?;
        let out = train_step_gpu(&dev, &job.model, &job.inner.adamw(), bp.state(), &batch).await?;
        ensure!(
            out.loss.to_bits() == loss.to_bits(),
            "step {i}: the whole step's loss {loss} is not the per-operator path's {}",
            out.loss
        );
        bp.record(&batch, out)?;
        let t2 = Instant::now();
        if i > 0 {
            whole_times.push(t1 - t0);
            whole_moved.push(mid.since(&before));
            op_times.push(t2 - t1);
            op_moved.push(dev.transfers().since(&mid));
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let whole_s = median(whole_times).as_secs_f64();
    let whole_t = per_step(&whole_moved);
    let per_op = median(op_times).as_secs_f64();
    let per_op_t = per_step(&op_moved);
    // Where a whole step's time goes: one more step with a wait after every dispatch.
    let (_, mut profile) = whole.step_profiled(&dev, &bw.batch()?).await?;
    profile.sort_by(|a, b| b.1.total_cmp(&a.1));

    let device = &dev.description;
    println!(
        "| whole step, WGSL ({} dispatches, 1 submit)   | {:>9.2} | {:>8.2}x CPU |",
        whole.dispatch_count(),
        whole_s * 1e3,
        whole_s / cpu
    );
    println!(
        "| per-operator WGSL                            | {:>9.2} | {:>8.2}x CPU |",
        per_op * 1e3,
        per_op / cpu
    );
    println!("\nWGSL device: {device}");
    println!("GPU-to-CPU transfers per step (mean over the measured steps):");
    for (name, t) in [("whole step", whole_t), ("per-operator", per_op_t)] {
        println!(
            "  {name:<13} {:>7.1} read-backs, {:>12.0} bytes; uploads {:>7.1}, {:>12.0} bytes",
            t.0, t.1, t.2, t.3
        );
    }
    let total: f64 = profile.iter().map(|(_, s)| s).sum();
    println!(
        "Whole step, time by kernel (each dispatch waited for, {:.2} ms in all):",
        total * 1e3
    );
    for (kernel, s) in &profile {
        println!(
            "  {kernel:<20} {:>8.2} ms {:>5.1}%",
            s * 1e3,
            100.0 * s / total
        );
    }
    let (arena, resident_state) = whole.resident_bytes();
    println!(
        "Whole step resident on the device: arena {arena} bytes (every op output, the batch), state {resident_state} bytes"
    );
    let state_bytes: usize = bp.state().tensors().map(|t| 4 * t.len()).sum();
    println!(
        "  (the whole step also reads the state back, {state_bytes} bytes, at each checkpoint: every {} steps, and after the last)",
        job.inner.checkpoint_interval
    );
    report.against(
        format!("{} committed whole step, WGSL on {device}", job.job.name),
        whole_s * 1e3,
        "ms",
        "native CPU reference",
        cpu * 1e3,
    );
    report.against(
        format!(
            "{} committed per-operator step, WGSL on {device}",
            job.job.name
        ),
        per_op * 1e3,
        "ms",
        "native CPU reference",
        cpu * 1e3,
    );
    report.against(
        format!("{} GPU-to-CPU read-backs per whole step", job.job.name),
        whole_t.0,
        "transfers",
        "per-operator path",
        per_op_t.0,
    );
    report.against(
        format!("{} bytes read back per whole step", job.job.name),
        whole_t.1,
        "bytes",
        "per-operator path",
        per_op_t.1,
    );
    Ok(report)
}

#[cfg(feature = "gpu")]
/// Mean (read-backs, bytes read, uploads, bytes uploaded) per step.
fn per_step(moved: &[lupus_worker::gpu::Transfers]) -> (f64, f64, f64, f64) {
    let n = moved.len().max(1) as f64;
    let sum =
        |f: fn(&lupus_worker::gpu::Transfers) -> u64| moved.iter().map(f).sum::<u64>() as f64 / n;
    (
        sum(|t| t.reads),
        sum(|t| t.read_bytes),
        sum(|t| t.writes),
        sum(|t| t.write_bytes),
    )
}
