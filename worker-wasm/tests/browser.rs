//! In headless Chromium (wasm-bindgen-test): the known-answer suite on the CPU path in
//! wasm, and on WebGPU (SwiftShader where no GPU exists) through the WGSL kernels, must
//! give the reference bits. Run with `worker-wasm/browser-test.sh`.
#![cfg(target_arch = "wasm32")]

use lupus_prover::kat::{DeviceClass, check_device, run_suite};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn cpu_path_in_wasm_is_exact() {
    assert_eq!(check_device(&run_suite()), DeviceClass::Exact);
}

#[cfg(feature = "gpu")]
#[wasm_bindgen_test]
async fn webgpu_kernels_are_exact() {
    use lupus_worker::gpu::{DetFn, GpuDevice, det_on_device, run_suite_gpu};
    let dev = GpuDevice::new()
        .await
        .expect("WebGPU: run Chromium with --enable-unsafe-webgpu");
    web_sys::console::log_1(&format!("device: {}", dev.description).into());
    // One small dispatch first, so a failure shows its error rather than a hash.
    let one = det_on_device(&dev, DetFn::Ftz, &[1.5, 1e-40]).await;
    assert_eq!(one, Ok(vec![1.5, 0.0]), "a single dispatch on {}", dev.description);
    let results = run_suite_gpu(&dev).await;
    assert_eq!(
        check_device(&results),
        DeviceClass::Exact,
        "on {}",
        dev.description
    );
}
