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
//!
//! One file per concern, each an `impl Coordinator` block over the shared state:
//! `startup` (open, replay, resume), `durability` (sequencing under the lock, waiting
//! for the group commit after it, rebuilding after a failed write), `dispatch` (joins
//! and tasks), `submit` (commitments and openings), `verify` (claims, verdicts, the
//! referee, slashes), `close` (expiry and the round close) and `queries` (reads).
//! Their decisions are pure functions in `rules` (of the state, the live task table
//! and the time, unit-tested without tokio or a database); the time and the beacons'
//! randomness come from the injected [`Env`].

mod background;
mod close;
mod dispatch;
mod durability;
mod env;
mod queries;
pub mod replay;
mod roster;
mod rules;
mod startup;
mod submit;
mod verify;

pub use env::{Env, ManualEnv, RandomError, SharedEnv, SystemEnv, now_ms};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lupus_api::check::{
    check_opening, check_recomputed, check_submission, check_verdict, decode_opening,
};
use lupus_api::model::{decode_model, encode_model};
use lupus_api::types::{
    self as api, Challenge, JobInfo, RoundPhase, RoundStatus, StakeRow, StakeTable,
    TaskDescription, TaskOffer, VerdictOutcome, VerifyOffer,
};
use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::hash::LeafIndex;
use lupus_ledger::log::Log;
use lupus_ledger::note::{NoteSigner, add_signature, parse_note};
use lupus_ledger::stake::{StakeStatement, build_statement};
use lupus_ledger::store::{LogStore, Meta, open_store, postgres::PostgresStore};
use lupus_protocol::double_checked;
use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::data::Corpus;
use lupus_prover::fraud::{FraudContext, FraudProof, FraudVerdict};
use lupus_prover::graph::validation_loss;
use lupus_prover::model::init_params;
use lupus_prover::optim::{merge_deltas, outer_step};
use lupus_prover::prf::derive_task_seed;
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{Opening, job_sampler};
use lupus_prover::tensor::Tensor;
use lupus_prover::trace::{Commitment, base_state_hash};
use lupus_prover::verify::{DeviceClass, ReplayDigest, Verdict, verify_opening_digests};
use tokio::sync::{Mutex, MutexGuard};

use crate::blobs::{BlobStore, Uploaded};
use crate::error::{Error, blob_error, internal, log_error, store_error};
use crate::metrics::Metrics;
use crate::state::{CreditKindKey, Outcome, State, TaskRecord};

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
fn disagree(e: crate::state::StateError) -> Error {
    Error::Internal(format!("the log and the state disagree: {e}"))
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
    /// Rounds the opening of a task is kept after its round closes, unless a ruling
    /// of the referee judged it (the evidence of every rejection and slash is kept
    /// for good); `None` keeps every opening.
    pub keep_openings: Option<u64>,
    /// The clock and the random source ([`SystemEnv::shared`] but in tests).
    pub env: SharedEnv,
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
    /// The verifier the task is drawn to now, and until when
    /// ([`rules::pick_for_verifier`]).
    drawn: Option<(PublicKey, u64)>,
    /// Draws of the task so far (the PRF input of the next).
    draws: u32,
    /// Verifiers that let a draw or a claim of the task lapse: not drawn again.
    declined: BTreeSet<PublicKey>,
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
    /// Verifiers waiting for work ([`rules::pick_for_verifier`]).
    pool: rules::Pool,
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
            pool: rules::Pool::new(),
            generation: 0,
        }
    }
}

/// How a task's verdicts leave it (see `Coordinator::settle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    /// Settled (now or before), or no longer live.
    Done,
    /// Waiting for a (second) verifier.
    Wait,
    /// Only the referee can settle it.
    Referee,
}

/// What the referee needs to judge a task, taken under the lock; judged without it.
struct Case {
    task: TaskId,
    /// The task's worker: its key signs the recomputed part of the opening.
    worker: PublicKey,
    steps: Vec<u32>,
    opening_blob: Digest,
    commitment: Commitment,
    base: Arc<Vec<Tensor>>,
    /// The fraud proofs the rejecting verifiers attached.
    evidence: Vec<Digest>,
    /// Each accepting verifier (not the referee) and the replay digest it signed.
    replays: Vec<(PublicKey, Option<Digest>)>,
    seed: [u8; 32],
    class: DeviceClass,
}

/// The referee's judgement of a [`Case`], logged under the lock.
struct Ruling {
    task: TaskId,
    steps: Vec<u32>,
    verdict: Verdict,
    /// Whether a verifier's fraud proof decided it (no replay was needed).
    by_proof: bool,
    /// The opening the referee judged: the evidence a replay's rejection names.
    opening: Digest,
    /// Accepting verifiers whose replay digest is not the replay's.
    lazy: Vec<PublicKey>,
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
    /// The momentum buffer's blob, once anything was merged.
    momentum_blob: Option<Digest>,
    /// The next round and its secret beacon (already in the metadata); `None` after
    /// the last round.
    next: Option<(Round, [u8; 32])>,
}

/// The coordinator. Cheap to share behind an `Arc`.
pub struct Coordinator {
    log: Log,
    /// The log's checkpoint key, which also signs receipts.
    signer: NoteSigner,
    store: Arc<dyn LogStore>,
    blobs: BlobStore,
    job: Arc<JobSpec>,
    corpus: Arc<Corpus>,
    dataset_blob: Digest,
    config: Config,
    referee: SigningKey,
    inner: Mutex<Inner>,
    /// The participants and slashes, readable without `inner`'s lock.
    roster: std::sync::RwLock<roster::Roster>,
    nonces: std::sync::Mutex<replay::ReplayWindows>,
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

impl Coordinator {
    /// Unix time in milliseconds on the coordinator's clock ([`Config::env`]): what
    /// deadlines and request timestamps are checked against.
    pub fn now_ms(&self) -> u64 {
        self.config.env.now_ms()
    }

    /// Draws round `round`'s secret beacon and makes it durable in the store's
    /// metadata, before any entry commits to it.
    async fn new_beacon(&self, round: u64) -> Result<[u8; 32], Error> {
        let mut beacon = [0u8; 32];
        self.config.env.fill_random(&mut beacon).map_err(internal)?;
        self.store
            .put_meta(&meta_key("beacon", round), &beacon)
            .await
            .map_err(store_error)?;
        Ok(beacon)
    }
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

/// Refuses a delta that no honest run could have produced: some tensor moved further
/// than `H` AdamW steps can move it from the base (`AdamW::max_displacement`, with a
/// margin for rounding and int8 quantisation). Such a delta is a cheat whatever its
/// trace says, and merging it unchecked would let one worker drag the model as far as
/// the merge's norm clip allows (the zoo's huge-norm delta).
fn check_delta_bound(job: &JobSpec, base: &[Tensor], q: &QuantDelta) -> Result<(), Error> {
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
            return Err(Error::Invalid(format!(
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
