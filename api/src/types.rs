//! The JSON bodies of every endpoint. Keys, digests and hashes are lowercase hex,
//! amounts decimal strings, binary payloads standard padded base64 ([`B64`]).
//! Unknown fields are refused in requests (`deny_unknown_fields`), so a client's typo
//! is a 400 and not a silently ignored field.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lupus_ledger::entry::{
    Amount, Digest, Entry, EntryBody, EntryError, PublicKey, Role, Round, TaskId,
};
use lupus_prover::fraud::FraudProof;
use lupus_prover::task::FinalOpening;
use lupus_prover::trace::Commitment;
use lupus_prover::verify::DeviceClass;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// Bytes carried as standard padded base64 in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(B64)
            .map_err(|e| serde::de::Error::custom(format!("expected standard base64: {e}")))
    }
}

/// A 64-byte Ed25519 signature (128 hex digits in JSON); it lives in `lupus-types`
/// because openings and fraud proofs carry one too.
pub use lupus_types::Sig;

/// `GET /v1/job`: everything a participant needs before its first task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// The job spec (TOML) exactly as the genesis entry holds it.
    pub job_spec: String,
    pub job_hash: Digest,
    /// Merkle root of the normalised dataset (prover `Corpus::commitment`).
    pub dataset_root: Digest,
    /// blake3 of the normalised dataset bytes: fetch it from `/v1/blobs/<hash>`.
    pub dataset_blob: Digest,
    pub dataset_len: u64,
    /// The log's checkpoint verifier key, `<name>+<hexid>+<base64>`.
    pub log_key: String,
    /// Rounds an unruled task's opening is kept after its round closes (`None`:
    /// every opening is kept). Openings a referee's ruling judged are kept for good.
    #[serde(default)]
    pub keep_openings: Option<u64>,
}

/// `POST /v1/join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub role: Role,
    pub name: String,
    /// Signature over the canonical `ParticipantJoined` body ([`join_body`]) by the
    /// request's key: proof of possession, logged with the entry.
    pub signature: Sig,
}

/// The `ParticipantJoined` body a [`JoinRequest`] signs.
pub fn join_body(key: PublicKey, role: Role, name: &str) -> EntryBody {
    EntryBody::ParticipantJoined {
        key,
        role,
        name: name.to_owned(),
    }
}

/// The answer to a join (also to a repeated join of the same key and role).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub key: PublicKey,
    pub role: Role,
    /// Log index of the `ParticipantJoined` entry.
    pub entry_index: u64,
}

/// `POST /v1/tasks/next` and `POST /v1/verify/next` take an empty JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {}

/// A task as the worker receives it (what its `TaskAssigned` entry says, plus the
/// round's context).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskDescription {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    #[schema(value_type = u64)]
    pub round: Round,
    pub worker: PublicKey,
    /// blake3 of the base model blob (fetch `/v1/blobs/<hash>`).
    pub base_model: Digest,
    /// The task's data seed (`derive_task_seed(task, worker, beacon_commitment)`).
    pub seed: Digest,
    pub inner_steps: u32,
    pub batch_size: u32,
    pub job_hash: Digest,
    pub beacon_commitment: Digest,
    /// Submit before this time (unix ms) or the task is reassigned.
    pub deadline_ms: u64,
    /// Log index of the `TaskAssigned` entry.
    pub entry_index: u64,
}

/// The answer to `POST /v1/tasks/next`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOffer {
    Task(TaskDescription),
    /// Nothing to do now; ask again later.
    Wait {
        retry_after_ms: u64,
        reason: String,
    },
}

/// `POST /v1/tasks/<id>/submit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The canonical bytes of the `WorkCommitted` entry, signed by the worker
    /// ([`work_committed_body`]).
    pub work_committed: B64,
    /// The int8 delta (`QuantDelta::to_bytes`).
    pub delta: B64,
    /// The opening of the final trace leaf, proving the delta is the trace's.
    pub final_opening: FinalOpening,
    /// The worker's device class from its known-answer suite.
    pub device_class: DeviceClass,
}

/// The `WorkCommitted` body of a task's commitment.
pub fn work_committed_body(task: TaskId, worker: PublicKey, c: &Commitment) -> EntryBody {
    EntryBody::WorkCommitted {
        task,
        worker,
        trace_root: c.trace_root,
        final_state: c.final_state_hash,
        delta: c.delta_hash,
    }
}

/// The steps a worker must open. Derived as `challenge_steps(r, trace_root, H, m)`
/// only after the commitment is logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Challenge {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    pub steps: Vec<u32>,
    /// Whether the opening must include `S_{t+1}` (tolerant class).
    pub tolerant: bool,
}

/// The answer to a submission: the commitment is durable; here is the challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmissionReceipt {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    /// Log index of the `WorkCommitted` entry.
    pub entry_index: u64,
    pub challenge: Challenge,
    /// The log's signed receipt for the entry (`lupus_ledger::receipt`): keep it, it
    /// proves the coordinator took the work at `entry_index`.
    #[serde(default)]
    pub receipt: String,
}

/// `POST /v1/tasks/<id>/opening` takes a prover
/// [`Opening`](lupus_prover::task::Opening) in its canonical binary encoding
/// ([`Opening::to_bytes`](lupus_prover::task::Opening::to_bytes),
/// `application/octet-stream`); this is the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpeningReceipt {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    /// blake3 of the stored opening: the bytes that were posted.
    pub opening_blob: Digest,
    /// Log index of the `TaskOpened` entry (absent when the task was already
    /// opened by an earlier upload, whose answer carried it).
    #[serde(default)]
    pub entry_index: Option<u64>,
    /// The log's signed receipt for that entry (`lupus_ledger::receipt`); empty
    /// with no `entry_index`.
    #[serde(default)]
    pub receipt: String,
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Handed out, waiting for the work.
    Assigned,
    /// Work committed, waiting for the opening.
    Committed,
    /// Opened, waiting for verdicts.
    Opened,
    /// Verified and accepted (merged when the round closes).
    Accepted,
    /// Failed verification: the worker was slashed, the delta is not merged.
    Rejected,
    /// Not returned before the deadline: reassigned.
    Expired,
}

/// `GET /v1/tasks/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    #[schema(value_type = u64)]
    pub round: Round,
    pub worker: PublicKey,
    pub state: TaskState,
    /// The challenge, once the work is committed.
    pub challenge: Option<Challenge>,
    pub verdicts: Vec<VerdictSummary>,
    /// blake3 of the worker's opening (its binary encoding,
    /// [`Opening::to_bytes`](lupus_prover::task::Opening::to_bytes), under
    /// `/v1/blobs/`), once it answered the challenge: what a verifier or an
    /// auditor fetches to replay the challenged steps.
    #[serde(default)]
    pub opening_blob: Option<Digest>,
    /// Whether the worker's commitment declared the tolerant device class (a replay
    /// then compares within the job's tolerance): what an auditor's replay of a task
    /// of any round needs besides the opening.
    #[serde(default)]
    pub tolerant: bool,
    /// The task's round closed long enough ago that the coordinator keeps only its
    /// worker and outcome: `verdicts` is empty here, and its entries in the log say
    /// the rest (`lupus-audit` reads them).
    #[serde(default)]
    pub retired: bool,
}

/// One verifier's verdict on a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerdictSummary {
    pub verifier: PublicKey,
    pub accepted: bool,
    pub reason: String,
    pub entry_index: u64,
}

/// What a verifier receives: everything `verify_opening` needs but the job, the corpus,
/// the base model (which it fetches once per round by hash) and the opening (which it
/// fetches by hash from `/v1/blobs/`, and decodes with
/// [`Opening::from_bytes`](lupus_prover::task::Opening::from_bytes)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyJob {
    pub task: TaskDescription,
    pub commitment: Commitment,
    pub steps: Vec<u32>,
    pub device_class: DeviceClass,
    /// blake3 of the worker's opening, in its binary encoding.
    pub opening_blob: Digest,
    /// Log index of the `ChallengeIssued` entry naming this verifier.
    pub challenge_index: u64,
}

/// The answer to `POST /v1/verify/next`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one per verifier request; boxing buys nothing
pub enum VerifyOffer {
    Job(VerifyJob),
    Wait { retry_after_ms: u64, reason: String },
}

/// `POST /v1/verify/<id>/verdict`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictSubmission {
    /// The canonical bytes of the `Verdict` entry, signed by the verifier
    /// ([`verdict_body`]).
    pub verdict: B64,
    /// The fraud proof when the verdict rejects with one; its [`evidence_digest`] is the
    /// entry's `evidence`.
    pub fraud_proof: Option<FraudProof>,
}

/// The digest a `Verdict` or `Slashed` entry names as evidence for a fraud proof:
/// blake3 of its JSON (`serde_json::to_vec`, which writes fields in declaration order).
pub fn evidence_digest(proof: &FraudProof) -> Digest {
    Digest::of(&serde_json::to_vec(proof).unwrap_or_default())
}

/// The `Verdict` body a verifier signs.
pub fn verdict_body(
    task: TaskId,
    verifier: PublicKey,
    accepted: bool,
    steps: Vec<u32>,
    reason: &str,
    evidence: Option<Digest>,
) -> EntryBody {
    EntryBody::Verdict {
        task,
        verifier,
        accepted,
        steps,
        reason: reason
            .chars()
            .take(lupus_ledger::entry::MAX_REASON / 4)
            .collect(),
        evidence,
    }
}

/// What the coordinator made of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictOutcome {
    /// The task is accepted.
    Accepted,
    /// The task is rejected and its worker slashed.
    Rejected,
    /// A second verdict is awaited (double check).
    Pending,
    /// The coordinator's replay contradicted this verdict: the verifier was slashed.
    Overruled,
}

/// The answer to a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerdictReceipt {
    #[schema(value_type = u64)]
    pub task_id: TaskId,
    /// Log index of the `Verdict` entry.
    pub entry_index: u64,
    pub outcome: VerdictOutcome,
    /// The log's signed receipt for the entry (`lupus_ledger::receipt`).
    #[serde(default)]
    pub receipt: String,
}

/// Where a round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundPhase {
    Open,
    Closed,
}

/// `GET /v1/rounds/current` and `/v1/rounds/<n>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoundStatus {
    #[schema(value_type = u64)]
    pub round: Round,
    pub phase: RoundPhase,
    pub base_model: Digest,
    pub beacon_commitment: Digest,
    pub deadline_ms: u64,
    /// Accepted tasks the round waits for before it closes.
    pub target_tasks: u32,
    pub assigned: u32,
    pub committed: u32,
    pub accepted: u32,
    pub rejected: u32,
    pub expired: u32,
    /// Set once closed.
    pub beacon: Option<Digest>,
    pub new_model: Option<Digest>,
    pub val_loss: Option<f32>,
}

/// `GET /v1/rounds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoundList {
    pub rounds: Vec<RoundStatus>,
    /// Rounds the job runs for (the coordinator stops opening rounds after it).
    pub max_rounds: Option<u64>,
}

/// One row of the stake table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StakeRow {
    pub key: PublicKey,
    pub balance: Amount,
}

/// `GET /v1/stake`: the balances the latest `SharesEpoch` commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StakeTable {
    pub epoch: Option<u64>,
    #[schema(value_type = Option<u64>)]
    pub round: Option<Round>,
    pub entry_index: Option<u64>,
    pub total: Amount,
    pub accounts: Vec<StakeRow>,
    /// Keys slashed for fraud.
    pub slashed: Vec<PublicKey>,
}

/// `GET /v1/entries/<index>`: one log entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryView {
    pub index: u64,
    /// RFC 9162 leaf hash, hex.
    #[schema(value_type = lupus_ledger::hash::Hash)]
    pub leaf_hash: String,
    pub entry: Entry,
}

/// Decodes a signed entry from a request, for the coordinator and tests.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, EntryError> {
    Entry::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_tagged_and_requests_refuse_unknown_fields() {
        let w = TaskOffer::Wait {
            retry_after_ms: 5,
            reason: "no round".into(),
        };
        let json = serde_json::to_string(&w).unwrap();
        assert!(json.contains("\"status\":\"wait\""), "{json}");
        assert_eq!(serde_json::from_str::<TaskOffer>(&json).unwrap(), w);
        assert!(serde_json::from_str::<NextRequest>("{\"x\":1}").is_err());
        assert!(serde_json::from_str::<NextRequest>("{}").is_ok());
        let b = B64(vec![1, 2, 3]);
        let s = serde_json::to_string(&b).unwrap();
        assert_eq!(s, "\"AQID\"");
        assert_eq!(serde_json::from_str::<B64>(&s).unwrap(), b);
        assert!(serde_json::from_str::<B64>("\"!!\"").is_err());
        assert!(serde_json::from_str::<Sig>("\"00\"").is_err());
    }

    #[test]
    fn entry_bodies_carry_the_commitment() {
        let c = Commitment {
            trace_root: Digest([1; 32]),
            final_state_hash: Digest([2; 32]),
            delta_hash: Digest([3; 32]),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let body = work_committed_body(TaskId(7), PublicKey::from(&key), &c);
        let e = Entry::signed(body, &key).unwrap();
        let back = decode_entry(e.as_bytes()).unwrap();
        match back.body() {
            EntryBody::WorkCommitted { task, delta, .. } => {
                assert_eq!(*task, TaskId(7));
                assert_eq!(*delta, Digest([3; 32]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
