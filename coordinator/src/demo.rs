//! `lupus demo`: one command that runs the whole loop on this machine and reports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lupus_api::types::{JobInfo, RoundPhase, StakeTable};
use lupus_coordinator::audit::reverify;
use lupus_coordinator::client::Client;
use lupus_coordinator::engine::Coordinator;
use lupus_coordinator::server::Server;
use lupus_coordinator::{chart, sample};
use lupus_worker::native::{NativeConfig, Stats, spawn_verifier, spawn_worker};
use serde_json::json;

use crate::{CoordinatorArgs, default_web, open_coordinator};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the corpus is (fetched when missing) and the demo's run lives
    /// (`<data-dir>/demo/`: keys, ledger, blobs, loss.svg, report.json; a new demo
    /// starts it afresh).
    #[arg(long, default_value = "lupus-data")]
    data_dir: PathBuf,
    /// The job spec (TOML); default: the embedded jobs/shakespeare-gpt.toml.
    #[arg(long)]
    job: Option<PathBuf>,
    /// `postgres://...` for the ledger (default: SQLite under --data-dir/demo).
    #[arg(long)]
    database: Option<String>,
    /// Native workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Rounds to train (12 rounds of the default job take about two and a half minutes
    /// on 2 cores).
    #[arg(long, default_value_t = 12)]
    rounds: u64,
    /// Print a short sample of the model's text after every N closed rounds, so you see
    /// it learn words (0: only the sample at the end).
    #[arg(long, value_name = "N", default_value_t = 4)]
    sample_every: u64,
    /// Address of the coordinator; open it in a browser to join as a volunteer.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where to write the JSON report (default: --data-dir/demo/report.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The volunteer page's directory (default: worker-wasm/www when built).
    #[arg(long)]
    web: Option<PathBuf>,
}

fn random_key() -> Result<SigningKey> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    Ok(SigningKey::from_bytes(&s))
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let run_dir = args.data_dir.join("demo");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("clearing the previous demo run in {}", run_dir.display()))?;
    }
    let cargs = CoordinatorArgs {
        data_dir: args.data_dir.clone(),
        database: args.database.clone(),
        job: args.job.clone(),
        tasks_per_round: Some(workers as u32),
        rounds: Some(args.rounds),
        keep_openings: None,
        round_timeout: 900,
        task_timeout: 600,
        web: args.web.clone(),
    };
    println!(
        "lupus demo: {workers} workers, 1 verifier, {} rounds",
        args.rounds
    );
    let c = open_coordinator(&cargs, &run_dir, workers as u32).await?;
    let job = c.job().clone();
    let initial = {
        let model = c.model().await?;
        let corpus = Arc::clone(c.corpus());
        let j = job.clone();
        tokio::task::spawn_blocking(move || Coordinator::validation_loss(&j, &corpus, &model, 512))
            .await?
            .map_err(anyhow::Error::msg)?
    };
    let web = args.web.clone().or_else(default_web);
    let server = match Server::start(Arc::clone(&c), args.listen, web.clone()).await {
        Ok(s) => s,
        Err(e) => {
            println!("{} is busy ({e}); using a free port", args.listen);
            Server::start(Arc::clone(&c), "127.0.0.1:0".parse()?, web.clone()).await?
        }
    };
    let url = server.url();
    match &web {
        Some(dir) => println!(
            "volunteer page: {url}/ (from {}); a browser can join",
            dir.display()
        ),
        None => {
            println!("coordinator at {url}/ (the web worker is not built, so no volunteer page)")
        }
    }
    let shapes = job.model.param_shapes();
    let params: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!(
        "job {}: {params} parameters in {} tensors, {} training FLOPs per sample; initial validation loss {initial:.4}",
        job.job.name,
        shapes.len(),
        job.model.flops_per_sample()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    // The same worker and verifier loop as `lupus worker`, `lupus verify` and the
    // browser, each on a thread of its own.
    for i in 0..workers {
        let cfg = NativeConfig::new(&url, random_key()?, &format!("demo-worker-{i}"));
        handles.push(spawn_worker(
            cfg,
            Arc::clone(&stop),
            Arc::new(Stats::default()),
        ));
    }
    let cfg = NativeConfig::new(&url, random_key()?, "demo-verifier");
    handles.push(spawn_verifier(
        cfg,
        Arc::clone(&stop),
        Arc::new(Stats::default()),
    ));

    let mp = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>13} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let rounds_bar = mp.add(
        ProgressBar::new(args.rounds)
            .with_style(style.clone())
            .with_prefix("rounds"),
    );
    let tasks_bar = mp.add(
        ProgressBar::new(workers as u64)
            .with_style(style.clone())
            .with_prefix("tasks"),
    );
    let verify_bar = mp.add(
        ProgressBar::new(workers as u64)
            .with_style(style)
            .with_prefix("verification"),
    );
    let mut reported = 0usize;
    while !c.finished().await {
        if let Some(i) = handles.iter().position(|h| h.is_finished()) {
            let why = match handles.swap_remove(i).join() {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "it returned".to_owned(),
                Err(_) => "its thread panicked".to_owned(),
            };
            anyhow::bail!("a demo participant stopped early: {why}");
        }
        let list = c.rounds().await?.rounds;
        let closed: Vec<_> = list
            .iter()
            .filter(|r| r.phase == RoundPhase::Closed)
            .collect();
        let mut sample_due = false;
        for r in closed.iter().skip(reported) {
            let line = format!(
                "round {} closed: {} tasks merged, validation loss {:.4}",
                r.round,
                r.accepted,
                r.val_loss.unwrap_or(f32::NAN)
            );
            if mp.is_hidden() {
                println!("{line}");
            } else {
                mp.println(line)?;
            }
            sample_due |= args.sample_every > 0
                && r.round.0 % args.sample_every == 0
                && r.round.0 < args.rounds;
        }
        reported = closed.len();
        if sample_due {
            // The newest merged model: a round may have closed since, which only makes
            // the sample fresher.
            let model = c.model().await?;
            let spec = job.model.clone();
            let text = tokio::task::spawn_blocking(move || {
                sample::generate(&spec, &model, "ROMEO:\n", 160, 1)
            })
            .await?;
            if let Some(text) = text {
                let block = format!("  sample: {}", text.replace('\n', "\n          "));
                if mp.is_hidden() {
                    println!("{block}");
                } else {
                    mp.println(block)?;
                }
            }
        }
        rounds_bar.set_position(closed.len() as u64);
        if let Some(open) = list.iter().find(|r| r.phase == RoundPhase::Open) {
            rounds_bar.set_message(format!("round {} open", open.round));
            tasks_bar.set_position(u64::from(open.committed.min(open.target_tasks)));
            tasks_bar.set_message(format!("{} handed out", open.assigned));
            verify_bar.set_position(u64::from(open.accepted.min(open.target_tasks)));
            verify_bar.set_message(format!("{} rejected", open.rejected));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The participants notice within a step; their threads end with the process.
    stop.store(true, Ordering::Relaxed);
    rounds_bar.finish_with_message("done");
    tasks_bar.finish_and_clear();
    verify_bar.finish_and_clear();

    let rounds = c.rounds().await?.rounds;
    for r in rounds.iter().skip(reported) {
        println!(
            "round {} closed: {} tasks merged, validation loss {:.4}",
            r.round,
            r.accepted,
            r.val_loss.unwrap_or(f32::NAN)
        );
    }
    let reader = Client::new(&url, random_key()?);
    let info: JobInfo = reader.get("/v1/job").await?;
    let table: StakeTable = reader.get("/v1/stake").await?;
    println!(
        "\nstake table (epoch {}, total {} FLOPs):",
        table.epoch.unwrap_or(0),
        table.total
    );
    for row in &table.accounts {
        let share = row.balance.0 as f64 / table.total.0.max(1) as f64 * 100.0;
        println!("  {}  {:>20}  {share:6.2}%", row.key, row.balance);
    }
    let checkpoint = c.log().checkpoint();
    println!("\ncheckpoint:\n{checkpoint}");
    let audit = reverify(&reader, &info.log_key).await;
    match &audit {
        Ok(a) => println!(
            "re-verification: OK ({} entries, root {}, shares total {}, {} slashed)",
            a.size,
            a.root_hex,
            a.total_shares,
            a.slashed.len()
        ),
        Err(e) => println!("re-verification: FAILED: {e}"),
    }
    println!(
        "log key (what `lupus-audit verify --key` pins): {}",
        info.log_key
    );
    let model = c.model().await?;
    let text = sample::generate(&job.model, &model, "ROMEO:\n", 300, 1)
        .unwrap_or_else(|| "(the model's parameters do not fit its spec)".into());
    println!("\nsample from the trained model:\n{text}\n");

    // Round 0 is the initial model.
    let losses: Vec<(u64, f32)> = std::iter::once((0, initial))
        .chain(
            rounds
                .iter()
                .filter_map(|r| r.val_loss.map(|v| (r.round.0, v))),
        )
        .collect();
    let chart_path = run_dir.join("loss.svg");
    std::fs::write(&chart_path, chart::loss_chart(&job.job.name, &losses)?)
        .with_context(|| format!("writing the loss chart {}", chart_path.display()))?;
    let report_path = args
        .json
        .clone()
        .unwrap_or_else(|| run_dir.join("report.json"));
    let report = json!({
        "job": job.job.name,
        "job_hash": info.job_hash,
        "workers": workers,
        "verifiers": 1,
        "initial_val_loss": initial,
        "rounds": rounds.iter().map(|r| json!({
            "round": r.round, "accepted": r.accepted, "rejected": r.rejected,
            "val_loss": r.val_loss, "model": r.new_model, "beacon": r.beacon,
        })).collect::<Vec<_>>(),
        "final_val_loss": losses.last().map(|p| p.1),
        "stake": table,
        "checkpoint": checkpoint,
        "log_key": info.log_key,
        "reverify": match &audit {
            Ok(a) => json!({"ok": true, "size": a.size, "root": a.root_hex, "entries": a.entries_by_kind}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        "sample": text,
        "loss_chart": chart_path,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    if let Some(parent) = report_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "loss chart (SVG): {}\nreport: {}",
        chart_path.display(),
        report_path.display()
    );
    println!("elapsed: {:.1} s", started.elapsed().as_secs_f64());
    server.stop();
    audit.map(|_| ()).map_err(anyhow::Error::from)
}
