//! The coordinator's error type: every failure a client can cause or see, mapped to an
//! HTTP status and an RFC 9457 problem ([`lupus_api::problem::Problem`]).

use lupus_api::check::BodyError;
use lupus_api::problem::Problem;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed (bad JSON, bad base64, a bad entry encoding).
    #[error("{0}")]
    BadRequest(String),
    /// The request is not signed, or its signature does not verify, or it is stale.
    #[error("{0}")]
    Unauthorized(String),
    /// The signer may not do this (not the task's worker, not a verifier, slashed).
    #[error("{0}")]
    Forbidden(String),
    /// No such task, round, entry or blob.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (already submitted, expired, replayed).
    #[error("{0}")]
    Conflict(String),
    /// The request or its body took longer than the coordinator allows.
    #[error("{0}")]
    Timeout(String),
    /// The body is over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but wrong content (shapes, hashes, steps that do not match).
    #[error("{0}")]
    Unprocessable(String),
    /// This key sent too many requests of this kind: send again after `retry_after_s`.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_s: u32 },
    /// The coordinator failed (storage, an invariant).
    #[error("{0}")]
    Internal(String),
    /// The database is locked or unreachable for a moment, or the coordinator is at
    /// its limit of requests or unverified body bytes: nothing was written, send the
    /// same request again after `Retry-After` seconds.
    #[error("{0}")]
    Unavailable(String),
    /// The blob store is full (its quota, or the disk): nothing was written; send the
    /// same request again once the operator has made room.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Timeout(_) => 408,
            ApiError::TooLarge(_) => 413,
            ApiError::Unprocessable(_) => 422,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
            ApiError::InsufficientStorage(_) => 507,
        }
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        let (slug, title) = match self {
            ApiError::BadRequest(_) => ("bad-request", "Malformed request"),
            ApiError::Unauthorized(_) => ("unauthorized", "Request signature refused"),
            ApiError::Forbidden(_) => ("forbidden", "Not allowed for this key"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::Conflict(_) => ("conflict", "Conflicts with the current state"),
            ApiError::Timeout(_) => ("timeout", "Request too slow"),
            ApiError::TooLarge(_) => ("too-large", "Request body too large"),
            ApiError::Unprocessable(_) => ("unprocessable", "Content refused"),
            ApiError::TooManyRequests { .. } => ("too-many-requests", "Too many requests"),
            ApiError::Internal(_) => ("internal", "Coordinator error"),
            ApiError::Unavailable(_) => ("unavailable", "Briefly unavailable"),
            ApiError::InsufficientStorage(_) => ("insufficient-storage", "Blob store full"),
        };
        Problem::new(self.status(), slug, title, self.to_string())
    }
}

impl ApiError {
    /// Seconds a client should wait before sending the same request again, for the
    /// errors that pass by themselves (the `Retry-After` header).
    pub fn retry_after_s(&self) -> Option<u32> {
        match self {
            ApiError::Unavailable(_) => Some(1),
            ApiError::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::InsufficientStorage(_) => Some(30),
            _ => None,
        }
    }
}

/// A body refused by the pure checks of [`lupus_api::check`]: malformed (400) or
/// wrong for its task (422).
impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        if e.is_malformed() {
            ApiError::BadRequest(e.to_string())
        } else {
            ApiError::Unprocessable(e.to_string())
        }
    }
}

/// Internal failures (storage, blobs, the prover refusing the coordinator's own inputs).
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// A failure of the log: transient ones (a locked or unreachable database) are 503
/// with `Retry-After`, the rest internal.
pub fn log_error(e: lupus_ledger::log::LogError) -> ApiError {
    if e.is_transient() {
        ApiError::Unavailable(format!(
            "the ledger database is locked or unreachable, nothing was written; try again: {e}"
        ))
    } else {
        ApiError::Internal(e.to_string())
    }
}

/// A failure of the store's metadata table, mapped as [`log_error`] maps the log's.
pub fn store_error(e: lupus_ledger::store::StoreError) -> ApiError {
    if e.is_transient() {
        ApiError::Unavailable(format!(
            "the ledger database is locked or unreachable, nothing was written; try again: {e}"
        ))
    } else {
        ApiError::Internal(e.to_string())
    }
}

/// A failure of the blob store: a full store (its quota or the disk) is 507, the rest
/// internal.
pub fn blob_error(e: crate::blobs::BlobError) -> ApiError {
    if e.is_full() {
        ApiError::InsufficientStorage(format!(
            "{e}; nothing was stored, send the same request again later"
        ))
    } else {
        ApiError::Internal(e.to_string())
    }
}
