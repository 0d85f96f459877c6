//! The worker's side of a task: train `H` steps, commit the trace, open challenged steps.
//!
//! DESIGN.md ("The loop" 2-4, "Trace and commitment"). [`run_task`] trains from the base
//! model with a fresh AdamW state on the batches of [`Sampler::batch`], commits every step
//! as [`crate::trace`] says, keeps the full state every `k` steps plus every step's leaf and
//! committed op-output commits (not the tensors), and returns a [`TaskRun`].
//! [`TaskRun::open`] rebuilds any challenged step's state from the nearest checkpoint,
//! recomputes the step's backward pass (whose outputs are not committed while training),
//! signs the recomputed outputs' root with the worker's key, and returns an [`Opening`]
//! for [`crate::verify::verify_opening`].
//!
//! [`TaskBuilder`] is the same machinery one step at a time; `run_task` is the honest
//! loop over it, and simulations of dishonest workers drive it with altered steps.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use lupus_types::Sig;
use serde::{Deserialize, Serialize};

use crate::data::{Corpus, DataError, Sampler};
use crate::graph::{
    Node, Observer, Outputs, Recompute, StepOutput, ValueRef, plan, train_step_observed,
    train_step_untraced,
};
use crate::merkle::{Digest, MerkleError, MerkleTree, MultiProof};
use crate::model::{Batch, ModelError, check_batch, make_batch};
use crate::ops::OpKind;
use crate::optim::TrainState;
use crate::quant::{QuantDelta, quantise_delta};
use crate::spec::{JobSpec, SpecError};
use crate::tensor::Tensor;
use crate::trace::{
    Commitment, FinalLeaf, OpOutputCommit, StateRole, StepLeaf, TraceLeaf, batch_hash, commit_step,
    committed, next_state_hash_from_nodes, op_desc, op_root, recomputed, recomputed_message,
    state_hash, state_items, state_position, tensor_digest,
};

/// Errors of running, opening and verifying tasks (the caller's inputs, not a worker's
/// dishonesty: that is a [`crate::verify::Verdict`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("invalid job spec: {0}")]
    Spec(#[from] SpecError),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("merkle: {0}")]
    Merkle(#[from] MerkleError),
    #[error("step {step} is out of range for a task of {steps} steps")]
    StepOutOfRange { step: u32, steps: u32 },
    #[error("the task has run {done} of its {steps} steps; finish it first")]
    Unfinished { done: u32, steps: u32 },
    #[error("the task already has all {steps} steps")]
    AlreadyFinished { steps: u32 },
    #[error("challenged steps must be strictly increasing and non-empty")]
    BadStepList,
    #[error(
        "rebuilding step {step} from its checkpoint gave a state that differs from the committed one"
    )]
    CheckpointDiverged { step: u32 },
}

/// Checks that `base` has the model's tensor count and shapes.
pub fn check_base(job: &JobSpec, base: &[Tensor]) -> Result<(), ProtocolError> {
    Ok(job.model.check_params(base, "base model")?)
}

/// The sampler of a job over a corpus.
pub fn job_sampler(job: &JobSpec, corpus: &Corpus) -> Result<Sampler, ProtocolError> {
    Ok(Sampler::new(
        corpus,
        job.dataset.chunk_size,
        job.dataset.val_permille(),
        job.model.window_len(),
    )?)
}

/// The batch of step `step` of the task with seed `seed`.
pub fn task_batch(
    job: &JobSpec,
    sampler: &Sampler,
    seed: &[u8; 32],
    step: u32,
) -> Result<Batch, ProtocolError> {
    let windows = sampler.batch(seed, step, job.inner.batch_size as usize);
    Ok(make_batch(&job.model, &windows)?)
}

/// A finished task: the commitment, the delta, and what is needed to open any step.
#[derive(Clone, Debug)]
pub struct TaskRun {
    /// What the worker submits.
    pub commitment: Commitment,
    /// The int8 pseudo-gradient `quantise_delta(S_0.params, S_H.params)`.
    pub delta: QuantDelta,
    /// The loss of the last step.
    pub final_loss: f32,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// `S_H`.
    pub final_state: TrainState,
    seed: [u8; 32],
    steps: u32,
    leaves: Vec<TraceLeaf>,
    /// Each step's committed op-output commits (the backward pass's are recomputed
    /// when a step is opened).
    ops: Vec<Vec<OpOutputCommit>>,
    checkpoints: BTreeMap<u32, TrainState>,
    tree: MerkleTree,
}

/// One challenged step, opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOpening {
    pub step: u32,
    /// `S_t`: params, then first moments, then second moments (`TrainState::tensors`).
    pub state: Vec<Tensor>,
    /// Every op-output commit of the step, in tape order. The root of those outside the
    /// backward pass ([`crate::graph::Plan::backward`]) is the leaf's op root; those of
    /// the backward pass were recomputed for this opening.
    pub ops: Vec<OpOutputCommit>,
    /// `S_{t+1}` in the same layout, for the tolerant class only.
    pub next_state: Option<Vec<Tensor>>,
    /// The worker's Ed25519 signature over [`recomputed_message`] of the trace root,
    /// this step, and the root of the backward pass's commits in `ops`.
    pub signature: Sig,
}

/// The answer to a challenge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opening {
    /// The opened leaves with their positions: `t-1` and `t` of each challenged step,
    /// `H-1` and the final leaf `H`; strictly increasing positions.
    pub leaves: Vec<(u32, TraceLeaf)>,
    /// One multiproof of all opened leaves against the trace root (`H + 1` leaves).
    pub proof: MultiProof,
    /// The challenged steps, in increasing order.
    pub steps: Vec<StepOpening>,
    /// `S_H`'s parameters, so the delta can be checked against the trace.
    pub final_params: Vec<Tensor>,
    /// A multiproof of `final_params` against `H(S_H)` (state tree positions `0..P`).
    pub final_params_proof: MultiProof,
}

/// The first bytes of an encoded [`Opening`]: the format and its version.
pub const OPENING_MAGIC: &[u8; 8] = b"lupusop2";

/// Why bytes are not an encoded [`Opening`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpeningDecodeError {
    #[error("not an encoded opening (its first bytes are not \"lupusop2\")")]
    Magic,
    #[error("malformed opening: {0}")]
    Malformed(String),
    #[error(
        "the opening is not in its canonical encoding (trailing bytes, or a number written longer than it needs)"
    )]
    NotCanonical,
}

impl Opening {
    /// The canonical encoding: [`OPENING_MAGIC`], then the opening in postcard (lengths
    /// and integers as LEB128 varints, each `f32` as its 4 little-endian bytes, each
    /// digest as its 32 bytes). About 4 bytes a parameter, where JSON took 10 to 12.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireOpeningRef {
            leaves: self
                .leaves
                .iter()
                .map(|(p, l)| (*p, WireLeaf::from(*l)))
                .collect(),
            proof: &self.proof,
            steps: &self.steps,
            final_params: &self.final_params,
            final_params_proof: &self.final_params_proof,
        };
        // Writing to a Vec cannot fail, and every field of an opening serialises.
        postcard::to_extend(&wire, OPENING_MAGIC.to_vec()).expect("an opening encodes")
    }

    /// Decodes [`Opening::to_bytes`]'s output, and only that: any other bytes that
    /// would decode to the same opening are refused, so one opening has one encoding
    /// and one blob hash. Every tensor's invariants are checked as it is read.
    pub fn from_bytes(bytes: &[u8]) -> Result<Opening, OpeningDecodeError> {
        let body = bytes
            .strip_prefix(OPENING_MAGIC.as_slice())
            .ok_or(OpeningDecodeError::Magic)?;
        let wire: WireOpening =
            postcard::from_bytes(body).map_err(|e| OpeningDecodeError::Malformed(e.to_string()))?;
        let opening = Opening {
            leaves: wire
                .leaves
                .into_iter()
                .map(|(p, l)| (p, TraceLeaf::from(l)))
                .collect(),
            proof: wire.proof,
            steps: wire.steps,
            final_params: wire.final_params,
            final_params_proof: wire.final_params_proof,
        };
        // Re-encoding is cheap next to decoding, and settles canonicity without a
        // second, hand-written decoder.
        if opening.to_bytes() != bytes {
            return Err(OpeningDecodeError::NotCanonical);
        }
        Ok(opening)
    }
}

/// [`TraceLeaf`] tagged by position, as binary formats need (its JSON form is tagged
/// by a `kind` field, which only self-describing formats can read).
#[derive(Serialize, Deserialize)]
enum WireLeaf {
    Step(StepLeaf),
    Final(FinalLeaf),
}

impl From<TraceLeaf> for WireLeaf {
    fn from(l: TraceLeaf) -> Self {
        match l {
            TraceLeaf::Step(s) => WireLeaf::Step(s),
            TraceLeaf::Final(f) => WireLeaf::Final(f),
        }
    }
}

impl From<WireLeaf> for TraceLeaf {
    fn from(l: WireLeaf) -> Self {
        match l {
            WireLeaf::Step(s) => TraceLeaf::Step(s),
            WireLeaf::Final(f) => TraceLeaf::Final(f),
        }
    }
}

/// [`Opening`]'s fields in the binary encoding's order, borrowed for writing.
#[derive(Serialize)]
struct WireOpeningRef<'a> {
    leaves: Vec<(u32, WireLeaf)>,
    proof: &'a MultiProof,
    steps: &'a [StepOpening],
    final_params: &'a [Tensor],
    final_params_proof: &'a MultiProof,
}

/// [`Opening`]'s fields in the binary encoding's order, owned for reading.
#[derive(Deserialize)]
struct WireOpening {
    leaves: Vec<(u32, WireLeaf)>,
    proof: MultiProof,
    steps: Vec<StepOpening>,
    final_params: Vec<Tensor>,
    final_params_proof: MultiProof,
}

/// The submission's proof that the delta is the one the trace commits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FinalOpening {
    pub leaf: FinalLeaf,
    /// Proof of `leaf` at position `H` of the `H + 1` trace leaves.
    pub proof: MultiProof,
}

/// Trains a task one step at a time and commits each step.
pub struct TaskBuilder<'a> {
    job: &'a JobSpec,
    sampler: Sampler,
    base: Vec<Tensor>,
    seed: [u8; 32],
    state: TrainState,
    leaves: Vec<TraceLeaf>,
    ops: Vec<Vec<OpOutputCommit>>,
    losses: Vec<f32>,
    checkpoints: BTreeMap<u32, TrainState>,
    interval: u32,
    kat: Digest,
}

impl<'a> TaskBuilder<'a> {
    /// Starts a task from `base` with a fresh optimizer state.
    pub fn new(
        job: &'a JobSpec,
        corpus: &Corpus,
        base: &[Tensor],
        seed: [u8; 32],
    ) -> Result<Self, ProtocolError> {
        job.validate()?;
        check_base(job, base)?;
        let sampler = job_sampler(job, corpus)?;
        let state = TrainState::fresh(base.to_vec());
        let mut checkpoints = BTreeMap::new();
        checkpoints.insert(0, state.clone());
        Ok(TaskBuilder {
            job,
            sampler,
            base: base.to_vec(),
            seed,
            state,
            leaves: Vec::new(),
            ops: Vec::new(),
            losses: Vec::new(),
            checkpoints,
            interval: job.inner.checkpoint_interval,
            kat: Digest(crate::kat::expected_digest()),
        })
    }

    /// Commits `kat` as the device's known-answer report in the final leaf instead of
    /// the reference's (what an exact-class device reports): a device whose suite ran
    /// differently commits its own [`crate::kat::combined_digest`], and its task is
    /// judged in the tolerant class ([`crate::kat::decided_class`]).
    pub fn with_kat(mut self, kat: [u8; 32]) -> Self {
        self.kat = Digest(kat);
        self
    }

    /// Keeps a checkpoint every `k` steps instead of the job's interval (more memory,
    /// faster openings; `k = 1` keeps every state). `k = 0` is treated as 1.
    pub fn with_checkpoint_interval(mut self, k: u32) -> Self {
        self.interval = k.max(1);
        self
    }

    /// The job this task trains.
    pub fn job(&self) -> &'a JobSpec {
        self.job
    }

    /// The next step to run.
    pub fn step(&self) -> u32 {
        self.leaves.len() as u32
    }

    /// The state that enters the next step. After [`Self::record_digests`] without a
    /// state, the last state given (its `step` says which).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The batch of the next step.
    pub fn batch(&self) -> Result<Batch, ProtocolError> {
        task_batch(self.job, &self.sampler, &self.seed, self.step())
    }

    /// Runs the next step honestly; returns its loss (already recorded).
    ///
    /// The committed op outputs (the model's block boundaries, the loss and the AdamW
    /// updates: [`crate::graph::Plan::recomputed`] says which are not) are hashed as
    /// the step computes them ([`train_step_observed`], [`hash_inline`]) and every
    /// output is dropped as soon as nothing reads it, so committing costs the hashing
    /// of 3.0 MB a step on the GPT job and not a copy of the tape. The commitment is
    /// the same as [`Self::record`] makes from the full tape (a test checks it).
    pub fn run_step(&mut self) -> Result<f32, ProtocolError> {
        let step = self.step();
        let steps = self.job.inner.steps;
        if step >= steps {
            return Err(ProtocolError::AlreadyFinished { steps });
        }
        let batch = self.batch()?;
        let (model, opt, state) = (&self.job.model, self.job.inner.adamw(), &self.state);
        let recompute = step_recompute(self.job, u64::from(step) + 1)?;
        let (trained, commits, nodes) = hash_inline(None, &recompute, |observe| {
            train_step_observed(model, &opt, state, &batch, observe)
        });
        let (state, loss) = trained?;
        let next_state = next_state_hash_from_nodes(
            nodes.iter().map(|(k, i, n)| (k, i.as_slice(), *n)),
            &commits,
            state.params.len(),
            state.step,
        )
        .unwrap_or_else(|| state_hash(&state));
        let leaf = StepLeaf {
            step,
            batch: batch_hash(&batch),
            op_root: op_root(&commits)?,
            loss_bits: loss.to_bits(),
            next_state,
        };
        self.push_step(leaf, commits, loss, state);
        Ok(loss)
    }

    /// Commits the next step as `out` says it went on `batch`. `out.state` becomes the
    /// next state and `out.ops` the step's tape.
    pub fn record(&mut self, batch: &Batch, out: StepOutput) -> Result<(), ProtocolError> {
        let steps = self.job.inner.steps;
        let step = self.step();
        if step >= steps {
            return Err(ProtocolError::AlreadyFinished { steps });
        }
        let (leaf, commits) = commit_step(step, batch, &out)?;
        let commits = committed(&commits, &out.recompute);
        self.push_step(leaf, commits, out.loss, out.state);
        Ok(())
    }

    /// Whether [`Self::record_digests`] must be given the state after the next step:
    /// the builder keeps it as a checkpoint (every `k` steps) or as the final state.
    /// A device that keeps the state resident reads it back only then.
    pub fn needs_state(&self) -> bool {
        let done = self.step() + 1;
        done == self.job.inner.steps || done.is_multiple_of(self.interval)
    }

    /// Commits the next step from what a device that keeps every tensor resident sends
    /// back: `outputs[i][o]` = `T(output o of op i)` in tape order, and the loss. The
    /// entries of the ops recomputed on opening ([`crate::graph::Plan::recomputed`])
    /// are not read (a device need not hash those outputs: give empty lists).
    ///
    /// The plan is rebuilt here, so the op descriptions are the builder's, not the
    /// device's, and `H(S_{t+1})` comes from the AdamW outputs' digests as in
    /// [`Self::run_step`]: the leaf and the op commits are those of the CPU reference
    /// whenever the digests are. `state` (the state after the step) is required exactly
    /// when [`Self::needs_state`] says so, and is then checked against the committed
    /// `H(S_{t+1})`, so a checkpoint can never disagree with the trace. Between
    /// checkpoints [`Self::state`] stays the last state given (its `step` says which);
    /// openings rebuild the states in between from the checkpoints on the CPU.
    pub fn record_digests(
        &mut self,
        batch: &Batch,
        outputs: &[Vec<Digest>],
        loss: f32,
        state: Option<TrainState>,
    ) -> Result<(), ProtocolError> {
        let steps = self.job.inner.steps;
        let step = self.step();
        if step >= steps {
            return Err(ProtocolError::AlreadyFinished { steps });
        }
        let graph = |detail: String| ProtocolError::Model(ModelError::Graph { detail });
        let next_step = u64::from(step) + 1;
        let bsz = check_batch(&self.job.model, batch)?;
        let plan = plan(
            &self.job.model,
            bsz,
            Some((&self.job.inner.adamw(), next_step)),
        )?;
        if outputs.len() != plan.nodes.len() {
            return Err(graph(format!(
                "{} ops' digests for a tape of {} ops",
                outputs.len(),
                plan.nodes.len()
            )));
        }
        let recompute = plan.recomputed();
        let mut commits = Vec::with_capacity(outputs.iter().map(Vec::len).sum());
        for (i, (node, outs)) in plan.nodes.iter().zip(outputs).enumerate() {
            if recompute.whole(i as u32) {
                continue;
            }
            let desc = op_desc(&node.kind, &node.inputs);
            commits.extend(
                outs.iter()
                    .enumerate()
                    .filter(|(o, _)| !recompute.contains(i as u32, *o as u32))
                    .map(|(o, d)| OpOutputCommit {
                        op: i as u32,
                        output: o as u32,
                        desc,
                        tensor: *d,
                    }),
            );
        }
        let next_state = next_state_hash_from_nodes(
            plan.nodes
                .iter()
                .zip(outputs)
                .map(|(n, o)| (&n.kind, n.inputs.as_slice(), o.len())),
            &commits,
            self.base.len(),
            next_step,
        )
        .ok_or_else(|| graph("the tape does not update every parameter once".into()))?;
        match state {
            Some(s) => {
                if s.step != next_step || state_hash(&s) != next_state {
                    return Err(ProtocolError::CheckpointDiverged { step: step + 1 });
                }
                self.state = s;
            }
            None if self.needs_state() => {
                return Err(ProtocolError::Model(ModelError::State {
                    detail: format!(
                        "the state after step {step} is a checkpoint or the final state: give it"
                    ),
                }));
            }
            None => {}
        }
        let leaf = StepLeaf {
            step,
            batch: batch_hash(batch),
            op_root: op_root(&commits)?,
            loss_bits: loss.to_bits(),
            next_state,
        };
        self.leaves.push(TraceLeaf::Step(leaf));
        self.ops.push(commits);
        self.losses.push(loss);
        let done = self.step();
        if done.is_multiple_of(self.interval) && done < steps {
            self.checkpoints.insert(done, self.state.clone());
        }
        Ok(())
    }

    /// Appends a committed step and keeps a checkpoint when one is due.
    fn push_step(
        &mut self,
        leaf: StepLeaf,
        commits: Vec<OpOutputCommit>,
        loss: f32,
        state: TrainState,
    ) {
        let steps = self.job.inner.steps;
        self.leaves.push(TraceLeaf::Step(leaf));
        self.ops.push(commits);
        self.losses.push(loss);
        self.state = state;
        let done = self.step();
        if done.is_multiple_of(self.interval) && done < steps {
            self.checkpoints.insert(done, self.state.clone());
        }
    }

    /// Quantises the delta and commits the trace.
    pub fn finish(self) -> Result<TaskRun, ProtocolError> {
        let delta = quantise_delta(&self.base, &self.state.params)?;
        self.finish_with_delta(delta)
    }

    /// Commits the trace with a given delta instead of the honest one (for simulations
    /// of dishonest workers: the verifier must reject such a task).
    pub fn finish_with_delta(mut self, delta: QuantDelta) -> Result<TaskRun, ProtocolError> {
        let steps = self.job.inner.steps;
        if self.step() != steps {
            return Err(ProtocolError::Unfinished {
                done: self.step(),
                steps,
            });
        }
        let final_leaf = FinalLeaf {
            steps,
            state: state_hash(&self.state),
            delta: Digest(delta.hash()),
            kat: self.kat,
        };
        self.leaves.push(TraceLeaf::Final(final_leaf));
        let items: Vec<Digest> = self.leaves.iter().map(TraceLeaf::item).collect();
        let tree = MerkleTree::new(&items)?;
        Ok(TaskRun {
            commitment: Commitment {
                trace_root: tree.root(),
                final_state_hash: final_leaf.state,
                delta_hash: final_leaf.delta,
            },
            delta,
            final_loss: self.losses.last().copied().unwrap_or(f32::NAN),
            losses: self.losses,
            final_state: self.state,
            seed: self.seed,
            steps,
            leaves: self.leaves,
            ops: self.ops,
            checkpoints: self.checkpoints,
            tree,
        })
    }
}

/// What a replay feeds every op output to, in tape order, with the chaining values of
/// its hash's pieces ([`Tensor::hash_pieces`]; none for a tensor of one piece): its
/// replay digests.
pub(crate) type Tap<'a> = &'a mut (dyn FnMut(&Tensor, &[[u8; 32]]) + Send);

/// What [`hash_alongside`] gives back besides the run's result: the op-output commits
/// in tape order and each node's kind, inputs and output count.
pub(crate) type Hashed<R> = (R, Vec<OpOutputCommit>, Vec<(OpKind, Vec<ValueRef>, usize)>);

/// The op-output commit of every output of one tape entry but those in `skip`.
fn entry_commits<'a>(
    i: usize,
    desc: Digest,
    outputs: &'a [Tensor],
    skip: &'a Recompute,
) -> impl Iterator<Item = OpOutputCommit> + 'a {
    outputs
        .iter()
        .enumerate()
        .filter(move |(o, _)| !skip.contains(i as u32, *o as u32))
        .map(move |(o, t)| OpOutputCommit {
            op: i as u32,
            output: o as u32,
            desc,
            tensor: tensor_digest(t),
        })
}

/// [`entry_commits`] for a replay with a [`Tap`]: each output is hashed once, piece by
/// piece, and the tap gets the pieces' chaining values with the tensor, so its digest
/// costs 32 bytes a piece rather than a second pass over the bytes.
fn tapped_commits(
    i: usize,
    desc: Digest,
    outputs: &[Tensor],
    skip: &Recompute,
    tap: &mut (dyn FnMut(&Tensor, &[[u8; 32]]) + Send),
    commits: &mut Vec<OpOutputCommit>,
) {
    let mut cvs = Vec::new();
    for (o, t) in outputs.iter().enumerate() {
        cvs.clear();
        let tensor = Digest(t.hash_pieces(&mut cvs));
        if !skip.contains(i as u32, o as u32) {
            commits.push(OpOutputCommit {
                op: i as u32,
                output: o as u32,
                desc,
                tensor,
            });
        }
        tap(t, &cvs);
    }
}

/// Runs `run` with an observer that commits every tape entry it sees: the worker's
/// rerun of a challenged step when it opens it, whose every output is hashed (its
/// training and the verifier's replay hash inline, [`hash_inline`]).
///
/// Natively, the tensors are hashed on a second (scoped) thread: the observer sends
/// each entry's shared outputs over a channel and the step goes on; an output whose
/// last reader has run is freed once it is hashed. Entries arrive in tape order and
/// one thread hashes them, so the commits come back in tape order. On wasm32 (no
/// threads in a Web Worker without cross-origin isolation) the observer hashes inline.
///
/// The hasher is a thread per step, not a persistent one: spawning it costs tens of
/// microseconds against a step of milliseconds.
pub(crate) fn hash_alongside<R>(run: impl FnOnce(&mut Observer<'_>) -> R) -> Hashed<R> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut nodes = Vec::new();
        let all = Recompute::none();
        // The description is a hash of a few bytes: made here, it saves sending the
        // node's kind and inputs across.
        type Entry = (usize, Digest, Outputs);
        let (tx, rx) = std::sync::mpsc::channel::<Entry>();
        // Hashed outputs come back to be dropped here: freed on the thread that
        // allocated them, the allocator reuses their memory for the next operators
        // (freed on the hasher, glibc trimmed and re-faulted it, and the step itself
        // ran a quarter slower).
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Outputs>();
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut commits = Vec::new();
                for (i, desc, outputs) in rx {
                    commits.extend(entry_commits(i, desc, &outputs, &all));
                    // The step may be over and the receiver gone: then drop it here.
                    let _ = back_tx.send(outputs);
                }
                commits
            });
            let r = run(&mut |i: usize, node: &Node, outputs: &Outputs| {
                back_rx.try_iter().for_each(drop);
                nodes.push((node.kind.clone(), node.inputs.clone(), outputs.len()));
                let desc = op_desc(&node.kind, &node.inputs);
                // The receiver lives until every sender is gone: this cannot fail.
                let _ = tx.send((i, desc, std::sync::Arc::clone(outputs)));
            });
            drop(tx);
            let commits = hasher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            back_rx.try_iter().for_each(drop);
            (r, commits, nodes)
        })
    }
    #[cfg(target_arch = "wasm32")]
    {
        hash_inline(None, &Recompute::none(), run)
    }
}

/// [`hash_alongside`] on the step's own thread: each entry is hashed right after it is
/// computed, while its outputs are still in cache. The worker trains this way: it
/// commits only the block boundaries, the loss and the next state (3.0 MB a step on the GPT
/// job, of 65.6 MB of op outputs), and for that little a second thread's hand-offs
/// and cache misses cost more CPU time than they save wall time.
pub(crate) fn hash_inline<R>(
    mut tap: Option<Tap<'_>>,
    skip: &Recompute,
    run: impl FnOnce(&mut Observer<'_>) -> R,
) -> Hashed<R> {
    let mut nodes = Vec::new();
    let mut commits = Vec::new();
    let r = run(&mut |i: usize, node: &Node, outputs: &Outputs| {
        nodes.push((node.kind.clone(), node.inputs.clone(), outputs.len()));
        match tap.as_mut() {
            Some(tap) => {
                let desc = op_desc(&node.kind, &node.inputs);
                tapped_commits(i, desc, outputs, skip, *tap, &mut commits);
            }
            None if !skip.whole(i as u32) => {
                let desc = op_desc(&node.kind, &node.inputs);
                commits.extend(entry_commits(i, desc, outputs, skip));
            }
            None => {}
        }
    });
    (r, commits, nodes)
}

/// The op outputs recomputed on opening, of the plan of the job's step that ends at
/// step `next_step` (every batch of a task has the job's batch size).
pub(crate) fn step_recompute(job: &JobSpec, next_step: u64) -> Result<Recompute, ProtocolError> {
    let plan = plan(
        &job.model,
        job.inner.batch_size as usize,
        Some((&job.inner.adamw(), next_step)),
    )?;
    Ok(plan.recomputed())
}

/// Trains a task honestly: `H` steps from `TrainState::fresh(base)` on the task's batches.
/// `progress(step, loss)` is called after every step.
pub fn run_task(
    job: &JobSpec,
    corpus: &Corpus,
    base_params: &[Tensor],
    seed: [u8; 32],
    progress: &mut dyn FnMut(u32, f32),
) -> Result<TaskRun, ProtocolError> {
    let mut b = TaskBuilder::new(job, corpus, base_params, seed)?;
    for step in 0..job.inner.steps {
        let loss = b.run_step()?;
        progress(step, loss);
    }
    b.finish()
}

/// The state tensors of `state` in opening layout.
pub fn state_tensors(state: &TrainState) -> Vec<Tensor> {
    state
        .params
        .iter()
        .chain(&state.m)
        .chain(&state.v)
        .cloned()
        .collect()
}

impl TaskRun {
    /// The trace leaves (`H` step leaves and the final leaf).
    pub fn leaves(&self) -> &[TraceLeaf] {
        &self.leaves
    }

    /// The op-output commits of step `t`.
    pub fn op_commits(&self, t: u32) -> Option<&[OpOutputCommit]> {
        self.ops.get(t as usize).map(Vec::as_slice)
    }

    /// The opening of the final leaf, sent with the submission.
    pub fn final_opening(&self) -> Result<FinalOpening, ProtocolError> {
        let h = self.steps as usize;
        let leaf = match self.leaves.get(h) {
            Some(TraceLeaf::Final(f)) => *f,
            _ => {
                return Err(ProtocolError::Unfinished {
                    done: 0,
                    steps: self.steps,
                });
            }
        };
        Ok(FinalOpening {
            leaf,
            proof: self.tree.prove(&[h])?,
        })
    }

    /// `S_t`, rebuilt from the nearest checkpoint at or before `t` (`t <= H`).
    pub fn state_at(
        &self,
        job: &JobSpec,
        corpus: &Corpus,
        t: u32,
    ) -> Result<TrainState, ProtocolError> {
        if t > self.steps {
            return Err(ProtocolError::StepOutOfRange {
                step: t,
                steps: self.steps,
            });
        }
        if t == self.steps {
            return Ok(self.final_state.clone());
        }
        let (&from, start) = self
            .checkpoints
            .range(..=t)
            .next_back()
            .ok_or(ProtocolError::CheckpointDiverged { step: t })?;
        let mut state = start.clone();
        if from < t {
            let sampler = job_sampler(job, corpus)?;
            for s in from..t {
                let batch = task_batch(job, &sampler, &self.seed, s)?;
                state = train_step_untraced(&job.model, &job.inner.adamw(), &state, &batch)?.0;
            }
        }
        let expected = match t.checked_sub(1).and_then(|p| self.leaves.get(p as usize)) {
            Some(TraceLeaf::Step(l)) => Some(l.next_state),
            _ => None,
        };
        if let Some(e) = expected
            && state_hash(&state) != e
        {
            return Err(ProtocolError::CheckpointDiverged { step: t });
        }
        Ok(state)
    }

    /// Opens the challenged `steps` (strictly increasing). `tolerant` adds `S_{t+1}`.
    ///
    /// Each step is run again on the CPU from its rebuilt state to recompute the
    /// backward pass's commits, and `key` (the worker's, whose trace this is) signs their
    /// root. The committed commits are the trace's own, not the recomputation's.
    pub fn open(
        &self,
        job: &JobSpec,
        corpus: &Corpus,
        steps: &[u32],
        tolerant: bool,
        key: &SigningKey,
    ) -> Result<Opening, ProtocolError> {
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ProtocolError::BadStepList);
        }
        if let Some(&bad) = steps.iter().find(|&&s| s >= self.steps) {
            return Err(ProtocolError::StepOutOfRange {
                step: bad,
                steps: self.steps,
            });
        }
        let positions = opened_positions(steps, self.steps);
        let leaves = positions
            .iter()
            .map(|&p| {
                self.leaves
                    .get(p as usize)
                    .map(|l| (p, *l))
                    .ok_or(ProtocolError::StepOutOfRange {
                        step: p,
                        steps: self.steps,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let idx: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        let proof = self.tree.prove(&idx)?;
        let mut opened = Vec::with_capacity(steps.len());
        let sampler = job_sampler(job, corpus)?;
        let opt = job.inner.adamw();
        for &t in steps {
            let state = self.state_at(job, corpus, t)?;
            let next_state = if tolerant {
                Some(state_tensors(&self.state_at(job, corpus, t + 1)?))
            } else {
                None
            };
            let batch = task_batch(job, &sampler, &self.seed, t)?;
            let recompute = step_recompute(job, u64::from(t) + 1)?;
            let (trained, all, _) = hash_alongside(|observe| {
                train_step_observed(&job.model, &opt, &state, &batch, observe)
            });
            trained?;
            let again = recomputed(&all, &recompute);
            let root = op_root(&again)?;
            let signature = Sig(key
                .sign(&recomputed_message(&self.commitment.trace_root, t, &root).0)
                .to_bytes());
            let kept = self
                .ops
                .get(t as usize)
                .map(Vec::as_slice)
                .unwrap_or_default();
            // The trace's commits and the recomputed ones, merged in tape order.
            let mut ops: Vec<OpOutputCommit> = kept.iter().copied().chain(again).collect();
            ops.sort_by_key(|c| (c.op, c.output));
            opened.push(StepOpening {
                step: t,
                state: state_tensors(&state),
                ops,
                next_state,
                signature,
            });
        }
        let p = self.final_state.params.len();
        let state_tree = MerkleTree::new(&state_items(&self.final_state))?;
        let param_positions: Vec<usize> = (0..p as u32)
            .map(|i| state_position(StateRole::Param, i, p))
            .collect();
        Ok(Opening {
            leaves,
            proof,
            steps: opened,
            final_params: self.final_state.params.clone(),
            final_params_proof: state_tree.prove(&param_positions)?,
        })
    }
}

/// The trace positions an opening of `steps` reveals: `t-1` and `t` of each step, `H-1`
/// and `H`; sorted, without repeats.
pub fn opened_positions(steps: &[u32], h: u32) -> Vec<u32> {
    let mut p: Vec<u32> = steps
        .iter()
        .flat_map(|&t| t.checked_sub(1).into_iter().chain([t]))
        .chain([h.saturating_sub(1), h])
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::train_step;
    use crate::model::init_params;
    use crate::trace::tensor_digest;

    /// Committing while the step runs (`run_step`, hashing observed outputs) must give
    /// exactly the commitment made from the full tape (`record`), or a verifier that
    /// replays with the tape would reject every honest worker.
    #[test]
    fn observed_commitment_equals_the_full_tape_commitment() {
        let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
        let corpus = Corpus::generated(7, 20_000);
        let base = init_params(&job.model, [3; 32]).unwrap();
        let mut observed = TaskBuilder::new(&job, &corpus, &base, [9; 32]).unwrap();
        let mut taped = TaskBuilder::new(&job, &corpus, &base, [9; 32]).unwrap();
        for _ in 0..job.inner.steps {
            observed.run_step().unwrap();
            let batch = taped.batch().unwrap();
            let out = train_step(&job.model, &job.inner.adamw(), taped.state(), &batch).unwrap();
            taped.record(&batch, out).unwrap();
        }
        assert_eq!(observed.leaves, taped.leaves);
        assert_eq!(observed.ops, taped.ops);
        let (a, b) = (observed.finish().unwrap(), taped.finish().unwrap());
        assert_eq!(a.commitment, b.commitment);
    }

    /// A step committed from its op-output digests (what a device that keeps the
    /// tensors sends back) is the step `run_step` commits; the state is demanded at
    /// checkpoints and at the end, and a state that is not the committed one is refused.
    #[test]
    fn digest_commitment_equals_run_step() {
        let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
        let corpus = Corpus::generated(7, 20_000);
        let base = init_params(&job.model, [3; 32]).unwrap();
        let reference = run_task(&job, &corpus, &base, [9; 32], &mut |_, _| {}).unwrap();
        let mut b = TaskBuilder::new(&job, &corpus, &base, [9; 32]).unwrap();
        let mut state = b.state().clone();
        for _ in 0..job.inner.steps {
            let batch = b.batch().unwrap();
            let out = train_step(&job.model, &job.inner.adamw(), &state, &batch).unwrap();
            let digests: Vec<Vec<Digest>> = out
                .ops
                .iter()
                .map(|r| r.outputs.iter().map(tensor_digest).collect())
                .collect();
            state = out.state;
            if b.needs_state() {
                assert!(
                    b.record_digests(&batch, &digests, out.loss, None).is_err(),
                    "a checkpoint or final state must be given"
                );
                let mut wrong = state.clone();
                wrong.m[0] = wrong.params[0].clone();
                assert_eq!(
                    b.record_digests(&batch, &digests, out.loss, Some(wrong)),
                    Err(ProtocolError::CheckpointDiverged { step: b.step() + 1 })
                );
                b.record_digests(&batch, &digests, out.loss, Some(state.clone()))
                    .unwrap();
            } else {
                b.record_digests(&batch, &digests, out.loss, None).unwrap();
            }
        }
        let run = b.finish().unwrap();
        assert_eq!(run.commitment, reference.commitment);
        assert_eq!(run.leaves, reference.leaves);
        assert_eq!(run.ops, reference.ops);
        assert_eq!(run.checkpoints, reference.checkpoints);
        // Openings rebuild the states between checkpoints on the CPU.
        assert_eq!(
            run.open(
                &job,
                &corpus,
                &[1, 4],
                false,
                &SigningKey::from_bytes(&[7; 32])
            )
            .unwrap(),
            reference
                .open(
                    &job,
                    &corpus,
                    &[1, 4],
                    false,
                    &SigningKey::from_bytes(&[7; 32])
                )
                .unwrap()
        );
    }

    /// The binary encoding round-trips a real opening (tolerant, so with next states),
    /// is far smaller than JSON, and has exactly one form: other magic, trailing
    /// bytes, a number written long, a cut or a tensor that breaks its invariants are
    /// refused.
    #[test]
    fn openings_have_one_compact_binary_encoding() {
        let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
        let corpus = Corpus::generated(7, 20_000);
        let base = init_params(&job.model, [3; 32]).unwrap();
        let run = run_task(&job, &corpus, &base, [9; 32], &mut |_, _| {}).unwrap();
        let opening = run
            .open(
                &job,
                &corpus,
                &[1, 3],
                true,
                &SigningKey::from_bytes(&[7; 32]),
            )
            .unwrap();
        let bytes = opening.to_bytes();
        assert_eq!(Opening::from_bytes(&bytes).unwrap(), opening);
        let json = serde_json::to_vec(&opening).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "binary {} bytes, JSON {} bytes",
            bytes.len(),
            json.len()
        );

        // Another version's magic (the first format had no signed recomputation).
        let mut other = bytes.clone();
        other[7] = b'1';
        assert_eq!(Opening::from_bytes(&other), Err(OpeningDecodeError::Magic));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Opening::from_bytes(&longer),
            Err(OpeningDecodeError::NotCanonical)
        );
        // The first field is the number of opened leaves, a one-byte varint here:
        // written in two bytes (continuation bit, then a zero), it means the same.
        assert!(bytes[8] < 0x80);
        let mut long_varint = bytes[..8].to_vec();
        long_varint.extend([bytes[8] | 0x80, 0]);
        long_varint.extend(&bytes[9..]);
        assert_eq!(
            Opening::from_bytes(&long_varint),
            Err(OpeningDecodeError::NotCanonical)
        );
        assert!(matches!(
            Opening::from_bytes(&bytes[..bytes.len() - 1]),
            Err(OpeningDecodeError::Malformed(_))
        ));
        // A NaN where a parameter was: the tensor's invariants refuse it.
        let first = opening.final_params[0].data()[0].to_bits().to_le_bytes();
        let at = bytes
            .windows(4)
            .rposition(|w| w == first)
            .expect("the first final parameter is in the bytes");
        let mut poisoned = bytes.clone();
        poisoned[at..at + 4].copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
        assert!(matches!(
            Opening::from_bytes(&poisoned),
            Err(OpeningDecodeError::Malformed(_))
        ));
    }
}
