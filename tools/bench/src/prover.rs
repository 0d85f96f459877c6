//! `lupus-bench prover`: the deterministic runtime's speed and the protocol's costs,
//! each against a baseline measured in the same run. The timing lives here, not in
//! `lupus-prover`, which does no I/O and builds for wasm32 (where `Instant` panics).
//!
//! - matmul: GFLOP/s of `kernels::matmul` (fixed per-element order, no FMA) against
//!   `matrixmultiply::sgemm` (free order, FMA where the CPU has it), one core.
//! - Training throughput of an MLP and a GPT with `train_step_untraced` (the baseline),
//!   and what keeping the tape costs: `train_step` (whole tape kept) and
//!   `train_step_observed` (each op output visited as it appears, then dropped).
//! - The worker's committed step (`TaskBuilder::run_step`: every op output outside the
//!   backward pass hashed, the op root, `H(S_{t+1})`, the leaf) against the same step
//!   untraced, interleaved; the raw blake3 floor over all op outputs and over the
//!   committed ones, for scale.
//! - Verifier cost against worker cost for one task at the job's `H` and `m`, and lazy
//!   workers (who fake every step) caught by every one of their challenges.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lupus_prover::challenge::challenge_steps;
use lupus_prover::data::Corpus;
use lupus_prover::graph::{train_step, train_step_observed, train_step_untraced};
use lupus_prover::kernels::{MatMulDims, matmul};
use lupus_prover::model::{Batch, ModelSpec, init_params, make_batch};
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{TaskBuilder, job_sampler, run_task, task_batch};
use lupus_prover::trace::state_hash;
use lupus_prover::verify::{DeviceClass, ReplayDigest, verify_opening, verify_opening_digests};

use super::report::{Report, bar, median, spinner, time_per_call};
use crate::job_text;

/// Measures the prover's kernels, training steps and protocol costs.
///
/// matmul: GFLOP/s of the deterministic kernel against matrixmultiply::sgemm (free
/// order, FMA), one core. Training: chars/s of an MLP and a GPT untraced (baseline),
/// and the cost of keeping the tape (train_step, train_step_observed). Protocol, at
/// the job's sizes: the worker's committed step against the same step untraced
/// (interleaved), the raw blake3 floor over all and over the committed op outputs,
/// verifier against worker time per task, and lazy workers caught. Times are CPU time of the measuring thread
/// where Linux reports it.
#[derive(clap::Args, Clone, Debug)]
pub struct ProverArgs {
    /// Square matrix sizes for matmul.
    #[arg(long, value_delimiter = ',', default_value = "64,256,512")]
    pub sizes: Vec<usize>,
    /// Milliseconds of CPU time each kernel or training step is timed for.
    #[arg(long, default_value_t = 600)]
    pub budget_ms: u64,
    /// The job of the protocol part (default: the embedded jobs/shakespeare-gpt.toml;
    /// a generated corpus stands in for its text: the cost does not depend on it).
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Batch size of the protocol part (default: the job's).
    #[arg(long)]
    pub batch: Option<u32>,
    /// Steps of the committed-against-untraced comparison (after 4 warm-up steps). The
    /// difference is a few percent of a step: at 20 steps a busy host moved it by a
    /// point and more, at 100 by about half a point.
    #[arg(long, default_value_t = 100)]
    pub steps: u32,
    /// Lazy-worker tasks to catch.
    #[arg(long, default_value_t = 3)]
    pub lazy_tasks: u8,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Verifications of the one task whose median is the verifier's figure.
const VERIFICATIONS: usize = 5;

pub fn run(args: &ProverArgs) -> Result<Report> {
    ensure!(
        !args.sizes.is_empty() && args.steps > 0 && args.lazy_tasks > 0,
        "--sizes, --steps and --lazy-tasks must not be empty or 0"
    );
    let mut report = Report::new("prover");
    let budget = Duration::from_millis(args.budget_ms);
    matmuls(&args.sizes, budget, &mut report)?;
    println!("\ntraining, one core");
    let mlp = ModelSpec::Mlp {
        vocab: 65,
        context: 16,
        embed: 16,
        hidden: vec![256, 256],
    };
    training("mlp", &mlp, 64, budget, &mut report)?;
    let gpt = ModelSpec::Gpt {
        vocab: 65,
        context: 64,
        d_model: 64,
        heads: 4,
        layers: 2,
        d_ff: 256,
    };
    training("gpt", &gpt, 16, budget, &mut report)?;
    protocol(args, &mut report)?;
    report.write_json(args.json.as_deref())?;
    Ok(report)
}

fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / 16_777_216.0 - 0.5
        })
        .collect()
}

/// The baseline: row-major `c = a b` by `matrixmultiply`.
fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    // SAFETY: the assert above gives the slice lengths that the row-major strides
    // (k, 1), (n, 1), (n, 1) address; the pointers come from live slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn matmuls(sizes: &[usize], budget: Duration, report: &mut Report) -> Result<()> {
    let progress = bar(sizes.len() as u64, "matmul");
    let mut rows = Vec::new();
    for &size in sizes {
        let (m, k, n) = (size, size, size);
        let a = pseudo(m * k, 1);
        let b = pseudo(k * n, 2);
        let d = MatMulDims {
            m,
            k,
            n,
            transpose_a: false,
            transpose_b: false,
        };
        let flops = 2.0 * (m * k * n) as f64;
        let ours = time_per_call(budget, || {
            black_box(matmul(black_box(&a), black_box(&b), d));
        });
        let mut c = vec![0.0f32; m * n];
        let base = time_per_call(budget, || {
            sgemm(black_box(&a), black_box(&b), &mut c, m, k, n);
            black_box(&c);
        });
        rows.push((size, flops / ours / 1e9, flops / base / 1e9));
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!("matmul, one core (GFLOP/s)");
    println!(
        "{:>6} {:>10} {:>16} {:>8}",
        "size", "ours", "matrixmultiply", "ratio"
    );
    for (size, ours, base) in rows {
        println!("{size:>6} {ours:>10.2} {base:>16.2} {:>8.2}", ours / base);
        report.against(
            format!("matmul {size}x{size}x{size}, one core"),
            ours,
            "GFLOP/s",
            "matrixmultiply",
            base,
        );
    }
    Ok(())
}

fn batch(spec: &ModelSpec, size: usize) -> Result<Batch> {
    let windows: Vec<Vec<u32>> = (0..size)
        .map(|b| {
            (0..spec.window_len())
                .map(|j| ((b * 31 + j * 7) % spec.vocab()) as u32)
                .collect()
        })
        .collect();
    Ok(make_batch(spec, &windows)?)
}

fn training(
    name: &str,
    spec: &ModelSpec,
    batch_size: usize,
    budget: Duration,
    report: &mut Report,
) -> Result<()> {
    let opt = AdamW::default();
    let state = TrainState::fresh(init_params(spec, [1; 32])?);
    let b = batch(spec, batch_size)?;
    // Each closure checks the step once before timing it, so a failing step is an
    // error here, not a silent figure.
    train_step_untraced(spec, &opt, &state, &b)?;
    let s = spinner(&format!("training {name}"));
    let untraced = time_per_call(budget, || {
        black_box(train_step_untraced(spec, &opt, &state, &b).ok());
    });
    let traced = time_per_call(budget, || {
        black_box(train_step(spec, &opt, &state, &b).ok());
    });
    // What a worker that hashes outputs as they appear pays: visiting every output
    // (summing one element per tensor stands in for the hasher, which the protocol
    // part measures).
    let observed = time_per_call(budget, || {
        let mut sink = 0.0f32;
        let out = train_step_observed(spec, &opt, &state, &b, &mut |_, _, outs| {
            for t in outs.iter() {
                sink += t.data().first().copied().unwrap_or(0.0);
            }
        });
        black_box((out.ok(), sink));
    });
    s.finish_and_clear();
    let chars = (batch_size * spec.context()) as f64;
    let gflops = spec.flops_per_sample() as f64 * batch_size as f64 / untraced / 1e9;
    println!(
        "{name:<5} batch {batch_size:>3}: {:>9.0} chars/s, {gflops:>6.2} GFLOP/s (model FLOPs)",
        chars / untraced
    );
    println!(
        "      step: {:>8.2} ms untraced, {:>8.2} ms traced (tape kept, {:>+6.1}%), {:>8.2} ms observed ({:>+6.1}%)",
        untraced * 1e3,
        traced * 1e3,
        (traced / untraced - 1.0) * 100.0,
        observed * 1e3,
        (observed / untraced - 1.0) * 100.0
    );
    report.add(
        format!("{name} training, batch {batch_size}, untraced"),
        chars / untraced,
        "chars/s",
    );
    report.against(
        format!("{name} step with the tape kept"),
        traced * 1e3,
        "ms",
        "untraced",
        untraced * 1e3,
    );
    report.against(
        format!("{name} step observed"),
        observed * 1e3,
        "ms",
        "untraced",
        untraced * 1e3,
    );
    Ok(())
}

fn protocol(args: &ProverArgs, report: &mut Report) -> Result<()> {
    let mut job = JobSpec::parse(&job_text(&args.job)?).context("the job spec is invalid")?;
    if let Some(b) = args.batch {
        job.inner.batch_size = b;
    }
    let corpus = Corpus::generated(1, 400_000);
    let base = init_params(&job.model, [1; 32])?;
    let params: usize = base.iter().map(|t| t.len()).sum();
    let seed = [5u8; 32];
    let opt = job.inner.adamw();
    println!(
        "\nprotocol: job {}, {} parameters, batch {}, H = {}, m = {}, {:.1} MFLOP/step",
        job.job.name,
        params,
        job.inner.batch_size,
        job.inner.steps,
        job.verify.challenges,
        (job.model.flops_per_sample() * u64::from(job.inner.batch_size)) as f64 / 1e6
    );

    // 1. Commitment overhead, interleaved so drift hits both sides equally.
    let sampler = job_sampler(&job, &corpus)?;
    let mut state = TrainState::fresh(base.clone());
    let mut builder = TaskBuilder::new(&job, &corpus, &base, seed)?;
    let (mut plain, mut committed, mut state_hashing) = (Vec::new(), Vec::new(), Vec::new());
    // CPU time of the whole process (every thread: the worker hashes on a second one)
    // beside the wall time.
    let (mut plain_cpu, mut committed_cpu) = (Vec::new(), Vec::new());
    let warmup = 4u32;
    let measured = args.steps.min(job.inner.steps.saturating_sub(warmup));
    ensure!(measured > 0, "the job has too few inner steps to measure");
    let progress = bar(u64::from(warmup + measured), "committed steps");
    let mut floats = 0usize;
    // Of which the worker commits while training (the block boundaries, the loss, the state).
    let mut committed_floats = 0usize;
    for step in 0..warmup + measured {
        let batch = task_batch(&job, &sampler, &seed, step)?;
        let (t0, c0) = (Instant::now(), process_cpu());
        let (next, _) = train_step_untraced(&job.model, &opt, &state, &batch)?;
        let (t1, c1) = (Instant::now(), process_cpu());
        builder.run_step()?;
        let (t2, c2) = (Instant::now(), process_cpu());
        black_box(state_hash(&next));
        let t3 = Instant::now();
        ensure!(
            builder.state() == &next,
            "committed and untraced steps disagree at step {step}: the runtime is not deterministic"
        );
        if step >= warmup {
            plain.push(t1 - t0);
            committed.push(t2 - t1);
            state_hashing.push(t3 - t2);
            plain_cpu.push(c1 - c0);
            committed_cpu.push(c2 - c1);
        }
        if step == 0 {
            let out = train_step(&job.model, &opt, &state, &batch)?;
            floats = out
                .ops
                .iter()
                .flat_map(|r| r.outputs.iter())
                .map(|t| t.len())
                .sum();
            committed_floats = out
                .ops
                .iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    let recompute = &out.recompute;
                    r.outputs
                        .iter()
                        .enumerate()
                        .filter(move |(o, _)| !recompute.contains(i as u32, *o as u32))
                })
                .map(|(_, t)| t.len())
                .sum();
        }
        state = next;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let (p, c, sh) = (median(plain), median(committed), median(state_hashing));
    let (pc, cc) = (median(plain_cpu), median(committed_cpu));
    let bytes = vec![7u8; floats * 4];
    let t = Instant::now();
    black_box(blake3::hash(&bytes));
    let raw = t.elapsed();
    let t = Instant::now();
    black_box(blake3::hash(&bytes[..committed_floats * 4]));
    let raw_committed = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let over = |x: Duration| (x.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0;
    let share = |x: Duration| x.as_secs_f64() / p.as_secs_f64() * 100.0;
    println!(
        "\n| step (median of {measured:>3})                        | time       | vs untraced |"
    );
    println!("|---------------------------------------------|------------|-------------|");
    println!(
        "| untraced (baseline)                         | {:>7.2} ms |           - |",
        ms(p)
    );
    println!(
        "| committed (hashes, op root, H(S_t+1), leaf) | {:>7.2} ms | {:>+10.2}% |",
        ms(c),
        over(c)
    );
    let over_cpu = (cc.as_secs_f64() / pc.as_secs_f64() - 1.0) * 100.0;
    println!(
        "| CPU time, all threads: untraced / committed | {:>4.1}/{:>4.1} | {:>+10.2}% |",
        ms(pc),
        ms(cc),
        over_cpu
    );
    println!(
        "| (for scale: hashing the whole state again)  | {:>7.2} ms | {:>10.2}% |",
        ms(sh),
        share(sh)
    );
    println!(
        "| (raw blake3 over all op outputs, {:>4.1} MB)   | {:>7.2} ms | {:>10.2}% |",
        bytes.len() as f64 / 1e6,
        ms(raw),
        share(raw)
    );
    println!(
        "| (raw blake3 over the committed, {:>4.1} MB)    | {:>7.2} ms | {:>10.2}% |",
        committed_floats as f64 * 4.0 / 1e6,
        ms(raw_committed),
        share(raw_committed)
    );
    report.against(
        format!("{} committed step", job.job.name),
        ms(c),
        "ms",
        "untraced",
        ms(p),
    );
    report.against(
        format!("{} committed step, CPU time of all threads", job.job.name),
        ms(cc),
        "ms",
        "untraced",
        ms(pc),
    );
    report.against(
        "blake3 over one step's op outputs",
        ms(raw),
        "ms",
        "untraced step",
        ms(p),
    );

    // 2. Worker and verifier per task.
    let s = spinner("one task: train, commit, open, verify");
    let (t0, c0) = (Instant::now(), process_cpu());
    let run = run_task(&job, &corpus, &base, seed, &mut |_, _| {})?;
    let (worker, worker_cpu) = (t0.elapsed(), process_cpu() - c0);
    let steps = challenge_steps(
        &[3; 32],
        &run.commitment.trace_root,
        job.inner.steps,
        job.verify.challenges,
    )?;
    // The worker's key: it signs the backward pass it recomputes for the opening.
    let worker_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let t1 = Instant::now();
    let opening = run.open(&job, &corpus, &steps, false, &worker_key)?;
    let open = t1.elapsed();
    // As a verifier does: with the job's proof of replay on, it also digests its
    // replay for its verdict (`ReplayDigest`). A verification is a quarter of a second
    // against a task of seconds, so one is at the mercy of a busy host: the figure is
    // the median of `VERIFICATIONS`, wall and CPU time each.
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..VERIFICATIONS {
        let mut digests: Vec<ReplayDigest> = (job.verify.replay_checks > 0.0)
            .then(|| ReplayDigest::new(&[7; 32], 1))
            .into_iter()
            .collect();
        let (t2, c2) = (Instant::now(), process_cpu());
        let verdict = verify_opening_digests(
            &job,
            &corpus,
            &base,
            &seed,
            &run.commitment,
            &worker_key.verifying_key().to_bytes(),
            &steps,
            &opening,
            DeviceClass::Exact,
            &mut digests,
        )?;
        walls.push(t2.elapsed());
        cpus.push(process_cpu() - c2);
        ensure!(
            verdict.is_accept(),
            "an honest task was rejected: {verdict:?}"
        );
    }
    s.finish_and_clear();
    walls.sort();
    cpus.sort();
    let (verifier, verifier_cpu) = (walls[walls.len() / 2], cpus[cpus.len() / 2]);
    // The opening as it travels: its binary encoding now, against the JSON it was
    // sent as before (parsed in the same run, so both are timed on this machine).
    let json = serde_json::to_vec(&opening)?;
    let t = Instant::now();
    let _: lupus_prover::task::Opening = serde_json::from_slice(&json)?;
    let json_parse = t.elapsed();
    let binary = opening.to_bytes();
    let t = Instant::now();
    let decoded = lupus_prover::task::Opening::from_bytes(&binary)?;
    let binary_parse = t.elapsed();
    ensure!(decoded == opening, "the binary opening does not round-trip");

    // A lazy worker: computes step 0 only and commits its result as every later step's.
    let progress = bar(u64::from(args.lazy_tasks), "lazy workers");
    let mut caught = 0u8;
    let mut lazy_verify = Duration::ZERO;
    for k in 0..args.lazy_tasks {
        let mut b = TaskBuilder::new(&job, &corpus, &base, seed)?.with_checkpoint_interval(1);
        let batch0 = b.batch()?;
        let first = train_step(&job.model, &opt, b.state(), &batch0)?;
        for t in 0..job.inner.steps {
            let batch = b.batch()?;
            let mut fake = first.clone();
            fake.state.step = u64::from(t) + 1;
            b.record(&batch, fake)?;
        }
        let lazy = b.finish()?;
        let steps = challenge_steps(
            &[k; 32],
            &lazy.commitment.trace_root,
            job.inner.steps,
            job.verify.challenges,
        )?;
        let opening = lazy.open(&job, &corpus, &steps, false, &worker_key)?;
        let t = Instant::now();
        let v = verify_opening(
            &job,
            &corpus,
            &base,
            &seed,
            &lazy.commitment,
            &worker_key.verifying_key().to_bytes(),
            &steps,
            &opening,
            DeviceClass::Exact,
        )?;
        lazy_verify += t.elapsed();
        caught += u8::from(!v.is_accept());
        progress.inc(1);
    }
    progress.finish_and_clear();
    let pct = |d: Duration| d.as_secs_f64() / worker.as_secs_f64() * 100.0;
    println!(
        "\n| per task (H = {:>3}, m = {:>2})                  | time       | / worker |",
        job.inner.steps, job.verify.challenges
    );
    println!("|---------------------------------------------|------------|----------|");
    println!(
        "| worker: train and commit                    | {:>7.0} ms |        - |",
        ms(worker)
    );
    println!(
        "| worker: open the challenged steps           | {:>7.0} ms | {:>7.2}% |",
        ms(open),
        pct(open)
    );
    println!(
        "| verifier: check the opening, replay m steps | {:>7.0} ms | {:>7.2}% |",
        ms(verifier),
        pct(verifier)
    );
    println!(
        "| verifier / worker in CPU time, all threads  | {:>7.0} ms | {:>7.2}% |",
        ms(verifier_cpu),
        verifier_cpu.as_secs_f64() / worker_cpu.as_secs_f64() * 100.0
    );
    println!(
        "| opening size, binary (was JSON)             | {:>7.1} MB | {:>5.1} MB |",
        binary.len() as f64 / 1e6,
        json.len() as f64 / 1e6
    );
    println!(
        "| opening decode, binary (was JSON)           | {:>7.0} ms | {:>5.0} ms |",
        ms(binary_parse),
        ms(json_parse)
    );
    println!(
        "\nverifier: the median of {VERIFICATIONS} verifications of the task (wall {:.0}..{:.0} ms, CPU {:.0}..{:.0} ms)",
        ms(walls[0]),
        ms(walls[walls.len() - 1]),
        ms(cpus[0]),
        ms(cpus[cpus.len() - 1])
    );
    println!(
        "opening: binary {} bytes, JSON {} bytes: {:.2}x smaller; decodes {:.1}x faster",
        binary.len(),
        json.len(),
        json.len() as f64 / binary.len() as f64,
        json_parse.as_secs_f64() / binary_parse.as_secs_f64().max(1e-9)
    );
    println!(
        "\nlazy worker (fakes every step): caught {caught} of {} tasks, {:.0} ms per verdict",
        args.lazy_tasks,
        ms(lazy_verify) / f64::from(args.lazy_tasks)
    );
    report.against(
        "verifier per task (check the opening, replay m steps)",
        ms(verifier),
        "ms",
        "worker: train and commit",
        ms(worker),
    );
    report.against(
        "verifier per task, CPU time of all threads",
        ms(verifier_cpu),
        "ms",
        "worker: train and commit, CPU time",
        ms(worker_cpu),
    );
    report.against(
        "bytes per opening (binary encoding)",
        binary.len() as f64,
        "bytes",
        "the same opening as JSON",
        json.len() as f64,
    );
    report.against(
        "opening decode (binary encoding)",
        ms(binary_parse),
        "ms",
        "the same opening from JSON",
        ms(json_parse),
    );
    report.add("lazy workers caught", f64::from(caught), "tasks");
    ensure!(
        caught == args.lazy_tasks,
        "only {caught} of {} lazy workers were caught",
        args.lazy_tasks
    );
    Ok(())
}

/// CPU time of this process so far, every thread included.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_and_our_matmul_agree() {
        let (m, k, n) = (5, 7, 3);
        let a = pseudo(m * k, 1);
        let b = pseudo(k * n, 2);
        let ours = matmul(
            &a,
            &b,
            MatMulDims {
                m,
                k,
                n,
                transpose_a: false,
                transpose_b: false,
            },
        );
        let mut c = vec![0.0f32; m * n];
        sgemm(&a, &b, &mut c, m, k, n);
        for (x, y) in ours.iter().zip(&c) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}
