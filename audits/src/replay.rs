//! Replaying a sample of challenges: the auditor re-runs the verifier's work for K
//! accepted tasks, from the openings the coordinator stores, with the prover.
//!
//! DESIGN.md, "The loop" step 4 and "Crates" (`audits/` "re-runs sampled
//! challenges"). The sample is the K accepted tasks of a run whose
//! `blake3(checkpoint root || task id)` is smallest: fixed by the checkpoint, so the
//! coordinator cannot know it before it signs, and every auditor of that checkpoint
//! replays the same tasks. For each, from the coordinator's API:
//!
//! 1. `GET /v1/job`: the job spec and dataset, checked against the genesis entry's
//!    `job_hash` and `dataset_root` (so the API cannot substitute another job);
//! 2. `GET /v1/tasks/<id>`: the opening's blob hash and the device class;
//! 3. `GET /v1/blobs/<hash>` for the opening and the round's base model (each checked
//!    against its blake3 name; the base model's name is the `RoundOpened` entry's);
//! 4. [`verify_opening`] with the logged seed, commitment and challenged steps. A
//!    rejection contradicts the accepted verdict in the log: a failure naming the
//!    verdict's index.

use std::collections::BTreeMap;

use lupus_api::types::{JobInfo, TaskStatus};
use lupus_ledger::entry::{Digest, Entry, EntryBody, Round, TaskId};
use lupus_ledger::hash::Hash;
use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::Opening;
use lupus_prover::trace::Commitment;
use lupus_prover::verify::{DeviceClass, Verdict, verify_opening};

use crate::source::{LogSource, SourceError};
use crate::verify::AuditError;
use lupus_protocol::JobFacts;

/// Largest blob fetched for a replay (a model, an opening, the dataset).
const MAX_BLOB: u64 = 512 << 20;

/// An accepted task picked for replay.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub task: TaskId,
    pub base_model: Digest,
    pub seed: Digest,
    pub commitment: (Digest, Digest, Digest),
    pub steps: Vec<u32>,
    /// Log index of the accepting verdict.
    pub verdict_index: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    round: Round,
    seed: Digest,
    commitment: Option<(Digest, Digest, Digest)>,
    steps: Option<Vec<u32>>,
}

/// Picks the sample while the entries of a run go by.
#[derive(Debug)]
pub struct Sampler {
    k: usize,
    root: Hash,
    rounds: BTreeMap<Round, Digest>,
    tasks: BTreeMap<TaskId, Pending>,
    chosen: BTreeMap<[u8; 32], Candidate>,
}

impl Sampler {
    /// A sampler of `k` tasks keyed by the checkpoint's `root`.
    pub fn new(k: usize, root: Hash) -> Sampler {
        Sampler {
            k,
            root,
            rounds: BTreeMap::new(),
            tasks: BTreeMap::new(),
            chosen: BTreeMap::new(),
        }
    }

    /// Sees entry `index` (already verified).
    pub fn observe(&mut self, index: u64, entry: &Entry) {
        match entry.body() {
            EntryBody::RoundOpened {
                round, base_model, ..
            } => {
                self.rounds.insert(*round, *base_model);
            }
            EntryBody::TaskAssigned {
                task, round, seed, ..
            } => {
                self.tasks.insert(
                    *task,
                    Pending {
                        round: *round,
                        seed: *seed,
                        commitment: None,
                        steps: None,
                    },
                );
            }
            EntryBody::WorkCommitted {
                task,
                trace_root,
                final_state,
                delta,
                ..
            } => {
                if let Some(p) = self.tasks.get_mut(task) {
                    p.commitment = Some((*trace_root, *final_state, *delta));
                }
            }
            EntryBody::ChallengeIssued { task, steps, .. } => {
                if let Some(p) = self.tasks.get_mut(task) {
                    p.steps.get_or_insert_with(|| steps.clone());
                }
            }
            EntryBody::Verdict {
                task,
                accepted: true,
                ..
            } => {
                let Some(p) = self.tasks.remove(task) else {
                    return;
                };
                let (Some(commitment), Some(steps), Some(base_model)) =
                    (p.commitment, p.steps, self.rounds.get(&p.round).copied())
                else {
                    return;
                };
                let mut h = blake3::Hasher::new();
                h.update(&self.root.0);
                h.update(&task.0.to_le_bytes());
                self.chosen.insert(
                    *h.finalize().as_bytes(),
                    Candidate {
                        task: *task,
                        base_model,
                        seed: p.seed,
                        commitment,
                        steps,
                        verdict_index: index,
                    },
                );
                if self.chosen.len() > self.k {
                    self.chosen.pop_last();
                }
            }
            EntryBody::RoundClosed { round, .. } => {
                self.tasks.retain(|_, p| p.round != *round);
                self.rounds.remove(round);
            }
            _ => {}
        }
    }

    /// The sample, in task order.
    pub fn into_sample(self) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self.chosen.into_values().collect();
        out.sort_by_key(|c| c.task);
        out
    }
}

fn fetch(source: &dyn LogSource, path: &str) -> Result<Vec<u8>, AuditError> {
    source.get(path, MAX_BLOB).map_err(|e| match e {
        SourceError::NotFound { .. } => AuditError::Usage(format!(
            "--replay needs the coordinator's API, and {path} is not at {}: {e}",
            source.name()
        )),
        e => AuditError::Source(e),
    })
}

fn blob(source: &dyn LogSource, hash: &Digest) -> Result<Vec<u8>, AuditError> {
    let bytes = fetch(source, &format!("v1/blobs/{hash}"))?;
    if Digest::of(&bytes) != *hash {
        return Err(AuditError::Replay {
            index: None,
            reason: format!("blob {hash} from the coordinator does not hash to its name"),
        });
    }
    Ok(bytes)
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Replay {
        index: None,
        reason: format!("{what} from the coordinator does not parse: {e}"),
    })
}

/// Replays `sample` against the coordinator at `source`; returns how many replayed.
pub fn replay(
    source: &dyn LogSource,
    job: &JobFacts,
    sample: &[Candidate],
) -> Result<usize, AuditError> {
    if sample.is_empty() {
        return Ok(0);
    }
    let info: JobInfo = json(&fetch(source, "v1/job")?, "the job")?;
    let spec = JobSpec::parse(&info.job_spec).map_err(|e| AuditError::Replay {
        index: Some(0),
        reason: format!("the job spec does not parse: {e}"),
    })?;
    if spec.hash().0 != job.job_hash.0 {
        return Err(AuditError::Replay {
            index: Some(0),
            reason: "the coordinator's /v1/job spec is not the one the genesis entry commits"
                .into(),
        });
    }
    let data = blob(source, &info.dataset_blob)?;
    let text = std::str::from_utf8(&data).map_err(|_| AuditError::Replay {
        index: Some(0),
        reason: "the dataset blob is not UTF-8 text".into(),
    })?;
    let corpus = Corpus::from_text(text);
    let root = corpus
        .commitment(spec.dataset.chunk_size)
        .map_err(|e| AuditError::Replay {
            index: Some(0),
            reason: format!("the dataset does not commit: {e}"),
        })?
        .root;
    if root.0 != job.dataset_root.0 {
        return Err(AuditError::Replay {
            index: Some(0),
            reason: "the coordinator's dataset is not the one the genesis entry commits".into(),
        });
    }
    let mut models = BTreeMap::new();
    for c in sample {
        let status: TaskStatus = json(
            &fetch(source, &format!("v1/tasks/{}", c.task))?,
            "a task status",
        )?;
        let Some(opening_hash) = status.opening_blob else {
            return Err(AuditError::Replay {
                index: Some(c.verdict_index),
                reason: format!(
                    "task {} was accepted, but the coordinator has no opening for it",
                    c.task
                ),
            });
        };
        let opening =
            Opening::from_bytes(&blob(source, &opening_hash)?).map_err(|e| AuditError::Replay {
                index: None,
                reason: format!("the opening of task {} does not decode: {e}", c.task),
            })?;
        let class = if status.challenge.is_some_and(|ch| ch.tolerant) {
            DeviceClass::Tolerant
        } else {
            DeviceClass::Exact
        };
        let base = match models.entry(c.base_model) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let bytes = blob(source, &c.base_model)?;
                let params = lupus_api::model::decode_model(&bytes, &spec).map_err(|err| {
                    AuditError::Replay {
                        index: Some(c.verdict_index),
                        reason: format!("base model {} does not decode: {err}", c.base_model),
                    }
                })?;
                e.insert(params)
            }
        };
        let commitment = Commitment {
            trace_root: c.commitment.0,
            final_state_hash: c.commitment.1,
            delta_hash: c.commitment.2,
        };
        let verdict = verify_opening(
            &spec,
            &corpus,
            base.as_slice(),
            &c.seed.0,
            &commitment,
            &c.steps,
            &opening,
            class,
        );
        match verdict {
            Ok(Verdict::Accept) => {}
            Ok(Verdict::Reject { step, reason, .. }) => {
                return Err(AuditError::Replay {
                    index: Some(c.verdict_index),
                    reason: format!(
                        "task {} was accepted, but replaying step {step:?} fails: {reason}",
                        c.task
                    ),
                });
            }
            Err(e) => {
                return Err(AuditError::Replay {
                    index: Some(c.verdict_index),
                    reason: format!(
                        "task {} was accepted, but its opening cannot be replayed: {e}",
                        c.task
                    ),
                });
            }
        }
    }
    Ok(sample.len())
}
