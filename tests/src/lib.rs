//! The harness of Lupus's workspace-wide tests (DESIGN.md, "Crates": `tests/`).
//!
//! What a suite needs to run a whole job and judge what it left behind:
//!
//! - **Coordinators.** [`start_in_process`] runs one on 127.0.0.1:0 inside the test's
//!   runtime (fast; the test can reach into the engine, the blob store and the
//!   database file). [`Node`] runs one as a child process (`lupus-test-node`, the same
//!   library calls as `lupus up`) that a test can kill with SIGKILL or crash at a
//!   `LUPUS_FAILPOINT` ([`lupus_coordinator::engine::failpoints`]) and restart on the
//!   same data directory. Both take a [`RunConfig`]: the tiny job
//!   (`jobs/tiny-test.toml`), its generated corpus, short timeouts.
//! - **Participants.** [`Crowd`] starts workers and verifiers (`lupus_worker::native`,
//!   the loop `lupus worker` runs) and collects the submissions the coordinator
//!   acknowledged ([`Ack`]). The participant loop is
//!   touched only in [`Crowd::worker`], [`Crowd::verifier`] and [`Crowd::acknowledged`],
//!   so moving to another worker implementation is a change here only. [`Probe`] is a
//!   hand-driven participant for the steps a loop would hide: take a task and vanish,
//!   claim a verification and vanish, post one submission and look at the raw answer.
//! - **Observation.** [`CheckpointWatcher`] polls `/checkpoint` in the background and
//!   keeps every distinct signed checkpoint it saw (across restarts). [`wait_for`] waits
//!   on a condition with a limit (never a bare sleep).
//! - **Judgement.** [`check_run`] re-verifies the whole log from its tiles
//!   ([`lupus_coordinator::audit::reverify`]), checks every checkpoint seen against the
//!   final one with the log's consistency proofs, and checks that every acknowledged
//!   submission is in the log, at the index its receipt gave, signed by the worker that
//!   sent it. [`check_blob_dir`] checks that no temporary blob file is left and every
//!   model the log names is in the blob store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use lupus_api::http::Http;
use lupus_api::paths;
use lupus_api::types::{
    self as api, B64, JobInfo, RoundList, RoundPhase, TaskDescription, TaskOffer, VerifyJob,
    VerifyOffer,
};
use lupus_coordinator::audit::{AuditReport, reverify};
use lupus_coordinator::client::Client;
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv};
use lupus_coordinator::server::Server;
use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::entry::{Entry, EntryBody, PublicKey, Role};
use lupus_ledger::hash::{Hash, TreeSize};
use lupus_ledger::note::NoteVerifier;
use lupus_ledger::proof::{ConsistencyProof, verify_consistency};
use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use lupus_prover::verify::DeviceClass;
use lupus_worker::native::{NativeConfig, Stats, spawn_verifier, spawn_worker};
use lupus_worker::worker::WorkerError;
use lupus_zoo::Behaviour;

/// The tiny test job: a task trains in milliseconds.
pub const TINY: &str = include_str!("../../jobs/tiny-test.toml");

/// The tiny job's corpus (generated, so no download).
pub fn corpus() -> Corpus {
    Corpus::generated(7, 24_000)
}

/// A participant key from a one-byte seed (distinct seeds, distinct keys).
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// How a test's coordinator runs: the tiny job with short timeouts.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub rounds: u64,
    pub tasks_per_round: u32,
    pub task_timeout: Duration,
    pub verify_timeout: Duration,
    pub round_timeout: Duration,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    pub postgres_schema: Option<String>,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            rounds: 3,
            tasks_per_round: 2,
            task_timeout: Duration::from_secs(30),
            verify_timeout: Duration::from_secs(30),
            round_timeout: Duration::from_secs(120),
            database_url: None,
            postgres_schema: None,
        }
    }
}

impl RunConfig {
    /// The engine's configuration for a coordinator whose data lives in `dir`.
    pub fn config(&self, dir: &Path) -> Config {
        Config {
            data_dir: dir.to_owned(),
            database_url: self.database_url.clone(),
            postgres_schema: self.postgres_schema.clone(),
            job_spec: TINY.to_owned(),
            tasks_per_round: self.tasks_per_round,
            max_rounds: Some(self.rounds),
            round_timeout: self.round_timeout,
            task_timeout: self.task_timeout,
            verify_timeout: self.verify_timeout,
            val_windows: 64,
            keep_openings: None,
            env: SystemEnv::shared(),
        }
    }
}

/// Starts a coordinator inside the test's runtime on 127.0.0.1:0.
pub async fn start_in_process(config: Config) -> Server {
    let c = Coordinator::open(config, corpus())
        .await
        .expect("the coordinator opens its data directory");
    Server::start(c, "127.0.0.1:0".parse().expect("an address"), None)
        .await
        .expect("the server binds")
}

/// A free TCP port on 127.0.0.1 (for a [`Node`] that must come back on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `f` gives `Some`, polling every 50 ms; panics after `limit` saying
/// `what` did not happen.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A coordinator in a child process (`lupus-test-node`), killed when dropped.
pub struct Node {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Node {
    /// Starts a coordinator on `dir` listening on `port`; `failpoint` arms
    /// `LUPUS_FAILPOINT` (`name` or `name@n`). Its stderr goes to `<dir>.node.log`.
    /// `bin` is the node binary: in a test file of this crate,
    /// `env!("CARGO_BIN_EXE_lupus-test-node")` (Cargo tells only test targets).
    pub fn spawn(
        bin: &str,
        dir: &Path,
        port: u16,
        run: &RunConfig,
        failpoint: Option<&str>,
    ) -> Node {
        let log = dir.with_extension("node.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the node's log file opens");
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--rounds", &run.rounds.to_string()])
            .args(["--tasks", &run.tasks_per_round.to_string()])
            .args(["--task-timeout-ms", &ms(run.task_timeout)])
            .args(["--verify-timeout-ms", &ms(run.verify_timeout)])
            .args(["--round-timeout-ms", &ms(run.round_timeout)])
            .env_remove("LUPUS_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(url) = &run.database_url {
            cmd.args(["--database", url]);
        }
        if let Some(schema) = &run.postgres_schema {
            cmd.args(["--schema", schema]);
        }
        if let Some(f) = failpoint {
            cmd.env("LUPUS_FAILPOINT", f);
        }
        let child = cmd.spawn().expect("lupus-test-node starts");
        Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the node is reaped");
    }

    /// Waits for the process to end by itself (a failpoint), at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the node's status") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the node did not crash within {limit:?}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines the node wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// A submission the coordinator acknowledged: its receipt's entry index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub worker: PublicKey,
    pub task: u64,
    pub entry_index: u64,
}

/// Participants (the native loop of `lupus-worker`, each on a thread of its own)
/// running against a coordinator until stopped (or dropped).
pub struct Crowd {
    stop: Arc<AtomicBool>,
    /// `(name, thread, whether its ending in an error is expected)`.
    handles: Vec<(String, Participant, bool)>,
    workers: Vec<(PublicKey, Arc<Stats>)>,
    verifiers: Vec<Arc<Stats>>,
    failures: Vec<String>,
}

type Participant = std::thread::JoinHandle<Result<u64, WorkerError>>;

impl Default for Crowd {
    fn default() -> Crowd {
        Crowd::new()
    }
}

impl Crowd {
    pub fn new() -> Crowd {
        Crowd {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
            workers: Vec::new(),
            verifiers: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn spawn_worker(&mut self, url: &str, seed: u8, behaviour: Behaviour, may_fail: bool) {
        let name = format!("worker-{seed}");
        let cfg = NativeConfig {
            conduct: Arc::new(behaviour),
            ..NativeConfig::new(url, key(seed), &name)
        };
        let stats = Arc::new(Stats::default());
        self.workers
            .push((PublicKey::from(&key(seed)), Arc::clone(&stats)));
        let h = spawn_worker(cfg, Arc::clone(&self.stop), stats);
        self.handles.push((name, h, may_fail));
    }

    /// Starts an honest worker with key `key(seed)`. It retries through a coordinator
    /// that is down or answers 5xx.
    pub fn worker(&mut self, url: &str, seed: u8) {
        self.spawn_worker(url, seed, Behaviour::Honest, false);
    }

    /// Starts a cheating worker with key `key(seed)`: it trains honestly but submits a
    /// delta ten times larger, committed in its trace (`Behaviour::InflatedDelta`).
    /// Verifiers reject it and the referee slashes it; its loop then ends with a
    /// refusal, which is expected and not counted in [`Crowd::failures`].
    pub fn cheater(&mut self, url: &str, seed: u8) {
        self.spawn_worker(url, seed, Behaviour::InflatedDelta, true);
    }

    /// Starts an honest verifier with key `key(seed)`.
    pub fn verifier(&mut self, url: &str, seed: u8) {
        let name = format!("verifier-{seed}");
        let cfg = NativeConfig::new(url, key(seed), &name);
        let stats = Arc::new(Stats::default());
        self.verifiers.push(Arc::clone(&stats));
        let h = spawn_verifier(cfg, Arc::clone(&self.stop), stats);
        self.handles.push((name, h, false));
    }

    /// Every submission acknowledged so far.
    pub fn acknowledged(&self) -> Vec<Ack> {
        let mut out = Vec::new();
        for (worker, stats) in &self.workers {
            let acks = stats.acknowledged.lock().expect("not poisoned").clone();
            out.extend(acks.into_iter().map(|(task, entry_index)| Ack {
                worker: *worker,
                task,
                entry_index,
            }));
        }
        out
    }

    /// Requests the participants retried after a transient refusal or a lost
    /// connection.
    pub fn retries(&self) -> u64 {
        self.workers
            .iter()
            .map(|(_, s)| s)
            .chain(&self.verifiers)
            .map(|s| s.retries.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops every participant and waits for their threads; what an unexpected one
    /// ended with is then in [`Crowd::failures`].
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (name, h, may_fail) in self.handles.drain(..) {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(_)) if may_fail => {}
                Ok(Err(e)) => self.failures.push(format!("{name}: {e}")),
                Err(_) => self.failures.push(format!("{name}: its thread panicked")),
            }
        }
    }

    /// Participants that ended with an error retrying could not fix (after
    /// [`Crowd::stop`]).
    pub fn failures(&self) -> Vec<String> {
        self.failures.clone()
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // Stop them; the threads end by themselves (not joined: a test that panics
        // should not wait for them).
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A raw HTTP answer: status, headers, body.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Raw {
    /// The body as JSON (`Value::Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Asserts an RFC 9457 problem with `status` and a `Retry-After` header.
    pub fn assert_retryable_problem(&self, status: u16) {
        assert_eq!(self.status, status, "answer: {:?}", self.json());
        let ct = self.headers.get("content-type").map(|v| v.as_bytes());
        assert_eq!(ct, Some(&b"application/problem+json"[..]), "{self:?}");
        let retry = self
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry.is_some_and(|s| s >= 1),
            "Retry-After missing: {self:?}"
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.contains("try again") || d.contains("again later")),
            "the problem says what to do: {p}"
        );
    }
}

/// A hand-driven participant: each call is one request, answers are raw.
pub struct Probe {
    base: String,
    key: SigningKey,
    http: Http,
    client: Client,
}

impl Probe {
    pub fn new(url: &str, seed: u8) -> Probe {
        Probe {
            base: url.to_owned(),
            key: key(seed),
            http: Http::new().with_timeout(Duration::from_secs(60)),
            client: Client::new(url, key(seed)),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    /// A signed `POST` of `body`, answered raw.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Raw {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("randomness");
        let now = lupus_coordinator::engine::now_ms();
        let h = lupus_api::sign::sign_request(&self.key, "POST", path, &body, now, nonce);
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(h.pairs());
        let a = self
            .http
            .send(
                "POST",
                &format!("{}{path}", self.base),
                &headers,
                body,
                None,
            )
            .await
            .expect("the coordinator answers within a minute");
        Raw {
            status: a.status,
            headers: a.headers,
            body: a.body,
        }
    }

    /// Joins as `role`.
    pub async fn join(&self, role: Role) -> Raw {
        let entry = Entry::signed(api::join_body(self.public_key(), role, "probe"), &self.key)
            .expect("a join entry");
        let req = api::JoinRequest {
            role,
            name: "probe".into(),
            signature: api::Sig(*entry.signature().expect("signed")),
        };
        self.post_raw(paths::JOIN, serde_json::to_vec(&req).expect("json"))
            .await
    }

    /// Joins as a worker and takes a task (waiting for one to be offered).
    pub async fn take_task(&self, limit: Duration) -> TaskDescription {
        assert_eq!(self.join(Role::Worker).await.status, 200);
        wait_for("a task is offered to the probe", limit, async || {
            let r = self.post_raw(paths::TASKS_NEXT, b"{}".to_vec()).await;
            match serde_json::from_slice::<TaskOffer>(&r.body).ok()? {
                TaskOffer::Task(t) => Some(t),
                TaskOffer::Wait { .. } => None,
            }
        })
        .await
    }

    /// Joins as a verifier and takes a verification job (waiting for one).
    pub async fn take_verification(&self, limit: Duration) -> VerifyJob {
        assert_eq!(self.join(Role::Verifier).await.status, 200);
        wait_for(
            "a verification is offered to the probe",
            limit,
            async || {
                let r = self.post_raw(paths::VERIFY_NEXT, b"{}".to_vec()).await;
                match serde_json::from_slice::<VerifyOffer>(&r.body).ok()? {
                    VerifyOffer::Job(j) => Some(j),
                    VerifyOffer::Wait { .. } => None,
                }
            },
        )
        .await
    }

    /// Trains `task` honestly and returns the body of its submission.
    pub async fn train(&self, task: &TaskDescription) -> Vec<u8> {
        let info: JobInfo = self.client.get(paths::JOB).await.expect("the job");
        let job = JobSpec::parse(&info.job_spec).expect("the job spec parses");
        let base = self.client.blob(&task.base_model).await.expect("the model");
        let base = lupus_api::model::decode_model(&base, &job).expect("the model decodes");
        let run = lupus_prover::task::run_task(&job, &corpus(), &base, task.seed.0, &mut |_, _| {})
            .expect("the task trains");
        let entry = Entry::signed(
            api::work_committed_body(task.task_id, self.public_key(), &run.commitment),
            &self.key,
        )
        .expect("a work entry");
        let sub = api::Submission {
            work_committed: B64(entry.encode()),
            delta: B64(run.delta.to_bytes()),
            final_opening: run.final_opening().expect("the final opening"),
            device_class: DeviceClass::Exact,
        };
        serde_json::to_vec(&sub).expect("json")
    }
}

/// Keeps every distinct signed checkpoint `/checkpoint` served while it runs.
pub struct CheckpointWatcher {
    seen: Arc<Mutex<Vec<(TreeSize, Hash, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckpointWatcher {
    /// Polls `url` every 20 ms, checking each checkpoint's signature with `log_key`
    /// (a checkpoint that does not verify fails the test when [`Self::seen`] is read).
    pub fn start(url: &str, log_key: &str) -> CheckpointWatcher {
        let seen: Arc<Mutex<Vec<(TreeSize, Hash, String)>>> = Arc::default();
        let reader = Client::new(url, key(250));
        let verifier = NoteVerifier::parse(log_key).expect("the log key parses");
        let out = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                if let Ok(b) = reader.get_bytes(paths::CHECKPOINT).await {
                    let note = String::from_utf8_lossy(&b).into_owned();
                    let cp = open_checkpoint(&note, &verifier)
                        .unwrap_or_else(|e| panic!("a served checkpoint does not verify: {e}"))
                        .checkpoint;
                    let mut seen = out.lock().expect("not poisoned");
                    if seen.last().is_none_or(|l| l.0 != cp.size || l.1 != cp.root) {
                        seen.push((cp.size, cp.root, note));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        CheckpointWatcher { seen, task }
    }

    /// The distinct checkpoints seen, in order: `(size, root, note)`.
    pub fn seen(&self) -> Vec<(TreeSize, Hash, String)> {
        assert!(!self.task.is_finished(), "the checkpoint watcher failed");
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for CheckpointWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The job info, waiting for the coordinator to answer.
pub async fn job_info(url: &str) -> JobInfo {
    let reader = Client::new(url, key(251));
    wait_for(
        "the coordinator answers /v1/job",
        Duration::from_secs(60),
        async || reader.get::<JobInfo>(paths::JOB).await.ok(),
    )
    .await
}

/// Waits until the coordinator at `url` has closed `rounds` rounds and written the
/// last round's shares epoch; panics after `limit` with the rounds it last saw.
pub async fn wait_finished(url: &str, rounds: u64, limit: Duration) -> RoundList {
    let reader = Client::new(url, key(252));
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(l) = reader.get::<RoundList>(paths::ROUNDS).await {
            let closed = l.rounds.len() as u64 == rounds
                && l.rounds.iter().all(|r| r.phase == RoundPhase::Closed);
            let epoch = reader
                .get::<api::StakeTable>(paths::STAKE)
                .await
                .ok()
                .and_then(|s| s.epoch);
            if closed && epoch == Some(rounds) {
                return l;
            }
            last = Some(l);
        }
        assert!(
            start.elapsed() < limit,
            "the run did not finish in {limit:?}; last rounds seen: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`check_run`] found.
pub struct RunCheck {
    pub report: AuditReport,
    /// Every entry of the final log, decoded.
    pub entries: Vec<Entry>,
}

/// The whole-run judgement, after the run finished:
/// 1. the log re-verifies from its tiles (signatures, tree, shares fold, credits);
/// 2. every checkpoint in `seen` is a prefix of the final tree: a consistency proof
///    from the coordinator verifies between its root and the final root;
/// 3. every acknowledged submission is the `WorkCommitted` entry at its receipt's
///    index, for its task, signed by the worker that sent it (the participant's
///    signature over that body is what it sent: same bytes).
pub async fn check_run(url: &str, seen: &[(TreeSize, Hash, String)], acks: &[Ack]) -> RunCheck {
    let reader = Client::new(url, key(253));
    let info = job_info(url).await;
    let report = reverify(&reader, &info.log_key)
        .await
        .unwrap_or_else(|e| panic!("the log re-verifies: {e}"));
    let final_size = TreeSize(report.size);
    let final_root = Hash(
        hex::decode(&report.root_hex)
            .expect("hex root")
            .try_into()
            .expect("32 bytes"),
    );
    for (size, root, _) in seen {
        assert!(
            *size <= final_size,
            "a checkpoint of size {size} was seen, the final log has {final_size}"
        );
        let proof: ConsistencyProof = reader
            .get(&format!(
                "{}?old={}&new={}",
                paths::PROOF_CONSISTENCY,
                size.0,
                final_size.0
            ))
            .await
            .unwrap_or_else(|e| panic!("a consistency proof from {size}: {e}"));
        assert_eq!((proof.old_size, proof.new_size), (*size, final_size));
        verify_consistency(&proof, root, &final_root).unwrap_or_else(|e| {
            panic!("the checkpoint of size {size} seen during the run is not consistent with the final one: {e}")
        });
    }
    let decoded = fetch_entries(url, report.size).await;
    for a in acks {
        let e = decoded.get(a.entry_index as usize).unwrap_or_else(|| {
            panic!("acknowledged entry {} is past the log's end", a.entry_index)
        });
        match e.body() {
            EntryBody::WorkCommitted { task, worker, .. } => {
                assert_eq!(
                    (task.0, *worker),
                    (a.task, a.worker),
                    "entry {}",
                    a.entry_index
                );
            }
            other => panic!(
                "acknowledged entry {} is a {:?}",
                a.entry_index,
                other.kind()
            ),
        }
        assert!(
            e.signature().is_some(),
            "entry {} carries the worker's signature",
            a.entry_index
        );
    }
    check_no_duplicates(&decoded);
    RunCheck {
        report,
        entries: decoded,
    }
}

/// A restarted coordinator redoes the step it crashed in; nothing may be recorded twice:
/// one `WorkCommitted` per task, one `RoundClosed` per round, one credit per
/// `(key, task, kind)`.
pub fn check_no_duplicates(entries: &[Entry]) {
    let mut work = std::collections::BTreeSet::new();
    let mut closed = std::collections::BTreeSet::new();
    let mut credits = std::collections::BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let fresh = match e.body() {
            EntryBody::WorkCommitted { task, .. } => work.insert(task.0),
            EntryBody::RoundClosed { round, .. } => closed.insert(round.0),
            EntryBody::Credit {
                key, task, kind, ..
            } => credits.insert((*key, task.0, format!("{kind:?}"))),
            _ => true,
        };
        assert!(fresh, "entry {i} ({:?}) repeats an earlier one", e.kind());
    }
}

/// Every entry of the published log, decoded from the tiles' entry bundles.
pub async fn fetch_entries(url: &str, size: u64) -> Vec<Entry> {
    let reader = Client::new(url, key(254));
    let mut out = Vec::with_capacity(size as usize);
    for bundle in lupus_ledger::tiles::entry_bundles_for_growth(TreeSize(0), TreeSize(size)) {
        let data = reader
            .get_bytes(&format!("/{}", bundle.path()))
            .await
            .unwrap_or_else(|e| panic!("entry bundle {}: {e}", bundle.path()));
        for raw in lupus_ledger::tiles::decode_entry_bundle(&data).expect("a bundle") {
            out.push(Entry::decode(&raw).expect("an entry"));
        }
    }
    out
}

/// No temporary blob file is left in `<data_dir>/blobs`, and every model blob the log
/// names (round bases, round results) is there and hashes to its name.
pub fn check_blob_dir(data_dir: &Path, entries: &[Entry]) {
    let dir = data_dir.join("blobs");
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .expect("the blob directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial blob files left: {leftovers:?}"
    );
    let store = lupus_coordinator::blobs::BlobStore::open(&dir).expect("the blob store");
    for e in entries {
        let named = match e.body() {
            EntryBody::RoundOpened { base_model, .. } => Some(*base_model),
            EntryBody::RoundClosed { new_model, .. } => Some(*new_model),
            _ => None,
        };
        if let Some(hash) = named {
            assert!(
                store.get(&hash).expect("a readable blob").is_some(),
                "the log names model {hash} but the blob store does not have it"
            );
        }
    }
}
