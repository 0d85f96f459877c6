//! The HTTP face of [`Error`]: its status, its RFC 9457 problem
//! ([`lupus_api::problem::Problem`], `application/problem+json`) and, for the errors
//! that pass by themselves, `Retry-After`. The detail of an internal error stays in the
//! operator's log: the client gets a reference to it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lupus_api::problem::{CONTENT_TYPE as PROBLEM, Problem};

use crate::error::Error;

/// The HTTP status of an error.
pub fn status(e: &Error) -> u16 {
    match e {
        Error::Malformed(_) => 400,
        Error::Unauthenticated(_) => 401,
        Error::NotAllowed(_) => 403,
        Error::NotFound(_) => 404,
        Error::TooSlow(_) => 408,
        Error::Conflict(_) => 409,
        Error::TooLarge(_) => 413,
        Error::Invalid(_) => 422,
        Error::RateLimited { .. } => 429,
        Error::Internal(_) => 500,
        Error::Busy(_) => 503,
        Error::StoreFull(_) => 507,
    }
}

/// The problem document of an error (for an internal one, see [`IntoResponse`]).
pub fn problem(e: &Error) -> Problem {
    let (slug, title) = match e {
        Error::Malformed(_) => ("bad-request", "Malformed request"),
        Error::Unauthenticated(_) => ("unauthorized", "Request signature refused"),
        Error::NotAllowed(_) => ("forbidden", "Not allowed for this key"),
        Error::NotFound(_) => ("not-found", "Not found"),
        Error::Conflict(_) => ("conflict", "Conflicts with the current state"),
        Error::TooSlow(_) => ("timeout", "Request too slow"),
        Error::TooLarge(_) => ("too-large", "Request body too large"),
        Error::Invalid(_) => ("unprocessable", "Content refused"),
        Error::RateLimited { .. } => ("too-many-requests", "Too many requests"),
        Error::Internal(_) => ("internal", "Coordinator error"),
        Error::Busy(_) => ("unavailable", "Briefly unavailable"),
        Error::StoreFull(_) => ("insufficient-storage", "Blob store full"),
    };
    Problem::new(status(e), slug, title, e.to_string())
}

/// Seconds a client should wait before sending the same request again, for the
/// errors that pass by themselves (the `Retry-After` header).
pub fn retry_after_s(e: &Error) -> Option<u32> {
    match e {
        Error::Busy(_) => Some(1),
        Error::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
        Error::StoreFull(_) => Some(30),
        _ => None,
    }
}

/// A problem as a response.
pub fn response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM)], body).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = match &self {
            // What failed inside (a path, a store's message, an invariant) is the
            // operator's to read, not a stranger's: the client gets a reference to it.
            Error::Internal(detail) => {
                let mut id = [0u8; 8];
                let reference = match getrandom::fill(&mut id) {
                    Ok(()) => hex::encode(id),
                    Err(_) => "unavailable".to_owned(),
                };
                tracing::error!(%reference, %detail, "internal error, answered 500");
                Problem::new(
                    500,
                    "internal",
                    "Coordinator error",
                    format!(
                        "the coordinator failed on this request; its operator's log has the detail under reference {reference}"
                    ),
                )
            }
            _ => problem(&self),
        };
        let mut response = response(&problem);
        if let Some(s) = retry_after_s(&self) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn an_internal_error_reaches_the_client_as_a_reference_only() {
        let response = Error::Internal("store at /srv/lupus/ledger.sqlite3: disk I/O error".into())
            .into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let problem: Problem = serde_json::from_slice(&body).unwrap();
        assert!(!problem.detail.contains("/srv"), "{problem:?}");
        assert!(!problem.detail.contains("disk I/O"), "{problem:?}");
        assert!(problem.detail.contains("reference"), "{problem:?}");

        // Other errors still say what was wrong: the client can act on them.
        let response = Error::Conflict("task 7 is already settled".into()).into_response();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let problem: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem.detail, "task 7 is already settled");
    }

    #[test]
    fn each_error_has_its_status_and_the_passing_ones_a_retry_after() {
        let s = || "x".to_string();
        let cases = [
            (Error::Malformed(s()), 400, None),
            (Error::Unauthenticated(s()), 401, None),
            (Error::NotAllowed(s()), 403, None),
            (Error::NotFound(s()), 404, None),
            (Error::TooSlow(s()), 408, None),
            (Error::Conflict(s()), 409, None),
            (Error::TooLarge(s()), 413, None),
            (Error::Invalid(s()), 422, None),
            (
                Error::RateLimited {
                    detail: s(),
                    retry_after_s: 7,
                },
                429,
                Some(7),
            ),
            (Error::Internal(s()), 500, None),
            (Error::Busy(s()), 503, Some(1)),
            (Error::StoreFull(s()), 507, Some(30)),
        ];
        for (e, code, retry) in cases {
            assert_eq!(status(&e), code, "{e:?}");
            assert_eq!(problem(&e).status, code, "{e:?}");
            let response = e.clone().into_response();
            assert_eq!(response.status().as_u16(), code, "{e:?}");
            let header = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().parse::<u32>().unwrap());
            assert_eq!(header, retry, "{e:?}");
        }
    }
}
