//! The Lupus protocol: one fold of the ledger's entries that everybody runs.
//!
//! DESIGN.md, "Crates" and "Ledger". The ledger crate is a generic signed log of typed
//! entries; what those entries may say, and what they add up to, is here, once:
//!
//! - [`shares`]: the shares fold ([`SharesFold`]): rounds, pending and final credits,
//!   slashing and every `SharesEpoch` root, a pure function of the entries.
//! - [`rules`]: the protocol rules on top of it ([`ProtocolState::apply`]): the job
//!   spec, participants, tasks, challenges dictated by the revealed beacon, verdicts,
//!   slashes that cite a conviction, credits that follow final acceptance, the model
//!   chain.
//!
//! The coordinator applies every entry here before it sequences it (it cannot write
//! what the auditor rejects); the auditor (`lupus-audit verify`), the demo's
//! re-verification, the stake code's tests and the synthetic sample log run the same
//! fold. No I/O, no clock, no randomness.

#![forbid(unsafe_code)]

pub mod rules;
pub mod shares;

pub use rules::{JobFacts, ProtocolState, Violation, convicts, double_checked, replay_checked};
pub use shares::{EpochState, FoldError, SharesFold};
