//! The blob store: models, deltas, openings, momentum buffers and the dataset, content
//! addressed by blake3, in one directory.
//!
//! A blob is written to a temporary file in the same directory, fsynced, renamed to its
//! hash and the directory fsynced, so after [`BlobStore::put`] returns the blob is
//! durable and a crash never leaves a partial file under a hash name. Reads hash what
//! they read and refuse a file whose content does not match its name.
//!
//! A full store (the disk, `ENOSPC`/`EDQUOT`, or the operator's quota,
//! [`BlobStore::set_quota`]) refuses the blob with an error that
//! [`BlobError::is_full`] recognises, and leaves no file behind: the temporary file is
//! removed on every error (and, after a crash, when the store is opened again), and
//! nothing names a blob before `put` has returned its hash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lupus_ledger::entry::Digest;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {hash} is corrupt: its content hashes to {actual}")]
    Corrupt { hash: Digest, actual: Digest },
    #[error(
        "the blob store at {dir} is full: {used} bytes stored, {len} more would pass its quota of {quota} bytes; remove old blobs or raise the quota"
    )]
    OverQuota {
        dir: PathBuf,
        used: u64,
        len: u64,
        quota: u64,
    },
}

impl BlobError {
    /// Whether the store is full (its quota, or the disk or the user's disk quota):
    /// the same write can succeed once room is made.
    pub fn is_full(&self) -> bool {
        match self {
            BlobError::OverQuota { .. } => true,
            BlobError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            BlobError::Corrupt { .. } => false,
        }
    }
}

/// The name prefix of a blob being written.
const TMP_PREFIX: &str = ".tmp-";

/// A blob arriving in pieces (see [`BlobStore::upload`]): written to its temporary
/// file and hashed as it comes.
#[derive(Debug)]
pub struct Upload {
    file: tokio::fs::File,
    path: tempfile::TempPath,
    hasher: blake3::Hasher,
    len: u64,
}

impl Upload {
    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.hasher.update(data);
        self.len += data.len() as u64;
        self.file.write_all(data).await
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and syncs the file; the upload is whole.
    pub async fn finish(mut self) -> std::io::Result<Uploaded> {
        use tokio::io::AsyncWriteExt as _;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(Uploaded {
            path: self.path,
            hash: Digest(*self.hasher.finalize().as_bytes()),
            len: self.len,
        })
    }
}

/// A whole upload, synced, not yet a blob: its file is removed when dropped unless
/// [`BlobStore::adopt`] makes it the blob of [`Uploaded::hash`].
#[derive(Debug)]
pub struct Uploaded {
    path: tempfile::TempPath,
    hash: Digest,
    len: u64,
}

impl Uploaded {
    /// blake3 of the bytes.
    pub fn hash(&self) -> Digest {
        self.hash
    }

    /// The bytes, read back whole (blocking): for the one decode that checks them.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }
}

/// A directory of blobs named by their blake3 hex.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
    quota: Arc<Quota>,
}

/// The most bytes the directory may hold (0: no quota), and the bytes it held when
/// last counted plus what was written since.
#[derive(Debug, Default)]
struct Quota {
    limit: AtomicU64,
    used: std::sync::Mutex<Option<u64>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

impl BlobStore {
    /// Opens (creating it if needed) the store in `dir`, removing the temporary files
    /// a crash in the middle of a `put` left behind (the directory belongs to one
    /// coordinator, so no other writer owns them).
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(BlobStore {
            dir,
            quota: Arc::default(),
        })
    }

    /// Limits the directory to `bytes` (`None`: no limit, the default). A `put` that
    /// would pass it fails with [`BlobError::OverQuota`] before writing anything, so
    /// an operator can keep the coordinator from filling a disk that other things need.
    /// Blobs removed by the operator count as freed the next time a `put` hits the
    /// limit (the directory is counted again then).
    pub fn set_quota(&self, bytes: Option<u64>) {
        self.quota
            .limit
            .store(bytes.unwrap_or(0), Ordering::Relaxed);
    }

    /// Bytes in the directory's files.
    fn count(&self) -> Result<u64, BlobError> {
        let mut total = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            // A file removed while we count is simply not counted.
            total += e.metadata().map_or(0, |m| m.len());
        }
        Ok(total)
    }

    /// Reserves `len` bytes under the quota, counting the directory again when the
    /// running total says it is full.
    fn reserve(&self, len: u64) -> Result<(), BlobError> {
        let quota = self.quota.limit.load(Ordering::Relaxed);
        if quota == 0 {
            return Ok(());
        }
        let mut used = self
            .quota
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut now = match *used {
            Some(u) => u,
            None => self.count()?,
        };
        if now + len > quota {
            now = self.count()?;
        }
        if now + len > quota {
            *used = Some(now);
            return Err(BlobError::OverQuota {
                dir: self.dir.clone(),
                used: now,
                len,
                quota,
            });
        }
        *used = Some(now + len);
        Ok(())
    }

    fn path(&self, hash: &Digest) -> PathBuf {
        self.dir.join(hash.to_string())
    }

    /// Stores `bytes` durably and returns their hash. Storing a blob twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let hash = Digest::of(bytes);
        let path = self.path(&hash);
        if path.exists() {
            return Ok(hash);
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| BlobError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.reserve(bytes.len() as u64)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", hex::encode(nonce)));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| hash)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A temporary file in the store's directory to receive a blob as it streams in
    /// (an opening's upload): removed when dropped, unless [`Self::adopt`]ed.
    pub fn upload(&self) -> Result<Upload, BlobError> {
        let named = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let (file, path) = named.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            path,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Makes a complete upload the blob of its hash: within the quota, renamed into
    /// place, the directory synced (the file was synced by [`Upload::finish`]).
    /// Blocking. If the store holds the blob already, the upload is dropped.
    pub fn adopt(&self, upload: Uploaded) -> Result<Digest, BlobError> {
        let target = self.path(&upload.hash);
        if target.exists() {
            return Ok(upload.hash);
        }
        self.reserve(upload.len)?;
        upload.path.persist(&target).map_err(|e| BlobError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(upload.hash)
    }

    /// Removes a blob; whether it was there. The space counts as free the next time a
    /// `put` meets the quota.
    pub fn remove(&self, hash: &Digest) -> Result<bool, BlobError> {
        let path = self.path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads a blob, or `None` if the store does not have it.
    pub fn get(&self, hash: &Digest) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hash);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let actual = Digest::of(&bytes);
                if actual != *hash {
                    return Err(BlobError::Corrupt {
                        hash: *hash,
                        actual,
                    });
                }
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let h = store.put(b"hello").unwrap();
        assert_eq!(h, Digest::of(b"hello"));
        assert_eq!(store.put(b"hello").unwrap(), h);
        assert_eq!(store.get(&h).unwrap().unwrap(), b"hello");
        assert!(store.get(&Digest::of(b"nope")).unwrap().is_none());
        std::fs::write(dir.path().join("blobs").join(h.to_string()), b"evil").unwrap();
        assert!(matches!(store.get(&h), Err(BlobError::Corrupt { .. })));
        let leftovers = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_put_over_the_quota_is_refused_whole_and_freed_space_counts_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        store.put(&[1u8; 1000]).unwrap();
        store.set_quota(Some(2500));
        store.put(&[2u8; 1000]).unwrap();
        let e = store.put(&[3u8; 1000]).unwrap_err();
        assert!(e.is_full(), "{e}");
        assert!(matches!(
            e,
            BlobError::OverQuota {
                used: 2000,
                len: 1000,
                quota: 2500,
                ..
            }
        ));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "nothing of the refused blob was written");
        // Storing a blob the store already has needs no room.
        store.put(&[2u8; 1000]).unwrap();
        // The operator removes a blob: the next put that would not fit counts again.
        std::fs::remove_file(dir.path().join(Digest::of(&[1u8; 1000]).to_string())).unwrap();
        store.put(&[3u8; 1000]).unwrap();
        store.set_quota(None);
        store.put(&[4u8; 5000]).unwrap();
    }

    #[test]
    fn opening_removes_what_a_crash_mid_put_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let h = store.put(b"kept").unwrap();
        std::fs::write(dir.path().join(".tmp-0011223344556677"), b"half a blob").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![h.to_string()]);
        assert_eq!(store.get(&h).unwrap().unwrap(), b"kept");
    }

    #[test]
    fn a_full_disk_is_full_and_other_io_errors_are_not() {
        let full = BlobError::Io {
            path: PathBuf::from("x"),
            source: std::io::Error::from_raw_os_error(28), // ENOSPC
        };
        assert!(full.is_full());
        let denied = BlobError::Io {
            path: PathBuf::from("x"),
            source: std::io::Error::from_raw_os_error(13), // EACCES
        };
        assert!(!denied.is_full());
    }
}
