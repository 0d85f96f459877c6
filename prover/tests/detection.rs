//! Detection rate of sampled challenges, measured with the real verifier.
//!
//! DESIGN.md ("Trace and commitment", Detection): a worker who fakes each step
//! independently with probability `f` is caught by `m` distinct challenged steps with
//! probability `1 - (1-f)^m` (the challenged steps are independent of which steps were
//! faked because they come from `PRF(r, trace_root)` after the commitment). Here each case
//! runs at least 1,000 tasks of a tiny model (`H = 16`, `m = 4`): faked steps are real
//! state tampering re-committed consistently, challenges come from `challenge_steps`, and
//! `verify_opening` decides. The measured rate must lie in the 99% Wilson interval around
//! the prediction, with every caught task rejected at a faked step.

use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::data::Corpus;
use lupus_prover::graph::{ValueRef, train_step};
use lupus_prover::model::init_params;
use lupus_prover::ops::OpKind;
use lupus_prover::prf::{PrfStream, derive_task_seed};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::TaskBuilder;
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::{DeviceClass, Verdict, verify_opening};

const TASKS: u32 = 1000;

fn job() -> JobSpec {
    let text = include_str!("../../jobs/tiny-test.toml")
        .replace("context = 4", "context = 2")
        .replace("embed = 4", "embed = 2")
        .replace("hidden = [16]", "hidden = [4]")
        .replace("batch_size = 8", "batch_size = 2")
        .replace("steps = 8", "steps = 16");
    JobSpec::parse(&text).unwrap()
}

/// Runs task `id` as a worker who fakes each step with probability `f` (per mille), and
/// verifies it. Returns (faked any challenged step, rejected).
fn one_task(
    job: &JobSpec,
    corpus: &Corpus,
    base: &[Tensor],
    f_permille: u64,
    id: u32,
) -> (bool, bool) {
    let beacon = lupus_prover::prf::prf(&[7; 32], "detection beacon", &id.to_le_bytes());
    let seed = derive_task_seed(u64::from(id), &[3; 32], &beacon_commitment(&beacon));
    let mut coin = PrfStream::new(&seed, "detection coin", &[]);
    let mut b = TaskBuilder::new(job, corpus, base, seed)
        .unwrap()
        .with_checkpoint_interval(1);
    let mut faked = Vec::new();
    for t in 0..job.inner.steps {
        let batch = b.batch().unwrap();
        let mut out = train_step(&job.model, &job.inner.adamw(), b.state(), &batch).unwrap();
        if coin.below(std::num::NonZeroU64::new(1000).unwrap()) < f_permille {
            // Fake the step: a wrong parameter update, committed consistently.
            let i = out
                .ops
                .iter()
                .position(|r| {
                    matches!(r.kind, OpKind::AdamWUpdate { .. })
                        && r.inputs[0] == ValueRef::Param(0)
                })
                .unwrap();
            let p = &out.state.params[0];
            let mut d = p.data().to_vec();
            d[0] += 0.5;
            let fake = Tensor::new(p.shape().to_vec(), d).unwrap();
            out.ops[i].outputs[0] = fake.clone();
            out.state.params[0] = fake;
            faked.push(t);
        }
        b.record(&batch, out).unwrap();
    }
    let run = b.finish().unwrap();
    let steps = challenge_steps(
        &beacon,
        &run.commitment.trace_root,
        job.inner.steps,
        job.verify.challenges,
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let opening = run.open(job, corpus, &steps, false, &key).unwrap();
    let verdict = verify_opening(
        job,
        corpus,
        base,
        &seed,
        &run.commitment,
        &key.verifying_key().to_bytes(),
        &steps,
        &opening,
        DeviceClass::Exact,
    )
    .unwrap();
    let hit = steps.iter().any(|s| faked.contains(s));
    if let Verdict::Reject { step, .. } = &verdict {
        assert!(
            step.is_some_and(|s| faked.contains(&s)),
            "rejected at an honest step: {verdict:?}"
        );
    }
    (hit, !verdict.is_accept())
}

/// The 99% Wilson score interval for `k` successes in `n` trials.
fn wilson99(k: u32, n: u32) -> (f64, f64) {
    let z = 2.5758;
    let (k, n) = (f64::from(k), f64::from(n));
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    (centre - half, centre + half)
}

#[test]
fn detection_rate_matches_one_minus_one_minus_f_to_the_m() {
    let job = job();
    let corpus = Corpus::generated(11, 8_000);
    let base = init_params(&job.model, [2; 32]).unwrap();
    let m = job.verify.challenges as i32;
    let cases = [(1000u64, "1"), (250, "0.25"), (50, "0.05")];
    let started = std::time::Instant::now();
    let results: Vec<(u64, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(f, _)| {
                let (job, corpus, base) = (&job, &corpus, &base);
                s.spawn(move || {
                    let mut caught = 0;
                    for id in 0..TASKS {
                        let (hit, rejected) = one_task(job, corpus, base, f, id + f as u32 * TASKS);
                        assert_eq!(
                            hit, rejected,
                            "task {id}: a challenged faked step must be caught, and only then"
                        );
                        caught += u32::from(rejected);
                    }
                    (f, caught)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("\n  f      tasks  caught  measured  predicted  99% Wilson interval");
    for ((f, caught), (_, name)) in results.iter().zip(cases) {
        let predicted = 1.0 - (1.0 - *f as f64 / 1000.0).powi(m);
        let (lo, hi) = wilson99(*caught, TASKS);
        let measured = f64::from(*caught) / f64::from(TASKS);
        println!(
            "  {name:<6} {TASKS:>5}  {caught:>6}  {measured:>8.4}  {predicted:>9.4}  [{lo:.4}, {hi:.4}]"
        );
        assert!(
            (lo..=hi).contains(&predicted) || (*f == 1000 && *caught == TASKS),
            "f = {name}: measured {measured} but predicted {predicted} is outside [{lo}, {hi}]"
        );
    }
    println!(
        "  ({} tasks, H = {}, m = {m}, in {:.1?})",
        3 * TASKS,
        job.inner.steps,
        started.elapsed()
    );
}
