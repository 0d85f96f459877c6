//! One training step on the GPU: the prover's plan, each node through [`eval_op_gpu`].
//!
//! `lupus_prover::graph::train_step` runs the same [`plan`] through the CPU's `eval_op`;
//! this runs it node by node through the WGSL kernels and keeps every output (the trace
//! commits them all), so on an exact-class device the [`StepOutput`] is identical and
//! `TaskBuilder::record` commits it like a CPU step.

use lupus_prover::graph::{OpRecord, StepOutput, ValueRef, plan};
use lupus_prover::model::{Batch, ModelError, ModelSpec};
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::tensor::Tensor;

use super::device::{GpuDevice, GpuError};
use super::ops::eval_op_gpu;

fn graph_err(detail: impl Into<String>) -> GpuError {
    GpuError::Model(ModelError::Graph {
        detail: detail.into(),
    })
}

fn resolve<'a>(
    state: &'a TrainState,
    batch: &'a Batch,
    ops: &'a [OpRecord],
    r: ValueRef,
) -> Result<&'a Tensor, GpuError> {
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
    found.ok_or_else(|| graph_err(format!("{r:?} does not name an available value")))
}

/// Forward, loss, backward and AdamW on the GPU, with the full tape.
pub async fn train_step_gpu(
    dev: &GpuDevice,
    spec: &ModelSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
) -> Result<StepOutput, GpuError> {
    spec.check_params(&state.params, "params")?;
    spec.check_params(&state.m, "first moments")?;
    spec.check_params(&state.v, "second moments")?;
    let step = state
        .step
        .checked_add(1)
        .ok_or_else(|| graph_err("the step counter overflowed"))?;
    let plan = plan(spec, batch.size(), Some((opt, step)))?;
    let mut ops: Vec<OpRecord> = Vec::with_capacity(plan.nodes.len());
    for node in plan.nodes {
        let inputs = node
            .inputs
            .iter()
            .map(|r| resolve(state, batch, &ops, *r))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = eval_op_gpu(dev, &node.kind, &inputs).await?;
        ops.push(OpRecord {
            kind: node.kind,
            inputs: node.inputs,
            outputs,
        });
    }
    let loss = resolve(state, batch, &ops, plan.loss)?
        .data()
        .first()
        .copied()
        .ok_or_else(|| graph_err("the loss tensor is empty"))?;
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
    })
}
