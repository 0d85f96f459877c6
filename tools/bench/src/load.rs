//! `lupus-bench load`: N simulated volunteers against one coordinator on loopback for
//! M minutes; throughput, latency, errors and the coordinator's memory over time.
//!
//! The coordinator runs as a child process (`lupus up` on a temporary data directory
//! with the tiny job), so its memory is its own: its `VmRSS` and `VmHWM` are read from
//! `/proc/<pid>/status` at every sample. The participants are the real worker and
//! verifier loop (`lupus_worker::native`), many to a thread (`spawn_group`): the tiny
//! job trains in milliseconds, so hundreds of them fit a few threads, taking turns
//! at every request as volunteers' browsers would. Their threads run at nice +10
//! (`--volunteer-nice`): on a machine that also runs the coordinator, the volunteers'
//! training is CPU a real coordinator would not share, and without it the first
//! seconds' thousand starting volunteers starve the coordinator (docs/BENCHMARKS.md).
//!
//! Every `--every` seconds a row: requests answered per second, client-side latency
//! percentiles (each exchange made and timed on the bench's own runtime, so a
//! participant training on a shared thread never delays the reading of an answer), the coordinator's own mean handling time (from `/metrics`), errors
//! split 4xx / 5xx / no answer, tasks done, and the coordinator's RSS. At the end the
//! coordinator is killed with SIGKILL and its ledger is opened: every submission a
//! worker got a receipt for must be there, at the index the receipt gave (lost
//! submissions), which also shows that what was acknowledged was durable.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use lupus_api::types::RoundList;
use lupus_coordinator::client::Client;
use lupus_coordinator::server::raise_open_files_limit;
use lupus_ledger::entry::{Entry, EntryBody};
use lupus_ledger::hash::LeafIndex;
use lupus_ledger::store::open_store;
use lupus_worker::native::{Member, NativeConfig, RequestLog, Stats, spawn_group};
use serde::Serialize;

/// The tiny job: a task trains in milliseconds, so the coordinator is what is loaded.
const TINY_JOB: &str = include_str!("../../../jobs/tiny-test.toml");

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Simulated workers.
    #[arg(long, default_value_t = 200)]
    pub workers: usize,
    /// Simulated verifiers.
    #[arg(long, default_value_t = 10)]
    pub verifiers: usize,
    /// How long to hold the load, in minutes (overrides --seconds).
    #[arg(long)]
    pub minutes: Option<u64>,
    /// How long to hold the load, in seconds (for short runs).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seconds between two rows of the time series.
    #[arg(long, default_value_t = 10)]
    pub every: u64,
    /// Accepted tasks per round (default: one per worker).
    #[arg(long)]
    pub tasks_per_round: Option<u32>,
    /// Threads the simulated participants share (default: two per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How much lower than the bench's the scheduling priority (nice value) of the
    /// simulated participants' threads is: on a machine that also runs the
    /// coordinator under test, their training must not be what the coordinator's
    /// latency measures. Their requests are still made and timed on the bench's own
    /// runtime at its priority. 0 runs them at the bench's priority.
    #[arg(long, default_value_t = 10)]
    pub volunteer_nice: i32,
    /// The job the workers train (default: jobs/tiny-test.toml, embedded).
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// The `lupus` binary that runs the coordinator (default: the `lupus` next to this
    /// `lupus-bench`, as `cargo build --release -p lupus-coordinator -p lupus-bench`
    /// leaves them, or else the first on PATH). Another build here measures two
    /// coordinators under the same load.
    #[arg(long)]
    pub coordinator_bin: Option<PathBuf>,
    /// A second `lupus` binary (for example a build of the previous release), loaded
    /// first with the same settings; the table then compares the two, figure by figure,
    /// measured in this one run.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One row of the time series.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    /// Seconds since the load started (end of the interval).
    t_s: f64,
    requests: u64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The coordinator's mean handling time over the interval (its `/metrics`).
    server_mean_ms: f64,
    errors_4xx: u64,
    errors_5xx: u64,
    errors_connection: u64,
    tasks_done: u64,
    rss_mib: f64,
    hwm_mib: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    first_mib: f64,
    last_mib: f64,
    max_mib: f64,
    hwm_mib: f64,
    /// Least-squares slope of RSS over the whole run, MiB per minute.
    slope_mib_per_min: f64,
    /// The same over the second half of the run (after the warm-up).
    slope_second_half_mib_per_min: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    workers: usize,
    verifiers: usize,
    participant_threads: usize,
    seconds: f64,
    open_files_limit: Option<u64>,
    requests: u64,
    requests_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The coordinator's own p99 handling time (the bound of its histogram bucket).
    server_p99_ms_at_most: f64,
    errors_4xx: u64,
    errors_5xx: u64,
    errors_connection: u64,
    tasks_done: u64,
    verdicts: u64,
    workers_with_a_task: usize,
    tasks_per_worker_min: u64,
    tasks_per_worker_max: u64,
    rounds_closed: usize,
    acknowledged: usize,
    lost: usize,
    log_entries: u64,
    memory: Memory,
    samples: Vec<Sample>,
}

/// The coordinator child, killed when dropped (a failed run leaves no process behind).
struct Coordinator {
    child: std::process::Child,
}

impl Coordinator {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmRSS` and `VmHWM` of `pid` in MiB.
fn memory_of(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let kib: f64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{name} in /proc/{pid}/status: {line}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Least-squares slope of `y` over `x`; 0 for fewer than two points.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The `p` quantile of sorted latencies (microseconds), in milliseconds.
fn quantile_ms(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round().max(0.0) as usize;
    sorted.get(i).map_or(0.0, |v| f64::from(*v) / 1000.0)
}

/// The counters of the coordinator's `/metrics` the table uses.
#[derive(Clone, Debug, Default)]
struct ServerCounters {
    requests: u64,
    latency_us: u64,
    /// The request-duration histogram summed over routes and statuses: (upper bound
    /// in seconds, cumulative count), in the order `/metrics` lists them.
    buckets: Vec<(f64, u64)>,
}

/// Sums `lupus_http_request_duration_seconds_bucket` over its labels by `le`.
fn parse_buckets(text: &str) -> Vec<(f64, u64)> {
    let mut sums: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("lupus_http_request_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let count: u64 = value.trim().parse::<f64>().map_or(0, |v| v as u64);
        match sums.iter_mut().find(|(b, _)| *b == le) {
            Some(slot) => slot.1 += count,
            None => sums.push((le, count)),
        }
    }
    sums.sort_by(|a, b| a.0.total_cmp(&b.0));
    sums
}

/// The upper bound (ms) of the histogram bucket holding quantile `q` of the requests
/// the server handled between two readings: its own handling time, without the
/// clients' side of the loopback. `NaN` when it handled none.
fn server_quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let count =
        |le: f64, of: &[(f64, u64)]| of.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
    let total = after
        .last()
        .map_or(0, |(le, c)| c.saturating_sub(count(*le, before)));
    if total == 0 {
        return f64::NAN;
    }
    for (le, c) in after {
        let n = c.saturating_sub(count(*le, before));
        if n as f64 >= q * total as f64 {
            return le * 1000.0;
        }
    }
    f64::INFINITY
}

async fn server_counters(client: &Client) -> Result<ServerCounters> {
    let (status, body) = client.send("GET", "/metrics", Vec::new()).await?;
    ensure!(status == 200, "/metrics answered {status}");
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(ServerCounters {
        requests: value("lupus_http_requests_total"),
        latency_us: value("lupus_http_latency_microseconds_total"),
        buckets: parse_buckets(&text),
    })
}

/// The `lupus` binary beside this one (cargo puts every binary of a workspace in one
/// folder), else the first `lupus` on PATH.
fn default_coordinator_bin() -> Result<PathBuf> {
    let name = format!("lupus{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()?.with_file_name(&name);
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    };
    match beside.is_file().then_some(beside).or_else(on_path) {
        Some(bin) => Ok(bin),
        None => bail!(
            "no `lupus` binary beside this one nor on PATH: build it (`cargo build --release \
             -p lupus-coordinator`) or pass --coordinator-bin"
        ),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_coordinator(
    bin: &Path,
    dir: &Path,
    job: &Path,
    port: u16,
    tasks_per_round: u32,
) -> Result<Coordinator> {
    let log = std::fs::File::create(dir.join("coordinator.log"))?;
    let child = Command::new(bin)
        .arg("up")
        .arg("--job")
        .arg(job)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tasks-per-round", &tasks_per_round.to_string()])
        .args(["--round-timeout", "120", "--task-timeout", "120"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} up", bin.display()))?;
    Ok(Coordinator { child })
}

async fn wait_ready(c: &mut Coordinator, client: &Client, dir: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        if client.send("GET", "/v1/job", Vec::new()).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = c.child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
            bail!("the coordinator exited ({status}) before it listened:\n{log}");
        }
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the coordinator did not answer in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged `(task, index)` checked against the ledger the killed
/// coordinator left: returns (acknowledged, lost, log size).
async fn count_lost(ledger: &Path, stats: &[(bool, Arc<Stats>)]) -> Result<(usize, usize, u64)> {
    let store = open_store(&format!("sqlite://{}", ledger.display())).await?;
    let size = store.size().await?.0;
    let mut committed = std::collections::HashMap::new();
    let mut start = 0;
    while start < size {
        let end = (start + 4096).min(size);
        for (i, bytes) in (start..).zip(store.read_entries(LeafIndex(start), LeafIndex(end)).await?)
        {
            if let Ok(e) = Entry::decode(&bytes)
                && let EntryBody::WorkCommitted { task, .. } = e.body()
            {
                committed.insert(i, task.0);
            }
        }
        start = end;
    }
    let (mut acknowledged, mut lost) = (0, 0);
    for (_, s) in stats {
        let acks = s
            .acknowledged
            .lock()
            .map_err(|_| anyhow::anyhow!("a participant panicked"))?
            .clone();
        for (task, index) in acks {
            acknowledged += 1;
            if committed.get(&index) != Some(&task) {
                lost += 1;
            }
        }
    }
    Ok((acknowledged, lost, size))
}

pub async fn run(args: LoadArgs) -> Result<()> {
    ensure!(
        args.workers > 0 && args.verifiers > 0,
        "need at least one worker and one verifier"
    );
    let bin = match &args.coordinator_bin {
        Some(b) => b.clone(),
        None => default_coordinator_bin()?,
    };
    let baseline = match &args.baseline_bin {
        Some(b) => {
            println!("== baseline: {}", b.display());
            Some(measure(&args, b).await?)
        }
        None => None,
    };
    if baseline.is_some() {
        println!("\n== candidate: {}", bin.display());
    }
    let report = measure(&args, &bin).await?;
    if let Some(base) = &baseline {
        print_comparison(base, &report);
    }
    if let Some(path) = &args.json {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let figures = serde_json::json!({ "baseline": baseline, "candidate": report });
        serde_json::to_writer_pretty(&mut f, &figures)?;
        f.write_all(b"\n")?;
        println!("figures written to {}", path.display());
    }
    for (name, r) in [
        ("baseline", baseline.as_ref()),
        ("candidate", Some(&report)),
    ] {
        if let Some(r) = r {
            ensure!(
                r.lost == 0,
                "{name}: {} acknowledged submissions are not in the log",
                r.lost
            );
        }
    }
    Ok(())
}

/// One load run against the coordinator binary `bin`.
async fn measure(args: &LoadArgs, bin: &Path) -> Result<Report> {
    let duration = Duration::from_secs(args.minutes.map_or(args.seconds, |m| m * 60));
    let every = Duration::from_secs(args.every.max(1));
    // Each participant holds a connection: raise this process's open-files limit (the
    // coordinator raises its own when it starts serving).
    let open_files = raise_open_files_limit();
    let needed = (args.workers + args.verifiers) as u64 * 2 + 64;
    if let Some(limit) = open_files
        && limit < needed
    {
        eprintln!("warning: open-files limit {limit} is below the ~{needed} this run may need");
    }

    let dir = std::env::temp_dir().join(format!("lupus-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let job = dir.join("job.toml");
    let text = match &args.job {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => TINY_JOB.to_owned(),
    };
    std::fs::write(&job, text)?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let tasks_per_round = args.tasks_per_round.unwrap_or(args.workers as u32);
    let mut coordinator = start_coordinator(bin, &dir, &job, port, tasks_per_round)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reader = Client::new(&url, ed25519_dalek::SigningKey::from_bytes(&seed));
    wait_ready(&mut coordinator, &reader, &dir).await?;
    let pid = coordinator.pid();
    let idle = memory_of(pid)?;

    let stop = Arc::new(AtomicBool::new(false));
    // The exchanges run (and are timed) on this runtime, which runs nothing else: a
    // participant training on a shared thread delays its next request, not the
    // reading of an answer (see `RequestLog::exchanging_on`).
    let requests = Arc::new(RequestLog::exchanging_on(tokio::runtime::Handle::current()));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) * 2)
        .max(1);
    let mut stats = Vec::new();
    let mut groups: Vec<Vec<(Member, Arc<Stats>)>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..args.workers + args.verifiers {
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let worker = i < args.workers;
        let name = if worker {
            format!("load-w{i}")
        } else {
            format!("load-v{i}")
        };
        let cfg = NativeConfig {
            requests: Some(Arc::clone(&requests)),
            ..NativeConfig::new(&url, key, &name)
        };
        let s = Arc::new(Stats::default());
        stats.push((worker, Arc::clone(&s)));
        let member = if worker {
            Member::Worker(cfg)
        } else {
            Member::Verifier(cfg)
        };
        groups[i % threads].push((member, s));
    }
    println!(
        "load: {} workers, {} verifiers on {threads} threads against `{} up` (pid {pid}) at {url} for {} s; open-files limit {}",
        args.workers,
        args.verifiers,
        bin.display(),
        duration.as_secs(),
        open_files.map_or("unknown".into(), |l| l.to_string()),
    );
    println!(
        "coordinator idle: RSS {:.1} MiB, HWM {:.1} MiB",
        idle.0, idle.1
    );
    // The groups' threads are started from a thread of their own whose priority is
    // lowered first: threads inherit it, the bench's runtime keeps its own.
    let nice = args.volunteer_nice;
    let stop_all = Arc::clone(&stop);
    let handles: Vec<_> = std::thread::spawn(move || {
        lower_priority(nice);
        groups
            .into_iter()
            .map(|g| spawn_group(g, Arc::clone(&stop_all)))
            .collect::<Vec<_>>()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("starting the participants' threads panicked"))?;

    let done = |worker: bool| -> u64 {
        stats
            .iter()
            .filter(|(w, _)| *w == worker)
            .map(|(_, s)| s.done.load(Ordering::Relaxed))
            .sum()
    };
    let bar = ProgressBar::new(duration.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    // Rows go above the bar on a terminal, and plainly to stdout otherwise (the bar
    // is hidden then, and so would be what it prints).
    let say = |line: &str| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let header = "| t (s) | req/s | p50 ms | p99 ms | max ms | server mean ms | 4xx | 5xx | conn | tasks | RSS MiB | HWM MiB |";
    say(header);
    say("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut all: Vec<u32> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last = (started, server_counters(&reader).await?, [0u64; 3]);
    let first_counters = last.1.clone();
    let mut next_sample = started + every;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(started.elapsed().as_secs().min(duration.as_secs()));
        let now = Instant::now();
        if now < next_sample && started.elapsed() < duration {
            continue;
        }
        next_sample += every;
        let mut lat = requests.take_latencies();
        lat.sort_unstable();
        let counters = server_counters(&reader)
            .await
            .unwrap_or_else(|_| last.1.clone());
        let errors = [
            requests.client_errors.load(Ordering::Relaxed),
            requests.server_errors.load(Ordering::Relaxed),
            requests.connection_errors.load(Ordering::Relaxed),
        ];
        let (rss, hwm) = memory_of(pid)?;
        let dt = now.duration_since(last.0).as_secs_f64();
        let served = counters.requests.saturating_sub(last.1.requests);
        let sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            requests: lat.len() as u64,
            requests_per_s: lat.len() as f64 / dt,
            p50_ms: quantile_ms(&lat, 0.5),
            p99_ms: quantile_ms(&lat, 0.99),
            max_ms: quantile_ms(&lat, 1.0),
            server_mean_ms: if served == 0 {
                0.0
            } else {
                counters.latency_us.saturating_sub(last.1.latency_us) as f64
                    / served as f64
                    / 1000.0
            },
            errors_4xx: errors[0] - last.2[0],
            errors_5xx: errors[1] - last.2[1],
            errors_connection: errors[2] - last.2[2],
            tasks_done: done(true),
            rss_mib: rss,
            hwm_mib: hwm,
        };
        say(&format!(
            "| {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} | {:.1} | {:.1} |",
            sample.t_s,
            sample.requests_per_s,
            sample.p50_ms,
            sample.p99_ms,
            sample.max_ms,
            sample.server_mean_ms,
            sample.errors_4xx,
            sample.errors_5xx,
            sample.errors_connection,
            sample.tasks_done,
            sample.rss_mib,
            sample.hwm_mib
        ));
        bar.set_message(format!(
            "{:.0} req/s, p99 {:.0} ms, RSS {:.1} MiB",
            sample.requests_per_s, sample.p99_ms, sample.rss_mib
        ));
        all.extend(lat);
        samples.push(sample);
        last = (now, counters, errors);
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let rounds: RoundList = reader.get("/v1/rounds").await?;
    let rounds_closed = rounds
        .rounds
        .iter()
        .filter(|r| r.new_model.is_some())
        .count();
    // SIGKILL, then read the ledger it left: acknowledged means durable.
    coordinator.kill();
    for h in handles {
        // The groups end within a step; a refusal they stopped on is reported.
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("a participant stopped: {e}"),
            Err(_) => eprintln!("a participant thread panicked"),
        }
    }
    let (acknowledged, lost, log_entries) =
        count_lost(&dir.join("data").join("ledger.sqlite3"), &stats).await?;

    all.sort_unstable();
    let per_worker: Vec<u64> = stats
        .iter()
        .filter(|(w, _)| *w)
        .map(|(_, s)| s.done.load(Ordering::Relaxed))
        .collect();
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s / 60.0, s.rss_mib)).collect();
    let half = &rss[rss.len() / 2..];
    let memory = Memory {
        first_mib: rss.first().map_or(0.0, |p| p.1),
        last_mib: rss.last().map_or(0.0, |p| p.1),
        max_mib: rss.iter().map(|p| p.1).fold(0.0, f64::max),
        hwm_mib: samples.last().map_or(0.0, |s| s.hwm_mib),
        slope_mib_per_min: slope(&rss),
        slope_second_half_mib_per_min: slope(half),
    };
    let sum = |f: fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>();
    let report = Report {
        workers: args.workers,
        verifiers: args.verifiers,
        participant_threads: threads,
        seconds: elapsed,
        open_files_limit: open_files,
        requests: all.len() as u64,
        requests_per_s: all.len() as f64 / elapsed,
        p50_ms: quantile_ms(&all, 0.5),
        p90_ms: quantile_ms(&all, 0.9),
        p99_ms: quantile_ms(&all, 0.99),
        server_p99_ms_at_most: server_quantile_ms(&first_counters.buckets, &last.1.buckets, 0.99),
        max_ms: quantile_ms(&all, 1.0),
        errors_4xx: sum(|s| s.errors_4xx),
        errors_5xx: sum(|s| s.errors_5xx),
        errors_connection: sum(|s| s.errors_connection),
        tasks_done: done(true),
        verdicts: done(false),
        workers_with_a_task: per_worker.iter().filter(|n| **n > 0).count(),
        tasks_per_worker_min: per_worker.iter().copied().min().unwrap_or(0),
        tasks_per_worker_max: per_worker.iter().copied().max().unwrap_or(0),
        rounds_closed,
        acknowledged,
        lost,
        log_entries,
        memory,
        samples,
    };
    print_summary(&report);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The baseline's and the candidate's figures side by side, with their ratio.
fn print_comparison(base: &Report, new: &Report) {
    let ratio = |b: f64, n: f64| {
        if b == 0.0 {
            "-".to_owned()
        } else {
            format!("{:.2}x", n / b)
        }
    };
    println!();
    println!("| figure | baseline | candidate | candidate / baseline |");
    println!("|---|---|---|---|");
    let rows: [(&str, f64, f64); 9] = [
        (
            "requests per second",
            base.requests_per_s,
            new.requests_per_s,
        ),
        ("latency p50 (ms)", base.p50_ms, new.p50_ms),
        ("latency p99 (ms)", base.p99_ms, new.p99_ms),
        (
            "coordinator's own p99 (ms, at most)",
            base.server_p99_ms_at_most,
            new.server_p99_ms_at_most,
        ),
        ("latency max (ms)", base.max_ms, new.max_ms),
        ("tasks done", base.tasks_done as f64, new.tasks_done as f64),
        (
            "errors (4xx + 5xx + no answer)",
            (base.errors_4xx + base.errors_5xx + base.errors_connection) as f64,
            (new.errors_4xx + new.errors_5xx + new.errors_connection) as f64,
        ),
        ("RSS max (MiB)", base.memory.max_mib, new.memory.max_mib),
        (
            "RSS slope, second half (MiB/min)",
            base.memory.slope_second_half_mib_per_min,
            new.memory.slope_second_half_mib_per_min,
        ),
    ];
    for (name, b, n) in rows {
        println!("| {name} | {b:.1} | {n:.1} | {} |", ratio(b, n));
    }
    println!(
        "| acknowledged / lost after SIGKILL | {} / {} | {} / {} | |",
        base.acknowledged, base.lost, new.acknowledged, new.lost
    );
}

fn print_summary(r: &Report) {
    let m = &r.memory;
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| load | {} workers + {} verifiers on {} threads, {:.0} s |",
        r.workers, r.verifiers, r.participant_threads, r.seconds
    );
    println!(
        "| requests answered / per second | {} / {:.0} |",
        r.requests, r.requests_per_s
    );
    println!(
        "| latency p50 / p90 / p99 / max (ms) | {:.1} / {:.1} / {:.1} / {:.1} |",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
    );
    println!(
        "| coordinator's own handling time, p99 (ms, histogram bound) | <= {:.0} |",
        r.server_p99_ms_at_most
    );
    println!(
        "| errors 4xx / 5xx / no answer | {} / {} / {} |",
        r.errors_4xx, r.errors_5xx, r.errors_connection
    );
    println!(
        "| tasks done / verdicts / rounds closed | {} / {} / {} |",
        r.tasks_done, r.verdicts, r.rounds_closed
    );
    println!(
        "| workers with a task / tasks per worker min-max | {} of {} / {}-{} |",
        r.workers_with_a_task, r.workers, r.tasks_per_worker_min, r.tasks_per_worker_max
    );
    println!(
        "| acknowledged submissions / lost (after SIGKILL) | {} / {} |",
        r.acknowledged, r.lost
    );
    println!("| log entries | {} |", r.log_entries);
    println!(
        "| coordinator RSS first / last / max (MiB) | {:.1} / {:.1} / {:.1} |",
        m.first_mib, m.last_mib, m.max_mib
    );
    println!("| coordinator VmHWM (MiB) | {:.1} |", m.hwm_mib);
    println!(
        "| RSS slope, whole run / second half (MiB/min) | {:+.2} / {:+.2} |",
        m.slope_mib_per_min, m.slope_second_half_mib_per_min
    );
}

/// Raises the calling thread's nice value by `by` (best effort; Linux only, where a
/// thread's priority is its own and what the threads it starts inherit).
fn lower_priority(by: i32) {
    #[cfg(target_os = "linux")]
    if by > 0 {
        let tid = rustix::thread::gettid();
        let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        let _ = rustix::process::setpriority_process(Some(tid), now + by);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_quantiles_come_from_the_histogram_difference() {
        let text = "lupus_http_request_duration_seconds_bucket{route=\"/a\",status=\"2xx\",le=\"0.001\"} 5\n\
            lupus_http_request_duration_seconds_bucket{route=\"/a\",status=\"2xx\",le=\"0.002\"} 9\n\
            lupus_http_request_duration_seconds_bucket{route=\"/a\",status=\"2xx\",le=\"+Inf\"} 10\n\
            lupus_http_request_duration_seconds_bucket{route=\"/b\",status=\"2xx\",le=\"0.001\"} 0\n\
            lupus_http_request_duration_seconds_bucket{route=\"/b\",status=\"2xx\",le=\"0.002\"} 0\n\
            lupus_http_request_duration_seconds_bucket{route=\"/b\",status=\"2xx\",le=\"+Inf\"} 10\n";
        let after = parse_buckets(text);
        assert_eq!(after, vec![(0.001, 5), (0.002, 9), (f64::INFINITY, 20)]);
        let before = vec![(0.001, 5), (0.002, 5), (f64::INFINITY, 5)];
        // 15 requests between the readings: 0 under 1 ms, 4 under 2 ms, 11 slower.
        assert_eq!(server_quantile_ms(&before, &after, 0.2), 2.0);
        assert!(server_quantile_ms(&before, &after, 0.99).is_infinite());
        assert!(server_quantile_ms(&after, &after, 0.99).is_nan());
    }

    #[test]
    fn the_slope_of_a_line_is_its_gradient_and_flat_is_zero() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 + 2.0 * f64::from(i)))
            .collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&line[..1]), 0.0);
    }

    #[test]
    fn quantiles_pick_from_sorted_latencies() {
        let lat: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&lat, 0.5), 51.0);
        assert_eq!(quantile_ms(&lat, 0.99), 99.0);
        assert_eq!(quantile_ms(&lat, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn this_process_memory_reads_from_proc() {
        let (rss, hwm) = memory_of(std::process::id()).unwrap();
        assert!(rss > 0.0 && hwm >= rss, "{rss} {hwm}");
    }
}
