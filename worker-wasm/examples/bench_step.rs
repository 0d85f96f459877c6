//! Native baseline of the browser benchmark: milliseconds per training step of a job on
//! a generated corpus with the CPU reference (and, with `--features gpu`, the WGSL
//! kernels on the native Vulkan device, lavapipe here). Same job, corpus, seed and
//! warm-up as `bench_step_ms` in the page.
//!
//! `cargo run --release -p lupus-worker --example bench_step [--features gpu] -- [mlp|tiny] [STEPS]`

use std::time::Instant;

use lupus_prover::data::Corpus;
use lupus_prover::model::init_params;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::TaskBuilder;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("mlp");
    let steps: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let text = match which {
        "mlp" => include_str!("../../jobs/shakespeare-mlp.toml"),
        "tiny" => include_str!("../../jobs/tiny-test.toml"),
        other => return Err(format!("no benchmark job `{other}`").into()),
    };
    let job = JobSpec::parse(text)?;
    let corpus = Corpus::generated(1, 200_000);
    let base = init_params(&job.model, [1; 32])?;
    let n = steps.min(job.inner.steps.saturating_sub(1));
    let mut b = TaskBuilder::new(&job, &corpus, &base, [2; 32])?;
    let mut times = Vec::new();
    for i in 0..=n {
        let t0 = Instant::now();
        b.run_step()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let cpu = median(times);
    println!("job {which}: native CPU reference {cpu:.2} ms/step (median of {n})");
    #[cfg(feature = "gpu")]
    {
        let dev = pollster::block_on(lupus_worker::gpu::GpuDevice::new())?;
        let mut b = TaskBuilder::new(&job, &corpus, &base, [2; 32])?;
        let mut times = Vec::new();
        for i in 0..=n {
            let t0 = Instant::now();
            let batch = b.batch()?;
            let out = pollster::block_on(lupus_worker::gpu::train_step_gpu(
                &dev,
                &job.model,
                &job.inner.adamw(),
                b.state(),
                &batch,
            ))?;
            b.record(&batch, out)?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let gpu = median(times);
        println!(
            "job {which}: native WGSL on {} {gpu:.2} ms/step ({:.2}x the CPU reference)",
            dev.description,
            gpu / cpu
        );
    }
    Ok(())
}
