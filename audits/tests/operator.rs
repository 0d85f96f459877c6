//! The dishonest operator: it holds the log key and the referee key, so it can write,
//! order, drop and sign whatever it likes (but not a participant's signature). Each
//! test takes an honest log, commits one of the operator's cheats, signs the result
//! with the real keys and asserts that `lupus-audit verify` names the entry and the
//! rule it breaks (THREATS.md, the dishonest operator; issue "operator
//! accountability").
//!
//! The same rules run in the coordinator before it sequences an entry
//! (`lupus_protocol::ProtocolState::apply`), so an honest coordinator cannot write
//! any of these logs by mistake.

mod common;

use common::*;
use lupus_audit::verify::AuditError;
use lupus_ledger::entry::{CreditKind, Digest, Entry, EntryBody, EntryKind, PublicKey, TaskId};
use lupus_protocol::Violation;

/// Exports `entries` and runs the auditor over them; the violation and its index.
fn audit(job: &lupus_audit::sample::SampleJob, entries: &[Entry]) -> (u64, Violation) {
    let (tiles, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    export(job, &encode(entries), tiles.path());
    match verify(job, tiles.path(), state.path()) {
        Err(AuditError::Protocol { index, violation }) => (index, violation),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

fn referee(job: &lupus_audit::sample::SampleJob) -> PublicKey {
    PublicKey::from(&job.referee)
}

/// The referee's verdict on `task`, over its challenge; a rejection names the opening
/// it replayed as its evidence, as the coordinator's referee does.
fn ruling(
    job: &lupus_audit::sample::SampleJob,
    entries: &[Entry],
    task: TaskId,
    accepted: bool,
) -> Entry {
    let opening = entries.iter().find_map(|e| match e.body() {
        EntryBody::TaskOpened {
            task: t, opening, ..
        } if *t == task => Some(*opening),
        _ => None,
    });
    ruling_with(job, entries, task, accepted, opening.filter(|_| !accepted))
}

fn ruling_with(
    job: &lupus_audit::sample::SampleJob,
    entries: &[Entry],
    task: TaskId,
    accepted: bool,
    evidence: Option<Digest>,
) -> Entry {
    let steps = entries
        .iter()
        .find_map(|e| match e.body() {
            EntryBody::ChallengeIssued { task: t, steps, .. } if *t == task => Some(steps.clone()),
            _ => None,
        })
        .expect("the task was challenged");
    resign(
        job,
        EntryBody::Verdict {
            task,
            verifier: referee(job),
            accepted,
            steps,
            reason: "the operator says so".into(),
            evidence,
        },
    )
}

/// The `n`-th work credit: its index, task and worker.
fn work_credit(entries: &[Entry], n: usize) -> (usize, TaskId, PublicKey) {
    let i = find(entries, n, |b| {
        matches!(
            b,
            EntryBody::Credit {
                kind: CreditKind::Work,
                ..
            }
        )
    });
    match entries[i].body() {
        EntryBody::Credit { task, key, .. } => (i, *task, *key),
        _ => unreachable!(),
    }
}

#[test]
fn a_slash_without_a_verdict_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, worker) = work_credit(&entries, 5);
    // The victim's work was accepted; the operator slashes it anyway, with a reason.
    let slash = Entry::unsigned(EntryBody::Slashed {
        key: worker,
        task,
        reason: "fraud (trust us)".into(),
        evidence: None,
    })
    .unwrap();
    entries.insert(i + 1, slash);
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1);
    assert!(
        matches!(v, Violation::SlashWithoutConviction { why, .. } if why.contains("not ruled")),
        "{v}"
    );

    // Naming a task that does not exist does not help.
    let mut entries = honest(&job);
    let slash = Entry::unsigned(EntryBody::Slashed {
        key: worker,
        task: TaskId(999_999),
        reason: String::new(),
        evidence: None,
    })
    .unwrap();
    entries.insert(i + 1, slash);
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1);
    assert!(matches!(v, Violation::SlashWithoutConviction { .. }), "{v}");
}

#[test]
fn a_slash_the_ruling_does_not_call_for_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, worker) = work_credit(&entries, 6);
    // The referee accepts the work, and the operator slashes its worker.
    entries.insert(i, ruling(&job, &entries, task, true));
    let slash = Entry::unsigned(EntryBody::Slashed {
        key: worker,
        task,
        reason: "fraud".into(),
        evidence: None,
    })
    .unwrap();
    entries.insert(i + 1, slash);
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1);
    assert!(
        matches!(v, Violation::SlashWithoutConviction { why, .. } if why.contains("does not contradict")),
        "{v}"
    );

    // A rejection convicts the worker, but not with evidence the ruling never named.
    let mut entries = honest(&job);
    entries.truncate(i);
    entries.push(ruling(&job, &entries, task, false));
    entries.push(
        Entry::unsigned(EntryBody::Slashed {
            key: worker,
            task,
            reason: "fraud".into(),
            evidence: Some(Digest([9; 32])),
        })
        .unwrap(),
    );
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1);
    assert!(matches!(v, Violation::SlashEvidence { .. }), "{v}");
}

#[test]
fn a_rejecting_ruling_without_evidence_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, _) = work_credit(&entries, 2);
    entries.insert(i, ruling_with(&job, &entries, task, false, None));
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64);
    assert!(
        matches!(v, Violation::RulingWithoutEvidence(t) if t == task),
        "{v}"
    );
}

#[test]
fn a_credit_after_the_referee_rejected_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, _) = work_credit(&entries, 2);
    entries.insert(i, ruling(&job, &entries, task, false));
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1, "the credit after the ruling");
    assert!(matches!(v, Violation::CreditAfterRejection { .. }), "{v}");
}

#[test]
fn a_skipped_double_check_is_named_at_the_close() {
    let job = job();
    let mut entries = honest(&job);
    // The sample's double checks are the referee's verdicts; drop one.
    let r = referee(&job);
    let i = find(
        &entries,
        0,
        |b| matches!(b, EntryBody::Verdict { verifier, .. } if *verifier == r),
    );
    let dropped = entries.remove(i);
    let EntryBody::Verdict { task, .. } = dropped.body() else {
        unreachable!()
    };
    let close = (i..entries.len())
        .find(|&j| entries[j].kind() == EntryKind::RoundClosed)
        .unwrap();
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, close as u64);
    assert!(
        matches!(v, Violation::SkippedDoubleCheck { task: t, accepts: 1 } if t == *task),
        "{v}"
    );
}

#[test]
fn the_referee_earns_nothing_for_its_own_rulings() {
    let job = job();
    let mut entries = honest(&job);
    let r = referee(&job);
    let i = find(
        &entries,
        0,
        |b| matches!(b, EntryBody::Verdict { verifier, .. } if *verifier == r),
    );
    let EntryBody::Verdict { task, .. } = entries[i].body().clone() else {
        unreachable!()
    };
    // Pay the referee what the verifier of that task is paid.
    let paid = (i..entries.len())
        .find(|&j| {
            matches!(entries[j].body(), EntryBody::Credit { task: t, kind: CreditKind::Verification, .. } if *t == task)
        })
        .unwrap();
    let EntryBody::Credit {
        round,
        amount,
        kind,
        ..
    } = entries[paid].body().clone()
    else {
        unreachable!()
    };
    let body = EntryBody::Credit {
        round,
        key: r,
        amount,
        task,
        kind,
    };
    entries[paid] = Entry::unsigned(body).unwrap();
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, paid as u64);
    assert!(matches!(v, Violation::CreditToReferee { .. }), "{v}");
}

#[test]
fn a_verifier_the_referee_contradicted_is_not_paid() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, _) = work_credit(&entries, 3);
    // The referee rejects the work (the operator may: it is the referee) and then,
    // skipping the worker's credit, pays the verifier who accepted it.
    entries.insert(i, ruling(&job, &entries, task, false));
    entries.remove(i + 1);
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, i as u64 + 1, "the verification credit");
    assert!(matches!(v, Violation::CreditContradicted { .. }), "{v}");
}

/// The log serves a hash tile that does not agree with its entries (what a client
/// proving inclusion would read). Entry bundles alone would never show it.
#[test]
fn a_wrong_hash_tile_served_is_named() {
    let job = job();
    let entries = honest(&job);
    let (tiles, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    export(&job, &encode(&entries), tiles.path());
    let path = tiles.path().join("tile/0/000");
    let mut data = std::fs::read(&path).unwrap();
    data[32 * 7 + 3] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::BadTiles(reason) => assert!(reason.contains("tile/0/000"), "{reason}"),
        other => panic!("{other}"),
    }
    // Not checking tiles, the same log passes: the check is what catches it.
    let state = tempfile::tempdir().unwrap();
    let r = lupus_audit::verify::verify_log(
        &lupus_audit::source::DirSource::new(tiles.path()),
        &lupus_audit::state::StateDir::new(state.path()),
        Some(&job.vkey()),
        &lupus_audit::verify::Options {
            tiles: lupus_audit::verify::TileCheck::Sample(0),
            ..Default::default()
        },
        &mut |_, _| {},
    );
    assert!(r.is_ok(), "{r:?}");
}

/// The operator drops an opened task at the close: no credit, no conviction, no word.
/// (Its worker opened, so the task was owed a judgement.)
#[test]
fn an_opened_task_dropped_silently_is_named_at_the_close() {
    let job = job();
    let mut entries = honest(&job);
    let (i, task, _) = work_credit(&entries, 4);
    // Drop every credit of the task (work and verification).
    entries.retain(|e| !matches!(e.body(), EntryBody::Credit { task: t, .. } if *t == task));
    let close = (i..entries.len())
        .find(|&j| entries[j].kind() == EntryKind::RoundClosed)
        .unwrap();
    let (index, v) = audit(&job, &entries);
    assert_eq!(index, close as u64);
    assert!(
        matches!(v, Violation::TaskVanished { task: t, .. } if t == task),
        "{v}"
    );

    // Saying it ended is not enough: the reason must hold.
    let mut lied = entries.clone();
    let ended = |reason| Entry::unsigned(EntryBody::TaskEnded { task, reason }).unwrap();
    lied.insert(close, ended(lupus_ledger::entry::EndReason::NotOpened));
    let (index, v) = audit(&job, &lied);
    assert_eq!(index, close as u64);
    assert!(
        matches!(v, Violation::EndReason { why, .. } if why.contains("opened")),
        "{v}"
    );
    // "Not judged" is a lie while its verdicts accept it: the worker is owed its credit.
    let mut unpaid = entries.clone();
    unpaid.insert(close, ended(lupus_ledger::entry::EndReason::NotJudged));
    let (index, v) = audit(&job, &unpaid);
    assert_eq!(index, close as u64);
    assert!(
        matches!(v, Violation::EndReason { why, .. } if why.contains("owed")),
        "{v}"
    );
    // Truly unjudged (its verdicts dropped too), the task ends, but the close still
    // claims it among the accepted.
    let mut unjudged = entries.clone();
    unjudged.retain(|e| !matches!(e.body(), EntryBody::Verdict { task: t, .. } if *t == task));
    let close = (0..unjudged.len())
        .filter(|&j| unjudged[j].kind() == EntryKind::RoundClosed)
        .find(|&j| {
            unjudged[..j]
                .iter()
                .any(|e| matches!(e.body(), EntryBody::TaskOpened { task: t, .. } if *t == task))
        })
        .unwrap();
    unjudged.insert(close, ended(lupus_ledger::entry::EndReason::NotJudged));
    let (index, v) = audit(&job, &unjudged);
    assert_eq!(index, close as u64 + 1, "{v}");
    assert!(
        matches!(
            v,
            Violation::TooManyAccepted {
                claimed: 4,
                verified: 3,
                ..
            }
        ),
        "{v}"
    );
    // And a close that names one delta more than the tasks it credited.
    let mut honest = honest(&job);
    let close = honest
        .iter()
        .position(|e| e.kind() == EntryKind::RoundClosed)
        .unwrap();
    let EntryBody::RoundClosed {
        round,
        beacon,
        new_model,
        val_loss_bits,
        accepted_tasks,
        val_windows,
        momentum,
        mut merged,
    } = honest[close].body().clone()
    else {
        unreachable!()
    };
    merged.push(Digest([7; 32]));
    honest[close] = Entry::unsigned(EntryBody::RoundClosed {
        round,
        beacon,
        new_model,
        val_loss_bits,
        accepted_tasks,
        val_windows,
        momentum,
        merged,
    })
    .unwrap();
    let (index, v) = audit(&job, &honest);
    assert_eq!(index, close as u64);
    assert!(
        matches!(
            v,
            Violation::MergedCount {
                merged: 5,
                credited: 4,
                ..
            }
        ),
        "{v}"
    );
}
