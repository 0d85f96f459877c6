//! The auditor's local store: what it trusts and what it has already checked.
//!
//! One directory per audited log holds `state.json`: the pinned checkpoint verifier
//! key, the last verified checkpoint (size, root, signed note), the tree's right edge
//! (so new entries extend it without re-reading old ones), every distinct checkpoint
//! ever seen (the evidence a split view is reported with), and the protocol and
//! shares fold state ([`lupus_protocol::ProtocolState`]) so a second run resumes
//! where the first stopped.
//!
//! Writes are atomic: the new file is written to a temporary name, `fsync`ed, renamed
//! over the old one and the directory `fsync`ed, so a crash leaves either the old or
//! the new state, never a torn one. The state is only written after a run verified
//! everything up to a signed checkpoint, so it never records unverified progress.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use lupus_ledger::hash::{Hash, TreeSize};
use lupus_ledger::tree::{Frontier, PrefetchedHashes, tree_hash_indexes};
use serde::{Deserialize, Serialize};

use lupus_protocol::ProtocolState;

/// The state file format this code writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Errors of loading and saving the local state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing the state failed.
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON of this format.
    #[error(
        "state file {path} is corrupt ({reason}); move it away to start over (the auditor then trusts nothing it saw before)"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The state file has another format version.
    #[error("state file {path} has version {found}; this auditor reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// A checkpoint the auditor opened with the pinned key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The signed note, verbatim: evidence that the log said this.
    pub note: String,
    /// Whether the verified tree is known to extend this checkpoint.
    pub consistent: bool,
}

/// The last checkpoint whose every entry was verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedHead {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// Roots of the complete subtrees of the verified tree, largest first.
    pub frontier: Vec<Hash>,
}

/// Everything the auditor keeps between runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The pinned checkpoint verifier key (`<name>+<hexid>+<base64>`).
    pub log_key: String,
    /// The last fully verified checkpoint, if any.
    pub verified: Option<VerifiedHead>,
    /// Every distinct checkpoint seen, oldest first.
    pub seen: Vec<SeenCheckpoint>,
    /// The protocol checker's and the shares fold's state after `verified.size` entries.
    pub protocol: ProtocolState,
}

impl AuditState {
    /// A fresh state that trusts `log_key` and has verified nothing.
    pub fn new(log_key: String) -> AuditState {
        AuditState {
            version: STATE_VERSION,
            log_key,
            verified: None,
            seen: Vec::new(),
            protocol: ProtocolState::default(),
        }
    }

    /// The verified tree size (0 before the first run).
    pub fn verified_size(&self) -> u64 {
        self.verified.as_ref().map_or(0, |v| v.size)
    }

    /// The verified tree's frontier, rebuilt from the stored subtree roots.
    pub fn frontier(&self) -> Result<Frontier, String> {
        let Some(v) = &self.verified else {
            return Ok(Frontier::empty());
        };
        let size = TreeSize(v.size);
        let hashes = PrefetchedHashes::new(tree_hash_indexes(size), v.frontier.clone())
            .map_err(|e| e.to_string())?;
        let frontier = Frontier::load(size, &hashes).map_err(|e| e.to_string())?;
        if frontier.root() != v.root {
            return Err("the stored frontier does not hash to the stored root".to_owned());
        }
        Ok(frontier)
    }

    /// Records a checkpoint as seen (once per distinct size and root).
    pub fn remember(&mut self, size: u64, root: Hash, note: &str) {
        if !self.seen.iter().any(|s| s.size == size && s.root == root) {
            self.seen.push(SeenCheckpoint {
                size,
                root,
                note: note.to_owned(),
                consistent: false,
            });
        }
    }
}

/// A state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state kept in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the state, or `None` if there is none yet.
    pub fn load(&self) -> Result<Option<AuditState>, StateError> {
        read_json(&self.path())
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &AuditState) -> Result<(), StateError> {
        write_json_atomic(&self.path(), state)
    }
}

/// Reads a JSON file written by [`write_json_atomic`]; `None` if it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned + Versioned>(
    path: &Path,
) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let value: T = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if value.version() != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: value.version(),
        });
    }
    Ok(Some(value))
}

/// A persisted document with a format version.
pub trait Versioned {
    /// The document's format version.
    fn version(&self) -> u32;
}

impl Versioned for AuditState {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Writes `value` as JSON to `path` atomically: temporary file, `fsync`, rename,
/// `fsync` of the directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lupus_ledger::hash::leaf_hash;
    use lupus_ledger::tree::MemoryTree;

    #[test]
    fn state_round_trips_and_rebuilds_its_frontier() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("log"));
        assert!(sd.load().unwrap().is_none());
        let mut t = MemoryTree::new();
        for i in 0..1000u32 {
            t.append(leaf_hash(&i.to_be_bytes()));
        }
        let mut s = AuditState::new("k+00000000+AA".into());
        s.verified = Some(VerifiedHead {
            size: 1000,
            root: t.root(),
            note: "n".into(),
            frontier: t.frontier().subtree_roots().to_vec(),
        });
        s.remember(1000, t.root(), "n");
        s.remember(1000, t.root(), "n");
        sd.save(&s).unwrap();
        let back = sd.load().unwrap().unwrap();
        assert_eq!(back.seen.len(), 1);
        assert_eq!(back.frontier().unwrap().root(), t.root());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        fs::write(sd.path(), b"{not json").unwrap();
        assert!(matches!(sd.load(), Err(StateError::Corrupt { .. })));
    }
}
