//! Offline checks of stake statements and tlog-proof files, and the monitor's alerts.

mod common;

use common::*;
use lupus_audit::monitor::{Alert, MonitorOptions, monitor};
use lupus_audit::source::DirSource;
use lupus_audit::state::StateDir;
use lupus_audit::statement::{Proven, StatementError, check};
use lupus_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use lupus_ledger::entry::{Amount, EntryKind, PublicKey};
use lupus_ledger::hash::LeafIndex;
use lupus_ledger::proof::{TlogProof, prove_inclusion};
use lupus_ledger::stake::build_statement;
use lupus_ledger::tree::MemoryTree;
use lupus_protocol::SharesFold;

fn signed_tree(job: &lupus_audit::sample::SampleJob, entries: &[Vec<u8>]) -> (MemoryTree, String) {
    let mut t = MemoryTree::new();
    for e in entries {
        t.append_entry(e);
    }
    let cp = Checkpoint {
        origin: job.signer.name().to_owned(),
        size: t.size(),
        root: t.root(),
        extensions: vec![],
    };
    let note = sign_checkpoint(&cp, &job.signer).unwrap();
    (t, note)
}

#[test]
fn a_stake_statement_verifies_offline_and_a_changed_balance_does_not() {
    let job = job();
    let entries = honest(&job);
    let encoded = encode(&entries);
    let mut fold = SharesFold::new();
    for (i, e) in entries.iter().enumerate() {
        fold.apply(i as u64, e).unwrap();
    }
    let epoch = fold.latest_epoch().unwrap();
    let (t, note) = signed_tree(&job, &encoded);
    let inclusion = prove_inclusion(t.size(), LeafIndex(epoch.index), &t).unwrap();
    let worker = PublicKey::from(&job.workers[2]);
    let statement = build_statement(
        &worker,
        &epoch.tree,
        epoch.index,
        &entries[epoch.index as usize],
        inclusion,
        note,
    )
    .unwrap();
    let json = serde_json::to_string(&statement).unwrap();
    match check(&json, &job.vkey(), None).unwrap() {
        Proven::Stake {
            balance, accounts, ..
        } => {
            assert_eq!(balance, ROUNDS * job.spec().task_flops());
            assert_eq!(accounts, WORKERS as u64 + 1);
        }
        other => panic!("{other:?}"),
    }
    let mut forged = statement.clone();
    forged.balance = Amount(forged.balance.0 + 1);
    let json = serde_json::to_string(&forged).unwrap();
    assert!(matches!(
        check(&json, &job.vkey(), None),
        Err(StatementError::Stake(_))
    ));
    let other = lupus_ledger::note::NoteSigner::from_secret(job.signer.name(), [4; 32]).unwrap();
    let json = serde_json::to_string(&statement).unwrap();
    assert!(check(&json, &other.verifier_key(), None).is_err());
}

#[test]
fn a_tlog_proof_for_one_entry_verifies_with_its_entry() {
    let job = job();
    let entries = honest(&job);
    let encoded = encode(&entries);
    let (t, note) = signed_tree(&job, &encoded);
    let i = find(&entries, 3, |b| b.kind() == EntryKind::Verdict);
    let proof = prove_inclusion(t.size(), LeafIndex(i as u64), &t).unwrap();
    let text = TlogProof {
        extra: None,
        index: LeafIndex(i as u64),
        path: proof.path,
        checkpoint: note,
    }
    .encode();
    match check(&text, &job.vkey(), Some(&encoded[i])).unwrap() {
        Proven::Inclusion { index, entry, .. } => {
            assert_eq!(index, i as u64);
            assert_eq!(entry.kind(), EntryKind::Verdict);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        check(&text, &job.vkey(), None),
        Err(StatementError::NoEntry)
    ));
    assert!(matches!(
        check(&text, &job.vkey(), Some(&encoded[i + 1])),
        Err(StatementError::Proof(_))
    ));
}

#[test]
fn the_monitor_follows_an_honest_log_and_alerts_on_a_split_view_and_a_stall() {
    let job = job();
    let entries = encode(&honest(&job));
    let (tiles, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    export(&job, &entries, tiles.path());
    let src = DirSource::new(tiles.path());
    let sd = StateDir::new(state.path());
    let mut polls = 0;
    let opts = MonitorOptions {
        interval: std::time::Duration::from_millis(1),
        stall_after: None,
        max_polls: Some(2),
        hook: None,
    };
    let alert = monitor(&src, &sd, Some(&job.vkey()), &opts, &mut |_| polls += 1);
    assert!(alert.is_none());
    assert_eq!(polls, 2);

    let stalled = monitor(
        &src,
        &sd,
        None,
        &MonitorOptions {
            stall_after: Some(std::time::Duration::ZERO),
            max_polls: None,
            ..opts.clone()
        },
        &mut |_| {},
    );
    assert!(matches!(stalled, Some(Alert::Stalled { size, .. }) if size == entries.len() as u64));
    assert_eq!(stalled.unwrap().exit_code(), 5);

    // Another history of the same size: the hook runs with the alert.
    let mut forked = entries.clone();
    forked[7][3] ^= 1;
    let other = tempfile::tempdir().unwrap();
    export(&job, &forked, other.path());
    let marker = state.path().join("alert");
    let alert = monitor(
        &DirSource::new(other.path()),
        &sd,
        None,
        &MonitorOptions {
            hook: Some(format!(
                "echo \"$LUPUS_AUDIT_ALERT\" > {}",
                marker.display()
            )),
            ..opts
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(alert.kind(), "split_view");
    assert_eq!(alert.exit_code(), 1);
    assert_eq!(
        std::fs::read_to_string(marker).unwrap().trim(),
        "split_view"
    );
}

/// Serves `dir` over HTTP on loopback, as a tlog-tiles mirror would.
async fn serve(dir: std::path::PathBuf) -> String {
    use axum::extract::Path;
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::get(move |Path(p): Path<String>| {
            let dir = dir.clone();
            async move {
                match std::fs::read(dir.join(p)) {
                    Ok(b) => (StatusCode::OK, b),
                    Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_served_over_http_verifies_and_a_dead_url_is_unreachable() {
    let job = job();
    let tiles = tempfile::tempdir().unwrap();
    let entries = encode(&honest(&job));
    let (dir, all) = (tiles.path().to_owned(), entries.clone());
    tokio::task::spawn_blocking(move || export(&common::job(), &all, &dir))
        .await
        .unwrap();
    let url = serve(tiles.path().to_owned()).await;
    let state = tempfile::tempdir().unwrap();
    let key = job.vkey();
    let outcome = tokio::task::spawn_blocking(move || {
        let src = lupus_audit::source::open_source(&url);
        lupus_audit::verify::verify_log(
            src.as_ref(),
            &StateDir::new(state.path()),
            Some(&key),
            &Default::default(),
            &mut |_, _| {},
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome.size, entries.len() as u64);

    let state = tempfile::tempdir().unwrap();
    let key = job.vkey();
    let err = tokio::task::spawn_blocking(move || {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let src = lupus_audit::source::open_source(&format!("http://127.0.0.1:{port}"));
        lupus_audit::verify::verify_log(
            src.as_ref(),
            &StateDir::new(state.path()),
            Some(&key),
            &Default::default(),
            &mut |_, _| {},
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
}

/// A checkpoint carries no time: only a witness's timestamped cosignature dates a
/// statement. Each freshness rule, against a statement cosigned at a known time.
#[test]
fn a_statement_is_fresh_only_by_a_required_witness_recent_cosignature() {
    use ed25519_dalek::SigningKey;
    use lupus_audit::statement::{Freshness, check_fresh};
    use lupus_ledger::note::{CosignatureVerifier, add_signature, cosign, parse_note};

    let job = job();
    let entries = honest(&job);
    let encoded = encode(&entries);
    let mut fold = SharesFold::new();
    for (i, e) in entries.iter().enumerate() {
        fold.apply(i as u64, e).unwrap();
    }
    let epoch = fold.latest_epoch().unwrap();
    let (t, note) = signed_tree(&job, &encoded);
    let witness = SigningKey::from_bytes(&[8; 32]);
    let wkey = CosignatureVerifier::from_key("w.example", witness.verifying_key()).unwrap();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let skey = CosignatureVerifier::from_key("s.example", stranger.verifying_key()).unwrap();
    const T: u64 = 1_800_000_000;
    let text = parse_note(note.as_bytes()).unwrap().text;
    let cosigned = add_signature(&note, &cosign("w.example", &witness, &text, T)).unwrap();
    let statement = |note: &str| {
        let inclusion = prove_inclusion(t.size(), LeafIndex(epoch.index), &t).unwrap();
        let s = build_statement(
            &PublicKey::from(&job.workers[0]),
            &epoch.tree,
            epoch.index,
            &entries[epoch.index as usize],
            inclusion,
            note.to_owned(),
        )
        .unwrap();
        serde_json::to_string(&s).unwrap()
    };
    let json = statement(&cosigned);
    let fresh = |witnesses: Vec<CosignatureVerifier>, max_age_s, now_s| Freshness {
        witnesses,
        max_age_s,
        now_s,
    };

    // No requirement: the statement verifies as before.
    assert!(check_fresh(&json, &job.vkey(), None, &Freshness::default()).is_ok());
    // The witness cosigned at T; a minute later, ten minutes is fresh enough.
    let ok = check_fresh(
        &json,
        &job.vkey(),
        None,
        &fresh(vec![wkey.clone()], Some(600), T + 60),
    );
    assert!(
        matches!(
            ok,
            Ok(Proven::Stake {
                cosigned_at: Some(T),
                ..
            })
        ),
        "{ok:?}"
    );
    // An hour later it is stale.
    let stale = check_fresh(
        &json,
        &job.vkey(),
        None,
        &fresh(vec![wkey.clone()], Some(600), T + 3600),
    );
    assert!(
        matches!(
            stale,
            Err(StatementError::Stale {
                age_s: 3600,
                max_s: 600,
                ..
            })
        ),
        "{stale:?}"
    );
    // A witness that did not cosign, or an uncosigned statement, is refused.
    let missing = check_fresh(
        &json,
        &job.vkey(),
        None,
        &fresh(vec![wkey.clone(), skey], None, T),
    );
    assert!(
        matches!(missing, Err(StatementError::NotCosigned { .. })),
        "{missing:?}"
    );
    let bare = statement(&note);
    let missing = check_fresh(
        &bare,
        &job.vkey(),
        None,
        &fresh(vec![wkey.clone()], None, T),
    );
    assert!(
        matches!(missing, Err(StatementError::NotCosigned { .. })),
        "{missing:?}"
    );
    // A cosignature over another checkpoint text does not count.
    let moved = add_signature(
        &note,
        &cosign("w.example", &witness, &text.replace('\n', "\n\n"), T),
    );
    if let Ok(moved) = moved {
        let r = check_fresh(
            &statement(&moved),
            &job.vkey(),
            None,
            &fresh(vec![wkey.clone()], None, T),
        );
        assert!(
            matches!(r, Err(StatementError::NotCosigned { .. })),
            "{r:?}"
        );
    }
    // A cosignature dated an hour ahead of this clock is refused.
    let future = check_fresh(&json, &job.vkey(), None, &fresh(vec![wkey], None, T - 3600));
    assert!(
        matches!(future, Err(StatementError::FromTheFuture { .. })),
        "{future:?}"
    );
    // --max-age alone cannot be honoured.
    let alone = check_fresh(&json, &job.vkey(), None, &fresh(Vec::new(), Some(600), T));
    assert!(
        matches!(alone, Err(StatementError::AgeWithoutWitness)),
        "{alone:?}"
    );
}
