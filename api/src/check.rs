//! The checks the coordinator runs on a request body before it touches any state:
//! what a body must be, on its own and against the task it names, to be worth a lock,
//! a blob write or a log append.
//!
//! These are pure functions of the body and of what the coordinator already knows (the
//! task, the participant's key, the job's parameter shapes, the challenged steps), so
//! the coordinator's handlers, the tests and the fuzz targets (`fuzz/`) run the very
//! same code on hostile bytes. Each rule is a [`BodyError`] variant; the coordinator
//! turns [`BodyError::is_malformed`] errors into 400 and the others into 422.
//!
//! - [`check_submission`] (`POST /v1/tasks/<id>/submit`): the `WorkCommitted` entry
//!   decodes (its worker signature verifies) and names this task and worker; the int8
//!   delta decodes strictly, has the model's shapes and hashes to the committed delta
//!   hash; the final trace leaf opening proves that delta under the trace root.
//! - [`check_opening`] (`POST /v1/tasks/<id>/opening`): the opening covers exactly the
//!   challenged steps.
//! - [`check_verdict`] (`POST /v1/verify/<id>/verdict`): the `Verdict` entry decodes
//!   (its verifier signature verifies), names this task, verifier and steps, and its
//!   evidence is the digest of the fraud proof sent with it, if and only if one is.

use lupus_ledger::entry::{Digest, Entry, EntryBody, EntryError, EntryKind, PublicKey, TaskId};
use lupus_prover::model::ModelError;
use lupus_prover::quant::QuantDelta;
use lupus_prover::task::Opening;
use lupus_prover::trace::Commitment;
use lupus_prover::verify::{RejectReason, verify_submission};

use crate::types::{Submission, VerdictSubmission, evidence_digest, prover_digest};

/// Why a request body is refused before any state changes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The signed entry in the body does not decode (encoding or signature).
    #[error("{field} entry: {source}")]
    Entry {
        /// The body's field holding the entry.
        field: &'static str,
        /// What was wrong with it.
        source: EntryError,
    },
    /// The signed entry is of another kind than the endpoint takes.
    #[error("{field} is a {kind} entry, expected {field}")]
    WrongKind {
        /// The body's field holding the entry.
        field: &'static str,
        /// The kind it holds.
        kind: EntryKind,
    },
    /// The signed entry names another task or participant (or step list).
    #[error("the {kind} entry names another task or {who}")]
    WrongSubject {
        /// The entry's kind.
        kind: EntryKind,
        /// What it must name: "worker" or "verifier or step list".
        who: &'static str,
    },
    /// The int8 delta does not decode.
    #[error("delta: {0}")]
    Delta(ModelError),
    /// The delta's tensors are not the model's parameter shapes.
    #[error("the delta's tensors do not have the model's shapes")]
    DeltaShapes,
    /// The delta is not the one the entry commits.
    #[error("the delta does not hash to the committed delta hash")]
    DeltaHash,
    /// The final trace leaf opening does not prove the delta.
    #[error("final opening: {0}")]
    FinalOpening(RejectReason),
    /// The opening does not cover exactly the challenged steps.
    #[error("the opening covers steps {opened:?}, the challenge is {challenged:?}")]
    OpeningSteps {
        /// The steps the opening covers.
        opened: Vec<u32>,
        /// The steps challenged.
        challenged: Vec<u32>,
    },
    /// An accepting verdict came with a fraud proof.
    #[error("an accepting verdict carries no fraud proof")]
    ProofWithAccept,
    /// The verdict's evidence is not the fraud proof's digest.
    #[error("the verdict's evidence is not the digest of the fraud proof")]
    EvidenceMismatch,
    /// The verdict names evidence but no fraud proof came.
    #[error("the verdict names evidence but no fraud proof was sent")]
    EvidenceWithoutProof,
}

impl BodyError {
    /// Whether the body is malformed (HTTP 400) rather than well-formed but wrong for
    /// this task (HTTP 422).
    pub fn is_malformed(&self) -> bool {
        matches!(self, BodyError::Entry { .. })
    }
}

/// A submission that passed [`check_submission`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedSubmission {
    /// The decoded, worker-signed `WorkCommitted` entry, ready to append.
    pub entry: Entry,
    /// The decoded delta.
    pub delta: QuantDelta,
    /// The commitment the entry records.
    pub commitment: Commitment,
}

/// Checks a submission for `task` by `worker`, against the job's parameter shapes
/// (`ModelSpec::param_shapes`, in order) and its inner step count `H`.
pub fn check_submission(
    sub: &Submission,
    task: TaskId,
    worker: &PublicKey,
    shapes: &[Vec<usize>],
    inner_steps: u32,
) -> Result<CheckedSubmission, BodyError> {
    let entry = Entry::decode(&sub.work_committed.0).map_err(|source| BodyError::Entry {
        field: "work_committed",
        source,
    })?;
    let EntryBody::WorkCommitted {
        task: etask,
        worker: eworker,
        trace_root,
        final_state,
        delta,
    } = entry.body()
    else {
        return Err(BodyError::WrongKind {
            field: "work_committed",
            kind: entry.kind(),
        });
    };
    if *etask != task || eworker != worker {
        return Err(BodyError::WrongSubject {
            kind: entry.kind(),
            who: "worker",
        });
    }
    let q = QuantDelta::from_bytes(&sub.delta.0).map_err(BodyError::Delta)?;
    if q.tensors.len() != shapes.len() || q.tensors.iter().zip(shapes).any(|(t, s)| t.shape != *s) {
        return Err(BodyError::DeltaShapes);
    }
    if Digest(q.hash()) != *delta {
        return Err(BodyError::DeltaHash);
    }
    let commitment = Commitment {
        trace_root: prover_digest(trace_root),
        final_state_hash: prover_digest(final_state),
        delta_hash: prover_digest(delta),
    };
    verify_submission(
        inner_steps,
        &commitment,
        &sub.final_opening,
        &commitment.delta_hash,
    )
    .map_err(BodyError::FinalOpening)?;
    Ok(CheckedSubmission {
        entry,
        delta: q,
        commitment,
    })
}

/// Checks that an opening covers exactly the `challenged` steps, in order.
pub fn check_opening(opening: &Opening, challenged: &[u32]) -> Result<(), BodyError> {
    if opening.steps.len() == challenged.len()
        && opening
            .steps
            .iter()
            .zip(challenged)
            .all(|(o, c)| o.step == *c)
    {
        return Ok(());
    }
    Err(BodyError::OpeningSteps {
        opened: opening.steps.iter().map(|s| s.step).collect(),
        challenged: challenged.to_vec(),
    })
}

/// A verdict that passed [`check_verdict`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedVerdict {
    /// The decoded, verifier-signed `Verdict` entry, ready to append.
    pub entry: Entry,
    /// Whether the verifier accepts the work.
    pub accepted: bool,
}

/// Checks a verdict on `task` by `verifier`, who was challenged with `steps`.
pub fn check_verdict(
    sub: &VerdictSubmission,
    task: TaskId,
    verifier: &PublicKey,
    steps: &[u32],
) -> Result<CheckedVerdict, BodyError> {
    let entry = Entry::decode(&sub.verdict.0).map_err(|source| BodyError::Entry {
        field: "verdict",
        source,
    })?;
    let EntryBody::Verdict {
        task: etask,
        verifier: everifier,
        accepted,
        steps: esteps,
        evidence,
        ..
    } = entry.body()
    else {
        return Err(BodyError::WrongKind {
            field: "verdict",
            kind: entry.kind(),
        });
    };
    if *etask != task || everifier != verifier || esteps != steps {
        return Err(BodyError::WrongSubject {
            kind: entry.kind(),
            who: "verifier or step list",
        });
    }
    match (&sub.fraud_proof, *accepted) {
        (Some(_), true) => return Err(BodyError::ProofWithAccept),
        (Some(p), false) if *evidence != Some(evidence_digest(p)) => {
            return Err(BodyError::EvidenceMismatch);
        }
        (None, _) if evidence.is_some() => return Err(BodyError::EvidenceWithoutProof),
        _ => {}
    }
    let accepted = *accepted;
    Ok(CheckedVerdict { entry, accepted })
}
