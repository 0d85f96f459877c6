//! The verifier: replays challenged steps from the worker's own opened state.
//!
//! DESIGN.md ("The loop" 3-4, "Determinism", "Trace and commitment"). For each challenged
//! step `t` [`verify_opening`] checks, in this order, and rejects at the first failure:
//! 1. the opening names exactly the challenged steps and the leaves `t-1`, `t`, `H-1`, `H`,
//!    and its one multiproof leads to the committed trace root;
//! 2. the final leaf matches the commitment, `H(S_H)` matches leaf `H-1`, the opened
//!    `S_H` parameters are proven against `H(S_H)` and `quantise_delta(S_0, S_H)` hashes to
//!    the committed delta hash (so a forged delta is caught by every opening);
//! 3. `S_t` has the model's shapes and hashes to what leaf `t-1` commits (`H(S_0)` of the
//!    base model and a fresh optimizer state for `t = 0`);
//! 4. the leaf's batch hash is that of the PRF batch `(seed, t)`;
//! 5. the opened op-output commits have the leaf's op root;
//! 6. the step is replayed with `train_step`. Exact class: the tape structure must match,
//!    then the first differing op output yields a [`FraudProof::Op`], then differing loss
//!    bits a [`FraudProof::Loss`], then a differing `H(S_{t+1})` a rejection. Tolerant
//!    class: the opened `S_{t+1}` must hash to the leaf's `H(S_{t+1})` and each of its
//!    tensors lie within `verify.tolerance` (relative L2) of the replay, and the loss too;
//!    and, over the opened steps, the parameter differences from the replay must not
//!    share a direction ([`DRIFT_COSINE`], above [`DRIFT_FLOOR`]): a nudge does.
//!
//! Cost: the verifier hashes each opened `S_t` and `S_H`'s parameters and replays `m`
//! traced steps; `lupus-bench prover` measures it against the worker.
//!
//! A worker's bad opening is a [`Verdict::Reject`] with a typed [`RejectReason`]; an
//! [`Err`] means the verifier's own inputs are wrong (job, corpus, base, step list).

use serde::{Deserialize, Serialize};

use crate::data::Corpus;
use crate::fraud::{FraudProof, LossFraud, OpFraud, OpLeaves, RecomputedLeaves, TraceLeaves};
use crate::graph::{Recompute, StepOutput, ValueRef, train_step, train_step_observed};
use crate::merkle::{Digest, MerkleError, MerkleTree};
use crate::model::{Batch, ModelError};
use crate::ops::OpKind;
use crate::optim::TrainState;
use crate::quant::quantise_delta;
use crate::spec::JobSpec;
use crate::task::{
    FinalOpening, Opening, ProtocolError, StepOpening, check_base, hash_inline, job_sampler,
    opened_positions, step_recompute, task_batch,
};
use crate::tensor::Tensor;
use crate::trace::{
    Commitment, OpOutputCommit, StateRole, StepLeaf, TraceLeaf, base_state_hash, batch_hash,
    committed, next_state_hash_from_nodes, op_commits, op_root, recomputed,
    recomputed_signature_holds, state_hash, state_items, state_position, state_tensor_item,
    tensor_digest,
};

/// Which replay rule applies to a worker's device (from its known-answer suite).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeviceClass {
    /// Same bits as the CPU reference: verdicts compare hashes.
    Exact,
    /// Different bits: the worker opens `S_{t+1}` and a calibrated bound applies.
    Tolerant,
}

/// Why an opening was rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    #[error("the opening does not cover the challenged steps and leaves")]
    MalformedOpening,
    #[error("the opened leaves do not verify against the trace root: {0}")]
    BadTraceProof(String),
    #[error("the final leaf does not match the commitment or leaf H-1")]
    FinalLeafMismatch,
    #[error("the opened final parameters are not the committed S_H: {0}")]
    BadFinalState(String),
    #[error("the committed delta is not quantise_delta(S_0, S_H)")]
    DeltaMismatch,
    #[error("an opened state has the wrong number or shapes of tensors")]
    ShapeMismatch,
    #[error("the opened S_t does not hash to what leaf t-1 commits")]
    WrongState,
    #[error("the committed batch is not the PRF batch of (seed, t)")]
    WrongBatch,
    #[error("the opened op outputs do not have the leaf's op root")]
    OpRootMismatch,
    #[error("the recomputed op outputs (the backward pass) are not signed by the task's worker")]
    BadRecomputedSignature,
    #[error("the committed tape's structure differs from the model's at output {position}")]
    TapeMismatch { position: usize },
    #[error("output {output} of op {op} ({kind}) differs from the replay")]
    OpMismatch { op: u32, output: u32, kind: String },
    #[error("the committed loss differs from the replay")]
    LossMismatch,
    #[error("H(S_t+1) differs from the replay although every op output matches")]
    NextStateMismatch,
    #[error("no step can be replayed from the opened state: {0}")]
    ReplayFailed(String),
    #[error("the tolerant class opening lacks S_t+1 or it does not hash to the leaf")]
    WrongNextState,
    #[error("the replay differs by {distance} (relative L2), beyond the job's tolerance")]
    ToleranceExceeded { distance: f32 },
    #[error(
        "the differences from the replay at steps {first} and {second} share a direction (cosine {cosine}): rounding does not drift, a nudge does"
    )]
    SharedDirection {
        first: u32,
        second: u32,
        cosine: f32,
    },
}

/// Tolerant class: the largest cosine allowed between the parameter differences from
/// the replay (`S_{t+1}` opened minus replayed) of two opened steps. Rounding noise
/// mostly points anywhere (`lupus-bench tolerance` measures its largest cosine
/// between steps at 0.05 on the Shakespeare model and 0.13 on the tiny one, where
/// AdamW's normalisation puts much of it on the same few coordinates); a nudge toward
/// a chosen direction keeps pointing there (cosine near 1). A nudge that hides its
/// direction in noise keeps at most `sqrt(0.5)` of each step's budget for it.
pub const DRIFT_COSINE: f64 = 0.5;

/// Tolerant class: differences whose L2 norm is below this share of the tolerance
/// (relative to the replayed parameters) are not checked for a shared direction.
/// `lupus-bench tolerance` measures honest devices' spread at about this size, and
/// a flush of subnormals (SwiftShader) at zero.
pub const DRIFT_FLOOR: f64 = 0.125;

/// A verifier's verdict on one opening.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every challenged step replayed to the committed values.
    Accept,
    /// The worker failed a challenge.
    Reject {
        /// The failing step (`None` for the final leaf and the delta).
        step: Option<u32>,
        reason: RejectReason,
        /// A proof anyone can check without the model or the data, where one exists.
        fraud_proof: Option<Box<FraudProof>>,
    },
}

impl Verdict {
    /// True for [`Verdict::Accept`].
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept)
    }
}

fn reject(step: Option<u32>, reason: RejectReason) -> Verdict {
    Verdict::Reject {
        step,
        reason,
        fraud_proof: None,
    }
}

/// Checks a submission: the delta received is the one the trace commits.
pub fn verify_submission(
    steps: u32,
    commitment: &Commitment,
    opening: &FinalOpening,
    delta_hash: &Digest,
) -> Result<(), RejectReason> {
    let leaf = opening.leaf;
    if leaf.steps != steps
        || leaf.delta != *delta_hash
        || leaf.delta != commitment.delta_hash
        || leaf.state != commitment.final_state_hash
    {
        return Err(RejectReason::FinalLeafMismatch);
    }
    opening
        .proof
        .verify(
            &commitment.trace_root,
            &[(steps as usize, TraceLeaf::Final(leaf).item())],
            steps as usize + 1,
        )
        .map_err(|e| RejectReason::BadTraceProof(e.to_string()))
}

/// Relative L2 distance `||a - b|| / max(||b||, 1e-30)`; infinite for different shapes.
pub fn relative_distance(a: &Tensor, b: &Tensor) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.data().iter().zip(b.data()) {
        let d = f64::from(*x) - f64::from(*y);
        num += d * d;
        den += f64::from(*y) * f64::from(*y);
    }
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

fn state_from(tensors: &[Tensor], base: &[Tensor], step: u64) -> Option<TrainState> {
    let p = base.len();
    if tensors.len() != 3 * p {
        return None;
    }
    let shapes_ok = tensors
        .iter()
        .enumerate()
        .all(|(i, t)| base.get(i % p).is_some_and(|b| b.shape() == t.shape()));
    if !shapes_ok {
        return None;
    }
    let mut s = TrainState::fresh(tensors.get(..p)?.to_vec());
    s.m = tensors.get(p..2 * p)?.to_vec();
    s.v = tensors.get(2 * p..)?.to_vec();
    s.step = step;
    Some(s)
}

/// The class the opening's final leaf decides ([`crate::kat::decided_class`] of its
/// committed known-answer report); exact for an opening without a final leaf, which
/// [`verify_opening`] rejects anyway. A verifier judges by this, not by what the
/// coordinator says of the task.
pub fn opening_class(opening: &Opening) -> DeviceClass {
    opening
        .leaves
        .iter()
        .find_map(|(_, l)| match l {
            TraceLeaf::Final(f) => Some(crate::kat::decided_class(&f.kat)),
            TraceLeaf::Step(_) => None,
        })
        .unwrap_or(DeviceClass::Exact)
}

/// Proof of replay: a keyed digest of what replaying the challenged steps computes,
/// which only a replay (or whoever ran the step) can give.
///
/// The key is `derive_key("lupus replay digest v2", verifier || task)`, so one
/// verifier's digest, once logged, says nothing of another's. The digest covers,
/// for each replayed step in order, the step number (`u32` big-endian), then every op
/// output of the replay in tape order and every tensor of the replayed `S_{t+1}`,
/// each as what [`Tensor::hash_pieces`] makes of it: the chaining values of its
/// hash's pieces, 32 bytes per 64 KiB, or, for a tensor whose hashed input is one
/// piece, its bits (each `f32` little-endian). An opening reveals op outputs only as
/// hashes and, for the exact class, `S_{t+1}` only as a hash; a chaining value is an
/// interior node of that hash's tree, which nobody can compute from the hash. So a
/// verifier that accepts without replaying cannot compute the digest; the referee,
/// replaying the same opening on the same CPU rules, computes the same bits. It is
/// defined for an opening every step of which replays ([`Verdict::Accept`]).
///
/// Version 1 hashed every output's bytes a second time, keyed: as much hashing again
/// as the commitments (65.6 MB a step on the GPT job). The chaining values come out
/// of hashing the commitments, so the digest now costs next to nothing.
#[derive(Clone)]
pub struct ReplayDigest {
    hasher: blake3::Hasher,
}

impl ReplayDigest {
    /// A digest for `verifier`'s (its Ed25519 public key) replay of `task`.
    pub fn new(verifier: &[u8; 32], task: u64) -> ReplayDigest {
        let mut key_material = [0u8; 40];
        key_material[..32].copy_from_slice(verifier);
        key_material[32..].copy_from_slice(&task.to_be_bytes());
        let key = blake3::derive_key("lupus replay digest v2", &key_material);
        ReplayDigest {
            hasher: blake3::Hasher::new_keyed(&key),
        }
    }

    /// Adds tensor `t`, whose pieces' chaining values are `cvs` (none: one piece).
    fn tensor(&mut self, t: &Tensor, cvs: &[[u8; 32]]) {
        if !cvs.is_empty() {
            for cv in cvs {
                self.hasher.update(cv);
            }
            return;
        }
        // The little-endian bytes are the in-memory bytes on a little-endian target:
        // one `update` over the whole slice.
        if cfg!(target_endian = "little") {
            self.hasher.update(bytemuck::cast_slice(t.data()));
            return;
        }
        // Elsewhere in chunks through a buffer on the stack: no copy of the tensor.
        let mut buf = [0u8; 4096];
        for chunk in t.data().chunks(buf.len() / 4) {
            for (out, x) in buf.chunks_exact_mut(4).zip(chunk) {
                out.copy_from_slice(&x.to_le_bytes());
            }
            self.hasher.update(&buf[..chunk.len() * 4]);
        }
    }

    /// Adds tensor `t`, hashing it into pieces here.
    fn tensor_hashed(&mut self, t: &Tensor) {
        let mut cvs = Vec::new();
        t.hash_pieces(&mut cvs);
        self.tensor(t, &cvs);
    }

    /// Adds step `t`'s replay.
    pub fn step(&mut self, t: u32, replay: &StepOutput) {
        self.begin_step(t);
        for op in &replay.ops {
            for out in op.outputs.iter() {
                self.tensor_hashed(out);
            }
        }
        self.end_step(&replay.state);
    }

    /// Step `t`'s replay in parts, as a replay that does not keep its tape sees it:
    /// the step number, then every op output in tape order with its pieces (from the
    /// hashing of the commitments), then `S_{t+1}`.
    fn begin_step(&mut self, t: u32) {
        self.hasher.update(&t.to_be_bytes());
    }

    fn end_step(&mut self, next: &TrainState) {
        for x in next.params.iter().chain(&next.m).chain(&next.v) {
            self.tensor_hashed(x);
        }
    }

    /// The digest.
    pub fn finish(&self) -> Digest {
        Digest(*self.hasher.finalize().as_bytes())
    }
}

/// Verifies an opening of `steps` (the challenged steps, strictly increasing) by the
/// task's worker, whose Ed25519 public key is `worker` (it signs the recomputed part).
#[allow(clippy::too_many_arguments)]
pub fn verify_opening(
    job: &JobSpec,
    corpus: &Corpus,
    base_params: &[Tensor],
    seed: &[u8; 32],
    commitment: &Commitment,
    worker: &[u8; 32],
    steps: &[u32],
    opening: &Opening,
    class: DeviceClass,
) -> Result<Verdict, ProtocolError> {
    verify_opening_digests(
        job,
        corpus,
        base_params,
        seed,
        commitment,
        worker,
        steps,
        opening,
        class,
        &mut [],
    )
}

/// [`verify_opening`], adding every replayed step to each of `digests` (the
/// verifier's own, or, for the referee, one per verifier it checks): on
/// [`Verdict::Accept`] each holds the [`ReplayDigest`] of the whole opening.
#[allow(clippy::too_many_arguments)]
pub fn verify_opening_digests(
    job: &JobSpec,
    corpus: &Corpus,
    base_params: &[Tensor],
    seed: &[u8; 32],
    commitment: &Commitment,
    worker: &[u8; 32],
    steps: &[u32],
    opening: &Opening,
    class: DeviceClass,
    digests: &mut [ReplayDigest],
) -> Result<Verdict, ProtocolError> {
    job.validate()?;
    check_base(job, base_params)?;
    let h = job.inner.steps;
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ProtocolError::BadStepList);
    }
    if let Some(&bad) = steps.iter().find(|&&s| s >= h) {
        return Err(ProtocolError::StepOutOfRange {
            step: bad,
            steps: h,
        });
    }

    // 1. The opened leaves.
    let positions = opened_positions(steps, h);
    let got_positions: Vec<u32> = opening.leaves.iter().map(|(p, _)| *p).collect();
    let got_steps: Vec<u32> = opening.steps.iter().map(|s| s.step).collect();
    let leaf_kinds_ok = opening.leaves.iter().all(|(p, l)| match l {
        TraceLeaf::Step(s) => s.step == *p && *p < h,
        TraceLeaf::Final(f) => *p == h && f.steps == h,
    });
    if got_positions != positions || got_steps != steps || !leaf_kinds_ok {
        return Ok(reject(None, RejectReason::MalformedOpening));
    }
    let items: Vec<(usize, Digest)> = opening
        .leaves
        .iter()
        .map(|(p, l)| (*p as usize, l.item()))
        .collect();
    if let Err(e) = opening
        .proof
        .verify(&commitment.trace_root, &items, h as usize + 1)
    {
        return Ok(reject(None, RejectReason::BadTraceProof(e.to_string())));
    }
    let step_leaf = |t: u32| {
        opening.leaves.iter().find_map(|(p, l)| match l {
            TraceLeaf::Step(s) if *p == t => Some(*s),
            _ => None,
        })
    };
    let final_leaf = opening.leaves.iter().find_map(|(_, l)| match l {
        TraceLeaf::Final(f) => Some(*f),
        _ => None,
    });

    // 2. The final leaf, S_H and the delta.
    let (Some(final_leaf), Some(last)) = (final_leaf, h.checked_sub(1).and_then(step_leaf)) else {
        return Ok(reject(None, RejectReason::MalformedOpening));
    };
    if final_leaf.state != commitment.final_state_hash
        || final_leaf.delta != commitment.delta_hash
        || last.next_state != final_leaf.state
    {
        return Ok(reject(None, RejectReason::FinalLeafMismatch));
    }
    let p = base_params.len();
    if opening.final_params.len() != p
        || opening
            .final_params
            .iter()
            .zip(base_params)
            .any(|(a, b)| a.shape() != b.shape())
    {
        return Ok(reject(None, RejectReason::ShapeMismatch));
    }
    let param_items: Vec<(usize, Digest)> = opening
        .final_params
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                state_position(StateRole::Param, i as u32, p),
                state_tensor_item(StateRole::Param, i as u32, &tensor_digest(t)),
            )
        })
        .collect();
    if let Err(e) = opening
        .final_params_proof
        .verify(&final_leaf.state, &param_items, 3 * p + 1)
    {
        return Ok(reject(None, RejectReason::BadFinalState(e.to_string())));
    }
    // A delta that cannot be quantised (it overflows) is not the committed one either.
    let delta_hash = quantise_delta(base_params, &opening.final_params).map(|d| Digest(d.hash()));
    if delta_hash.ok() != Some(final_leaf.delta) {
        return Ok(reject(None, RejectReason::DeltaMismatch));
    }

    // 3-6. Each challenged step.
    let sampler = job_sampler(job, corpus)?;
    let mut residuals: Vec<(u32, Vec<f32>)> = Vec::new();
    for so in &opening.steps {
        let t = so.step;
        let Some(leaf) = step_leaf(t) else {
            return Ok(reject(Some(t), RejectReason::MalformedOpening));
        };
        let Some(state) = state_from(&so.state, base_params, u64::from(t)) else {
            return Ok(reject(Some(t), RejectReason::ShapeMismatch));
        };
        let expected_state = match t.checked_sub(1) {
            // Only step 0 starts from the base: its hash is made when step 0 is opened.
            None => Some(base_state_hash(base_params)),
            Some(prev) => step_leaf(prev).map(|l| l.next_state),
        };
        let s_hash = state_hash(&state);
        if expected_state != Some(s_hash) {
            return Ok(reject(Some(t), RejectReason::WrongState));
        }
        let batch = task_batch(job, &sampler, seed, t)?;
        if batch_hash(&batch) != leaf.batch {
            return Ok(reject(Some(t), RejectReason::WrongBatch));
        }
        // The committed commits are the trace's; the others were recomputed for the
        // opening, under the worker's signature.
        let recompute = step_recompute(job, u64::from(t) + 1)?;
        if so.ops.is_empty() || op_root(&committed(&so.ops, &recompute)).ok() != Some(leaf.op_root)
        {
            return Ok(reject(Some(t), RejectReason::OpRootMismatch));
        }
        if !signed_under(so, &recompute, worker, &commitment.trace_root) {
            return Ok(reject(Some(t), RejectReason::BadRecomputedSignature));
        }
        let verdict = match class {
            DeviceClass::Exact => replay_exact(job, so, &leaf, &state, &batch, opening, digests)?,
            DeviceClass::Tolerant => {
                // The opened state is the worker's: if no honest step can start from
                // it, the worker is at fault, not the verifier.
                let replay = match train_step(&job.model, &job.inner.adamw(), &state, &batch) {
                    Ok(r) => r,
                    Err(e) => {
                        return Ok(reject(Some(t), RejectReason::ReplayFailed(e.to_string())));
                    }
                };
                for d in digests.iter_mut() {
                    d.step(t, &replay);
                }
                match check_tolerant(job, so, &leaf, base_params, &replay) {
                    Ok(r) => {
                        residuals.extend(r.map(|r| (t, r)));
                        None
                    }
                    Err(v) => Some(v),
                }
            }
        };
        if let Some(v) = verdict {
            return Ok(v);
        }
    }
    if let Some(v) = shared_direction(&residuals) {
        return Ok(v);
    }
    Ok(Verdict::Accept)
}

/// Whether opened step `so` carries `worker`'s signature over its recomputed commits
/// (those [`crate::graph::Plan::recomputed`] names for its step) under `trace_root`: the
/// check [`verify_opening`] makes, for a coordinator to refuse a bad opening at upload.
pub fn recomputed_signed(
    job: &JobSpec,
    so: &StepOpening,
    worker: &[u8; 32],
    trace_root: &Digest,
) -> Result<bool, ProtocolError> {
    let recompute = step_recompute(job, u64::from(so.step) + 1)?;
    Ok(signed_under(so, &recompute, worker, trace_root))
}

/// [`recomputed_signed`] with the step's recomputed outputs already known.
fn signed_under(
    so: &StepOpening,
    recompute: &Recompute,
    worker: &[u8; 32],
    trace_root: &Digest,
) -> bool {
    op_root(&recomputed(&so.ops, recompute))
        .ok()
        .is_some_and(|root| {
            recomputed_signature_holds(worker, trace_root, so.step, &root, &so.signature)
        })
}

/// `a - b`, element by element over the tensors in order, concatenated: a step's
/// parameter difference from the replay.
pub fn param_difference(a: &[Tensor], b: &[Tensor]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.data().iter().zip(y.data()).map(|(p, q)| p - q))
        .collect()
}

/// The cosine between two differences (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let norm = |r: &[f32]| r.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let n = norm(a) * norm(b);
    if n == 0.0 { 0.0 } else { dot / n }
}

/// The first pair of opened steps whose parameter differences from the replay share
/// a direction beyond [`DRIFT_COSINE`], as a rejection of the later step.
fn shared_direction(residuals: &[(u32, Vec<f32>)]) -> Option<Verdict> {
    for (i, (a, ra)) in residuals.iter().enumerate() {
        for (b, rb) in residuals.iter().skip(i + 1) {
            let cosine = cosine(ra, rb);
            if cosine > DRIFT_COSINE {
                return Some(reject(
                    Some(*b),
                    RejectReason::SharedDirection {
                        first: *a,
                        second: *b,
                        cosine: cosine as f32,
                    },
                ));
            }
        }
    }
    None
}

/// The tolerant check of one step: a rejection, or the step's parameter difference
/// from the replay (concatenated) when it is large enough for the direction check
/// ([`DRIFT_FLOOR`]).
fn check_tolerant(
    job: &JobSpec,
    so: &StepOpening,
    leaf: &StepLeaf,
    base: &[Tensor],
    replay: &StepOutput,
) -> Result<Option<Vec<f32>>, Verdict> {
    let t = so.step;
    let next = so
        .next_state
        .as_ref()
        .and_then(|n| state_from(n, base, u64::from(t) + 1));
    let Some(next) = next.filter(|n| state_hash(n) == leaf.next_state) else {
        return Err(reject(Some(t), RejectReason::WrongNextState));
    };
    let tol = job.verify.tolerance;
    let pairs = next
        .params
        .iter()
        .zip(&replay.state.params)
        .chain(next.m.iter().zip(&replay.state.m))
        .chain(next.v.iter().zip(&replay.state.v));
    let mut worst = 0f32;
    for (a, b) in pairs {
        worst = worst.max(relative_distance(a, b));
    }
    let loss_err = (leaf.loss() - replay.loss).abs() / replay.loss.abs().max(1e-30);
    worst = worst.max(if loss_err.is_nan() {
        f32::INFINITY
    } else {
        loss_err
    });
    if worst > tol {
        return Err(reject(
            Some(t),
            RejectReason::ToleranceExceeded { distance: worst },
        ));
    }
    let residual = param_difference(&next.params, &replay.state.params);
    let squares = |xs: &mut dyn Iterator<Item = f32>| xs.map(|x| f64::from(x).powi(2)).sum::<f64>();
    let diff = squares(&mut residual.iter().copied());
    let size = squares(
        &mut replay
            .state
            .params
            .iter()
            .flat_map(|t| t.data().iter().copied()),
    );
    let relative = diff.sqrt() / size.sqrt().max(1e-30);
    Ok((relative >= DRIFT_FLOOR * f64::from(tol)).then_some(residual))
}

#[allow(clippy::too_many_arguments)]
/// Replays one opened step for the exact class, hashing each op output right after it
/// is computed ([`hash_inline`]), in pieces whose chaining values also feed
/// `digests`. Hashing on a second thread saved about 30 ms of wall time a task and
/// cost about 50 ms more CPU time (hand-offs, tensors read from another core's
/// cache); a volunteer pays the CPU time, so it is inline. `H(S_{t+1})`
/// comes from the AdamW outputs' digests, as the worker's does. Where anything
/// disagrees with the leaf, the step is replayed again with its tape kept
/// ([`train_step`], the same bits) and [`check_exact`] finds the first disagreement
/// and builds its fraud proof; an honest opening never takes that path.
fn replay_exact(
    job: &JobSpec,
    so: &StepOpening,
    leaf: &StepLeaf,
    state: &TrainState,
    batch: &Batch,
    opening: &Opening,
    digests: &mut [ReplayDigest],
) -> Result<Option<Verdict>, ProtocolError> {
    let t = so.step;
    let opt = job.inner.adamw();
    for d in digests.iter_mut() {
        d.begin_step(t);
    }
    let (trained, commits, nodes) = {
        let tapped = !digests.is_empty();
        let mut tap = |t: &Tensor, cvs: &[[u8; 32]]| {
            for d in digests.iter_mut() {
                d.tensor(t, cvs);
            }
        };
        // Every output is hashed, the recomputed backward pass's too: the verifier
        // accepts an opening only if everything in it is what an honest worker sends,
        // so that a signed wrong recomputation is rejected with its fraud proof.
        let tap: Option<crate::task::Tap<'_>> = tapped.then_some(&mut tap);
        hash_inline(tap, &Recompute::none(), |observe| {
            train_step_observed(&job.model, &opt, state, batch, observe)
        })
    };
    let (next, loss) = match trained {
        Ok(r) => r,
        Err(e) => {
            return Ok(Some(reject(
                Some(t),
                RejectReason::ReplayFailed(e.to_string()),
            )));
        }
    };
    let next_hash = next_state_hash_from_nodes(
        nodes.iter().map(|(k, i, n)| (k, i.as_slice(), *n)),
        &commits,
        next.params.len(),
        next.step,
    )
    .unwrap_or_else(|| state_hash(&next));
    if commits == so.ops && loss.to_bits() == leaf.loss_bits && next_hash == leaf.next_state {
        for d in digests.iter_mut() {
            d.end_step(&next);
        }
        return Ok(None);
    }
    let replay = match train_step(&job.model, &opt, state, batch) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Some(reject(
                Some(t),
                RejectReason::ReplayFailed(e.to_string()),
            )));
        }
    };
    match check_exact(so, leaf, state, batch, &replay, opening) {
        Some(v) => Ok(Some(v)),
        // The observed and the taped step are the same bits (a test checks it): should
        // they ever differ, this verifier cannot judge, and says so rather than guess.
        None => Err(ProtocolError::Model(ModelError::Graph {
            detail: format!("the observed and the taped replay of step {t} differ"),
        })),
    }
}

fn check_exact(
    so: &StepOpening,
    leaf: &StepLeaf,
    state: &TrainState,
    batch: &Batch,
    replay: &StepOutput,
    opening: &Opening,
) -> Option<Verdict> {
    let t = so.step;
    let mine = op_commits(&replay.ops);
    if mine.len() != so.ops.len() {
        return Some(reject(
            Some(t),
            RejectReason::TapeMismatch {
                position: mine.len().min(so.ops.len()),
            },
        ));
    }
    for (position, (a, b)) in mine.iter().zip(&so.ops).enumerate() {
        if (a.op, a.output, a.desc) != (b.op, b.output, b.desc) {
            return Some(reject(Some(t), RejectReason::TapeMismatch { position }));
        }
    }
    // A dispute carries all opened leaves with the opening's one multiproof: a proof of
    // leaf t alone would need the whole tree, which the verifier does not have.
    let trace = TraceLeaves {
        leaves: opening.leaves.clone(),
        proof: opening.proof.clone(),
    };
    if let Some(position) = mine
        .iter()
        .zip(&so.ops)
        .position(|(a, b)| a.tensor != b.tensor)
    {
        // Both lookups are in range after the tape comparison above; should that ever
        // change, a missing entry must reject, never read as "nothing wrong".
        let tape_mismatch = || Some(reject(Some(t), RejectReason::TapeMismatch { position }));
        let Some(disputed) = so.ops.get(position).copied() else {
            return tape_mismatch();
        };
        let Some(rec) = replay.ops.get(disputed.op as usize) else {
            return tape_mismatch();
        };
        let proof = build_op_fraud(
            t,
            trace,
            disputed.op,
            rec.kind.clone(),
            rec.inputs.clone(),
            so,
            state,
            batch,
            replay,
        )
        .ok();
        return Some(Verdict::Reject {
            step: Some(t),
            reason: RejectReason::OpMismatch {
                op: disputed.op,
                output: disputed.output,
                kind: rec.kind.name().to_string(),
            },
            fraud_proof: proof.map(|p| Box::new(FraudProof::Op(p))),
        });
    }
    if leaf.loss_bits != replay.loss.to_bits() {
        let proof = build_loss_fraud(t, trace, so, replay).ok();
        return Some(Verdict::Reject {
            step: Some(t),
            reason: RejectReason::LossMismatch,
            fraud_proof: proof.map(|p| Box::new(FraudProof::Loss(p))),
        });
    }
    if state_hash(&replay.state) != leaf.next_state {
        return Some(reject(Some(t), RejectReason::NextStateMismatch));
    }
    None
}

/// Builds the operator-level dispute of op `op` of the opened step `step`, whose inputs
/// are taken from the replay (used by [`verify_opening`] at the first mismatch; an auditor
/// or a test can dispute any op, and [`FraudProof::check`] then decides).
#[allow(clippy::too_many_arguments)]
pub fn dispute_op(
    job: &JobSpec,
    corpus: &Corpus,
    base_params: &[Tensor],
    seed: &[u8; 32],
    opening: &Opening,
    step: u32,
    op: u32,
) -> Result<FraudProof, ProtocolError> {
    check_base(job, base_params)?;
    let so =
        opening
            .steps
            .iter()
            .find(|s| s.step == step)
            .ok_or(ProtocolError::StepOutOfRange {
                step,
                steps: job.inner.steps,
            })?;
    let state =
        state_from(&so.state, base_params, u64::from(step)).ok_or(ProtocolError::BadStepList)?;
    let batch = task_batch(job, &job_sampler(job, corpus)?, seed, step)?;
    let replay = train_step(&job.model, &job.inner.adamw(), &state, &batch)?;
    let rec = replay
        .ops
        .get(op as usize)
        .ok_or(ProtocolError::StepOutOfRange {
            step: op,
            steps: replay.ops.len() as u32,
        })?;
    let trace = TraceLeaves {
        leaves: opening.leaves.clone(),
        proof: opening.proof.clone(),
    };
    let proof = build_op_fraud(
        step,
        trace,
        op,
        rec.kind.clone(),
        rec.inputs.clone(),
        so,
        &state,
        &batch,
        &replay,
    )?;
    Ok(FraudProof::Op(proof))
}

fn op_leaves(
    commits: &[OpOutputCommit],
    mut positions: Vec<usize>,
) -> Result<OpLeaves, MerkleError> {
    if positions.is_empty() {
        return Ok(OpLeaves::none(commits.len() as u32));
    }
    positions.sort_unstable();
    positions.dedup();
    let items: Vec<Digest> = commits.iter().map(OpOutputCommit::item).collect();
    let tree = MerkleTree::new(&items)?;
    let proof = tree.prove(&positions)?;
    Ok(OpLeaves {
        leaves: positions
            .iter()
            .filter_map(|&p| commits.get(p).map(|c| (p as u32, *c)))
            .collect(),
        total: commits.len() as u32,
        proof,
    })
}

/// Builds the proof for op `op` of step `t`, whose inputs are the replay's tensors.
#[allow(clippy::too_many_arguments)]
fn build_op_fraud(
    t: u32,
    trace: TraceLeaves,
    op: u32,
    kind: OpKind,
    inputs: Vec<ValueRef>,
    so: &StepOpening,
    state: &TrainState,
    batch: &Batch,
    replay: &StepOutput,
) -> Result<OpFraud, MerkleError> {
    // Each commit is proven against the root that holds it: the leaf's (committed while
    // training) or the signed root of the backward pass (recomputed for the opening).
    let mut needed: Vec<(u32, u32)> = so
        .ops
        .iter()
        .filter(|c| c.op == op)
        .map(|c| (c.op, c.output))
        .collect();
    let p = state.params.len();
    let mut input_tensors = Vec::with_capacity(inputs.len());
    let mut state_positions = Vec::new();
    let mut batch_parts = None;
    for r in &inputs {
        let tensor = match r {
            ValueRef::Op { op: o, output } => {
                needed.push((*o, u32::from(*output)));
                replay
                    .ops
                    .get(*o as usize)
                    .and_then(|rec| rec.outputs.get(usize::from(*output)))
            }
            ValueRef::Input | ValueRef::Target => {
                batch_parts = Some((tensor_digest(&batch.inputs), tensor_digest(&batch.targets)));
                Some(if matches!(r, ValueRef::Input) {
                    &batch.inputs
                } else {
                    &batch.targets
                })
            }
            ValueRef::Param(i) => {
                state_positions.push(state_position(StateRole::Param, *i, p));
                state.params.get(*i as usize)
            }
            ValueRef::Moment1(i) => {
                state_positions.push(state_position(StateRole::Moment1, *i, p));
                state.m.get(*i as usize)
            }
            ValueRef::Moment2(i) => {
                state_positions.push(state_position(StateRole::Moment2, *i, p));
                state.v.get(*i as usize)
            }
        };
        input_tensors.push(tensor.cloned().ok_or(MerkleError::NoLeaves)?);
    }
    let state_proof = if state_positions.is_empty() {
        None
    } else {
        state_positions.sort_unstable();
        state_positions.dedup();
        Some(MerkleTree::new(&state_items(state))?.prove(&state_positions)?)
    };
    let (kept, again) = (
        committed(&so.ops, &replay.recompute),
        recomputed(&so.ops, &replay.recompute),
    );
    let positions = |list: &[OpOutputCommit]| -> Vec<usize> {
        needed
            .iter()
            .filter_map(|&(o, out)| list.iter().position(|c| c.op == o && c.output == out))
            .collect()
    };
    let (in_kept, in_again) = (positions(&kept), positions(&again));
    let recomputed = if in_again.is_empty() {
        None
    } else {
        Some(Box::new(RecomputedLeaves {
            root: op_root(&again)?,
            signature: so.signature,
            leaves: op_leaves(&again, in_again)?,
        }))
    };
    Ok(OpFraud {
        step: t,
        trace,
        op,
        kind,
        inputs,
        input_tensors,
        op_leaves: op_leaves(&kept, in_kept)?,
        recomputed,
        param_count: p as u32,
        state_proof,
        batch_parts,
    })
}

fn build_loss_fraud(
    t: u32,
    trace: TraceLeaves,
    so: &StepOpening,
    replay: &StepOutput,
) -> Result<LossFraud, MerkleError> {
    let (op, rec) = replay
        .ops
        .iter()
        .enumerate()
        .find(|(_, r)| matches!(r.kind, OpKind::SoftmaxCrossEntropy))
        .ok_or(MerkleError::NoLeaves)?;
    // The loss op ends the forward pass: its commit is in the leaf's op root.
    let kept = committed(&so.ops, &replay.recompute);
    let position = kept
        .iter()
        .position(|c| c.op == op as u32 && c.output == 0)
        .ok_or(MerkleError::NoLeaves)?;
    Ok(LossFraud {
        step: t,
        trace,
        op: op as u32,
        inputs: rec.inputs.clone(),
        loss: rec.outputs.first().cloned().ok_or(MerkleError::NoLeaves)?,
        op_leaves: op_leaves(&kept, vec![position])?,
    })
}
