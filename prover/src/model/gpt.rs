//! The small GPT (DESIGN.md, Model and data: model 2), from the same kernels as the MLP.
//!
//! Parameters, in order: `wte [V, d]`, `wpe [C, d]`; for each block `l`:
//! `layers.l.ln1.gamma [d]`, `ln1.beta [d]`, `attn.wq`, `attn.wk`, `attn.wv`, `attn.wo`
//! (each `[d, d]`), `ln2.gamma [d]`, `ln2.beta [d]`, `mlp.w1 [d, d_ff]`,
//! `mlp.w2 [d_ff, d]`; then `lnf.gamma [d]`, `lnf.beta [d]`, `head [d, V]`. Linear
//! layers have no biases. Each block is pre-LN: `x += attn(ln1(x))`,
//! `x += w2 relu(w1 ln2(x))`; the loss is the mean cross-entropy over every position.

use super::{Init, ModelError, ModelSpec, fan_in_bound};
use crate::graph::{Builder, ValueRef};
use crate::ops::OpKind;

/// Uniform bound of the token and position embeddings.
const EMBED_BOUND: f32 = 0.1;
/// Layer-norm epsilon.
const LN_EPS: f32 = 1e-5;
/// Parameters per block.
const PER_LAYER: usize = 10;

struct Sizes {
    vocab: usize,
    context: usize,
    d: usize,
    heads: usize,
    layers: usize,
    d_ff: usize,
}

fn sizes(spec: &ModelSpec) -> Result<Sizes, ModelError> {
    match spec {
        ModelSpec::Gpt {
            vocab,
            context,
            d_model,
            heads,
            layers,
            d_ff,
        } => Ok(Sizes {
            vocab: *vocab,
            context: *context,
            d: *d_model,
            heads: *heads,
            layers: *layers,
            d_ff: *d_ff,
        }),
        ModelSpec::Mlp { .. } => Err(ModelError::InvalidSpec {
            reason: "not a GPT spec".into(),
        }),
    }
}

pub(crate) fn param_specs(spec: &ModelSpec) -> Vec<(String, Vec<usize>, Init)> {
    let Ok(s) = sizes(spec) else {
        return Vec::new();
    };
    let d = s.d;
    let mut out = vec![
        (
            "wte".to_string(),
            vec![s.vocab, d],
            Init::Uniform(EMBED_BOUND),
        ),
        (
            "wpe".to_string(),
            vec![s.context, d],
            Init::Uniform(EMBED_BOUND),
        ),
    ];
    for l in 0..s.layers {
        let w = |n: &str, shape: Vec<usize>, init| (format!("layers.{l}.{n}"), shape, init);
        out.push(w("ln1.gamma", vec![d], Init::Ones));
        out.push(w("ln1.beta", vec![d], Init::Zeros));
        for n in ["attn.wq", "attn.wk", "attn.wv", "attn.wo"] {
            out.push(w(n, vec![d, d], Init::Uniform(fan_in_bound(d))));
        }
        out.push(w("ln2.gamma", vec![d], Init::Ones));
        out.push(w("ln2.beta", vec![d], Init::Zeros));
        out.push(w("mlp.w1", vec![d, s.d_ff], Init::Uniform(fan_in_bound(d))));
        out.push(w(
            "mlp.w2",
            vec![s.d_ff, d],
            Init::Uniform(fan_in_bound(s.d_ff)),
        ));
    }
    out.push(("lnf.gamma".into(), vec![d], Init::Ones));
    out.push(("lnf.beta".into(), vec![d], Init::Zeros));
    out.push((
        "head".into(),
        vec![d, s.vocab],
        Init::Uniform(fan_in_bound(d)),
    ));
    out
}

/// References saved by one block's forward pass for its backward pass.
struct BlockSaved {
    x: ValueRef,
    ln1: (ValueRef, ValueRef, ValueRef),
    q: ValueRef,
    k: ValueRef,
    v: ValueRef,
    p: ValueRef,
    o: ValueRef,
    x1: ValueRef,
    ln2: (ValueRef, ValueRef, ValueRef),
    f: ValueRef,
    r: ValueRef,
}

/// Appends the GPT's forward (and with `backward`, its backward) nodes; returns the loss
/// and, with `backward`, one gradient per parameter in parameter order.
pub(crate) fn build(
    spec: &ModelSpec,
    _batch: usize,
    b: &mut Builder,
    backward: bool,
) -> Result<(ValueRef, Vec<ValueRef>), ModelError> {
    let s = sizes(spec)?;
    let seq = s.context;
    let heads = s.heads;
    let p = |i: usize| ValueRef::Param(i as u32);
    let base = |l: usize| 2 + PER_LAYER * l;
    let mm = |ta: bool, tb: bool| OpKind::MatMul {
        transpose_a: ta,
        transpose_b: tb,
    };
    let tok = b.op(
        OpKind::Embedding {
            vocab: s.vocab,
            dim: s.d,
        },
        &[p(0), ValueRef::Input],
    );
    let mut x = b.op(OpKind::AddPosition { seq }, &[tok, p(1)]);
    // The residual stream between blocks is what the worker commits of the forward
    // pass (each block's input; the last block's output feeds the final norm).
    b.boundary(x);
    let mut saved = Vec::with_capacity(s.layers);
    for l in 0..s.layers {
        let i = base(l);
        let ln1 = b.op3(OpKind::LayerNorm { eps: LN_EPS }, &[x, p(i), p(i + 1)]);
        let q = b.op(mm(false, false), &[ln1.0, p(i + 2)]);
        let k = b.op(mm(false, false), &[ln1.0, p(i + 3)]);
        let v = b.op(mm(false, false), &[ln1.0, p(i + 4)]);
        let sc = b.op(OpKind::AttentionScores { heads, seq }, &[q, k]);
        let pr = b.op(OpKind::CausalSoftmax { seq }, &[sc]);
        let o = b.op(OpKind::AttentionValues { heads, seq }, &[pr, v]);
        let a = b.op(mm(false, false), &[o, p(i + 5)]);
        let x1 = b.op(OpKind::Add, &[x, a]);
        let ln2 = b.op3(OpKind::LayerNorm { eps: LN_EPS }, &[x1, p(i + 6), p(i + 7)]);
        let f = b.op(mm(false, false), &[ln2.0, p(i + 8)]);
        let r = b.op(OpKind::Relu, &[f]);
        let m = b.op(mm(false, false), &[r, p(i + 9)]);
        let x2 = b.op(OpKind::Add, &[x1, m]);
        b.boundary(x2);
        saved.push(BlockSaved {
            x,
            ln1,
            q,
            k,
            v,
            p: pr,
            o,
            x1,
            ln2,
            f,
            r,
        });
        x = x2;
    }
    let fi = base(s.layers);
    let lnf = b.op3(OpKind::LayerNorm { eps: LN_EPS }, &[x, p(fi), p(fi + 1)]);
    let logits = b.op(mm(false, false), &[lnf.0, p(fi + 2)]);
    let (loss, probs) = b.op2(OpKind::SoftmaxCrossEntropy, &[logits, ValueRef::Target]);
    if !backward {
        return Ok((loss, Vec::new()));
    }
    let mut grads = vec![ValueRef::Input; fi + 3];
    let dlogits = b.op(
        OpKind::SoftmaxCrossEntropyBackward,
        &[probs, ValueRef::Target],
    );
    grads[fi + 2] = b.op(mm(true, false), &[lnf.0, dlogits]);
    let dyf = b.op(mm(false, true), &[dlogits, p(fi + 2)]);
    let (mut dx, dgf, dbf) = b.op3(OpKind::LayerNormBackward, &[x, p(fi), lnf.1, lnf.2, dyf]);
    grads[fi] = dgf;
    grads[fi + 1] = dbf;
    for (l, sv) in saved.iter().enumerate().rev() {
        let i = base(l);
        // x2 = x1 + w2 relu(w1 ln2(x1))
        grads[i + 9] = b.op(mm(true, false), &[sv.r, dx]);
        let dr = b.op(mm(false, true), &[dx, p(i + 9)]);
        let df = b.op(OpKind::ReluBackward, &[sv.f, dr]);
        grads[i + 8] = b.op(mm(true, false), &[sv.ln2.0, df]);
        let dy2 = b.op(mm(false, true), &[df, p(i + 8)]);
        let (dx1_ln, dg2, db2) = b.op3(
            OpKind::LayerNormBackward,
            &[sv.x1, p(i + 6), sv.ln2.1, sv.ln2.2, dy2],
        );
        grads[i + 6] = dg2;
        grads[i + 7] = db2;
        let dx1 = b.op(OpKind::Add, &[dx, dx1_ln]);
        // x1 = x + wo attn(ln1(x))
        grads[i + 5] = b.op(mm(true, false), &[sv.o, dx1]);
        let dout = b.op(mm(false, true), &[dx1, p(i + 5)]);
        let (dp, dv) = b.op2(
            OpKind::AttentionValuesBackward { heads, seq },
            &[sv.p, sv.v, dout],
        );
        let ds = b.op(OpKind::CausalSoftmaxBackward { seq }, &[sv.p, dp]);
        let (dq, dk) = b.op2(
            OpKind::AttentionScoresBackward { heads, seq },
            &[sv.q, sv.k, ds],
        );
        grads[i + 2] = b.op(mm(true, false), &[sv.ln1.0, dq]);
        grads[i + 3] = b.op(mm(true, false), &[sv.ln1.0, dk]);
        grads[i + 4] = b.op(mm(true, false), &[sv.ln1.0, dv]);
        let dyq = b.op(mm(false, true), &[dq, p(i + 2)]);
        let dyk = b.op(mm(false, true), &[dk, p(i + 3)]);
        let dyv = b.op(mm(false, true), &[dv, p(i + 4)]);
        let dy1 = b.op(OpKind::Add, &[dyq, dyk]);
        let dy1 = b.op(OpKind::Add, &[dy1, dyv]);
        let (dx_ln, dg1, db1) = b.op3(
            OpKind::LayerNormBackward,
            &[sv.x, p(i), sv.ln1.1, sv.ln1.2, dy1],
        );
        grads[i] = dg1;
        grads[i + 1] = db1;
        dx = b.op(OpKind::Add, &[dx1, dx_ln]);
    }
    grads[1] = b.op(
        OpKind::AddPositionBackward {
            seq,
            context: s.context,
        },
        &[dx],
    );
    grads[0] = b.op(
        OpKind::EmbeddingBackward {
            vocab: s.vocab,
            dim: s.d,
        },
        &[ValueRef::Input, dx],
    );
    Ok((loss, grads))
}
