//! The known-answer suite a worker's device runs at start (DESIGN.md, Determinism).
//!
//! Every kernel and operator runs on inputs generated from a fixed seed (a blake3 XOF),
//! including awkward matrix shapes, sweeps of the `det.rs` functions over edge cases
//! and subnormals, products whose intermediates underflow, and one full MLP and GPT
//! training step. Each case is hashed. A device whose hashes all equal [`EXPECTED`] is
//! in the **exact** class (verdicts compare hashes); any difference puts it in the
//! **tolerant** class, with the names of the cases that differ.
//!
//! [`EXPECTED`] is a regression pin: the hashes were produced by running this suite once
//! with the reference CPU implementation (x86_64, the code in this crate) and written
//! in. A test asserts that the native build still reproduces them, so any change to a
//! kernel's bits is a visible, deliberate change of this table.

use crate::det;
use crate::graph::{OpRecord, train_step};
use crate::kernels::{self, MatMulDims};
use crate::model::{ModelError, ModelSpec, init_params, make_batch};
use crate::ops::{OpKind, eval_op};
use crate::optim::{AdamW, OuterNesterov, TrainState, merge_deltas, outer_step};
use crate::quant::quantise_delta;
use crate::tensor::Tensor;

/// One case of the suite and the hash of what it computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KatResult {
    pub name: &'static str,
    pub hash: [u8; 32],
}

/// How a device compares with the reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceClass {
    /// Every case gave the reference bits.
    Exact,
    /// These cases differ from the reference (or are missing).
    Tolerant { mismatches: Vec<&'static str> },
}

/// Deterministic inputs: the blake3 XOF of `derive_key("lupus kat v1")` over the case
/// name.
///
/// Public so that a device's own suite (the WGSL one in `lupus-worker`) runs on exactly
/// these inputs: a copy that drifted would compare other inputs against the pinned hashes.
pub struct Gen {
    xof: blake3::OutputReader,
}

impl Gen {
    /// The generator of one case.
    pub fn new(case: &str) -> Gen {
        let mut h = blake3::Hasher::new_derive_key("lupus kat v1");
        h.update(case.as_bytes());
        Gen {
            xof: h.finalize_xof(),
        }
    }
    /// The next 32 bits.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.xof.fill(&mut b);
        u32::from_le_bytes(b)
    }
    /// Uniform in `[lo, hi)` (exact 24-bit grid).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.u32() >> 8) as f32 * det::TWO_POW_MINUS_24;
        lo + (hi - lo) * u
    }
    /// `n` uniform values in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// A tensor of uniform values in `[lo, hi)`.
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor, ModelError> {
        let n = shape.iter().product();
        let data = self.vec(n, lo, hi);
        Ok(Tensor::new(shape.to_vec(), data)?)
    }
}

/// Hashes raw `f32` bit patterns under a case name.
pub fn hash_bits(name: &str, xs: &[f32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("lupus kat result v1");
    h.update(name.as_bytes());
    for &x in xs {
        h.update(&det::canonical_bits(x).to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// Hashes a list of tensors (their canonical hashes, in order) under a case name.
pub fn hash_tensors<'a>(name: &str, ts: impl IntoIterator<Item = &'a Tensor>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("lupus kat result v1");
    h.update(name.as_bytes());
    for t in ts {
        h.update(&t.hash());
    }
    *h.finalize().as_bytes()
}

/// Special inputs every scalar function is run on.
const SPECIALS: [f32; 22] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    1e-45,
    -1e-45,
    1e-40,
    1.17e-38,
    1.1754944e-38,
    f32::MIN_POSITIVE,
    f32::MAX,
    f32::MIN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    -87.34,
    -87.33,
    88.0,
    88.5,
    1e30,
];

/// The scalar sweep: specials, a stride through positive and negative bit patterns,
/// and a dense uniform range.
pub fn scalar_inputs(case: &str, lo: f32, hi: f32) -> Vec<f32> {
    let mut xs = SPECIALS.to_vec();
    xs.extend((0u32..0x7f80_0000).step_by(0x0001_0f01).map(f32::from_bits));
    xs.extend(
        (0u32..0x7f80_0000)
            .step_by(0x0003_3333)
            .map(|b| -f32::from_bits(b)),
    );
    let mut g = Gen::new(case);
    xs.extend(g.vec(4096, lo, hi));
    xs
}

fn scalar_case(name: &'static str, lo: f32, hi: f32, f: fn(f32) -> f32) -> KatResult {
    let out: Vec<f32> = scalar_inputs(name, lo, hi).into_iter().map(f).collect();
    KatResult {
        name,
        hash: hash_bits(name, &out),
    }
}

/// The matrix products of the suite: awkward shapes, every transpose combination.
/// The matmul cases: name, m, k, n, transpose a, transpose b.
pub const MATMUL_CASES: [(&str, usize, usize, usize, bool, bool); 10] = [
    ("matmul.1x1x1", 1, 1, 1, false, false),
    ("matmul.7x13x5", 7, 13, 5, false, false),
    ("matmul.7x13x5.ta", 7, 13, 5, true, false),
    ("matmul.7x13x5.tb", 7, 13, 5, false, true),
    ("matmul.7x13x5.tab", 7, 13, 5, true, true),
    ("matmul.17x33x31", 17, 33, 31, false, false),
    ("matmul.5x300x19", 5, 300, 19, false, false),
    ("matmul.64x64x64", 64, 64, 64, false, false),
    ("matmul.65x17x129.tb", 65, 17, 129, false, true),
    ("matmul.33x70x47.ta", 33, 70, 47, true, false),
];

fn matmul_case(name: &'static str, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> KatResult {
    let mut g = Gen::new(name);
    let a = g.vec(m * k, -2.0, 2.0);
    let b = g.vec(k * n, -2.0, 2.0);
    let d = MatMulDims {
        m,
        k,
        n,
        transpose_a: ta,
        transpose_b: tb,
    };
    KatResult {
        name,
        hash: hash_bits(name, &kernels::matmul(&a, &b, d)),
    }
}

/// Products whose terms and partial sums fall into the subnormal range: a device that
/// flushes intermediates differs here.
fn matmul_subnormal_case() -> KatResult {
    let name = "matmul.subnormal";
    let mut g = Gen::new(name);
    let a = g.vec(8 * 16, 1e-20, 4e-19);
    let b: Vec<f32> = g.vec(16 * 8, -4e-19, 4e-19);
    let d = MatMulDims {
        m: 8,
        k: 16,
        n: 8,
        transpose_a: false,
        transpose_b: false,
    };
    KatResult {
        name,
        hash: hash_bits(name, &kernels::matmul(&a, &b, d)),
    }
}

fn op_case(name: &'static str, kind: &OpKind, inputs: &[Tensor]) -> KatResult {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let hash = match eval_op(kind, &refs) {
        Ok(out) => hash_tensors(name, &out),
        // An error is itself an answer (and never the reference one).
        Err(e) => hash_bits(&format!("{name} error {e}"), &[]),
    };
    KatResult { name, hash }
}

fn ops_cases() -> Result<Vec<KatResult>, ModelError> {
    let mut out = Vec::new();
    let mut g = Gen::new("ops");
    let logits = g.tensor(&[6, 11], -8.0, 8.0)?;
    let targets = Tensor::from_ids(vec![6], &[0, 10, 3, 3, 7, 1])?;
    out.push(op_case(
        "op.softmax_cross_entropy",
        &OpKind::SoftmaxCrossEntropy,
        &[logits.clone(), targets.clone()],
    ));
    let probs = output(
        eval_op(&OpKind::SoftmaxCrossEntropy, &[&logits, &targets])?,
        1,
    )?;
    out.push(op_case(
        "op.softmax_cross_entropy_backward",
        &OpKind::SoftmaxCrossEntropyBackward,
        &[probs, targets],
    ));
    let x = g.tensor(&[5, 24], -3.0, 3.0)?;
    let gamma = g.tensor(&[24], 0.5, 1.5)?;
    let beta = g.tensor(&[24], -0.5, 0.5)?;
    let ln = OpKind::LayerNorm { eps: 1e-5 };
    out.push(op_case(
        "op.layer_norm",
        &ln,
        &[x.clone(), gamma.clone(), beta.clone()],
    ));
    let stats = eval_op(&ln, &[&x, &gamma, &beta])?;
    let (mean, rstd) = (output(stats.clone(), 1)?, output(stats, 2)?);
    let dy = g.tensor(&[5, 24], -1.0, 1.0)?;
    out.push(op_case(
        "op.layer_norm_backward",
        &OpKind::LayerNormBackward,
        &[x, gamma, mean, rstd, dy],
    ));
    let (heads, seq) = (3, 5);
    let q = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let k = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let v = g.tensor(&[2 * seq, 12], -2.0, 2.0)?;
    let sc = OpKind::AttentionScores { heads, seq };
    out.push(op_case("op.attention_scores", &sc, &[q.clone(), k.clone()]));
    let s = output(eval_op(&sc, &[&q, &k])?, 0)?;
    let sm = OpKind::CausalSoftmax { seq };
    out.push(op_case("op.causal_softmax", &sm, std::slice::from_ref(&s)));
    let p = output(eval_op(&sm, &[&s])?, 0)?;
    let av = OpKind::AttentionValues { heads, seq };
    out.push(op_case("op.attention_values", &av, &[p.clone(), v.clone()]));
    let dout = g.tensor(&[2 * seq, 12], -1.0, 1.0)?;
    out.push(op_case(
        "op.attention_values_backward",
        &OpKind::AttentionValuesBackward { heads, seq },
        &[p.clone(), v, dout],
    ));
    let dp = g.tensor(&[2 * heads * seq, seq], -1.0, 1.0)?;
    out.push(op_case(
        "op.causal_softmax_backward",
        &OpKind::CausalSoftmaxBackward { seq },
        &[p, dp.clone()],
    ));
    out.push(op_case(
        "op.attention_scores_backward",
        &OpKind::AttentionScoresBackward { heads, seq },
        &[q, k, dp],
    ));
    let table = g.tensor(&[9, 4], -1.0, 1.0)?;
    let ids = Tensor::from_ids(vec![2, 3], &[8, 0, 8, 3, 3, 1])?;
    out.push(op_case(
        "op.embedding",
        &OpKind::Embedding { vocab: 9, dim: 4 },
        &[table, ids.clone()],
    ));
    let dy = g.tensor(&[6, 4], -1.0, 1.0)?;
    out.push(op_case(
        "op.embedding_backward",
        &OpKind::EmbeddingBackward { vocab: 9, dim: 4 },
        &[ids, dy],
    ));
    let param = g.tensor(&[7, 5], -1.0, 1.0)?;
    let grad = g.tensor(&[7, 5], -0.1, 0.1)?;
    let m = g.tensor(&[7, 5], -0.01, 0.01)?;
    let v = g.tensor(&[7, 5], 0.0, 1e-4)?;
    out.push(op_case(
        "op.adamw_update",
        &OpKind::AdamWUpdate {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 17,
        },
        &[param, grad, m, v],
    ));
    Ok(out)
}

/// Output `i` of an operator's results.
fn output(mut outs: Vec<Tensor>, i: usize) -> Result<Tensor, ModelError> {
    if i < outs.len() {
        Ok(outs.swap_remove(i))
    } else {
        Err(ModelError::Graph {
            detail: format!("known-answer case expected output {i}"),
        })
    }
}

/// The delta quantisation and outer-optimizer cases. They run on the host in every
/// suite (a device suite included), so a device reports exactly these.
pub fn quant_and_outer_cases() -> Result<Vec<KatResult>, ModelError> {
    let mut g = Gen::new("delta");
    let base = vec![g.tensor(&[13, 7], -1.0, 1.0)?, g.tensor(&[7], -1.0, 1.0)?];
    let trained = base
        .iter()
        .map(|t| {
            let d = g.vec(t.len(), -0.02, 0.02);
            let data = t.data().iter().zip(d).map(|(a, b)| a + b).collect();
            Tensor::new(t.shape().to_vec(), data)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let q = quantise_delta(&base, &trained)?;
    out.push(KatResult {
        name: "quant.delta",
        hash: q.hash(),
    });
    let deq = q.dequantise()?;
    let other = deq
        .iter()
        .map(|t| g.tensor(t.shape(), -0.5, 0.5))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge_deltas(&[(deq, 2.0), (other, 1.0)], 0.5)?;
    out.push(KatResult {
        name: "optim.merge_deltas",
        hash: hash_tensors("optim.merge_deltas", &merged),
    });
    let mut buf = Vec::new();
    let mut params = base;
    for _ in 0..3 {
        params = outer_step(&params, &mut buf, &merged, &OuterNesterov::default())?;
    }
    out.push(KatResult {
        name: "optim.outer_nesterov",
        hash: hash_tensors("optim.outer_nesterov", params.iter().chain(&buf)),
    });
    Ok(out)
}

/// One full training step (two, so the second starts from non-zero moments), hashing
/// every recorded op output, the loss and the final state.
fn step_case(name: &'static str, spec: &ModelSpec) -> KatResult {
    let mut g = Gen::new(name);
    let mut h = blake3::Hasher::new_derive_key("lupus kat result v1");
    h.update(name.as_bytes());
    let mut run = || -> Result<(), ModelError> {
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
            let out = train_step(spec, &opt, &state, &batch)?;
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
        Ok(())
    };
    if let Err(e) = run() {
        h.update(format!("error {e}").as_bytes());
    }
    KatResult {
        name,
        hash: *h.finalize().as_bytes(),
    }
}

/// The MLP of the suite's training-step case.
pub fn kat_mlp() -> ModelSpec {
    ModelSpec::Mlp {
        vocab: 29,
        context: 5,
        embed: 6,
        hidden: vec![33, 17],
    }
}

/// The GPT of the suite's training-step case.
pub fn kat_gpt() -> ModelSpec {
    ModelSpec::Gpt {
        vocab: 23,
        context: 7,
        d_model: 12,
        heads: 3,
        layers: 2,
        d_ff: 20,
    }
}

/// Runs every case, in a fixed order.
pub fn run_suite() -> Vec<KatResult> {
    let mut out = vec![
        scalar_case("det.exp", -90.0, 90.0, det::exp),
        scalar_case("det.ln", 0.0, 100.0, det::ln),
        scalar_case("det.reciprocal", -10.0, 10.0, det::reciprocal),
        scalar_case("det.rsqrt", 0.0, 100.0, det::rsqrt),
        scalar_case("det.sqrt", 0.0, 100.0, det::sqrt),
        scalar_case("det.round_ne", -1000.0, 1000.0, det::round_ne),
        scalar_case("det.ftz", -1.0, 1.0, det::ftz),
    ];
    for (name, m, k, n, ta, tb) in MATMUL_CASES {
        out.push(matmul_case(name, m, k, n, ta, tb));
    }
    out.push(matmul_subnormal_case());
    // A group that fails leaves its cases out, so they count as mismatches.
    out.extend(ops_cases().unwrap_or_default());
    out.extend(quant_and_outer_cases().unwrap_or_default());
    out.push(step_case("step.mlp", &kat_mlp()));
    out.push(step_case("step.gpt", &kat_gpt()));
    out
}

/// One digest of a whole suite run: blake3 with `derive_key("lupus kat digest v1")`
/// over each case's name length (u32 LE), name and hash, in order.
pub fn combined_digest(results: &[KatResult]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("lupus kat digest v1");
    for r in results {
        h.update(&(r.name.len() as u32).to_le_bytes());
        h.update(r.name.as_bytes());
        h.update(&r.hash);
    }
    *h.finalize().as_bytes()
}

/// The [`combined_digest`] of the pinned reference hashes: what an exact-class run
/// digests to.
pub fn expected_digest() -> [u8; 32] {
    static DIGEST: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    *DIGEST.get_or_init(pinned_digest)
}

fn pinned_digest() -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("lupus kat digest v1");
    for &(name, hex) in EXPECTED {
        h.update(&(name.len() as u32).to_le_bytes());
        h.update(name.as_bytes());
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        h.update(&bytes);
    }
    *h.finalize().as_bytes()
}

/// The class a task's known-answer report decides (its final leaf's `kat`): exact
/// when the report is the pinned reference's [`expected_digest`], tolerant otherwise.
/// A worker cannot prove what its device does; it signs what it reports, and a
/// tolerant report buys only the tolerant bound (`verify.tolerance`, with its drift
/// check), calibrated on honest devices' spread.
pub fn decided_class(kat: &crate::merkle::Digest) -> crate::verify::DeviceClass {
    if kat.0 == expected_digest() {
        crate::verify::DeviceClass::Exact
    } else {
        crate::verify::DeviceClass::Tolerant
    }
}

/// The known answer of the piecewise tensor hash that proof of replay digests
/// ([`Tensor::hash_pieces`]): a tensor of 7 pieces, values exact in `f32`, its root and
/// the blake3 hash of its pieces' chaining values, written in from the native build.
/// Checked natively (a unit test) and in the browser (`worker-wasm/tests/browser.rs`):
/// a browser verifier's replay digest must be the native referee's bits. `Err` names
/// what differs.
pub fn hash_pieces_known_answer() -> Result<(), String> {
    const ROOT: &str = "2e8a2e648cd5f6f2a1ee0df4afa60312dc1192abcb87e5125078c483adf12f47";
    const PIECES: &str = "ce1a11c6258508b4b14e30b3b6e029627e0fe3d147f3a02405b1d02fafd12bf1";
    let n = 100_003usize;
    let data = (0..n)
        .map(|i| ((i * 7919) % 65_536) as f32 / 256.0)
        .collect();
    let t = Tensor::new(vec![n], data).map_err(|e| e.to_string())?;
    let mut cvs = Vec::new();
    let root = t.hash_pieces(&mut cvs);
    let mut all = blake3::Hasher::new();
    for cv in &cvs {
        all.update(cv);
    }
    let got = (
        cvs.len(),
        to_hex(&root),
        all.finalize().to_hex().to_string(),
    );
    let want = (7, ROOT.to_owned(), PIECES.to_owned());
    if root != t.hash() || got != want {
        return Err(format!(
            "piecewise hash: got {got:?}, want {want:?} (whole-input hash {})",
            to_hex(&t.hash())
        ));
    }
    Ok(())
}

/// Lower-case hex of a hash.
pub fn to_hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a device's results with [`EXPECTED`].
pub fn check_device(results: &[KatResult]) -> DeviceClass {
    let mut mismatches = Vec::new();
    for &(name, hex) in EXPECTED {
        let ok = results
            .iter()
            .find(|r| r.name == name)
            .is_some_and(|r| to_hex(&r.hash) == hex);
        if !ok {
            mismatches.push(name);
        }
    }
    if mismatches.is_empty() {
        DeviceClass::Exact
    } else {
        DeviceClass::Tolerant { mismatches }
    }
}

/// The reference hashes (see the module docs: pinned from one reference run).
pub const EXPECTED: &[(&str, &str)] = &[
    (
        "det.exp",
        "ce2794618aeb4702286753f49e74d003dce04a058bf259ca9293216c186c5e5d",
    ),
    (
        "det.ln",
        "ee2862d75f7ee371836415db88e4e314af99f1d60a7876cf754de6a396da371d",
    ),
    (
        "det.reciprocal",
        "948ef2b3e68e2afc6c88705f513d711642a27a45c18e149f91053ebbafd1bfd9",
    ),
    (
        "det.rsqrt",
        "7eb1143be28448a5b0306b61322e1ce41706b9f17b84a59ab6bed894cf5432cd",
    ),
    (
        "det.sqrt",
        "96e7fea6f9ea402825375e7115e28d7fbb3a609c25a4e0dccdfeed265ea27b5d",
    ),
    (
        "det.round_ne",
        "b164d411f2f5a581706a907072d93e913bac9ce740b27c0149bbb34e7b89bd7e",
    ),
    (
        "det.ftz",
        "8a15a9701a3302a1bad0fa80d70af9c3a8e0910ea72deb295a4de20b3fa57c11",
    ),
    (
        "matmul.1x1x1",
        "fee3821f577a266c6213e8eb83f53ac098c7bed8baf1471e8bd6d11450963fe4",
    ),
    (
        "matmul.7x13x5",
        "40fe26781647cee476fbb1948b5b2408b2bda4580c2e9c6d880e6dfed74f0e67",
    ),
    (
        "matmul.7x13x5.ta",
        "86cbed1430ca11f5e3b8e935b16153220dc284f73d2eb5d00752ce72939ea9c5",
    ),
    (
        "matmul.7x13x5.tb",
        "3523dd82ae028eab780f625c3965fc5b31bd40c00ce63ccc873c3d599dcf9cd7",
    ),
    (
        "matmul.7x13x5.tab",
        "b079787d6ab64a1faa75a41da76a81ef66229364536f22890f4c5f4d3f1420ed",
    ),
    (
        "matmul.17x33x31",
        "6670baa401368d87962b5c871d15d9bce3993b5272976cb23e41fabc5ffe9d73",
    ),
    (
        "matmul.5x300x19",
        "abf77271ddb73a806f56ad22895fd15f2be6be6961750f0bf86951bfc0edf8c1",
    ),
    (
        "matmul.64x64x64",
        "127f983251916faa0c27a16073fa822cca29e147427a1261051dc4b010170562",
    ),
    (
        "matmul.65x17x129.tb",
        "ba1d63ea1d89b1469209fc0445d31dce510faeafee1d036973d276627716a038",
    ),
    (
        "matmul.33x70x47.ta",
        "dfd8aebd14bcc7af9de9d0c602ebd6405945cbb4d37ab31fcb8b0b826f73d2d1",
    ),
    (
        "matmul.subnormal",
        "a95f98799806dde1f73e11cd350cfbcf03a39212a724cf8e9259b2bff1215767",
    ),
    (
        "op.softmax_cross_entropy",
        "361f0010b7ca7bf75e24a7057742458a04a3f6ccf66b98f548db359b66069bf0",
    ),
    (
        "op.softmax_cross_entropy_backward",
        "df5fa7898eecb8a3348cb663595ca8f1800188e7a3c97e07d239b9ac74cd10a9",
    ),
    (
        "op.layer_norm",
        "f9db22e68778ae93684c16b8882048709315bf9dda83df18fb720723a92c71c3",
    ),
    (
        "op.layer_norm_backward",
        "350cdf9fd3c1b121ac24f67af9ca23ff4e7d55b36b4fdf935b241e8e076293b0",
    ),
    (
        "op.attention_scores",
        "4192474c9733681bb98e74510f71341cc09315fc992c423a37f75504bbce38ac",
    ),
    (
        "op.causal_softmax",
        "7b709ad200bebfaf06e1d764fbac0ba649c2c23756cc694d0e6b383f19a803f6",
    ),
    (
        "op.attention_values",
        "a3ad860bdb65a1fcc0697ecb846106a0d91c979411a2d03375e49f0b2fdf0ef8",
    ),
    (
        "op.attention_values_backward",
        "95d4bcb5486fe17339056c8f23b1a4e92fcd4c132af2841fb366e092fd6d4ed4",
    ),
    (
        "op.causal_softmax_backward",
        "bead342387c1ba419373800e38690b7bf275612f4b1988547fc38c8193653e5e",
    ),
    (
        "op.attention_scores_backward",
        "7991fc839410629e8cc5b24017c19e6cfffe07223e553b350c875209d1d9551a",
    ),
    (
        "op.embedding",
        "81c9fcd11cac8c9c813692b1932041a2dd0e41efee832d3cf8a72d61b688a9ce",
    ),
    (
        "op.embedding_backward",
        "52281c48554afa4e0c31d2177cae8f78a0fe36042c31636844376e1e1ea2c467",
    ),
    (
        "op.adamw_update",
        "7389883f0dd430bdc409f312820efb2e35c7b0a0b1a62f82f4dec9d9d4f2e1df",
    ),
    (
        "quant.delta",
        "453b92f1b7af0b0b4f66bd38c1a496deacf9e7b41383fe0eb78e98ec4706c359",
    ),
    (
        "optim.merge_deltas",
        "e2edcf4b9eedc1cb0e5e6d752c082e59918d9f36cd00c2af4832292296c276e1",
    ),
    (
        "optim.outer_nesterov",
        "d6676c8dd5ad4b43585e0e830c77153ebcb6dc15b71a1ef833736e842ce55275",
    ),
    (
        "step.mlp",
        "001fdffca22b274ee364d4c88b40b235fd0f7d22867b89e6dfdd44a5dfc29d14",
    ),
    (
        "step.gpt",
        "7745ae6cc45f5074fe027a5a0a733cb638eaae459a4f37f88a84251fba662b3b",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_run_matches_the_pinned_reference() {
        let results = run_suite();
        for r in &results {
            println!("    (\"{}\", \"{}\"),", r.name, to_hex(&r.hash));
        }
        let names: Vec<&str> = results.iter().map(|r| r.name).collect();
        let pinned: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, pinned, "the suite's cases changed; re-pin EXPECTED");
        assert_eq!(check_device(&results), DeviceClass::Exact);
        assert_eq!(combined_digest(&results), expected_digest());
    }

    #[test]
    fn a_changed_or_missing_case_makes_a_device_tolerant() {
        let mut results = run_suite();
        results[3].hash[0] ^= 1;
        let removed = results.pop().map(|r| r.name);
        let DeviceClass::Tolerant { mismatches } = check_device(&results) else {
            panic!("a flipped bit must not be exact");
        };
        assert_eq!(mismatches.len(), 2);
        assert_eq!(mismatches[0], results[3].name);
        assert_eq!(Some(mismatches[1]), removed);
        assert_ne!(combined_digest(&results), combined_digest(&run_suite()));
    }
}
