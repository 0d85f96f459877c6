//! `POST /v1/tasks/<id>/opening` bodies through the coordinator's path:
//! `lupus_api::check::decode_opening` (the canonical binary encoding,
//! `Opening::from_bytes`), then `lupus_api::check::check_opening` against the
//! challenged steps; the coordinator then stores the bytes as they came and serves them
//! to verifiers by their hash, who decode them again.
//!
//! Properties: a body that decodes is exactly the encoding of the opening it decodes to
//! (one opening, one encoding, one blob hash), so what a verifier decodes from the
//! stored bytes is what the coordinator checked; an accepted opening covers exactly
//! the challenged steps.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::check::{check_opening, decode_opening};
use lupus_api::lupus_prover::task::Opening;
use lupus_fuzz::STEPS;

fuzz_target!(|data: &[u8]| {
    let Ok(opening) = decode_opening(data) else {
        return;
    };
    assert_eq!(opening.to_bytes(), data, "a decoded body is canonical");
    let loaded = Opening::from_bytes(data).expect("stored bytes decode again");
    assert_eq!(loaded, opening);
    if check_opening(&opening, &STEPS).is_ok() {
        let steps: Vec<u32> = opening.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, STEPS);
    }
});
