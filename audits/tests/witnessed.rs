//! A coordinator configured with a witness (`lupus up --witness URL=KEY`): a real
//! `lupus-audit` witness on loopback cosigns the checkpoints of a small run, and the
//! coordinator's `/checkpoint` carries the cosignature over exactly the checkpoint it
//! serves, which still opens with the log's key alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lupus_audit::statement::{Freshness, Proven, StatementError, check_fresh};
use lupus_audit::witness::{Witness, router, verify_cosignature};
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv};
use lupus_coordinator::server::Server;
use lupus_coordinator::witness::WitnessConfig;
use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::note::{NoteSigner, NoteVerifier, parse_note};
use lupus_prover::data::Corpus;
use lupus_worker::native::{NativeConfig, Stats, spawn_verifier, spawn_worker};

const TINY: &str = include_str!("../../jobs/tiny-test.toml");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checkpoint_carries_the_configured_witness_cosignature() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        database_url: None,
        postgres_schema: None,
        job_spec: TINY.to_owned(),
        tasks_per_round: 2,
        max_rounds: Some(1),
        round_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(60),
        verify_timeout: Duration::from_secs(60),
        val_windows: 128,
        keep_openings: None,
        env: SystemEnv::shared(),
    };
    let c = Coordinator::open(config, Corpus::generated(7, 24_000))
        .await
        .unwrap();
    let log_key = c.note_key();

    // The witness, on its own loopback port, knowing the log's key.
    let wdir = tempfile::tempdir().unwrap();
    let witness_seed = [3; 32];
    let skey = NoteSigner::from_secret("witness.example", witness_seed)
        .unwrap()
        .private_key();
    let witness = Arc::new(
        Witness::open(
            &skey,
            std::slice::from_ref(&log_key),
            &wdir.path().join("w.json"),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let witness_url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&witness));
    let witness_server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut server = Server::start(c, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let flag = format!("{witness_url}={}", witness.verifier_key());
    server.witness(vec![flag.parse::<WitnessConfig>().unwrap()]);
    let url = server.url();

    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for seed in [1u8, 2] {
        let cfg = NativeConfig::new(&url, SigningKey::from_bytes(&[seed; 32]), "worker");
        handles.push(spawn_worker(
            cfg,
            Arc::clone(&stop),
            Arc::new(Stats::default()),
        ));
    }
    let cfg = NativeConfig::new(&url, SigningKey::from_bytes(&[10; 32]), "verifier");
    handles.push(spawn_verifier(
        cfg,
        Arc::clone(&stop),
        Arc::new(Stats::default()),
    ));
    let start = Instant::now();
    while !server.coordinator.finished().await {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The participants' threads see the flag within a step and end.
    stop.store(true, Ordering::Relaxed);
    drop(handles);

    // Wait for the witness to have cosigned the final head, then check what is served.
    let log = NoteVerifier::parse(&log_key).unwrap();
    let witness_pk = SigningKey::from_bytes(&witness_seed)
        .verifying_key()
        .to_bytes();
    let start = Instant::now();
    let served = loop {
        let served = fetch(&url, "checkpoint").await;
        let opened = open_checkpoint(&served, &log).unwrap();
        let head = server.coordinator.log().head().size.0;
        if opened.checkpoint.size.0 == head && !opened.other_signatures.is_empty() {
            break served;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the checkpoint never carried the witness's cosignature: {served}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Opens with the log's key alone; the one extra line is the witness's cosignature
    // over exactly this checkpoint text.
    let opened = open_checkpoint(&served, &log).unwrap();
    let final_size = opened.checkpoint.size.0;
    assert!(final_size > 1, "the run logged entries");
    assert_eq!(opened.other_signatures.len(), 1, "{served}");
    let text = parse_note(served.as_bytes()).unwrap().text;
    assert!(verify_cosignature(
        &opened.other_signatures[0],
        &witness_pk,
        &text
    ));
    assert!(!verify_cosignature(
        &opened.other_signatures[0],
        &witness_pk,
        &text.replacen(&format!("\n{final_size}\n"), "\n1\n", 1)
    ));
    // The witness's own state agrees: it last cosigned this size.
    let origin = log.name().to_owned();
    assert!(witness.latest(&origin).unwrap().size >= final_size);

    // A worker's stake statement is made against the cosigned checkpoint, so it is
    // fresh by the witness's clock; another witness's word is not there.
    let worker = lupus_ledger::entry::PublicKey::from(&SigningKey::from_bytes(&[1; 32]));
    let statement = fetch(&url, &format!("v1/stake/{worker}")).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wkey = lupus_ledger::note::CosignatureVerifier::parse(&witness.verifier_key()).unwrap();
    let fresh = Freshness {
        witnesses: vec![wkey],
        max_age_s: Some(600),
        now_s,
    };
    let proven = check_fresh(&statement, &log_key, None, &fresh).unwrap();
    assert!(
        matches!(proven, Proven::Stake { cosigned_at: Some(t), .. } if t <= now_s + 1 && t + 600 >= now_s),
        "{proven:?}"
    );
    let other = NoteSigner::from_secret("other-witness.example", [4; 32]).unwrap();
    let other_key = lupus_ledger::note::CosignatureVerifier::from_key(
        "other-witness.example",
        other.verifier().public_key().to_owned(),
    )
    .unwrap();
    let fresh = Freshness {
        witnesses: vec![other_key],
        max_age_s: None,
        now_s,
    };
    assert!(matches!(
        check_fresh(&statement, &log_key, None, &fresh),
        Err(StatementError::NotCosigned { .. })
    ));
    server.stop();
    witness_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_comes_up_late_is_retried_until_it_cosigns() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        database_url: None,
        postgres_schema: None,
        job_spec: TINY.to_owned(),
        tasks_per_round: 1,
        max_rounds: Some(1),
        round_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(60),
        verify_timeout: Duration::from_secs(60),
        val_windows: 128,
        keep_openings: None,
        env: SystemEnv::shared(),
    };
    let c = Coordinator::open(config, Corpus::generated(7, 24_000))
        .await
        .unwrap();
    let log_key = c.note_key();
    let wdir = tempfile::tempdir().unwrap();
    let skey = NoteSigner::from_secret("witness.example", [4; 32])
        .unwrap()
        .private_key();
    let witness = Arc::new(
        Witness::open(
            &skey,
            std::slice::from_ref(&log_key),
            &wdir.path().join("w.json"),
        )
        .unwrap(),
    );
    // A free loopback port nobody listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Server::start(c, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let flag = format!("http://{addr}={}", witness.verifier_key());
    server.witness(vec![flag.parse::<WitnessConfig>().unwrap()]);
    let url = server.url();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let log = NoteVerifier::parse(&log_key).unwrap();
    let early = open_checkpoint(&fetch(&url, "checkpoint").await, &log).unwrap();
    assert!(early.other_signatures.is_empty(), "no witness is up yet");

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = router(Arc::clone(&witness));
    let witness_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let start = Instant::now();
    loop {
        let served = fetch(&url, "checkpoint").await;
        let opened = open_checkpoint(&served, &log).unwrap();
        if let Some(sig) = opened.other_signatures.first() {
            let text = parse_note(served.as_bytes()).unwrap().text;
            let pk = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
            assert!(verify_cosignature(sig, &pk, &text));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the late witness was never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    witness_server.abort();
}
