//! Stake statements (`lupus_ledger::stake`, the JSON of `/v1/stake/<pubkey>`),
//! verified offline with the log's key as `lupus-audit check-proof` does.
//!
//! Properties: a statement that verifies still verifies, to the same result, after a
//! JSON round trip; its balance is at most the total it proves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::stake::{StakeStatement, verify_statement};
use lupus_fuzz::log_signer;

fuzz_target!(|data: &[u8]| {
    let Ok(statement) = serde_json::from_slice::<StakeStatement>(data) else {
        return;
    };
    let json = serde_json::to_vec(&statement).expect("a statement serialises");
    let back: StakeStatement = serde_json::from_slice(&json).expect("a statement's JSON parses");
    assert_eq!(back, statement);
    let key = log_signer().verifier_key();
    let Ok(verified) = verify_statement(&statement, &key) else {
        return;
    };
    assert_eq!(verify_statement(&back, &key).ok(), Some(verified.clone()));
    assert!(verified.balance.0 <= verified.total.0);
});
