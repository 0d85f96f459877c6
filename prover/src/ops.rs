//! Operators: the unit of recomputation that makes operator-level fraud proofs work.
//!
//! DESIGN.md (Trace and commitment): a training step is an ordered list of operator
//! applications; each one is committed with its outputs, and a dispute re-runs a single
//! operator in isolation. So [`eval_op`] is a pure function of an [`OpKind`] (the
//! operator and its static attributes) and its input tensors, and `graph::train_step`
//! computes every value of a step by calling exactly this function. Every input is
//! checked (count, shapes, attributes, token ids) and a mismatch is a typed
//! [`ModelError`], never a panic, because the inputs of a disputed operator come from an
//! untrusted opening.
//!
//! Shapes use `N` for rows (batch x positions), `D` for feature widths, `V` for the
//! vocabulary. Matrices are row-major.

use serde::{Deserialize, Serialize};

use crate::kernels::{self, AdamWParams, AttnDims, MatMulDims};
use crate::model::ModelError;
use crate::tensor::{MAX_ELEMENTS, Tensor};

/// Every operator of the forward pass, the backward pass and the optimizer update,
/// with its static attributes. Inputs and outputs are listed per variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpKind {
    /// (table `[vocab, dim]`, ids of any shape with n elements) -> (`[n, dim]`).
    Embedding { vocab: usize, dim: usize },
    /// (ids with n elements, dy `[n, dim]`) -> (dtable `[vocab, dim]`): scatter-add in
    /// increasing n.
    EmbeddingBackward { vocab: usize, dim: usize },
    /// (x) -> (x with `shape`, same element count).
    Reshape { shape: Vec<usize> },
    /// (a, b) -> (`op(a) op(b)`), `a` is `[m, k]` (`[k, m]` when transposed) and `b` is
    /// `[k, n]` (`[n, k]` when transposed).
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// (x `[N, D]`, bias `[D]`) -> (`x + bias` per row).
    AddBias,
    /// (dy `[N, D]`) -> (`[D]` column sums): the gradient of a bias.
    BiasBackward,
    /// (x, y of the same shape) -> (x + y): residuals and gradient accumulation.
    Add,
    /// (x) -> (`max(x, 0)`).
    Relu,
    /// (x, dy) -> (dy where x > 0, else 0).
    ReluBackward,
    /// (x `[N, D]` with N a multiple of `seq`, table `[context, D]`, `seq <= context`)
    /// -> (`x[b*seq + t] + table[t]`).
    AddPosition { seq: usize },
    /// (dy `[N, D]`) -> (dtable `[context, D]`): sums over the batch.
    AddPositionBackward { seq: usize, context: usize },
    /// (x `[N, D]`, gamma `[D]`, beta `[D]`) -> (y `[N, D]`, mean `[N]`, rstd `[N]`).
    LayerNorm { eps: f32 },
    /// (x, gamma, mean, rstd, dy) -> (dx, dgamma, dbeta).
    LayerNormBackward,
    /// (q `[B*seq, H*hd]`, k `[B*seq, H*hd]`) -> (scores `[B*H*seq, seq]`), the causal
    /// part `q k^T * rsqrt(hd)`; entries above the diagonal are 0.
    AttentionScores { heads: usize, seq: usize },
    /// (scores `[R*seq, seq]`) -> (probabilities over `j <= i`, zero above).
    CausalSoftmax { seq: usize },
    /// (p `[B*H*seq, seq]`, v `[B*seq, H*hd]`) -> (o `[B*seq, H*hd]`).
    AttentionValues { heads: usize, seq: usize },
    /// (p, v, do) -> (dp, dv).
    AttentionValuesBackward { heads: usize, seq: usize },
    /// (p, dp) -> (dscores).
    CausalSoftmaxBackward { seq: usize },
    /// (q, k, dscores) -> (dq, dk).
    AttentionScoresBackward { heads: usize, seq: usize },
    /// (logits `[N, V]`, targets with N elements) -> (mean loss `[1]`, probs `[N, V]`).
    SoftmaxCrossEntropy,
    /// (probs `[N, V]`, targets with N elements) -> (dlogits `[N, V]`).
    SoftmaxCrossEntropyBackward,
    /// (param, grad, m, v, all the same shape) -> (param', m', v'). `step` is the step
    /// number after this update (1 for the first).
    #[serde(rename = "adamw_update")]
    AdamWUpdate {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: u64,
    },
}

impl OpKind {
    /// The operator's name, as errors and reports show it.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Embedding { .. } => "embedding",
            OpKind::EmbeddingBackward { .. } => "embedding_backward",
            OpKind::Reshape { .. } => "reshape",
            OpKind::MatMul { .. } => "mat_mul",
            OpKind::AddBias => "add_bias",
            OpKind::BiasBackward => "bias_backward",
            OpKind::Add => "add",
            OpKind::Relu => "relu",
            OpKind::ReluBackward => "relu_backward",
            OpKind::AddPosition { .. } => "add_position",
            OpKind::AddPositionBackward { .. } => "add_position_backward",
            OpKind::LayerNorm { .. } => "layer_norm",
            OpKind::LayerNormBackward => "layer_norm_backward",
            OpKind::AttentionScores { .. } => "attention_scores",
            OpKind::CausalSoftmax { .. } => "causal_softmax",
            OpKind::AttentionValues { .. } => "attention_values",
            OpKind::AttentionValuesBackward { .. } => "attention_values_backward",
            OpKind::CausalSoftmaxBackward { .. } => "causal_softmax_backward",
            OpKind::AttentionScoresBackward { .. } => "attention_scores_backward",
            OpKind::SoftmaxCrossEntropy => "softmax_cross_entropy",
            OpKind::SoftmaxCrossEntropyBackward => "softmax_cross_entropy_backward",
            OpKind::AdamWUpdate { .. } => "adamw_update",
        }
    }

    /// How many input tensors the operator takes.
    pub fn arity(&self) -> usize {
        match self {
            OpKind::Reshape { .. }
            | OpKind::BiasBackward
            | OpKind::Relu
            | OpKind::AddPositionBackward { .. }
            | OpKind::CausalSoftmax { .. } => 1,
            OpKind::Embedding { .. }
            | OpKind::EmbeddingBackward { .. }
            | OpKind::MatMul { .. }
            | OpKind::AddBias
            | OpKind::Add
            | OpKind::ReluBackward
            | OpKind::AddPosition { .. }
            | OpKind::AttentionScores { .. }
            | OpKind::AttentionValues { .. }
            | OpKind::CausalSoftmaxBackward { .. }
            | OpKind::SoftmaxCrossEntropy
            | OpKind::SoftmaxCrossEntropyBackward => 2,
            OpKind::LayerNorm { .. }
            | OpKind::AttentionValuesBackward { .. }
            | OpKind::AttentionScoresBackward { .. } => 3,
            OpKind::AdamWUpdate { .. } => 4,
            OpKind::LayerNormBackward => 5,
        }
    }

    /// How many output tensors the operator returns.
    pub fn output_count(&self) -> usize {
        match self {
            OpKind::LayerNorm { .. } | OpKind::LayerNormBackward | OpKind::AdamWUpdate { .. } => 3,
            OpKind::AttentionValuesBackward { .. }
            | OpKind::AttentionScoresBackward { .. }
            | OpKind::SoftmaxCrossEntropy => 2,
            _ => 1,
        }
    }
}

/// Applies one operator. Pure: the same kind and input bits always give the same output
/// bits, on every machine of the exact class, and these are the bits `train_step`
/// records. Errors: wrong input count ([`ModelError::Arity`]), wrong shapes
/// ([`ModelError::Shape`]), invalid attributes ([`ModelError::Attribute`]), token ids
/// out of range ([`ModelError::BadToken`]), a non-finite result
/// ([`ModelError::NonFiniteOutput`]).
pub fn eval_op(kind: &OpKind, inputs: &[&Tensor]) -> Result<Vec<Tensor>, ModelError> {
    let op = kind.name();
    if inputs.len() != kind.arity() {
        return Err(ModelError::Arity {
            op,
            expected: kind.arity(),
            got: inputs.len(),
        });
    }
    let x = inputs;
    let outs: Vec<(Vec<usize>, Vec<f32>)> = match kind {
        OpKind::Embedding { vocab, dim } => {
            check_positive(op, "vocab", *vocab)?;
            check_positive(op, "dim", *dim)?;
            expect_shape(op, 0, x[0], &[*vocab, *dim])?;
            let ids = token_ids(op, 1, x[1], *vocab)?;
            let n = ids.len();
            vec![(vec![n, *dim], kernels::embedding(x[0].data(), &ids, *dim))]
        }
        OpKind::EmbeddingBackward { vocab, dim } => {
            check_positive(op, "vocab", *vocab)?;
            check_positive(op, "dim", *dim)?;
            check_size(op, &[*vocab, *dim])?;
            let ids = token_ids(op, 0, x[0], *vocab)?;
            expect_shape(op, 1, x[1], &[ids.len(), *dim])?;
            vec![(
                vec![*vocab, *dim],
                kernels::embedding_backward(&ids, x[1].data(), *vocab, *dim),
            )]
        }
        OpKind::Reshape { shape } => {
            let n = crate::tensor::checked_numel(shape)?;
            if n != x[0].len() {
                return Err(shape_err(
                    op,
                    format!("cannot reshape {:?} to {shape:?}", x[0].shape()),
                ));
            }
            vec![(shape.clone(), x[0].data().to_vec())]
        }
        OpKind::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (ar, ac) = matrix(op, 0, x[0])?;
            let (br, bc) = matrix(op, 1, x[1])?;
            let (m, k) = if *transpose_a { (ac, ar) } else { (ar, ac) };
            let (k2, n) = if *transpose_b { (bc, br) } else { (br, bc) };
            if k != k2 {
                return Err(shape_err(
                    op,
                    format!(
                        "inner dimensions differ: {:?} (transposed: {transpose_a}) x {:?} (transposed: {transpose_b})",
                        x[0].shape(),
                        x[1].shape()
                    ),
                ));
            }
            check_size(op, &[m, n])?;
            let d = MatMulDims {
                m,
                k,
                n,
                transpose_a: *transpose_a,
                transpose_b: *transpose_b,
            };
            vec![(vec![m, n], kernels::matmul(x[0].data(), x[1].data(), d))]
        }
        OpKind::AddBias => {
            let (_, c) = matrix(op, 0, x[0])?;
            check_positive(op, "columns", c)?;
            expect_shape(op, 1, x[1], &[c])?;
            vec![(
                x[0].shape().to_vec(),
                kernels::add_bias(x[0].data(), x[1].data()),
            )]
        }
        OpKind::BiasBackward => {
            let (_, c) = matrix(op, 0, x[0])?;
            check_positive(op, "columns", c)?;
            vec![(vec![c], kernels::sum_rows(x[0].data(), c))]
        }
        OpKind::Add => {
            expect_shape(op, 1, x[1], x[0].shape())?;
            vec![(
                x[0].shape().to_vec(),
                kernels::add(x[0].data(), x[1].data()),
            )]
        }
        OpKind::Relu => vec![(x[0].shape().to_vec(), kernels::relu(x[0].data()))],
        OpKind::ReluBackward => {
            expect_shape(op, 1, x[1], x[0].shape())?;
            vec![(
                x[0].shape().to_vec(),
                kernels::relu_backward(x[0].data(), x[1].data()),
            )]
        }
        OpKind::AddPosition { seq } => {
            check_positive(op, "seq", *seq)?;
            let (rows, dim) = matrix(op, 0, x[0])?;
            let (context, dim2) = matrix(op, 1, x[1])?;
            if dim2 != dim || *seq > context || rows % seq != 0 || dim == 0 {
                return Err(shape_err(
                    op,
                    format!(
                        "x {:?} and table {:?} do not fit seq {seq}",
                        x[0].shape(),
                        x[1].shape()
                    ),
                ));
            }
            vec![(
                vec![rows, dim],
                kernels::add_position(x[0].data(), x[1].data(), *seq, dim),
            )]
        }
        OpKind::AddPositionBackward { seq, context } => {
            check_positive(op, "seq", *seq)?;
            if seq > context {
                return Err(attr_err(op, format!("seq {seq} exceeds context {context}")));
            }
            let (rows, dim) = matrix(op, 0, x[0])?;
            check_positive(op, "dim", dim)?;
            if rows % seq != 0 {
                return Err(shape_err(
                    op,
                    format!("{rows} rows are not a multiple of seq {seq}"),
                ));
            }
            check_size(op, &[*context, dim])?;
            vec![(
                vec![*context, dim],
                kernels::add_position_backward(x[0].data(), *seq, *context, dim),
            )]
        }
        OpKind::LayerNorm { eps } => {
            if !(eps.is_finite() && *eps > 0.0) {
                return Err(attr_err(op, format!("eps {eps} must be finite and > 0")));
            }
            let (rows, c) = matrix(op, 0, x[0])?;
            check_positive(op, "columns", c)?;
            expect_shape(op, 1, x[1], &[c])?;
            expect_shape(op, 2, x[2], &[c])?;
            let o = kernels::layer_norm(x[0].data(), x[1].data(), x[2].data(), *eps);
            vec![
                (vec![rows, c], o.y),
                (vec![rows], o.mean),
                (vec![rows], o.rstd),
            ]
        }
        OpKind::LayerNormBackward => {
            let (rows, c) = matrix(op, 0, x[0])?;
            check_positive(op, "columns", c)?;
            expect_shape(op, 1, x[1], &[c])?;
            expect_shape(op, 2, x[2], &[rows])?;
            expect_shape(op, 3, x[3], &[rows])?;
            expect_shape(op, 4, x[4], &[rows, c])?;
            let (dx, dg, db) = kernels::layer_norm_backward(
                x[0].data(),
                x[1].data(),
                x[2].data(),
                x[3].data(),
                x[4].data(),
            );
            vec![(vec![rows, c], dx), (vec![c], dg), (vec![c], db)]
        }
        OpKind::AttentionScores { heads, seq } => {
            let d = attn_dims(op, x[0], *heads, *seq)?;
            expect_shape(op, 1, x[1], x[0].shape())?;
            let rows = d.batch * d.heads * d.seq;
            check_size(op, &[rows, d.seq])?;
            vec![(
                vec![rows, d.seq],
                kernels::attention_scores(x[0].data(), x[1].data(), d),
            )]
        }
        OpKind::CausalSoftmax { seq } => {
            check_positive(op, "seq", *seq)?;
            let (rows, cols) = matrix(op, 0, x[0])?;
            if cols != *seq || rows % seq != 0 {
                return Err(shape_err(
                    op,
                    format!("scores {:?} do not fit seq {seq}", x[0].shape()),
                ));
            }
            vec![(vec![rows, cols], kernels::causal_softmax(x[0].data(), *seq))]
        }
        OpKind::AttentionValues { heads, seq } => {
            let d = attn_dims(op, x[1], *heads, *seq)?;
            expect_shape(op, 0, x[0], &[d.batch * d.heads * d.seq, d.seq])?;
            vec![(
                x[1].shape().to_vec(),
                kernels::attention_values(x[0].data(), x[1].data(), d),
            )]
        }
        OpKind::AttentionValuesBackward { heads, seq } => {
            let d = attn_dims(op, x[1], *heads, *seq)?;
            expect_shape(op, 0, x[0], &[d.batch * d.heads * d.seq, d.seq])?;
            expect_shape(op, 2, x[2], x[1].shape())?;
            let (dp, dv) =
                kernels::attention_values_backward(x[0].data(), x[1].data(), x[2].data(), d);
            vec![(x[0].shape().to_vec(), dp), (x[1].shape().to_vec(), dv)]
        }
        OpKind::CausalSoftmaxBackward { seq } => {
            check_positive(op, "seq", *seq)?;
            let (rows, cols) = matrix(op, 0, x[0])?;
            if cols != *seq || rows % seq != 0 {
                return Err(shape_err(
                    op,
                    format!("probabilities {:?} do not fit seq {seq}", x[0].shape()),
                ));
            }
            expect_shape(op, 1, x[1], x[0].shape())?;
            vec![(
                vec![rows, cols],
                kernels::causal_softmax_backward(x[0].data(), x[1].data(), *seq),
            )]
        }
        OpKind::AttentionScoresBackward { heads, seq } => {
            let d = attn_dims(op, x[0], *heads, *seq)?;
            expect_shape(op, 1, x[1], x[0].shape())?;
            expect_shape(op, 2, x[2], &[d.batch * d.heads * d.seq, d.seq])?;
            let (dq, dk) =
                kernels::attention_scores_backward(x[0].data(), x[1].data(), x[2].data(), d);
            vec![(x[0].shape().to_vec(), dq), (x[1].shape().to_vec(), dk)]
        }
        OpKind::SoftmaxCrossEntropy => {
            let (rows, vocab) = matrix(op, 0, x[0])?;
            check_positive(op, "rows", rows)?;
            check_positive(op, "vocab", vocab)?;
            let t = token_ids(op, 1, x[1], vocab)?;
            if t.len() != rows {
                return Err(shape_err(
                    op,
                    format!("{rows} logit rows but {} targets", t.len()),
                ));
            }
            let (loss, probs) = kernels::softmax_cross_entropy(x[0].data(), &t, vocab);
            vec![(vec![1], vec![loss]), (vec![rows, vocab], probs)]
        }
        OpKind::SoftmaxCrossEntropyBackward => {
            let (rows, vocab) = matrix(op, 0, x[0])?;
            check_positive(op, "rows", rows)?;
            check_positive(op, "vocab", vocab)?;
            let t = token_ids(op, 1, x[1], vocab)?;
            if t.len() != rows {
                return Err(shape_err(
                    op,
                    format!("{rows} probability rows but {} targets", t.len()),
                ));
            }
            vec![(
                vec![rows, vocab],
                kernels::softmax_cross_entropy_backward(x[0].data(), &t, vocab),
            )]
        }
        OpKind::AdamWUpdate {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        } => {
            let h = AdamWParams {
                lr: *lr,
                beta1: *beta1,
                beta2: *beta2,
                eps: *eps,
                weight_decay: *weight_decay,
                step: *step,
            };
            check_adamw(op, &h)?;
            for (i, t) in x.iter().enumerate().skip(1) {
                expect_shape(op, i, t, x[0].shape())?;
            }
            let (p, m, v) = kernels::adamw(x[0].data(), x[1].data(), x[2].data(), x[3].data(), h);
            let s = x[0].shape().to_vec();
            vec![(s.clone(), p), (s.clone(), m), (s, v)]
        }
    };
    outs.into_iter()
        .enumerate()
        .map(|(output, (shape, data))| {
            Tensor::new(shape, data).map_err(|e| match e {
                crate::tensor::TensorError::NonFinite { index } => {
                    ModelError::NonFiniteOutput { op, output, index }
                }
                other => ModelError::Tensor(other),
            })
        })
        .collect()
}

/// Validates AdamW hyperparameters: `lr`, `weight_decay` finite and >= 0, betas in
/// [0, 1), `eps` finite and > 0 (and normal, so its reciprocal is exact-class safe),
/// `step >= 1`.
pub(crate) fn check_adamw(op: &'static str, h: &AdamWParams) -> Result<(), ModelError> {
    let ok = h.lr.is_finite()
        && h.lr >= 0.0
        && h.weight_decay.is_finite()
        && h.weight_decay >= 0.0
        && (0.0..1.0).contains(&h.beta1)
        && (0.0..1.0).contains(&h.beta2)
        && h.eps.is_normal()
        && h.eps > 0.0
        && h.step >= 1;
    if ok {
        Ok(())
    } else {
        Err(attr_err(
            op,
            format!(
                "invalid AdamW settings {h:?}: need lr, weight_decay >= 0, betas in [0, 1), eps > 0, step >= 1"
            ),
        ))
    }
}

fn shape_err(op: &'static str, detail: String) -> ModelError {
    ModelError::Shape { op, detail }
}

fn attr_err(op: &'static str, detail: String) -> ModelError {
    ModelError::Attribute { op, detail }
}

fn check_positive(op: &'static str, what: &str, v: usize) -> Result<(), ModelError> {
    if v == 0 {
        Err(attr_err(op, format!("{what} must be positive")))
    } else {
        Ok(())
    }
}

/// Refuses output shapes too large to allocate before allocating them.
fn check_size(op: &'static str, shape: &[usize]) -> Result<(), ModelError> {
    match crate::tensor::checked_numel(shape) {
        Ok(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(shape_err(
            op,
            format!("output shape {shape:?} is too large"),
        )),
    }
}

fn expect_shape(
    op: &'static str,
    input: usize,
    t: &Tensor,
    want: &[usize],
) -> Result<(), ModelError> {
    if t.shape() == want {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("input {input} has shape {:?}, expected {want:?}", t.shape()),
        ))
    }
}

fn matrix(op: &'static str, input: usize, t: &Tensor) -> Result<(usize, usize), ModelError> {
    match t.shape() {
        [r, c] => Ok((*r, *c)),
        s => Err(shape_err(
            op,
            format!("input {input} must be a matrix, has shape {s:?}"),
        )),
    }
}

/// Reads token ids stored as `f32`: each must be an integer in `[0, vocab)`.
fn token_ids(
    op: &'static str,
    input: usize,
    t: &Tensor,
    vocab: usize,
) -> Result<Vec<usize>, ModelError> {
    t.data()
        .iter()
        .enumerate()
        .map(|(index, &v)| {
            let id = v as usize;
            if v >= 0.0 && (id as f32) == v && id < vocab {
                Ok(id)
            } else {
                Err(ModelError::BadToken {
                    op,
                    input,
                    index,
                    value: v,
                    vocab,
                })
            }
        })
        .collect()
}

fn attn_dims(
    op: &'static str,
    t: &Tensor,
    heads: usize,
    seq: usize,
) -> Result<AttnDims, ModelError> {
    check_positive(op, "heads", heads)?;
    check_positive(op, "seq", seq)?;
    let (rows, width) = matrix(op, 0, t)?;
    if rows % seq != 0 || width % heads != 0 || width == 0 {
        return Err(shape_err(
            op,
            format!(
                "{:?} does not split into sequences of {seq} and {heads} heads",
                t.shape()
            ),
        ));
    }
    let d = AttnDims {
        batch: rows / seq,
        seq,
        heads,
        head_dim: width / heads,
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Operators with small attributes drawn from a seed (every variant).
    fn kind(which: u8, a: usize, b: usize, flag: bool) -> OpKind {
        match which % 22 {
            0 => OpKind::Embedding { vocab: a, dim: b },
            1 => OpKind::EmbeddingBackward { vocab: a, dim: b },
            2 => OpKind::Reshape { shape: vec![a, b] },
            3 => OpKind::MatMul {
                transpose_a: flag,
                transpose_b: !flag,
            },
            4 => OpKind::AddBias,
            5 => OpKind::BiasBackward,
            6 => OpKind::Add,
            7 => OpKind::Relu,
            8 => OpKind::ReluBackward,
            9 => OpKind::AddPosition { seq: a },
            10 => OpKind::AddPositionBackward { seq: a, context: b },
            11 => OpKind::LayerNorm {
                eps: if flag { 1e-5 } else { 0.0 },
            },
            12 => OpKind::LayerNormBackward,
            13 => OpKind::AttentionScores { heads: a, seq: b },
            14 => OpKind::CausalSoftmax { seq: a },
            15 => OpKind::AttentionValues { heads: a, seq: b },
            16 => OpKind::AttentionValuesBackward { heads: a, seq: b },
            17 => OpKind::CausalSoftmaxBackward { seq: a },
            18 => OpKind::AttentionScoresBackward { heads: a, seq: b },
            19 => OpKind::SoftmaxCrossEntropy,
            20 => OpKind::SoftmaxCrossEntropyBackward,
            _ => OpKind::AdamWUpdate {
                lr: 1e-3,
                beta1: 0.9,
                beta2: if flag { 0.95 } else { 1.0 },
                eps: 1e-8,
                weight_decay: 0.0,
                step: a as u64,
            },
        }
    }

    fn tensor(shape: Vec<usize>, fill: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|i| (i % 5) as f32 * fill).collect()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A fraud-proof checker runs operators on untrusted openings: any operator with
        /// any attributes on inputs of any small shapes returns a result or a typed
        /// error and never panics; results have the declared number of outputs.
        #[test]
        fn eval_op_never_panics(
            which in 0u8..22,
            a in 0usize..5,
            b in 0usize..5,
            flag: bool,
            shapes in proptest::collection::vec(proptest::collection::vec(0usize..5, 0..3), 0..6),
            fill in prop_oneof![Just(0.0f32), Just(1.0f32), Just(-0.5f32)],
        ) {
            let k = kind(which, a, b, flag);
            let inputs: Vec<Tensor> = shapes.into_iter().map(|s| tensor(s, fill)).collect();
            let refs: Vec<&Tensor> = inputs.iter().collect();
            if let Ok(out) = eval_op(&k, &refs) {
                prop_assert_eq!(out.len(), k.output_count());
            }
        }
    }

    #[test]
    fn op_kinds_serialise_with_their_attributes() {
        let k = OpKind::AdamWUpdate {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 3,
        };
        let s = serde_json::to_string(&k).unwrap();
        assert!(s.contains("\"op\":\"adamw_update\""), "{s}");
        assert_eq!(serde_json::from_str::<OpKind>(&s).unwrap(), k);
        let m: OpKind =
            serde_json::from_str(r#"{"op":"mat_mul","transpose_a":true,"transpose_b":false}"#)
                .unwrap();
        assert_eq!(m.name(), "mat_mul");
        assert_eq!(m.arity(), 2);
    }
}
