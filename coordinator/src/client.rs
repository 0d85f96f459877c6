//! A signed-request HTTP client of the coordinator's API ([`Client`]): what the demo's
//! report, `lupus` subcommands and the tests use to read the API, and to send requests
//! by hand (the adversarial tests).
//!
//! The worker and verifier loops are not here: `lupus worker`, `lupus verify` and the
//! demo run `lupus_worker::native`, the same loop the browser runs.

use std::sync::Arc;

use axum::body::Bytes;
use ed25519_dalek::SigningKey;
use lupus_api::http::{Http, HttpError};
use lupus_api::paths;
use lupus_api::problem::Problem;
use lupus_api::sign::sign_request;
use lupus_api::types::{self as api, JobInfo, Sig};
use lupus_ledger::entry::{Digest, Entry, PublicKey, Role};
use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::now_ms;

/// Errors of talking to a coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the coordinator refused: {0}")]
    Problem(Problem),
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
    #[error("local work failed: {0}")]
    Local(String),
}

/// A client that signs every `POST` with the participant's key.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: Http,
    key: Arc<SigningKey>,
    latencies: Option<Arc<std::sync::Mutex<Vec<u32>>>>,
}

impl Client {
    /// A client of the coordinator at `base` (`http://host:port`) with `key`.
    pub fn new(base: &str, key: SigningKey) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http: Http::new(),
            key: Arc::new(key),
            latencies: None,
        }
    }

    /// Records every request's latency (microseconds) into `log` (for the load bench).
    pub fn with_latency_log(mut self, log: Arc<std::sync::Mutex<Vec<u32>>>) -> Client {
        self.latencies = Some(log);
        self
    }

    /// This participant's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&*self.key)
    }

    /// Sends a request; `POST`s are signed. Returns the status and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut headers = Vec::new();
        if method == "POST" {
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).map_err(|e| ClientError::Local(e.to_string()))?;
            let h = sign_request(&self.key, method, path, &body, now_ms(), nonce);
            headers = h
                .pairs()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        }
        self.send_with_headers(method, path, &headers, body).await
    }

    /// Sends a request with exactly these signature headers (none added): how the
    /// adversarial programs send a chosen timestamp or nonce, a replayed, forged or
    /// reused signature ([`lupus_api::sign::sign_request`] builds honest ones).
    pub async fn send_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut headers = headers.to_vec();
        if method == "POST" {
            headers.push(("content-type".into(), "application/json".into()));
        }
        let started = std::time::Instant::now();
        let answer = self
            .http
            .send(method, &url, &headers, body, None)
            .await
            .map_err(|e| match e {
                HttpError::Request(e) => ClientError::Local(e),
                e => ClientError::Connect {
                    url: url.clone(),
                    detail: e.to_string(),
                },
            })?;
        let (status, bytes) = (answer.status, answer.body);
        if let Some(log) = &self.latencies
            && let Ok(mut l) = log.lock()
        {
            l.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        Ok((status, bytes))
    }

    fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, ClientError> {
        if status >= 400 {
            let p = serde_json::from_slice::<Problem>(bytes).unwrap_or_else(|_| {
                Problem::new(
                    status,
                    "unknown",
                    "Error",
                    String::from_utf8_lossy(bytes).into_owned(),
                )
            });
            return Err(ClientError::Problem(p));
        }
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET` a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, bytes) = self.send("GET", path, Vec::new()).await?;
        Self::decode(status, &bytes)
    }

    /// `GET` raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, bytes) = self.send("GET", path, Vec::new()).await?;
        if status >= 400 {
            return Err(Self::decode::<()>(status, &bytes)
                .err()
                .unwrap_or_else(|| ClientError::Decode(format!("status {status}"))));
        }
        Ok(bytes)
    }

    /// Signed `POST` of a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Local(e.to_string()))?;
        let (status, bytes) = self.send("POST", path, body).await?;
        Self::decode(status, &bytes)
    }

    /// Joins as `role` (idempotent).
    pub async fn join(&self, role: Role, name: &str) -> Result<api::JoinResponse, ClientError> {
        let entry = Entry::signed(api::join_body(self.public_key(), role, name), &self.key)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let sig = entry
            .signature()
            .copied()
            .ok_or_else(|| ClientError::Local("join entry unsigned".into()))?;
        self.post(
            paths::JOIN,
            &api::JoinRequest {
                role,
                name: name.to_owned(),
                signature: Sig(sig),
            },
        )
        .await
    }

    /// Fetches a blob and checks its hash.
    pub async fn blob(&self, hash: &Digest) -> Result<Bytes, ClientError> {
        let bytes = self.get_bytes(&paths::blob(hash)).await?;
        if Digest::of(&bytes) != *hash {
            return Err(ClientError::Decode(format!(
                "blob {hash} does not hash to its name"
            )));
        }
        Ok(bytes)
    }

    /// The job, its spec parsed, and the dataset.
    pub async fn job(&self) -> Result<(JobInfo, JobSpec, Corpus), ClientError> {
        let info: JobInfo = self.get(paths::JOB).await?;
        let job = JobSpec::parse(&info.job_spec).map_err(|e| ClientError::Decode(e.to_string()))?;
        let data = self.blob(&info.dataset_blob).await?;
        let text = std::str::from_utf8(&data).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((info, job, Corpus::from_text(text)))
    }
}
