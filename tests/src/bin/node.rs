//! `lupus-test-node`: the coordinator of `lupus up` (the same library calls: open the
//! ledger and blobs, replay, resume, serve, tick) over the tiny test job and its
//! generated corpus, as a process of its own, so the fault suites can SIGKILL it, crash
//! it at a `LUPUS_FAILPOINT`, and restart it on the same data directory.
//!
//! Flags (all but `--data-dir` and `--listen` optional):
//! `--data-dir D --listen HOST:PORT --rounds N --tasks N --task-timeout-ms MS
//! --verify-timeout-ms MS --round-timeout-ms MS --database URL --schema NAME
//! --blob-quota BYTES`.

use std::collections::HashMap;
use std::time::Duration;

use lupus_tests::{RunConfig, corpus};

fn main() {
    if let Err(e) = run() {
        eprintln!("lupus-test-node: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut flags = HashMap::new();
    for pair in args.chunks(2) {
        match pair {
            [k, v] if k.starts_with("--") => {
                flags.insert(k.trim_start_matches("--").to_owned(), v.clone());
            }
            _ => return Err(format!("expected --flag value pairs, got {pair:?}")),
        }
    }
    let get = |k: &str| flags.get(k).cloned();
    let num = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| v.parse().map_err(|e| format!("--{k} {v}: {e}")))
            .transpose()
    };
    let data_dir = get("data-dir").ok_or("--data-dir is required")?;
    let listen: std::net::SocketAddr = get("listen")
        .ok_or("--listen is required")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let mut run = RunConfig::default();
    if let Some(n) = num("rounds")? {
        run.rounds = n;
    }
    if let Some(n) = num("tasks")? {
        run.tasks_per_round = n as u32;
    }
    if let Some(ms) = num("task-timeout-ms")? {
        run.task_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = num("verify-timeout-ms")? {
        run.verify_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = num("round-timeout-ms")? {
        run.round_timeout = Duration::from_millis(ms);
    }
    run.database_url = get("database");
    run.postgres_schema = get("schema");
    let quota = num("blob-quota")?;
    let config = run.config(std::path::Path::new(&data_dir));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let c = lupus_coordinator::engine::Coordinator::open(config, corpus())
            .await
            .map_err(|e| e.to_string())?;
        c.blobs().set_quota(quota);
        let _server = lupus_coordinator::server::Server::start(c, listen, None)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        std::future::pending::<()>().await;
        Ok(())
    })
}
