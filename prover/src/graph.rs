//! One training step as an ordered list of operator applications (the tape).
//!
//! DESIGN.md (Trace and commitment): the op outputs of step t are committed, so that a
//! dispute can open one operator's inputs and outputs and re-run it with
//! [`eval_op`]. A model is first turned into a [`Plan`]: nodes `(OpKind, inputs)` whose
//! inputs name either the state (parameters, moments), the batch, or an earlier node's
//! output by [`ValueRef`]. The plan depends only on the model spec, the batch size and
//! the optimizer settings. [`train_step`] runs it and keeps every output; the tape is
//! forward ops, backward ops, then one `AdamWUpdate` per parameter tensor in parameter
//! order, whose outputs are the next state's tensors. [`train_step_untraced`] runs the
//! same nodes through the same [`eval_op`] (so the bits are equal) but drops each output
//! after its last use.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{self, Batch, ModelError, ModelSpec};
use crate::ops::{OpKind, eval_op};
use crate::optim::{AdamW, TrainState};
use crate::tensor::Tensor;

/// Where an operator input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ValueRef {
    /// Parameter tensor `i` of the state entering the step.
    Param(u32),
    /// AdamW first moment `i` of the state entering the step.
    Moment1(u32),
    /// AdamW second moment `i` of the state entering the step.
    Moment2(u32),
    /// The batch inputs.
    Input,
    /// The batch targets.
    Target,
    /// Output `output` of tape entry `op`.
    Op { op: u32, output: u8 },
}

/// One entry of the tape: an operator, where its inputs came from, and what it gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    pub kind: OpKind,
    pub inputs: Vec<ValueRef>,
    pub outputs: Vec<Tensor>,
}

/// One node of a plan: an operator and its input references.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub kind: OpKind,
    pub inputs: Vec<ValueRef>,
}

/// The operator graph of one step, in execution order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub nodes: Vec<Node>,
    /// The `[1]` tensor holding the mean loss.
    pub loss: ValueRef,
    /// Gradient of each parameter (empty for a forward-only plan).
    pub grads: Vec<ValueRef>,
    /// The ops whose outputs the model marks for commitment while training: what
    /// activation checkpointing keeps, each block's (layer's) input and output. Any
    /// other activation is recomputed from them and the state when a step is opened.
    pub boundaries: Vec<u32>,
}

impl Plan {
    /// The op outputs a worker does not commit while it trains, and recomputes when a
    /// step is opened (DESIGN.md, "Trace and commitment"): all but the outputs of the
    /// model's block boundaries ([`Plan::boundaries`]), the loss itself (not the loss op's
    /// other outputs) and the AdamW updates (whose outputs are the next state).
    pub fn recomputed(&self) -> Recompute {
        let loss = match self.loss {
            ValueRef::Op { op, output } => Some((op, output)),
            _ => None,
        };
        Recompute(
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let i = i as u32;
                    if matches!(n.kind, OpKind::AdamWUpdate { .. }) || self.boundaries.contains(&i)
                    {
                        0
                    } else if let Some((_, output)) = loss.filter(|(op, _)| *op == i) {
                        !(1u8 << output.min(7))
                    } else {
                        u8::MAX
                    }
                })
                .collect(),
        )
    }
}

/// Which op outputs of a step's tape are recomputed on opening rather than committed
/// while training ([`Plan::recomputed`]): per op, a bit per output (an op has at most
/// three), all set when the whole op is recomputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recompute(Vec<u8>);

impl Recompute {
    /// Nothing recomputed: every output committed.
    pub fn none() -> Recompute {
        Recompute(Vec::new())
    }

    /// Whether output `output` of op `op` is recomputed (an op past the tape is not).
    pub fn contains(&self, op: u32, output: u32) -> bool {
        let bits = self.0.get(op as usize).copied().unwrap_or(0);
        output < 8 && bits & (1 << output) != 0
    }

    /// Whether every output of op `op` is recomputed.
    pub fn whole(&self, op: u32) -> bool {
        self.0.get(op as usize) == Some(&u8::MAX)
    }
}

/// Appends nodes and hands out references to their outputs.
#[derive(Default)]
pub(crate) struct Builder {
    nodes: Vec<Node>,
    boundaries: Vec<u32>,
}

impl Builder {
    /// Marks the op giving `v` as a block boundary ([`Plan::boundaries`]).
    pub(crate) fn boundary(&mut self, v: ValueRef) {
        if let ValueRef::Op { op, .. } = v {
            self.boundaries.push(op);
        }
    }

    /// Adds a node and returns a reference to its first output.
    pub(crate) fn op(&mut self, kind: OpKind, inputs: &[ValueRef]) -> ValueRef {
        self.op_out(kind, inputs, 0)
    }

    /// Adds a node and returns references to its outputs.
    pub(crate) fn op2(&mut self, kind: OpKind, inputs: &[ValueRef]) -> (ValueRef, ValueRef) {
        let a = self.op_out(kind, inputs, 0);
        (a, Self::sibling(a, 1))
    }

    /// Adds a node and returns references to its three outputs.
    pub(crate) fn op3(
        &mut self,
        kind: OpKind,
        inputs: &[ValueRef],
    ) -> (ValueRef, ValueRef, ValueRef) {
        let a = self.op_out(kind, inputs, 0);
        (a, Self::sibling(a, 1), Self::sibling(a, 2))
    }

    fn op_out(&mut self, kind: OpKind, inputs: &[ValueRef], output: u8) -> ValueRef {
        let op = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind,
            inputs: inputs.to_vec(),
        });
        ValueRef::Op { op, output }
    }

    fn sibling(r: ValueRef, output: u8) -> ValueRef {
        match r {
            ValueRef::Op { op, .. } => ValueRef::Op { op, output },
            other => other,
        }
    }
}

/// Builds the plan of a step: forward, loss, and (with `update`) backward plus one
/// AdamW update per parameter for the given step number.
pub fn plan(
    spec: &ModelSpec,
    batch_size: usize,
    update: Option<(&AdamW, u64)>,
) -> Result<Plan, ModelError> {
    plan_with(spec, batch_size, update.is_some(), update)
}

fn plan_with(
    spec: &ModelSpec,
    batch_size: usize,
    backward: bool,
    update: Option<(&AdamW, u64)>,
) -> Result<Plan, ModelError> {
    spec.validate()?;
    if batch_size == 0 {
        return Err(ModelError::Batch {
            detail: "a batch needs at least one window".into(),
        });
    }
    let mut b = Builder::default();
    let (loss, grads) = match spec {
        ModelSpec::Mlp { .. } => model::mlp::build(spec, batch_size, &mut b, backward)?,
        ModelSpec::Gpt { .. } => model::gpt::build(spec, batch_size, &mut b, backward)?,
    };
    if let Some((opt, step)) = update {
        let kind = opt.update_kind(step)?;
        for (i, g) in grads.iter().enumerate() {
            let i = i as u32;
            b.op3(
                kind.clone(),
                &[
                    ValueRef::Param(i),
                    *g,
                    ValueRef::Moment1(i),
                    ValueRef::Moment2(i),
                ],
            );
        }
    }
    Ok(Plan {
        nodes: b.nodes,
        loss,
        grads,
        boundaries: b.boundaries,
    })
}

/// What a finished step produced.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// The state after the step (`step` incremented).
    pub state: TrainState,
    /// The mean training loss of the batch, before the update.
    pub loss: f32,
    /// The full tape, in execution order.
    pub ops: Vec<OpRecord>,
    /// The ops recomputed on opening ([`Plan::recomputed`]).
    pub recompute: Recompute,
}

/// The values a plan reads: the state entering the step and the batch.
struct Sources<'a> {
    params: &'a [Tensor],
    m: &'a [Tensor],
    v: &'a [Tensor],
    batch: &'a Batch,
}

/// Resolves a reference against the sources and the outputs computed so far.
fn resolve<'a>(
    src: &Sources<'a>,
    outs: &'a [Option<Outputs>],
    r: ValueRef,
) -> Result<&'a Tensor, ModelError> {
    let missing = || ModelError::Graph {
        detail: format!("{r:?} does not name an available value"),
    };
    match r {
        ValueRef::Param(i) => src.params.get(i as usize).ok_or_else(missing),
        ValueRef::Moment1(i) => src.m.get(i as usize).ok_or_else(missing),
        ValueRef::Moment2(i) => src.v.get(i as usize).ok_or_else(missing),
        ValueRef::Input => Ok(&src.batch.inputs),
        ValueRef::Target => Ok(&src.batch.targets),
        ValueRef::Op { op, output } => outs
            .get(op as usize)
            .and_then(|o| o.as_ref())
            .and_then(|o| o.get(output as usize))
            .ok_or_else(missing),
    }
}

/// The outputs of one tape entry. Shared, so an observer may keep them past the node's
/// last use (a second thread hashing them while the step goes on) without a copy.
pub type Outputs = Arc<Vec<Tensor>>;

/// A callback that sees each tape entry as it is computed: its index, its node and
/// its outputs.
pub type Observer<'a> = dyn FnMut(usize, &Node, &Outputs) + 'a;

/// The tensors of `o`: moved out when nothing else holds them, else copied (an
/// observer still holds them).
fn unshare(o: Outputs) -> Vec<Tensor> {
    Arc::try_unwrap(o).unwrap_or_else(|shared| (*shared).clone())
}

/// Runs a plan. With `keep_all`, every output is kept; without it, an output is dropped
/// after the last node that reads it (the loss and the update outputs are always kept).
fn execute(
    plan: &Plan,
    src: &Sources<'_>,
    keep_all: bool,
    mut observe: Option<&mut Observer<'_>>,
) -> Result<Vec<Option<Outputs>>, ModelError> {
    let n = plan.nodes.len();
    let mut last_use = vec![usize::MAX; n];
    if !keep_all {
        for (j, node) in plan.nodes.iter().enumerate() {
            for r in &node.inputs {
                if let ValueRef::Op { op, .. } = r
                    && let Some(slot) = last_use.get_mut(*op as usize)
                {
                    *slot = j;
                }
            }
        }
        if let ValueRef::Op { op, .. } = plan.loss
            && let Some(slot) = last_use.get_mut(op as usize)
        {
            *slot = usize::MAX;
        }
    }
    let mut outs: Vec<Option<Outputs>> = Vec::with_capacity(n);
    for (j, node) in plan.nodes.iter().enumerate() {
        let inputs = node
            .inputs
            .iter()
            .map(|r| resolve(src, &outs, *r))
            .collect::<Result<Vec<_>, _>>()?;
        let o = Arc::new(eval_op(&node.kind, &inputs)?);
        if let Some(f) = observe.as_mut() {
            f(j, node, &o);
        }
        outs.push(Some(o));
        if !keep_all {
            for r in &node.inputs {
                if let ValueRef::Op { op, .. } = r {
                    let op = *op as usize;
                    if last_use.get(op) == Some(&j) {
                        outs[op] = None;
                    }
                }
            }
        }
    }
    Ok(outs)
}

fn loss_value(plan: &Plan, src: &Sources<'_>, outs: &[Option<Outputs>]) -> Result<f32, ModelError> {
    let t = resolve(src, outs, plan.loss)?;
    t.data().first().copied().ok_or_else(|| ModelError::Graph {
        detail: "the loss tensor is empty".into(),
    })
}

fn check_state(spec: &ModelSpec, state: &TrainState) -> Result<(), ModelError> {
    spec.check_params(&state.params, "params")?;
    spec.check_params(&state.m, "first moments")?;
    spec.check_params(&state.v, "second moments")?;
    Ok(())
}

/// Takes the next state out of the update nodes at the end of the tape.
fn next_state(
    outs: &mut [Option<Outputs>],
    n_params: usize,
    step: u64,
    clone: bool,
) -> Result<TrainState, ModelError> {
    let first = outs
        .len()
        .checked_sub(n_params)
        .ok_or_else(|| ModelError::Graph {
            detail: "the plan has fewer update nodes than parameters".into(),
        })?;
    let mut params = Vec::with_capacity(n_params);
    let mut m = Vec::with_capacity(n_params);
    let mut v = Vec::with_capacity(n_params);
    for slot in &mut outs[first..] {
        let o = if clone {
            slot.as_ref().map(|o| (**o).clone())
        } else {
            slot.take().map(unshare)
        };
        let [p1, m1, v1]: [Tensor; 3] =
            o.and_then(|o| o.try_into().ok())
                .ok_or_else(|| ModelError::Graph {
                    detail: "an update node did not give three outputs".into(),
                })?;
        params.push(p1);
        m.push(m1);
        v.push(v1);
    }
    Ok(TrainState { params, m, v, step })
}

/// A plan and the outputs of its nodes (`None` where an output was dropped).
type Tape = (Plan, Vec<Option<Outputs>>);

fn run_step(
    spec: &ModelSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
    traced: bool,
    observe: Option<&mut Observer<'_>>,
) -> Result<(TrainState, f32, Option<Tape>), ModelError> {
    check_state(spec, state)?;
    let bsz = model::check_batch(spec, batch)?;
    let step = state
        .step
        .checked_add(1)
        .ok_or_else(|| ModelError::Optimizer {
            detail: "the step counter overflowed".into(),
        })?;
    let plan = plan(spec, bsz, Some((opt, step)))?;
    let src = Sources {
        params: &state.params,
        m: &state.m,
        v: &state.v,
        batch,
    };
    let mut outs = execute(&plan, &src, traced, observe)?;
    let loss = loss_value(&plan, &src, &outs)?;
    let next = next_state(&mut outs, state.params.len(), step, traced)?;
    Ok((next, loss, traced.then_some((plan, outs))))
}

/// One training step: forward, loss, backward, AdamW, with the full tape.
pub fn train_step(
    spec: &ModelSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
) -> Result<StepOutput, ModelError> {
    let (state, loss, tape) = run_step(spec, opt, state, batch, true, None)?;
    let (plan, outs) = tape.ok_or_else(|| ModelError::Graph {
        detail: "traced run kept no tape".into(),
    })?;
    let recompute = plan.recomputed();
    let ops = plan
        .nodes
        .into_iter()
        .zip(outs)
        .map(|(node, o)| {
            Ok(OpRecord {
                kind: node.kind,
                inputs: node.inputs,
                outputs: unshare(o.ok_or_else(|| ModelError::Graph {
                    detail: "a traced output was dropped".into(),
                })?),
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(StepOutput {
        state,
        loss,
        ops,
        recompute,
    })
}

/// The same step as [`train_step`] (the same bits), keeping no tape: each intermediate
/// output is dropped after its last use.
pub fn train_step_untraced(
    spec: &ModelSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
) -> Result<(TrainState, f32), ModelError> {
    let (state, loss, _) = run_step(spec, opt, state, batch, false, None)?;
    Ok((state, loss))
}

/// The same step as [`train_step`] (the same bits) with the memory of
/// [`train_step_untraced`]: `observe` is called with every tape entry (index, node,
/// outputs) right after it is computed, in tape order, so a caller can hash the op
/// outputs as they appear instead of keeping the whole tape.
pub fn train_step_observed(
    spec: &ModelSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
    observe: &mut Observer<'_>,
) -> Result<(TrainState, f32), ModelError> {
    let (state, loss, _) = run_step(spec, opt, state, batch, false, Some(observe))?;
    Ok((state, loss))
}

/// The mean loss of `params` on a batch (forward only, for validation).
pub fn eval_loss(spec: &ModelSpec, params: &[Tensor], batch: &Batch) -> Result<f32, ModelError> {
    spec.check_params(params, "params")?;
    let bsz = model::check_batch(spec, batch)?;
    let plan = plan(spec, bsz, None)?;
    let src = Sources {
        params,
        m: &[],
        v: &[],
        batch,
    };
    let outs = execute(&plan, &src, false, None)?;
    loss_value(&plan, &src, &outs)
}

/// Elements the widest activation of one evaluation pass may hold: 64 MiB of f32.
pub const EVAL_PASS_ELEMENTS: usize = 1 << 24;

/// Windows one evaluation pass takes at most: the coordinator validates each round on
/// 512 windows, so on the default job that is one pass, as it always was.
pub const EVAL_PASS_MAX_WINDOWS: usize = 512;

/// Windows per evaluation pass for `spec`: as many as keep its widest activation
/// within [`EVAL_PASS_ELEMENTS`], between 1 and [`EVAL_PASS_MAX_WINDOWS`].
pub fn eval_pass_windows(spec: &ModelSpec) -> usize {
    (EVAL_PASS_ELEMENTS / spec.widest_activation_per_window().max(1))
        .clamp(1, EVAL_PASS_MAX_WINDOWS)
}

/// The mean loss of `params` over `windows` (validation), in passes of
/// [`eval_pass_windows`] windows so that its memory is bounded whatever the count:
/// one [`eval_loss`] over all the windows would hold every activation of all of them
/// at once, and refuses a tensor over the element limit (16,384 windows of a model with
/// `d_ff` 384 did).
///
/// Defined bit for bit, since an auditor recomputes the coordinator's figure: when the
/// windows fit in one pass, [`eval_loss`] of them; otherwise the f64 sum over
/// consecutive passes of each pass's f32 mean times its number of windows, divided by
/// the number of windows and rounded to f32. Every window holds the same number of
/// predictions, so that is the mean over all of them.
pub fn validation_loss(
    spec: &ModelSpec,
    params: &[Tensor],
    windows: &[Vec<u32>],
) -> Result<f32, ModelError> {
    validation_loss_in_passes(spec, params, windows, eval_pass_windows(spec))
}

/// [`validation_loss`] with passes of `pass` windows (tests use small ones).
#[doc(hidden)]
pub fn validation_loss_in_passes(
    spec: &ModelSpec,
    params: &[Tensor],
    windows: &[Vec<u32>],
    pass: usize,
) -> Result<f32, ModelError> {
    let pass = pass.max(1);
    if windows.len() <= pass {
        return eval_loss(spec, params, &model::make_batch(spec, windows)?);
    }
    let mut sum = 0f64;
    for chunk in windows.chunks(pass) {
        let loss = eval_loss(spec, params, &model::make_batch(spec, chunk)?)?;
        sum += f64::from(loss) * chunk.len() as f64;
    }
    Ok((sum / windows.len() as f64) as f32)
}

/// The value `r` names in a step from `state` on `batch`, where `ops` are the tape's
/// records computed so far: for executors that run a [`plan`] node by node on their
/// own kernels (the WGSL step, emulated devices) and must resolve references exactly
/// as [`train_step`] does.
pub fn step_value<'a>(
    state: &'a TrainState,
    batch: &'a Batch,
    ops: &'a [OpRecord],
    r: ValueRef,
) -> Result<&'a Tensor, ModelError> {
    let found = match r {
        ValueRef::Param(i) => state.params.get(i as usize),
        ValueRef::Moment1(i) => state.m.get(i as usize),
        ValueRef::Moment2(i) => state.v.get(i as usize),
        ValueRef::Input => Some(&batch.inputs),
        ValueRef::Target => Some(&batch.targets),
        ValueRef::Op { op, output } => ops
            .get(op as usize)
            .and_then(|o| o.outputs.get(output as usize)),
    };
    found.ok_or_else(|| ModelError::Graph {
        detail: format!("{r:?} does not name an available value"),
    })
}

/// The [`StepOutput`] of a step from `state` whose whole tape is `ops` (the training
/// `plan`'s nodes run in order): the loss, and the next state from the AdamW update
/// nodes, which come last, one per parameter.
pub fn step_output(
    state: &TrainState,
    batch: &Batch,
    ops: Vec<OpRecord>,
    plan: &Plan,
) -> Result<StepOutput, ModelError> {
    let graph_err = |detail: &str| ModelError::Graph {
        detail: detail.into(),
    };
    let recompute = plan.recomputed();
    let loss = step_value(state, batch, &ops, plan.loss)?
        .data()
        .first()
        .copied()
        .ok_or_else(|| graph_err("the loss tensor is empty"))?;
    let step = state
        .step
        .checked_add(1)
        .ok_or_else(|| graph_err("the step counter overflowed"))?;
    let n = state.params.len();
    let first = ops
        .len()
        .checked_sub(n)
        .ok_or_else(|| graph_err("the plan has fewer update nodes than parameters"))?;
    let mut next = TrainState {
        params: Vec::with_capacity(n),
        m: Vec::with_capacity(n),
        v: Vec::with_capacity(n),
        step,
    };
    for rec in &ops[first..] {
        let [p, m, v] = rec.outputs.as_slice() else {
            return Err(graph_err("an update node did not give three outputs"));
        };
        next.params.push(p.clone());
        next.m.push(m.clone());
        next.v.push(v.clone());
    }
    Ok(StepOutput {
        state: next,
        loss,
        ops,
        recompute,
    })
}

/// The logits the model gives each input position of `batch` (forward only): the
/// input of the loss's softmax cross-entropy, `[b, vocab]` for the MLP and
/// `[b * context, vocab]` for the GPT (row `i * context + j` is window `i`'s position
/// `j`). The targets of `batch` are not read. For sampling text; the same kernels and
/// bits as training.
pub fn logits(spec: &ModelSpec, params: &[Tensor], batch: &Batch) -> Result<Tensor, ModelError> {
    spec.check_params(params, "params")?;
    let bsz = model::check_batch(spec, batch)?;
    let plan = plan(spec, bsz, None)?;
    let loss_op = match plan.loss {
        ValueRef::Op { op, .. } => op as usize,
        _ => {
            return Err(ModelError::Graph {
                detail: "the loss is not an operator's output".into(),
            });
        }
    };
    let logits_ref = plan
        .nodes
        .get(loss_op)
        .filter(|n| n.kind == crate::ops::OpKind::SoftmaxCrossEntropy)
        .and_then(|n| n.inputs.first().copied())
        .ok_or_else(|| ModelError::Graph {
            detail: "the loss is not a softmax cross-entropy of logits".into(),
        })?;
    let src = Sources {
        params,
        m: &[],
        v: &[],
        batch,
    };
    let outs = execute(&plan, &src, true, None)?;
    resolve(&src, &outs, logits_ref).cloned()
}

/// Gradients of the mean loss with respect to every parameter (forward and backward
/// only, no update): used by gradient checks and by tools that inspect a step.
pub fn gradients(
    spec: &ModelSpec,
    params: &[Tensor],
    batch: &Batch,
) -> Result<(f32, Vec<Tensor>), ModelError> {
    spec.check_params(params, "params")?;
    let bsz = model::check_batch(spec, batch)?;
    let plan = plan_with(spec, bsz, true, None)?;
    let src = Sources {
        params,
        m: &[],
        v: &[],
        batch,
    };
    let outs = execute(&plan, &src, true, None)?;
    let l = loss_value(&plan, &src, &outs)?;
    let g = plan
        .grads
        .iter()
        .map(|r| resolve(&src, &outs, *r).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((l, g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{init_params, make_batch};

    /// A repetitive token sequence cut into windows.
    fn windows(spec: &ModelSpec, count: usize, offset: usize) -> Vec<Vec<u32>> {
        let pattern = [1u32, 2, 3, 4, 5, 1, 2, 6, 7, 3];
        (0..count)
            .map(|i| {
                (0..spec.window_len())
                    .map(|j| pattern[(i * 3 + j + offset) % pattern.len()])
                    .collect()
            })
            .collect()
    }

    fn train(spec: &ModelSpec, opt: &AdamW, steps: usize) -> (f32, f32) {
        let mut state = TrainState::fresh(init_params(spec, [7; 32]).unwrap());
        let mut first = None;
        let mut last = 0.0;
        for s in 0..steps {
            let batch = make_batch(spec, &windows(spec, 8, s)).unwrap();
            let (next, loss) = train_step_untraced(spec, opt, &state, &batch).unwrap();
            first.get_or_insert(loss);
            last = loss;
            state = next;
        }
        assert_eq!(state.step, steps as u64);
        (first.unwrap_or(0.0), last)
    }

    #[test]
    fn tiny_mlp_learns_a_repetitive_sequence() {
        let spec = ModelSpec::Mlp {
            vocab: 8,
            context: 3,
            embed: 4,
            hidden: vec![32],
        };
        let opt = AdamW {
            lr: 1e-2,
            ..AdamW::default()
        };
        let (first, last) = train(&spec, &opt, 200);
        assert!(first > 1.8, "initial loss {first}");
        assert!(last < 0.3, "loss only fell from {first} to {last}");
    }

    #[test]
    fn tiny_gpt_learns_a_repetitive_sequence() {
        let spec = ModelSpec::Gpt {
            vocab: 8,
            context: 6,
            d_model: 16,
            heads: 2,
            layers: 1,
            d_ff: 32,
        };
        let opt = AdamW {
            lr: 1e-2,
            ..AdamW::default()
        };
        let (first, last) = train(&spec, &opt, 150);
        assert!(first > 1.8, "initial loss {first}");
        assert!(last < 0.6, "loss only fell from {first} to {last}");
    }

    #[test]
    fn traced_equals_untraced_and_tape_ends_in_updates() {
        let spec = ModelSpec::Gpt {
            vocab: 8,
            context: 4,
            d_model: 8,
            heads: 2,
            layers: 2,
            d_ff: 16,
        };
        let state = TrainState::fresh(init_params(&spec, [3; 32]).unwrap());
        let batch = make_batch(&spec, &windows(&spec, 3, 0)).unwrap();
        let opt = AdamW::default();
        let out = train_step(&spec, &opt, &state, &batch).unwrap();
        let (s2, l2) = train_step_untraced(&spec, &opt, &state, &batch).unwrap();
        assert_eq!(out.state, s2);
        assert_eq!(out.loss.to_bits(), l2.to_bits());
        assert_eq!(out.state.step, 1);
        let n = state.params.len();
        let tail = &out.ops[out.ops.len() - n..];
        for (i, rec) in tail.iter().enumerate() {
            assert!(matches!(rec.kind, OpKind::AdamWUpdate { step: 1, .. }));
            assert_eq!(rec.outputs[0], out.state.params[i]);
        }
        let mut seen = Vec::new();
        let (s3, l3) = train_step_observed(&spec, &opt, &state, &batch, &mut |i, node, outs| {
            seen.push((i, node.kind.clone(), outs.to_vec()));
        })
        .unwrap();
        assert_eq!(s3, out.state);
        assert_eq!(l3.to_bits(), out.loss.to_bits());
        assert_eq!(seen.len(), out.ops.len());
        for ((i, kind, outs), rec) in seen.iter().zip(&out.ops) {
            assert_eq!(kind, &rec.kind, "entry {i}");
            assert_eq!(outs, &rec.outputs, "entry {i}");
        }
        let eval = eval_loss(&spec, &state.params, &batch).unwrap();
        assert_eq!(eval.to_bits(), out.loss.to_bits());
    }

    #[test]
    fn wrong_state_or_batch_is_a_typed_error() {
        let spec = ModelSpec::Mlp {
            vocab: 8,
            context: 3,
            embed: 4,
            hidden: vec![5],
        };
        let params = init_params(&spec, [0; 32]).unwrap();
        let mut state = TrainState::fresh(params.clone());
        let batch = make_batch(&spec, &windows(&spec, 2, 0)).unwrap();
        let opt = AdamW::default();
        state.m.pop();
        assert!(matches!(
            train_step(&spec, &opt, &state, &batch),
            Err(ModelError::State { .. })
        ));
        let other = ModelSpec::Mlp {
            vocab: 8,
            context: 4,
            embed: 4,
            hidden: vec![5],
        };
        assert!(matches!(
            eval_loss(&other, &init_params(&other, [0; 32]).unwrap(), &batch),
            Err(ModelError::Batch { .. })
        ));
        let bad_opt = AdamW {
            lr: f32::NAN,
            ..AdamW::default()
        };
        assert!(matches!(
            train_step(&spec, &bad_opt, &TrainState::fresh(params), &batch),
            Err(ModelError::Attribute { .. })
        ));
    }
}
