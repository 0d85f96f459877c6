//! A loopback cluster for the integration tests: a coordinator on 127.0.0.1:0 over the
//! tiny test job, and native workers and verifiers as tasks of the same runtime.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv};
use lupus_coordinator::server::Server;
use lupus_prover::data::Corpus;
pub use lupus_worker::native::Stats;
use lupus_worker::native::{NativeConfig, spawn_verifier, spawn_worker};
pub use lupus_worker::worker::WorkerError;
pub use lupus_zoo::{Behaviour, VerifierBehaviour};

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
        keep_openings: None,
        env: SystemEnv::shared(),
    }
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Participants running against a server (the real `lupus_worker::native` loop, each on
/// a thread of its own), stopped on drop.
pub struct Crowd {
    pub stop: Arc<AtomicBool>,
    pub handles: Vec<std::thread::JoinHandle<Result<u64, WorkerError>>>,
    pub stats: Vec<Arc<Stats>>,
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
        let cfg = NativeConfig {
            conduct: Arc::new(behaviour),
            ..NativeConfig::new(url, key(seed), &format!("worker-{seed}"))
        };
        let stats = Arc::new(Stats::default());
        self.stats.push(Arc::clone(&stats));
        self.handles
            .push(spawn_worker(cfg, Arc::clone(&self.stop), stats));
    }

    pub fn verifier(&mut self, url: &str, seed: u8) {
        self.verifier_as(url, seed, VerifierBehaviour::Honest);
    }

    pub fn verifier_as(&mut self, url: &str, seed: u8, behaviour: VerifierBehaviour) {
        let cfg = NativeConfig {
            conduct: Arc::new(behaviour),
            ..NativeConfig::new(url, key(seed), &format!("verifier-{seed}"))
        };
        let stats = Arc::new(Stats::default());
        self.stats.push(Arc::clone(&stats));
        self.handles
            .push(spawn_verifier(cfg, Arc::clone(&self.stop), stats));
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // The threads see the flag within a step and end (or end with the process).
        self.stop.store(true, Ordering::Relaxed);
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
