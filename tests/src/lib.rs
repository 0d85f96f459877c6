//! Workspace-wide integration stories (DESIGN.md, the `tests/` row of "Crates"): the
//! adversary zoo (`tests/zoo.rs`, see `tests/README.md`). Shared helpers live here.

#![forbid(unsafe_code)]

/// The tiny job every story runs: a model small enough that a task takes milliseconds.
pub const TINY: &str = include_str!("../../jobs/tiny-test.toml");

/// The corpus the stories train on.
pub fn corpus() -> lupus_prover::data::Corpus {
    lupus_prover::data::Corpus::generated(7, 24_000)
}
