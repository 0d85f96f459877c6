//! A [`LogStore`] wrapper that fails appends on demand, for tests of what the layers
//! above do when storage fails (sunlight tests its log the same way).
//!
//! Two faults model the two ways a commit can go wrong: [`Fault::BeforeCommit`] fails
//! with nothing written (the disk is full, the connection dropped before `COMMIT`);
//! [`Fault::AfterCommit`] writes the batch and then reports an error anyway (the
//! connection dropped after the server committed but before it said so). A correct
//! writer acknowledges nothing in either case and carries on from whatever the store
//! really holds.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{LogStore, Meta, StoreError, StoredCheckpoint};
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

/// Which batch an armed [`FaultyStore::fail_append_where`] fault fails: it sees the
/// batch's entries.
pub type BatchFilter = Box<dyn Fn(&[Vec<u8>]) -> bool + Send + Sync>;

/// Wraps a store and fails its next append when told to.
pub struct FaultyStore {
    inner: Arc<dyn LogStore>,
    next: AtomicU8,
    /// A fault waiting for the first batch its filter picks.
    targeted: Mutex<Option<(Fault, BatchFilter)>>,
    fired: AtomicU64,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("next", &self.next)
            .field("fired", &self.fired)
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// Wraps `inner`; it behaves like `inner` until a fault is armed.
    pub fn new(inner: Arc<dyn LogStore>) -> FaultyStore {
        FaultyStore {
            inner,
            next: AtomicU8::new(NONE),
            targeted: Mutex::new(None),
            fired: AtomicU64::new(0),
        }
    }

    /// Makes the first [`LogStore::append_batch`] whose entries `filter` picks fail as
    /// `fault` says (once); other batches go through. For faults aimed at one write
    /// of a busy writer (say, the batch holding a round's close).
    pub fn fail_append_where(&self, fault: Fault, filter: BatchFilter) {
        if let Ok(mut t) = self.targeted.lock() {
            *t = Some((fault, filter));
        }
    }

    /// How many injected faults have fired so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// The fault to inject into a batch of `entries`, if one is armed for it.
    fn take_fault(&self, entries: &[Vec<u8>]) -> Option<Fault> {
        let fault = match self.next.swap(NONE, Ordering::SeqCst) {
            BEFORE => Some(Fault::BeforeCommit),
            AFTER => Some(Fault::AfterCommit),
            _ => {
                let mut targeted = self.targeted.lock().ok()?;
                match targeted.as_ref() {
                    Some((_, filter)) if filter(entries) => targeted.take().map(|(f, _)| f),
                    _ => None,
                }
            }
        };
        if fault.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        fault
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

    async fn append_batch_with_meta(
        &self,
        first_index: LeafIndex,
        entries: &[Vec<u8>],
        hashes: &[(StoredHashIndex, Hash)],
        checkpoint: Option<&str>,
        meta: &[Meta],
    ) -> Result<(), StoreError> {
        match self.take_fault(entries) {
            Some(Fault::BeforeCommit) => Err(self.injected("before commit")),
            Some(Fault::AfterCommit) => {
                self.inner
                    .append_batch_with_meta(first_index, entries, hashes, checkpoint, meta)
                    .await?;
                Err(self.injected("after commit"))
            }
            None => {
                self.inner
                    .append_batch_with_meta(first_index, entries, hashes, checkpoint, meta)
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
