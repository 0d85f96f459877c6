//! The PostgreSQL backend of [`LogStore`], for deployments with
//! several coordinators over one database.
//!
//! The same five tables as the SQLite backend, in a schema of their own (so several
//! logs, or test runs, share one database without colliding). Every connection runs
//! with `synchronous_commit = on`, so a commit returns only after its WAL record is
//! flushed. Writers serialise on the size counter's row: `UPDATE ... WHERE size = $n`
//! takes the row lock, a second writer waits for it and then finds the size moved,
//! which is [`StoreError::Conflict`]. Batches are inserted with `UNNEST` over arrays:
//! one statement per table whatever the batch size.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use super::rows::{
    check_batch, check_meta, contiguous_entries, from_sql_int, hash_from_row, order_hashes,
    to_sql_int,
};
use super::{BoxError, Corruption, LogStore, Meta, StoreError, StoredCheckpoint, redact_url};
use crate::hash::{Hash, LeafIndex, TreeSize};
use crate::tree::StoredHashIndex;

/// The schema [`super::open_store`] puts the tables in.
pub const DEFAULT_SCHEMA: &str = "lupus_ledger";

/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 8;

/// How long to wait for a connection before reporting the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A log stored in a PostgreSQL schema.
#[derive(Debug)]
pub struct PostgresStore {
    location: String,
    pool: PgPool,
    sql: Statements,
}

/// The statements, with the schema name filled in once.
#[derive(Debug)]
struct Statements {
    size: Arc<str>,
    max_entry: Arc<str>,
    move_size: Arc<str>,
    insert_entries: Arc<str>,
    insert_hashes: Arc<str>,
    upsert_checkpoint: Arc<str>,
    select_hashes: Arc<str>,
    select_entries: Arc<str>,
    latest_checkpoint: Arc<str>,
    checkpoint_at: Arc<str>,
    get_meta: Arc<str>,
    put_meta: Arc<str>,
}

impl Statements {
    fn new(s: &str) -> Statements {
        Statements {
            size: format!("SELECT size FROM {s}.log_size WHERE id = 0").into(),
            max_entry: format!("SELECT MAX(idx) FROM {s}.entries").into(),
            move_size: format!("UPDATE {s}.log_size SET size = $1 WHERE id = 0 AND size = $2")
                .into(),
            insert_entries: format!(
                "INSERT INTO {s}.entries (idx, data) SELECT * FROM UNNEST($1::int8[], $2::bytea[])"
            )
            .into(),
            insert_hashes: format!(
                "INSERT INTO {s}.hashes (idx, hash) SELECT * FROM UNNEST($1::int8[], $2::bytea[])"
            )
            .into(),
            upsert_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (size, note) VALUES ($1, $2) \
                 ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note"
            )
            .into(),
            select_hashes: format!("SELECT idx, hash FROM {s}.hashes WHERE idx = ANY($1)").into(),
            select_entries: format!(
                "SELECT idx, data FROM {s}.entries WHERE idx >= $1 AND idx < $2 ORDER BY idx"
            )
            .into(),
            latest_checkpoint: format!(
                "SELECT size, convert_to(note, 'UTF8') FROM {s}.checkpoints \
                 ORDER BY size DESC LIMIT 1"
            )
            .into(),
            checkpoint_at: format!(
                "SELECT convert_to(note, 'UTF8') FROM {s}.checkpoints WHERE size = $1"
            )
            .into(),
            get_meta: format!("SELECT value FROM {s}.meta WHERE key = $1").into(),
            put_meta: format!(
                "INSERT INTO {s}.meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            )
            .into(),
        }
    }
}

fn schema_sql(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.log_size (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             size BIGINT NOT NULL
         );
         INSERT INTO {s}.log_size (id, size) VALUES (0, 0) ON CONFLICT (id) DO NOTHING;
         CREATE TABLE IF NOT EXISTS {s}.entries (idx BIGINT PRIMARY KEY, data BYTEA NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.hashes (idx BIGINT PRIMARY KEY, hash BYTEA NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);"
    )
}

/// Schema names go into SQL text, so only plain identifiers are accepted.
fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

impl PostgresStore {
    /// Connects to the database at `url` and uses (creating if missing) the tables in
    /// `schema`, a lowercase SQL identifier.
    ///
    /// Fails with [`StoreError::Corrupt`] if the stored size and the entries disagree.
    pub async fn open(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        let location = format!("{} (schema {schema})", redact_url(url));
        if !valid_schema(schema) {
            return Err(StoreError::Invalid(format!(
                "schema name {schema:?} is not a lowercase SQL identifier of at most 63 characters"
            )));
        }
        let unavailable = |source: BoxError| StoreError::Unavailable {
            location: location.clone(),
            source,
        };
        let options: PgConnectOptions = url.parse().map_err(|e| unavailable(Box::new(e)))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.options([("synchronous_commit", "on")]))
            .await
            .map_err(|e| unavailable(Box::new(e)))?;
        // Concurrent first opens would race on CREATE; a transaction-scoped advisory
        // lock keyed by the schema name makes them take turns.
        let mut tx = pool.begin().await.map_err(|e| unavailable(Box::new(e)))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(schema)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable(Box::new(e)))?;
        sqlx::raw_sql(AssertSqlSafe(schema_sql(schema)))
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable(Box::new(e)))?;
        tx.commit().await.map_err(|e| unavailable(Box::new(e)))?;

        let store = PostgresStore {
            location,
            pool,
            sql: Statements::new(schema),
        };
        store.check_counter().await?;
        Ok(store)
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn backend(&self, e: sqlx::Error) -> StoreError {
        StoreError::Backend {
            location: self.location.clone(),
            source: Box::new(e),
        }
    }

    /// Checks that the size counter agrees with the entries table.
    async fn check_counter(&self) -> Result<(), StoreError> {
        let counter = self.size().await?.0;
        let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.max_entry.clone()))
            .fetch_one(&self.pool)
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

#[async_trait]
impl LogStore for PostgresStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn size(&self) -> Result<TreeSize, StoreError> {
        let size: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.size.clone()))
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(|e| self.backend(e))?;
        let moved = sqlx::query(AssertSqlSafe(self.sql.move_size.clone()))
            .bind(new_size)
            .bind(first)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.backend(e))?
            .rows_affected();
        if moved != 1 {
            let stored: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.size.clone()))
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
        if !entries.is_empty() {
            let indexes: Vec<i64> = (first..new_size).collect();
            sqlx::query(AssertSqlSafe(self.sql.insert_entries.clone()))
                .bind(indexes)
                .bind(entries)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
        }
        if !hashes.is_empty() {
            let indexes: Vec<i64> = hashes
                .iter()
                .map(|(index, _)| to_sql_int(index.0, "stored hash index"))
                .collect::<Result<_, _>>()?;
            let blobs: Vec<&[u8]> = hashes.iter().map(|(_, hash)| hash.0.as_slice()).collect();
            sqlx::query(AssertSqlSafe(self.sql.insert_hashes.clone()))
                .bind(indexes)
                .bind(blobs)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
        }
        if let Some(note) = checkpoint {
            sqlx::query(AssertSqlSafe(self.sql.upsert_checkpoint.clone()))
                .bind(new_size)
                .bind(note)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.backend(e))?;
        }
        for (key, value) in meta {
            sqlx::query(AssertSqlSafe(self.sql.put_meta.clone()))
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
        let mut wanted: Vec<i64> = indexes
            .iter()
            .map(|i| to_sql_int(i.0, "stored hash index"))
            .collect::<Result<_, _>>()?;
        wanted.sort_unstable();
        wanted.dedup();
        let rows =
            sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(self.sql.select_hashes.clone()))
                .bind(wanted)
                .fetch_all(&self.pool)
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
        let rows =
            sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(self.sql.select_entries.clone()))
                .bind(to_sql_int(start.0, "leaf index")?)
                .bind(to_sql_int(end.0, "leaf index")?)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.backend(e))?;
        contiguous_entries(start.0, end.0, rows, self.size()).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row =
            sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(self.sql.latest_checkpoint.clone()))
                .fetch_optional(&self.pool)
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
            sqlx::query_scalar(AssertSqlSafe(self.sql.checkpoint_at.clone()))
                .bind(to_sql_int(size.0, "tree size")?)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.backend(e))?;
        note.map(|note| note_text(note, size.0)).transpose()
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar(AssertSqlSafe(self.sql.get_meta.clone()))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.backend(e))
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_meta(&[(key.to_owned(), Vec::new())])?;
        sqlx::query(AssertSqlSafe(self.sql.put_meta.clone()))
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| self.backend(e))?;
        Ok(())
    }
}

/// Checks that a stored note is text (PostgreSQL's TEXT already is; the check keeps the
/// two backends' answers the same).
fn note_text(note: Vec<u8>, size: u64) -> Result<String, StoreError> {
    String::from_utf8(note).map_err(|_| StoreError::Corrupt {
        table: "checkpoints",
        index: size,
        problem: Corruption::NotUtf8,
    })
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        assert!(valid_schema("lupus_ledger"));
        assert!(valid_schema("_t1"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("Lupus"));
        assert!(!valid_schema("a; DROP TABLE entries"));
        assert!(!valid_schema(&"a".repeat(64)));
    }
}
