//! The coordinator engine: rounds, tasks, challenges, verdicts, aggregation.
//!
//! DESIGN.md ("The loop"). Every decision is a ledger entry before anything depends on
//! it ([`crate::state`]): a task is `TaskAssigned` before it is handed out; the
//! commitment is `WorkCommitted` before its challenge is derived as
//! `challenge_steps(r, trace_root, H, m)` with the round's beacon `r` still secret; a
//! verifier's work is `ChallengeIssued` before it sees the opening; the round closes with
//! the credits, `RoundClosed` (beacon revealed, new model, validation loss) and a
//! `SharesEpoch`, appended with the next `RoundOpened` as one atomic group.
//!
//! The close runs on the server's ticker, off the request path, and holds the state
//! lock only to take a snapshot and, later, to append and swap: the merge, the outer
//! step, the validation loss and the model blob are computed without it (see
//! [`Coordinator::tick`] and docs/DESIGN.md, "A round close runs off the request path").
//!
//! Trust: a verifier's rejection never slashes by itself. The coordinator settles every
//! rejection and every disagreement by checking the fraud proof or replaying the
//! challenged steps itself, as a *referee* key that joins at genesis and signs its own
//! verdicts; whoever the replay contradicts (the worker, or a lying verifier) is slashed.
//! A fraction of tasks (`verify.double_check_fraction`, drawn by `PRF(r, trace_root)`, so
//! nobody knows which until the beacon is revealed) needs two verifiers' acceptance;
//! when only one verifier is around, the referee is the second.
//!
//! Deadlines: a task not submitted by its deadline expires and its slot is handed out
//! again; a verifier that does not answer in time loses its claim; a round closes when
//! its target of accepted tasks is reached or its deadline passes, so no absent
//! participant blocks a round.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use lupus_api::check::{check_opening, check_submission, check_verdict};
use lupus_api::model::{decode_model, encode_model};
use lupus_api::types::{
    self as api, Challenge, JobInfo, RoundPhase, RoundStatus, StakeRow, StakeTable,
    TaskDescription, TaskOffer, VerdictOutcome, VerifyJob, VerifyOffer, ledger_digest,
    prover_digest,
};
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::hash::{LeafIndex, TreeSize};
use lupus_ledger::log::Log;
use lupus_ledger::note::{NoteSigner, add_signature, parse_note};
use lupus_ledger::stake::{StakeStatement, build_statement};
use lupus_ledger::store::{LogStore, open_store, postgres::PostgresStore};
use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::data::Corpus;
use lupus_prover::fraud::{FraudContext, FraudProof, FraudVerdict};
use lupus_prover::graph::eval_loss;
use lupus_prover::model::{init_params, make_batch};
use lupus_prover::optim::{merge_deltas, outer_step};
use lupus_prover::prf::{derive_task_seed, prf};
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{Opening, job_sampler};
use lupus_prover::tensor::Tensor;
use lupus_prover::trace::{Commitment, base_state_hash};
use lupus_prover::verify::{DeviceClass, Verdict, verify_opening};
use tokio::sync::{Mutex, MutexGuard};

use crate::blobs::BlobStore;
use crate::error::{ApiError, blob_error, internal, log_error, store_error};
use crate::metrics::Metrics;
use crate::state::{CreditKindKey, State, TaskRecord};

/// The coordinator's crash points for the fault tests, armed with
/// `LUPUS_FAILPOINT=<name>[@<n>]` (see [`lupus_ledger::store::failpoint`], which also
/// has the storage layer's points).
pub mod failpoints {
    pub use lupus_ledger::store::failpoint::{LOG_AFTER_COMMIT, STORE_BEFORE_COMMIT, hit};
    /// A submission's `WorkCommitted` is durable; its receipt is not sent.
    pub const SUBMIT_AFTER_APPEND: &str = "submit-after-append";
    /// Round close: the merge, the outer step and the validation loss are computed,
    /// nothing is stored.
    pub const CLOSE_AFTER_MERGE: &str = "close-after-merge";
    /// Round close: the new model's blob is written, the log does not name it yet.
    pub const CLOSE_AFTER_MODEL_BLOB: &str = "close-after-model-blob";
    /// Round close: the close's one group (credits, `RoundClosed`, the shares epoch,
    /// the next `RoundOpened`) is durable; nothing after it (the ticker's next close,
    /// the answers to requests that waited on it) has happened.
    pub const CLOSE_AFTER_CREDITS: &str = "close-after-credits";
    /// The referee's verdict is appended, the slashes it calls for are not.
    pub const REFEREE_AFTER_VERDICT: &str = "referee-after-verdict";
}

/// The state refused an entry the log holds: they no longer agree.
fn disagree(e: crate::state::StateError) -> ApiError {
    ApiError::Internal(format!("the log and the state disagree: {e}"))
}

/// The live tasks with at least one logged verdict and no outcome yet: waiting for a
/// second verdict or for the referee.
fn awaiting_outcome(inner: &Inner) -> impl Iterator<Item = (TaskId, &Live)> {
    inner.live.iter().filter_map(|(id, l)| {
        let has_verdict = inner
            .state
            .tasks
            .get(id)
            .is_some_and(|t| !t.verdicts.is_empty());
        (l.outcome.is_none() && has_verdict).then_some((*id, l))
    })
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// After the store failed, requests that would need it are refused at once for this
/// long (see `Coordinator::lock_synced`).
const STORE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How the coordinator runs a job.
#[derive(Clone, Debug)]
pub struct Config {
    /// Keys, blobs and (by default) the SQLite ledger live here.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; `None` is SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Postgres schema (tests use one per run); `None` is the ledger's default.
    pub postgres_schema: Option<String>,
    /// The job spec, TOML.
    pub job_spec: String,
    /// Accepted tasks a round waits for before it closes.
    pub tasks_per_round: u32,
    /// Rounds to run; `None` runs until stopped.
    pub max_rounds: Option<u64>,
    pub round_timeout: Duration,
    pub task_timeout: Duration,
    pub verify_timeout: Duration,
    /// Validation windows for the per-round loss.
    pub val_windows: usize,
}

/// A task's coordinator-side facts that are not ledger entries (rebuilt on restart from
/// the store's metadata and the blob store).
#[derive(Clone, Debug, Default)]
struct Live {
    deadline_ms: u64,
    expired: bool,
    class: Option<DeviceClass>,
    delta_blob: Option<Digest>,
    opening_blob: Option<Digest>,
    steps: Option<Vec<u32>>,
    needed: usize,
    /// `Some(true)` accepted, `Some(false)` rejected (worker slashed).
    outcome: Option<bool>,
    /// Verifiers holding a claim on the task, with their deadline.
    claims: BTreeMap<PublicKey, u64>,
    /// When the first verdict left the task waiting for a second verifier; past the
    /// verify timeout the referee is the second.
    waiting_since: Option<u64>,
}

struct Inner {
    state: State,
    /// The open round's secret beacon.
    beacon: Option<(Round, [u8; 32])>,
    /// The open round's base model (or, when every round is done, the final model).
    model: Arc<Vec<Tensor>>,
    momentum: Vec<Tensor>,
    live: BTreeMap<TaskId, Live>,
    /// The round whose close is computing outside the lock (see [`CloseSnapshot`]).
    closing: Option<Round>,
    /// Counts rebuilds of the state from the store (after a failed write): a close
    /// computed from an older generation's snapshot is dropped and taken again.
    generation: u64,
}

impl Inner {
    fn new(state: State) -> Inner {
        Inner {
            state,
            beacon: None,
            model: Arc::new(Vec::new()),
            momentum: Vec::new(),
            live: BTreeMap::new(),
            closing: None,
            generation: 0,
        }
    }
}

/// What a round close computes from, taken under the state lock in one go. The tasks
/// it merges and the credits it grants are fixed here: work that settles while the
/// close computes belongs to no merge, as work that settles after a close always did.
struct CloseSnapshot {
    round: Round,
    /// The state's generation the snapshot was taken from.
    generation: u64,
    beacon: [u8; 32],
    /// The delta blobs of the accepted tasks, in task order.
    deltas: Vec<Digest>,
    /// The workers of those tasks.
    merged_workers: Vec<PublicKey>,
    credits: Vec<(PublicKey, u64, TaskId, CreditKind)>,
    params: Arc<Vec<Tensor>>,
    momentum: Vec<Tensor>,
}

/// What a close computed outside the lock. Its blobs and metadata are durable
/// before any entry refers to them.
struct CloseOutcome {
    new_params: Vec<Tensor>,
    momentum: Vec<Tensor>,
    val_loss: f32,
    new_model: Digest,
    /// The next round and its secret beacon (already in the metadata); `None` after
    /// the last round.
    next: Option<(Round, [u8; 32])>,
}

/// The coordinator. Cheap to share behind an `Arc`.
pub struct Coordinator {
    log: Log,
    store: Arc<dyn LogStore>,
    blobs: BlobStore,
    job: Arc<JobSpec>,
    corpus: Arc<Corpus>,
    dataset_blob: Digest,
    config: Config,
    referee: SigningKey,
    inner: Mutex<Inner>,
    nonces: std::sync::Mutex<HashMap<(PublicKey, [u8; 16]), u64>>,
    /// The latest verified cosignature of each configured witness (by its slot).
    cosignatures: std::sync::Mutex<BTreeMap<usize, crate::witness::Cosigned>>,
    /// Wakes the server's ticker when a request finds the open round due to close.
    close_wanted: tokio::sync::Notify,
    /// An append failed and the state may lack entries that landed anyway.
    behind: std::sync::atomic::AtomicBool,
    /// When the store last failed (see [`Coordinator::lock_synced`]).
    store_failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Counters and latencies for `/metrics`.
    pub metrics: Metrics,
}

/// Errors of starting a coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("the job spec is invalid: {0}")]
    Spec(String),
    #[error("storage: {0}")]
    Store(String),
    #[error("key file {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("the ledger cannot be replayed: {0}")]
    Replay(String),
    #[error(
        "the ledger in this data directory holds a different job ({found}); use another --data-dir or the job it was started with"
    )]
    OtherJob { found: String },
    #[error("{0}")]
    Other(String),
}

fn start_err(e: impl std::fmt::Display) -> StartError {
    StartError::Other(e.to_string())
}

/// Loads a 32-byte secret (64 hex digits) from `path`, creating it on first use.
pub fn load_or_create_secret(path: &std::path::Path) -> Result<[u8; 32], StartError> {
    let key_err = |problem: String| StartError::Key {
        path: path.to_owned(),
        problem,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out)
            .map_err(|e| key_err(format!("expected 64 hex digits: {e}")))?;
        return Ok(out);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| key_err(e.to_string()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| key_err(e.to_string()))?;
    }
    write_private(path, &format!("{}\n", hex::encode(secret)))
        .map_err(|e| key_err(e.to_string()))?;
    Ok(secret)
}

/// Writes a file readable by its owner only (where the platform has modes).
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn meta_key(kind: &str, id: u64) -> String {
    format!("{kind}/{id}")
}

fn class_byte(c: DeviceClass) -> u8 {
    match c {
        DeviceClass::Exact => 0,
        DeviceClass::Tolerant => 1,
    }
}

/// Whether a task is double-checked: `PRF(r, "lupus double check v1", trace_root)` as a
/// fraction below the job's `double_check_fraction`.
fn double_checked(beacon: &[u8; 32], trace_root: &Digest, fraction: f64) -> bool {
    let x = prf(beacon, "lupus double check v1", &trace_root.0);
    let u = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
    (u as f64) / (u64::MAX as f64) < fraction
}

/// Refuses a delta that no honest run could have produced: some tensor moved further
/// than `H` AdamW steps can move it from the base (`AdamW::max_displacement`, with a
/// margin for rounding and int8 quantisation). Such a delta is a cheat whatever its
/// trace says, and merging it unchecked would let one worker drag the model as far as
/// the merge's norm clip allows (the zoo's huge-norm delta).
fn check_delta_bound(job: &JobSpec, base: &[Tensor], q: &QuantDelta) -> Result<(), ApiError> {
    let opt = job.inner.adamw();
    for (i, (qt, b)) in q.tensors.iter().zip(base).enumerate() {
        let start = b.data().iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let limit = 1.25 * opt.max_displacement(job.inner.steps, start) + 1e-6;
        let peak = f64::from(qt.scale)
            * f64::from(
                qt.values
                    .iter()
                    .map(|v| v.unsigned_abs())
                    .max()
                    .unwrap_or(0),
            );
        if peak > limit {
            return Err(ApiError::Unprocessable(format!(
                "delta tensor {i} moves a parameter by {peak:e}, more than {} AdamW steps can ({limit:e}): no honest run gives this delta",
                job.inner.steps
            )));
        }
    }
    Ok(())
}

/// Folds the log's first `size` entries (all published) into a fresh state.
async fn replay(log: &Log, size: u64) -> Result<State, StartError> {
    let mut state = State::default();
    let mut start = 0;
    while start < size {
        let end = (start + 1024).min(size);
        let entries = log
            .entries(LeafIndex(start), LeafIndex(end))
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        for (i, bytes) in entries.iter().enumerate() {
            let index = start + i as u64;
            let entry = Entry::decode(bytes)
                .map_err(|e| StartError::Replay(format!("entry {index}: {e}")))?;
            state
                .apply(index, &entry)
                .map_err(|e| StartError::Replay(e.to_string()))?;
        }
        start = end;
    }
    Ok(state)
}

impl Coordinator {
    /// Opens (or creates) the coordinator's ledger and blobs in `config.data_dir`,
    /// replays the ledger and resumes the round it was in.
    pub async fn open(config: Config, corpus: Corpus) -> Result<Arc<Coordinator>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(start_err)?;
        let url = config.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                config.data_dir.join("ledger.sqlite3").display()
            )
        });
        let store: Arc<dyn LogStore> = match &config.postgres_schema {
            Some(schema) if url.starts_with("postgres") => Arc::new(
                PostgresStore::open(&url, schema)
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            ),
            _ => open_store(&url)
                .await
                .map_err(|e| StartError::Store(e.to_string()))?,
        };
        Self::open_with_store(config, corpus, store).await
    }

    /// [`Coordinator::open`] over a store the caller opened (`config.database_url` is
    /// not used): tests wrap one in `lupus_ledger::store::fault::FaultyStore`.
    pub async fn open_with_store(
        config: Config,
        corpus: Corpus,
        store: Arc<dyn LogStore>,
    ) -> Result<Arc<Coordinator>, StartError> {
        let job = JobSpec::parse(&config.job_spec).map_err(|e| StartError::Spec(e.to_string()))?;
        std::fs::create_dir_all(&config.data_dir).map_err(start_err)?;
        let blobs = BlobStore::open(config.data_dir.join("blobs")).map_err(start_err)?;
        let dataset_blob = blobs.put(corpus.bytes()).map_err(start_err)?;
        let log_secret = load_or_create_secret(&config.data_dir.join("log.key"))?;
        let origin = format!("lupus.local/{}", job.job.name);
        let signer = NoteSigner::from_secret(&origin, log_secret).map_err(start_err)?;
        let referee = SigningKey::from_bytes(&load_or_create_secret(
            &config.data_dir.join("referee.key"),
        )?);
        let log = Log::open(Arc::clone(&store), signer)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;

        let state = replay(&log, log.head().size.0).await?;
        if let Some(g) = &state.genesis
            && g.job_hash != ledger_digest(&job.hash())
        {
            return Err(StartError::OtherJob {
                found: format!("job hash {}", g.job_hash),
            });
        }

        let coordinator = Arc::new(Coordinator {
            log,
            store,
            blobs,
            job: Arc::new(job),
            corpus: Arc::new(corpus),
            dataset_blob,
            config,
            referee,
            inner: Mutex::new(Inner::new(state)),
            nonces: std::sync::Mutex::new(HashMap::new()),
            cosignatures: std::sync::Mutex::new(BTreeMap::new()),
            close_wanted: tokio::sync::Notify::new(),
            behind: std::sync::atomic::AtomicBool::new(false),
            store_failed_at: std::sync::Mutex::new(None),
            metrics: Metrics::default(),
        });
        coordinator
            .resume()
            .await
            .map_err(|e| StartError::Other(e.to_string()))?;
        Ok(coordinator)
    }

    /// The log (for the read API).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The job.
    pub fn job(&self) -> &JobSpec {
        &self.job
    }

    /// The corpus.
    pub fn corpus(&self) -> &Arc<Corpus> {
        &self.corpus
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The referee's key (a verifier that joins at genesis).
    pub fn referee_key(&self) -> PublicKey {
        PublicKey::from(&self.referee)
    }

    /// Refuses a `(key, nonce)` pair seen before; forgets pairs older than twice the skew.
    pub fn check_nonce(&self, key: PublicKey, nonce: [u8; 16], now: u64) -> Result<(), ApiError> {
        let mut seen = self
            .nonces
            .lock()
            .map_err(|_| ApiError::Internal("nonce cache poisoned".into()))?;
        if seen.len() > 100_000 {
            let horizon = now.saturating_sub(2 * lupus_api::sign::MAX_SKEW_MS);
            seen.retain(|_, t| *t >= horizon);
        }
        if seen.insert((key, nonce), now).is_some() {
            return Err(ApiError::Conflict(
                lupus_api::sign::AuthError::Replayed.to_string(),
            ));
        }
        Ok(())
    }

    async fn append(&self, inner: &mut Inner, entry: Entry) -> Result<u64, ApiError> {
        self.sequence(inner, std::slice::from_ref(&entry)).await
    }

    /// Applies `entries` to the state at the next indexes, then sequences them in the
    /// log as one group (one batch, all durable or none); returns the first index.
    /// Nothing waits for the disk here: the request waits in [`Self::release`], after
    /// letting the lock go, so concurrent requests share one commit.
    ///
    /// The state is never behind the log: an entry the state refuses is never
    /// sequenced. If the log refuses or later loses what was sequenced, the state is
    /// ahead of the log; it is marked behind and rebuilt from the store before the
    /// next request ([`Self::lock_synced`]).
    async fn sequence(&self, inner: &mut Inner, entries: &[Entry]) -> Result<u64, ApiError> {
        let first = inner.state.size;
        for (index, entry) in (first..).zip(entries) {
            if let Err(e) = inner.state.apply(index, entry) {
                // The fold may have taken part of the entry: rebuild before going on.
                self.behind.store(true, Ordering::SeqCst);
                return Err(disagree(e));
            }
        }
        let bytes = entries.iter().map(Entry::encode).collect();
        match self.log.sequence(bytes).await {
            // Its durability is awaited by the request's barrier, in `release`.
            Ok(sequenced) if sequenced.first.0 == first => Ok(first),
            Ok(sequenced) => {
                self.append_failed();
                Err(ApiError::Internal(format!(
                    "the log numbered entry {first} as {}; the state is rebuilt from the log",
                    sequenced.first.0
                )))
            }
            Err(e) => {
                self.append_failed();
                Err(log_error(e))
            }
        }
    }

    /// Lets the state lock go and answers `out` once everything the request saw is
    /// durable: a barrier queued behind the entries sequenced so far (the request's
    /// own and any other it read) is awaited after the lock is released. Every
    /// request that reads or changes the state ends here, so nothing is acknowledged
    /// or shown before it is durable.
    async fn release<R>(&self, guard: MutexGuard<'_, Inner>, out: R) -> Result<R, ApiError> {
        let seen = guard.state.size;
        if self.log.head().size.0 >= seen {
            return Ok(out);
        }
        let barrier = self.log.barrier().await;
        drop(guard);
        self.check_durable(barrier, seen).await?;
        Ok(out)
    }

    /// Waits, holding the lock, until everything sequenced so far is durable.
    async fn durable_now(&self, inner: &Inner) -> Result<(), ApiError> {
        let seen = inner.state.size;
        self.check_durable(self.log.barrier().await, seen).await
    }

    /// Awaits `barrier`; an error unless the store then holds `seen` entries.
    async fn check_durable(
        &self,
        barrier: Result<lupus_ledger::log::Barrier, lupus_ledger::log::LogError>,
        seen: u64,
    ) -> Result<(), ApiError> {
        let durable = match barrier {
            Ok(b) => b.durable().await,
            Err(e) => Err(e),
        };
        match durable {
            Ok(size) if size.0 >= seen => Ok(()),
            Ok(size) => {
                self.append_failed();
                Err(ApiError::Unavailable(format!(
                    "a write to the ledger failed and entries {}..{seen} were lost; nothing of this request is acknowledged, try again",
                    size.0
                )))
            }
            Err(e) => {
                self.append_failed();
                Err(log_error(e))
            }
        }
    }

    /// After a failed write: the state holds entries the log may not (sequenced on top
    /// of the failed batch), or lacks entries the log does (a commit that landed
    /// although it reported a failure). Until the state has caught up with the store,
    /// a request would be checked against the wrong state, so it is marked behind,
    /// and the next [`Self::lock_synced`] rebuilds it.
    fn append_failed(&self) {
        self.behind.store(true, Ordering::SeqCst);
        self.note_store_failure();
    }

    fn note_store_failure(&self) {
        if let Ok(mut t) = self.store_failed_at.lock() {
            *t = Some(std::time::Instant::now());
        }
    }

    /// The state lock, with the state caught up with the store if an append failed
    /// since the last catch-up. Every request that may append takes this one.
    ///
    /// While the store is down, each attempt to reach it holds the lock for the pool's
    /// timeout; so within [`STORE_RETRY_PAUSE`] of a failure, requests are refused at
    /// once (503) instead of queueing behind each other's timeouts.
    async fn lock_synced(&self) -> Result<tokio::sync::MutexGuard<'_, Inner>, ApiError> {
        let mut guard = self.inner.lock().await;
        if self.behind.load(Ordering::SeqCst) {
            let recent = self
                .store_failed_at
                .lock()
                .ok()
                .and_then(|t| *t)
                .is_some_and(|t| t.elapsed() < STORE_RETRY_PAUSE);
            if recent {
                return Err(ApiError::Unavailable(
                    "the ledger database was unreachable a moment ago, nothing was written; try again"
                        .into(),
                ));
            }
            if let Err(e) = self.catch_up_with_store(&mut guard).await {
                self.note_store_failure();
                return Err(e);
            }
        }
        Ok(guard)
    }

    /// Brings the state back to the log after a failed write: syncs the log (which
    /// waits for every queued batch and numbers new entries from the store's size
    /// again), then rebuilds the state from the store if it holds entries the store
    /// does not, or applies what landed past it.
    async fn catch_up_with_store(&self, inner: &mut Inner) -> Result<(), ApiError> {
        if !self.behind.load(Ordering::SeqCst) {
            return Ok(());
        }
        let size = self.log.sync().await.map_err(log_error)?.0;
        if size < inner.state.size {
            tracing::warn!(
                stored = size,
                sequenced = inner.state.size,
                "entries sequenced after a failed write were not stored; rebuilding the state from the log"
            );
            self.rebuild(inner, size).await?;
        } else {
            self.apply_landed(inner, size).await?;
        }
        self.behind.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Replaces the state with the log's first `size` entries and rebuilds what the
    /// log does not hold, as a restart does.
    async fn rebuild(&self, inner: &mut Inner, size: u64) -> Result<(), ApiError> {
        let state = replay(&self.log, size).await.map_err(internal)?;
        let mut fresh = Inner::new(state);
        fresh.generation = inner.generation + 1;
        // A close computing outside the lock finds the new generation and starts over.
        fresh.closing = inner.closing;
        *inner = fresh;
        self.resume_in(inner).await
    }

    /// Applies to the state the durable entries from its size up to `end`: entries
    /// written around this coordinator's sequencing. The one place the state catches
    /// up with the store.
    async fn apply_landed(&self, inner: &mut Inner, end: u64) -> Result<(), ApiError> {
        while inner.state.size < end {
            let start = inner.state.size;
            let missed = self
                .store
                .read_entries(LeafIndex(start), LeafIndex((start + 1024).min(end)))
                .await
                .map_err(store_error)?;
            if missed.is_empty() {
                return Err(ApiError::Internal(format!(
                    "the store holds no entry {start} although its size is {end}"
                )));
            }
            for bytes in missed {
                let at = inner.state.size;
                let e = Entry::decode(&bytes).map_err(internal)?;
                tracing::warn!(
                    index = at,
                    kind = e.kind().name(),
                    "an append reported as failed had landed; applying it"
                );
                inner.state.apply(at, &e).map_err(disagree)?;
            }
        }
        Ok(())
    }

    async fn append_body(&self, inner: &mut Inner, body: EntryBody) -> Result<u64, ApiError> {
        let entry = Entry::unsigned(body).map_err(internal)?;
        self.append(inner, entry).await
    }

    fn load_model(&self, hash: &Digest) -> Result<Vec<Tensor>, ApiError> {
        let bytes = self
            .blobs
            .get(hash)
            .map_err(internal)?
            .ok_or_else(|| ApiError::Internal(format!("model blob {hash} is missing")))?;
        decode_model(&bytes, &self.job).map_err(internal)
    }

    async fn task_meta_blob(&self, kind: &str, task: TaskId) -> Result<Option<Vec<u8>>, ApiError> {
        self.store
            .get_meta(&meta_key(kind, task.0))
            .await
            .map_err(store_error)
    }

    /// Rebuilds what the ledger does not hold and finishes an interrupted round close.
    async fn resume(&self) -> Result<(), ApiError> {
        let mut guard = self.inner.lock().await;
        self.resume_in(&mut guard).await?;
        self.release(guard, ()).await
    }

    async fn resume_in(&self, inner: &mut Inner) -> Result<(), ApiError> {
        if inner.state.genesis.is_none() {
            self.genesis(inner).await?;
        }
        if !inner.state.participants.contains_key(&self.referee_key()) {
            let body = api::join_body(self.referee_key(), Role::Verifier, "coordinator-referee");
            let entry = Entry::signed(body, &self.referee).map_err(internal)?;
            self.append(inner, entry).await?;
        }
        // Momentum and model from the last closed round.
        let last_closed = inner
            .state
            .rounds
            .values()
            .rev()
            .find(|r| r.closed.is_some())
            .map(|r| (r.round, r.closed.map(|c| c.new_model)));
        if let Some((round, Some(model))) = last_closed {
            if let Some(m) = self
                .store
                .get_meta(&meta_key("momentum", round.0))
                .await
                .map_err(store_error)?
            {
                let hash = Digest(m.as_slice().try_into().map_err(internal)?);
                inner.momentum = self.load_model(&hash)?;
            }
            inner.model = Arc::new(self.load_model(&model)?);
        }
        if inner.state.latest_round().is_none() {
            self.open_next_round(inner).await?;
        } else if let Some(round) = inner.state.latest_round().cloned() {
            if round.closed.is_some() {
                if !round.epoch_written {
                    self.write_epoch(inner, round.round).await?;
                }
                self.open_next_round(inner).await?;
            } else {
                let beacon = self
                    .store
                    .get_meta(&meta_key("beacon", round.round.0))
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| ApiError::Internal("the open round's beacon is lost".into()))?;
                let beacon: [u8; 32] = beacon.as_slice().try_into().map_err(internal)?;
                inner.beacon = Some((round.round, beacon));
                inner.model = Arc::new(self.load_model(&round.base_model)?);
                self.rebuild_live(inner, round.round).await?;
            }
        }
        Ok(())
    }

    async fn rebuild_live(&self, inner: &mut Inner, round: Round) -> Result<(), ApiError> {
        let now = now_ms();
        let beacon = inner.beacon.map(|b| b.1);
        let tasks: Vec<TaskRecord> = inner
            .state
            .tasks
            .values()
            .filter(|t| t.round == round)
            .cloned()
            .collect();
        for t in tasks {
            let mut live = Live {
                deadline_ms: now + self.config.task_timeout.as_millis() as u64,
                needed: 1,
                ..Live::default()
            };
            if let (Some(c), Some(r)) = (t.committed, beacon) {
                live.steps = Some(self.challenge_for(&r, &c.trace_root)?);
                live.needed = 1 + usize::from(double_checked(
                    &r,
                    &c.trace_root,
                    self.job.verify.double_check_fraction,
                ));
                if let Some(m) = self.task_meta_blob("delta", t.id).await?
                    && m.len() == 33
                {
                    live.delta_blob = Some(Digest(m[..32].try_into().map_err(internal)?));
                    live.class = Some(if m[32] == 1 {
                        DeviceClass::Tolerant
                    } else {
                        DeviceClass::Exact
                    });
                }
                if let Some(m) = self.task_meta_blob("opening", t.id).await? {
                    live.opening_blob = Some(Digest(m.as_slice().try_into().map_err(internal)?));
                }
            }
            live.outcome = self.ledger_outcome(&inner.state, &t, live.needed);
            inner.live.insert(t.id, live);
        }
        // Settle verdicts that arrived before the crash but were not resolved.
        let unresolved: Vec<TaskId> = awaiting_outcome(inner).map(|(id, _)| id).collect();
        for id in unresolved {
            self.resolve(inner, id).await?;
        }
        // Slashes a crash cut off after the referee's verdict.
        let ids: Vec<TaskId> = inner.live.keys().copied().collect();
        for id in ids {
            self.slash_contradicted(inner, id).await?;
        }
        Ok(())
    }

    /// A task's outcome as the ledger fixes it, if it does.
    fn ledger_outcome(&self, state: &State, t: &TaskRecord, needed: usize) -> Option<bool> {
        if t.worker_slashed {
            return Some(false);
        }
        let referee = self.referee_key();
        if let Some(v) = t.verdicts.iter().find(|v| v.verifier == referee) {
            return Some(v.accepted);
        }
        let standing: Vec<_> = t
            .verdicts
            .iter()
            .filter(|v| !state.slashed.contains(&v.verifier))
            .collect();
        let accepts = standing.iter().filter(|v| v.accepted).count();
        if standing.iter().all(|v| v.accepted) && accepts >= needed {
            return Some(true);
        }
        None
    }

    fn challenge_for(&self, beacon: &[u8; 32], trace_root: &Digest) -> Result<Vec<u32>, ApiError> {
        challenge_steps(
            beacon,
            &prover_digest(trace_root),
            self.job.inner.steps,
            self.job.verify.challenges,
        )
        .map_err(internal)
    }

    async fn genesis(&self, inner: &mut Inner) -> Result<(), ApiError> {
        let dataset = self
            .corpus
            .commitment(self.job.dataset.chunk_size)
            .map_err(internal)?;
        let verifier = self.log.verifier();
        let body = EntryBody::Genesis {
            job_spec: self.config.job_spec.clone(),
            job_hash: ledger_digest(&self.job.hash()),
            dataset_root: ledger_digest(&dataset.root),
            log_key: PublicKey::from(verifier.public_key()),
            coordinator_note_key: self.note_key(),
            created_ms: now_ms(),
        };
        self.append_body(inner, body).await?;
        let params = init_params(&self.job.model, self.job.hash().0).map_err(internal)?;
        self.blobs.put(&encode_model(&params)).map_err(blob_error)?;
        inner.model = Arc::new(params);
        Ok(())
    }

    /// The log's verifier key, `<name>+<hexid>+<base64>`.
    pub fn note_key(&self) -> String {
        self.log.verifier().to_string()
    }

    /// Keeps witness `slot`'s latest verified cosignature.
    pub fn record_cosignature(&self, slot: usize, cosigned: crate::witness::Cosigned) {
        if let Ok(mut map) = self.cosignatures.lock() {
            map.insert(slot, cosigned);
        }
    }

    /// The latest signed checkpoint with the witnesses' cosignatures over exactly that
    /// checkpoint appended (`GET /checkpoint`).
    pub fn cosigned_checkpoint(&self) -> String {
        let note = self.log.checkpoint();
        let Ok(text) = parse_note(note.as_bytes()).map(|p| p.text) else {
            return note;
        };
        let Ok(map) = self.cosignatures.lock() else {
            return note;
        };
        map.values()
            .filter(|c| c.text == text)
            .fold(note, |n, c| add_signature(&n, &c.signature).unwrap_or(n))
    }

    async fn open_next_round(&self, inner: &mut Inner) -> Result<(), ApiError> {
        let next = inner.state.latest_round().map_or(1, |r| r.round.0 + 1);
        if self.config.max_rounds.is_some_and(|max| next > max) {
            return Ok(());
        }
        let mut beacon = [0u8; 32];
        getrandom::fill(&mut beacon).map_err(internal)?;
        self.store
            .put_meta(&meta_key("beacon", next), &beacon)
            .await
            .map_err(store_error)?;
        let model_bytes = encode_model(&inner.model);
        let base_model = self.blobs.put(&model_bytes).map_err(blob_error)?;
        let body = EntryBody::RoundOpened {
            round: Round(next),
            base_model,
            beacon_commitment: ledger_digest(&beacon_commitment(&beacon)),
            inner_steps: self.job.inner.steps,
            deadline_ms: now_ms() + self.config.round_timeout.as_millis() as u64,
        };
        self.append_body(inner, body).await?;
        inner.beacon = Some((Round(next), beacon));
        inner.live.clear();
        tracing::info!(round = next, model = %base_model, "round opened");
        Ok(())
    }

    // ----- participants -----

    /// `POST /v1/join`.
    pub async fn join(
        &self,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.join_in(&mut guard, key, req).await?;
        self.release(guard, out).await
    }

    async fn join_in(
        &self,
        inner: &mut Inner,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, ApiError> {
        if let Some(role) = inner.state.participants.get(&key)
            && *role != req.role
        {
            return Err(ApiError::Conflict(format!(
                "this key already joined as a {role:?}; use one key per role"
            )));
        }
        let body = api::join_body(key, req.role, &req.name);
        let entry = Entry::with_signature(body, req.signature.0)
            .map_err(|e| ApiError::BadRequest(format!("join entry refused: {e}")))?;
        if inner.state.participants.contains_key(&key) {
            return Ok(api::JoinResponse {
                key,
                role: req.role,
                entry_index: 0,
            });
        }
        let index = self.append(inner, entry).await?;
        Ok(api::JoinResponse {
            key,
            role: req.role,
            entry_index: index,
        })
    }

    fn require_role(state: &State, key: &PublicKey, role: Role) -> Result<(), ApiError> {
        if state.slashed.contains(key) {
            return Err(ApiError::Forbidden(
                "this key was slashed for fraud and may not take part any more".into(),
            ));
        }
        match state.participants.get(key) {
            Some(r) if *r == role => Ok(()),
            Some(r) => Err(ApiError::Forbidden(format!(
                "this key joined as a {r:?}, not a {role:?}"
            ))),
            None => Err(ApiError::Forbidden(format!(
                "this key has not joined; POST {} first",
                lupus_api::paths::JOIN
            ))),
        }
    }

    fn describe(&self, inner: &Inner, t: &TaskRecord) -> Result<TaskDescription, ApiError> {
        let round = inner
            .state
            .rounds
            .get(&t.round)
            .ok_or_else(|| ApiError::Internal("task of an unknown round".into()))?;
        let live = inner.live.get(&t.id);
        Ok(TaskDescription {
            task_id: t.id,
            round: t.round,
            worker: t.worker,
            base_model: round.base_model,
            seed: t.seed,
            inner_steps: t.inner_steps,
            batch_size: t.batch_size,
            job_hash: ledger_digest(&self.job.hash()),
            beacon_commitment: round.beacon_commitment,
            deadline_ms: live.map_or(round.deadline_ms, |l| l.deadline_ms),
            entry_index: t.index,
        })
    }

    fn wait(reason: &str) -> TaskOffer {
        TaskOffer::Wait {
            retry_after_ms: 250,
            reason: reason.into(),
        }
    }

    /// `POST /v1/tasks/next`.
    pub async fn next_task(&self, worker: PublicKey) -> Result<TaskOffer, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.next_task_in(&mut guard, worker).await?;
        self.release(guard, out).await
    }

    async fn next_task_in(
        &self,
        inner: &mut Inner,
        worker: PublicKey,
    ) -> Result<TaskOffer, ApiError> {
        Self::require_role(&inner.state, &worker, Role::Worker)?;
        let Some(round) = inner.state.open_round().cloned() else {
            return Ok(Self::wait("no round is open"));
        };
        if inner.closing.is_some() {
            return Ok(Self::wait(
                "the round is closing; the next one opens in a moment",
            ));
        }
        // The worker's own outstanding task, again (a retry after a lost answer).
        let own = round
            .tasks
            .iter()
            .filter_map(|id| inner.state.tasks.get(id))
            .find(|t| {
                t.worker == worker
                    && t.committed.is_none()
                    && inner.live.get(&t.id).is_some_and(|l| !l.expired)
            });
        if let Some(t) = own {
            return Ok(TaskOffer::Task(self.describe(inner, t)?));
        }
        let active = inner
            .live
            .values()
            .filter(|l| !l.expired && l.outcome != Some(false))
            .count();
        if active >= self.config.tasks_per_round as usize {
            return Ok(Self::wait("every task of this round is handed out"));
        }
        let id = inner.state.next_task_id();
        let seed = derive_task_seed(id.0, &worker.0, &prover_digest(&round.beacon_commitment));
        let body = EntryBody::TaskAssigned {
            task: id,
            round: round.round,
            worker,
            seed: Digest(seed),
            inner_steps: self.job.inner.steps,
            batch_size: self.job.inner.batch_size,
        };
        self.append_body(inner, body).await?;
        inner.live.insert(
            id,
            Live {
                deadline_ms: now_ms() + self.config.task_timeout.as_millis() as u64,
                needed: 1,
                ..Live::default()
            },
        );
        let t = inner
            .state
            .tasks
            .get(&id)
            .ok_or_else(|| ApiError::Internal("task vanished".into()))?;
        Ok(TaskOffer::Task(self.describe(inner, t)?))
    }

    fn worker_task<'a>(
        inner: &'a Inner,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<(&'a TaskRecord, &'a Live), ApiError> {
        let t = inner
            .state
            .tasks
            .get(&task)
            .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))?;
        if t.worker != *worker {
            return Err(ApiError::Forbidden(format!(
                "task {task} belongs to another worker"
            )));
        }
        let live = inner.live.get(&task).ok_or_else(|| {
            ApiError::Conflict(format!("task {task} belongs to a round that is closed"))
        })?;
        if live.expired {
            return Err(ApiError::Conflict(format!(
                "task {task} expired (its deadline passed) and was handed out again"
            )));
        }
        Ok((t, live))
    }

    /// Checks that `worker` may submit `task`; returns the round's base model.
    async fn check_submittable(
        &self,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<Arc<Vec<Tensor>>, ApiError> {
        let guard = self.lock_synced().await?;
        self.check_submittable_in(&guard, worker, task)?;
        Ok(Arc::clone(&guard.model))
    }

    fn check_submittable_in(
        &self,
        inner: &Inner,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<(), ApiError> {
        Self::require_role(&inner.state, worker, Role::Worker)?;
        let (t, _) = Self::worker_task(inner, worker, task)?;
        if t.committed.is_some() {
            return Err(ApiError::Conflict(format!(
                "task {task} already has committed work"
            )));
        }
        Ok(())
    }

    /// `POST /v1/tasks/<id>/submit`.
    pub async fn submit(
        &self,
        worker: PublicKey,
        task: TaskId,
        sub: api::Submission,
    ) -> Result<api::SubmissionReceipt, ApiError> {
        // The state checks run under the lock, the pure checks and the durable blob
        // writes without it (so submissions do not queue behind each other's fsyncs),
        // and the state is checked again under the lock before the append.
        let base = self.check_submittable(&worker, task).await?;
        let shapes: Vec<Vec<usize>> = self
            .job
            .model
            .param_shapes()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let checked = check_submission(&sub, task, &worker, &shapes, self.job.inner.steps)?;
        check_delta_bound(&self.job, &base, &checked.delta)?;
        let trace_root = ledger_digest(&checked.commitment.trace_root);
        let entry = checked.entry;
        let blob = self.blobs.put(&sub.delta.0).map_err(blob_error)?;
        let mut meta = blob.0.to_vec();
        meta.push(class_byte(sub.device_class));
        self.store
            .put_meta(&meta_key("delta", task.0), &meta)
            .await
            .map_err(store_error)?;
        let mut guard = self.lock_synced().await?;
        let receipt = self
            .submit_in(&mut guard, worker, task, entry, &sub, blob, trace_root)
            .await?;
        let receipt = self.release(guard, receipt).await?;
        failpoints::hit(failpoints::SUBMIT_AFTER_APPEND);
        self.metrics.submissions.inc();
        Ok(receipt)
    }

    /// The locked part of a submission: the commitment into the log, the challenge.
    #[allow(clippy::too_many_arguments)]
    async fn submit_in(
        &self,
        inner: &mut Inner,
        worker: PublicKey,
        task: TaskId,
        entry: Entry,
        sub: &api::Submission,
        blob: Digest,
        trace_root: Digest,
    ) -> Result<api::SubmissionReceipt, ApiError> {
        self.check_submittable_in(inner, &worker, task)?;
        let index = self.append(inner, entry).await?;
        let beacon = inner
            .beacon
            .map(|b| b.1)
            .ok_or_else(|| ApiError::Internal("no beacon for the open round".into()))?;
        let steps = self.challenge_for(&beacon, &trace_root)?;
        let needed = 1 + usize::from(double_checked(
            &beacon,
            &trace_root,
            self.job.verify.double_check_fraction,
        ));
        let live = inner
            .live
            .get_mut(&task)
            .ok_or_else(|| ApiError::Internal("live task vanished".into()))?;
        live.steps = Some(steps.clone());
        live.needed = needed;
        live.class = Some(sub.device_class);
        live.delta_blob = Some(blob);
        // The opening is due within a task timeout of the commitment.
        live.deadline_ms = now_ms() + self.config.task_timeout.as_millis() as u64;
        Ok(api::SubmissionReceipt {
            task_id: task,
            entry_index: index,
            challenge: Challenge {
                task_id: task,
                steps,
                tolerant: sub.device_class == DeviceClass::Tolerant,
            },
        })
    }

    /// `POST /v1/tasks/<id>/opening`.
    pub async fn opening(
        &self,
        worker: PublicKey,
        task: TaskId,
        opening: Opening,
    ) -> Result<api::OpeningReceipt, ApiError> {
        // Checked under the lock; stored without it (a large blob and two fsyncs).
        let steps = {
            let guard = self.lock_synced().await?;
            let inner = &*guard;
            Self::require_role(&inner.state, &worker, Role::Worker)?;
            let (t, live) = Self::worker_task(inner, &worker, task)?;
            if t.committed.is_none() {
                return Err(ApiError::Conflict(format!(
                    "task {task} has no committed work yet: submit first"
                )));
            }
            if let Some(b) = live.opening_blob {
                return Ok(api::OpeningReceipt {
                    task_id: task,
                    opening_blob: b,
                });
            }
            live.steps.clone().unwrap_or_default()
        };
        check_opening(&opening, &steps)?;
        let bytes = serde_json::to_vec(&opening).map_err(internal)?;
        let blob = self.blobs.put(&bytes).map_err(blob_error)?;
        self.store
            .put_meta(&meta_key("opening", task.0), &blob.0)
            .await
            .map_err(store_error)?;
        let mut guard = self.lock_synced().await?;
        Self::worker_task(&guard, &worker, task)?;
        if let Some(l) = guard.live.get_mut(&task) {
            l.opening_blob = Some(blob);
        }
        let receipt = api::OpeningReceipt {
            task_id: task,
            opening_blob: blob,
        };
        self.release(guard, receipt).await
    }

    fn commitment_of(t: &TaskRecord) -> Option<Commitment> {
        t.committed.map(|c| Commitment {
            trace_root: prover_digest(&c.trace_root),
            final_state_hash: prover_digest(&c.final_state),
            delta_hash: prover_digest(&c.delta),
        })
    }

    fn load_opening(&self, blob: &Digest) -> Result<Opening, ApiError> {
        let bytes = self
            .blobs
            .get(blob)
            .map_err(internal)?
            .ok_or_else(|| ApiError::Internal(format!("opening blob {blob} is missing")))?;
        serde_json::from_slice(&bytes).map_err(internal)
    }

    /// `POST /v1/verify/next`.
    pub async fn next_verify(&self, verifier: PublicKey) -> Result<VerifyOffer, ApiError> {
        let mut guard = self.lock_synced().await?;
        let inner = &mut *guard;
        Self::require_role(&inner.state, &verifier, Role::Verifier)?;
        let now = now_ms();
        let pick = inner.live.iter().find_map(|(id, l)| {
            let t = inner.state.tasks.get(id)?;
            let claimed_by_me = l.claims.get(&verifier).is_some_and(|d| *d > now);
            let done_by_me = t.verdicts.iter().any(|v| v.verifier == verifier);
            if l.outcome.is_some() || l.opening_blob.is_none() || done_by_me || t.worker == verifier
            {
                return None;
            }
            if claimed_by_me {
                return Some((*id, false));
            }
            let live_claims = l.claims.values().filter(|d| **d > now).count();
            let verdicts = t.verdicts.len();
            (verdicts + live_claims < l.needed).then_some((*id, true))
        });
        let Some((id, fresh)) = pick else {
            let wait = VerifyOffer::Wait {
                retry_after_ms: 250,
                reason: "no opened task waits for a verifier".into(),
            };
            return self.release(guard, wait).await;
        };
        let steps = inner
            .live
            .get(&id)
            .and_then(|l| l.steps.clone())
            .unwrap_or_default();
        let challenge_index = if fresh {
            let body = EntryBody::ChallengeIssued {
                task: id,
                verifier,
                steps: steps.clone(),
            };
            let index = self.append_body(inner, body).await?;
            if let Some(l) = inner.live.get_mut(&id) {
                l.claims.insert(
                    verifier,
                    now + self.config.verify_timeout.as_millis() as u64,
                );
            }
            index
        } else {
            inner
                .state
                .tasks
                .get(&id)
                .and_then(|t| t.challenges.iter().rev().find(|c| c.0 == verifier))
                .map_or(0, |c| c.2)
        };
        let t = inner
            .state
            .tasks
            .get(&id)
            .ok_or_else(|| ApiError::Internal("task vanished".into()))?;
        let l = inner
            .live
            .get(&id)
            .ok_or_else(|| ApiError::Internal("live task vanished".into()))?;
        let task = self.describe(inner, t)?;
        let commitment = Self::commitment_of(t)
            .ok_or_else(|| ApiError::Internal("opened task without commitment".into()))?;
        let device_class = l.class.unwrap_or(DeviceClass::Exact);
        let blob = l.opening_blob.unwrap_or_default();
        // The opening (large, content addressed, immutable) is read without the lock,
        // once the claim is durable.
        let (task, commitment) = self.release(guard, (task, commitment)).await?;
        let opening = self.load_opening(&blob)?;
        Ok(VerifyOffer::Job(VerifyJob {
            task,
            commitment,
            steps,
            device_class,
            opening,
            challenge_index,
        }))
    }

    /// `POST /v1/verify/<id>/verdict`.
    pub async fn verdict(
        &self,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<api::VerdictReceipt, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.verdict_in(&mut guard, verifier, task, sub).await?;
        self.release(guard, out).await
    }

    async fn verdict_in(
        &self,
        inner: &mut Inner,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<api::VerdictReceipt, ApiError> {
        Self::require_role(&inner.state, &verifier, Role::Verifier)?;
        let t = inner
            .state
            .tasks
            .get(&task)
            .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))?;
        let Some((_, steps, _)) = t.challenges.iter().find(|c| c.0 == verifier).cloned() else {
            return Err(ApiError::Forbidden(format!(
                "task {task} was not challenged to this verifier"
            )));
        };
        if t.verdicts.iter().any(|v| v.verifier == verifier) {
            return Err(ApiError::Conflict(format!(
                "this verifier already gave a verdict on task {task}"
            )));
        }
        let live = inner.live.get(&task).ok_or_else(|| {
            ApiError::Conflict(format!("task {task} belongs to a round that is closed"))
        })?;
        if live.outcome.is_some() {
            return Err(ApiError::Conflict(format!(
                "task {task} is already settled"
            )));
        }
        let entry = check_verdict(&sub, task, &verifier, &steps)?.entry;
        if let Some(p) = &sub.fraud_proof {
            self.blobs
                .put(&serde_json::to_vec(p).map_err(internal)?)
                .map_err(blob_error)?;
        }
        let index = self.append(inner, entry).await?;
        self.metrics.verdicts.inc();
        if let Some(l) = inner.live.get_mut(&task) {
            l.claims.remove(&verifier);
        }
        // The verdict is durable and is answered as such: if settling the task or
        // closing the round fails now (the database locked, the blob store full), the
        // ticker settles and closes later; the verifier must not be told to retry a
        // verdict that is already in the log.
        if let Err(e) = self.resolve(inner, task).await {
            tracing::warn!(task = %task, error = %e, "settling the task after a verdict failed; the ticker retries");
        }
        if let Some(l) = inner.live.get_mut(&task)
            && l.outcome.is_none()
            && l.waiting_since.is_none()
        {
            l.waiting_since = Some(now_ms());
        }
        let outcome = match inner.live.get(&task).and_then(|l| l.outcome) {
            _ if inner.state.slashed.contains(&verifier) => VerdictOutcome::Overruled,
            Some(true) => VerdictOutcome::Accepted,
            Some(false) => VerdictOutcome::Rejected,
            None => VerdictOutcome::Pending,
        };
        if self.close_due(inner).is_some() {
            self.close_wanted.notify_one();
        }
        Ok(api::VerdictReceipt {
            task_id: task,
            entry_index: index,
            outcome,
        })
    }

    /// Settles a task from its verdicts: unanimous acceptance by enough verifiers
    /// accepts; any rejection, or too few verifiers, calls the referee.
    async fn resolve(&self, inner: &mut Inner, task: TaskId) -> Result<(), ApiError> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(());
        };
        let Some(live) = inner.live.get(&task).cloned() else {
            return Ok(());
        };
        if live.outcome.is_some() {
            return Ok(());
        }
        if let Some(o) = self.ledger_outcome(&inner.state, &t, live.needed) {
            self.slash_contradicted(inner, task).await?;
            if let Some(l) = inner.live.get_mut(&task) {
                l.outcome = Some(o);
            }
            return Ok(());
        }
        let any_reject = t.verdicts.iter().any(|v| !v.accepted);
        let other_verifiers = inner
            .state
            .participants
            .iter()
            .filter(|(k, r)| {
                **r == Role::Verifier
                    && **k != self.referee_key()
                    && **k != t.worker
                    && !inner.state.slashed.contains(k)
                    && !t.verdicts.iter().any(|v| v.verifier == **k)
            })
            .count();
        if !any_reject && other_verifiers > 0 {
            return Ok(()); // wait for a second verifier
        }
        if t.verdicts.is_empty() {
            return Ok(());
        }
        self.referee(inner, &t, &live).await
    }

    /// The coordinator replays the task (or checks the fraud proof) and signs its own
    /// verdict; whoever it contradicts is slashed.
    async fn referee(
        &self,
        inner: &mut Inner,
        t: &TaskRecord,
        live: &Live,
    ) -> Result<(), ApiError> {
        let steps = live.steps.clone().unwrap_or_default();
        let opening = self.load_opening(&live.opening_blob.unwrap_or_default())?;
        let commitment = Self::commitment_of(t)
            .ok_or_else(|| ApiError::Internal("verdict on uncommitted work".into()))?;
        let base = Arc::clone(&inner.model);
        let mut proof: Option<FraudProof> = None;
        for v in &t.verdicts {
            if let Some(e) = v.evidence
                && let Some(bytes) = self.blobs.get(&e).map_err(internal)?
            {
                proof = serde_json::from_slice(&bytes).ok();
            }
        }
        let job = Arc::clone(&self.job);
        let corpus = Arc::clone(&self.corpus);
        let seed = t.seed.0;
        let class = live.class.unwrap_or(DeviceClass::Exact);
        let verdict = tokio::task::spawn_blocking(move || -> Result<(Verdict, bool), String> {
            if let Some(p) = &proof {
                let ctx = FraudContext {
                    trace_root: commitment.trace_root,
                    steps: job.inner.steps,
                    base_state_hash: base_state_hash(&base),
                };
                if let Ok(FraudVerdict::Guilty { step, reason, .. }) = p.check(&ctx) {
                    return Ok((
                        Verdict::Reject {
                            step: Some(step),
                            reason: lupus_prover::verify::RejectReason::OpMismatch {
                                op: p.op(),
                                output: 0,
                                kind: reason,
                            },
                            fraud_proof: Some(Box::new(p.clone())),
                        },
                        true,
                    ));
                }
            }
            verify_opening(
                &job,
                &corpus,
                &base,
                &seed,
                &commitment,
                &steps,
                &opening,
                class,
            )
            .map(|v| (v, false))
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(internal)?
        .map_err(ApiError::Internal)?;
        let (verdict, by_proof) = verdict;
        let accepted = verdict.is_accept();
        let reason = match &verdict {
            Verdict::Accept => "referee replay: every challenged step matches".to_string(),
            Verdict::Reject { reason, .. } if by_proof => {
                format!("referee: the fraud proof holds: {reason}")
            }
            Verdict::Reject { reason, .. } => format!("referee replay: {reason}"),
        };
        let evidence = match &verdict {
            Verdict::Reject {
                fraud_proof: Some(p),
                ..
            } => {
                let d = api::evidence_digest(p);
                self.blobs
                    .put(&serde_json::to_vec(p).map_err(internal)?)
                    .map_err(blob_error)?;
                Some(d)
            }
            _ => None,
        };
        let steps = live.steps.clone().unwrap_or_default();
        let body = api::verdict_body(t.id, self.referee_key(), accepted, steps, &reason, evidence);
        let entry = Entry::signed(body, &self.referee).map_err(internal)?;
        self.append(inner, entry).await?;
        // Disputes are rare: wait for the referee's verdict under the lock, so the
        // verdict a slash follows is durable before the slash is sequenced.
        self.durable_now(inner).await?;
        failpoints::hit(failpoints::REFEREE_AFTER_VERDICT);
        self.slash_contradicted(inner, t.id).await?;
        if let Some(l) = inner.live.get_mut(&t.id) {
            l.outcome = Some(accepted);
        }
        Ok(())
    }

    /// Slashes whoever the referee's verdict on `task` contradicts (the worker of
    /// rejected work and the verifiers who accepted it, or the verifiers who rejected
    /// work it accepts), skipping keys already slashed. A function of the ledger, so a
    /// crash or a failed append between the referee's verdict and the slashes is
    /// repaired by calling it again (on resume, and whenever the task is settled).
    async fn slash_contradicted(&self, inner: &mut Inner, task: TaskId) -> Result<(), ApiError> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(());
        };
        let referee = self.referee_key();
        let Some(ruling) = t.verdicts.iter().find(|v| v.verifier == referee).cloned() else {
            return Ok(());
        };
        let mut to_slash: Vec<(PublicKey, String, Option<Digest>)> = Vec::new();
        let others = t.verdicts.iter().filter(|v| v.verifier != referee);
        if ruling.accepted {
            for v in others.filter(|v| !v.accepted) {
                to_slash.push((
                    v.verifier,
                    "rejected work that the referee's replay accepts".into(),
                    None,
                ));
            }
        } else {
            to_slash.push((t.worker, ruling.reason.clone(), ruling.evidence));
            for v in others.filter(|v| v.accepted) {
                to_slash.push((
                    v.verifier,
                    "accepted work that the referee's replay rejects".into(),
                    ruling.evidence,
                ));
            }
        }
        for (key, reason, evidence) in to_slash {
            if inner.state.slashed.contains(&key) {
                continue;
            }
            let body = EntryBody::Slashed {
                key,
                task: t.id,
                reason: reason.chars().take(512).collect(),
                evidence,
            };
            self.append_body(inner, body).await?;
            self.metrics.slashes.inc();
            tracing::warn!(key = %key, task = %t.id, %reason, "slashed");
        }
        Ok(())
    }

    // ----- rounds -----

    /// Expires overdue tasks and claims and closes the round when it is done. Called
    /// by the server's ticker, and at once when [`Coordinator::close_wanted`] fires.
    pub async fn tick(&self) -> Result<(), ApiError> {
        let snapshot = {
            let mut guard = self.lock_synced().await?;
            let snapshot = self.tick_locked(&mut guard).await;
            match snapshot {
                Ok(s) => self.release(guard, s).await?,
                Err(e) => {
                    // A close snapshot is only taken last, so none is lost here;
                    // what was sequenced before the error is still awaited.
                    self.release(guard, ()).await?;
                    return Err(e);
                }
            }
        };
        match snapshot {
            Some(s) => self.close_round(s).await,
            None => Ok(()),
        }
    }

    /// Resolves when a request handler found the open round due to close, so the
    /// ticker closes it now rather than at its next tick.
    pub async fn close_wanted(&self) {
        self.close_wanted.notified().await;
    }

    async fn tick_locked(&self, inner: &mut Inner) -> Result<Option<CloseSnapshot>, ApiError> {
        let now = now_ms();
        for (id, l) in inner.live.iter_mut() {
            let opened = l.opening_blob.is_some();
            if !l.expired && l.outcome.is_none() && !opened && now > l.deadline_ms {
                l.expired = true;
                self.metrics.tasks_expired.inc();
                tracing::info!(task = %id, "task expired; its slot is handed out again");
            }
            l.claims.retain(|_, d| *d > now);
        }
        // Tasks that only the referee can settle (one verifier around, double check).
        let pending: Vec<TaskId> = inner
            .live
            .iter()
            .filter(|(_, l)| l.outcome.is_none() && l.opening_blob.is_some())
            .map(|(id, _)| *id)
            .collect();
        let timeout = self.config.verify_timeout.as_millis() as u64;
        for id in pending {
            let has_verdicts = inner
                .state
                .tasks
                .get(&id)
                .is_some_and(|t| !t.verdicts.is_empty());
            if !has_verdicts {
                continue;
            }
            self.resolve(inner, id).await?;
            let overdue = inner.live.get(&id).filter(|l| {
                l.outcome.is_none() && l.waiting_since.is_some_and(|w| now > w + timeout)
            });
            if let (Some(l), Some(t)) = (overdue.cloned(), inner.state.tasks.get(&id).cloned()) {
                tracing::info!(task = %id, "no second verifier in time: the referee replays");
                self.referee(inner, &t, &l).await?;
            }
        }
        if self.close_due(inner).is_some() {
            self.settle_waiting(inner).await?;
        }
        self.close_snapshot(inner)
    }

    /// Before a close: a task waiting for its second verdict is settled by the referee
    /// now, so a verifier that passed a cheat does not escape because the round filled.
    async fn settle_waiting(&self, inner: &mut Inner) -> Result<(), ApiError> {
        let waiting: Vec<TaskId> = awaiting_outcome(inner)
            .filter(|(_, l)| l.opening_blob.is_some())
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            if let (Some(l), Some(t)) = (
                inner.live.get(&id).cloned(),
                inner.state.tasks.get(&id).cloned(),
            ) {
                self.referee(inner, &t, &l).await?;
            }
        }
        Ok(())
    }

    /// The open round, if it should close now: its target of accepted tasks is met
    /// or its deadline passed, and no close of it is running.
    fn close_due(&self, inner: &Inner) -> Option<Round> {
        if inner.closing.is_some() {
            return None;
        }
        let round = inner.state.open_round()?;
        let accepted = inner
            .live
            .values()
            .filter(|l| l.outcome == Some(true))
            .count();
        let target_met = accepted >= self.config.tasks_per_round as usize;
        (target_met || now_ms() >= round.deadline_ms).then_some(round.round)
    }

    /// The mean loss of `params` on `n` windows of the validation split.
    pub fn validation_loss(
        job: &JobSpec,
        corpus: &Corpus,
        params: &[Tensor],
        n: usize,
    ) -> Result<f32, String> {
        let sampler = job_sampler(job, corpus).map_err(|e| e.to_string())?;
        let windows = sampler.validation(n.max(1));
        let batch = make_batch(&job.model, &windows).map_err(|e| e.to_string())?;
        eval_loss(&job.model, params, &batch).map_err(|e| e.to_string())
    }

    /// Starts a close when one is due: fixes what it merges and credits, and marks the
    /// round as closing (no task is handed out until the next round opens).
    fn close_snapshot(&self, inner: &mut Inner) -> Result<Option<CloseSnapshot>, ApiError> {
        let Some(round) = self.close_due(inner) else {
            return Ok(None);
        };
        let beacon = match inner.beacon {
            Some((r, b)) if r == round => b,
            _ => {
                return Err(ApiError::Internal(
                    "closing a round without its beacon".into(),
                ));
            }
        };
        let mut deltas = Vec::new();
        let mut merged_workers = Vec::new();
        // A key slashed for another task since this one was accepted is a proven cheat:
        // its work is not merged (nor credited, in `commit_close`).
        for t in inner
            .state
            .tasks
            .values()
            .filter(|t| t.round == round && !inner.state.slashed.contains(&t.worker))
        {
            let Some(l) = inner.live.get(&t.id).filter(|l| l.outcome == Some(true)) else {
                continue;
            };
            deltas.push(
                l.delta_blob.ok_or_else(|| {
                    ApiError::Internal(format!("task {} has no delta blob", t.id))
                })?,
            );
            merged_workers.push(t.worker);
        }
        // Credits: the verified work, and the verifiers who judged it rightly.
        let per_step = u64::from(self.job.inner.batch_size) * self.job.model.flops_per_sample();
        let referee = self.referee_key();
        let mut credits: Vec<(PublicKey, u64, TaskId, CreditKind)> = Vec::new();
        for t in inner.state.tasks.values().filter(|t| t.round == round) {
            let Some(outcome) = inner.live.get(&t.id).and_then(|l| l.outcome) else {
                continue;
            };
            if outcome {
                credits.push((t.worker, self.job.task_flops(), t.id, CreditKind::Work));
            }
            for v in t
                .verdicts
                .iter()
                .filter(|v| v.accepted == outcome && v.verifier != referee)
            {
                let steps = t
                    .challenges
                    .iter()
                    .find(|c| c.0 == v.verifier)
                    .map_or(0, |c| c.1.len() as u64);
                credits.push((v.verifier, steps * per_step, t.id, CreditKind::Verification));
            }
        }
        inner.closing = Some(round);
        Ok(Some(CloseSnapshot {
            round,
            generation: inner.generation,
            beacon,
            deltas,
            merged_workers,
            credits,
            params: Arc::clone(&inner.model),
            momentum: inner.momentum.clone(),
        }))
    }

    /// Closes a round in two steps so that requests never wait on the expensive part:
    /// [`Coordinator::compute_close`] merges, steps and evaluates from the snapshot
    /// without the lock; [`Coordinator::commit_close`] then takes the lock to append
    /// the close as one atomic group and swap the model in. If either fails the round
    /// stays open and unchanged, and the next tick closes it from a fresh snapshot. A
    /// crash in between is the same: nothing of the close is in the log, so the
    /// restarted coordinator closes the round again from the same inputs.
    ///
    /// Verdicts that arrived while the close computed are settled first (a lying
    /// verifier must not escape through that window); if that slashes a worker whose
    /// delta the close merged, the close is computed again without it.
    async fn close_round(&self, s: CloseSnapshot) -> Result<(), ApiError> {
        let computed = self.compute_close(&s).await;
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        // Not `lock_synced`: whatever happens, this close ends here and unmarks the
        // round. A rebuild keeps the mark and changes the generation.
        if let Err(e) = self.catch_up_with_store(inner).await {
            self.note_store_failure();
            inner.closing = None;
            return Err(e);
        }
        let result = match computed {
            Ok(_) if inner.generation != s.generation => Err(ApiError::Unavailable(format!(
                "the state was rebuilt from the log while the close of round {} computed; closing again",
                s.round.0
            ))),
            Ok(c) => match self.settle_waiting(inner).await {
                Ok(())
                    if s.merged_workers
                        .iter()
                        .any(|w| inner.state.slashed.contains(w)) =>
                {
                    Err(ApiError::Unavailable(format!(
                        "a worker merged by the close of round {} was slashed while it computed; closing again without it",
                        s.round.0
                    )))
                }
                Ok(()) => self.commit_close(inner, &s, c).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            inner.closing = None;
        }
        let result = self.release(guard, ()).await.and(result);
        if result.is_ok() {
            failpoints::hit(failpoints::CLOSE_AFTER_CREDITS);
        }
        result
    }

    /// The lock-free part of a close: reads the verified deltas, merges them
    /// (weighted mean, norm clip), takes the outer Nesterov step, evaluates the
    /// validation loss, and makes the new model, the momentum and the next round's
    /// beacon durable (blobs and metadata that no entry names yet).
    async fn compute_close(&self, s: &CloseSnapshot) -> Result<CloseOutcome, ApiError> {
        let job = Arc::clone(&self.job);
        let corpus = Arc::clone(&self.corpus);
        let blobs = self.blobs.clone();
        let params = Arc::clone(&s.params);
        let mut momentum = s.momentum.clone();
        let delta_blobs = s.deltas.clone();
        let val_windows = self.config.val_windows;
        let (new_params, momentum, val_loss, new_model) = tokio::task::spawn_blocking(move || {
            let mut deltas = Vec::with_capacity(delta_blobs.len());
            for blob in &delta_blobs {
                let bytes = blobs
                    .get(blob)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("delta blob {blob} is missing"))?;
                let q = QuantDelta::from_bytes(&bytes).map_err(|e| e.to_string())?;
                deltas.push((q.dequantise().map_err(|e| e.to_string())?, 1.0f32));
            }
            let new_params = if deltas.is_empty() {
                params.to_vec()
            } else {
                let mean = merge_deltas(&deltas, job.outer.clip_norm).map_err(|e| e.to_string())?;
                outer_step(&params, &mut momentum, &mean, &job.outer.nesterov())
                    .map_err(|e| e.to_string())?
            };
            let loss = Self::validation_loss(&job, &corpus, &new_params, val_windows)?;
            failpoints::hit(failpoints::CLOSE_AFTER_MERGE);
            let new_model = blobs
                .put(&encode_model(&new_params))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((new_params, momentum, loss, new_model))
        })
        .await
        .map_err(internal)?
        .map_err(ApiError::Internal)?;
        failpoints::hit(failpoints::CLOSE_AFTER_MODEL_BLOB);
        if !momentum.is_empty() {
            let m = self
                .blobs
                .put(&encode_model(&momentum))
                .map_err(blob_error)?;
            self.store
                .put_meta(&meta_key("momentum", s.round.0), &m.0)
                .await
                .map_err(store_error)?;
        }
        let next = s.round.0 + 1;
        let next = if self.config.max_rounds.is_some_and(|max| next > max) {
            None
        } else {
            let mut beacon = [0u8; 32];
            getrandom::fill(&mut beacon).map_err(internal)?;
            self.store
                .put_meta(&meta_key("beacon", next), &beacon)
                .await
                .map_err(store_error)?;
            Some((Round(next), beacon))
        };
        Ok(CloseOutcome {
            new_params,
            momentum,
            val_loss,
            new_model,
            next,
        })
    }

    /// The locked part of a close: the credits, `RoundClosed`, the `SharesEpoch` and
    /// the next `RoundOpened` go to the log as ONE group ([`Log::append_group`]: all
    /// durable or none), then into the state, then the model is swapped. One fsync.
    async fn commit_close(
        &self,
        inner: &mut Inner,
        s: &CloseSnapshot,
        c: CloseOutcome,
    ) -> Result<(), ApiError> {
        let round = s.round;
        let mut entries = Vec::new();
        for (key, amount, task, kind) in &s.credits {
            let done = inner
                .state
                .tasks
                .get(task)
                .is_some_and(|t| t.credited.contains(&(*key, CreditKindKey::from(*kind))));
            // A key slashed while the close computed earns nothing.
            if done || inner.state.shares.is_slashed(key) || *amount == 0 {
                continue;
            }
            entries.push(
                Entry::unsigned(EntryBody::Credit {
                    round,
                    key: *key,
                    amount: Amount(*amount),
                    task: *task,
                    kind: *kind,
                })
                .map_err(internal)?,
            );
        }
        entries.push(
            Entry::unsigned(EntryBody::RoundClosed {
                round,
                beacon: Digest(s.beacon),
                new_model: c.new_model,
                val_loss_bits: c.val_loss.to_bits(),
                accepted_tasks: s.deltas.len() as u32,
            })
            .map_err(internal)?,
        );
        // The epoch commits the balances after this close: fold the group so far into
        // a copy of the shares to compute it before anything is written.
        let mut shares = inner.state.shares.clone();
        for (i, e) in (inner.state.size..).zip(&entries) {
            shares.apply(i, e).map_err(internal)?;
        }
        let epoch = shares
            .expected_epoch(Epoch(inner.state.epochs + 1), round)
            .map_err(internal)?;
        entries.push(Entry::unsigned(epoch).map_err(internal)?);
        if let Some((next, beacon)) = &c.next {
            entries.push(
                Entry::unsigned(EntryBody::RoundOpened {
                    round: *next,
                    base_model: c.new_model,
                    beacon_commitment: ledger_digest(&beacon_commitment(beacon)),
                    inner_steps: self.job.inner.steps,
                    deadline_ms: now_ms() + self.config.round_timeout.as_millis() as u64,
                })
                .map_err(internal)?,
            );
        }
        // One group: one batch, all durable or none; `close_round` awaits it.
        self.sequence(inner, &entries).await?;
        inner.model = Arc::new(c.new_params);
        inner.momentum = c.momentum;
        // After the last round the tasks' live facts stay: `GET /v1/tasks/<id>` still
        // names their openings, which auditors replay.
        if c.next.is_some() {
            inner.live.clear();
        }
        inner.beacon = c.next;
        inner.closing = None;
        self.metrics.rounds_closed.inc();
        tracing::info!(round = round.0, accepted = s.deltas.len(), val_loss = c.val_loss, model = %c.new_model, "round closed");
        if let Some((next, _)) = c.next {
            tracing::info!(round = next.0, model = %c.new_model, "round opened");
        }
        Ok(())
    }

    async fn write_epoch(&self, inner: &mut Inner, round: Round) -> Result<(), ApiError> {
        let body = inner
            .state
            .shares
            .expected_epoch(Epoch(inner.state.epochs + 1), round)
            .map_err(internal)?;
        self.append_body(inner, body).await?;
        Ok(())
    }

    // ----- reads -----

    /// `GET /v1/job`.
    pub fn job_info(&self) -> Result<JobInfo, ApiError> {
        let d = self
            .corpus
            .commitment(self.job.dataset.chunk_size)
            .map_err(internal)?;
        Ok(JobInfo {
            job_spec: self.config.job_spec.clone(),
            job_hash: ledger_digest(&self.job.hash()),
            dataset_root: ledger_digest(&d.root),
            dataset_blob: self.dataset_blob,
            dataset_len: d.len,
            log_key: self.note_key(),
        })
    }

    fn round_status(&self, inner: &Inner, r: &crate::state::RoundRecord) -> RoundStatus {
        let tasks: Vec<&TaskRecord> = r
            .tasks
            .iter()
            .filter_map(|id| inner.state.tasks.get(id))
            .collect();
        let open = r.closed.is_none();
        let live = |t: &TaskRecord| inner.live.get(&t.id).filter(|_| open);
        let count = |f: &dyn Fn(&TaskRecord) -> bool| tasks.iter().filter(|t| f(t)).count() as u32;
        RoundStatus {
            round: r.round,
            phase: if open {
                RoundPhase::Open
            } else {
                RoundPhase::Closed
            },
            base_model: r.base_model,
            beacon_commitment: r.beacon_commitment,
            deadline_ms: r.deadline_ms,
            target_tasks: self.config.tasks_per_round,
            assigned: tasks.len() as u32,
            committed: count(&|t| t.committed.is_some()),
            accepted: match r.closed {
                Some(c) => c.accepted,
                None => count(&|t| live(t).is_some_and(|l| l.outcome == Some(true))),
            },
            rejected: count(&|t| t.worker_slashed),
            expired: count(&|t| live(t).is_some_and(|l| l.expired)),
            beacon: r.closed.map(|c| c.beacon),
            new_model: r.closed.map(|c| c.new_model),
            val_loss: r.closed.map(|c| c.val_loss),
        }
    }

    /// `GET /v1/rounds`.
    pub async fn rounds(&self) -> Result<api::RoundList, ApiError> {
        let inner = self.inner.lock().await;
        let list = api::RoundList {
            rounds: inner
                .state
                .rounds
                .values()
                .map(|r| self.round_status(&inner, r))
                .collect(),
            max_rounds: self.config.max_rounds,
        };
        self.release(inner, list).await
    }

    /// `GET /v1/rounds/<n>`; `None` is the latest.
    pub async fn round(&self, round: Option<Round>) -> Result<RoundStatus, ApiError> {
        let inner = self.inner.lock().await;
        let r = match round {
            Some(n) => inner.state.rounds.get(&n),
            None => inner.state.latest_round(),
        }
        .ok_or_else(|| ApiError::NotFound("no such round".into()))?;
        let status = self.round_status(&inner, r);
        self.release(inner, status).await
    }

    /// `GET /v1/tasks/<id>`.
    pub async fn task_status(&self, task: TaskId) -> Result<api::TaskStatus, ApiError> {
        let inner = self.inner.lock().await;
        let t = inner
            .state
            .tasks
            .get(&task)
            .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))?;
        let l = inner.live.get(&task);
        let closed = inner
            .state
            .rounds
            .get(&t.round)
            .is_some_and(|r| r.closed.is_some());
        let credited = t.credited.iter().any(|(_, k)| *k == CreditKindKey::Work);
        let state = if t.worker_slashed {
            api::TaskState::Rejected
        } else if credited || l.is_some_and(|l| l.outcome == Some(true)) {
            api::TaskState::Accepted
        } else if closed || l.is_some_and(|l| l.expired) {
            api::TaskState::Expired
        } else if l.is_some_and(|l| l.opening_blob.is_some()) {
            api::TaskState::Opened
        } else if t.committed.is_some() {
            api::TaskState::Committed
        } else {
            api::TaskState::Assigned
        };
        let challenge = l.and_then(|l| {
            l.steps.clone().map(|steps| Challenge {
                task_id: task,
                steps,
                tolerant: l.class == Some(DeviceClass::Tolerant),
            })
        });
        let status = api::TaskStatus {
            task_id: task,
            round: t.round,
            worker: t.worker,
            state,
            challenge,
            verdicts: t
                .verdicts
                .iter()
                .map(|v| api::VerdictSummary {
                    verifier: v.verifier,
                    accepted: v.accepted,
                    reason: v.reason.clone(),
                    entry_index: v.index,
                })
                .collect(),
            opening_blob: l.and_then(|l| l.opening_blob),
        };
        self.release(inner, status).await
    }

    /// `GET /v1/stake`.
    pub async fn stake_table(&self) -> Result<StakeTable, ApiError> {
        let inner = self.inner.lock().await;
        let s = &inner.state.shares;
        let epoch = s.latest_epoch();
        let table = StakeTable {
            epoch: epoch.map(|e| e.epoch.0),
            round: epoch.map(|e| e.round),
            entry_index: epoch.map(|e| e.index),
            total: epoch.map_or(Amount::ZERO, |e| e.tree.root().1),
            accounts: s
                .balances()
                .iter()
                .map(|(k, b)| StakeRow {
                    key: *k,
                    balance: *b,
                })
                .collect(),
            slashed: inner.state.slashed.iter().copied().collect(),
        };
        self.release(inner, table).await
    }

    /// `GET /v1/stake/<key>`: a statement against the latest epoch and checkpoint.
    pub async fn stake_statement(&self, key: PublicKey) -> Result<StakeStatement, ApiError> {
        let (tree, index) = {
            let inner = self.inner.lock().await;
            let e = inner.state.shares.latest_epoch().ok_or_else(|| {
                ApiError::NotFound("no shares epoch yet: wait for a round to close".into())
            })?;
            let found = (e.tree.clone(), e.index);
            self.release(inner, found).await?
        };
        if tree.balance(&key).is_none() {
            return Err(ApiError::NotFound(format!(
                "{key} has no balance in the latest epoch"
            )));
        }
        let head = self.log.head();
        let bytes = self
            .log
            .entries(LeafIndex(index), LeafIndex(index + 1))
            .await
            .map_err(internal)?;
        let entry = Entry::decode(
            bytes
                .first()
                .ok_or_else(|| ApiError::Internal("epoch entry missing".into()))?,
        )
        .map_err(internal)?;
        let proof = self
            .log
            .inclusion_proof(LeafIndex(index), TreeSize(head.size.0))
            .await
            .map_err(internal)?;
        build_statement(&key, &tree, index, &entry, proof, head.note.clone()).map_err(internal)
    }

    /// Current model parameters (the open round's base, or the final model).
    pub async fn model(&self) -> Arc<Vec<Tensor>> {
        Arc::clone(&self.inner.lock().await.model)
    }

    /// Whether every configured round is closed.
    pub async fn finished(&self) -> bool {
        let inner = self.inner.lock().await;
        match self.config.max_rounds {
            Some(max) => inner
                .state
                .rounds
                .get(&Round(max))
                .is_some_and(|r| r.closed.is_some() && r.epoch_written),
            None => false,
        }
    }
}
