//! The protocol rules an auditor checks entry by entry, on top of the shares fold.
//!
//! DESIGN.md, "The loop" and "Ledger": every share must be earned by verified work.
//! The ledger's [`SharesFold`] checks the share arithmetic (rounds, pending credits,
//! slashing, every `SharesEpoch` root); its docs leave to the auditor what needs the
//! job spec and the prover. [`ProtocolState::apply`] checks, naming the entry index:
//!
//! - **Genesis**: the job spec parses ([`JobSpec::parse`]), `job_hash` is its
//!   [`JobSpec::hash`], and the checkpoint key the genesis names is the one the auditor
//!   pinned (and `log_key` is that key's Ed25519 key).
//! - **Participants** join once; a task goes to a joined worker, a challenge and a
//!   verdict come from a joined verifier.
//! - **Tasks**: assigned in an open round, with `H` and the batch size of the job spec
//!   and the seed `derive_task_seed(task, worker, beacon_commitment)`; committed once,
//!   by the assigned worker; challenged only after the commitment, with `m` steps.
//! - **Verdicts**: by a joined verifier, on a task that was challenged, over exactly
//!   the challenged steps (the signature itself is checked when the entry decodes).
//!   The verifier need not be the one the challenge names: the coordinator's referee
//!   (a verifier that joins at genesis) settles disputes on the same steps.
//! - **The model chain**: a round opens from the model the previous close named:
//!   `RoundOpened.base_model` is the last `RoundClosed.new_model` (the first round's
//!   base, the job's initial model, is not checked here).
//! - **Beacons**: `RoundClosed.beacon` must open `RoundOpened.beacon_commitment`
//!   ([`beacon_matches`]), and then every challenge of the round must be exactly
//!   [`challenge_steps`]`(beacon, trace_root, H, m)`. The beacon is secret until the
//!   close, so these checks run when the round closes.
//! - **Credits**: a `Work` credit goes to the task's worker, once, only after an
//!   accepted verdict, for `H x batch x FLOPs per sample` ([`JobSpec::task_flops`]);
//!   a `Verification` credit goes to a verifier that judged the task, once, for
//!   `challenged steps x batch x FLOPs per sample`. A round may not claim more
//!   accepted tasks than it has accepted verdicts.
//!
//! Tasks of a closed round are retired from the state (credits for them are refused
//! by the fold anyway), so the state stays the size of the open round.

use std::collections::{BTreeMap, BTreeSet};

use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::note::NoteVerifier;
use lupus_ledger::shares::{FoldError, SharesFold};
use lupus_prover::challenge::{beacon_matches, challenge_steps};
use lupus_prover::prf::derive_task_seed;
use lupus_prover::spec::JobSpec;
use serde::{Deserialize, Serialize};

/// Why an entry breaks the protocol. The entry's index travels with it in
/// [`crate::verify::AuditError::Protocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    #[error("the genesis job spec does not parse: {0}")]
    JobSpec(String),
    #[error("the genesis job_hash {found} is not the job spec's hash {expected}")]
    JobHash { expected: Digest, found: Digest },
    #[error(
        "the genesis names checkpoint key {genesis:?}, but this auditor pinned {pinned:?}: the log is not the one you meant to audit"
    )]
    NoteKey { genesis: String, pinned: String },
    #[error("the genesis log_key {0} is not the Ed25519 key of its checkpoint key")]
    LogKey(PublicKey),
    #[error("{0} joined twice")]
    AlreadyJoined(PublicKey),
    #[error("{key} is not a joined {role:?}")]
    NotA { key: PublicKey, role: Role },
    #[error("round {0} was never opened")]
    UnknownRound(Round),
    #[error("round {0} is already closed")]
    RoundClosed(Round),
    #[error(
        "round {round} opens from model {found}, but the previous close named {expected} as the new model"
    )]
    ModelChain {
        round: Round,
        expected: Digest,
        found: Digest,
    },
    #[error("task {0} was already assigned")]
    TaskExists(TaskId),
    #[error("task {0} was never assigned (or its round has closed)")]
    UnknownTask(TaskId),
    #[error("task {task}: {field} is {found}, but the job spec says {expected}")]
    TaskShape {
        task: TaskId,
        field: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("task {0}: the seed is not derive_task_seed(task, worker, beacon commitment)")]
    TaskSeed(TaskId),
    #[error("task {task} was assigned to {assigned}, not {found}")]
    WrongWorker {
        task: TaskId,
        assigned: PublicKey,
        found: PublicKey,
    },
    #[error("task {0} was already committed")]
    AlreadyCommitted(TaskId),
    #[error("task {0} is challenged or judged before its work was committed")]
    NotCommitted(TaskId),
    #[error("task {task}: a challenge has {found} steps, the job spec says m = {expected}")]
    ChallengeCount {
        task: TaskId,
        expected: u32,
        found: usize,
    },
    #[error("task {task}: {verifier} gives a verdict, but the task was never challenged")]
    NotChallenged { task: TaskId, verifier: PublicKey },
    #[error("task {task}: the verdict covers steps {found:?}, the challenge asked {expected:?}")]
    VerdictSteps {
        task: TaskId,
        expected: Vec<u32>,
        found: Vec<u32>,
    },
    #[error("task {task}: {verifier} already gave a verdict")]
    DuplicateVerdict { task: TaskId, verifier: PublicKey },
    #[error(
        "the revealed beacon of round {round} does not open its commitment: blake3-keyed(beacon) != {commitment}"
    )]
    BeaconMismatch { round: Round, commitment: Digest },
    #[error(
        "task {task}: challenge entry {challenge_entry} asked steps {found:?}, but the revealed beacon dictates {expected:?}"
    )]
    ChallengeNotDictated {
        task: TaskId,
        challenge_entry: u64,
        expected: Vec<u32>,
        found: Vec<u32>,
    },
    #[error(
        "round {round} claims {claimed} accepted tasks, but only {verified} have an accepted verdict"
    )]
    TooManyAccepted {
        round: Round,
        claimed: u32,
        verified: u32,
    },
    #[error("task {task}: a work credit without an accepted verdict")]
    CreditWithoutVerdict { task: TaskId },
    #[error(
        "task {task}: {key} is credited for work it did not do (or for a verdict it did not give)"
    )]
    CreditWrongKey { task: TaskId, key: PublicKey },
    #[error("task {task} belongs to round {expected}, but is credited in round {found}")]
    CreditWrongRound {
        task: TaskId,
        expected: Round,
        found: Round,
    },
    #[error("task {task}: credit of {found} FLOPs, but the verified work is worth {expected}")]
    CreditAmount {
        task: TaskId,
        expected: Amount,
        found: Amount,
    },
    #[error("task {task}: {key} is credited twice for the same work")]
    DuplicateCredit { task: TaskId, key: PublicKey },
    #[error("shares fold: {0}")]
    Fold(Box<FoldError>),
}

/// What the job spec fixes, kept so the spec is parsed once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// The genesis `job_hash`.
    pub job_hash: Digest,
    /// The genesis `dataset_root`.
    pub dataset_root: Digest,
    /// `H`.
    pub inner_steps: u32,
    /// Windows per step.
    pub batch_size: u32,
    /// `m`.
    pub challenges: u32,
    /// Forward+backward FLOPs of one sample.
    pub flops_per_sample: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RoundFacts {
    commitment: Digest,
    closed: bool,
    tasks: Vec<TaskId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Challenge {
    verifier: PublicKey,
    steps: Vec<u32>,
    index: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskFacts {
    round: Round,
    worker: PublicKey,
    trace_root: Option<Digest>,
    challenges: Vec<Challenge>,
    /// `(verifier, accepted)` of each verdict.
    verdicts: Vec<(PublicKey, bool)>,
    credited: BTreeSet<(PublicKey, bool)>,
}

/// The protocol checker's state, with the shares fold. Serialisable so a run resumes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProtocolState {
    job: Option<JobFacts>,
    participants: BTreeMap<PublicKey, Role>,
    rounds: BTreeMap<Round, RoundFacts>,
    tasks: BTreeMap<TaskId, TaskFacts>,
    fold: SharesFold,
    /// The `new_model` of the latest `RoundClosed`: the next round's base.
    model_chain: Option<Digest>,
}

impl ProtocolState {
    /// The shares fold after the entries applied so far.
    pub fn fold(&self) -> &SharesFold {
        &self.fold
    }

    /// The job facts from genesis, once it has been applied.
    pub fn job(&self) -> Option<&JobFacts> {
        self.job.as_ref()
    }

    /// Applies entry `index` (decoded, so its signature already verified).
    /// `pinned_key` is the checkpoint verifier key the auditor trusts.
    pub fn apply(&mut self, index: u64, entry: &Entry, pinned_key: &str) -> Result<(), Violation> {
        // Checks first, against the state before the entry; the fold last, so a
        // failed check leaves nothing half-applied that matters (the run stops).
        self.check(index, entry.body(), pinned_key)?;
        self.fold
            .apply(index, entry)
            .map_err(|e| Violation::Fold(Box::new(e)))
    }

    fn job_facts(&self) -> Result<&JobFacts, Violation> {
        // The fold reports a missing genesis with its own error, so this only
        // guards entries that come after a genesis the fold refused.
        self.job
            .as_ref()
            .ok_or_else(|| Violation::Fold(Box::new(FoldError::MissingGenesis)))
    }

    fn role(&self, key: &PublicKey, role: Role) -> Result<(), Violation> {
        match self.participants.get(key) {
            Some(r) if *r == role => Ok(()),
            _ => Err(Violation::NotA { key: *key, role }),
        }
    }

    fn task(&mut self, task: TaskId) -> Result<&mut TaskFacts, Violation> {
        self.tasks
            .get_mut(&task)
            .ok_or(Violation::UnknownTask(task))
    }

    fn check(&mut self, index: u64, body: &EntryBody, pinned_key: &str) -> Result<(), Violation> {
        match body {
            EntryBody::Genesis {
                job_spec,
                job_hash,
                dataset_root,
                log_key,
                coordinator_note_key,
                ..
            } => {
                if index != 0 {
                    return Ok(()); // the fold names this error
                }
                let spec =
                    JobSpec::parse(job_spec).map_err(|e| Violation::JobSpec(e.to_string()))?;
                let expected = spec.hash();
                if expected != *job_hash {
                    return Err(Violation::JobHash {
                        expected,
                        found: *job_hash,
                    });
                }
                if coordinator_note_key != pinned_key {
                    return Err(Violation::NoteKey {
                        genesis: coordinator_note_key.clone(),
                        pinned: pinned_key.to_owned(),
                    });
                }
                let key_ok = NoteVerifier::parse(pinned_key)
                    .is_ok_and(|v| PublicKey::from(v.public_key()) == *log_key);
                if !key_ok {
                    return Err(Violation::LogKey(*log_key));
                }
                self.job = Some(JobFacts {
                    job_hash: *job_hash,
                    dataset_root: *dataset_root,
                    inner_steps: spec.inner.steps,
                    batch_size: spec.inner.batch_size,
                    challenges: spec.verify.challenges,
                    flops_per_sample: spec.model.flops_per_sample(),
                });
            }
            EntryBody::ParticipantJoined { key, role, .. } => {
                let previous = self.participants.insert(*key, *role);
                if previous.is_some() {
                    return Err(Violation::AlreadyJoined(*key));
                }
            }
            EntryBody::RoundOpened {
                round,
                base_model,
                beacon_commitment,
                ..
            } => {
                if let Some(expected) = self.model_chain
                    && expected != *base_model
                {
                    return Err(Violation::ModelChain {
                        round: *round,
                        expected,
                        found: *base_model,
                    });
                }
                // Reopening is the fold's error; record only a new round.
                self.rounds.entry(*round).or_insert(RoundFacts {
                    commitment: *beacon_commitment,
                    closed: false,
                    tasks: Vec::new(),
                });
            }
            EntryBody::TaskAssigned {
                task,
                round,
                worker,
                seed,
                inner_steps,
                batch_size,
            } => {
                let job = self.job_facts()?.clone();
                self.role(worker, Role::Worker)?;
                let r = self
                    .rounds
                    .get_mut(round)
                    .ok_or(Violation::UnknownRound(*round))?;
                if r.closed {
                    return Err(Violation::RoundClosed(*round));
                }
                for (field, expected, found) in [
                    ("inner_steps", job.inner_steps, *inner_steps),
                    ("batch_size", job.batch_size, *batch_size),
                ] {
                    if expected != found {
                        return Err(Violation::TaskShape {
                            task: *task,
                            field,
                            expected,
                            found,
                        });
                    }
                }
                let expected_seed = derive_task_seed(task.0, &worker.0, &r.commitment);
                if expected_seed != seed.0 {
                    return Err(Violation::TaskSeed(*task));
                }
                if self.tasks.contains_key(task) {
                    return Err(Violation::TaskExists(*task));
                }
                r.tasks.push(*task);
                self.tasks.insert(
                    *task,
                    TaskFacts {
                        round: *round,
                        worker: *worker,
                        trace_root: None,
                        challenges: Vec::new(),
                        verdicts: Vec::new(),
                        credited: BTreeSet::new(),
                    },
                );
            }
            EntryBody::WorkCommitted {
                task,
                worker,
                trace_root,
                ..
            } => {
                let t = self.task(*task)?;
                if t.worker != *worker {
                    return Err(Violation::WrongWorker {
                        task: *task,
                        assigned: t.worker,
                        found: *worker,
                    });
                }
                if t.trace_root.is_some() {
                    return Err(Violation::AlreadyCommitted(*task));
                }
                t.trace_root = Some(*trace_root);
            }
            EntryBody::ChallengeIssued {
                task,
                verifier,
                steps,
            } => {
                let m = self.job_facts()?.challenges;
                self.role(verifier, Role::Verifier)?;
                let t = self.task(*task)?;
                if t.trace_root.is_none() {
                    return Err(Violation::NotCommitted(*task));
                }
                if steps.len() != m as usize {
                    return Err(Violation::ChallengeCount {
                        task: *task,
                        expected: m,
                        found: steps.len(),
                    });
                }
                t.challenges.push(Challenge {
                    verifier: *verifier,
                    steps: steps.clone(),
                    index,
                });
            }
            EntryBody::Verdict {
                task,
                verifier,
                accepted,
                steps,
                ..
            } => {
                self.role(verifier, Role::Verifier)?;
                let t = self.task(*task)?;
                // Every challenge of a task asks the same steps (they are a function
                // of the beacon and the trace root); a verifier judges those steps.
                // It need not have a challenge of its own: the coordinator's referee
                // settles disputes over the challenge already issued.
                let challenge = t.challenges.first().ok_or(Violation::NotChallenged {
                    task: *task,
                    verifier: *verifier,
                })?;
                if challenge.steps != *steps {
                    return Err(Violation::VerdictSteps {
                        task: *task,
                        expected: challenge.steps.clone(),
                        found: steps.clone(),
                    });
                }
                if t.verdicts.iter().any(|(v, _)| v == verifier) {
                    return Err(Violation::DuplicateVerdict {
                        task: *task,
                        verifier: *verifier,
                    });
                }
                t.verdicts.push((*verifier, *accepted));
            }
            EntryBody::Credit {
                round,
                key,
                amount,
                task,
                kind,
            } => {
                let job = self.job_facts()?.clone();
                let slashed = self.fold.is_slashed(key);
                let t = self.task(*task)?;
                if t.round != *round {
                    return Err(Violation::CreditWrongRound {
                        task: *task,
                        expected: t.round,
                        found: *round,
                    });
                }
                let per_step = u64::from(job.batch_size).saturating_mul(job.flops_per_sample);
                let is_work = matches!(kind, CreditKind::Work);
                let expected = if is_work {
                    if *key != t.worker {
                        return Err(Violation::CreditWrongKey {
                            task: *task,
                            key: *key,
                        });
                    }
                    if slashed || !t.verdicts.iter().any(|(_, accepted)| *accepted) {
                        return Err(Violation::CreditWithoutVerdict { task: *task });
                    }
                    u64::from(job.inner_steps).saturating_mul(per_step)
                } else {
                    let judged = t.verdicts.iter().any(|(v, _)| v == key);
                    let challenge = t.challenges.iter().find(|c| c.verifier == *key);
                    match challenge {
                        Some(c) if judged => (c.steps.len() as u64).saturating_mul(per_step),
                        _ => {
                            return Err(Violation::CreditWrongKey {
                                task: *task,
                                key: *key,
                            });
                        }
                    }
                };
                if amount.0 != expected {
                    return Err(Violation::CreditAmount {
                        task: *task,
                        expected: Amount(expected),
                        found: *amount,
                    });
                }
                if !t.credited.insert((*key, is_work)) {
                    return Err(Violation::DuplicateCredit {
                        task: *task,
                        key: *key,
                    });
                }
            }
            EntryBody::RoundClosed {
                round,
                beacon,
                new_model,
                accepted_tasks,
                ..
            } => {
                self.close(*round, beacon, *accepted_tasks)?;
                self.model_chain = Some(*new_model);
            }
            // Slashing and epochs are the fold's to check.
            _ => {}
        }
        Ok(())
    }

    fn close(&mut self, round: Round, beacon: &Digest, accepted: u32) -> Result<(), Violation> {
        let job = self.job_facts()?.clone();
        let r = self
            .rounds
            .get_mut(&round)
            .ok_or(Violation::UnknownRound(round))?;
        if r.closed {
            return Err(Violation::RoundClosed(round));
        }
        if !beacon_matches(&beacon.0, &r.commitment) {
            return Err(Violation::BeaconMismatch {
                round,
                commitment: r.commitment,
            });
        }
        let mut verified = 0u32;
        for id in &r.tasks {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if let Some(root) = &t.trace_root {
                let expected = challenge_steps(&beacon.0, root, job.inner_steps, job.challenges)
                    .map_err(|e| Violation::JobSpec(e.to_string()))?;
                if let Some(c) = t.challenges.iter().find(|c| c.steps != expected) {
                    // Reported at the challenge entry, which is the lie.
                    return Err(Violation::ChallengeNotDictated {
                        task: *id,
                        challenge_entry: c.index,
                        expected,
                        found: c.steps.clone(),
                    });
                }
            }
            if t.verdicts.iter().any(|(_, a)| *a) && !self.fold.is_slashed(&t.worker) {
                verified += 1;
            }
        }
        if accepted > verified {
            return Err(Violation::TooManyAccepted {
                round,
                claimed: accepted,
                verified,
            });
        }
        r.closed = true;
        for id in std::mem::take(&mut r.tasks) {
            self.tasks.remove(&id);
        }
        Ok(())
    }
}
