//! `lupus-bench ledger`: the transparency log's costs, each against a baseline
//! measured in the same run.
//!
//! - Durable appends per second through [`Log::append_all`] with 1 appender (every
//!   append waits for its own commit), 16 and 256 concurrent appenders (group commit
//!   shares each commit), and 16 appenders keeping 256 appends in flight each. Baseline:
//!   the 1-appender row; on SQLite also the disk's own fdatasyncs per second, measured
//!   first in the same directory, times the appends in flight (no writer can
//!   acknowledge durable appends faster).
//! - Inclusion and consistency proofs through [`Log`] from a store of `--entries`
//!   entries (built once with large batches), against the same proofs from an
//!   in-memory tree.
//! - Stake statements (DESIGN.md, "Ledger"): build and verify with a sum tree of
//!   `--accounts` accounts, against opening the signed checkpoint alone (one Ed25519
//!   verification and a note parse), the floor of any offline verification.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lupus_ledger::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, Epoch, PublicKey, Round, TaskId,
};
use lupus_ledger::hash::{LeafIndex, TreeSize, leaf_hash};
use lupus_ledger::log::Log;
use lupus_ledger::note::{NoteSigner, NoteVerifier};
use lupus_ledger::proof::{prove_consistency, prove_inclusion};
use lupus_ledger::stake::{build_statement, verify_statement};
use lupus_ledger::store::LogStore;
use lupus_ledger::store::postgres::PostgresStore;
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tree::{Frontier, MemoryTree};
use lupus_protocol::SharesFold;

use super::report::{Report, bar, spinner, time_per_call};

/// Measures the log's appends, proofs and stake statements.
///
/// Appends: durable appends/s through Log::append_all with 1, 16 and 256 concurrent
/// appenders and with 16 appenders keeping 256 in flight; baseline: the 1-appender row,
/// and on SQLite the disk's own fdatasyncs/s (measured first) times the appends in
/// flight. Proofs: inclusion and consistency proofs through the Log from a store of
/// --entries entries, against the same proofs from an in-memory tree. Stake
/// statements: build and verify with --accounts accounts, against opening the signed
/// checkpoint alone. SQLite in a temporary directory by default; --database
/// postgres://... measures PostgreSQL (in schemas it drops afterwards).
#[derive(clap::Args, Clone, Debug)]
pub struct LedgerArgs {
    /// `postgres://USER@HOST:PORT/DB` measures PostgreSQL (default: SQLite in a
    /// temporary directory).
    #[arg(long)]
    pub database: Option<String>,
    /// Seconds each append configuration runs.
    #[arg(long, default_value_t = 2.0)]
    pub append_seconds: f64,
    /// Entries in the log the proofs are drawn from.
    #[arg(long, default_value_t = 200_000)]
    pub entries: u64,
    /// Proofs of each kind drawn at random positions.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Accounts in the stake statements' sum tree (one credit entry each).
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// Milliseconds of CPU time each stake operation is timed for.
    #[arg(long, default_value_t = 1500)]
    pub budget_ms: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub async fn run(args: &LedgerArgs) -> Result<Report> {
    ensure!(
        args.entries >= 2 && args.samples > 0 && args.accounts > 0 && args.append_seconds > 0.0,
        "--entries must be at least 2, --samples, --accounts and --append-seconds above 0"
    );
    let mut backend = Backend::new(args.database.as_deref())?;
    let mut report = Report::new("ledger");
    let measured = async {
        appends(&mut backend, args, &mut report).await?;
        proofs(&mut backend, args, &mut report).await
    }
    .await;
    backend.drop_schemas().await?;
    measured?;
    let accounts = args.accounts;
    let budget = Duration::from_millis(args.budget_ms);
    let stake_figures = tokio::task::spawn_blocking(move || stake(accounts, budget)).await??;
    report.figures.extend(stake_figures.figures);
    report.write_json(args.json.as_deref())?;
    Ok(report)
}

/// Where the measured logs live.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schemas: Vec<String> },
}

impl Backend {
    fn new(database: Option<&str>) -> Result<Backend> {
        Ok(match database {
            None => Backend::Sqlite(tempfile::tempdir().context("a temporary directory")?),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Backend::Postgres {
                    url: url.to_owned(),
                    schemas: Vec::new(),
                }
            }
            Some(_) => anyhow::bail!(
                "--database takes a postgres://USER@HOST:PORT/DB URL (leave it out for SQLite in a temporary directory)"
            ),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// A fresh, empty store called `name`.
    async fn store(&mut self, name: &str) -> Result<Arc<dyn LogStore>> {
        Ok(match self {
            Backend::Sqlite(dir) => {
                let path = dir.path().join(name);
                Arc::new(SqliteStore::open_in_dir(&path).await?)
            }
            Backend::Postgres { url, schemas } => {
                let schema = format!("lupus_bench_{name}_{}", std::process::id());
                let store = PostgresStore::open(url, &schema).await?;
                schemas.push(schema);
                Arc::new(store)
            }
        })
    }

    /// Drops the PostgreSQL schemas this run created (the SQLite directory goes with
    /// the temporary directory).
    async fn drop_schemas(&mut self) -> Result<()> {
        if let Backend::Postgres { url, schemas } = self {
            let pool = sqlx::PgPool::connect(url).await?;
            for schema in schemas.drain(..) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&pool)
                    .await
                    .with_context(|| format!("dropping the bench schema {schema}"))?;
            }
        }
        Ok(())
    }
}

fn signer() -> Result<NoteSigner> {
    Ok(NoteSigner::from_secret("lupus.example/bench", [3; 32])?)
}

fn entry(i: u64) -> Vec<u8> {
    let mut bytes = format!("bench entry {i} ").into_bytes();
    bytes.resize(120, b'.');
    bytes
}

/// A small deterministic generator for sample positions.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Appends from `appenders` concurrent tasks, each keeping `in_flight` appends
/// outstanding, for `time`; returns appends/s and the mean batch size (entries per
/// stored checkpoint).
async fn appends_per_second(
    log: &Log,
    appenders: u64,
    in_flight: u64,
    time: Duration,
) -> Result<(f64, f64)> {
    let start_size = log.head().size.0;
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < time {
                    let entries = (done..done + in_flight)
                        .map(|n| entry(task << 32 | n))
                        .collect();
                    for answer in log.append_all(entries).await {
                        answer?;
                    }
                    done += in_flight;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let end_size = log.head().size.0;
    ensure!(
        end_size - start_size == total,
        "{total} appends acknowledged but the log grew by {}",
        end_size - start_size
    );
    // Count the checkpoints stored in the measured range: one per batch.
    let mut batches = 0u64;
    for size in start_size + 1..=end_size {
        if log.store().checkpoint_at(TreeSize(size)).await?.is_some() {
            batches += 1;
        }
    }
    Ok((total as f64 / elapsed, total as f64 / batches.max(1) as f64))
}

/// The disk's own bound: 4 KiB overwrites of a preallocated file, each followed by
/// fdatasync, per second, in `dir` (what a WAL commit costs at least: SQLite reuses its
/// WAL file, so its syncs change no file size either).
fn fsyncs_per_second(dir: &Path) -> Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&vec![0; 1 << 20])?;
    file.sync_all()?;
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        let offset = u64::from(n % 256) * 4096;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&[n as u8; 4096])?;
        file.sync_data()?;
        n += 1;
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

async fn appends(backend: &mut Backend, args: &LedgerArgs, report: &mut Report) -> Result<()> {
    let fsyncs = match backend {
        Backend::Sqlite(dir) => Some(fsyncs_per_second(dir.path())?),
        Backend::Postgres { .. } => None,
    };
    let name = backend.name();
    let time = Duration::from_secs_f64(args.append_seconds);
    let log = Log::open(backend.store("appends").await?, signer()?).await?;
    let configs = [(1u64, 1u64), (16, 1), (256, 1), (16, 256)];
    let mut rows = Vec::new();
    let mut baseline = None;
    for (appenders, in_flight) in configs {
        let s = spinner(&format!(
            "appends on {name}: {appenders} appenders x {in_flight} in flight"
        ));
        let (rate, batch) = appends_per_second(&log, appenders, in_flight, time).await?;
        s.finish_and_clear();
        let base = *baseline.get_or_insert(rate);
        let bound = fsyncs.map(|f| f * (appenders * in_flight) as f64);
        let what = format!("{name} appends, {appenders} appenders x {in_flight} in flight");
        match bound {
            Some(b) if appenders == 1 => report.against(what, rate, "appends/s", "fsync bound", b),
            _ if appenders == 1 => report.add(what, rate, "appends/s"),
            _ => report.against(what, rate, "appends/s", "1 appender", base),
        }
        rows.push((appenders, in_flight, rate, batch, rate / base, bound));
    }
    println!("\nDurable appends through Log::append_all ({time:?} each)");
    match fsyncs {
        Some(f) => println!(
            "Baseline: this disk does {f:.0} fdatasyncs/s (4 KiB overwrites); a durable \
             commit needs at least one, so the bound is that x appends in flight\n"
        ),
        None => println!("Baseline: the 1-appender row (the server's disk is not measured)\n"),
    }
    println!(
        "| backend  | appenders | in flight |  appends/s | mean batch | vs 1 appender | fsync bound |"
    );
    println!(
        "|----------|-----------|-----------|------------|------------|---------------|-------------|"
    );
    for (appenders, in_flight, rate, batch, ratio, bound) in rows {
        let bound = bound.map_or_else(|| format!("{:>11}", "-"), |b| format!("{b:>11.0}"));
        println!(
            "| {name:<8} | {appenders:>9} | {in_flight:>9} | {rate:>10.0} | {batch:>10.1} | {ratio:>12.1}x | {bound} |"
        );
    }
    Ok(())
}

async fn proofs(backend: &mut Backend, args: &LedgerArgs, report: &mut Report) -> Result<()> {
    let total = args.entries;
    let store = backend.store("proofs").await?;
    let built = Instant::now();
    let mut frontier = Frontier::empty();
    let mut memory = MemoryTree::new();
    let batch = 16_384;
    let mut first = 0;
    let progress = bar(total, "building the proof log");
    while first < total {
        let end = (first + batch).min(total);
        let entries: Vec<Vec<u8>> = (first..end).map(entry).collect();
        let mut hashes = Vec::with_capacity(entries.len() * 2);
        for e in &entries {
            let leaf = leaf_hash(e);
            hashes.extend(frontier.append(leaf));
            memory.append(leaf);
        }
        store
            .append_batch(LeafIndex(first), &entries, &hashes, None)
            .await?;
        first = end;
        progress.set_position(first);
    }
    progress.finish_and_clear();
    let build_time = built.elapsed();
    let log = Log::open(store, signer()?).await?;
    let size = log.head().size;
    ensure!(size == TreeSize(total), "the proof log holds {size:?}");
    ensure!(
        log.head().root == memory.root(),
        "the stored tree and the memory tree disagree"
    );

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let indexes: Vec<u64> = (0..args.samples).map(|_| rng.below(total)).collect();
    let olds: Vec<u64> = (0..args.samples)
        .map(|_| 1 + rng.below(total - 1))
        .collect();
    let progress = bar(4 * args.samples as u64, "proofs");
    let mut memory_inclusion = Vec::new();
    for &i in &indexes {
        let t = Instant::now();
        prove_inclusion(size, LeafIndex(i), &memory)?;
        memory_inclusion.push(t.elapsed());
        progress.inc(1);
    }
    let mut store_inclusion = Vec::new();
    for &i in &indexes {
        let t = Instant::now();
        log.inclusion_proof(LeafIndex(i), size).await?;
        store_inclusion.push(t.elapsed());
        progress.inc(1);
    }
    let mut memory_consistency = Vec::new();
    for &old in &olds {
        let t = Instant::now();
        prove_consistency(TreeSize(old), size, &memory)?;
        memory_consistency.push(t.elapsed());
        progress.inc(1);
    }
    let mut store_consistency = Vec::new();
    for &old in &olds {
        let t = Instant::now();
        log.consistency_proof(TreeSize(old), size).await?;
        store_consistency.push(t.elapsed());
        progress.inc(1);
    }
    progress.finish_and_clear();
    let name = backend.name();
    println!(
        "\nProofs from a {name} store of {total} entries (built in {build_time:.1?}), \
         {} random samples each\n",
        args.samples
    );
    println!("| proof       | source          | mean µs | p99 µs | vs memory |");
    println!("|-------------|-----------------|---------|--------|-----------|");
    for (proof, store, memory) in [
        ("inclusion", store_inclusion, memory_inclusion),
        ("consistency", store_consistency, memory_consistency),
    ] {
        let (store_mean, store_p99) = stats(store);
        let (memory_mean, memory_p99) = stats(memory);
        println!(
            "| {proof:<11} | memory tree     | {memory_mean:>7.1} | {memory_p99:>6.1} |      1.0x |"
        );
        println!(
            "| {proof:<11} | Log on {name:<8} | {store_mean:>7.1} | {store_p99:>6.1} | {:>8.1}x |",
            store_mean / memory_mean
        );
        report.against(
            format!("{proof} proof from {name}, {total} entries (mean)"),
            store_mean,
            "µs",
            "memory tree",
            memory_mean,
        );
    }
    Ok(())
}

/// Mean and 99th percentile, in microseconds.
fn stats(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>().as_secs_f64() / times.len().max(1) as f64;
    let p99 = times
        .get(times.len() * 99 / 100)
        .or(times.last())
        .copied()
        .unwrap_or_default();
    (mean * 1e6, p99.as_secs_f64() * 1e6)
}

/// A log with one credit to each of `accounts` keys, folded, and its shares epoch.
struct StakeFixture {
    tree: MemoryTree,
    fold: SharesFold,
    epoch_entry: Entry,
    epoch_index: u64,
    keys: Vec<PublicKey>,
    checkpoint: String,
    vkey: String,
}

fn push(tree: &mut MemoryTree, fold: &mut SharesFold, body: EntryBody) -> Result<(u64, Entry)> {
    let entry = Entry::unsigned(body)?;
    let index = tree.append_entry(entry.as_bytes()).0;
    fold.apply(index, &entry)?;
    Ok((index, entry))
}

/// Genesis, one round with a credit to each of `accounts` distinct keys, its close and
/// the shares epoch: `accounts + 4` entries, every one folded and appended.
fn stake_fixture(accounts: u64) -> Result<StakeFixture> {
    let signer = NoteSigner::from_secret("lupus.bench/log", [7; 32])?;
    let mut tree = MemoryTree::new();
    let mut fold = SharesFold::new();
    push(
        &mut tree,
        &mut fold,
        EntryBody::Genesis {
            job_spec: "[job]\n".into(),
            job_hash: Digest::of(b"job"),
            dataset_root: Digest::of(b"data"),
            log_key: PublicKey(signer.verifier().public_key().to_bytes()),
            coordinator_note_key: signer.verifier_key(),
            created_ms: 0,
        },
    )?;
    push(
        &mut tree,
        &mut fold,
        EntryBody::RoundOpened {
            round: Round(1),
            base_model: Digest::of(b"model"),
            beacon_commitment: Digest::of(b"beacon"),
            inner_steps: 20,
            deadline_ms: 0,
        },
    )?;
    let progress = bar(accounts, "stake: folding credits");
    let mut keys = Vec::with_capacity(accounts as usize);
    for i in 0..accounts {
        let key = PublicKey(*Digest::of(&i.to_be_bytes()).as_bytes());
        keys.push(key);
        push(
            &mut tree,
            &mut fold,
            EntryBody::Credit {
                round: Round(1),
                key,
                amount: Amount(1_000_000 + i),
                task: TaskId(i),
                kind: CreditKind::Work,
            },
        )?;
        if i % 4096 == 0 {
            progress.set_position(i);
        }
    }
    progress.finish_and_clear();
    push(
        &mut tree,
        &mut fold,
        EntryBody::RoundClosed {
            round: Round(1),
            beacon: Digest::of(b"r"),
            new_model: Digest::of(b"model2"),
            val_loss_bits: 0,
            accepted_tasks: u32::try_from(accounts)?,
            val_windows: 0,
            momentum: None,
            merged: Vec::new(),
        },
    )?;
    let body = fold.expected_epoch(Epoch(1), Round(1))?;
    let (epoch_index, epoch_entry) = push(&mut tree, &mut fold, body)?;
    let checkpoint = sign_checkpoint(
        &Checkpoint {
            origin: "lupus.bench/log".into(),
            size: tree.size(),
            root: tree.root(),
            extensions: Vec::new(),
        },
        &signer,
    )?;
    Ok(StakeFixture {
        tree,
        fold,
        epoch_entry,
        epoch_index,
        keys,
        checkpoint,
        vkey: signer.verifier_key(),
    })
}

/// Stake statement build and verify against opening the checkpoint alone.
fn stake(accounts: u64, budget: Duration) -> Result<Report> {
    let start = Instant::now();
    let f = stake_fixture(accounts)?;
    let fixture_time = start.elapsed();
    let epoch_tree = &f
        .fold
        .latest_epoch()
        .context("the fixture has a shares epoch")?
        .tree;
    let build = |key: &PublicKey| -> Result<_> {
        let inclusion = prove_inclusion(f.tree.size(), LeafIndex(f.epoch_index), &f.tree)?;
        Ok(build_statement(
            key,
            epoch_tree,
            f.epoch_index,
            &f.epoch_entry,
            inclusion,
            f.checkpoint.clone(),
        )?)
    };
    // A stride coprime with the count walks every account in turn.
    let mut k = 0usize;
    let mut next_key = || {
        k = (k + 7919) % f.keys.len();
        f.keys.get(k).copied().unwrap_or(PublicKey([0; 32]))
    };
    let statements = (0..64)
        .map(|_| build(&next_key()))
        .collect::<Result<Vec<_>>>()?;
    for s in &statements {
        verify_statement(s, &f.vkey)?;
    }
    let s = spinner("stake statements");
    let build_s = time_per_call(budget, || {
        std::hint::black_box(build(&next_key()).ok());
    });
    let mut i = 0usize;
    let verify_s = time_per_call(budget, || {
        i = (i + 1) % statements.len();
        std::hint::black_box(statements.get(i).map(|s| verify_statement(s, &f.vkey).ok()));
    });
    let verifier = NoteVerifier::parse(&f.vkey)?;
    let open_s = time_per_call(budget, || {
        std::hint::black_box(open_checkpoint(&f.checkpoint, &verifier).ok());
    });
    s.finish_and_clear();
    println!(
        "\nStake statements: {accounts} accounts, {} log entries, built and folded in {fixture_time:.2?} (target: each operation under 1 ms)\n",
        f.tree.size().0
    );
    println!("| operation                           |      µs | vs open_checkpoint |");
    println!("|-------------------------------------|---------|--------------------|");
    let mut report = Report::new("ledger");
    for (what, secs) in [
        ("build (inclusion + sum proof)", build_s),
        ("verify_statement", verify_s),
        ("baseline: open_checkpoint alone", open_s),
    ] {
        println!(
            "| {what:<35} | {:>7.1} | {:>17.1}x |",
            secs * 1e6,
            secs / open_s
        );
    }
    report.against(
        format!("stake statement build, {accounts} accounts"),
        build_s * 1e6,
        "µs",
        "open_checkpoint",
        open_s * 1e6,
    );
    report.against(
        format!("stake statement verify, {accounts} accounts"),
        verify_s * 1e6,
        "µs",
        "open_checkpoint",
        open_s * 1e6,
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stake_fixture_proves_every_statement_it_builds() {
        let f = stake_fixture(50).unwrap();
        assert_eq!(f.tree.size().0, 54);
        let epoch = &f.fold.latest_epoch().unwrap().tree;
        let inclusion = prove_inclusion(f.tree.size(), LeafIndex(f.epoch_index), &f.tree).unwrap();
        let s = build_statement(
            &f.keys[7],
            epoch,
            f.epoch_index,
            &f.epoch_entry,
            inclusion,
            f.checkpoint.clone(),
        )
        .unwrap();
        verify_statement(&s, &f.vkey).unwrap();
    }

    #[tokio::test]
    async fn a_small_ledger_bench_on_sqlite_reports_every_figure() {
        let args = LedgerArgs {
            database: None,
            append_seconds: 0.05,
            entries: 300,
            samples: 5,
            accounts: 20,
            budget_ms: 3,
            json: None,
        };
        let r = run(&args).await.unwrap();
        // 4 append rows, 2 proofs, 2 stake operations.
        assert_eq!(r.figures.len(), 8, "{:?}", r.figures);
        assert!(r.figures.iter().all(|f| f.value > 0.0), "{:?}", r.figures);
    }
}
