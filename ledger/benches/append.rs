//! Throughput of durable appends and latency of proofs from storage.
//!
//! ```text
//! cargo bench -p lupus-ledger --bench append            # everything
//! cargo bench -p lupus-ledger --bench append -- appends # only appends
//! cargo bench -p lupus-ledger --bench append -- proofs  # only proofs
//! ```
//!
//! Appends: acknowledged (durable: SQLite WAL with `synchronous=FULL`, fsync per
//! commit) appends per second through [`Log::append`], with 1 appender (every append
//! waits for its own commit), with 16 and 256 concurrent appenders (group commit
//! shares each commit), and with 16 appenders keeping 256 appends in flight each
//! ([`Log::append_all`]). PostgreSQL too when `LUPUS_TEST_POSTGRES_URL` is set. The
//! ratio column is against the 1-appender row of the same backend; the bound column
//! is the disk's fsyncs per second, measured first in the same directory, times the
//! appends in flight (no writer can acknowledge durable appends faster).
//!
//! Proofs: inclusion and consistency proof generation through [`Log`] from a SQLite
//! store of 1,000,000 entries (built once with large batches), against the same proofs
//! from an in-memory tree as the baseline.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lupus_ledger::hash::{LeafIndex, TreeSize, leaf_hash};
use lupus_ledger::log::Log;
use lupus_ledger::note::NoteSigner;
use lupus_ledger::proof::{prove_consistency, prove_inclusion};
use lupus_ledger::store::LogStore;
use lupus_ledger::store::postgres::PostgresStore;
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tree::{Frontier, MemoryTree};

/// How long each append measurement runs.
const APPEND_TIME: Duration = Duration::from_secs(3);
const PROOF_TREE_SIZE: u64 = 1_000_000;
const PROOF_SAMPLES: usize = 2000;

fn signer() -> NoteSigner {
    NoteSigner::from_secret("lupus.example/bench", [3; 32]).expect("a valid key name")
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
/// outstanding (1: wait for each ack before the next; more: [`Log::append_all`]), for
/// [`APPEND_TIME`]; returns appends/s and the mean batch size (entries per stored
/// checkpoint).
async fn appends_per_second(log: &Log, appenders: u64, in_flight: u64) -> (f64, f64) {
    let start_size = log.head().size.0;
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < APPEND_TIME {
                    let entries = (done..done + in_flight)
                        .map(|n| entry(task << 32 | n))
                        .collect();
                    for answer in log.append_all(entries).await {
                        answer.expect("a durable append");
                    }
                    done += in_flight;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("appender task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let end_size = log.head().size.0;
    assert_eq!(
        end_size - start_size,
        total,
        "every append acknowledged once"
    );
    let mut batches = 0u64;
    // Count the checkpoints stored in the measured range: one per batch.
    let store = log.store();
    let mut size = start_size + 1;
    while size <= end_size {
        if store
            .checkpoint_at(TreeSize(size))
            .await
            .expect("read")
            .is_some()
        {
            batches += 1;
        }
        size += 1;
    }
    (total as f64 / elapsed, total as f64 / batches.max(1) as f64)
}

/// The disk's own bound: 4 KiB overwrites of a preallocated file, each followed by
/// fdatasync, per second, in `dir` (what a WAL commit costs at least: SQLite reuses its
/// WAL file, so its syncs change no file size either).
fn fsyncs_per_second(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("create the probe file");
    file.write_all(&vec![0; 1 << 20]).expect("preallocate");
    file.sync_all().expect("fsync");
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        let offset = u64::from(n % 256) * 4096;
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.write_all(&[n as u8; 4096]).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    drop(file);
    std::fs::remove_file(&path).expect("remove the probe file");
    f64::from(n) / start.elapsed().as_secs_f64()
}

async fn bench_appends(name: &str, store: Arc<dyn LogStore>, fsyncs: Option<f64>) {
    let log = Log::open(store, signer()).await.expect("open the log");
    let mut baseline = None;
    for (appenders, in_flight) in [(1, 1), (16, 1), (256, 1), (16, 256)] {
        let (rate, batch) = appends_per_second(&log, appenders, in_flight).await;
        let base = *baseline.get_or_insert(rate);
        let bound = fsyncs
            .map(|f| format!("{:>9.0}", f * (appenders * in_flight) as f64))
            .unwrap_or_else(|| format!("{:>9}", "-"));
        println!(
            "| {name:<8} | {appenders:>9} | {in_flight:>9} | {rate:>10.0} | {batch:>10.1} | {:>12.1}x | {bound} |",
            rate / base
        );
    }
}

async fn appends() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let fsyncs = fsyncs_per_second(dir.path());
    println!("\nDurable appends through Log::append ({APPEND_TIME:?} each)");
    println!(
        "Baseline: this disk does {fsyncs:.0} fdatasyncs/s (4 KiB overwrites); a durable \
         commit needs at least one, so the bound is that x appends in flight\n"
    );
    println!(
        "| backend  | appenders | in flight |  appends/s | mean batch | vs 1 appender | fsync bound |"
    );
    println!(
        "|----------|-----------|-----------|------------|------------|---------------|-------------|"
    );
    let store = SqliteStore::open_in_dir(dir.path())
        .await
        .expect("open sqlite");
    bench_appends("sqlite", Arc::new(store), Some(fsyncs)).await;
    match std::env::var("LUPUS_TEST_POSTGRES_URL") {
        Ok(url) => {
            let schema = format!("bench_{}", std::process::id());
            let store = PostgresStore::open(&url, &schema)
                .await
                .expect("open postgres");
            bench_appends("postgres", Arc::new(store), None).await;
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&pool)
                .await
                .expect("drop the bench schema");
        }
        Err(_) => println!("| postgres | (set LUPUS_TEST_POSTGRES_URL to measure) |"),
    }
}

async fn proofs() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open_in_dir(dir.path())
            .await
            .expect("open sqlite"),
    );
    let built = Instant::now();
    let mut frontier = Frontier::empty();
    let mut memory = MemoryTree::new();
    let batch = 16_384;
    let mut first = 0;
    while first < PROOF_TREE_SIZE {
        let end = (first + batch).min(PROOF_TREE_SIZE);
        let entries: Vec<Vec<u8>> = (first..end).map(entry).collect();
        let mut hashes = Vec::with_capacity(entries.len() * 2);
        for e in &entries {
            let leaf = leaf_hash(e);
            hashes.extend(frontier.append(leaf));
            memory.append(leaf);
        }
        store
            .append_batch(LeafIndex(first), &entries, &hashes, None)
            .await
            .expect("append a batch");
        first = end;
    }
    let build_time = built.elapsed();
    let log = Log::open(store, signer()).await.expect("open the log");
    let size = log.head().size;
    assert_eq!(size, TreeSize(PROOF_TREE_SIZE));
    assert_eq!(log.head().root, memory.root());
    println!(
        "\nProofs from a SQLite store of {PROOF_TREE_SIZE} entries (built in {build_time:.1?}), \
         {PROOF_SAMPLES} random samples each\n"
    );
    println!("| proof       | source        | mean µs | p99 µs | vs memory |");
    println!("|-------------|---------------|---------|--------|-----------|");

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let indexes: Vec<u64> = (0..PROOF_SAMPLES)
        .map(|_| rng.below(PROOF_TREE_SIZE))
        .collect();
    let olds: Vec<u64> = (0..PROOF_SAMPLES)
        .map(|_| 1 + rng.below(PROOF_TREE_SIZE - 1))
        .collect();

    let mut memory_times = Vec::new();
    for &i in &indexes {
        let t = Instant::now();
        prove_inclusion(size, LeafIndex(i), &memory).expect("proof");
        memory_times.push(t.elapsed());
    }
    let mut store_times = Vec::new();
    for &i in &indexes {
        let t = Instant::now();
        log.inclusion_proof(LeafIndex(i), size)
            .await
            .expect("proof");
        store_times.push(t.elapsed());
    }
    report("inclusion", &store_times, &memory_times);

    let mut memory_times = Vec::new();
    for &old in &olds {
        let t = Instant::now();
        prove_consistency(TreeSize(old), size, &memory).expect("proof");
        memory_times.push(t.elapsed());
    }
    let mut store_times = Vec::new();
    for &old in &olds {
        let t = Instant::now();
        log.consistency_proof(TreeSize(old), size)
            .await
            .expect("proof");
        store_times.push(t.elapsed());
    }
    report("consistency", &store_times, &memory_times);
}

fn stats(times: &mut [Duration]) -> (f64, f64) {
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>().as_secs_f64() / times.len().max(1) as f64;
    let p99 = times
        .get(times.len() * 99 / 100)
        .or(times.last())
        .copied()
        .unwrap_or_default();
    (mean * 1e6, p99.as_secs_f64() * 1e6)
}

fn report(name: &str, store: &[Duration], memory: &[Duration]) {
    let (store_mean, store_p99) = stats(&mut store.to_vec());
    let (memory_mean, memory_p99) = stats(&mut memory.to_vec());
    println!("| {name:<11} | memory tree   | {memory_mean:>7.1} | {memory_p99:>6.1} |      1.0x |");
    println!(
        "| {name:<11} | Log on SQLite | {store_mean:>7.1} | {store_p99:>6.1} | {:>8.1}x |",
        store_mean / memory_mean
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks a section.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if wants("appends") {
            appends().await;
        }
        if wants("proofs") {
            proofs().await;
        }
    });
}
