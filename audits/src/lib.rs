//! The Lupus auditor: checks, without trusting the coordinator, that the public
//! ledger is intact, that every share was earned by verified work, and that nobody
//! was shown a different history.
//!
//! DESIGN.md, "Ledger" and "Crates" (`audits/`). The pieces:
//!
//! - [`source`]: reads a C2SP `tlog-tiles` log from a URL or a directory.
//! - [`state`]: the auditor's local, atomically written store (pinned key, verified
//!   checkpoint, every checkpoint seen, the protocol state to resume from).
//! - [`verify`]: incremental verification of the whole log.
//! - the per-entry protocol rules and the shares fold are `lupus_protocol`'s: the
//!   same fold the coordinator applies before it writes an entry.
//! - [`replay`]: re-runs a sample of challenges from the coordinator's stored openings.
//! - [`statement`]: offline checks of stake statements and C2SP `tlog-proof` files.
//! - [`witness`]: a C2SP `tlog-witness` that cosigns consistent checkpoints.
//! - [`monitor`]: follows a log and alerts on failures or a stalled log.
//! - [`sample`]: a protocol-correct synthetic job log, for tests and the benchmark.
//! - [`bench`]: the audit benchmark (full audit against a tree-only baseline).

#![forbid(unsafe_code)]

pub mod bench;
pub mod merge;
pub mod monitor;
pub mod replay;
pub mod sample;
pub mod source;
pub mod state;
pub mod statement;
pub mod verify;
pub mod witness;
