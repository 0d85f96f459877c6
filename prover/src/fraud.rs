//! Operator-level fraud proofs: a failed replay, reduced to one operator anyone can re-run.
//!
//! DESIGN.md ("The loop" 4, "Trace and commitment"): when the replay of a challenged step
//! differs from what the worker committed, the verifier bisects inside the step. The
//! worker's op-output commits are compared with the replay's in tape order; at the first
//! one that differs, every earlier committed output matched the replay, so the replay's
//! tensors ARE the committed inputs of that op. The proof carries those inputs with their
//! Merkle proofs and the committed output's preimage; [`FraudProof::check`] verifies the
//! proofs and runs ONE `eval_op`. It needs no model state and no dataset: only the trace
//! root, `H`, `H(S_0)` of the round's base model (for a dispute at step 0) and the
//! worker's public key (for a dispute that cites the recomputed backward pass).
//!
//! Which mismatches get a proof here and which are rejected at the opening stage
//! ([`crate::verify::RejectReason`], re-checkable by anyone from the public opening, the
//! job spec and the corpus):
//! - first differing op output: [`FraudProof::Op`];
//! - the leaf's loss bits differ from the committed `softmax_cross_entropy` output:
//!   [`FraudProof::Loss`];
//! - opening stage: an opened state that does not hash to the previous leaf, a batch hash
//!   that is not the PRF batch, a tape whose structure differs from the model's, an
//!   `H(S_{t+1})` inconsistent with correct AdamW outputs, a delta inconsistent with
//!   `S_H`, and every tolerant-class failure (tolerant outputs are not bit-comparable).
//!
//! Input provenance in an op proof: `Op { op, output }` inputs by their op-output commits
//! (proven against the leaf's op root, or, for the backward pass, which the worker
//! recomputes when it opens a step, against the root of the recomputed commits that the
//! worker signed for the opening; the producing op must come earlier); state
//! inputs by state items proven against `H(S_t)` (committed by leaf `t-1`, or `H(S_0)`);
//! `Input`/`Target` by the two tensor hashes whose batch hash the leaf commits.

use lupus_types::Sig;
use serde::{Deserialize, Serialize};

use crate::graph::ValueRef;
use crate::merkle::{Digest, MerkleError, MultiProof};
use crate::ops::{OpKind, eval_op};
use crate::tensor::Tensor;
use crate::trace::{
    OpOutputCommit, StateRole, StepLeaf, TraceLeaf, batch_hash_parts, op_desc,
    recomputed_signature_holds, state_position, state_tensor_item, tensor_digest,
};

/// Why a fraud proof is malformed or does not verify (the accused is then not guilty).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FraudError {
    #[error("the trace proof does not verify: {0}")]
    TraceProof(MerkleError),
    #[error("the op-output proof does not verify against the leaf's op root: {0}")]
    OpProof(MerkleError),
    #[error("the recomputed op outputs' root is not signed by the task's worker")]
    RecomputedSignature,
    #[error("the state proof does not verify against H(S_t): {0}")]
    StateProof(MerkleError),
    #[error("leaf {0} is not among the proven trace leaves")]
    MissingLeaf(u32),
    #[error("input {index} ({reason}) is not proven")]
    InputNotProven { index: usize, reason: &'static str },
    #[error("the proof names no committed output of op {0} with its description")]
    NoDisputedOutput(u32),
    #[error("{0} input tensors given for {1} input references")]
    InputCount(usize, usize),
    #[error("{0} parameter tensors is more than any model has")]
    TooManyParams(u32),
    #[error("the disputed op is not the step's softmax_cross_entropy loss output")]
    NotLossOp,
}

/// More parameter tensors than any model has; keeps state-tree positions (`3P + 1`) far
/// from overflow on 32-bit targets.
const MAX_PARAM_TENSORS: u32 = 1 << 20;

/// The facts a checker takes from the ledger and the job, not from the accuser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FraudContext {
    /// The worker's committed trace root.
    pub trace_root: Digest,
    /// `H`: the trace has `H + 1` leaves.
    pub steps: u32,
    /// `H(S_0)` of the round's base model with a fresh optimizer state.
    pub base_state_hash: Digest,
    /// The task's worker's Ed25519 public key, which signs the recomputed commits.
    pub worker: [u8; 32],
}

/// The outcome of checking a well-formed proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FraudVerdict {
    /// The committed value is not what the operator computes from the committed inputs.
    Guilty { step: u32, op: u32, reason: String },
    /// The proofs hold but the committed value is correct: the accusation is false.
    NotGuilty,
}

/// Trace leaves with one multiproof against the trace root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceLeaves {
    pub leaves: Vec<(u32, TraceLeaf)>,
    pub proof: MultiProof,
}

impl TraceLeaves {
    fn verify(&self, ctx: &FraudContext) -> Result<(), FraudError> {
        let items: Vec<(usize, Digest)> = self
            .leaves
            .iter()
            .map(|(p, l)| (*p as usize, l.item()))
            .collect();
        self.proof
            .verify(
                &ctx.trace_root,
                &items,
                (ctx.steps as usize).saturating_add(1),
            )
            .map_err(FraudError::TraceProof)
    }

    fn step_leaf(&self, t: u32) -> Result<StepLeaf, FraudError> {
        self.leaves
            .iter()
            .find_map(|(p, l)| match l {
                TraceLeaf::Step(s) if *p == t && s.step == t => Some(*s),
                _ => None,
            })
            .ok_or(FraudError::MissingLeaf(t))
    }
}

/// Op-output commits with one multiproof against a step's op root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpLeaves {
    /// `(position, commit)`, strictly increasing positions.
    pub leaves: Vec<(u32, OpOutputCommit)>,
    /// Number of op outputs of the step.
    pub total: u32,
    pub proof: MultiProof,
}

impl OpLeaves {
    /// No leaves with an empty proof claim nothing: a dispute whose commits all lie in
    /// the other root.
    pub fn none(total: u32) -> OpLeaves {
        OpLeaves {
            leaves: Vec::new(),
            total,
            proof: MultiProof { hashes: Vec::new() },
        }
    }

    fn verify(&self, op_root: &Digest) -> Result<(), FraudError> {
        if self.leaves.is_empty() && self.proof.hashes.is_empty() {
            return Ok(());
        }
        let items: Vec<(usize, Digest)> = self
            .leaves
            .iter()
            .map(|(p, c)| (*p as usize, c.item()))
            .collect();
        self.proof
            .verify(op_root, &items, self.total as usize)
            .map_err(FraudError::OpProof)
    }

    fn find(&self, op: u32, output: u32) -> Option<&OpOutputCommit> {
        self.leaves
            .iter()
            .map(|(_, c)| c)
            .find(|c| c.op == op && c.output == output)
    }
}

/// Commits of the backward pass, which the worker recomputed when it opened the step,
/// proven against the root it signed for that opening.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecomputedLeaves {
    /// The root of the step's recomputed commits.
    pub root: Digest,
    /// The worker's signature over `recomputed_message(trace_root, step, root)`.
    pub signature: Sig,
    pub leaves: OpLeaves,
}

impl RecomputedLeaves {
    fn verify(&self, ctx: &FraudContext, step: u32) -> Result<(), FraudError> {
        if !recomputed_signature_holds(
            &ctx.worker,
            &ctx.trace_root,
            step,
            &self.root,
            &self.signature,
        ) {
            return Err(FraudError::RecomputedSignature);
        }
        self.leaves.verify(&self.root)
    }
}

/// A disputed operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpFraud {
    pub step: u32,
    /// Leaf `step`, and leaf `step - 1` when a state tensor is an input and `step > 0`.
    pub trace: TraceLeaves,
    /// Index of the disputed op in the step's tape.
    pub op: u32,
    pub kind: OpKind,
    pub inputs: Vec<ValueRef>,
    /// The input tensors, one per reference.
    pub input_tensors: Vec<Tensor>,
    /// The producers of `Op` inputs and the disputed op's outputs that the leaf's op
    /// root commits.
    pub op_leaves: OpLeaves,
    /// Those of the backward pass, recomputed for the opening.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub recomputed: Option<Box<RecomputedLeaves>>,
    /// Number of parameter tensors `P` (the state tree has `3P + 1` items).
    pub param_count: u32,
    /// Proof of the state inputs against `H(S_t)`, when there are any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub state_proof: Option<MultiProof>,
    /// `(T(inputs), T(targets))` of the batch, when a batch tensor is an input.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub batch_parts: Option<(Digest, Digest)>,
}

/// A leaf whose loss bits are not the committed loss output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LossFraud {
    pub step: u32,
    pub trace: TraceLeaves,
    /// Index of the `softmax_cross_entropy` op.
    pub op: u32,
    pub inputs: Vec<ValueRef>,
    /// Its committed loss output (a one-element tensor).
    pub loss: Tensor,
    pub op_leaves: OpLeaves,
}

/// A proof that a worker committed a value no honest computation gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "proof", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FraudProof {
    Op(OpFraud),
    Loss(LossFraud),
}

impl FraudProof {
    /// The disputed step.
    pub fn step(&self) -> u32 {
        match self {
            FraudProof::Op(p) => p.step,
            FraudProof::Loss(p) => p.step,
        }
    }

    /// The disputed op's index in the step's tape.
    pub fn op(&self) -> u32 {
        match self {
            FraudProof::Op(p) => p.op,
            FraudProof::Loss(p) => p.op,
        }
    }

    /// Verifies the proofs and re-runs the one disputed computation.
    pub fn check(&self, ctx: &FraudContext) -> Result<FraudVerdict, FraudError> {
        match self {
            FraudProof::Op(p) => p.check(ctx),
            FraudProof::Loss(p) => p.check(ctx),
        }
    }
}

fn state_ref(r: &ValueRef) -> Option<(StateRole, u32)> {
    match r {
        ValueRef::Param(i) => Some((StateRole::Param, *i)),
        ValueRef::Moment1(i) => Some((StateRole::Moment1, *i)),
        ValueRef::Moment2(i) => Some((StateRole::Moment2, *i)),
        _ => None,
    }
}

impl OpFraud {
    fn check(&self, ctx: &FraudContext) -> Result<FraudVerdict, FraudError> {
        self.trace.verify(ctx)?;
        let leaf = self.trace.step_leaf(self.step)?;
        self.op_leaves.verify(&leaf.op_root)?;
        if let Some(r) = &self.recomputed {
            r.verify(ctx, self.step)?;
        }
        // Every commit the proof cites, from either root: each is the worker's word.
        let cited: Vec<&OpOutputCommit> = self
            .op_leaves
            .leaves
            .iter()
            .chain(self.recomputed.iter().flat_map(|r| &r.leaves.leaves))
            .map(|(_, c)| c)
            .collect();
        if self.input_tensors.len() != self.inputs.len() {
            return Err(FraudError::InputCount(
                self.input_tensors.len(),
                self.inputs.len(),
            ));
        }
        let desc = op_desc(&self.kind, &self.inputs);
        let disputed: Vec<&OpOutputCommit> = cited
            .iter()
            .copied()
            .filter(|c| c.op == self.op && c.desc == desc)
            .collect();
        if disputed.is_empty() {
            return Err(FraudError::NoDisputedOutput(self.op));
        }

        // Provenance of every input.
        let mut state_items: Vec<(usize, Digest)> = Vec::new();
        if self.param_count > MAX_PARAM_TENSORS {
            return Err(FraudError::TooManyParams(self.param_count));
        }
        let p = self.param_count as usize;
        for (index, (r, t)) in self.inputs.iter().zip(&self.input_tensors).enumerate() {
            let th = tensor_digest(t);
            match r {
                ValueRef::Op { op, output } => {
                    let ok = *op < self.op
                        && cited
                            .iter()
                            .any(|c| c.op == *op && c.output == u32::from(*output))
                        && cited
                            .iter()
                            .filter(|c| c.op == *op && c.output == u32::from(*output))
                            .all(|c| c.tensor == th);
                    if !ok {
                        return Err(FraudError::InputNotProven {
                            index,
                            reason: "op output",
                        });
                    }
                }
                ValueRef::Input | ValueRef::Target => {
                    let (ti, tt) = self.batch_parts.ok_or(FraudError::InputNotProven {
                        index,
                        reason: "batch",
                    })?;
                    let want = if matches!(r, ValueRef::Input) { ti } else { tt };
                    if batch_hash_parts(&ti, &tt) != leaf.batch || want != th {
                        return Err(FraudError::InputNotProven {
                            index,
                            reason: "batch",
                        });
                    }
                }
                other => {
                    let (role, i) = state_ref(other).ok_or(FraudError::InputNotProven {
                        index,
                        reason: "reference",
                    })?;
                    if i as usize >= p {
                        return Err(FraudError::InputNotProven {
                            index,
                            reason: "state index",
                        });
                    }
                    state_items.push((state_position(role, i, p), state_tensor_item(role, i, &th)));
                }
            }
        }
        if !state_items.is_empty() {
            let root = if self.step == 0 {
                ctx.base_state_hash
            } else {
                self.trace.step_leaf(self.step - 1)?.next_state
            };
            state_items.sort_by_key(|(pos, _)| *pos);
            state_items.dedup_by_key(|(pos, _)| *pos);
            let proof = self
                .state_proof
                .as_ref()
                .ok_or(FraudError::InputNotProven {
                    index: 0,
                    reason: "state proof missing",
                })?;
            proof
                .verify(&root, &state_items, 3 * p + 1)
                .map_err(FraudError::StateProof)?;
        }

        let refs: Vec<&Tensor> = self.input_tensors.iter().collect();
        let outputs = match eval_op(&self.kind, &refs) {
            Ok(o) => o,
            Err(e) => {
                return Ok(FraudVerdict::Guilty {
                    step: self.step,
                    op: self.op,
                    reason: format!("the committed inputs make {} fail: {e}", self.kind.name()),
                });
            }
        };
        for c in disputed {
            let recomputed = outputs.get(c.output as usize).map(tensor_digest);
            if recomputed != Some(c.tensor) {
                return Ok(FraudVerdict::Guilty {
                    step: self.step,
                    op: self.op,
                    reason: format!(
                        "output {} of {} is committed as {} but the committed inputs give {}",
                        c.output,
                        self.kind.name(),
                        c.tensor,
                        recomputed.map_or_else(|| "no such output".to_string(), |d| d.to_hex())
                    ),
                });
            }
        }
        Ok(FraudVerdict::NotGuilty)
    }
}

impl LossFraud {
    fn check(&self, ctx: &FraudContext) -> Result<FraudVerdict, FraudError> {
        self.trace.verify(ctx)?;
        let leaf = self.trace.step_leaf(self.step)?;
        self.op_leaves.verify(&leaf.op_root)?;
        let desc = op_desc(&OpKind::SoftmaxCrossEntropy, &self.inputs);
        let committed = self
            .op_leaves
            .find(self.op, 0)
            .filter(|c| c.desc == desc)
            .ok_or(FraudError::NotLossOp)?;
        if committed.tensor != tensor_digest(&self.loss) {
            return Err(FraudError::InputNotProven {
                index: 0,
                reason: "loss tensor",
            });
        }
        match self.loss.data() {
            [x] if x.to_bits() != leaf.loss_bits => Ok(FraudVerdict::Guilty {
                step: self.step,
                op: self.op,
                reason: format!(
                    "the leaf commits loss {} but the committed loss output is {x}",
                    leaf.loss()
                ),
            }),
            [_] => Ok(FraudVerdict::NotGuilty),
            _ => Err(FraudError::NotLossOp),
        }
    }
}
