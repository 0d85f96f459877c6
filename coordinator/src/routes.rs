//! The HTTP API (DESIGN.md, "Coordinator"): thin axum handlers over the engine.
//!
//! - Reads: C2SP `tlog-tiles` (`/checkpoint`, `/tile/<L>/<N>`, `/tile/entries/<N>`),
//!   proofs, decoded entries, stake, rounds, tasks, blobs, `/openapi.json`,
//!   `/metrics`, and `/` (the volunteer page).
//! - Writes (`POST`): signed by the participant ([`lupus_api::sign`]); a stale
//!   signature is 401, a replayed nonce 409.
//! - Every error is RFC 9457 `application/problem+json`; bodies have size limits (413).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lupus_api::problem::{CONTENT_TYPE as PROBLEM, Problem};
use lupus_api::sign::verify_request;
use lupus_api::types as api;
use lupus_ledger::entry::{Digest, Entry, PublicKey, Round, TaskId};
use lupus_ledger::hash::{LeafIndex, TreeSize, leaf_hash};
use lupus_ledger::tiles::{TilePath, parse_tile_path};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::engine::{Coordinator, now_ms};
use crate::error::{ApiError, internal};

/// Body limit of small JSON requests (join, next).
pub const SMALL_BODY: usize = 64 << 10;
/// Body limit of a submission (the int8 delta, base64) and of a verdict (a fraud proof).
pub const SUBMIT_BODY: usize = 32 << 20;
/// Body limit of an opening (three copies of the state per challenged step, as JSON).
pub const OPENING_BODY: usize = 256 << 20;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem_response(&self.problem());
        if let Some(s) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM)], body).into_response()
}

type Shared = Arc<Coordinator>;
type ApiResult = Result<Response, ApiError>;

fn json<T: serde::Serialize>(value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "the request body is over this endpoint's limit: {e}"
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Checks a signed request and its nonce; returns the signer.
fn authenticate(
    c: &Coordinator,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PublicKey, ApiError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let now = now_ms();
    let v = verify_request(
        |name| headers.get(name).and_then(|v| v.to_str().ok()),
        method.as_str(),
        path,
        body,
        now,
    )
    .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    c.check_nonce(v.key, v.nonce, now)?;
    Ok(v.key)
}

/// The router over a coordinator. `page` is the volunteer page's directory, if built.
pub fn router(c: Shared, page: Option<std::path::PathBuf>) -> Router {
    let small = DefaultBodyLimit::max(SMALL_BODY);
    // The page's files next to index.html, and the wasm build (worker-wasm/pkg) at /pkg/.
    let files = page.clone();
    let pkg = page.as_ref().map(|d| d.join("../pkg"));
    Router::new()
        .route("/", get(move || index(page.clone())))
        .route(
            "/{file}",
            get(move |Path(f): Path<String>| static_file(files.clone(), f)),
        )
        .route(
            "/pkg/{file}",
            get(move |Path(f): Path<String>| static_file(pkg.clone(), f)),
        )
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/v1/job", get(job))
        .route("/v1/join", post(join).layer(small))
        .route("/v1/tasks/next", post(next_task).layer(small))
        .route("/v1/tasks/{id}", get(task_status))
        .route(
            "/v1/tasks/{id}/submit",
            post(submit).layer(DefaultBodyLimit::max(SUBMIT_BODY)),
        )
        .route(
            "/v1/tasks/{id}/opening",
            post(opening).layer(DefaultBodyLimit::max(OPENING_BODY)),
        )
        .route("/v1/verify/next", post(next_verify).layer(small))
        .route(
            "/v1/verify/{id}/verdict",
            post(verdict).layer(DefaultBodyLimit::max(SUBMIT_BODY)),
        )
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
            ApiError::NotFound("no such endpoint; see /openapi.json".into()).into_response()
        })
        .method_not_allowed_fallback(|| async {
            problem_response(&Problem::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not take that method; see /openapi.json",
            ))
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&c), count))
        .with_state(c)
}

async fn count(State(c): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &c.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    m.latency_us_total
        .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    if resp.status().is_client_error() {
        m.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if resp.status().is_server_error() {
        m.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

async fn index(page: Option<std::path::PathBuf>) -> Response {
    if let Some(dir) = page
        && let Ok(html) = tokio::fs::read_to_string(dir.join("index.html")).await
    {
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    }
    let text = "<!doctype html><title>Lupus coordinator</title><h1>Lupus coordinator</h1>\
        <p>The volunteer page is not built. Build the web worker (see the README, \
        section \"Volunteer page\") and start the coordinator with <code>--web DIR</code>.</p>\
        <p>Meanwhile: <a href=\"/v1/rounds\">rounds</a>, <a href=\"/v1/stake\">stake</a>, \
        <a href=\"/checkpoint\">checkpoint</a>, <a href=\"/openapi.json\">API</a>.</p>";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], text).into_response()
}

/// One file of the volunteer page (`worker-wasm/www/`) or of its wasm build
/// (`worker-wasm/pkg/`): plain names with a known extension only, so no path can leave
/// the directory.
async fn static_file(dir: Option<std::path::PathBuf>, name: String) -> Response {
    let not_found =
        || ApiError::NotFound("no such endpoint; see /openapi.json".into()).into_response();
    let kind = match name.rsplit_once('.').map(|(_, e)| e) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        _ => return not_found(),
    };
    let plain = !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    let Some(dir) = dir.filter(|_| plain) else {
        return not_found();
    };
    match tokio::fs::read(dir.join(&name)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        Err(_) => not_found(),
    }
}

async fn checkpoint(State(c): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        c.cosigned_checkpoint(),
    )
        .into_response()
}

async fn tile(State(c): State<Shared>, Path(path): Path<String>) -> ApiResult {
    let full = format!("tile/{path}");
    let parsed = parse_tile_path(&full).map_err(|e| ApiError::NotFound(e.to_string()))?;
    let data = match parsed {
        TilePath::Hashes(t) => c.log().tile(&t).await,
        TilePath::Entries(b) => c.log().entry_bundle(&b).await,
    }
    .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(resp)
}

async fn job(State(c): State<Shared>) -> ApiResult {
    json(&c.job_info()?)
}

async fn join(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    json(&c.join(key, parse(&body)?).await?)
}

async fn next_task(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    let _: api::NextRequest = parse(&body)?;
    json(&c.next_task(key).await?)
}

fn task_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map(TaskId)
        .map_err(|_| ApiError::NotFound(format!("no task {id:?}: task ids are decimal numbers")))
}

async fn task_status(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    json(&c.task_status(task_id(&id)?).await?)
}

async fn submit(
    State(c): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    let id = task_id(&id)?;
    json(&c.submit(key, id, parse(&body)?).await?)
}

async fn opening(
    State(c): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    let id = task_id(&id)?;
    json(&c.opening(key, id, parse(&body)?).await?)
}

async fn next_verify(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    let _: api::NextRequest = parse(&body)?;
    json(&c.next_verify(key).await?)
}

async fn verdict(
    State(c): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    let key = authenticate(&c, &method, &uri, &headers, &body)?;
    let id = task_id(&id)?;
    json(&c.verdict(key, id, parse(&body)?).await?)
}

async fn rounds(State(c): State<Shared>) -> ApiResult {
    json(&c.rounds().await)
}

async fn round_current(State(c): State<Shared>) -> ApiResult {
    json(&c.round(None).await?)
}

async fn round(State(c): State<Shared>, Path(n): Path<String>) -> ApiResult {
    let n: u64 = n
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no round {n:?}")))?;
    json(&c.round(Some(Round(n))).await?)
}

async fn entry(State(c): State<Shared>, Path(index): Path<String>) -> ApiResult {
    let index: u64 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no entry {index:?}")))?;
    let size = c.log().head().size.0;
    if index >= size {
        return Err(ApiError::NotFound(format!(
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
        .ok_or_else(|| ApiError::Internal("entry missing".into()))?;
    let e = Entry::decode(raw).map_err(internal)?;
    json(&api::EntryView {
        index,
        leaf_hash: leaf_hash(raw).to_hex(),
        entry: e,
    })
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

async fn inclusion(
    State(c): State<Shared>,
    q: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("expected ?index=N&size=M: {e}")))?;
    let size = q.size.unwrap_or(c.log().head().size.0);
    let p = c
        .log()
        .inclusion_proof(LeafIndex(q.index), TreeSize(size))
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    json(&p)
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

async fn consistency(
    State(c): State<Shared>,
    q: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("expected ?old=N&new=M: {e}")))?;
    let new = q.new.unwrap_or(c.log().head().size.0);
    let p = c
        .log()
        .consistency_proof(TreeSize(q.old), TreeSize(new))
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    json(&p)
}

async fn stake_table(State(c): State<Shared>) -> ApiResult {
    json(&c.stake_table().await)
}

async fn stake(State(c): State<Shared>, Path(key): Path<String>) -> ApiResult {
    let key = PublicKey::from_hex(&key)
        .map_err(|e| ApiError::BadRequest(format!("expected a key as 64 hex digits: {e}")))?;
    json(&c.stake_statement(key).await?)
}

async fn blob(State(c): State<Shared>, Path(hash): Path<String>) -> ApiResult {
    let hash = Digest::from_hex(&hash).map_err(|e| {
        ApiError::BadRequest(format!("expected a blake3 hash as 64 hex digits: {e}"))
    })?;
    let data = c
        .blobs()
        .get(&hash)
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no blob {hash}")))?;
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(resp)
}

async fn metrics(State(c): State<Shared>) -> Response {
    let m = &c.metrics;
    let head = c.log().head();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "lupus_http_requests_total",
        "counter",
        "HTTP requests answered.",
        g(&m.requests),
    );
    metric(
        "lupus_http_client_errors_total",
        "counter",
        "4xx answers.",
        g(&m.client_errors),
    );
    metric(
        "lupus_http_server_errors_total",
        "counter",
        "5xx answers.",
        g(&m.server_errors),
    );
    metric(
        "lupus_http_latency_microseconds_total",
        "counter",
        "Sum of request handling times.",
        g(&m.latency_us_total),
    );
    metric(
        "lupus_submissions_total",
        "counter",
        "Work commitments logged.",
        g(&m.submissions),
    );
    metric(
        "lupus_verdicts_total",
        "counter",
        "Verifier verdicts logged.",
        g(&m.verdicts),
    );
    metric(
        "lupus_slashes_total",
        "counter",
        "Keys slashed.",
        g(&m.slashes),
    );
    metric(
        "lupus_rounds_closed_total",
        "counter",
        "Rounds closed.",
        g(&m.rounds_closed),
    );
    metric(
        "lupus_tasks_expired_total",
        "counter",
        "Tasks expired and reassigned.",
        g(&m.tasks_expired),
    );
    metric(
        "lupus_log_size",
        "gauge",
        "Entries in the log.",
        head.size.0,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}
