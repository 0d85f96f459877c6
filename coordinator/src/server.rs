//! Runs the coordinator: the HTTP listener and the ticker that expires overdue tasks
//! and closes rounds (the close computes outside the state lock, see
//! `Coordinator::tick`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::engine::Coordinator;
use crate::limits::Limits;
use crate::routes::router_with;
use crate::witness::WitnessConfig;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub coordinator: Arc<Coordinator>,
    http: JoinHandle<()>,
    ticker: JoinHandle<()>,
    witnesses: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves `coordinator` with the default [`Limits`]; `web` is the
    /// volunteer page's directory.
    pub async fn start(
        coordinator: Arc<Coordinator>,
        addr: SocketAddr,
        web: Option<PathBuf>,
    ) -> std::io::Result<Server> {
        Server::start_with(coordinator, addr, web, Limits::default()).await
    }

    /// [`Server::start`], bounded by `limits`.
    pub async fn start_with(
        coordinator: Arc<Coordinator>,
        addr: SocketAddr,
        web: Option<PathBuf>,
        limits: Limits,
    ) -> std::io::Result<Server> {
        raise_open_files_limit();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let header_timeout = limits.header_timeout;
        let app = router_with(Arc::clone(&coordinator), web, limits);
        let http = tokio::spawn(serve(listener, app, header_timeout));
        let c = Arc::clone(&coordinator);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // A round close runs here, off the request path: a verdict that meets
                // the round's target wakes the ticker instead of closing in-line.
                tokio::select! {
                    _ = every.tick() => {}
                    _ = c.close_wanted() => {}
                }
                if let Err(e) = c.tick().await {
                    tracing::error!(error = %e, "tick failed");
                }
            }
        });
        Ok(Server {
            addr,
            coordinator,
            http,
            ticker,
            witnesses: Vec::new(),
        })
    }

    /// Sends each new checkpoint to `witnesses` and publishes their cosignatures on
    /// `/checkpoint` (see [`crate::witness`]).
    pub fn witness(&mut self, witnesses: Vec<WitnessConfig>) {
        self.witnesses
            .extend(crate::witness::spawn(&self.coordinator, witnesses));
    }

    /// The base URL, `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (in-flight requests are dropped).
    pub fn stop(&self) {
        self.http.abort();
        self.ticker.abort();
        for w in &self.witnesses {
            w.abort();
        }
    }
}

/// Accepts connections and serves `app` on each over HTTP/1.1, as `axum::serve` does,
/// plus a deadline for each request's headers: `axum::serve` gives hyper no timer, so
/// hyper's header timeout never fires there, and a client that trickles its headers
/// (or sends none) holds its connection, which no tower layer sees, for good.
async fn serve(listener: TcpListener, app: Router, header_timeout: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
}

/// Raises this process's soft limit on open files to its hard limit and returns the
/// soft limit now in force. Each client connection is a file descriptor, and the
/// common soft default (1024) is below a few hundred volunteers plus the store's and
/// blobs' files; the hard limit is what an administrator allowed. `None` where the
/// platform has no such limit or it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, "cannot raise the open-files limit");
            }
        }
        getrlimit(Resource::Nofile).current.or(Some(u64::MAX))
    }
    #[cfg(not(unix))]
    None
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
