//! The HTTP API (DESIGN.md, "Coordinator"): thin axum handlers over the engine.
//!
//! - Reads: C2SP `tlog-tiles` (`/checkpoint`, `/tile/<L>/<N>`, `/tile/entries/<N>`),
//!   proofs, decoded entries, stake, rounds, tasks, blobs, `/openapi.json`,
//!   `/metrics`, and `/` (the volunteer page).
//! - Writes (`POST`): signed by the participant ([`lupus_api::sign`]), checked by the
//!   [`Signed`] extractor before the handler runs: the signature headers before the
//!   body is read, the body streamed within its route's limit (413) and deadline, then
//!   the signature, the key's token bucket on joins and claims (429) and the nonce (a
//!   replay is 409).
//! - Every request is bounded by [`Limits`]: requests in flight, request and body
//!   timeouts ([`crate::limits`]).
//! - Every error is RFC 9457 `application/problem+json`.
//! - Each handler's `#[utoipa::path]` is its entry in `/openapi.json` ([`crate::openapi`]);
//!   every request is counted by route template for `/metrics` ([`crate::metrics`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Path, Query, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lupus_api::problem::Problem;
use lupus_api::types as api;
use lupus_ledger::entry::{Digest, Entry, PublicKey, Role, Round, TaskId};
use lupus_ledger::hash::{LeafIndex, TreeSize, leaf_hash};
use lupus_ledger::tiles::{TilePath, parse_tile_path};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::engine::Coordinator;
use crate::error::{Error, internal};
use crate::limits::{Bucket, Gate, Limits};
use crate::signed::{Signed, SignedRoute, SignedUpload};
use crate::{metrics, openapi, page};

/// Body limit of small JSON requests (join, next).
pub const SMALL_BODY: usize = 64 << 10;
/// Body limit of a submission (the int8 delta, base64) and of a verdict (a fraud proof).
pub const SUBMIT_BODY: usize = 32 << 20;
/// Body limit of an opening (its binary encoding: the state entering each challenged
/// step, params and both moments, and for the tolerant class the state after it; the
/// Shakespeare job's is about 10 MB).
pub const OPENING_BODY: usize = 64 << 20;

/// `POST /v1/join`: a small body, the join bucket, any key.
pub enum JoinRoute {}
/// `POST /v1/tasks/next`: a small body, the claim bucket, workers.
pub enum TaskClaimRoute {}
/// `POST /v1/verify/next`: a small body, the claim bucket, verifiers.
pub enum VerifyClaimRoute {}
/// `POST /v1/tasks/{id}/submit`: workers.
pub enum SubmitRoute {}
/// `POST /v1/verify/{id}/verdict`: verifiers.
pub enum VerdictRoute {}
/// `POST /v1/tasks/{id}/opening`: workers.
pub enum OpeningRoute {}

impl SignedRoute for JoinRoute {
    const BODY_LIMIT: usize = SMALL_BODY;
    const BUCKET: Option<Bucket> = Some(Bucket::Join);
    const ROLE: Option<Role> = None;
}
impl SignedRoute for TaskClaimRoute {
    const BODY_LIMIT: usize = SMALL_BODY;
    const BUCKET: Option<Bucket> = Some(Bucket::Claim);
    const ROLE: Option<Role> = Some(Role::Worker);
}
impl SignedRoute for VerifyClaimRoute {
    const BODY_LIMIT: usize = SMALL_BODY;
    const BUCKET: Option<Bucket> = Some(Bucket::Claim);
    const ROLE: Option<Role> = Some(Role::Verifier);
}
impl SignedRoute for SubmitRoute {
    const BODY_LIMIT: usize = SUBMIT_BODY;
    const BUCKET: Option<Bucket> = None;
    const ROLE: Option<Role> = Some(Role::Worker);
}
impl SignedRoute for VerdictRoute {
    const BODY_LIMIT: usize = SUBMIT_BODY;
    const BUCKET: Option<Bucket> = None;
    const ROLE: Option<Role> = Some(Role::Verifier);
}
impl SignedRoute for OpeningRoute {
    const BODY_LIMIT: usize = OPENING_BODY;
    const BUCKET: Option<Bucket> = None;
    const ROLE: Option<Role> = Some(Role::Worker);
}

type Shared = Arc<Coordinator>;
type ApiResult = Result<Response, Error>;

/// The router's state: the coordinator, and the bounds' shared state for [`Signed`].
#[derive(Clone)]
pub struct App {
    pub coordinator: Shared,
    pub gate: Gate,
}

impl FromRef<App> for Shared {
    fn from_ref(app: &App) -> Shared {
        Arc::clone(&app.coordinator)
    }
}

impl FromRef<App> for Gate {
    fn from_ref(app: &App) -> Gate {
        app.gate.clone()
    }
}

fn json<T: serde::Serialize>(value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The router over a coordinator with the default [`Limits`]. `page` is the volunteer
/// page's directory, if built.
pub fn router(c: Shared, page: Option<std::path::PathBuf>) -> Router {
    router_with(c, page, Limits::default())
}

/// The router over a coordinator, bounded by `limits`.
pub fn router_with(c: Shared, page: Option<std::path::PathBuf>, limits: Limits) -> Router {
    let api = Router::<App>::new()
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/v1/job", get(job))
        .route("/v1/join", post(join))
        .route("/v1/tasks/next", post(next_task))
        .route("/v1/tasks/{id}", get(task_status))
        .route("/v1/tasks/{id}/submit", post(submit))
        .route("/v1/tasks/{id}/opening", post(opening))
        .route("/v1/verify/next", post(next_verify))
        .route("/v1/verify/{id}/verdict", post(verdict))
        .route("/v1/rounds", get(rounds))
        .route("/v1/rounds/current", get(round_current))
        .route("/v1/rounds/{n}", get(round))
        .route("/v1/entries/{index}", get(entry))
        .route("/v1/proof/inclusion", get(inclusion))
        .route("/v1/proof/consistency", get(consistency))
        .route("/v1/stake", get(stake_table))
        .route("/v1/stake/{key}", get(stake))
        .route("/v1/blobs/{hash}", get(blob))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            Error::NotFound("no such endpoint; see /openapi.json".into()).into_response()
        })
        .method_not_allowed_fallback(|| async {
            crate::problem::response(&Problem::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not take that method; see /openapi.json",
            ))
        });
    let app = App {
        coordinator: Arc::clone(&c),
        gate: Gate::new(limits.clone()),
    };
    limits
        .apply(page::mount(api, page))
        .layer(middleware::from_fn_with_state(c, count))
        .with_state(app)
}

async fn count(State(c): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // The template, not the raw path: label values stay bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(metrics::UNMATCHED, |p| p.as_str())
        .to_owned();
    let resp = next.run(req).await;
    c.metrics
        .observe_request(&route, resp.status(), start.elapsed());
    resp
}

#[utoipa::path(
    get,
    path = "/checkpoint",
    tag = "log",
    summary = "The log's checkpoint",
    responses(
        (status = 200, description = "A C2SP tlog-checkpoint signed note, with the witnesses' cosignatures", body = String, content_type = "text/plain")
    )
)]
async fn checkpoint(State(c): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        c.cosigned_checkpoint(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/tile/{path}",
    tag = "log",
    summary = "A C2SP tlog-tiles hash tile or entry bundle",
    params(
        ("path" = String, Path, description = "`<L>/<N>[.p/<W>]` for a hash tile, `entries/<N>[.p/<W>]` for an entry bundle; `<N>` in the C2SP `x`-prefixed three-digit groups, may contain `/`")
    ),
    responses(
        (status = 200, description = "The tile's bytes (immutable: cached for a year)", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn tile(State(c): State<Shared>, Path(path): Path<String>) -> ApiResult {
    let full = format!("tile/{path}");
    let parsed = parse_tile_path(&full).map_err(|e| Error::NotFound(e.to_string()))?;
    let data = match parsed {
        TilePath::Hashes(t) => c.log().tile(&t).await,
        TilePath::Entries(b) => c.log().entry_bundle(&b).await,
    }
    .map_err(|e| Error::NotFound(e.to_string()))?;
    Ok(immutable(data))
}

/// Content-addressed bytes (tiles, blobs): they never change, so anyone may cache
/// them for a year.
fn immutable(data: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        data,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/v1/job",
    tag = "state",
    summary = "The job",
    responses(
        (status = 200, description = "The job spec, its hash, the dataset commitment and blob, the log key", body = api::JobInfo)
    )
)]
async fn job(State(c): State<Shared>) -> ApiResult {
    json(&c.job_info()?)
}

#[utoipa::path(
    post,
    path = "/v1/join",
    tag = "work",
    summary = "Join as a worker or a verifier",
    request_body = api::JoinRequest,
    responses(
        (status = 200, description = "The key's `ParticipantJoined` entry (also for a repeated join in the same role)", body = api::JoinResponse),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 429, response = openapi::TooManyRequests),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn join(State(c): State<Shared>, req: Signed<api::JoinRequest, JoinRoute>) -> ApiResult {
    json(&c.join(req.key, req.body).await?)
}

#[utoipa::path(
    post,
    path = "/v1/tasks/next",
    tag = "work",
    summary = "Ask for a task",
    request_body = api::NextRequest,
    responses(
        (status = 200, description = "A task (logged as `TaskAssigned` before it is handed out), or how long to wait", body = api::TaskOffer),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 429, response = openapi::TooManyRequests),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn next_task(
    State(c): State<Shared>,
    req: Signed<api::NextRequest, TaskClaimRoute>,
) -> ApiResult {
    json(&c.next_task(req.key).await?)
}

fn task_id(id: &str) -> Result<TaskId, Error> {
    id.parse()
        .map(TaskId)
        .map_err(|_| Error::NotFound(format!("no task {id:?}: task ids are decimal numbers")))
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "state",
    summary = "Where a task stands",
    params(
        ("id" = u64, Path, description = "The task id (decimal)")
    ),
    responses(
        (status = 200, description = "The task, its challenge and verdicts", body = api::TaskStatus),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn task_status(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    json(&c.task_status(task_id(&id)?).await?)
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/submit",
    tag = "work",
    summary = "Submit a task's work",
    params(
        ("id" = u64, Path, description = "The task id (decimal)")
    ),
    request_body = api::Submission,
    responses(
        (status = 200, description = "The commitment is logged (`WorkCommitted`); the challenge derived after it", body = api::SubmissionReceipt),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
        (status = 507, response = openapi::InsufficientStorage)
    )
)]
async fn submit(
    State(c): State<Shared>,
    Path(id): Path<String>,
    req: Signed<api::Submission, SubmitRoute>,
) -> ApiResult {
    json(&c.submit(req.key, task_id(&id)?, req.body).await?)
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/opening",
    tag = "work",
    summary = "Answer a task's challenge",
    params(
        ("id" = u64, Path, description = "The task id (decimal)")
    ),
    request_body(
        content = Vec<u8>,
        content_type = "application/octet-stream",
        description = "The opening in its canonical binary encoding (`lupus_prover::task::Opening::to_bytes`): the magic `lupusop2`, then the opening in postcard"
    ),
    responses(
        (status = 200, description = "The opening is stored; its blob hash", body = api::OpeningReceipt),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
        (status = 507, response = openapi::InsufficientStorage)
    )
)]
async fn opening(
    State(c): State<Shared>,
    Path(id): Path<String>,
    req: SignedUpload<OpeningRoute>,
) -> ApiResult {
    json(&c.opening(req.key, task_id(&id)?, req.body).await?)
}

#[utoipa::path(
    post,
    path = "/v1/verify/next",
    tag = "work",
    summary = "Ask for a task to verify",
    request_body = api::NextRequest,
    responses(
        (status = 200, description = "A task to replay (its `ChallengeIssued` logged first), or how long to wait", body = api::VerifyOffer),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 429, response = openapi::TooManyRequests),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn next_verify(
    State(c): State<Shared>,
    req: Signed<api::NextRequest, VerifyClaimRoute>,
) -> ApiResult {
    json(&c.next_verify(req.key).await?)
}

#[utoipa::path(
    post,
    path = "/v1/verify/{id}/verdict",
    tag = "work",
    summary = "A verifier's verdict on a task",
    params(
        ("id" = u64, Path, description = "The task id (decimal)")
    ),
    request_body = api::VerdictSubmission,
    responses(
        (status = 200, description = "The verdict is logged; what the coordinator made of it", body = api::VerdictReceipt),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 408, response = openapi::Timeout),
        (status = 413, response = openapi::TooLarge),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn verdict(
    State(c): State<Shared>,
    Path(id): Path<String>,
    req: Signed<api::VerdictSubmission, VerdictRoute>,
) -> ApiResult {
    json(&c.verdict(req.key, task_id(&id)?, req.body).await?)
}

#[utoipa::path(
    get,
    path = "/v1/rounds",
    tag = "state",
    summary = "Every round",
    responses(
        (status = 200, description = "The rounds, oldest first", body = api::RoundList)
    )
)]
async fn rounds(State(c): State<Shared>) -> ApiResult {
    json(&c.rounds().await?)
}

#[utoipa::path(
    get,
    path = "/v1/rounds/current",
    tag = "state",
    summary = "The latest round",
    responses(
        (status = 200, description = "The latest round", body = api::RoundStatus),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn round_current(State(c): State<Shared>) -> ApiResult {
    json(&c.round(None).await?)
}

#[utoipa::path(
    get,
    path = "/v1/rounds/{n}",
    tag = "state",
    summary = "One round",
    params(
        ("n" = u64, Path, description = "The round number (decimal)")
    ),
    responses(
        (status = 200, description = "The round", body = api::RoundStatus),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn round(State(c): State<Shared>, Path(n): Path<String>) -> ApiResult {
    let n: u64 = n
        .parse()
        .map_err(|_| Error::NotFound(format!("no round {n:?}")))?;
    json(&c.round(Some(Round(n))).await?)
}

#[utoipa::path(
    get,
    path = "/v1/entries/{index}",
    tag = "log",
    summary = "A log entry, decoded",
    params(
        ("index" = u64, Path, description = "The entry's log index (decimal)")
    ),
    responses(
        (status = 200, description = "The entry and its RFC 9162 leaf hash", body = api::EntryView),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn entry(State(c): State<Shared>, Path(index): Path<String>) -> ApiResult {
    let index: u64 = index
        .parse()
        .map_err(|_| Error::NotFound(format!("no entry {index:?}")))?;
    let size = c.log().head().size.0;
    if index >= size {
        return Err(Error::NotFound(format!(
            "entry {index} is past the log's size {size}"
        )));
    }
    let bytes = c
        .log()
        .entries(LeafIndex(index), LeafIndex(index + 1))
        .await
        .map_err(internal)?;
    let raw = bytes
        .first()
        .ok_or_else(|| Error::Internal("entry missing".into()))?;
    let e = Entry::decode(raw).map_err(internal)?;
    json(&api::EntryView {
        index,
        leaf_hash: leaf_hash(raw).to_hex(),
        entry: e,
    })
}

/// `?index=N&size=M`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InclusionQuery {
    /// The leaf's index.
    index: u64,
    /// The tree size the proof leads to; the log's current size if absent.
    size: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/proof/inclusion",
    tag = "log",
    summary = "An RFC 9162 inclusion proof",
    params(
        InclusionQuery
    ),
    responses(
        (status = 200, description = "The audit path of leaf `index` in the tree of `size`", body = lupus_ledger::proof::InclusionProof),
        (status = 400, response = openapi::BadRequest)
    )
)]
async fn inclusion(
    State(c): State<Shared>,
    q: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| Error::Malformed(format!("expected ?index=N&size=M: {e}")))?;
    let size = q.size.unwrap_or(c.log().head().size.0);
    let p = c
        .log()
        .inclusion_proof(LeafIndex(q.index), TreeSize(size))
        .await
        .map_err(|e| Error::Malformed(e.to_string()))?;
    json(&p)
}

/// `?old=N&new=M`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyQuery {
    /// The older tree size.
    old: u64,
    /// The newer tree size; the log's current size if absent.
    new: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/proof/consistency",
    tag = "log",
    summary = "An RFC 9162 consistency proof",
    params(
        ConsistencyQuery
    ),
    responses(
        (status = 200, description = "Proof that the tree of `old` is a prefix of the tree of `new`", body = lupus_ledger::proof::ConsistencyProof),
        (status = 400, response = openapi::BadRequest)
    )
)]
async fn consistency(
    State(c): State<Shared>,
    q: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| Error::Malformed(format!("expected ?old=N&new=M: {e}")))?;
    let new = q.new.unwrap_or(c.log().head().size.0);
    let p = c
        .log()
        .consistency_proof(TreeSize(q.old), TreeSize(new))
        .await
        .map_err(|e| Error::Malformed(e.to_string()))?;
    json(&p)
}

#[utoipa::path(
    get,
    path = "/v1/stake",
    tag = "state",
    summary = "The stake table",
    responses(
        (status = 200, description = "The balances the latest `SharesEpoch` commits", body = api::StakeTable)
    )
)]
async fn stake_table(State(c): State<Shared>) -> ApiResult {
    json(&c.stake_table().await?)
}

#[utoipa::path(
    get,
    path = "/v1/stake/{key}",
    tag = "state",
    summary = "One account's stake statement",
    params(
        ("key" = String, Path, description = "The account's Ed25519 public key, 64 hex digits")
    ),
    responses(
        (status = 200, description = "A statement verifiable offline with the log's key (`lupus-audit stake`)", body = lupus_ledger::stake::StakeStatement),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn stake(State(c): State<Shared>, Path(key): Path<String>) -> ApiResult {
    let key = PublicKey::from_hex(&key)
        .map_err(|e| Error::Malformed(format!("expected a key as 64 hex digits: {e}")))?;
    json(&c.stake_statement(key).await?)
}

#[utoipa::path(
    get,
    path = "/v1/blobs/{hash}",
    tag = "state",
    summary = "A content-addressed blob",
    params(
        ("hash" = String, Path, description = "The blob's blake3 hash, 64 hex digits")
    ),
    responses(
        (status = 200, description = "The blob (a model, the dataset, an opening; immutable: cached for a year)", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound)
    )
)]
async fn blob(State(c): State<Shared>, Path(hash): Path<String>) -> ApiResult {
    let hash = Digest::from_hex(&hash)
        .map_err(|e| Error::Malformed(format!("expected a blake3 hash as 64 hex digits: {e}")))?;
    let Some(data) = c.blob(hash).await? else {
        let why = c.pruned_blob(hash).await;
        return Err(Error::NotFound(
            why.unwrap_or_else(|| format!("no blob {hash}")),
        ));
    };
    Ok(immutable(data))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "The Prometheus text format, version 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")
    )
)]
async fn metrics(State(c): State<Shared>) -> ApiResult {
    let text = c.metrics.encode(c.log().head().size.0).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json")
    )
)]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
        .into_response()
}
