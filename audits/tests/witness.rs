//! The witness cosigns a growing log, refuses a fork with the spec's statuses, and
//! after a restart still refuses to cosign a fork of what it cosigned before.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use lupus_audit::witness::{
    ADD_CHECKPOINT, AddCheckpoint, Witness, WitnessError, attach, router, verify_cosignature,
};
use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::hash::TreeSize;
use lupus_ledger::note::{NoteSigner, parse_note};
use lupus_ledger::proof::prove_consistency;
use lupus_ledger::tree::MemoryTree;
use tower::ServiceExt;

fn tree(entries: &[Vec<u8>]) -> MemoryTree {
    let mut t = MemoryTree::new();
    for e in entries {
        t.append_entry(e);
    }
    t
}

/// The checkpoint of the first `n` entries and the request that moves a witness
/// from `old` to it.
fn request(
    job: &lupus_audit::sample::SampleJob,
    entries: &[Vec<u8>],
    old: u64,
    n: usize,
) -> (String, String) {
    let t = tree(&entries[..n]);
    let cp = lupus_ledger::checkpoint::Checkpoint {
        origin: job.signer.name().to_owned(),
        size: t.size(),
        root: t.root(),
        extensions: vec![],
    };
    let note = lupus_ledger::checkpoint::sign_checkpoint(&cp, &job.signer).unwrap();
    let proof = prove_consistency(TreeSize(old), t.size(), &t).unwrap();
    let body = AddCheckpoint {
        old,
        proof: proof.path,
        checkpoint: note.clone(),
    }
    .encode();
    (note, body)
}

fn witness(job: &lupus_audit::sample::SampleJob, state: &std::path::Path) -> Witness {
    let skey = NoteSigner::from_secret("witness.example", [3; 32])
        .unwrap()
        .private_key();
    Witness::open(&skey, &[job.vkey()], state).unwrap()
}

#[test]
fn cosigns_a_growing_log_and_refuses_a_fork_even_after_a_restart() {
    let job = job();
    let honest_entries = encode(&honest(&job));
    let fork: Vec<Vec<u8>> = {
        let mut e = honest_entries.clone();
        e[120][5] ^= 1;
        e
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("witness.json");
    let w = witness(&job, &state);

    let (note, body) = request(&job, &honest_entries, 0, 100);
    let line = w.add_checkpoint(&body, 1_800_000_000).unwrap();
    // The cosignature verifies, and attaches to the log's note, which still opens.
    let cosigned = attach(&note, &line).unwrap();
    let opened = open_checkpoint(&cosigned, &job.signer.verifier()).unwrap();
    assert_eq!(opened.other_signatures.len(), 1);
    let text = parse_note(note.as_bytes()).unwrap().text;
    let pk = *ed25519_dalek::SigningKey::from_bytes(&[3; 32])
        .verifying_key()
        .as_bytes();
    assert!(verify_cosignature(&opened.other_signatures[0], &pk, &text));
    assert!(w.verifier_key().starts_with("witness.example+"));

    let (_, body) = request(&job, &honest_entries, 100, 200);
    w.add_checkpoint(&body, 1_800_000_001).unwrap();

    // A fork of entry 120, from the size the witness is at: the proof cannot verify.
    let (_, body) = request(&job, &fork, 200, 300);
    let err = w.add_checkpoint(&body, 1_800_000_002).unwrap_err();
    assert!(
        matches!(err, WitnessError::BadProof { old: 200, .. }),
        "{err}"
    );
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // From a stale size: a conflict naming the size the witness is at.
    let (_, body) = request(&job, &fork, 100, 300);
    let err = w.add_checkpoint(&body, 1_800_000_002).unwrap_err();
    assert!(
        matches!(err, WitnessError::Conflict { latest: 200, .. }),
        "{err}"
    );
    assert_eq!(err.status(), StatusCode::CONFLICT);
    drop(w);

    // Restart: the state came back from disk.
    let w = witness(&job, &state);
    assert_eq!(w.latest(job.signer.name()).unwrap().size, 200);
    for old in [0, 100, 200] {
        let (_, body) = request(&job, &fork, old, 250);
        assert!(w.add_checkpoint(&body, 1_800_000_003).is_err(), "old {old}");
    }
    // The fork at the same size it cosigned is refused too.
    let (_, body) = request(&job, &fork, 200, 200);
    assert!(w.add_checkpoint(&body, 1_800_000_003).is_err());
    assert_eq!(w.latest(job.signer.name()).unwrap().size, 200);
    // And the honest continuation is cosigned.
    let (_, body) = request(&job, &honest_entries, 200, 330);
    w.add_checkpoint(&body, 1_800_000_004).unwrap();
    assert_eq!(w.latest(job.signer.name()).unwrap().size, 330);
}

#[tokio::test]
async fn the_http_api_answers_with_the_spec_statuses() {
    let job = job();
    let entries = encode(&honest(&job));
    let dir = tempfile::tempdir().unwrap();
    let app = router(Arc::new(witness(&job, &dir.path().join("w.json"))));
    let post = |body: String| {
        Request::post(ADD_CHECKPOINT)
            .body(Body::from(body))
            .unwrap()
    };
    let (_, ok) = request(&job, &entries, 0, 50);
    let resp = app.clone().oneshot(post(ok)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .starts_with("\u{2014} witness.example ")
    );

    let (_, stale) = request(&job, &entries, 0, 60);
    let resp = app.clone().oneshot(post(stale)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], b"50\n");

    let resp = app.clone().oneshot(post("nonsense".into())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let other = lupus_audit::sample::SampleJob::new("lupus.example/unknown", 1).unwrap();
    let (_, unknown) = request(&other, &entries, 0, 10);
    let resp = app.clone().oneshot(post(unknown)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Signed by another key under the known origin.
    let (_, forged) = {
        let mut j = job;
        j.signer = NoteSigner::from_secret(j.signer.name(), [8; 32]).unwrap();
        request(&j, &entries, 50, 70)
    };
    let resp = app.clone().oneshot(post(forged)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
