//! The volunteer page and its wasm build are served precompressed and cacheable
//! (issue 11, "Static files and caching"), and paths stay inside their directories.

mod common;

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use common::*;
use lupus_coordinator::engine::Coordinator;
use lupus_coordinator::page::{PAGE_CACHE, PKG_CACHE};
use lupus_coordinator::routes::router;
use tower::ServiceExt;

async fn get(
    app: &axum::Router,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut r = Request::get(path);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    let resp = app
        .clone()
        .oneshot(r.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        to_bytes(body, usize::MAX).await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn the_wasm_is_sent_precompressed_with_caching_headers() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(config(dir.path(), 1, 1), corpus())
        .await
        .unwrap();
    let page = tempfile::tempdir().unwrap();
    let (www, pkg) = (page.path().join("www"), page.path().join("pkg"));
    std::fs::create_dir(&www).unwrap();
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html>").unwrap();
    std::fs::write(page.path().join("secret"), "outside").unwrap();
    std::fs::write(pkg.join("x.wasm"), b"\0asm plain").unwrap();
    std::fs::write(pkg.join("x.wasm.br"), b"brotli bytes").unwrap();
    std::fs::write(pkg.join("x.wasm.gz"), b"gzip bytes").unwrap();
    let app = router(Arc::clone(&c), Some(www));

    let (s, h, body) = get(&app, "/pkg/x.wasm", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, b"brotli bytes");
    assert_eq!(h[header::CONTENT_ENCODING], "br");
    assert_eq!(h[header::CONTENT_TYPE], "application/wasm");
    assert_eq!(h[header::CACHE_CONTROL], PKG_CACHE);
    assert_eq!(h[header::VARY], "accept-encoding");
    let modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();

    let (_, h, body) = get(&app, "/pkg/x.wasm", &[("accept-encoding", "gzip")]).await;
    assert_eq!(body, b"gzip bytes");
    assert_eq!(h[header::CONTENT_ENCODING], "gzip");
    let (_, h, body) = get(&app, "/pkg/x.wasm", &[]).await;
    assert_eq!(body, b"\0asm plain");
    assert!(h.get(header::CONTENT_ENCODING).is_none());

    // Revalidation: unchanged since Last-Modified is a 304 without a body.
    let (s, h, body) = get(&app, "/pkg/x.wasm", &[("if-modified-since", &modified)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h[header::CACHE_CONTROL], PKG_CACHE);

    // The page: revalidated each time.
    for path in ["/", "/index.html"] {
        let (s, h, body) = get(&app, path, &[]).await;
        assert_eq!(
            (s, body.as_slice()),
            (StatusCode::OK, &b"<!doctype html>"[..]),
            "{path}"
        );
        assert_eq!(h[header::CACHE_CONTROL], PAGE_CACHE);
        assert!(h.contains_key(header::LAST_MODIFIED));
    }

    // Nothing outside the directories, and a missing file is the API's 404 problem
    // without caching headers.
    for path in [
        "/../secret",
        "/pkg/../secret",
        "/pkg/..%2fsecret",
        "/%2e%2e/secret",
        "/missing.js",
    ] {
        let (s, h, body) = get(&app, path, &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_ne!(body, b"outside", "{path}");
        assert!(h.get(header::CACHE_CONTROL).is_none(), "{path}");
    }
    let (_, h, _) = get(&app, "/missing.js", &[]).await;
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
}
