//! Optimizers: the inner AdamW that every step runs, and DiLoCo's outer step.
//!
//! DESIGN.md (The loop, Model and data): workers run H inner AdamW steps and send back
//! the pseudo-gradient; the coordinator merges verified deltas (weighted mean of
//! norm-clipped deltas) and applies an outer Nesterov SGD step (lr 0.7, momentum 0.9).
//! All of it is deterministic: fixed summation orders, powers by repeated squaring,
//! square roots and reciprocals from `det.rs`.

use serde::{Deserialize, Serialize};

use crate::det;
use crate::kernels::AdamWParams;
use crate::model::ModelError;
use crate::ops::{self, OpKind};
use crate::tensor::Tensor;

/// Inner optimizer settings (decoupled weight decay, applied to every tensor).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// The learning rate rises linearly over a task's first `warmup_steps` updates
    /// ([`AdamW::lr_at`]); 0 for none.
    #[serde(default, skip_serializing_if = "crate::spec::is_zero")]
    pub warmup_steps: u32,
}

impl Default for AdamW {
    /// lr 1e-3, betas (0.9, 0.95), eps 1e-8, no weight decay, no warm-up.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
        }
    }
}

impl AdamW {
    /// The learning rate of update number `step` (1 for the first update from a fresh
    /// state, so a task's first step): `lr * step / warmup_steps` while `step` is below
    /// `warmup_steps`, then `lr`. Every task starts from zero moments, and Adam's first
    /// updates from zero moments move every parameter by about `lr` whatever its
    /// gradient's noise; the warm-up damps them (docs/DESIGN.md, Model and data).
    /// Two correctly rounded f32 operations on exact integers: the same bits on every
    /// device.
    pub fn lr_at(&self, step: u64) -> f32 {
        if step >= u64::from(self.warmup_steps) {
            self.lr
        } else {
            self.lr * step as f32 / self.warmup_steps as f32
        }
    }

    /// How far `steps` AdamW steps from a fresh state can move one parameter whose
    /// starting value has magnitude at most `start`: `(1 - decay^steps) * start +
    /// sum_t lr_t * u_t`, where `u_t` bounds `|m_hat_t| / sqrt(v_hat_t)` whatever the
    /// gradients are. By Cauchy-Schwarz over `m_t = (1-b1) sum_i b1^(t-i) g_i` and
    /// `v_t = (1-b2) sum_i b2^(t-i) g_i^2`,
    /// `u_t = (1-b1) / sqrt(1-b2) * sqrt(S_t * (1-b2^t)) / (1-b1^t)` with
    /// `S_t = sum_{k<t} (b1^2/b2)^k` (so `u_1 = 1`: Adam's first step is at most `lr`).
    /// `eps` only shrinks the step. `lr_t` is [`AdamW::lr_at`]; the decay uses the full
    /// `lr`, which only loosens the bound during a warm-up. A delta larger than this is no honest run's: the
    /// coordinator refuses it before it is committed (the zoo's huge-norm delta).
    pub fn max_displacement(&self, steps: u32, start: f32) -> f64 {
        let (b1, b2) = (f64::from(self.beta1), f64::from(self.beta2));
        let r = b1 * b1 / b2;
        let (mut s, mut rk, mut b1t, mut b2t, mut sum) = (0.0f64, 1.0f64, 1.0f64, 1.0f64, 0.0);
        for t in 1..=u64::from(steps) {
            s += rk;
            rk *= r;
            b1t *= b1;
            b2t *= b2;
            let u = (1.0 - b1) / (1.0 - b2).sqrt() * (s * (1.0 - b2t)).sqrt() / (1.0 - b1t);
            sum += f64::from(self.lr_at(t)) * u;
        }
        let decay = 1.0 - f64::from(self.lr) * f64::from(self.weight_decay);
        let shrink = 1.0 - decay.abs().powi(steps.min(i32::MAX as u32) as i32);
        shrink.abs() * f64::from(start) + sum
    }

    /// The update operator for step number `step` (1 for the first update), after
    /// checking the settings.
    pub fn update_kind(&self, step: u64) -> Result<OpKind, ModelError> {
        ops::check_adamw(
            "adamw_update",
            &AdamWParams {
                lr: self.lr_at(step),
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
                step,
            },
        )?;
        Ok(OpKind::AdamWUpdate {
            lr: self.lr_at(step),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step,
        })
    }
}

/// Everything a step reads and writes: parameters, AdamW moments, steps taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub params: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub step: u64,
}

impl TrainState {
    /// The state before the first step: zero moments, step 0.
    pub fn fresh(params: Vec<Tensor>) -> TrainState {
        let m: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
        let v = m.clone();
        TrainState {
            params,
            m,
            v,
            step: 0,
        }
    }

    /// Every tensor in the fixed order the commitments use: all parameters, then all
    /// first moments, then all second moments (each in parameter order).
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().chain(&self.m).chain(&self.v)
    }
}

/// DiLoCo's outer optimizer: Nesterov momentum SGD on the pseudo-gradient.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterNesterov {
    pub lr: f32,
    pub momentum: f32,
}

impl Default for OuterNesterov {
    /// DiLoCo's settings: lr 0.7, momentum 0.9.
    fn default() -> Self {
        OuterNesterov {
            lr: 0.7,
            momentum: 0.9,
        }
    }
}

fn check_same_shapes(what: &str, a: &[Tensor], b: &[Tensor]) -> Result<(), ModelError> {
    if a.len() != b.len() {
        return Err(ModelError::Optimizer {
            detail: format!("{what}: {} tensors against {}", b.len(), a.len()),
        });
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.shape() != y.shape() {
            return Err(ModelError::Optimizer {
                detail: format!(
                    "{what}: tensor {i} has shape {:?}, expected {:?}",
                    y.shape(),
                    x.shape()
                ),
            });
        }
    }
    Ok(())
}

/// One outer step. `mean_delta` is the merged `S_H - S_0` (what workers trained minus
/// what they started from), so the pseudo-gradient is `g = -mean_delta = S_0 - S_H`.
/// Nesterov, elementwise: `buf' = momentum*buf + g`, `u = g + momentum*buf'`,
/// `params' = params - lr*u`. An empty `momentum_buf` starts at zero; it is updated
/// in place.
pub fn outer_step(
    params: &[Tensor],
    momentum_buf: &mut Vec<Tensor>,
    mean_delta: &[Tensor],
    opt: &OuterNesterov,
) -> Result<Vec<Tensor>, ModelError> {
    if !(opt.lr.is_finite() && opt.lr >= 0.0 && (0.0..1.0).contains(&opt.momentum)) {
        return Err(ModelError::Optimizer {
            detail: format!("outer settings {opt:?}: need lr >= 0 and momentum in [0, 1)"),
        });
    }
    check_same_shapes("mean delta", params, mean_delta)?;
    if momentum_buf.is_empty() {
        *momentum_buf = params
            .iter()
            .map(|t| Tensor::zeros(t.shape().to_vec()))
            .collect::<Result<_, _>>()?;
    }
    check_same_shapes("momentum buffer", params, momentum_buf)?;
    let mut new_params = Vec::with_capacity(params.len());
    let mut new_buf = Vec::with_capacity(params.len());
    for ((p, buf), d) in params.iter().zip(momentum_buf.iter()).zip(mean_delta) {
        let mut pd = Vec::with_capacity(p.len());
        let mut bd = Vec::with_capacity(p.len());
        for ((&pi, &bi), &di) in p.data().iter().zip(buf.data()).zip(d.data()) {
            let g = -di;
            let b1 = det::ftz(opt.momentum * bi + g);
            let u = g + opt.momentum * b1;
            pd.push(det::ftz(pi - opt.lr * u));
            bd.push(b1);
        }
        new_params.push(Tensor::new(p.shape().to_vec(), pd)?);
        new_buf.push(Tensor::new(p.shape().to_vec(), bd)?);
    }
    *momentum_buf = new_buf;
    Ok(new_params)
}

/// Sum of squares of every element of every tensor, tensors and elements in order.
fn sum_squares(ts: &[Tensor]) -> f32 {
    let mut s = 0.0f32;
    for t in ts {
        for &x in t.data() {
            s += x * x;
        }
    }
    s
}

/// Merges deltas: each delta `i` (a list of tensors) is scaled by
/// `c_i = min(1, clip_norm * rsqrt(|delta_i|^2))` (its global L2 norm clipped to
/// `clip_norm`; a zero delta keeps `c_i = 1`), then the result is
/// `(sum_i w_i * c_i * delta_i) * recip(sum_i w_i)`, deltas summed in the given order.
/// Weights must be finite and positive, `clip_norm` finite and positive.
pub fn merge_deltas(
    deltas: &[(Vec<Tensor>, f32)],
    clip_norm: f32,
) -> Result<Vec<Tensor>, ModelError> {
    let Some((first, _)) = deltas.first() else {
        return Err(ModelError::Optimizer {
            detail: "no deltas to merge".into(),
        });
    };
    if !(clip_norm.is_normal() && clip_norm > 0.0) {
        return Err(ModelError::Optimizer {
            detail: format!("clip norm {clip_norm} must be finite and positive"),
        });
    }
    let mut acc: Vec<Vec<f32>> = first.iter().map(|t| vec![0.0; t.len()]).collect();
    let mut total_w = 0.0f32;
    for (i, (delta, w)) in deltas.iter().enumerate() {
        if !(w.is_normal() && *w > 0.0) {
            return Err(ModelError::Optimizer {
                detail: format!("delta {i} has weight {w}; weights must be finite and positive"),
            });
        }
        check_same_shapes(&format!("delta {i}"), first, delta)?;
        let ss = sum_squares(delta);
        if !ss.is_finite() {
            return Err(ModelError::Optimizer {
                detail: format!("delta {i} has a norm too large to represent"),
            });
        }
        let c = if det::ftz(ss) == 0.0 {
            1.0
        } else {
            let r = clip_norm * det::rsqrt(ss);
            if r < 1.0 { r } else { 1.0 }
        };
        let s = w * c;
        for (a, t) in acc.iter_mut().zip(delta) {
            for (x, &y) in a.iter_mut().zip(t.data()) {
                *x = det::ftz(*x + s * y);
            }
        }
        total_w += w;
    }
    let inv = det::reciprocal(total_w);
    acc.into_iter()
        .zip(first)
        .map(|(a, t)| {
            let data = a.into_iter().map(|x| det::ftz(x * inv)).collect();
            Ok(Tensor::new(t.shape().to_vec(), data)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warm-up: `lr / warmup_steps` at the first update, the full `lr` from update
    /// `warmup_steps` on, and the full `lr` throughout without one.
    #[test]
    fn the_warm_up_ramps_the_learning_rate_linearly() {
        let opt = AdamW {
            lr: 0.004,
            warmup_steps: 16,
            ..AdamW::default()
        };
        assert_eq!(opt.lr_at(1), 0.004 / 16.0);
        assert_eq!(opt.lr_at(8), 0.002);
        assert_eq!(opt.lr_at(16), 0.004);
        assert_eq!(opt.lr_at(1000), 0.004);
        let rates: Vec<f32> = (1..=16).map(|t| opt.lr_at(t)).collect();
        assert!(rates.windows(2).all(|w| w[0] < w[1]), "{rates:?}");
        let flat = AdamW {
            warmup_steps: 0,
            ..opt
        };
        assert!((1..=20).all(|t| flat.lr_at(t) == 0.004));
        // The update operator carries the step's rate, so every device and every
        // replay runs the same one.
        let OpKind::AdamWUpdate { lr, .. } = opt.update_kind(4).unwrap() else {
            panic!("not an AdamW update");
        };
        assert_eq!(lr, 0.001);
        // A warm-up tightens the bound on an honest delta.
        assert!(opt.max_displacement(128, 1.0) < flat.max_displacement(128, 1.0));
    }

    /// No run of AdamW moves a parameter further than `max_displacement` says, with
    /// gradients of any size and sign (the worst case is a constant sign), with and
    /// without a warm-up.
    #[test]
    fn max_displacement_bounds_every_run() {
        for warmup_steps in [0, 1, 7] {
            max_displacement_bounds_every_run_with(warmup_steps);
        }
    }

    fn max_displacement_bounds_every_run_with(warmup_steps: u32) {
        let opt = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps,
        };
        let first = AdamW {
            weight_decay: 0.0,
            warmup_steps: 0,
            ..opt
        }
        .max_displacement(1, 0.0);
        assert!((first - 0.01).abs() < 1e-9, "{first}");
        let steps = 20u32;
        let bound = opt.max_displacement(steps, 1.0);
        for pattern in 0..64u32 {
            let mut state = TrainState::fresh(vec![Tensor::new(vec![1], vec![1.0]).unwrap()]);
            for t in 1..=steps {
                let g = match pattern % 4 {
                    0 => 1.0,
                    1 => 1e3 * (t as f32),
                    2 => 1.0 / (t as f32 * t as f32),
                    _ => {
                        if (t + pattern) % 3 == 0 {
                            -5.0
                        } else {
                            0.01
                        }
                    }
                };
                let h = AdamWParams {
                    lr: opt.lr_at(u64::from(t)),
                    beta1: opt.beta1,
                    beta2: opt.beta2,
                    eps: opt.eps,
                    weight_decay: opt.weight_decay,
                    step: u64::from(t),
                };
                let (p, m, v) = crate::kernels::adamw(
                    state.params[0].data(),
                    &[g],
                    state.m[0].data(),
                    state.v[0].data(),
                    h,
                );
                state.params[0] = Tensor::new(vec![1], p).unwrap();
                state.m[0] = Tensor::new(vec![1], m).unwrap();
                state.v[0] = Tensor::new(vec![1], v).unwrap();
            }
            let moved = f64::from((state.params[0].data()[0] - 1.0).abs());
            assert!(
                moved <= bound,
                "warm-up {warmup_steps}, pattern {pattern}: moved {moved} > bound {bound}"
            );
        }
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(vec![v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn fresh_state_orders_tensors() {
        let s = TrainState::fresh(vec![t(&[1.0, 2.0]), t(&[3.0])]);
        let all: Vec<&Tensor> = s.tensors().collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].data(), &[1.0, 2.0]);
        assert_eq!(all[2].data(), &[0.0, 0.0]);
        assert_eq!(s.step, 0);
    }

    #[test]
    fn outer_step_moves_towards_the_workers() {
        let params = vec![t(&[1.0, 1.0])];
        let delta = vec![t(&[0.5, -0.5])];
        let mut buf = Vec::new();
        let opt = OuterNesterov::default();
        let p1 = outer_step(&params, &mut buf, &delta, &opt).unwrap();
        // g = -0.5 / 0.5, buf = g, u = g + 0.9 g = 1.9 g, p = 1 - 0.7 * 1.9 g.
        let want = [
            1.0 + 0.7 * (0.5 + 0.9 * 0.5f32),
            1.0 - 0.7 * (0.5 + 0.9 * 0.5f32),
        ];
        for (a, b) in p1[0].data().iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(buf[0].data(), &[-0.5, 0.5]);
        assert!(outer_step(&params, &mut buf, &[t(&[1.0])], &opt).is_err());
        let bad = OuterNesterov {
            lr: 0.7,
            momentum: 1.0,
        };
        assert!(outer_step(&params, &mut buf, &delta, &bad).is_err());
    }

    #[test]
    fn merge_clips_and_weights() {
        // |a| = 5 is clipped to 1; b is small and unclipped.
        let a = (vec![t(&[3.0, 4.0])], 1.0);
        let b = (vec![t(&[0.1, 0.0])], 3.0);
        let m = merge_deltas(&[a, b], 1.0).unwrap();
        let want = [(0.6 + 0.3) / 4.0, 0.8 / 4.0];
        for (x, y) in m[0].data().iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        let z = merge_deltas(&[(vec![t(&[0.0, 0.0])], 1.0)], 1.0).unwrap();
        assert_eq!(z[0].data(), &[0.0, 0.0]);
        assert!(merge_deltas(&[], 1.0).is_err());
        assert!(merge_deltas(&[(vec![t(&[1.0])], 0.0)], 1.0).is_err());
        assert!(merge_deltas(&[(vec![t(&[1.0])], 1.0)], f32::NAN).is_err());
        assert!(merge_deltas(&[(vec![t(&[1.0])], 1.0), (vec![t(&[1.0, 2.0])], 1.0)], 1.0).is_err());
    }
}
