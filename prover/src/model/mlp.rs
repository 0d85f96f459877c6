//! The character MLP language model (DESIGN.md, Model and data: model 1).
//!
//! Parameters, in order: `embed [V, E]`; for each hidden layer `l`, `hidden.l.weight
//! [in, out]` and `hidden.l.bias [out]`; then `out.weight [H, V]` and `out.bias [V]`.
//! Forward: gather the `C` context embeddings of each window and concatenate them
//! (`[B, C*E]`), ReLU hidden layers, logits, mean softmax cross-entropy.

use super::{Init, ModelError, ModelSpec, fan_in_bound};
use crate::graph::{Builder, ValueRef};
use crate::ops::OpKind;

/// Uniform bound of the embedding table.
const EMBED_BOUND: f32 = 1.0;

fn sizes(spec: &ModelSpec) -> Result<(usize, usize, usize, &[usize]), ModelError> {
    match spec {
        ModelSpec::Mlp {
            vocab,
            context,
            embed,
            hidden,
        } => Ok((*vocab, *context, *embed, hidden)),
        ModelSpec::Gpt { .. } => Err(ModelError::InvalidSpec {
            reason: "not an MLP spec".into(),
        }),
    }
}

pub(crate) fn param_specs(spec: &ModelSpec) -> Vec<(String, Vec<usize>, Init)> {
    let Ok((v, c, e, hidden)) = sizes(spec) else {
        return Vec::new();
    };
    let mut out = vec![("embed".to_string(), vec![v, e], Init::Uniform(EMBED_BOUND))];
    let mut width = c.saturating_mul(e);
    for (l, &h) in hidden.iter().enumerate() {
        out.push((
            format!("hidden.{l}.weight"),
            vec![width, h],
            Init::Uniform(fan_in_bound(width)),
        ));
        out.push((format!("hidden.{l}.bias"), vec![h], Init::Zeros));
        width = h;
    }
    out.push((
        "out.weight".into(),
        vec![width, v],
        Init::Uniform(fan_in_bound(width)),
    ));
    out.push(("out.bias".into(), vec![v], Init::Zeros));
    out
}

/// Appends the MLP's forward (and with `backward`, its backward) nodes; returns the loss
/// and, with `backward`, one gradient per parameter in parameter order.
pub(crate) fn build(
    spec: &ModelSpec,
    batch: usize,
    b: &mut Builder,
    backward: bool,
) -> Result<(ValueRef, Vec<ValueRef>), ModelError> {
    let (v, c, e, hidden) = sizes(spec)?;
    let p = |i: usize| ValueRef::Param(i as u32);
    let emb = b.op(
        OpKind::Embedding { vocab: v, dim: e },
        &[p(0), ValueRef::Input],
    );
    let mut x = b.op(
        OpKind::Reshape {
            shape: vec![batch, c * e],
        },
        &[emb],
    );
    // Each layer's input is what the worker commits of the forward pass.
    b.boundary(x);
    // (layer input, pre-activation) of each hidden layer, for the backward pass.
    let mut saved = Vec::with_capacity(hidden.len());
    for l in 0..hidden.len() {
        let (w, bias) = (p(1 + 2 * l), p(2 + 2 * l));
        let z = b.op(matmul(false, false), &[x, w]);
        let z = b.op(OpKind::AddBias, &[z, bias]);
        saved.push((x, z));
        x = b.op(OpKind::Relu, &[z]);
        b.boundary(x);
    }
    let (wo, bo) = (p(1 + 2 * hidden.len()), p(2 + 2 * hidden.len()));
    let logits = b.op(matmul(false, false), &[x, wo]);
    let logits = b.op(OpKind::AddBias, &[logits, bo]);
    let (loss, probs) = b.op2(OpKind::SoftmaxCrossEntropy, &[logits, ValueRef::Target]);
    if !backward {
        return Ok((loss, Vec::new()));
    }
    let n_params = 3 + 2 * hidden.len();
    let mut grads = vec![ValueRef::Input; n_params];
    let dlogits = b.op(
        OpKind::SoftmaxCrossEntropyBackward,
        &[probs, ValueRef::Target],
    );
    grads[n_params - 1] = b.op(OpKind::BiasBackward, &[dlogits]);
    grads[n_params - 2] = b.op(matmul(true, false), &[x, dlogits]);
    let mut dx = b.op(matmul(false, true), &[dlogits, wo]);
    for (l, &(xin, z)) in saved.iter().enumerate().rev() {
        let dz = b.op(OpKind::ReluBackward, &[z, dx]);
        grads[2 + 2 * l] = b.op(OpKind::BiasBackward, &[dz]);
        grads[1 + 2 * l] = b.op(matmul(true, false), &[xin, dz]);
        dx = b.op(matmul(false, true), &[dz, p(1 + 2 * l)]);
    }
    let de = b.op(
        OpKind::Reshape {
            shape: vec![batch * c, e],
        },
        &[dx],
    );
    grads[0] = b.op(
        OpKind::EmbeddingBackward { vocab: v, dim: e },
        &[ValueRef::Input, de],
    );
    Ok((loss, grads))
}

fn matmul(transpose_a: bool, transpose_b: bool) -> OpKind {
    OpKind::MatMul {
        transpose_a,
        transpose_b,
    }
}
