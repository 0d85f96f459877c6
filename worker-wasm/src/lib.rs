//! The Lupus volunteer worker.
#![forbid(unsafe_code)]

#[cfg(feature = "gpu")]
pub mod gpu;
