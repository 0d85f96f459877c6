//! `POST /v1/verify/<id>/verdict` bodies through the coordinator's path: `serde_json`
//! into `lupus_api::types::VerdictSubmission`, then `lupus_api::check::check_verdict`
//! (the signed `Verdict` entry, its task, verifier and steps, the evidence digest of
//! the fraud proof); then the fraud proof checked as the referee and auditors do
//! (`FraudProof::check`) against a fixed context.
//!
//! Properties: a body that parses round-trips through JSON, and so does its fraud
//! proof with the same evidence digest (the coordinator stores the proof as a blob
//! named by that digest); an accepted verdict's entry is canonical, carries a proof
//! only when it rejects, and names the proof's digest as evidence.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::check::check_verdict;
use lupus_api::lupus_ledger::entry::{Entry, EntryBody};
use lupus_api::lupus_prover::fraud::{FraudContext, FraudProof};
use lupus_api::lupus_prover::merkle::Digest;
use lupus_api::types::{VerdictSubmission, evidence_digest};
use lupus_fuzz::{STEPS, TASK, public, verifier_key};

fuzz_target!(|data: &[u8]| {
    let Ok(sub) = serde_json::from_slice::<VerdictSubmission>(data) else {
        return;
    };
    let json = serde_json::to_vec(&sub).expect("a verdict serialises");
    assert_eq!(
        serde_json::from_slice::<VerdictSubmission>(&json).ok(),
        Some(sub.clone())
    );
    if let Some(p) = &sub.fraud_proof {
        let blob = serde_json::to_vec(p).expect("a fraud proof serialises");
        let back: FraudProof = serde_json::from_slice(&blob).expect("a stored fraud proof parses");
        assert_eq!(&back, p);
        assert_eq!(evidence_digest(&back), evidence_digest(p));
        let ctx = FraudContext {
            trace_root: Digest([5; 32]),
            steps: 8,
            base_state_hash: Digest([6; 32]),
            worker: [7; 32],
        };
        let _ = p.check(&ctx);
    }
    let Ok(checked) = check_verdict(&sub, TASK, &public(&verifier_key()), &STEPS) else {
        return;
    };
    assert_eq!(
        Entry::decode(checked.entry.as_bytes()).as_ref(),
        Ok(&checked.entry)
    );
    let EntryBody::Verdict {
        accepted, evidence, ..
    } = checked.entry.body()
    else {
        panic!("check_verdict accepted a {} entry", checked.entry.kind());
    };
    assert_eq!(*accepted, checked.accepted);
    assert_eq!(sub.fraud_proof.is_some(), evidence.is_some());
    if let Some(p) = &sub.fraud_proof {
        assert!(!accepted);
        assert_eq!(*evidence, Some(evidence_digest(p)));
    }
});
