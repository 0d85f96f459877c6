//! A native participant: a signed-request HTTP client ([`Client`]) and the worker and
//! verifier loops ([`run_worker`], [`run_verifier`]) over it.
//!
//! This is what `lupus worker`, `lupus verify`, `lupus demo` and the end-to-end tests
//! run. The loops speak only the `lupus-api` contract, so they exercise the server
//! exactly as any other client would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lupus_api::model::decode_model;
use lupus_api::paths;
use lupus_api::problem::Problem;
use lupus_api::sign::sign_request;
use lupus_api::types::{
    self as api, B64, JobInfo, Sig, TaskOffer, VerifyOffer, evidence_digest, verdict_body,
    work_committed_body,
};
use lupus_ledger::entry::{Digest, Entry, PublicKey, Role};
use lupus_prover::data::Corpus;
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{TaskBuilder, TaskRun, run_task};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::{DeviceClass, Verdict, verify_opening};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::now_ms;

/// Errors of talking to a coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the coordinator refused: {0}")]
    Problem(Problem),
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
    #[error("local work failed: {0}")]
    Local(String),
}

/// A client that signs every `POST` with the participant's key.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    key: Arc<SigningKey>,
    latencies: Option<Arc<std::sync::Mutex<Vec<u32>>>>,
}

impl Client {
    /// A client of the coordinator at `base` (`http://host:port`) with `key`.
    pub fn new(base: &str, key: SigningKey) -> Client {
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            key: Arc::new(key),
            latencies: None,
        }
    }

    /// Records every request's latency (microseconds) into `log` (for the load bench).
    pub fn with_latency_log(mut self, log: Arc<std::sync::Mutex<Vec<u32>>>) -> Client {
        self.latencies = Some(log);
        self
    }

    /// This participant's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&*self.key)
    }

    /// Sends a request; `POST`s are signed. Returns the status and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if method == "POST" {
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).map_err(|e| ClientError::Local(e.to_string()))?;
            let h = sign_request(&self.key, method, path, &body, now_ms(), nonce);
            for (name, value) in h.pairs() {
                req = req.header(name, value);
            }
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let connect = |detail: String| ClientError::Connect {
            url: url.clone(),
            detail,
        };
        let started = std::time::Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(600), self.http.request(req))
            .await
            .map_err(|_| connect("timed out".into()))?
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(e.to_string()))?
            .to_bytes();
        if let Some(log) = &self.latencies
            && let Ok(mut l) = log.lock()
        {
            l.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        Ok((status, bytes))
    }

    fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, ClientError> {
        if status >= 400 {
            let p = serde_json::from_slice::<Problem>(bytes).unwrap_or_else(|_| {
                Problem::new(
                    status,
                    "unknown",
                    "Error",
                    String::from_utf8_lossy(bytes).into_owned(),
                )
            });
            return Err(ClientError::Problem(p));
        }
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET` a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, bytes) = self.send("GET", path, Vec::new()).await?;
        Self::decode(status, &bytes)
    }

    /// `GET` raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, bytes) = self.send("GET", path, Vec::new()).await?;
        if status >= 400 {
            return Err(Self::decode::<()>(status, &bytes)
                .err()
                .unwrap_or_else(|| ClientError::Decode(format!("status {status}"))));
        }
        Ok(bytes)
    }

    /// Signed `POST` of a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Local(e.to_string()))?;
        let (status, bytes) = self.send("POST", path, body).await?;
        Self::decode(status, &bytes)
    }

    /// Joins as `role` (idempotent).
    pub async fn join(&self, role: Role, name: &str) -> Result<api::JoinResponse, ClientError> {
        let entry = Entry::signed(api::join_body(self.public_key(), role, name), &self.key)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let sig = entry
            .signature()
            .copied()
            .ok_or_else(|| ClientError::Local("join entry unsigned".into()))?;
        self.post(
            paths::JOIN,
            &api::JoinRequest {
                role,
                name: name.to_owned(),
                signature: Sig(sig),
            },
        )
        .await
    }

    /// Fetches a blob and checks its hash.
    pub async fn blob(&self, hash: &Digest) -> Result<Bytes, ClientError> {
        let bytes = self.get_bytes(&paths::blob(hash)).await?;
        if Digest::of(&bytes) != *hash {
            return Err(ClientError::Decode(format!(
                "blob {hash} does not hash to its name"
            )));
        }
        Ok(bytes)
    }

    /// The job, its spec parsed, and the dataset.
    pub async fn job(&self) -> Result<(JobInfo, JobSpec, Corpus), ClientError> {
        let info: JobInfo = self.get(paths::JOB).await?;
        let job = JobSpec::parse(&info.job_spec).map_err(|e| ClientError::Decode(e.to_string()))?;
        let data = self.blob(&info.dataset_blob).await?;
        let text = std::str::from_utf8(&data).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((info, job, Corpus::from_text(text)))
    }
}

/// How a worker behaves (tests and the demo use the dishonest one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// Trains honestly but submits a delta ten times larger than the one it trained,
    /// committing it in its trace: a worker trying to dominate the merge.
    InflatedDelta,
}

/// Counters a participant loop keeps.
#[derive(Debug, Default)]
pub struct ParticipantStats {
    pub tasks: AtomicU64,
    pub verdicts: AtomicU64,
    pub refusals: AtomicU64,
    /// `(task, log index of its WorkCommitted)` of every acknowledged submission.
    pub acknowledged: std::sync::Mutex<Vec<(u64, u64)>>,
}

/// Fetches and caches base models by hash.
struct Models {
    cache: HashMap<Digest, Arc<Vec<Tensor>>>,
}

impl Models {
    async fn get(
        &mut self,
        c: &Client,
        job: &JobSpec,
        hash: &Digest,
    ) -> Result<Arc<Vec<Tensor>>, ClientError> {
        if let Some(m) = self.cache.get(hash) {
            return Ok(Arc::clone(m));
        }
        let bytes = c.blob(hash).await?;
        let params = decode_model(&bytes, job).map_err(|e| ClientError::Decode(e.to_string()))?;
        let m = Arc::new(params);
        if self.cache.len() > 4 {
            self.cache.clear();
        }
        self.cache.insert(*hash, Arc::clone(&m));
        Ok(m)
    }
}

fn train(
    job: &JobSpec,
    corpus: &Corpus,
    base: &[Tensor],
    seed: [u8; 32],
    behaviour: Behaviour,
) -> Result<TaskRun, String> {
    match behaviour {
        Behaviour::Honest => {
            run_task(job, corpus, base, seed, &mut |_, _| {}).map_err(|e| e.to_string())
        }
        Behaviour::InflatedDelta => {
            let mut b = TaskBuilder::new(job, corpus, base, seed).map_err(|e| e.to_string())?;
            for _ in 0..job.inner.steps {
                b.run_step().map_err(|e| e.to_string())?;
            }
            let honest = lupus_prover::quant::quantise_delta(base, &b.state().params)
                .map_err(|e| e.to_string())?;
            let inflated = QuantDelta {
                tensors: honest
                    .tensors
                    .into_iter()
                    .map(|mut q| {
                        q.scale *= 10.0;
                        q
                    })
                    .collect(),
            };
            b.finish_with_delta(inflated).map_err(|e| e.to_string())
        }
    }
}

/// Sleeps for a `Wait` answer, or returns early when stopped.
async fn pause(ms: u64, stop: &AtomicBool) {
    let ms = ms.clamp(50, 2000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let _ = stop.load(Ordering::Relaxed);
}

/// Runs `f` again while the coordinator cannot be reached or answers 5xx (it may be
/// restarting), for up to two minutes.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Err(ClientError::Connect { .. }) if tries < 240 => {}
            Err(ClientError::Problem(p)) if p.status >= 500 && tries < 240 => {}
            other => return other,
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether an error is worth a retry (the coordinator restarting, a transient refusal).
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Problem(p) => p.status == 409 || p.status >= 500,
        _ => false,
    }
}

/// The worker loop: ask, train, commit, answer the challenge; until `stop` is set.
/// Returns an error only for a refusal that retrying cannot fix (for example a slashed
/// key) or if the coordinator cannot be reached at start.
pub async fn run_worker(
    client: Client,
    name: &str,
    behaviour: Behaviour,
    stop: Arc<AtomicBool>,
    stats: Arc<ParticipantStats>,
) -> Result<(), ClientError> {
    let (_, job, corpus) = retrying(|| client.job()).await?;
    let (job, corpus) = (Arc::new(job), Arc::new(corpus));
    retrying(|| client.join(Role::Worker, name)).await?;
    let mut models = Models {
        cache: HashMap::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        match worker_step(&client, &job, &corpus, &mut models, behaviour, &stats).await {
            Ok(Some(wait)) => pause(wait, &stop).await,
            Ok(None) => {}
            Err(e) if transient(&e) => {
                stats.refusals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "worker retries");
                pause(500, &stop).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn worker_step(
    client: &Client,
    job: &Arc<JobSpec>,
    corpus: &Arc<Corpus>,
    models: &mut Models,
    behaviour: Behaviour,
    stats: &ParticipantStats,
) -> Result<Option<u64>, ClientError> {
    let offer: TaskOffer = client.post(paths::TASKS_NEXT, &api::NextRequest {}).await?;
    let task = match offer {
        TaskOffer::Wait { retry_after_ms, .. } => return Ok(Some(retry_after_ms)),
        TaskOffer::Task(t) => t,
    };
    let base = models.get(client, job, &task.base_model).await?;
    let (j, c, b) = (Arc::clone(job), Arc::clone(corpus), Arc::clone(&base));
    let seed = task.seed.0;
    let run = Arc::new(
        tokio::task::spawn_blocking(move || train(&j, &c, &b, seed, behaviour))
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(ClientError::Local)?,
    );
    let entry = Entry::signed(
        work_committed_body(task.task_id, client.public_key(), &run.commitment),
        &client.key,
    )
    .map_err(|e| ClientError::Local(e.to_string()))?;
    let submission = api::Submission {
        work_committed: B64(entry.encode()),
        delta: B64(run.delta.to_bytes()),
        final_opening: run
            .final_opening()
            .map_err(|e| ClientError::Local(e.to_string()))?,
        device_class: DeviceClass::Exact,
    };
    // The submission and the opening are retried through connection failures (a
    // coordinator restarting): a commitment acknowledged before a crash is found again
    // through the task's status.
    let submit_path = paths::submit(task.task_id.0);
    let challenge = match retrying(|| {
        client.post::<_, api::SubmissionReceipt>(&submit_path, &submission)
    })
    .await
    {
        Ok(receipt) => {
            if let Ok(mut a) = stats.acknowledged.lock() {
                a.push((task.task_id.0, receipt.entry_index));
            }
            receipt.challenge
        }
        Err(ClientError::Problem(p)) if p.status == 409 => {
            let task_path = paths::task(task.task_id.0);
            let status: api::TaskStatus = retrying(|| client.get(&task_path)).await?;
            match status.challenge {
                Some(c) if status.state == api::TaskState::Committed => c,
                _ => return Err(ClientError::Problem(p)),
            }
        }
        Err(e) => return Err(e),
    };
    let (j, c, r) = (Arc::clone(job), Arc::clone(corpus), Arc::clone(&run));
    let ch = challenge;
    let opening = tokio::task::spawn_blocking(move || r.open(&j, &c, &ch.steps, ch.tolerant))
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let opening_path = paths::opening(task.task_id.0);
    let _: api::OpeningReceipt = retrying(|| client.post(&opening_path, &opening)).await?;
    stats.tasks.fetch_add(1, Ordering::Relaxed);
    Ok(None)
}

/// The verifier loop: ask, replay the challenged steps, sign the verdict.
pub async fn run_verifier(
    client: Client,
    name: &str,
    stop: Arc<AtomicBool>,
    stats: Arc<ParticipantStats>,
) -> Result<(), ClientError> {
    let (_, job, corpus) = retrying(|| client.job()).await?;
    let (job, corpus) = (Arc::new(job), Arc::new(corpus));
    retrying(|| client.join(Role::Verifier, name)).await?;
    let mut models = Models {
        cache: HashMap::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        match verifier_step(&client, &job, &corpus, &mut models, &stats).await {
            Ok(Some(wait)) => pause(wait, &stop).await,
            Ok(None) => {}
            Err(e) if transient(&e) => {
                stats.refusals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "verifier retries");
                pause(500, &stop).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn verifier_step(
    client: &Client,
    job: &Arc<JobSpec>,
    corpus: &Arc<Corpus>,
    models: &mut Models,
    stats: &ParticipantStats,
) -> Result<Option<u64>, ClientError> {
    let offer: VerifyOffer = client
        .post(paths::VERIFY_NEXT, &api::NextRequest {})
        .await?;
    let vj = match offer {
        VerifyOffer::Wait { retry_after_ms, .. } => return Ok(Some(retry_after_ms)),
        VerifyOffer::Job(j) => j,
    };
    let base = models.get(client, job, &vj.task.base_model).await?;
    let (j, c) = (Arc::clone(job), Arc::clone(corpus));
    let task = vj.task.clone();
    let steps = vj.steps.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        verify_opening(
            &j,
            &c,
            &base,
            &vj.task.seed.0,
            &vj.commitment,
            &vj.steps,
            &vj.opening,
            vj.device_class,
        )
    })
    .await
    .map_err(|e| ClientError::Local(e.to_string()))?
    .map_err(|e| ClientError::Local(e.to_string()))?;
    let (accepted, reason, proof) = match verdict {
        Verdict::Accept => (
            true,
            "every challenged step replays to the committed values".to_string(),
            None,
        ),
        Verdict::Reject {
            step,
            reason,
            fraud_proof,
        } => (
            false,
            format!("step {step:?}: {reason}"),
            fraud_proof.map(|p| *p),
        ),
    };
    let evidence = proof.as_ref().map(evidence_digest);
    let entry = Entry::signed(
        verdict_body(
            task.task_id,
            client.public_key(),
            accepted,
            steps,
            &reason,
            evidence,
        ),
        &client.key,
    )
    .map_err(|e| ClientError::Local(e.to_string()))?;
    let _: api::VerdictReceipt = client
        .post(
            &paths::verdict(task.task_id.0),
            &api::VerdictSubmission {
                verdict: B64(entry.encode()),
                fraud_proof: proof,
            },
        )
        .await?;
    stats.verdicts.fetch_add(1, Ordering::Relaxed);
    Ok(None)
}
