//! Offline checks of what a participant shows: a stake statement
//! ([`lupus_ledger::stake`], the JSON of `/v1/stake/<pubkey>`) or a C2SP `tlog-proof`
//! (<https://c2sp.org/tlog-proof>) for one entry. Nothing but the log's verifier key
//! is needed: the checks are the ledger's [`verify_statement`] and
//! [`TlogProof::verify`].
//!
//! A `tlog-proof` proves a leaf hash; the entry itself comes from `--entry` (its
//! canonical bytes) or, when that is absent, from the proof's `extra` line if that
//! holds a valid entry. The entry is then decoded, so its participant signature is
//! checked too.
//!
//! **Freshness** ([`Freshness`]). A checkpoint carries no time, so a valid statement
//! may be old: an operator could hand out a statement from before a slash. Witnesses'
//! C2SP `tlog-cosignature`s are timestamped: with `--witness KEY` (repeatable) every
//! named witness must have cosigned the statement's checkpoint, and with `--max-age`
//! the newest of those cosignatures must be that recent (and not from the future,
//! beyond [`MAX_CLOCK_SKEW`]). `--max-age` without a witness is refused: nothing else
//! dates a checkpoint.

use lupus_ledger::entry::{Entry, EntryBody, EntryError};
use lupus_ledger::hash::leaf_hash;
use lupus_ledger::note::{CosignatureVerifier, NoteVerifier, parse_note};
use lupus_ledger::proof::{TLOG_PROOF_HEADER, TlogProof, TlogProofError};
use lupus_ledger::stake::{StakeError, StakeStatement, VerifiedStake, verify_statement};
use serde::Serialize;

/// Why a statement or proof file does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatementError {
    /// The file is neither a stake statement nor a `tlog-proof`.
    #[error(
        "the file is neither a stake statement (JSON) nor a tlog-proof (first line {TLOG_PROOF_HEADER:?}): {0}"
    )]
    Format(String),
    /// The key is not a signed-note verifier key.
    #[error("the log key is malformed (expected <name>+<hexid>+<base64>): {0}")]
    Key(String),
    /// The stake statement does not verify.
    #[error(transparent)]
    Stake(#[from] StakeError),
    /// The `tlog-proof` does not verify.
    #[error(transparent)]
    Proof(#[from] TlogProofError),
    /// A `tlog-proof` without the entry it proves.
    #[error(
        "the tlog-proof proves a leaf, but no entry came with it: pass --entry with the entry's bytes"
    )]
    NoEntry,
    /// The entry does not decode.
    #[error("the proven entry does not decode: {0}")]
    Entry(#[from] EntryError),
    /// `--max-age` was asked without a witness to date the checkpoint.
    #[error(
        "--max-age needs --witness: a checkpoint carries no time of its own, only a witness's cosignature dates it"
    )]
    AgeWithoutWitness,
    /// A required witness did not cosign the checkpoint.
    #[error(
        "witness {witness} did not cosign this checkpoint: ask the coordinator for a statement against a checkpoint it cosigned"
    )]
    NotCosigned { witness: String },
    /// The newest required cosignature is older than allowed.
    #[error(
        "the checkpoint's newest cosignature (by {witness}) is {age_s} s old, over --max-age {max_s} s: the balance may have changed since"
    )]
    Stale {
        witness: String,
        age_s: u64,
        max_s: u64,
    },
    /// A cosignature is dated after now (beyond the allowed clock skew).
    #[error(
        "witness {witness} dated its cosignature {ahead_s} s in the future: a clock is wrong, or the cosignature is"
    )]
    FromTheFuture { witness: String, ahead_s: u64 },
}

/// How far a cosignature's time may run ahead of this machine's clock.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// What makes a statement or proof fresh enough to act on.
#[derive(Clone, Debug, Default)]
pub struct Freshness {
    /// Witnesses that must each have cosigned the checkpoint.
    pub witnesses: Vec<CosignatureVerifier>,
    /// The newest of their cosignatures may be at most this many seconds old.
    pub max_age_s: Option<u64>,
    /// The current time, seconds since the Unix epoch.
    pub now_s: u64,
}

impl Freshness {
    /// Checks the note `checkpoint`'s cosignatures; returns the time of the newest
    /// required one (`None` when no witness is required).
    pub fn check(&self, checkpoint: &str) -> Result<Option<u64>, StatementError> {
        if self.witnesses.is_empty() {
            return match self.max_age_s {
                Some(_) => Err(StatementError::AgeWithoutWitness),
                None => Ok(None),
            };
        }
        let note = parse_note(checkpoint.as_bytes())
            .map_err(|e| StatementError::Format(format!("the checkpoint: {e}")))?;
        let mut newest: Option<(u64, &str)> = None;
        for w in &self.witnesses {
            let time = note
                .signatures
                .iter()
                .filter(|sig| w.verifies(sig, &note.text))
                .filter_map(|sig| {
                    sig.signature
                        .first_chunk::<8>()
                        .map(|t| u64::from_be_bytes(*t))
                })
                .max()
                .ok_or_else(|| StatementError::NotCosigned {
                    witness: w.to_string(),
                })?;
            if time > self.now_s + MAX_CLOCK_SKEW {
                return Err(StatementError::FromTheFuture {
                    witness: w.name().to_owned(),
                    ahead_s: time - self.now_s,
                });
            }
            if newest.is_none_or(|(t, _)| time > t) {
                newest = Some((time, w.name()));
            }
        }
        if let (Some(max_s), Some((time, witness))) = (self.max_age_s, newest) {
            let age_s = self.now_s.saturating_sub(time);
            if age_s > max_s {
                return Err(StatementError::Stale {
                    witness: witness.to_owned(),
                    age_s,
                    max_s,
                });
            }
        }
        Ok(newest.map(|(t, _)| t))
    }
}

/// What a file proved.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Proven {
    /// A stake statement.
    Stake {
        pubkey: String,
        balance: u64,
        total: u64,
        epoch: u64,
        round: u64,
        accounts: u64,
        entry_index: u64,
        checkpoint_size: u64,
        origin: String,
        /// The newest required witness cosignature's time (Unix seconds).
        cosigned_at: Option<u64>,
    },
    /// One entry included in the log.
    Inclusion {
        index: u64,
        checkpoint_size: u64,
        origin: String,
        cosignatures: usize,
        /// The newest required witness cosignature's time (Unix seconds).
        cosigned_at: Option<u64>,
        entry: EntryBody,
    },
}

impl From<VerifiedStake> for Proven {
    fn from(v: VerifiedStake) -> Proven {
        Proven::Stake {
            pubkey: v.pubkey.to_string(),
            balance: v.balance.0,
            total: v.total.0,
            epoch: v.epoch.0,
            round: v.round.0,
            accounts: v.accounts,
            entry_index: v.entry_index,
            checkpoint_size: v.checkpoint_size.0,
            origin: v.origin,
            cosigned_at: None,
        }
    }
}

/// Checks a stake statement or a `tlog-proof` (told apart by their first bytes)
/// against the log's verifier key. `entry` is the proven entry's bytes for a
/// `tlog-proof`.
pub fn check(text: &str, vkey: &str, entry: Option<&[u8]>) -> Result<Proven, StatementError> {
    check_fresh(text, vkey, entry, &Freshness::default())
}

/// [`check`], and the checkpoint's freshness by `fresh`.
pub fn check_fresh(
    text: &str,
    vkey: &str,
    entry: Option<&[u8]>,
    fresh: &Freshness,
) -> Result<Proven, StatementError> {
    let vkey = vkey.trim();
    if text.starts_with(TLOG_PROOF_HEADER) {
        let verifier = NoteVerifier::parse(vkey).map_err(|e| StatementError::Key(e.to_string()))?;
        let proof = TlogProof::parse(text)?;
        let bytes = match (entry, &proof.extra) {
            (Some(e), _) => e.to_vec(),
            (None, Some(extra)) if Entry::decode(extra).is_ok() => extra.clone(),
            _ => return Err(StatementError::NoEntry),
        };
        let signed = proof.verify(&leaf_hash(&bytes), &verifier)?;
        let decoded = Entry::decode(&bytes)?;
        let cosigned_at = fresh.check(&signed.note)?;
        return Ok(Proven::Inclusion {
            index: proof.index.0,
            checkpoint_size: signed.checkpoint.size.0,
            origin: signed.checkpoint.origin,
            cosignatures: signed.other_signatures.len(),
            cosigned_at,
            entry: decoded.body().clone(),
        });
    }
    let statement: StakeStatement =
        serde_json::from_str(text).map_err(|e| StatementError::Format(e.to_string()))?;
    let verified = verify_statement(&statement, vkey)?;
    let cosigned_at = fresh.check(&statement.checkpoint)?;
    let mut proven = Proven::from(verified);
    if let Proven::Stake {
        cosigned_at: at, ..
    } = &mut proven
    {
        *at = cosigned_at;
    }
    Ok(proven)
}
