//! A [`LogStore`] wrapper that fails appends on demand, for tests of what the layers
//! above do when storage fails (sunlight tests its log the same way).
//!
//! Two faults model the two ways a commit can go wrong: [`Fault::BeforeCommit`] fails
//! with nothing written (the disk is full, the connection dropped before `COMMIT`);
//! [`Fault::AfterCommit`] writes the batch and then reports an error anyway (the
//! connection dropped after the server committed but before it said so). A correct
//! writer acknowledges nothing in either case and carries on from whatever the store
//! really holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;

use super::{LogStore, StoreError, StoredCheckpoint};
use crate::hash::{Hash, LeafIndex, TreeSize};
use crate::tree::StoredHashIndex;

/// How the next append fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail without writing anything.
    BeforeCommit,
    /// Write the batch, then report a failure.
    AfterCommit,
}

const NONE: u8 = 0;
const BEFORE: u8 = 1;
const AFTER: u8 = 2;

/// Wraps a store and fails its next append when told to.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn LogStore>,
    next: AtomicU8,
}

impl FaultyStore {
    /// Wraps `inner`; it behaves like `inner` until a fault is armed.
    pub fn new(inner: Arc<dyn LogStore>) -> FaultyStore {
        FaultyStore {
            inner,
            next: AtomicU8::new(NONE),
        }
    }

    /// Makes the next [`LogStore::append_batch`] fail as `fault` says.
    pub fn fail_next_append(&self, fault: Fault) {
        let code = match fault {
            Fault::BeforeCommit => BEFORE,
            Fault::AfterCommit => AFTER,
        };
        self.next.store(code, Ordering::SeqCst);
    }

    fn injected(&self, fault: &str) -> StoreError {
        StoreError::Backend {
            location: self.inner.location(),
            source: format!("injected fault ({fault})").into(),
        }
    }
}

#[async_trait]
impl LogStore for FaultyStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn size(&self) -> Result<TreeSize, StoreError> {
        self.inner.size().await
    }

    async fn append_batch(
        &self,
        first_index: LeafIndex,
        entries: &[Vec<u8>],
        hashes: &[(StoredHashIndex, Hash)],
        checkpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        match self.next.swap(NONE, Ordering::SeqCst) {
            BEFORE => Err(self.injected("before commit")),
            AFTER => {
                self.inner
                    .append_batch(first_index, entries, hashes, checkpoint)
                    .await?;
                Err(self.injected("after commit"))
            }
            _ => {
                self.inner
                    .append_batch(first_index, entries, hashes, checkpoint)
                    .await
            }
        }
    }

    async fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, StoreError> {
        self.inner.read_hashes(indexes).await
    }

    async fn read_entries(
        &self,
        start: LeafIndex,
        end: LeafIndex,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.read_entries(start, end).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.inner.latest_checkpoint().await
    }

    async fn checkpoint_at(&self, size: TreeSize) -> Result<Option<String>, StoreError> {
        self.inner.checkpoint_at(size).await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_meta(key).await
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_meta(key, value).await
    }
}
