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

use lupus_ledger::entry::{
    CreditKind, Digest, EndReason, Entry, EntryBody, PublicKey, Role, Round, TaskId,
};
use lupus_protocol::{ProtocolState, SharesFold, Violation};

/// A contradiction between the log and the coordinator's rules (a log this coordinator
/// did not write, or a bug): the coordinator refuses to start on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("entry {index}: {problem}")]
    Invalid { index: u64, problem: String },
    /// The entry breaks a protocol rule (`lupus_protocol`): the auditor would
    /// reject the log with it.
    #[error("entry {index}: {violation}")]
    Protocol { index: u64, violation: Violation },
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
    /// the dispatch read these, never every task ever assigned. Empty once retired.
    pub tasks: Vec<TaskId>,
    /// What is kept of the round's tasks once they are retired (see
    /// [`State::RETAINED_ROUNDS`]).
    pub retired: Option<Retired>,
}

/// What a retired round keeps of its tasks: enough to answer for each of them and to
/// count them. The rest of their record is in the log.
#[derive(Clone, Debug, Default)]
pub struct Retired {
    /// By task id.
    pub tasks: Vec<RetiredTask>,
    pub committed: u32,
    pub rejected: u32,
}

/// A task of a retired round: 48 bytes where its [`TaskRecord`] took about a
/// kilobyte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredTask {
    pub id: TaskId,
    pub worker: PublicKey,
    pub outcome: Outcome,
    /// Whether the referee ruled on it: its opening is evidence, kept for good.
    pub ruled: bool,
}

/// How a task of a closed round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its work was credited.
    Accepted,
    /// Its worker was slashed for it.
    Rejected,
    /// Neither before its round closed.
    Expired,
}

impl Outcome {
    /// The outcome of `t`, whose round is closed.
    pub fn of(t: &TaskRecord) -> Outcome {
        if t.worker_slashed {
            Outcome::Rejected
        } else if t.credited.iter().any(|(_, k)| *k == CreditKindKey::Work) {
            Outcome::Accepted
        } else {
            Outcome::Expired
        }
    }
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
    /// The opening's blob hash, once `TaskOpened`.
    pub opened: Option<Digest>,
    /// How it ended without a credit or a conviction (`TaskEnded`), if it did.
    pub ended: Option<EndReason>,
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
    /// The tasks of the rounds not yet retired.
    pub tasks: BTreeMap<TaskId, TaskRecord>,
    /// The first task id of each retired round that had tasks, to find a retired
    /// task's round.
    pub retired_from: BTreeMap<TaskId, Round>,
    /// The id the next task gets: ids increase from 1 in the order of assignment.
    pub next_task: u64,
    /// Each worker's latest task: the only one a dispatch may hand it again (an
    /// earlier task of the worker was committed or expired before this one was
    /// assigned), so a poll finds it without scanning the round.
    pub last_task: std::collections::HashMap<PublicKey, TaskId>,
    /// The protocol fold every auditor runs (with the shares fold inside): an entry
    /// it refuses is never sequenced.
    pub protocol: ProtocolState,
    pub slashed: BTreeSet<PublicKey>,
    pub epochs: u64,
    /// Entries applied: the index the next entry must have.
    pub size: u64,
    /// Index of the latest `SharesEpoch` entry.
    pub latest_epoch_index: Option<u64>,
}

impl State {
    /// The shares fold after the entries applied so far.
    pub fn shares(&self) -> &SharesFold {
        self.protocol.fold()
    }

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

    /// How many closed rounds before the open one keep their tasks' whole records;
    /// older rounds keep a [`Retired`] summary. Nothing refers to a task of a round
    /// closed this long ago: its verdicts, referee and credits all happen before or
    /// at its round's close, and its live table is dropped then. The coordinator's
    /// memory then follows the rounds, not every task ever assigned.
    pub const RETAINED_ROUNDS: u64 = 2;

    /// The next task id.
    pub fn next_task_id(&self) -> TaskId {
        TaskId(self.next_task.max(1))
    }

    /// The tasks of `round` whose openings the retention may delete: those no ruling
    /// of the referee judged (the rest are evidence, kept for good). Reads the
    /// round's records, or its retired summary.
    pub fn prunable_tasks(&self, round: Round) -> Vec<TaskId> {
        let Some(r) = self.rounds.get(&round) else {
            return Vec::new();
        };
        if let Some(retired) = &r.retired {
            return retired
                .tasks
                .iter()
                .filter(|t| !t.ruled)
                .map(|t| t.id)
                .collect();
        }
        let referee = self.protocol.referee().copied();
        r.tasks
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| !referee.is_some_and(|r| t.verdicts.iter().any(|v| v.verifier == r)))
            .map(|t| t.id)
            .collect()
    }

    /// A retired task, if `task` belongs to a retired round.
    pub fn retired_task(&self, task: TaskId) -> Option<(Round, RetiredTask)> {
        let (_, round) = self.retired_from.range(..=task).next_back()?;
        let tasks = &self.rounds.get(round)?.retired.as_ref()?.tasks;
        let at = tasks.binary_search_by_key(&task, |t| t.id).ok()?;
        Some((*round, tasks[at]))
    }

    /// Retires the closed rounds more than [`Self::RETAINED_ROUNDS`] before `open`.
    fn retire_before(&mut self, open: Round) {
        let referee = self.protocol.referee().copied();
        let Some(last) = open.0.checked_sub(Self::RETAINED_ROUNDS + 1) else {
            return;
        };
        let due: Vec<Round> = self
            .rounds
            .range(..=Round(last))
            .rev()
            .take_while(|(_, r)| r.retired.is_none())
            .filter(|(_, r)| r.closed.is_some())
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            let Some(r) = self.rounds.get_mut(&n) else {
                continue;
            };
            let mut retired = Retired::default();
            for id in std::mem::take(&mut r.tasks) {
                let Some(t) = self.tasks.remove(&id) else {
                    continue;
                };
                retired.committed += u32::from(t.committed.is_some());
                retired.rejected += u32::from(t.worker_slashed);
                retired.tasks.push(RetiredTask {
                    id,
                    worker: t.worker,
                    outcome: Outcome::of(&t),
                    ruled: referee.is_some_and(|r| t.verdicts.iter().any(|v| v.verifier == r)),
                });
            }
            retired.tasks.sort_by_key(|t| t.id);
            if let Some(first) = retired.tasks.first() {
                self.retired_from.insert(first.id, n);
            }
            r.retired = Some(retired);
        }
    }

    /// Applies entry `index` (which must be the next one).
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<(), StateError> {
        let bad = |problem: String| StateError::Invalid { index, problem };
        if index != self.size {
            return Err(bad(format!("expected entry {}", self.size)));
        }
        // The genesis names the coordinator's own checkpoint key; the coordinator
        // checks it against its signing key when it starts.
        let pinned = match entry.body() {
            EntryBody::Genesis {
                coordinator_note_key,
                ..
            } => coordinator_note_key.as_str(),
            _ => "",
        };
        self.protocol
            .apply(index, entry, pinned)
            .map_err(|violation| StateError::Protocol { index, violation })?;
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
                self.retire_before(*round);
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
                        retired: None,
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
                if task.0 < self.next_task || self.tasks.contains_key(task) {
                    return Err(bad(format!(
                        "task {task} assigned twice or out of order (the next id is {})",
                        self.next_task
                    )));
                }
                let Some(r) = self.rounds.get_mut(round) else {
                    return Err(bad(format!(
                        "task {task} assigned in unknown round {round}"
                    )));
                };
                r.tasks.push(*task);
                self.next_task = task.0 + 1;
                self.last_task.insert(*worker, *task);
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
                        opened: None,
                        ended: None,
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
                ..
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
            EntryBody::TaskOpened { task, opening, .. } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.opened = Some(*opening);
                }
            }
            EntryBody::TaskEnded { task, reason } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.ended = Some(*reason);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use lupus_ledger::entry::Amount;
    use lupus_ledger::note::NoteSigner;
    use lupus_prover::challenge::{beacon_commitment, challenge_steps};
    use lupus_prover::prf::derive_task_seed;
    use lupus_prover::spec::JobSpec;

    const SPEC: &str = include_str!("../../jobs/tiny-test.toml");

    /// A protocol-correct log, written entry by entry (the state refuses anything
    /// the auditor would).
    struct Log {
        s: State,
        spec: JobSpec,
        worker: SigningKey,
        verifier: SigningKey,
    }

    impl Log {
        fn new() -> Log {
            let spec = JobSpec::parse(SPEC).unwrap();
            let signer = NoteSigner::from_secret("lupus.test/state", [1; 32]).unwrap();
            let mut log = Log {
                s: State::default(),
                worker: SigningKey::from_bytes(&[7; 32]),
                verifier: SigningKey::from_bytes(&[8; 32]),
                spec,
            };
            log.push(EntryBody::Genesis {
                job_spec: SPEC.into(),
                job_hash: log.spec.hash(),
                dataset_root: Digest([0; 32]),
                log_key: PublicKey::from(signer.verifier().public_key()),
                coordinator_note_key: signer.verifier_key(),
                created_ms: 0,
            });
            let keys = [
                (log.worker.clone(), Role::Worker),
                (log.verifier.clone(), Role::Verifier),
            ];
            for (key, role) in keys {
                let body = EntryBody::ParticipantJoined {
                    key: PublicKey::from(&key),
                    role,
                    name: String::new(),
                };
                log.sign(body, &key);
            }
            log
        }

        fn w(&self) -> PublicKey {
            PublicKey::from(&self.worker)
        }

        fn push(&mut self, body: EntryBody) {
            let index = self.s.size;
            self.s
                .apply(index, &Entry::unsigned(body).unwrap())
                .unwrap();
        }

        fn sign(&mut self, body: EntryBody, key: &SigningKey) {
            let index = self.s.size;
            self.s
                .apply(index, &Entry::signed(body, key).unwrap())
                .unwrap();
        }

        fn beacon(round: u64) -> [u8; 32] {
            [round as u8; 32]
        }

        fn open(&mut self, round: u64) {
            self.push(EntryBody::RoundOpened {
                round: Round(round),
                base_model: Digest([0; 32]),
                beacon_commitment: beacon_commitment(&Self::beacon(round)),
                inner_steps: self.spec.inner.steps,
                deadline_ms: 0,
            });
        }

        fn assign_body(&self, round: u64, task: u64) -> EntryBody {
            let commitment = beacon_commitment(&Self::beacon(round));
            EntryBody::TaskAssigned {
                task: TaskId(task),
                round: Round(round),
                worker: self.w(),
                seed: Digest(derive_task_seed(task, &self.w().0, &commitment)),
                inner_steps: self.spec.inner.steps,
                batch_size: self.spec.inner.batch_size,
            }
        }

        fn assign(&mut self, round: u64, task: u64) {
            self.push(self.assign_body(round, task));
        }

        /// Commits, challenges, accepts and credits `task`.
        fn accept(&mut self, round: u64, task: u64) {
            let root = Digest([task as u8; 32]);
            let body = EntryBody::WorkCommitted {
                task: TaskId(task),
                worker: self.w(),
                trace_root: root,
                final_state: root,
                delta: root,
            };
            self.sign(body, &self.worker.clone());
            let (h, m) = (self.spec.inner.steps, self.spec.verify.challenges);
            let steps = challenge_steps(&Self::beacon(round), &root, h, m).unwrap();
            let v = PublicKey::from(&self.verifier);
            self.push(EntryBody::ChallengeIssued {
                task: TaskId(task),
                verifier: v,
                steps: steps.clone(),
            });
            self.push(EntryBody::TaskOpened {
                task: TaskId(task),
                worker: self.w(),
                opening: root,
            });
            let verdict = EntryBody::Verdict {
                task: TaskId(task),
                verifier: v,
                accepted: true,
                steps,
                reason: String::new(),
                evidence: None,
            };
            self.sign(verdict, &self.verifier.clone());
            self.push(EntryBody::Credit {
                round: Round(round),
                key: self.w(),
                amount: Amount(self.spec.task_flops()),
                task: TaskId(task),
                kind: CreditKind::Work,
            });
        }

        fn close(&mut self, round: u64, accepted: u32) {
            self.push(EntryBody::RoundClosed {
                round: Round(round),
                beacon: Digest(Self::beacon(round)),
                new_model: Digest([0; 32]),
                val_loss_bits: 0,
                accepted_tasks: accepted,
                val_windows: 0,
                momentum: None,
                merged: (0..accepted).map(|i| Digest([i as u8; 32])).collect(),
            });
        }
    }

    #[test]
    fn rounds_older_than_the_retained_ones_keep_a_summary_of_their_tasks() {
        let mut log = Log::new();
        log.open(1);
        log.assign(1, 1);
        log.assign(1, 2);
        log.accept(1, 1);
        log.close(1, 1);
        for round in 2..=3 {
            log.open(round);
            log.assign(round, round + 1);
            log.close(round, 0);
        }
        let w = log.w();
        assert!(log.s.tasks.contains_key(&TaskId(1)), "round 1 is retained");
        log.open(4);
        let s = &mut log.s;
        // Round 1 is retired: its records are gone, its summary answers.
        assert!(!s.tasks.contains_key(&TaskId(1)));
        assert!(!s.tasks.contains_key(&TaskId(2)));
        let (round, t) = s.retired_task(TaskId(1)).unwrap();
        assert_eq!(
            (round, t.worker, t.outcome),
            (Round(1), w, Outcome::Accepted)
        );
        assert_eq!(
            s.retired_task(TaskId(2)).unwrap().1.outcome,
            Outcome::Expired
        );
        let r = s.rounds[&Round(1)].retired.as_ref().unwrap();
        assert_eq!((r.tasks.len(), r.committed, r.rejected), (2, 1, 0));
        // The retained rounds keep their records.
        assert!(s.tasks.contains_key(&TaskId(3)) && s.tasks.contains_key(&TaskId(4)));
        assert!(s.retired_task(TaskId(3)).is_none());
        assert_eq!(s.next_task_id(), TaskId(5));
        // A retired id cannot be assigned again.
        let again = Entry::unsigned(log.assign_body(4, 1)).unwrap();
        assert!(log.s.apply(log.s.size, &again).is_err());
    }
}
