//! Runs the coordinator: the HTTP listener and the ticker that expires overdue tasks
//! and closes rounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::engine::Coordinator;
use crate::routes::router;
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
    /// Binds `addr` and serves `coordinator`; `web` is the volunteer page's directory.
    pub async fn start(
        coordinator: Arc<Coordinator>,
        addr: SocketAddr,
        web: Option<PathBuf>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(Arc::clone(&coordinator), web);
        let http = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        let c = Arc::clone(&coordinator);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
