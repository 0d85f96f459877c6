//! The HTTP API driven through `Router::oneshot` (no socket): bad input on every
//! mutating endpoint is a 4xx `application/problem+json` and writes nothing to the
//! ledger; the read endpoints answer; the OpenAPI document lists every route, names no
//! schema it lacks, and describes the bodies a whole round really sends and receives;
//! `/metrics` is Prometheus text that counts requests per route template.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use common::*;
use ed25519_dalek::SigningKey;
use lupus_api::sign::sign_request;
use lupus_api::types::{self as api, B64, Sig, TaskOffer, work_committed_body};
use lupus_coordinator::engine::{Coordinator, Env, ManualEnv, now_ms};
use lupus_coordinator::routes::router;
use lupus_ledger::entry::{Entry, PublicKey, Role, Round, TaskId};
use lupus_ledger::hash::LeafIndex;
use lupus_prover::model::init_params;
use lupus_prover::quant::{QTensor, QuantDelta};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::run_task;
use lupus_prover::verify::{DeviceClass, dispute_op};
use serde_json::Value;
use tower::ServiceExt;

struct Harness {
    app: Router,
    c: Arc<Coordinator>,
    _dir: tempfile::TempDir,
}

fn signed(key: &SigningKey, path: &str, body: Vec<u8>, ts: u64, nonce: [u8; 16]) -> Request<Body> {
    let h = sign_request(key, "POST", path, &body, ts, nonce);
    let mut r = Request::builder().method("POST").uri(path);
    for (n, v) in h.pairs() {
        r = r.header(n, v);
    }
    r.body(Body::from(body)).unwrap()
}

fn fresh_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).unwrap();
    n
}

impl Harness {
    async fn new() -> Harness {
        Harness::with(2, 3).await
    }

    async fn with(rounds: u64, tasks: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::open(config(dir.path(), rounds, tasks), corpus())
            .await
            .unwrap();
        Harness {
            app: router(Arc::clone(&c), None),
            c,
            _dir: dir,
        }
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, ct, body)
    }

    async fn post(
        &self,
        key: &SigningKey,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        self.call(signed(key, path, body, now_ms(), fresh_nonce()))
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, String, Vec<u8>) {
        self.call(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// Sends `path` (a GET, or a POST of `signed`'s body signed by its key) to the
    /// route the document lists as `template`; checks the request body and the answer
    /// against the document's schemas for that route, status and content type.
    async fn exchange(
        &self,
        doc: &Value,
        template: &str,
        path: &str,
        signed: Option<(&SigningKey, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let method = if signed.is_some() { "post" } else { "get" };
        let op = &doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let req = match signed {
            Some((key, body)) => {
                let content = &op["requestBody"]["content"];
                if content["application/json"].is_object() {
                    let schema = &content["application/json"]["schema"];
                    let value: Value = serde_json::from_slice(&body).unwrap();
                    conforms(doc, schema, &value)
                        .unwrap_or_else(|e| panic!("request to {path}: {e}"));
                } else {
                    // Binary bodies (the opening): documented as bytes, decoded by the
                    // route itself.
                    let bytes = &content["application/octet-stream"]["schema"];
                    assert_eq!(bytes["type"], "array", "{template}: {content}");
                }
                signed_request(key, path, body)
            }
            None => Request::get(path).body(Body::empty()).unwrap(),
        };
        let (status, ct, body) = self.call(req).await;
        let answer = response(doc, &op["responses"][status.as_str()]);
        let schema = &answer["content"][&ct]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template}: {status} {ct} is not documented: {}",
            String::from_utf8_lossy(&body)
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        conforms(doc, schema, &value).unwrap_or_else(|e| panic!("answer of {path}: {e}\n{value}"));
        (status, value)
    }

    fn size(&self) -> u64 {
        self.c.log().head().size.0
    }

    /// Asserts a problem+json answer with `status` that wrote nothing.
    async fn refused(&self, req: Request<Body>, status: u16, what: &str) {
        let before = self.size();
        let (s, ct, body) = self.call(req).await;
        assert_eq!(
            s.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(ct, "application/problem+json", "{what}");
        let p: lupus_api::problem::Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.status, status, "{what}");
        assert!(!p.detail.is_empty(), "{what}");
        assert_eq!(self.size(), before, "{what} wrote to the ledger");
    }

    async fn join(&self, key: &SigningKey, role: Role) {
        let e = Entry::signed(api::join_body(PublicKey::from(key), role, "t"), key).unwrap();
        let req = api::JoinRequest {
            role,
            name: "t".into(),
            signature: Sig(*e.signature().unwrap()),
        };
        let (s, _, b) = self
            .post(key, "/v1/join", serde_json::to_vec(&req).unwrap())
            .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    }
}

fn signed_request(key: &SigningKey, path: &str, body: Vec<u8>) -> Request<Body> {
    signed(key, path, body, now_ms(), fresh_nonce())
}

fn req(key: &SigningKey, path: &str, body: &[u8]) -> Request<Body> {
    signed(key, path, body.to_vec(), now_ms(), fresh_nonce())
}

#[tokio::test]
async fn bad_requests_are_problems_and_write_nothing() {
    let h = Harness::new().await;
    let w = key(1);
    let other = key(2);
    // Unsigned, badly signed, stale and replayed requests.
    h.refused(
        Request::post("/v1/tasks/next")
            .body(Body::from("{}"))
            .unwrap(),
        401,
        "unsigned",
    )
    .await;
    let mut bad = signed(
        &w,
        "/v1/tasks/next",
        b"{}".to_vec(),
        now_ms(),
        fresh_nonce(),
    );
    *bad.uri_mut() = "/v1/verify/next".parse().unwrap();
    h.refused(bad, 401, "signature over another path").await;
    let stale = signed(
        &w,
        "/v1/tasks/next",
        b"{}".to_vec(),
        now_ms() - 3_600_000,
        fresh_nonce(),
    );
    h.refused(stale, 401, "stale").await;
    // Malformed bodies.
    h.refused(req(&w, "/v1/join", b"{not json"), 400, "malformed join")
        .await;
    h.refused(
        req(
            &w,
            "/v1/join",
            br#"{"role":"worker","name":"x","signature":"00"}"#,
        ),
        400,
        "short signature",
    )
    .await;
    let forged = api::JoinRequest {
        role: Role::Worker,
        name: "x".into(),
        signature: Sig([7; 64]),
    };
    h.refused(
        req(&w, "/v1/join", &serde_json::to_vec(&forged).unwrap()),
        400,
        "forged join",
    )
    .await;
    h.refused(
        req(&key(42), "/v1/join", &vec![b' '; 100 << 10]),
        413,
        "oversized",
    )
    .await;
    // Not joined yet.
    h.refused(req(&w, "/v1/tasks/next", b"{}"), 403, "not joined")
        .await;
    h.join(&w, Role::Worker).await;
    h.join(&other, Role::Worker).await;
    // Replays: the same signed request twice.
    let body = b"{}".to_vec();
    let (ts, nonce) = (now_ms(), fresh_nonce());
    let (s, _, _) = h
        .call(signed(&w, "/v1/tasks/next", body.clone(), ts, nonce))
        .await;
    assert_eq!(s, StatusCode::OK);
    h.refused(signed(&w, "/v1/tasks/next", body, ts, nonce), 409, "replay")
        .await;
    h.refused(
        req(&w, "/v1/tasks/next", br#"{"x":1}"#),
        400,
        "unknown field",
    )
    .await;
    // A join under another role with the same key.
    let e = Entry::signed(api::join_body(PublicKey::from(&w), Role::Verifier, "t"), &w).unwrap();
    let j = api::JoinRequest {
        role: Role::Verifier,
        name: "t".into(),
        signature: Sig(*e.signature().unwrap()),
    };
    h.refused(
        req(&w, "/v1/join", &serde_json::to_vec(&j).unwrap()),
        409,
        "second role",
    )
    .await;
    h.refused(req(&w, "/v1/verify/next", b"{}"), 403, "worker as verifier")
        .await;

    // The worker's task, and a real run of it to build submissions from.
    let (_, _, b) = h.post(&w, "/v1/tasks/next", b"{}".to_vec()).await;
    let TaskOffer::Task(task) = serde_json::from_slice(&b).unwrap() else {
        panic!("no task: {}", String::from_utf8_lossy(&b));
    };
    let job = JobSpec::parse(TINY).unwrap();
    let base = init_params(&job.model, job.hash().0).unwrap();
    let run = run_task(&job, &corpus(), &base, task.seed.0, &mut |_, _| {}).unwrap();
    let path = format!("/v1/tasks/{}/submit", task.task_id);
    let submission = |delta: &QuantDelta, signer: &SigningKey, id: u64| {
        let mut c = run.commitment;
        c.delta_hash = lupus_prover::merkle::Digest(delta.hash());
        let entry = Entry::signed(
            work_committed_body(TaskId(id), PublicKey::from(signer), &c),
            signer,
        )
        .unwrap();
        serde_json::to_vec(&api::Submission {
            work_committed: B64(entry.encode()),
            delta: B64(delta.to_bytes()),
            final_opening: run.final_opening().unwrap(),
            device_class: DeviceClass::Exact,
        })
        .unwrap()
    };
    let honest = submission(&run.delta, &w, task.task_id.0);
    h.refused(
        req(&w, "/v1/tasks/999/submit", &honest),
        404,
        "unknown task",
    )
    .await;
    h.refused(
        req(&w, "/v1/tasks/abc/submit", &honest),
        404,
        "non-numeric task",
    )
    .await;
    h.refused(
        req(
            &other,
            &path,
            &submission(&run.delta, &other, task.task_id.0),
        ),
        403,
        "someone else's task",
    )
    .await;
    h.refused(
        req(&w, &path, br#"{"work_committed":"!!"}"#),
        400,
        "bad base64",
    )
    .await;
    let wrong_shape = QuantDelta {
        tensors: vec![QTensor {
            shape: vec![2],
            scale: 1.0,
            values: vec![1, 1],
        }],
    };
    h.refused(
        req(&w, &path, &submission(&wrong_shape, &w, task.task_id.0)),
        422,
        "wrong shapes",
    )
    .await;
    for bits in [f32::NAN.to_bits(), f32::INFINITY.to_bits()] {
        // Overwrite the first tensor's scale (after count, ndim and dims) in the bytes.
        let mut bytes = run.delta.to_bytes();
        let ndim = run.delta.tensors[0].shape.len();
        let at = 4 + 4 + 8 * ndim;
        bytes[at..at + 4].copy_from_slice(&bits.to_le_bytes());
        let mut v: serde_json::Value = serde_json::from_slice(&honest).unwrap();
        v["delta"] = serde_json::to_value(B64(bytes)).unwrap();
        h.refused(
            req(&w, &path, &serde_json::to_vec(&v).unwrap()),
            422,
            "non-finite delta",
        )
        .await;
    }
    // A delta that is not the committed one.
    let mut v: serde_json::Value = serde_json::from_slice(&honest).unwrap();
    let mut tampered = run.delta.clone();
    tampered.tensors[0].values[0] = tampered.tensors[0].values[0]
        .wrapping_add(1)
        .clamp(-127, 127);
    v["delta"] = serde_json::to_value(B64(tampered.to_bytes())).unwrap();
    h.refused(
        req(&w, &path, &serde_json::to_vec(&v).unwrap()),
        422,
        "delta not committed",
    )
    .await;
    // An entry signed by another key for this worker.
    let mut v: serde_json::Value = serde_json::from_slice(&honest).unwrap();
    v["work_committed"] = serde_json::to_value(B64(vec![1, 5, 0])).unwrap();
    h.refused(
        req(&w, &path, &serde_json::to_vec(&v).unwrap()),
        400,
        "truncated entry",
    )
    .await;
    let early = run
        .open(&job, &corpus(), &[0, 1], false, &w)
        .unwrap()
        .to_bytes();
    h.refused(
        req(&w, &format!("/v1/tasks/{}/opening", task.task_id), &early),
        409,
        "opening before submit",
    )
    .await;
    let verdict = |signer: &SigningKey| {
        let e = Entry::signed(
            api::verdict_body(
                task.task_id,
                PublicKey::from(signer),
                true,
                vec![0],
                "ok",
                None,
            ),
            signer,
        )
        .unwrap();
        serde_json::to_vec(&api::VerdictSubmission {
            verdict: B64(e.encode()),
            fraud_proof: None,
        })
        .unwrap()
    };
    h.refused(
        req(
            &w,
            &format!("/v1/verify/{}/verdict", task.task_id),
            &verdict(&w),
        ),
        403,
        "verdict from a worker",
    )
    .await;

    // The honest submission is accepted, once.
    let before = h.size();
    let (s, _, b) = h.post(&w, &path, honest.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h.size(), before + 1);
    h.refused(req(&w, &path, &honest), 409, "second submission")
        .await;
    let op = format!("/v1/tasks/{}/opening", task.task_id);
    h.refused(req(&w, &op, b"{\"leaves\":[]}"), 400, "an opening as JSON")
        .await;
    let mut long = early.clone();
    long.push(0);
    h.refused(
        req(&w, &op, &long),
        400,
        "an opening not in its canonical encoding",
    )
    .await;
    h.refused(
        req(&w, &op, &early[..early.len() - 1]),
        400,
        "a truncated opening",
    )
    .await;
    h.refused(
        req(&w, &op, &early),
        422,
        "opening of steps that were not challenged",
    )
    .await;
    // Each refused upload was streamed to a temporary file of the blob store, and
    // none is left behind.
    let left: Vec<_> = std::fs::read_dir(h.c.blobs().dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // A verifier's bad verdicts.
    let v = key(3);
    h.join(&v, Role::Verifier).await;
    h.refused(
        req(
            &v,
            &format!("/v1/verify/{}/verdict", task.task_id),
            &verdict(&v),
        ),
        403,
        "unchallenged verdict",
    )
    .await;
    h.refused(
        req(&v, "/v1/verify/12345/verdict", &verdict(&v)),
        404,
        "verdict on an unknown task",
    )
    .await;
}

#[tokio::test]
async fn reads_answer_and_errors_are_problems() {
    let h = Harness::new().await;
    for path in [
        "/checkpoint",
        "/v1/job",
        "/v1/rounds",
        "/v1/rounds/current",
        "/v1/stake",
        "/openapi.json",
        "/metrics",
        "/",
        "/v1/entries/0",
        "/v1/proof/inclusion?index=0",
        "/v1/proof/consistency?old=1",
        "/tile/0/000.p/2",
        "/tile/entries/000.p/2",
    ] {
        let (s, _, b) = h.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&b));
    }
    for (path, status) in [
        ("/nope", 404),
        ("/v1/entries/99999", 404),
        ("/v1/entries/x", 404),
        ("/tile/9/000", 404),
        ("/tile/0/x", 404),
        ("/v1/proof/inclusion?index=99999", 400),
        ("/v1/proof/inclusion", 400),
        ("/v1/stake/zz", 400),
        (
            "/v1/stake/0000000000000000000000000000000000000000000000000000000000000000",
            404,
        ),
        (
            "/v1/blobs/0000000000000000000000000000000000000000000000000000000000000000",
            404,
        ),
        ("/v1/rounds/77", 404),
        ("/v1/tasks/5", 404),
    ] {
        h.refused(
            Request::get(path).body(Body::empty()).unwrap(),
            status,
            path,
        )
        .await;
    }
    h.refused(
        Request::get("/v1/join").body(Body::empty()).unwrap(),
        405,
        "GET on a POST route",
    )
    .await;
    let (s, ct, body) = h.get("/openapi.json").await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route of the router, in the router's own spelling of its parameters.
    let routes = [
        ("get", "/"),
        ("get", "/{file}"),
        ("get", "/pkg/{file}"),
        ("get", "/checkpoint"),
        ("get", "/tile/{path}"),
        ("get", "/v1/job"),
        ("post", "/v1/join"),
        ("post", "/v1/tasks/next"),
        ("get", "/v1/tasks/{id}"),
        ("post", "/v1/tasks/{id}/submit"),
        ("post", "/v1/tasks/{id}/opening"),
        ("post", "/v1/verify/next"),
        ("post", "/v1/verify/{id}/verdict"),
        ("get", "/v1/rounds"),
        ("get", "/v1/rounds/current"),
        ("get", "/v1/rounds/{n}"),
        ("get", "/v1/entries/{index}"),
        ("get", "/v1/proof/inclusion"),
        ("get", "/v1/proof/consistency"),
        ("get", "/v1/stake"),
        ("get", "/v1/stake/{key}"),
        ("get", "/v1/blobs/{hash}"),
        ("get", "/openapi.json"),
        ("get", "/metrics"),
    ];
    for (method, p) in routes {
        let op = &doc["paths"][p][method];
        assert!(op.is_object(), "{method} {p} missing from /openapi.json");
        // Path parameters are declared, and signed POSTs name the four headers.
        for name in p.split('{').skip(1).filter_map(|x| x.split('}').next()) {
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|q| q["name"] == name && q["in"] == "path"),
                "{method} {p}: no path parameter {name}"
            );
        }
        if method == "post" {
            let req = op["security"][0].as_object().unwrap();
            assert_eq!(req.len(), 5, "{p}: {req:?}");
            for scheme in lupus_coordinator::openapi::SIGNATURE_SCHEMES {
                assert!(req.contains_key(scheme), "{p}: {scheme}");
                assert!(
                    doc["components"]["securitySchemes"][scheme]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("lupus-")),
                    "{scheme}"
                );
            }
        }
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "the document has operations the router lacks"
    );
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("lupus request v1"),
        "the signing scheme is described"
    );
    // No dangling `$ref`, and every JSON body (request, answer, problem) has a schema.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "{}", refs.len());
    for r in &refs {
        let (kind, name) = r
            .strip_prefix("#/components/")
            .and_then(|r| r.split_once('/'))
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            ["schemas", "responses"].contains(&kind) && doc["components"][kind].get(name).is_some(),
            "dangling $ref {r}"
        );
    }
    let mut json_bodies = 0;
    for (p, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut contents = vec![&op["requestBody"]["content"]];
            contents.extend(
                op["responses"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|r| &response(&doc, r)["content"]),
            );
            for (media, body) in contents.into_iter().filter_map(|c| c.as_object()).flatten() {
                if media.contains("json") {
                    json_bodies += 1;
                    assert!(
                        body["schema"].is_object(),
                        "{method} {p}: {media} has no schema"
                    );
                }
            }
        }
    }
    assert!(json_bodies > 60, "{json_bodies}");
}

#[tokio::test]
async fn documented_routes_are_served() {
    let mut h = Harness::new().await;
    // A volunteer page, so that the static routes answer 200 rather than the 404 the
    // fallback also gives.
    let page = tempfile::tempdir().unwrap();
    std::fs::create_dir(page.path().join("www")).unwrap();
    std::fs::create_dir(page.path().join("pkg")).unwrap();
    std::fs::write(page.path().join("www/index.html"), "<!doctype html>").unwrap();
    std::fs::write(page.path().join("pkg/lupus.js"), "export {}").unwrap();
    h.app = router(Arc::clone(&h.c), Some(page.path().join("www")));
    let doc: Value = serde_json::from_slice(&h.get("/openapi.json").await.2).unwrap();
    let zeros = "0".repeat(64);
    for (p, item) in doc["paths"].as_object().unwrap() {
        let file = if p.starts_with("/pkg/") {
            "lupus.js"
        } else {
            "index.html"
        };
        let path = p
            .replace("{file}", file)
            .replace("{path}", "0/000.p/2")
            .replace("{id}", "1")
            .replace("{n}", "1")
            .replace("{index}", "0")
            .replace("{key}", &zeros)
            .replace("{hash}", &zeros);
        for method in item.as_object().unwrap().keys() {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&path)
                .body(Body::from("{}"))
                .unwrap();
            let (s, _, body) = h.call(req).await;
            // The fallback answers a path no route matches with this detail; a route
            // with the wrong method is 405.
            let text = String::from_utf8_lossy(&body);
            assert!(
                s != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such endpoint"),
                "{method} {path}: {s} {text}"
            );
            if method == "post" {
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: unsigned");
            }
        }
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_counted_by_route_template() {
    let h = Harness::new().await;
    for _ in 0..3 {
        assert_eq!(h.get("/v1/job").await.0, StatusCode::OK);
    }
    for id in ["5", "6"] {
        assert_eq!(
            h.get(&format!("/v1/tasks/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    // No route matches this path (`/{file}` takes one segment).
    assert_eq!(h.get("/no/such/path").await.0, StatusCode::NOT_FOUND);
    let (s, ct, body) = h.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(body).unwrap();
    let samples = parse_prometheus(&text);
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let count = "lupus_http_request_duration_seconds_count";
    assert_eq!(
        value(&format!("{count}{{route=\"/v1/job\",status=\"2xx\"}}")),
        3.0
    );
    assert_eq!(
        value(&format!(
            "{count}{{route=\"/v1/tasks/{{id}}\",status=\"4xx\"}}"
        )),
        2.0
    );
    assert_eq!(
        value(&format!("{count}{{route=\"unmatched\",status=\"4xx\"}}")),
        1.0
    );
    assert!(
        !text.contains("/v1/tasks/5"),
        "raw paths must not become label values"
    );
    // The +Inf bucket holds every request of its series.
    assert_eq!(
        value(
            "lupus_http_request_duration_seconds_bucket{route=\"/v1/job\",status=\"2xx\",le=\"+Inf\"}"
        ),
        3.0
    );
    // The counters kept their names.
    assert_eq!(value("lupus_http_requests_total"), 6.0);
    assert_eq!(value("lupus_http_client_errors_total"), 3.0);
    assert_eq!(value("lupus_http_server_errors_total"), 0.0);
    assert!(value("lupus_http_latency_microseconds_total") > 0.0);
    for name in [
        "lupus_submissions_total",
        "lupus_verdicts_total",
        "lupus_slashes_total",
        "lupus_rounds_closed_total",
        "lupus_tasks_expired_total",
    ] {
        assert_eq!(value(name), 0.0, "{name}");
    }
    assert_eq!(value("lupus_log_size"), h.size() as f64);
}

/// Parses the Prometheus text format (version 0.0.4): `# HELP` and `# TYPE` lines,
/// then samples `name{label="value",...} number`, each of a family whose `# TYPE` came
/// first. Returns each series (name and labels as written) with its value; panics on
/// any line that breaks the format.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut types = std::collections::BTreeMap::new();
    let mut samples = std::collections::BTreeMap::new();
    let is_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap_or(""));
            assert!(is_name(name), "bad metric name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = words.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "{line:?}"
                    );
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{line:?}"));
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(is_name(k), "bad label name in {line:?}");
                    assert!(!v.trim_end_matches('"').contains('"'), "{line:?}");
                }
                name
            }
        };
        assert!(is_name(name), "bad sample name in {line:?}");
        let family = [name]
            .into_iter()
            .chain(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s)),
            )
            .find(|f| types.contains_key(*f))
            .unwrap_or_else(|| panic!("sample {line:?} before its # TYPE"));
        if name != family {
            assert_eq!(types[family], "histogram", "{line:?}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "repeated {line:?}"
        );
    }
    samples
}

#[tokio::test]
async fn a_round_s_real_bodies_match_the_document() {
    let h = Harness::with(1, 1).await;
    let doc: Value = serde_json::from_slice(&h.get("/openapi.json").await.2).unwrap();
    let (w, v) = (key(1), key(3));
    for (k, role) in [(&w, Role::Worker), (&v, Role::Verifier)] {
        let e = Entry::signed(api::join_body(PublicKey::from(k), role, "t"), k).unwrap();
        let body = serde_json::to_vec(&api::JoinRequest {
            role,
            name: "t".into(),
            signature: Sig(*e.signature().unwrap()),
        })
        .unwrap();
        let (s, _) = h
            .exchange(&doc, "/v1/join", "/v1/join", Some((k, body)))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let next = |k| Some((k, b"{}".to_vec()));
    let (_, wait) = h
        .exchange(&doc, "/v1/verify/next", "/v1/verify/next", next(&v))
        .await;
    assert_eq!(wait["status"], "wait", "{wait}");
    let (_, offer) = h
        .exchange(&doc, "/v1/tasks/next", "/v1/tasks/next", next(&w))
        .await;
    let TaskOffer::Task(task) = serde_json::from_value(offer).unwrap() else {
        panic!("no task");
    };
    let id = task.task_id.0;

    // The worker's real submission and opening.
    let job = JobSpec::parse(TINY).unwrap();
    let base = init_params(&job.model, job.hash().0).unwrap();
    let run = run_task(&job, &corpus(), &base, task.seed.0, &mut |_, _| {}).unwrap();
    let entry = Entry::signed(
        work_committed_body(task.task_id, PublicKey::from(&w), &run.commitment),
        &w,
    )
    .unwrap();
    let submission = serde_json::to_vec(&api::Submission {
        work_committed: B64(entry.encode()),
        delta: B64(run.delta.to_bytes()),
        final_opening: run.final_opening().unwrap(),
        device_class: DeviceClass::Exact,
    })
    .unwrap();
    let submit = format!("/v1/tasks/{id}/submit");
    let (s, receipt) = h
        .exchange(
            &doc,
            "/v1/tasks/{id}/submit",
            &submit,
            Some((&w, submission)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let receipt: api::SubmissionReceipt = serde_json::from_value(receipt).unwrap();
    // The log's signed receipt names the commitment at its index: evidence the worker
    // keeps that the coordinator took its work.
    let log = lupus_ledger::note::NoteVerifier::parse(&h.c.note_key()).unwrap();
    assert_eq!(
        lupus_ledger::receipt::verify_receipt(&receipt.receipt, &log, entry.as_bytes()).unwrap(),
        receipt.entry_index
    );
    let c = receipt.challenge;
    let opening = run.open(&job, &corpus(), &c.steps, c.tolerant, &w).unwrap();
    // The recomputed op outputs must carry the worker's signature: refused at upload,
    // where a verifier would reject the task for it.
    let mut unsigned = opening.clone();
    unsigned.steps[0].signature.0[0] ^= 1;
    h.refused(
        req(&w, &format!("/v1/tasks/{id}/opening"), &unsigned.to_bytes()),
        422,
        "an opening whose recomputed op outputs the worker did not sign",
    )
    .await;
    let (s, opened) = h
        .exchange(
            &doc,
            "/v1/tasks/{id}/opening",
            &format!("/v1/tasks/{id}/opening"),
            Some((&w, opening.to_bytes())),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let opened: api::OpeningReceipt = serde_json::from_value(opened).unwrap();
    let index = opened.entry_index.expect("the TaskOpened entry's index");
    let logged =
        h.c.log()
            .entries(LeafIndex(index), LeafIndex(index + 1))
            .await
            .unwrap();
    assert_eq!(
        lupus_ledger::receipt::verify_receipt(&opened.receipt, &log, &logged[0]).unwrap(),
        index
    );
    assert!(matches!(
        Entry::decode(&logged[0]).unwrap().body(),
        lupus_ledger::entry::EntryBody::TaskOpened { opening, .. } if *opening == opened.opening_blob
    ));
    // Real fraud proofs (not sent: this work is honest), one per op of a challenged
    // step, in a verdict body: every operator kind the job's model uses.
    let verdict_schema = &doc["paths"]["/v1/verify/{id}/verdict"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    let mut ops = std::collections::BTreeSet::new();
    for op in 0.. {
        let Ok(proof) = dispute_op(
            &job,
            &corpus(),
            &base,
            &task.seed.0,
            &opening,
            c.steps[0],
            op,
        ) else {
            break;
        };
        let body = serde_json::to_value(api::VerdictSubmission {
            verdict: B64(vec![1]),
            fraud_proof: Some(proof),
        })
        .unwrap();
        conforms(&doc, verdict_schema, &body)
            .unwrap_or_else(|e| panic!("fraud proof of op {op}: {e}"));
        ops.insert(
            body["fraud_proof"]["kind"]["op"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(ops.len() >= 8, "{ops:?}");

    // The verifier's job (the commitment, the opening) and its verdict.
    let (_, offer) = h
        .exchange(&doc, "/v1/verify/next", "/v1/verify/next", next(&v))
        .await;
    let api::VerifyOffer::Job(vj) = serde_json::from_value(offer).unwrap() else {
        panic!("no verify job");
    };
    // The opening comes by its hash: the bytes the worker posted, decoding to its
    // opening.
    let (s, _, stored) = h.get(&format!("/v1/blobs/{}", vj.opening_blob)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(stored, opening.to_bytes());
    assert_eq!(
        lupus_prover::task::Opening::from_bytes(&stored).unwrap(),
        opening
    );
    let verdict = Entry::signed(
        api::verdict_body(
            task.task_id,
            PublicKey::from(&v),
            true,
            vj.steps,
            "ok",
            None,
        ),
        &v,
    )
    .unwrap();
    let body = serde_json::to_vec(&api::VerdictSubmission {
        verdict: B64(verdict.encode()),
        fraud_proof: None,
    })
    .unwrap();
    let (s, _) = h
        .exchange(
            &doc,
            "/v1/verify/{id}/verdict",
            &format!("/v1/verify/{id}/verdict"),
            Some((&v, body)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The server's ticker closes the round; here the test ticks.
    for _ in 0..200 {
        h.c.tick().await.unwrap();
        if h.c
            .rounds()
            .await
            .unwrap()
            .rounds
            .iter()
            .all(|r| r.phase == api::RoundPhase::Closed)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, rounds) = h.exchange(&doc, "/v1/rounds", "/v1/rounds", None).await;
    assert_eq!(rounds["rounds"][0]["phase"], "closed", "{rounds}");
    let (_, wait) = h
        .exchange(&doc, "/v1/tasks/next", "/v1/tasks/next", next(&w))
        .await;
    assert_eq!(wait["status"], "wait", "{wait}");

    // Every read, on a log that has every kind of entry but `slashed`.
    for (template, path) in [
        ("/v1/job", "/v1/job"),
        ("/v1/stake", "/v1/stake"),
        ("/v1/proof/inclusion", "/v1/proof/inclusion?index=1&size=3"),
        ("/v1/proof/consistency", "/v1/proof/consistency?old=1"),
    ] {
        assert_eq!(
            h.exchange(&doc, template, path, None).await.0,
            StatusCode::OK
        );
    }
    let (_, current) = h
        .exchange(&doc, "/v1/rounds/current", "/v1/rounds/current", None)
        .await;
    let n = current["round"].as_u64().unwrap();
    h.exchange(&doc, "/v1/rounds/{n}", &format!("/v1/rounds/{n}"), None)
        .await;
    let (_, status) = h
        .exchange(&doc, "/v1/tasks/{id}", &format!("/v1/tasks/{id}"), None)
        .await;
    assert_eq!(status["state"], "accepted", "{status}");
    let (_, table) = h.exchange(&doc, "/v1/stake", "/v1/stake", None).await;
    let accounts = table["accounts"].as_array().unwrap();
    assert!(!accounts.is_empty(), "{table}");
    for row in accounts {
        let key = row["key"].as_str().unwrap();
        let (s, st) = h
            .exchange(&doc, "/v1/stake/{key}", &format!("/v1/stake/{key}"), None)
            .await;
        assert_eq!((s, &st["pubkey"]), (StatusCode::OK, &row["key"]));
    }
    let mut kinds = std::collections::BTreeSet::new();
    for i in 0..h.size() {
        let (_, e) = h
            .exchange(
                &doc,
                "/v1/entries/{index}",
                &format!("/v1/entries/{i}"),
                None,
            )
            .await;
        kinds.insert(e["entry"]["body"]["type"].as_str().unwrap().to_owned());
    }
    for kind in [
        "genesis",
        "participant_joined",
        "round_opened",
        "task_assigned",
        "work_committed",
        "challenge_issued",
        "verdict",
        "round_closed",
        "credit",
        "shares_epoch",
    ] {
        assert!(kinds.contains(kind), "no {kind} entry: {kinds:?}");
    }
    // Problems are documented bodies too.
    for (template, path, status) in [
        ("/v1/tasks/{id}", "/v1/tasks/999", 404),
        ("/v1/stake/{key}", "/v1/stake/zz", 400),
        ("/v1/proof/inclusion", "/v1/proof/inclusion", 400),
    ] {
        assert_eq!(
            h.exchange(&doc, template, path, None).await.0.as_u16(),
            status
        );
    }

    // And the check can fail: bodies that break the schema are refused.
    let schema = &doc["paths"]["/v1/rounds/current"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    conforms(&doc, schema, &current).unwrap();
    // (what breaks it, the field, its new value or none to remove it)
    let broken = [
        ("a required field missing", "base_model", None),
        (
            "a digest that is not hex",
            "base_model",
            Some(Value::from("zz")),
        ),
        ("a field the schema lacks", "surprise", Some(Value::from(1))),
        ("a negative count", "accepted", Some(Value::from(-1))),
        (
            "a phase that is not one",
            "phase",
            Some(Value::from("ajar")),
        ),
        ("a string for a number", "round", Some(Value::from("1"))),
    ];
    for (what, field, value) in broken {
        let mut bad = current.clone();
        let fields = bad.as_object_mut().unwrap();
        match value {
            Some(v) => fields.insert(field.to_owned(), v),
            None => fields.remove(field),
        };
        assert!(conforms(&doc, schema, &bad).is_err(), "{what} passed");
    }
}

/// Checks `value` against `schema`, in the subset of JSON Schema that utoipa writes
/// (`$ref`, `allOf`, `oneOf`, `anyOf`, `type`, `enum`, `required`, `properties`,
/// `items`, `prefixItems`, `minimum`, the hex and decimal `pattern`s of
/// `lupus_api::schema`, base64 `contentEncoding`). Objects are closed: a property
/// the schema does not declare is an error, so a body cannot outgrow its schema.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    check(doc, schema, value, "$", true)
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, closed: bool) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/components/schemas/")
            .and_then(|name| doc["components"]["schemas"].get(name))
            .ok_or_else(|| format!("{at}: dangling $ref {r}"))?;
        return check(doc, target, v, at, closed);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, v, at, false)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let results: Vec<_> = one.iter().map(|s| check(doc, s, v, at, closed)).collect();
        if results.iter().filter(|r| r.is_ok()).count() != 1 {
            return Err(format!("{at}: not exactly one of oneOf: {results:?}"));
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|s| check(doc, s, v, at, closed).is_ok())
    {
        return Err(format!("{at}: none of anyOf"));
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            t => t.as_str().into_iter().collect(),
        };
        let is = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {e:?}"));
    }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64())
        && x < min
    {
        return Err(format!("{at}: {x} < {min}"));
    }
    if let Some(text) = v.as_str() {
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && !matches_pattern(p, text)
        {
            return Err(format!("{at}: {text:?} does not match {p}"));
        }
        if schema.get("contentEncoding").and_then(Value::as_str) == Some("base64") {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("{at}: not base64: {e}"))?;
        }
    }
    if let Some(map) = v.as_object() {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !map.contains_key(name) {
                return Err(format!("{at}: required property {name} is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in map {
            if let Some(s) = props.and_then(|p| p.get(k)) {
                check(doc, s, x, &format!("{at}.{k}"), true)?;
            }
        }
        if closed
            && let Some(declared) = declared(doc, schema)
            && let Some(k) = map.keys().find(|k| !declared.contains(k.as_str()))
        {
            return Err(format!("{at}: property {k} is not in the schema"));
        }
    }
    if let Some(items) = v.as_array() {
        let prefix = schema.get("prefixItems").and_then(Value::as_array);
        let prefix = prefix.map_or(&[][..], Vec::as_slice);
        if items.len() < prefix.len() {
            return Err(format!(
                "{at}: {} items, {} expected",
                items.len(),
                prefix.len()
            ));
        }
        for (i, x) in items.iter().enumerate() {
            let at = format!("{at}[{i}]");
            match (prefix.get(i), schema.get("items")) {
                (Some(s), _) => check(doc, s, x, &at, true)?,
                (None, Some(Value::Bool(false))) => return Err(format!("{at}: one item too many")),
                (None, Some(s)) if s.is_object() => check(doc, s, x, &at, true)?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// The properties an object schema declares, through `$ref` and `allOf`; `None` where
/// it declares none (an open or a non-object schema).
fn declared<'d>(doc: &'d Value, schema: &'d Value) -> Option<std::collections::BTreeSet<&'d str>> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/")?;
        return declared(doc, doc["components"]["schemas"].get(name)?);
    }
    let mut names: Option<std::collections::BTreeSet<&str>> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect());
    for s in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(more) = declared(doc, s) {
            names.get_or_insert_with(Default::default).extend(more);
        }
    }
    names
}

/// The patterns the schemas use (`lupus_api::schema`); any other is a test to extend.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    use lupus_api::schema::{DECIMAL, HEX32, HEX64};
    let hex = |n: usize| text.len() == n && text.bytes().all(|b| b.is_ascii_hexdigit());
    match pattern {
        HEX32 => hex(64),
        HEX64 => hex(128),
        DECIMAL => {
            !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
                && (text == "0" || !text.starts_with('0'))
        }
        other => panic!("conforms() knows no pattern {other}"),
    }
}

/// A response, or the reusable one (`#/components/responses/<name>`) it refers to.
fn response<'d>(doc: &'d Value, r: &'d Value) -> &'d Value {
    match r["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/responses/"))
    {
        Some(name) => &doc["components"]["responses"][name],
        None => r,
    }
}

fn collect_refs<'d>(v: &'d Value, out: &mut Vec<&'d str>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x.as_str()) {
                    ("$ref", Some(r)) => out.push(r),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The engine reads the time and the beacons' randomness only from its injected
/// `Env`: on a manual clock a task expires and its slot goes to another worker, and the
/// round closes at its deadline, without any waiting; signed requests are checked
/// against that clock too; and the revealed beacon is the seed's first draw.
#[tokio::test]
async fn deadlines_and_beacons_follow_the_injected_env() {
    const START: u64 = 5_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let env = ManualEnv::new(START, [3; 32]);
    let mut cfg = config(dir.path(), 2, 1);
    cfg.env = env.clone();
    let c = Coordinator::open(cfg, corpus()).await.unwrap();
    let app = router(Arc::clone(&c), None);
    let call = |req: Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    let (w1, w2) = (key(1), key(2));
    for w in [&w1, &w2] {
        let e = Entry::signed(api::join_body(PublicKey::from(w), Role::Worker, "t"), w).unwrap();
        let req = api::JoinRequest {
            role: Role::Worker,
            name: "t".into(),
            signature: Sig(*e.signature().unwrap()),
        };
        // Signed at the coordinator's time, not the system's.
        let body = serde_json::to_vec(&req).unwrap();
        let stale = signed(w, "/v1/join", body.clone(), now_ms(), fresh_nonce());
        assert_eq!(call(stale).await, StatusCode::UNAUTHORIZED);
        let fresh = signed(w, "/v1/join", body, env.now_ms(), fresh_nonce());
        assert_eq!(call(fresh).await, StatusCode::OK);
    }
    let task = |offer: TaskOffer| match offer {
        TaskOffer::Task(t) => t,
        TaskOffer::Wait { reason, .. } => panic!("no task: {reason}"),
    };
    let t1 = task(c.next_task(PublicKey::from(&w1)).await.unwrap());
    assert_eq!(
        t1.deadline_ms,
        START + 60_000,
        "task timeout on the manual clock"
    );
    assert!(matches!(
        c.next_task(PublicKey::from(&w2)).await.unwrap(),
        TaskOffer::Wait { .. }
    ));
    // At the deadline the task is still the worker's; a millisecond past it, not.
    env.advance(std::time::Duration::from_secs(60));
    c.tick().await.unwrap();
    assert!(matches!(
        c.next_task(PublicKey::from(&w2)).await.unwrap(),
        TaskOffer::Wait { .. }
    ));
    env.advance(std::time::Duration::from_millis(1));
    c.tick().await.unwrap();
    let t2 = task(c.next_task(PublicKey::from(&w2)).await.unwrap());
    assert_ne!(t2.task_id, t1.task_id);
    assert_eq!(t2.deadline_ms, START + 120_001);
    let round = c.round(Some(Round(1))).await.unwrap();
    assert_eq!((round.expired, round.deadline_ms), (1, START + 120_000));
    assert_eq!(round.phase, api::RoundPhase::Open);
    // The round's deadline passes: it closes with nothing accepted, and the next opens.
    env.advance(std::time::Duration::from_secs(60));
    c.tick().await.unwrap();
    let rounds = c.rounds().await.unwrap().rounds;
    assert_eq!(rounds.len(), 2);
    assert_eq!(
        (rounds[0].phase, rounds[0].accepted),
        (api::RoundPhase::Closed, 0)
    );
    assert_eq!(rounds[1].deadline_ms, START + 240_001);
    // Round 1's beacon was the seed's first draw.
    let mut first = [0u8; 32];
    ManualEnv::new(0, [3; 32]).fill_random(&mut first).unwrap();
    assert_eq!(rounds[0].beacon.unwrap().0, first);
}
