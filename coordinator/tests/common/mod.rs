//! A loopback cluster for the integration tests: a coordinator on 127.0.0.1:0 over the
//! tiny test job, and native workers and verifiers as tasks of the same runtime.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lupus_coordinator::client::{Behaviour, Client, ParticipantStats, run_verifier, run_worker};
use lupus_coordinator::engine::{Config, Coordinator};
use lupus_coordinator::server::Server;
use lupus_prover::data::Corpus;

pub const TINY: &str = include_str!("../../../jobs/tiny-test.toml");

pub fn corpus() -> Corpus {
    Corpus::generated(7, 24_000)
}

pub fn config(dir: &std::path::Path, rounds: u64, tasks: u32) -> Config {
    Config {
        data_dir: dir.to_owned(),
        database_url: None,
        postgres_schema: None,
        job_spec: TINY.to_owned(),
        tasks_per_round: tasks,
        max_rounds: Some(rounds),
        round_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(60),
        verify_timeout: Duration::from_secs(60),
        val_windows: 128,
    }
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Participants running against a server, stopped on drop.
pub struct Crowd {
    pub stop: Arc<AtomicBool>,
    pub handles: Vec<tokio::task::JoinHandle<Result<(), lupus_coordinator::client::ClientError>>>,
    pub stats: Vec<Arc<ParticipantStats>>,
}

impl Crowd {
    pub fn new() -> Crowd {
        Crowd {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
            stats: Vec::new(),
        }
    }

    pub fn worker(&mut self, url: &str, seed: u8, behaviour: Behaviour) {
        let client = Client::new(url, key(seed));
        let stats = Arc::new(ParticipantStats::default());
        self.stats.push(Arc::clone(&stats));
        let stop = Arc::clone(&self.stop);
        self.handles.push(tokio::spawn(async move {
            run_worker(client, &format!("worker-{seed}"), behaviour, stop, stats).await
        }));
    }

    pub fn verifier(&mut self, url: &str, seed: u8) {
        let client = Client::new(url, key(seed));
        let stats = Arc::new(ParticipantStats::default());
        self.stats.push(Arc::clone(&stats));
        let stop = Arc::clone(&self.stop);
        self.handles.push(tokio::spawn(async move {
            run_verifier(client, &format!("verifier-{seed}"), stop, stats).await
        }));
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

pub async fn start(config: Config) -> Server {
    let c = Coordinator::open(config, corpus())
        .await
        .expect("coordinator starts");
    Server::start(c, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .expect("server binds")
}

/// Waits until every configured round is closed.
pub async fn wait_finished(c: &Coordinator, limit: Duration) {
    let start = Instant::now();
    while !c.finished().await {
        assert!(
            start.elapsed() < limit,
            "the run did not finish in {limit:?}: {:?}",
            c.rounds().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
