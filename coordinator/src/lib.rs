//! The Lupus coordinator: the HTTP server, the round scheduler, verification dispatch,
//! aggregation and the blob store (DESIGN.md, "Coordinator"), plus a native
//! participant client used by `lupus worker`, `lupus verify`, the demo and the tests.
//!
//! - [`engine`]: rounds, tasks, challenges, verdicts, merging; state as a fold of the
//!   ledger ([`state`]); what goes wrong is an [`error::Error`], which only
//!   [`problem`] turns into HTTP.
//! - [`routes`]: the HTTP API over the engine; [`signed`] checks its signed requests,
//!   [`limits`] bounds every request, [`page`] serves the volunteer page; [`server`]
//!   runs it with its ticker; [`openapi`] describes it, [`metrics`] counts it.
//! - [`blobs`]: the content-addressed blob store.
//! - [`dataset`]: the pinned corpus, fetched and unpacked; [`chart`]: the demo's loss
//!   chart.
//! - [`client`]: a signed-request HTTP client and the native worker and verifier loops.
//!
//! The benchmarks (`lupus-bench`) and the adversary zoo (`lupus-zoo`) are crates of
//! their own under `tools/`, which depend on this one.

#![forbid(unsafe_code)]

pub mod audit;
pub mod blobs;
pub mod chart;
pub mod client;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod problem;
pub mod routes;
pub mod sample;
pub mod server;
pub mod signed;
pub mod state;
pub mod witness;
