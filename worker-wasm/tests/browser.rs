//! In headless Chromium (wasm-bindgen-test): the known-answer suite on the CPU path in
//! wasm, and on WebGPU (SwiftShader where no GPU exists) through the WGSL kernels, must
//! give the reference bits. Run with `worker-wasm/browser-test.sh`.
#![cfg(target_arch = "wasm32")]

use lupus_prover::kat::{DeviceClass, check_device, run_suite};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// A reference `det` function.
/// The piecewise tensor hash that proof of replay digests (`Tensor::hash_pieces`) gives
/// the native bits in wasm.
#[wasm_bindgen_test]
fn tensor_hash_pieces_in_wasm_are_the_native_bits() {
    assert_eq!(lupus_prover::kat::hash_pieces_known_answer(), Ok(()));
}

#[cfg(feature = "gpu")]
#[cfg(feature = "gpu")]
type ScalarFn = fn(f32) -> f32;

#[wasm_bindgen_test]
fn cpu_path_in_wasm_is_exact() {
    assert_eq!(check_device(&run_suite()), DeviceClass::Exact);
}

#[cfg(feature = "gpu")]
#[wasm_bindgen_test]
async fn webgpu_kernels_are_exact() {
    use lupus_worker::gpu::{DetFn, GpuDevice, det_on_device, keeps_subnormals, run_suite_gpu};
    let dev = GpuDevice::new()
        .await
        .expect("WebGPU: run Chromium with --enable-unsafe-webgpu");
    web_sys::console::log_1(&format!("device: {}", dev.description).into());
    // One small dispatch first, so a failure shows its error rather than a hash.
    let one = det_on_device(&dev, DetFn::Ftz, &[1.5, 1e-40]).await;
    assert_eq!(
        one,
        Ok(vec![1.5, 0.0]),
        "a single dispatch on {}",
        dev.description
    );
    let results = run_suite_gpu(&dev).await;
    let subnormals = keeps_subnormals(&dev).await.expect("dispatch");
    web_sys::console::log_1(&format!("keeps subnormal intermediates: {subnormals}").into());
    match check_device(&results) {
        DeviceClass::Exact => assert!(subnormals),
        // A device that flushes subnormal intermediates (SwiftShader) differs on the one
        // case built to detect that, and nowhere else: every operator and both training
        // steps still give the reference bits.
        DeviceClass::Tolerant { mismatches } => {
            assert!(
                !subnormals,
                "tolerant on a device that keeps subnormals: {mismatches:?}"
            );
            assert_eq!(mismatches, ["matmul.subnormal"], "on {}", dev.description);
        }
    }
}

/// Each `det` function element by element on WebGPU, naming the inputs that differ.
#[cfg(feature = "gpu")]
#[wasm_bindgen_test]
async fn webgpu_det_functions_element_by_element() {
    use lupus_prover::det;
    use lupus_worker::gpu::{DetFn, GpuDevice, det_on_device};
    let dev = GpuDevice::new().await.expect("WebGPU");
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.0,
        1e-45,
        1e-40,
        1.17e-38,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    xs.extend((0..20_000).map(|i| 100.0 * (i as f32 / 20_000.0)));
    xs.extend((0u32..0x7f80_0000).step_by(0x0001_0f01).map(f32::from_bits));
    xs.extend(
        (0u32..0x7f80_0000)
            .step_by(0x0003_3333)
            .map(|b| -f32::from_bits(b)),
    );
    let cases: [(DetFn, ScalarFn); 3] = [
        (DetFn::Ln, det::ln),
        (DetFn::Rsqrt, det::rsqrt),
        (DetFn::Sqrt, det::sqrt),
    ];
    let mut report = Vec::new();
    for (f, reference) in cases {
        let got = det_on_device(&dev, f, &xs).await.expect("dispatch");
        let bad: Vec<String> = xs
            .iter()
            .zip(&got)
            .filter(|(x, y)| det::canonical_bits(reference(**x)) != det::canonical_bits(**y))
            .map(|(x, y)| {
                format!(
                    "{x:e} ({:08x}): gpu {y:e}, cpu {:e}",
                    x.to_bits(),
                    reference(*x)
                )
            })
            .collect();
        if !bad.is_empty() {
            let first: Vec<&String> = bad.iter().take(4).collect();
            report.push(format!(
                "{f:?}: {} of {} differ: {first:?}",
                bad.len(),
                xs.len()
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}
