//! Stake statements: a participant's balance and the job's total, provable offline
//! with nothing but the log's verifier key.
//!
//! DESIGN.md, "Ledger": "A stake statement: `{pubkey, balance, total, epoch, sum-tree
//! proof, inclusion proof of the epoch entry, checkpoint}`: verifiable offline with
//! nothing but the log's key." The chain of evidence is:
//!
//! 1. the checkpoint is a C2SP `tlog-checkpoint` signed by the log's key, so its root
//!    and size are the log's word;
//! 2. the `SharesEpoch` entry's leaf hash (RFC 9162, `SHA-256(0x00 || entry)`) is
//!    included at `entry_index` under that root (RFC 9162 §2.1.3.2);
//! 3. the entry commits a Merkle-sum tree root, total and account count
//!    ([`crate::sumtree`]); the sum proof puts `(pubkey, balance)` under that root and
//!    total.
//!
//! An auditor who replays the log with `lupus_protocol::SharesFold` checks that the
//! epoch commits the right balances; the statement proves what the log says.
//!
//! # JSON (version 1)
//!
//! ```json
//! {
//!   "version": 1,
//!   "pubkey": "<64 hex digits>",
//!   "balance": "<decimal u64>",
//!   "total": "<decimal u64>",
//!   "epoch": 3,
//!   "sum_proof": {"index": 0, "accounts": 5, "siblings": [{"hash": "<hex>", "sum": "<decimal>"}]},
//!   "entry_index": 42,
//!   "entry": "<standard base64, padded, of the entry's canonical bytes>",
//!   "inclusion": {"index": 42, "size": 57, "path": ["<hex>", ...]},
//!   "checkpoint": "<the signed note, text with its newlines>"
//! }
//! ```
//!
//! Amounts are decimal strings (JavaScript numbers lose integers above 2^53); hashes
//! and keys are lowercase hex; unknown fields are refused. A reader must check
//! `version` and refuse values other than 1 ([`verify_statement`] does).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use base64::Engine as _;

use crate::checkpoint::{CheckpointError, open_checkpoint};
use crate::entry::{Amount, Entry, EntryBody, EntryError, EntryKind, Epoch, PublicKey, Round};
use crate::hash::{LeafIndex, TreeSize, leaf_hash};
use crate::note::{NoteError, NoteVerifier};
use crate::proof::{InclusionProof, ProofError, verify_inclusion};
use crate::sumtree::{SumProof, SumTree, SumTreeError};

/// The statement format this code writes and reads.
pub const STATEMENT_VERSION: u32 = 1;

/// A self-contained proof of one account's stake at one shares epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StakeStatement {
    /// Format version; [`STATEMENT_VERSION`].
    pub version: u32,
    /// The account.
    pub pubkey: PublicKey,
    /// Its final balance at the epoch.
    pub balance: Amount,
    /// The sum of every final balance at the epoch.
    pub total: Amount,
    /// The shares epoch.
    pub epoch: Epoch,
    /// Puts `(pubkey, balance)` under the epoch's sum-tree root and total.
    pub sum_proof: SumProof,
    /// Log index of the `SharesEpoch` entry.
    pub entry_index: u64,
    /// The `SharesEpoch` entry's canonical bytes.
    #[serde(with = "base64_bytes")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, format = Byte, content_encoding = "base64")
    )]
    pub entry: Vec<u8>,
    /// Includes the entry under the checkpoint's root.
    pub inclusion: InclusionProof,
    /// The log's signed checkpoint (a C2SP signed note).
    pub checkpoint: String,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("entry: not standard base64: {e}")))
    }
}

/// What a verified statement proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedStake {
    pub pubkey: PublicKey,
    pub balance: Amount,
    pub total: Amount,
    pub epoch: Epoch,
    /// The round whose close the epoch follows.
    pub round: Round,
    /// The number of accounts at the epoch.
    pub accounts: u64,
    /// Log index of the epoch entry.
    pub entry_index: u64,
    /// The checkpoint's origin line (the log's name).
    pub origin: String,
    /// The checkpoint's tree size.
    pub checkpoint_size: TreeSize,
}

/// Why a statement could not be built or does not verify. Each check has its own
/// variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StakeError {
    /// The statement's format version is not one this code reads.
    #[error(
        "stake statement version {0} is not supported: this code reads version {STATEMENT_VERSION}"
    )]
    UnsupportedVersion(u32),
    /// The verifier key given is not a signed-note verifier key.
    #[error("the log verifier key is malformed (expected <name>+<hexid>+<base64>): {0}")]
    VerifierKey(#[source] NoteError),
    /// The checkpoint is malformed or not signed by the log's key.
    #[error("the checkpoint does not open with the log's key: {0}")]
    Checkpoint(#[source] CheckpointError),
    /// The entry bytes are not a valid entry.
    #[error("the epoch entry does not decode: {0}")]
    Entry(#[source] EntryError),
    /// The entry is valid but not a `SharesEpoch`.
    #[error("entry {index} is a {kind} entry, not a shares_epoch entry")]
    NotAnEpoch { index: u64, kind: EntryKind },
    /// The entry commits another epoch than the statement claims.
    #[error("the statement claims epoch {claimed}, but its entry commits epoch {committed}")]
    EpochMismatch { claimed: Epoch, committed: Epoch },
    /// The inclusion proof is for another index than `entry_index`.
    #[error("the inclusion proof is for index {proof}, but the statement names entry {claimed}")]
    IndexMismatch { claimed: u64, proof: LeafIndex },
    /// The inclusion proof is for another tree size than the checkpoint's.
    #[error(
        "the inclusion proof is for tree size {proof}, but the checkpoint is size {checkpoint}"
    )]
    SizeMismatch {
        checkpoint: TreeSize,
        proof: TreeSize,
    },
    /// The entry is not in the log at `entry_index` under the checkpoint's root.
    #[error("the epoch entry is not included at index {index} under the checkpoint root: {source}")]
    NotIncluded {
        index: u64,
        #[source]
        source: ProofError,
    },
    /// The statement's total differs from the one the entry commits.
    #[error("the statement claims total {claimed}, but the epoch entry commits {committed}")]
    TotalMismatch { claimed: Amount, committed: Amount },
    /// The sum proof is for a tree with another account count than the entry commits.
    #[error("the sum proof is for {proof} accounts, but the epoch entry commits {committed}")]
    AccountsMismatch { proof: u64, committed: u64 },
    /// The sum proof does not put `(pubkey, balance)` under the epoch's root and total.
    #[error("the balance is not proven under the epoch's sum-tree root: {0}")]
    BalanceNotProven(#[source] SumTreeError),
    /// Building: the key has no balance at this epoch.
    #[error("{0} has no balance at this epoch, so there is no stake to state")]
    NotAnAccount(PublicKey),
    /// Building: the entry does not commit the sum tree given.
    #[error("the epoch entry does not commit the sum tree given: fold the log up to that entry")]
    TreeMismatch,
}

/// Assembles a statement for `pubkey` from the epoch's sum tree (from
/// `lupus_protocol::SharesFold::latest_epoch`), the epoch entry, its log index, its
/// inclusion proof and a signed checkpoint covering it (from the store).
///
/// Checks what it can without the log's key: that `pubkey` is an account, that the
/// entry is a `SharesEpoch` committing exactly `tree`, and that the proof is for
/// `entry_index`. [`verify_statement`] does the full check.
pub fn build_statement(
    pubkey: &PublicKey,
    tree: &SumTree,
    entry_index: u64,
    entry: &Entry,
    inclusion: InclusionProof,
    checkpoint: String,
) -> Result<StakeStatement, StakeError> {
    let EntryBody::SharesEpoch {
        epoch,
        root,
        total,
        accounts,
        ..
    } = entry.body()
    else {
        return Err(StakeError::NotAnEpoch {
            index: entry_index,
            kind: entry.kind(),
        });
    };
    if tree.root() != (*root, *total) || tree.accounts() != *accounts {
        return Err(StakeError::TreeMismatch);
    }
    if inclusion.index.0 != entry_index {
        return Err(StakeError::IndexMismatch {
            claimed: entry_index,
            proof: inclusion.index,
        });
    }
    let balance = tree
        .balance(pubkey)
        .ok_or(StakeError::NotAnAccount(*pubkey))?;
    let sum_proof = tree
        .prove(pubkey)
        .ok_or(StakeError::NotAnAccount(*pubkey))?;
    Ok(StakeStatement {
        version: STATEMENT_VERSION,
        pubkey: *pubkey,
        balance,
        total: *total,
        epoch: *epoch,
        sum_proof,
        entry_index,
        entry: entry.encode(),
        inclusion,
        checkpoint,
    })
}

/// Verifies a statement offline against the log's verifier key
/// (`<name>+<hexid>+<base64>`, as in the genesis entry and the log's docs).
pub fn verify_statement(
    statement: &StakeStatement,
    verifier_key: &str,
) -> Result<VerifiedStake, StakeError> {
    if statement.version != STATEMENT_VERSION {
        return Err(StakeError::UnsupportedVersion(statement.version));
    }
    let verifier = NoteVerifier::parse(verifier_key).map_err(StakeError::VerifierKey)?;
    let signed =
        open_checkpoint(&statement.checkpoint, &verifier).map_err(StakeError::Checkpoint)?;
    let checkpoint = &signed.checkpoint;

    let entry = Entry::decode(&statement.entry).map_err(StakeError::Entry)?;
    let EntryBody::SharesEpoch {
        epoch,
        round,
        root,
        total,
        accounts,
    } = entry.body()
    else {
        return Err(StakeError::NotAnEpoch {
            index: statement.entry_index,
            kind: entry.kind(),
        });
    };
    if *epoch != statement.epoch {
        return Err(StakeError::EpochMismatch {
            claimed: statement.epoch,
            committed: *epoch,
        });
    }

    // The proof's own index and size are not bound by the root alone (an RFC 9162
    // path can fit more than one size), so both must match what the statement and the
    // signed checkpoint say.
    if statement.inclusion.index.0 != statement.entry_index {
        return Err(StakeError::IndexMismatch {
            claimed: statement.entry_index,
            proof: statement.inclusion.index,
        });
    }
    if statement.inclusion.size != checkpoint.size {
        return Err(StakeError::SizeMismatch {
            checkpoint: checkpoint.size,
            proof: statement.inclusion.size,
        });
    }
    verify_inclusion(
        &statement.inclusion,
        &leaf_hash(&statement.entry),
        &checkpoint.root,
    )
    .map_err(|source| StakeError::NotIncluded {
        index: statement.entry_index,
        source,
    })?;

    if statement.total != *total {
        return Err(StakeError::TotalMismatch {
            claimed: statement.total,
            committed: *total,
        });
    }
    if statement.sum_proof.accounts != *accounts {
        return Err(StakeError::AccountsMismatch {
            proof: statement.sum_proof.accounts,
            committed: *accounts,
        });
    }
    statement
        .sum_proof
        .verify(&statement.pubkey, statement.balance, root, *total)
        .map_err(StakeError::BalanceNotProven)?;

    Ok(VerifiedStake {
        pubkey: statement.pubkey,
        balance: statement.balance,
        total: *total,
        epoch: *epoch,
        round: *round,
        accounts: *accounts,
        entry_index: statement.entry_index,
        origin: checkpoint.origin.clone(),
        checkpoint_size: checkpoint.size,
    })
}
