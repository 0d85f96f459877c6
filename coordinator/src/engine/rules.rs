//! The engine's decisions as pure functions of the protocol state (the fold of the
//! log), the live task table and the time: no I/O, no lock, no clock or randomness of
//! their own. The `impl Coordinator` files call them under the lock and turn what they
//! decide into entries, blob writes and answers; the tests below check each decision
//! without tokio or a database.

use std::collections::BTreeMap;

use lupus_ledger::entry::{
    CreditKind, Digest, EndReason, EntryBody, PublicKey, Role, Round, TaskId,
};

use super::{Live, Settle};
use crate::error::Error;
use crate::state::{CreditKindKey, State, TaskRecord};

/// The live task table: what the coordinator knows of the open round's tasks beyond
/// the log.
pub(super) type LiveTable = BTreeMap<TaskId, Live>;

/// Refuses a key that may not act as `role`: slashed, joined as another role, or not
/// joined.
pub(super) fn require_role(state: &State, key: &PublicKey, role: Role) -> Result<(), Error> {
    standing(&state.participants, &state.slashed, key, role)
}

/// [`require_role`] over the participants and the slashed keys alone (the roster's
/// copy of them, outside the lock).
pub(super) fn standing(
    participants: &BTreeMap<PublicKey, Role>,
    slashed: &std::collections::BTreeSet<PublicKey>,
    key: &PublicKey,
    role: Role,
) -> Result<(), Error> {
    if slashed.contains(key) {
        return Err(Error::NotAllowed(
            "this key was slashed for fraud and may not take part any more".into(),
        ));
    }
    match participants.get(key) {
        Some(r) if *r == role => Ok(()),
        Some(r) => Err(Error::NotAllowed(format!(
            "this key joined as a {r:?}, not a {role:?}"
        ))),
        None => Err(Error::NotAllowed(format!(
            "this key has not joined; POST {} first",
            lupus_api::paths::JOIN
        ))),
    }
}

/// What a join asks of the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Join {
    /// The key joined before, as this role: nothing to append.
    Again,
    /// A new participant: append its join.
    New,
}

/// Decides a join: one key, one role, for good.
pub(super) fn join(state: &State, key: &PublicKey, role: Role) -> Result<Join, Error> {
    match state.participants.get(key) {
        Some(r) if *r != role => Err(Error::Conflict(format!(
            "this key already joined as a {r:?}; use one key per role"
        ))),
        Some(_) => Ok(Join::Again),
        None => Ok(Join::New),
    }
}

/// What a worker asking for a task gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Dispatch {
    /// Nothing now, for this reason.
    Wait(&'static str),
    /// Its own outstanding task again (a retry after a lost answer).
    Again(TaskId),
    /// A new task of this round, with the next task id.
    Assign { round: Round, task: TaskId },
}

/// Decides what `worker` (already known to be a worker) is handed: its own
/// outstanding task, a new one while the round has free slots, or a reason to wait. A
/// slot is free while fewer than `tasks_per_round` tasks are live, unexpired and not
/// rejected.
pub(super) fn dispatch(
    state: &State,
    live: &LiveTable,
    closing: bool,
    tasks_per_round: u32,
    worker: &PublicKey,
) -> Dispatch {
    let Some(round) = state.open_round() else {
        return Dispatch::Wait("no round is open");
    };
    if closing {
        return Dispatch::Wait("the round is closing; the next one opens in a moment");
    }
    // O(1) per poll: waiting workers poll every 250 ms, so a scan of the round's
    // tasks here ran thousands of times a second under the lock.
    let own = state
        .last_task
        .get(worker)
        .and_then(|id| state.tasks.get(id))
        .filter(|t| {
            t.round == round.round
                && t.committed.is_none()
                && live.get(&t.id).is_some_and(|l| !l.expired)
        });
    if let Some(t) = own {
        return Dispatch::Again(t.id);
    }
    let active = live
        .values()
        .filter(|l| !l.expired && l.outcome != Some(false))
        .count();
    if active >= tasks_per_round as usize {
        return Dispatch::Wait("every task of this round is handed out");
    }
    Dispatch::Assign {
        round: round.round,
        task: state.next_task_id(),
    }
}

/// Whether `t`'s round is closed. The last round's live facts outlive its close (for
/// `GET /v1/tasks/<id>`), so the live table alone does not say it.
fn in_closed_round(state: &State, t: &TaskRecord) -> bool {
    state
        .rounds
        .get(&t.round)
        .is_none_or(|r| r.closed.is_some())
}

fn closed_round(task: TaskId) -> Error {
    Error::Conflict(format!("task {task} belongs to a round that is closed"))
}

/// The task `worker` acts on: it exists, is the worker's, belongs to the open round
/// and has not expired.
pub(super) fn worker_task<'a>(
    state: &'a State,
    live: &'a LiveTable,
    worker: &PublicKey,
    task: TaskId,
) -> Result<(&'a TaskRecord, &'a Live), Error> {
    let t = state
        .tasks
        .get(&task)
        .ok_or_else(|| Error::NotFound(format!("no task {task}")))?;
    if t.worker != *worker {
        return Err(Error::NotAllowed(format!(
            "task {task} belongs to another worker"
        )));
    }
    let l = live
        .get(&task)
        .filter(|_| !in_closed_round(state, t))
        .ok_or_else(|| closed_round(task))?;
    if l.expired {
        return Err(Error::Conflict(format!(
            "task {task} expired (its deadline passed) and was handed out again"
        )));
    }
    Ok((t, l))
}

/// Marks the tasks past their deadline that were neither opened nor settled as
/// expired (their slots are handed out again) and drops verifier claims past theirs.
/// Returns the tasks it expired.
pub(super) fn expire(live: &mut LiveTable, now: u64) -> Vec<TaskId> {
    let mut expired = Vec::new();
    for (id, l) in live.iter_mut() {
        let opened = l.opening_blob.is_some();
        if !l.expired && l.outcome.is_none() && !opened && now > l.deadline_ms {
            l.expired = true;
            expired.push(*id);
        }
        let lapsed: Vec<PublicKey> = l
            .claims
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in lapsed {
            // A verifier that let its claim lapse is not drawn for the task again.
            l.claims.remove(&k);
            l.declined.insert(k);
        }
    }
    expired
}

/// The open round, if it should close now: its target of accepted tasks is met or its
/// deadline passed, and no close of it is running.
pub(super) fn close_due(
    state: &State,
    live: &LiveTable,
    closing: bool,
    tasks_per_round: u32,
    now: u64,
) -> Option<Round> {
    if closing {
        return None;
    }
    let round = state.open_round()?;
    let accepted = live.values().filter(|l| l.outcome == Some(true)).count();
    let target_met = accepted >= tasks_per_round as usize;
    (target_met || now >= round.deadline_ms).then_some(round.round)
}

/// How long a verifier counts as waiting after its last `POST /v1/verify/next`
/// (a waiting verifier asks again every 250 ms).
pub(super) const POOL_WINDOW_MS: u64 = 2_000;
/// How long a drawn verifier has to take the task it was drawn for before the task
/// is drawn again without it.
pub(super) const DRAW_TTL_MS: u64 = 2_000;

/// The verifiers waiting for work: each key with the time it last asked.
pub(super) type Pool = BTreeMap<PublicKey, u64>;

/// The task a verifier should work on, and whether it is a fresh claim (a
/// `ChallengeIssued` to append) or its own claim again.
///
/// **Nobody chooses whom they verify.** A task that wants a verifier (opened,
/// unsettled, fewer verdicts than it needs and no claim outstanding: a second
/// verifier is drawn only after the first has judged, so the first cannot see in the
/// log that a second is coming) is drawn to one verifier of `pool`, those that asked
/// within [`POOL_WINDOW_MS`], by `PRF(secret, task, draw number)`: the round's beacon,
/// committed in the log and secret until the close. The task's worker, the referee,
/// slashed keys, those that judged it and those that let a draw of it lapse are left
/// out. Only the drawn verifier is offered the task, for [`DRAW_TTL_MS`]; then it is
/// drawn again. A coalition of `s` keys among `n` waiting verifiers gets a given task
/// with probability `s / n`, whatever it does with its timing.
pub(super) fn pick_for_verifier(
    state: &State,
    live: &mut LiveTable,
    pool: &mut Pool,
    secret: &[u8; 32],
    verifier: &PublicKey,
    now: u64,
) -> Option<(TaskId, bool)> {
    pool.insert(*verifier, now);
    let referee = state.protocol.referee().copied();
    let mut swept = false;
    for (id, l) in live.iter_mut() {
        let Some(t) = state.tasks.get(id).filter(|t| !in_closed_round(state, t)) else {
            continue;
        };
        let done_by_me = t.verdicts.iter().any(|v| v.verifier == *verifier);
        if l.outcome.is_some() || l.opening_blob.is_none() || done_by_me || t.worker == *verifier {
            continue;
        }
        if l.claims.get(verifier).is_some_and(|d| *d > now) {
            return Some((*id, false));
        }
        let live_claims = l.claims.values().filter(|d| **d > now).count();
        // A slashed verifier's verdict no longer counts: its task wants another.
        let standing = t
            .verdicts
            .iter()
            .filter(|v| !state.slashed.contains(&v.verifier))
            .count();
        if live_claims > 0 || standing >= l.needed {
            continue;
        }
        match l.drawn {
            Some((k, until)) if until > now => {
                if k == *verifier {
                    l.drawn = None;
                    pool.remove(verifier);
                    return Some((*id, true));
                }
                continue;
            }
            Some((k, _)) => {
                l.declined.insert(k);
            }
            None => {}
        }
        if !swept {
            pool.retain(|_, seen| seen.saturating_add(POOL_WINDOW_MS) >= now);
            swept = true;
        }
        let candidates: Vec<PublicKey> = pool
            .keys()
            .filter(|k| {
                **k != t.worker
                    && Some(**k) != referee
                    && !state.slashed.contains(*k)
                    && !l.declined.contains(*k)
                    && !t.verdicts.iter().any(|v| v.verifier == **k)
            })
            .copied()
            .collect();
        let Some(drawn) = draw(secret, *id, l.draws, &candidates) else {
            continue;
        };
        l.draws = l.draws.saturating_add(1);
        if drawn == *verifier {
            // Busy with this task now: out of the pool until it asks again.
            pool.remove(verifier);
            return Some((*id, true));
        }
        l.drawn = Some((drawn, now.saturating_add(DRAW_TTL_MS)));
    }
    None
}

/// Draw number `n` of `task` among `candidates` (in key order):
/// `PRF(secret, "lupus verifier draw v1", task || n)` reduced to an index. `None` for
/// no candidate. The modulo bias is below `len / 2^64`.
pub(super) fn draw(
    secret: &[u8; 32],
    task: TaskId,
    n: u32,
    candidates: &[PublicKey],
) -> Option<PublicKey> {
    if candidates.is_empty() {
        return None;
    }
    let mut input = [0u8; 12];
    input[..8].copy_from_slice(&task.0.to_le_bytes());
    input[8..].copy_from_slice(&n.to_le_bytes());
    let x = lupus_prover::prf::prf(secret, "lupus verifier draw v1", &input);
    let u = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
    candidates
        .get((u % candidates.len() as u64) as usize)
        .copied()
}

/// The steps a verdict by `verifier` on `task` must cover, if the verdict may be
/// given: the task exists, was challenged to this verifier, has no verdict of its
/// yet, and is live and unsettled.
pub(super) fn verdict_admissible(
    state: &State,
    live: &LiveTable,
    verifier: &PublicKey,
    task: TaskId,
) -> Result<Vec<u32>, Error> {
    let t = state
        .tasks
        .get(&task)
        .ok_or_else(|| Error::NotFound(format!("no task {task}")))?;
    let Some((_, steps, _)) = t.challenges.iter().find(|c| c.0 == *verifier) else {
        return Err(Error::NotAllowed(format!(
            "task {task} was not challenged to this verifier"
        )));
    };
    if t.verdicts.iter().any(|v| v.verifier == *verifier) {
        return Err(Error::Conflict(format!(
            "this verifier already gave a verdict on task {task}"
        )));
    }
    let l = live
        .get(&task)
        .filter(|_| !in_closed_round(state, t))
        .ok_or_else(|| closed_round(task))?;
    if l.outcome.is_some() {
        return Err(Error::Conflict(format!("task {task} is already settled")));
    }
    Ok(steps.clone())
}

/// A task's outcome as the ledger fixes it, if it does: its worker slashed (rejected),
/// the referee's verdict, or unanimous acceptance by `needed` verifiers who stand.
pub(super) fn ledger_outcome(
    state: &State,
    t: &TaskRecord,
    needed: usize,
    referee: &PublicKey,
) -> Option<bool> {
    if t.worker_slashed {
        return Some(false);
    }
    if let Some(v) = t.verdicts.iter().find(|v| v.verifier == *referee) {
        return Some(v.accepted);
    }
    if on_probation(state, t) {
        // Trust is earned: only the referee's replay settles a probation task.
        return None;
    }
    let standing: Vec<_> = t
        .verdicts
        .iter()
        .filter(|v| !state.slashed.contains(&v.verifier))
        .collect();
    let accepts = standing.iter().filter(|v| v.accepted).count();
    if standing.iter().all(|v| v.accepted) && accepts >= needed {
        return Some(true);
    }
    None
}

/// Whether the referee must replay `t` before it settles, to check an acceptance's
/// replay digest: the round's secret `beacon` marks an acceptance by a verifier not
/// slashed ([`lupus_protocol::replay_checked`]), the worker is not slashed, and the
/// referee has not ruled. The close's auditor checks that every credited task so
/// marked has a ruling.
pub(super) fn replay_check_due(
    state: &State,
    t: &TaskRecord,
    beacon: &[u8; 32],
    referee: &PublicKey,
) -> bool {
    !t.worker_slashed
        && !t.verdicts.iter().any(|v| v.verifier == *referee)
        && state.protocol.marked_acceptance(t.id, beacon).is_some()
}

/// Whether `t`'s worker was on probation when it committed
/// ([`lupus_protocol::ProtocolState::on_probation`]): its work is credited only on the
/// referee's replay.
pub(super) fn on_probation(state: &State, t: &TaskRecord) -> bool {
    state.protocol.task_on_probation(t.id) == Some(true)
}

/// How a live, unsettled task's verdicts leave it when the ledger does not fix its
/// outcome: with no verdict, or only acceptances while another verifier could still
/// judge it, it waits; any rejection, acceptances short of `needed` with nobody
/// left to judge, or any verdict on a probation task, go to the referee.
pub(super) fn after_verdicts(state: &State, t: &TaskRecord, referee: &PublicKey) -> Settle {
    let any_reject = t.verdicts.iter().any(|v| !v.accepted);
    let standing = t
        .verdicts
        .iter()
        .any(|v| !state.slashed.contains(&v.verifier));
    let other_verifiers = state
        .participants
        .iter()
        .filter(|(k, r)| {
            **r == Role::Verifier
                && *k != referee
                && **k != t.worker
                && !state.slashed.contains(k)
                && !t.verdicts.iter().any(|v| v.verifier == **k)
        })
        .count();
    if !standing || (!any_reject && other_verifiers > 0 && !on_probation(state, t)) {
        Settle::Wait
    } else {
        Settle::Referee
    }
}

/// The keys the referee's verdict on `t` contradicts, not yet slashed, with the reason
/// and evidence of each slash: for a rejection, the worker and every verifier who
/// accepted; for an acceptance, every verifier who rejected. Empty without a referee
/// verdict. A function of the ledger, so calling it again after a crash repairs
/// slashes a crash cut off.
pub(super) fn contradicted(
    state: &State,
    t: &TaskRecord,
    referee: &PublicKey,
) -> Vec<(PublicKey, String, Option<Digest>)> {
    let Some(ruling) = t.verdicts.iter().find(|v| v.verifier == *referee) else {
        return Vec::new();
    };
    // Who is convicted is the protocol's rule, the one the auditor checks each
    // `Slashed` against; the reasons are the coordinator's.
    let verdicts: Vec<(PublicKey, bool)> = t
        .verdicts
        .iter()
        .map(|v| (v.verifier, v.accepted))
        .collect();
    lupus_protocol::convicts(&t.worker, &verdicts, referee)
        .into_iter()
        .filter(|k| !state.slashed.contains(k))
        .map(|k| {
            if ruling.accepted {
                (
                    k,
                    "rejected work that the referee's replay accepts".to_string(),
                    None,
                )
            } else if k == t.worker {
                (k, ruling.reason.clone(), ruling.evidence)
            } else {
                (
                    k,
                    "accepted work that the referee's replay rejects".to_string(),
                    ruling.evidence,
                )
            }
        })
        .collect()
}

/// The `TaskEnded` entries a close of `round` writes: one for every committed task
/// that has neither a work credit (in the log, or in `credited_now`, the close's own)
/// nor a rejecting ruling, nor an ending already. The reason follows the protocol's
/// rule: not opened, else its worker slashed, else not judged.
pub(super) fn endings(
    state: &State,
    round: Round,
    credited_now: &std::collections::BTreeSet<TaskId>,
) -> Vec<EntryBody> {
    let referee = state.protocol.referee().copied();
    let tasks = state
        .rounds
        .get(&round)
        .map(|r| r.tasks.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|id| state.tasks.get(id));
    let mut out = Vec::new();
    for t in tasks {
        let credited = credited_now.contains(&t.id)
            || t.credited.iter().any(|(_, k)| *k == CreditKindKey::Work);
        let rejected = t
            .verdicts
            .iter()
            .any(|v| Some(v.verifier) == referee && !v.accepted);
        if t.committed.is_none() || credited || rejected || t.ended.is_some() {
            continue;
        }
        let reason = if t.opened.is_none() {
            EndReason::NotOpened
        } else if state.slashed.contains(&t.worker) {
            EndReason::WorkerSlashed
        } else {
            EndReason::NotJudged
        };
        out.push(EntryBody::TaskEnded { task: t.id, reason });
    }
    out
}

/// What a round's close merges and credits, fixed when the close starts.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ClosePlan {
    /// The delta blobs of the accepted tasks, in task order.
    pub deltas: Vec<Digest>,
    /// The workers of those tasks.
    pub merged_workers: Vec<PublicKey>,
    /// `(key, amount, task, kind)`: the accepted work, and the verifiers who judged a
    /// task as it was settled (the referee earns nothing).
    pub credits: Vec<(PublicKey, u64, TaskId, CreditKind)>,
}

/// Plans the close of `round`: every accepted task (still finally accepted by the
/// protocol) whose worker is not slashed (a key slashed for another task since is a
/// proven cheat) is merged; every accepted task
/// credits its worker `task_flops`; every verifier whose verdict agrees with the
/// task's outcome is credited `step_flops` per challenged step it replayed, except
/// for a rejection of a worker that had nothing at stake.
pub(super) fn close_plan(
    state: &State,
    live: &LiveTable,
    round: Round,
    referee: &PublicKey,
    task_flops: u64,
    step_flops: u64,
) -> Result<ClosePlan, Error> {
    let mut plan = ClosePlan::default();
    let tasks = state
        .rounds
        .get(&round)
        .map(|r| r.tasks.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|id| state.tasks.get(id));
    for t in tasks {
        let Some(outcome) = live.get(&t.id).and_then(|l| l.outcome) else {
            continue;
        };
        // Credited only as the protocol will have it: an acceptance whose verifier
        // was slashed since is no acceptance (the task ends `not_judged` instead).
        if outcome && !state.protocol.finally_accepted(t.id) && state.protocol.job().is_some() {
            continue;
        }
        if outcome && !state.slashed.contains(&t.worker) {
            let delta = live
                .get(&t.id)
                .and_then(|l| l.delta_blob)
                .ok_or_else(|| Error::Internal(format!("task {} has no delta blob", t.id)))?;
            plan.deltas.push(delta);
            plan.merged_workers.push(t.worker);
        }
        if outcome {
            plan.credits
                .push((t.worker, task_flops, t.id, CreditKind::Work));
        }
        // A rejection is paid only when the worker had something to lose: convicting
        // a throwaway key of its own junk must not pay a Sybil partner.
        let paid = outcome || state.protocol.task_at_stake(t.id) != Some(false);
        for v in t
            .verdicts
            .iter()
            .filter(|v| paid && v.accepted == outcome && v.verifier != *referee)
        {
            let steps = t
                .challenges
                .iter()
                .find(|c| c.0 == v.verifier)
                .map_or(0, |c| c.1.len() as u64);
            plan.credits.push((
                v.verifier,
                steps * step_flops,
                t.id,
                CreditKind::Verification,
            ));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
