//! The coordinator's error type: what went wrong, in the protocol's terms. The engine
//! and the extractors return it; only the HTTP layer ([`crate::problem`]) turns it
//! into a status, an RFC 9457 problem and a `Retry-After`, and keeps the detail of an
//! [`Error::Internal`] in the operator's log.

use lupus_api::check::BodyError;

/// Why a request was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed (bad JSON, bad base64, a bad entry or opening
    /// encoding).
    #[error("{0}")]
    Malformed(String),
    /// The request is not signed, or its signature does not verify, or it is stale,
    /// or its body is not the one signed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The signer may not do this (not joined in the role, not the task's worker,
    /// slashed).
    #[error("{0}")]
    NotAllowed(String),
    /// No such task, round, entry or blob.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (already submitted, expired,
    /// replayed).
    #[error("{0}")]
    Conflict(String),
    /// The request or its body took longer than the coordinator allows.
    #[error("{0}")]
    TooSlow(String),
    /// The body is over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but wrong content (shapes, hashes, steps that do not match, a
    /// delta no honest run gives).
    #[error("{0}")]
    Invalid(String),
    /// This key sent too many requests of this kind: send again after `retry_after_s`.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_s: u32 },
    /// The coordinator failed (storage, an invariant). The text is for the operator.
    #[error("{0}")]
    Internal(String),
    /// The database is locked or unreachable for a moment, or the coordinator is at
    /// its limit of requests or unverified body bytes: nothing was written, send the
    /// same request again in a moment.
    #[error("{0}")]
    Busy(String),
    /// The blob store is full (its quota, or the disk): nothing was written; send the
    /// same request again once the operator has made room.
    #[error("{0}")]
    StoreFull(String),
}

/// A body refused by the pure checks of [`lupus_api::check`]: malformed, or wrong for
/// its task.
impl From<BodyError> for Error {
    fn from(e: BodyError) -> Error {
        if e.is_malformed() {
            Error::Malformed(e.to_string())
        } else {
            Error::Invalid(e.to_string())
        }
    }
}

/// Internal failures (storage, blobs, the prover refusing the coordinator's own inputs).
pub fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// A failure of the log: transient ones (a locked or unreachable database) are
/// [`Error::Busy`], the rest internal.
pub fn log_error(e: lupus_ledger::log::LogError) -> Error {
    if e.is_transient() {
        Error::Busy(format!(
            "the ledger database is locked or unreachable, nothing was written; try again: {e}"
        ))
    } else {
        Error::Internal(e.to_string())
    }
}

/// A failure of the store's metadata table, mapped as [`log_error`] maps the log's.
pub fn store_error(e: lupus_ledger::store::StoreError) -> Error {
    if e.is_transient() {
        Error::Busy(format!(
            "the ledger database is locked or unreachable, nothing was written; try again: {e}"
        ))
    } else {
        Error::Internal(e.to_string())
    }
}

/// A failure of the blob store: a full store (its quota or the disk) is
/// [`Error::StoreFull`], the rest internal.
pub fn blob_error(e: crate::blobs::BlobError) -> Error {
    if e.is_full() {
        Error::StoreFull(format!(
            "{e}; nothing was stored, send the same request again later"
        ))
    } else {
        Error::Internal(e.to_string())
    }
}
