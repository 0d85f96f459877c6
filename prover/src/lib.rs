//! The Lupus prover: deterministic training and proofs of training.
//!
//! The workers (browser and native), the verifiers and the auditor all run this code,
//! so it does no I/O and builds for wasm32. Replaying a step gives the same bits on
//! every machine in the exact class; see `DESIGN.md` (Determinism).

#![forbid(unsafe_code)]

// The deterministic runtime.
pub mod det;
pub mod graph;
pub mod kat;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod optim;
pub mod quant;
pub mod tensor;

// The protocol: what is committed, challenged, replayed and proven.
pub mod challenge;
pub mod data;
pub mod fraud;
pub mod merkle;
pub mod prf;
pub mod spec;
pub mod task;
pub mod trace;
pub mod verify;
