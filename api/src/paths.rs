//! The coordinator's endpoints. Mutating endpoints (`POST`) require a signed request
//! ([`crate::sign`]); reads do not.

/// C2SP `tlog-checkpoint` of the log (text).
pub const CHECKPOINT: &str = "/checkpoint";
/// C2SP `tlog-tiles` hash tiles and entry bundles live under this prefix.
pub const TILE_PREFIX: &str = "/tile/";
/// `GET`: the job spec, its hash, the dataset commitment and the log's key ([`crate::types::JobInfo`]).
pub const JOB: &str = "/v1/job";
/// `POST`: join as a worker or a verifier ([`crate::types::JoinRequest`]).
pub const JOIN: &str = "/v1/join";
/// `POST`: ask for a task ([`crate::types::TaskOffer`]).
pub const TASKS_NEXT: &str = "/v1/tasks/next";
/// `POST`: ask for a task to verify ([`crate::types::VerifyOffer`]).
pub const VERIFY_NEXT: &str = "/v1/verify/next";
/// `GET`: the current round ([`crate::types::RoundStatus`]).
pub const ROUND_CURRENT: &str = "/v1/rounds/current";
/// `GET`: every round ([`crate::types::RoundList`]).
pub const ROUNDS: &str = "/v1/rounds";
/// `GET`: the stake table ([`crate::types::StakeTable`]).
pub const STAKE: &str = "/v1/stake";
/// `GET`: an inclusion proof, `?index=<leaf>&size=<tree size>`.
pub const PROOF_INCLUSION: &str = "/v1/proof/inclusion";
/// `GET`: a consistency proof, `?old=<size>&new=<size>`.
pub const PROOF_CONSISTENCY: &str = "/v1/proof/consistency";
/// The OpenAPI document.
pub const OPENAPI: &str = "/openapi.json";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";

/// `GET`: one blob (a model, the dataset, an opening) by its blake3 hex.
pub fn blob(hash: &lupus_ledger::entry::Digest) -> String {
    format!("/v1/blobs/{hash}")
}

/// `GET`: one task's status ([`crate::types::TaskStatus`]).
pub fn task(task: u64) -> String {
    format!("/v1/tasks/{task}")
}

/// `POST`: submit a task's work ([`crate::types::Submission`]).
pub fn submit(task: u64) -> String {
    format!("/v1/tasks/{task}/submit")
}

/// `POST`: answer a task's challenge with an opening.
pub fn opening(task: u64) -> String {
    format!("/v1/tasks/{task}/opening")
}

/// `POST`: a verifier's verdict on a task ([`crate::types::VerdictSubmission`]).
pub fn verdict(task: u64) -> String {
    format!("/v1/verify/{task}/verdict")
}

/// `GET`: one round ([`crate::types::RoundStatus`]).
pub fn round(round: u64) -> String {
    format!("/v1/rounds/{round}")
}

/// `GET`: a decoded log entry ([`crate::types::EntryView`]).
pub fn entry(index: u64) -> String {
    format!("/v1/entries/{index}")
}

/// `GET`: a stake statement (`lupus_ledger::stake::StakeStatement`).
pub fn stake(key: &lupus_ledger::entry::PublicKey) -> String {
    format!("/v1/stake/{key}")
}
