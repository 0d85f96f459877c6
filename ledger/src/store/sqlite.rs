//! The embedded SQLite backend of [`LogStore`].
//!
//! One database file in WAL mode with `synchronous=FULL`: a commit returns only after
//! the write-ahead log is fsynced, so an acknowledged append survives a crash or a
//! power cut. Appends go through ONE writer connection (`BEGIN IMMEDIATE`, so the
//! write lock is taken up front and another process waits out the busy timeout rather
//! than failing mid-transaction); reads use a small pool of read-only connections,
//! which WAL lets run alongside the writer.
//!
//! Rows are inserted with multi-row `INSERT`s in power-of-two chunks (see
//! `pow2_chunks`) so a batch of thousands of entries is a few statements, all of them
//! from a fixed set that the connection keeps prepared. Hashes are read with one
//! statement per call, however many are asked for (a proof is one query).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, SqlitePool};

use super::rows::{
    check_batch, check_meta, contiguous_entries, from_sql_int, hash_from_row, order_hashes,
    to_sql_int,
};
use super::{BoxError, Corruption, LogStore, Meta, StoreError, StoredCheckpoint};
use crate::hash::{Hash, LeafIndex, TreeSize};
use crate::tree::StoredHashIndex;

/// The file name [`SqliteStore::open_in_dir`] uses.
pub const DB_FILE_NAME: &str = "ledger.sqlite3";

/// Largest number of rows one multi-row statement carries (two parameters each; SQLite
/// allows 32766 parameters per statement).
const MAX_CHUNK: usize = 256;

/// How long a writer waits for another connection's lock before failing (the default).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only connections kept for readers.
const READERS: u32 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_size (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_size (id, size) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";

/// A log stored in one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    readers: SqlitePool,
    /// Statements per chunk size, indexed by log2 of the chunk size.
    insert_entries: Vec<Arc<str>>,
    insert_hashes: Vec<Arc<str>>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directories) the database at `path`.
    ///
    /// Fails with [`StoreError::Corrupt`] if the stored size and the entries disagree.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_busy_timeout(path, BUSY_TIMEOUT).await
    }

    /// [`SqliteStore::open`] with another busy timeout: how long an append waits for a
    /// write lock that another connection (another process, an operator's `sqlite3`
    /// shell) holds before it fails with an error that
    /// [`StoreError::is_transient`] calls transient. A server that answers clients
    /// while it appends wants this short, so that a locked database gives a quick
    /// "try again" rather than a request that hangs.
    pub async fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |source: BoxError| StoreError::Unavailable {
            location: format!("sqlite://{}", path.display()),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| unavailable(Box::new(e)))?;
        }
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(busy_timeout);
        // The connections are local files: no need to ping one before each use (the
        // pool's default, a round trip per query).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(|e| unavailable(Box::new(e)))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&writer)
            .await
            .map_err(|e| unavailable(Box::new(e)))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| unavailable(Box::new(e)))?;

        let sizes = || (0..=MAX_CHUNK.trailing_zeros()).map(|log| 1usize << log);
        let store = SqliteStore {
            insert_entries: sizes()
                .map(|n| values_sql("INSERT INTO entries (idx, data) VALUES ", n))
                .collect(),
            insert_hashes: sizes()
                .map(|n| values_sql("INSERT INTO hashes (idx, hash) VALUES ", n))
                .collect(),
            path,
            writer,
            readers,
        };
        store.check_counter().await?;
        Ok(store)
    }

    /// Opens the database [`DB_FILE_NAME`] inside `dir`, creating both if missing.
    pub async fn open_in_dir(dir: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(dir.as_ref().join(DB_FILE_NAME)).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the connections, waiting for them to finish.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    fn backend(&self, e: sqlx::Error) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            source: Box::new(e),
        }
    }

    /// Checks that the size counter agrees with the entries table.
    async fn check_counter(&self) -> Result<(), StoreError> {
        let counter = self.size().await?.0;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(idx) FROM entries")
            .fetch_one(&self.readers)
            .await
            .map_err(|e| self.backend(e))?;
        let entries = match last {
            Some(last) => from_sql_int(last, "entries", 0)? + 1,
            None => 0,
        };
        if entries != counter {
            return Err(StoreError::Corrupt {
                table: "log_size",
                index: 0,
                problem: Corruption::SizeMismatch { counter, entries },
            });
        }
        Ok(())
    }
}

fn values_sql(prefix: &str, rows: usize) -> Arc<str> {
    let mut sql = String::from(prefix);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(?, ?)" } else { ", (?, ?)" });
    }
    sql.into()
}

/// Splits `n` rows into chunks whose sizes are powers of two no larger than `max`, so a
/// backend that builds one statement per chunk size prepares only a few statements.
fn pow2_chunks(mut n: usize, max: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let chunk = if n >= max {
            max
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= chunk;
        Some(chunk)
    })
}

/// The statement for a chunk of `chunk` rows. `pow2_chunks` yields powers of two up
/// to MAX_CHUNK and `statements` holds one per power, so this always finds one.
fn chunk_sql(statements: &[Arc<str>], chunk: usize) -> Result<AssertSqlSafe<Arc<str>>, StoreError> {
    statements
        .get(chunk.trailing_zeros() as usize)
        .map(|sql| AssertSqlSafe(Arc::clone(sql)))
        .ok_or_else(|| StoreError::Invalid(format!("no statement for a chunk of {chunk} rows")))
}

#[async_trait]
impl LogStore for SqliteStore {
    fn location(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn size(&self) -> Result<TreeSize, StoreError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM log_size WHERE id = 0")
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| self.backend(e))?;
        let size = size.ok_or(StoreError::Corrupt {
            table: "log_size",
            index: 0,
            problem: Corruption::Missing,
        })?;
        Ok(TreeSize(from_sql_int(size, "log_size", 0)?))
    }

    async fn append_batch_with_meta(
        &self,
        first_index: LeafIndex,
        entries: &[Vec<u8>],
        hashes: &[(StoredHashIndex, Hash)],
        checkpoint: Option<&str>,
        meta: &[Meta],
    ) -> Result<(), StoreError> {
        let (first, new_size) = check_batch(first_index, entries, hashes)?;
        check_meta(meta)?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.backend(e))?;
        let moved = sqlx::query("UPDATE log_size SET size = ? WHERE id = 0 AND size = ?")
            .bind(new_size)
            .bind(first)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.backend(e))?
            .rows_affected();
        if moved != 1 {
            let stored: Option<i64> = sqlx::query_scalar("SELECT size FROM log_size WHERE id = 0")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
            let stored = stored.ok_or(StoreError::Corrupt {
                table: "log_size",
                index: 0,
                problem: Corruption::Missing,
            })?;
            return Err(StoreError::Conflict {
                first_index: first_index.0,
                stored: from_sql_int(stored, "log_size", 0)?,
            });
        }

        let mut rest = entries;
        let mut next = first;
        for chunk in pow2_chunks(entries.len(), MAX_CHUNK) {
            let (these, after) = rest.split_at(chunk);
            let mut query = sqlx::query(chunk_sql(&self.insert_entries, chunk)?);
            for data in these {
                query = query.bind(next).bind(data.as_slice());
                next += 1;
            }
            query.execute(&mut *tx).await.map_err(|e| self.backend(e))?;
            rest = after;
        }

        let mut rest = hashes;
        for chunk in pow2_chunks(hashes.len(), MAX_CHUNK) {
            let (these, after) = rest.split_at(chunk);
            let mut query = sqlx::query(chunk_sql(&self.insert_hashes, chunk)?);
            for (index, hash) in these {
                query = query
                    .bind(to_sql_int(index.0, "stored hash index")?)
                    .bind(hash.0.as_slice());
            }
            query.execute(&mut *tx).await.map_err(|e| self.backend(e))?;
            rest = after;
        }

        if let Some(note) = checkpoint {
            sqlx::query("INSERT OR REPLACE INTO checkpoints (size, note) VALUES (?, ?)")
                .bind(new_size)
                .bind(note)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
        }
        for (key, value) in meta {
            sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
                .bind(key.as_str())
                .bind(value.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
        }
        if !entries.is_empty() {
            super::failpoint::hit(super::failpoint::STORE_BEFORE_COMMIT);
        }
        tx.commit().await.map_err(|e| self.backend(e))
    }

    async fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, StoreError> {
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        // One statement whatever the count: the indexes travel as one JSON array, and
        // CROSS JOIN makes SQLite walk the array and look each index up by rowid.
        let mut wanted = String::with_capacity(indexes.len() * 8 + 2);
        wanted.push('[');
        for (n, index) in indexes.iter().enumerate() {
            if n > 0 {
                wanted.push(',');
            }
            wanted.push_str(&to_sql_int(index.0, "stored hash index")?.to_string());
        }
        wanted.push(']');
        let rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT h.idx, h.hash FROM json_each(?) AS j \
             CROSS JOIN hashes AS h ON h.idx = j.value",
        )
        .bind(wanted)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| self.backend(e))?;
        let found = rows
            .into_iter()
            .map(|(index, blob)| {
                let index = from_sql_int(index, "hashes", 0)?;
                Ok((index, hash_from_row(&blob, index)?))
            })
            .collect::<Result<_, StoreError>>()?;
        order_hashes(indexes, found)
    }

    async fn read_entries(
        &self,
        start: LeafIndex,
        end: LeafIndex,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if start.0 > end.0 {
            return Err(StoreError::OutOfRange {
                start: start.0,
                end: end.0,
                size: self.size().await?.0,
            });
        }
        let rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
        )
        .bind(to_sql_int(start.0, "leaf index")?)
        .bind(to_sql_int(end.0, "leaf index")?)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| self.backend(e))?;
        contiguous_entries(start.0, end.0, rows, self.size()).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT size, CAST(note AS BLOB) FROM checkpoints ORDER BY size DESC LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await
        .map_err(|e| self.backend(e))?;
        row.map(|(size, note)| {
            let size = from_sql_int(size, "checkpoints", 0)?;
            Ok(StoredCheckpoint {
                size: TreeSize(size),
                note: note_text(note, size)?,
            })
        })
        .transpose()
    }

    async fn checkpoint_at(&self, size: TreeSize) -> Result<Option<String>, StoreError> {
        let note: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT CAST(note AS BLOB) FROM checkpoints WHERE size = ?")
                .bind(to_sql_int(size.0, "tree size")?)
                .fetch_optional(&self.readers)
                .await
                .map_err(|e| self.backend(e))?;
        note.map(|note| note_text(note, size.0)).transpose()
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| self.backend(e))
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_meta(&[(key.to_owned(), Vec::new())])?;
        sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&self.writer)
            .await
            .map_err(|e| self.backend(e))?;
        Ok(())
    }
}

/// Checks that a stored note is text. SQLite stores what it is given, so a row edited
/// by hand may hold a blob; it is read as bytes and checked here.
fn note_text(note: Vec<u8>, size: u64) -> Result<String, StoreError> {
    String::from_utf8(note).map_err(|_| StoreError::Corrupt {
        table: "checkpoints",
        index: size,
        problem: Corruption::NotUtf8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_chunks_cover_the_count_with_few_sizes() {
        for n in 0..2000usize {
            let chunks: Vec<usize> = pow2_chunks(n, 256).collect();
            assert_eq!(chunks.iter().sum::<usize>(), n, "n = {n}");
            assert!(
                chunks.iter().all(|c| c.is_power_of_two() && *c <= 256),
                "n = {n}: {chunks:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_writer_commits_durably_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_dir(dir.path()).await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "synchronous=FULL: each commit is fsynced");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(store.path(), dir.path().join(DB_FILE_NAME));
    }

    #[tokio::test]
    async fn a_write_lock_held_elsewhere_fails_the_append_quickly_and_transiently() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let store = SqliteStore::open_with_busy_timeout(&path, Duration::from_millis(100))
            .await
            .unwrap();
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let e = store
            .append_batch(LeafIndex(0), &[], &[], Some("note"))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        // A refused batch is not transient: trying again gives the same answer.
        let e = store
            .append_batch(LeafIndex(3), &[], &[], Some("note"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict { .. }) && !e.is_transient(),
            "{e}"
        );
    }
}
