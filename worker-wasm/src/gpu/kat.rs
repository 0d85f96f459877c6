//! The prover's known-answer suite, run on the GPU (DESIGN.md, Determinism).
//!
//! `lupus_prover::kat::run_suite` computes every case with the CPU reference; this runs
//! the same cases, on the same inputs (the same blake3 XOF per case name, drawn in the
//! same order), through the WGSL kernels and the GPU training step, and hashes them the
//! same way, so [`lupus_prover::kat::check_device`] decides the device's class. The
//! three cases the worker never runs on the device (the int8 delta, the merge and the
//! outer step, all host code) are computed on the host as the reference does.

use lupus_prover::graph::OpRecord;
use lupus_prover::kat::{
    Gen, KatResult, MATMUL_CASES, hash_bits, hash_tensors, kat_gpt, kat_mlp, quant_and_outer_cases,
    scalar_inputs,
};
use lupus_prover::model::{ModelSpec, init_params, make_batch};
use lupus_prover::ops::OpKind;
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::tensor::Tensor;

use super::device::{GpuDevice, GpuError, Pass};
use super::ops::{SCALAR, eval_op_gpu, matmul_job};
use super::step::train_step_gpu;

/// A case that failed on the device: an answer that is never the reference one.
fn failed(name: &'static str, e: &GpuError) -> KatResult {
    KatResult {
        name,
        hash: hash_bits(&format!("{name} error {e}"), &[]),
    }
}

const SCALAR_CASES: [(&str, f32, f32, u32); 7] = [
    ("det.exp", -90.0, 90.0, 0),
    ("det.ln", 0.0, 100.0, 1),
    ("det.reciprocal", -10.0, 10.0, 2),
    ("det.rsqrt", 0.0, 100.0, 3),
    ("det.sqrt", 0.0, 100.0, 4),
    ("det.round_ne", -1000.0, 1000.0, 5),
    ("det.ftz", -1.0, 1.0, 6),
];

/// Whether the device keeps subnormal intermediates (gradual underflow) as the reference
/// does: four products of 4e-39 (each subnormal) sum to a normal 1.6e-38 only if they
/// were not flushed. A device that flushes them is in the tolerant class by design (the
/// suite's `matmul.subnormal` case differs there, DESIGN.md "Determinism").
pub async fn keeps_subnormals(dev: &GpuDevice) -> Result<bool, GpuError> {
    let a = [1e-20f32; 4];
    let b = [4e-19f32; 4];
    let got = matmul(dev, &a, &b, [1, 4, 1, 0, 0]).await?;
    let reference = lupus_prover::kernels::matmul(
        &a,
        &b,
        lupus_prover::kernels::MatMulDims {
            m: 1,
            k: 4,
            n: 1,
            transpose_a: false,
            transpose_b: false,
        },
    );
    Ok(got.first().map(|x| x.to_bits()) == reference.first().map(|x| x.to_bits()))
}

/// The scalar functions of `det.rs` the suite sweeps, in the kernel's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetFn {
    Exp = 0,
    Ln = 1,
    Reciprocal = 2,
    Rsqrt = 3,
    Sqrt = 4,
    RoundNe = 5,
    Ftz = 6,
}

/// Applies one `det` function to every element of `xs` on the device.
pub async fn det_on_device(dev: &GpuDevice, f: DetFn, xs: &[f32]) -> Result<Vec<f32>, GpuError> {
    let n = xs.len();
    let mut outs = dev
        .run(&SCALAR, &[Pass::new("main", n, &[f as u32])], &[xs], &[n])
        .await?;
    outs.pop()
        .ok_or_else(|| GpuError::Readback("no output".into()))
}

async fn scalar_case(dev: &GpuDevice, name: &'static str, lo: f32, hi: f32, f: u32) -> KatResult {
    let xs = scalar_inputs(name, lo, hi);
    let n = xs.len();
    match dev
        .run(&SCALAR, &[Pass::new("main", n, &[f])], &[&xs], &[n])
        .await
    {
        Ok(outs) => KatResult {
            name,
            hash: hash_bits(name, outs.first().map(Vec::as_slice).unwrap_or(&[])),
        },
        Err(e) => failed(name, &e),
    }
}

async fn matmul(
    dev: &GpuDevice,
    a: &[f32],
    b: &[f32],
    dims: [usize; 5],
) -> Result<Vec<f32>, GpuError> {
    let [m, k, n, ta, tb] = dims;
    let w = [m as u32, k as u32, n as u32, ta as u32, tb as u32];
    // The kernel a step would use for these dimensions.
    let (kernel, pass) = matmul_job(m, k, n, &w, dev.layout);
    let mut outs = dev.run(kernel, &[pass], &[a, b], &[m * n]).await?;
    outs.pop()
        .ok_or_else(|| GpuError::Readback("no output".into()))
}

async fn matmul_case(
    dev: &GpuDevice,
    name: &'static str,
    dims: [usize; 5],
    lo: [f32; 2],
) -> KatResult {
    let [m, k, n, _, _] = dims;
    let mut g = Gen::new(name);
    let (a, b) = if lo[0] == 0.0 {
        (g.vec(m * k, -2.0, 2.0), g.vec(k * n, -2.0, 2.0))
    } else {
        (g.vec(m * k, lo[0], lo[1]), g.vec(k * n, -lo[1], lo[1]))
    };
    match matmul(dev, &a, &b, dims).await {
        Ok(c) => KatResult {
            name,
            hash: hash_bits(name, &c),
        },
        Err(e) => failed(name, &e),
    }
}

fn output(mut outs: Vec<Tensor>, i: usize) -> Result<Tensor, GpuError> {
    if i < outs.len() {
        Ok(outs.swap_remove(i))
    } else {
        Err(GpuError::Readback(format!("expected output {i}")))
    }
}

/// Runs one operator case, pushes its result, and returns its outputs for later cases.
async fn op_case(
    dev: &GpuDevice,
    out: &mut Vec<KatResult>,
    name: &'static str,
    kind: &OpKind,
    inputs: &[&Tensor],
) -> Result<Vec<Tensor>, GpuError> {
    match eval_op_gpu(dev, kind, inputs).await {
        Ok(o) => {
            out.push(KatResult {
                name,
                hash: hash_tensors(name, &o),
            });
            Ok(o)
        }
        Err(e) => {
            out.push(failed(name, &e));
            Err(e)
        }
    }
}

async fn ops_cases(dev: &GpuDevice, out: &mut Vec<KatResult>) -> Result<(), GpuError> {
    let mut g = Gen::new("ops");
    let model = |e: lupus_prover::tensor::TensorError| GpuError::Model(e.into());
    let logits = g.tensor(&[6, 11], -8.0, 8.0)?;
    let targets = Tensor::from_ids(vec![6], &[0, 10, 3, 3, 7, 1]).map_err(model)?;
    let sce = op_case(
        dev,
        out,
        "op.softmax_cross_entropy",
        &OpKind::SoftmaxCrossEntropy,
        &[&logits, &targets],
    )
    .await?;
    let probs = output(sce, 1)?;
    op_case(
        dev,
        out,
        "op.softmax_cross_entropy_backward",
        &OpKind::SoftmaxCrossEntropyBackward,
        &[&probs, &targets],
    )
    .await?;
    let x = g.tensor(&[5, 24], -3.0, 3.0)?;
    let gamma = g.tensor(&[24], 0.5, 1.5)?;
    let beta = g.tensor(&[24], -0.5, 0.5)?;
    let ln = OpKind::LayerNorm { eps: 1e-5 };
    let stats = op_case(dev, out, "op.layer_norm", &ln, &[&x, &gamma, &beta]).await?;
    let (mean, rstd) = (output(stats.clone(), 1)?, output(stats, 2)?);
    let dy = g.tensor(&[5, 24], -1.0, 1.0)?;
    op_case(
        dev,
        out,
        "op.layer_norm_backward",
        &OpKind::LayerNormBackward,
        &[&x, &gamma, &mean, &rstd, &dy],
    )
    .await?;
    let (heads, seq) = (3, 5);
    let q = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let k = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let v = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let sc = OpKind::AttentionScores { heads, seq };
    let s = output(
        op_case(dev, out, "op.attention_scores", &sc, &[&q, &k]).await?,
        0,
    )?;
    let sm = OpKind::CausalSoftmax { seq };
    let p = output(op_case(dev, out, "op.causal_softmax", &sm, &[&s]).await?, 0)?;
    let av = OpKind::AttentionValues { heads, seq };
    op_case(dev, out, "op.attention_values", &av, &[&p, &v]).await?;
    let dout = g.tensor(&[2 * seq, 12], -1.0, 1.0)?;
    op_case(
        dev,
        out,
        "op.attention_values_backward",
        &OpKind::AttentionValuesBackward { heads, seq },
        &[&p, &v, &dout],
    )
    .await?;
    let dp = g.tensor(&[2 * heads * seq, seq], -1.0, 1.0)?;
    op_case(
        dev,
        out,
        "op.causal_softmax_backward",
        &OpKind::CausalSoftmaxBackward { seq },
        &[&p, &dp],
    )
    .await?;
    op_case(
        dev,
        out,
        "op.attention_scores_backward",
        &OpKind::AttentionScoresBackward { heads, seq },
        &[&q, &k, &dp],
    )
    .await?;
    let table = g.tensor(&[9, 4], -1.0, 1.0)?;
    let ids = Tensor::from_ids(vec![2, 3], &[8, 0, 8, 3, 3, 1]).map_err(model)?;
    op_case(
        dev,
        out,
        "op.embedding",
        &OpKind::Embedding { vocab: 9, dim: 4 },
        &[&table, &ids],
    )
    .await?;
    let dy = g.tensor(&[6, 4], -1.0, 1.0)?;
    op_case(
        dev,
        out,
        "op.embedding_backward",
        &OpKind::EmbeddingBackward { vocab: 9, dim: 4 },
        &[&ids, &dy],
    )
    .await?;
    let param = g.tensor(&[7, 5], -1.0, 1.0)?;
    let grad = g.tensor(&[7, 5], -0.1, 0.1)?;
    let m = g.tensor(&[7, 5], -0.01, 0.01)?;
    let v = g.tensor(&[7, 5], 0.0, 1e-4)?;
    op_case(
        dev,
        out,
        "op.adamw_update",
        &OpKind::AdamWUpdate {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 17,
        },
        &[&param, &grad, &m, &v],
    )
    .await?;
    Ok(())
}

async fn step_case(dev: &GpuDevice, name: &'static str, spec: &ModelSpec) -> KatResult {
    let mut g = Gen::new(name);
    let mut h = blake3::Hasher::new_derive_key("lupus kat result v1");
    h.update(name.as_bytes());
    let run = async {
        let mut state = TrainState::fresh(init_params(spec, [42; 32])?);
        let opt = AdamW {
            lr: 1e-2,
            weight_decay: 0.01,
            ..AdamW::default()
        };
        for _ in 0..2 {
            let windows: Vec<Vec<u32>> = (0..4)
                .map(|_| {
                    (0..spec.window_len())
                        .map(|_| g.u32() % spec.vocab() as u32)
                        .collect()
                })
                .collect();
            let batch = make_batch(spec, &windows)?;
            let out = train_step_gpu(dev, spec, &opt, &state, &batch).await?;
            for OpRecord { outputs, .. } in &out.ops {
                for t in outputs {
                    h.update(&t.hash());
                }
            }
            h.update(&out.loss.to_bits().to_le_bytes());
            state = out.state;
        }
        for t in state.tensors() {
            h.update(&t.hash());
        }
        Ok::<(), GpuError>(())
    };
    if let Err(e) = run.await {
        h.update(format!("error {e}").as_bytes());
    }
    KatResult {
        name,
        hash: *h.finalize().as_bytes(),
    }
}

/// Runs every case on the device, in the reference suite's order.
pub async fn run_suite_gpu(dev: &GpuDevice) -> Vec<KatResult> {
    let mut out = Vec::new();
    for (name, lo, hi, f) in SCALAR_CASES {
        out.push(scalar_case(dev, name, lo, hi, f).await);
    }
    for (name, m, k, n, ta, tb) in MATMUL_CASES {
        out.push(matmul_case(dev, name, [m, k, n, ta as usize, tb as usize], [0.0, 0.0]).await);
    }
    out.push(matmul_case(dev, "matmul.subnormal", [8, 16, 8, 0, 0], [1e-20, 4e-19]).await);
    // A group that fails stops there; its missing cases count as mismatches.
    let _ = ops_cases(dev, &mut out).await;
    out.extend(quant_and_outer_cases().unwrap_or_default());
    out.push(step_case(dev, "step.mlp", &kat_mlp()).await);
    out.push(step_case(dev, "step.gpt", &kat_gpt()).await);
    out
}
