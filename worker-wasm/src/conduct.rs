//! How a participant acts at the points where the protocol leaves it a choice: which
//! work it commits for a task, whether it answers the challenge, and what verdict it
//! signs. The loop ([`crate::worker::Participant`]) asks its [`Conduct`] at each of
//! them and does everything else (joining, signing, submitting, retrying) itself.
//!
//! Volunteers run [`Honest`], the only conduct in this crate: it trains the task's own
//! batches from the round's base, always opens, and replays the challenged steps
//! before it signs. The cheating conducts of the adversary zoo implement the same trait
//! in a test-support crate of their own (`lupus-zoo`), so the tests drive the very loop
//! volunteers run and the volunteer's wasm carries no cheat.

use std::fmt;

use lupus_api::types::{TaskDescription, VerifyJob};
use lupus_ledger::entry::{Digest, PublicKey};
use lupus_prover::data::Corpus;
use lupus_prover::fraud::FraudProof;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{Opening, TaskBuilder, TaskRun};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::{DeviceClass, ReplayDigest, Verdict, verify_opening_digests};

use crate::worker::{Backend, Control, Trainer, Transport, WorkerError};

/// What a conduct sees of a task it is to train.
pub struct TaskContext<'a> {
    pub job: &'a JobSpec,
    pub corpus: &'a Corpus,
    /// The round's base model, as fetched and checked against the task's hash.
    pub base: &'a [Tensor],
    pub task: &'a TaskDescription,
    /// The participant's own key.
    pub me: PublicKey,
    /// The coordinator, for reads (the public ledger).
    pub transport: &'a dyn Transport,
}

/// What a conduct sees of a task it is to verify.
pub struct VerifyContext<'a> {
    pub job: &'a JobSpec,
    pub corpus: &'a Corpus,
    /// The base model the task trained from.
    pub base: &'a [Tensor],
    /// The task, its commitment and its challenged steps.
    pub work: &'a VerifyJob,
    /// The worker's opening, fetched by its hash and decoded.
    pub opening: &'a Opening,
    /// The verifier's own public key: its replay digest is keyed by it.
    pub verifier: &'a PublicKey,
}

/// A verdict before it is signed.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub accepted: bool,
    /// Why, in words (it goes into the signed verdict entry).
    pub reason: String,
    /// The proof that backs a rejection, where the replay produced one.
    pub fraud_proof: Option<FraudProof>,
    /// An acceptance's proof of replay: the keyed digest of what the replay computed
    /// (`lupus_prover::verify::ReplayDigest`), signed into the verdict as its
    /// evidence, which the referee re-checks on a draw.
    pub replay: Option<Digest>,
}

/// A participant's choices at the protocol's decision points. Every method has the
/// honest answer as its default.
#[async_trait::async_trait(?Send)]
pub trait Conduct: fmt::Debug {
    /// Trains `ctx.task` and commits its trace; `None` when the control hook abandons
    /// the task (the volunteer paused for good, the page is closing).
    async fn train(
        &self,
        ctx: &TaskContext<'_>,
        backend: &Backend,
        control: &mut dyn Control,
    ) -> Result<Option<TaskRun>, WorkerError> {
        train_honestly(ctx, backend, control).await
    }

    /// Whether to answer the challenge of a submitted task, which asks `steps`, with
    /// an opening.
    fn opens(&self, _task: &TaskDescription, _steps: &[u32]) -> bool {
        true
    }

    /// The verdict on another worker's opening.
    async fn judge(&self, ctx: &VerifyContext<'_>) -> Result<Judgement, WorkerError> {
        replay(ctx)
    }
}

/// The protocol as written: what every volunteer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Honest;

impl Conduct for Honest {}

fn local(e: impl fmt::Display) -> WorkerError {
    WorkerError::Local(e.to_string())
}

/// Trains the task's own batches from the base, step by step on `backend`.
pub async fn train_honestly(
    ctx: &TaskContext<'_>,
    backend: &Backend,
    control: &mut dyn Control,
) -> Result<Option<TaskRun>, WorkerError> {
    let (job, task) = (ctx.job, ctx.task);
    let mut b = TaskBuilder::new(job, ctx.corpus, ctx.base, task.seed.0)
        .map_err(local)?
        .with_kat(backend.kat());
    let steps = job.inner.steps;
    let mut trainer = Trainer::new(backend, &b).await?;
    for step in 0..steps {
        let loss = trainer.step(&mut b).await?;
        if !control.after_step(task, step + 1, steps, loss).await {
            return Ok(None);
        }
    }
    Ok(Some(b.finish().map_err(local)?))
}

/// Replays the challenged steps from the worker's opening and judges by what it finds,
/// under the class the opening's committed known-answer report decides.
pub fn replay(ctx: &VerifyContext<'_>) -> Result<Judgement, WorkerError> {
    replay_as(ctx, lupus_prover::verify::opening_class(ctx.opening))
}

/// [`replay`] under the rule of `class`, whatever class the task reported.
pub fn replay_as(ctx: &VerifyContext<'_>, class: DeviceClass) -> Result<Judgement, WorkerError> {
    let w = ctx.work;
    let mut digest = [ReplayDigest::new(&ctx.verifier.0, w.task.task_id.0)];
    let verdict = verify_opening_digests(
        ctx.job,
        ctx.corpus,
        ctx.base,
        &w.task.seed.0,
        &w.commitment,
        &w.task.worker.0,
        &w.steps,
        ctx.opening,
        class,
        &mut digest,
    )
    .map_err(local)?;
    Ok(match verdict {
        Verdict::Accept => Judgement {
            accepted: true,
            reason: "every challenged step replays to the committed values".to_owned(),
            fraud_proof: None,
            replay: Some(Digest(digest[0].finish().0)),
        },
        Verdict::Reject {
            step,
            reason,
            fraud_proof,
        } => Judgement {
            accepted: false,
            reason: format!("step {step:?}: {reason}"),
            fraud_proof: fraud_proof.map(|p| *p),
            replay: None,
        },
    })
}
