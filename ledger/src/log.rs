//! The log: a group-committing writer over a [`LogStore`], and the reads that the
//! C2SP `tlog-tiles` endpoints and the proof APIs need.
//!
//! DESIGN.md, "Ledger": an entry is acknowledged only after it is durable, a
//! checkpoint is never signed over entries that are not durable, and every checkpoint
//! is consistent with every earlier one. How this module keeps those promises:
//!
//! - Every [`Log::append`] queues its entry to ONE writer task. The writer takes
//!   everything queued (up to [`MAX_BATCH_ENTRIES`] entries or [`MAX_BATCH_BYTES`]
//!   bytes), extends a copy of the tree's [`Frontier`], signs the checkpoint of the new
//!   size, and hands entries, new stored hashes and the checkpoint to
//!   [`LogStore::append_batch`], which commits them in one durable transaction. Only
//!   after that commit does it publish the checkpoint and answer the batch's callers.
//!   The signature exists before the write, but nobody sees it until the entries it
//!   covers are on disk (a crash in between loses both together).
//! - [`Log::append_group`] queues several entries as ONE item: the writer never splits
//!   it across batches, so the group is durable as a whole or not at all (a caller
//!   that applies the group to its own state after the answer never sees half of it).
//! - [`Log::sequence`] splits an append in two, as Tessera's `Add` and sunlight's pool
//!   do: it hands out the entries' indexes at once (in call order) and queues them;
//!   [`Sequenced::durable`] then waits for the commit. A caller sequences under its
//!   own state lock and waits after releasing it, so concurrent requests share one
//!   commit instead of queueing behind each other's fsyncs. [`Log::barrier`] waits
//!   for everything sequenced before it.
//! - If the write fails, every caller of the batch gets the error, the frontier copy
//!   is thrown away, and the writer reloads its state from the store before the next
//!   batch (the failed commit may or may not have landed; the store decides). An
//!   entry sequenced at an index the reloaded tree does not reach is refused
//!   ([`LogError::Lost`]), never written elsewhere, and [`Log::sequence`] refuses
//!   ([`LogError::Broken`]) until [`Log::sync`]: the caller rebuilds its state first.
//! - Consistency: the writer only ever extends the frontier it loaded from the store,
//!   and the store refuses a batch that does not start at its size, so each new tree
//!   extends the last one. [`Log::open`] checks the stored tree against the latest
//!   stored checkpoint before it signs anything.
//!
//! The origin of the log is the name of its signing key, as C2SP `tlog-checkpoint`
//! requires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint};
use crate::hash::{Hash, LeafIndex, TreeSize, leaf_hash};
use crate::note::{NoteSigner, NoteVerifier};
use crate::proof::{
    ConsistencyProof, InclusionProof, ProofError, consistency_proof_indexes,
    inclusion_proof_indexes, prove_consistency, prove_inclusion, verify_consistency,
};
use crate::store::{LogStore, Meta, StoreError};
use crate::tiles::{
    EntryBundle, MAX_ENTRY_LEN, Tile, TileError, encode_entry_bundle, tile_data, tile_data_indexes,
    tile_in_tree,
};
use crate::tree::{Frontier, PrefetchedHashes, StoredHashIndex, TreeError};

/// Most entries one batch (one transaction, one checkpoint) carries.
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// A batch stops growing once its entries add up to this many bytes.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// Appends that may wait in the queue before [`Log::append`] itself waits.
const QUEUE_DEPTH: usize = 1 << 16;

/// The latest published state of the log: a signed checkpoint whose entries are
/// durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHead {
    /// The tree size the checkpoint signs.
    pub size: TreeSize,
    /// The tree's root hash at that size.
    pub root: Hash,
    /// The signed checkpoint note (C2SP `tlog-checkpoint`).
    pub note: String,
}

/// Errors of opening, appending to and reading the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The store failed or holds bad rows.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The batch holding this entry was not committed, so the entry is not
    /// acknowledged. (If the failure hid a commit that did land, the entry is in the
    /// log anyway; a caller that must not duplicate it can look for it.)
    #[error("the entry was not stored: {0}; it is not acknowledged, submit it again")]
    NotStored(Arc<LogError>),
    /// A write failed since the last [`Log::sync`], so the indexes handed out after it
    /// may not be the ones the store will give: [`Log::sequence`] refuses until the
    /// caller, having rebuilt whatever it derived from the sequenced entries, calls
    /// [`Log::sync`].
    #[error("a write to the log failed; nothing is sequenced until the log is synced again")]
    Broken,
    /// The entry was sequenced at `index` after a batch before it failed: the store's
    /// tree does not reach `index`, so it was not written (it is not acknowledged).
    #[error("entry sequenced at index {index} was not stored: an earlier write failed")]
    Lost {
        /// The index it was sequenced at.
        index: u64,
    },
    /// The writer task is gone (its runtime shut down).
    #[error("the log writer has stopped (its runtime shut down); reopen the log")]
    WriterStopped,
    /// An entry longer than [`MAX_ENTRY_LEN`] (C2SP `tlog-tiles` entry bundles prefix
    /// each entry with a 16-bit length, so a longer one could not be served).
    #[error("entry of {len} bytes is too large: at most {MAX_ENTRY_LEN} bytes fit an entry bundle")]
    EntryTooLarge {
        /// The entry's length.
        len: usize,
    },
    /// A group of more than [`MAX_BATCH_ENTRIES`] entries (one batch must hold it).
    #[error(
        "a group of {len} entries cannot be committed at once: at most {MAX_BATCH_ENTRIES} fit one batch"
    )]
    GroupTooLarge {
        /// The group's length.
        len: usize,
    },
    /// A read past the published tree.
    #[error("tree size {asked} asked for, but the log's latest checkpoint is at size {size}")]
    BeyondSize {
        /// What was asked for.
        asked: u64,
        /// The published size.
        size: u64,
    },
    /// Stored hashes could not be assembled into a tree.
    #[error("cannot rebuild the tree from the store: {0}")]
    Tree(#[from] TreeError),
    /// A proof could not be produced.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A tile or entry bundle that the published tree does not have, or one that
    /// could not be assembled.
    #[error(transparent)]
    Tile(#[from] TileError),
    /// A checkpoint could not be signed (for example a key name that is not a valid
    /// origin).
    #[error("cannot sign the log's checkpoint: {0}")]
    Sign(#[source] CheckpointError),
    /// The latest stored checkpoint does not open with this log's key.
    #[error(
        "the stored checkpoint at size {size} does not open with this log's key ({source}); \
         is this the right key for this store?"
    )]
    StoredCheckpoint {
        /// The stored checkpoint's size.
        size: u64,
        /// Why it does not open.
        #[source]
        source: CheckpointError,
    },
    /// The stored tree disagrees with a stored, signed checkpoint.
    #[error("the stored tree disagrees with its signed checkpoint at size {size}: {problem}")]
    Inconsistent {
        /// The checkpoint's size.
        size: u64,
        /// What disagrees.
        problem: String,
    },
}

impl LogError {
    /// Whether trying the same append or read again later may succeed: the store's
    /// failure was transient ([`StoreError::is_transient`]). A caller that serves
    /// clients answers "unavailable, retry" for these and "internal error" otherwise.
    pub fn is_transient(&self) -> bool {
        match self {
            LogError::Store(e) => e.is_transient(),
            LogError::NotStored(e) => e.is_transient(),
            LogError::Broken | LogError::Lost { .. } => true,
            _ => false,
        }
    }
}

/// A handle on one log. Clones are cheap and share the one writer.
#[derive(Clone, Debug)]
pub struct Log {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn LogStore>,
    verifier: NoteVerifier,
    head: watch::Sender<Arc<LogHead>>,
    /// The index the next sequenced entry gets. Held while an append is queued, so
    /// the queue's order is the order of the indexes.
    next: tokio::sync::Mutex<u64>,
    /// A write failed since the last [`Log::sync`] (set by the writer): indexes handed
    /// out now might not be the store's, so [`Log::sequence`] refuses.
    broken: AtomicBool,
}

/// One queued append: a single entry, or a group that must share one batch. The
/// answer is the index of its first entry; the others follow it consecutively. An
/// empty one is a barrier: it is answered with the tree size once everything queued
/// before it is answered.
#[derive(Debug)]
struct Pending {
    entries: Vec<Vec<u8>>,
    /// Metadata rows written in the same transaction as the batch that holds this
    /// group (see [`Log::sequence_with_meta`]).
    meta: Vec<Meta>,
    /// The index [`Log::sequence`] gave the first entry; the writer writes the entries
    /// there or nowhere.
    at: u64,
    reply: oneshot::Sender<Result<LeafIndex, LogError>>,
}

/// Entries given their indexes by [`Log::sequence`], not yet known to be durable.
#[derive(Debug)]
#[must_use = "an entry is acknowledged only once `durable` says so"]
pub struct Sequenced {
    /// The index of the first entry; the others follow it.
    pub first: LeafIndex,
    answer: oneshot::Receiver<Result<LeafIndex, LogError>>,
}

impl Sequenced {
    /// Waits until the entries are durable and covered by the published checkpoint.
    pub async fn durable(self) -> Result<LeafIndex, LogError> {
        self.answer.await.map_err(|_| LogError::WriterStopped)?
    }
}

/// A place in the writer's queue (see [`Log::barrier`]).
#[derive(Debug)]
#[must_use = "a barrier does nothing until it is awaited"]
pub struct Barrier {
    answer: oneshot::Receiver<Result<LeafIndex, LogError>>,
}

impl Barrier {
    /// Waits until every append queued before the barrier is answered; returns the
    /// size of the tree the store then holds (durable and published).
    pub async fn durable(self) -> Result<TreeSize, LogError> {
        let size = self.answer.await.map_err(|_| LogError::WriterStopped)??;
        Ok(TreeSize(size.0))
    }
}

impl Pending {
    fn bytes(&self) -> usize {
        self.entries.iter().map(Vec::len).sum()
    }
}

impl Log {
    /// Opens the log kept in `store`, signed by `signer` (whose name is the origin).
    ///
    /// Rebuilds the frontier from O(log n) stored hashes and checks that its root is
    /// the one the latest stored checkpoint signs. If no checkpoint covers the stored
    /// size (an empty store, or entries written without one), it signs one over the
    /// stored, durable entries, after checking that the tree extends the last stored
    /// checkpoint. Spawns the writer task on the current tokio runtime.
    pub async fn open(store: Arc<dyn LogStore>, signer: NoteSigner) -> Result<Log, LogError> {
        let verifier = signer.verifier();
        let (frontier, head) = recover(&*store, &signer, &verifier).await?;
        let next = head.size.0;
        let (head_tx, _) = watch::channel(Arc::new(head));
        let shared = Arc::new(Shared {
            store,
            verifier,
            head: head_tx,
            next: tokio::sync::Mutex::new(next),
            broken: AtomicBool::new(false),
        });
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            shared: Arc::clone(&shared),
            signer,
            frontier,
            stale: false,
        };
        tokio::spawn(writer.run(rx));
        Ok(Log { shared, queue })
    }

    /// Appends `entry` and returns its leaf index once it is durable and covered by the
    /// published checkpoint.
    pub async fn append(&self, entry: Vec<u8>) -> Result<LeafIndex, LogError> {
        self.append_group(vec![entry]).await
    }

    /// Appends `entries` atomically: they are committed in ONE batch (one
    /// transaction), at consecutive indexes, and are all durable or none is. Returns
    /// the index of the first. An empty group writes nothing: it is [`Log::sync`].
    /// At most [`MAX_BATCH_ENTRIES`] entries.
    ///
    /// On [`LogError::NotStored`] the group may still have landed (a commit whose
    /// answer was lost); [`Log::sync`] then tells which. After a failed write this
    /// first syncs: a caller that keeps no state derived from its entries has nothing
    /// to rebuild (one that does uses [`Log::sequence`]).
    pub async fn append_group(&self, entries: Vec<Vec<u8>>) -> Result<LeafIndex, LogError> {
        if entries.is_empty() {
            let size = self.sync().await?;
            return Ok(LeafIndex(size.0));
        }
        // Another caller's write may fail between the sync and the sequencing: try
        // again after syncing, a few times, then give up as not stored.
        for _ in 0..3 {
            if self.shared.broken.load(Ordering::SeqCst) {
                self.sync().await?;
            }
            match self.sequence(entries.clone()).await {
                Err(LogError::Broken) => continue,
                Err(e) => return Err(e),
                Ok(sequenced) => return sequenced.durable().await.map_err(not_stored),
            }
        }
        Err(LogError::NotStored(Arc::new(LogError::Broken)))
    }

    /// Gives `entries` their indexes now and queues them as one group (one batch, all
    /// durable or none), without waiting for the write: the caller applies them to its
    /// own state under its own lock, releases it, then awaits
    /// [`Sequenced::durable`] before it acknowledges anything. Requests that sequence
    /// one after another share one commit (Tessera's `Add` returns an index future the
    /// same way).
    ///
    /// Indexes are handed out in the order of the calls. If a write fails, every entry
    /// sequenced after it is refused ([`LogError::Lost`]), and `sequence` refuses
    /// ([`LogError::Broken`]) until [`Log::sync`]: the caller rebuilds what it derived
    /// from the sequenced entries from the store first.
    pub async fn sequence(&self, entries: Vec<Vec<u8>>) -> Result<Sequenced, LogError> {
        self.sequence_with_meta(entries, Vec::new()).await
    }

    /// [`Log::sequence`], with metadata rows committed in the same transaction as the
    /// entries: durable exactly when they are, in the same group commit. Metadata alone
    /// (no entries) is written by the next batch, and [`Sequenced::durable`] answers
    /// the tree size then. A coordinator's per-task facts that are not entries ride
    /// along this way instead of paying a commit of their own.
    pub async fn sequence_with_meta(
        &self,
        entries: Vec<Vec<u8>>,
        meta: Vec<Meta>,
    ) -> Result<Sequenced, LogError> {
        if meta.iter().any(|(key, _)| key.is_empty()) {
            return Err(LogError::Store(StoreError::Invalid(
                "metadata keys are not empty".to_owned(),
            )));
        }
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(LogError::GroupTooLarge { len: entries.len() });
        }
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_LEN) {
            return Err(LogError::EntryTooLarge { len: e.len() });
        }
        let mut next = self.shared.next.lock().await;
        if self.shared.broken.load(Ordering::SeqCst) {
            return Err(LogError::Broken);
        }
        let at = *next;
        let len = entries.len() as u64;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                entries,
                meta,
                at,
                reply,
            })
            .await
            .map_err(|_| LogError::WriterStopped)?;
        *next = at + len;
        Ok(Sequenced {
            first: LeafIndex(at),
            answer,
        })
    }

    /// A barrier in the writer's queue: [`Barrier::durable`] answers once everything
    /// sequenced before this call is answered, with the size the store then holds. A
    /// reader that saw state derived from sequenced entries waits on one before it
    /// shows that state to anyone.
    pub async fn barrier(&self) -> Result<Barrier, LogError> {
        let next = self.shared.next.lock().await;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                entries: Vec::new(),
                meta: Vec::new(),
                at: *next,
                reply,
            })
            .await
            .map_err(|_| LogError::WriterStopped)?;
        Ok(Barrier { answer })
    }

    /// Waits until every append queued before it is answered and returns the size of
    /// the tree the store really holds, publishing its head. After a failed write the
    /// writer reloads from the store first, so a caller that got
    /// [`LogError::NotStored`] learns here whether its entries landed anyway; and the
    /// next [`Log::sequence`] numbers from that size again.
    pub async fn sync(&self) -> Result<TreeSize, LogError> {
        // Held throughout: nothing is sequenced between the answer and the reset.
        let mut next = self.shared.next.lock().await;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                entries: Vec::new(),
                meta: Vec::new(),
                at: *next,
                reply,
            })
            .await
            .map_err(|_| LogError::WriterStopped)?;
        let size = answer.await.map_err(|_| LogError::WriterStopped)??;
        *next = size.0;
        self.shared.broken.store(false, Ordering::SeqCst);
        Ok(TreeSize(size.0))
    }

    /// Appends `entries` in order: they get consecutive indexes unless another caller
    /// appends at the same time (then they stay in order, interleaved). Returns one
    /// answer per entry, as [`Log::append`] would; the entries may span several
    /// batches, so some can be stored while a later batch fails.
    pub async fn append_all(&self, entries: Vec<Vec<u8>>) -> Vec<Result<LeafIndex, LogError>> {
        if self.shared.broken.load(Ordering::SeqCst)
            && let Err(e) = self.sync().await
        {
            let e = Arc::new(e);
            return entries
                .iter()
                .map(|_| Err(LogError::NotStored(Arc::clone(&e))))
                .collect();
        }
        let mut waiting = Vec::with_capacity(entries.len());
        for entry in entries {
            waiting.push(self.sequence(vec![entry]).await);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for waiter in waiting {
            answers.push(match waiter {
                Ok(s) => s.durable().await.map_err(not_stored),
                Err(e) => Err(not_stored(e)),
            });
        }
        answers
    }

    /// The latest published head: a signed checkpoint over durable entries.
    pub fn head(&self) -> Arc<LogHead> {
        Arc::clone(&self.shared.head.borrow())
    }

    /// The latest signed checkpoint note.
    pub fn checkpoint(&self) -> String {
        self.shared.head.borrow().note.clone()
    }

    /// A receiver that sees each new head as it is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<LogHead>> {
        self.shared.head.subscribe()
    }

    /// The key that verifies the log's checkpoints.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.shared.verifier
    }

    /// The store the log is kept in, for reads (checkpoint history, metadata). An
    /// append written around the writer makes its next batch conflict; it then reloads
    /// and goes on, but the callers of that batch get an error.
    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.shared.store
    }

    fn check_published(&self, size: TreeSize) -> Result<(), LogError> {
        let published = self.shared.head.borrow().size;
        if size > published {
            return Err(LogError::BeyondSize {
                asked: size.0,
                size: published.0,
            });
        }
        Ok(())
    }

    /// The RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves, which
    /// must not be past the published head.
    pub async fn inclusion_proof(
        &self,
        index: LeafIndex,
        size: TreeSize,
    ) -> Result<InclusionProof, LogError> {
        self.check_published(size)?;
        let indexes = inclusion_proof_indexes(size, index)?;
        let reader = self.fetch(indexes).await?;
        Ok(prove_inclusion(size, index, &reader)?)
    }

    /// The RFC 9162 consistency proof from the tree of `old` leaves to the tree of `new`.
    pub async fn consistency_proof(
        &self,
        old: TreeSize,
        new: TreeSize,
    ) -> Result<ConsistencyProof, LogError> {
        self.check_published(new)?;
        let indexes = consistency_proof_indexes(old, new)?;
        let reader = self.fetch(indexes).await?;
        Ok(prove_consistency(old, new, &reader)?)
    }

    /// Entries `start..end` of the published tree.
    pub async fn entries(
        &self,
        start: LeafIndex,
        end: LeafIndex,
    ) -> Result<Vec<Vec<u8>>, LogError> {
        self.check_published(TreeSize(end.0))?;
        Ok(self.shared.store.read_entries(start, end).await?)
    }

    /// The data of hash tile `tile` (C2SP `tlog-tiles`): its hashes concatenated. The
    /// published tree must have the tile with at least `tile.width` hashes; a partial
    /// width the tree has since grown past is still served (it is a prefix of the
    /// wider tile).
    pub async fn tile(&self, tile: &Tile) -> Result<Vec<u8>, LogError> {
        self.check_tile(tile)?;
        let reader = self.fetch(tile_data_indexes(tile)).await?;
        Ok(tile_data(tile, &reader)?)
    }

    /// The entry bundle `bundle` (C2SP `tlog-tiles`): its entries, each with a
    /// big-endian 16-bit length prefix. The same width rule as [`Log::tile`].
    pub async fn entry_bundle(&self, bundle: &EntryBundle) -> Result<Vec<u8>, LogError> {
        self.check_tile(&bundle.tile())?;
        let first = bundle.first_entry();
        let end = first + u64::from(bundle.width);
        let entries = self
            .shared
            .store
            .read_entries(LeafIndex(first), LeafIndex(end))
            .await?;
        let slices: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        Ok(encode_entry_bundle(&slices)?)
    }

    fn check_tile(&self, tile: &Tile) -> Result<(), LogError> {
        let size = self.shared.head.borrow().size;
        match tile_in_tree(size, tile.level, tile.index) {
            Some(there) if there.width >= tile.width && tile.width > 0 => Ok(()),
            _ => Err(TileError::NotInTree {
                tile: tile.path(),
                size: size.0,
            }
            .into()),
        }
    }

    async fn fetch(&self, indexes: Vec<StoredHashIndex>) -> Result<PrefetchedHashes, LogError> {
        let hashes = self.shared.store.read_hashes(&indexes).await?;
        Ok(PrefetchedHashes::new(indexes, hashes)?)
    }
}

/// For the plain appends, whose callers keep no state derived from the sequencing: an
/// entry lost to, or refused after, another batch's failure was simply not stored.
fn not_stored(e: LogError) -> LogError {
    match e {
        LogError::Broken | LogError::Lost { .. } => LogError::NotStored(Arc::new(e)),
        e => e,
    }
}

/// Loads the frontier and the head from the store, checking them against each other,
/// and signs and stores a checkpoint if the stored size has none.
async fn recover(
    store: &dyn LogStore,
    signer: &NoteSigner,
    verifier: &NoteVerifier,
) -> Result<(Frontier, LogHead), LogError> {
    let size = store.size().await?;
    let indexes = Frontier::indexes_to_load(size);
    let hashes = store.read_hashes(&indexes).await?;
    let frontier = Frontier::load(size, &PrefetchedHashes::new(indexes, hashes)?)?;
    let root = frontier.root();

    let latest = store.latest_checkpoint().await?;
    if let Some(stored) = &latest {
        let opened = open_checkpoint(&stored.note, verifier).map_err(|source| {
            LogError::StoredCheckpoint {
                size: stored.size.0,
                source,
            }
        })?;
        let signed = &opened.checkpoint;
        let inconsistent = |problem: String| LogError::Inconsistent {
            size: stored.size.0,
            problem,
        };
        if signed.size != stored.size {
            return Err(inconsistent(format!(
                "the note signs size {} but is stored for size {}",
                signed.size, stored.size
            )));
        }
        if signed.size > size {
            return Err(inconsistent(format!(
                "the checkpoint is past the {size} stored entries: entries were lost"
            )));
        }
        if signed.size == size {
            if signed.root != root {
                return Err(inconsistent(format!(
                    "it signs root {} but the stored hashes give {root}",
                    signed.root
                )));
            }
            let head = LogHead {
                size,
                root,
                note: stored.note.clone(),
            };
            return Ok((frontier, head));
        }
        // Entries past the last checkpoint (stored without one): they must extend it.
        let proof_indexes = consistency_proof_indexes(signed.size, size)?;
        let proof_hashes = store.read_hashes(&proof_indexes).await?;
        let reader = PrefetchedHashes::new(proof_indexes, proof_hashes)?;
        let proof = prove_consistency(signed.size, size, &reader)?;
        verify_consistency(&proof, &signed.root, &root).map_err(|e| {
            inconsistent(format!(
                "the stored tree of size {size} does not extend it: {e}"
            ))
        })?;
    }
    let note = sign_head(signer, size, root)?;
    store
        .append_batch(LeafIndex(size.0), &[], &[], Some(&note))
        .await?;
    Ok((frontier, LogHead { size, root, note }))
}

fn sign_head(signer: &NoteSigner, size: TreeSize, root: Hash) -> Result<String, LogError> {
    let checkpoint = Checkpoint {
        origin: signer.name().to_owned(),
        size,
        root,
        extensions: Vec::new(),
    };
    sign_checkpoint(&checkpoint, signer).map_err(LogError::Sign)
}

/// The one task that writes to the store.
struct Writer {
    shared: Arc<Shared>,
    signer: NoteSigner,
    /// The frontier of the tree the store holds (unless `stale`).
    frontier: Frontier,
    /// A write failed: the store may or may not hold the last batch, so reload.
    stale: bool,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Pending>) {
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut meta: Vec<Meta> = Vec::new();
        let mut replies: Vec<(usize, oneshot::Sender<Result<LeafIndex, LogError>>)> = Vec::new();
        // A group taken from the queue that did not fit the batch it was read for:
        // it opens the next one.
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match queue.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            // The callers answered last round are waking up to append again; let
            // them run first so their entries share this commit instead of waiting
            // out one more (an fsync each) in a batch of their own.
            tokio::task::yield_now().await;
            // After a failed write the store decides where the tree ends.
            if let Err(e) = self.reload().await {
                // Everything queued now fails with it, as one batch would: each caller
                // waits out the store's timeout once, not once per caller before it.
                let e = Arc::new(e);
                let _ = first.reply.send(Err(LogError::NotStored(Arc::clone(&e))));
                for _ in 1..MAX_BATCH_ENTRIES {
                    let Ok(p) = queue.try_recv() else { break };
                    let _ = p.reply.send(Err(LogError::NotStored(Arc::clone(&e))));
                }
                continue;
            }
            let size = self.frontier.size().0;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(p) = next.take() {
                let index = size + entries.len() as u64;
                if p.at != index && !p.entries.is_empty() {
                    // Sequenced on top of a batch that failed: its index is not the
                    // store's. Writing it elsewhere would give its caller's state an
                    // entry at the wrong index.
                    let _ = p.reply.send(Err(LogError::Lost { index: p.at }));
                } else if entries.len() + p.entries.len() > MAX_BATCH_ENTRIES {
                    carried = Some(p);
                    break;
                } else {
                    bytes += p.bytes();
                    replies.push((p.entries.len(), p.reply));
                    entries.extend(p.entries);
                    meta.extend(p.meta);
                }
                if entries.len() >= MAX_BATCH_ENTRIES || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                next = queue.try_recv().ok();
            }
            if replies.is_empty() {
                continue;
            }
            // Only barriers queued: nothing to write.
            let answer = if entries.is_empty() && meta.is_empty() {
                Ok(LeafIndex(size))
            } else {
                self.commit(&entries, &meta).await
            };
            entries.clear();
            meta.clear();
            match answer {
                Ok(first_index) => {
                    let mut index = first_index.0;
                    for (len, reply) in replies.drain(..) {
                        // A caller that gave up waiting has dropped its receiver; its
                        // entries are stored all the same.
                        let _ = reply.send(Ok(LeafIndex(index)));
                        index += len as u64;
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for (_, reply) in replies.drain(..) {
                        let _ = reply.send(Err(LogError::NotStored(Arc::clone(&error))));
                    }
                }
            }
        }
    }

    /// Reloads the frontier and the head from the store if a failed write left them
    /// stale; returns the size the store holds.
    async fn reload(&mut self) -> Result<LeafIndex, LogError> {
        if self.stale {
            let (frontier, head) =
                recover(&*self.shared.store, &self.signer, &self.shared.verifier).await?;
            self.frontier = frontier;
            self.shared.head.send_replace(Arc::new(head));
            self.stale = false;
        }
        Ok(LeafIndex(self.frontier.size().0))
    }

    /// Writes one batch; returns the index of its first entry once it is durable and
    /// its checkpoint is published.
    async fn commit(&mut self, entries: &[Vec<u8>], meta: &[Meta]) -> Result<LeafIndex, LogError> {
        self.reload().await?;
        let first = LeafIndex(self.frontier.size().0);
        if entries.is_empty() {
            // Metadata alone: the tree and its checkpoint stay as they are.
            if let Err(e) = self
                .shared
                .store
                .append_batch_with_meta(first, &[], &[], None, meta)
                .await
            {
                self.stale = true;
                self.shared.broken.store(true, Ordering::SeqCst);
                return Err(e.into());
            }
            return Ok(first);
        }
        let mut next = self.frontier.clone();
        let mut hashes = Vec::with_capacity(entries.len() * 2);
        for entry in entries {
            hashes.extend(next.append(leaf_hash(entry)));
        }
        let (size, root) = (next.size(), next.root());
        let note = sign_head(&self.signer, size, root)?;
        if let Err(e) = self
            .shared
            .store
            .append_batch_with_meta(first, entries, &hashes, Some(&note), meta)
            .await
        {
            self.stale = true;
            // Set before any caller hears of the failure, so nothing more is
            // sequenced on top of this batch until someone syncs.
            self.shared.broken.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        crate::store::failpoint::hit(crate::store::failpoint::LOG_AFTER_COMMIT);
        self.frontier = next;
        self.shared
            .head
            .send_replace(Arc::new(LogHead { size, root, note }));
        Ok(first)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::proof::verify_inclusion;
    use crate::store::fault::{Fault, FaultyStore};
    use crate::store::sqlite::SqliteStore;

    fn signer() -> NoteSigner {
        NoteSigner::from_secret("lupus.example/test-log", [5; 32]).expect("a valid key name")
    }

    async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn LogStore> {
        Arc::new(
            SqliteStore::open_in_dir(dir.path())
                .await
                .expect("open sqlite"),
        )
    }

    fn entry(i: u64) -> Vec<u8> {
        format!("entry {i}").into_bytes()
    }

    /// How many of the sizes `1..=n` have a checkpoint: one per batch written.
    async fn checkpoints_up_to(log: &Log, n: u64) -> u64 {
        let mut batches = 0;
        for size in 1..=n {
            if log
                .store()
                .checkpoint_at(TreeSize(size))
                .await
                .unwrap()
                .is_some()
            {
                batches += 1;
            }
        }
        batches
    }

    #[tokio::test]
    async fn appends_are_numbered_proved_and_covered_by_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        let empty = log.head();
        assert_eq!(empty.size, TreeSize(0));
        for i in 0..10 {
            assert_eq!(log.append(entry(i)).await.unwrap(), LeafIndex(i));
            assert_eq!(log.head().size, TreeSize(i + 1), "the head covers the ack");
        }
        let head = log.head();
        let opened = open_checkpoint(&head.note, log.verifier()).unwrap();
        assert_eq!(opened.checkpoint.size, TreeSize(10));
        assert_eq!(opened.checkpoint.root, head.root);
        for i in 0..10 {
            let proof = log.inclusion_proof(LeafIndex(i), head.size).await.unwrap();
            verify_inclusion(&proof, &leaf_hash(&entry(i)), &head.root).unwrap();
        }
        let proof = log.consistency_proof(TreeSize(3), head.size).await.unwrap();
        assert_eq!(proof.new_size, TreeSize(10));
        assert_eq!(
            log.entries(LeafIndex(2), LeafIndex(4)).await.unwrap(),
            vec![entry(2), entry(3)]
        );
        assert!(matches!(
            log.inclusion_proof(LeafIndex(0), TreeSize(11)).await,
            Err(LogError::BeyondSize {
                asked: 11,
                size: 10
            })
        ));
        assert!(matches!(
            log.entries(LeafIndex(0), LeafIndex(11)).await,
            Err(LogError::BeyondSize { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_group_committed_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for k in 0..20u64 {
                        let bytes = entry(t * 1000 + k);
                        got.push((log.append(bytes.clone()).await.unwrap(), bytes));
                    }
                    got
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        assert_eq!(log.head().size, TreeSize(64 * 20));
        let stored = log.entries(LeafIndex(0), LeafIndex(64 * 20)).await.unwrap();
        acked.sort();
        for (expected, (index, bytes)) in acked.iter().enumerate() {
            assert_eq!(index.0, expected as u64, "indexes are dense and unique");
            assert_eq!(&stored[expected], bytes);
        }
        // Fewer checkpoints than entries: batches held more than one entry.
        let batches = checkpoints_up_to(&log, 64 * 20).await;
        assert!(
            batches < 64 * 20,
            "no group commit happened: {batches} batches"
        );
    }

    #[tokio::test]
    async fn metadata_rides_in_its_entries_transaction_or_alone() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(sqlite(&dir).await));
        let log = Log::open(faulty.clone(), signer()).await.unwrap();
        let meta = |k: &str, v: u8| vec![(k.to_owned(), vec![v])];

        // With entries: durable together, one checkpoint for the batch.
        let s = log
            .sequence_with_meta(vec![entry(0)], meta("a", 1))
            .await
            .unwrap();
        assert_eq!(s.durable().await.unwrap(), LeafIndex(0));
        assert_eq!(faulty.get_meta("a").await.unwrap(), Some(vec![1]));

        // A failed batch writes neither the entries nor the metadata.
        faulty.fail_next_append(Fault::BeforeCommit);
        let s = log
            .sequence_with_meta(vec![entry(1)], meta("b", 2))
            .await
            .unwrap();
        assert!(s.durable().await.is_err());
        assert_eq!(faulty.get_meta("b").await.unwrap(), None);
        log.sync().await.unwrap();

        // Alone: written by the next batch; the tree and its head do not move.
        let head = log.head();
        let s = log
            .sequence_with_meta(Vec::new(), meta("c", 3))
            .await
            .unwrap();
        assert_eq!(s.durable().await.unwrap(), LeafIndex(1));
        assert_eq!(faulty.get_meta("c").await.unwrap(), Some(vec![3]));
        assert_eq!(log.head(), head);
        assert_eq!(log.append(entry(2)).await.unwrap(), LeafIndex(1));

        // An empty key is refused before anything is queued.
        assert!(
            log.sequence_with_meta(Vec::new(), meta("", 4))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_failed_write_acknowledges_nothing_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(sqlite(&dir).await));
        let log = Log::open(faulty.clone(), signer()).await.unwrap();
        assert_eq!(log.append(entry(0)).await.unwrap(), LeafIndex(0));
        let before = log.head();

        faulty.fail_next_append(Fault::BeforeCommit);
        assert!(matches!(
            log.append(entry(1)).await,
            Err(LogError::NotStored(_))
        ));
        assert_eq!(
            log.head(),
            before,
            "no checkpoint is published for a failed batch"
        );
        assert_eq!(log.append(entry(2)).await.unwrap(), LeafIndex(1));
        assert_eq!(
            log.entries(LeafIndex(0), LeafIndex(2)).await.unwrap(),
            vec![entry(0), entry(2)]
        );

        // The commit lands but the store reports failure: not acknowledged, and the
        // writer picks the landed batch up from the store before the next one.
        faulty.fail_next_append(Fault::AfterCommit);
        let mid = log.head();
        assert!(matches!(
            log.append(entry(3)).await,
            Err(LogError::NotStored(_))
        ));
        assert_eq!(log.head(), mid);
        assert_eq!(log.append(entry(4)).await.unwrap(), LeafIndex(3));
        let head = log.head();
        assert_eq!(head.size, TreeSize(4));
        assert_eq!(
            log.entries(LeafIndex(0), LeafIndex(4)).await.unwrap(),
            vec![entry(0), entry(2), entry(3), entry(4)]
        );
        let proof = log.consistency_proof(mid.size, head.size).await.unwrap();
        verify_consistency(&proof, &mid.root, &head.root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequenced_entries_get_their_indexes_at_once_and_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        let mut waiting = Vec::new();
        for i in 0..200u64 {
            let s = log.sequence(vec![entry(i)]).await.unwrap();
            assert_eq!(s.first, LeafIndex(i), "indexes follow the calls");
            waiting.push(s);
        }
        let group = log.sequence(vec![entry(200), entry(201)]).await.unwrap();
        assert_eq!(group.first, LeafIndex(200));
        let barrier = log.barrier().await.unwrap();
        assert_eq!(barrier.durable().await.unwrap(), TreeSize(202));
        for (i, s) in waiting.into_iter().enumerate() {
            assert_eq!(s.durable().await.unwrap(), LeafIndex(i as u64));
        }
        assert_eq!(group.durable().await.unwrap(), LeafIndex(200));
        assert_eq!(log.head().size, TreeSize(202));
        let stored = log.entries(LeafIndex(0), LeafIndex(202)).await.unwrap();
        for (i, e) in stored.iter().enumerate() {
            assert_eq!(e, &entry(i as u64));
        }
        let batches = checkpoints_up_to(&log, 202).await;
        assert!(
            batches < 202,
            "entries sequenced before anyone waited share batches ({batches} checkpoints)"
        );
    }

    /// The attack on sequencing: entries numbered on top of a batch that then fails
    /// must not be written at other indexes (their caller applied them at the
    /// numbered ones), and nothing may be numbered on top of the failure until the
    /// caller has synced.
    #[tokio::test]
    async fn nothing_is_written_at_another_index_than_it_was_sequenced_at() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(sqlite(&dir).await));
        let log = Log::open(faulty.clone(), signer()).await.unwrap();
        assert_eq!(log.append(entry(0)).await.unwrap(), LeafIndex(0));

        faulty.fail_next_append(Fault::BeforeCommit);
        // Sequenced before the writer sees any of them: the first batch (all three,
        // or the first alone) fails; whatever was numbered after it is lost.
        let a = log.sequence(vec![entry(1)]).await.unwrap();
        let b = log.sequence(vec![entry(2)]).await.unwrap();
        let c = log.sequence(vec![entry(3)]).await.unwrap();
        assert_eq!(
            (a.first, b.first, c.first),
            (LeafIndex(1), LeafIndex(2), LeafIndex(3))
        );
        assert!(a.durable().await.is_err());
        assert!(b.durable().await.is_err());
        assert!(c.durable().await.is_err());
        assert!(matches!(
            log.sequence(vec![entry(4)]).await,
            Err(LogError::Broken)
        ));
        assert_eq!(log.sync().await.unwrap(), TreeSize(1));
        let d = log.sequence(vec![entry(5)]).await.unwrap();
        assert_eq!(
            d.first,
            LeafIndex(1),
            "numbering starts again at the store's size"
        );
        assert_eq!(d.durable().await.unwrap(), LeafIndex(1));
        assert_eq!(
            log.entries(LeafIndex(0), LeafIndex(2)).await.unwrap(),
            vec![entry(0), entry(5)]
        );

        // A commit that lands although the store reports failure: what was numbered
        // after it still fits, and is written where it was numbered.
        faulty.fail_next_append(Fault::AfterCommit);
        let e = log.sequence(vec![entry(6)]).await.unwrap();
        assert!(e.durable().await.is_err());
        assert_eq!(log.sync().await.unwrap(), TreeSize(3), "the batch landed");
        let f = log.sequence(vec![entry(7)]).await.unwrap();
        assert_eq!(f.durable().await.unwrap(), LeafIndex(3));
        assert_eq!(
            log.entries(LeafIndex(0), LeafIndex(4)).await.unwrap(),
            vec![entry(0), entry(5), entry(6), entry(7)]
        );
    }

    #[tokio::test]
    async fn a_barrier_after_a_failed_batch_reports_the_shorter_tree() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(sqlite(&dir).await));
        let log = Log::open(faulty.clone(), signer()).await.unwrap();
        assert_eq!(log.append(entry(0)).await.unwrap(), LeafIndex(0));
        faulty.fail_next_append(Fault::BeforeCommit);
        let a = log.sequence(vec![entry(1)]).await.unwrap();
        let barrier = log.barrier().await.unwrap();
        assert!(a.durable().await.is_err());
        // In the failed batch it fails too; in a later one it reports size 1: either
        // way a reader that saw entry 1 learns that it is not durable.
        match barrier.durable().await {
            Ok(size) => assert_eq!(size, TreeSize(1)),
            Err(LogError::NotStored(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[tokio::test]
    async fn reopening_continues_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
            for i in 0..7 {
                log.append(entry(i)).await.unwrap();
            }
            log.head()
        };
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        assert_eq!(
            log.head(),
            first,
            "the stored checkpoint is reused, not re-signed"
        );
        assert_eq!(log.append(entry(7)).await.unwrap(), LeafIndex(7));
        let head = log.head();
        let proof = log.consistency_proof(first.size, head.size).await.unwrap();
        verify_consistency(&proof, &first.root, &head.root).unwrap();
    }

    #[tokio::test]
    async fn the_wrong_key_or_a_tampered_hash_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
            for i in 0..5 {
                log.append(entry(i)).await.unwrap();
            }
        }
        let other = NoteSigner::from_secret("lupus.example/test-log", [6; 32]).unwrap();
        assert!(matches!(
            Log::open(sqlite(&dir).await, other).await,
            Err(LogError::StoredCheckpoint { size: 5, .. })
        ));

        // Size 5 = 4 + 1: the frontier is the level-2 hash of leaves 0..4 and leaf 4.
        let path = dir.path().join(crate::store::sqlite::DB_FILE_NAME);
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
        )
        .await
        .unwrap();
        sqlx::query("UPDATE hashes SET hash = zeroblob(32) WHERE idx = ?")
            .bind(crate::tree::stored_hash_index(0, 4).0 as i64)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        assert!(matches!(
            Log::open(sqlite(&dir).await, signer()).await,
            Err(LogError::Inconsistent { size: 5, .. })
        ));
    }

    #[tokio::test]
    async fn tiles_and_entry_bundles_check_against_the_head() {
        use crate::tiles::{EntryBundle, VerifiedTiles, decode_entry_bundle, tiles_for_size};
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        for i in 0..300 {
            log.append(entry(i)).await.unwrap();
        }
        let head = log.head();
        let mut tiles = Vec::new();
        for tile in tiles_for_size(head.size) {
            tiles.push((tile, log.tile(&tile).await.unwrap()));
        }
        // 256 + 44 leaves: tile/0/000, tile/0/001.p/44, tile/1/000.p/1.
        assert_eq!(tiles.len(), 3);
        VerifiedTiles::new(head.size, &head.root, tiles).expect("the served tiles verify");
        let full = decode_entry_bundle(
            &log.entry_bundle(&EntryBundle::new(0, 256).unwrap())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(full, (0..256).map(entry).collect::<Vec<_>>());
        let part = decode_entry_bundle(
            &log.entry_bundle(&EntryBundle::new(1, 44).unwrap())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(part, (256..300).map(entry).collect::<Vec<_>>());
        // A narrower partial width is a prefix and still served; a wider one is not.
        let narrow = log.tile(&Tile::new(0, 1, 10).unwrap()).await.unwrap();
        assert_eq!(narrow.len(), 10 * 32);
        assert!(matches!(
            log.tile(&Tile::new(0, 1, 45).unwrap()).await,
            Err(LogError::Tile(TileError::NotInTree { size: 300, .. }))
        ));
        assert!(matches!(
            log.entry_bundle(&EntryBundle::new(2, 1).unwrap()).await,
            Err(LogError::Tile(TileError::NotInTree { .. }))
        ));
    }

    #[tokio::test]
    async fn append_all_keeps_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        let mut entries: Vec<Vec<u8>> = (0..5000).map(entry).collect();
        entries.insert(17, vec![0; MAX_ENTRY_LEN + 1]);
        let answers = log.append_all(entries).await;
        assert!(matches!(answers[17], Err(LogError::EntryTooLarge { .. })));
        let indexes: Vec<u64> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .map(|i| i.0)
            .collect();
        assert_eq!(indexes, (0..5000).collect::<Vec<_>>());
        let stored = log.entries(LeafIndex(0), LeafIndex(5000)).await.unwrap();
        assert_eq!(stored, (0..5000).map(entry).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_consecutive_and_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(sqlite(&dir).await));
        let log = Log::open(faulty.clone(), signer()).await.unwrap();
        // Singles race the group; the group's entries still sit together.
        let singles: Vec<_> = (0..50u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(entry(i)).await.unwrap() })
            })
            .collect();
        let group: Vec<Vec<u8>> = (1000..1300).map(entry).collect();
        let first = log.append_group(group.clone()).await.unwrap();
        for s in singles {
            s.await.unwrap();
        }
        let stored = log
            .entries(first, LeafIndex(first.0 + group.len() as u64))
            .await
            .unwrap();
        assert_eq!(stored, group, "the group is stored consecutively, in order");
        let inside = log
            .store()
            .checkpoint_at(TreeSize(first.0 + 1))
            .await
            .unwrap();
        assert!(
            inside.is_none(),
            "no checkpoint inside the group: it was one batch"
        );

        // A failed commit stores none of the group, and the log goes on.
        let before = log.head();
        faulty.fail_next_append(Fault::BeforeCommit);
        let failed: Vec<Vec<u8>> = (2000..2010).map(entry).collect();
        assert!(matches!(
            log.append_group(failed).await,
            Err(LogError::NotStored(_))
        ));
        assert_eq!(log.head(), before);
        let next = log.append(entry(3000)).await.unwrap();
        assert_eq!(next.0, before.size.0, "nothing of the failed group landed");
        assert!(matches!(
            log.append_group(vec![vec![0; 1]; MAX_BATCH_ENTRIES + 1])
                .await,
            Err(LogError::GroupTooLarge { .. })
        ));
        assert_eq!(
            log.append_group(Vec::new()).await.unwrap().0,
            log.head().size.0
        );

        // A group that landed although the store said it failed: sync reloads and
        // shows it, so the caller does not write it twice.
        let before = log.head().size;
        faulty.fail_next_append(Fault::AfterCommit);
        let landed: Vec<Vec<u8>> = (4000..4003).map(entry).collect();
        assert!(log.append_group(landed.clone()).await.is_err());
        assert_eq!(log.head().size, before, "not published before a reload");
        assert_eq!(log.sync().await.unwrap(), TreeSize(before.0 + 3));
        assert_eq!(log.head().size, TreeSize(before.0 + 3));
        assert_eq!(
            log.entries(LeafIndex(before.0), LeafIndex(before.0 + 3))
                .await
                .unwrap(),
            landed
        );
    }

    #[tokio::test]
    async fn oversized_entries_are_refused_before_queueing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(sqlite(&dir).await, signer()).await.unwrap();
        assert!(matches!(
            log.append(vec![0; MAX_ENTRY_LEN + 1]).await,
            Err(LogError::EntryTooLarge { len }) if len == MAX_ENTRY_LEN + 1
        ));
        assert_eq!(
            log.append(vec![0; MAX_ENTRY_LEN]).await.unwrap(),
            LeafIndex(0)
        );
    }
}
