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
//! - [`decode_opening`] and [`check_opening`] (`POST /v1/tasks/<id>/opening`): the
//!   body is an opening in its canonical binary encoding, and it covers exactly the
//!   challenged steps.
//! - [`check_verdict`] (`POST /v1/verify/<id>/verdict`): the `Verdict` entry decodes
//!   (its verifier signature verifies), names this task, verifier and steps, and a
//!   rejection's evidence is the digest of the fraud proof sent with it, if and only
//!   if one is (an acceptance's evidence is its replay digest).

use lupus_ledger::entry::{Digest, Entry, EntryBody, EntryError, EntryKind, PublicKey, TaskId};
use lupus_prover::model::ModelError;
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{Opening, OpeningDecodeError};
use lupus_prover::trace::Commitment;
use lupus_prover::verify::{RejectReason, recomputed_signed, verify_submission};

use crate::types::{Submission, VerdictSubmission, evidence_digest};

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
    /// The body is not an opening in its canonical binary encoding.
    #[error("opening: {0}")]
    OpeningEncoding(OpeningDecodeError),
    /// The opening does not cover exactly the challenged steps.
    #[error("the opening covers steps {opened:?}, the challenge is {challenged:?}")]
    OpeningSteps {
        /// The steps the opening covers.
        opened: Vec<u32>,
        /// The steps challenged.
        challenged: Vec<u32>,
    },
    /// An opened step's recomputed op outputs are not signed by the task's worker.
    #[error(
        "the recomputed op outputs of step {step} are not signed by the task's worker under its trace root"
    )]
    RecomputedSignature {
        /// The step.
        step: u32,
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
    /// The submission states another class than its committed known-answer report
    /// decides.
    #[error(
        "the submission says {stated:?}, but the known-answer report its final leaf commits decides {decided:?}"
    )]
    ClassNotDecided {
        /// What the submission says.
        stated: lupus_prover::verify::DeviceClass,
        /// What the committed report decides.
        decided: lupus_prover::verify::DeviceClass,
    },
}

impl BodyError {
    /// Whether the body is malformed (HTTP 400) rather than well-formed but wrong for
    /// this task (HTTP 422).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            BodyError::Entry { .. } | BodyError::OpeningEncoding(_)
        )
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
    /// The class its committed known-answer report decides
    /// ([`lupus_prover::kat::decided_class`]): the rule its verifiers replay under.
    pub class: lupus_prover::verify::DeviceClass,
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
        trace_root: *trace_root,
        final_state_hash: *final_state,
        delta_hash: *delta,
    };
    verify_submission(
        inner_steps,
        &commitment,
        &sub.final_opening,
        &commitment.delta_hash,
    )
    .map_err(BodyError::FinalOpening)?;
    let class = lupus_prover::kat::decided_class(&sub.final_opening.leaf.kat);
    if class != sub.device_class {
        return Err(BodyError::ClassNotDecided {
            stated: sub.device_class,
            decided: class,
        });
    }
    Ok(CheckedSubmission {
        entry,
        delta: q,
        commitment,
        class,
    })
}

/// Decodes an opening's body ([`Opening::from_bytes`]: the canonical encoding only).
pub fn decode_opening(body: &[u8]) -> Result<Opening, BodyError> {
    Opening::from_bytes(body).map_err(BodyError::OpeningEncoding)
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

/// Checks each opened step's signature over its recomputed op outputs: `worker`'s,
/// under the task's `trace_root` ([`lupus_prover::verify::recomputed_signed`]). A
/// verifier would reject the opening for it; refused at upload, the worker hears why
/// at once.
pub fn check_recomputed(
    job: &JobSpec,
    opening: &Opening,
    worker: &PublicKey,
    trace_root: &Digest,
) -> Result<(), BodyError> {
    for so in &opening.steps {
        // The job is the coordinator's own: a plan it cannot build is not the body's
        // fault, but no signature can be checked against it either.
        let signed = recomputed_signed(job, so, &worker.0, trace_root).unwrap_or(false);
        if !signed {
            return Err(BodyError::RecomputedSignature { step: so.step });
        }
    }
    Ok(())
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
        // An acceptance's evidence is the verifier's replay digest (proof of replay,
        // `lupus_prover::verify::ReplayDigest`), which only the referee can check.
        (None, false) if evidence.is_some() => return Err(BodyError::EvidenceWithoutProof),
        _ => {}
    }
    let accepted = *accepted;
    Ok(CheckedVerdict { entry, accepted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{B64, verdict_body, work_committed_body};
    use ed25519_dalek::SigningKey;
    use lupus_prover::merkle::MultiProof;
    use lupus_prover::quant::QTensor;
    use lupus_prover::task::{FinalOpening, StepOpening};
    use lupus_prover::trace::FinalLeaf;
    use lupus_prover::verify::DeviceClass;

    const TASK: TaskId = TaskId(3);

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn delta() -> QuantDelta {
        QuantDelta {
            tensors: vec![QTensor {
                shape: vec![2],
                scale: 0.5,
                values: vec![1, -1],
            }],
        }
    }

    /// A submission whose entry commits `delta()` and whose final leaf matches it, but
    /// whose (empty) trace proof does not lead to the trace root.
    fn submission(task: TaskId, signer: &SigningKey) -> Submission {
        let c = Commitment {
            trace_root: Digest([1; 32]),
            final_state_hash: Digest([2; 32]),
            delta_hash: Digest(delta().hash()),
        };
        let entry = Entry::signed(
            work_committed_body(task, PublicKey::from(signer), &c),
            signer,
        )
        .unwrap();
        Submission {
            work_committed: B64(entry.encode()),
            delta: B64(delta().to_bytes()),
            final_opening: FinalOpening {
                leaf: FinalLeaf {
                    steps: 8,
                    state: c.final_state_hash,
                    delta: c.delta_hash,
                    kat: Digest(lupus_prover::kat::expected_digest()),
                },
                proof: MultiProof { hashes: vec![] },
            },
            device_class: DeviceClass::Exact,
        }
    }

    #[test]
    fn submissions_are_checked_in_the_coordinators_order() {
        let w = key(1);
        let me = PublicKey::from(&w);
        let shapes = vec![vec![2]];
        let sub = submission(TASK, &w);
        // Everything holds up to the trace proof, which is empty here.
        let err = check_submission(&sub, TASK, &me, &shapes, 8).unwrap_err();
        assert!(matches!(err, BodyError::FinalOpening(_)), "{err}");
        assert!(!err.is_malformed());
        // Another task, another worker.
        let err = check_submission(&sub, TaskId(4), &me, &shapes, 8).unwrap_err();
        assert!(matches!(err, BodyError::WrongSubject { .. }), "{err}");
        let other = PublicKey::from(&key(2));
        assert!(matches!(
            check_submission(&sub, TASK, &other, &shapes, 8),
            Err(BodyError::WrongSubject { .. })
        ));
        // Shapes that are not the model's.
        assert_eq!(
            check_submission(&sub, TASK, &me, &[vec![3]], 8),
            Err(BodyError::DeltaShapes)
        );
        // A delta that is not the committed one, and one that does not decode.
        let mut wrong = sub.clone();
        let mut d = delta();
        d.tensors[0].values[0] = 2;
        wrong.delta = B64(d.to_bytes());
        assert_eq!(
            check_submission(&wrong, TASK, &me, &shapes, 8),
            Err(BodyError::DeltaHash)
        );
        wrong.delta.0.push(0);
        assert!(matches!(
            check_submission(&wrong, TASK, &me, &shapes, 8),
            Err(BodyError::Delta(_))
        ));
        // A malformed entry is a 400; an entry of another kind a 422.
        let mut bad = sub.clone();
        bad.work_committed.0.pop();
        let err = check_submission(&bad, TASK, &me, &shapes, 8).unwrap_err();
        assert!(err.is_malformed(), "{err}");
        let joined = Entry::signed(
            crate::types::join_body(me, lupus_ledger::entry::Role::Worker, "w"),
            &w,
        )
        .unwrap();
        bad.work_committed = B64(joined.encode());
        assert_eq!(
            check_submission(&bad, TASK, &me, &shapes, 8),
            Err(BodyError::WrongKind {
                field: "work_committed",
                kind: EntryKind::ParticipantJoined
            })
        );
    }

    /// Issue 13, classes decided: the class is what the known-answer report in the
    /// signed final leaf decides. A submission that states the tolerant class over an
    /// exact report (or the reverse) is refused; with a tolerant report it is
    /// tolerant, whatever else it says.
    #[test]
    fn the_class_is_the_one_the_committed_report_decides() {
        use lupus_prover::merkle::MerkleTree;
        use lupus_prover::trace::TraceLeaf;
        let w = key(1);
        let me = PublicKey::from(&w);
        let shapes = vec![vec![2]];
        let build = |kat: [u8; 32], stated: DeviceClass| {
            let leaf = FinalLeaf {
                steps: 8,
                state: Digest([2; 32]),
                delta: Digest(delta().hash()),
                kat: Digest(kat),
            };
            let mut items: Vec<Digest> = (0..8u8).map(|i| Digest([i + 10; 32])).collect();
            items.push(TraceLeaf::Final(leaf).item());
            let tree = MerkleTree::new(&items).unwrap();
            let c = Commitment {
                trace_root: tree.root(),
                final_state_hash: leaf.state,
                delta_hash: leaf.delta,
            };
            let entry = Entry::signed(work_committed_body(TASK, me, &c), &w).unwrap();
            Submission {
                work_committed: B64(entry.encode()),
                delta: B64(delta().to_bytes()),
                final_opening: FinalOpening {
                    leaf,
                    proof: tree.prove(&[8]).unwrap(),
                },
                device_class: stated,
            }
        };
        let exact = lupus_prover::kat::expected_digest();
        let other = [7u8; 32];
        let ok =
            check_submission(&build(exact, DeviceClass::Exact), TASK, &me, &shapes, 8).unwrap();
        assert_eq!(ok.class, DeviceClass::Exact);
        let ok =
            check_submission(&build(other, DeviceClass::Tolerant), TASK, &me, &shapes, 8).unwrap();
        assert_eq!(ok.class, DeviceClass::Tolerant);
        for (kat, stated) in [(exact, DeviceClass::Tolerant), (other, DeviceClass::Exact)] {
            let err = check_submission(&build(kat, stated), TASK, &me, &shapes, 8).unwrap_err();
            assert!(matches!(err, BodyError::ClassNotDecided { .. }), "{err}");
        }
    }

    #[test]
    fn openings_cover_exactly_the_challenged_steps() {
        let step = |s| StepOpening {
            step: s,
            state: vec![],
            ops: vec![],
            next_state: None,
            signature: lupus_types::Sig([0; 64]),
        };
        let opening = Opening {
            leaves: vec![],
            proof: MultiProof { hashes: vec![] },
            steps: vec![step(1), step(4)],
            final_params: vec![],
            final_params_proof: MultiProof { hashes: vec![] },
        };
        assert_eq!(check_opening(&opening, &[1, 4]), Ok(()));
        for challenged in [&[1][..], &[1, 4, 5], &[4, 1], &[]] {
            let err = check_opening(&opening, challenged).unwrap_err();
            assert_eq!(
                err,
                BodyError::OpeningSteps {
                    opened: vec![1, 4],
                    challenged: challenged.to_vec()
                }
            );
        }
    }

    #[test]
    fn verdicts_name_their_task_verifier_steps_and_evidence() {
        let v = key(5);
        let me = PublicKey::from(&v);
        let sub = |accepted: bool, evidence: Option<Digest>| VerdictSubmission {
            verdict: B64(Entry::signed(
                verdict_body(TASK, me, accepted, vec![1, 4], "r", evidence),
                &v,
            )
            .unwrap()
            .encode()),
            fraud_proof: None,
        };
        let ok = check_verdict(&sub(true, None), TASK, &me, &[1, 4]).unwrap();
        assert!(ok.accepted);
        let no = check_verdict(&sub(false, None), TASK, &me, &[1, 4]).unwrap();
        assert!(!no.accepted);
        assert!(matches!(
            check_verdict(&sub(true, None), TASK, &me, &[1, 5]),
            Err(BodyError::WrongSubject { .. })
        ));
        assert!(matches!(
            check_verdict(&sub(true, None), TaskId(9), &me, &[1, 4]),
            Err(BodyError::WrongSubject { .. })
        ));
        assert_eq!(
            check_verdict(&sub(false, Some(Digest([7; 32]))), TASK, &me, &[1, 4]),
            Err(BodyError::EvidenceWithoutProof)
        );
        let mut garbled = sub(true, None);
        garbled.verdict.0[0] = 9;
        assert!(
            check_verdict(&garbled, TASK, &me, &[1, 4])
                .unwrap_err()
                .is_malformed()
        );
    }
}
