//! The auditor against an honest log and against each way of tampering with one.
//!
//! Two kinds of attacker: one who edits the static tiles a mirror serves but cannot
//! sign (`tiles` tests), and a coordinator who rewrites its own log and signs the
//! result (`resigned` tests). Each test asserts the failure kind and the entry index.

mod common;

use common::*;
use lupus_audit::verify::AuditError;
use lupus_ledger::entry::{Amount, Digest, EntryBody, EntryError, EntryKind};
use lupus_ledger::tiles::{decode_entry_bundle, encode_entry_bundle};
use lupus_protocol::Violation;

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

#[test]
fn an_honest_log_verifies_and_a_second_run_reads_only_what_is_new() {
    let job = job();
    let entries = encode(&honest(&job));
    let (tiles, state) = dirs();
    // First the log as it was after 100 entries, then all of it.
    export(&job, &entries[..100], tiles.path());
    let first = verify(&job, tiles.path(), state.path()).unwrap();
    assert_eq!((first.from_size, first.size), (0, 100));

    let tiles2 = tempfile::tempdir().unwrap();
    export(&job, &entries, tiles2.path());
    let second = verify(&job, tiles2.path(), state.path()).unwrap();
    assert_eq!((second.from_size, second.size), (100, entries.len() as u64));
    assert_eq!(second.new_entries, entries.len() as u64 - 100);
    // Every round credited each worker's task and the verifier's replay.
    let spec = job.spec();
    let per_task = spec.task_flops()
        + u64::from(spec.verify.challenges)
            * u64::from(spec.inner.batch_size)
            * spec.model.flops_per_sample();
    assert_eq!(second.total_shares, ROUNDS * WORKERS as u64 * per_task);
    assert_eq!(second.accounts, WORKERS + 1);

    let third = verify(&job, tiles2.path(), state.path()).unwrap();
    assert_eq!(third.new_entries, 0);
}

#[test]
fn an_unpinned_key_or_another_key_is_a_usage_error() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job))[..10], tiles.path());
    let other = lupus_ledger::note::NoteSigner::from_secret("lupus.example/audit-test", [9; 32])
        .unwrap()
        .verifier_key();
    let r = lupus_audit::verify::verify_log(
        &lupus_audit::source::DirSource::new(tiles.path()),
        &lupus_audit::state::StateDir::new(state.path()),
        Some(&other),
        &Default::default(),
        &mut |_, _| {},
    );
    assert!(matches!(r, Err(AuditError::BadCheckpoint(_))), "{r:?}");
    // Nothing was pinned by a run that learned nothing: the right key still works.
    verify(&job, tiles.path(), state.path()).unwrap();
    let state2 = tempfile::tempdir().unwrap();
    verify(&job, tiles.path(), state2.path()).unwrap();
    let r = lupus_audit::verify::verify_log(
        &lupus_audit::source::DirSource::new(tiles.path()),
        &lupus_audit::state::StateDir::new(state2.path()),
        Some(&other),
        &Default::default(),
        &mut |_, _| {},
    );
    assert!(matches!(r, Err(AuditError::Usage(_))), "{r:?}");
}

/// Rewrites entry bundle 0 of the export in `dir` with `f`.
fn edit_bundle(dir: &std::path::Path, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let path = dir.join("tile/entries/000");
    let mut entries = decode_entry_bundle(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut entries);
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    std::fs::write(&path, encode_entry_bundle(&refs).unwrap()).unwrap();
}

#[test]
fn tiles_a_byte_flipped_in_a_stored_entry_is_named() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job)), tiles.path());
    edit_bundle(tiles.path(), |e| e[42][10] ^= 1);
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    assert!(
        matches!(err, AuditError::EntryMismatch { index: 42 }),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn resigned_a_byte_flipped_in_a_signed_entry_breaks_its_signature() {
    let job = job();
    let mut entries = encode(&honest(&job));
    let i = find(&honest(&job), 0, |b| b.kind() == EntryKind::WorkCommitted);
    // The last byte of the body, before the signature block.
    let n = entries[i].len() - 66;
    entries[i][n] ^= 1;
    let (tiles, state) = dirs();
    export(&job, &entries, tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Entry {
            index,
            source: EntryError::BadSignature { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

#[test]
fn tiles_an_entry_removed_is_named() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job)), tiles.path());
    edit_bundle(tiles.path(), |e| {
        e.remove(17);
    });
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    assert!(
        matches!(err, AuditError::EntryMismatch { index: 17 }),
        "{err}"
    );
}

#[test]
fn resigned_an_entry_removed_leaves_a_credit_without_its_verdict() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 3, |b| b.kind() == EntryKind::Verdict);
    entries.remove(i);
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::CreditWithoutVerdict { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

#[test]
fn tiles_two_entries_swapped_are_named() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job)), tiles.path());
    edit_bundle(tiles.path(), |e| e.swap(30, 31));
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    assert!(
        matches!(err, AuditError::EntryMismatch { index: 30 }),
        "{err}"
    );
}

#[test]
fn resigned_two_entries_swapped_put_a_challenge_before_its_commitment() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 5, |b| b.kind() == EntryKind::WorkCommitted);
    assert_eq!(entries[i + 1].kind(), EntryKind::ChallengeIssued);
    entries.swap(i, i + 1);
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::NotCommitted(_),
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

#[test]
fn resigned_a_forged_credit_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 7, |b| b.kind() == EntryKind::Credit);
    let EntryBody::Credit {
        round,
        key,
        amount,
        task,
        kind,
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    entries[i] = resign(
        &job,
        EntryBody::Credit {
            round,
            key,
            amount: Amount(amount.0 * 10),
            task,
            kind,
        },
    );
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::CreditAmount { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
    // A second credit for the same work is refused too.
    let mut entries = honest(&job);
    let dup = entries[i].clone();
    entries.insert(i + 1, dup);
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Protocol {
                violation: Violation::DuplicateCredit { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.index(), Some(i as u64 + 1));
}

#[test]
fn resigned_a_wrong_beacon_reveal_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 2, |b| b.kind() == EntryKind::RoundClosed);
    let EntryBody::RoundClosed {
        round,
        new_model,
        val_loss_bits,
        accepted_tasks,
        ..
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    entries[i] = resign(
        &job,
        EntryBody::RoundClosed {
            round,
            beacon: Digest([7; 32]),
            new_model,
            val_loss_bits,
            accepted_tasks,
            val_windows: 0,
            momentum: None,
            merged: Vec::new(),
        },
    );
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::BeaconMismatch { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

/// A dishonest operator opens a round from another model than the one its last close
/// named (the log contradicting itself): refused at the `RoundOpened`.
#[test]
fn resigned_a_round_opened_from_another_model_than_the_close_named_is_refused() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 3, |b| b.kind() == EntryKind::RoundOpened);
    let EntryBody::RoundOpened {
        round,
        beacon_commitment,
        inner_steps,
        deadline_ms,
        ..
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    entries[i] = resign(
        &job,
        EntryBody::RoundOpened {
            round,
            base_model: Digest([7; 32]),
            beacon_commitment,
            inner_steps,
            deadline_ms,
        },
    );
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::ModelChain {
                round: r, found, ..
            },
        } => {
            assert_eq!(*index, i as u64);
            assert_eq!((*r, *found), (round, Digest([7; 32])));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn resigned_a_challenge_the_beacon_did_not_dictate_is_named() {
    let job = job();
    let mut entries = honest(&job);
    let i = find(&entries, 9, |b| b.kind() == EntryKind::ChallengeIssued);
    let EntryBody::ChallengeIssued {
        task,
        verifier,
        steps,
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    // Steps the coordinator liked better (still m of them, in range), and a
    // verdict over them, so only the beacon rule catches it.
    let h = job.spec().inner.steps;
    let mut chosen: Vec<u32> = (0..h).filter(|s| !steps.contains(s)).collect();
    chosen.truncate(steps.len());
    assert_eq!(chosen.len(), steps.len());
    entries[i] = resign(
        &job,
        EntryBody::ChallengeIssued {
            task,
            verifier,
            steps: chosen.clone(),
        },
    );
    let EntryBody::Verdict {
        task,
        verifier,
        accepted,
        reason,
        evidence,
        ..
    } = entries[i + 2].body().clone()
    else {
        unreachable!()
    };
    entries[i + 2] = resign(
        &job,
        EntryBody::Verdict {
            task,
            verifier,
            accepted,
            steps: chosen,
            reason,
            evidence,
        },
    );
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::ChallengeNotDictated { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

#[test]
fn resigned_a_verdict_signed_by_the_wrong_key_is_refused() {
    let job = job();
    let honest_entries = honest(&job);
    let i = find(&honest_entries, 4, |b| b.kind() == EntryKind::Verdict);
    // The verifier's verdict, with a signature by a worker's key over the same body.
    let mut entries = encode(&honest_entries);
    let body = honest_entries[i].body().encode().unwrap();
    let mut msg = b"lupus entry v1\n".to_vec();
    msg.extend_from_slice(&body);
    use ed25519_dalek::Signer;
    let sig = job.workers[0].sign(&msg).to_bytes();
    let n = entries[i].len();
    entries[i][n - 64..].copy_from_slice(&sig);
    let (tiles, state) = dirs();
    export(&job, &entries, tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Entry {
            index,
            source: EntryError::BadSignature { field, .. },
        } => {
            assert_eq!(*index, i as u64);
            assert_eq!(*field, "verifier");
        }
        other => panic!("{other}"),
    }

    // A verdict that a worker signs in its own name: the signature is valid, but
    // the worker is not a verifier of the job.
    let mut entries = honest(&job);
    let EntryBody::Verdict {
        task,
        accepted,
        steps,
        reason,
        evidence,
        ..
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    entries[i] = resign(
        &job,
        EntryBody::Verdict {
            task,
            verifier: (&job.workers[1]).into(),
            accepted,
            steps,
            reason,
            evidence,
        },
    );
    let (tiles, state) = dirs();
    export(&job, &encode(&entries), tiles.path());
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Protocol {
            index,
            violation: Violation::NotA { .. },
        } => assert_eq!(*index, i as u64),
        other => panic!("{other}"),
    }
}

/// The honest log with one credit changed, re-signed: another history of the same
/// length.
fn forked(job: &lupus_audit::sample::SampleJob) -> Vec<Vec<u8>> {
    let mut entries = honest(job);
    let i = find(&entries, 1, |b| b.kind() == EntryKind::Credit);
    let EntryBody::Credit {
        round,
        key,
        task,
        kind,
        ..
    } = entries[i].body().clone()
    else {
        unreachable!()
    };
    entries[i] = resign(
        job,
        EntryBody::Credit {
            round,
            key,
            amount: Amount(1),
            task,
            kind,
        },
    );
    encode(&entries)
}

#[test]
fn a_split_view_is_reported_with_both_checkpoints() {
    let job = job();
    let (tiles, state) = dirs();
    let a = export(&job, &encode(&honest(&job)), tiles.path());
    verify(&job, tiles.path(), state.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let b = export(&job, &forked(&job), other.path());
    assert_ne!(a, b);
    let err = verify(&job, other.path(), state.path()).unwrap_err();
    match &err {
        AuditError::SplitView {
            seen_note,
            new_note,
            ..
        } => {
            assert_eq!(seen_note, &a);
            assert_eq!(new_note, &b);
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.evidence().len(), 2);
    // The evidence is kept: the next run still refuses either history's successor.
    let state_json = std::fs::read_to_string(state.path().join("state.json")).unwrap();
    assert!(state_json.contains(&b.replace('\n', "\\n")));
}

#[test]
fn a_fork_that_grows_the_log_is_reported_as_inconsistent() {
    let job = job();
    let (tiles, state) = dirs();
    let honest_entries = encode(&honest(&job));
    let a = export(&job, &honest_entries[..200], tiles.path());
    verify(&job, tiles.path(), state.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let b = export(&job, &forked(&job), other.path());
    let err = verify(&job, other.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Inconsistent {
            old_size,
            old_note,
            new_note,
            ..
        } => {
            assert_eq!(*old_size, 200);
            assert_eq!((old_note, new_note), (&a, &b));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_checkpoint_older_than_one_seen_before_is_a_rollback() {
    let job = job();
    let entries = encode(&honest(&job));
    let (tiles, state) = dirs();
    export(&job, &entries, tiles.path());
    verify(&job, tiles.path(), state.path()).unwrap();
    let older = tempfile::tempdir().unwrap();
    export(&job, &entries[..150], older.path());
    let err = verify(&job, older.path(), state.path()).unwrap_err();
    match &err {
        AuditError::Rollback {
            size, seen_size, ..
        } => assert_eq!((*size, *seen_size), (150, entries.len() as u64)),
        other => panic!("{other}"),
    }
}

#[test]
fn a_checkpoint_not_signed_by_the_pinned_key_is_refused() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job))[..20], tiles.path());
    let path = tiles.path().join("checkpoint");
    let note = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, note.replacen("20\n", "21\n", 1)).unwrap();
    let err = verify(&job, tiles.path(), state.path()).unwrap_err();
    assert!(matches!(err, AuditError::BadCheckpoint(_)), "{err}");
}

/// One protocol rule broken by a coordinator that re-signs its log: where, how, and
/// what the auditor must say.
struct Case {
    name: &'static str,
    /// The `n`-th entry of this kind is replaced.
    kind: EntryKind,
    n: usize,
    edit: fn(&lupus_audit::sample::SampleJob, EntryBody) -> EntryBody,
    expect: fn(&Violation) -> bool,
}

#[test]
fn resigned_each_protocol_rule_is_enforced_at_the_entry_that_breaks_it() {
    use lupus_ledger::entry::{PublicKey, Role, TaskId};
    let cases = [
        Case {
            name: "task seed not derived from the beacon commitment",
            kind: EntryKind::TaskAssigned,
            n: 3,
            edit: |_, b| match b {
                EntryBody::TaskAssigned {
                    task,
                    round,
                    worker,
                    inner_steps,
                    batch_size,
                    ..
                } => EntryBody::TaskAssigned {
                    task,
                    round,
                    worker,
                    seed: Digest([1; 32]),
                    inner_steps,
                    batch_size,
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::TaskSeed(_)),
        },
        Case {
            name: "task with another H than the job spec",
            kind: EntryKind::TaskAssigned,
            n: 2,
            edit: |_, b| match b {
                EntryBody::TaskAssigned {
                    task,
                    round,
                    worker,
                    seed,
                    batch_size,
                    ..
                } => EntryBody::TaskAssigned {
                    task,
                    round,
                    worker,
                    seed,
                    inner_steps: 3,
                    batch_size,
                },
                b => b,
            },
            expect: |v| {
                matches!(
                    v,
                    Violation::TaskShape {
                        field: "inner_steps",
                        ..
                    }
                )
            },
        },
        Case {
            name: "work committed by another worker than the assigned one",
            kind: EntryKind::WorkCommitted,
            n: 1,
            edit: |job, b| match b {
                EntryBody::WorkCommitted {
                    task,
                    trace_root,
                    final_state,
                    delta,
                    ..
                } => EntryBody::WorkCommitted {
                    task,
                    worker: PublicKey::from(&job.workers[3]),
                    trace_root,
                    final_state,
                    delta,
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::WrongWorker { .. }),
        },
        Case {
            name: "challenge of fewer steps than m",
            kind: EntryKind::ChallengeIssued,
            n: 2,
            edit: |_, b| match b {
                EntryBody::ChallengeIssued {
                    task,
                    verifier,
                    mut steps,
                } => {
                    steps.pop();
                    EntryBody::ChallengeIssued {
                        task,
                        verifier,
                        steps,
                    }
                }
                b => b,
            },
            expect: |v| matches!(v, Violation::ChallengeCount { .. }),
        },
        Case {
            name: "a participant joins twice",
            kind: EntryKind::ParticipantJoined,
            n: 2,
            edit: |job, _| EntryBody::ParticipantJoined {
                key: PublicKey::from(&job.workers[0]),
                role: Role::Worker,
                name: "again".into(),
            },
            expect: |v| matches!(v, Violation::AlreadyJoined(_)),
        },
        Case {
            name: "verification credit to the worker instead of the verifier",
            kind: EntryKind::Credit,
            n: 5,
            edit: |job, b| match b {
                EntryBody::Credit {
                    round,
                    amount,
                    task,
                    kind,
                    ..
                } => EntryBody::Credit {
                    round,
                    key: PublicKey::from(&job.workers[0]),
                    amount,
                    task,
                    kind,
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::CreditWrongKey { .. }),
        },
        Case {
            name: "credit for a task that does not exist",
            kind: EntryKind::Credit,
            n: 4,
            edit: |_, b| match b {
                EntryBody::Credit {
                    round,
                    key,
                    amount,
                    kind,
                    ..
                } => EntryBody::Credit {
                    round,
                    key,
                    amount,
                    task: TaskId(999_999),
                    kind,
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::UnknownTask(_)),
        },
        Case {
            name: "round claims more accepted tasks than were verified",
            kind: EntryKind::RoundClosed,
            n: 1,
            edit: |_, b| match b {
                EntryBody::RoundClosed {
                    round,
                    beacon,
                    new_model,
                    val_loss_bits,
                    ..
                } => EntryBody::RoundClosed {
                    round,
                    beacon,
                    new_model,
                    val_loss_bits,
                    accepted_tasks: 99,
                    val_windows: 0,
                    momentum: None,
                    merged: Vec::new(),
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::TooManyAccepted { .. }),
        },
        Case {
            name: "shares epoch that does not commit the balances",
            kind: EntryKind::SharesEpoch,
            n: 3,
            edit: |_, b| match b {
                EntryBody::SharesEpoch {
                    epoch,
                    round,
                    root,
                    total,
                    accounts,
                } => EntryBody::SharesEpoch {
                    epoch,
                    round,
                    root,
                    total: Amount(total.0 + 1),
                    accounts,
                },
                b => b,
            },
            expect: |v| matches!(v, Violation::Fold(_)),
        },
    ];
    let job = job();
    for case in cases {
        let mut entries = honest(&job);
        let i = find(&entries, case.n, |b| b.kind() == case.kind);
        entries[i] = resign(&job, (case.edit)(&job, entries[i].body().clone()));
        let (tiles, state) = dirs();
        export(&job, &encode(&entries), tiles.path());
        match verify(&job, tiles.path(), state.path()) {
            Err(AuditError::Protocol { index, violation }) => {
                assert!((case.expect)(&violation), "{}: got {violation}", case.name);
                assert_eq!(index, i as u64, "{}", case.name);
            }
            other => panic!("{}: {other:?}", case.name),
        }
    }
}

#[test]
fn replay_needs_the_coordinators_api_and_a_static_mirror_is_a_usage_error() {
    let job = job();
    let (tiles, state) = dirs();
    export(&job, &encode(&honest(&job)), tiles.path());
    let err = lupus_audit::verify::verify_log(
        &lupus_audit::source::DirSource::new(tiles.path()),
        &lupus_audit::state::StateDir::new(state.path()),
        Some(&job.vkey()),
        &lupus_audit::verify::Options {
            threads: 1,
            replay: 3,
            seed: None,
            tiles: lupus_audit::verify::TileCheck::All,
            replay_merge: false,
            strict_signatures: false,
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    // Without --replay the same log verifies.
    verify(&job, tiles.path(), state.path()).unwrap();
}
