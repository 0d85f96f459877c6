//! A coordinator killed with SIGKILL mid-round and restarted resumes the round it was
//! in from the ledger and the blob store, loses no acknowledged submission, and the run
//! finishes with a ledger that re-verifies.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use lupus_api::types::{JobInfo, RoundList, RoundPhase, RoundStatus};
use lupus_coordinator::audit::reverify;
use lupus_coordinator::client::Client;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the coordinator process when the test ends, passing or not.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_up(dir: &std::path::Path, port: u16) -> Up {
    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/../jobs/tiny-test.toml");
    Command::new(env!("CARGO_BIN_EXE_lupus"))
        .args([
            "up",
            "--job",
            job,
            "--rounds",
            "4",
            "--tasks-per-round",
            "3",
            "--task-timeout",
            "20",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Up)
        .expect("lupus up starts")
}

async fn wait_for<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_round_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = start_up(dir.path(), port);
    let reader = Client::new(&url, key(99));

    let mut crowd = Crowd::new();
    for seed in 1..=3 {
        crowd.worker(&url, seed, Behaviour::Honest);
    }
    crowd.verifier(&url, 10);

    // Kill it once round 2 has committed work in flight and at least one of its tasks
    // has been acknowledged to its worker (a worker counts a task as acknowledged only
    // when its whole turn, opening included, is over, so the coordinator's `committed`
    // runs ahead of the workers' counts: wait for both).
    let acked = |crowd: &Crowd| -> usize {
        crowd
            .stats
            .iter()
            .map(|s| s.acknowledged.lock().unwrap().len())
            .sum()
    };
    wait_for(Duration::from_secs(60), async || {
        let r: RoundStatus = reader.get("/v1/rounds/current").await.ok()?;
        (r.round.0 >= 2 && r.committed >= 1 && r.phase == RoundPhase::Open && acked(&crowd) >= 4)
            .then_some(())
    })
    .await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let _child = start_up(dir.path(), port);
    let list = wait_for(Duration::from_secs(120), async || {
        let l: RoundList = reader.get("/v1/rounds").await.ok()?;
        (l.rounds.len() == 4 && l.rounds.iter().all(|r| r.phase == RoundPhase::Closed)).then_some(l)
    })
    .await;
    crowd.stop.store(true, Ordering::Relaxed);
    assert!(list.rounds.iter().all(|r| r.accepted == 3), "{list:?}");

    // Every acknowledged submission is in the log where its receipt said.
    for s in &crowd.stats {
        let acks = s.acknowledged.lock().unwrap().clone();
        for (task, index) in &acks {
            let json: serde_json::Value =
                reader.get(&format!("/v1/entries/{index}")).await.unwrap();
            let json = &json["entry"];
            assert_eq!(json["body"]["type"], "work_committed", "entry {index}");
            assert_eq!(json["body"]["task"], *task, "entry {index}");
        }
    }
    let job: JobInfo = reader.get("/v1/job").await.unwrap();
    let report = reverify(&reader, &job.log_key).await.unwrap();
    assert_eq!(report.entries_by_kind.get("round_closed"), Some(&4));
    drop(crowd);
}
