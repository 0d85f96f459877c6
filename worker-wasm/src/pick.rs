//! Which device trains: measured on the job at start, not assumed from the adapter.
//!
//! A software WebGPU adapter (SwiftShader, lavapipe) is usually far slower than the CPU
//! reference in wasm, and a real GPU usually faster, but a rule on the adapter's type
//! gets the exceptions wrong (a weak integrated GPU on a small model, a fast CPU). So
//! the worker times a few committed steps of the job it is about to train on each
//! device it has ([`time_steps`]) and trains on the faster ([`faster`]); the page
//! shows both figures.
//!
//! The clock is a parameter (`performance.now()` in the browser, `Instant` natively,
//! a fake in tests), so this module does no I/O of its own.

use lupus_prover::data::Corpus;
use lupus_prover::model::init_params;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::TaskBuilder;

use crate::worker::{Backend, Trainer, WorkerError};

/// What timing one device on the job gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// The first step: it compiles kernels and fills caches, so it is not compared.
    pub warmup_ms: f64,
    /// Median of the timed steps after the warm-up; `None` when the device gave up
    /// (its warm-up alone exceeded the budget) before timing any.
    pub median_ms: Option<f64>,
    /// The path that was timed ([`Trainer::path`]).
    pub path: String,
}

/// The device [`faster`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Cpu,
    Gpu,
}

/// Times up to `steps` committed steps of `job` on `backend`, after one warm-up step,
/// from a fresh model on a generated corpus (a step's cost does not depend on the
/// text). Stops early once the warm-up plus the timed steps passed `give_up_ms`: a
/// device that slow has lost already, and the volunteer should not wait for it.
pub async fn time_steps(
    job: &JobSpec,
    backend: &Backend,
    steps: u32,
    give_up_ms: f64,
    now: &dyn Fn() -> f64,
) -> Result<Timing, WorkerError> {
    let local = |e: &dyn std::fmt::Display| WorkerError::Local(e.to_string());
    let corpus = Corpus::generated(1, 64 * 1024);
    let base = init_params(&job.model, [1; 32]).map_err(|e| local(&e))?;
    let mut b = TaskBuilder::new(job, &corpus, &base, [2; 32])
        .map_err(|e| local(&e))?
        .with_kat(backend.kat());
    // A task has H steps; never ask the builder for more.
    let steps = steps.min(job.inner.steps.saturating_sub(1));
    let start = now();
    // The path a task would train on (on a GPU the whole step where it compiles).
    let mut trainer = Trainer::new(backend, &b).await?;
    trainer.step(&mut b).await?;
    let warmup_ms = now() - start;
    let mut times = Vec::with_capacity(steps as usize);
    while (times.len() as u32) < steps && now() - start <= give_up_ms {
        let t0 = now();
        trainer.step(&mut b).await?;
        times.push(now() - t0);
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        warmup_ms,
        median_ms: times.get(times.len() / 2).copied(),
        path: trainer.path(),
    })
}

/// The faster of the two devices: the GPU only when it timed steps and its median is
/// below the CPU's. A tie goes to the CPU, the reference, which every verifier runs.
pub fn faster(cpu: &Timing, gpu: &Timing) -> Pick {
    match (cpu.median_ms, gpu.median_ms) {
        (Some(c), Some(g)) if g < c => Pick::Gpu,
        (None, Some(_)) => Pick::Gpu,
        _ => Pick::Cpu,
    }
}

/// The budget for timing the GPU once the CPU has been timed: long enough for a
/// warm-up that compiles kernels and two steps at up to four times the CPU's speed,
/// so a GPU that could win is never cut short, and at least two seconds.
pub fn gpu_budget_ms(cpu: &Timing) -> f64 {
    let c = cpu.median_ms.unwrap_or(cpu.warmup_ms);
    (cpu.warmup_ms + 12.0 * c).max(2_000.0)
}

/// One line for the page: the choice and both figures.
pub fn describe(pick: Pick, cpu: &Timing, gpu: &Timing, adapter: &str) -> String {
    let ms = |t: &Timing| match t.median_ms {
        Some(m) => format!("{m:.0} ms/step"),
        None => format!("gave up after a {:.0} ms first step", t.warmup_ms),
    };
    match pick {
        Pick::Gpu => format!(
            "WebGPU: {adapter}, {}; measured on this job: {} against {} for WebAssembly",
            gpu.path,
            ms(gpu),
            ms(cpu)
        ),
        Pick::Cpu => format!(
            "CPU (WebAssembly); measured on this job: {} against {} for WebGPU ({adapter}, {})",
            ms(cpu),
            ms(gpu),
            gpu.path
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn t(warmup_ms: f64, median_ms: Option<f64>) -> Timing {
        Timing {
            warmup_ms,
            median_ms,
            path: "the whole GPU step".into(),
        }
    }

    #[test]
    fn the_faster_median_wins_and_a_tie_or_a_give_up_goes_to_the_cpu() {
        assert_eq!(
            faster(&t(50.0, Some(70.0)), &t(900.0, Some(30.0))),
            Pick::Gpu
        );
        assert_eq!(
            faster(&t(50.0, Some(70.0)), &t(10.0, Some(700.0))),
            Pick::Cpu
        );
        assert_eq!(
            faster(&t(50.0, Some(70.0)), &t(10.0, Some(70.0))),
            Pick::Cpu
        );
        assert_eq!(faster(&t(50.0, Some(70.0)), &t(9_000.0, None)), Pick::Cpu);
        // The warm-up is not compared: a slow first step (kernel compilation) does not
        // lose a GPU its place.
        assert_eq!(
            faster(&t(5.0, Some(70.0)), &t(5_000.0, Some(20.0))),
            Pick::Gpu
        );
    }

    #[test]
    fn the_gpu_budget_lets_a_competitive_gpu_finish() {
        let cpu = t(80.0, Some(70.0));
        // A GPU 4x slower than the CPU still fits a warm-up as slow as the CPU's and two
        // steps: it is measured, and loses on its median, not on the budget.
        assert!(gpu_budget_ms(&cpu) >= 80.0 + 2.0 * 4.0 * 70.0);
        assert_eq!(gpu_budget_ms(&t(1.0, Some(1.0))), 2_000.0);
    }

    /// A fake clock that advances by `tick` on every reading.
    fn clock(tick: f64) -> impl Fn() -> f64 {
        let c = Cell::new(0.0);
        move || {
            let v = c.get();
            c.set(v + tick);
            v
        }
    }

    #[test]
    fn timing_runs_committed_steps_and_stops_at_the_budget() {
        let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
        // Each step reads the clock twice (start, end) and the loop once: with a tick of
        // 10, a step "takes" 10 and the budget check sees 20 more per step.
        let timed = pollster_block(time_steps(&job, &Backend::Cpu, 3, 1e9, &clock(10.0)));
        let timed = timed.unwrap();
        assert_eq!(timed.warmup_ms, 10.0);
        assert_eq!(timed.median_ms, Some(10.0));
        assert_eq!(timed.path, "the CPU reference");
        // A budget the warm-up alone exceeds: no step is timed.
        let gave_up = pollster_block(time_steps(&job, &Backend::Cpu, 3, 5.0, &clock(10.0)));
        assert_eq!(gave_up.unwrap().median_ms, None);
    }

    /// Runs a future that never waits (the CPU backend's step is synchronous).
    fn pollster_block<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the CPU step waited"),
        }
    }
}
