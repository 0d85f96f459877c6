//! `POST /v1/tasks/<id>/opening` bodies through the coordinator's path: `serde_json`
//! into `lupus_prover::task::Opening`, then `lupus_api::check::check_opening` against
//! the challenged steps; the coordinator then stores the opening as JSON and serves it
//! to verifiers, who parse it again.
//!
//! Properties: every opening that parses is written to JSON that parses back to the
//! same opening (what the coordinator stores is what a verifier reads); an accepted
//! opening covers exactly the challenged steps.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::check::check_opening;
use lupus_api::lupus_prover::task::Opening;
use lupus_fuzz::STEPS;

fuzz_target!(|data: &[u8]| {
    let Ok(opening) = serde_json::from_slice::<Opening>(data) else {
        return;
    };
    let stored = serde_json::to_vec(&opening).expect("an opening serialises");
    let loaded: Opening = serde_json::from_slice(&stored).expect("a stored opening parses");
    assert_eq!(loaded, opening);
    if check_opening(&opening, &STEPS).is_ok() {
        let steps: Vec<u32> = opening.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, STEPS);
    }
});
