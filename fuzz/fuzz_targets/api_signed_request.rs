//! The request-signing scheme every mutating request carries
//! (`lupus_api::sign::verify_request`), on arbitrary headers, method, path and body.
//! The input is a JSON object `{"method", "path", "body", "now", "headers": {...}}`.
//!
//! Properties: a request that verifies names the key of its `lupus-key` header and
//! its timestamp is within the allowed skew; the signature binds the body (one more
//! byte fails) and the path; a request signed with `sign_request` verifies.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use lupus_api::sign::{MAX_SKEW_MS, sign_request, verify_request};
use lupus_fuzz::worker_key;
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    method: String,
    path: String,
    body: String,
    now: u64,
    headers: BTreeMap<String, String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let header = |name: &'static str| input.headers.get(name).map(String::as_str);
    let body = input.body.as_bytes();
    if let Ok(v) = verify_request(header, &input.method, &input.path, body, input.now) {
        let named = input.headers.get("lupus-key").map(String::as_str);
        assert!(named.is_some_and(|k| k.eq_ignore_ascii_case(&hex(&v.key.0))));
        assert!(v.timestamp_ms.abs_diff(input.now) <= MAX_SKEW_MS);
        let mut longer = body.to_vec();
        longer.push(b' ');
        assert!(verify_request(header, &input.method, &input.path, &longer, input.now).is_err());
        let other_path = format!("{}/", input.path);
        assert!(verify_request(header, &input.method, &other_path, body, input.now).is_err());
    }
    // Completeness: the same request, signed now with the worker key, verifies.
    let nonce = nonce_of(data);
    let signed = sign_request(
        &worker_key(),
        &input.method,
        &input.path,
        body,
        input.now,
        nonce,
    );
    let pairs = signed.pairs();
    let lookup = |name: &'static str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let v = verify_request(lookup, &input.method, &input.path, body, input.now)
        .expect("a freshly signed request verifies");
    assert_eq!(v.nonce, nonce);
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce_of(data: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in data.iter().enumerate() {
        out[i % 16] ^= *b;
    }
    out
}
