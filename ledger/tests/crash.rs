//! Crash safety of the log on SQLite: kill a writing process at random moments and
//! check, after every kill, everything the log promises (DESIGN.md, "Ledger").
//!
//! The test re-executes its own binary as a child (`crash_child`, selected by
//! `--exact` and the `LUPUS_CRASH_CHILD_DIR` variable). The child opens the log and
//! appends from several concurrent tasks, printing a line for each acknowledged
//! append (`ack INDEX RUN TASK SEQ`) and for each checkpoint it saw published
//! (`checkpoint HEX-OF-NOTE`), flushing each line. The parent SIGKILLs it after a
//! random delay, reopens the log, and asserts:
//!
//! 1. every acknowledged index holds exactly the bytes acknowledged for it;
//! 2. the whole tree re-verifies from scratch: every stored hash recomputed from the
//!    entries, the root recomputed and equal to the latest signed checkpoint's;
//! 3. the reopened log's checkpoint is consistent (a verified RFC 9162 consistency
//!    proof) with every checkpoint any child published before.
//!
//! The random seed is printed; set `LUPUS_CRASH_SEED` to replay a run's delays.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::hash::{Hash, LeafIndex, TreeSize};
use lupus_ledger::log::{Log, LogError};
use lupus_ledger::note::NoteSigner;
use lupus_ledger::proof::{prove_consistency, verify_consistency};
use lupus_ledger::store::LogStore;
use lupus_ledger::store::fault::{Fault, FaultyStore};
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tree::{MemoryTree, StoredHashIndex, stored_hash_count, tree_hash};

const CHILD_DIR: &str = "LUPUS_CRASH_CHILD_DIR";
const CHILD_RUN: &str = "LUPUS_CRASH_CHILD_RUN";
/// Kills, each followed by a full check.
const ROUNDS: u64 = 24;
/// Concurrent appenders in the child.
const APPENDERS: u64 = 8;
/// The child is killed this long after it starts, at most.
const MAX_DELAY_MS: u64 = 400;

fn signer() -> NoteSigner {
    NoteSigner::from_secret("lupus.example/crash-test", [42; 32]).expect("a valid key name")
}

/// What the child appends: determined by (run, task, seq), so the parent can check it.
fn entry_bytes(run: u64, task: u64, seq: u64) -> Vec<u8> {
    let mut bytes = format!("crash entry run={run} task={task} seq={seq} ").into_bytes();
    let pad = (run * 131 + task * 17 + seq * 7) % 160;
    bytes.extend((0..pad).map(|i| (i as u8) ^ (seq as u8)));
    bytes
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the parent is gone; nothing useful is left to do.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The child: appends until killed. Only runs when the parent starts it.
#[test]
#[ignore = "the child process of crash_safety_under_sigkill, which runs it"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN)
        .expect("the parent sets the run number")
        .parse()
        .expect("a run number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let store = SqliteStore::open_in_dir(&dir)
            .await
            .expect("open the store");
        let log = Log::open(Arc::new(store), signer())
            .await
            .expect("open the log");
        let mut heads = log.subscribe();
        let initial = heads.borrow_and_update().clone();
        say(&format!("checkpoint {}", hex::encode(&initial.note)));
        tokio::spawn(async move {
            while heads.changed().await.is_ok() {
                let head = heads.borrow_and_update().clone();
                say(&format!("checkpoint {}", hex::encode(&head.note)));
            }
        });
        let appenders: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let log = log.clone();
                tokio::spawn(async move {
                    for seq in 0.. {
                        let index = log
                            .append(entry_bytes(run, task, seq))
                            .await
                            .expect("append");
                        say(&format!("ack {} {run} {task} {seq}", index.0));
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await.expect("appender task");
        }
    });
}

/// An acknowledged append: its index and the bytes acknowledged for it.
type Ack = (u64, Vec<u8>);

/// Parses the child's complete lines (a kill may cut the last one short).
fn parse_output(out: &[u8], acks: &mut Vec<Ack>, notes: &mut Vec<String>) {
    let text = String::from_utf8_lossy(out);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    for line in complete.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["ack", index, run, task, seq] => {
                let number = |word: &str| word.parse::<u64>().expect("a number in an ack line");
                let bytes = entry_bytes(number(run), number(task), number(seq));
                acks.push((number(index), bytes));
            }
            ["checkpoint", note] => {
                let bytes = hex::decode(note).expect("hex note");
                notes.push(String::from_utf8(bytes).expect("UTF-8 note"));
            }
            _ => {} // the test harness's own lines
        }
    }
}

/// A small deterministic generator for the kill delays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn crash_safety_under_sigkill() {
    let seed = match std::env::var("LUPUS_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("LUPUS_CRASH_SEED is a number"),
        Err(_) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("random seed");
            u64::from_le_bytes(bytes) | 1
        }
    };
    println!("crash test seed {seed} (set LUPUS_CRASH_SEED={seed} to replay)");
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let exe = std::env::current_exe().expect("the test binary's path");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let verifier = signer().verifier();
    let mut acks = Vec::new();
    let mut heads: Vec<(TreeSize, Hash)> = Vec::new();
    let mut seen = HashMap::new();
    let started = Instant::now();
    for run in 0..ROUNDS {
        let delay = Duration::from_millis(rng.next() % MAX_DELAY_MS);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child");
        let mut stdout = child.stdout.take().expect("the child's stdout");
        // Read concurrently so a full pipe never stalls the child.
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).map(|_| out)
        });
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let out = reader
            .join()
            .expect("reader thread")
            .expect("read the child's output");
        let (acks_before, heads_before) = (acks.len(), heads.len());
        let mut notes = Vec::new();
        parse_output(&out, &mut acks, &mut notes);
        for note in notes {
            let signed = open_checkpoint(&note, &verifier)
                .expect("a published checkpoint verifies")
                .checkpoint;
            match seen.insert(signed.size, signed.root) {
                None => heads.push((signed.size, signed.root)),
                Some(root) => assert_eq!(
                    root, signed.root,
                    "two checkpoints of size {} sign different roots: a fork",
                    signed.size
                ),
            }
        }
        let fresh = heads_before;
        let size = runtime.block_on(check_everything(dir.path(), &acks, &heads, fresh));
        println!(
            "run {run}: killed after {delay:?}; {} acks, {} checkpoints seen; log size {size}",
            acks.len() - acks_before,
            heads.len() - heads_before
        );
    }
    assert!(
        acks.len() > 100,
        "the children acknowledged only {} appends: the test did not exercise the log",
        acks.len()
    );
    println!(
        "{ROUNDS} kills, {} acknowledged appends, {} checkpoints, all checked in {:?}",
        acks.len(),
        heads.len(),
        started.elapsed()
    );
}

/// Reopens the log after a kill and checks the three promises; returns the size.
async fn check_everything(
    dir: &std::path::Path,
    acks: &[Ack],
    heads: &[(TreeSize, Hash)],
    fresh: usize,
) -> u64 {
    let store: Arc<dyn LogStore> = Arc::new(
        SqliteStore::open_in_dir(dir)
            .await
            .expect("reopen the store"),
    );
    let log = Log::open(Arc::clone(&store), signer())
        .await
        .expect("reopen the log after a kill");
    check_log(&store, &log, acks, heads, fresh).await
}

/// Checks the three promises of an open log against what was acknowledged and
/// published; proofs of the heads from `fresh` on go through the log's own proof path.
async fn check_log(
    store: &Arc<dyn LogStore>,
    log: &Log,
    acks: &[Ack],
    heads: &[(TreeSize, Hash)],
    fresh: usize,
) -> u64 {
    // The store may hold more than the log has published: a batch whose commit
    // landed but was reported failed is not acknowledged until the writer reloads.
    let head = log.head();
    let size = store.size().await.expect("the stored size").0;
    assert!(head.size.0 <= size, "the head is past the stored entries");
    let entries = store
        .read_entries(LeafIndex(0), LeafIndex(size))
        .await
        .expect("read every entry");

    // 1. Every acknowledged append is there, byte for byte.
    for (index, bytes) in acks {
        let stored = entries.get(*index as usize).unwrap_or_else(|| {
            panic!("acknowledged index {index} is missing: the log has {size} entries")
        });
        assert_eq!(
            stored, bytes,
            "acknowledged index {index} holds other bytes"
        );
        assert!(
            *index < head.size.0,
            "acknowledged index {index} is not under the head"
        );
    }

    // 2. The tree re-verifies from scratch: every stored hash, the root the latest
    // stored checkpoint signs, and the root of the published head (whose note must be
    // the one stored for its size: nothing is published that is not durable).
    let mut tree = MemoryTree::new();
    for entry in &entries {
        tree.append_entry(entry);
    }
    let all: Vec<StoredHashIndex> = (0..stored_hash_count(size)).map(StoredHashIndex).collect();
    let stored_hashes = store
        .read_hashes(&all)
        .await
        .expect("read every stored hash");
    assert!(
        stored_hashes == tree.stored_hashes(),
        "a stored hash differs from the one recomputed from the entries"
    );
    let latest = store
        .latest_checkpoint()
        .await
        .expect("read the latest checkpoint")
        .expect("a checkpoint is stored");
    let signed = open_checkpoint(&latest.note, log.verifier()).expect("the checkpoint verifies");
    assert_eq!(signed.checkpoint.size, TreeSize(size));
    assert_eq!(
        signed.checkpoint.root,
        tree.root(),
        "the signed root is the recomputed root"
    );
    let head_root = tree_hash(head.size, &tree).expect("the root at the head's size");
    assert_eq!(
        head.root, head_root,
        "the head's root is the recomputed root"
    );
    let published = store
        .checkpoint_at(head.size)
        .await
        .expect("read a checkpoint");
    assert_eq!(
        published.as_ref(),
        Some(&head.note),
        "the published note is stored"
    );

    // 3. Consistent with every checkpoint published before: proofs from the tree
    // recomputed above for all of them, and through the log's own proof path (the
    // store's hashes) for those published since the last check.
    for (n, (old_size, old_root)) in heads.iter().enumerate() {
        assert!(
            *old_size <= head.size,
            "a published checkpoint of size {old_size} is past the head ({})",
            head.size
        );
        let proof = if n >= fresh {
            log.consistency_proof(*old_size, head.size)
                .await
                .expect("a consistency proof from the log")
        } else {
            prove_consistency(*old_size, head.size, &tree).expect("a consistency proof")
        };
        verify_consistency(&proof, old_root, &head.root).unwrap_or_else(|e| {
            panic!("checkpoint of size {old_size} is not consistent with the head: {e}")
        });
    }
    size
}

/// Random sequences of appends, injected storage faults (before and after the
/// commit) and reopenings, with the same full check after every step: a failed batch
/// acknowledges nothing, publishes no checkpoint, and the log recovers and stays
/// consistent (the sequence testing that sunlight and redb do, on a fault-injecting
/// store instead of a killed process).
#[test]
fn random_fault_sequences_keep_every_promise() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for seed in [3u64, 0x5eed, 0xfa017] {
        runtime.block_on(fault_sequence(seed));
    }
}

async fn fault_sequence(seed: u64) {
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = SqliteStore::open_in_dir(dir.path())
        .await
        .expect("open sqlite");
    let faulty = Arc::new(FaultyStore::new(Arc::new(sqlite)));
    let store: Arc<dyn LogStore> = faulty.clone();
    let mut log = Log::open(Arc::clone(&store), signer()).await.expect("open");
    let mut acks: Vec<Ack> = Vec::new();
    let mut heads = vec![(log.head().size, log.head().root)];
    let (mut failed, mut reopened) = (0, 0);
    for step in 0..80u64 {
        let fresh = heads.len();
        match rng.next() % 8 {
            0 => faulty.fail_next_append(Fault::BeforeCommit),
            1 => faulty.fail_next_append(Fault::AfterCommit),
            2 => {
                drop(log);
                log = loop {
                    // Opening writes only when no checkpoint covers the stored size;
                    // if that write hits an armed fault, opening again succeeds.
                    match Log::open(Arc::clone(&store), signer()).await {
                        Ok(log) => break log,
                        Err(e) => assert!(e.to_string().contains("injected fault"), "{e}"),
                    }
                };
                reopened += 1;
            }
            _ => {
                let before = log.head();
                let count = 1 + rng.next() % 24;
                let tasks: Vec<_> = (0..count)
                    .map(|k| {
                        let log = log.clone();
                        let bytes = entry_bytes(seed, step, k);
                        tokio::spawn(async move { (log.append(bytes.clone()).await, bytes) })
                    })
                    .collect();
                for task in tasks {
                    match task.await.expect("an append task") {
                        (Ok(index), bytes) => acks.push((index.0, bytes)),
                        (Err(LogError::NotStored(_)), _) => failed += 1,
                        (Err(e), _) => panic!("unexpected append error: {e}"),
                    }
                }
                // Whatever failed, the head only ever moves forward.
                assert!(log.head().size >= before.size);
            }
        }
        let head = log.head();
        heads.push((head.size, head.root));
        check_log(&store, &log, &acks, &heads, fresh).await;
    }
    assert!(
        failed > 0 && reopened > 0,
        "seed {seed} injected no fault or never reopened"
    );
    println!(
        "fault sequence {seed:#x}: {} acks, {failed} failed appends, {reopened} reopenings",
        acks.len()
    );
}
