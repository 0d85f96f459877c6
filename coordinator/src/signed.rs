//! The signed-request extractor: what every signed `POST` handler used to repeat, done
//! once and in the order that keeps a stranger's bytes out (THREATS.md, invariant 5).
//!
//! A [`Signed<T, R>`] is extracted in these steps; the first that fails answers. The
//! first five run before a byte of the body is read:
//!
//! 1. the signature headers ([`lupus_api::sign::check_headers`]: key, timestamp skew,
//!    nonce, declared body hash and signature form): 401;
//! 2. `Content-Length` against the route's limit (`R::BODY_LIMIT`): 413;
//! 3. the signature, over method, path and the body hash the headers declare: 401;
//! 4. the key's standing on routes for one role (`R::ROLE`): joined in that role and
//!    not slashed, as the engine's roster says ([`Coordinator::may_act`]): 403;
//! 5. the key's token bucket, on routes that have one (`R::BUCKET`): 429 with
//!    `Retry-After`;
//! 6. the body, streamed and hashed as it comes: cut off at the limit (413, for a body
//!    without a length), past the body deadline (408), or when the bytes held
//!    unverified over all requests pass the gate's budget (503, `Retry-After`); then
//!    its hash against the declared one: 401;
//! 7. the nonce: 409 for a replay. Last, so that a request refused for any other
//!    reason may be sent again as it is;
//! 8. the JSON body: 400 ([`SignedUpload`] skips this step: its handler decodes the
//!    body itself, the opening's binary encoding).
//!
//! So the only bodies the coordinator reads are signed by a key that joined in the
//! route's role (or, for a join, by the key joining), within that key's rate. A
//! request refused before its body is read whole has the rest of its body read and
//! thrown away for a moment in the background ([`linger`]), so that a client still
//! sending it sees the refusal. The engine checks the role again under its lock.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::header;
use axum::http::request::Parts;
use http_body_util::BodyExt;
use lupus_api::sign::check_headers;
use lupus_ledger::entry::{PublicKey, Role};
use serde::de::DeserializeOwned;

use crate::blobs::{BlobError, BlobStore, Uploaded};
use crate::engine::Coordinator;
use crate::error::Error;
use crate::limits::{Bucket, Gate, Held};

/// What a signed route allows: its body limit, its token bucket and who may use it.
pub trait SignedRoute {
    /// Largest body, in bytes.
    const BODY_LIMIT: usize;
    /// The per-key token bucket a request takes from, if any.
    const BUCKET: Option<Bucket>;
    /// The role a key must have joined in (`None`: any key, as for a join).
    const ROLE: Option<Role>;
}

/// A verified signed request to a route `R`: the signer and the parsed body.
pub struct Signed<T, R> {
    pub key: PublicKey,
    pub body: T,
    route: PhantomData<R>,
}

fn unauthorized(e: lupus_api::sign::AuthError) -> Error {
    Error::Unauthenticated(e.to_string())
}

fn too_large(limit: usize) -> Error {
    Error::TooLarge(format!(
        "the request body is over this endpoint's limit of {limit} bytes"
    ))
}

/// A verified signed request to a route `R` whose body is a blob (an opening): the
/// signer and the body, streamed to a temporary file of the blob store and hashed as
/// it arrived, for the handler to check and adopt. A slow upload holds a file, not
/// memory.
pub struct SignedUpload<R> {
    pub key: PublicKey,
    pub body: Uploaded,
    route: PhantomData<R>,
}

impl<S, T, R> FromRequest<S> for Signed<T, R>
where
    S: Send + Sync,
    Arc<Coordinator>: FromRef<S>,
    Gate: FromRef<S>,
    T: DeserializeOwned,
    R: SignedRoute,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let (key, bytes, held) = extract::<S, R>(req, state).await?;
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Malformed(format!("invalid JSON body: {e}")))?;
        // The bytes count against the budget until here; from now on they are the
        // signer's, who is known.
        drop(held);
        Ok(Signed {
            key,
            body,
            route: PhantomData,
        })
    }
}

impl<S, R> FromRequest<S> for SignedUpload<R>
where
    S: Send + Sync,
    Arc<Coordinator>: FromRef<S>,
    Gate: FromRef<S>,
    R: SignedRoute,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let blobs = Arc::<Coordinator>::from_ref(state).blobs().clone();
        let (key, body, held) = extract_into::<S, R>(req, state, Sink::Blobs(blobs)).await?;
        drop(held);
        let Received::File(body) = body else {
            return Err(Error::Internal("a file sink gave memory".into()));
        };
        Ok(SignedUpload {
            key,
            body,
            route: PhantomData,
        })
    }
}

/// Steps 1 to 7 on `req`, the body read into memory; a refused request's unread body
/// lingers.
async fn extract<S, R: SignedRoute>(
    req: Request,
    state: &S,
) -> Result<(PublicKey, Vec<u8>, Held), Error>
where
    Arc<Coordinator>: FromRef<S>,
    Gate: FromRef<S>,
{
    match extract_into::<S, R>(req, state, Sink::Memory(Vec::new())).await? {
        (key, Received::Memory(bytes), held) => Ok((key, bytes, held)),
        (_, Received::File(_), _) => Err(Error::Internal("a memory sink gave a file".into())),
    }
}

/// Steps 1 to 7 on `req`, the body into `sink`; a refused request's unread body
/// lingers.
async fn extract_into<S, R: SignedRoute>(
    req: Request,
    state: &S,
    sink: Sink,
) -> Result<(PublicKey, Received, Held), Error>
where
    Arc<Coordinator>: FromRef<S>,
    Gate: FromRef<S>,
{
    let (parts, mut body) = req.into_parts();
    let signed = verified::<S, R>(&parts, &mut body, state, sink).await;
    if signed.is_err() {
        linger(body);
    }
    signed
}

/// Where a body's bytes go as they arrive.
enum Sink {
    /// Kept as they arrived (no growing buffer whose old copies would stay
    /// allocated), joined once the body is complete.
    Memory(Vec<Bytes>),
    /// Written to a temporary file of this blob store, opened only once the headers,
    /// the signature, the role and the rate have passed: a stranger's refused request
    /// costs no file.
    Blobs(BlobStore),
}

/// A whole body, from its [`Sink`].
enum Received {
    Memory(Vec<u8>),
    File(Uploaded),
}

/// Steps 1 to 7: the signer, the body and its hold on the gate's budget.
async fn verified<S, R: SignedRoute>(
    parts: &Parts,
    body: &mut Body,
    state: &S,
    sink: Sink,
) -> Result<(PublicKey, Received, Held), Error>
where
    Arc<Coordinator>: FromRef<S>,
    Gate: FromRef<S>,
{
    let gate = Gate::from_ref(state);
    let coordinator = Arc::<Coordinator>::from_ref(state);
    let checked = check_headers(
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
        coordinator.now_ms(),
    )
    .map_err(unauthorized)?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > R::BODY_LIMIT as u64) {
        return Err(too_large(R::BODY_LIMIT));
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let v = checked
        .verify_signature(parts.method.as_str(), path)
        .map_err(unauthorized)?;
    if let Some(role) = R::ROLE {
        coordinator.may_act(&v.key, role)?;
    }
    if let Some(bucket) = R::BUCKET {
        gate.take(bucket, &v.key)?;
    }
    let deadline = gate.limits.body_read_timeout;
    let (bytes, hash, held) =
        tokio::time::timeout(deadline, read(body, R::BODY_LIMIT, &gate, sink))
            .await
            .map_err(|_| {
                Error::TooSlow(format!(
                    "the request body did not arrive within {} s",
                    deadline.as_secs_f64()
                ))
            })??;
    checked.check_body(&hash).map_err(unauthorized)?;
    coordinator.check_nonce(v.key, v.timestamp_ms, v.nonce, coordinator.now_ms())?;
    Ok((v.key, bytes, held))
}

/// How long the rest of a refused body is read and thrown away.
const LINGER: Duration = Duration::from_secs(2);

/// Reads and throws away what is left of a refused request's body for [`LINGER`], in
/// the background, keeping none of it: a client still sending its body then reads the
/// refusal rather than a reset connection (the lingering close of RFC 9112, section
/// 9.6). The refusal itself is sent at once.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// Reads `body` up to `limit` bytes into `sink`, hashing it and holding each piece
/// against the gate's budget (a file's bytes too: the budget bounds what strangers
/// make the coordinator keep, in memory or on disk).
async fn read(
    body: &mut Body,
    limit: usize,
    gate: &Gate,
    sink: Sink,
) -> Result<(Received, blake3::Hash, Held), Error> {
    let (mut pieces, mut upload) = match sink {
        Sink::Memory(pieces) => (pieces, None),
        Sink::Blobs(store) => (
            Vec::new(),
            Some(store.upload().map_err(crate::error::blob_error)?),
        ),
    };
    let mut held = gate.hold_nothing();
    let mut hasher = blake3::Hasher::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(body_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if len + data.len() > limit {
            return Err(too_large(limit));
        }
        gate.hold(&mut held, data.len())?;
        hasher.update(&data);
        len += data.len();
        match &mut upload {
            Some(upload) => upload.write(&data).await.map_err(upload_error)?,
            None => pieces.push(data),
        }
    }
    let received = match upload {
        Some(upload) => Received::File(upload.finish().await.map_err(upload_error)?),
        None => {
            let mut whole = Vec::with_capacity(len);
            for p in pieces {
                whole.extend_from_slice(&p);
            }
            Received::Memory(whole)
        }
    };
    Ok((received, hasher.finalize(), held))
}

fn upload_error(e: std::io::Error) -> Error {
    crate::error::blob_error(BlobError::Io {
        path: "an upload's temporary file".into(),
        source: e,
    })
}

fn body_error(e: axum::Error) -> Error {
    let e = e.into_inner();
    if e.is::<tower_http::timeout::TimeoutError>() {
        Error::TooSlow("the request body stopped arriving".into())
    } else {
        Error::Malformed(format!("cannot read the request body: {e}"))
    }
}
