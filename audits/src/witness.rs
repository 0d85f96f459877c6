//! A C2SP `tlog-witness` (<https://c2sp.org/tlog-witness>): cosigns a log's checkpoint
//! only after checking that it extends the last checkpoint this witness cosigned.
//!
//! `POST /add-checkpoint` takes the spec's request body:
//!
//! ```text
//! old <size this witness last cosigned>
//! <base64 consistency proof hash>
//! ...
//! <blank line>
//! <signed checkpoint note>
//! ```
//!
//! and answers, as the spec says: `200` with the cosignature line; `400` for a
//! malformed request or an old size above the checkpoint's; `403` when the
//! checkpoint is not signed by the log's key; `404` for a log this witness does not
//! know; `409` when `old` is not the size it last cosigned for that log (the body,
//! `text/x.tlog.size`, is that size, so the log can retry); `422` when the consistency
//! proof does not verify (a fork).
//!
//! The cosignature is a C2SP `tlog-cosignature` v1: an Ed25519 signature over
//! `cosignature/v1\ntime <unix seconds>\n<checkpoint text>`, written as a signed-note
//! line whose key ID is `SHA-256(name || 0x0A || 0x04 || public key)[:4]` and whose
//! bytes are `key ID || u64 BE timestamp || signature` (see [`cosign`]). The line is
//! attached with the ledger's [`add_signature`].
//!
//! Safety across restarts: the new latest checkpoint of a log is written to disk
//! atomically ([`crate::state::write_json_atomic`]) *before* the cosignature is
//! returned, and requests are handled one at a time, so a witness never cosigns two
//! checkpoints that do not extend each other, even if it crashes between them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use lupus_ledger::checkpoint::{Checkpoint, open_checkpoint};
use lupus_ledger::hash::{Hash, TreeSize, empty_root};
pub use lupus_ledger::note::cosign;
use lupus_ledger::note::{
    CosignatureVerifier, NoteSignature, NoteSigner, NoteVerifier, add_signature, parse_note,
};
use lupus_ledger::proof::{ConsistencyProof, verify_consistency};
use serde::{Deserialize, Serialize};

use crate::state::{STATE_VERSION, StateError, Versioned, read_json, write_json_atomic};

/// The path of the witness's one endpoint.
pub const ADD_CHECKPOINT: &str = "/add-checkpoint";
/// Largest request body accepted.
pub const MAX_REQUEST: usize = 128 << 10;
/// Most proof lines in a request (a consistency proof of a 2^63 tree has fewer).
const MAX_PROOF_LINES: usize = 128;

/// Why the witness refuses a checkpoint. [`WitnessError::status`] maps each to the
/// spec's HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    #[error("malformed add-checkpoint request: {0}")]
    Malformed(String),
    #[error("this witness does not witness the log {0:?}")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key: {0}")]
    NotSigned(String),
    #[error("old size {old} is above the checkpoint size {size}")]
    OldTooLarge { old: u64, size: u64 },
    #[error(
        "old size {old} is not the size this witness last cosigned ({latest}): retry from there"
    )]
    Conflict { old: u64, latest: u64 },
    #[error(
        "the consistency proof from size {old} does not verify: the checkpoint forks the log ({reason})"
    )]
    BadProof { old: u64, reason: String },
    #[error("the witness could not persist its state, so it does not cosign: {0}")]
    State(#[from] StateError),
    #[error("cosigning failed: {0}")]
    Sign(String),
}

impl WitnessError {
    /// The HTTP status the spec gives this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            WitnessError::Malformed(_) | WitnessError::OldTooLarge { .. } => {
                StatusCode::BAD_REQUEST
            }
            WitnessError::UnknownLog(_) => StatusCode::NOT_FOUND,
            WitnessError::NotSigned(_) => StatusCode::FORBIDDEN,
            WitnessError::Conflict { .. } => StatusCode::CONFLICT,
            WitnessError::BadProof { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            WitnessError::State(_) | WitnessError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The latest cosigned checkpoint of one log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    pub size: u64,
    pub root: Hash,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct WitnessState {
    version: u32,
    logs: BTreeMap<String, Latest>,
}

impl Versioned for WitnessState {
    fn version(&self) -> u32 {
        self.version
    }
}

/// A parsed `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body, as a log sends it.
    pub fn encode(&self) -> String {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut out = format!("old {}\n", self.old);
        for h in &self.proof {
            out.push_str(&b64.encode(h.0));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses a request body.
    pub fn parse(body: &str) -> Result<AddCheckpoint, WitnessError> {
        let bad = |m: &str| WitnessError::Malformed(m.to_owned());
        let (head, checkpoint) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .filter(|d| *d == "0" || !d.starts_with('0'))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line must be \"old <decimal size>\""))?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let proof = lines
            .map(|l| {
                b64.decode(l)
                    .ok()
                    .and_then(|b| Hash::from_slice(&b).ok())
                    .ok_or_else(|| bad("a proof line is not the base64 of a 32-byte hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("too many proof lines"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }
}

/// A witness: its key, the logs it witnesses and its persisted state.
pub struct Witness {
    name: String,
    key: SigningKey,
    logs: BTreeMap<String, NoteVerifier>,
    path: PathBuf,
    state: Mutex<WitnessState>,
}

impl Witness {
    /// A witness named by `signer`'s key name, for the logs of `log_keys` (verifier
    /// keys; each key's name is the log's origin), keeping its state in `state_file`.
    pub fn open(
        signer_private_key: &str,
        log_keys: &[String],
        state_file: &Path,
    ) -> Result<Witness, WitnessError> {
        let signer = NoteSigner::from_private_key(signer_private_key.trim())
            .map_err(|e| WitnessError::Sign(e.to_string()))?;
        let seed = private_seed(signer_private_key.trim())
            .ok_or_else(|| WitnessError::Sign("the private key does not decode".into()))?;
        let mut logs = BTreeMap::new();
        for k in log_keys {
            let v = NoteVerifier::parse(k.trim())
                .map_err(|e| WitnessError::Malformed(format!("log key {k:?}: {e}")))?;
            logs.insert(v.name().to_owned(), v);
        }
        let state = read_json::<WitnessState>(state_file)?.unwrap_or(WitnessState {
            version: STATE_VERSION,
            logs: BTreeMap::new(),
        });
        Ok(Witness {
            name: signer.name().to_owned(),
            key: SigningKey::from_bytes(&seed),
            logs,
            path: state_file.to_owned(),
            state: Mutex::new(state),
        })
    }

    /// The witness's cosignature verifier key, `<name>+<hex key ID>+base64(0x04 || key)`.
    pub fn verifier_key(&self) -> String {
        // The name was checked when the witness was opened.
        CosignatureVerifier::from_key(&self.name, self.key.verifying_key())
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    /// The latest checkpoint cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<Latest> {
        self.state.lock().ok()?.logs.get(origin).cloned()
    }

    /// Handles one `add-checkpoint` request at time `now` (Unix seconds): checks it,
    /// persists the new latest checkpoint, and returns the cosignature line.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Result<String, WitnessError> {
        let req = AddCheckpoint::parse(body)?;
        let parsed = parse_note(req.checkpoint.as_bytes())
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let body_cp = Checkpoint::parse_body(&parsed.text)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let verifier = self
            .logs
            .get(&body_cp.origin)
            .ok_or_else(|| WitnessError::UnknownLog(body_cp.origin.clone()))?;
        let signed = open_checkpoint(&req.checkpoint, verifier)
            .map_err(|e| WitnessError::NotSigned(e.to_string()))?;
        let cp = signed.checkpoint;
        if req.old > cp.size.0 {
            return Err(WitnessError::OldTooLarge {
                old: req.old,
                size: cp.size.0,
            });
        }
        // One request at a time: the check and the write are one step.
        let mut state = self
            .state
            .lock()
            .map_err(|_| WitnessError::Sign("state lock poisoned".into()))?;
        let (latest_size, latest_root) = state
            .logs
            .get(&cp.origin)
            .map_or((0, empty_root()), |l| (l.size, l.root));
        if req.old != latest_size {
            return Err(WitnessError::Conflict {
                old: req.old,
                latest: latest_size,
            });
        }
        let proof = ConsistencyProof {
            old_size: TreeSize(req.old),
            new_size: cp.size,
            path: req.proof,
        };
        verify_consistency(&proof, &latest_root, &cp.root).map_err(|e| WitnessError::BadProof {
            old: req.old,
            reason: e.to_string(),
        })?;
        let mut next = state.clone();
        next.version = STATE_VERSION;
        next.logs.insert(
            cp.origin.clone(),
            Latest {
                size: cp.size.0,
                root: cp.root,
                note: req.checkpoint.clone(),
            },
        );
        write_json_atomic(&self.path, &next)?;
        *state = next;
        let sig = cosign(&self.name, &self.key, &parsed.text, now);
        Ok(sig.to_line())
    }
}

/// The seed of a `PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)` string.
fn private_seed(skey: &str) -> Option<[u8; 32]> {
    let b64 = skey.rsplit('+').next()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let (alg, seed) = raw.split_first()?;
    if *alg != 0x01 {
        return None;
    }
    <[u8; 32]>::try_from(seed).ok()
}

/// Checks a cosignature line's signature (from [`cosign`]) over `text` with the
/// witness's raw public key.
pub fn verify_cosignature(sig: &NoteSignature, witness_key: &[u8; 32], text: &str) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(witness_key)
        .ok()
        .and_then(|vk| CosignatureVerifier::from_key(&sig.name, vk).ok())
        .is_some_and(|v| v.verifies(sig, text))
}

/// Attaches a cosignature line (as [`Witness::add_checkpoint`] returns it) to the
/// checkpoint note: what a log publishes with its witnesses' cosignatures.
pub fn attach(note: &str, line: &str) -> Result<String, WitnessError> {
    let with = format!("{note}{line}");
    let parsed = parse_note(with.as_bytes()).map_err(|e| WitnessError::Malformed(e.to_string()))?;
    let sig = parsed
        .signatures
        .last()
        .ok_or_else(|| WitnessError::Malformed("no cosignature line".into()))?;
    add_signature(note, sig).map_err(|e| WitnessError::Malformed(e.to_string()))
}

/// The witness's HTTP API.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route(ADD_CHECKPOINT, post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(witness)
}

async fn handle(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "the request body is not UTF-8\n").into_response();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = text.to_owned();
    let w = Arc::clone(&witness);
    // The check and the fsync'd write block; keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || w.add_checkpoint(&text, now)).await;
    match result {
        Ok(Ok(line)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            line,
        )
            .into_response(),
        Ok(Err(WitnessError::Conflict { latest, .. })) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{latest}\n"),
        )
            .into_response(),
        Ok(Err(e)) => (e.status(), format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "witness task failed\n").into_response(),
    }
}
