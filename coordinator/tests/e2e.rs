//! End to end on loopback: a coordinator, 3 workers and 1 verifier train the tiny job
//! for several rounds; the loss falls, every credit is backed by verified work, stake
//! statements verify offline and the ledger re-verifies from its tiles. The same run
//! against PostgreSQL when `LUPUS_TEST_POSTGRES_URL` is set.

mod common;

use std::time::Duration;

use common::*;
use lupus_api::types::{JobInfo, RoundPhase, StakeTable};
use lupus_coordinator::audit::reverify;
use lupus_coordinator::client::Client;
use lupus_ledger::stake::{StakeStatement, verify_statement};

async fn run(config: lupus_coordinator::engine::Config) {
    let server = start(config).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    for seed in 1..=3 {
        crowd.worker(&url, seed, Behaviour::Honest);
    }
    crowd.verifier(&url, 10);
    wait_finished(&server.coordinator, Duration::from_secs(120)).await;

    let reader = Client::new(&url, key(99));
    let rounds = server.coordinator.rounds().await.unwrap().rounds;
    assert_eq!(rounds.len(), 3);
    assert!(
        rounds
            .iter()
            .all(|r| r.phase == RoundPhase::Closed && r.accepted == 3)
    );
    let losses: Vec<f32> = rounds.iter().map(|r| r.val_loss.unwrap()).collect();
    assert!(
        losses[2] < losses[0],
        "validation loss did not fall: {losses:?}"
    );
    // Initial loss of a uniform 96-way guess is ln 96 = 4.56.
    assert!(losses[0] < 4.56, "{losses:?}");

    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    let report = reverify(&reader, &job.log_key).await.unwrap();
    assert_eq!(report.entries_by_kind.get("round_closed"), Some(&3));
    assert_eq!(report.entries_by_kind.get("shares_epoch"), Some(&3));
    assert!(report.slashed.is_empty());

    let table: StakeTable = reader.get("/v1/stake").await.unwrap();
    assert_eq!(table.accounts.len(), 4, "3 workers and 1 verifier earn");
    assert_eq!(report.total_shares, table.total.0);
    for row in &table.accounts {
        let st: StakeStatement = reader.get(&format!("/v1/stake/{}", row.key)).await.unwrap();
        let v = verify_statement(&st, &job.log_key).expect("statement verifies offline");
        assert_eq!(v.balance, row.balance);
        assert_eq!(v.total, table.total);
    }
    drop(crowd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_one_verifier_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run(config(dir.path(), 3, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_one_verifier_postgres() {
    let Ok(url) = std::env::var("LUPUS_TEST_POSTGRES_URL") else {
        eprintln!("LUPUS_TEST_POSTGRES_URL is not set: the PostgreSQL run is skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 3, 3);
    let mut tag = [0u8; 6];
    getrandom::fill(&mut tag).unwrap();
    cfg.database_url = Some(url);
    cfg.postgres_schema = Some(format!("lupus_e2e_{}", hex::encode(tag)));
    run(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_fakes_its_delta_is_slashed_and_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), 2, 3)).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1, Behaviour::Honest);
    crowd.worker(&url, 2, Behaviour::Honest);
    crowd.worker(&url, 3, Behaviour::InflatedDelta);
    crowd.verifier(&url, 10);
    wait_finished(&server.coordinator, Duration::from_secs(120)).await;
    let cheater = lupus_ledger::entry::PublicKey::from(&key(3));
    let table: StakeTable = Client::new(&url, key(99)).get("/v1/stake").await.unwrap();
    assert!(table.slashed.contains(&cheater), "{table:?}");
    assert!(table.accounts.iter().all(|r| r.key != cheater));
    let reader = Client::new(&url, key(99));
    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    let report = reverify(&reader, &job.log_key).await.unwrap();
    assert!(report.slashed.contains(&cheater));
    // Rounds closed with only honest work merged.
    for r in server.coordinator.rounds().await.unwrap().rounds {
        assert_eq!(r.phase, RoundPhase::Closed);
        assert!(r.rejected <= 1);
    }
    assert!(
        server
            .coordinator
            .rounds()
            .await
            .unwrap()
            .rounds
            .iter()
            .any(|r| r.rejected == 1)
    );
    drop(crowd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verifier_that_rejects_honest_work_is_overruled_and_slashed() {
    use lupus_api::types::{self as api, B64, VerdictOutcome, VerifyOffer};
    use lupus_ledger::entry::{Entry, PublicKey, Role};

    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), 1, 1)).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1, Behaviour::Honest);
    // A lying verifier, by hand: it rejects whatever it is given, without a proof.
    let liar = Client::new(&url, key(20));
    liar.join(Role::Verifier, "liar").await.unwrap();
    let job = loop {
        match liar
            .post::<_, VerifyOffer>("/v1/verify/next", &api::NextRequest {})
            .await
            .unwrap()
        {
            VerifyOffer::Job(j) => break j,
            VerifyOffer::Wait { .. } => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let body = api::verdict_body(
        job.task.task_id,
        PublicKey::from(&key(20)),
        false,
        job.steps.clone(),
        "I say it is wrong",
        None,
    );
    let entry = Entry::signed(body, &key(20)).unwrap();
    let receipt: api::VerdictReceipt = liar
        .post(
            &format!("/v1/verify/{}/verdict", job.task.task_id),
            &api::VerdictSubmission {
                verdict: B64(entry.encode()),
                fraud_proof: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(receipt.outcome, VerdictOutcome::Overruled);
    wait_finished(&server.coordinator, Duration::from_secs(60)).await;
    let table: StakeTable = liar.get("/v1/stake").await.unwrap();
    assert!(table.slashed.contains(&PublicKey::from(&key(20))));
    assert!(
        table
            .accounts
            .iter()
            .any(|r| r.key == PublicKey::from(&key(1)))
    );
    let rounds = server.coordinator.rounds().await.unwrap().rounds;
    assert_eq!(rounds[0].accepted, 1, "the honest task is merged");
    drop(crowd);
}

/// Issue 13, trust is earned: with `probation_tasks = 2` every worker key's first two
/// tasks are credited only after the referee's own replay accepted them; later tasks
/// on one verifier's acceptance. The run finishes and the auditor's fold agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probation_tasks_are_refereed_then_trust_is_earned() {
    use lupus_ledger::entry::{CreditKind, EntryBody, PublicKey};
    use lupus_ledger::hash::LeafIndex;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 3, 2);
    cfg.job_spec = cfg.job_spec.replace(
        "double_check_fraction = 0.05",
        "double_check_fraction = 0.0\nprobation_tasks = 2",
    );
    assert!(cfg.job_spec.contains("probation_tasks = 2"));
    let server = start(cfg).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1, Behaviour::Honest);
    crowd.verifier(&url, 10);
    wait_finished(&server.coordinator, Duration::from_secs(180)).await;

    let reader = Client::new(&url, key(99));
    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    let report = reverify(&reader, &job.log_key).await.unwrap();
    assert!(report.slashed.is_empty());
    let log = server.coordinator.log();
    let size = log.head().size.0;
    let entries: Vec<lupus_ledger::entry::Entry> = log
        .entries(LeafIndex(0), LeafIndex(size))
        .await
        .unwrap()
        .iter()
        .map(|b| lupus_ledger::entry::Entry::decode(b).unwrap())
        .collect();
    let referee = server.coordinator.referee_key();
    let worker = PublicKey::from(&key(1));
    // The worker's credited tasks in log order, each with whether the referee ruled.
    let mut credited = Vec::new();
    for e in &entries {
        if let EntryBody::Credit {
            key,
            task,
            kind: CreditKind::Work,
            ..
        } = e.body()
            && *key == worker
        {
            let refereed = entries.iter().any(|v| {
                matches!(v.body(), EntryBody::Verdict { task: t, verifier, accepted: true, .. }
                    if t == task && *verifier == referee)
            });
            credited.push(refereed);
        }
    }
    assert_eq!(credited.len(), 6, "{credited:?}");
    assert!(credited[..2].iter().all(|r| *r), "probation: {credited:?}");
    assert!(credited[2..].iter().all(|r| !*r), "trusted: {credited:?}");
    drop(crowd);
}

/// Issue 13, classes: an honest tolerant-class worker's bits differ from the CPU
/// reference by what its class allows. A verifier that sends an exact-class fraud
/// proof against its task used to convict it (the referee checked the proof before
/// the class) and be paid for it; now the referee judges a tolerant task by the
/// tolerant replay alone, so the worker is credited and the accuser slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_proof_does_not_convict_a_tolerant_task() {
    use lupus_ledger::entry::PublicKey;

    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), 2, 2)).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1, Behaviour::TolerantDevice);
    // Alone at first, the accuser is drawn for the tolerant worker's first task.
    crowd.verifier_as(&url, 20, VerifierBehaviour::ExactProofs);
    let accuser = PublicKey::from(&key(20));
    let reader = Client::new(&url, key(99));
    let start = std::time::Instant::now();
    loop {
        let table: StakeTable = reader.get("/v1/stake").await.unwrap();
        if table.slashed.contains(&accuser) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the accuser was never overruled: {table:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An honest verifier lets the run finish.
    crowd.verifier(&url, 10);
    wait_finished(&server.coordinator, Duration::from_secs(120)).await;
    let table: StakeTable = reader.get("/v1/stake").await.unwrap();
    let worker = PublicKey::from(&key(1));
    assert!(!table.slashed.contains(&worker), "{table:?}");
    assert!(
        table.accounts.iter().any(|r| r.key == worker),
        "the tolerant worker earned nothing: {table:?}"
    );
    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    reverify(&reader, &job.log_key).await.unwrap();
    drop(crowd);
}

/// Issue 13, lazy verifiers: with replay checks on, an acceptance carries a keyed
/// digest of the verifier's replay, and a key's first acceptance is always replayed
/// by the referee. A verifier that accepts without replaying (every worker honest, so
/// no cheat it passes could ever expose it) is slashed at its first acceptance, keeps
/// nothing, and the honest worker's task it accepted is judged again; an honest
/// verifier's digests pass every check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verifier_that_accepts_without_replaying_is_slashed_while_workers_are_honest() {
    use lupus_ledger::entry::PublicKey;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, 2);
    cfg.job_spec = cfg.job_spec.replace(
        "double_check_fraction = 0.05",
        "double_check_fraction = 0.0\nreplay_checks = 0.5",
    );
    assert!(cfg.job_spec.contains("replay_checks = 0.5"));
    let server = start(cfg).await;
    let url = server.url();
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1, Behaviour::Honest);
    // Alone at first, the lazy verifier is drawn for the first task.
    crowd.verifier_as(&url, 20, VerifierBehaviour::AlwaysAccept);
    let lazy = PublicKey::from(&key(20));
    let reader = Client::new(&url, key(99));
    let start = std::time::Instant::now();
    loop {
        let table: StakeTable = reader.get("/v1/stake").await.unwrap();
        if table.slashed.contains(&lazy) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the lazy verifier was never caught: {table:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crowd.verifier(&url, 10);
    wait_finished(&server.coordinator, Duration::from_secs(180)).await;
    let table: StakeTable = reader.get("/v1/stake").await.unwrap();
    let (worker, honest) = (PublicKey::from(&key(1)), PublicKey::from(&key(10)));
    assert_eq!(table.slashed, vec![lazy], "{table:?}");
    assert!(!table.accounts.iter().any(|r| r.key == lazy), "{table:?}");
    assert!(table.accounts.iter().any(|r| r.key == honest), "{table:?}");
    let rounds = server.coordinator.rounds().await.unwrap().rounds;
    assert!(
        rounds.iter().all(|r| r.accepted == 2),
        "every honest task is credited in the end: {rounds:?}"
    );
    assert!(table.accounts.iter().any(|r| r.key == worker));
    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    reverify(&reader, &job.log_key).await.unwrap();
    drop(crowd);
}
