//! The worker loop, in plain async Rust over a small [`Transport`]: fetch the job and the
//! dataset, join, ask for a task, fetch its base model, train `H` steps, commit, submit,
//! and answer the challenge with an opening (DESIGN.md, "The loop" 1-4).
//!
//! The same code runs in the browser (the transport is `fetch`, the control hooks are
//! the page's start/pause/throttle) and natively (tests drive it with an in-memory
//! transport). Steps run one at a time through `TaskBuilder`, so the control hook runs
//! between every two steps: pausing stops work within one step.
//!
//! Only the `lupus-api` contract is spoken: every path comes from `lupus_api::paths`,
//! every body is a `lupus_api::types` value, every `POST` is signed with
//! `lupus_api::sign::sign_request`.

use ed25519_dalek::SigningKey;
use lupus_api::model::decode_model;
use lupus_api::paths;
use lupus_api::problem::Problem;
use lupus_api::sign::sign_request;
use lupus_api::types::{
    B64, JobInfo, JoinRequest, NextRequest, OpeningReceipt, Sig, Submission, SubmissionReceipt,
    TaskDescription, TaskOffer, join_body, work_committed_body,
};
use lupus_ledger::entry::{Digest, Entry, PublicKey, Role};
use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{TaskBuilder, TaskRun};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::DeviceClass;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An HTTP answer: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request: method, path (with query), body and the signature headers, if signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// How requests reach the coordinator: `fetch` in the browser, anything in tests.
#[async_trait::async_trait(?Send)]
pub trait Transport {
    /// Sends one request. `Err` means the coordinator could not be reached at all.
    async fn send(&self, req: Request) -> Result<Response, String>;
    /// The current time in unix milliseconds (request timestamps).
    fn now_ms(&self) -> u64;
    /// 16 fresh random bytes (request nonces).
    fn nonce(&self) -> [u8; 16];
}

/// Why the worker stopped or a task failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error("the coordinator is unreachable: {0}")]
    Unreachable(String),
    #[error("the coordinator refused ({}): {}", .0.title, .0.detail)]
    Refused(Problem),
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
    #[error("local work failed: {0}")]
    Local(String),
}

impl WorkerError {
    /// Whether trying again later may succeed (the coordinator restarting, a conflict).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Unreachable(_) => true,
            WorkerError::Refused(p) => p.status == 409 || p.status == 429 || p.status >= 500,
            _ => false,
        }
    }
}

fn local(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Local(e.to_string())
}

/// What the training loop reports and asks between steps.
#[async_trait::async_trait(?Send)]
pub trait Control {
    /// Called after every step (`step` counts from 1). Waits while the volunteer has
    /// paused (or the throttle asks for rest); returns `false` to abandon the task.
    async fn after_step(
        &mut self,
        task: &TaskDescription,
        step: u32,
        steps: u32,
        loss: f32,
    ) -> bool;
}

/// Where training runs.
pub enum Backend {
    /// The CPU reference (in wasm in the browser).
    Cpu,
    /// The WGSL kernels, with the class the known-answer suite gave the device.
    #[cfg(feature = "gpu")]
    Gpu {
        device: crate::gpu::GpuDevice,
        class: DeviceClass,
    },
}

impl Backend {
    /// The class reported with each submission.
    pub fn class(&self) -> DeviceClass {
        match self {
            Backend::Cpu => DeviceClass::Exact,
            #[cfg(feature = "gpu")]
            Backend::Gpu { class, .. } => *class,
        }
    }
}

/// The outcome of one turn of the loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Turn {
    /// No task now; ask again after this many milliseconds.
    Wait { ms: u64, reason: String },
    /// The task was abandoned by the control hook (paused for good, page closing).
    Abandoned { task: TaskDescription },
    /// The task was trained, committed and opened.
    Done {
        task: TaskDescription,
        final_loss: f32,
        challenged: Vec<u32>,
    },
}

/// A joined worker: its key, the job, the dataset and the last base model.
pub struct Participant<T: Transport> {
    transport: T,
    key: SigningKey,
    pub info: JobInfo,
    pub job: JobSpec,
    pub corpus: Corpus,
    model: Option<(Digest, Vec<Tensor>)>,
}

impl<T: Transport> Participant<T> {
    /// Fetches the job and the dataset (checked against the job's dataset root) and joins
    /// as a worker named `name`.
    pub async fn connect(transport: T, key: SigningKey, name: &str) -> Result<Self, WorkerError> {
        let info: JobInfo = get_json(&transport, paths::JOB).await?;
        let job = JobSpec::parse(&info.job_spec).map_err(|e| WorkerError::Decode(e.to_string()))?;
        let data = blob(&transport, &info.dataset_blob).await?;
        let text = std::str::from_utf8(&data).map_err(|e| WorkerError::Decode(e.to_string()))?;
        let corpus = Corpus::from_text(text);
        let root = corpus
            .dataset_root(job.dataset.chunk_size)
            .map_err(|e| WorkerError::Decode(e.to_string()))?;
        if root.0 != info.dataset_root.0 {
            return Err(WorkerError::Decode(
                "the dataset does not match the job's dataset root".into(),
            ));
        }
        let me = Participant {
            transport,
            key,
            info,
            job,
            corpus,
            model: None,
        };
        me.join(name).await?;
        Ok(me)
    }

    /// This worker's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    async fn join(&self, name: &str) -> Result<(), WorkerError> {
        let entry = Entry::signed(join_body(self.public_key(), Role::Worker, name), &self.key)
            .map_err(local)?;
        let sig = entry
            .signature()
            .copied()
            .ok_or_else(|| local("the join entry carries no signature"))?;
        let req = JoinRequest {
            role: Role::Worker,
            name: name.to_owned(),
            signature: Sig(sig),
        };
        let _: serde_json::Value = self.post(paths::JOIN, &req).await?;
        Ok(())
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, WorkerError> {
        let body = serde_json::to_vec(body).map_err(local)?;
        let h = sign_request(
            &self.key,
            "POST",
            path,
            &body,
            self.transport.now_ms(),
            self.transport.nonce(),
        );
        let headers = h
            .pairs()
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .chain([("content-type", "application/json".to_owned())])
            .collect();
        let resp = self
            .transport
            .send(Request {
                method: "POST",
                path: path.to_owned(),
                headers,
                body,
            })
            .await
            .map_err(WorkerError::Unreachable)?;
        decode(resp)
    }

    async fn base_model(&mut self, hash: &Digest) -> Result<Vec<Tensor>, WorkerError> {
        if let Some((h, m)) = &self.model
            && h == hash
        {
            return Ok(m.clone());
        }
        let bytes = blob(&self.transport, hash).await?;
        let params =
            decode_model(&bytes, &self.job).map_err(|e| WorkerError::Decode(e.to_string()))?;
        self.model = Some((*hash, params.clone()));
        Ok(params)
    }

    /// One turn: ask for a task; train, submit and open it.
    pub async fn turn(
        &mut self,
        backend: &Backend,
        control: &mut dyn Control,
    ) -> Result<Turn, WorkerError> {
        let offer: TaskOffer = self.post(paths::TASKS_NEXT, &NextRequest {}).await?;
        let task = match offer {
            TaskOffer::Wait {
                retry_after_ms,
                reason,
            } => {
                return Ok(Turn::Wait {
                    ms: retry_after_ms,
                    reason,
                });
            }
            TaskOffer::Task(t) => t,
        };
        let base = self.base_model(&task.base_model).await?;
        let Some(run) = self.train(&task, &base, backend, control).await? else {
            return Ok(Turn::Abandoned { task });
        };
        let entry = Entry::signed(
            work_committed_body(task.task_id, self.public_key(), &run.commitment),
            &self.key,
        )
        .map_err(local)?;
        let submission = Submission {
            work_committed: B64(entry.encode()),
            delta: B64(run.delta.to_bytes()),
            final_opening: run.final_opening().map_err(local)?,
            device_class: backend.class(),
        };
        let receipt: SubmissionReceipt = self
            .post(&paths::submit(task.task_id.0), &submission)
            .await?;
        let ch = receipt.challenge;
        let opening = run
            .open(&self.job, &self.corpus, &ch.steps, ch.tolerant)
            .map_err(local)?;
        let _: OpeningReceipt = self.post(&paths::opening(task.task_id.0), &opening).await?;
        Ok(Turn::Done {
            task,
            final_loss: run.final_loss,
            challenged: ch.steps,
        })
    }

    /// Trains the task step by step; `None` when the control hook abandons it.
    async fn train(
        &self,
        task: &TaskDescription,
        base: &[Tensor],
        backend: &Backend,
        control: &mut dyn Control,
    ) -> Result<Option<TaskRun>, WorkerError> {
        let mut b = TaskBuilder::new(&self.job, &self.corpus, base, task.seed.0).map_err(local)?;
        let steps = self.job.inner.steps;
        for step in 0..steps {
            let loss = match backend {
                Backend::Cpu => b.run_step().map_err(local)?,
                #[cfg(feature = "gpu")]
                Backend::Gpu { device, .. } => {
                    let batch = b.batch().map_err(local)?;
                    let out = crate::gpu::train_step_gpu(
                        device,
                        &self.job.model,
                        &self.job.inner.adamw(),
                        b.state(),
                        &batch,
                    )
                    .await
                    .map_err(local)?;
                    let loss = out.loss;
                    b.record(&batch, out).map_err(local)?;
                    loss
                }
            };
            if !control.after_step(task, step + 1, steps, loss).await {
                return Ok(None);
            }
        }
        Ok(Some(b.finish().map_err(local)?))
    }
}

fn decode<R: DeserializeOwned>(resp: Response) -> Result<R, WorkerError> {
    if (200..300).contains(&resp.status) {
        serde_json::from_slice(&resp.body).map_err(|e| WorkerError::Decode(e.to_string()))
    } else {
        Err(WorkerError::Refused(
            serde_json::from_slice(&resp.body).unwrap_or_else(|_| {
                Problem::new(
                    resp.status,
                    "http",
                    "HTTP error",
                    String::from_utf8_lossy(&resp.body)
                        .chars()
                        .take(300)
                        .collect::<String>(),
                )
            }),
        ))
    }
}

async fn get(transport: &impl Transport, path: &str) -> Result<Response, WorkerError> {
    let resp = transport
        .send(Request {
            method: "GET",
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        })
        .await
        .map_err(WorkerError::Unreachable)?;
    Ok(resp)
}

async fn get_json<R: DeserializeOwned>(
    transport: &impl Transport,
    path: &str,
) -> Result<R, WorkerError> {
    decode(get(transport, path).await?)
}

/// Fetches a blob and checks that it hashes to its name.
async fn blob(transport: &impl Transport, hash: &Digest) -> Result<Vec<u8>, WorkerError> {
    let resp = get(transport, &paths::blob(hash)).await?;
    if !(200..300).contains(&resp.status) {
        return decode::<serde_json::Value>(resp).map(|_| Vec::new());
    }
    if Digest::of(&resp.body) != *hash {
        return Err(WorkerError::Decode(format!(
            "blob {hash} does not hash to its name"
        )));
    }
    Ok(resp.body)
}
