//! The Lupus volunteer worker: what a volunteer runs by opening a web page.
//!
//! DESIGN.md ("The loop", "Determinism"; the `worker-wasm/` row of "Crates").
//!
//! - [`worker`]: the worker and verifier loops as plain async Rust over a small
//!   transport, the same code in the browser and natively.
//! - [`conduct`]: the loop's choices (train, open, judge) behind one trait; only the
//!   honest conduct lives here (the adversary zoo's cheats are `lupus-zoo`'s).
//! - [`gpu`] (feature `gpu`): WGSL kernels through wgpu for every operator, the GPU
//!   training step and the known-answer suite on the device.
//! - [`pick`]: which device trains, measured on the job at start.
//! - [`native`] (not wasm32): the same loops over HTTP with a key file, for
//!   `lupus worker` and `lupus verify`.
//! - `web` (wasm32 only): the wasm-bindgen exports the page's Web Worker drives.
//!
//! The page itself (`www/`) and the build script (`build.sh`) live next to this crate;
//! the coordinator serves `www/` at `/` and the build output `pkg/` at `/pkg/`.

#![forbid(unsafe_code)]

pub mod conduct;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod pick;
#[cfg(target_arch = "wasm32")]
mod web;
pub mod worker;
