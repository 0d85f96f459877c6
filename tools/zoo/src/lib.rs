//! The adversary zoo: cheating workers and verifiers against a real coordinator, and
//! the report `lupus-bench adversaries` prints (issue 7). Test support, in a crate of
//! its own so that neither the coordinator nor the volunteer's worker carries a cheat:
//! the cheats are [`conduct`]s of the one worker loop, the door cases raw requests.
//!
//! DESIGN.md ("Trace and commitment", Detection; "Coordinator"). [`run`] starts a
//! coordinator in-process on loopback and runs three phases over the same job:
//!
//! 1. **door**: the raw-HTTP cases of [`door`] (replays, forged and reused signatures,
//!    NaN, infinite and wrongly shaped deltas, oversized and truncated bodies), each of
//!    which must be refused with a 4xx problem and nothing written;
//! 2. **workers**: honest workers and verifiers with one slot per cheating worker of
//!    [`Behaviour`] (lazy, faking a fraction `f` of steps, copying, wrong batches, wrong
//!    base, huge-norm delta, inflated delta, never opening);
//! 3. **verifiers**: honest workers, a worker that never trains, an honest verifier and
//!    the lying verifiers (always pass, always fail);
//!
//! and an honest-only run of phase 2's size, whose final validation loss is the
//! baseline of "effect on validation loss". A slot whose key is slashed joins again
//! under a fresh key (what a real cheater would do), so a case is tried on many tasks.
//!
//! Every figure is read back from the ledger, not from the participants: a cheat's task
//! counts once it is settled (its worker slashed for it, or credited for it); shares
//! kept are the final balances of every key the slot used.

pub mod conduct;
pub mod door;
pub mod rational;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv};
use lupus_coordinator::server::Server;
use lupus_ledger::entry::{CreditKind, Entry, EntryBody, PublicKey, TaskId};
use lupus_ledger::hash::LeafIndex;
use lupus_prover::data::Corpus;
use lupus_prover::prf::prf;
use lupus_prover::spec::JobSpec;
use lupus_worker::native::{NativeConfig, Stats, run_verifier, run_worker};
use lupus_worker::worker::WorkerError;

pub use conduct::{Behaviour, Expected, VerifierBehaviour};

/// A zoo run failed to run (not: a cheat went undetected; that is a row of the report).
#[derive(Debug, thiserror::Error)]
#[error("adversary zoo: {0}")]
pub struct ZooError(pub String);

fn zoo_err(e: impl std::fmt::Display) -> ZooError {
    ZooError(e.to_string())
}

/// What a zoo run runs.
#[derive(Clone, Debug)]
pub struct ZooConfig {
    /// The job spec (TOML); its `verify.challenges` is `m`, `inner.steps` is `H`.
    pub job_spec: String,
    pub corpus: Corpus,
    /// Rounds of each phase.
    pub rounds: u64,
    /// Accepted tasks a round waits for.
    pub tasks_per_round: u32,
    pub honest_workers: usize,
    pub honest_verifiers: usize,
    /// The cheating workers of phase 2, one slot each.
    pub worker_cases: Vec<Behaviour>,
    /// The lying verifiers of phase 3, one slot each.
    pub verifier_cases: Vec<VerifierBehaviour>,
    /// How long a worker has to submit, then to open (the never-opening worker's task
    /// waits this long before it expires).
    pub task_timeout: Duration,
    /// Run the door cases (phase 1, before phase 2's crowd arrives).
    pub door: bool,
    /// Run the honest-only baseline (phase 2 without its cheaters).
    pub baseline: bool,
}

impl ZooConfig {
    /// Every case, on `job_spec`, `rounds` rounds of `tasks_per_round` tasks.
    pub fn full(job_spec: &str, corpus: Corpus, rounds: u64, tasks_per_round: u32) -> Self {
        ZooConfig {
            job_spec: job_spec.to_owned(),
            corpus,
            rounds,
            tasks_per_round,
            honest_workers: 4,
            honest_verifiers: 2,
            worker_cases: vec![
                Behaviour::LazyZero,
                Behaviour::LazyRandom,
                Behaviour::FakeSteps { permille: 1000 },
                Behaviour::FakeSteps { permille: 250 },
                Behaviour::FakeSteps { permille: 50 },
                Behaviour::CopyOther,
                Behaviour::WrongBatches,
                Behaviour::WrongBase,
                Behaviour::HugeLastStep,
                Behaviour::InflatedDelta,
                Behaviour::NeverOpen,
            ],
            verifier_cases: vec![
                VerifierBehaviour::AlwaysAccept,
                VerifierBehaviour::AlwaysReject,
            ],
            task_timeout: Duration::from_secs(2),
            door: true,
            baseline: true,
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub case: String,
    /// Which phase ran it: `door`, `workers` or `verifiers`.
    pub phase: &'static str,
    /// What must happen.
    pub expected: String,
    /// Settled cheating tasks (door: attempts; lying verifier: its wrong verdicts).
    pub tasks: u64,
    /// Of those, slashed for (door: refused; never opening: expired uncredited).
    pub detected: u64,
    /// The detection probability the design predicts per task, if it has one.
    pub theory: Option<f64>,
    /// The theory is a floor, not a prediction (an always-pass verifier: a
    /// double-checked task has two verifier slots, so a liar sees more of them than
    /// their share `d`).
    pub theory_is_floor: bool,
    /// Cheating tasks that were merged (escaped detection).
    pub merged: u64,
    /// Keys the slot used, and how many of them were slashed.
    pub keys: u64,
    pub keys_slashed: u64,
    /// Final balance of every key the slot used, and of slashed keys among them.
    pub shares_kept: u64,
    pub shares_kept_after_slash: u64,
}

impl Row {
    /// The measured detection rate.
    pub fn rate(&self) -> Option<f64> {
        (self.tasks > 0).then(|| self.detected as f64 / self.tasks as f64)
    }

    /// The 95% Wilson score interval of the rate.
    pub fn interval(&self) -> Option<(f64, f64)> {
        (self.tasks > 0).then(|| wilson(self.detected, self.tasks, 1.96))
    }

    /// Whether the theory lies in the 99% interval (or, for a certain detection, every
    /// task was detected).
    pub fn consistent(&self) -> Option<bool> {
        let theory = self.theory?;
        if self.tasks == 0 {
            return None;
        }
        if theory >= 1.0 {
            return Some(self.detected == self.tasks);
        }
        let (lo, hi) = wilson(self.detected, self.tasks, 2.5758);
        Some(if self.theory_is_floor {
            theory <= hi
        } else {
            (lo..=hi).contains(&theory)
        })
    }
}

/// The Wilson score interval for `k` successes in `n` trials at `z` standard errors.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    let (k, n) = (k as f64, n.max(1) as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The final validation losses and the run's size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Losses {
    /// Final validation loss of phase 2 (honest workers with the cheaters).
    pub with_cheaters: Option<f32>,
    /// Final validation loss of phase 3 (lying verifiers).
    pub with_liars: Option<f32>,
    /// Final validation loss of the honest-only run.
    pub honest: Option<f32>,
    /// The same honest-only run again (other beacons, so other batches): how far two
    /// honest runs differ, the yardstick for the effects above.
    pub honest_again: Option<f32>,
}

impl Losses {
    /// `with / honest - 1`, in percent.
    pub fn effect(with: Option<f32>, honest: Option<f32>) -> Option<f64> {
        Some((f64::from(with?) / f64::from(honest?) - 1.0) * 100.0)
    }
}

/// What [`run`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub losses: Losses,
    /// `H` and `m` of the job, and its double-checked fraction.
    pub steps: u32,
    pub challenges: u32,
    pub double_check_fraction: f64,
    pub rounds: u64,
    pub tasks_per_round: u32,
    pub seconds: f64,
}

/// A participant slot: a role and a behaviour, joining again under a fresh key each
/// time its key is slashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Worker(Behaviour),
    Verifier(VerifierBehaviour),
    /// Joins fresh keys as fast as the coordinator lets it, and does nothing else
    /// (issue 13's join flood): every key it got in is one of its keys, every join
    /// refused with 429 one of its refusals.
    JoinFlood,
}

impl Slot {
    fn honest(&self) -> bool {
        matches!(
            self,
            Slot::Worker(Behaviour::Honest) | Slot::Verifier(VerifierBehaviour::Honest)
        )
    }
}

/// Which slot each key belongs to.
type Registry = Arc<Mutex<HashMap<PublicKey, usize>>>;
/// How many submissions of each slot were refused at the door.
type Refusals = Arc<Mutex<HashMap<usize, u64>>>;

/// CPU seconds each slot's thread used (user and system).
type CpuTimes = Arc<Mutex<HashMap<usize, f64>>>;

/// What every slot of a phase shares.
#[derive(Clone)]
struct SlotShared {
    url: String,
    salt: [u8; 32],
    registry: Registry,
    refusals: Refusals,
    /// The worker slots of the Sybil coalition ([`rational::Partner`] reads it).
    coalition: Arc<HashSet<usize>>,
    cpu: CpuTimes,
    stop: Arc<AtomicBool>,
}

/// Runs `slot` (number `index`) until `stop`, re-keying after each refusal it cannot
/// get past (a slash). Each slot has a thread of its own (the worker loop is
/// single-threaded and computes on it), so the thread's CPU time is the slot's.
fn spawn_slot(slot: Slot, index: usize, shared: SlotShared) -> std::thread::JoinHandle<()> {
    let SlotShared {
        url,
        salt,
        registry,
        refusals,
        coalition,
        cpu,
        stop,
    } = shared;
    std::thread::spawn(move || {
        let _measure = rational::ThreadCpu::new(index, cpu);
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut input = (index as u64).to_le_bytes().to_vec();
                input.extend(generation.to_le_bytes());
                let key = SigningKey::from_bytes(&prf(&salt, "lupus zoo key", &input));
                if let Ok(mut r) = registry.lock() {
                    r.insert(PublicKey::from(&key), index);
                }
                let name = format!("zoo-{index}-{generation}");
                if slot == Slot::JoinFlood {
                    // The slot's own key never joins; 16 fresh ones at a time do.
                    if let Ok(mut r) = registry.lock() {
                        r.remove(&PublicKey::from(&key));
                    }
                    let mut flood = tokio::task::JoinSet::new();
                    for j in 0..16u64 {
                        let mut input = (index as u64).to_le_bytes().to_vec();
                        input.extend((generation * 16 + j).to_le_bytes());
                        let key = SigningKey::from_bytes(&prf(&salt, "lupus zoo flood", &input));
                        let client = lupus_coordinator::client::Client::new(&url, key.clone());
                        flood.spawn(async move {
                            let joined = client
                                .join(lupus_ledger::entry::Role::Worker, "flood")
                                .await;
                            (key, joined)
                        });
                    }
                    while let Some(Ok((key, joined))) = flood.join_next().await {
                        match joined {
                            Ok(_) => {
                                if let Ok(mut r) = registry.lock() {
                                    r.insert(PublicKey::from(&key), index);
                                }
                            }
                            Err(lupus_coordinator::client::ClientError::Problem(p))
                                if p.status == 429 =>
                            {
                                if let Ok(mut r) = refusals.lock() {
                                    *r.entry(index).or_default() += 1;
                                }
                            }
                            Err(_) => {}
                        }
                    }
                    generation += 1;
                    continue;
                }
                let stats = Arc::new(Stats::default());
                let ended = match slot {
                    Slot::JoinFlood => Ok(0),
                    Slot::Worker(b) => {
                        let conduct: Arc<dyn lupus_worker::conduct::Conduct + Send + Sync> = match b
                        {
                            Behaviour::PatientFake { honest } => Arc::new(conduct::Patient {
                                honest,
                                trained: Default::default(),
                            }),
                            _ => Arc::new(b),
                        };
                        let cfg = NativeConfig {
                            conduct,
                            ..NativeConfig::new(&url, key, &name)
                        };
                        run_worker(cfg, Arc::clone(&stop), stats).await
                    }
                    Slot::Verifier(b) => {
                        let conduct: Arc<dyn lupus_worker::conduct::Conduct + Send + Sync> = match b
                        {
                            VerifierBehaviour::Partner { accept } => Arc::new(rational::Partner {
                                accept,
                                registry: Arc::clone(&registry),
                                coalition: Arc::clone(&coalition),
                            }),
                            _ => Arc::new(b),
                        };
                        let cfg = NativeConfig {
                            conduct,
                            ..NativeConfig::new(&url, key, &name)
                        };
                        run_verifier(cfg, Arc::clone(&stop), stats).await
                    }
                };
                if let Err(e) = &ended {
                    tracing::debug!(slot = index, generation, error = %e, "zoo slot re-keys");
                }
                // A submission refused at the door (malformed, out of bounds): the
                // loop gives up on the key; the ledger holds nothing of it.
                if let Err(WorkerError::Refused(p)) = &ended
                    && matches!(p.status, 400 | 413 | 422)
                    && let Ok(mut r) = refusals.lock()
                {
                    *r.entry(index).or_default() += 1;
                }
                if ended.is_ok() {
                    break;
                }
                generation += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    })
}

/// What the ledger says about one task.
#[derive(Clone, Debug, Default)]
struct TaskFacts {
    worker: Option<PublicKey>,
    committed: bool,
    credited: bool,
    worker_slashed: bool,
    /// `(verifier, accepted)` of every verdict but the referee's.
    verdicts: Vec<(PublicKey, bool)>,
    /// Whether the referee rejected the work.
    referee_rejected: bool,
    /// Keys slashed for this task.
    slashed: HashSet<PublicKey>,
    /// Verifiers credited for judging it.
    verification_credited: HashSet<PublicKey>,
}

/// Everything the zoo reads back from a finished coordinator.
struct Ledger {
    tasks: BTreeMap<TaskId, TaskFacts>,
    balances: HashMap<PublicKey, u64>,
    slashed: HashSet<PublicKey>,
    final_loss: Option<f32>,
    /// Entries in the log when it was read.
    entries: u64,
    /// How far the run moved the model along the all-ones direction: the projection
    /// of `final - initial` (every parameter) on the unit vector of that direction.
    drift: Option<f64>,
}

async fn read_ledger(c: &Coordinator) -> Result<Ledger, ZooError> {
    let referee = c.referee_key();
    let size = c.log().head().size.0;
    let mut tasks: BTreeMap<TaskId, TaskFacts> = BTreeMap::new();
    let mut final_loss = None;
    let mut initial_model = None;
    let mut start = 0;
    while start < size {
        let end = (start + 1024).min(size);
        let entries = c
            .log()
            .entries(LeafIndex(start), LeafIndex(end))
            .await
            .map_err(zoo_err)?;
        for bytes in entries {
            let entry = Entry::decode(&bytes).map_err(zoo_err)?;
            match entry.body() {
                EntryBody::TaskAssigned { task, worker, .. } => {
                    tasks.entry(*task).or_default().worker = Some(*worker);
                }
                EntryBody::WorkCommitted { task, .. } => {
                    tasks.entry(*task).or_default().committed = true;
                }
                EntryBody::Verdict {
                    task,
                    verifier,
                    accepted,
                    ..
                } => {
                    let t = tasks.entry(*task).or_default();
                    if *verifier == referee {
                        t.referee_rejected |= !*accepted;
                    } else {
                        t.verdicts.push((*verifier, *accepted));
                    }
                }
                EntryBody::Slashed { key, task, .. } => {
                    let t = tasks.entry(*task).or_default();
                    t.worker_slashed |= t.worker == Some(*key);
                    t.slashed.insert(*key);
                }
                EntryBody::Credit {
                    task,
                    kind: CreditKind::Work,
                    ..
                } => {
                    tasks.entry(*task).or_default().credited = true;
                }
                EntryBody::Credit { task, key, .. } => {
                    tasks
                        .entry(*task)
                        .or_default()
                        .verification_credited
                        .insert(*key);
                }
                EntryBody::RoundClosed { val_loss_bits, .. } => {
                    final_loss = Some(f32::from_bits(*val_loss_bits));
                }
                EntryBody::RoundOpened { base_model, .. } if initial_model.is_none() => {
                    initial_model = Some(*base_model);
                }
                _ => {}
            }
        }
        start = end;
    }
    let table = c.stake_table().await.map_err(zoo_err)?;
    let drift = match initial_model {
        Some(d) => drift_along_ones(c, d).await,
        None => None,
    };
    Ok(Ledger {
        entries: size,
        drift,
        tasks,
        balances: table
            .accounts
            .iter()
            .map(|r| (r.key, r.balance.0))
            .collect(),
        slashed: table.slashed.into_iter().collect(),
        final_loss,
    })
}

/// `(final - initial) . u` for the unit all-ones vector `u` over every parameter of
/// the model: how far a run pushed the model in the direction a nudging attacker
/// chose. `None` if a model cannot be read.
async fn drift_along_ones(c: &Coordinator, initial: lupus_ledger::entry::Digest) -> Option<f64> {
    let bytes = c.blobs().get(&initial).ok().flatten()?;
    let first = lupus_api::model::decode_model(&bytes, c.job()).ok()?;
    let last = c.model().await.ok()?;
    let (mut sum, mut n) = (0f64, 0usize);
    for (a, b) in first.iter().zip(last.iter()) {
        for (x, y) in a.data().iter().zip(b.data()) {
            sum += f64::from(*y) - f64::from(*x);
            n += 1;
        }
    }
    (n > 0).then(|| sum / (n as f64).sqrt())
}

/// The coordinator config of one phase.
fn phase_config(cfg: &ZooConfig, dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_owned(),
        database_url: None,
        postgres_schema: None,
        job_spec: cfg.job_spec.clone(),
        tasks_per_round: cfg.tasks_per_round,
        max_rounds: Some(cfg.rounds),
        round_timeout: Duration::from_secs(60),
        task_timeout: cfg.task_timeout,
        verify_timeout: cfg.task_timeout,
        val_windows: 256,
        keep_openings: None,
        env: SystemEnv::shared(),
    }
}

/// A finished phase: its ledger and which key was which slot.
struct Phase {
    ledger: Ledger,
    slots: Vec<Slot>,
    keys: HashMap<PublicKey, usize>,
    /// Submissions refused at the door, by slot.
    refused: HashMap<usize, u64>,
    door: Vec<door::DoorAttempt>,
    /// CPU seconds of each slot's thread.
    cpu: HashMap<usize, f64>,
}

async fn run_phase(cfg: &ZooConfig, slots: Vec<Slot>, with_door: bool) -> Result<Phase, ZooError> {
    let dir = tempfile_dir()?;
    let coordinator = Coordinator::open(phase_config(cfg, dir.path()), cfg.corpus.clone())
        .await
        .map_err(zoo_err)?;
    let server = Server::start(coordinator, "127.0.0.1:0".parse().map_err(zoo_err)?, None)
        .await
        .map_err(zoo_err)?;
    let url = server.url();
    let door = if with_door {
        door::door_cases(&server.coordinator, &url).await?
    } else {
        Vec::new()
    };
    let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
    let refusals: Refusals = Arc::new(Mutex::new(HashMap::new()));
    let cpu: CpuTimes = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).map_err(zoo_err)?;
    let coalition: HashSet<usize> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Slot::Worker(b) if *b != Behaviour::Honest))
        .map(|(i, _)| i)
        .collect();
    let shared = SlotShared {
        url: url.clone(),
        salt,
        registry: Arc::clone(&registry),
        refusals: Arc::clone(&refusals),
        coalition: Arc::new(coalition),
        cpu: Arc::clone(&cpu),
        stop: Arc::clone(&stop),
    };
    let handles: Vec<_> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| spawn_slot(*s, i, shared.clone()))
        .collect();
    // Rounds close on their target or their deadline, so this ends.
    let limit = Duration::from_secs(120) * u32::try_from(cfg.rounds).unwrap_or(u32::MAX);
    let started = Instant::now();
    while !server.coordinator.finished().await && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    if !server.coordinator.finished().await {
        return Err(ZooError(format!(
            "the phase did not finish its {} rounds in {limit:?}",
            cfg.rounds
        )));
    }
    let ledger = read_ledger(&server.coordinator).await?;
    server.stop();
    let keys = registry.lock().map_err(zoo_err)?.clone();
    let refused = refusals.lock().map_err(zoo_err)?.clone();
    let cpu = cpu.lock().map_err(zoo_err)?.clone();
    Ok(Phase {
        ledger,
        slots,
        keys,
        refused,
        door,
        cpu,
    })
}

fn tempfile_dir() -> Result<TempDir, ZooError> {
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(zoo_err)?;
    let path = std::env::temp_dir().join(format!("lupus-zoo-{}", hex::encode(tag)));
    std::fs::create_dir_all(&path).map_err(zoo_err)?;
    Ok(TempDir(path))
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The keys of slot `i`, and the keys of every cheating worker slot.
impl Phase {
    fn keys_of(&self, i: usize) -> Vec<PublicKey> {
        self.keys
            .iter()
            .filter(|(_, s)| **s == i)
            .map(|(k, _)| *k)
            .collect()
    }

    fn cheating_worker(&self, key: &PublicKey) -> bool {
        self.keys
            .get(key)
            .and_then(|i| self.slots.get(*i))
            .is_some_and(|s| matches!(s, Slot::Worker(b) if *b != Behaviour::Honest))
    }

    /// A task whose work was accepted: credited, or accepted by every verifier (and
    /// not rejected by the referee) before its key was slashed for another task, which
    /// keeps it out of the merge. Tasks still waiting for a verdict when the last
    /// round closed are neither detected nor escaped.
    fn escaped(&self, t: &TaskFacts) -> bool {
        let accepted =
            !t.verdicts.is_empty() && t.verdicts.iter().all(|(_, a)| *a) && !t.referee_rejected;
        t.credited
            || (accepted
                && !t.worker_slashed
                && t.worker.is_some_and(|w| self.ledger.slashed.contains(&w)))
    }

    fn shares(&self, keys: &[PublicKey]) -> (u64, u64) {
        let kept = keys
            .iter()
            .filter_map(|k| self.ledger.balances.get(k))
            .sum();
        let after = keys
            .iter()
            .filter(|k| self.ledger.slashed.contains(k))
            .filter_map(|k| self.ledger.balances.get(k))
            .sum();
        (kept, after)
    }

    fn row(&self, i: usize, h: u32, m: u32, d: f64, phase: &'static str) -> Option<Row> {
        let slot = *self.slots.get(i)?;
        // The join flood is the rational zoo's (`rational::row`), not a row here.
        if slot.honest() || slot == Slot::JoinFlood {
            return None;
        }
        let keys = self.keys_of(i);
        let mine: HashSet<PublicKey> = keys.iter().copied().collect();
        let (shares_kept, shares_kept_after_slash) = self.shares(&keys);
        let keys_slashed = keys
            .iter()
            .filter(|k| self.ledger.slashed.contains(k))
            .count() as u64;
        let (mut tasks, mut detected, mut merged) = (0u64, 0u64, 0u64);
        let (case, expected, theory) = match slot {
            Slot::Worker(b) => {
                let expect = b.detection(h, m);
                for t in self.ledger.tasks.values() {
                    if !t.worker.is_some_and(|w| mine.contains(&w)) || !t.committed {
                        continue;
                    }
                    merged += u64::from(t.credited);
                    match expect {
                        Some(Expected::Expired) => {
                            tasks += 1;
                            detected += u64::from(!t.credited);
                        }
                        _ if t.worker_slashed || self.escaped(t) => {
                            tasks += 1;
                            detected += u64::from(t.worker_slashed);
                        }
                        _ => {}
                    }
                }
                let refused = self.refused.get(&i).copied().unwrap_or(0);
                tasks += refused;
                detected += refused;
                let (expected, theory) = match expect {
                    Some(Expected::Slashed(p)) => ("slashed, never merged".to_owned(), Some(p)),
                    Some(Expected::Refused) => {
                        ("refused at the door, nothing written".to_owned(), Some(1.0))
                    }
                    Some(Expected::Expired) => {
                        ("expires, never merged or credited".to_owned(), Some(1.0))
                    }
                    None => ("merged".to_owned(), None),
                };
                (b.name(), expected, theory)
            }
            Slot::JoinFlood => return None,
            Slot::Verifier(b) => {
                // Its wrong verdicts: accepting a cheat, rejecting honest work.
                for t in self.ledger.tasks.values() {
                    let cheat = t.worker.is_some_and(|w| self.cheating_worker(&w));
                    for (v, accepted) in &t.verdicts {
                        if !mine.contains(v) || *accepted != cheat {
                            continue;
                        }
                        tasks += 1;
                        // Caught if its key is slashed, for this task or another: a
                        // key is slashed once, and a liar that gave a second wrong
                        // verdict before the referee settled its first is slashed
                        // for the first only, forfeiting every credit all the same.
                        detected +=
                            u64::from(t.slashed.contains(v) || self.ledger.slashed.contains(v));
                        merged += u64::from(t.credited && cheat);
                    }
                }
                match b {
                    VerifierBehaviour::AlwaysAccept => (
                        "verifier: always pass".to_owned(),
                        "slashed when double-checked (theory: at least d)".to_owned(),
                        Some(d),
                    ),
                    _ => (
                        "verifier: always fail".to_owned(),
                        "overruled by the referee, slashed".to_owned(),
                        Some(1.0),
                    ),
                }
            }
        };
        Some(Row {
            case,
            phase,
            expected,
            tasks,
            detected,
            theory,
            theory_is_floor: slot == Slot::Verifier(VerifierBehaviour::AlwaysAccept),
            merged,
            keys: keys.len() as u64,
            keys_slashed,
            shares_kept,
            shares_kept_after_slash,
        })
    }
}

/// Runs the zoo (see the module docs).
pub async fn run(cfg: &ZooConfig) -> Result<Report, ZooError> {
    let started = Instant::now();
    let job = JobSpec::parse(&cfg.job_spec).map_err(zoo_err)?;
    let (h, m, d) = (
        job.inner.steps,
        job.verify.challenges,
        job.verify.double_check_fraction,
    );
    let honest = |n_w: usize, n_v: usize| {
        std::iter::repeat_n(Slot::Worker(Behaviour::Honest), n_w).chain(std::iter::repeat_n(
            Slot::Verifier(VerifierBehaviour::Honest),
            n_v,
        ))
    };
    let mut rows = Vec::new();

    // Phase 1 and 2: the door, then the cheating workers.
    let slots: Vec<Slot> = honest(cfg.honest_workers, cfg.honest_verifiers)
        .chain(cfg.worker_cases.iter().map(|b| Slot::Worker(*b)))
        .collect();
    let workers = if cfg.door || !cfg.worker_cases.is_empty() {
        Some(run_phase(cfg, slots, cfg.door).await?)
    } else {
        None
    };
    let door = workers.as_ref().map_or(&[][..], |p| &p.door[..]);
    for a in door {
        rows.push(Row {
            case: a.case.to_owned(),
            phase: "door",
            expected: "refused (4xx problem), nothing written".to_owned(),
            tasks: 1,
            detected: u64::from(a.refused()),
            theory: Some(1.0),
            theory_is_floor: false,
            merged: 0,
            keys: 1,
            keys_slashed: 0,
            shares_kept: 0,
            shares_kept_after_slash: 0,
        });
    }
    // Door attempts of the same case are one row each already; collapse nothing.
    rows.retain(|r| r.case != "honest submission");
    if let Some(p) = &workers {
        for i in 0..p.slots.len() {
            rows.extend(p.row(i, h, m, d, "workers"));
        }
    }

    // Phase 3: lying verifiers judging honest work and a worker that never trains.
    let slots: Vec<Slot> = honest(cfg.honest_workers.min(3), 1)
        .chain([Slot::Worker(Behaviour::LazyZero)])
        .chain(cfg.verifier_cases.iter().map(|b| Slot::Verifier(*b)))
        .collect();
    let liars = if cfg.verifier_cases.is_empty() {
        None
    } else {
        Some(run_phase(cfg, slots, false).await?)
    };
    if let Some(p) = &liars {
        for i in 0..p.slots.len() {
            if matches!(p.slots.get(i), Some(Slot::Verifier(_))) {
                rows.extend(p.row(i, h, m, d, "verifiers"));
            }
        }
    }

    // The honest baseline: phase 2 without its cheaters.
    let (baseline, again) = if cfg.baseline {
        let slots: Vec<Slot> = honest(cfg.honest_workers, cfg.honest_verifiers).collect();
        (
            Some(run_phase(cfg, slots.clone(), false).await?),
            Some(run_phase(cfg, slots, false).await?),
        )
    } else {
        (None, None)
    };
    Ok(Report {
        rows,
        losses: Losses {
            with_cheaters: workers.and_then(|p| p.ledger.final_loss),
            with_liars: liars.and_then(|p| p.ledger.final_loss),
            honest: baseline.and_then(|p| p.ledger.final_loss),
            honest_again: again.and_then(|p| p.ledger.final_loss),
        },
        steps: h,
        challenges: m,
        double_check_fraction: d,
        rounds: cfg.rounds,
        tasks_per_round: cfg.tasks_per_round,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report as the table `lupus-bench adversaries` prints.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "adversary zoo: H = {} steps, m = {} challenged, double-checked fraction {}, {} rounds of {} tasks per phase ({:.0} s)",
        r.steps, r.challenges, r.double_check_fraction, r.rounds, r.tasks_per_round, r.seconds
    );
    let _ = writeln!(
        s,
        "{:<32} {:<9} {:>5} {:>8} {:>6} {:>14} {:>6} {:>3} {:>6} {:>9} {:>9}  expected",
        "case",
        "phase",
        "tasks",
        "detected",
        "rate",
        "95% interval",
        "theory",
        "ok",
        "merged",
        "kept",
        "kept (sl)"
    );
    for row in &r.rows {
        let rate = row.rate().map_or("-".into(), |x| format!("{x:.3}"));
        let ci = row
            .interval()
            .map_or("-".into(), |(lo, hi)| format!("[{lo:.2}, {hi:.2}]"));
        let theory = row.theory.map_or("-".into(), |t| format!("{t:.3}"));
        let ok = match row.consistent() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            s,
            "{:<32} {:<9} {:>5} {:>8} {:>6} {:>14} {:>6} {:>3} {:>6} {:>9} {:>9}  {}",
            row.case,
            row.phase,
            row.tasks,
            row.detected,
            rate,
            ci,
            theory,
            ok,
            row.merged,
            row.shares_kept,
            row.shares_kept_after_slash,
            row.expected
        );
    }
    let l = &r.losses;
    let f = |x: Option<f32>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let e = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:+.2}%"));
    let _ = writeln!(
        s,
        "validation loss: honest only {}, with cheating workers {} ({}), with lying verifiers {} ({})",
        f(l.honest),
        f(l.with_cheaters),
        e(Losses::effect(l.with_cheaters, l.honest)),
        f(l.with_liars),
        e(Losses::effect(l.with_liars, l.honest)),
    );
    let _ = writeln!(
        s,
        "honest only, run again: {} ({}): the spread between two honest runs",
        f(l.honest_again),
        e(Losses::effect(l.honest_again, l.honest)),
    );
    let _ = writeln!(
        s,
        "(ok: theory inside the 99% Wilson interval (at or below it for a floor), or every task caught where theory is 1; kept: final shares of every key the case used; kept (sl): of its slashed keys)"
    );
    s
}
