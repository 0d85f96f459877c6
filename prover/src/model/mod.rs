//! The models: their specification, parameters, batches and operator graphs.
//!
//! DESIGN.md (Model and data): model 1 is a character-level MLP language model
//! (embedding, context window, ReLU hidden layers, softmax cross-entropy); model 2 is a
//! small pre-LN GPT with causal attention built from the same deterministic kernels.
//! Both are named in the job spec by a [`ModelSpec`]. The graphs themselves are in
//! [`mlp`] and [`gpt`]; `graph.rs` runs them.

pub mod gpt;
pub mod mlp;

use serde::{Deserialize, Serialize};

use crate::det;
use crate::tensor::{MAX_ELEMENTS, Tensor, TensorError};

/// Largest vocabulary a spec may name (token ids must also fit `f32` exactly).
pub const MAX_VOCAB: usize = 1 << 20;
/// Largest context window.
pub const MAX_CONTEXT: usize = 4096;
/// Largest embedding, model or hidden width.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most hidden layers (MLP) or blocks (GPT).
pub const MAX_LAYERS: usize = 64;
/// Most parameters in a whole model.
pub const MAX_PARAMS: u64 = 1 << 30;

/// Everything that can go wrong while building, running or updating a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model specification is unusable; the reason says which field to fix.
    #[error("invalid model spec: {reason}")]
    InvalidSpec { reason: String },
    /// A tensor could not be built (size, length or non-finite value).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// An operator was given the wrong number of inputs.
    #[error("operator {op} takes {expected} inputs, got {got}")]
    Arity {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    /// An operator's inputs have shapes it cannot combine.
    #[error("operator {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An operator's static attributes are out of range.
    #[error("operator {op} has invalid attributes: {detail}")]
    Attribute { op: &'static str, detail: String },
    /// A token id (stored as `f32`) is not an integer below the vocabulary size.
    #[error(
        "operator {op}: input {input} element {index} is {value}, not a token id below {vocab}"
    )]
    BadToken {
        op: &'static str,
        input: usize,
        index: usize,
        value: f32,
        vocab: usize,
    },
    /// An operator produced NaN or infinity: training diverged (lower the learning rate).
    #[error(
        "operator {op} produced a non-finite value (output {output}, element {index}); training diverged"
    )]
    NonFiniteOutput {
        op: &'static str,
        output: usize,
        index: usize,
    },
    /// A batch does not fit the model (window length, token range, size).
    #[error("invalid batch: {detail}")]
    Batch { detail: String },
    /// A training state or parameter list does not fit the model.
    #[error("state does not match the model: {detail}")]
    State { detail: String },
    /// An operator graph refers to a value that does not exist.
    #[error("invalid operator graph: {detail}")]
    Graph { detail: String },
    /// Optimizer settings or inputs are unusable.
    #[error("optimizer: {detail}")]
    Optimizer { detail: String },
    /// A quantised delta is malformed.
    #[error("quantised delta: {detail}")]
    Quant { detail: String },
}

/// Which model to train and its sizes (a tagged table in the job spec's TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// Character MLP: `context` embeddings of width `embed` concatenated, ReLU hidden
    /// layers of the given widths, then a projection to `vocab` logits.
    Mlp {
        vocab: usize,
        context: usize,
        embed: usize,
        hidden: Vec<usize>,
    },
    /// Pre-LN GPT: token and position embeddings of width `d_model`, `layers` blocks of
    /// causal self-attention (`heads` heads) and a ReLU MLP of width `d_ff`, a final
    /// layer norm and a projection to `vocab` logits.
    Gpt {
        vocab: usize,
        context: usize,
        d_model: usize,
        heads: usize,
        layers: usize,
        d_ff: usize,
    },
}

/// How a parameter tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    Zeros,
    Ones,
}

fn in_range(name: &str, v: usize, lo: usize, hi: usize) -> Result<(), ModelError> {
    if v < lo || v > hi {
        Err(ModelError::InvalidSpec {
            reason: format!("{name} is {v}, must be between {lo} and {hi}"),
        })
    } else {
        Ok(())
    }
}

impl ModelSpec {
    /// Checks every size: nothing zero, nothing absurd, heads dividing `d_model`, every
    /// parameter tensor and the whole model within the size limits.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ModelSpec::Mlp {
                vocab,
                context,
                embed,
                hidden,
            } => {
                in_range("vocab", *vocab, 2, MAX_VOCAB)?;
                in_range("context", *context, 1, MAX_CONTEXT)?;
                in_range("embed", *embed, 1, MAX_WIDTH)?;
                in_range("number of hidden layers", hidden.len(), 0, MAX_LAYERS)?;
                for h in hidden {
                    in_range("hidden width", *h, 1, MAX_WIDTH)?;
                }
            }
            ModelSpec::Gpt {
                vocab,
                context,
                d_model,
                heads,
                layers,
                d_ff,
            } => {
                in_range("vocab", *vocab, 2, MAX_VOCAB)?;
                in_range("context", *context, 1, MAX_CONTEXT)?;
                in_range("d_model", *d_model, 1, MAX_WIDTH)?;
                in_range("heads", *heads, 1, *d_model)?;
                in_range("layers", *layers, 1, MAX_LAYERS)?;
                in_range("d_ff", *d_ff, 1, MAX_WIDTH)?;
                if d_model % heads != 0 {
                    return Err(ModelError::InvalidSpec {
                        reason: format!("heads ({heads}) must divide d_model ({d_model})"),
                    });
                }
            }
        }
        let mut total: u64 = 0;
        for (name, shape) in self.param_shapes() {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            match n {
                Some(n) if n <= MAX_ELEMENTS => total += n as u64,
                _ => {
                    return Err(ModelError::InvalidSpec {
                        reason: format!("parameter {name} {shape:?} is too large"),
                    });
                }
            }
        }
        if total > MAX_PARAMS {
            return Err(ModelError::InvalidSpec {
                reason: format!("{total} parameters exceed the limit of {MAX_PARAMS}"),
            });
        }
        Ok(())
    }

    /// Tokens per training example: `context + 1` for both models (the MLP predicts the
    /// last token from the first `context`; the GPT predicts each next token).
    pub fn window_len(&self) -> usize {
        self.context() + 1
    }

    /// The context window.
    pub fn context(&self) -> usize {
        match self {
            ModelSpec::Mlp { context, .. } | ModelSpec::Gpt { context, .. } => *context,
        }
    }

    /// The most elements any forward operator's output holds per window, to size
    /// evaluation passes ([`crate::graph::validation_loss`]): the MLP's widest layer
    /// (the concatenated embeddings, a hidden layer or the logits); the GPT's widest
    /// per-position activation (`d_model`, `d_ff` or the logits) or its attention scores
    /// (`heads x context` a position), times the context. Saturates.
    pub fn widest_activation_per_window(&self) -> usize {
        match self {
            ModelSpec::Mlp {
                vocab,
                context,
                embed,
                hidden,
            } => hidden
                .iter()
                .copied()
                .chain([context.saturating_mul(*embed), *vocab])
                .max()
                .unwrap_or(1),
            ModelSpec::Gpt {
                vocab,
                context,
                d_model,
                heads,
                d_ff,
                ..
            } => context.saturating_mul(
                (*d_model)
                    .max(*d_ff)
                    .max(*vocab)
                    .max(heads.saturating_mul(*context)),
            ),
        }
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        match self {
            ModelSpec::Mlp { vocab, .. } | ModelSpec::Gpt { vocab, .. } => *vocab,
        }
    }

    /// Training FLOPs per sample (one window), forward plus backward, counting only
    /// matrix products: each multiply-add is 2 FLOPs forward and 4 backward (gradients
    /// of both operands), so `6 x MACs`. Embedding gathers, biases, norms, softmax and
    /// the optimizer are not counted.
    ///
    /// - MLP: `MACs = C*E*h1 + h1*h2 + ... + hL*V` (`C*E*V` without hidden layers).
    /// - GPT with `T = context`: `MACs = T*(layers*(4*d^2 + 2*d*d_ff) + d*V)
    ///   + layers*d*T*(T+1)` (the causal `q k^T` and `p v` products each cover
    ///   `T(T+1)/2` position pairs of `d` columns).
    ///
    /// Saturates at `u64::MAX` (a validated spec never comes close).
    pub fn flops_per_sample(&self) -> u64 {
        // Saturating arithmetic: an unvalidated spec with absurd sizes must not panic.
        let mul = |a: u128, b: u128| a.saturating_mul(b);
        let macs: u128 = match self {
            ModelSpec::Mlp {
                vocab,
                context,
                embed,
                hidden,
            } => {
                let mut widths = vec![mul(*context as u128, *embed as u128)];
                widths.extend(hidden.iter().map(|&h| h as u128));
                widths.push(*vocab as u128);
                widths
                    .windows(2)
                    .fold(0u128, |acc, w| acc.saturating_add(mul(w[0], w[1])))
            }
            ModelSpec::Gpt {
                vocab,
                context,
                d_model,
                layers,
                d_ff,
                ..
            } => {
                let (t, d, l) = (*context as u128, *d_model as u128, *layers as u128);
                let (f, v) = (*d_ff as u128, *vocab as u128);
                let dense = mul(4, mul(d, d)).saturating_add(mul(2, mul(d, f)));
                let per_position = mul(l, dense).saturating_add(mul(d, v));
                let attention = mul(mul(l, d), mul(t, t.saturating_add(1)));
                mul(t, per_position).saturating_add(attention)
            }
        };
        u64::try_from(macs.saturating_mul(6)).unwrap_or(u64::MAX)
    }

    /// Parameter names and shapes in the fixed order that `TrainState` and the graphs
    /// use.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.param_specs()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect()
    }

    pub(crate) fn param_specs(&self) -> Vec<(String, Vec<usize>, Init)> {
        match self {
            ModelSpec::Mlp { .. } => mlp::param_specs(self),
            ModelSpec::Gpt { .. } => gpt::param_specs(self),
        }
    }

    /// Checks that `params` has this model's count and shapes.
    pub fn check_params(&self, params: &[Tensor], what: &str) -> Result<(), ModelError> {
        let shapes = self.param_shapes();
        if params.len() != shapes.len() {
            return Err(ModelError::State {
                detail: format!(
                    "{what}: {} tensors given, the model has {}",
                    params.len(),
                    shapes.len()
                ),
            });
        }
        for (t, (name, shape)) in params.iter().zip(&shapes) {
            if t.shape() != shape.as_slice() {
                return Err(ModelError::State {
                    detail: format!(
                        "{what}: {name} has shape {:?}, expected {shape:?}",
                        t.shape()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Deterministic initial parameters. Tensor `i` is filled from the blake3 XOF keyed by
/// `derive_key("lupus init v1")` over `seed ‖ i as u32 LE`: each element takes the next
/// 4 bytes as a u32 `w`, `u = (w >> 8) * 2^-24` in [0, 1) (exact), and is
/// `(2u - 1) * bound`. Weight matrices use `bound = rsqrt(fan_in)`, embeddings a fixed
/// bound (see the model files), biases and layer-norm shifts zeros, layer-norm gains ones.
pub fn init_params(spec: &ModelSpec, seed: [u8; 32]) -> Result<Vec<Tensor>, ModelError> {
    spec.validate()?;
    spec.param_specs()
        .into_iter()
        .enumerate()
        .map(|(i, (_, shape, init))| {
            let n: usize = shape.iter().product();
            let data = match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Uniform(bound) => {
                    let mut h = blake3::Hasher::new_derive_key("lupus init v1");
                    h.update(&seed);
                    h.update(&(i as u32).to_le_bytes());
                    let mut xof = h.finalize_xof();
                    let mut buf = [0u8; 4096];
                    let mut out = Vec::with_capacity(n);
                    while out.len() < n {
                        xof.fill(&mut buf);
                        for c in buf.chunks_exact(4) {
                            if out.len() == n {
                                break;
                            }
                            let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                            let u = (w >> 8) as f32 * det::TWO_POW_MINUS_24;
                            out.push((u * 2.0 - 1.0) * bound);
                        }
                    }
                    out
                }
            };
            Ok(Tensor::new(shape, data)?)
        })
        .collect()
}

/// `rsqrt(fan_in)`, the uniform bound of a weight matrix with `fan_in` inputs.
pub(crate) fn fan_in_bound(fan_in: usize) -> f32 {
    det::rsqrt(fan_in as f32)
}

/// One batch: token ids as exact `f32`. MLP: inputs `[B, context]`, targets `[B]`.
/// GPT: inputs `[B, context]`, targets `[B, context]` (each next token).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

impl Batch {
    /// Number of windows in the batch.
    pub fn size(&self) -> usize {
        self.inputs.shape().first().copied().unwrap_or(0)
    }
}

/// Builds a batch from windows of `window_len()` token ids each (all below `vocab`).
pub fn make_batch(spec: &ModelSpec, windows: &[Vec<u32>]) -> Result<Batch, ModelError> {
    spec.validate()?;
    let c = spec.context();
    let w = spec.window_len();
    if windows.is_empty() {
        return Err(ModelError::Batch {
            detail: "a batch needs at least one window".into(),
        });
    }
    let mut inputs = Vec::with_capacity(windows.len() * c);
    let mut targets = Vec::new();
    for (i, win) in windows.iter().enumerate() {
        if win.len() != w {
            return Err(ModelError::Batch {
                detail: format!("window {i} has {} tokens, the model needs {w}", win.len()),
            });
        }
        if let Some(&bad) = win.iter().find(|&&t| t as usize >= spec.vocab()) {
            return Err(ModelError::Batch {
                detail: format!(
                    "window {i} holds token {bad}, not below the vocabulary size {}",
                    spec.vocab()
                ),
            });
        }
        inputs.extend_from_slice(&win[..c]);
        match spec {
            ModelSpec::Mlp { .. } => targets.push(win[c]),
            ModelSpec::Gpt { .. } => targets.extend_from_slice(&win[1..]),
        }
    }
    let b = windows.len();
    let target_shape = match spec {
        ModelSpec::Mlp { .. } => vec![b],
        ModelSpec::Gpt { .. } => vec![b, c],
    };
    Ok(Batch {
        inputs: Tensor::from_ids(vec![b, c], &inputs)?,
        targets: Tensor::from_ids(target_shape, &targets)?,
    })
}

/// Checks that a batch fits the model before a graph runs on it; returns its size.
pub(crate) fn check_batch(spec: &ModelSpec, batch: &Batch) -> Result<usize, ModelError> {
    let c = spec.context();
    let b = batch.size();
    let target_shape = match spec {
        ModelSpec::Mlp { .. } => vec![b],
        ModelSpec::Gpt { .. } => vec![b, c],
    };
    if b == 0 || batch.inputs.shape() != [b, c] || batch.targets.shape() != target_shape {
        return Err(ModelError::Batch {
            detail: format!(
                "inputs {:?} and targets {:?} do not fit context {c}",
                batch.inputs.shape(),
                batch.targets.shape()
            ),
        });
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ModelSpec {
        ModelSpec::Mlp {
            vocab: 27,
            context: 3,
            embed: 10,
            hidden: vec![64],
        }
    }

    fn gpt() -> ModelSpec {
        ModelSpec::Gpt {
            vocab: 65,
            context: 32,
            d_model: 64,
            heads: 4,
            layers: 2,
            d_ff: 256,
        }
    }

    #[test]
    fn specs_parse_from_toml_and_validate() {
        let s: ModelSpec =
            toml::from_str("kind = \"mlp\"\nvocab = 27\ncontext = 3\nembed = 10\nhidden = [64]\n")
                .unwrap();
        assert_eq!(s, mlp());
        let g: ModelSpec = toml::from_str(
            "kind = \"gpt\"\nvocab = 65\ncontext = 32\nd_model = 64\nheads = 4\nlayers = 2\nd_ff = 256\n",
        )
        .unwrap();
        assert_eq!(g, gpt());
        assert!(mlp().validate().is_ok());
        assert!(gpt().validate().is_ok());
        assert!(toml::from_str::<ModelSpec>("kind = \"rnn\"\nvocab = 3\n").is_err());
    }

    #[test]
    fn invalid_specs_are_refused() {
        let bad = [
            ModelSpec::Mlp {
                vocab: 0,
                context: 3,
                embed: 10,
                hidden: vec![],
            },
            ModelSpec::Mlp {
                vocab: 27,
                context: 0,
                embed: 10,
                hidden: vec![],
            },
            ModelSpec::Mlp {
                vocab: 27,
                context: 3,
                embed: 10,
                hidden: vec![0],
            },
            ModelSpec::Mlp {
                vocab: MAX_VOCAB,
                context: 3,
                embed: 10,
                hidden: vec![MAX_WIDTH, MAX_WIDTH],
            },
            ModelSpec::Gpt {
                vocab: 65,
                context: 32,
                d_model: 64,
                heads: 5,
                layers: 2,
                d_ff: 256,
            },
            ModelSpec::Gpt {
                vocab: 65,
                context: 32,
                d_model: 64,
                heads: 4,
                layers: 0,
                d_ff: 256,
            },
        ];
        for s in bad {
            assert!(
                matches!(s.validate(), Err(ModelError::InvalidSpec { .. })),
                "{s:?}"
            );
        }
    }

    #[test]
    fn flops_follow_the_documented_formula() {
        assert_eq!(mlp().flops_per_sample(), 6 * (30 * 64 + 64 * 27));
        let (t, d, l, f, v) = (32u64, 64u64, 2u64, 256u64, 65u64);
        let macs = t * (l * (4 * d * d + 2 * d * f) + d * v) + l * d * t * (t + 1);
        assert_eq!(gpt().flops_per_sample(), 6 * macs);
        assert_eq!(mlp().window_len(), 4);
        let absurd = ModelSpec::Gpt {
            vocab: usize::MAX,
            context: usize::MAX,
            d_model: usize::MAX,
            heads: 1,
            layers: usize::MAX,
            d_ff: usize::MAX,
        };
        assert_eq!(absurd.flops_per_sample(), u64::MAX);
        assert_eq!(gpt().window_len(), 33);
    }

    #[test]
    fn init_is_deterministic_and_seed_dependent() {
        let a = init_params(&gpt(), [1; 32]).unwrap();
        let b = init_params(&gpt(), [1; 32]).unwrap();
        let c = init_params(&gpt(), [2; 32]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        gpt().check_params(&a, "init").unwrap();
        // Weight entries stay inside their bound.
        let w = &a[2 + 2];
        let bound = fan_in_bound(64);
        assert!(w.data().iter().all(|x| x.abs() <= bound));
        assert!(w.data().iter().any(|x| x.abs() > bound * 0.5));
    }

    #[test]
    fn batches_split_windows() {
        let b = make_batch(&mlp(), &[vec![1, 2, 3, 4], vec![5, 6, 7, 8]]).unwrap();
        assert_eq!(b.inputs.shape(), &[2, 3]);
        assert_eq!(b.targets.data(), &[4.0, 8.0]);
        let g = ModelSpec::Gpt {
            vocab: 10,
            context: 3,
            d_model: 4,
            heads: 1,
            layers: 1,
            d_ff: 4,
        };
        let b = make_batch(&g, &[vec![1, 2, 3, 4]]).unwrap();
        assert_eq!(b.inputs.data(), &[1.0, 2.0, 3.0]);
        assert_eq!(b.targets.data(), &[2.0, 3.0, 4.0]);
        assert!(matches!(
            make_batch(&mlp(), &[vec![1, 2, 3]]),
            Err(ModelError::Batch { .. })
        ));
        assert!(matches!(
            make_batch(&mlp(), &[vec![1, 2, 3, 27]]),
            Err(ModelError::Batch { .. })
        ));
        assert!(matches!(
            make_batch(&mlp(), &[]),
            Err(ModelError::Batch { .. })
        ));
    }
}
