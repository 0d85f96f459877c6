//! The HTTP API driven through `Router::oneshot` (no socket): bad input on every
//! mutating endpoint is a 4xx `application/problem+json` and writes nothing to the
//! ledger; the read endpoints answer; the OpenAPI document lists every route.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use common::*;
use ed25519_dalek::SigningKey;
use lupus_api::sign::sign_request;
use lupus_api::types::{self as api, B64, Sig, TaskOffer, work_committed_body};
use lupus_coordinator::engine::{Coordinator, now_ms};
use lupus_coordinator::routes::router;
use lupus_ledger::entry::{Entry, PublicKey, Role, TaskId};
use lupus_prover::model::init_params;
use lupus_prover::quant::{QTensor, QuantDelta};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::run_task;
use lupus_prover::verify::DeviceClass;
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
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::open(config(dir.path(), 2, 3), corpus())
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
        req(&w, "/v1/tasks/next", &vec![b' '; 100 << 10]),
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
    let early = serde_json::to_vec(&run.open(&job, &corpus(), &[0, 1], false).unwrap()).unwrap();
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
    h.refused(req(&w, &op, b"{\"leaves\":[]}"), 400, "malformed opening")
        .await;
    h.refused(
        req(&w, &op, &early),
        422,
        "opening of steps that were not challenged",
    )
    .await;

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
    let doc: serde_json::Value = serde_json::from_slice(&h.get("/openapi.json").await.2).unwrap();
    for p in [
        "/checkpoint",
        "/tile/{path}",
        "/v1/job",
        "/v1/join",
        "/v1/tasks/next",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/submit",
        "/v1/tasks/{id}/opening",
        "/v1/verify/next",
        "/v1/verify/{id}/verdict",
        "/v1/rounds",
        "/v1/rounds/current",
        "/v1/rounds/{n}",
        "/v1/entries/{index}",
        "/v1/proof/inclusion",
        "/v1/proof/consistency",
        "/v1/stake",
        "/v1/stake/{pubkey}",
        "/v1/blobs/{hash}",
        "/openapi.json",
        "/metrics",
        "/",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from /openapi.json"
        );
    }
    let metrics = String::from_utf8(h.get("/metrics").await.2).unwrap();
    assert!(metrics.contains("lupus_log_size"));
}
