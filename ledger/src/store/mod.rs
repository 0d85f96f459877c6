//! Durable storage for the log: one async trait, [`LogStore`], and its backends.
//!
//! The log keeps four things: the entries (leaf `i` at row `i`), the tree's stored
//! hashes (addressed by [`StoredHashIndex`], the numbering of Go's `sumdb/tlog` that
//! `tree` uses), the signed checkpoints (C2SP `tlog-checkpoint` notes, keyed by tree
//! size), and a small key-value table for the coordinator's own state. A single
//! counter row holds the tree size; [`LogStore::append_batch`] moves it with a
//! compare-and-swap inside the same transaction that writes the entries, their hashes
//! and the checkpoint, so the four are always in step and a second (or stale) writer
//! is refused instead of interleaving.
//!
//! Backends: SQLite ([`sqlite`], the embedded default) and PostgreSQL ([`postgres`]).
//! Both pass the one conformance suite in `tests/store_conformance.rs`. Pick one at run
//! time with [`open_store`].
//!
//! Storage is the edge of the program: every row read back is checked (hash blobs are
//! 32 bytes, indexes are contiguous, counters are not negative) and a bad row is a
//! [`StoreError::Corrupt`] naming the table and row, never a panic.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::hash::{Hash, LeafIndex, TreeSize};
use crate::tree::StoredHashIndex;

pub mod failpoint;
// A store that fails on demand: test support, compiled only for the ledger's own unit
// tests and for builds that turn on `test-util` (tests and dev-dependencies).
#[cfg(any(test, feature = "test-util"))]
pub mod fault;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Storage of one log: entries, stored tree hashes, signed checkpoints, metadata.
///
/// Implementations must make [`append_batch`](Self::append_batch) atomic and durable
/// before it returns `Ok`: the log acknowledges entries, and publishes the checkpoint
/// that covers them, only after that.
#[async_trait]
pub trait LogStore: Send + Sync + fmt::Debug {
    /// Where the data lives, for logs and error messages (any password removed).
    fn location(&self) -> String;

    /// The number of entries stored: the size of the stored tree.
    async fn size(&self) -> Result<TreeSize, StoreError>;

    /// Appends `entries` at leaf indexes `first_index..`, the tree hashes they add,
    /// and, if given, the signed checkpoint note for the new size, in ONE transaction.
    ///
    /// Refuses with [`StoreError::Conflict`], writing nothing, unless the store holds
    /// exactly `first_index` entries. An empty `entries` with a checkpoint stores the
    /// checkpoint for the current size (replacing one stored for that size).
    async fn append_batch(
        &self,
        first_index: LeafIndex,
        entries: &[Vec<u8>],
        hashes: &[(StoredHashIndex, Hash)],
        checkpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        self.append_batch_with_meta(first_index, entries, hashes, checkpoint, &[])
            .await
    }

    /// [`append_batch`](Self::append_batch), also writing `meta` (inserted or replaced,
    /// as [`put_meta`](Self::put_meta) would) in the SAME transaction: metadata that
    /// explains an entry is durable exactly when the entry is, and costs the writers
    /// no commit of its own. Empty `entries` and no checkpoint write only `meta`.
    async fn append_batch_with_meta(
        &self,
        first_index: LeafIndex,
        entries: &[Vec<u8>],
        hashes: &[(StoredHashIndex, Hash)],
        checkpoint: Option<&str>,
        meta: &[Meta],
    ) -> Result<(), StoreError>;

    /// Reads the stored hashes at `indexes`, in the order asked (repeats allowed).
    ///
    /// A missing index is [`StoreError::Corrupt`]: callers ask only for hashes of the
    /// tree the store holds, which must all be there.
    async fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, StoreError>;

    /// Reads entries `start..end` (end exclusive).
    ///
    /// [`StoreError::OutOfRange`] if `end` is past the stored size or `start > end`.
    async fn read_entries(
        &self,
        start: LeafIndex,
        end: LeafIndex,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// The signed checkpoint stored for the largest size, if any.
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// The signed checkpoint stored for exactly `size`, if any.
    async fn checkpoint_at(&self, size: TreeSize) -> Result<Option<String>, StoreError>;

    /// Reads a value of the metadata table.
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes (inserts or replaces) a value of the metadata table, durably.
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// A metadata row: its key (not empty) and value.
pub type Meta = (String, Vec<u8>);

/// A signed checkpoint note as stored, with the tree size it was stored for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size the checkpoint was stored with (the size after its batch).
    pub size: TreeSize,
    /// The signed note, exactly as signed.
    pub note: String,
}

/// Opens the store a URL names: `sqlite://PATH` (or `sqlite:PATH`) for a database
/// file, created with its parent directories if missing (`?busy_timeout_ms=N` after
/// the path sets how long an append waits for another connection's write lock,
/// default [`sqlite::BUSY_TIMEOUT`]); `postgres://...` (or
/// `postgresql://...`) for a PostgreSQL database, tables in the schema
/// [`postgres::DEFAULT_SCHEMA`].
pub async fn open_store(url: &str) -> Result<Arc<dyn LogStore>, StoreError> {
    #[cfg(feature = "sqlite")]
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let (path, busy) = match path.split_once("?busy_timeout_ms=") {
            Some((path, ms)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    StoreError::Invalid(format!(
                        "busy_timeout_ms={ms} in the SQLite URL is not a number of milliseconds"
                    ))
                })?;
                (path, std::time::Duration::from_millis(ms))
            }
            None => (path, sqlite::BUSY_TIMEOUT),
        };
        let store = sqlite::SqliteStore::open_with_busy_timeout(path, busy).await?;
        return Ok(Arc::new(store));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PostgresStore::open(url, postgres::DEFAULT_SCHEMA).await?;
        return Ok(Arc::new(store));
    }
    Err(StoreError::UnsupportedUrl {
        url: redact_url(url),
    })
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no backend this build supports.
    #[error(
        "unsupported store URL {url:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE \
         (backends in this build: {backends})",
        backends = compiled_backends()
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The backend could not be reached or opened.
    #[error(
        "cannot open the log store at {location}: {source}; check that it exists and is reachable"
    )]
    Unavailable {
        /// The store's location, password removed.
        location: String,
        /// What the backend said.
        #[source]
        source: BoxError,
    },
    /// A batch did not start at the stored size: another writer appended, or this
    /// writer's view is stale. Nothing was written.
    #[error(
        "append refused: the batch starts at leaf {first_index} but the store holds {stored} \
         entries; another writer is using this log, or this one is stale: reopen the log"
    )]
    Conflict {
        /// Where the refused batch would have started.
        first_index: u64,
        /// The size the store holds.
        stored: u64,
    },
    /// A range of entries past the stored tree was asked for.
    #[error("entries {start}..{end} requested but the log holds {size}")]
    OutOfRange {
        /// First index asked for.
        start: u64,
        /// End (exclusive) asked for.
        end: u64,
        /// The stored size.
        size: u64,
    },
    /// An argument the store cannot represent (a size past `i64::MAX`, a hash count that
    /// does not match, an empty metadata key).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// A row read back is not what the log writes: the store was damaged or edited.
    #[error(
        "the log store is corrupt: table {table}, row {index}: {problem}; restore it from a \
         backup or a mirror of the log's tiles"
    )]
    Corrupt {
        /// The table holding the bad (or missing) row.
        table: &'static str,
        /// The row's key (leaf index, stored-hash index or tree size).
        index: u64,
        /// What is wrong with it.
        problem: Corruption,
    },
    /// The backend failed while running a query.
    #[error("the log store ({location}) failed: {source}")]
    Backend {
        /// The store's location, password removed.
        location: String,
        /// What the backend said.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether the failure is one that may pass by itself, so that the same request can
    /// be tried again later: the database is locked by another connection (SQLite
    /// `SQLITE_BUSY`/`SQLITE_LOCKED`), unreachable, restarting or shutting a
    /// connection down (PostgreSQL connection errors, `57P0x`, too many connections),
    /// a serialization conflict, a pool that timed out, or an I/O error on the way.
    /// Refused batches ([`StoreError::Conflict`]), corrupt rows and bad requests are
    /// not transient: trying again gives the same answer.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            StoreError::Backend { source, .. } => source
                .downcast_ref::<sqlx::Error>()
                .is_some_and(sqlx_transient),
            _ => false,
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // SQLite primary result codes (extended codes keep them in the low byte):
            // 5 SQLITE_BUSY, 6 SQLITE_LOCKED.
            let sqlite = code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            // PostgreSQL SQLSTATEs: class 08 connection exception, 57P01..57P03
            // (terminated by an administrator, crash shutdown, cannot connect now),
            // 53300 too many connections, 40001 serialization, 40P01 deadlock.
            let postgres = code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                );
            sqlite || postgres
        }),
        _ => false,
    }
}

/// A boxed error from a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What is wrong with a corrupt row.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The row should exist but does not.
    #[error("the row is missing")]
    Missing,
    /// A hash blob of the wrong length.
    #[error("the hash is {0} bytes long, not 32")]
    HashLength(usize),
    /// A negative number where a size or index belongs.
    #[error("the value {0} is negative")]
    Negative(i64),
    /// A checkpoint note that is not UTF-8 text.
    #[error("the checkpoint note is not UTF-8")]
    NotUtf8,
    /// The counter row is missing or does not agree with the rows stored.
    #[error("the stored size is {counter} but the entries table ends at {entries}")]
    SizeMismatch {
        /// The size the counter row holds.
        counter: u64,
        /// One past the largest stored entry index.
        entries: u64,
    },
}

fn compiled_backends() -> &'static str {
    match (cfg!(feature = "sqlite"), cfg!(feature = "postgres")) {
        (true, true) => "sqlite, postgres",
        (true, false) => "sqlite",
        (false, true) => "postgres",
        (false, false) => "none",
    }
}

/// A URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://lupus:s3cret@db.example:5432/lupus?sslmode=require"),
            "postgres://lupus:***@db.example:5432/lupus?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://lupus@127.0.0.1:55432/lupus_test"),
            "postgres://lupus@127.0.0.1:55432/lupus_test"
        );
        assert_eq!(
            redact_url("sqlite://data/ledger.db"),
            "sqlite://data/ledger.db"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
