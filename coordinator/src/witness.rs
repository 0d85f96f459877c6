//! The log side of C2SP `tlog-witness` (<https://c2sp.org/tlog-witness>): for each
//! configured witness, a background task follows the log's published head, sends it to
//! the witness's `POST /add-checkpoint` with a consistency proof from the size the
//! witness last cosigned, checks the returned C2SP `tlog-cosignature` v1 line against
//! the witness's key, and keeps the latest one. `GET /checkpoint` serves the signed
//! checkpoint with the cosignatures over exactly that checkpoint appended.
//!
//! The tasks only read the log; a slow or dead witness never delays an append.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lupus_api::http::{Http, HttpError};
use lupus_ledger::hash::TreeSize;
use lupus_ledger::log::LogHead;
use lupus_ledger::note::{CosignatureVerifier, NoteSignature, parse_note};
use tokio::task::JoinHandle;

use crate::engine::Coordinator;

/// Longest wait between retries of an unreachable witness.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one request to a witness may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest witness response read.
const MAX_RESPONSE: usize = 16 << 10;

/// Why a `--witness` value or a witness key does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessConfigError {
    #[error("a witness must be given as <URL>=<verifier key>, got {0:?}")]
    NoEquals(String),
    #[error("the witness URL {0:?} must start with http://")]
    BadUrl(String),
    #[error(
        "the witness key {key:?} is malformed: {why}; expected <name>+<8 hex digits>+<base64 of 0x04 and a 32-byte Ed25519 key> (what `lupus-audit witness` prints)"
    )]
    BadKey { key: String, why: String },
}

/// A witness's `tlog-cosignature` v1 verifier key:
/// `<name>+<hex8 key ID>+base64(0x04 || Ed25519 public key)` (what `lupus-audit
/// witness` prints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessKey(CosignatureVerifier);

impl WitnessKey {
    /// The key's name (the witness's name in its cosignature lines).
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Whether `sig` is this witness's `tlog-cosignature` v1 over the checkpoint
    /// text `text`.
    pub fn verifies(&self, sig: &NoteSignature, text: &str) -> bool {
        self.0.verifies(sig, text)
    }
}

impl FromStr for WitnessKey {
    type Err = WitnessConfigError;

    fn from_str(s: &str) -> Result<WitnessKey, WitnessConfigError> {
        CosignatureVerifier::parse(s)
            .map(WitnessKey)
            .map_err(|e| WitnessConfigError::BadKey {
                key: s.to_owned(),
                why: e.to_string(),
            })
    }
}

/// One witness the coordinator sends its checkpoints to: `<URL>=<verifier key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    /// The witness's base URL; requests go to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's cosignature verifier key.
    pub key: WitnessKey,
}

impl FromStr for WitnessConfig {
    type Err = WitnessConfigError;

    fn from_str(s: &str) -> Result<WitnessConfig, WitnessConfigError> {
        let (url, key) = s
            .split_once('=')
            .ok_or_else(|| WitnessConfigError::NoEquals(s.to_owned()))?;
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            return Err(WitnessConfigError::BadUrl(url.to_owned()));
        }
        Ok(WitnessConfig {
            url: url.trim_end_matches('/').to_owned(),
            key: key.parse()?,
        })
    }
}

/// A verified cosignature over one checkpoint text.
#[derive(Clone, Debug)]
pub struct Cosigned {
    /// The checkpoint text (the note's body) the cosignature signs.
    pub text: String,
    /// The log's signed note of that checkpoint (without cosignatures).
    pub note: String,
    /// Its tree size.
    pub size: u64,
    /// The cosignature line, parsed.
    pub signature: NoteSignature,
}

/// Starts one task per witness; abort the handles to stop them.
pub fn spawn(coordinator: &Arc<Coordinator>, witnesses: Vec<WitnessConfig>) -> Vec<JoinHandle<()>> {
    witnesses
        .into_iter()
        .enumerate()
        .map(|(slot, w)| {
            let c = Arc::clone(coordinator);
            tokio::spawn(follow(c, slot, w))
        })
        .collect()
}

/// What one attempt to have a head cosigned came to.
enum Attempt {
    Cosigned(Cosigned),
    /// The witness last cosigned this size (a `409`): retry from there.
    Conflict(u64),
    /// The witness refused the checkpoint; wait for the next head.
    Refused(String),
    /// Network trouble or a server error: retry with backoff.
    Retry(String),
}

async fn follow(c: Arc<Coordinator>, slot: usize, w: WitnessConfig) {
    let http = Http::new().with_timeout(REQUEST_TIMEOUT);
    let mut heads = c.log().subscribe();
    // The size this witness last cosigned for this log, as far as we know.
    let mut known = 0u64;
    'heads: loop {
        let head = Arc::clone(&heads.borrow_and_update());
        let mut backoff = Duration::from_millis(250);
        let mut conflicts = 0;
        loop {
            match attempt(&c, &http, &w, known, &head).await {
                Attempt::Cosigned(cosigned) => {
                    tracing::info!(witness = %w.url, size = head.size.0, "checkpoint cosigned");
                    known = head.size.0;
                    c.record_cosignature(slot, cosigned);
                    break;
                }
                Attempt::Conflict(size) if conflicts < 3 => {
                    tracing::info!(witness = %w.url, size, "the witness last cosigned another size; retrying from it");
                    known = size;
                    conflicts += 1;
                }
                Attempt::Conflict(size) => {
                    tracing::warn!(witness = %w.url, size, "the witness keeps answering 409; waiting for the next checkpoint");
                    break;
                }
                Attempt::Refused(why) => {
                    tracing::warn!(witness = %w.url, size = head.size.0, %why, "the witness refused the checkpoint");
                    break;
                }
                Attempt::Retry(why) => {
                    tracing::warn!(witness = %w.url, %why, retry_in_ms = backoff.as_millis() as u64, "witness unreachable");
                    // A newer head replaces the one being retried.
                    match tokio::time::timeout(backoff, heads.changed()).await {
                        Ok(Ok(())) => continue 'heads,
                        Ok(Err(_)) => return,
                        Err(_) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if !heads.has_changed().unwrap_or(false) && heads.changed().await.is_err() {
            return;
        }
    }
}

async fn attempt(
    c: &Coordinator,
    http: &Http,
    w: &WitnessConfig,
    known: u64,
    head: &LogHead,
) -> Attempt {
    if known > head.size.0 {
        return Attempt::Refused(format!(
            "the witness has cosigned size {known}, above this checkpoint's {}",
            head.size.0
        ));
    }
    let proof = match c.log().consistency_proof(TreeSize(known), head.size).await {
        Ok(p) => p.path,
        Err(e) => return Attempt::Retry(format!("consistency proof: {e}")),
    };
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut body = format!("old {known}\n");
    for h in &proof {
        body.push_str(&b64.encode(h.0));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(&head.note);
    let answer = http
        .send(
            "POST",
            &format!("{}/add-checkpoint", w.url),
            &[("content-type", "text/plain; charset=utf-8")],
            body,
            Some(MAX_RESPONSE),
        )
        .await;
    let (status, bytes) = match answer {
        Ok(a) => (a.status, a.body),
        Err(e @ HttpError::Request(_)) => return Attempt::Refused(e.to_string()),
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let text = String::from_utf8_lossy(&bytes);
    match status {
        200 => cosignature(&head.note, &text, &w.key),
        409 => match text.trim().parse::<u64>() {
            Ok(size) => Attempt::Conflict(size),
            Err(_) => Attempt::Refused(format!("409 without a size: {text:?}")),
        },
        s if s >= 500 => Attempt::Retry(format!("status {s}: {}", text.trim())),
        s => Attempt::Refused(format!("status {s}: {}", text.trim())),
    }
}

/// The witness's cosignature among the lines of a `200` answer, checked over `note`'s
/// text.
fn cosignature(note: &str, lines: &str, key: &WitnessKey) -> Attempt {
    let parsed = match parse_note(format!("{note}{lines}").as_bytes()) {
        Ok(p) => p,
        Err(e) => return Attempt::Refused(format!("the answer is not cosignature lines: {e}")),
    };
    match parsed
        .signatures
        .into_iter()
        .find(|s| key.verifies(s, &parsed.text))
    {
        Some(signature) => Attempt::Cosigned(Cosigned {
            size: checkpoint_size(&parsed.text),
            text: parsed.text,
            note: note.to_owned(),
            signature,
        }),
        None => Attempt::Refused("no line of the answer verifies with the witness's key".into()),
    }
}

/// The tree size of a checkpoint text (its second line), 0 if it has none.
fn checkpoint_size(text: &str) -> u64 {
    text.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use lupus_ledger::note::cosign;

    use super::*;

    fn witness_key(name: &str, sk: &SigningKey) -> String {
        CosignatureVerifier::from_key(name, sk.verifying_key())
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_cosignature_verifies_only_over_its_text_and_with_its_key() {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let key: WitnessKey = witness_key("w.example", &sk).parse().unwrap();
        let text = "origin\n3\nroot\n";
        let sig = cosign("w.example", &sk, text, 1_700_000_000);
        assert!(key.verifies(&sig, text));
        assert!(!key.verifies(&sig, "origin\n4\nroot\n"));
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(!key.verifies(&cosign("w.example", &other, text, 1), text));
        let mut renamed = sig.clone();
        renamed.name = "x.example".into();
        assert!(!key.verifies(&renamed, text));
        let mut short = sig;
        short.signature.truncate(8);
        assert!(!key.verifies(&short, text));
    }

    #[test]
    fn malformed_witness_flags_are_refused_with_the_reason() {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let good = witness_key("w.example", &sk);
        let w: WitnessConfig = format!("http://127.0.0.1:9/={good}").parse().unwrap();
        assert_eq!(w.url, "http://127.0.0.1:9");
        assert_eq!(w.key.name(), "w.example");
        assert!(matches!(
            good.parse::<WitnessConfig>(),
            Err(WitnessConfigError::NoEquals(_))
        ));
        assert!(matches!(
            format!("https://w={good}").parse::<WitnessConfig>(),
            Err(WitnessConfigError::BadUrl(_))
        ));
        // A note (0x01) key, a wrong key ID, and junk are all refused.
        let note_key = lupus_ledger::note::NoteSigner::from_secret("w.example", [5; 32])
            .unwrap()
            .verifier_key();
        let long_id = good.replacen('+', "+0", 1);
        for bad in [
            note_key,
            format!("w.example+00000000+{}", &good[19..]),
            long_id,
            "junk".into(),
        ] {
            assert!(
                matches!(
                    format!("http://w={bad}").parse::<WitnessConfig>(),
                    Err(WitnessConfigError::BadKey { .. })
                ),
                "{bad}"
            );
        }
    }
}
