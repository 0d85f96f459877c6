//! `POST /v1/join` bodies through the coordinator's path: `serde_json` into
//! `lupus_api::types::JoinRequest`, then the `ParticipantJoined` entry built from it
//! and its proof-of-possession signature verified (`Entry::with_signature`).
//!
//! Properties: a request that parses round-trips through JSON; an entry that is
//! accepted decodes from its own bytes to itself and names the request's key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::entry::Entry;
use lupus_api::types::{JoinRequest, join_body};
use lupus_fuzz::{public, worker_key};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<JoinRequest>(data) else {
        return;
    };
    let json = serde_json::to_vec(&req).expect("a request serialises");
    assert_eq!(
        serde_json::from_slice::<JoinRequest>(&json).ok(),
        Some(req.clone())
    );
    let key = public(&worker_key());
    let Ok(entry) = Entry::with_signature(join_body(key, req.role, &req.name), req.signature.0)
    else {
        return;
    };
    assert_eq!(Entry::decode(entry.as_bytes()).as_ref(), Ok(&entry));
    assert_eq!(entry.body().signer().map(|(_, k)| *k), Some(key));
});
