//! The Lupus transparency log.
//!
//! An append-only, signed log of everything that happens in a Lupus training job:
//! tasks, commitments, verdicts, credits. The tree is RFC 9162 (SHA-256), checkpoints
//! are C2SP signed notes, and the public read API is C2SP `tlog-tiles`, so standard
//! transparency-log tooling can check the log unmodified.
//!
//! The core (everything but [`store`] and [`log`]) does no I/O and builds for wasm32.
//!
//! Everything here that parses bytes a stranger controls (signed notes, checkpoints,
//! entries, entry bundles, tile paths and tiles, `tlog-proof` files, stake statements)
//! is fuzzed by the targets in `fuzz/` (README, "Fuzzing"), which also assert the
//! round-trip and one-encoding properties the modules document.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod entry;
pub mod hash;
pub mod note;
pub mod proof;
pub mod receipt;
pub mod stake;
pub mod sumtree;
pub mod tiles;
pub mod tree;

#[cfg(feature = "storage")]
pub mod log;
#[cfg(feature = "storage")]
pub mod store;
