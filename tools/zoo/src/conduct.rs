//! The adversary zoo's workers and verifiers: how each cheat departs from the protocol,
//! as a [`Conduct`] of the real worker loop (`lupus_worker::worker::Participant`) so
//! that what the adversarial tests and `lupus-bench adversaries` exercise is the client
//! volunteers run. The cheats live here, not in `lupus-worker`, so the volunteer's wasm
//! carries none of them.
//!
//! DESIGN.md ("Trace and commitment", Detection; "Coordinator", the referee). A worker
//! cheat departs in [`Conduct::train`] (which batches it trains on, [`task_seed`]; the
//! steps it commits and the delta it submits, [`train`]) and [`Conduct::opens`]
//! (whether it answers its challenge); a verifier cheat in [`Conduct::judge`]. Every
//! cheat commits a trace that is well formed (it hashes, its final leaf opens), so it
//! passes the coordinator's door and only the challenged replay can tell: what each one
//! must come to, and at what rate, is [`Behaviour::detection`].
//!
//! Cheats train on the CPU reference: they are simulations, not volunteers.

use lupus_api::paths;
use lupus_api::types::TaskDescription;
use lupus_ledger::entry::{EntryBody, PublicKey};
use lupus_prover::data::Corpus;
use lupus_prover::graph::{StepOutput, ValueRef, train_step};
use lupus_prover::ops::OpKind;
use lupus_prover::prf::{PrfStream, prf};
use lupus_prover::quant::{QTensor, QuantDelta, quantise_delta};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{TaskBuilder, TaskRun};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::DeviceClass;
use lupus_worker::conduct::{
    Conduct, Judgement, TaskContext, VerifyContext, replay, replay_as, train_honestly,
};
use lupus_worker::worker::{Backend, Control, Transport, WorkerError, get_json};

/// How a worker departs from the protocol. Volunteers are [`Behaviour::Honest`]; the
/// other variants are the cheats of the adversary zoo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Behaviour {
    #[default]
    Honest,
    /// Trains honestly but submits a delta 20% larger than the one it trained,
    /// committing it in its trace: a worker trying to weigh more in the merge, just
    /// under the coordinator's bound on how far `H` steps can move a parameter (a
    /// larger one is [`Behaviour::HugeLastStep`]'s fate).
    InflatedDelta,
    /// Does not train: every committed step leaves the parameters where they were, so
    /// the delta it submits is zero.
    LazyZero,
    /// Does not train either, and submits a random delta (committed in its trace).
    LazyRandom,
    /// Trains, but fakes each step with probability `permille / 1000`: the step's
    /// update of the first parameter tensor is skipped (committed consistently), a
    /// worker saving a fraction of its work.
    FakeSteps { permille: u16 },
    /// Submits another worker's work: the trace, delta and opening of the latest task
    /// the log assigned to someone else in the same round, bit for bit (recomputed from
    /// that task's public seed, which gives the same bits).
    CopyOther,
    /// Trains honestly on batches of its own choosing instead of the task's.
    WrongBatches,
    /// Trains from a base model of its own (the round's model shifted by `lr / 10`, a
    /// stale or tampered copy close enough to pass the delta bound) and reports the
    /// delta against the round's real base, so that only step 0 gives it away.
    WrongBase,
    /// Trains honestly but its last step jumps every parameter by 100: a huge-norm
    /// delta, consistent with its trace everywhere but at step `H-1`. No `H` AdamW
    /// steps move a parameter that far, so the coordinator refuses it at the door.
    HugeLastStep,
    /// Trains, commits and submits honestly, then never opens its challenged steps.
    NeverOpen,
    /// Selective opening (issue 13): trains honestly, pushes every parameter by
    /// `lr / 2` at its last step (a poison within the delta bound, consistent with
    /// its trace everywhere but at step `H-1`), and opens only when step `H-1` was not
    /// challenged.
    PoisonLastUnlessChallenged,
    /// Claim squatting: takes a task and never trains or commits it, holding the slot
    /// until the task expires, again and again.
    Squat,
    /// An honest worker on a tolerant-class device: every step's updated parameters
    /// come out an ulp off the CPU reference, up or down by a pseudo-random draw per
    /// element, as a GPU's reordered arithmetic might, committed consistently, and
    /// the submission says `Tolerant`. Well within the job's tolerance and pointing
    /// nowhere in particular: its work must be accepted.
    TolerantDevice,
    /// The patient Sybil worker (issue 13): trains honestly for its key's first
    /// `honest` tasks (to leave probation), then fakes every step. Run through
    /// [`Patient`], which counts a key's tasks.
    PatientFake { honest: u16 },
    /// Tolerant-class nudges (issue 13): claims the tolerant class and, at every step,
    /// moves every parameter tensor along the all-ones direction by 0.9 of the job's
    /// tolerance (relative L2), committed consistently: each step passes the per-step
    /// bound, and the pushes add up; two opened steps' pushes share their direction.
    TolerantNudge,
}

/// How a verifier departs from the protocol (see [`Behaviour`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifierBehaviour {
    /// Replays the challenged steps and signs what it found.
    #[default]
    Honest,
    /// Signs "accepted" without replaying anything.
    AlwaysAccept,
    /// Signs "rejected" without replaying anything (and without a fraud proof).
    AlwaysReject,
    /// Sends an exact-class fraud proof whenever the exact replay gives one, whatever
    /// class the task is (issue 13: an honest tolerant-class worker's bits differ from
    /// the CPU reference by what its class allows); otherwise replays honestly.
    ExactProofs,
    /// A Sybil partner (issue 13): on a task of its coalition's workers it signs
    /// `accept` without replaying; on anyone else's it replays honestly. Run through
    /// [`crate::rational::Partner`], which knows the coalition.
    Partner { accept: bool },
}

/// What must become of a cheat's task, and how often.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expected {
    /// The worker is slashed for the task with this probability (`1` for a cheat every
    /// challenge exposes, `1-(1-f)^m` for a fraction `f` of faked steps, `m/H` for one
    /// faked step out of `H`); a task that escapes is merged.
    Slashed(f64),
    /// The submission is refused at the door (4xx, nothing written).
    Refused,
    /// The task is never merged nor credited: its slot expires and is handed out again.
    Expired,
}

impl Behaviour {
    /// What must become of one task of this cheat under a job of `h` inner steps with
    /// `m` challenged steps; `None` for an honest worker.
    pub fn detection(&self, h: u32, m: u32) -> Option<Expected> {
        let (h, m) = (f64::from(h.max(1)), f64::from(m.min(h)));
        Some(match self {
            Behaviour::Honest => return None,
            Behaviour::InflatedDelta
            | Behaviour::LazyZero
            | Behaviour::LazyRandom
            | Behaviour::CopyOther
            | Behaviour::WrongBatches => Expected::Slashed(1.0),
            Behaviour::FakeSteps { permille } => {
                let f = f64::from((*permille).min(1000)) / 1000.0;
                Expected::Slashed(1.0 - (1.0 - f).powf(m))
            }
            // One faked step of H, challenged by m distinct steps: m/H exactly.
            Behaviour::WrongBase => Expected::Slashed(m / h),
            Behaviour::HugeLastStep => Expected::Refused,
            Behaviour::NeverOpen | Behaviour::Squat => Expected::Expired,
            Behaviour::TolerantDevice => return None,
            // Caught whenever an honest verifier or the referee judges a fake.
            Behaviour::PatientFake { .. } => Expected::Slashed(1.0),
            // Within the per-step bound every step: never caught.
            Behaviour::TolerantNudge => Expected::Slashed(0.0),
            // Declined when step H-1 is challenged (m/H), merged otherwise.
            Behaviour::PoisonLastUnlessChallenged => Expected::Expired,
        })
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Behaviour::Honest => "honest".into(),
            Behaviour::InflatedDelta => "inflated delta (x1.2)".into(),
            Behaviour::LazyZero => "lazy: zero delta".into(),
            Behaviour::LazyRandom => "lazy: random delta".into(),
            Behaviour::FakeSteps { permille } => {
                format!("fake steps f={}", f64::from(*permille) / 1000.0)
            }
            Behaviour::CopyOther => "copies another's work".into(),
            Behaviour::WrongBatches => "wrong batches".into(),
            Behaviour::WrongBase => "wrong base model".into(),
            Behaviour::HugeLastStep => "huge-norm delta".into(),
            Behaviour::NeverOpen => "never opens".into(),
            Behaviour::PoisonLastUnlessChallenged => "selective opening, last-step poison".into(),
            Behaviour::Squat => "claim squatting".into(),
            Behaviour::TolerantDevice => "honest tolerant-class device".into(),
            Behaviour::TolerantNudge => "tolerant-class nudges".into(),
            Behaviour::PatientFake { honest } => {
                format!("honest for {honest} tasks, then fakes")
            }
        }
    }
}

/// A worker cheat departs when it trains and when it opens; it judges honestly (it is
/// never a verifier).
#[async_trait::async_trait(?Send)]
impl Conduct for Behaviour {
    async fn train(
        &self,
        ctx: &TaskContext<'_>,
        backend: &Backend,
        control: &mut dyn Control,
    ) -> Result<Option<TaskRun>, WorkerError> {
        if *self == Behaviour::Honest {
            return train_honestly(ctx, backend, control).await;
        }
        if *self == Behaviour::Squat {
            // Hold the task without working on it; the loop asks again later.
            return Ok(None);
        }
        let seed = task_seed(*self, ctx.transport, ctx.task, &ctx.me).await?;
        train(
            *self, ctx.job, ctx.corpus, ctx.base, seed, ctx.task, control,
        )
        .await
    }

    fn opens(&self, task: &TaskDescription, steps: &[u32]) -> bool {
        match self {
            Behaviour::NeverOpen => false,
            Behaviour::PoisonLastUnlessChallenged => {
                !steps.contains(&task.inner_steps.saturating_sub(1))
            }
            _ => true,
        }
    }
}

/// [`Behaviour::PatientFake`] for one key: honest for its first `honest` tasks, then
/// every step faked.
#[derive(Debug)]
pub struct Patient {
    pub honest: u16,
    pub trained: std::sync::atomic::AtomicU16,
}

#[async_trait::async_trait(?Send)]
impl Conduct for Patient {
    async fn train(
        &self,
        ctx: &TaskContext<'_>,
        backend: &Backend,
        control: &mut dyn Control,
    ) -> Result<Option<TaskRun>, WorkerError> {
        use std::sync::atomic::Ordering;
        let n = self.trained.fetch_add(1, Ordering::Relaxed);
        if n < self.honest {
            return train_honestly(ctx, backend, control).await;
        }
        let fake = Behaviour::FakeSteps { permille: 1000 };
        train(
            fake,
            ctx.job,
            ctx.corpus,
            ctx.base,
            ctx.task.seed.0,
            ctx.task,
            control,
        )
        .await
    }
}

/// The known-answer report `b`'s worker commits: a tolerant device's own (the
/// tolerant behaviours report a suite that did not match the reference, so their
/// tasks are judged in the tolerant class), else the reference's.
pub fn known_answer_report(b: Behaviour) -> [u8; 32] {
    match b {
        Behaviour::TolerantDevice | Behaviour::TolerantNudge => {
            blake3::derive_key("lupus zoo tolerant device report", &[])
        }
        _ => lupus_prover::kat::expected_digest(),
    }
}

/// A verifier cheat departs only in its verdict.
#[async_trait::async_trait(?Send)]
impl Conduct for VerifierBehaviour {
    async fn judge(&self, ctx: &VerifyContext<'_>) -> Result<Judgement, WorkerError> {
        let (accepted, reason) = match self {
            // A partner without its coalition (never so in the zoo) replays.
            VerifierBehaviour::Honest | VerifierBehaviour::Partner { .. } => return replay(ctx),
            VerifierBehaviour::ExactProofs => return exact_proofs(ctx),
            VerifierBehaviour::AlwaysAccept => (true, "accepted without replaying"),
            VerifierBehaviour::AlwaysReject => (false, "rejected without replaying"),
        };
        Ok(Judgement {
            accepted,
            reason: reason.to_owned(),
            fraud_proof: None,
            replay: accepted.then(|| unreplayed_digest(ctx)),
        })
    }
}

/// The replay digest a verifier that did not replay signs: the keyed digest of no
/// steps, the best it has (it does not know the replay's op outputs).
pub(crate) fn unreplayed_digest(ctx: &VerifyContext<'_>) -> lupus_ledger::entry::Digest {
    let d = lupus_prover::verify::ReplayDigest::new(&ctx.verifier.0, ctx.work.task.task_id.0);
    lupus_ledger::entry::Digest(d.finish().0)
}

/// [`VerifierBehaviour::ExactProofs`]: the exact replay's fraud proof if it has one,
/// else the honest verdict.
fn exact_proofs(ctx: &VerifyContext<'_>) -> Result<Judgement, WorkerError> {
    match replay_as(ctx, DeviceClass::Exact)? {
        j @ Judgement {
            fraud_proof: Some(_),
            ..
        } => Ok(j),
        _ => replay(ctx),
    }
}

/// The seed whose batches the worker trains on (the loop's first hook): the task's own,
/// except for the cheats that train on other batches.
pub async fn task_seed(
    b: Behaviour,
    transport: &dyn Transport,
    task: &TaskDescription,
    me: &PublicKey,
) -> Result<[u8; 32], WorkerError> {
    Ok(match b {
        Behaviour::WrongBatches => prf(&task.seed.0, "lupus zoo wrong batches", &[]),
        Behaviour::CopyOther => copied_seed(transport, task, me)
            .await?
            .unwrap_or_else(|| prf(&task.seed.0, "lupus zoo nothing to copy", &[])),
        _ => task.seed.0,
    })
}

/// The seed of the latest task the log assigned to another worker in the same round
/// before this one: task seeds are public ledger entries, and training on one gives
/// that worker's trace, delta and opening bit for bit.
async fn copied_seed(
    transport: &dyn Transport,
    task: &TaskDescription,
    me: &PublicKey,
) -> Result<Option<[u8; 32]>, WorkerError> {
    let mut index = task.entry_index;
    // Look back a bounded distance: the round's other assignments are recent.
    for _ in 0..256 {
        let Some(i) = index.checked_sub(1) else {
            return Ok(None);
        };
        index = i;
        let view: EntryJson = get_json(transport, &paths::entry(i)).await?;
        match &view.entry.body {
            EntryBody::TaskAssigned {
                worker,
                seed,
                round,
                ..
            } if worker != me && *round == task.round => return Ok(Some(seed.0)),
            EntryBody::RoundOpened { .. } => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

/// The part of `GET /v1/entries/<i>` ([`lupus_api::types::EntryView`]) a copier reads.
#[derive(serde::Deserialize)]
struct EntryJson {
    entry: BodyJson,
}

#[derive(serde::Deserialize)]
struct BodyJson {
    body: EntryBody,
}

fn local(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Local(e.to_string())
}

/// Replaces parameter `i`'s update in a step's tape and its next state, so the step is
/// committed as if the update had given `new`.
fn rewrite_param(out: &mut StepOutput, i: usize, new: Tensor) {
    let op = out.ops.iter_mut().find(|r| {
        matches!(r.kind, OpKind::AdamWUpdate { .. })
            && r.inputs.first() == Some(&ValueRef::Param(i as u32))
    });
    if let Some(slot) = op.and_then(|r| r.outputs.first_mut()) {
        *slot = new.clone();
    }
    if let Some(p) = out.state.params.get_mut(i) {
        *p = new;
    }
}

/// `t` with `f` applied to every element.
fn map(t: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor, WorkerError> {
    Tensor::new(t.shape().to_vec(), t.data().iter().map(|&x| f(x)).collect()).map_err(local)
}

/// Trains and commits a task as the cheat `b` does (the loop's training hook); `None`
/// when the control hook abandons it.
#[allow(clippy::too_many_arguments)]
pub async fn train(
    b: Behaviour,
    job: &JobSpec,
    corpus: &Corpus,
    base: &[Tensor],
    seed: [u8; 32],
    task: &TaskDescription,
    control: &mut dyn Control,
) -> Result<Option<TaskRun>, WorkerError> {
    let steps = job.inner.steps;
    let trained_from: Vec<Tensor> = match b {
        Behaviour::WrongBase => {
            let shift = job.inner.lr * 0.1;
            base.iter()
                .map(|t| map(t, |x| x + shift))
                .collect::<Result<_, _>>()?
        }
        _ => base.to_vec(),
    };
    // Every state is kept: a faked step cannot be rebuilt by honest replay from a
    // checkpoint, and the cheat must still answer its challenge.
    let mut builder = TaskBuilder::new(job, corpus, &trained_from, seed)
        .map_err(local)?
        .with_checkpoint_interval(1)
        .with_kat(known_answer_report(b));
    let mut coin = PrfStream::new(&seed, "lupus zoo fake coin", &[]);
    for step in 0..steps {
        let batch = builder.batch().map_err(local)?;
        let before = builder.state().params.clone();
        let mut out =
            train_step(&job.model, &job.inner.adamw(), builder.state(), &batch).map_err(local)?;
        match b {
            Behaviour::LazyZero | Behaviour::LazyRandom => {
                for (i, p) in before.into_iter().enumerate() {
                    rewrite_param(&mut out, i, p);
                }
            }
            Behaviour::FakeSteps { permille } => {
                let draw = coin.below(std::num::NonZeroU64::MIN.saturating_add(999));
                if draw < u64::from(permille)
                    && let Some(p) = before.into_iter().next()
                {
                    rewrite_param(&mut out, 0, p);
                }
            }
            Behaviour::TolerantDevice => {
                for i in 0..out.state.params.len() {
                    let p = &out.state.params[i];
                    let ulps: Vec<f32> = p
                        .data()
                        .iter()
                        .map(|x| {
                            let up = coin.below(std::num::NonZeroU64::MIN.saturating_add(1)) == 1;
                            let bits = if up {
                                x.to_bits().wrapping_add(1)
                            } else {
                                x.to_bits().wrapping_sub(1)
                            };
                            let y = f32::from_bits(bits);
                            if x.is_finite() && *x != 0.0 && y.is_finite() {
                                y
                            } else {
                                *x
                            }
                        })
                        .collect();
                    let off = Tensor::new(p.shape().to_vec(), ulps).map_err(local)?;
                    rewrite_param(&mut out, i, off);
                }
            }
            Behaviour::TolerantNudge => {
                for i in 0..out.state.params.len() {
                    let p = &out.state.params[i];
                    let norm = p
                        .data()
                        .iter()
                        .map(|x| f64::from(*x) * f64::from(*x))
                        .sum::<f64>()
                        .sqrt();
                    let n = p.data().len().max(1) as f64;
                    let push = (0.9 * f64::from(job.verify.tolerance) * norm / n.sqrt()) as f32;
                    let nudged = map(p, |x| x + push)?;
                    rewrite_param(&mut out, i, nudged);
                }
            }
            Behaviour::PoisonLastUnlessChallenged if step + 1 == steps => {
                let push = job.inner.lr * 0.5;
                for i in 0..out.state.params.len() {
                    let fake = map(&out.state.params[i], |x| x + push)?;
                    rewrite_param(&mut out, i, fake);
                }
            }
            Behaviour::HugeLastStep if step + 1 == steps => {
                for i in 0..out.state.params.len() {
                    let fake = map(&out.state.params[i], |x| x + 100.0)?;
                    rewrite_param(&mut out, i, fake);
                }
            }
            _ => {}
        }
        let loss = out.loss;
        builder.record(&batch, out).map_err(local)?;
        if !control.after_step(task, step + 1, steps, loss).await {
            return Ok(None);
        }
    }
    let delta = match b {
        Behaviour::InflatedDelta => {
            let honest = quantise_delta(base, &builder.state().params).map_err(local)?;
            Some(QuantDelta {
                tensors: honest
                    .tensors
                    .into_iter()
                    .map(|mut q| {
                        q.scale *= 1.2;
                        q
                    })
                    .collect(),
            })
        }
        Behaviour::LazyRandom => {
            let mut noise = PrfStream::new(&seed, "lupus zoo random delta", &[]);
            let honest = quantise_delta(base, &builder.state().params).map_err(local)?;
            Some(QuantDelta {
                tensors: honest
                    .tensors
                    .into_iter()
                    .map(|q| QTensor {
                        values: q
                            .values
                            .iter()
                            .map(|_| {
                                (noise.below(std::num::NonZeroU64::MIN.saturating_add(254)) as i64
                                    - 127) as i8
                            })
                            .collect(),
                        scale: 0.001,
                        shape: q.shape,
                    })
                    .collect(),
            })
        }
        // Against the round's real base, which the verifier checks the delta with.
        Behaviour::WrongBase => Some(quantise_delta(base, &builder.state().params).map_err(local)?),
        _ => None,
    };
    let run = match delta {
        Some(d) => builder.finish_with_delta(d),
        None => builder.finish(),
    };
    Ok(Some(run.map_err(local)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lupus_api::types::TaskDescription;
    use lupus_ledger::entry::{Digest as LDigest, Round, TaskId};
    use lupus_prover::model::init_params;
    use lupus_prover::verify::{DeviceClass, verify_opening};

    struct Go;

    #[async_trait::async_trait(?Send)]
    impl Control for Go {
        async fn after_step(&mut self, _: &TaskDescription, _: u32, _: u32, _: f32) -> bool {
            true
        }
    }

    fn task(seed: [u8; 32]) -> TaskDescription {
        TaskDescription {
            task_id: TaskId(1),
            round: Round(1),
            worker: PublicKey([1; 32]),
            base_model: LDigest([0; 32]),
            seed: LDigest(seed),
            inner_steps: 8,
            batch_size: 8,
            job_hash: LDigest([0; 32]),
            beacon_commitment: LDigest([0; 32]),
            deadline_ms: 0,
            entry_index: 3,
        }
    }

    /// Every cheat commits a well-formed trace that an honest verifier rejects when
    /// every step is challenged (and accepts for the honest worker).
    #[test]
    fn every_cheat_is_rejected_when_every_step_is_challenged() {
        let job = JobSpec::parse(include_str!("../../../jobs/tiny-test.toml")).unwrap();
        let corpus = Corpus::generated(7, 20_000);
        let base = init_params(&job.model, [3; 32]).unwrap();
        let all: Vec<u32> = (0..job.inner.steps).collect();
        for b in [
            Behaviour::Honest,
            Behaviour::InflatedDelta,
            Behaviour::LazyZero,
            Behaviour::LazyRandom,
            Behaviour::FakeSteps { permille: 1000 },
            Behaviour::WrongBatches,
            Behaviour::WrongBase,
            Behaviour::HugeLastStep,
        ] {
            let seed = [9; 32];
            let trained_on = match b {
                Behaviour::WrongBatches => prf(&seed, "lupus zoo wrong batches", &[]),
                _ => seed,
            };
            let run = futures_lite_block_on(train(
                b,
                &job,
                &corpus,
                &base,
                trained_on,
                &task(seed),
                &mut Go,
            ))
            .unwrap()
            .unwrap();
            let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);

            let opening = run.open(&job, &corpus, &all, false, &key).unwrap();
            let v = verify_opening(
                &job,
                &corpus,
                &base,
                &seed,
                &run.commitment,
                &key.verifying_key().to_bytes(),
                &all,
                &opening,
                DeviceClass::Exact,
            )
            .unwrap();
            assert_eq!(v.is_accept(), b == Behaviour::Honest, "{b:?}: {v:?}");
        }
    }

    /// Issue 13's tolerant-class attack: the honest tolerant device (an ulp off,
    /// pointing nowhere) passes the tolerant check and fails the exact one; the
    /// nudging worker passes the per-step bound at every step, but two opened steps'
    /// pushes share their direction, so the tolerant check rejects it too.
    #[test]
    fn tolerant_nudges_are_rejected_and_honest_tolerant_devices_pass() {
        use lupus_prover::verify::{RejectReason, Verdict};
        let job = JobSpec::parse(include_str!("../../../jobs/tiny-test.toml")).unwrap();
        let corpus = Corpus::generated(7, 20_000);
        let base = init_params(&job.model, [3; 32]).unwrap();
        let all: Vec<u32> = (0..job.inner.steps).collect();
        for b in [Behaviour::TolerantDevice, Behaviour::TolerantNudge] {
            let seed = [9; 32];
            let run =
                futures_lite_block_on(train(b, &job, &corpus, &base, seed, &task(seed), &mut Go))
                    .unwrap()
                    .unwrap();
            let honest = b == Behaviour::TolerantDevice;
            for (class, accepted) in [(DeviceClass::Tolerant, honest), (DeviceClass::Exact, false)]
            {
                let tolerant = class == DeviceClass::Tolerant;
                let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);

                let opening = run.open(&job, &corpus, &all, tolerant, &key).unwrap();
                let v = verify_opening(
                    &job,
                    &corpus,
                    &base,
                    &seed,
                    &run.commitment,
                    &key.verifying_key().to_bytes(),
                    &all,
                    &opening,
                    class,
                )
                .unwrap();
                assert_eq!(v.is_accept(), accepted, "{b:?} judged {class:?}: {v:?}");
                if !honest && tolerant {
                    assert!(
                        matches!(
                            v,
                            Verdict::Reject {
                                reason: RejectReason::SharedDirection { .. },
                                ..
                            }
                        ),
                        "the nudge is within the per-step bound: {v:?}"
                    );
                }
            }
        }
    }

    /// A minimal executor: the training future never waits on anything.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn detection_theory() {
        let d = |b: Behaviour| match b.detection(8, 4) {
            Some(Expected::Slashed(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(d(Behaviour::LazyZero), 1.0);
        assert_eq!(d(Behaviour::FakeSteps { permille: 1000 }), 1.0);
        assert!(
            (d(Behaviour::FakeSteps { permille: 250 }) - (1.0 - 0.75f64.powi(4))).abs() < 1e-12
        );
        assert_eq!(d(Behaviour::WrongBase), 0.5);
        assert_eq!(
            Behaviour::NeverOpen.detection(8, 4),
            Some(Expected::Expired)
        );
        assert_eq!(Behaviour::Honest.detection(8, 4), None);
    }
}
