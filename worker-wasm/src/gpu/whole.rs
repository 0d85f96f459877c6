//! A whole training step on the device: one submission, the tensors stay where they are,
//! the trace's tensor hashes are computed there, and only the digests and the loss come
//! back.
//!
//! [`WholeStep::new`] lowers the step's [`plan`] once per task ([`super::ops::lower`],
//! the per-operator path's lowering) and lays every value out in device buffers: the
//! training state (params, then first and second moments) in one buffer that stays on
//! the device for the whole task, and every op output, the batch and the kernels'
//! scratch arrays as regions of one *arena* buffer. Every pass of every kernel gets its
//! bind group (regions of those two buffers) and a slot of one parameter buffer, then
//! the hashing passes over the arena ([`super::hash::HashProgram`]) follow. The plan does
//! not change between steps except for AdamW's step number, so all of that is built once.
//!
//! [`WholeStep::step`] then writes the batch, its ids' index (for the embedding gradient)
//! and the parameter blocks (the only uploads),
//! records every dispatch into one compute pass, copies the AdamW outputs over the state,
//! and reads back one small buffer: `T(x)` of every op output committed while training
//! (32 bytes each: the block boundaries, the loss and the next state; the rest is recomputed
//! on the CPU when a step is opened), a status word and the loss. The host commits the step from those digests
//! (`TaskBuilder::record_digests`), and reads the state back only when the protocol needs
//! it ([`WholeStep::read_state`]: checkpoints every `k` steps and the final state, see
//! [`record_whole_step`]). Openings replay a challenged step on the CPU reference from a
//! checkpoint, which gives the same bits on an exact-class device.
//!
//! Natively and in the browser the code is the same: the only wait is the read-back's
//! `map_async` future.

use lupus_prover::graph::{ValueRef, plan};
use lupus_prover::merkle::Digest;
use lupus_prover::model::{Batch, ModelError, ModelSpec};
use lupus_prover::ops::OpKind;
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::task::TaskBuilder;
use lupus_prover::tensor::{Tensor, checked_numel};

use super::device::{GpuDevice, GpuError, Kernel, Layout, Pass, workgroups};
use super::hash::{Blake3Mode, HashProgram, Message, TENSOR_CONTEXT, digests_of};
use super::ops::{In, Out, check_ids, id_index, lower};

fn numel_of(op: &'static str, shape: &[usize]) -> Result<usize, GpuError> {
    checked_numel(shape).map_err(|e| GpuError::Shape {
        op,
        detail: e.to_string(),
    })
}

fn graph_err(detail: impl Into<String>) -> GpuError {
    GpuError::Model(ModelError::Graph {
        detail: detail.into(),
    })
}

/// Which buffer a region is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    Arena,
    State,
}

/// `len` f32 words from word `word` of a buffer (a bound region is at least one word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    home: Home,
    word: u64,
    len: u64,
}

impl Region {
    fn bytes(&self) -> u64 {
        4 * self.len.max(1)
    }

    fn overlaps(&self, other: &Region) -> bool {
        self.home == other.home
            && self.word < other.word + other.len.max(1)
            && other.word < self.word + self.len.max(1)
    }
}

/// Hands out aligned regions of one buffer.
struct Allocator {
    home: Home,
    words: u64,
    align: u64,
}

impl Allocator {
    fn alloc(&mut self, len: u64) -> Region {
        let word = self.words;
        self.words = (word + len.max(1)).next_multiple_of(self.align);
        Region {
            home: self.home,
            word,
            len,
        }
    }
}

/// One pass of one kernel over its regions, before the buffers exist.
struct Planned {
    kernel: &'static Kernel,
    pass: Pass,
    bindings: Vec<Region>,
}

struct Dispatch {
    /// For [`WholeStep::step_profiled`], which reads the clock and is native only.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    kernel: &'static str,
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    groups: (u32, u32),
    entry: &'static str,
    threads: u32,
}

/// What a whole step sends back.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDigests {
    /// The mean loss of the batch.
    pub loss: f32,
    /// `T(output o of op i)` at `[i][o]`, in tape order; zeros for the outputs not
    /// committed while training ([`lupus_prover::graph::Plan::recomputed`]).
    pub outputs: Vec<Vec<Digest>>,
}

/// A task's training state resident on the device and its step compiled into one
/// submission.
pub struct WholeStep {
    spec: ModelSpec,
    opt: AdamW,
    input_shape: Vec<usize>,
    target_shape: Vec<usize>,
    /// The input shapes of every node, to re-lower the plan of each step.
    node_shapes: Vec<Vec<Vec<usize>>>,
    /// Which outputs of each op are hashed, in tape order (those committed while
    /// training).
    outputs: Vec<Vec<bool>>,
    /// The state tensors' shapes and regions: params, first moments, second moments.
    state_layout: Vec<(Vec<usize>, Region)>,
    /// Which batch tensor (`true`: targets) must hold ids below a vocabulary, for `op`.
    ids: Vec<(bool, usize, &'static str)>,
    /// `(region, targets, vocab)`: where each step writes the [`id_index`] of a batch
    /// tensor's ids (`true`: the targets).
    indices: Vec<(Region, bool, usize)>,
    input: Region,
    target: Region,
    loss: Region,
    /// `(from state, to arena)`: reshapes of a state tensor get their own arena copy.
    pre_copies: Vec<(Region, Region)>,
    /// `(from arena, to state)`: the AdamW outputs become the next state.
    post_copies: Vec<(Region, Region)>,
    dispatches: Vec<Dispatch>,
    hash: HashProgram,
    arena: wgpu::Buffer,
    state: wgpu::Buffer,
    params: wgpu::Buffer,
    staging: wgpu::Buffer,
    uniform_align: u64,
    /// The device's kernel layout when the step was compiled.
    layout: Layout,
    step: u64,
    /// Set when a submitted step failed: the state buffer may be half updated.
    broken: bool,
}

impl WholeStep {
    /// Uploads `state` and compiles the step for batches shaped like `batch`.
    pub async fn new(
        dev: &GpuDevice,
        spec: &ModelSpec,
        opt: &AdamW,
        state: &TrainState,
        batch: &Batch,
    ) -> Result<WholeStep, GpuError> {
        spec.check_params(&state.params, "params")?;
        spec.check_params(&state.m, "first moments")?;
        spec.check_params(&state.v, "second moments")?;
        let bsz = batch.size();
        let next = state
            .step
            .checked_add(1)
            .ok_or_else(|| graph_err("the step counter overflowed"))?;
        let plan = plan(spec, bsz, Some((opt, next)))?;
        let p = state.params.len();
        let align = (dev.storage_align / 4).max(1);
        let mut arena = Allocator {
            home: Home::Arena,
            words: 0,
            align,
        };
        let mut state_alloc = Allocator {
            home: Home::State,
            words: 0,
            align,
        };
        let state_layout: Vec<(Vec<usize>, Region)> = state
            .tensors()
            .map(|t| (t.shape().to_vec(), state_alloc.alloc(t.len() as u64)))
            .collect();
        let input = arena.alloc(batch.inputs.len() as u64);
        let target = arena.alloc(batch.targets.len() as u64);

        let mut op_outs: Vec<Vec<(Region, Vec<usize>)>> = Vec::with_capacity(plan.nodes.len());
        let resolve = |op_outs: &[Vec<(Region, Vec<usize>)>], r: ValueRef| {
            let state = |k: usize| state_layout.get(k).map(|(s, r)| (*r, s.clone()));
            let found = match r {
                ValueRef::Param(i) => state(i as usize),
                ValueRef::Moment1(i) => state(p + i as usize),
                ValueRef::Moment2(i) => state(2 * p + i as usize),
                ValueRef::Input => Some((input, batch.inputs.shape().to_vec())),
                ValueRef::Target => Some((target, batch.targets.shape().to_vec())),
                ValueRef::Op { op, output } => op_outs
                    .get(op as usize)
                    .and_then(|o| o.get(output as usize))
                    .cloned(),
            };
            found.ok_or_else(|| graph_err(format!("{r:?} does not name an available value")))
        };
        let mut planned: Vec<Planned> = Vec::new();
        let mut node_shapes = Vec::with_capacity(plan.nodes.len());
        let mut ids = Vec::new();
        let mut pre_copies = Vec::new();
        let mut indices = Vec::new();
        for node in &plan.nodes {
            let op = node.kind.name();
            let ins = node
                .inputs
                .iter()
                .map(|r| resolve(&op_outs, *r))
                .collect::<Result<Vec<_>, _>>()?;
            let shapes: Vec<&[usize]> = ins.iter().map(|(_, s)| s.as_slice()).collect();
            let lowered =
                lower(&node.kind, &shapes, dev.layout)?.ok_or_else(|| GpuError::Shape {
                    op,
                    detail: "no WGSL kernel for this operator in the whole-step path".into(),
                })?;
            node_shapes.push(ins.iter().map(|(_, s)| s.clone()).collect());
            if let Some((i, vocab)) = lowered.ids {
                match node.inputs.get(i) {
                    Some(ValueRef::Input) => ids.push((false, vocab, op)),
                    Some(ValueRef::Target) => ids.push((true, vocab, op)),
                    _ => {
                        return Err(GpuError::Shape {
                            op,
                            detail: "token ids that are not the batch's cannot be checked".into(),
                        });
                    }
                }
            }
            if lowered.jobs.is_empty() {
                // A reshape: the same words under another shape. A state tensor gets an
                // arena copy so that every op output can be hashed from the arena.
                let (src, _) = ins[0];
                let region = if src.home == Home::Arena {
                    src
                } else {
                    let dst = arena.alloc(src.len);
                    pre_copies.push((src, dst));
                    dst
                };
                op_outs.push(lowered.shapes.into_iter().map(|s| (region, s)).collect());
                continue;
            }
            let outs = lowered
                .shapes
                .iter()
                .map(|s| numel_of(op, s).map(|n| arena.alloc(n as u64)))
                .collect::<Result<Vec<_>, _>>()?;
            for job in &lowered.jobs {
                let mut bindings = Vec::with_capacity(job.inputs.len() + job.outputs.len());
                for i in &job.inputs {
                    bindings.push(match *i {
                        In::Op(i) => ins[i].0,
                        // A slot the mode never reads gets its own four words (a
                        // vector kernel's binding holds at least one `vec4`): no region
                        // is bound twice in a dispatch (WebGPU refuses aliased writable
                        // bindings).
                        In::Unused => arena.alloc(4),
                        // Built on the host from the batch's ids and written each step.
                        In::IdIndex { ids, vocab } => {
                            let targets = match node.inputs.get(ids) {
                                Some(ValueRef::Input) => false,
                                Some(ValueRef::Target) => true,
                                _ => {
                                    return Err(GpuError::Shape {
                                        op,
                                        detail: "token ids that are not the batch's".into(),
                                    });
                                }
                            };
                            let len = vocab + 1 + numel_of(op, &ins[ids].1)?;
                            let region = arena.alloc(len as u64);
                            indices.push((region, targets, vocab));
                            region
                        }
                    });
                }
                for o in &job.outputs {
                    bindings.push(match o {
                        Out::Op(i) => outs[*i],
                        Out::Scratch(n) => arena.alloc(*n as u64),
                    });
                }
                for (a, x) in bindings.iter().enumerate() {
                    if bindings[a + 1..].iter().any(|y| x.overlaps(y)) {
                        return Err(GpuError::Shape {
                            op,
                            detail: "one region would be bound twice in a dispatch".into(),
                        });
                    }
                }
                for pass in &job.passes {
                    planned.push(Planned {
                        kernel: job.kernel,
                        pass: *pass,
                        bindings: bindings.clone(),
                    });
                }
            }
            op_outs.push(outs.into_iter().zip(lowered.shapes).collect());
        }
        let (loss, _) = resolve(&op_outs, plan.loss)?;
        if loss.home != Home::Arena {
            return Err(graph_err("the loss is not an operator's output"));
        }
        // The AdamW update of parameter i writes (param', m', v'): tensor i of the next
        // state, copied over the current one at the end of the step.
        let mut post_copies = Vec::with_capacity(3 * p);
        let mut updated = vec![false; p];
        for (node, outs) in plan.nodes.iter().zip(&op_outs) {
            if let (OpKind::AdamWUpdate { .. }, Some(ValueRef::Param(i))) =
                (&node.kind, node.inputs.first())
            {
                let i = *i as usize;
                if i >= p || updated[i] || outs.len() != 3 {
                    return Err(graph_err("the tape does not update every parameter once"));
                }
                updated[i] = true;
                for (k, (region, _)) in outs.iter().enumerate() {
                    post_copies.push((*region, state_layout[k * p + i].1));
                }
            }
        }
        if updated.iter().any(|u| !u) {
            return Err(graph_err("the tape does not update every parameter once"));
        }
        // Only the outputs committed while training are hashed: the rest are recomputed
        // on the CPU when a step is opened ([`lupus_prover::graph::Plan::recomputed`]).
        let recompute = plan.recomputed();
        let hashed: Vec<Vec<bool>> = op_outs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (0..o.len())
                    .map(|k| !recompute.contains(i as u32, k as u32))
                    .collect()
            })
            .collect();
        let messages = op_outs
            .iter()
            .zip(&hashed)
            .flat_map(|(o, h)| o.iter().zip(h).filter(|(_, h)| **h).map(|(r, _)| r))
            .map(|(r, s)| Message::tensor(s, r.word))
            .collect::<Result<Vec<_>, _>>()?;

        // The buffers, bind groups and hashing passes.
        let arena_bytes = 4 * arena.words;
        if arena_bytes > dev.max_binding {
            return Err(GpuError::Shape {
                op: "whole step",
                detail: format!(
                    "the step's tensors take {arena_bytes} bytes, over the device's binding limit of {}",
                    dev.max_binding
                ),
            });
        }
        let scope = dev.scope();
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            dev.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4),
                usage,
                mapped_at_creation: false,
            })
        };
        let arena_buf = buffer("arena", arena_bytes, usage);
        let state_buf = buffer("state", 4 * state_alloc.words, usage);
        let mut state_bytes = vec![0u8; 4 * state_alloc.words as usize];
        for (t, (_, r)) in state.tensors().zip(&state_layout) {
            let at = 4 * r.word as usize;
            for (dst, x) in state_bytes[at..at + 4 * t.len()]
                .chunks_exact_mut(4)
                .zip(t.data())
            {
                dst.copy_from_slice(&x.to_bits().to_le_bytes());
            }
        }
        dev.write(&state_buf, 0, &state_bytes);
        let uniform_align = dev.uniform_align;
        let params = buffer(
            "step params",
            planned.len() as u64 * uniform_align,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        // One compilation per kernel, with every entry point the step uses.
        let mut entries: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for pl in &planned {
            match entries.iter_mut().find(|(k, _)| *k == pl.kernel.name) {
                Some((_, e)) if e.contains(&pl.pass.entry) => {}
                Some((_, e)) => e.push(pl.pass.entry),
                None => entries.push((pl.kernel.name, vec![pl.pass.entry])),
            }
        }
        let mut dispatches = Vec::with_capacity(planned.len());
        for (i, pl) in planned.iter().enumerate() {
            let names = entries
                .iter()
                .find(|(k, _)| *k == pl.kernel.name)
                .map(|(_, e)| e.as_slice())
                .unwrap_or_default();
            let compiled = dev.compiled(pl.kernel, names);
            let pipeline = compiled
                .pipelines
                .get(pl.pass.entry)
                .cloned()
                .ok_or_else(|| GpuError::Kernel {
                    kernel: pl.kernel.name,
                    detail: format!("no entry point `{}`", pl.pass.entry),
                })?;
            let storage: Vec<wgpu::BufferBinding<'_>> = pl
                .bindings
                .iter()
                .map(|r| wgpu::BufferBinding {
                    buffer: if r.home == Home::Arena {
                        &arena_buf
                    } else {
                        &state_buf
                    },
                    offset: 4 * r.word,
                    size: wgpu::BufferSize::new(r.bytes()),
                })
                .collect();
            let group = dev.bind_group(
                pl.kernel,
                &compiled,
                wgpu::BufferBinding {
                    buffer: &params,
                    offset: i as u64 * uniform_align,
                    size: wgpu::BufferSize::new(64),
                },
                &storage,
            );
            dispatches.push(Dispatch {
                kernel: pl.kernel.name,
                pipeline,
                group,
                groups: workgroups(pl.pass.params[0]),
                entry: pl.pass.entry,
                threads: pl.pass.params[0],
            });
        }
        let hash = HashProgram::new(
            dev,
            &arena_buf,
            &messages,
            Blake3Mode::DeriveKey(TENSOR_CONTEXT),
            true,
        )?;
        let staging = dev.staging(32 * messages.len() as u64 + 8);
        dev.check(scope, "whole step").await?;
        Ok(WholeStep {
            spec: spec.clone(),
            opt: *opt,
            input_shape: batch.inputs.shape().to_vec(),
            target_shape: batch.targets.shape().to_vec(),
            node_shapes,
            outputs: hashed,
            state_layout,
            ids,
            indices,
            input,
            target,
            loss,
            pre_copies,
            post_copies,
            dispatches,
            hash,
            arena: arena_buf,
            state: state_buf,
            params,
            staging,
            uniform_align,
            layout: dev.layout,
            step: state.step,
            broken: false,
        })
    }

    /// The number of steps the resident state has taken.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Bytes resident on the device: the arena (every op output, the batch, scratch)
    /// and the state. The arena is bound whole by the hashing passes, so it must fit
    /// the device's `max_storage_buffer_binding_size` (128 MiB by WebGPU's defaults).
    pub fn resident_bytes(&self) -> (u64, u64) {
        (self.arena.size(), self.state.size())
    }

    /// Dispatches per step: the operators' passes and the hashing passes.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len() + self.hash.pass_count()
    }

    /// Runs one step on `batch` from the resident state, which it replaces. Uploads the
    /// batch and the parameter blocks; reads back one buffer: every op output's `T(x)`,
    /// a status word and the loss.
    pub async fn step(&mut self, dev: &GpuDevice, batch: &Batch) -> Result<StepDigests, GpuError> {
        if self.broken {
            return Err(graph_err(
                "an earlier step failed on the device; rebuild the whole step from a state",
            ));
        }
        let (next, params) = self.params_for(batch)?;
        let scope = dev.scope();
        self.upload(dev, &params, batch)?;
        let mut encoder = self.encoder(dev, "whole step");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("whole step"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.group, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
            }
            self.hash.encode(&mut pass);
        }
        self.finish_encoding(&mut encoder);
        dev.queue().submit([encoder.finish()]);
        // From here the state buffer holds the next state, whatever comes back.
        self.broken = true;
        dev.check(scope, "whole step").await?;
        let bytes = dev.read_bytes(&self.staging).await?;
        let out = self.digests(&bytes)?;
        self.step = next;
        self.broken = false;
        Ok(out)
    }

    /// Checks a batch and returns the next step's number and the parameter blocks of
    /// every pass of its plan.
    fn params_for(&self, batch: &Batch) -> Result<(u64, Vec<u8>), GpuError> {
        if batch.inputs.shape() != self.input_shape || batch.targets.shape() != self.target_shape {
            return Err(GpuError::Model(ModelError::Batch {
                detail: format!(
                    "the step was compiled for inputs {:?} and targets {:?}",
                    self.input_shape, self.target_shape
                ),
            }));
        }
        for &(targets, vocab, op) in &self.ids {
            let t = if targets {
                &batch.targets
            } else {
                &batch.inputs
            };
            check_ids(op, t.data(), vocab)?;
        }
        let next = self
            .step
            .checked_add(1)
            .ok_or_else(|| graph_err("the step counter overflowed"))?;
        // This step's parameter blocks: the plan is re-lowered, so anything that varies
        // by step (AdamW's bias corrections) is the lowering's, and a plan whose passes
        // differ from the compiled ones is refused rather than run with stale bindings.
        let plan = plan(&self.spec, batch.size(), Some((&self.opt, next)))?;
        if plan.nodes.len() != self.node_shapes.len() {
            return Err(graph_err("the plan changed between steps"));
        }
        let align = self.uniform_align as usize;
        let mut params = Vec::with_capacity(self.dispatches.len() * align);
        let mut passes = self.dispatches.iter();
        for (node, shapes) in plan.nodes.iter().zip(&self.node_shapes) {
            let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            let lowered = lower(&node.kind, &shapes, self.layout)?
                .ok_or_else(|| graph_err("the plan changed between steps"))?;
            for pass in lowered.jobs.iter().flat_map(|j| &j.passes) {
                match passes.next() {
                    Some(d) if d.entry == pass.entry && d.threads == pass.params[0] => {}
                    _ => return Err(graph_err("the plan changed between steps")),
                }
                let mut bytes = pass.bytes();
                bytes.resize(align, 0);
                params.extend(bytes);
            }
        }
        if passes.next().is_some() {
            return Err(graph_err("the plan changed between steps"));
        }
        Ok((next, params))
    }

    /// Queues the step's uploads: the parameter blocks, the batch and the ids' indices.
    /// The batch has been checked ([`WholeStep::params_for`]).
    fn upload(&self, dev: &GpuDevice, params: &[u8], batch: &Batch) -> Result<(), GpuError> {
        let bytes = |xs: &[f32]| -> Vec<u8> { xs.iter().flat_map(|x| x.to_le_bytes()).collect() };
        dev.write(&self.params, 0, params);
        for (t, r) in [(&batch.inputs, self.input), (&batch.targets, self.target)] {
            dev.write(&self.arena, 4 * r.word, &bytes(t.data()));
        }
        for &(r, targets, vocab) in &self.indices {
            let ids = if targets {
                &batch.targets
            } else {
                &batch.inputs
            };
            dev.write(
                &self.arena,
                4 * r.word,
                &bytes(&id_index(ids.data(), vocab)?),
            );
        }
        Ok(())
    }

    /// An encoder that starts with the state-to-arena copies and the status clear.
    fn encoder(&self, dev: &GpuDevice, label: &str) -> wgpu::CommandEncoder {
        let mut encoder = dev
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        for (src, dst) in &self.pre_copies {
            encoder.copy_buffer_to_buffer(
                &self.state,
                4 * src.word,
                &self.arena,
                4 * dst.word,
                4 * src.len,
            );
        }
        self.hash.encode_clear(&mut encoder);
        encoder
    }

    /// Ends a step: the AdamW outputs over the state, then the digests, the status
    /// word and the loss into the one buffer that is read back.
    fn finish_encoding(&self, encoder: &mut wgpu::CommandEncoder) {
        for (src, dst) in &self.post_copies {
            encoder.copy_buffer_to_buffer(
                &self.arena,
                4 * src.word,
                &self.state,
                4 * dst.word,
                4 * src.len,
            );
        }
        let n = self.hash.n as u64;
        encoder.copy_buffer_to_buffer(&self.hash.digests, 0, &self.staging, 0, 32 * n);
        encoder.copy_buffer_to_buffer(&self.hash.status, 0, &self.staging, 32 * n, 4);
        encoder.copy_buffer_to_buffer(
            &self.arena,
            4 * self.loss.word,
            &self.staging,
            32 * n + 4,
            4,
        );
    }

    /// Decodes the read-back buffer of a step.
    fn digests(&self, bytes: &[u8]) -> Result<StepDigests, GpuError> {
        let n = self.hash.n;
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| GpuError::Readback("a short read-back".into()))
        };
        if word(32 * n)? != 0 {
            return Err(GpuError::NonFinite);
        }
        let loss = f32::from_bits(word(32 * n + 4)?);
        let mut digests = digests_of(bytes, n).into_iter().map(Digest);
        // An output not hashed gets a placeholder: `record_digests` does not read it.
        let outputs = self
            .outputs
            .iter()
            .map(|h| {
                h.iter()
                    .map(|&hashed| {
                        if hashed {
                            digests.next().unwrap_or_default()
                        } else {
                            Digest::default()
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(StepDigests { loss, outputs })
    }

    /// [`WholeStep::step`] with every dispatch submitted and waited for on its own, to
    /// see where a step's time goes: seconds per kernel (hashing as `blake3`), summed
    /// over the step. Slower than a step (a wait per dispatch); the state advances the
    /// same way. Native only (it reads the clock).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn step_profiled(
        &mut self,
        dev: &GpuDevice,
        batch: &Batch,
    ) -> Result<(StepDigests, Vec<(&'static str, f64)>), GpuError> {
        use std::time::Instant;
        if self.broken {
            return Err(graph_err("an earlier step failed on the device"));
        }
        let (next, params) = self.params_for(batch)?;
        let scope = dev.scope();
        self.upload(dev, &params, batch)?;
        let wait = || {
            dev.device()
                .poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: None,
                })
                .map_err(|e| GpuError::Readback(e.to_string()))
        };
        dev.queue().submit([self.encoder(dev, "profile").finish()]);
        wait()?;
        self.broken = true;
        let mut times: Vec<(&'static str, f64)> = Vec::new();
        let mut add = |name: &'static str, s: f64| match times.iter_mut().find(|(n, _)| *n == name)
        {
            Some((_, t)) => *t += s,
            None => times.push((name, s)),
        };
        let hash_passes = self.hash.pass_count();
        for i in 0..self.dispatches.len() + hash_passes {
            let mut encoder =
                dev.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("profile"),
                    });
            let name = {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("profile"),
                    timestamp_writes: None,
                });
                match self.dispatches.get(i) {
                    Some(d) => {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.group, &[]);
                        pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                        d.kernel
                    }
                    None => {
                        self.hash.encode_one(&mut pass, i - self.dispatches.len());
                        "blake3"
                    }
                }
            };
            let t0 = Instant::now();
            dev.queue().submit([encoder.finish()]);
            wait()?;
            add(name, t0.elapsed().as_secs_f64());
        }
        let mut encoder = dev
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        self.finish_encoding(&mut encoder);
        dev.queue().submit([encoder.finish()]);
        dev.check(scope, "whole step").await?;
        let bytes = dev.read_bytes(&self.staging).await?;
        let out = self.digests(&bytes)?;
        self.step = next;
        self.broken = false;
        Ok((out, times))
    }

    /// Reads the resident state back (one transfer of the whole state).
    pub async fn read_state(&self, dev: &GpuDevice) -> Result<TrainState, GpuError> {
        if self.broken {
            return Err(graph_err("an earlier step failed on the device"));
        }
        let size = self.state.size();
        let staging = dev.staging(size);
        let mut encoder = dev
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read state"),
            });
        encoder.copy_buffer_to_buffer(&self.state, 0, &staging, 0, size);
        dev.queue().submit([encoder.finish()]);
        let bytes = dev.read_bytes(&staging).await?;
        let mut tensors = self.state_layout.iter().map(|(shape, r)| {
            let at = 4 * r.word as usize;
            let data = bytes[at..at + 4 * r.len as usize]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Tensor::new(shape.clone(), data).map_err(|e| GpuError::Shape {
                op: "read state",
                detail: e.to_string(),
            })
        });
        let p = self.state_layout.len() / 3;
        let mut take = |n: usize| tensors.by_ref().take(n).collect::<Result<Vec<_>, _>>();
        Ok(TrainState {
            params: take(p)?,
            m: take(p)?,
            v: take(p)?,
            step: self.step,
        })
    }
}

/// Runs the builder's next step as one whole step on the device and commits it from the
/// digests; the state comes back only when the builder keeps it (a checkpoint or the
/// final state). Returns the loss.
pub async fn record_whole_step(
    dev: &GpuDevice,
    whole: &mut WholeStep,
    builder: &mut TaskBuilder<'_>,
) -> Result<f32, GpuError> {
    if whole.steps_taken() != u64::from(builder.step()) {
        return Err(graph_err(format!(
            "the device state has taken {} steps and the task {}",
            whole.steps_taken(),
            builder.step()
        )));
    }
    let batch = builder.batch()?;
    let out = whole.step(dev, &batch).await?;
    let state = if builder.needs_state() {
        Some(whole.read_state(dev).await?)
    } else {
        None
    };
    builder.record_digests(&batch, &out.outputs, out.loss, state)?;
    Ok(out.loss)
}
