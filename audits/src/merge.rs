//! Recomputing rounds: the auditor redoes each round's merge, outer step and
//! validation loss from blobs, and compares them with what `RoundClosed` logged.
//!
//! DESIGN.md, "The loop" step 5, and issue 12 ("recomputable rounds"). A close names
//! the delta blobs it merged (in task order), the momentum buffer after it and the
//! number of validation windows. [`MergeCollector`] gathers, while the run's entries
//! go by, each round's base model (its `RoundOpened`), the previous close's momentum,
//! and the delta commitments of the tasks credited for their work. [`replay_merge`]
//! then, for every round closed in the run, from the coordinator's API:
//!
//! 1. fetches every merged delta blob and checks it is the committed delta of the
//!    credited task in its place (`QuantDelta::hash` against `WorkCommitted.delta`):
//!    the coordinator cannot merge anything the log does not show was verified;
//! 2. merges them (weight 1 each, the job spec's clip norm: `merge_deltas`) and takes
//!    the outer Nesterov step from the base model and the previous momentum
//!    (`outer_step`), the same deterministic CPU code the coordinator runs;
//! 3. compares the blake3 of the new model's and the momentum's encodings with
//!    `new_model` and `momentum`, and the loss on `val_windows` validation windows
//!    with `val_loss_bits`, bit for bit.
//!
//! A difference names the `RoundClosed` entry's index.

use std::collections::BTreeMap;

use lupus_api::model::{decode_model, encode_model};
use lupus_ledger::entry::{CreditKind, Digest, Entry, EntryBody, Round, TaskId};
use lupus_prover::data::Corpus;
use lupus_prover::graph::validation_loss;
use lupus_prover::optim::{merge_deltas, outer_step};
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::job_sampler;
use lupus_prover::tensor::Tensor;

use crate::replay::{blob, job_and_corpus};
use crate::source::LogSource;
use crate::verify::AuditError;
use lupus_protocol::JobFacts;

/// What one round's recomputation needs, as the log tells it.
#[derive(Clone, Debug)]
pub struct RoundInputs {
    pub round: Round,
    /// Log index of the `RoundClosed`.
    pub close_index: u64,
    pub base_model: Digest,
    /// The momentum before the round (`None`: a zero buffer).
    pub prev_momentum: Option<Digest>,
    /// The committed delta hash of each work-credited task, in task order.
    pub committed: Vec<(TaskId, Digest)>,
    /// The delta blobs the close names, in its order.
    pub merged: Vec<Digest>,
    pub new_model: Digest,
    pub momentum: Option<Digest>,
    pub val_loss_bits: u32,
    pub val_windows: u32,
}

/// Gathers [`RoundInputs`] while a run's entries go by.
#[derive(Debug, Default)]
pub struct MergeCollector {
    bases: BTreeMap<Round, Digest>,
    rounds_of: BTreeMap<TaskId, Round>,
    committed: BTreeMap<TaskId, Digest>,
    credited: BTreeMap<Round, Vec<TaskId>>,
    momentum: Option<Digest>,
    done: Vec<RoundInputs>,
}

impl MergeCollector {
    /// A collector for a run that starts after a close whose momentum was
    /// `momentum` (`None` at the start of a log).
    pub fn new(momentum: Option<Digest>) -> MergeCollector {
        MergeCollector {
            momentum,
            ..MergeCollector::default()
        }
    }

    /// Sees entry `index` (already verified).
    pub fn observe(&mut self, index: u64, entry: &Entry) {
        match entry.body() {
            EntryBody::RoundOpened {
                round, base_model, ..
            } => {
                self.bases.insert(*round, *base_model);
            }
            EntryBody::TaskAssigned { task, round, .. } => {
                self.rounds_of.insert(*task, *round);
            }
            EntryBody::WorkCommitted { task, delta, .. } => {
                self.committed.insert(*task, *delta);
            }
            EntryBody::Credit {
                round,
                task,
                kind: CreditKind::Work,
                ..
            } => {
                self.credited.entry(*round).or_default().push(*task);
            }
            EntryBody::RoundClosed {
                round,
                new_model,
                val_loss_bits,
                val_windows,
                momentum,
                merged,
                ..
            } => {
                let mut tasks = self.credited.remove(round).unwrap_or_default();
                tasks.sort();
                let committed = tasks
                    .iter()
                    .filter_map(|t| self.committed.get(t).map(|d| (*t, *d)))
                    .collect();
                // A round whose opening this run did not see (the run resumed in
                // it) cannot be recomputed here; the run that saw it did.
                if let Some(base_model) = self.bases.remove(round) {
                    self.done.push(RoundInputs {
                        round: *round,
                        close_index: index,
                        base_model,
                        prev_momentum: self.momentum,
                        committed,
                        merged: merged.clone(),
                        new_model: *new_model,
                        momentum: *momentum,
                        val_loss_bits: *val_loss_bits,
                        val_windows: *val_windows,
                    });
                }
                self.momentum = *momentum;
                self.rounds_of.retain(|_, r| r != round);
                let rounds_of = &self.rounds_of;
                self.committed.retain(|t, _| rounds_of.contains_key(t));
            }
            _ => {}
        }
    }

    /// The rounds closed in the run, in order.
    pub fn into_rounds(self) -> Vec<RoundInputs> {
        self.done
    }
}

fn fail(r: &RoundInputs, reason: String) -> AuditError {
    AuditError::Replay {
        index: Some(r.close_index),
        reason: format!("round {}: {reason}", r.round),
    }
}

/// Recomputes every round in `rounds` from the coordinator's blobs; returns how many.
pub fn replay_merge(
    source: &dyn LogSource,
    job: &JobFacts,
    rounds: &[RoundInputs],
) -> Result<usize, AuditError> {
    if rounds.is_empty() {
        return Ok(0);
    }
    let (spec, corpus) = job_and_corpus(source, job)?;
    for r in rounds {
        recompute(source, &spec, &corpus, r)?;
    }
    Ok(rounds.len())
}

fn model(
    source: &dyn LogSource,
    spec: &JobSpec,
    r: &RoundInputs,
    hash: &Digest,
) -> Result<Vec<Tensor>, AuditError> {
    let bytes = blob(source, hash)?;
    decode_model(&bytes, spec).map_err(|e| fail(r, format!("blob {hash} does not decode: {e}")))
}

fn recompute(
    source: &dyn LogSource,
    spec: &JobSpec,
    corpus: &Corpus,
    r: &RoundInputs,
) -> Result<(), AuditError> {
    if r.merged.len() != r.committed.len() {
        return Err(fail(
            r,
            format!(
                "the close names {} merged deltas, {} tasks were credited",
                r.merged.len(),
                r.committed.len()
            ),
        ));
    }
    let base = model(source, spec, r, &r.base_model)?;
    let mut momentum = match &r.prev_momentum {
        Some(h) => model(source, spec, r, h)?,
        None => Vec::new(),
    };
    let mut deltas = Vec::with_capacity(r.merged.len());
    for (blob_hash, (task, committed)) in r.merged.iter().zip(&r.committed) {
        let bytes = blob(source, blob_hash)?;
        let q = QuantDelta::from_bytes(&bytes)
            .map_err(|e| fail(r, format!("delta blob {blob_hash} does not decode: {e}")))?;
        if Digest(q.hash()) != *committed {
            return Err(fail(
                r,
                format!(
                    "merged delta {blob_hash} is not the delta task {task} committed ({committed})"
                ),
            ));
        }
        let d = q
            .dequantise()
            .map_err(|e| fail(r, format!("delta of task {task}: {e}")))?;
        deltas.push((d, 1.0f32));
    }
    let new_params = if deltas.is_empty() {
        base
    } else {
        let mean = merge_deltas(&deltas, spec.outer.clip_norm)
            .map_err(|e| fail(r, format!("the merge fails: {e}")))?;
        outer_step(&base, &mut momentum, &mean, &spec.outer.nesterov())
            .map_err(|e| fail(r, format!("the outer step fails: {e}")))?
    };
    let new_model = Digest::of(&encode_model(&new_params));
    if new_model != r.new_model {
        return Err(fail(
            r,
            format!(
                "the close names new model {}, but merging its deltas gives {new_model}",
                r.new_model
            ),
        ));
    }
    let momentum_hash = (!momentum.is_empty()).then(|| Digest::of(&encode_model(&momentum)));
    if momentum_hash != r.momentum {
        return Err(fail(
            r,
            format!(
                "the close names momentum {:?}, but the outer step leaves {momentum_hash:?}",
                r.momentum
            ),
        ));
    }
    let sampler = job_sampler(spec, corpus).map_err(|e| fail(r, e.to_string()))?;
    let windows = sampler.validation((r.val_windows as usize).max(1));
    let loss =
        validation_loss(&spec.model, &new_params, &windows).map_err(|e| fail(r, e.to_string()))?;
    if loss.to_bits() != r.val_loss_bits {
        return Err(fail(
            r,
            format!(
                "the close names validation loss {}, but the new model's loss on {} windows is {loss}",
                f32::from_bits(r.val_loss_bits),
                r.val_windows
            ),
        ));
    }
    Ok(())
}
