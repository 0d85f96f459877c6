//! Every WGSL kernel on a native Vulkan device (lavapipe in CI) against the CPU
//! reference: the prover's known-answer suite must come out exact, case by case, and a
//! real task's steps must give the reference's trace.
#![cfg(feature = "gpu")]

use lupus_prover::kat::{DeviceClass, EXPECTED, check_device, run_suite, to_hex};
use lupus_worker::gpu::{GpuDevice, run_suite_gpu};

/// A reference `det` function.
type ScalarFn = fn(f32) -> f32;

fn device() -> GpuDevice {
    match pollster::block_on(GpuDevice::new()) {
        Ok(d) => d,
        Err(e) => panic!("{e}: install mesa-vulkan-drivers (lavapipe) to run the kernel tests"),
    }
}

#[test]
fn known_answer_suite_is_exact_on_the_device() {
    let dev = device();
    println!("device: {}", dev.description);
    let gpu = pollster::block_on(run_suite_gpu(&dev));
    let cpu = run_suite();
    let mut differ = Vec::new();
    for (name, _) in EXPECTED {
        let g = gpu
            .iter()
            .find(|r| r.name == *name)
            .map(|r| to_hex(&r.hash));
        let c = cpu
            .iter()
            .find(|r| r.name == *name)
            .map(|r| to_hex(&r.hash));
        if g != c {
            differ.push(*name);
        }
    }
    assert!(
        differ.is_empty(),
        "cases that differ from the CPU reference: {differ:?}"
    );
    assert_eq!(check_device(&gpu), DeviceClass::Exact);
    let subnormals = pollster::block_on(lupus_worker::gpu::keeps_subnormals(&dev)).unwrap();
    assert!(subnormals, "an exact device keeps subnormal intermediates");
}

/// Each `det` function, element by element, over edge cases and dense sweeps: a
/// mismatch names the first inputs that differ (the suite's hash only says "differs").
#[test]
fn det_functions_match_element_by_element() {
    use lupus_prover::det;
    use lupus_worker::gpu::{DetFn, det_on_device};
    let dev = device();
    let mut xs: Vec<f32> = vec![
        0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-40, 88.0, 88.5, -87.34, -87.33,
    ];
    xs.extend((0..20_000).map(|i| -90.0 + 180.0 * (i as f32 / 20_000.0)));
    xs.extend((0u32..0x7f80_0000).step_by(0x0001_0f01).map(f32::from_bits));
    let cases: [(DetFn, ScalarFn); 7] = [
        (DetFn::Exp, det::exp),
        (DetFn::Ln, det::ln),
        (DetFn::Reciprocal, det::reciprocal),
        (DetFn::Rsqrt, det::rsqrt),
        (DetFn::Sqrt, det::sqrt),
        (DetFn::RoundNe, det::round_ne),
        (DetFn::Ftz, det::ftz),
    ];
    let mut report = Vec::new();
    for (f, reference) in cases {
        let got = pollster::block_on(det_on_device(&dev, f, &xs)).expect("dispatch");
        let bad: Vec<String> = xs
            .iter()
            .zip(&got)
            .filter(|(x, y)| det::canonical_bits(reference(**x)) != det::canonical_bits(**y))
            .map(|(x, y)| format!("{x:e}: gpu {y:e}, cpu {:e}", reference(*x)))
            .collect();
        if !bad.is_empty() {
            let first: Vec<&String> = bad.iter().take(3).chain(bad.iter().rev().take(3)).collect();
            report.push(format!(
                "{f:?}: {} of {} differ, first and last: {first:?}",
                bad.len(),
                xs.len()
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

/// A whole task of the tiny job trained on the device commits the same trace as the CPU
/// reference: same trace root, same final state, same delta.
#[test]
fn a_task_on_the_device_commits_the_reference_trace() {
    use lupus_prover::data::Corpus;
    use lupus_prover::model::init_params;
    use lupus_prover::spec::JobSpec;
    use lupus_prover::task::{TaskBuilder, run_task};
    use lupus_worker::gpu::train_step_gpu;
    let dev = device();
    let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
    let corpus = Corpus::generated(3, 20_000);
    let base = init_params(&job.model, [2; 32]).unwrap();
    let seed = [4; 32];
    let cpu = run_task(&job, &corpus, &base, seed, &mut |_, _| {}).unwrap();
    let mut b = TaskBuilder::new(&job, &corpus, &base, seed).unwrap();
    for _ in 0..job.inner.steps {
        let batch = b.batch().unwrap();
        let out = pollster::block_on(train_step_gpu(
            &dev,
            &job.model,
            &job.inner.adamw(),
            b.state(),
            &batch,
        ))
        .unwrap();
        b.record(&batch, out).unwrap();
    }
    let gpu = b.finish().unwrap();
    assert_eq!(gpu.commitment, cpu.commitment);
    assert_eq!(gpu.losses, cpu.losses);
}
