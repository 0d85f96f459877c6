//! The JSON shapes of the ledger and prover types that the bodies of [`crate::types`]
//! carry, for the coordinator's OpenAPI document (`GET /openapi.json`).
//!
//! `lupus-ledger` and `lupus-prover` stay free of HTTP concerns, so they derive no
//! schemas. The types here are never built: each describes, field for field, what
//! `serde_json` writes for the real type of the same name (hex strings for keys and
//! digests, decimal strings for amounts, bare numbers for indices and rounds, the
//! same enum tags), and the fields of [`crate::types`] point at them with
//! `#[schema(value_type = ...)]`. The coordinator's `tests/http.rs` checks real
//! response and request bodies against the document, so a shape that drifts from its
//! type fails a test.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

/// A string schema with a description and a pattern.
fn string(description: &str, pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .into()
}

/// 32 bytes as 64 hex digits.
pub const HEX32: &str = "^[0-9a-fA-F]{64}$";
/// 64 bytes as 128 hex digits.
pub const HEX64: &str = "^[0-9a-fA-F]{128}$";
/// A canonical decimal `u64`: digits only, no leading zero.
pub const DECIMAL: &str = "^(0|[1-9][0-9]*)$";

macro_rules! string_schema {
    ($(#[$doc:meta])* $name:ident, $description:expr, $pattern:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string($description, $pattern)
            }
        }

        impl ToSchema for $name {}
    };
}

string_schema!(
    /// `lupus_ledger::entry::PublicKey`.
    PublicKey,
    "An Ed25519 public key: its 32-byte compressed encoding as 64 hex digits \
     (written lowercase, read in either case).",
    HEX32
);
string_schema!(
    /// `lupus_types::Digest` (re-exported as `lupus_ledger::entry::Digest` and `lupus_prover::merkle::Digest`).
    Digest,
    "A blake3 digest (a model or blob hash, a trace root, a beacon, a Merkle root) as \
     64 hex digits (written lowercase, read in either case).",
    HEX32
);
string_schema!(
    /// `lupus_ledger::hash::Hash`.
    Hash,
    "An RFC 9162 SHA-256 tree hash as 64 hex digits.",
    HEX32
);
string_schema!(
    /// `lupus_ledger::entry::Amount`.
    Amount,
    "An amount of credit in verified training FLOPs, as a decimal string (JavaScript \
     numbers lose integers above 2^53): digits only, no sign, no leading zero.",
    DECIMAL
);

impl PartialSchema for crate::types::B64 {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
            .content_encoding("base64")
            .description(Some("Bytes as standard padded base64."))
            .into()
    }
}

impl ToSchema for crate::types::B64 {}

impl PartialSchema for crate::types::Sig {
    fn schema() -> RefOr<Schema> {
        string("A 64-byte Ed25519 signature as 128 hex digits.", HEX64)
    }
}

impl ToSchema for crate::types::Sig {}

/// `lupus_ledger::entry::Role`: what a participant does in a job.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Trains tasks.
    Worker,
    /// Replays challenged steps and signs verdicts.
    Verifier,
}

/// `lupus_ledger::entry::CreditKind`: what a credit pays for.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Work,
    Verification,
}

/// `lupus_ledger::entry::Entry`: a log entry, decoded. `signature` is the
/// participant's signature (128 hex digits) for the kinds a participant signs
/// (`participant_joined`, `work_committed`, `verdict`), else null.
#[derive(ToSchema)]
pub struct Entry {
    pub body: EntryBody,
    #[schema(required = true)]
    pub signature: Option<crate::types::Sig>,
}

/// `lupus_ledger::entry::EntryBody`: what an entry says, tagged by `type`
/// (DESIGN.md, "The loop").
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryBody {
    /// Entry 0: the job, its data and the keys that speak for the log.
    Genesis {
        /// The job spec, TOML, exactly as the coordinator loaded it.
        job_spec: String,
        job_hash: Digest,
        dataset_root: Digest,
        /// The coordinator's Ed25519 key (its checkpoint signing key).
        log_key: PublicKey,
        /// The checkpoint verifier key, `<name>+<hexid>+<base64>`.
        coordinator_note_key: String,
        /// Creation time, unix ms.
        created_ms: u64,
    },
    /// A participant's key enters the job, signed by `key` (proof of possession).
    ParticipantJoined {
        key: PublicKey,
        role: Role,
        name: String,
    },
    /// A round starts from `base_model`, its beacon committed as `blake3(r)`.
    RoundOpened {
        round: u64,
        base_model: Digest,
        beacon_commitment: Digest,
        inner_steps: u32,
        deadline_ms: u64,
    },
    /// A task handed to `worker`, logged before it goes out.
    TaskAssigned {
        task: u64,
        round: u64,
        worker: PublicKey,
        seed: Digest,
        inner_steps: u32,
        batch_size: u32,
    },
    /// The worker's commitment to its trace, final state and delta, signed by `worker`.
    WorkCommitted {
        task: u64,
        worker: PublicKey,
        trace_root: Digest,
        final_state: Digest,
        delta: Digest,
    },
    /// The steps a verifier must replay.
    ChallengeIssued {
        task: u64,
        verifier: PublicKey,
        steps: Vec<u32>,
    },
    /// A verifier's judgment of a task, signed by `verifier`.
    Verdict {
        task: u64,
        verifier: PublicKey,
        accepted: bool,
        steps: Vec<u32>,
        reason: String,
        /// blake3 of the fraud proof, when the verdict rejects with one.
        #[schema(required = true)]
        evidence: Option<Digest>,
    },
    /// A round ends: the beacon revealed, the merged model, its validation loss.
    RoundClosed {
        round: u64,
        beacon: Digest,
        new_model: Digest,
        /// `f32::to_bits` of the validation loss.
        val_loss_bits: u32,
        accepted_tasks: u32,
    },
    /// Credit to `key` for `task` in `round`; pending until that round closes.
    Credit {
        round: u64,
        key: PublicKey,
        amount: Amount,
        task: u64,
        kind: CreditKind,
    },
    /// Proven fraud: `key` forfeits every credit.
    Slashed {
        key: PublicKey,
        task: u64,
        reason: String,
        #[schema(required = true)]
        evidence: Option<Digest>,
    },
    /// The Merkle-sum tree of final balances after `round` closed.
    SharesEpoch {
        epoch: u64,
        round: u64,
        root: Digest,
        total: Amount,
        accounts: u64,
    },
}

/// `lupus_ledger::proof::InclusionProof`: RFC 9162 §2.1.3, the audit path of one leaf
/// to the root of a tree of `size`.
#[derive(ToSchema)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    /// Sibling hashes, leaf level first.
    pub path: Vec<Hash>,
}

/// `lupus_ledger::proof::ConsistencyProof`: RFC 9162 §2.1.4, the tree of `old_size` is
/// a prefix of the tree of `new_size`.
#[derive(ToSchema)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    /// Proof hashes, bottom first (RFC 9162 §2.1.4.1).
    pub path: Vec<Hash>,
}

/// `lupus_ledger::sumtree::SumNode`: a node of the Merkle-sum tree.
#[derive(ToSchema)]
pub struct SumNode {
    pub hash: Digest,
    pub sum: Amount,
}

/// `lupus_ledger::sumtree::SumProof`: one account's balance under a sum-tree root.
#[derive(ToSchema)]
pub struct SumProof {
    /// The account's leaf index (its rank in key order).
    pub index: u64,
    /// The number of accounts in the tree.
    pub accounts: u64,
    /// Siblings from the leaf level up.
    pub siblings: Vec<SumNode>,
}

/// `lupus_ledger::stake::StakeStatement`: a self-contained proof of one account's
/// stake at one shares epoch, verifiable offline with the log's key
/// (`lupus-audit stake`).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StakeStatement {
    /// Format version (1).
    pub version: u32,
    pub pubkey: PublicKey,
    /// The account's final balance at the epoch.
    pub balance: Amount,
    /// The sum of every final balance at the epoch.
    pub total: Amount,
    pub epoch: u64,
    /// Puts `(pubkey, balance)` under the epoch's sum-tree root and total.
    pub sum_proof: SumProof,
    /// Log index of the `SharesEpoch` entry.
    pub entry_index: u64,
    /// The `SharesEpoch` entry's canonical bytes.
    pub entry: crate::types::B64,
    /// Includes the entry under the checkpoint's root.
    pub inclusion: InclusionProof,
    /// The log's signed checkpoint (a C2SP signed note).
    pub checkpoint: String,
}

/// `lupus_prover::trace::Commitment`: what a worker commits to and the log records.
#[derive(ToSchema)]
pub struct Commitment {
    pub trace_root: Digest,
    pub final_state_hash: Digest,
    pub delta_hash: Digest,
}

/// `lupus_prover::verify::DeviceClass`: which replay rule applies to a worker's
/// device, from its known-answer suite.
#[derive(ToSchema)]
pub enum DeviceClass {
    /// Same bits as the CPU reference: verdicts compare hashes.
    Exact,
    /// Different bits: the worker opens `S_{t+1}` and a calibrated bound applies.
    Tolerant,
}

/// `lupus_prover::merkle::MultiProof`: sibling hashes proving items at positions of
/// a tree, level by level from the leaves up.
#[derive(ToSchema)]
pub struct MultiProof {
    pub hashes: Vec<Digest>,
}

/// `lupus_prover::tensor::Tensor`: a dense row-major tensor of finite `f32` values.
#[derive(ToSchema)]
pub struct Tensor {
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
}

/// `lupus_prover::trace::StepLeaf`: the trace leaf of one step.
#[derive(ToSchema)]
pub struct StepLeaf {
    pub step: u32,
    pub batch: Digest,
    pub op_root: Digest,
    /// `f32::to_bits` of the step's loss.
    pub loss_bits: u32,
    /// `H(S_{t+1})`.
    pub next_state: Digest,
}

/// `lupus_prover::trace::FinalLeaf`: the last trace leaf.
#[derive(ToSchema)]
pub struct FinalLeaf {
    /// `H`, the number of steps.
    pub steps: u32,
    /// `H(S_H)`.
    pub state: Digest,
    /// `H(delta)`.
    pub delta: Digest,
}

/// `lupus_prover::trace::TraceLeaf`, tagged by `kind`.
#[derive(ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceLeaf {
    Step(StepLeaf),
    Final(FinalLeaf),
}

/// `lupus_prover::trace::OpOutputCommit`: one op output's commitment.
#[derive(ToSchema)]
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

/// `lupus_prover::task::FinalOpening`: proof that the delta is the one the trace
/// commits.
#[derive(ToSchema)]
pub struct FinalOpening {
    pub leaf: FinalLeaf,
    /// Proof of `leaf` at position `H` of the `H + 1` trace leaves.
    pub proof: MultiProof,
}

/// `lupus_prover::graph::ValueRef`: where an operator input comes from.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueRef {
    /// Parameter tensor `i` of the state entering the step.
    Param(u32),
    /// AdamW first moment `i`.
    Moment1(u32),
    /// AdamW second moment `i`.
    Moment2(u32),
    /// The batch inputs.
    Input,
    /// The batch targets.
    Target,
    /// Output `output` of tape entry `op`.
    Op { op: u32, output: u8 },
}

/// `lupus_prover::ops::OpKind`: an operator with its static attributes, tagged by `op`.
#[derive(ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    Embedding {
        vocab: u64,
        dim: u64,
    },
    EmbeddingBackward {
        vocab: u64,
        dim: u64,
    },
    Reshape {
        shape: Vec<u64>,
    },
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    AddBias,
    BiasBackward,
    Add,
    Relu,
    ReluBackward,
    AddPosition {
        seq: u64,
    },
    AddPositionBackward {
        seq: u64,
        context: u64,
    },
    LayerNorm {
        eps: f32,
    },
    LayerNormBackward,
    AttentionScores {
        heads: u64,
        seq: u64,
    },
    CausalSoftmax {
        seq: u64,
    },
    AttentionValues {
        heads: u64,
        seq: u64,
    },
    AttentionValuesBackward {
        heads: u64,
        seq: u64,
    },
    CausalSoftmaxBackward {
        seq: u64,
    },
    AttentionScoresBackward {
        heads: u64,
        seq: u64,
    },
    SoftmaxCrossEntropy,
    SoftmaxCrossEntropyBackward,
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

/// `lupus_prover::fraud::TraceLeaves`: trace leaves with one multiproof against the
/// trace root.
#[derive(ToSchema)]
pub struct TraceLeaves {
    /// `[position, leaf]` pairs.
    pub leaves: Vec<(u32, TraceLeaf)>,
    pub proof: MultiProof,
}

/// `lupus_prover::fraud::OpLeaves`: op-output commits with one multiproof against a
/// step's op root.
#[derive(ToSchema)]
pub struct OpLeaves {
    /// `[position, commit]` pairs, strictly increasing positions.
    pub leaves: Vec<(u32, OpOutputCommit)>,
    /// Number of op outputs of the step.
    pub total: u32,
    pub proof: MultiProof,
}

/// `lupus_prover::fraud::OpFraud`: a disputed operator.
#[derive(ToSchema)]
pub struct OpFraud {
    pub step: u32,
    pub trace: TraceLeaves,
    /// Index of the disputed op in the step's tape.
    pub op: u32,
    pub kind: OpKind,
    pub inputs: Vec<ValueRef>,
    /// The input tensors, one per reference.
    pub input_tensors: Vec<Tensor>,
    pub op_leaves: OpLeaves,
    /// Number of parameter tensors `P`.
    pub param_count: u32,
    /// Proof of the state inputs against `H(S_t)`, when there are any.
    #[schema(required = true)]
    pub state_proof: Option<MultiProof>,
    /// `[T(inputs), T(targets)]` of the batch, when a batch tensor is an input.
    #[schema(required = true)]
    pub batch_parts: Option<(Digest, Digest)>,
}

/// `lupus_prover::fraud::LossFraud`: a leaf whose loss bits are not the committed loss
/// output.
#[derive(ToSchema)]
pub struct LossFraud {
    pub step: u32,
    pub trace: TraceLeaves,
    /// Index of the `softmax_cross_entropy` op.
    pub op: u32,
    pub inputs: Vec<ValueRef>,
    /// The committed loss output (a one-element tensor).
    pub loss: Tensor,
    pub op_leaves: OpLeaves,
}

/// `lupus_prover::fraud::FraudProof`: a proof that a worker committed a value no
/// honest computation gives, tagged by `proof`.
#[derive(ToSchema)]
#[serde(tag = "proof", rename_all = "snake_case")]
pub enum FraudProof {
    Op(OpFraud),
    Loss(LossFraud),
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use lupus_prover::ops::OpKind as Real;
    use serde_json::Value;

    use super::*;

    /// The properties of each `oneOf` branch of an enum tagged by `tag`, by tag value.
    fn shapes(schema: RefOr<Schema>, tag: &str) -> BTreeMap<String, BTreeSet<String>> {
        let schema = serde_json::to_value(schema).unwrap();
        let mut out = BTreeMap::new();
        for branch in schema["oneOf"].as_array().unwrap() {
            let props = branch["properties"].as_object().unwrap();
            let name = props[tag]["enum"][0].as_str().unwrap().to_owned();
            out.insert(name, props.keys().cloned().collect());
        }
        out
    }

    #[test]
    fn every_operator_kind_is_described_with_its_fields() {
        let all = [
            Real::Embedding { vocab: 2, dim: 3 },
            Real::EmbeddingBackward { vocab: 2, dim: 3 },
            Real::Reshape { shape: vec![1, 2] },
            Real::MatMul {
                transpose_a: true,
                transpose_b: false,
            },
            Real::AddBias,
            Real::BiasBackward,
            Real::Add,
            Real::Relu,
            Real::ReluBackward,
            Real::AddPosition { seq: 4 },
            Real::AddPositionBackward { seq: 4, context: 8 },
            Real::LayerNorm { eps: 1e-5 },
            Real::LayerNormBackward,
            Real::AttentionScores { heads: 2, seq: 4 },
            Real::CausalSoftmax { seq: 4 },
            Real::AttentionValues { heads: 2, seq: 4 },
            Real::AttentionValuesBackward { heads: 2, seq: 4 },
            Real::CausalSoftmaxBackward { seq: 4 },
            Real::AttentionScoresBackward { heads: 2, seq: 4 },
            Real::SoftmaxCrossEntropy,
            Real::SoftmaxCrossEntropyBackward,
            Real::AdamWUpdate {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                step: 1,
            },
        ];
        let described = shapes(OpKind::schema(), "op");
        assert_eq!(described.len(), all.len());
        for kind in all {
            let json = serde_json::to_value(&kind).unwrap();
            let fields: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
            let Value::String(tag) = &json["op"] else {
                panic!("{json}");
            };
            assert_eq!(described.get(tag), Some(&fields), "{tag}");
        }
    }
}
