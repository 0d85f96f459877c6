//! Protocol costs at the shipped job's sizes (`jobs/shakespeare-mlp.toml`), as a table.
//!
//! 1. Commitment overhead: the worker's committed step (`TaskBuilder::run_step`: a hash
//!    of every op output as it is computed, the op root, `H(S_{t+1})`, the leaf) against
//!    the same step untraced (`train_step_untraced`), the baseline measured in the same
//!    run, interleaved.
//! 2. Verifier cost against worker cost for one task at the job's `H` and `m`, and a lazy
//!    worker (who fakes every step) caught by every one of several challenges.
//!
//! Run: `cargo bench -p lupus-prover --bench protocol` (the generated corpus stands in for
//! Shakespeare: the cost does not depend on the text). `LUPUS_BENCH_BATCH=n` overrides
//! the batch size.

use std::time::{Duration, Instant};

use lupus_prover::challenge::challenge_steps;
use lupus_prover::data::Corpus;
use lupus_prover::graph::{train_step, train_step_untraced};
use lupus_prover::model::init_params;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{TaskBuilder, job_sampler, run_task, task_batch};
use lupus_prover::tensor::Tensor;
use lupus_prover::trace::state_hash;
use lupus_prover::verify::{DeviceClass, verify_opening};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Number of floats in one step's op outputs.
fn out_floats(job: &JobSpec, base: &[Tensor]) -> usize {
    let corpus = Corpus::generated(2, 100_000);
    let sampler = job_sampler(job, &corpus).expect("sampler");
    let batch = task_batch(job, &sampler, &[0; 32], 0).expect("batch");
    let state = lupus_prover::optim::TrainState::fresh(base.to_vec());
    let out = train_step(&job.model, &job.inner.adamw(), &state, &batch).expect("step");
    out.ops
        .iter()
        .flat_map(|r| r.outputs.iter())
        .map(|t| t.len())
        .sum()
}

fn main() {
    let mut job = JobSpec::parse(include_str!("../../jobs/shakespeare-mlp.toml")).expect("job");
    // `LUPUS_BENCH_BATCH=512` measures another batch size (the overhead falls as it grows).
    if let Some(b) = std::env::var("LUPUS_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        job.inner.batch_size = b;
    }
    let corpus = Corpus::generated(1, 400_000);
    let base = init_params(&job.model, [1; 32]).expect("init");
    let params: usize = base.iter().map(|t| t.len()).sum();
    let seed = [5u8; 32];
    let opt = job.inner.adamw();
    println!(
        "job {}: {} parameters, batch {}, H = {}, m = {}, {:.1} MFLOP/step",
        job.job.name,
        params,
        job.inner.batch_size,
        job.inner.steps,
        job.verify.challenges,
        (job.model.flops_per_sample() * u64::from(job.inner.batch_size)) as f64 / 1e6
    );

    // 1. Commitment overhead, interleaved so drift hits both sides equally: the worker's
    //    committed step (`TaskBuilder::run_step`: op outputs hashed as they are computed,
    //    op root, H(S_t+1) from the AdamW outputs, the leaf) against the same step
    //    untraced, the baseline.
    let sampler = job_sampler(&job, &corpus).expect("sampler");
    let mut state = lupus_prover::optim::TrainState::fresh(base.clone());
    let mut builder = TaskBuilder::new(&job, &corpus, &base, seed).expect("builder");
    let (mut plain, mut committed, mut state_hashing) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = 4u32;
    let measured = (job.inner.steps - warmup).min(20);
    for step in 0..warmup + measured {
        let batch = task_batch(&job, &sampler, &seed, step).expect("batch");
        let t0 = Instant::now();
        let (next, _) = train_step_untraced(&job.model, &opt, &state, &batch).expect("step");
        let t1 = Instant::now();
        builder.run_step().expect("committed step");
        let t2 = Instant::now();
        std::hint::black_box(state_hash(&next));
        let t3 = Instant::now();
        assert_eq!(
            builder.state(),
            &next,
            "committed and untraced steps must agree bit for bit"
        );
        if step >= warmup {
            plain.push(t1 - t0);
            committed.push(t2 - t1);
            state_hashing.push(t3 - t2);
        }
        state = next;
    }
    let (p, c) = (median(plain), median(committed));
    let ratio = |x: Duration| (x.as_secs_f64() - p.as_secs_f64()) / p.as_secs_f64() * 100.0;
    let share = |x: Duration| x.as_secs_f64() / p.as_secs_f64() * 100.0;
    println!(
        "\n| step (median of {measured})                         | time       | vs untraced |"
    );
    println!("|---------------------------------------------|------------|-------------|");
    println!(
        "| untraced (baseline)                         | {:>7.2} ms |           - |",
        p.as_secs_f64() * 1e3
    );
    println!(
        "| committed (hashes, op root, H(S_t+1), leaf) | {:>7.2} ms | {:>+9.2}% |",
        c.as_secs_f64() * 1e3,
        ratio(c)
    );
    let sh = median(state_hashing);
    println!(
        "| (for scale: hashing the whole state again)  | {:>7.2} ms | {:>+9.2}% |",
        sh.as_secs_f64() * 1e3,
        share(sh)
    );
    let floats: usize = out_floats(&job, &base);
    let bytes = vec![7u8; floats * 4];
    let t = Instant::now();
    std::hint::black_box(blake3::hash(&bytes));
    let raw = t.elapsed();
    println!(
        "| (raw blake3 over all op outputs, {:>4.1} MB)   | {:>7.2} ms | {:>+9.2}% |",
        bytes.len() as f64 / 1e6,
        raw.as_secs_f64() * 1e3,
        share(raw)
    );

    // 2. Worker and verifier per task.
    let t0 = Instant::now();
    let run = run_task(&job, &corpus, &base, seed, &mut |_, _| {}).expect("task");
    let worker = t0.elapsed();
    let steps = challenge_steps(
        &[3; 32],
        &run.commitment.trace_root,
        job.inner.steps,
        job.verify.challenges,
    )
    .expect("challenge");
    let t1 = Instant::now();
    let opening = run.open(&job, &corpus, &steps, false).expect("open");
    let open = t1.elapsed();
    let t2 = Instant::now();
    let verdict = verify_opening(
        &job,
        &corpus,
        &base,
        &seed,
        &run.commitment,
        &steps,
        &opening,
        DeviceClass::Exact,
    )
    .expect("verify");
    let verifier = t2.elapsed();
    assert!(verdict.is_accept(), "{verdict:?}");
    let opening_bytes = serde_json::to_vec(&opening).map(|v| v.len()).unwrap_or(0);

    // A lazy worker: computes step 0 only and commits its result as every later step's.
    let lazy_tasks = 5;
    let mut caught = 0;
    let mut lazy_verify = Duration::ZERO;
    for k in 0..lazy_tasks {
        let mut b = TaskBuilder::new(&job, &corpus, &base, seed)
            .expect("builder")
            .with_checkpoint_interval(1);
        let batch0 = b.batch().expect("batch");
        let first = train_step(&job.model, &opt, b.state(), &batch0).expect("step");
        for t in 0..job.inner.steps {
            let batch = b.batch().expect("batch");
            let mut fake = first.clone();
            fake.state.step = u64::from(t) + 1;
            b.record(&batch, fake).expect("record");
        }
        let lazy = b.finish().expect("finish");
        let steps = challenge_steps(
            &[k; 32],
            &lazy.commitment.trace_root,
            job.inner.steps,
            job.verify.challenges,
        )
        .expect("challenge");
        let opening = lazy.open(&job, &corpus, &steps, false).expect("open");
        let t = Instant::now();
        let v = verify_opening(
            &job,
            &corpus,
            &base,
            &seed,
            &lazy.commitment,
            &steps,
            &opening,
            DeviceClass::Exact,
        )
        .expect("verify");
        lazy_verify += t.elapsed();
        caught += u32::from(!v.is_accept());
    }

    println!(
        "\n| per task (H = {}, m = {})                    | time      | / worker |",
        job.inner.steps, job.verify.challenges
    );
    println!("|---------------------------------------------|-----------|----------|");
    println!(
        "| worker: train and commit                    | {:>7.0} ms |        - |",
        worker.as_secs_f64() * 1e3
    );
    println!(
        "| worker: open the challenged steps           | {:>7.0} ms | {:>7.2}% |",
        open.as_secs_f64() * 1e3,
        open.as_secs_f64() / worker.as_secs_f64() * 100.0
    );
    println!(
        "| verifier: check the opening, replay m steps | {:>7.0} ms | {:>7.2}% |",
        verifier.as_secs_f64() * 1e3,
        verifier.as_secs_f64() / worker.as_secs_f64() * 100.0
    );
    println!(
        "| opening size (JSON)                         | {:>6.1} MB |        - |",
        opening_bytes as f64 / 1e6
    );
    println!(
        "\nlazy worker (fakes every step): caught {caught} of {lazy_tasks} tasks, {:.0} ms per verdict",
        lazy_verify.as_secs_f64() * 1e3 / f64::from(lazy_tasks)
    );
    assert_eq!(caught, u32::from(lazy_tasks));
}
