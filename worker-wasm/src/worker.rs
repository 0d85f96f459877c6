//! The worker loop, in plain async Rust over a small [`Transport`]: fetch the job and the
//! dataset, join, ask for a task, fetch its base model, train `H` steps, commit, submit,
//! and answer the challenge with an opening (DESIGN.md, "The loop" 1-4).
//!
//! The same code runs in the browser (the transport is `fetch`, the control hooks are
//! the page's start/pause/throttle) and natively (tests drive it with an in-memory
//! transport). Steps run one at a time through `TaskBuilder`, so the control hook runs
//! between every two steps: pausing stops work within one step.
//!
//! Where the protocol leaves a choice (what to train, whether to open, what verdict to
//! sign) the loop asks its [`Conduct`](crate::conduct::Conduct), honest unless a test
//! gives it another.
//!
//! Only the `lupus-api` contract is spoken: every path comes from `lupus_api::paths`,
//! every body is a `lupus_api::types` value, every `POST` is signed with
//! `lupus_api::sign::sign_request`.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::conduct::{Conduct, Honest, Judgement, TaskContext, VerifyContext};
use lupus_api::model::decode_model;
use lupus_api::paths;
use lupus_api::problem::Problem;
use lupus_api::sign::sign_request;
use lupus_api::types::{
    B64, JobInfo, JoinRequest, NextRequest, OpeningReceipt, Sig, Submission, SubmissionReceipt,
    TaskDescription, TaskOffer, TaskState, TaskStatus, VerdictReceipt, VerdictSubmission,
    VerifyOffer, evidence_digest, join_body, verdict_body, work_committed_body,
};
use lupus_ledger::entry::{Digest, Entry, PublicKey, Role};
use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::Opening;
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
    /// Waits `ms` milliseconds (between retries of a submission or an opening).
    async fn sleep(&self, ms: u64);
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
    /// The WGSL kernels, with the class the known-answer suite gave the device and
    /// the suite's [`lupus_prover::kat::combined_digest`] (its report, committed in
    /// each task's final leaf).
    #[cfg(feature = "gpu")]
    Gpu {
        device: crate::gpu::GpuDevice,
        class: DeviceClass,
        kat: [u8; 32],
    },
}

impl Backend {
    /// The known-answer report committed with each task: the reference's for the CPU
    /// (it is the reference), the suite's digest as the GPU ran it.
    pub fn kat(&self) -> [u8; 32] {
        match self {
            Backend::Cpu => lupus_prover::kat::expected_digest(),
            #[cfg(feature = "gpu")]
            Backend::Gpu { kat, .. } => *kat,
        }
    }

    /// The class the known-answer suite gave the device.
    pub fn class(&self) -> DeviceClass {
        match self {
            Backend::Cpu => DeviceClass::Exact,
            #[cfg(feature = "gpu")]
            Backend::Gpu { class, .. } => *class,
        }
    }
}

/// A task's training on one device: the CPU reference's committed step; on a GPU the
/// whole step (the state resident, the trace hashed on the device, one read-back a
/// step: [`crate::gpu::WholeStep`]) where it compiles for the task, else the
/// per-operator path (for example a step whose tensors exceed the device's binding
/// limit), and [`Self::path`] says which and why.
pub struct Trainer<'d> {
    backend: &'d Backend,
    #[cfg(feature = "gpu")]
    whole: Result<crate::gpu::WholeStep, String>,
}

impl<'d> Trainer<'d> {
    /// Prepares training of `b`'s task from its current state on `backend`.
    pub async fn new(
        backend: &'d Backend,
        b: &lupus_prover::task::TaskBuilder<'_>,
    ) -> Result<Trainer<'d>, WorkerError> {
        #[cfg(feature = "gpu")]
        let whole = match backend {
            Backend::Gpu { device, .. } => {
                let batch = b.batch().map_err(local)?;
                let job = b.job();
                crate::gpu::WholeStep::new(
                    device,
                    &job.model,
                    &job.inner.adamw(),
                    b.state(),
                    &batch,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Backend::Cpu => Err("the CPU trains".into()),
        };
        #[cfg(not(feature = "gpu"))]
        let _ = b;
        Ok(Trainer {
            backend,
            #[cfg(feature = "gpu")]
            whole,
        })
    }

    /// Which path trains, in words for the page or the log: on a GPU where the whole
    /// step did not compile, why.
    pub fn path(&self) -> String {
        match self.backend {
            Backend::Cpu => "the CPU reference".into(),
            #[cfg(feature = "gpu")]
            Backend::Gpu { .. } => match &self.whole {
                Ok(_) => "the whole GPU step".into(),
                Err(why) => {
                    format!("the per-operator GPU step (the whole step did not compile: {why})")
                }
            },
        }
    }

    /// Trains and commits the next step of `b` (the builder [`Self::new`] was given):
    /// the CPU reference's [`TaskBuilder::run_step`](lupus_prover::task::TaskBuilder::run_step),
    /// the whole GPU step, or the per-operator GPU step recorded into the builder.
    /// Returns the step's loss.
    pub async fn step(
        &mut self,
        b: &mut lupus_prover::task::TaskBuilder<'_>,
    ) -> Result<f32, WorkerError> {
        match self.backend {
            Backend::Cpu => b.run_step().map_err(local),
            #[cfg(feature = "gpu")]
            Backend::Gpu { device, .. } => {
                if let Ok(whole) = self.whole.as_mut() {
                    return crate::gpu::record_whole_step(device, whole, b)
                        .await
                        .map_err(local);
                }
                let batch = b.batch().map_err(local)?;
                let job = b.job();
                let out = crate::gpu::train_step_gpu(
                    device,
                    &job.model,
                    &job.inner.adamw(),
                    b.state(),
                    &batch,
                )
                .await
                .map_err(local)?;
                let loss = out.loss;
                b.record(&batch, out).map_err(local)?;
                Ok(loss)
            }
        }
    }
}

const JSON: &str = "application/json";
/// The opening's body: its binary encoding (`Opening::to_bytes`).
const OCTET_STREAM: &str = "application/octet-stream";

/// How many times a submission or an opening is sent again while the coordinator is
/// unreachable or answers 5xx (it may be restarting), [`RETRY_PAUSE_MS`] apart: two
/// minutes in all.
pub const RETRIES: u32 = 240;
/// The pause between two such tries.
pub const RETRY_PAUSE_MS: u64 = 500;

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
        /// Log index of the `WorkCommitted` entry, when the coordinator's receipt
        /// arrived (`None` when the commitment was found again through the task's
        /// status after the coordinator restarted).
        entry_index: Option<u64>,
    },
}

/// The outcome of one turn of the verifier loop.
#[derive(Clone, Debug, PartialEq)]
pub enum VerifyTurn {
    /// Nothing to verify now; ask again after this many milliseconds.
    Wait { ms: u64, reason: String },
    /// A verdict was signed and accepted by the coordinator.
    Verdict {
        task: TaskDescription,
        accepted: bool,
        reason: String,
    },
}

/// A joined participant (a worker or a verifier): its key, the job, the dataset and the
/// last base model.
pub struct Participant<T: Transport> {
    transport: T,
    key: SigningKey,
    pub info: JobInfo,
    pub job: JobSpec,
    pub corpus: Corpus,
    model: Option<(Digest, Vec<Tensor>)>,
    conduct: Arc<dyn Conduct + Send + Sync>,
    cancelled: Option<Box<dyn Fn() -> bool>>,
}

impl<T: Transport> Participant<T> {
    /// Fetches the job and the dataset (checked against the job's dataset root) and joins
    /// as a worker named `name`.
    pub async fn connect(transport: T, key: SigningKey, name: &str) -> Result<Self, WorkerError> {
        Self::connect_as(transport, key, name, Role::Worker).await
    }

    /// [`Participant::connect`] in the given role.
    pub async fn connect_as(
        transport: T,
        key: SigningKey,
        name: &str,
        role: Role,
    ) -> Result<Self, WorkerError> {
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
            conduct: Arc::new(Honest),
            cancelled: None,
        };
        me.join(name, role).await?;
        Ok(me)
    }

    /// Acts by `conduct` at the protocol's decision points instead of [`Honest`] (the
    /// adversary zoo's cheats; volunteers never call this).
    pub fn with_conduct(mut self, conduct: Arc<dyn Conduct + Send + Sync>) -> Self {
        self.conduct = conduct;
        self
    }

    /// Gives up retrying a submission or an opening as soon as `cancelled` says so (the
    /// participant is being stopped).
    pub fn with_cancel(mut self, cancelled: impl Fn() -> bool + 'static) -> Self {
        self.cancelled = Some(Box::new(cancelled));
        self
    }

    /// This worker's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    async fn join(&self, name: &str, role: Role) -> Result<(), WorkerError> {
        let entry =
            Entry::signed(join_body(self.public_key(), role, name), &self.key).map_err(local)?;
        let sig = entry
            .signature()
            .copied()
            .ok_or_else(|| local("the join entry carries no signature"))?;
        let req = JoinRequest {
            role,
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
        self.post_bytes(path, body, JSON).await
    }

    /// [`Self::post`] sent again, freshly signed each time, while the coordinator is
    /// unreachable or answers 5xx/429: work already done is not thrown away because the
    /// coordinator restarted. Other refusals are returned at once.
    async fn post_retrying<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, WorkerError> {
        let body = serde_json::to_vec(body).map_err(local)?;
        self.post_bytes_retrying(path, body, JSON).await
    }

    /// [`Self::post_retrying`] with a body already encoded as `content_type`.
    async fn post_bytes_retrying<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<R, WorkerError> {
        let mut tries = 0;
        loop {
            match self.post_bytes(path, body.clone(), content_type).await {
                Err(e) if retry_worthy(&e) && tries < RETRIES && !self.is_cancelled() => {
                    tries += 1;
                    self.transport.sleep(RETRY_PAUSE_MS).await;
                }
                other => return other,
            }
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.as_ref().is_some_and(|f| f())
    }

    async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<R, WorkerError> {
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
            .chain([("content-type", content_type.to_owned())])
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
        let ctx = TaskContext {
            job: &self.job,
            corpus: &self.corpus,
            base: &base,
            task: &task,
            me: self.public_key(),
            transport: &self.transport,
        };
        let trained = self.conduct.train(&ctx, backend, control).await?;
        let Some(run) = trained else {
            return Ok(Turn::Abandoned { task });
        };
        let entry = Entry::signed(
            work_committed_body(task.task_id, self.public_key(), &run.commitment),
            &self.key,
        )
        .map_err(local)?;
        let final_opening = run.final_opening().map_err(local)?;
        // The class is the one the committed known-answer report decides.
        let device_class = lupus_prover::kat::decided_class(&final_opening.leaf.kat);
        let submission = Submission {
            work_committed: B64(entry.encode()),
            delta: B64(run.delta.to_bytes()),
            final_opening,
            device_class,
        };
        let submitted: Result<SubmissionReceipt, _> = self
            .post_retrying(&paths::submit(task.task_id.0), &submission)
            .await;
        let (ch, entry_index) = match submitted {
            Ok(receipt) => (receipt.challenge, Some(receipt.entry_index)),
            // A conflict after a retry: the first try may have been committed before
            // the coordinator went away. If the task's status shows this commitment,
            // its challenge is ours to answer.
            Err(WorkerError::Refused(p)) if p.status == 409 => {
                let status: TaskStatus =
                    get_json(&self.transport, &paths::task(task.task_id.0)).await?;
                match status.challenge {
                    Some(c)
                        if status.state == TaskState::Committed
                            && status.worker == self.public_key() =>
                    {
                        (c, None)
                    }
                    _ => return Err(WorkerError::Refused(p)),
                }
            }
            Err(e) => return Err(e),
        };
        if !self.conduct.opens(&task, &ch.steps) {
            return Ok(Turn::Done {
                task,
                final_loss: run.final_loss,
                challenged: ch.steps,
                entry_index,
            });
        }
        let opening = run
            .open(&self.job, &self.corpus, &ch.steps, ch.tolerant, &self.key)
            .map_err(local)?
            .to_bytes();
        let _: OpeningReceipt = self
            .post_bytes_retrying(&paths::opening(task.task_id.0), opening, OCTET_STREAM)
            .await?;
        Ok(Turn::Done {
            task,
            final_loss: run.final_loss,
            challenged: ch.steps,
            entry_index,
        })
    }

    /// One turn of the verifier loop: ask for a task to verify, replay its challenged
    /// steps from the worker's opening, sign the verdict (with the fraud proof when the
    /// replay exposes one) and post it.
    pub async fn verify_turn(&mut self) -> Result<VerifyTurn, WorkerError> {
        let offer: VerifyOffer = self.post(paths::VERIFY_NEXT, &NextRequest {}).await?;
        let vj = match offer {
            VerifyOffer::Wait {
                retry_after_ms,
                reason,
            } => {
                return Ok(VerifyTurn::Wait {
                    ms: retry_after_ms,
                    reason,
                });
            }
            VerifyOffer::Job(j) => j,
        };
        let base = self.base_model(&vj.task.base_model).await?;
        let bytes = blob(&self.transport, &vj.opening_blob).await?;
        let opening = Opening::from_bytes(&bytes)
            .map_err(|e| WorkerError::Decode(format!("opening {}: {e}", vj.opening_blob)))?;
        drop(bytes);
        let me = self.public_key();
        let ctx = VerifyContext {
            job: &self.job,
            corpus: &self.corpus,
            base: &base,
            work: &vj,
            opening: &opening,
            verifier: &me,
        };
        let Judgement {
            accepted,
            reason,
            fraud_proof: proof,
            replay,
        } = self.conduct.judge(&ctx).await?;
        let evidence = match (accepted, &proof) {
            (false, Some(p)) => Some(evidence_digest(p)),
            (false, None) => None,
            (true, _) => replay,
        };
        let entry = Entry::signed(
            verdict_body(
                vj.task.task_id,
                self.public_key(),
                accepted,
                vj.steps.clone(),
                &reason,
                evidence,
            ),
            &self.key,
        )
        .map_err(local)?;
        let _: VerdictReceipt = self
            .post_retrying(
                &paths::verdict(vj.task.task_id.0),
                &VerdictSubmission {
                    verdict: B64(entry.encode()),
                    fraud_proof: proof,
                },
            )
            .await?;
        Ok(VerifyTurn::Verdict {
            task: vj.task,
            accepted,
            reason,
        })
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

/// Whether sending the same request again later may succeed: the coordinator is
/// unreachable, overloaded or failing (5xx, 429). A 409 is not retried here: it means
/// the state moved on, which the caller checks.
fn retry_worthy(e: &WorkerError) -> bool {
    match e {
        WorkerError::Unreachable(_) => true,
        WorkerError::Refused(p) => p.status == 429 || p.status >= 500,
        _ => false,
    }
}

async fn get(transport: &(impl Transport + ?Sized), path: &str) -> Result<Response, WorkerError> {
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

/// `GET path`, decoded from JSON (a refusal becomes [`WorkerError::Refused`]).
pub async fn get_json<R: DeserializeOwned>(
    transport: &(impl Transport + ?Sized),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_and_refusals_keep_the_problem() {
        let ok: serde_json::Value = decode(Response {
            status: 200,
            body: b"{\"a\":1}".to_vec(),
        })
        .unwrap();
        assert_eq!(ok["a"], 1);
        let p = Problem::new(409, "conflict", "Conflict", "try again");
        let e = decode::<serde_json::Value>(Response {
            status: 409,
            body: serde_json::to_vec(&p).unwrap(),
        })
        .unwrap_err();
        assert_eq!(e, WorkerError::Refused(p));
        assert!(e.is_transient());
        // A non-JSON error page still becomes a problem with its status.
        let e = decode::<serde_json::Value>(Response {
            status: 403,
            body: b"<html>no</html>".to_vec(),
        })
        .unwrap_err();
        assert!(matches!(&e, WorkerError::Refused(p) if p.status == 403));
        assert!(!e.is_transient());
        assert!(WorkerError::Unreachable("down".into()).is_transient());
        let bad = decode::<u32>(Response {
            status: 200,
            body: b"\"x\"".to_vec(),
        });
        assert!(matches!(bad, Err(WorkerError::Decode(_))));
    }
}
