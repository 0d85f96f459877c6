//! One training step on the GPU: the prover's plan, each node through [`eval_op_gpu`].
//!
//! `lupus_prover::graph::train_step` runs the same [`plan`] through the CPU's `eval_op`;
//! this runs it node by node through the WGSL kernels and keeps every output (the trace
//! commits them all), so on an exact-class device the [`StepOutput`] is identical and
//! `TaskBuilder::record` commits it like a CPU step.

use lupus_prover::graph::{OpRecord, StepOutput, plan, step_output, step_value};
use lupus_prover::model::{Batch, ModelError, ModelSpec};
use lupus_prover::optim::{AdamW, TrainState};

use super::device::{GpuDevice, GpuError};
use super::ops::eval_op_gpu;

fn graph_err(detail: impl Into<String>) -> GpuError {
    GpuError::Model(ModelError::Graph {
        detail: detail.into(),
    })
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
    for node in plan.nodes.iter().cloned() {
        let inputs = node
            .inputs
            .iter()
            .map(|r| step_value(state, batch, &ops, *r))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = eval_op_gpu(dev, &node.kind, &inputs).await?;
        ops.push(OpRecord {
            kind: node.kind,
            inputs: node.inputs,
            outputs,
        });
    }
    Ok(step_output(state, batch, ops, &plan)?)
}
