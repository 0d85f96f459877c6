//! WGSL compute kernels through wgpu: every operator of both models on WebGPU in the
//! browser and on Vulkan natively (lavapipe in the tests), written to DESIGN.md's
//! determinism rules so that a CPU-backed device gives the CPU reference's bits.
//!
//! [`GpuDevice::new`] opens the device; [`run_suite_gpu`] runs the prover's known-answer
//! suite on it, and `lupus_prover::kat::check_device` turns that into the exact or the
//! tolerant class; [`train_step_gpu`] is `graph::train_step` on the device, one operator
//! at a time; [`WholeStep`] is the same step as one submission with the state resident
//! and the trace hashed on the device ([`record_whole_step`] commits it).

mod device;
mod hash;
mod kat;
mod ops;
mod step;
mod whole;

pub use device::{GpuDevice, GpuError, Layout, Transfers};
pub use hash::{Blake3Mode, blake3_on_device, tensor_hash_on_device, tensor_hashes_on_device};
pub use kat::{DetFn, det_on_device, keeps_subnormals, run_suite_gpu};
pub use ops::eval_op_gpu;
pub use step::train_step_gpu;
pub use whole::{StepDigests, WholeStep, record_whole_step};
