//! The auditor over a real run: a coordinator on loopback, native workers and a
//! verifier train the tiny job; `lupus-audit verify` reads the coordinator's
//! `tlog-tiles` API while the run goes on and after it, and every check passes,
//! including for a run where a cheating worker is caught and slashed. A witness
//! cosigns the run's checkpoints from the coordinator's own consistency proofs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lupus_audit::source::open_source;
use lupus_audit::state::StateDir;
use lupus_audit::verify::{Options, Outcome, verify_log};
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv};
use lupus_coordinator::server::Server;
use lupus_prover::data::Corpus;
use lupus_worker::native::{NativeConfig, Stats, spawn_verifier, spawn_worker};
use lupus_zoo::Behaviour;

const TINY: &str = include_str!("../../jobs/tiny-test.toml");

fn config(dir: &std::path::Path, rounds: u64, tasks: u32, keep: Option<u64>) -> Config {
    // With a retention, no task is double-checked: a double check waits for a second
    // verifier this run does not have, so the referee rules on it and its opening is
    // evidence, kept. Without double checks the tasks that fill each round are
    // accepted by the one verifier alone, so every pruned round has unruled tasks.
    let job_spec = match keep {
        Some(_) => TINY.replace(
            "double_check_fraction = 0.05",
            "double_check_fraction = 0.0",
        ),
        None => TINY.to_owned(),
    };
    assert!(
        keep.is_none() || job_spec != TINY,
        "the tiny job's double checks moved"
    );
    Config {
        data_dir: dir.to_owned(),
        database_url: None,
        postgres_schema: None,
        job_spec,
        tasks_per_round: tasks,
        max_rounds: Some(rounds),
        round_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(60),
        verify_timeout: Duration::from_secs(60),
        val_windows: 128,
        keep_openings: keep,
        env: SystemEnv::shared(),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

async fn audit(url: &str, key: &str, state: &std::path::Path, replay: usize) -> Outcome {
    let (url, key, state) = (url.to_owned(), key.to_owned(), state.to_owned());
    tokio::task::spawn_blocking(move || {
        let src = open_source(&url);
        verify_log(
            src.as_ref(),
            &StateDir::new(&state),
            Some(&key),
            &Options {
                threads: 0,
                replay,
                seed: None,
                tiles: lupus_audit::verify::TileCheck::All,
                replay_merge: true,
                strict_signatures: false,
            },
            &mut |_, _| {},
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the real run's log does not verify: {e}"))
}

/// What the runs audited: while the job ran, after it (resuming), and a fresh audit
/// of the whole log that replays every judged task of every round.
struct Audits {
    during: Outcome,
    after: Outcome,
    whole: Outcome,
    /// What `/v1/blobs/<opening>` answered after the run, for every opened task.
    openings: Vec<OpeningServed>,
}

/// One opened task's opening, as the coordinator served it after the run.
#[derive(Debug)]
struct OpeningServed {
    task: u64,
    round: u64,
    /// Whether the referee gave a verdict on it; `None` once the round is retired
    /// (its status no longer lists verdicts).
    ruled: Option<bool>,
    status: u16,
    body: String,
}

async fn run(workers: &[(u8, Behaviour)], rounds: u64, keep: Option<u64>) -> Audits {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(
        config(dir.path(), rounds, workers.len() as u32, keep),
        Corpus::generated(7, 24_000),
    )
    .await
    .unwrap();
    let server = Server::start(c, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (seed, behaviour) in workers {
        let cfg = NativeConfig {
            conduct: std::sync::Arc::new(*behaviour),
            ..NativeConfig::new(&url, key(*seed), "worker")
        };
        handles.push(spawn_worker(
            cfg,
            Arc::clone(&stop),
            Arc::new(Stats::default()),
        ));
    }
    let cfg = NativeConfig::new(&url, key(10), "verifier");
    handles.push(spawn_verifier(
        cfg,
        Arc::clone(&stop),
        Arc::new(Stats::default()),
    ));

    let log_key = server.coordinator.note_key();
    let state = tempfile::tempdir().unwrap();
    // Once while the job runs (whatever the log holds then), once after.
    let during = audit(&url, &log_key, state.path(), 0).await;
    let first = fetch(&url, "checkpoint").await;
    let start = Instant::now();
    while !server.coordinator.finished().await {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = audit(&url, &log_key, state.path(), 2).await;
    // Tasks of rounds closed long ago replay too: the coordinator answers their
    // openings from its store after the live table has forgotten them.
    let fresh = tempfile::tempdir().unwrap();
    let whole = audit(&url, &log_key, fresh.path(), usize::MAX).await;
    let openings = survey_openings(&url, &server.coordinator.referee_key()).await;
    witness_the_run(&url, &log_key, &first).await;
    // The participants' threads see the flag within a step and end.
    stop.store(true, Ordering::Relaxed);
    drop(handles);
    Audits {
        during,
        after,
        whole,
        openings,
    }
}

/// Every task's opening as `/v1/blobs/` serves it, walking `/v1/tasks/<id>` from 1
/// until the coordinator knows no more tasks.
async fn survey_openings(
    url: &str,
    referee: &lupus_ledger::entry::PublicKey,
) -> Vec<OpeningServed> {
    let http = lupus_api::http::Http::new();
    let none: &[(&str, &str)] = &[];
    let mut out = Vec::new();
    for id in 1u64.. {
        let r = http
            .send(
                "GET",
                &format!("{url}/v1/tasks/{id}"),
                none,
                Vec::new(),
                None,
            )
            .await
            .unwrap();
        if r.status == 404 {
            break;
        }
        assert_eq!(
            r.status,
            200,
            "task {id}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let status: lupus_api::types::TaskStatus = serde_json::from_slice(&r.body).unwrap();
        let Some(opening) = status.opening_blob else {
            continue;
        };
        let ruled =
            (!status.retired).then(|| status.verdicts.iter().any(|v| v.verifier == *referee));
        let r = http
            .send(
                "GET",
                &format!("{url}/v1/blobs/{opening}"),
                none,
                Vec::new(),
                None,
            )
            .await
            .unwrap();
        out.push(OpeningServed {
            task: id,
            round: status.round.0,
            ruled,
            status: r.status,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        });
    }
    assert!(!out.is_empty(), "no task was opened");
    out
}

async fn fetch(url: &str, path: &str) -> String {
    let (url, path) = (url.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let bytes = lupus_audit::source::HttpSource::new(&url)
            .get_url(&path, 1 << 20)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    })
    .await
    .unwrap()
}

/// What a coordinator configured with a witness would do: send the witness each new
/// checkpoint with a consistency proof from its own `/v1/proof/consistency`, and
/// publish the cosignature on the checkpoint.
async fn witness_the_run(url: &str, log_key: &str, first: &str) {
    use lupus_audit::witness::{AddCheckpoint, Witness, attach};
    let dir = tempfile::tempdir().unwrap();
    let skey = lupus_ledger::note::NoteSigner::from_secret("witness.example", [3; 32])
        .unwrap()
        .private_key();
    let w = Witness::open(&skey, &[log_key.to_owned()], &dir.path().join("w.json")).unwrap();
    let body = AddCheckpoint {
        old: 0,
        proof: vec![],
        checkpoint: first.to_owned(),
    };
    w.add_checkpoint(&body.encode(), 1).unwrap();
    let verifier = lupus_ledger::note::NoteVerifier::parse(log_key).unwrap();
    let size = |note: &str| {
        lupus_ledger::checkpoint::open_checkpoint(note, &verifier)
            .unwrap()
            .checkpoint
            .size
            .0
    };
    let last = fetch(url, "checkpoint").await;
    let (old, new) = (size(first), size(&last));
    let proof: lupus_ledger::proof::ConsistencyProof = serde_json::from_str(
        &fetch(url, &format!("v1/proof/consistency?old={old}&new={new}")).await,
    )
    .unwrap();
    let body = AddCheckpoint {
        old,
        proof: proof.path,
        checkpoint: last.clone(),
    };
    let line = w.add_checkpoint(&body.encode(), 2).unwrap();
    let cosigned = attach(&last, &line).unwrap();
    let opened = lupus_ledger::checkpoint::open_checkpoint(&cosigned, &verifier).unwrap();
    assert_eq!(opened.other_signatures.len(), 1);
    assert_eq!(opened.checkpoint.size.0, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_honest_run_verifies_while_it_grows_and_after() {
    let Audits {
        during,
        after,
        whole,
        openings,
    } = run(&[(1, Behaviour::Honest), (2, Behaviour::Honest)], 3, None).await;
    assert!(
        openings.iter().all(|o| o.status == 200),
        "every opening is kept by default: {openings:?}"
    );
    assert_eq!(after.from_size, during.size);
    assert!(after.size > during.size);
    // Two workers and the verifier earned.
    assert_eq!(after.accounts, 3, "{after:?}");
    // Two accepted tasks of the second run were replayed from their openings.
    assert_eq!(after.replayed, 2, "{after:?}");
    assert!(after.total_shares > 0);
    // Every judged task of the three rounds: at least one per worker and round.
    assert!(whole.replayed >= 6, "{whole:?}");
    // Every round's merge, outer step, model hash and validation loss recompute.
    assert_eq!(whole.rounds_recomputed, 3, "{whole:?}");
    assert_eq!(whole.total_shares, after.total_shares);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_run_with_a_slashed_cheater_verifies() {
    let Audits { after, whole, .. } = run(
        &[
            (1, Behaviour::Honest),
            (2, Behaviour::Honest),
            (3, Behaviour::InflatedDelta),
        ],
        2,
        None,
    )
    .await;
    // The cheater earns nothing; the honest workers and the verifier do; the
    // accepted (honest) tasks sampled replay.
    assert_eq!(after.accounts, 3, "{after:?}");
    assert!(after.replayed >= 1, "{after:?}");
    // The referee's rejection of the cheater replays as a rejection.
    assert!(whole.replayed >= 4, "{whole:?}");
    assert_eq!(whole.rounds_recomputed, 2, "{whole:?}");
}

/// With `keep_openings = 1`, the openings of unruled tasks of every round but the last
/// are deleted as the rounds close: their blobs answer 404 with a problem naming the
/// retention, and a whole audit replays only what is kept (the last round's tasks and
/// whatever the referee ruled on) and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openings_past_the_retention_are_deleted_and_the_audit_replays_what_is_kept() {
    let Audits {
        whole, openings, ..
    } = run(
        &[(1, Behaviour::Honest), (2, Behaviour::Honest)],
        3,
        Some(1),
    )
    .await;
    // Round 3 closed last: its openings are within the retention.
    let (past, kept): (Vec<_>, Vec<_>) = openings.iter().partition(|o| o.round < 3);
    assert!(kept.iter().all(|o| o.status == 200), "{kept:?}");
    // Rounds 1 and 2: the referee's rulings are evidence and stay; the rest go, and
    // say why. Round 1 is retired by now, so whether it was ruled is not listed.
    for o in &past {
        match o.ruled {
            Some(true) => assert_eq!(o.status, 200, "task {}: ruled, deleted: {o:?}", o.task),
            Some(false) => assert_eq!(o.status, 404, "task {}: unruled, kept: {o:?}", o.task),
            None => assert!(o.status == 200 || o.status == 404, "{o:?}"),
        }
        if o.status == 404 {
            assert!(o.body.contains("--keep-openings"), "{o:?}");
        }
    }
    // Each pruned round filled with tasks the one verifier alone accepted (no double
    // checks in this job), so each lost at least one opening.
    for round in [1, 2] {
        assert!(
            past.iter().any(|o| o.round == round && o.status == 404),
            "nothing of round {round} was pruned: {past:?}"
        );
    }
    // Round 3's tasks are kept (at least one per worker); rounds 1 and 2 are not
    // sampled unless a ruling judged them.
    assert!(whole.replayed >= 2, "{whole:?}");
    assert_eq!(whole.rounds_recomputed, 3, "{whole:?}");
}
