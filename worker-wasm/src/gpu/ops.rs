//! Every operator of both models on the GPU: the WGSL twin of `lupus_prover::ops::eval_op`.
//!
//! DESIGN.md (Determinism): each kernel computes each output element in the reference's
//! order with `+ - *` and the `det` functions only, so on a device that does IEEE
//! binary32 without contraction (lavapipe, SwiftShader) the bits equal the CPU
//! reference's; the known-answer suite ([`super::kat`]) checks that at start. Shapes are
//! checked here before anything is dispatched; `Reshape` moves no data and runs on the
//! host.
//!
//! An operator is first *lowered* ([`lower`]): from its input shapes alone to its output
//! shapes and the kernel jobs that compute it (which inputs each job binds, which
//! outputs or scratch arrays it writes, its passes). [`eval_op_gpu`] runs a lowering
//! job by job with uploads and read-backs (the per-operator path); `super::whole`
//! records the same lowerings over device-resident buffers. One lowering, two
//! executors, so the two paths cannot drift apart.

use lupus_prover::ops::{OpKind, eval_op};
use lupus_prover::tensor::{Tensor, checked_numel};

use super::device::{GpuDevice, GpuError, Kernel, Layout, Pass};

const fn kernel(name: &'static str, source: &'static str, inputs: u32, outputs: u32) -> Kernel {
    Kernel {
        name,
        source,
        inputs,
        outputs,
    }
}

pub(crate) const SCALAR: Kernel = kernel("scalar", include_str!("wgsl/scalar.wgsl"), 1, 1);
const MATMUL: Kernel = kernel("matmul", include_str!("wgsl/matmul.wgsl"), 2, 1);
const MATMUL_VEC4: Kernel = kernel("matmul_vec4", include_str!("wgsl/matmul_vec4.wgsl"), 2, 1);
const MATMUL_ROWS: Kernel = kernel("matmul_rows", include_str!("wgsl/matmul_rows.wgsl"), 2, 1);
/// Rows and columns of the output a `matmul_rows.wgsl` workgroup computes (the
/// constants of `scripts/gen_matmul_rows.py`).
const MATMUL_ROWS_M: usize = 8;
const MATMUL_ROWS_N: usize = 64;
const ELEMENTWISE: Kernel = kernel("elementwise", include_str!("wgsl/elementwise.wgsl"), 2, 1);
const ELEMENTWISE_VEC4: Kernel = kernel(
    "elementwise_vec4",
    include_str!("wgsl/elementwise_vec4.wgsl"),
    2,
    1,
);

/// An elementwise pass over `n` elements (`w` its words, the op code first): four
/// elements a thread (`elementwise_vec4.wgsl`) when `n` and `cols` (the columns a
/// broadcast repeats over; `n` itself where nothing is broadcast) are multiples of 4,
/// one a thread otherwise. Both give the reference's bits.
fn elementwise_job(n: usize, cols: usize, w: &[u32]) -> (&'static Kernel, Pass) {
    if n.is_multiple_of(4) && cols.is_multiple_of(4) {
        (&ELEMENTWISE_VEC4, Pass::new("main", n / 4, w))
    } else {
        (&ELEMENTWISE, Pass::new("main", n, w))
    }
}
const REDUCE: Kernel = kernel("reduce", include_str!("wgsl/reduce.wgsl"), 2, 1);
const LAYER_NORM: Kernel = kernel("layer_norm", include_str!("wgsl/layer_norm.wgsl"), 3, 3);
const LAYER_NORM_BACKWARD: Kernel = kernel(
    "layer_norm_backward",
    include_str!("wgsl/layer_norm_backward.wgsl"),
    5,
    3,
);
const LAYER_NORM_BACKWARD_COLS: Kernel = kernel(
    "layer_norm_backward_cols",
    include_str!("wgsl/layer_norm_backward_cols.wgsl"),
    4,
    2,
);
/// Columns a `layer_norm_backward_cols.wgsl` workgroup computes.
const LAYER_NORM_BACKWARD_COLS_N: usize = 32;
const SOFTMAX: Kernel = kernel("softmax", include_str!("wgsl/softmax.wgsl"), 2, 3);
const SOFTMAX_VEC4: Kernel = kernel("softmax_vec4", include_str!("wgsl/softmax_vec4.wgsl"), 2, 1);
const ATTENTION: Kernel = kernel("attention", include_str!("wgsl/attention.wgsl"), 2, 1);
const ATTENTION_SCORES_VEC4: Kernel = kernel(
    "attention_scores_vec4",
    include_str!("wgsl/attention_scores_vec4.wgsl"),
    2,
    1,
);
const ATTENTION_VALUES_VEC4: Kernel = kernel(
    "attention_values_vec4",
    include_str!("wgsl/attention_values_vec4.wgsl"),
    2,
    1,
);
const ATTENTION_ROWS: Kernel = kernel(
    "attention_rows",
    include_str!("wgsl/attention_rows.wgsl"),
    2,
    1,
);
/// The blocks of `attention_rows.wgsl` (the constants of
/// `scripts/gen_attention_rows.py`): scores, rows x columns a workgroup; values, rows
/// x head columns a workgroup.
const ATTENTION_ROWS_SCORES: (usize, usize) = (4, 64);
const ATTENTION_ROWS_VALUES: (usize, usize) = (32, 16);
const ADAMW: Kernel = kernel("adamw", include_str!("wgsl/adamw.wgsl"), 4, 3);

fn shape_err(op: &'static str, detail: impl Into<String>) -> GpuError {
    GpuError::Shape {
        op,
        detail: detail.into(),
    }
}

fn matrix(op: &'static str, s: &[usize]) -> Result<(usize, usize), GpuError> {
    match s {
        [r, c] => Ok((*r, *c)),
        s => Err(shape_err(op, format!("expected a matrix, got shape {s:?}"))),
    }
}

fn numel(op: &'static str, s: &[usize]) -> Result<usize, GpuError> {
    checked_numel(s).map_err(|e| shape_err(op, e.to_string()))
}

fn expect_len(op: &'static str, s: &[usize], n: usize) -> Result<(), GpuError> {
    if numel(op, s)? == n {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("expected {n} elements, got shape {s:?}"),
        ))
    }
}

/// Checks that every element of `ids` is an integer id below `vocab`.
pub(crate) fn check_ids(op: &'static str, ids: &[f32], vocab: usize) -> Result<(), GpuError> {
    for &x in ids {
        if !(x >= 0.0 && x < vocab as f32 && x == (x as u32) as f32) {
            return Err(shape_err(op, format!("token id {x} is not below {vocab}")));
        }
    }
    Ok(())
}

fn words(xs: &[usize]) -> Vec<u32> {
    xs.iter().map(|&x| x as u32).collect()
}

/// Where a job writes one of its output arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// The operator's output `i`.
    Op(usize),
    /// A scratch array of this many elements that no one reads after the job.
    Scratch(usize),
}

/// What a job binds as one of its kernel's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum In {
    /// The operator's input `i`.
    Op(usize),
    /// Nothing the job's mode reads (a placeholder of four words, one `vec4`, so that no
    /// region is bound twice in a dispatch).
    Unused,
    /// [`id_index`] of the token ids that are the operator's input `ids`, built on the
    /// host, where the ids are (they are the batch's).
    IdIndex { ids: usize, vocab: usize },
}

/// One kernel job of a lowered operator.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub kernel: &'static Kernel,
    pub passes: Vec<Pass>,
    pub inputs: Vec<In>,
    pub outputs: Vec<Out>,
}

/// The rows of each token id, for `embedding_backward`: `[offset of id 0, .., offset of
/// id vocab]` then every row index `n` grouped by `ids[n]` and increasing within a group,
/// as f32 values (exact: at most 2^24 rows). A thread of the kernel then reads only its
/// id's rows, in the reference's order, where it used to scan every row.
pub(crate) fn id_index(ids: &[f32], vocab: usize) -> Result<Vec<f32>, GpuError> {
    if ids.len() > 1 << 24 {
        return Err(shape_err("embedding_backward", "more than 2^24 token ids"));
    }
    let mut index = vec![0f32; vocab + 1 + ids.len()];
    let mut counts = vec![0usize; vocab + 1];
    for &x in ids {
        counts[x as usize + 1] += 1;
    }
    for v in 0..vocab {
        counts[v + 1] += counts[v];
    }
    for (o, &c) in index.iter_mut().zip(&counts) {
        *o = c as f32;
    }
    let (_, rows) = index.split_at_mut(vocab + 1);
    for (n, &x) in ids.iter().enumerate() {
        let at = &mut counts[x as usize];
        rows[*at] = n as f32;
        *at += 1;
    }
    Ok(index)
}

/// An operator lowered to kernel jobs.
#[derive(Clone, Debug)]
pub(crate) struct Lowered {
    /// The shape of each output.
    pub shapes: Vec<Vec<usize>>,
    /// The jobs, in order. Empty for `Reshape`, whose output is its input's data.
    pub jobs: Vec<Job>,
    /// `(input, vocab)`: an input whose elements must be token ids below `vocab`. The
    /// kernels index with them, so they are checked on the host before a dispatch.
    pub ids: Option<(usize, usize)>,
}

fn job(kernel: &'static Kernel, passes: Vec<Pass>, inputs: &[In], outputs: &[Out]) -> Job {
    Job {
        kernel,
        passes,
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
    }
}

/// One pass of one kernel writing the operator's single output of `shape`.
fn single(kernel: &'static Kernel, pass: Pass, inputs: &[In], shape: Vec<usize>) -> Lowered {
    Lowered {
        shapes: vec![shape],
        jobs: vec![job(kernel, vec![pass], inputs, &[Out::Op(0)])],
        ids: None,
    }
}

/// The kernel and pass of an `op(A) [m, k] x op(B) [k, n]` matmul, `w` its parameter
/// words. When m, k and n are multiples of 4: on a CPU adapter, a workgroup of 8 lanes
/// per 8 rows x 64 columns, the rows shared by the lanes (`matmul_rows.wgsl`); on a GPU,
/// one thread per 8 x 8 block reading four floats at a time (`matmul_vec4.wgsl`).
/// Otherwise one thread per 8 x 8 block reading one float at a time (`matmul.wgsl`).
/// All give the reference's bits.
pub(crate) fn matmul_job(
    m: usize,
    k: usize,
    n: usize,
    w: &[u32],
    layout: Layout,
) -> (&'static Kernel, Pass) {
    let vec4 = [m, k, n].iter().all(|d| d % 4 == 0 && *d > 0);
    match (vec4, layout) {
        (true, Layout::Cpu) => {
            let entry = match (w.get(3) != Some(&0), w.get(4) != Some(&0)) {
                (false, false) => "main_nn",
                (false, true) => "main_nt",
                (true, false) => "main_tn",
                (true, true) => "main_tt",
            };
            let groups = m.div_ceil(MATMUL_ROWS_M) * n.div_ceil(MATMUL_ROWS_N);
            (&MATMUL_ROWS, Pass::groups(entry, groups, w))
        }
        (true, Layout::Gpu) => (
            &MATMUL_VEC4,
            Pass::new("main", m.div_ceil(8) * n.div_ceil(8), w),
        ),
        (false, _) => (&MATMUL, Pass::new("main", m.div_ceil(8) * n.div_ceil(8), w)),
    }
}

/// The `attention_rows.wgsl` pass of the attention product `w` describes (words `[op,
/// batch, seq, heads, head width]`), where that kernel applies: on a CPU adapter, for a
/// sequence length that is a multiple of 4 and a head width that is a multiple of 16.
fn attention_rows_job(w: &[u32], layout: Layout) -> Option<(&'static Kernel, Pass)> {
    let &[op, b, seq, heads, hd] = w else {
        return None;
    };
    let [b, seq, heads, hd] = [b, seq, heads, hd].map(|x| x as usize);
    if layout != Layout::Cpu || !seq.is_multiple_of(4) || !hd.is_multiple_of(16) || seq == 0 {
        return None;
    }
    let (scores_rows, scores_cols) = ATTENTION_ROWS_SCORES;
    let (values_rows, values_cols) = ATTENTION_ROWS_VALUES;
    let scores = seq.div_ceil(scores_rows) * seq.div_ceil(scores_cols);
    let values = seq.div_ceil(values_rows) * (hd / values_cols);
    let (entry, groups) = match op {
        0 => ("scores_0", scores),
        2 => ("scores_2", scores),
        1 => ("values_1", values),
        3 => ("values_3", values),
        4 => ("values_4", values),
        5 => ("values_5", values),
        _ => return None,
    };
    Some((&ATTENTION_ROWS, Pass::groups(entry, b * heads * groups, w)))
}

/// The kernel and pass of a score-shaped attention product (`n` scores, `w` its
/// parameter words): `attention_rows.wgsl` where it applies ([`attention_rows_job`]),
/// else rows read four floats at a time (`attention_scores_vec4.wgsl`) when the head
/// width `hd` is a multiple of 4, one at a time (`attention.wgsl`) otherwise. All give
/// the reference's bits.
fn attention_scores_job(n: usize, hd: usize, w: &[u32], layout: Layout) -> (&'static Kernel, Pass) {
    if let Some(job) = attention_rows_job(w, layout) {
        job
    } else if hd.is_multiple_of(4) {
        (&ATTENTION_SCORES_VEC4, Pass::new("main", n, w))
    } else {
        (&ATTENTION, Pass::new("main", n, w))
    }
}

/// The kernel and pass of a value-shaped attention product (`n` outputs):
/// `attention_rows.wgsl` where it applies ([`attention_rows_job`]), else four adjacent
/// columns a thread (`attention_values_vec4.wgsl`) when the head width is a multiple of
/// 4, so that each score read serves four outputs; one column a thread otherwise. Word 0
/// (the thread count) is set here.
fn attention_values_job(n: usize, hd: usize, w: &[u32], layout: Layout) -> (&'static Kernel, Pass) {
    if let Some(job) = attention_rows_job(w, layout) {
        job
    } else if hd.is_multiple_of(4) {
        (&ATTENTION_VALUES_VEC4, Pass::new("main", n / 4, w))
    } else {
        (&ATTENTION, Pass::new("main", n, w))
    }
}

/// Attention dimensions of a `[batch*seq, width]` input.
fn attn(
    op: &'static str,
    s: &[usize],
    heads: usize,
    seq: usize,
) -> Result<(usize, usize), GpuError> {
    let (rows, width) = matrix(op, s)?;
    if heads == 0 || seq == 0 || rows % seq != 0 || width % heads != 0 || width == 0 {
        return Err(shape_err(
            op,
            format!("{s:?} does not fit {heads} heads of seq {seq}"),
        ));
    }
    Ok((rows / seq, width / heads))
}

/// Lowers one operator, from its input shapes, to kernel jobs: the reference's shape
/// rules, checked before anything is dispatched. `None` for operators that have no
/// kernel yet (added to the prover later).
pub(crate) fn lower(
    kind: &OpKind,
    x: &[&[usize]],
    layout: Layout,
) -> Result<Option<Lowered>, GpuError> {
    let op = kind.name();
    if x.len() != kind.arity() {
        return Err(shape_err(
            op,
            format!("{} inputs for an operator of {}", x.len(), kind.arity()),
        ));
    }
    const A: In = In::Op(0);
    const B: In = In::Op(1);
    const C: In = In::Op(2);
    Ok(Some(match kind {
        OpKind::Reshape { shape } => {
            if numel(op, shape)? != numel(op, x[0])? {
                return Err(shape_err(
                    op,
                    format!("cannot reshape {:?} to {shape:?}", x[0]),
                ));
            }
            Lowered {
                shapes: vec![shape.clone()],
                jobs: Vec::new(),
                ids: None,
            }
        }
        OpKind::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (ar, ac) = matrix(op, x[0])?;
            let (br, bc) = matrix(op, x[1])?;
            let (m, k) = if *transpose_a { (ac, ar) } else { (ar, ac) };
            let (k2, n) = if *transpose_b { (bc, br) } else { (br, bc) };
            if k != k2 {
                return Err(shape_err(op, "inner dimensions differ"));
            }
            let w = words(&[m, k, n, *transpose_a as usize, *transpose_b as usize]);
            let (kernel, pass) = matmul_job(m, k, n, &w, layout);
            single(kernel, pass, &[A, B], vec![m, n])
        }
        OpKind::Add | OpKind::Relu | OpKind::ReluBackward => {
            let code = match kind {
                OpKind::Add => 0,
                OpKind::Relu => 1,
                _ => 2,
            };
            let n = numel(op, x[0])?;
            if matches!(kind, OpKind::Relu) {
                // One input: the second slot is a placeholder of one `vec4`.
                let (kernel, pass) = elementwise_job(n, n, &[code]);
                single(kernel, pass, &[A, In::Unused], x[0].to_vec())
            } else {
                expect_len(op, x[1], n)?;
                let (kernel, pass) = elementwise_job(n, n, &[code]);
                single(kernel, pass, &[A, B], x[0].to_vec())
            }
        }
        OpKind::AddBias => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            let w = words(&[3, c]);
            let (kernel, pass) = elementwise_job(r * c, c, &w);
            single(kernel, pass, &[A, B], vec![r, c])
        }
        OpKind::AddPosition { seq } => {
            let (r, c) = matrix(op, x[0])?;
            let (context, c2) = matrix(op, x[1])?;
            if c2 != c || *seq == 0 || *seq > context || r % seq != 0 || c == 0 {
                return Err(shape_err(op, "x and table do not fit seq"));
            }
            let w = words(&[4, c, *seq]);
            let (kernel, pass) = elementwise_job(r * c, c, &w);
            single(kernel, pass, &[A, B], vec![r, c])
        }
        OpKind::SoftmaxCrossEntropyBackward => {
            let (r, v) = matrix(op, x[0])?;
            expect_len(op, x[1], r)?;
            let w = words(&[5, v, 0, r]);
            let mut l = single(
                &ELEMENTWISE,
                Pass::new("main", r * v, &w),
                &[A, B],
                vec![r, v],
            );
            l.ids = Some((1, v));
            l
        }
        OpKind::BiasBackward => {
            let (r, c) = matrix(op, x[0])?;
            let w = words(&[0, r, c]);
            single(&REDUCE, Pass::new("main", c, &w), &[A, In::Unused], vec![c])
        }
        OpKind::AddPositionBackward { seq, context } => {
            let (r, c) = matrix(op, x[0])?;
            if *seq == 0 || seq > context || r % seq != 0 || c == 0 {
                return Err(shape_err(op, "dy does not fit seq and context"));
            }
            let w = words(&[1, r, c, *seq]);
            let n = context * c;
            single(
                &REDUCE,
                Pass::new("main", n, &w),
                &[A, In::Unused],
                vec![*context, c],
            )
        }
        OpKind::EmbeddingBackward { vocab, dim } => {
            let n_ids = numel(op, x[0])?;
            expect_len(op, x[1], n_ids * dim)?;
            let w = words(&[2, n_ids, *dim, *vocab]);
            let n = vocab * dim;
            let index = In::IdIndex {
                ids: 0,
                vocab: *vocab,
            };
            let mut l = single(
                &REDUCE,
                Pass::new("main", n, &w),
                &[B, index],
                vec![*vocab, *dim],
            );
            l.ids = Some((0, *vocab));
            l
        }
        OpKind::Embedding { vocab, dim } => {
            expect_len(op, x[0], vocab * dim)?;
            let rows = numel(op, x[1])?;
            let w = words(&[3, rows, *dim]);
            let n = rows * dim;
            let mut l = single(&REDUCE, Pass::new("main", n, &w), &[A, B], vec![rows, *dim]);
            l.ids = Some((1, *vocab));
            l
        }
        OpKind::LayerNorm { eps } => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            expect_len(op, x[2], c)?;
            if !(eps.is_finite() && *eps > 0.0) || c == 0 {
                return Err(shape_err(op, "eps must be > 0 and rows non-empty"));
            }
            let w = [c as u32, eps.to_bits()];
            Lowered {
                shapes: vec![vec![r, c], vec![r], vec![r]],
                jobs: vec![job(
                    &LAYER_NORM,
                    vec![Pass::new("main", r, &w)],
                    &[A, B, C],
                    &[Out::Op(0), Out::Op(1), Out::Op(2)],
                )],
                ids: None,
            }
        }
        OpKind::LayerNormBackward => {
            let (r, c) = matrix(op, x[0])?;
            expect_len(op, x[1], c)?;
            expect_len(op, x[2], r)?;
            expect_len(op, x[3], r)?;
            expect_len(op, x[4], r * c)?;
            let w = words(&[r, c]);
            let jobs = if layout == Layout::Cpu && c.is_multiple_of(4) {
                // dgamma and dbeta spread over workgroups of four columns a lane.
                let groups = c.div_ceil(LAYER_NORM_BACKWARD_COLS_N);
                vec![
                    job(
                        &LAYER_NORM_BACKWARD,
                        vec![Pass::new("rows_main", r, &w)],
                        &[A, B, C, In::Op(3), In::Op(4)],
                        &[Out::Op(0), Out::Scratch(0), Out::Scratch(0)],
                    ),
                    job(
                        &LAYER_NORM_BACKWARD_COLS,
                        vec![Pass::groups("main", groups, &w)],
                        &[A, C, In::Op(3), In::Op(4)],
                        &[Out::Op(1), Out::Op(2)],
                    ),
                ]
            } else {
                vec![job(
                    &LAYER_NORM_BACKWARD,
                    vec![Pass::new("rows_main", r, &w), Pass::new("cols_main", c, &w)],
                    &[A, B, C, In::Op(3), In::Op(4)],
                    &[Out::Op(0), Out::Op(1), Out::Op(2)],
                )]
            };
            Lowered {
                shapes: vec![vec![r, c], vec![c], vec![c]],
                jobs,
                ids: None,
            }
        }
        OpKind::CausalSoftmax { seq } | OpKind::CausalSoftmaxBackward { seq } => {
            let (r, c) = matrix(op, x[0])?;
            if c != *seq || *seq == 0 || r % seq != 0 {
                return Err(shape_err(op, "scores do not fit seq"));
            }
            let backward = matches!(kind, OpKind::CausalSoftmaxBackward { .. });
            let y = if backward {
                expect_len(op, x[1], r * c)?;
                B
            } else {
                In::Unused
            };
            let w = words(&[backward as usize, c, *seq]);
            // Rows four floats at a time where the width allows (`softmax_vec4.wgsl`).
            let softmax = if c.is_multiple_of(4) {
                job(
                    &SOFTMAX_VEC4,
                    vec![Pass::new("main", r, &w)],
                    &[A, y],
                    &[Out::Op(0)],
                )
            } else {
                job(
                    &SOFTMAX,
                    vec![Pass::new("main", r, &w)],
                    &[A, y],
                    &[Out::Op(0), Out::Scratch(0), Out::Scratch(0)],
                )
            };
            Lowered {
                shapes: vec![vec![r, c]],
                jobs: vec![softmax],
                ids: None,
            }
        }
        OpKind::SoftmaxCrossEntropy => {
            let (r, v) = matrix(op, x[0])?;
            if r == 0 || v == 0 {
                return Err(shape_err(op, "empty logits"));
            }
            expect_len(op, x[1], r)?;
            Lowered {
                shapes: vec![vec![1], vec![r, v]],
                jobs: vec![job(
                    &SOFTMAX,
                    vec![
                        Pass::new("main", r, &words(&[2, v])),
                        Pass::new("main", 1, &words(&[3, v, 0, r])),
                    ],
                    &[A, B],
                    &[Out::Op(1), Out::Scratch(r), Out::Op(0)],
                )],
                ids: Some((1, v)),
            }
        }
        OpKind::AttentionScores { heads, seq } => {
            let (b, hd) = attn(op, x[0], *heads, *seq)?;
            expect_len(op, x[1], numel(op, x[0])?)?;
            let rows = b * heads * seq;
            let w = words(&[0, b, *seq, *heads, hd]);
            let (kernel, pass) = attention_scores_job(rows * seq, hd, &w, layout);
            single(kernel, pass, &[A, B], vec![rows, *seq])
        }
        OpKind::AttentionValues { heads, seq } => {
            let (b, hd) = attn(op, x[1], *heads, *seq)?;
            expect_len(op, x[0], b * heads * seq * seq)?;
            let w = words(&[1, b, *seq, *heads, hd]);
            let n = numel(op, x[1])?;
            let (kernel, pass) = attention_values_job(n, hd, &w, layout);
            single(kernel, pass, &[A, B], x[1].to_vec())
        }
        OpKind::AttentionValuesBackward { heads, seq } => {
            // (p, v, do) -> (dp, dv)
            let (b, hd) = attn(op, x[1], *heads, *seq)?;
            expect_len(op, x[0], b * heads * seq * seq)?;
            let nv = numel(op, x[1])?;
            expect_len(op, x[2], nv)?;
            let np = numel(op, x[0])?;
            let (dp, dp_pass) =
                attention_scores_job(np, hd, &words(&[2, b, *seq, *heads, hd]), layout);
            let (dv, dv_pass) =
                attention_values_job(nv, hd, &words(&[3, b, *seq, *heads, hd]), layout);
            Lowered {
                shapes: vec![x[0].to_vec(), x[1].to_vec()],
                jobs: vec![
                    job(dp, vec![dp_pass], &[C, B], &[Out::Op(0)]),
                    job(dv, vec![dv_pass], &[A, C], &[Out::Op(1)]),
                ],
                ids: None,
            }
        }
        OpKind::AttentionScoresBackward { heads, seq } => {
            // (q, k, ds) -> (dq, dk)
            let (b, hd) = attn(op, x[0], *heads, *seq)?;
            let n = numel(op, x[0])?;
            expect_len(op, x[1], n)?;
            expect_len(op, x[2], b * heads * seq * seq)?;
            let (dq, dq_pass) =
                attention_values_job(n, hd, &words(&[4, b, *seq, *heads, hd]), layout);
            let (dk, dk_pass) =
                attention_values_job(n, hd, &words(&[5, b, *seq, *heads, hd]), layout);
            Lowered {
                shapes: vec![x[0].to_vec(), x[1].to_vec()],
                jobs: vec![
                    job(dq, vec![dq_pass], &[C, B], &[Out::Op(0)]),
                    job(dk, vec![dk_pass], &[C, A], &[Out::Op(1)]),
                ],
                ids: None,
            }
        }
        OpKind::AdamWUpdate {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        } => {
            let n = numel(op, x[0])?;
            for s in &x[1..] {
                if *s != x[0] {
                    return Err(shape_err(op, "param, grad and moments differ in shape"));
                }
            }
            let step = u32::try_from(*step)
                .map_err(|_| shape_err(op, "step counts above 2^32 are not supported"))?;
            let w = [
                lr.to_bits(),
                beta1.to_bits(),
                beta2.to_bits(),
                eps.to_bits(),
                weight_decay.to_bits(),
                step,
            ];
            Lowered {
                shapes: vec![x[0].to_vec(); 3],
                jobs: vec![job(
                    &ADAMW,
                    vec![Pass::new("main", n, &w)],
                    &[A, B, C, In::Op(3)],
                    &[Out::Op(0), Out::Op(1), Out::Op(2)],
                )],
                ids: None,
            }
        }
        // Operators added to the prover later have no kernel until one is written.
        _ => return Ok(None),
    }))
}

/// Applies one operator on the GPU, one job at a time: inputs uploaded, every output
/// read back. The same inputs give the reference's bits on a device of the exact class.
pub async fn eval_op_gpu(
    dev: &GpuDevice,
    kind: &OpKind,
    inputs: &[&Tensor],
) -> Result<Vec<Tensor>, GpuError> {
    let op = kind.name();
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let lowered = match lower(kind, &shapes, dev.layout)? {
        Some(l) if !l.jobs.is_empty() => l,
        // `Reshape` moves no data; operators without a kernel run on the reference.
        _ => return Ok(eval_op(kind, inputs)?),
    };
    if let Some((i, vocab)) = lowered.ids {
        check_ids(op, inputs[i].data(), vocab)?;
    }
    let mut outs: Vec<Option<Vec<f32>>> = vec![None; lowered.shapes.len()];
    for j in &lowered.jobs {
        let indices = j
            .inputs
            .iter()
            .map(|i| match i {
                In::IdIndex { ids, vocab } => id_index(inputs[*ids].data(), *vocab).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data: Vec<&[f32]> = j
            .inputs
            .iter()
            .zip(&indices)
            .map(|(i, index)| match (i, index) {
                (In::Op(i), _) => inputs[*i].data(),
                (_, Some(index)) => index.as_slice(),
                _ => &[][..],
            })
            .collect();
        let sizes = j
            .outputs
            .iter()
            .map(|o| match o {
                Out::Op(i) => numel(op, &lowered.shapes[*i]),
                Out::Scratch(n) => Ok(*n),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let got = dev.run(j.kernel, &j.passes, &data, &sizes).await?;
        for (o, d) in j.outputs.iter().zip(got) {
            if let Out::Op(i) = o {
                outs[*i] = Some(d);
            }
        }
    }
    lowered
        .shapes
        .into_iter()
        .zip(outs)
        .map(|(shape, d)| {
            let d =
                d.ok_or_else(|| GpuError::Readback(format!("{op}: an output was not written")))?;
            Tensor::new(shape, d).map_err(|e| shape_err(op, e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::id_index;

    /// The index lists each id's rows in increasing order after the offsets, so the
    /// kernel adds them in the reference's order; unused ids get empty ranges.
    #[test]
    fn id_index_groups_rows_by_id_in_order() {
        let ids = [2.0, 0.0, 2.0, 3.0, 0.0, 2.0];
        let index = id_index(&ids, 5).unwrap();
        let (offsets, rows) = index.split_at(6);
        assert_eq!(offsets, [0.0, 2.0, 2.0, 5.0, 6.0, 6.0]);
        assert_eq!(rows, [1.0, 4.0, 0.0, 2.0, 5.0, 3.0]);
        assert_eq!(id_index(&[], 3).unwrap(), [0.0; 4]);
    }
}
