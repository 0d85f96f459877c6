//! The Lupus wire contract: what a worker, a verifier and the coordinator say to each
//! other over HTTP, and how a participant signs what it says.
//!
//! DESIGN.md ("The loop", "Coordinator"). This crate holds only types and pure
//! functions (no I/O, no async runtime), so the native worker, the browser worker
//! (wasm32) and the coordinator share one definition of every message:
//!
//! - [`paths`]: every endpoint's path.
//! - [`types`]: the JSON bodies, request and response, of every endpoint.
//! - [`sign`]: the request-signing scheme (Ed25519 over method, path, body hash,
//!   timestamp and nonce) that every mutating request carries.
//! - [`check`]: the checks the coordinator runs on a request body before it touches
//!   any state (pure, so the fuzz targets run them too).
//! - [`model`]: the byte layout of model blobs (content addressed by blake3).
//! - [`problem`]: RFC 9457 problem details, the body of every error.
//! - [`schema`]: the JSON shapes of the ledger and prover types in those bodies, for
//!   the OpenAPI document (every body type here derives `utoipa::ToSchema`).
//!
//! # The protocol, one round trip at a time
//!
//! 1. A participant joins once: `POST /v1/join` with a [`types::JoinRequest`] carrying
//!    its signature over the `ParticipantJoined` entry body (proof of possession).
//! 2. A worker asks for work: `POST /v1/tasks/next` returns a [`types::TaskOffer`]. A
//!    task is logged (`TaskAssigned`) before it is handed out. The worker fetches the
//!    base model and the dataset from `GET /v1/blobs/<blake3 hex>`.
//! 3. The worker trains, then `POST /v1/tasks/<id>/submit` with a
//!    [`types::Submission`]: the signed `WorkCommitted` entry, the int8 delta and the
//!    opening of the final trace leaf. The commitment is logged before the challenge
//!    exists; the receipt ([`types::SubmissionReceipt`]) then names the challenged steps.
//! 4. The worker answers with `POST /v1/tasks/<id>/opening`: a prover
//!    [`lupus_prover::task::Opening`] in its canonical binary encoding
//!    (`Opening::to_bytes`, about 4 bytes a parameter), stored as a blob.
//! 5. A verifier asks for work: `POST /v1/verify/next` returns a
//!    [`types::VerifyOffer`] with the task, the commitment, the steps and the
//!    opening's blob hash; it fetches the opening from `/v1/blobs/`, replays and posts `POST /v1/verify/<id>/verdict` ([`types::VerdictSubmission`]:
//!    the signed `Verdict` entry and, when it rejects, the fraud proof).
//! 6. Anyone reads the round's state (`GET /v1/rounds/current`), the log (C2SP
//!    `tlog-tiles` under `/checkpoint` and `/tile/...`, decoded entries under
//!    `/v1/entries/<index>`) and stake statements (`/v1/stake/<pubkey>`).
//!
//! Every request body above, and the signed-request headers, is fuzzed through the
//! same parse-and-check path the coordinator runs (`serde_json`, then [`check`] or
//! [`sign::verify_request`]) by the `api_*` targets in `fuzz/` (README, "Fuzzing").

#![forbid(unsafe_code)]

pub mod check;
#[cfg(feature = "client")]
pub mod http;
pub mod model;
pub mod paths;
pub mod problem;
pub mod schema;
pub mod sign;
pub mod types;

pub use lupus_ledger;
pub use lupus_prover;
