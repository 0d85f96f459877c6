//! Every backward operator against central finite differences of its forward operator,
//! and whole-model gradients of a tiny MLP and GPT against finite differences of the
//! loss.
//!
//! Method: for a forward output `y` and random weights `w`, the objective is
//! `L = sum(w * y)` summed in f64; the backward operator is run with `dy = w`, and each
//! input element `x_i` is compared with `(L(x_i + h) - L(x_i - h)) / 2h`. With f32
//! forward passes, `h = 1e-2` keeps both the truncation error (O(h^2)) and the rounding
//! error (about 1e-7 * |L| / h) near 1e-4, so the tolerance is
//! `2e-3 * max(1, |analytic|, |numeric|)`.

use lupus_prover::graph::{eval_loss, gradients};
use lupus_prover::model::{ModelSpec, init_params, make_batch};
use lupus_prover::ops::{OpKind, eval_op};
use lupus_prover::tensor::Tensor;

const H: f32 = 1e-2;
const TOL: f64 = 2e-3;

/// A deterministic generator of values in [-scale, scale).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / 16_777_216.0) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| self.next() * scale).collect(),
        )
        .unwrap()
    }
    /// Values at least `gap` away from zero (for ReLU, whose kink breaks differences).
    fn away_from_zero(&mut self, shape: &[usize], gap: f32) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                let v = self.next();
                if v >= 0.0 { v + gap } else { v - gap }
            })
            .collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }
}

fn objective(out: &Tensor, w: &Tensor) -> f64 {
    out.data()
        .iter()
        .zip(w.data())
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum()
}

fn with(t: &Tensor, i: usize, v: f32) -> Tensor {
    let mut d = t.data().to_vec();
    d[i] = v;
    Tensor::new(t.shape().to_vec(), d).unwrap()
}

/// Compares `grad` with finite differences of `L(inputs) = sum(w * fwd(inputs)[output])`
/// with respect to input `which`.
fn check(
    name: &str,
    fwd: &OpKind,
    output: usize,
    inputs: &[Tensor],
    which: usize,
    w: &Tensor,
    grad: &Tensor,
) {
    assert_eq!(
        grad.shape(),
        inputs[which].shape(),
        "{name}: gradient shape"
    );
    let eval = |ins: &[Tensor]| {
        let refs: Vec<&Tensor> = ins.iter().collect();
        let out = eval_op(fwd, &refs).unwrap();
        objective(&out[output], w)
    };
    for i in 0..inputs[which].len() {
        let x = inputs[which].data()[i];
        let mut plus = inputs.to_vec();
        plus[which] = with(&inputs[which], i, x + H);
        let mut minus = inputs.to_vec();
        minus[which] = with(&inputs[which], i, x - H);
        let num = (eval(&plus) - eval(&minus)) / (2.0 * H as f64);
        let ana = grad.data()[i] as f64;
        let scale = 1f64.max(num.abs()).max(ana.abs());
        assert!(
            (num - ana).abs() <= TOL * scale,
            "{name}: d/dinput{which}[{i}] analytic {ana} vs numeric {num}"
        );
    }
}

fn run(kind: &OpKind, inputs: &[&Tensor]) -> Vec<Tensor> {
    eval_op(kind, inputs).unwrap()
}

fn mm(ta: bool, tb: bool) -> OpKind {
    OpKind::MatMul {
        transpose_a: ta,
        transpose_b: tb,
    }
}

#[test]
fn matmul_backward() {
    let mut r = Rng(1);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (m, k, n) = (3, 4, 5);
        let a_shape = if ta { [k, m] } else { [m, k] };
        let b_shape = if tb { [n, k] } else { [k, n] };
        let a = r.tensor(&a_shape, 1.0);
        let b = r.tensor(&b_shape, 1.0);
        let w = r.tensor(&[m, n], 1.0);
        // dA = w B^T (as [m, k]), dB = A^T w (as [k, n]); transposed storage transposes
        // the gradient back with the same operator.
        let da = if ta {
            run(&mm(tb, true), &[&b, &w])
        } else {
            run(&mm(false, !tb), &[&w, &b])
        };
        let db = if tb {
            run(&mm(true, ta), &[&w, &a])
        } else {
            run(&mm(!ta, false), &[&a, &w])
        };
        let fwd = mm(ta, tb);
        check("matmul", &fwd, 0, &[a.clone(), b.clone()], 0, &w, &da[0]);
        check("matmul", &fwd, 0, &[a, b], 1, &w, &db[0]);
    }
}

#[test]
fn embedding_backward() {
    let mut r = Rng(2);
    let table = r.tensor(&[5, 3], 1.0);
    let ids = Tensor::from_ids(vec![2, 3], &[0, 4, 4, 1, 0, 4]).unwrap();
    let w = r.tensor(&[6, 3], 1.0);
    let fwd = OpKind::Embedding { vocab: 5, dim: 3 };
    let g = run(&OpKind::EmbeddingBackward { vocab: 5, dim: 3 }, &[&ids, &w]);
    check("embedding", &fwd, 0, &[table, ids], 0, &w, &g[0]);
}

#[test]
fn bias_relu_add_and_position_backward() {
    let mut r = Rng(3);
    let x = r.tensor(&[4, 3], 1.0);
    let b = r.tensor(&[3], 1.0);
    let w = r.tensor(&[4, 3], 1.0);
    let db = run(&OpKind::BiasBackward, &[&w]);
    check(
        "add_bias",
        &OpKind::AddBias,
        0,
        &[x.clone(), b.clone()],
        1,
        &w,
        &db[0],
    );
    check("add_bias", &OpKind::AddBias, 0, &[x.clone(), b], 0, &w, &w);
    let y = r.tensor(&[4, 3], 1.0);
    check("add", &OpKind::Add, 0, &[x.clone(), y.clone()], 0, &w, &w);
    check("add", &OpKind::Add, 0, &[x, y], 1, &w, &w);

    let z = r.away_from_zero(&[4, 3], 0.05);
    let dz = run(&OpKind::ReluBackward, &[&z, &w]);
    check("relu", &OpKind::Relu, 0, &[z], 0, &w, &dz[0]);

    let x = r.tensor(&[6, 2], 1.0);
    let table = r.tensor(&[4, 2], 1.0);
    let w = r.tensor(&[6, 2], 1.0);
    let fwd = OpKind::AddPosition { seq: 3 };
    let dt = run(&OpKind::AddPositionBackward { seq: 3, context: 4 }, &[&w]);
    check(
        "add_position",
        &fwd,
        0,
        &[x.clone(), table.clone()],
        1,
        &w,
        &dt[0],
    );
    check("add_position", &fwd, 0, &[x, table], 0, &w, &w);
}

#[test]
fn layer_norm_backward() {
    let mut r = Rng(4);
    let x = r.tensor(&[3, 6], 2.0);
    let gamma = r.tensor(&[6], 1.0);
    let beta = r.tensor(&[6], 1.0);
    let w = r.tensor(&[3, 6], 1.0);
    let fwd = OpKind::LayerNorm { eps: 1e-5 };
    let out = run(&fwd, &[&x, &gamma, &beta]);
    let g = run(
        &OpKind::LayerNormBackward,
        &[&x, &gamma, &out[1], &out[2], &w],
    );
    let ins = [x, gamma, beta];
    check("layer_norm", &fwd, 0, &ins, 0, &w, &g[0]);
    check("layer_norm", &fwd, 0, &ins, 1, &w, &g[1]);
    check("layer_norm", &fwd, 0, &ins, 2, &w, &g[2]);
}

#[test]
fn attention_backward() {
    let mut r = Rng(5);
    let (batch, seq, heads, hd) = (2, 4, 2, 3);
    let width = heads * hd;
    let q = r.tensor(&[batch * seq, width], 1.0);
    let k = r.tensor(&[batch * seq, width], 1.0);
    let v = r.tensor(&[batch * seq, width], 1.0);
    let rows = batch * heads * seq;

    // Scores: only entries on or below the diagonal carry weight.
    let mut w = r.tensor(&[rows, seq], 1.0).into_data();
    for (i, x) in w.iter_mut().enumerate() {
        if i % seq > (i / seq) % seq {
            *x = 0.0;
        }
    }
    let w = Tensor::new(vec![rows, seq], w).unwrap();
    let fwd = OpKind::AttentionScores { heads, seq };
    let g = run(
        &OpKind::AttentionScoresBackward { heads, seq },
        &[&q, &k, &w],
    );
    check(
        "attention_scores",
        &fwd,
        0,
        &[q.clone(), k.clone()],
        0,
        &w,
        &g[0],
    );
    check(
        "attention_scores",
        &fwd,
        0,
        &[q.clone(), k.clone()],
        1,
        &w,
        &g[1],
    );

    // Causal softmax of real scores.
    let s = run(&fwd, &[&q, &k]).remove(0);
    let sm = OpKind::CausalSoftmax { seq };
    let p = run(&sm, &[&s]).remove(0);
    let ds = run(&OpKind::CausalSoftmaxBackward { seq }, &[&p, &w]);
    check("causal_softmax", &sm, 0, &[s], 0, &w, &ds[0]);

    // Values.
    let wo = r.tensor(&[batch * seq, width], 1.0);
    let av = OpKind::AttentionValues { heads, seq };
    let g = run(
        &OpKind::AttentionValuesBackward { heads, seq },
        &[&p, &v, &wo],
    );
    // Only the causal part of p is an input the forward reads.
    let mut dp = g[0].clone().into_data();
    for (i, x) in dp.iter_mut().enumerate() {
        if i % seq > (i / seq) % seq {
            assert_eq!(*x, 0.0);
        }
    }
    let dp = Tensor::new(vec![rows, seq], dp).unwrap();
    check(
        "attention_values",
        &av,
        0,
        &[p.clone(), v.clone()],
        0,
        &wo,
        &dp,
    );
    check("attention_values", &av, 0, &[p, v], 1, &wo, &g[1]);
}

#[test]
fn softmax_cross_entropy_backward() {
    let mut r = Rng(6);
    let logits = r.tensor(&[4, 5], 3.0);
    let targets = Tensor::from_ids(vec![4], &[0, 4, 2, 2]).unwrap();
    let fwd = OpKind::SoftmaxCrossEntropy;
    let out = run(&fwd, &[&logits, &targets]);
    let g = run(&OpKind::SoftmaxCrossEntropyBackward, &[&out[1], &targets]);
    let one = Tensor::new(vec![1], vec![1.0]).unwrap();
    check(
        "softmax_cross_entropy",
        &fwd,
        0,
        &[logits, targets],
        0,
        &one,
        &g[0],
    );
}

/// Whole-model check: the gradient of every parameter element against finite
/// differences of the mean loss. `h` is larger here than per operator because ReLU
/// kinks are rare at this size, and the loss is a single f32.
fn check_model(spec: &ModelSpec, windows: &[Vec<u32>], h: f32) {
    // Zero biases can put a ReLU exactly on its kink (a whole row of dead units feeds
    // the next layer exactly 0), where the derivative is a convention; a little noise
    // on every parameter moves all pre-activations off it.
    let mut rng = Rng(10);
    let params: Vec<Tensor> = init_params(spec, [9; 32])
        .unwrap()
        .into_iter()
        .map(|t| {
            let noise = rng.tensor(t.shape(), 0.05);
            let data = t
                .data()
                .iter()
                .zip(noise.data())
                .map(|(a, b)| a + b)
                .collect();
            Tensor::new(t.shape().to_vec(), data).unwrap()
        })
        .collect();
    let batch = make_batch(spec, windows).unwrap();
    let (_, grads) = gradients(spec, &params, &batch).unwrap();
    assert_eq!(grads.len(), params.len());
    let mut checked = 0;
    let mut bad = Vec::new();
    for (pi, p) in params.iter().enumerate() {
        assert_eq!(grads[pi].shape(), p.shape());
        // A strided sample keeps the test fast while touching every tensor.
        let stride = (p.len() / 7).max(1);
        for i in (0..p.len()).step_by(stride) {
            let ana = grads[pi].data()[i] as f64;
            // A ReLU kink crossed by +-h spoils a difference; a smaller step that agrees
            // shows the gradient was right. The tolerance grows with the f32 rounding of
            // the loss (a few ULP of a value near 2) divided by 2h.
            let agrees = |h: f32| {
                let x = p.data()[i];
                let mut plus = params.clone();
                plus[pi] = with(p, i, x + h);
                let mut minus = params.clone();
                minus[pi] = with(p, i, x - h);
                let lp = eval_loss(spec, &plus, &batch).unwrap() as f64;
                let lm = eval_loss(spec, &minus, &batch).unwrap() as f64;
                let num = (lp - lm) / (2.0 * h as f64);
                let tol = 2e-3 + 1e-6 / h as f64 + 2e-2 * ana.abs();
                ((num - ana).abs() <= tol, num)
            };
            let (ok, num) = agrees(h);
            if !ok && !agrees(h / 8.0).0 {
                bad.push(format!("param {pi}[{i}]: analytic {ana} vs numeric {num}"));
            }
            checked += 1;
        }
    }
    assert!(checked > 20);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn whole_mlp_gradients() {
    let spec = ModelSpec::Mlp {
        vocab: 6,
        context: 3,
        embed: 4,
        hidden: vec![8, 7],
    };
    check_model(
        &spec,
        &[vec![0, 1, 2, 3], vec![5, 4, 3, 2], vec![1, 1, 0, 5]],
        5e-3,
    );
}

#[test]
fn whole_gpt_gradients() {
    let spec = ModelSpec::Gpt {
        vocab: 6,
        context: 4,
        d_model: 8,
        heads: 2,
        layers: 2,
        d_ff: 12,
    };
    check_model(&spec, &[vec![0, 1, 2, 3, 4], vec![5, 4, 3, 2, 1]], 1e-3);
}

/// The logits `graph::logits` returns are the ones the loss is computed from: their
/// mean softmax cross-entropy against the targets is the forward loss, for both
/// models (the GPT's rows are every window's every position).
#[test]
fn logits_give_the_forward_loss() {
    use lupus_prover::graph::logits;
    let gpt = ModelSpec::Gpt {
        vocab: 11,
        context: 5,
        d_model: 8,
        heads: 2,
        layers: 2,
        d_ff: 16,
    };
    let mlp = ModelSpec::Mlp {
        vocab: 11,
        context: 5,
        embed: 4,
        hidden: vec![8],
    };
    let windows = vec![vec![0, 1, 2, 3, 4, 5], vec![5, 4, 3, 2, 1, 10]];
    for spec in [gpt, mlp] {
        let params = init_params(&spec, [4; 32]).unwrap();
        let batch = make_batch(&spec, &windows).unwrap();
        let l = logits(&spec, &params, &batch).unwrap();
        let v = spec.vocab();
        let targets = batch.targets.data();
        assert_eq!(l.data().len(), targets.len() * v, "{spec:?}");
        let mut total = 0f64;
        for (row, t) in l.data().chunks(v).zip(targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|x| f64::from(x - max).exp()).sum();
            total += z.ln() - f64::from(row[*t as usize] - max);
        }
        let mean = total / targets.len() as f64;
        let loss = f64::from(eval_loss(&spec, &params, &batch).unwrap());
        assert!((mean - loss).abs() < 1e-4, "{spec:?}: {mean} vs {loss}");
    }
}
