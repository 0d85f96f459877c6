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
    /// The body is over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but wrong content (shapes, hashes, steps that do not match).
    #[error("{0}")]
    Unprocessable(String),
    /// The coordinator failed (storage, an invariant).
    #[error("{0}")]
    Internal(String),
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
            ApiError::TooLarge(_) => 413,
            ApiError::Unprocessable(_) => 422,
            ApiError::Internal(_) => 500,
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
            ApiError::TooLarge(_) => ("too-large", "Request body too large"),
            ApiError::Unprocessable(_) => ("unprocessable", "Content refused"),
            ApiError::Internal(_) => ("internal", "Coordinator error"),
        };
        Problem::new(self.status(), slug, title, self.to_string())
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
