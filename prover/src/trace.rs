//! What a worker commits to for every step: state hashes, op-output roots, trace leaves.
//!
//! Implements DESIGN.md "Trace and commitment". Every hash is a domain hash
//! `H_d(x) = BLAKE3-keyed(K_d, x)`, `K_d = BLAKE3-derive_key(d, "")` ([`crate::prf`]);
//! Merkle roots are those of [`crate::merkle`]. Integers are little-endian. Byte layouts:
//!
//! - Tensor hash `T(x)`: [`Tensor::hash`] (blake3 over the canonical bytes with shape).
//! - State item of tensor `i` of role `r` (0 = param, 1 = first moment `m`,
//!   2 = second moment `v`): `H_"lupus state tensor v1"(u8 r || u32 i || T(x))`.
//!   Step item: `H_"lupus state step v1"(u64 step)`.
//!   State hash `H(S)` = Merkle root over `[param items.., m items.., v items.., step item]`
//!   in the order of `TrainState::tensors()`. The items name their role and index, so a
//!   proof of one state tensor cannot stand in for another.
//! - Batch hash `H(batch)` = `H_"lupus batch v1"(T(inputs) || T(targets))`.
//! - Op description `desc(op)` = `H_"lupus op desc v1"(JSON of [kind, inputs])` with
//!   `serde_json`'s compact encoding of the runtime's `OpKind` and `[ValueRef]`.
//! - Op-output item for output `o` of op `i` (tape order):
//!   `H_"lupus op leaf v1"(u32 i || u32 o || desc(op i) || T(output))`. The op root of a step
//!   is the Merkle root over these items, op by op, output by output. An item names its op,
//!   its output and what the op computes from what, so a proof cannot move a tensor.
//! - Step leaf `t`: `H_"lupus trace leaf v1"(u64 t || H(batch) || op root || u32 loss bits
//!   || H(S_{t+1}))`, loss bits being `f32::to_bits` of the step's loss.
//! - Final leaf (index `H`): `H_"lupus trace final v1"(u64 H || H(S_H) || H(delta))`, with
//!   `H(delta)` = [`QuantDelta::hash`] of `quantise_delta(S_0.params, S_H.params)`.
//! - Trace root = Merkle root over `[leaf 0, .., leaf H-1, final leaf]` (`H + 1` items).
//!
//! The worker computes `H(S_{t+1})` from the committed hashes of the AdamW updates'
//! outputs ([`next_state_hash_from_tape`]): they are the next state, so hashing the state
//! a second time (3P floats) would only repeat work. The value is the same either way.

use serde::{Deserialize, Serialize};

use crate::graph::{OpRecord, Recompute, StepOutput, ValueRef};
use crate::merkle::{Digest, MerkleError, root_of};
use crate::model::Batch;
use crate::ops::OpKind;
use crate::optim::TrainState;
use crate::prf::domain_hasher;
use crate::tensor::Tensor;

/// `T(x)` as a [`Digest`].
pub fn tensor_digest(t: &Tensor) -> Digest {
    Digest(t.hash())
}

/// The role of a tensor in the training state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRole {
    Param = 0,
    Moment1 = 1,
    Moment2 = 2,
}

/// The state item of one tensor.
pub fn state_tensor_item(role: StateRole, index: u32, tensor_hash: &Digest) -> Digest {
    let mut h = domain_hasher("lupus state tensor v1");
    h.update(&[role as u8]);
    h.update(&index.to_le_bytes());
    h.update(&tensor_hash.0);
    h.finalize().into()
}

/// The step-counter item of a state.
pub fn state_step_item(step: u64) -> Digest {
    let mut h = domain_hasher("lupus state step v1");
    h.update(&step.to_le_bytes());
    h.finalize().into()
}

/// The position of a state tensor in the state tree of a model with `p` tensors.
pub fn state_position(role: StateRole, index: u32, p: usize) -> usize {
    role as usize * p + index as usize
}

/// The state items of tensors `params, m, v` (each `p` long) and a step counter.
pub fn state_items_from_hashes(
    params: &[Digest],
    m: &[Digest],
    v: &[Digest],
    step: u64,
) -> Vec<Digest> {
    let mut items = Vec::with_capacity(params.len() * 3 + 1);
    for (role, list) in [
        (StateRole::Param, params),
        (StateRole::Moment1, m),
        (StateRole::Moment2, v),
    ] {
        items.extend(
            list.iter()
                .enumerate()
                .map(|(i, d)| state_tensor_item(role, i as u32, d)),
        );
    }
    items.push(state_step_item(step));
    items
}

/// The state items of a training state.
pub fn state_items(state: &TrainState) -> Vec<Digest> {
    let hashes = |ts: &[Tensor]| ts.iter().map(tensor_digest).collect::<Vec<_>>();
    state_items_from_hashes(
        &hashes(&state.params),
        &hashes(&state.m),
        &hashes(&state.v),
        state.step,
    )
}

/// `H(S)`.
pub fn state_hash(state: &TrainState) -> Digest {
    // A state always has its step item, so the tree is never empty.
    root_of(&state_items(state)).unwrap_or_default()
}

/// `H(S_0)` for a task that starts from `base` with a fresh optimizer state.
pub fn base_state_hash(base: &[Tensor]) -> Digest {
    state_hash(&TrainState::fresh(base.to_vec()))
}

/// The hash of a batch from the hashes of its two tensors.
pub fn batch_hash_parts(inputs: &Digest, targets: &Digest) -> Digest {
    let mut h = domain_hasher("lupus batch v1");
    h.update(&inputs.0);
    h.update(&targets.0);
    h.finalize().into()
}

/// `H(batch)`.
pub fn batch_hash(batch: &Batch) -> Digest {
    batch_hash_parts(
        &tensor_digest(&batch.inputs),
        &tensor_digest(&batch.targets),
    )
}

/// `desc(op)`.
pub fn op_desc(kind: &OpKind, inputs: &[ValueRef]) -> Digest {
    // Serialising these plain enums cannot fail; an empty string would still be bound.
    let json = serde_json::to_vec(&(kind, inputs)).unwrap_or_default();
    let mut h = domain_hasher("lupus op desc v1");
    h.update(&json);
    h.finalize().into()
}

/// One committed op output: the preimage of its item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpOutputCommit {
    /// Index of the op in the step's tape.
    pub op: u32,
    /// Index of the output among the op's outputs.
    pub output: u32,
    /// `desc(op)`.
    pub desc: Digest,
    /// `T(output)`.
    pub tensor: Digest,
}

impl OpOutputCommit {
    /// The op-output item.
    pub fn item(&self) -> Digest {
        let mut h = domain_hasher("lupus op leaf v1");
        h.update(&self.op.to_le_bytes());
        h.update(&self.output.to_le_bytes());
        h.update(&self.desc.0);
        h.update(&self.tensor.0);
        h.finalize().into()
    }
}

/// The op-output commits of a step's tape, in order.
pub fn op_commits(ops: &[OpRecord]) -> Vec<OpOutputCommit> {
    let mut out = Vec::new();
    for (i, rec) in ops.iter().enumerate() {
        let desc = op_desc(&rec.kind, &rec.inputs);
        for (o, t) in rec.outputs.iter().enumerate() {
            out.push(OpOutputCommit {
                op: i as u32,
                output: o as u32,
                desc,
                tensor: tensor_digest(t),
            });
        }
    }
    out
}

/// The op root over a step's op-output commits.
pub fn op_root(commits: &[OpOutputCommit]) -> Result<Digest, MerkleError> {
    root_of(&commits.iter().map(OpOutputCommit::item).collect::<Vec<_>>())
}

/// `H(S_{t+1})` from a step's tape: the outputs `(param', m', v')` of the AdamW update of
/// parameter `i` (the op whose first input is `Param(i)`) ARE tensor `i` of the next
/// state, so their committed hashes give the state hash without hashing the state again.
/// `None` unless the tape updates each of the `p` parameters exactly once.
pub fn next_state_hash_from_tape(
    ops: &[OpRecord],
    commits: &[OpOutputCommit],
    p: usize,
    next_step: u64,
) -> Option<Digest> {
    next_state_hash_from_nodes(
        ops.iter()
            .map(|rec| (&rec.kind, rec.inputs.as_slice(), rec.outputs.len())),
        commits,
        p,
        next_step,
    )
}

/// [`next_state_hash_from_tape`] from the tape's nodes alone: `(kind, inputs, number of
/// outputs)` per op, in tape order. A worker that hashes op outputs as they are
/// computed (and never keeps the tape) commits through this.
pub fn next_state_hash_from_nodes<'a>(
    nodes: impl Iterator<Item = (&'a OpKind, &'a [ValueRef], usize)>,
    commits: &[OpOutputCommit],
    p: usize,
    next_step: u64,
) -> Option<Digest> {
    let mut slots: Vec<Option<[Digest; 3]>> = vec![None; p];
    // Commits are in tape order but need not cover every op (the backward pass is not
    // committed while training): each update's three are found by their op index.
    let mut rest = commits;
    for (i, (kind, inputs, n)) in nodes.enumerate() {
        if matches!(kind, OpKind::AdamWUpdate { .. }) {
            let ValueRef::Param(k) = inputs.first()? else {
                return None;
            };
            let skip = rest.iter().take_while(|c| c.op < i as u32).count();
            rest = &rest[skip..];
            let [p, m, v] = rest.get(..n)? else {
                return None;
            };
            rest = &rest[n..];
            let slot = slots.get_mut(*k as usize)?;
            if slot.is_some()
                || [p, m, v]
                    .iter()
                    .zip(0u32..)
                    .any(|(c, o)| c.op != i as u32 || c.output != o)
            {
                return None;
            }
            *slot = Some([p.tensor, m.tensor, v.tensor]);
        }
    }
    let mut params = Vec::with_capacity(p);
    let mut m = Vec::with_capacity(p);
    let mut v = Vec::with_capacity(p);
    for s in slots {
        let [a, b, c] = s?;
        params.push(a);
        m.push(b);
        v.push(c);
    }
    root_of(&state_items_from_hashes(&params, &m, &v, next_step)).ok()
}

/// The commits a worker makes while it trains: those of the ops not in `recompute`
/// ([`crate::graph::Plan::recomputed`]), in tape order.
pub fn committed(commits: &[OpOutputCommit], recompute: &Recompute) -> Vec<OpOutputCommit> {
    commits
        .iter()
        .filter(|c| !recompute.contains(c.op, c.output))
        .copied()
        .collect()
}

/// The commits an opening recomputes, in tape order.
pub fn recomputed(commits: &[OpOutputCommit], recompute: &Recompute) -> Vec<OpOutputCommit> {
    commits
        .iter()
        .filter(|c| recompute.contains(c.op, c.output))
        .copied()
        .collect()
}

/// What a worker signs for opened step `step` of the trace `trace_root`: the root of
/// the op outputs it recomputed for the opening,
/// `H_"lupus recomputed ops v1"(trace_root || u32 step || root)`. The signature binds
/// the recomputed outputs to the worker as the trace root binds the committed ones, so
/// a fraud proof may cite either and no one else (the operator who stores the
/// opening included) can put words in the worker's mouth.
pub fn recomputed_message(trace_root: &Digest, step: u32, root: &Digest) -> Digest {
    let mut h = domain_hasher("lupus recomputed ops v1");
    h.update(&trace_root.0);
    h.update(&step.to_le_bytes());
    h.update(&root.0);
    h.finalize().into()
}

/// Whether `signature` is `worker`'s over [`recomputed_message`] of the trace, the
/// step and the recomputed commits' root (`verify_strict`: no small-order keys, no
/// malleable signatures).
pub fn recomputed_signature_holds(
    worker: &[u8; 32],
    trace_root: &Digest,
    step: u32,
    root: &Digest,
    signature: &lupus_types::Sig,
) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(worker) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(&recomputed_message(trace_root, step, root).0, &sig)
        .is_ok()
}

/// Commits step `step` that ran on `batch` and gave `out`: its leaf, whose op root is
/// over the commits of the ops not recomputed, and every op-output commit of the tape.
pub fn commit_step(
    step: u32,
    batch: &Batch,
    out: &StepOutput,
) -> Result<(StepLeaf, Vec<OpOutputCommit>), MerkleError> {
    let commits = op_commits(&out.ops);
    let next_state =
        next_state_hash_from_tape(&out.ops, &commits, out.state.params.len(), out.state.step)
            .unwrap_or_else(|| state_hash(&out.state));
    let leaf = StepLeaf {
        step,
        batch: batch_hash(batch),
        op_root: op_root(&committed(&commits, &out.recompute))?,
        loss_bits: out.loss.to_bits(),
        next_state,
    };
    Ok((leaf, commits))
}

/// The leaf of step `t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepLeaf {
    pub step: u32,
    pub batch: Digest,
    pub op_root: Digest,
    /// `f32::to_bits` of the step's loss.
    pub loss_bits: u32,
    /// `H(S_{t+1})`.
    pub next_state: Digest,
}

impl StepLeaf {
    /// The leaf item.
    pub fn item(&self) -> Digest {
        let mut h = domain_hasher("lupus trace leaf v1");
        h.update(&u64::from(self.step).to_le_bytes());
        h.update(&self.batch.0);
        h.update(&self.op_root.0);
        h.update(&self.loss_bits.to_le_bytes());
        h.update(&self.next_state.0);
        h.finalize().into()
    }

    /// The loss as a number.
    pub fn loss(&self) -> f32 {
        f32::from_bits(self.loss_bits)
    }
}

/// The final leaf: binds the final state, the delta, and the device's known-answer
/// report, which decides the task's class ([`crate::kat::decided_class`]). It is in the
/// trace root the worker signs, and every opening and submission opens it, so the
/// class is the worker's signed report, not a claim the coordinator takes on trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FinalLeaf {
    /// `H`, the number of steps.
    pub steps: u32,
    /// `H(S_H)`.
    pub state: Digest,
    /// `H(delta)`.
    pub delta: Digest,
    /// The [`crate::kat::combined_digest`] of the known-answer suite as the worker's
    /// device ran it: [`crate::kat::expected_digest`] for an exact-class device.
    pub kat: Digest,
}

impl FinalLeaf {
    /// The leaf item.
    pub fn item(&self) -> Digest {
        let mut h = domain_hasher("lupus trace final v2");
        h.update(&u64::from(self.steps).to_le_bytes());
        h.update(&self.state.0);
        h.update(&self.delta.0);
        h.update(&self.kat.0);
        h.finalize().into()
    }
}

/// A leaf of the trace tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceLeaf {
    Step(StepLeaf),
    Final(FinalLeaf),
}

impl TraceLeaf {
    /// The leaf item.
    pub fn item(&self) -> Digest {
        match self {
            TraceLeaf::Step(l) => l.item(),
            TraceLeaf::Final(l) => l.item(),
        }
    }
}

/// What a worker submits and the log records: `{trace_root, final_state_hash, delta_hash}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Commitment {
    pub trace_root: Digest,
    pub final_state_hash: Digest,
    pub delta_hash: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_bind_every_field() {
        let d = |b: u8| Digest([b; 32]);
        let leaf = StepLeaf {
            step: 3,
            batch: d(1),
            op_root: d(2),
            loss_bits: 7,
            next_state: d(3),
        };
        let mut other = leaf;
        other.loss_bits = 8;
        assert_ne!(leaf.item(), other.item());
        other = leaf;
        other.step = 4;
        assert_ne!(leaf.item(), other.item());
        let c = OpOutputCommit {
            op: 1,
            output: 0,
            desc: d(4),
            tensor: d(5),
        };
        assert_ne!(c.item(), OpOutputCommit { output: 1, ..c }.item());
        assert_ne!(c.item(), OpOutputCommit { op: 2, ..c }.item());
        assert_ne!(
            state_tensor_item(StateRole::Param, 0, &d(1)),
            state_tensor_item(StateRole::Moment1, 0, &d(1))
        );
        let f = FinalLeaf {
            steps: 4,
            state: d(1),
            delta: d(2),
            kat: d(6),
        };
        assert_ne!(f.item(), FinalLeaf { delta: d(3), ..f }.item());
        assert_ne!(f.item(), FinalLeaf { kat: d(7), ..f }.item());
    }
}
