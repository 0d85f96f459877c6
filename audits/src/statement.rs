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

use lupus_ledger::entry::{Entry, EntryBody, EntryError};
use lupus_ledger::hash::leaf_hash;
use lupus_ledger::note::NoteVerifier;
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
    },
    /// One entry included in the log.
    Inclusion {
        index: u64,
        checkpoint_size: u64,
        origin: String,
        cosignatures: usize,
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
        }
    }
}

/// Checks a stake statement or a `tlog-proof` (told apart by their first bytes)
/// against the log's verifier key. `entry` is the proven entry's bytes for a
/// `tlog-proof`.
pub fn check(text: &str, vkey: &str, entry: Option<&[u8]>) -> Result<Proven, StatementError> {
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
        return Ok(Proven::Inclusion {
            index: proof.index.0,
            checkpoint_size: signed.checkpoint.size.0,
            origin: signed.checkpoint.origin,
            cosignatures: signed.other_signatures.len(),
            entry: decoded.body().clone(),
        });
    }
    let statement: StakeStatement =
        serde_json::from_str(text).map_err(|e| StatementError::Format(e.to_string()))?;
    Ok(verify_statement(&statement, vkey)?.into())
}
