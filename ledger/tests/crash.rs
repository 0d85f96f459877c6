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
use lupus_ledger::log::Log;
use lupus_ledger::note::NoteSigner;
use lupus_ledger::proof::{prove_consistency, verify_consistency};
use lupus_ledger::store::LogStore;
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tree::{MemoryTree, StoredHashIndex, stored_hash_count};

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

struct Ack {
    index: u64,
    run: u64,
    task: u64,
    seq: u64,
}

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
            ["ack", index, run, task, seq] => acks.push(Ack {
                index: index.parse().expect("ack index"),
                run: run.parse().expect("ack run"),
                task: task.parse().expect("ack task"),
                seq: seq.parse().expect("ack seq"),
            }),
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
    let head = log.head();
    let size = head.size.0;
    let entries = store
        .read_entries(LeafIndex(0), LeafIndex(size))
        .await
        .expect("read every entry");

    // 1. Every acknowledged append is there, byte for byte.
    for ack in acks {
        let stored = entries.get(ack.index as usize).unwrap_or_else(|| {
            panic!(
                "acknowledged index {} is missing: the log has {size} entries",
                ack.index
            )
        });
        assert_eq!(
            stored,
            &entry_bytes(ack.run, ack.task, ack.seq),
            "acknowledged index {} holds other bytes",
            ack.index
        );
    }

    // 2. The tree re-verifies from scratch.
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
    assert_eq!(head.root, tree.root());

    // 3. Consistent with every checkpoint published before: proofs from the tree
    // recomputed above for all of them, and through the log's own proof path (the
    // store's hashes) for those published since the last kill.
    for (n, (old_size, old_root)) in heads.iter().enumerate() {
        assert!(
            old_size.0 <= size,
            "a published checkpoint of size {old_size} is past the reopened log ({size})"
        );
        let proof = if n >= fresh {
            log.consistency_proof(*old_size, head.size)
                .await
                .expect("a consistency proof from the log")
        } else {
            prove_consistency(*old_size, head.size, &tree).expect("a consistency proof")
        };
        verify_consistency(&proof, old_root, &head.root).unwrap_or_else(|e| {
            panic!("checkpoint of size {old_size} is not consistent with the reopened log: {e}")
        });
    }
    size
}
