//! Fixtures shared by the fuzz targets (`fuzz_targets/*.rs`) and by the seed-corpus
//! generator (`examples/seeds.rs`): fixed keys, the job the API targets check bodies
//! against, and the task/participant a body must name. Seeds are signed with these
//! keys, so a target that mutates a seed reaches the code behind the signature check.

#![forbid(unsafe_code)]

use ed25519_dalek::SigningKey;
use lupus_api::lupus_ledger::entry::{PublicKey, TaskId};
use lupus_api::lupus_ledger::note::{NoteSigner, NoteVerifier};
use lupus_api::lupus_prover::spec::JobSpec;

/// The log's origin and checkpoint key name.
pub const LOG_ORIGIN: &str = "lupus.example/fuzz";
/// A witness's key name.
pub const WITNESS_NAME: &str = "witness.example/w1";
/// The task every API body names.
pub const TASK: TaskId = TaskId(7);
/// The challenged steps every opening and verdict must cover (tiny-test has H = 8).
pub const STEPS: [u32; 4] = [0, 2, 5, 7];

/// The log's checkpoint signer.
pub fn log_signer() -> NoteSigner {
    NoteSigner::from_secret(LOG_ORIGIN, [1; 32]).expect("fixed valid key name")
}

/// A witness's cosigning key.
pub fn witness_signer() -> NoteSigner {
    NoteSigner::from_secret(WITNESS_NAME, [2; 32]).expect("fixed valid key name")
}

/// The verifiers a client of the log trusts: the log and one witness.
pub fn verifiers() -> Vec<NoteVerifier> {
    vec![log_signer().verifier(), witness_signer().verifier()]
}

/// The worker key API bodies are signed with.
pub fn worker_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

/// The verifier key API bodies are signed with.
pub fn verifier_key() -> SigningKey {
    SigningKey::from_bytes(&[4; 32])
}

/// The public half of a key.
pub fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(key)
}

/// The job the API targets check submissions against (`fuzz/job.toml`, a smaller tiny-test).
pub fn job() -> JobSpec {
    JobSpec::parse(include_str!("../job.toml")).expect("fuzz/job.toml parses")
}

/// The job's parameter shapes, in order (what the coordinator passes to
/// `lupus_api::check::check_submission`).
pub fn param_shapes(job: &JobSpec) -> Vec<Vec<usize>> {
    job.model
        .param_shapes()
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}
