//! Incremental verification of a whole log, trusting nothing but the pinned key.
//!
//! One run of [`verify_log`]:
//!
//! 1. fetches the checkpoint and opens it with the pinned key (C2SP
//!    `tlog-checkpoint`); a checkpoint of the same size as one seen before but with
//!    another root is a **split view**, one smaller than one seen before a
//!    **rollback**, and both signed notes are kept as evidence;
//! 2. reads the entry bundles of the entries not verified yet (C2SP `tlog-tiles`),
//!    hashes each entry as an RFC 9162 leaf into the verified tree's frontier, and at
//!    the end compares the root with the checkpoint's. Extending the frontier of the
//!    last verified tree proves, by construction, that the new tree extends it;
//! 3. decodes every entry ([`Entry::decode`] checks participant signatures), runs the
//!    protocol checks and the shares fold ([`lupus_protocol`]), in log order;
//! 4. proves consistency (RFC 9162 §2.1.4) between the new checkpoint and every
//!    checkpoint seen but not yet known to be extended, from hash tiles checked
//!    against the new root ([`VerifiedTiles`]);
//! 5. with `--replay K`, re-runs the challenges of K accepted tasks of the run
//!    ([`crate::replay`]).
//!
//! When anything fails, the auditor works out the most basic cause before reporting:
//! tiles that do not match the signed root, a new tree that does not extend the last
//! verified one (a fork), or the first entry whose bytes are not the leaf the signed
//! tree holds. Only then is a decoding or protocol failure reported as such.
//!
//! Only a run that verified everything saves its state ([`crate::state`]), so the
//! next run reads just the entries after it.

use std::time::Instant;

use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::entry::{Entry, EntryError};
use lupus_ledger::hash::{Hash, TreeSize, leaf_hash};
use lupus_ledger::note::NoteVerifier;
use lupus_ledger::proof::{consistency_proof_indexes, prove_consistency, verify_consistency};
use lupus_ledger::tiles::{
    EntryBundle, TILE_WIDTH, Tile, VerifiedTiles, decode_entry_bundle, tile_data_indexes,
    tiles_for_growth, tiles_needed,
};
use lupus_ledger::tree::{HashReader, StoredHashIndex, stored_hash_index};
use serde::Serialize;

use crate::merge::{MergeCollector, replay_merge};
use crate::replay::{Sampler, replay};
use crate::source::{LogSource, SourceError};
use crate::state::{AuditState, StateDir, StateError, VerifiedHead};
use lupus_protocol::Violation;

/// Exit status of a run: everything verified.
pub const EXIT_OK: i32 = 0;
/// Exit status: the log failed a check (the report says which entry and why).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: bad command line or input file.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the log could not be read (network, missing files).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit status: the auditor's own state could not be read or written.
pub const EXIT_STATE: i32 = 4;
/// Exit status (monitor): the log stopped growing for longer than allowed.
pub const EXIT_STALLED: i32 = 5;

/// Entries decoded per batch (then checked in order).
const BATCH_BUNDLES: u64 = 64;

/// Why a run did not verify the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The caller's input is unusable (a malformed key, a key other than the pinned one).
    #[error("{0}")]
    Usage(String),
    /// The checkpoint is malformed or not signed by the pinned key.
    #[error("the checkpoint does not verify with the pinned key: {0}")]
    BadCheckpoint(String),
    /// Two signed checkpoints of the same size with different roots.
    #[error(
        "split view: the log signed two different trees of size {size}; both signed notes are the evidence"
    )]
    SplitView {
        size: u64,
        seen_note: String,
        new_note: String,
    },
    /// A checkpoint smaller than one seen before.
    #[error(
        "rollback: the log now shows size {size}, but it signed size {seen_size} before; a log never shrinks"
    )]
    Rollback {
        size: u64,
        seen_size: u64,
        seen_note: String,
        new_note: String,
    },
    /// The new tree does not extend a checkpoint seen before.
    #[error(
        "fork: the tree of size {new_size} does not extend the checkpoint of size {old_size} seen before ({reason}); both notes are the evidence"
    )]
    Inconsistent {
        old_size: u64,
        new_size: u64,
        reason: String,
        old_note: String,
        new_note: String,
    },
    /// Hash tiles that do not hash up to the signed root.
    #[error("the log's hash tiles do not match its signed root: {0}")]
    BadTiles(String),
    /// An entry's bytes are not the leaf the signed tree holds.
    #[error(
        "entry {index}: its bytes are not the leaf the signed tree holds at that index (the entry was altered, removed or moved)"
    )]
    EntryMismatch { index: u64 },
    /// An entry bundle that cannot be what the tree says.
    #[error("entry bundle {bundle}: {reason}")]
    BadBundle { bundle: String, reason: String },
    /// The entries hash to another root than the checkpoint's, and no single entry
    /// could be blamed (the tiles were not available to compare against).
    #[error("the entries up to size {size} hash to root {computed}, not the signed root {signed}")]
    RootMismatch {
        size: u64,
        signed: Hash,
        computed: Hash,
    },
    /// An entry does not decode (encoding or participant signature).
    #[error("entry {index}: {source}")]
    Entry {
        index: u64,
        #[source]
        source: EntryError,
    },
    /// An entry breaks a protocol or shares rule.
    #[error("entry {index}: {violation}")]
    Protocol { index: u64, violation: Violation },
    /// A replayed challenge contradicts the log (or cannot be replayed).
    #[error("replay: {reason}")]
    Replay { index: Option<u64>, reason: String },
}

impl AuditError {
    /// The documented exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            AuditError::Source(_) => EXIT_UNREACHABLE,
            AuditError::State(_) => EXIT_STATE,
            AuditError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }

    /// The log index the failure is about, when there is one.
    pub fn index(&self) -> Option<u64> {
        match self {
            AuditError::EntryMismatch { index }
            | AuditError::Entry { index, .. }
            | AuditError::Protocol { index, .. } => Some(*index),
            AuditError::Replay { index, .. } => *index,
            _ => None,
        }
    }

    /// A stable name for the failure, for `--json` and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditError::Source(_) => "unreachable",
            AuditError::State(_) => "state",
            AuditError::Usage(_) => "usage",
            AuditError::BadCheckpoint(_) => "bad_checkpoint",
            AuditError::SplitView { .. } => "split_view",
            AuditError::Rollback { .. } => "rollback",
            AuditError::Inconsistent { .. } => "inconsistent",
            AuditError::BadTiles(_) => "bad_tiles",
            AuditError::EntryMismatch { .. } => "entry_mismatch",
            AuditError::BadBundle { .. } => "bad_bundle",
            AuditError::RootMismatch { .. } => "root_mismatch",
            AuditError::Entry { .. } => "bad_entry",
            AuditError::Protocol { .. } => "protocol",
            AuditError::Replay { .. } => "replay",
        }
    }

    /// The signed notes that prove the failure (split view, rollback, fork).
    pub fn evidence(&self) -> Vec<&str> {
        match self {
            AuditError::SplitView {
                seen_note,
                new_note,
                ..
            }
            | AuditError::Rollback {
                seen_note,
                new_note,
                ..
            } => vec![seen_note, new_note],
            AuditError::Inconsistent {
                old_note, new_note, ..
            } => vec![old_note, new_note],
            _ => Vec::new(),
        }
    }
}

/// What a successful run verified.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Entries verified before this run.
    pub from_size: u64,
    /// Entries verified now (the checkpoint's size).
    pub size: u64,
    /// The verified root.
    pub root: Hash,
    /// Entries read and checked by this run.
    pub new_entries: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// Entries per second of this run (0 when nothing was new).
    pub entries_per_second: f64,
    /// Sum of the final balances after the last closed round.
    pub total_shares: u64,
    /// Accounts with a final balance.
    pub accounts: usize,
    /// Earlier checkpoints proven consistent with this one during the run.
    pub consistency_proofs: usize,
    /// Judged tasks whose challenges were replayed (`--replay`).
    pub replayed: usize,
    /// Hash tiles checked against the verified tree.
    pub tiles_checked: usize,
    /// Rounds whose merge was recomputed (`--replay-merge`).
    pub rounds_recomputed: usize,
    /// The seed the samples were drawn with (hex), to reproduce them with `--seed`.
    pub seed: String,
}

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Threads that decode entries (signature checks); 0 means one per CPU.
    pub threads: usize,
    /// Judged tasks of this run whose challenges to replay from the coordinator's
    /// stored openings ([`crate::replay`]); 0 replays none.
    pub replay: usize,
    /// The seed of the samples (replayed tasks, checked tiles); `None` draws one
    /// from the OS (the samples are then the auditor's alone; the outcome reports the
    /// seed used).
    pub seed: Option<[u8; 32]>,
    /// Which of the hash tiles the log serves for this run's growth to check
    /// against the verified tree.
    pub tiles: TileCheck,
    /// Recompute every round closed in this run (merge, outer step, validation
    /// loss) from the coordinator's blobs ([`crate::merge`]).
    pub replay_merge: bool,
    /// Check each participant signature alone with the strict equation instead of
    /// in batches (`Entry::decode_batch`, the default: about half the CPU, and it
    /// accepts the signatures the strict check does plus ones whose `R` or key carry
    /// a torsion component, which only the key's holder can make).
    pub strict_signatures: bool,
}

/// Which hash tiles a run checks. A normal run reads entry bundles, not hash tiles,
/// so a log could serve wrong hash tiles (to a client proving inclusion with them)
/// and pass; this checks what it serves against the tree the entries build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileCheck {
    /// Every tile of the run's growth.
    All,
    /// This many tiles of the growth, drawn with the run's seed (0: none).
    Sample(usize),
}

impl Default for TileCheck {
    fn default() -> Self {
        TileCheck::Sample(16)
    }
}

/// Verifies what is new in the log at `source`, extending the state in `dir`.
///
/// `key` is the checkpoint verifier key; it is pinned on the first run and must match
/// the pinned one afterwards (`None` uses the pinned key). `progress` is called with
/// `(entries verified this run, entries to verify this run)`.
pub fn verify_log(
    source: &dyn LogSource,
    dir: &StateDir,
    key: Option<&str>,
    options: &Options,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, AuditError> {
    let mut state = match (dir.load()?, key) {
        (Some(s), Some(k)) if s.log_key != k.trim() => {
            return Err(AuditError::Usage(format!(
                "this state directory pinned key {:?}; refusing {:?} (use another --state to audit another log)",
                s.log_key,
                k.trim()
            )));
        }
        (Some(s), _) => s,
        (None, Some(k)) => AuditState::new(k.trim().to_owned()),
        (None, None) => {
            return Err(AuditError::Usage(
                "no pinned key yet: pass --key with the log's verifier key on the first run".into(),
            ));
        }
    };
    let result = run(source, &mut state, options, progress);
    // A successful run keeps its progress; a run that saw a conflicting checkpoint
    // keeps it as evidence; a run that failed on entries keeps only the checkpoint
    // it saw. A first run that learned nothing (the log unreachable, or not signed
    // by the key given) pins nothing, so the key can be corrected.
    if result.is_ok() || !state.seen.is_empty() {
        dir.save(&state)?;
    }
    result
}

fn run(
    source: &dyn LogSource,
    state: &mut AuditState,
    options: &Options,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, AuditError> {
    let started = Instant::now();
    let verifier = NoteVerifier::parse(&state.log_key)
        .map_err(|e| AuditError::Usage(format!("the pinned key is malformed: {e}")))?;
    let note = source.checkpoint()?;
    let signed =
        open_checkpoint(&note, &verifier).map_err(|e| AuditError::BadCheckpoint(e.to_string()))?;
    let (size, root) = (signed.checkpoint.size.0, signed.checkpoint.root);

    if let Some(seen) = state.seen.iter().find(|s| s.size == size && s.root != root) {
        let err = AuditError::SplitView {
            size,
            seen_note: seen.note.clone(),
            new_note: note.clone(),
        };
        state.remember(size, root, &note);
        return Err(err);
    }
    if let Some(seen) = state
        .seen
        .iter()
        .filter(|s| s.size > size)
        .max_by_key(|s| s.size)
    {
        return Err(AuditError::Rollback {
            size,
            seen_size: seen.size,
            seen_note: seen.note.clone(),
            new_note: note,
        });
    }
    state.remember(size, root, &note);

    let from = state.verified_size();
    let old = state.verified.clone();
    let mut frontier = state.frontier().map_err(|reason| {
        AuditError::State(StateError::Corrupt {
            path: "state.json".into(),
            reason,
        })
    })?;
    let mut protocol = state.protocol.clone();
    let seed = match options.seed {
        Some(seed) => seed,
        None => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| AuditError::Usage(format!("no OS randomness to sample with: {e}")))?;
            seed
        }
    };
    let mut merges = options
        .replay_merge
        .then(|| MergeCollector::new(protocol.last_momentum()));
    let mut sampler = match options.replay {
        0 => None,
        k => Some(Sampler::new(
            k,
            seed,
            protocol.referee().copied(),
            crate::replay::retention(source)?,
        )),
    };
    let mut leaves: Vec<Hash> = Vec::with_capacity(size.saturating_sub(from) as usize);
    let ctx = Ctx {
        source,
        from,
        old: old.as_ref(),
        size,
        root,
        note: &note,
    };

    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let total = size - from;
    let mut next = from;
    while next < size {
        let first_bundle = next / u64::from(TILE_WIDTH);
        let last_bundle =
            ((size - 1) / u64::from(TILE_WIDTH)).min(first_bundle + BATCH_BUNDLES - 1);
        let mut batch: Vec<Vec<u8>> = Vec::new();
        for b in first_bundle..=last_bundle {
            let width = (size - b * u64::from(TILE_WIDTH)).min(u64::from(TILE_WIDTH)) as u16;
            let bundle = EntryBundle { index: b, width };
            let data = source.entry_bundle(&bundle)?;
            let entries = match decode_entry_bundle(&data) {
                Ok(e) => e,
                Err(e) => {
                    return Err(ctx.diagnose(
                        &leaves,
                        AuditError::BadBundle {
                            bundle: bundle.path(),
                            reason: e.to_string(),
                        },
                    ));
                }
            };
            let skip = (next - bundle.first_entry()) as usize;
            let got = entries.len();
            for e in entries.into_iter().skip(skip) {
                leaves.push(leaf_hash(&e));
                batch.push(e);
            }
            if got != usize::from(width) {
                return Err(ctx.diagnose(
                    &leaves,
                    AuditError::BadBundle {
                        bundle: bundle.path(),
                        reason: format!(
                            "it holds {got} entries, the signed tree has {width} there"
                        ),
                    },
                ));
            }
            next = bundle.first_entry() + u64::from(width);
        }
        let batch_start = next - batch.len() as u64;
        let decoded = decode_parallel(&batch, threads, options.strict_signatures);
        for (i, result) in decoded.into_iter().enumerate() {
            let index = batch_start + i as u64;
            let entry = match result {
                Ok(entry) => entry,
                Err(source) => {
                    return Err(ctx.diagnose(&leaves, AuditError::Entry { index, source }));
                }
            };
            if let Err(violation) = protocol.apply(index, &entry, &state.log_key) {
                let index = match &violation {
                    Violation::ChallengeNotDictated {
                        challenge_entry, ..
                    } => *challenge_entry,
                    _ => index,
                };
                return Err(ctx.diagnose(&leaves, AuditError::Protocol { index, violation }));
            }
            if let Some(s) = sampler.as_mut() {
                s.observe(index, &entry);
            }
            if let Some(m) = merges.as_mut() {
                m.observe(index, &entry);
            }
            frontier.append(leaves[(index - from) as usize]);
        }
        progress(next - from, total);
    }
    if frontier.root() != root {
        return Err(ctx.diagnose(
            &leaves,
            AuditError::RootMismatch {
                size,
                signed: root,
                computed: frontier.root(),
            },
        ));
    }

    // Every other checkpoint seen but not yet known to be extended.
    let pending: Vec<(u64, Hash, String)> = state
        .seen
        .iter()
        .filter(|s| !s.consistent && s.size < size && s.size != from)
        .map(|s| (s.size, s.root, s.note.clone()))
        .collect();
    if !pending.is_empty() {
        let mut indexes = Vec::new();
        for (old_size, _, _) in &pending {
            indexes.extend(
                consistency_proof_indexes(TreeSize(*old_size), TreeSize(size))
                    .map_err(|e| AuditError::BadTiles(e.to_string()))?,
            );
        }
        let tiles = ctx.verified_tiles(&indexes)?;
        for (old_size, old_root, old_note) in &pending {
            let checked = prove_consistency(TreeSize(*old_size), TreeSize(size), &tiles)
                .and_then(|p| verify_consistency(&p, old_root, &root));
            if let Err(e) = checked {
                return Err(AuditError::Inconsistent {
                    old_size: *old_size,
                    new_size: size,
                    reason: e.to_string(),
                    old_note: old_note.clone(),
                    new_note: note.clone(),
                });
            }
        }
    }
    let tiles_checked = ctx.check_tiles(options.tiles, &seed)?;
    // Replays run on a log already verified: a failure here is about the work.
    let replayed = match (sampler, protocol.job()) {
        (Some(s), Some(job)) => replay(source, job, &s.into_sample())?,
        _ => 0,
    };
    let rounds_recomputed = match (merges, protocol.job()) {
        (Some(m), Some(job)) => replay_merge(source, job, &m.into_rounds())?,
        _ => 0,
    };
    for s in state.seen.iter_mut().filter(|s| s.size <= size) {
        s.consistent = true;
    }
    state.verified = Some(VerifiedHead {
        size,
        root,
        note: note.clone(),
        frontier: frontier.subtree_roots().to_vec(),
    });
    state.protocol = protocol;
    let seconds = started.elapsed().as_secs_f64();
    let fold = state.protocol.fold();
    Ok(Outcome {
        from_size: from,
        size,
        root,
        new_entries: size - from,
        seconds,
        entries_per_second: if size > from && seconds > 0.0 {
            (size - from) as f64 / seconds
        } else {
            0.0
        },
        total_shares: fold.total().0,
        accounts: fold.balances().len(),
        consistency_proofs: pending.len(),
        replayed,
        tiles_checked,
        rounds_recomputed,
        seed: hex::encode(seed),
    })
}

/// Decodes entries on `threads` threads, keeping their order.
fn decode_parallel(
    batch: &[Vec<u8>],
    threads: usize,
    strict: bool,
) -> Vec<Result<Entry, EntryError>> {
    let decode = |part: &[Vec<u8>]| {
        if strict {
            part.iter().map(|b| Entry::decode(b)).collect()
        } else {
            Entry::decode_batch(part)
        }
    };
    if threads <= 1 || batch.len() < 64 {
        return decode(batch);
    }
    let chunk = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .chunks(chunk)
            .map(|part| scope.spawn(move || decode(part)))
            .collect();
        handles
            .into_iter()
            // Entry::decode never panics on hostile bytes (the ledger's promise); if
            // it did, that is a bug to surface, not a verdict about the log.
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// What `diagnose` needs to know about the run.
struct Ctx<'a> {
    source: &'a dyn LogSource,
    from: u64,
    old: Option<&'a VerifiedHead>,
    size: u64,
    root: Hash,
    note: &'a str,
}

impl Ctx<'_> {
    /// Fetches the tiles that hold `indexes` (and what checks them) and checks them
    /// against the new checkpoint.
    fn verified_tiles(&self, indexes: &[StoredHashIndex]) -> Result<VerifiedTiles, AuditError> {
        let tiles: Vec<Tile> = tiles_needed(TreeSize(self.size), indexes)
            .map_err(|e| AuditError::BadTiles(e.to_string()))?;
        let mut fetched = Vec::with_capacity(tiles.len());
        for t in tiles {
            fetched.push((t, self.source.tile(&t)?));
        }
        VerifiedTiles::new(TreeSize(self.size), &self.root, fetched)
            .map_err(|e| AuditError::BadTiles(e.to_string()))
    }

    /// Checks the hash tiles `which` picks among those of the growth from the last
    /// verified size to this one; returns how many. A tile that does not agree with
    /// the verified root is named.
    fn check_tiles(&self, which: TileCheck, seed: &[u8; 32]) -> Result<usize, AuditError> {
        let mut grown = tiles_for_growth(TreeSize(self.from), TreeSize(self.size));
        if let TileCheck::Sample(n) = which {
            let key = |t: &Tile| {
                let mut h = blake3::Hasher::new_derive_key("lupus-audit tile sample v1");
                h.update(seed);
                h.update(t.path().as_bytes());
                *h.finalize().as_bytes()
            };
            grown.sort_by_cached_key(key);
            grown.truncate(n);
        }
        let indexes: Vec<StoredHashIndex> = grown.iter().flat_map(tile_data_indexes).collect();
        if indexes.is_empty() || self.verified_tiles(&indexes).is_ok() {
            return Ok(grown.len());
        }
        // Name the first tile that does not agree (with what checks it).
        for t in &grown {
            if let Err(e) = self.verified_tiles(&tile_data_indexes(t)) {
                return Err(match e {
                    AuditError::BadTiles(reason) => {
                        AuditError::BadTiles(format!("hash tile {}: {reason}", t.path()))
                    }
                    e => e,
                });
            }
        }
        self.verified_tiles(&indexes).map(|_| grown.len())
    }

    /// Finds the most basic cause of `fallback`, a failure seen while reading new
    /// entries whose leaf hashes are `leaves` (from index `from` on).
    fn diagnose(&self, leaves: &[Hash], fallback: AuditError) -> AuditError {
        match self.locate(leaves) {
            Ok(None) => fallback,
            Ok(Some(err)) => err,
            // Without tiles, the fallback is the best we can say.
            Err(AuditError::Source(_)) => fallback,
            Err(err) => err,
        }
    }

    fn locate(&self, leaves: &[Hash]) -> Result<Option<AuditError>, AuditError> {
        let mut indexes =
            consistency_proof_indexes(TreeSize(self.from), TreeSize(self.size)).unwrap_or_default();
        // One leaf per level-0 tile covering the leaves to compare.
        let end = (self.from + leaves.len() as u64).min(self.size);
        let mut i = self.from;
        while i < end {
            indexes.push(stored_hash_index(0, i));
            i = (i / 256 + 1) * 256;
        }
        let tiles = self.verified_tiles(&indexes)?;
        if let Some(old) = self.old {
            let checked = prove_consistency(TreeSize(old.size), TreeSize(self.size), &tiles)
                .and_then(|p| verify_consistency(&p, &old.root, &self.root));
            if let Err(e) = checked {
                return Ok(Some(AuditError::Inconsistent {
                    old_size: old.size,
                    new_size: self.size,
                    reason: e.to_string(),
                    old_note: old.note.clone(),
                    new_note: self.note.to_owned(),
                }));
            }
        }
        let wanted: Vec<StoredHashIndex> =
            (self.from..end).map(|i| stored_hash_index(0, i)).collect();
        let signed = tiles
            .read_hashes(&wanted)
            .map_err(|e| AuditError::BadTiles(e.to_string()))?;
        for (k, expected) in signed.iter().enumerate() {
            if leaves.get(k) != Some(expected) {
                return Ok(Some(AuditError::EntryMismatch {
                    index: self.from + k as u64,
                }));
            }
        }
        Ok(None)
    }
}
