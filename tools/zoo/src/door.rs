//! The zoo's door cases: small programs over the raw HTTP API that send what an honest
//! client never does (a replayed or stale request, a forged or reused signature, NaN,
//! infinite or wrongly shaped deltas, oversized or truncated bodies, another worker's
//! task). Each must be refused with a 4xx `application/problem+json` answer and leave
//! the ledger as it was (DESIGN.md, "Coordinator": signed requests, replays refused,
//! problem+json errors, body size limits).

use lupus_api::paths;
use lupus_api::sign::sign_request;
use lupus_api::types::{
    self as api, B64, NextRequest, Submission, TaskDescription, TaskOffer, work_committed_body,
};
use lupus_ledger::entry::{Entry, PublicKey, Role};
use lupus_prover::quant::QuantDelta;
use lupus_prover::task::run_task;
use lupus_prover::verify::DeviceClass;

use super::ZooError;
use lupus_coordinator::client::Client;
use lupus_coordinator::engine::{Coordinator, now_ms};
use lupus_coordinator::routes::SUBMIT_BODY;

/// One attempt at the door and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorAttempt {
    /// What was sent.
    pub case: &'static str,
    /// The answer's status.
    pub status: u16,
    /// Whether the answer was an RFC 9457 problem document.
    pub problem: bool,
    /// Whether the ledger grew while the request was handled.
    pub log_grew: bool,
}

impl DoorAttempt {
    /// Refused as the case demands: a 4xx problem, nothing written.
    pub fn refused(&self) -> bool {
        (400..500).contains(&self.status) && self.problem && !self.log_grew
    }
}

fn zoo_err(e: impl std::fmt::Display) -> ZooError {
    ZooError(e.to_string())
}

fn nonce(tag: u8) -> [u8; 16] {
    let mut n = [tag; 16];
    let t = now_ms().to_le_bytes();
    n[..8].copy_from_slice(&t);
    n
}

fn headers(h: &lupus_api::sign::SignedHeaders) -> Vec<(String, String)> {
    h.pairs()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Sends raw and records the answer and whether the log grew meanwhile.
async fn attempt(
    c: &Coordinator,
    client: &Client,
    case: &'static str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<DoorAttempt, ZooError> {
    let before = c.log().head().size.0;
    let (status, bytes) = client
        .send_with_headers("POST", path, headers, body)
        .await
        .map_err(zoo_err)?;
    let problem = serde_json::from_slice::<lupus_api::problem::Problem>(&bytes)
        .is_ok_and(|p| p.status == status);
    Ok(DoorAttempt {
        case,
        status,
        problem,
        log_grew: c.log().head().size.0 != before,
    })
}

/// A signed submission of `sub` by `key` for `task`.
fn signed(
    key: &ed25519_dalek::SigningKey,
    path: &str,
    body: &[u8],
    tag: u8,
) -> Vec<(String, String)> {
    headers(&sign_request(key, "POST", path, body, now_ms(), nonce(tag)))
}

/// Runs every door case against the coordinator `c` served at `url`. The round must
/// have a free task slot (run it before the crowd arrives). Returns one attempt per
/// case; the attacker's honest task is left to expire.
pub async fn door_cases(c: &Coordinator, url: &str) -> Result<Vec<DoorAttempt>, ZooError> {
    let key = ed25519_dalek::SigningKey::from_bytes(&lupus_prover::prf::prf(
        &[0x5a; 32],
        "lupus zoo door attacker",
        &now_ms().to_le_bytes(),
    ));
    let other = ed25519_dalek::SigningKey::from_bytes(&lupus_prover::prf::prf(
        &key.to_bytes(),
        "lupus zoo door other",
        &[],
    ));
    let me = Client::new(url, key.clone());
    let them = Client::new(url, other.clone());
    me.join(Role::Worker, "zoo-door").await.map_err(zoo_err)?;
    them.join(Role::Worker, "zoo-door-other")
        .await
        .map_err(zoo_err)?;
    let task: TaskDescription = loop {
        match me
            .post::<_, TaskOffer>(paths::TASKS_NEXT, &NextRequest {})
            .await
            .map_err(zoo_err)?
        {
            TaskOffer::Task(t) => break t,
            TaskOffer::Wait { retry_after_ms, .. } => {
                tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms)).await;
            }
        }
    };
    // An honest run of the task, to tamper with.
    let job = c.job().clone();
    let corpus = std::sync::Arc::clone(c.corpus());
    let base = c.model().await.map_err(zoo_err)?;
    let seed = task.seed.0;
    let run = tokio::task::spawn_blocking(move || {
        run_task(&job, &corpus, &base, seed, &mut |_, _| {}).map_err(zoo_err)
    })
    .await
    .map_err(zoo_err)??;
    let path = paths::submit(task.task_id.0);
    let submission = |delta: &QuantDelta| -> Result<Vec<u8>, ZooError> {
        let mut commitment = run.commitment;
        commitment.delta_hash = lupus_prover::merkle::Digest(delta.hash());
        let entry = Entry::signed(
            work_committed_body(task.task_id, PublicKey::from(&key), &commitment),
            &key,
        )
        .map_err(zoo_err)?;
        serde_json::to_vec(&Submission {
            work_committed: B64(entry.encode()),
            delta: B64(delta.to_bytes()),
            final_opening: run.final_opening().map_err(zoo_err)?,
            device_class: DeviceClass::Exact,
        })
        .map_err(zoo_err)
    };
    let honest = submission(&run.delta)?;
    let mut out = Vec::new();

    // Values: NaN and infinite scales, wrong shapes, a delta that is not the trace's.
    let mut nan = run.delta.clone();
    nan.tensors[0].scale = f32::NAN;
    let body = submission(&nan)?;
    out.push(
        attempt(
            c,
            &me,
            "NaN in the delta",
            &path,
            &signed(&key, &path, &body, 1),
            body,
        )
        .await?,
    );
    let mut inf = run.delta.clone();
    inf.tensors[0].scale = f32::INFINITY;
    let body = submission(&inf)?;
    out.push(
        attempt(
            c,
            &me,
            "Inf in the delta",
            &path,
            &signed(&key, &path, &body, 2),
            body,
        )
        .await?,
    );
    let mut shapes = run.delta.clone();
    if let Some(t) = shapes.tensors.first_mut() {
        t.shape.reverse();
        t.shape.push(1);
    }
    let body = submission(&shapes)?;
    out.push(
        attempt(
            c,
            &me,
            "wrong delta shapes",
            &path,
            &signed(&key, &path, &body, 3),
            body,
        )
        .await?,
    );
    let mut huge = run.delta.clone();
    for t in &mut huge.tensors {
        t.scale *= 1000.0;
    }
    let body = submission(&huge)?;
    out.push(
        attempt(
            c,
            &me,
            "huge-norm delta",
            &path,
            &signed(&key, &path, &body, 15),
            body,
        )
        .await?,
    );
    let mut swapped = run.delta.clone();
    swapped.tensors[0].scale *= 2.0;
    let mut body: serde_json::Value = serde_json::from_slice(&honest).map_err(zoo_err)?;
    body["delta"] = serde_json::to_value(B64(swapped.to_bytes())).map_err(zoo_err)?;
    let body = serde_json::to_vec(&body).map_err(zoo_err)?;
    out.push(
        attempt(
            c,
            &me,
            "delta not the committed one",
            &path,
            &signed(&key, &path, &body, 4),
            body,
        )
        .await?,
    );

    // Bodies: over the limit, truncated, not JSON.
    let body = vec![b' '; SUBMIT_BODY + 1];
    out.push(
        attempt(
            c,
            &me,
            "oversized body",
            &path,
            &signed(&key, &path, &body, 5),
            body,
        )
        .await?,
    );
    let body = honest[..honest.len() / 2].to_vec();
    out.push(
        attempt(
            c,
            &me,
            "truncated body",
            &path,
            &signed(&key, &path, &body, 6),
            body,
        )
        .await?,
    );

    // Signatures: forged, by another key, reused on another body, stale, replayed.
    let mut h = signed(&key, &path, &honest, 7);
    if let Some((_, sig)) = h.iter_mut().find(|(k, _)| k == "lupus-signature") {
        *sig = "ab".repeat(64);
    }
    out.push(attempt(c, &me, "forged signature", &path, &h, honest.clone()).await?);
    let mut h = signed(&other, &path, &honest, 8);
    if let Some((_, k)) = h.iter_mut().find(|(k, _)| k == "lupus-key") {
        *k = hex::encode(key.verifying_key().to_bytes());
    }
    out.push(attempt(c, &me, "signed by another key", &path, &h, honest.clone()).await?);
    let h = signed(&key, &path, &honest, 9);
    let body = submission(&nan)?;
    out.push(attempt(c, &me, "signature reused on another body", &path, &h, body).await?);
    let stale = now_ms().saturating_sub(2 * lupus_api::sign::MAX_SKEW_MS);
    let h = headers(&sign_request(
        &key,
        "POST",
        &path,
        &honest,
        stale,
        nonce(10),
    ));
    out.push(attempt(c, &me, "stale timestamp", &path, &h, honest.clone()).await?);

    // Another worker's task, and a verdict nobody asked for.
    let h = signed(&other, &path, &honest, 11);
    out.push(
        attempt(
            c,
            &them,
            "submits another's task",
            &path,
            &h,
            honest.clone(),
        )
        .await?,
    );
    let verdict = api::VerdictSubmission {
        verdict: B64(Entry::signed(
            api::verdict_body(
                task.task_id,
                PublicKey::from(&other),
                true,
                vec![0],
                "ok",
                None,
            ),
            &other,
        )
        .map_err(zoo_err)?
        .encode()),
        fraud_proof: None,
    };
    let vpath = paths::verdict(task.task_id.0);
    let body = serde_json::to_vec(&verdict).map_err(zoo_err)?;
    let h = signed(&other, &vpath, &body, 12);
    out.push(attempt(c, &them, "verdict without a challenge", &vpath, &h, body).await?);

    // The honest submission goes through once; the same request again is a replay.
    let h = signed(&key, &path, &honest, 13);
    let first = attempt(c, &me, "honest submission", &path, &h, honest.clone()).await?;
    if first.status != 200 {
        return Err(ZooError(format!(
            "the attacker's honest submission was refused ({}): the door cases prove nothing",
            first.status
        )));
    }
    out.push(attempt(c, &me, "replayed request", &path, &h, honest.clone()).await?);
    let h = signed(&key, &path, &honest, 14);
    out.push(attempt(c, &me, "submission sent twice", &path, &h, honest).await?);
    Ok(out)
}
