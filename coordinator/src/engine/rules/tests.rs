//! Unit tests of the engine's pure decisions: no tokio, no database.
use super::*;
use crate::state::{Committed, RoundRecord, VerdictRecord};

const REFEREE: PublicKey = PublicKey([0xee; 32]);
const W1: PublicKey = PublicKey([1; 32]);
const W2: PublicKey = PublicKey([2; 32]);
const V1: PublicKey = PublicKey([11; 32]);
const V2: PublicKey = PublicKey([12; 32]);

/// Round 1 open until `deadline`, the referee, two workers and two verifiers.
fn state(deadline: u64) -> State {
    let mut s = State::default();
    for (k, r) in [
        (REFEREE, Role::Verifier),
        (W1, Role::Worker),
        (W2, Role::Worker),
        (V1, Role::Verifier),
        (V2, Role::Verifier),
    ] {
        s.participants.insert(k, r);
    }
    s.rounds.insert(
        Round(1),
        RoundRecord {
            round: Round(1),
            base_model: Digest([0; 32]),
            beacon_commitment: Digest([0; 32]),
            inner_steps: 8,
            deadline_ms: deadline,
            closed: None,
            epoch_written: false,
            tasks: Vec::new(),
            retired: None,
        },
    );
    s
}

/// Assigns task `id` of round 1 to `worker`, live until `deadline`.
fn assign(s: &mut State, live: &mut LiveTable, id: u64, worker: PublicKey, deadline: u64) {
    let id = TaskId(id);
    s.tasks.insert(
        id,
        TaskRecord {
            id,
            round: Round(1),
            worker,
            seed: Digest([0; 32]),
            inner_steps: 8,
            batch_size: 4,
            index: id.0,
            committed: None,
            challenges: Vec::new(),
            verdicts: Vec::new(),
            worker_slashed: false,
            opened: None,
            ended: None,
            credited: Default::default(),
        },
    );
    s.rounds.get_mut(&Round(1)).unwrap().tasks.push(id);
    s.next_task = s.next_task.max(id.0 + 1);
    s.last_task.insert(worker, id);
    live.insert(
        id,
        Live {
            deadline_ms: deadline,
            needed: 1,
            ..Live::default()
        },
    );
}

/// Commits and opens task `id`, challenged to `verifiers`.
fn open(s: &mut State, live: &mut LiveTable, id: u64, verifiers: &[PublicKey]) {
    let t = s.tasks.get_mut(&TaskId(id)).unwrap();
    t.committed = Some(Committed {
        trace_root: Digest([9; 32]),
        final_state: Digest([9; 32]),
        delta: Digest([9; 32]),
        index: 100 + id,
    });
    for v in verifiers {
        t.challenges.push((*v, vec![1, 3], 200 + id));
    }
    let l = live.get_mut(&TaskId(id)).unwrap();
    l.opening_blob = Some(Digest([7; 32]));
    l.steps = Some(vec![1, 3]);
}

fn verdict(s: &mut State, id: u64, verifier: PublicKey, accepted: bool) {
    s.tasks
        .get_mut(&TaskId(id))
        .unwrap()
        .verdicts
        .push(VerdictRecord {
            verifier,
            accepted,
            reason: if accepted { "ok" } else { "step 3 differs" }.into(),
            evidence: None,
            index: 300,
        });
}

#[test]
fn roles_are_checked_and_a_slashed_key_is_out() {
    let mut s = state(1_000);
    assert!(require_role(&s, &W1, Role::Worker).is_ok());
    assert!(matches!(
        require_role(&s, &W1, Role::Verifier),
        Err(Error::NotAllowed(_))
    ));
    assert!(matches!(
        require_role(&s, &PublicKey([99; 32]), Role::Worker),
        Err(Error::NotAllowed(m)) if m.contains("has not joined")
    ));
    s.slashed.insert(W1);
    assert!(matches!(
        require_role(&s, &W1, Role::Worker),
        Err(Error::NotAllowed(m)) if m.contains("slashed")
    ));
}

#[test]
fn one_key_one_role() {
    let s = state(1_000);
    assert_eq!(join(&s, &W1, Role::Worker).unwrap(), Join::Again);
    assert!(matches!(
        join(&s, &W1, Role::Verifier),
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        join(&s, &PublicKey([50; 32]), Role::Verifier).unwrap(),
        Join::New
    );
}

#[test]
fn dispatch_hands_out_slots_then_waits_and_repeats_a_workers_own_task() {
    let mut s = state(1_000);
    let mut live = LiveTable::new();
    assert_eq!(
        dispatch(&s, &live, false, 2, &W1),
        Dispatch::Assign {
            round: Round(1),
            task: TaskId(1)
        }
    );
    assign(&mut s, &mut live, 1, W1, 500);
    // A lost answer: the same worker gets the same task, not a second slot.
    assert_eq!(
        dispatch(&s, &live, false, 2, &W1),
        Dispatch::Again(TaskId(1))
    );
    assert_eq!(
        dispatch(&s, &live, false, 2, &W2),
        Dispatch::Assign {
            round: Round(1),
            task: TaskId(2)
        }
    );
    assign(&mut s, &mut live, 2, W2, 500);
    assert_eq!(
        dispatch(&s, &live, false, 2, &PublicKey([3; 32])),
        Dispatch::Wait("every task of this round is handed out")
    );
    // An expired task frees its slot and is not the worker's any more.
    expire(&mut live, 501);
    assert!(matches!(
        dispatch(&s, &live, false, 2, &W1),
        Dispatch::Assign {
            task: TaskId(3),
            ..
        }
    ));
    // A rejected task frees its slot too; an accepted one keeps it.
    assign(&mut s, &mut live, 3, W1, 900);
    assign(&mut s, &mut live, 4, W2, 900);
    live.get_mut(&TaskId(3)).unwrap().outcome = Some(false);
    live.get_mut(&TaskId(4)).unwrap().outcome = Some(true);
    assert!(matches!(
        dispatch(&s, &live, false, 2, &PublicKey([3; 32])),
        Dispatch::Assign {
            task: TaskId(5),
            ..
        }
    ));
    assert!(matches!(
        dispatch(&s, &live, true, 2, &W1),
        Dispatch::Wait(r) if r.contains("closing")
    ));
    s.rounds.get_mut(&Round(1)).unwrap().closed = Some(crate::state::Closed {
        beacon: Digest([0; 32]),
        new_model: Digest([0; 32]),
        val_loss: 1.0,
        accepted: 1,
    });
    assert_eq!(
        dispatch(&s, &live, false, 2, &W1),
        Dispatch::Wait("no round is open")
    );
}

#[test]
fn a_worker_acts_only_on_its_own_live_task() {
    let mut s = state(1_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    assert!(worker_task(&s, &live, &W1, TaskId(1)).is_ok());
    assert!(matches!(
        worker_task(&s, &live, &W2, TaskId(1)),
        Err(Error::NotAllowed(_))
    ));
    assert!(matches!(
        worker_task(&s, &live, &W1, TaskId(9)),
        Err(Error::NotFound(_))
    ));
    expire(&mut live, 501);
    assert!(matches!(
        worker_task(&s, &live, &W1, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("expired")
    ));
    live.clear();
    assert!(matches!(
        worker_task(&s, &live, &W1, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("closed")
    ));
}

#[test]
fn expiry_spares_opened_and_settled_tasks_and_drops_stale_claims() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    assign(&mut s, &mut live, 2, W2, 500);
    assign(&mut s, &mut live, 3, W1, 500);
    assign(&mut s, &mut live, 4, W2, 900);
    open(&mut s, &mut live, 2, &[]);
    live.get_mut(&TaskId(3)).unwrap().outcome = Some(true);
    live.get_mut(&TaskId(2)).unwrap().claims.insert(V1, 600);
    live.get_mut(&TaskId(2)).unwrap().claims.insert(V2, 700);
    // At the deadline itself nothing expires.
    assert!(expire(&mut live, 500).is_empty());
    assert_eq!(expire(&mut live, 650), vec![TaskId(1)]);
    let claims = &live[&TaskId(2)].claims;
    assert_eq!(claims.keys().copied().collect::<Vec<_>>(), vec![V2]);
    // Expiry happens once.
    assert_eq!(expire(&mut live, 901), vec![TaskId(4)]);
    assert!(live[&TaskId(1)].expired && !live[&TaskId(2)].expired);
}

#[test]
fn a_round_is_due_at_its_target_or_its_deadline_and_not_while_closing() {
    let mut s = state(1_000);
    let mut live = LiveTable::new();
    assert_eq!(close_due(&s, &live, false, 2, 999), None);
    assert_eq!(close_due(&s, &live, false, 2, 1_000), Some(Round(1)));
    assert_eq!(close_due(&s, &live, true, 2, 1_000), None);
    assign(&mut s, &mut live, 1, W1, 500);
    assign(&mut s, &mut live, 2, W2, 500);
    live.get_mut(&TaskId(1)).unwrap().outcome = Some(true);
    assert_eq!(close_due(&s, &live, false, 2, 10), None);
    live.get_mut(&TaskId(2)).unwrap().outcome = Some(true);
    assert_eq!(close_due(&s, &live, false, 2, 10), Some(Round(1)));
}

/// [`pick_for_verifier`] with a fresh pool and a fixed secret.
fn pick(
    s: &State,
    live: &mut LiveTable,
    pool: &mut Pool,
    v: &PublicKey,
    now: u64,
) -> Option<(TaskId, bool)> {
    pick_for_verifier(s, live, pool, &[5; 32], v, now)
}

#[test]
fn a_verifier_gets_opened_work_that_is_not_its_own_up_to_what_it_needs() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    let mut pool = Pool::new();
    assign(&mut s, &mut live, 1, W1, 500);
    assert_eq!(pick(&s, &mut live, &mut pool, &V1, 0), None, "not opened");
    open(&mut s, &mut live, 1, &[]);
    // V1 is the only verifier waiting: the draw can only name it.
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V1, 0),
        Some((TaskId(1), true))
    );
    // Its own claim comes back as such; a second verifier is not needed.
    live.get_mut(&TaskId(1)).unwrap().claims.insert(V1, 100);
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V1, 50),
        Some((TaskId(1), false))
    );
    assert_eq!(pick(&s, &mut live, &mut pool, &V2, 50), None);
    // Once the claim lapses the task is drawn again, without the verifier that let
    // it lapse.
    assert_eq!(expire(&mut live, 100), Vec::<TaskId>::new());
    assert_eq!(pick(&s, &mut live, &mut pool, &V1, 100), None, "declined");
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V2, 100),
        Some((TaskId(1), true))
    );
    // A double-checked task wants a second verifier, but not the first again.
    let l = live.get_mut(&TaskId(1)).unwrap();
    l.needed = 2;
    l.declined.clear();
    verdict(&mut s, 1, V1, true);
    assert_eq!(pick(&s, &mut live, &mut pool, &V1, 200), None);
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V2, 200),
        Some((TaskId(1), true))
    );
    // Nobody verifies their own work.
    s.participants.insert(W1, Role::Verifier);
    assert_eq!(pick(&s, &mut live, &mut pool, &W1, 200), None);
    live.get_mut(&TaskId(1)).unwrap().outcome = Some(true);
    assert_eq!(pick(&s, &mut live, &mut pool, &V2, 200), None, "settled");
}

/// A task settled on one verifier's acceptance, whose verifier is then slashed for
/// another task, wants a verifier again: the liar's word no longer counts.
#[test]
fn a_slashed_verifiers_verdict_no_longer_counts() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    let mut pool = Pool::new();
    assign(&mut s, &mut live, 1, W1, 5_000);
    open(&mut s, &mut live, 1, &[V1]);
    verdict(&mut s, 1, V1, true);
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V2, 10),
        None,
        "judged enough"
    );
    s.slashed.insert(V1);
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V2, 20),
        Some((TaskId(1), true))
    );
    assert_eq!(
        after_verdicts(&s, s.tasks.get(&TaskId(1)).unwrap(), &REFEREE),
        Settle::Wait
    );
}

/// The Sybil pair of issue 13: a verifier key that asks first, or asks again and
/// again, used to take its partner's task every time (first come, first served).
/// Now the task goes to a verifier drawn among those waiting: one key among eleven
/// gets about one task in eleven, however it times its requests.
#[test]
fn a_coalition_cannot_choose_the_tasks_it_verifies() {
    let honest: Vec<PublicKey> = (0..10u8).map(|i| PublicKey([100 + i; 32])).collect();
    let sybil = PublicKey([200; 32]);
    let tasks = 2_200u64;
    let mut s = state(10_000_000);
    s.participants.insert(sybil, Role::Verifier);
    for k in &honest {
        s.participants.insert(*k, Role::Verifier);
    }
    let mut live = LiveTable::new();
    let mut pool = Pool::new();
    let mut got = 0u64;
    for id in 1..=tasks {
        assign(&mut s, &mut live, id, W1, 10_000_000);
        open(&mut s, &mut live, id, &[]);
        let now = id * 10;
        // The honest verifiers wait (they asked within the pool window) ...
        for k in &honest {
            pool.insert(*k, now);
        }
        // ... and the Sybil asks first, then five more times.
        for _ in 0..6 {
            if pick(&s, &mut live, &mut pool, &sybil, now) == Some((TaskId(id), true)) {
                got += 1;
                break;
            }
        }
        live.get_mut(&TaskId(id)).unwrap().outcome = Some(true);
    }
    let rate = got as f64 / tasks as f64;
    // Binomial(2200, 1/11): mean 200, sd 13.5; 99.99 % of runs fall within 4.3 sd.
    assert!(
        (140..=260).contains(&got),
        "the Sybil got {got} of {tasks} tasks ({rate:.3}), not about 1/11"
    );
}

#[test]
fn the_draw_is_a_function_of_the_secret_the_task_and_the_draw_number() {
    let keys: Vec<PublicKey> = (0..7u8).map(|i| PublicKey([i; 32])).collect();
    assert_eq!(draw(&[1; 32], TaskId(3), 0, &[]), None);
    let a = draw(&[1; 32], TaskId(3), 0, &keys);
    assert_eq!(a, draw(&[1; 32], TaskId(3), 0, &keys), "deterministic");
    // Each of the seven keys is drawn for some task: nobody is left out for good.
    let drawn: std::collections::BTreeSet<_> = (0..200)
        .filter_map(|t| draw(&[1; 32], TaskId(t), 0, &keys))
        .collect();
    assert_eq!(drawn.len(), keys.len());
    // Another secret (the next round's beacon) gives other draws.
    let other = (0..50)
        .filter(|t| draw(&[1; 32], TaskId(*t), 0, &keys) != draw(&[2; 32], TaskId(*t), 0, &keys))
        .count();
    assert!(other > 30, "{other} of 50 draws changed with the secret");
}

#[test]
fn a_verdict_needs_a_challenge_and_an_unsettled_task() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    open(&mut s, &mut live, 1, &[V1]);
    assert!(matches!(
        verdict_admissible(&s, &live, &V2, TaskId(1)),
        Err(Error::NotAllowed(_))
    ));
    assert_eq!(
        verdict_admissible(&s, &live, &V1, TaskId(1)).unwrap(),
        vec![1, 3]
    );
    verdict(&mut s, 1, V1, true);
    assert!(matches!(
        verdict_admissible(&s, &live, &V1, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("already gave")
    ));
    s.tasks
        .get_mut(&TaskId(1))
        .unwrap()
        .challenges
        .push((V2, vec![1, 3], 9));
    live.get_mut(&TaskId(1)).unwrap().outcome = Some(true);
    assert!(matches!(
        verdict_admissible(&s, &live, &V2, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("settled")
    ));
    assert!(matches!(
        verdict_admissible(&s, &live, &V2, TaskId(2)),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn the_ledger_fixes_an_outcome_only_by_the_referee_a_slash_or_enough_standing_accepts() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    open(&mut s, &mut live, 1, &[V1, V2]);
    let t = |s: &State| s.tasks[&TaskId(1)].clone();
    assert_eq!(ledger_outcome(&s, &t(&s), 1, &REFEREE), None);
    verdict(&mut s, 1, V1, true);
    assert_eq!(ledger_outcome(&s, &t(&s), 1, &REFEREE), Some(true));
    assert_eq!(
        ledger_outcome(&s, &t(&s), 2, &REFEREE),
        None,
        "double check"
    );
    // A rejection blocks acceptance until the referee speaks...
    verdict(&mut s, 1, V2, false);
    assert_eq!(ledger_outcome(&s, &t(&s), 1, &REFEREE), None);
    // ...unless its verifier was slashed: its verdict no longer stands.
    s.slashed.insert(V2);
    assert_eq!(ledger_outcome(&s, &t(&s), 1, &REFEREE), Some(true));
    s.slashed.clear();
    verdict(&mut s, 1, REFEREE, false);
    assert_eq!(ledger_outcome(&s, &t(&s), 1, &REFEREE), Some(false));
    let mut slashed = t(&s);
    slashed.verdicts.clear();
    slashed.worker_slashed = true;
    assert_eq!(ledger_outcome(&s, &slashed, 1, &REFEREE), Some(false));
}

#[test]
fn verdicts_wait_for_another_verifier_or_go_to_the_referee() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    open(&mut s, &mut live, 1, &[V1, V2]);
    let t = |s: &State| s.tasks[&TaskId(1)].clone();
    assert_eq!(
        after_verdicts(&s, &t(&s), &REFEREE),
        Settle::Wait,
        "no verdict"
    );
    verdict(&mut s, 1, V1, true);
    // V2 could still judge it.
    assert_eq!(after_verdicts(&s, &t(&s), &REFEREE), Settle::Wait);
    // With V2 slashed nobody else can: the referee is the second verifier.
    s.slashed.insert(V2);
    assert_eq!(after_verdicts(&s, &t(&s), &REFEREE), Settle::Referee);
    s.slashed.clear();
    // Any rejection goes to the referee at once.
    verdict(&mut s, 1, V2, false);
    assert_eq!(after_verdicts(&s, &t(&s), &REFEREE), Settle::Referee);
}

#[test]
fn the_referee_slashes_whoever_it_contradicts_once() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 500);
    open(&mut s, &mut live, 1, &[V1, V2]);
    verdict(&mut s, 1, V1, true);
    verdict(&mut s, 1, V2, false);
    let t = |s: &State| s.tasks[&TaskId(1)].clone();
    assert!(
        contradicted(&s, &t(&s), &REFEREE).is_empty(),
        "no ruling yet"
    );
    let mut rejected = s.tasks[&TaskId(1)].clone();
    rejected.verdicts.push(VerdictRecord {
        verifier: REFEREE,
        accepted: false,
        reason: "referee replay: step 3".into(),
        evidence: Some(Digest([5; 32])),
        index: 400,
    });
    let keys: Vec<_> = contradicted(&s, &rejected, &REFEREE)
        .into_iter()
        .map(|(k, _, e)| (k, e))
        .collect();
    assert_eq!(
        keys,
        vec![(W1, Some(Digest([5; 32]))), (V1, Some(Digest([5; 32])))]
    );
    // Slashed already: not again (the repair after a crash appends what is missing).
    s.slashed.insert(W1);
    let keys: Vec<_> = contradicted(&s, &rejected, &REFEREE)
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, vec![V1]);
    verdict(&mut s, 1, REFEREE, true);
    let keys: Vec<_> = contradicted(&s, &t(&s), &REFEREE)
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, vec![V2]);
}

#[test]
fn a_close_merges_accepted_work_and_credits_whoever_judged_rightly() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    for (id, w) in [(1, W1), (2, W2), (3, W1), (4, W2)] {
        assign(&mut s, &mut live, id, w, 500);
        open(&mut s, &mut live, id, &[V1, V2]);
        live.get_mut(&TaskId(id)).unwrap().delta_blob = Some(Digest([id as u8; 32]));
    }
    // 1: accepted by V1 and V2. 2: rejected by the referee, V1 had accepted it,
    // V2 rejected it. 3: accepted by V1, and the referee's own verdict earns
    // nothing. 4: unsettled: neither merged nor credited.
    verdict(&mut s, 1, V1, true);
    verdict(&mut s, 1, V2, true);
    verdict(&mut s, 2, V1, true);
    verdict(&mut s, 2, V2, false);
    verdict(&mut s, 2, REFEREE, false);
    verdict(&mut s, 3, V1, true);
    verdict(&mut s, 3, REFEREE, true);
    live.get_mut(&TaskId(1)).unwrap().outcome = Some(true);
    live.get_mut(&TaskId(2)).unwrap().outcome = Some(false);
    live.get_mut(&TaskId(3)).unwrap().outcome = Some(true);
    let plan = close_plan(&s, &live, Round(1), &REFEREE, 1_000, 10).unwrap();
    assert_eq!(plan.deltas, vec![Digest([1; 32]), Digest([3; 32])]);
    assert_eq!(plan.merged_workers, vec![W1, W1]);
    let work = |k, t| (k, 1_000, TaskId(t), CreditKind::Work);
    // Two challenged steps each, 10 FLOPs a step.
    let judged = |k, t| (k, 20, TaskId(t), CreditKind::Verification);
    assert_eq!(
        plan.credits,
        vec![
            work(W1, 1),
            judged(V1, 1),
            judged(V2, 1),
            judged(V2, 2),
            work(W1, 3),
            judged(V1, 3),
        ]
    );
    // A worker slashed since (for another task) is not merged, though its
    // accepted work is listed (the close leaves out the slashed when it credits).
    s.slashed.insert(W1);
    let plan = close_plan(&s, &live, Round(1), &REFEREE, 1_000, 10).unwrap();
    assert!(plan.deltas.is_empty() && plan.merged_workers.is_empty());
    assert_eq!(plan.credits.len(), 6);
    // An accepted task without its delta is an internal error, not a silent skip.
    s.slashed.clear();
    live.get_mut(&TaskId(1)).unwrap().delta_blob = None;
    assert!(matches!(
        close_plan(&s, &live, Round(1), &REFEREE, 1_000, 10),
        Err(Error::Internal(_))
    ));
}

/// The last round's live facts outlive its close (for `GET /v1/tasks/<id>`); a
/// verifier must not be able to act on them then: a verdict logged after the last
/// close is never refereed, so a liar that passes a cheat there would escape.
#[test]
fn nothing_is_handed_out_or_judged_in_a_closed_round() {
    let mut s = state(10_000);
    let mut live = LiveTable::new();
    assign(&mut s, &mut live, 1, W1, 5_000);
    open(&mut s, &mut live, 1, &[V1]);
    let mut pool = Pool::new();
    assert_eq!(
        pick(&s, &mut live, &mut pool, &V2, 10),
        Some((TaskId(1), true))
    );
    assert!(verdict_admissible(&s, &live, &V1, TaskId(1)).is_ok());
    s.rounds.get_mut(&Round(1)).unwrap().closed = Some(crate::state::Closed {
        beacon: Digest([0; 32]),
        new_model: Digest([0; 32]),
        val_loss: 1.0,
        accepted: 0,
    });
    live.get_mut(&TaskId(1)).unwrap().claims.clear();
    assert_eq!(pick(&s, &mut live, &mut pool, &V2, 10), None);
    assert!(matches!(
        verdict_admissible(&s, &live, &V1, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("closed")
    ));
    assert!(matches!(
        worker_task(&s, &live, &W1, TaskId(1)),
        Err(Error::Conflict(m)) if m.contains("closed")
    ));
}
