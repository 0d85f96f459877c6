//! One conformance suite for every [`LogStore`] backend: each case below runs against
//! SQLite and against PostgreSQL, and both must give the same answers.
//!
//! PostgreSQL: the cases read `LUPUS_TEST_POSTGRES_URL`. Without it they FAIL and say
//! how to start a throwaway server, unless `LUPUS_SKIP_POSTGRES=1` is set on purpose.
//! Each case works in a schema of its own, named after the case, the process and the
//! clock, so parallel runs never collide; the schema is dropped when the case passes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lupus_ledger::hash::{Hash, LeafIndex, TreeSize, leaf_hash};
use lupus_ledger::store::postgres::PostgresStore;
use lupus_ledger::store::{Corruption, LogStore, StoreError, StoredCheckpoint, open_store};
use lupus_ledger::tree::{Frontier, MemoryTree, StoredHashIndex, stored_hash_count};
use sqlx::AssertSqlSafe;

/// Where a case's store lives, and raw SQL access to it for corrupting rows.
struct Fixture {
    backend: Backend,
}

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

impl Fixture {
    fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("nested").join("ledger.sqlite3");
        Fixture {
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    /// `None` only when the PostgreSQL half is explicitly skipped.
    fn postgres(case: &str) -> Option<Fixture> {
        let url = match std::env::var("LUPUS_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) if std::env::var("LUPUS_SKIP_POSTGRES").as_deref() == Ok("1") => return None,
            Err(_) => panic!(
                "LUPUS_TEST_POSTGRES_URL is not set, so the PostgreSQL half of the store \
                 conformance suite cannot run. Start a throwaway server with\n  \
                 scripts/pg-test-server.sh start /tmp/lupus-pg 55432\nand export \
                 LUPUS_TEST_POSTGRES_URL=postgres://lupus@127.0.0.1:55432/lupus_test \
                 (or set LUPUS_SKIP_POSTGRES=1 to skip it on purpose)."
            ),
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!("conf_{case}_{}_{nanos}", std::process::id());
        Some(Fixture {
            backend: Backend::Postgres { url, schema },
        })
    }

    async fn open(&self) -> Result<Arc<dyn LogStore>, StoreError> {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                open_store(&format!("sqlite://{}", path.display())).await
            }
            Backend::Postgres { url, schema } => {
                Ok(Arc::new(PostgresStore::open(url, schema).await?))
            }
        }
    }

    async fn store(&self) -> Arc<dyn LogStore> {
        self.open().await.expect("open the store")
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// Runs raw SQL against the store's tables; `{t}` stands for the table prefix.
    async fn raw(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let pool = sqlx::SqlitePool::connect_with(options)
                    .await
                    .expect("raw connect");
                sqlx::raw_sql(AssertSqlSafe(sql.replace("{t}", "")))
                    .execute(&pool)
                    .await
                    .expect("raw SQL");
                pool.close().await;
            }
            Backend::Postgres { url, schema } => {
                let pool = sqlx::PgPool::connect(url).await.expect("raw connect");
                sqlx::raw_sql(AssertSqlSafe(sql.replace("{t}", &format!("{schema}."))))
                    .execute(&pool)
                    .await
                    .expect("raw SQL");
                pool.close().await;
            }
        }
    }

    async fn cleanup(self) {
        if let Backend::Postgres { url, schema } = &self.backend {
            let pool = sqlx::PgPool::connect(url)
                .await
                .expect("connect for cleanup");
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&pool)
            .await
            .expect("drop the test schema");
            pool.close().await;
        }
    }
}

/// Deterministic entry bytes of varying length (0 to 299 bytes).
fn entry(i: u64) -> Vec<u8> {
    let len = (i * 7919 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// A writer's view: the frontier it appends with, and a memory tree to compare with.
struct Model {
    frontier: Frontier,
    tree: MemoryTree,
}

impl Model {
    fn new() -> Model {
        Model {
            frontier: Frontier::empty(),
            tree: MemoryTree::new(),
        }
    }

    /// Appends `count` entries through the store in one batch, with a checkpoint.
    async fn append(&mut self, store: &dyn LogStore, count: u64) -> Vec<Vec<u8>> {
        let first = self.frontier.size().0;
        let entries: Vec<Vec<u8>> = (first..first + count).map(entry).collect();
        let mut hashes = Vec::new();
        for e in &entries {
            hashes.extend(self.frontier.append(leaf_hash(e)));
            self.tree.append_entry(e);
        }
        let note = note_for(self.frontier.size(), &self.frontier.root());
        store
            .append_batch(LeafIndex(first), &entries, &hashes, Some(&note))
            .await
            .expect("append a batch");
        entries
    }
}

/// A stand-in note; the store keeps notes as opaque text.
fn note_for(size: TreeSize, root: &Hash) -> String {
    format!(
        "example.org/log\n{}\n{}\n\n— example.org/log sig\n",
        size.0,
        root.to_hex()
    )
}

fn all_hash_indexes(size: u64) -> Vec<StoredHashIndex> {
    (0..stored_hash_count(size)).map(StoredHashIndex).collect()
}

async fn empty_store(f: &Fixture) {
    let store = f.store().await;
    assert_eq!(store.size().await.unwrap(), TreeSize(0));
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    assert_eq!(store.checkpoint_at(TreeSize(0)).await.unwrap(), None);
    assert!(
        store
            .read_entries(LeafIndex(0), LeafIndex(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_hashes(&[]).await.unwrap().is_empty());
    assert!(matches!(
        store.read_entries(LeafIndex(0), LeafIndex(1)).await,
        Err(StoreError::OutOfRange {
            start: 0,
            end: 1,
            size: 0
        })
    ));
    assert!(matches!(
        store.read_hashes(&[StoredHashIndex(0)]).await,
        Err(StoreError::Corrupt {
            table: "hashes",
            index: 0,
            problem: Corruption::Missing
        })
    ));
    assert_eq!(store.get_meta("anything").await.unwrap(), None);
}

async fn appends_and_reads(f: &Fixture) {
    let store = f.store().await;
    let mut model = Model::new();
    let mut written = Vec::new();
    for count in [1, 2, 5, 1, 8, 100] {
        written.extend(model.append(&*store, count).await);
        let size = model.frontier.size();
        assert_eq!(store.size().await.unwrap(), size);
        let read = store
            .read_entries(LeafIndex(0), LeafIndex(size.0))
            .await
            .unwrap();
        assert_eq!(read, written);
    }
    let size = model.frontier.size().0;
    let middle = store
        .read_entries(LeafIndex(5), LeafIndex(20))
        .await
        .unwrap();
    assert_eq!(middle, written[5..20].to_vec());
    let indexes = all_hash_indexes(size);
    assert_eq!(
        store.read_hashes(&indexes).await.unwrap(),
        model.tree.stored_hashes()
    );
    // Order and repeats follow the request.
    let asked = [StoredHashIndex(9), StoredHashIndex(0), StoredHashIndex(9)];
    let expected: Vec<Hash> = asked
        .iter()
        .map(|i| model.tree.stored_hashes()[i.0 as usize])
        .collect();
    assert_eq!(store.read_hashes(&asked).await.unwrap(), expected);
    assert!(matches!(
        store
            .read_entries(LeafIndex(size - 1), LeafIndex(size + 1))
            .await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read_entries(LeafIndex(3), LeafIndex(2)).await,
        Err(StoreError::OutOfRange { .. })
    ));
}

async fn conflicting_first_index_writes_nothing(f: &Fixture) {
    let store = f.store().await;
    let mut model = Model::new();
    model.append(&*store, 3).await;
    let before_checkpoint = store.latest_checkpoint().await.unwrap();

    for first in [0, 2, 4, 1000] {
        let entries = vec![b"stale".to_vec(); 2];
        let hashes = vec![(StoredHashIndex(100), Hash([7; 32]))];
        let got = store
            .append_batch(LeafIndex(first), &entries, &hashes, Some("stale note"))
            .await;
        match got {
            Err(StoreError::Conflict {
                first_index,
                stored: 3,
            }) => assert_eq!(first_index, first),
            other => panic!("a batch at {first} over a store of 3 must conflict, got {other:?}"),
        }
    }
    assert_eq!(store.size().await.unwrap(), TreeSize(3));
    assert!(matches!(
        store.read_entries(LeafIndex(0), LeafIndex(4)).await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read_hashes(&[StoredHashIndex(100)]).await,
        Err(StoreError::Corrupt {
            problem: Corruption::Missing,
            ..
        })
    ));
    assert_eq!(store.latest_checkpoint().await.unwrap(), before_checkpoint);
    assert_eq!(store.checkpoint_at(TreeSize(5)).await.unwrap(), None);

    // The log goes on from where it really is.
    model.append(&*store, 2).await;
    assert_eq!(store.size().await.unwrap(), TreeSize(5));
}

async fn two_handles_race_and_one_wins(f: &Fixture) {
    let a = f.store().await;
    let b = f.store().await;
    let mut model = Model::new();
    model.append(&*a, 1).await;
    let entries = vec![b"x".to_vec()];
    let (ra, rb) = tokio::join!(
        a.append_batch(LeafIndex(1), &entries, &[], None),
        b.append_batch(LeafIndex(1), &entries, &[], None),
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one writer wins: {ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(matches!(
        loser,
        Err(StoreError::Conflict {
            first_index: 1,
            stored: 2
        })
    ));
    assert_eq!(a.size().await.unwrap(), TreeSize(2));
    assert_eq!(b.size().await.unwrap(), TreeSize(2));
}

async fn large_batches(f: &Fixture) {
    let store = f.store().await;
    let mut model = Model::new();
    let mut written = Vec::new();
    for count in [10_000, 1, 4097, 333] {
        written.extend(model.append(&*store, count).await);
    }
    let size = model.frontier.size().0;
    assert_eq!(size, 14_431);
    assert_eq!(store.size().await.unwrap(), TreeSize(size));
    assert_eq!(
        store
            .read_entries(LeafIndex(0), LeafIndex(size))
            .await
            .unwrap(),
        written
    );
    let indexes = all_hash_indexes(size);
    assert_eq!(
        store.read_hashes(&indexes).await.unwrap(),
        model.tree.stored_hashes()
    );
}

async fn checkpoints_round_trip(f: &Fixture) {
    let store = f.store().await;
    // A checkpoint with no entries: the empty tree's.
    store
        .append_batch(LeafIndex(0), &[], &[], Some("empty tree note"))
        .await
        .unwrap();
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some(StoredCheckpoint {
            size: TreeSize(0),
            note: "empty tree note".into()
        })
    );
    let mut model = Model::new();
    let mut notes = Vec::new();
    for count in [3, 1, 4] {
        model.append(&*store, count).await;
        let size = model.frontier.size();
        notes.push((size, note_for(size, &model.frontier.root())));
    }
    for (size, note) in &notes {
        assert_eq!(
            store.checkpoint_at(*size).await.unwrap().as_ref(),
            Some(note)
        );
    }
    let (last_size, last_note) = notes.last().cloned().unwrap();
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some(StoredCheckpoint {
            size: last_size,
            note: last_note
        })
    );
    // Storing again at the same size replaces the note (a re-signed checkpoint).
    let unicode = "example.org/log\n8\nroot\n\n— example.org/log ünïcode\n";
    store
        .append_batch(LeafIndex(8), &[], &[], Some(unicode))
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint_at(TreeSize(8)).await.unwrap().as_deref(),
        Some(unicode)
    );
    assert_eq!(store.size().await.unwrap(), TreeSize(8));
    // A batch without a checkpoint leaves the latest one where it was.
    store
        .append_batch(LeafIndex(8), &[entry(8)], &[], None)
        .await
        .unwrap();
    assert_eq!(
        store.latest_checkpoint().await.unwrap().map(|c| c.size),
        Some(TreeSize(8))
    );
}

async fn meta_round_trip(f: &Fixture) {
    let store = f.store().await;
    store.put_meta("round", b"7").await.unwrap();
    store.put_meta("beacon", &[0, 255, 1]).await.unwrap();
    assert_eq!(store.get_meta("round").await.unwrap(), Some(b"7".to_vec()));
    store.put_meta("round", b"8").await.unwrap();
    assert_eq!(store.get_meta("round").await.unwrap(), Some(b"8".to_vec()));
    assert_eq!(
        store.get_meta("beacon").await.unwrap(),
        Some(vec![0, 255, 1])
    );
    assert!(matches!(
        store.put_meta("", b"x").await,
        Err(StoreError::Invalid(_))
    ));
}

async fn meta_rides_with_its_batch(f: &Fixture) {
    let store = f.store().await;
    let meta = vec![("task/1".to_owned(), vec![1, 2, 3])];
    // A batch refused for its index writes none of its metadata.
    assert!(matches!(
        store
            .append_batch_with_meta(LeafIndex(5), &[b"e".to_vec()], &[], None, &meta)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.get_meta("task/1").await.unwrap(), None);
    // Metadata alone: the tree does not move.
    store
        .append_batch_with_meta(LeafIndex(0), &[], &[], None, &meta)
        .await
        .unwrap();
    assert_eq!(store.get_meta("task/1").await.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(store.size().await.unwrap(), TreeSize(0));
    // An empty key is refused, with nothing written.
    assert!(matches!(
        store
            .append_batch_with_meta(LeafIndex(0), &[], &[], None, &[(String::new(), vec![])])
            .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn reopen_keeps_everything(f: &Fixture) {
    let mut model = Model::new();
    let written = {
        let store = f.store().await;
        let mut written = model.append(&*store, 300).await;
        written.extend(model.append(&*store, 17).await);
        store.put_meta("k", b"v").await.unwrap();
        written
    };
    let store = f.store().await;
    let size = model.frontier.size();
    assert_eq!(store.size().await.unwrap(), size);
    assert_eq!(
        store
            .read_entries(LeafIndex(0), LeafIndex(size.0))
            .await
            .unwrap(),
        written
    );
    assert_eq!(
        store.read_hashes(&all_hash_indexes(size.0)).await.unwrap(),
        model.tree.stored_hashes()
    );
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some(StoredCheckpoint {
            size,
            note: note_for(size, &model.frontier.root())
        })
    );
    assert_eq!(store.get_meta("k").await.unwrap(), Some(b"v".to_vec()));
    // And it keeps appending where it left off.
    model.append(&*store, 1).await;
    assert_eq!(store.size().await.unwrap(), TreeSize(size.0 + 1));
}

async fn corrupt_rows_are_typed_errors(f: &Fixture) {
    let store = f.store().await;
    let mut model = Model::new();
    model.append(&*store, 6).await;

    f.raw("UPDATE {t}hashes SET hash = substr(hash, 1, 31) WHERE idx = 1")
        .await;
    match store
        .read_hashes(&[StoredHashIndex(0), StoredHashIndex(1)])
        .await
    {
        Err(StoreError::Corrupt {
            table: "hashes",
            index: 1,
            problem: Corruption::HashLength(31),
        }) => {}
        other => panic!("a 31-byte hash must be a typed error, got {other:?}"),
    }

    f.raw("DELETE FROM {t}hashes WHERE idx = 2").await;
    match store.read_hashes(&[StoredHashIndex(2)]).await {
        Err(StoreError::Corrupt {
            table: "hashes",
            index: 2,
            problem: Corruption::Missing,
        }) => {}
        other => panic!("a missing hash must be a typed error, got {other:?}"),
    }

    f.raw("DELETE FROM {t}entries WHERE idx = 3").await;
    match store.read_entries(LeafIndex(0), LeafIndex(6)).await {
        Err(StoreError::Corrupt {
            table: "entries",
            index: 3,
            problem: Corruption::Missing,
        }) => {}
        other => panic!("a gap in the entries must be a typed error, got {other:?}"),
    }

    if !f.is_postgres() {
        // PostgreSQL's TEXT cannot hold bytes that are not UTF-8; SQLite's can.
        f.raw("UPDATE {t}checkpoints SET note = X'FF00FF' WHERE size = 6")
            .await;
        match store.latest_checkpoint().await {
            Err(StoreError::Corrupt {
                table: "checkpoints",
                index: 6,
                problem: Corruption::NotUtf8,
            }) => {}
            other => panic!("a non-UTF-8 note must be a typed error, got {other:?}"),
        }
    }

    // The counter and the entries disagree: opening refuses.
    f.raw("DELETE FROM {t}entries WHERE idx = 5").await;
    match f.open().await {
        Err(StoreError::Corrupt {
            table: "log_size",
            problem:
                Corruption::SizeMismatch {
                    counter: 6,
                    entries: 5,
                },
            ..
        }) => {}
        other => panic!("a counter past the entries must refuse to open, got {other:?}"),
    }

    f.raw("UPDATE {t}log_size SET size = -4").await;
    match store.size().await {
        Err(StoreError::Corrupt {
            table: "log_size",
            problem: Corruption::Negative(-4),
            ..
        }) => {}
        other => panic!("a negative size must be a typed error, got {other:?}"),
    }

    f.raw("DELETE FROM {t}log_size").await;
    match store.size().await {
        Err(StoreError::Corrupt {
            table: "log_size",
            problem: Corruption::Missing,
            ..
        }) => {}
        other => panic!("a missing counter must be a typed error, got {other:?}"),
    }
}

async fn bad_urls_are_typed_errors(f: &Fixture) {
    if f.is_postgres() {
        let got = PostgresStore::open("postgres://nobody:hunter2@127.0.0.1:1/none", "s").await;
        match got {
            Err(e @ StoreError::Unavailable { .. }) => {
                let message = e.to_string();
                assert!(
                    !message.contains("hunter2"),
                    "the password leaked: {message}"
                );
                assert!(message.contains("nobody:***@127.0.0.1:1"), "{message}");
            }
            other => panic!("an unreachable server must be Unavailable, got {other:?}"),
        }
        assert!(matches!(
            PostgresStore::open("postgres://x@127.0.0.1:1/none", "Bad-Name").await,
            Err(StoreError::Invalid(_))
        ));
    } else {
        assert!(matches!(
            open_store("mysql://root@localhost/db").await,
            Err(StoreError::UnsupportedUrl { .. })
        ));
        assert!(matches!(
            open_store("sqlite:///proc/no/such/dir/ledger.sqlite3").await,
            Err(StoreError::Unavailable { .. })
        ));
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let fixture = super::Fixture::sqlite();
                    super::$case(&fixture).await;
                    fixture.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(fixture) = super::Fixture::postgres(stringify!($case)) else {
                        return;
                    };
                    super::$case(&fixture).await;
                    fixture.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    empty_store,
    appends_and_reads,
    conflicting_first_index_writes_nothing,
    two_handles_race_and_one_wins,
    large_batches,
    checkpoints_round_trip,
    meta_round_trip,
    meta_rides_with_its_batch,
    reopen_keeps_everything,
    corrupt_rows_are_typed_errors,
    bad_urls_are_typed_errors,
);
