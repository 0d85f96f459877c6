//! A native participant through `lupus_worker::native`: the same loop the page runs,
//! over HTTP with a key file. Used by the end-to-end test as the verifier, and to run a
//! native worker next to the browser ones.
//!
//! `cargo run -p lupus-worker --example participant -- worker|verifier URL KEY_FILE [--gpu] [--max N]`
//!
//! Runs until interrupted, or until `--max N` tasks (worker) or verdicts (verifier).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lupus_worker::native::{NativeConfig, Stats, load_or_create_key, spawn_verifier, spawn_worker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, url, key, rest @ ..] = args.as_slice() else {
        return Err("usage: participant worker|verifier URL KEY_FILE [--gpu] [--max N]".into());
    };
    let gpu = rest.iter().any(|a| a == "--gpu");
    let max: Option<u64> = rest
        .iter()
        .position(|a| a == "--max")
        .and_then(|i| rest.get(i + 1))
        .map(|n| n.parse())
        .transpose()?;
    let key = load_or_create_key(std::path::Path::new(key))?;
    let cfg = NativeConfig {
        gpu,
        ..NativeConfig::new(url, key, &format!("native {role}"))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let handle = match role.as_str() {
        "worker" => spawn_worker(cfg, Arc::clone(&stop), Arc::clone(&stats)),
        "verifier" => spawn_verifier(cfg, Arc::clone(&stop), Arc::clone(&stats)),
        other => return Err(format!("unknown role `{other}`").into()),
    };
    while !handle.is_finished() {
        if max.is_some_and(|m| stats.done.load(Ordering::Relaxed) >= m) {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = handle
        .join()
        .map_err(|_| "the participant thread panicked")??;
    println!(
        "{role}: {done} done, {} retries",
        stats.retries.load(Ordering::Relaxed)
    );
    Ok(())
}
