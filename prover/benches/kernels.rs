//! Speed of the deterministic runtime on one core, against a named baseline.
//!
//! - matmul: GFLOP/s of `kernels::matmul` (fixed per-element order, no FMA) against
//!   `matrixmultiply::sgemm` (free order, FMA where the CPU has it), single-threaded,
//!   and the ratio ours/baseline.
//! - training throughput of an MLP and a GPT: characters per second (batch x context
//!   per step time) with `train_step_untraced`.
//! - commitment overhead of keeping the tape: `train_step` (whole tape kept) and
//!   `train_step_observed` (each op output visited as it appears, then dropped)
//!   against `train_step_untraced` (hashing, added by the protocol side, is not
//!   included).
//!
//! Times are CPU time of the benchmark thread where Linux reports it.
//!
//! Run: `cargo bench -p lupus-prover --bench kernels` (add `-- quick` for shorter runs,
//! `-- matmul-only` to skip training).

use std::hint::black_box;
use std::time::{Duration, Instant};

use lupus_prover::graph::{train_step, train_step_observed, train_step_untraced};
use lupus_prover::kernels::{MatMulDims, matmul};
use lupus_prover::model::{Batch, ModelSpec, init_params, make_batch};
use lupus_prover::optim::{AdamW, TrainState};

/// Seconds this thread has run on a CPU (Linux `schedstat`), so that a busy shared
/// machine does not count other processes' time; elsewhere, wall-clock time.
fn thread_seconds(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns * 1e-9)
        .unwrap_or_else(|| start.elapsed().as_secs_f64())
}

/// Runs `f` repeatedly for at least `budget` of thread time and returns seconds per
/// call (best of three rounds, to damp noise).
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let origin = Instant::now();
    let mut best = f64::INFINITY;
    let round = budget.as_secs_f64() / 3.0;
    for _ in 0..3 {
        let start = thread_seconds(origin);
        let mut n = 0u32;
        while thread_seconds(origin) - start < round || n == 0 {
            f();
            n += 1;
        }
        best = best.min((thread_seconds(origin) - start) / n as f64);
    }
    best
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

fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    // SAFETY: the asserts above give the slice lengths that the row-major strides
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

fn bench_matmul(budget: Duration) {
    println!("matmul, one core (GFLOP/s)");
    println!(
        "{:>6} {:>10} {:>16} {:>8}",
        "size", "ours", "matrixmultiply", "ratio"
    );
    for size in [64usize, 256, 512] {
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
        let (g_ours, g_base) = (flops / ours / 1e9, flops / base / 1e9);
        println!(
            "{size:>6} {g_ours:>10.2} {g_base:>16.2} {:>8.2}",
            g_ours / g_base
        );
    }
}

fn batch(spec: &ModelSpec, size: usize) -> Batch {
    let windows: Vec<Vec<u32>> = (0..size)
        .map(|b| {
            (0..spec.window_len())
                .map(|j| ((b * 31 + j * 7) % spec.vocab()) as u32)
                .collect()
        })
        .collect();
    make_batch(spec, &windows).expect("valid batch")
}

fn bench_training(name: &str, spec: &ModelSpec, batch_size: usize, budget: Duration) {
    let opt = AdamW::default();
    let state = TrainState::fresh(init_params(spec, [1; 32]).expect("valid spec"));
    let b = batch(spec, batch_size);
    let untraced = time_per_call(budget, || {
        black_box(train_step_untraced(spec, &opt, &state, &b).expect("step"));
    });
    let traced = time_per_call(budget, || {
        black_box(train_step(spec, &opt, &state, &b).expect("step"));
    });
    // What a worker that hashes outputs as they appear pays: visiting every output
    // (summing one element per tensor stands in for the hasher, which the protocol's
    // own bench measures).
    let observed = time_per_call(budget, || {
        let mut sink = 0.0f32;
        let out = train_step_observed(spec, &opt, &state, &b, &mut |_, _, outs| {
            for t in outs {
                sink += t.data().first().copied().unwrap_or(0.0);
            }
        });
        black_box((out.expect("step"), sink));
    });
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
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let budget = Duration::from_millis(if quick { 300 } else { 1500 });
    bench_matmul(budget);
    if std::env::args().any(|a| a == "matmul-only") {
        return;
    }
    println!();
    println!("training, one core");
    let mlp = ModelSpec::Mlp {
        vocab: 65,
        context: 16,
        embed: 16,
        hidden: vec![256, 256],
    };
    bench_training("mlp", &mlp, 64, budget);
    let gpt = ModelSpec::Gpt {
        vocab: 65,
        context: 64,
        d_model: 64,
        heads: 4,
        layers: 2,
        d_ff: 256,
    };
    bench_training("gpt", &gpt, 16, budget);
}
