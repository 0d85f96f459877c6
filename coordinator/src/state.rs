//! The coordinator's state as a fold of the ledger.
//!
//! DESIGN.md ("Coordinator", "Ledger"): everything the coordinator decides is a ledger
//! entry first, so its state is [`State::apply`] run over the log in order. On start it
//! replays the whole log; while running it applies each entry right after the log
//! acknowledged it (durable). A `kill -9` therefore loses nothing acknowledged: the
//! replay rebuilds rounds, tasks, commitments, challenges, verdicts, credits and the
//! shares fold exactly. What is not in the log (the secret beacon of the open round,
//! the delta and opening blobs, the outer momentum) is written to the store's
//! metadata table and the blob store *before* the entry that depends on it.

use std::collections::{BTreeMap, BTreeSet};

use lupus_ledger::entry::{CreditKind, Digest, Entry, EntryBody, PublicKey, Role, Round, TaskId};
use lupus_ledger::shares::{FoldError, SharesFold};

/// A contradiction between the log and the coordinator's rules (a log this coordinator
/// did not write, or a bug): the coordinator refuses to start on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("entry {index}: {problem}")]
    Invalid { index: u64, problem: String },
    #[error("entry {index}: shares fold: {source}")]
    Fold {
        index: u64,
        #[source]
        source: FoldError,
    },
}

/// The genesis facts.
#[derive(Clone, Debug)]
pub struct Genesis {
    pub job_spec: String,
    pub job_hash: Digest,
    pub dataset_root: Digest,
    pub log_key: PublicKey,
    pub note_key: String,
}

/// A round as the log tells it.
#[derive(Clone, Debug)]
pub struct RoundRecord {
    pub round: Round,
    pub base_model: Digest,
    pub beacon_commitment: Digest,
    pub inner_steps: u32,
    pub deadline_ms: u64,
    pub closed: Option<Closed>,
    /// Whether the `SharesEpoch` after the close is written.
    pub epoch_written: bool,
    /// The round's tasks in the order they were assigned: the round's queries and
    /// the dispatch read these, never every task ever assigned.
    pub tasks: Vec<TaskId>,
}

/// A closed round's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Closed {
    pub beacon: Digest,
    pub new_model: Digest,
    pub val_loss: f32,
    pub accepted: u32,
}

/// A worker's commitment as logged.
#[derive(Clone, Copy, Debug)]
pub struct Committed {
    pub trace_root: Digest,
    pub final_state: Digest,
    pub delta: Digest,
    pub index: u64,
}

/// One logged verdict.
#[derive(Clone, Debug)]
pub struct VerdictRecord {
    pub verifier: PublicKey,
    pub accepted: bool,
    pub reason: String,
    pub evidence: Option<Digest>,
    pub index: u64,
}

/// A task as the log tells it.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub id: TaskId,
    pub round: Round,
    pub worker: PublicKey,
    pub seed: Digest,
    pub inner_steps: u32,
    pub batch_size: u32,
    pub index: u64,
    pub committed: Option<Committed>,
    /// `(verifier, steps, log index)` of each `ChallengeIssued`.
    pub challenges: Vec<(PublicKey, Vec<u32>, u64)>,
    pub verdicts: Vec<VerdictRecord>,
    /// A `Slashed` entry names this task and its worker.
    pub worker_slashed: bool,
    /// Keys credited for this task, and for what.
    pub credited: BTreeSet<(PublicKey, CreditKindKey)>,
}

/// [`CreditKind`] as an ordered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CreditKindKey {
    Work,
    Verification,
}

impl From<CreditKind> for CreditKindKey {
    fn from(k: CreditKind) -> Self {
        match k {
            CreditKind::Work => CreditKindKey::Work,
            _ => CreditKindKey::Verification,
        }
    }
}

/// The fold.
#[derive(Debug, Default)]
pub struct State {
    pub genesis: Option<Genesis>,
    pub participants: BTreeMap<PublicKey, Role>,
    pub rounds: BTreeMap<Round, RoundRecord>,
    pub tasks: BTreeMap<TaskId, TaskRecord>,
    pub shares: SharesFold,
    pub slashed: BTreeSet<PublicKey>,
    pub epochs: u64,
    /// Entries applied: the index the next entry must have.
    pub size: u64,
    /// Index of the latest `SharesEpoch` entry.
    pub latest_epoch_index: Option<u64>,
}

impl State {
    /// The open round, if any.
    pub fn open_round(&self) -> Option<&RoundRecord> {
        self.rounds
            .values()
            .next_back()
            .filter(|r| r.closed.is_none())
    }

    /// The latest round, open or closed.
    pub fn latest_round(&self) -> Option<&RoundRecord> {
        self.rounds.values().next_back()
    }

    /// The next task id.
    pub fn next_task_id(&self) -> TaskId {
        TaskId(self.tasks.keys().next_back().map_or(1, |t| t.0 + 1))
    }

    /// Applies entry `index` (which must be the next one).
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<(), StateError> {
        let bad = |problem: String| StateError::Invalid { index, problem };
        if index != self.size {
            return Err(bad(format!("expected entry {}", self.size)));
        }
        self.shares
            .apply(index, entry)
            .map_err(|source| StateError::Fold { index, source })?;
        match entry.body() {
            EntryBody::Genesis {
                job_spec,
                job_hash,
                dataset_root,
                log_key,
                coordinator_note_key,
                ..
            } => {
                self.genesis = Some(Genesis {
                    job_spec: job_spec.clone(),
                    job_hash: *job_hash,
                    dataset_root: *dataset_root,
                    log_key: *log_key,
                    note_key: coordinator_note_key.clone(),
                });
            }
            EntryBody::ParticipantJoined { key, role, .. } => {
                self.participants.insert(*key, *role);
            }
            EntryBody::RoundOpened {
                round,
                base_model,
                beacon_commitment,
                inner_steps,
                deadline_ms,
            } => {
                self.rounds.insert(
                    *round,
                    RoundRecord {
                        round: *round,
                        base_model: *base_model,
                        beacon_commitment: *beacon_commitment,
                        inner_steps: *inner_steps,
                        deadline_ms: *deadline_ms,
                        closed: None,
                        epoch_written: false,
                        tasks: Vec::new(),
                    },
                );
            }
            EntryBody::TaskAssigned {
                task,
                round,
                worker,
                seed,
                inner_steps,
                batch_size,
            } => {
                if self.tasks.contains_key(task) {
                    return Err(bad(format!("task {task} assigned twice")));
                }
                let Some(r) = self.rounds.get_mut(round) else {
                    return Err(bad(format!(
                        "task {task} assigned in unknown round {round}"
                    )));
                };
                r.tasks.push(*task);
                self.tasks.insert(
                    *task,
                    TaskRecord {
                        id: *task,
                        round: *round,
                        worker: *worker,
                        seed: *seed,
                        inner_steps: *inner_steps,
                        batch_size: *batch_size,
                        index,
                        committed: None,
                        challenges: Vec::new(),
                        verdicts: Vec::new(),
                        worker_slashed: false,
                        credited: BTreeSet::new(),
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
                let t = self
                    .tasks
                    .get_mut(task)
                    .ok_or_else(|| bad(format!("work committed for unknown task {task}")))?;
                t.committed = Some(Committed {
                    trace_root: *trace_root,
                    final_state: *final_state,
                    delta: *delta,
                    index,
                });
            }
            EntryBody::ChallengeIssued {
                task,
                verifier,
                steps,
            } => {
                let t = self
                    .tasks
                    .get_mut(task)
                    .ok_or_else(|| bad(format!("challenge for unknown task {task}")))?;
                t.challenges.push((*verifier, steps.clone(), index));
            }
            EntryBody::Verdict {
                task,
                verifier,
                accepted,
                reason,
                evidence,
                ..
            } => {
                let t = self
                    .tasks
                    .get_mut(task)
                    .ok_or_else(|| bad(format!("verdict for unknown task {task}")))?;
                t.verdicts.push(VerdictRecord {
                    verifier: *verifier,
                    accepted: *accepted,
                    reason: reason.clone(),
                    evidence: *evidence,
                    index,
                });
            }
            EntryBody::RoundClosed {
                round,
                beacon,
                new_model,
                val_loss_bits,
                accepted_tasks,
            } => {
                let r = self
                    .rounds
                    .get_mut(round)
                    .ok_or_else(|| bad(format!("close of unknown round {round}")))?;
                r.closed = Some(Closed {
                    beacon: *beacon,
                    new_model: *new_model,
                    val_loss: f32::from_bits(*val_loss_bits),
                    accepted: *accepted_tasks,
                });
            }
            EntryBody::Credit {
                key, task, kind, ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.credited.insert((*key, (*kind).into()));
                }
            }
            EntryBody::Slashed { key, task, .. } => {
                self.slashed.insert(*key);
                if let Some(t) = self.tasks.get_mut(task)
                    && t.worker == *key
                {
                    t.worker_slashed = true;
                }
            }
            EntryBody::SharesEpoch { epoch, round, .. } => {
                self.epochs = epoch.0;
                self.latest_epoch_index = Some(index);
                if let Some(r) = self.rounds.get_mut(round) {
                    r.epoch_written = true;
                }
            }
            other => return Err(bad(format!("unknown entry kind {}", other.kind()))),
        }
        self.size += 1;
        Ok(())
    }
}
