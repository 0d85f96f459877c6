//! The volunteer page (`worker-wasm/www/`) at `/` and `/{file}`, and its wasm build
//! (`worker-wasm/pkg/`) under `/pkg/`, served from disk by tower-http's `ServeDir`.
//!
//! - When the client accepts it, the `.br` or `.gz` file that `worker-wasm/build.sh`
//!   writes next to each file is sent with `Content-Encoding` (and `Vary:
//!   Accept-Encoding`), so the wasm travels compressed without compressing per request.
//! - `Last-Modified`, and `If-Modified-Since` answered 304.
//! - `Cache-Control`: [`PAGE_CACHE`] for the page (a browser asks again each time and is
//!   answered 304 while nothing changed, so a new page shows at once), [`PKG_CACHE`] for
//!   the wasm build (reused for an hour without asking, then revalidated: the build's
//!   file names carry no content hash, so a longer life would keep an old worker).
//! - `ServeDir` keeps every path inside its directory; a missing file is the API's
//!   404 problem.

use std::convert::Infallible;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, get_service};
use tower::ServiceBuilder;
use tower::service_fn;
use tower_http::services::ServeDir;
use tower_http::services::fs::ServeFileSystemResponseBody;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::Error;

/// `Cache-Control` of the page's files.
pub const PAGE_CACHE: &str = "no-cache";
/// `Cache-Control` of the wasm build's files.
pub const PKG_CACHE: &str = "public, max-age=3600, must-revalidate";

fn not_found() -> Response {
    Error::NotFound("no such endpoint; see /openapi.json".into()).into_response()
}

/// Adds the page's routes to `router`: the files of `www` (`worker-wasm/www/`, with
/// `pkg/` next to it), or the placeholder page and 404s when it is not built.
pub fn mount<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    www: Option<PathBuf>,
) -> Router<S> {
    let Some(www) = www else {
        return router
            .route("/", get(index))
            .route("/{file}", get(async || not_found()))
            .route("/pkg/{file}", get(async || not_found()));
    };
    let pkg = www.join("../pkg");
    router
        .route("/", files(www.clone(), PAGE_CACHE))
        .route("/{file}", files(www, PAGE_CACHE))
        .nest_service("/pkg", files::<()>(pkg, PKG_CACHE))
}

/// `dir` through `ServeDir` on `GET` and `HEAD`, with precompressed files, a 404
/// problem, `cache` as the `Cache-Control` of what it finds and `Vary: Accept-Encoding`.
fn files<S: Clone + Send + Sync + 'static>(dir: PathBuf, cache: &'static str) -> MethodRouter<S> {
    let found = move |r: &Response<ServeFileSystemResponseBody>| {
        (r.status().is_success() || r.status() == StatusCode::NOT_MODIFIED)
            .then_some(HeaderValue::from_static(cache))
    };
    let fallback = service_fn(|_: Request| async { Ok::<_, Infallible>(not_found()) });
    get_service(
        ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                found,
            ))
            .layer(SetResponseHeaderLayer::appending(
                header::VARY,
                HeaderValue::from_static("accept-encoding"),
            ))
            .service(
                ServeDir::new(dir)
                    .precompressed_br()
                    .precompressed_gzip()
                    .fallback(fallback),
            ),
    )
}

#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    summary = "The volunteer page",
    responses(
        (status = 200, description = "The page (or a placeholder naming how to build it)", body = String, content_type = "text/html")
    )
)]
pub(crate) async fn index() -> Response {
    let text = "<!doctype html><title>Lupus coordinator</title><h1>Lupus coordinator</h1>\
        <p>The volunteer page is not built. Build the web worker (see the README, \
        section \"Volunteer page\") and start the coordinator with <code>--web DIR</code>.</p>\
        <p>Meanwhile: <a href=\"/v1/rounds\">rounds</a>, <a href=\"/v1/stake\">stake</a>, \
        <a href=\"/checkpoint\">checkpoint</a>, <a href=\"/openapi.json\">API</a>.</p>";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], text).into_response()
}
