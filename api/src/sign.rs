//! Request signing: every mutating request is signed by the participant's Ed25519 key.
//!
//! # Scheme (version 1)
//!
//! The client builds the *canonical string*
//!
//! ```text
//! lupus request v1\n
//! <METHOD>\n                  upper case, e.g. POST
//! <path with query>\n         exactly as sent, e.g. /v1/tasks/7/submit
//! <blake3(body) hex>\n        64 lowercase hex digits (the hash of the empty body if none)
//! <timestamp>\n               unix time in milliseconds, decimal, no leading zeroes
//! <nonce>\n                   32 lowercase hex digits (16 random bytes)
//! ```
//!
//! signs it with Ed25519, and sends five headers:
//!
//! | header | value |
//! |---|---|
//! | `Lupus-Key` | the public key, 64 lowercase hex digits |
//! | `Lupus-Timestamp` | the timestamp above |
//! | `Lupus-Nonce` | the nonce above |
//! | `Lupus-Content-Hash` | the body's blake3 hash above |
//! | `Lupus-Signature` | the signature, 128 lowercase hex digits |
//!
//! [`verify_request`] rebuilds the string from what arrived, checks the signature with
//! `verify_strict` (no small-order keys, no malleable signatures) and refuses a
//! timestamp more than [`MAX_SKEW_MS`] from the server's clock. A server that must not
//! read a stranger's body does it in two steps: [`check_headers`] refuses everything
//! the headers alone can show (a missing or malformed header, a key that is no Ed25519
//! point, a stale timestamp), [`CheckedHeaders::verify_signature`] checks the
//! signature over the hash the headers declare, both before a byte of the body is
//! read, and [`CheckedHeaders::check_body`] then checks that the body, hashed as it
//! streams in, has that hash. So nobody gets a server to read a body without a valid
//! signature by the key it names. The server remembers
//! each key's recent `(timestamp, nonce)` pairs and refuses a repeat, and a request
//! much older than the key's newest: with the timestamp bound, that makes every signed
//! request usable once (the coordinator's `engine::replay`). The cache lives in the
//! server (this crate does no I/O and keeps no state).
//!
//! The body hash binds the body; the path binds the endpoint and the task; the method
//! binds the verb; the domain line keeps these signatures apart from the ledger's entry
//! signatures (which start `lupus entry v1\n`).

use ed25519_dalek::{Signature, Signer, SigningKey};
use lupus_ledger::entry::PublicKey;

/// Header carrying the signer's public key.
pub const HEADER_KEY: &str = "lupus-key";
/// Header carrying the timestamp (unix ms).
pub const HEADER_TIMESTAMP: &str = "lupus-timestamp";
/// Header carrying the nonce (32 hex digits).
pub const HEADER_NONCE: &str = "lupus-nonce";
/// Header carrying the body's blake3 hash (64 hex digits), the one the signature covers.
pub const HEADER_CONTENT_HASH: &str = "lupus-content-hash";
/// Header carrying the signature (128 hex digits).
pub const HEADER_SIGNATURE: &str = "lupus-signature";

/// Largest accepted distance between a request's timestamp and the server's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

const DOMAIN: &str = "lupus request v1\n";

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("header `{0}` is missing: mutating requests must be signed (see the API docs)")]
    Missing(&'static str),
    #[error("header `{header}` is malformed: {problem}")]
    Malformed {
        header: &'static str,
        problem: &'static str,
    },
    #[error("`lupus-key` is not a valid Ed25519 public key")]
    BadKey,
    #[error("the request signature does not verify for this key, method, path and body")]
    BadSignature,
    #[error(
        "the request timestamp {timestamp} is more than {MAX_SKEW_MS} ms from the server's clock {now}; check the clock and sign again"
    )]
    Stale { timestamp: u64, now: u64 },
    #[error("this nonce was already used with this key: a signed request is accepted once")]
    Replayed,
    #[error("the body does not hash to `lupus-content-hash`")]
    BodyMismatch,
}

/// The five signature headers of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub key: String,
    pub timestamp: String,
    pub nonce: String,
    pub content_hash: String,
    pub signature: String,
}

impl SignedHeaders {
    /// `(header name, value)` pairs, ready to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            (HEADER_KEY, &self.key),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_CONTENT_HASH, &self.content_hash),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// What a verified request proves: who signed it, when, with which nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedRequest {
    pub key: PublicKey,
    pub timestamp_ms: u64,
    pub nonce: [u8; 16],
}

/// The canonical string of the scheme (see the module docs).
pub fn canonical_string(
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timestamp_ms: u64,
    nonce: &[u8; 16],
) -> String {
    canonical_string_of_hash(
        method,
        path_and_query,
        &blake3::hash(body),
        timestamp_ms,
        nonce,
    )
}

/// The canonical string, given the body's blake3 hash rather than the body.
pub fn canonical_string_of_hash(
    method: &str,
    path_and_query: &str,
    body_hash: &blake3::Hash,
    timestamp_ms: u64,
    nonce: &[u8; 16],
) -> String {
    format!(
        "{DOMAIN}{}\n{path_and_query}\n{}\n{timestamp_ms}\n{}\n",
        method.to_ascii_uppercase(),
        body_hash.to_hex(),
        hex::encode(nonce)
    )
}

/// Signs a request. `nonce` must be fresh random bytes (the caller's random source:
/// this crate has none, so it builds for wasm32 without one).
pub fn sign_request(
    key: &SigningKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timestamp_ms: u64,
    nonce: [u8; 16],
) -> SignedHeaders {
    let body_hash = blake3::hash(body);
    let text = canonical_string_of_hash(method, path_and_query, &body_hash, timestamp_ms, &nonce);
    let sig = key.sign(text.as_bytes());
    SignedHeaders {
        key: hex::encode(key.verifying_key().to_bytes()),
        timestamp: timestamp_ms.to_string(),
        nonce: hex::encode(nonce),
        content_hash: body_hash.to_hex().to_string(),
        signature: hex::encode(sig.to_bytes()),
    }
}

fn decode_fixed<const N: usize>(header: &'static str, text: &str) -> Result<[u8; N], AuthError> {
    let mut out = [0u8; N];
    if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(AuthError::Malformed {
            header,
            problem: "wrong length or not lowercase hex",
        });
    }
    hex::decode_to_slice(text, &mut out).map_err(|_| AuthError::Malformed {
        header,
        problem: "not hex",
    })?;
    Ok(out)
}

/// The signature headers of a request, checked as far as they can be without its
/// body: the key is an Ed25519 point, the timestamp is within [`MAX_SKEW_MS`] of the
/// server's clock, the nonce, the content hash and the signature have their form.
/// [`check_headers`] makes one; [`CheckedHeaders::verify_signature`] checks the
/// signature before the body is read, [`CheckedHeaders::check_body`] the body's hash
/// once it is.
#[derive(Clone, Debug)]
pub struct CheckedHeaders {
    key: PublicKey,
    verifying_key: ed25519_dalek::VerifyingKey,
    timestamp_ms: u64,
    nonce: [u8; 16],
    content_hash: blake3::Hash,
    signature: Signature,
}

/// Checks a request's signature headers without its body. `header` looks a header up
/// by its lowercase name; `now_ms` is the server's clock.
pub fn check_headers<'a>(
    header: impl Fn(&'static str) -> Option<&'a str>,
    now_ms: u64,
) -> Result<CheckedHeaders, AuthError> {
    let get = |name: &'static str| header(name).ok_or(AuthError::Missing(name));
    let key_bytes: [u8; 32] = decode_fixed(HEADER_KEY, get(HEADER_KEY)?)?;
    let ts_text = get(HEADER_TIMESTAMP)?;
    if ts_text.is_empty()
        || ts_text.len() > 20
        || !ts_text.bytes().all(|b| b.is_ascii_digit())
        || (ts_text.len() > 1 && ts_text.starts_with('0'))
    {
        return Err(AuthError::Malformed {
            header: HEADER_TIMESTAMP,
            problem: "not a decimal number of milliseconds without leading zeroes",
        });
    }
    let timestamp_ms: u64 = ts_text.parse().map_err(|_| AuthError::Malformed {
        header: HEADER_TIMESTAMP,
        problem: "does not fit in 64 bits",
    })?;
    let nonce: [u8; 16] = decode_fixed(HEADER_NONCE, get(HEADER_NONCE)?)?;
    let content_hash: [u8; 32] = decode_fixed(HEADER_CONTENT_HASH, get(HEADER_CONTENT_HASH)?)?;
    let sig: [u8; 64] = decode_fixed(HEADER_SIGNATURE, get(HEADER_SIGNATURE)?)?;
    let key = PublicKey(key_bytes);
    let verifying_key = key.verifying_key().ok_or(AuthError::BadKey)?;
    if timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(AuthError::Stale {
            timestamp: timestamp_ms,
            now: now_ms,
        });
    }
    Ok(CheckedHeaders {
        key,
        verifying_key,
        timestamp_ms,
        nonce,
        content_hash: blake3::Hash::from_bytes(content_hash),
        signature: Signature::from_bytes(&sig),
    })
}

impl CheckedHeaders {
    /// The key the request claims to be signed by (not proven until [`Self::verify`]).
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// Checks the signature over `method`, `path_and_query` and the body hash the
    /// headers declare: before the body is read. The body must then pass
    /// [`Self::check_body`].
    pub fn verify_signature(
        &self,
        method: &str,
        path_and_query: &str,
    ) -> Result<VerifiedRequest, AuthError> {
        let text = canonical_string_of_hash(
            method,
            path_and_query,
            &self.content_hash,
            self.timestamp_ms,
            &self.nonce,
        );
        self.verifying_key
            .verify_strict(text.as_bytes(), &self.signature)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(VerifiedRequest {
            key: self.key,
            timestamp_ms: self.timestamp_ms,
            nonce: self.nonce,
        })
    }

    /// Checks that the body, hashed as it arrived, is the one the headers declare
    /// (and so the one the signature covers).
    pub fn check_body(&self, body_hash: &blake3::Hash) -> Result<(), AuthError> {
        // `blake3::Hash` compares in constant time.
        if *body_hash == self.content_hash {
            Ok(())
        } else {
            Err(AuthError::BodyMismatch)
        }
    }

    /// [`Self::check_body`], then [`Self::verify_signature`].
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        body_hash: &blake3::Hash,
    ) -> Result<VerifiedRequest, AuthError> {
        self.check_body(body_hash)?;
        self.verify_signature(method, path_and_query)
    }
}

/// Verifies a signed request whose body is at hand: [`check_headers`], then
/// [`CheckedHeaders::verify`]. Replays are the server's to refuse (it keeps the nonce
/// cache); everything else is checked here.
pub fn verify_request<'a>(
    header: impl Fn(&'static str) -> Option<&'a str>,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<VerifiedRequest, AuthError> {
    check_headers(header, now_ms)?.verify(method, path_and_query, &blake3::hash(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(h: &'a SignedHeaders) -> impl Fn(&'static str) -> Option<&'a str> + 'a {
        move |name| match name {
            HEADER_KEY => Some(h.key.as_str()),
            HEADER_TIMESTAMP => Some(h.timestamp.as_str()),
            HEADER_NONCE => Some(h.nonce.as_str()),
            HEADER_CONTENT_HASH => Some(h.content_hash.as_str()),
            HEADER_SIGNATURE => Some(h.signature.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_every_field_is_bound() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let h = sign_request(
            &key,
            "post",
            "/v1/tasks/3/submit",
            b"{}",
            1_000_000,
            [1; 16],
        );
        let ok = verify_request(lookup(&h), "POST", "/v1/tasks/3/submit", b"{}", 1_000_500);
        assert_eq!(ok.unwrap().key, PublicKey::from(&key));
        let bad = |m, p, b: &[u8]| verify_request(lookup(&h), m, p, b, 1_000_000);
        assert_eq!(
            bad("GET", "/v1/tasks/3/submit", b"{}"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            bad("POST", "/v1/tasks/4/submit", b"{}"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            bad("POST", "/v1/tasks/3/submit", b"{ }"),
            Err(AuthError::BodyMismatch)
        );
        // A content hash rewritten to match another body: the signature no longer
        // verifies.
        let mut swapped = h.clone();
        swapped.content_hash = blake3::hash(b"{ }").to_hex().to_string();
        assert_eq!(
            verify_request(
                lookup(&swapped),
                "POST",
                "/v1/tasks/3/submit",
                b"{ }",
                1_000_000
            ),
            Err(AuthError::BadSignature)
        );
        let stale = verify_request(
            lookup(&h),
            "POST",
            "/v1/tasks/3/submit",
            b"{}",
            1_000_000 + MAX_SKEW_MS + 1,
        );
        assert!(matches!(stale, Err(AuthError::Stale { .. })));
        let mut other = h.clone();
        other.nonce = hex::encode([2u8; 16]);
        assert_eq!(
            verify_request(
                lookup(&other),
                "POST",
                "/v1/tasks/3/submit",
                b"{}",
                1_000_000
            ),
            Err(AuthError::BadSignature)
        );
        other = h.clone();
        other.timestamp = "01000000".into();
        assert!(matches!(
            verify_request(
                lookup(&other),
                "POST",
                "/v1/tasks/3/submit",
                b"{}",
                1_000_000
            ),
            Err(AuthError::Malformed { .. })
        ));
        other = h.clone();
        other.signature = other.signature.to_uppercase();
        assert!(matches!(
            verify_request(
                lookup(&other),
                "POST",
                "/v1/tasks/3/submit",
                b"{}",
                1_000_000
            ),
            Err(AuthError::Malformed { .. })
        ));
        assert_eq!(
            verify_request(|_| None, "POST", "/", b"", 0),
            Err(AuthError::Missing(HEADER_KEY))
        );
    }

    #[test]
    fn headers_are_refused_without_a_body_and_the_body_hash_finishes_the_check() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let body = b"{\"role\":\"worker\"}";
        let h = sign_request(&key, "POST", "/v1/join", body, 5_000_000, [3; 16]);
        let checked = check_headers(lookup(&h), 5_000_000).unwrap();
        assert_eq!(checked.key(), PublicKey::from(&key));
        // The signature is checked before the body, over the declared hash.
        let v = checked.verify_signature("POST", "/v1/join").unwrap();
        assert_eq!((v.timestamp_ms, v.nonce), (5_000_000, [3; 16]));
        assert_eq!(
            checked.verify_signature("POST", "/v1/jobs"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(checked.check_body(&blake3::hash(body)), Ok(()));
        assert_eq!(
            checked.check_body(&blake3::hash(b"{}")),
            Err(AuthError::BodyMismatch)
        );
        let mut unhashed = h.clone();
        unhashed.content_hash = String::new();
        assert!(matches!(
            check_headers(lookup(&unhashed), 5_000_000),
            Err(AuthError::Malformed { .. })
        ));
        // Stale, or not a point: known before the body.
        assert!(matches!(
            check_headers(lookup(&h), 5_000_000 + MAX_SKEW_MS + 1),
            Err(AuthError::Stale { .. })
        ));
        let not_a_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| PublicKey(*k).verifying_key().is_none())
            .expect("some repeated byte is not a curve point");
        let mut other = h.clone();
        other.key = hex::encode(not_a_point);
        assert!(matches!(
            check_headers(lookup(&other), 5_000_000),
            Err(AuthError::BadKey)
        ));
    }
}
