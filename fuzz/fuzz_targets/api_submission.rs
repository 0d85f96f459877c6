//! `POST /v1/tasks/<id>/submit` bodies through the coordinator's path: `serde_json`
//! into `lupus_api::types::Submission`, then `lupus_api::check::check_submission`
//! (the signed `WorkCommitted` entry, the int8 delta's strict decoding, shapes and
//! hash, the final trace leaf opening) for task 7 of the worker key and `fuzz/job.toml`.
//!
//! Properties: a body that parses round-trips through JSON; an accepted submission's
//! entry and delta are the canonical encodings of what they decode to, and the
//! commitment is the one the entry records.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lupus_api::check::check_submission;
use lupus_api::lupus_ledger::entry::{Digest, Entry};
use lupus_api::lupus_prover::spec::JobSpec;
use lupus_api::types::Submission;
use lupus_fuzz::{TASK, job, param_shapes, public, worker_key};

fn fixtures() -> &'static (JobSpec, Vec<Vec<usize>>) {
    static F: OnceLock<(JobSpec, Vec<Vec<usize>>)> = OnceLock::new();
    F.get_or_init(|| {
        let j = job();
        let shapes = param_shapes(&j);
        (j, shapes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sub) = serde_json::from_slice::<Submission>(data) else {
        return;
    };
    let json = serde_json::to_vec(&sub).expect("a submission serialises");
    assert_eq!(
        serde_json::from_slice::<Submission>(&json).ok(),
        Some(sub.clone())
    );
    let (job, shapes) = fixtures();
    let worker = public(&worker_key());
    let Ok(checked) = check_submission(&sub, TASK, &worker, shapes, job.inner.steps) else {
        return;
    };
    assert_eq!(checked.entry.as_bytes(), sub.work_committed.0.as_slice());
    assert_eq!(
        Entry::decode(checked.entry.as_bytes()).as_ref(),
        Ok(&checked.entry)
    );
    assert_eq!(checked.delta.to_bytes(), sub.delta.0);
    assert_eq!(Digest(checked.delta.hash()), checked.commitment.delta_hash);
    assert_eq!(checked.delta.tensors.len(), shapes.len());
});
