//! The native runner: the same worker and verifier loops as the browser, over HTTP/1.1
//! (hyper, no TLS), with a key file. `lupus worker` and `lupus verify` can run these.
//!
//! The loops' futures are not `Send` (the loop is shared with the single-threaded
//! browser). Await them on the task that owns them (`#[tokio::main]`'s main, a
//! `LocalSet`), or use [`spawn_worker`] / [`spawn_verifier`], which run them on a thread
//! of their own with a current-thread runtime. Training blocks that thread between
//! awaits, which is what a dedicated worker thread is for.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lupus_api::http::Http;
use lupus_api::types::TaskDescription;
use lupus_ledger::entry::Role;

use crate::conduct::{Conduct, Honest};
use crate::worker::{
    Backend, Control, Participant, RETRIES, RETRY_PAUSE_MS, Request, Response, Transport, Turn,
    VerifyTurn, WorkerError,
};

/// What a native participant needs.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    pub key: SigningKey,
    pub name: String,
    /// Train on the WGSL kernels (Vulkan) when the crate has the `gpu` feature and a
    /// device is found; the CPU reference otherwise.
    pub gpu: bool,
    /// How the participant acts where the protocol leaves a choice: [`Honest`] unless
    /// an adversarial test gives it one of the zoo's cheats.
    pub conduct: Arc<dyn Conduct + Send + Sync>,
    /// Where to record every request's latency and answer (the load benchmark).
    pub requests: Option<Arc<RequestLog>>,
}

impl NativeConfig {
    /// An honest CPU participant named `name` with `key`, of the coordinator at `url`.
    pub fn new(url: &str, key: SigningKey, name: &str) -> NativeConfig {
        NativeConfig {
            coordinator: url.to_owned(),
            key,
            name: name.to_owned(),
            gpu: false,
            conduct: Arc::new(Honest),
            requests: None,
        }
    }
}

/// What the load benchmark records of every request, shared by many participants:
/// the latency of each answered request, and the answers by class.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// Microseconds per answered request, since the last [`RequestLog::take_latencies`].
    latencies: Mutex<Vec<u32>>,
    /// 4xx answers.
    pub client_errors: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Requests that got no answer (refused or dropped connection, timeout).
    pub connection_errors: AtomicU64,
    /// The runtime the exchanges run on, if not the participant's own (see
    /// [`RequestLog::exchanging_on`]).
    io: Option<tokio::runtime::Handle>,
}

impl RequestLog {
    /// A log whose participants make every HTTP exchange on `io`, a runtime that runs
    /// nothing else, and time it there. Many participants share a thread in the load
    /// benchmark, and one that trains or replays holds that thread for milliseconds:
    /// an answer that arrived meanwhile would wait unread and count as the
    /// coordinator's latency. A volunteer's browser serves one participant.
    pub fn exchanging_on(io: tokio::runtime::Handle) -> RequestLog {
        RequestLog {
            io: Some(io),
            ..RequestLog::default()
        }
    }

    /// The latencies recorded since the last call (microseconds), leaving none.
    pub fn take_latencies(&self) -> Vec<u32> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn record(&self, started: std::time::Instant, answer: &Result<Response, String>) {
        match answer {
            Ok(r) => {
                if let Ok(mut l) = self.latencies.lock() {
                    l.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                let counter = match r.status {
                    400..=499 => &self.client_errors,
                    500.. => &self.server_errors,
                    _ => return,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.connection_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Counters the loops keep, readable while they run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Tasks trained, committed and opened (worker) or verdicts posted (verifier).
    pub done: AtomicU64,
    /// Transient failures retried.
    pub retries: AtomicU64,
    /// `(task, log index of its WorkCommitted)` of every submission the coordinator
    /// acknowledged with a receipt: what a crash must never lose.
    pub acknowledged: Mutex<Vec<(u64, u64)>>,
}

/// Reads a key file (64 hex digits, as `lupus keygen` writes and the page exports), or
/// creates one with a fresh random key.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, WorkerError> {
    let bad = |e: String| WorkerError::Local(format!("key file {}: {e}", path.display()));
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|e| bad(format!("expected 64 hex digits: {e}")))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| bad(e.to_string()))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| bad(e.to_string()))?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(seed)).as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// HTTP/1.1 to the coordinator.
pub struct HttpTransport {
    base: String,
    /// Its deadline is `lupus_api::http::DEFAULT_TIMEOUT` (an opening of a large job
    /// is tens of megabytes; a coordinator that hangs must not hang the worker).
    client: Http,
    requests: Option<Arc<RequestLog>>,
}

impl HttpTransport {
    /// A transport to `base` (`http://host:port`).
    pub fn new(base: &str) -> HttpTransport {
        HttpTransport {
            base: base.trim_end_matches('/').to_owned(),
            client: Http::new(),
            requests: None,
        }
    }

    /// Records every request's latency and answer into `log`.
    pub fn with_request_log(mut self, log: Arc<RequestLog>) -> HttpTransport {
        self.requests = Some(log);
        self
    }
}

#[async_trait::async_trait(?Send)]
impl Transport for HttpTransport {
    async fn send(&self, req: Request) -> Result<Response, String> {
        let url = format!("{}{}", self.base, req.path);
        let client = self.client.clone();
        let log = self.requests.clone();
        let timed = async move {
            let started = std::time::Instant::now();
            let answer = client
                .send(req.method, &url, &req.headers, req.body, None)
                .await
                .map(|a| Response {
                    status: a.status,
                    body: a.body.to_vec(),
                })
                .map_err(|e| e.to_string());
            if let Some(log) = &log {
                log.record(started, &answer);
            }
            answer
        };
        match self.requests.as_ref().and_then(|l| l.io.clone()) {
            Some(io) => io.spawn(timed).await.map_err(|e| e.to_string())?,
            None => timed.await,
        }
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn nonce(&self) -> [u8; 16] {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut n = [0u8; 16];
        if getrandom::fill(&mut n).is_err() {
            // No OS randomness: the time and a process-wide counter still make every
            // request's nonce different, which is all replay protection needs.
            n[..8].copy_from_slice(&self.now_ms().to_le_bytes());
            n[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        }
        n
    }

    async fn sleep(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Stops the training loop when `stop` is set.
struct Stop(Arc<AtomicBool>);

#[async_trait::async_trait(?Send)]
impl Control for Stop {
    async fn after_step(&mut self, _: &TaskDescription, _: u32, _: u32, _: f32) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

async fn backend(gpu: bool) -> Backend {
    #[cfg(feature = "gpu")]
    if gpu && let Ok(device) = crate::gpu::GpuDevice::new().await {
        let results = crate::gpu::run_suite_gpu(&device).await;
        let kat = lupus_prover::kat::combined_digest(&results);
        let class = lupus_prover::kat::decided_class(&lupus_prover::merkle::Digest(kat));
        return Backend::Gpu { device, class, kat };
    }
    let _ = gpu;
    Backend::Cpu
}

async fn rest(ms: u64, stop: &AtomicBool) {
    let mut left = ms.clamp(50, 5000);
    while left > 0 && !stop.load(Ordering::Relaxed) {
        let d = left.min(100);
        tokio::time::sleep(Duration::from_millis(d)).await;
        left -= d;
    }
}

/// Fetches the job and joins, retrying for up to two minutes while the coordinator
/// cannot be reached (it may be starting or restarting).
async fn connect(
    cfg: &NativeConfig,
    role: Role,
    stop: &Arc<AtomicBool>,
) -> Result<Participant<HttpTransport>, WorkerError> {
    let mut tries = 0;
    loop {
        let mut t = HttpTransport::new(&cfg.coordinator);
        if let Some(log) = &cfg.requests {
            t = t.with_request_log(Arc::clone(log));
        }
        match Participant::connect_as(t, cfg.key.clone(), &cfg.name, role).await {
            Err(e) if e.is_transient() && tries < RETRIES && !stop.load(Ordering::Relaxed) => {
                tries += 1;
                rest(RETRY_PAUSE_MS, stop).await;
            }
            Err(e) => return Err(e),
            Ok(p) => {
                let stop = Arc::clone(stop);
                return Ok(p.with_cancel(move || stop.load(Ordering::Relaxed)));
            }
        }
    }
}

/// The worker loop until `stop` is set. Returns the number of tasks done; an error only
/// for a refusal that retrying cannot fix (a slashed key, a bad job) or when the
/// coordinator cannot be reached at start.
pub async fn run_worker(
    cfg: NativeConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> Result<u64, WorkerError> {
    let mut p = connect(&cfg, Role::Worker, &stop)
        .await?
        .with_conduct(Arc::clone(&cfg.conduct));
    let backend = backend(cfg.gpu).await;
    let mut control = Stop(Arc::clone(&stop));
    while !stop.load(Ordering::Relaxed) {
        match p.turn(&backend, &mut control).await {
            Ok(Turn::Wait { ms, .. }) => rest(ms, &stop).await,
            Ok(Turn::Abandoned { .. }) => {}
            Ok(Turn::Done {
                task, entry_index, ..
            }) => {
                stats.done.fetch_add(1, Ordering::Relaxed);
                if let (Some(i), Ok(mut a)) = (entry_index, stats.acknowledged.lock()) {
                    a.push((task.task_id.0, i));
                }
            }
            Err(e) if e.is_transient() => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                rest(500, &stop).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats.done.load(Ordering::Relaxed))
}

/// The verifier loop until `stop` is set; returns the number of verdicts posted.
pub async fn run_verifier(
    cfg: NativeConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> Result<u64, WorkerError> {
    let mut p = connect(&cfg, Role::Verifier, &stop)
        .await?
        .with_conduct(Arc::clone(&cfg.conduct));
    while !stop.load(Ordering::Relaxed) {
        match p.verify_turn().await {
            Ok(VerifyTurn::Wait { ms, .. }) => rest(ms, &stop).await,
            Ok(VerifyTurn::Verdict { .. }) => {
                stats.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_transient() => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                rest(500, &stop).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats.done.load(Ordering::Relaxed))
}

fn spawn<F, Fut>(f: F) -> std::thread::JoinHandle<Result<u64, WorkerError>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, WorkerError>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WorkerError::Local(e.to_string()))?;
        rt.block_on(f())
    })
}

/// [`run_worker`] on a thread of its own.
pub fn spawn_worker(
    cfg: NativeConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> std::thread::JoinHandle<Result<u64, WorkerError>> {
    spawn(move || run_worker(cfg, stop, stats))
}

/// [`run_verifier`] on a thread of its own.
pub fn spawn_verifier(
    cfg: NativeConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> std::thread::JoinHandle<Result<u64, WorkerError>> {
    spawn(move || run_verifier(cfg, stop, stats))
}

/// A worker or a verifier, for [`spawn_group`].
#[derive(Clone, Debug)]
pub enum Member {
    Worker(NativeConfig),
    Verifier(NativeConfig),
}

/// Runs many participants on one thread (a current-thread runtime and a `LocalSet`):
/// they share the thread, taking turns at every await, so hundreds of simulated
/// volunteers need a handful of threads. Each gets its own [`Stats`], in order. The
/// thread returns the first error a participant stopped with, if any.
pub fn spawn_group(
    members: Vec<(Member, Arc<Stats>)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64, WorkerError>> {
    spawn(move || async move {
        let local = tokio::task::LocalSet::new();
        let handles: Vec<_> = members
            .into_iter()
            .map(|(m, stats)| {
                let stop = Arc::clone(&stop);
                local.spawn_local(async move {
                    match m {
                        Member::Worker(cfg) => run_worker(cfg, stop, stats).await,
                        Member::Verifier(cfg) => run_verifier(cfg, stop, stats).await,
                    }
                })
            })
            .collect();
        local
            .run_until(async move {
                let mut done = 0;
                let mut first_error = None;
                for h in handles {
                    match h.await {
                        Ok(Ok(n)) => done += n,
                        Ok(Err(e)) => {
                            first_error.get_or_insert(e);
                        }
                        Err(e) => {
                            first_error.get_or_insert(WorkerError::Local(e.to_string()));
                        }
                    }
                }
                first_error.map_or(Ok(done), Err)
            })
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/worker.key");
        let k1 = load_or_create_key(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.trim().len(),
            64,
            "64 hex digits, as `lupus keygen` writes"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        let k2 = load_or_create_key(&path).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        std::fs::write(dir.path().join("bad.key"), "not hex\n").unwrap();
        assert!(load_or_create_key(&dir.path().join("bad.key")).is_err());
    }
}
