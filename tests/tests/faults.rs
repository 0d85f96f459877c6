//! The fault suite (issue 7, "Faults"): a coordinator killed mid-round, mid-append and
//! mid-aggregation and restarted; workers and verifiers vanishing mid-task; the
//! database briefly locked or its connections dropped; a full blob store.
//!
//! Every case runs the tiny job to the end and then judges the whole run with
//! [`check_run`]: the log re-verifies from its tiles, every checkpoint seen during the
//! run (before any crash too) is consistent with the final one, every acknowledged
//! submission is in the log where its receipt said, and nothing was recorded twice.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use lupus_api::paths;
use lupus_api::types::{
    RoundList, RoundPhase, RoundStatus, SubmissionReceipt, TaskState, TaskStatus,
};
use lupus_coordinator::client::Client;
use lupus_coordinator::engine::failpoints;
use lupus_ledger::entry::{EntryBody, Role};
use lupus_tests::*;

const NODE: &str = env!("CARGO_BIN_EXE_lupus-test-node");

/// SIGABRT: what a failpoint ends the process with.
const SIGABRT: i32 = 6;

/// How a crash case ends its first coordinator.
enum Crash<'a> {
    /// `kill -9` once round 2 has committed work in flight.
    KillMidRound,
    /// The process aborts itself at this failpoint (`name@n`).
    Failpoint(&'a str),
}

/// Runs the tiny job on a child-process coordinator, crashes it, restarts it on the
/// same data directory and port, lets the run finish and judges it. Returns the
/// judgement for case-specific checks.
async fn crash_and_resume(crash: Crash<'_>, run: RunConfig, cheater: bool) -> RunCheck {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let failpoint = match crash {
        Crash::Failpoint(f) => Some(f),
        Crash::KillMidRound => None,
    };
    let mut node = Node::spawn(NODE, &dir, port, &run, failpoint);
    let url = node.url.clone();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);
    let mut crowd = Crowd::new();
    if cheater {
        crowd.cheater(&url, 3);
    }
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    crowd.verifier(&url, 10);

    match crash {
        Crash::KillMidRound => {
            let reader = Client::new(&url, key(99));
            wait_for(
                "round 2 has committed work",
                Duration::from_secs(60),
                async || {
                    let r: RoundStatus = reader.get(paths::ROUND_CURRENT).await.ok()?;
                    (r.round.0 >= 2 && r.committed >= 1 && r.phase == RoundPhase::Open)
                        .then_some(())
                },
            )
            .await;
            node.kill9();
        }
        Crash::Failpoint(f) => {
            let status = node.wait_exit(Duration::from_secs(90)).await;
            let name = f.split('@').next().unwrap_or(f);
            assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "{status:?}\n{}",
                node.log_tail()
            );
            assert!(
                node.log_tail().contains(&format!("crashing at {name}")),
                "the node died at the failpoint: {}",
                node.log_tail()
            );
        }
    }
    let seen_before = watcher.seen();
    let acked_before = crowd.acknowledged();
    assert!(
        !seen_before.is_empty(),
        "checkpoints were seen before the crash"
    );

    let _node = Node::spawn(NODE, &dir, port, &run, None);
    let list = wait_finished(&url, run.rounds, Duration::from_secs(120)).await;
    let acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    for a in &acked_before {
        assert!(acks.contains(a), "{a:?} acknowledged before the crash");
    }
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "every round merged its target of work: {list:?}"
    );
    let seen = watcher.seen();
    assert!(
        seen.len() > seen_before.len(),
        "the log grew after the restart"
    );
    let check = check_run(&url, &seen, &acks).await;
    assert_eq!(
        check.report.entries_by_kind.get("round_closed"),
        Some(&run.rounds)
    );
    check_blob_dir(&dir, &check.entries);
    check
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_round_resumes_and_loses_nothing() {
    // Four rounds, so that the window "round 2 or later is open with committed work"
    // cannot be missed by the 50 ms poll before the run ends.
    let run = RunConfig {
        rounds: 4,
        ..RunConfig::default()
    };
    crash_and_resume(Crash::KillMidRound, run, false).await;
}

/// Inside the group commit: rows written, transaction not committed. The batch's
/// callers were never answered, so nothing of it was acknowledged; SQLite rolls the
/// open transaction back at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_inside_the_group_commit() {
    let f = format!("{}@14", failpoints::STORE_BEFORE_COMMIT);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// After the commit, before the checkpoint is published and the callers answered:
/// the entries are in the log although nobody was told; the restart publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_commit_before_the_answer() {
    let f = format!("{}@14", failpoints::LOG_AFTER_COMMIT);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// A submission is durable but its receipt never left: the worker's retry after the
/// restart finds its commitment through the task's status and opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_a_submission_is_durable_before_its_receipt() {
    let f = format!("{}@3", failpoints::SUBMIT_AFTER_APPEND);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// Round close, the merge computed and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_aggregation_after_the_merge() {
    let f = format!("{}@2", failpoints::CLOSE_AFTER_MERGE);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// Round close, the new model blob written and not yet named by the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_aggregation_after_the_model_blob() {
    let f = format!("{}@1", failpoints::CLOSE_AFTER_MODEL_BLOB);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// Round close, the credits appended and `RoundClosed` not: the restart must not
/// credit anyone twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_aggregation_after_the_credits() {
    let f = format!("{}@2", failpoints::CLOSE_AFTER_CREDITS);
    crash_and_resume(Crash::Failpoint(&f), RunConfig::default(), false).await;
}

/// The referee's verdict against a cheater is durable, the slash is not: the restart
/// slashes the cheater anyway (the slashes are a function of the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_the_referees_verdict_and_the_slash() {
    let f = format!("{}@1", failpoints::REFEREE_AFTER_VERDICT);
    // A slot for each worker, so the cheater is sure to get tasks.
    let run = RunConfig {
        tasks_per_round: 3,
        ..RunConfig::default()
    };
    let check = crash_and_resume(Crash::Failpoint(&f), run, true).await;
    let cheater = lupus_ledger::entry::PublicKey::from(&key(3));
    let referee = check
        .entries
        .iter()
        .find_map(|e| match e.body() {
            EntryBody::ParticipantJoined { key, name, .. } if name == "coordinator-referee" => {
                Some(*key)
            }
            _ => None,
        })
        .expect("the referee joined");
    // The task of the verdict the crash cut off (the cheater cheats again later, so
    // "slashed at all" would not tell).
    let ruled = check
        .entries
        .iter()
        .find_map(|e| match e.body() {
            EntryBody::Verdict {
                task,
                verifier,
                accepted: false,
                ..
            } if *verifier == referee => Some(*task),
            _ => None,
        })
        .expect("the referee ruled against the cheater");
    let slashed_for_it = check.entries.iter().any(|e| {
        matches!(e.body(), EntryBody::Slashed { key, task, .. } if *key == cheater && *task == ruled)
    });
    assert!(
        slashed_for_it,
        "the cheater is slashed for task {ruled} after the restart"
    );
}

/// The PostgreSQL URL of the test database, or `None` (with a visible message) when
/// `LUPUS_TEST_POSTGRES_URL` is unset. CI sets it.
fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("LUPUS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED {test}: LUPUS_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A schema of its own for one test run.
fn fresh_schema(test: &str) -> String {
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).unwrap();
    format!("faults_{test}_{}", hex::encode(nonce))
}

/// The group-commit crash on PostgreSQL: the open transaction dies with its
/// connection and the server rolls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_inside_the_group_commit_postgres() {
    let Some(url) = postgres_url("crash_inside_the_group_commit_postgres") else {
        return;
    };
    let run = RunConfig {
        database_url: Some(url),
        postgres_schema: Some(fresh_schema("commit")),
        ..RunConfig::default()
    };
    let f = format!("{}@14", failpoints::STORE_BEFORE_COMMIT);
    crash_and_resume(Crash::Failpoint(&f), run, false).await;
}

/// A worker takes a task and disappears; a verifier claims a verification and
/// disappears. With short timeouts both are replaced and every round completes
/// without them; neither is credited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_worker_and_verifier_are_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunConfig {
        rounds: 2,
        task_timeout: Duration::from_secs(3),
        verify_timeout: Duration::from_secs(3),
        ..RunConfig::default()
    };
    let server = start_in_process(run.config(tmp.path())).await;
    let url = server.url();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);

    let ghost_worker = Probe::new(&url, 40);
    let abandoned = ghost_worker.take_task(Duration::from_secs(10)).await;
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    let ghost_verifier = Probe::new(&url, 41);
    let claimed = ghost_verifier
        .take_verification(Duration::from_secs(30))
        .await;
    crowd.verifier(&url, 10);

    let list = wait_finished(&url, run.rounds, Duration::from_secs(90)).await;
    let acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "{list:?}"
    );
    assert!(
        list.rounds[0].assigned > run.tasks_per_round,
        "the abandoned task's slot was handed out again: {list:?}"
    );

    let reader = Client::new(&url, key(99));
    let t: TaskStatus = reader.get(&paths::task(abandoned.task_id.0)).await.unwrap();
    assert_eq!(t.state, TaskState::Expired, "{t:?}");
    let t: TaskStatus = reader
        .get(&paths::task(claimed.task.task_id.0))
        .await
        .unwrap();
    assert_eq!(
        t.state,
        TaskState::Accepted,
        "the claimed task was verified by another: {t:?}"
    );
    assert!(
        t.verdicts
            .iter()
            .all(|v| v.verifier != ghost_verifier.public_key())
    );

    let check = check_run(&url, &watcher.seen(), &acks).await;
    let ghosts = [ghost_worker.public_key(), ghost_verifier.public_key()];
    let mut claimed_in_log = false;
    for e in &check.entries {
        match e.body() {
            EntryBody::WorkCommitted { task, .. } => assert_ne!(*task, abandoned.task_id),
            EntryBody::Credit { key, .. } => assert!(!ghosts.contains(key), "a ghost was credited"),
            EntryBody::ChallengeIssued { verifier, task, .. } => {
                claimed_in_log |= *verifier == ghosts[1] && *task == claimed.task.task_id;
            }
            _ => {}
        }
    }
    assert!(claimed_in_log, "the ghost verifier's claim is in the log");
    check_blob_dir(tmp.path(), &check.entries);
}

/// Another connection holds SQLite's write lock for a while: a mutating request gets a
/// quick 503 problem with Retry-After (not a hang, not a 500), reads still answer, and
/// the run completes once the lock is released, with nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_sqlite_gives_503_and_the_run_recovers() {
    use sqlx::Connection;
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ledger.sqlite3");
    let run = RunConfig {
        database_url: Some(format!("sqlite://{}?busy_timeout_ms=300", db.display())),
        ..RunConfig::default()
    };
    let server = start_in_process(run.config(tmp.path())).await;
    let url = server.url();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    crowd.verifier(&url, 10);
    let reader = Client::new(&url, key(99));
    wait_for(
        "round 1 has committed work",
        Duration::from_secs(60),
        async || {
            let r: RoundStatus = reader.get(paths::ROUND_CURRENT).await.ok()?;
            (r.committed >= 1).then_some(())
        },
    )
    .await;

    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let probe = Probe::new(&url, 60);
    let started = Instant::now();
    let answer = probe.join(Role::Worker).await;
    answer.assert_retryable_problem(503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal came quickly, not after a hang: {:?}",
        started.elapsed()
    );
    let rounds: RoundList = reader.get(paths::ROUNDS).await.unwrap();
    assert!(
        !rounds.rounds.is_empty(),
        "reads answer while the database is locked"
    );
    // Still locked a moment later: the same request is refused the same way again.
    probe.join(Role::Worker).await.assert_retryable_problem(503);
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    // The same request, sent again as Retry-After says, goes through.
    wait_for(
        "the join succeeds once the lock is gone",
        Duration::from_secs(10),
        async || (probe.join(Role::Worker).await.status == 200).then_some(()),
    )
    .await;
    let list = wait_finished(&url, run.rounds, Duration::from_secs(120)).await;
    let acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "{list:?}"
    );
    let check = check_run(&url, &watcher.seen(), &acks).await;
    check_blob_dir(tmp.path(), &check.entries);
}

/// PostgreSQL drops the coordinator's connections (`pg_terminate_backend`, what a
/// server restart or a network cut does to them) again and again during a run: the
/// pool reconnects, refused requests are retried, and the run completes with a
/// consistent log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_dropped_mid_run_recover() {
    use sqlx::Connection;
    let Some(pg) = postgres_url("postgres_connections_dropped_mid_run_recover") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let app = fresh_schema("drop");
    let sep = if pg.contains('?') { '&' } else { '?' };
    let run = RunConfig {
        database_url: Some(format!("{pg}{sep}application_name={app}")),
        postgres_schema: Some(app.clone()),
        ..RunConfig::default()
    };
    let server = start_in_process(run.config(tmp.path())).await;
    let url = server.url();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    crowd.verifier(&url, 10);

    let mut admin = sqlx::PgConnection::connect(&pg).await.unwrap();
    let reader = Client::new(&url, key(99));
    let mut dropped = 0u64;
    // Drop every connection of this coordinator (and only this one: its
    // application_name) every 50 ms until the run is done.
    wait_for("every round closes", Duration::from_secs(120), async || {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        dropped += n as u64;
        let l: RoundList = reader.get(paths::ROUNDS).await.ok()?;
        (l.rounds.len() as u64 == run.rounds && l.rounds.iter().all(|r| r.phase == RoundPhase::Closed))
            .then_some(())
    })
    .await;
    assert!(dropped > 0, "connections were dropped");
    let list = wait_finished(&url, run.rounds, Duration::from_secs(60)).await;
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "{list:?}"
    );
    let acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    let check = check_run(&url, &watcher.seen(), &acks).await;
    check_blob_dir(tmp.path(), &check.entries);
}

/// A PostgreSQL server of the test's own (`scripts/pg-test-server.sh`), so the test
/// can stop it and start it again; removed when dropped.
struct PrivatePg {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-test-server.sh");

    /// Starts one on a free port, or `None` if the script cannot (no PostgreSQL).
    fn start() -> Option<PrivatePg> {
        let mut nonce = [0u8; 4];
        getrandom::fill(&mut nonce).unwrap();
        // Under /tmp itself: when run as root, the server runs as `postgres`, which
        // must be able to reach its directory (a tempdir is private to root).
        let pg = PrivatePg {
            dir: std::env::temp_dir().join(format!("lupus-faults-pg-{}", hex::encode(nonce))),
            port: free_port(),
        };
        pg.up().then_some(pg)
    }

    fn up(&self) -> bool {
        std::process::Command::new(Self::SCRIPT)
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn down(&self) {
        let ok = std::process::Command::new(Self::SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the private PostgreSQL stops");
    }

    fn url(&self) -> String {
        format!("postgres://lupus@127.0.0.1:{}/lupus_test", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The coordinator's PostgreSQL goes away mid-run (stopped): a mutating request gets a
/// 503 problem with Retry-After once the pool gives up (its acquire timeout, 10 s),
/// not a 500; when the server is back, the pool reconnects, the participants' retries
/// go through and the run completes with a consistent log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_503_and_the_run_recovers_when_it_is_back() {
    let test = "postgres_down_gives_503_and_the_run_recovers_when_it_is_back";
    if postgres_url(test).is_none() {
        return;
    }
    let Some(pg) = PrivatePg::start() else {
        eprintln!("SKIPPED {test}: scripts/pg-test-server.sh cannot start a server here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = RunConfig {
        database_url: Some(pg.url()),
        postgres_schema: Some(fresh_schema("down")),
        ..RunConfig::default()
    };
    let server = start_in_process(run.config(tmp.path())).await;
    let url = server.url();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    crowd.verifier(&url, 10);
    let reader = Client::new(&url, key(99));
    wait_for(
        "round 1 has committed work",
        Duration::from_secs(60),
        async || {
            let r: RoundStatus = reader.get(paths::ROUND_CURRENT).await.ok()?;
            (r.committed >= 1).then_some(())
        },
    )
    .await;

    pg.down();
    let probe = Probe::new(&url, 61);
    let started = Instant::now();
    probe.join(Role::Worker).await.assert_retryable_problem(503);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "refused within about the pool's timeout, not a hang: {:?}",
        started.elapsed()
    );
    assert!(pg.up(), "the private PostgreSQL starts again");

    let list = wait_finished(&url, run.rounds, Duration::from_secs(120)).await;
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "{list:?}"
    );
    wait_for(
        "the join succeeds with the server back",
        Duration::from_secs(10),
        async || (probe.join(Role::Worker).await.status == 200).then_some(()),
    )
    .await;
    let acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    let check = check_run(&url, &watcher.seen(), &acks).await;
    check_blob_dir(tmp.path(), &check.entries);
}

/// Bytes in the files of `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The blob store is full (its quota, which counts the directory as a disk would): a
/// submission is refused with a 507 problem and Retry-After, leaves no partial file and
/// no ledger entry; once the operator frees space, the same submission is accepted and
/// the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_blob_store_refuses_cleanly_and_recovers() {
    full_blob_store(false).await;
}

/// The same with a real `ENOSPC`: the blob directory is a small tmpfs filled up by
/// another file. Needs root and `mount` (skipped with a message otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_cleanly_and_recovers() {
    full_blob_store(true).await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full; returns the error it stopped with.
fn fill(path: &Path) -> std::io::Error {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            return e;
        }
    }
}

async fn full_blob_store(disk: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let blob_dir = tmp.path().join("blobs");
    // Declared before the server, so it is unmounted after the server stops.
    let _mount = if disk {
        match Tmpfs::mount(&blob_dir, "32m") {
            Some(m) => Some(m),
            None => {
                eprintln!(
                    "SKIPPED full_disk_refuses_cleanly_and_recovers: cannot mount a tmpfs (not root?)"
                );
                return;
            }
        }
    } else {
        None
    };
    let run = RunConfig {
        rounds: 2,
        task_timeout: Duration::from_secs(3),
        ..RunConfig::default()
    };
    let server = start_in_process(run.config(tmp.path())).await;
    let url = server.url();
    let info = job_info(&url).await;
    let watcher = CheckpointWatcher::start(&url, &info.log_key);

    // Something else fills the disk: the room left is smaller than a delta.
    let junk = blob_dir.join("operator-junk");
    let quota = dir_bytes(&blob_dir) + 64 * 1024;
    if disk {
        let e = fill(&junk);
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
    } else {
        server.coordinator.blobs().set_quota(Some(quota));
        std::fs::write(&junk, vec![0u8; 64 * 1024 - 512]).unwrap();
    }

    let probe = Probe::new(&url, 70);
    let task = probe.take_task(Duration::from_secs(10)).await;
    let body = probe.train(&task).await;
    let refused = probe
        .post_raw(&paths::submit(task.task_id.0), body.clone())
        .await;
    refused.assert_retryable_problem(507);
    let leftovers = std::fs::read_dir(&blob_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0, "no partial blob file");
    let reader = Client::new(&url, key(99));
    let t: TaskStatus = reader.get(&paths::task(task.task_id.0)).await.unwrap();
    assert_eq!(
        t.state,
        TaskState::Assigned,
        "nothing of the refused submission is in the ledger"
    );

    // The operator frees space; the same submission goes through.
    std::fs::remove_file(&junk).unwrap();
    let accepted = probe.post_raw(&paths::submit(task.task_id.0), body).await;
    assert_eq!(accepted.status, 200, "{:?}", accepted.json());
    let receipt: SubmissionReceipt = serde_json::from_slice(&accepted.body).unwrap();
    let probe_ack = Ack {
        worker: probe.public_key(),
        task: task.task_id.0,
        entry_index: receipt.entry_index,
    };

    // The operator also lifts the quota (openings are large); the run completes.
    server.coordinator.blobs().set_quota(None);
    let mut crowd = Crowd::new();
    crowd.worker(&url, 1);
    crowd.worker(&url, 2);
    crowd.verifier(&url, 10);
    let list = wait_finished(&url, run.rounds, Duration::from_secs(90)).await;
    let mut acks = crowd.acknowledged();
    crowd.stop();
    assert!(crowd.failures().is_empty(), "{:?}", crowd.failures());
    assert!(
        list.rounds
            .iter()
            .all(|r| r.accepted == run.tasks_per_round),
        "{list:?}"
    );
    acks.push(probe_ack);
    let check = check_run(&url, &watcher.seen(), &acks).await;
    check_blob_dir(tmp.path(), &check.entries);
}
