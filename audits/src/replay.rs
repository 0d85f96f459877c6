//! Replaying a sample of judgements: the auditor re-runs the verifier's work for K
//! judged tasks, from the openings the coordinator stores, with the prover.
//!
//! DESIGN.md, "The loop" step 4 and "Crates" (`audits/` "re-runs sampled
//! challenges"). **The sample is the auditor's**: the K judged tasks of a run whose
//! `blake3(seed || task id)` is smallest, where the seed is the auditor's own
//! randomness (`--seed` fixes it to reproduce a run). A sample keyed by anything in
//! the log (the checkpoint root, say) could be steered by the operator, who writes
//! the log: filler entries change the root until the sample misses a bad task.
//!
//! Both outcomes are sampled: a task's *claim* is the referee's verdict when it ruled
//! (the verdict every slash of that task cites), else its first accepting verdict.
//! For each sampled task, from the coordinator's API:
//!
//! 1. `GET /v1/job`: the job spec and dataset, checked against the genesis entry's
//!    `job_hash` and `dataset_root` (so the API cannot substitute another job);
//! 2. `GET /v1/tasks/<id>`: the opening's blob hash and the device class;
//! 3. `GET /v1/blobs/<hash>` for the opening and the round's base model (each checked
//!    against its blake3 name; the base model's name is the `RoundOpened` entry's);
//! 4. [`verify_opening`] with the logged seed, commitment and challenged steps. A
//!    replay that rejects an accepted task, or accepts a rejected one (a slash without
//!    fraud), contradicts the log: a failure naming the claiming verdict's index.
//! 5. Proof of replay: the same replay gives each accepting verifier's replay digest
//!    (`lupus_prover::verify::ReplayDigest`); a verifier slashed on the referee's
//!    acceptance whose signed digest *is* the replay's was slashed for nothing: a
//!    failure naming the slash.

use std::collections::BTreeMap;

use lupus_api::types::{JobInfo, TaskStatus};
use lupus_ledger::entry::{Digest, Entry, EntryBody, PublicKey, Role, Round, TaskId};
use lupus_prover::data::Corpus;
use lupus_prover::fraud::{FraudContext, FraudProof, FraudVerdict};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::Opening;
use lupus_prover::trace::{Commitment, base_state_hash};
use lupus_prover::verify::{ReplayDigest, Verdict, opening_class, verify_opening_digests};

use crate::source::{LogSource, SourceError};
use crate::verify::AuditError;
use lupus_protocol::JobFacts;

/// Largest blob fetched for a replay (a model, an opening, the dataset).
const MAX_BLOB: u64 = 512 << 20;

/// A judged task picked for replay.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub task: TaskId,
    /// The task's worker: its key signs the recomputed part of the opening.
    pub worker: PublicKey,
    pub base_model: Digest,
    pub seed: Digest,
    pub commitment: (Digest, Digest, Digest),
    pub steps: Vec<u32>,
    /// Log index of the claiming verdict: the referee's, else the first accept.
    pub verdict_index: u64,
    /// Whether that verdict accepts.
    pub accepted: bool,
    /// The task's round.
    pub round: Round,
    /// Whether the claim is the referee's ruling (its opening is kept for good).
    pub ruled: bool,
    /// The evidence the ruling names: its fraud proof, or the opening it replayed.
    pub evidence: Option<Digest>,
    /// Each acceptance by a verifier other than the referee, with the replay digest
    /// it signed (proof of replay).
    pub accepts: Vec<(PublicKey, Option<Digest>)>,
    /// `(key, index)` of each `Slashed` naming this task.
    pub slashes: Vec<(PublicKey, u64)>,
}

#[derive(Clone, Debug)]
struct Pending {
    round: Round,
    worker: PublicKey,
    seed: Digest,
    commitment: Option<(Digest, Digest, Digest)>,
    steps: Option<Vec<u32>>,
    /// The first accepting verdict's index.
    accept: Option<u64>,
    /// The referee's verdict: index, whether it accepts, the evidence it names.
    ruling: Option<(u64, bool, Option<Digest>)>,
    accepts: Vec<(PublicKey, Option<Digest>)>,
    slashes: Vec<(PublicKey, u64)>,
}

/// Picks the sample while the entries of a run go by.
#[derive(Debug)]
pub struct Sampler {
    k: usize,
    /// The coordinator's `keep_openings` (`None`: it keeps every opening).
    keep: Option<u64>,
    seed: [u8; 32],
    referee: Option<PublicKey>,
    rounds: BTreeMap<Round, Digest>,
    tasks: BTreeMap<TaskId, Pending>,
    chosen: BTreeMap<[u8; 32], Candidate>,
}

impl Sampler {
    /// A sampler of `k` tasks keyed by the auditor's `seed`. `referee` is the log's
    /// referee if the entries before this run named it; `keep` is the coordinator's
    /// opening retention in rounds (`GET /v1/job`): a task whose opening it may have
    /// deleted (unruled, of a round `keep` or more closes back) is not sampled.
    pub fn new(k: usize, seed: [u8; 32], referee: Option<PublicKey>, keep: Option<u64>) -> Sampler {
        Sampler {
            k,
            keep,
            seed,
            referee,
            rounds: BTreeMap::new(),
            tasks: BTreeMap::new(),
            chosen: BTreeMap::new(),
        }
    }

    fn consider(&mut self, task: TaskId, p: Pending) {
        let (claim, ruled, evidence) = match (p.ruling, p.accept) {
            (Some((index, accepted, evidence)), _) => ((index, accepted), true, evidence),
            (None, Some(index)) => ((index, true), false, None),
            (None, None) => return,
        };
        let (Some(commitment), Some(steps), Some(base_model)) =
            (p.commitment, p.steps, self.rounds.get(&p.round).copied())
        else {
            return;
        };
        let mut h = blake3::Hasher::new();
        h.update(&self.seed);
        h.update(&task.0.to_le_bytes());
        self.chosen.insert(
            *h.finalize().as_bytes(),
            Candidate {
                task,
                worker: p.worker,
                base_model,
                seed: p.seed,
                commitment,
                steps,
                verdict_index: claim.0,
                accepted: claim.1,
                round: p.round,
                ruled,
                evidence,
                accepts: p.accepts,
                slashes: p.slashes,
            },
        );
        // With a retention, a kept candidate may age out of it later, so nothing is
        // trimmed until the end; the candidates stay those of the retained rounds.
        if self.keep.is_none() && self.chosen.len() > self.k {
            self.chosen.pop_last();
        }
    }

    /// Sees entry `index` (already verified).
    pub fn observe(&mut self, index: u64, entry: &Entry) {
        match entry.body() {
            EntryBody::ParticipantJoined {
                key,
                role: Role::Verifier,
                ..
            } if self.referee.is_none() => {
                self.referee = Some(*key);
            }
            EntryBody::RoundOpened {
                round, base_model, ..
            } => {
                self.rounds.insert(*round, *base_model);
            }
            EntryBody::TaskAssigned {
                task,
                round,
                worker,
                seed,
                ..
            } => {
                self.tasks.insert(
                    *task,
                    Pending {
                        round: *round,
                        worker: *worker,
                        seed: *seed,
                        commitment: None,
                        steps: None,
                        accept: None,
                        ruling: None,
                        accepts: Vec::new(),
                        slashes: Vec::new(),
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
                verifier,
                accepted,
                evidence,
                ..
            } => {
                let is_referee = self.referee == Some(*verifier);
                if let Some(p) = self.tasks.get_mut(task) {
                    if is_referee {
                        p.ruling = Some((index, *accepted, *evidence));
                    } else if *accepted {
                        p.accept.get_or_insert(index);
                        p.accepts.push((*verifier, *evidence));
                    }
                }
            }
            EntryBody::Slashed { key, task, .. } => {
                if let Some(p) = self.tasks.get_mut(task) {
                    p.slashes.push((*key, index));
                }
            }
            EntryBody::RoundClosed { round, .. } => {
                let done: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, p)| p.round == *round)
                    .map(|(t, _)| *t)
                    .collect();
                for t in done {
                    if let Some(p) = self.tasks.remove(&t) {
                        self.consider(t, p);
                    }
                }
                self.rounds.remove(round);
                if let Some(keep) = self.keep {
                    // Once round C closes, the coordinator may delete the unruled
                    // openings of rounds C - keep and before.
                    self.chosen
                        .retain(|_, c| c.ruled || c.round.0.saturating_add(keep) > round.0);
                }
            }
            _ => {}
        }
    }

    /// The sample, in task order (tasks of the open round included).
    pub fn into_sample(mut self) -> Vec<Candidate> {
        for (t, p) in std::mem::take(&mut self.tasks) {
            self.consider(t, p);
        }
        let mut out: Vec<Candidate> = self.chosen.into_values().take(self.k).collect();
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

pub(crate) fn blob(source: &dyn LogSource, hash: &Digest) -> Result<Vec<u8>, AuditError> {
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

/// The coordinator's opening retention (`GET /v1/job`'s `keep_openings`), which the
/// replay sample must respect.
pub fn retention(source: &dyn LogSource) -> Result<Option<u64>, AuditError> {
    let info: JobInfo = json(&fetch(source, "v1/job")?, "the job")?;
    Ok(info.keep_openings)
}

/// The job spec and the dataset from the coordinator's API (`/v1/job` and the
/// dataset blob), each checked against what the genesis entry commits.
pub(crate) fn job_and_corpus(
    source: &dyn LogSource,
    job: &JobFacts,
) -> Result<(JobSpec, Corpus), AuditError> {
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
    Ok((spec, corpus))
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
    let (spec, corpus) = job_and_corpus(source, job)?;
    let mut models = BTreeMap::new();
    for c in sample {
        let outcome = replay_one(source, &spec, &corpus, &mut models, c)?;
        let what = if c.accepted { "accepted" } else { "rejected" };
        match (c.accepted, outcome) {
            (true, Replayed::Accept(digests)) => {
                // Proof of replay: a verifier slashed on an accepting ruling must have
                // signed a digest that is not the replay's.
                for ((key, said), right) in c.accepts.iter().zip(&digests) {
                    let slash = c.slashes.iter().find(|(k, _)| k == key);
                    if let Some((_, index)) = slash
                        && *said == Some(*right)
                    {
                        return Err(AuditError::Replay {
                            index: Some(*index),
                            reason: format!(
                                "task {}: {key} is slashed though the referee accepts the task, and the replay digest it signed is the replay's",
                                c.task
                            ),
                        });
                    }
                }
            }
            (false, Replayed::Reject(_)) => {}
            (true, Replayed::Reject(why)) => {
                return Err(AuditError::Replay {
                    index: Some(c.verdict_index),
                    reason: format!("task {} was {what}, but {why}", c.task),
                });
            }
            (false, Replayed::Accept(_)) => {
                return Err(AuditError::Replay {
                    index: Some(c.verdict_index),
                    reason: format!(
                        "task {} was rejected (its worker's slash cites this ruling), but replaying every challenged step matches",
                        c.task
                    ),
                });
            }
        }
    }
    Ok(sample.len())
}

/// What a replay of one task found.
enum Replayed {
    /// Every step replays; the replay digest for each of the candidate's accepting
    /// verifiers, in its order.
    Accept(Vec<Digest>),
    /// Why the opening does not stand: a step that does not replay, or an opening
    /// missing or undecodable (which convicts as surely: the worker had to open).
    Reject(String),
}

fn replay_one(
    source: &dyn LogSource,
    spec: &JobSpec,
    corpus: &Corpus,
    models: &mut BTreeMap<Digest, Vec<lupus_prover::tensor::Tensor>>,
    c: &Candidate,
) -> Result<Replayed, AuditError> {
    let status: TaskStatus = json(
        &fetch(source, &format!("v1/tasks/{}", c.task))?,
        "a task status",
    )?;
    // A rejection that names a fraud proof (not the opening it replayed) stands if
    // the proof convicts, as it did for the referee; else the replay decides.
    if let Some(e) = c
        .evidence
        .filter(|e| !c.accepted && Some(*e) != status.opening_blob)
    {
        let base = base_model(source, spec, models, c)?;
        // Evidence the coordinator cannot serve, or that is not a fraud proof,
        // convicts nobody: the replay decides (an operator naming a made-up blob
        // gains nothing by it).
        let proof: Option<FraudProof> = blob(source, &e)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let ctx = FraudContext {
            trace_root: c.commitment.0,
            steps: spec.inner.steps,
            base_state_hash: base_state_hash(base),
            worker: c.worker.0,
        };
        if let Some(Ok(FraudVerdict::Guilty { step, reason, .. })) = proof.map(|p| p.check(&ctx)) {
            return Ok(Replayed::Reject(format!(
                "its fraud proof convicts step {step}: {reason}"
            )));
        }
    }
    let Some(opening_hash) = status.opening_blob else {
        return Ok(Replayed::Reject(
            "the coordinator has no opening for it".into(),
        ));
    };
    let opening = match Opening::from_bytes(&blob(source, &opening_hash)?) {
        Ok(o) => o,
        Err(e) => {
            return Ok(Replayed::Reject(format!(
                "its opening does not decode: {e}"
            )));
        }
    };
    // The class is the one the worker's committed known-answer report decides (the
    // final leaf, which every opening carries under the trace root), not what the
    // coordinator says of the task.
    let class = opening_class(&opening);
    let base = base_model(source, spec, models, c)?;
    let commitment = Commitment {
        trace_root: c.commitment.0,
        final_state_hash: c.commitment.1,
        delta_hash: c.commitment.2,
    };
    let mut digests: Vec<ReplayDigest> = c
        .accepts
        .iter()
        .map(|(v, _)| ReplayDigest::new(&v.0, c.task.0))
        .collect();
    let verdict = verify_opening_digests(
        spec,
        corpus,
        base.as_slice(),
        &c.seed.0,
        &commitment,
        &c.worker.0,
        &c.steps,
        &opening,
        class,
        &mut digests,
    );
    Ok(match verdict {
        Ok(Verdict::Accept) => {
            Replayed::Accept(digests.iter().map(|d| Digest(d.finish().0)).collect())
        }
        Ok(Verdict::Reject { step, reason, .. }) => {
            Replayed::Reject(format!("replaying step {step:?} fails: {reason}"))
        }
        Err(e) => Replayed::Reject(format!("its opening cannot be replayed: {e}")),
    })
}

/// The round's base model, fetched once per run.
fn base_model<'m>(
    source: &dyn LogSource,
    spec: &JobSpec,
    models: &'m mut BTreeMap<Digest, Vec<lupus_prover::tensor::Tensor>>,
    c: &Candidate,
) -> Result<&'m Vec<lupus_prover::tensor::Tensor>, AuditError> {
    Ok(match models.entry(c.base_model) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            let bytes = blob(source, &c.base_model)?;
            let params =
                lupus_api::model::decode_model(&bytes, spec).map_err(|err| AuditError::Replay {
                    index: Some(c.verdict_index),
                    reason: format!("base model {} does not decode: {err}", c.base_model),
                })?;
            e.insert(params)
        }
    })
}
