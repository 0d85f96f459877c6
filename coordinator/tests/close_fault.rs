//! A round close is one atomic group in the log (credits, `RoundClosed`, `SharesEpoch`,
//! the next `RoundOpened`). A store that fails that group's commit leaves the log and
//! the coordinator's state as they were and the close is retried; a commit that lands
//! although the store reports a failure is folded in and never written twice. Either
//! way the run finishes with each round closed once and a state equal to the log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lupus_coordinator::engine::Coordinator;
use lupus_coordinator::server::Server;
use lupus_ledger::entry::{Entry, EntryBody};
use lupus_ledger::hash::LeafIndex;
use lupus_ledger::store::fault::{Fault, FaultyStore};
use lupus_ledger::store::open_store;
use lupus_protocol::SharesFold;

fn holds_a_close(entries: &[Vec<u8>]) -> bool {
    entries
        .iter()
        .any(|e| Entry::decode(e).is_ok_and(|e| matches!(e.body(), EntryBody::RoundClosed { .. })))
}

async fn run_with(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.sqlite3").display());
    let faulty = Arc::new(FaultyStore::new(open_store(&url).await.unwrap()));
    faulty.fail_append_where(fault, Box::new(holds_a_close));
    let c = Coordinator::open_with_store(config(dir.path(), 2, 3), corpus(), faulty.clone())
        .await
        .unwrap();
    let server = Server::start(Arc::clone(&c), "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = server.url();
    let mut crowd = Crowd::new();
    for seed in 1..=3 {
        crowd.worker(&url, seed, Behaviour::Honest);
    }
    crowd.verifier(&url, 10);
    wait_finished(&c, Duration::from_secs(180)).await;
    drop(crowd);
    assert_eq!(faulty.fired(), 1, "the fault hit a close group");

    let size = c.log().head().size.0;
    let entries = c
        .log()
        .entries(LeafIndex(0), LeafIndex(size))
        .await
        .unwrap();
    let mut closes = BTreeMap::new();
    let mut opens = BTreeMap::new();
    let mut credits = BTreeSet::new();
    let mut fold = SharesFold::new();
    for (i, bytes) in (0u64..).zip(&entries) {
        let e = Entry::decode(bytes).unwrap();
        fold.apply(i, &e).expect("the log folds");
        match e.body() {
            EntryBody::RoundClosed { round, .. } => *closes.entry(round.0).or_insert(0) += 1,
            EntryBody::RoundOpened { round, .. } => *opens.entry(round.0).or_insert(0) += 1,
            EntryBody::Credit {
                key, task, kind, ..
            } => assert!(
                credits.insert((*key, *task, format!("{kind:?}"))),
                "credit for {key} on {task} written twice"
            ),
            _ => {}
        }
    }
    assert_eq!(
        closes,
        BTreeMap::from([(1, 1), (2, 1)]),
        "each round closed once"
    );
    assert_eq!(
        opens,
        BTreeMap::from([(1, 1), (2, 1)]),
        "each round opened once"
    );
    let table = c.stake_table().await.unwrap();
    let state: BTreeMap<_, _> = table.accounts.iter().map(|r| (r.key, r.balance)).collect();
    assert_eq!(&state, fold.balances(), "the state is the fold of the log");
    assert_eq!(table.epoch, Some(2));
    let rounds = c.rounds().await.unwrap().rounds;
    assert!(rounds.iter().all(|r| r.accepted == 3), "{rounds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_group_that_fails_to_commit_changes_nothing_and_is_retried() {
    run_with(Fault::BeforeCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_group_that_landed_despite_an_error_is_not_written_twice() {
    run_with(Fault::AfterCommit).await;
}

/// A coordinator configured to validate on more windows than a `RoundClosed` may name
/// would merge every round and then fail to log its close. It is refused at start,
/// before anything is written to its data directory; the largest count still starts.
#[tokio::test]
async fn a_validation_count_no_close_may_name_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = config(&data, 1, 1);
    cfg.val_windows = lupus_ledger::entry::MAX_VAL_WINDOWS + 1;
    let err = Coordinator::open(cfg.clone(), corpus())
        .await
        .err()
        .expect("a start with too many validation windows");
    assert!(err.to_string().contains("val_windows"), "{err}");
    assert!(!data.exists(), "nothing is written before the refusal");

    cfg.val_windows = lupus_ledger::entry::MAX_VAL_WINDOWS;
    assert!(Coordinator::open(cfg, corpus()).await.is_ok());
}
