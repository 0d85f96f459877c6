//! The protocol's rules, entry by entry, on top of the shares fold.
//!
//! DESIGN.md, "The loop" and "Ledger": every share must be earned by verified work,
//! and every slash by proven fraud. [`SharesFold`] checks the share arithmetic
//! (rounds, pending credits, slashing, every `SharesEpoch` root); [`ProtocolState::apply`]
//! checks the rest, naming the entry index. The coordinator applies every entry here
//! *before* it sequences it, so it cannot write a log its auditor rejects; the auditor
//! applies the same function to what the log serves.
//!
//! - **Genesis**: the job spec parses ([`JobSpec::parse`]), `job_hash` is its
//!   [`JobSpec::hash`], and the checkpoint key the genesis names is the one the auditor
//!   pinned (and `log_key` is that key's Ed25519 key).
//! - **Participants** join once; a task goes to a joined worker, a challenge and a
//!   verdict come from a joined verifier. **The referee is the first key to join as a
//!   verifier** (the coordinator joins its referee right after the genesis, before it
//!   admits anyone); its verdict on a task is final.
//! - **Tasks**: assigned in an open round, with `H` and the batch size of the job spec
//!   and the seed `derive_task_seed(task, worker, beacon_commitment)`; committed once,
//!   by the assigned worker; challenged only after the commitment, with `m` steps.
//! - **Verdicts**: by a joined verifier, on a task that was challenged, over exactly
//!   the challenged steps (the signature itself is checked when the entry decodes),
//!   one per verifier. The verifier need not be the one the challenge names: the
//!   referee settles disputes on the same steps.
//! - **Slashes cite a conviction.** A `Slashed { key, task }` cites the referee's
//!   verdict on `task`: it is admissible only if that verdict exists and contradicts
//!   `key` ([`ProtocolState::convicted`]): the worker and every verifier that accepted,
//!   when the referee rejects; every verifier that rejected, when it accepts. A slash
//!   of anyone else, or with no ruling, is [`Violation::SlashWithoutConviction`]. A
//!   slash naming evidence names the ruling's evidence, and a rejecting ruling names
//!   its evidence: the fraud proof, or the opening it replayed (its steps are the
//!   verdict's), so `lupus-audit --replay` can re-check it.
//! - **Credits follow final acceptance**: a
//!   `Work` credit goes to the task's worker, once, only if the referee accepted the
//!   task, or, with no ruling, if every verdict of a verifier not slashed accepts (at
//!   least one), for `H x batch x FLOPs per sample` ([`JobSpec::task_flops`]). A
//!   `Verification` credit goes to a verifier (never the referee) that judged the task
//!   as it was settled, once, for `challenged steps x batch x FLOPs per sample`.
//! - **Every committed task ends in the log.** `TaskOpened` (by the task's worker's
//!   opening, once, after the commitment) comes before any verdict. By its round's
//!   close a committed task has a work credit, a rejecting ruling (its worker's
//!   conviction), or a `TaskEnded` whose reason holds (`not_opened`: no
//!   `TaskOpened`; `not_judged`: opened, no ruling, not finally accepted; `worker_slashed`: the worker is
//!   slashed); otherwise the close is [`Violation::TaskVanished`]. An ended task is
//!   not credited.
//! - **The model chain**: a round opens from the model the previous close named:
//!   `RoundOpened.base_model` is the last `RoundClosed.new_model` (the first round's
//!   base, the job's initial model, is not checked here).
//! - **Beacons**: `RoundClosed.beacon` must open `RoundOpened.beacon_commitment`
//!   ([`beacon_matches`]), and then every challenge of the round must be exactly
//!   [`challenge_steps`]`(beacon, trace_root, H, m)`, and every task credited without a
//!   ruling that the beacon marks for a double check ([`double_checked`]) must have two
//!   accepting verdicts. The beacon is secret until the close, so these checks run
//!   when the round closes. A round may not claim more accepted tasks than it has
//!   finally accepted ones, and it merges exactly one delta per work-credited task
//!   (`merged` names them; `lupus-audit --replay-merge` recomputes the merge).
//!
//! Tasks of a closed round are retired from the state (credits and slashes for them
//! are refused), so the state stays the size of the open round.

use std::collections::{BTreeMap, BTreeSet};

use lupus_ledger::entry::{
    Amount, CreditKind, Digest, EndReason, Entry, EntryBody, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::note::NoteVerifier;
use lupus_prover::challenge::{beacon_matches, challenge_steps};
use lupus_prover::prf::{derive_task_seed, prf};
use lupus_prover::spec::JobSpec;
use serde::{Deserialize, Serialize};

use crate::shares::{FoldError, SharesFold};

/// Why an entry breaks the protocol. The entry's index travels with it in
/// the auditor's error (`lupus_audit::verify::AuditError::Protocol`) and in the
/// coordinator's refusal to sequence it.
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
    #[error(
        "task {task}: a work credit without a final accept (the referee's, or with no ruling every standing verdict's)"
    )]
    CreditWithoutVerdict { task: TaskId },
    #[error("task {task}: a credit after the referee rejected the work")]
    CreditAfterRejection { task: TaskId },
    #[error("task {task}: {key} is credited for a verdict the referee contradicted")]
    CreditContradicted { task: TaskId, key: PublicKey },
    #[error("task {task}: the referee {key} is credited for its own ruling")]
    CreditToReferee { task: TaskId, key: PublicKey },
    #[error(
        "task {task}: {key} is slashed, but no verdict of the referee on this task convicts it ({why})"
    )]
    SlashWithoutConviction {
        task: TaskId,
        key: PublicKey,
        why: &'static str,
    },
    #[error(
        "task {task}: the slash of {key} names evidence {found}, but the referee's ruling names {expected:?}"
    )]
    SlashEvidence {
        task: TaskId,
        key: PublicKey,
        expected: Option<Digest>,
        found: Digest,
    },
    #[error(
        "task {task}: the revealed beacon marks it for a double check, but it was credited on {accepts} accepting verdict(s) and no ruling"
    )]
    SkippedDoubleCheck { task: TaskId, accepts: usize },
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
    #[error(
        "task {0}: the referee rejects it naming no evidence (a fraud proof, or the opening it replayed)"
    )]
    RulingWithoutEvidence(TaskId),
    #[error("task {0} was already opened")]
    AlreadyOpened(TaskId),
    #[error("task {0} is judged before its worker opened it")]
    NotOpened(TaskId),
    #[error("task {0} already ended")]
    AlreadyEnded(TaskId),
    #[error("task {task} ended as {reason:?}, but {why}")]
    EndReason {
        task: TaskId,
        reason: EndReason,
        why: &'static str,
    },
    #[error(
        "task {task} was committed in round {round}, which closes without its credit, its worker's conviction or an entry saying why it ended"
    )]
    TaskVanished { task: TaskId, round: Round },
    #[error(
        "round {round} closes claiming {accepted} accepted tasks and naming {merged} merged deltas, but {credited} tasks were credited for their work"
    )]
    MergedCount {
        round: Round,
        accepted: u32,
        merged: usize,
        credited: usize,
    },
    #[error(
        "task {task}: its worker was on probation when it committed ({record} of {needed} tasks accepted), so only the referee's acceptance credits it"
    )]
    ProbationUnrefereed {
        task: TaskId,
        record: u32,
        needed: u32,
    },
    #[error(
        "task {task}: {key} is paid for rejecting it, but its worker had nothing at stake when it committed (on probation, no vested credit): a conviction of a throwaway key earns nothing"
    )]
    CheapConviction { task: TaskId, key: PublicKey },
    #[error(
        "task {task}: {verifier} accepts it without the digest of its replay, which the job's replay checks require"
    )]
    AcceptWithoutReplay { task: TaskId, verifier: PublicKey },
    #[error(
        "task {task}: the revealed beacon marks {verifier}'s acceptance (its number {ordinal}) for the referee's replay check, but the task was credited with no ruling"
    )]
    SkippedReplayCheck {
        task: TaskId,
        verifier: PublicKey,
        ordinal: u32,
    },
    #[error("shares fold: {0}")]
    Fold(Box<FoldError>),
}

/// What the job spec fixes, kept so the spec is parsed once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The share of tasks a second verifier re-checks ([`double_checked`]).
    #[serde(default)]
    pub double_check_fraction: f64,
    /// Accepted tasks a worker key needs before its work is credited without the
    /// referee's replay ([`ProtocolState::on_probation`]).
    #[serde(default)]
    pub probation_tasks: u32,
    /// The floor of the referee's replay checks of acceptances ([`replay_checked`]);
    /// 0: no checks, and acceptances need no replay digest.
    #[serde(default)]
    pub replay_checks: f64,
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
    /// The referee's verdict: whether it accepts, and the evidence it names.
    ruling: Option<(bool, Option<Digest>)>,
    /// The opening's blob hash, once `TaskOpened`.
    #[serde(default)]
    opened: Option<Digest>,
    /// How it ended, if a `TaskEnded` says so.
    #[serde(default)]
    ended: Option<EndReason>,
    credited: BTreeSet<(PublicKey, bool)>,
    /// Whether its worker was on probation when it committed.
    #[serde(default)]
    probation: bool,
    /// Whether its worker had something to lose when it committed: out of probation,
    /// or a vested balance.
    #[serde(default)]
    at_stake: bool,
    /// `(verifier, ordinal)` of each acceptance by a verifier other than the referee:
    /// the ordinal counts that key's acceptances, this one included.
    #[serde(default)]
    accept_ordinals: Vec<(PublicKey, u32)>,
}

/// The keys the referee's verdict among a task's `verdicts` (`(verifier, accepted)`,
/// in log order) convicts: when it rejects, the `worker` and every verifier that
/// accepted; when it accepts, every verifier that rejected. Empty when the referee has
/// not ruled. Each key once, the worker first.
pub fn convicts(
    worker: &PublicKey,
    verdicts: &[(PublicKey, bool)],
    referee: &PublicKey,
) -> Vec<PublicKey> {
    let Some((_, ruling)) = verdicts.iter().find(|(v, _)| v == referee) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !ruling {
        out.push(*worker);
    }
    for (v, accepted) in verdicts {
        if v != referee && accepted != ruling && !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

/// Whether the beacon marks the task with `trace_root` for a second verifier: a
/// uniform draw from `PRF(beacon, trace_root)` below `fraction`. Nobody can know it
/// before the close reveals the beacon, and everybody can check it after.
pub fn double_checked(beacon: &[u8; 32], trace_root: &Digest, fraction: f64) -> bool {
    unit(&prf(beacon, "lupus double check v1", &trace_root.0)) < fraction
}

/// A PRF output's first 8 bytes as a uniform draw in `[0, 1]`.
fn unit(x: &[u8; 32]) -> f64 {
    let u = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
    (u as f64) / (u64::MAX as f64)
}

/// Whether the referee must replay `verifier`'s acceptance of `task`, its
/// `ordinal`-th acceptance (from 1), to check the acceptance's replay digest: a
/// uniform draw from `PRF(beacon, task || verifier)` below
/// `max(2 / (ordinal + 1), floor)`. So a key's first acceptance is always checked,
/// its second with odds 2/3, and so on down to `floor`; `floor` 0 turns checks off.
///
/// Why `2 / (j + 1)`: a verifier that replays its first `n - k` acceptances and
/// skips the last `k` (the skips least likely to be checked) is paid, if never
/// caught, for `n` verdicts at the CPU of `n - k`, and escapes with probability
/// `prod_{j = n-k+1..n} (j - 1) / (j + 1) = (n - k)(n - k + 1) / (n (n + 1))`; its
/// expected credit per CPU against honest work is `(n - k + 1) / (n + 1) < 1`.
/// With odds `1 / j` it would be exactly 1. A slash also takes everything the key
/// earned before. The beacon is secret until the close, so nobody knows which
/// acceptances are checked, and everybody can check after that the referee ruled
/// on each one a credited task had.
pub fn replay_checked(
    beacon: &[u8; 32],
    task: TaskId,
    verifier: &PublicKey,
    ordinal: u32,
    floor: f64,
) -> bool {
    if floor <= 0.0 {
        return false;
    }
    let mut input = [0u8; 40];
    input[..8].copy_from_slice(&task.0.to_be_bytes());
    input[8..].copy_from_slice(&verifier.0);
    let odds = (2.0 / (f64::from(ordinal) + 1.0)).max(floor);
    unit(&prf(beacon, "lupus replay check v1", &input)) < odds
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
    /// The first key to join as a verifier.
    #[serde(default)]
    referee: Option<PublicKey>,
    /// The `momentum` of the latest `RoundClosed`.
    #[serde(default)]
    momentum_chain: Option<Digest>,
    /// Each worker key's record: tasks credited for their work since its last
    /// failure (a task it committed and did not open). Absent: zero.
    #[serde(default)]
    records: BTreeMap<PublicKey, u32>,
    /// Each verifier key's acceptances so far (the referee's aside).
    #[serde(default)]
    accepts: BTreeMap<PublicKey, u32>,
}

impl ProtocolState {
    /// `key`'s record: tasks credited for their work since its last failure.
    pub fn record(&self, key: &PublicKey) -> u32 {
        self.records.get(key).copied().unwrap_or(0)
    }

    /// Whether work `key` commits now is on probation: its record is short of the
    /// job's `verify.probation_tasks`, so only the referee's acceptance credits it.
    pub fn on_probation(&self, key: &PublicKey) -> bool {
        let needed = self.job.as_ref().map_or(0, |j| j.probation_tasks);
        self.record(key) < needed
    }

    /// Whether `key` has something to lose if convicted now: it is out of
    /// probation, or holds a vested balance.
    pub fn at_stake(&self, key: &PublicKey) -> bool {
        !self.on_probation(key) || self.fold.balances().contains_key(key)
    }

    /// Whether the task's worker was on probation when it committed (`None`: no
    /// such task in an open round, or not committed).
    pub fn task_on_probation(&self, task: TaskId) -> Option<bool> {
        self.tasks
            .get(&task)
            .filter(|t| t.trace_root.is_some())
            .map(|t| t.probation)
    }

    /// Whether a rejection of the task may be paid: its worker had something at
    /// stake when it committed ([`Self::at_stake`]). `None`: unknown or uncommitted.
    pub fn task_at_stake(&self, task: TaskId) -> Option<bool> {
        self.tasks
            .get(&task)
            .filter(|t| t.trace_root.is_some())
            .map(|t| t.at_stake)
    }

    /// The shares fold after the entries applied so far.
    pub fn fold(&self) -> &SharesFold {
        &self.fold
    }

    /// The job facts from genesis, once it has been applied.
    pub fn job(&self) -> Option<&JobFacts> {
        self.job.as_ref()
    }

    /// The momentum blob the latest close named (`None`: none yet, a zero buffer).
    pub fn last_momentum(&self) -> Option<Digest> {
        self.momentum_chain
    }

    /// The referee: the first key that joined as a verifier.
    pub fn referee(&self) -> Option<&PublicKey> {
        self.referee.as_ref()
    }

    /// Whether a task is finally accepted: the referee accepted it, or with no ruling
    /// every verdict by a verifier not slashed accepts, and there is at least one.
    fn final_accept(&self, t: &TaskFacts) -> bool {
        if let Some((accepted, _)) = t.ruling {
            return accepted;
        }
        let mut standing = t
            .verdicts
            .iter()
            .filter(|(v, _)| !self.fold.is_slashed(v))
            .peekable();
        standing.peek().is_some() && standing.all(|(_, accepted)| *accepted)
    }

    /// Whether `task` (of an open round) is finally accepted now: the rule a work
    /// credit must meet. An acceptance stops counting once its verifier is slashed
    /// for another task, so a task settled on a liar's word alone is not.
    pub fn finally_accepted(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_some_and(|t| self.final_accept(t))
    }

    /// The keys the referee's verdict on `task` convicts ([`convicts`]). Empty with
    /// no ruling or for an unknown task (or one of a closed round). These are the
    /// only keys a `Slashed` naming `task` may name.
    /// The job's replay-check floor ([`replay_checked`]); 0 without a genesis.
    pub fn replay_checks(&self) -> f64 {
        self.job.as_ref().map_or(0.0, |j| j.replay_checks)
    }

    /// The first acceptance of `task` that `beacon` marks for the referee's replay
    /// check ([`replay_checked`]), as `(verifier, ordinal)`, among those of verifiers
    /// not slashed (a slashed verifier's acceptance counts for nothing, checked or
    /// not). The one rule both the coordinator (before it settles a task) and the
    /// close (with the beacon revealed) apply.
    pub fn marked_acceptance(&self, task: TaskId, beacon: &[u8; 32]) -> Option<(PublicKey, u32)> {
        let floor = self.replay_checks();
        self.tasks
            .get(&task)?
            .accept_ordinals
            .iter()
            .find(|(v, n)| !self.fold.is_slashed(v) && replay_checked(beacon, task, v, *n, floor))
            .copied()
    }

    /// Whether a `Slashed` of `key` for `task` stands on a wrong replay digest: the
    /// referee ruled the task good naming the opening it replayed, and `key` accepted
    /// it. The fold cannot replay; `lupus-audit --replay` recomputes `key`'s digest
    /// and checks that it is not the one `key` signed.
    fn lazy_conviction(&self, task: TaskId, key: &PublicKey) -> bool {
        let Some(t) = self.tasks.get(&task) else {
            return false;
        };
        self.replay_checks() > 0.0
            && matches!(t.ruling, Some((true, Some(_))))
            && t.accept_ordinals.iter().any(|(v, _)| v == key)
    }

    pub fn convicted(&self, task: TaskId) -> Vec<PublicKey> {
        match (self.tasks.get(&task), &self.referee) {
            (Some(t), Some(referee)) => convicts(&t.worker, &t.verdicts, referee),
            _ => Vec::new(),
        }
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

    /// `task`, which must be `worker`'s.
    fn worker_task(
        &mut self,
        task: TaskId,
        worker: &PublicKey,
    ) -> Result<&mut TaskFacts, Violation> {
        let t = self.task(task)?;
        if t.worker != *worker {
            return Err(Violation::WrongWorker {
                task,
                assigned: t.worker,
                found: *worker,
            });
        }
        Ok(t)
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
                    double_check_fraction: spec.verify.double_check_fraction,
                    probation_tasks: spec.verify.probation_tasks,
                    replay_checks: spec.verify.replay_checks,
                });
            }
            EntryBody::ParticipantJoined { key, role, .. } => {
                let previous = self.participants.insert(*key, *role);
                if previous.is_some() {
                    return Err(Violation::AlreadyJoined(*key));
                }
                if *role == Role::Verifier && self.referee.is_none() {
                    self.referee = Some(*key);
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
                        ruling: None,
                        opened: None,
                        ended: None,
                        credited: BTreeSet::new(),
                        probation: false,
                        at_stake: false,
                        accept_ordinals: Vec::new(),
                    },
                );
            }
            EntryBody::WorkCommitted {
                task,
                worker,
                trace_root,
                ..
            } => {
                let probation = self.on_probation(worker);
                let at_stake = self.at_stake(worker);
                let t = self.worker_task(*task, worker)?;
                if t.trace_root.is_some() {
                    return Err(Violation::AlreadyCommitted(*task));
                }
                t.trace_root = Some(*trace_root);
                t.probation = probation;
                t.at_stake = at_stake;
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
                evidence,
                ..
            } => {
                self.role(verifier, Role::Verifier)?;
                let is_referee = self.referee == Some(*verifier);
                let t = self.task(*task)?;
                // Every challenge of a task asks the same steps (they are a function
                // of the beacon and the trace root); a verifier judges those steps.
                // It need not have a challenge of its own: the coordinator's referee
                // settles disputes over the challenge already issued.
                let challenge = t.challenges.first().ok_or(Violation::NotChallenged {
                    task: *task,
                    verifier: *verifier,
                })?;
                if t.opened.is_none() {
                    return Err(Violation::NotOpened(*task));
                }
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
                if is_referee && !*accepted && evidence.is_none() {
                    return Err(Violation::RulingWithoutEvidence(*task));
                }
                let checks = self.job.as_ref().map_or(0.0, |j| j.replay_checks);
                if checks > 0.0 && *accepted && !is_referee && evidence.is_none() {
                    return Err(Violation::AcceptWithoutReplay {
                        task: *task,
                        verifier: *verifier,
                    });
                }
                if *accepted && !is_referee {
                    let n = self.accepts.entry(*verifier).or_insert(0);
                    *n = n.saturating_add(1);
                    let ordinal = *n;
                    self.task(*task)?.accept_ordinals.push((*verifier, ordinal));
                }
                let t = self.task(*task)?;
                t.verdicts.push((*verifier, *accepted));
                if is_referee {
                    t.ruling = Some((*accepted, *evidence));
                }
            }
            EntryBody::TaskOpened {
                task,
                worker,
                opening,
            } => {
                let t = self.worker_task(*task, worker)?;
                if t.trace_root.is_none() {
                    return Err(Violation::NotCommitted(*task));
                }
                if t.ended.is_some() {
                    return Err(Violation::AlreadyEnded(*task));
                }
                if t.opened.is_some() {
                    return Err(Violation::AlreadyOpened(*task));
                }
                t.opened = Some(*opening);
            }
            EntryBody::TaskEnded { task, reason } => {
                let worker_slashed = self
                    .tasks
                    .get(task)
                    .is_some_and(|t| self.fold.is_slashed(&t.worker));
                let accepted = self.tasks.get(task).is_some_and(|t| self.final_accept(t));
                let t = self.task(*task)?;
                if t.trace_root.is_none() {
                    return Err(Violation::NotCommitted(*task));
                }
                if t.ended.is_some() {
                    return Err(Violation::AlreadyEnded(*task));
                }
                let bad = |why| Violation::EndReason {
                    task: *task,
                    reason: *reason,
                    why,
                };
                if t.credited.iter().any(|(_, work)| *work) {
                    return Err(bad("its work was credited"));
                }
                if matches!(t.ruling, Some((false, _))) {
                    return Err(bad("the referee rejected it: its worker's slash ends it"));
                }
                match reason {
                    EndReason::NotOpened if t.opened.is_some() => {
                        return Err(bad("it was opened"));
                    }
                    EndReason::NotJudged if t.opened.is_none() => {
                        return Err(bad("it was never opened"));
                    }
                    EndReason::NotJudged if t.ruling.is_some() => {
                        return Err(bad("the referee ruled on it"));
                    }
                    // A probation task is owed nothing until the referee accepts it.
                    EndReason::NotJudged if accepted && !t.probation => {
                        return Err(bad("its verdicts accept it: it is owed its credit"));
                    }
                    EndReason::WorkerSlashed if !worker_slashed => {
                        return Err(bad("its worker is not slashed"));
                    }
                    _ => {}
                }
                t.ended = Some(*reason);
                if *reason == EndReason::NotOpened {
                    // Not opening is failing: the record starts again.
                    let worker = t.worker;
                    self.records.remove(&worker);
                }
            }
            EntryBody::Slashed {
                key,
                task,
                evidence,
                ..
            } => {
                let t = self
                    .tasks
                    .get(task)
                    .ok_or(Violation::SlashWithoutConviction {
                        task: *task,
                        key: *key,
                        why: "no such task in a round still open",
                    })?;
                let Some((_, ruling_evidence)) = t.ruling else {
                    return Err(Violation::SlashWithoutConviction {
                        task: *task,
                        key: *key,
                        why: "the referee has not ruled on it",
                    });
                };
                let lazy = self.lazy_conviction(*task, key) && evidence.is_some();
                if !self.convicted(*task).contains(key) && !lazy {
                    return Err(Violation::SlashWithoutConviction {
                        task: *task,
                        key: *key,
                        why: "the ruling does not contradict this key",
                    });
                }
                if let Some(found) = evidence
                    && Some(*found) != ruling_evidence
                {
                    return Err(Violation::SlashEvidence {
                        task: *task,
                        key: *key,
                        expected: ruling_evidence,
                        found: *found,
                    });
                }
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
                let referee = self.referee;
                let final_accept = match self.tasks.get(task) {
                    Some(t) => self.final_accept(t),
                    None => false,
                };
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
                    if matches!(t.ruling, Some((false, _))) {
                        return Err(Violation::CreditAfterRejection { task: *task });
                    }
                    if t.ended.is_some() {
                        return Err(Violation::AlreadyEnded(*task));
                    }
                    if slashed || !final_accept {
                        return Err(Violation::CreditWithoutVerdict { task: *task });
                    }
                    if t.probation && t.ruling.is_none() {
                        return Err(Violation::ProbationUnrefereed {
                            task: *task,
                            record: self.records.get(key).copied().unwrap_or(0),
                            needed: job.probation_tasks,
                        });
                    }
                    u64::from(job.inner_steps).saturating_mul(per_step)
                } else {
                    if referee == Some(*key) {
                        return Err(Violation::CreditToReferee {
                            task: *task,
                            key: *key,
                        });
                    }
                    let verdict = t.verdicts.iter().find(|(v, _)| v == key);
                    if let Some((_, accepted)) = verdict
                        && *accepted != final_accept
                    {
                        return Err(Violation::CreditContradicted {
                            task: *task,
                            key: *key,
                        });
                    }
                    if verdict.is_some_and(|(_, accepted)| !accepted) && !t.at_stake {
                        return Err(Violation::CheapConviction {
                            task: *task,
                            key: *key,
                        });
                    }
                    let judged = verdict.is_some();
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
                if is_work {
                    let record = self.records.entry(*key).or_insert(0);
                    *record = record.saturating_add(1);
                }
            }
            EntryBody::RoundClosed {
                round,
                beacon,
                new_model,
                accepted_tasks,
                merged,
                momentum,
                ..
            } => {
                self.close(*round, beacon, *accepted_tasks, merged.len())?;
                self.momentum_chain = *momentum;
                self.model_chain = Some(*new_model);
            }
            // Epochs are the fold's to check.
            _ => {}
        }
        Ok(())
    }

    fn close(
        &mut self,
        round: Round,
        beacon: &Digest,
        accepted: u32,
        merged: usize,
    ) -> Result<(), Violation> {
        let job = self.job_facts()?.clone();
        let r = self
            .rounds
            .get(&round)
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
        let mut credited_work = 0usize;
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
                let credited = t.credited.iter().any(|(_, work)| *work);
                if credited
                    && t.ruling.is_none()
                    && double_checked(&beacon.0, root, job.double_check_fraction)
                {
                    let accepts = t.verdicts.iter().filter(|(_, a)| *a).count();
                    if accepts < 2 {
                        return Err(Violation::SkippedDoubleCheck { task: *id, accepts });
                    }
                }
                if credited
                    && t.ruling.is_none()
                    && let Some((verifier, ordinal)) = self.marked_acceptance(*id, &beacon.0)
                {
                    return Err(Violation::SkippedReplayCheck {
                        task: *id,
                        verifier,
                        ordinal,
                    });
                }
            }
            credited_work += usize::from(t.credited.iter().any(|(_, work)| *work));
            if t.trace_root.is_some() {
                let credited = t.credited.iter().any(|(_, work)| *work);
                let convicted = matches!(t.ruling, Some((false, _)));
                if !credited && !convicted && t.ended.is_none() {
                    return Err(Violation::TaskVanished { task: *id, round });
                }
            }
            if self.final_accept(t) && !self.fold.is_slashed(&t.worker) {
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
        if accepted as usize != merged || merged != credited_work {
            return Err(Violation::MergedCount {
                round,
                accepted,
                merged,
                credited: credited_work,
            });
        }
        let Some(r) = self.rounds.get_mut(&round) else {
            return Err(Violation::UnknownRound(round));
        };
        r.closed = true;
        for id in std::mem::take(&mut r.tasks) {
            self.tasks.remove(&id);
        }
        Ok(())
    }
}
