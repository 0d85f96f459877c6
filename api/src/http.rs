//! The one HTTP client of every native caller (feature `client`): the coordinator's
//! signed-request client, the witness feeder, the native worker and verifier, the test
//! harness's probes and the auditor all send through [`Http`]. One hyper client
//! (hyper-util's pooled `legacy::Client`, HTTP/1.1 over plain TCP), wrapped once with
//! what each of them needs: a deadline for the whole exchange, a cap on the answer's
//! size, and errors that say whether trying again can help. The browser's worker uses
//! `fetch` instead and does not build this module.
//!
//! No TLS: a coordinator is reached over plain HTTP on loopback or behind a reverse
//! proxy that terminates TLS. An `https://` URL is refused with [`HttpError::Request`]
//! rather than sent in clear.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long an exchange may take unless [`Http::with_timeout`] says otherwise: an
/// opening of a large job is tens of megabytes, and a server that hangs must not hang
/// its client.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What went wrong with an exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request could not be built (a malformed URL or header): retrying the same
    /// request cannot help.
    #[error("bad request: {0}")]
    Request(String),
    /// No answer: refused, reset, or a broken body. Retrying may help.
    #[error("no answer: {0}")]
    Unreachable(String),
    /// No whole answer within the deadline.
    #[error("no answer within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The answer's body is over the cap the caller set.
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    /// Whether trying the same request again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Unreachable(_) | HttpError::TimedOut(_))
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

impl Http {
    /// A client with [`DEFAULT_TIMEOUT`]. Needs a tokio runtime when it sends.
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client (and pool) with another deadline for each exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Http {
        self.timeout = timeout;
        self
    }

    /// Sends `method url` with `headers` and `body`, and reads the whole answer
    /// (at most `limit` bytes of body if given), all within the deadline.
    pub async fn send<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        url: &str,
        headers: &[(K, V)],
        body: impl Into<Bytes>,
        limit: Option<usize>,
    ) -> Result<Answer, HttpError> {
        if url.starts_with("https://") {
            return Err(HttpError::Request(format!(
                "{url}: this client speaks plain HTTP only; put the coordinator behind \
                 a TLS-terminating proxy and reach it over http:// from inside, or use \
                 the browser"
            )));
        }
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(name.as_ref(), value.as_ref());
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Unreachable(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = match limit {
                Some(max) => Limited::new(body, max)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            HttpError::TooLarge(max)
                        } else {
                            HttpError::Unreachable(e.to_string())
                        }
                    })?
                    .to_bytes(),
                None => body
                    .collect()
                    .await
                    .map_err(|e| HttpError::Unreachable(error_chain(&e)))?
                    .to_bytes(),
            };
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::TimedOut(self.timeout))?
    }

    /// `GET url` with no headers.
    pub async fn get(&self, url: &str, limit: Option<usize>) -> Result<Answer, HttpError> {
        self.send::<&str, &str>("GET", url, &[], Bytes::new(), limit)
            .await
    }
}

/// An error and its sources, as one line: hyper's own message alone is often just
/// "client error (Connect)".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server on loopback that answers `response` to the first request.
    async fn serve_once(response: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        format!("http://{addr}/x")
    }

    #[tokio::test]
    async fn an_answer_is_read_whole_with_its_status_and_headers() {
        let url =
            serve_once(b"HTTP/1.1 404 Not Found\r\nx-a: b\r\ncontent-length: 2\r\n\r\nno").await;
        let a = Http::new().get(&url, None).await.unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.headers["x-a"], "b");
        assert_eq!(&a.body[..], b"no");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused() {
        let url = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let e = Http::new().get(&url, Some(4)).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge(4)), "{e}");
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let e = Http::new()
            .with_timeout(Duration::from_millis(200))
            .get(&url, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, HttpError::TimedOut(_)) && e.is_transient(),
            "{e}"
        );
        drop(listener);
        let e = Http::new().get(&url, None).await.unwrap_err();
        assert!(
            matches!(e, HttpError::Unreachable(_)) && e.is_transient(),
            "{e}"
        );
    }

    #[tokio::test]
    async fn https_is_refused_rather_than_sent_in_clear() {
        let e = Http::new()
            .get("https://example.invalid/", None)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Request(_)), "{e}");
    }
}
