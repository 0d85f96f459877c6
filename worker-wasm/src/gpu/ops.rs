//! Every operator of both models on the GPU: the WGSL twin of `lupus_prover::ops::eval_op`.
//!
//! DESIGN.md (Determinism): each kernel computes each output element in the reference's
//! order with `+ - *` and the `det` functions only, so on a device that does IEEE
//! binary32 without contraction (lavapipe, SwiftShader) the bits equal the CPU
//! reference's; the known-answer suite ([`super::kat`]) checks that at start. Shapes are
//! checked here before anything is dispatched; `Reshape` moves no data and runs on the
//! host.

use lupus_prover::ops::{OpKind, eval_op};
use lupus_prover::tensor::Tensor;

use super::device::{GpuDevice, GpuError, Kernel, Pass};

const fn kernel(name: &'static str, source: &'static str, inputs: u32, outputs: u32) -> Kernel {
    Kernel {
        name,
        source,
        inputs,
        outputs,
    }
}

pub(crate) const SCALAR: Kernel = kernel("scalar", include_str!("wgsl/scalar.wgsl"), 1, 1);
pub(crate) const MATMUL: Kernel = kernel("matmul", include_str!("wgsl/matmul.wgsl"), 2, 1);
const ELEMENTWISE: Kernel = kernel("elementwise", include_str!("wgsl/elementwise.wgsl"), 2, 1);
const REDUCE: Kernel = kernel("reduce", include_str!("wgsl/reduce.wgsl"), 2, 1);
const LAYER_NORM: Kernel = kernel("layer_norm", include_str!("wgsl/layer_norm.wgsl"), 3, 3);
const LAYER_NORM_BACKWARD: Kernel = kernel(
    "layer_norm_backward",
    include_str!("wgsl/layer_norm_backward.wgsl"),
    5,
    3,
);
const SOFTMAX: Kernel = kernel("softmax", include_str!("wgsl/softmax.wgsl"), 2, 3);
const ATTENTION: Kernel = kernel("attention", include_str!("wgsl/attention.wgsl"), 2, 1);
const ADAMW: Kernel = kernel("adamw", include_str!("wgsl/adamw.wgsl"), 4, 3);

fn shape_err(op: &'static str, detail: impl Into<String>) -> GpuError {
    GpuError::Shape {
        op,
        detail: detail.into(),
    }
}

fn matrix(op: &'static str, t: &Tensor) -> Result<(usize, usize), GpuError> {
    match t.shape() {
        [r, c] => Ok((*r, *c)),
        s => Err(shape_err(op, format!("expected a matrix, got shape {s:?}"))),
    }
}

fn expect_len(op: &'static str, t: &Tensor, n: usize) -> Result<(), GpuError> {
    if t.len() == n {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("expected {n} elements, got shape {:?}", t.shape()),
        ))
    }
}

/// Checks that every element of `ids` is an integer id below `vocab`.
fn check_ids(op: &'static str, ids: &Tensor, vocab: usize) -> Result<(), GpuError> {
    for &x in ids.data() {
        if !(x >= 0.0 && x < vocab as f32 && x == (x as u32) as f32) {
            return Err(shape_err(op, format!("token id {x} is not below {vocab}")));
        }
    }
    Ok(())
}

fn words(xs: &[usize]) -> Vec<u32> {
    xs.iter().map(|&x| x as u32).collect()
}

fn tensor(op: &'static str, shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, GpuError> {
    Tensor::new(shape, data).map_err(|e| shape_err(op, e.to_string()))
}

/// One-output jobs of a single pass.
async fn single(
    dev: &GpuDevice,
    k: &Kernel,
    pass: Pass,
    inputs: &[&[f32]],
    out_len: usize,
) -> Result<Vec<f32>, GpuError> {
    let mut outs = dev.run(k, &[pass], inputs, &[out_len]).await?;
    outs.pop()
        .ok_or_else(|| GpuError::Readback("no output".into()))
}

/// Attention dimensions of a `[batch*seq, width]` input.
fn attn(
    op: &'static str,
    t: &Tensor,
    heads: usize,
    seq: usize,
) -> Result<(usize, usize), GpuError> {
    let (rows, width) = matrix(op, t)?;
    if heads == 0 || seq == 0 || rows % seq != 0 || width % heads != 0 || width == 0 {
        return Err(shape_err(
            op,
            format!("{:?} does not fit {heads} heads of seq {seq}", t.shape()),
        ));
    }
    Ok((rows / seq, width / heads))
}

/// Applies one operator on the GPU. The same inputs give the reference's bits on a
/// device of the exact class.
pub async fn eval_op_gpu(
    dev: &GpuDevice,
    kind: &OpKind,
    inputs: &[&Tensor],
) -> Result<Vec<Tensor>, GpuError> {
    let op = kind.name();
    if inputs.len() != kind.arity() {
        return Err(shape_err(
            op,
            format!(
                "{} inputs for an operator of {}",
                inputs.len(),
                kind.arity()
            ),
        ));
    }
    let x = inputs;
    let d = |i: usize| x[i].data();
    match kind {
        OpKind::Reshape { .. } => Ok(eval_op(kind, inputs)?),
        OpKind::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (ar, ac) = matrix(op, x[0])?;
            let (br, bc) = matrix(op, x[1])?;
            let (m, k) = if *transpose_a { (ac, ar) } else { (ar, ac) };
            let (k2, n) = if *transpose_b { (bc, br) } else { (br, bc) };
            if k != k2 {
                return Err(shape_err(op, "inner dimensions differ"));
            }
            let w = words(&[m, k, n, *transpose_a as usize, *transpose_b as usize]);
            let out = single(
                dev,
                &MATMUL,
                Pass::new("main", m * n, &w),
                &[d(0), d(1)],
                m * n,
            )
            .await?;
            Ok(vec![tensor(op, vec![m, n], out)?])
        }
        OpKind::Add | OpKind::Relu | OpKind::ReluBackward => {
            let code = match kind {
                OpKind::Add => 0,
                OpKind::Relu => 1,
                _ => 2,
            };
            let n = x[0].len();
            let y = if matches!(kind, OpKind::Relu) {
                d(0)
            } else {
                expect_len(op, x[1], n)?;
                d(1)
            };
            let out = single(
                dev,
                &ELEMENTWISE,
                Pass::new("main", n, &[code]),
                &[d(0), y],
                n,
            )
            .await?;
            Ok(vec![tensor(op, x[0].shape().to_vec(), out)?])
        }
        OpKind::AddBias => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            let w = words(&[3, c]);
            let out = single(
                dev,
                &ELEMENTWISE,
                Pass::new("main", r * c, &w),
                &[d(0), d(1)],
                r * c,
            )
            .await?;
            Ok(vec![tensor(op, vec![r, c], out)?])
        }
        OpKind::AddPosition { seq } => {
            let (r, c) = matrix(op, x[0])?;
            let (context, c2) = matrix(op, x[1])?;
            if c2 != c || *seq == 0 || *seq > context || r % seq != 0 || c == 0 {
                return Err(shape_err(op, "x and table do not fit seq"));
            }
            let w = words(&[4, c, *seq]);
            let out = single(
                dev,
                &ELEMENTWISE,
                Pass::new("main", r * c, &w),
                &[d(0), d(1)],
                r * c,
            )
            .await?;
            Ok(vec![tensor(op, vec![r, c], out)?])
        }
        OpKind::SoftmaxCrossEntropyBackward => {
            let (r, v) = matrix(op, x[0])?;
            expect_len(op, x[1], r)?;
            check_ids(op, x[1], v)?;
            let w = words(&[5, v, 0, r]);
            let out = single(
                dev,
                &ELEMENTWISE,
                Pass::new("main", r * v, &w),
                &[d(0), d(1)],
                r * v,
            )
            .await?;
            Ok(vec![tensor(op, vec![r, v], out)?])
        }
        OpKind::BiasBackward => {
            let (r, c) = matrix(op, x[0])?;
            let w = words(&[0, r, c]);
            let out = single(dev, &REDUCE, Pass::new("main", c, &w), &[d(0), d(0)], c).await?;
            Ok(vec![tensor(op, vec![c], out)?])
        }
        OpKind::AddPositionBackward { seq, context } => {
            let (r, c) = matrix(op, x[0])?;
            if *seq == 0 || seq > context || r % seq != 0 || c == 0 {
                return Err(shape_err(op, "dy does not fit seq and context"));
            }
            let w = words(&[1, r, c, *seq]);
            let n = context * c;
            let out = single(dev, &REDUCE, Pass::new("main", n, &w), &[d(0), d(0)], n).await?;
            Ok(vec![tensor(op, vec![*context, c], out)?])
        }
        OpKind::EmbeddingBackward { vocab, dim } => {
            let ids = x[0];
            check_ids(op, ids, *vocab)?;
            expect_len(op, x[1], ids.len() * dim)?;
            let w = words(&[2, ids.len(), *dim]);
            let n = vocab * dim;
            let out = single(dev, &REDUCE, Pass::new("main", n, &w), &[d(1), d(0)], n).await?;
            Ok(vec![tensor(op, vec![*vocab, *dim], out)?])
        }
        OpKind::Embedding { vocab, dim } => {
            expect_len(op, x[0], vocab * dim)?;
            check_ids(op, x[1], *vocab)?;
            let rows = x[1].len();
            let w = words(&[3, rows, *dim]);
            let n = rows * dim;
            let out = single(dev, &REDUCE, Pass::new("main", n, &w), &[d(0), d(1)], n).await?;
            Ok(vec![tensor(op, vec![rows, *dim], out)?])
        }
        OpKind::LayerNorm { eps } => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            expect_len(op, x[2], c)?;
            if !(eps.is_finite() && *eps > 0.0) || c == 0 {
                return Err(shape_err(op, "eps must be > 0 and rows non-empty"));
            }
            let w = [c as u32, eps.to_bits()];
            let outs = dev
                .run(
                    &LAYER_NORM,
                    &[Pass::new("main", r, &w)],
                    &[d(0), d(1), d(2)],
                    &[r * c, r, r],
                )
                .await?;
            let [y, mean, rstd]: [Vec<f32>; 3] = outs
                .try_into()
                .map_err(|_| GpuError::Readback("layer_norm outputs".into()))?;
            Ok(vec![
                tensor(op, vec![r, c], y)?,
                tensor(op, vec![r], mean)?,
                tensor(op, vec![r], rstd)?,
            ])
        }
        OpKind::LayerNormBackward => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            expect_len(op, x[2], r)?;
            expect_len(op, x[3], r)?;
            expect_len(op, x[4], r * c)?;
            let w = words(&[r, c]);
            let outs = dev
                .run(
                    &LAYER_NORM_BACKWARD,
                    &[Pass::new("rows_main", r, &w), Pass::new("cols_main", c, &w)],
                    &[d(0), d(1), d(2), d(3), d(4)],
                    &[r * c, c, c],
                )
                .await?;
            let [dx, dg, db]: [Vec<f32>; 3] = outs
                .try_into()
                .map_err(|_| GpuError::Readback("layer_norm_backward outputs".into()))?;
            Ok(vec![
                tensor(op, vec![r, c], dx)?,
                tensor(op, vec![c], dg)?,
                tensor(op, vec![c], db)?,
            ])
        }
        OpKind::CausalSoftmax { seq } | OpKind::CausalSoftmaxBackward { seq } => {
            let (r, c) = matrix(op, x[0])?;
            if c != *seq || *seq == 0 || r % seq != 0 {
                return Err(shape_err(op, "scores do not fit seq"));
            }
            let backward = matches!(kind, OpKind::CausalSoftmaxBackward { .. });
            let y = if backward {
                expect_len(op, x[1], r * c)?;
                d(1)
            } else {
                d(0)
            };
            let w = words(&[backward as usize, c, *seq]);
            let mut outs = dev
                .run(
                    &SOFTMAX,
                    &[Pass::new("main", r, &w)],
                    &[d(0), y],
                    &[r * c, 0, 0],
                )
                .await?;
            outs.truncate(1);
            let out = outs.pop().unwrap_or_default();
            Ok(vec![tensor(op, vec![r, c], out)?])
        }
        OpKind::SoftmaxCrossEntropy => {
            let (r, v) = matrix(op, x[0])?;
            if r == 0 || v == 0 {
                return Err(shape_err(op, "empty logits"));
            }
            expect_len(op, x[1], r)?;
            check_ids(op, x[1], v)?;
            let outs = dev
                .run(
                    &SOFTMAX,
                    &[
                        Pass::new("main", r, &words(&[2, v])),
                        Pass::new("main", 1, &words(&[3, v, 0, r])),
                    ],
                    &[d(0), d(1)],
                    &[r * v, r, 1],
                )
                .await?;
            let [probs, _rows, loss]: [Vec<f32>; 3] = outs
                .try_into()
                .map_err(|_| GpuError::Readback("cross-entropy outputs".into()))?;
            Ok(vec![
                tensor(op, vec![1], loss)?,
                tensor(op, vec![r, v], probs)?,
            ])
        }
        OpKind::AttentionScores { heads, seq } => {
            let (b, hd) = attn(op, x[0], *heads, *seq)?;
            expect_len(op, x[1], x[0].len())?;
            let rows = b * heads * seq;
            let w = words(&[0, b, *seq, *heads, hd]);
            let n = rows * seq;
            let out = single(dev, &ATTENTION, Pass::new("main", n, &w), &[d(0), d(1)], n).await?;
            Ok(vec![tensor(op, vec![rows, *seq], out)?])
        }
        OpKind::AttentionValues { heads, seq } => {
            let (b, hd) = attn(op, x[1], *heads, *seq)?;
            expect_len(op, x[0], b * heads * seq * seq)?;
            let w = words(&[1, b, *seq, *heads, hd]);
            let n = x[1].len();
            let out = single(dev, &ATTENTION, Pass::new("main", n, &w), &[d(0), d(1)], n).await?;
            Ok(vec![tensor(op, x[1].shape().to_vec(), out)?])
        }
        OpKind::AttentionValuesBackward { heads, seq } => {
            // (p, v, do) -> (dp, dv)
            let (b, hd) = attn(op, x[1], *heads, *seq)?;
            expect_len(op, x[0], b * heads * seq * seq)?;
            expect_len(op, x[2], x[1].len())?;
            let np = x[0].len();
            let nv = x[1].len();
            let dp = single(
                dev,
                &ATTENTION,
                Pass::new("main", np, &words(&[2, b, *seq, *heads, hd])),
                &[d(2), d(1)],
                np,
            )
            .await?;
            let dv = single(
                dev,
                &ATTENTION,
                Pass::new("main", nv, &words(&[3, b, *seq, *heads, hd])),
                &[d(0), d(2)],
                nv,
            )
            .await?;
            Ok(vec![
                tensor(op, x[0].shape().to_vec(), dp)?,
                tensor(op, x[1].shape().to_vec(), dv)?,
            ])
        }
        OpKind::AttentionScoresBackward { heads, seq } => {
            // (q, k, ds) -> (dq, dk)
            let (b, hd) = attn(op, x[0], *heads, *seq)?;
            expect_len(op, x[1], x[0].len())?;
            expect_len(op, x[2], b * heads * seq * seq)?;
            let n = x[0].len();
            let dq = single(
                dev,
                &ATTENTION,
                Pass::new("main", n, &words(&[4, b, *seq, *heads, hd])),
                &[d(2), d(1)],
                n,
            )
            .await?;
            let dk = single(
                dev,
                &ATTENTION,
                Pass::new("main", n, &words(&[5, b, *seq, *heads, hd])),
                &[d(2), d(0)],
                n,
            )
            .await?;
            Ok(vec![
                tensor(op, x[0].shape().to_vec(), dq)?,
                tensor(op, x[1].shape().to_vec(), dk)?,
            ])
        }
        OpKind::AdamWUpdate {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        } => {
            let n = x[0].len();
            for t in &x[1..] {
                if t.shape() != x[0].shape() {
                    return Err(shape_err(op, "param, grad and moments differ in shape"));
                }
            }
            let step = u32::try_from(*step)
                .map_err(|_| shape_err(op, "step counts above 2^32 are not supported"))?;
            let w = [
                lr.to_bits(),
                beta1.to_bits(),
                beta2.to_bits(),
                eps.to_bits(),
                weight_decay.to_bits(),
                step,
            ];
            let outs = dev
                .run(
                    &ADAMW,
                    &[Pass::new("main", n, &w)],
                    &[d(0), d(1), d(2), d(3)],
                    &[n, n, n],
                )
                .await?;
            let s = x[0].shape().to_vec();
            outs.into_iter().map(|o| tensor(op, s.clone(), o)).collect()
        }
        // Operators added to the prover later run on the reference until a kernel exists.
        _ => Ok(eval_op(kind, inputs)?),
    }
}
