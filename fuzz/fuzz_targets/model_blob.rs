//! Model blobs (`lupus_api::model::decode_model`) as a worker, verifier or auditor
//! fetches them from `/v1/blobs/<hash>`, decoded against `fuzz/job.toml`; and int8
//! deltas (`QuantDelta::from_bytes`) as the coordinator and auditors read them.
//!
//! Properties: a blob that decodes has the job's parameter shapes and re-encodes to
//! exactly the input (so its blake3 name is the name of what was decoded); a delta that
//! decodes re-encodes to exactly the input and dequantises to finite tensors.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_prover::quant::QuantDelta;
use lupus_api::lupus_prover::spec::JobSpec;
use lupus_api::model::{decode_model, encode_model, model_hash};
use lupus_fuzz::{job, param_shapes};

fn fixtures() -> &'static (JobSpec, Vec<Vec<usize>>) {
    static F: OnceLock<(JobSpec, Vec<Vec<usize>>)> = OnceLock::new();
    F.get_or_init(|| {
        let j = job();
        let shapes = param_shapes(&j);
        (j, shapes)
    })
}

fuzz_target!(|data: &[u8]| {
    let (job, shapes) = fixtures();
    if let Ok(params) = decode_model(data, job) {
        let got: Vec<Vec<usize>> = params.iter().map(|t| t.shape().to_vec()).collect();
        assert_eq!(&got, shapes);
        let again = encode_model(&params);
        assert_eq!(again, data, "a decoded model blob re-encodes differently");
        assert_eq!(model_hash(&again), model_hash(data));
    }
    if let Ok(delta) = QuantDelta::from_bytes(data) {
        assert_eq!(
            delta.to_bytes(),
            data,
            "a decoded delta re-encodes differently"
        );
        let tensors = delta.dequantise().expect("a decoded delta dequantises");
        assert!(
            tensors
                .iter()
                .all(|t| t.data().iter().all(|x| x.is_finite()))
        );
    }
});
