//! `lupus-bench tolerance`: the spread between honest devices that the tolerant
//! class's bound (`verify.tolerance`) is calibrated on.
//!
//! The devices we have (the CPU, wasm, lavapipe) give the reference bits exactly, so
//! their spread is zero. SwiftShader, the one honest device here that is tolerant,
//! flushes subnormal intermediates to zero; a GPU whose compiler fuses or reorders
//! arithmetic is off by an ulp or a few per operation. Each is emulated on the CPU:
//! one step runs the prover's own plan node by node, and every op output is changed
//! as that device would change it before the next op reads it:
//!
//! - `flush subnormals`: every subnormal output becomes a zero of its sign;
//! - `1 ulp` / `4 ulp`: every nonzero finite output moves by up to that many units
//!   in the last place, up or down by a fixed pseudo-random draw.
//!
//! From the same exact `S_t`, the bench measures what `check_tolerant` measures: the
//! largest relative L2 distance of any tensor of `S_{t+1}` (parameters and both
//! moments) and of the loss, over `--steps` steps of each job's model. It prints each
//! against the job's `tolerance`: a ratio below 1 means an honest device of that kind
//! passes, and the tolerance over the largest spread is the headroom that a nudging
//! worker gets for free.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use lupus_prover::data::Corpus;
use lupus_prover::graph::{OpRecord, StepOutput, ValueRef, plan, train_step};
use lupus_prover::model::{Batch, init_params};
use lupus_prover::ops::eval_op;
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::prf::PrfStream;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{job_sampler, task_batch};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::{DRIFT_COSINE, relative_distance};

use crate::report::Report;

#[derive(clap::Args, Debug)]
pub struct ToleranceArgs {
    /// Steps measured per job and device.
    #[arg(long, default_value_t = 8)]
    pub steps: u32,
    /// Job specs to measure (default: the tiny test job and the Shakespeare job).
    #[arg(long)]
    pub job: Vec<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// An emulated device: how it changes an op output.
#[derive(Clone, Copy, Debug)]
enum Device {
    FlushSubnormals,
    Ulps(u32),
}

impl Device {
    fn name(self) -> String {
        match self {
            Device::FlushSubnormals => "flush subnormals (SwiftShader)".into(),
            Device::Ulps(n) => format!("{n} ulp per op output (fused or reordered arithmetic)"),
        }
    }

    fn apply(self, t: &Tensor, coin: &mut PrfStream) -> Result<Tensor> {
        let data: Vec<f32> = t
            .data()
            .iter()
            .map(|&x| match self {
                Device::FlushSubnormals if x != 0.0 && x.abs() < f32::MIN_POSITIVE => {
                    0.0f32.copysign(x)
                }
                Device::FlushSubnormals => x,
                Device::Ulps(n) if x.is_finite() && x != 0.0 => {
                    let r = coin.below(std::num::NonZeroU64::MIN.saturating_add(u64::from(2 * n)));
                    let k = r as i64 - i64::from(n);
                    let bits = x.to_bits() as i64 + k;
                    let y = f32::from_bits(bits.clamp(0, u32::MAX as i64) as u32);
                    if y.is_finite() && y.signum() == x.signum() {
                        y
                    } else {
                        x
                    }
                }
                Device::Ulps(_) => x,
            })
            .collect();
        Ok(Tensor::new(t.shape().to_vec(), data)?)
    }
}

/// One step of the prover's plan with every op output changed by `device`.
fn emulated_step(
    job: &JobSpec,
    opt: &AdamW,
    state: &TrainState,
    batch: &Batch,
    device: Device,
    coin: &mut PrfStream,
) -> Result<StepOutput> {
    let step = state.step + 1;
    let plan = plan(&job.model, batch.size(), Some((opt, step)))?;
    let mut ops: Vec<OpRecord> = Vec::with_capacity(plan.nodes.len());
    for node in plan.nodes {
        let outputs = {
            let resolve = |r: ValueRef| -> Result<&Tensor> {
                match r {
                    ValueRef::Param(i) => state.params.get(i as usize),
                    ValueRef::Moment1(i) => state.m.get(i as usize),
                    ValueRef::Moment2(i) => state.v.get(i as usize),
                    ValueRef::Input => Some(&batch.inputs),
                    ValueRef::Target => Some(&batch.targets),
                    ValueRef::Op { op, output } => ops
                        .get(op as usize)
                        .and_then(|o| o.outputs.get(output as usize)),
                }
                .ok_or_else(|| anyhow!("{r:?} names no value"))
            };
            let inputs = node
                .inputs
                .iter()
                .map(|r| resolve(*r))
                .collect::<Result<Vec<_>>>()?;
            eval_op(&node.kind, &inputs)?
                .iter()
                .map(|t| device.apply(t, coin))
                .collect::<Result<Vec<_>>>()?
        };
        ops.push(OpRecord {
            kind: node.kind,
            inputs: node.inputs,
            outputs,
        });
    }
    let loss = match plan.loss {
        ValueRef::Op { op, output } => ops
            .get(op as usize)
            .and_then(|o| o.outputs.get(output as usize))
            .and_then(|t| t.data().first().copied()),
        _ => None,
    }
    .ok_or_else(|| anyhow!("no loss"))?;
    let n = state.params.len();
    let first = ops
        .len()
        .checked_sub(n)
        .ok_or_else(|| anyhow!("short plan"))?;
    let mut next = TrainState {
        params: Vec::with_capacity(n),
        m: Vec::with_capacity(n),
        v: Vec::with_capacity(n),
        step,
    };
    for rec in &ops[first..] {
        let [p, m, v] = rec.outputs.as_slice() else {
            return Err(anyhow!("an update node without three outputs"));
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

/// Steps whose parameter differences are kept for the cosines.
const COSINE_STEPS: usize = 16;

/// The parameters of `a` minus those of `b`, concatenated.
fn param_difference(a: &StepOutput, b: &StepOutput) -> Vec<f32> {
    a.state
        .params
        .iter()
        .zip(&b.state.params)
        .flat_map(|(x, y)| x.data().iter().zip(y.data()).map(|(p, q)| p - q))
        .collect()
}

/// The largest cosine between two of `rs` (0 for none, or for zero differences).
fn largest_cosine(rs: &[Vec<f32>]) -> f64 {
    let norm = |r: &[f32]| r.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let mut worst = 0f64;
    for (i, a) in rs.iter().enumerate() {
        for b in &rs[i + 1..] {
            let (na, nb) = (norm(a), norm(b));
            if na == 0.0 || nb == 0.0 {
                continue;
            }
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            worst = worst.max(dot / (na * nb));
        }
    }
    worst
}

/// The largest relative L2 distance of any state tensor, and of the loss.
fn spread(a: &StepOutput, b: &StepOutput) -> (f32, f32) {
    let (sa, sb) = (&a.state, &b.state);
    let worst = sa
        .params
        .iter()
        .zip(&sb.params)
        .chain(sa.m.iter().zip(&sb.m))
        .chain(sa.v.iter().zip(&sb.v))
        .map(|(x, y)| relative_distance(x, y))
        .fold(0f32, f32::max);
    let loss = (a.loss - b.loss).abs() / b.loss.abs().max(1e-30);
    (worst, loss)
}

pub fn run(args: &ToleranceArgs) -> Result<Report> {
    let jobs: Vec<(String, String)> = if args.job.is_empty() {
        vec![
            (
                "tiny-test".into(),
                include_str!("../../../jobs/tiny-test.toml").to_owned(),
            ),
            (
                "shakespeare-mlp".into(),
                include_str!("../../../jobs/shakespeare-mlp.toml").to_owned(),
            ),
        ]
    } else {
        args.job
            .iter()
            .map(|p| Ok((p.display().to_string(), std::fs::read_to_string(p)?)))
            .collect::<Result<_>>()?
    };
    let devices = [Device::FlushSubnormals, Device::Ulps(1), Device::Ulps(4)];
    let mut out = Report::new("tolerance");
    println!(
        "tolerant class: the largest relative L2 distance of any tensor of S_(t+1), and of the loss, from the exact replay, over {} steps (emulated on the CPU)",
        args.steps
    );
    for (name, text) in &jobs {
        let job = JobSpec::parse(text)?;
        // The bytes do not matter to rounding; a generated corpus needs no download.
        let corpus = Corpus::generated(7, 200_000);
        let sampler = job_sampler(&job, &corpus)?;
        let opt = job.inner.adamw();
        let tol = job.verify.tolerance;
        let seed = [3u8; 32];
        let bar = crate::report::bar(
            u64::from(args.steps) * devices.len() as u64,
            &format!("{name}: emulated steps"),
        );
        let mut worst = vec![(0f32, 0f32); devices.len()];
        // Parameter differences of the first steps, for the cosines between steps.
        let mut residuals: Vec<Vec<Vec<f32>>> = vec![Vec::new(); devices.len()];
        let mut state = TrainState::fresh(init_params(&job.model, [1; 32])?);
        for t in 0..args.steps {
            let batch = task_batch(&job, &sampler, &seed, t)?;
            let exact = train_step(&job.model, &opt, &state, &batch)?;
            for (i, d) in devices.iter().enumerate() {
                let mut coin = PrfStream::new(&seed, "lupus tolerance bench", &t.to_be_bytes());
                let emulated = emulated_step(&job, &opt, &state, &batch, *d, &mut coin)?;
                let (s, l) = spread(&emulated, &exact);
                worst[i] = (worst[i].0.max(s), worst[i].1.max(l));
                if residuals[i].len() < COSINE_STEPS {
                    residuals[i].push(param_difference(&emulated, &exact));
                }
                bar.inc(1);
            }
            state = exact.state;
        }
        bar.finish_and_clear();
        println!("{name} (tolerance {tol}):");
        for ((d, (s, l)), r) in devices.iter().zip(&worst).zip(&residuals) {
            let cosine = largest_cosine(r);
            println!(
                "  {:<56} state {:>9.2e} ({:>7.4}x the tolerance)   loss {:>9.2e}   largest cosine between steps {:>6.3} (limit {})",
                d.name(),
                s,
                f64::from(*s) / f64::from(tol),
                l,
                cosine,
                DRIFT_COSINE
            );
            out.add(
                format!(
                    "{name}: {}: largest cosine between two steps' differences",
                    d.name()
                ),
                cosine,
                "cosine",
            );
            out.add(
                format!("{name}: {}: state spread over the tolerance", d.name()),
                f64::from(*s) / f64::from(tol),
                "ratio",
            );
            out.add(
                format!("{name}: {}: largest state spread", d.name()),
                f64::from(*s),
                "relative L2",
            );
        }
    }
    out.write_json(args.json.as_deref())?;
    Ok(out)
}
