//! `lupus-bench tolerance`: the spread between honest devices that the tolerant
//! class's bound (`verify.tolerance`) is calibrated on.
//!
//! The devices we have (the CPU, wasm, lavapipe) give the reference bits exactly, so
//! their spread is zero. SwiftShader, the one honest device here that is tolerant,
//! flushes subnormal intermediates inside a kernel, which an emulation on op outputs
//! cannot reproduce (the prover already flushes every value it stores); its real
//! tasks pass the tolerant check in the browser end-to-end test. A GPU whose compiler
//! fuses or reorders arithmetic is off by an ulp or a few per operation, and that is
//! emulated on the CPU: one step runs the prover's own plan node by node, and every
//! nonzero finite op output moves by up to that many units in the last place, up or
//! down by a fixed pseudo-random draw, before the next op reads it.
//!
//! From the same exact `S_t`, the bench measures what `check_tolerant` measures: the
//! largest relative L2 distance of any tensor of `S_{t+1}` (parameters and both
//! moments) and of the loss, over `--steps` steps of each job's model. It prints each
//! against the job's `tolerance`: a ratio below 1 means an honest device of that kind
//! passes, and the tolerance over the largest spread is the headroom that a nudging
//! worker gets for free.

use std::path::PathBuf;

use anyhow::Result;
use lupus_prover::data::Corpus;
use lupus_prover::graph::{OpRecord, StepOutput, plan, step_output, step_value, train_step};
use lupus_prover::model::{Batch, init_params};
use lupus_prover::ops::eval_op;
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::prf::PrfStream;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{job_sampler, task_batch};
use lupus_prover::tensor::Tensor;
use lupus_prover::verify::{DRIFT_COSINE, cosine, param_difference, relative_distance};

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

/// An emulated device: every op output up to `ulps` units in the last place off.
#[derive(Clone, Copy, Debug)]
struct Device {
    ulps: u32,
}

impl Device {
    fn name(self) -> String {
        format!(
            "{} ulp per op output (fused or reordered arithmetic)",
            self.ulps
        )
    }

    fn apply(self, t: &Tensor, coin: &mut PrfStream) -> Result<Tensor> {
        let n = self.ulps;
        let data: Vec<f32> = t
            .data()
            .iter()
            .map(|&x| {
                if !x.is_finite() || x == 0.0 {
                    return x;
                }
                let r = coin.below(std::num::NonZeroU64::MIN.saturating_add(u64::from(2 * n)));
                let bits = x.to_bits() as i64 + (r as i64 - i64::from(n));
                let y = f32::from_bits(bits.clamp(0, u32::MAX as i64) as u32);
                if y.is_finite() && y.signum() == x.signum() {
                    y
                } else {
                    x
                }
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
    for node in plan.nodes.iter().cloned() {
        let inputs = node
            .inputs
            .iter()
            .map(|r| step_value(state, batch, &ops, *r))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = eval_op(&node.kind, &inputs)?
            .iter()
            .map(|t| device.apply(t, coin))
            .collect::<Result<Vec<_>>>()?;
        ops.push(OpRecord {
            kind: node.kind,
            inputs: node.inputs,
            outputs,
        });
    }
    Ok(step_output(state, batch, ops, &plan)?)
}

/// Steps whose parameter differences are kept for the cosines.
const COSINE_STEPS: usize = 16;

/// The largest cosine between two of `rs` (0 for none, or for zero differences).
fn largest_cosine(rs: &[Vec<f32>]) -> f64 {
    let mut worst = 0f64;
    for (i, a) in rs.iter().enumerate() {
        for b in &rs[i + 1..] {
            worst = worst.max(cosine(a, b));
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
    let devices = [Device { ulps: 1 }, Device { ulps: 4 }];
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
                    residuals[i].push(param_difference(
                        &emulated.state.params,
                        &exact.state.params,
                    ));
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
