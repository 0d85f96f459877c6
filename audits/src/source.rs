//! Where the auditor reads a log from: a C2SP `tlog-tiles` tree
//! (<https://c2sp.org/tlog-tiles>), served over HTTP or written to a directory.
//!
//! Both speak the same paths: `checkpoint`, `tile/<L>/<N>[.p/<W>]` and
//! `tile/entries/<N>[.p/<W>]`. Nothing a source returns is trusted: the verifier
//! checks every byte against the signed checkpoint. As the spec allows, a log may
//! delete a partial tile once the full one exists, so when a partial tile is missing
//! the source fetches the full tile and keeps its first `W` hashes or entries.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use lupus_api::http::{Http, HttpError};

use lupus_ledger::tiles::{EntryBundle, Tile, decode_entry_bundle, encode_entry_bundle};

/// Errors of reading from a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The resource does not exist at the source.
    #[error("{what} not found at {source_name}")]
    NotFound { what: String, source_name: String },
    /// The source could not be reached or read.
    #[error("cannot read {what} from {source_name}: {reason}; check the URL or path and retry")]
    Unreachable {
        what: String,
        source_name: String,
        reason: String,
    },
    /// The source sent something larger than any valid resource.
    #[error("{what} from {source_name} is over {max} bytes; no valid log serves that")]
    TooLarge {
        what: String,
        source_name: String,
        max: u64,
    },
}

/// Largest checkpoint accepted (a signed note with a few cosignatures).
const MAX_CHECKPOINT: u64 = 64 << 10;
/// Largest tile or entry bundle accepted (256 entries of at most 64 KiB each).
const MAX_TILE: u64 = 256 * (2 + 65_535);

/// A read-only view of a `tlog-tiles` log.
pub trait LogSource: Send + Sync {
    /// A name for messages (the URL or the directory).
    fn name(&self) -> String;

    /// Reads one path (`checkpoint`, `tile/...`), at most `max` bytes.
    fn get(&self, path: &str, max: u64) -> Result<Vec<u8>, SourceError>;

    /// The current signed checkpoint, as text.
    fn checkpoint(&self) -> Result<String, SourceError> {
        let bytes = self.get("checkpoint", MAX_CHECKPOINT)?;
        String::from_utf8(bytes).map_err(|_| SourceError::Unreachable {
            what: "checkpoint".into(),
            source_name: self.name(),
            reason: "it is not UTF-8 text".into(),
        })
    }

    /// A hash tile's data, falling back to the full tile for a missing partial one.
    fn tile(&self, tile: &Tile) -> Result<Vec<u8>, SourceError> {
        match self.get(&tile.path(), MAX_TILE) {
            Err(SourceError::NotFound { .. }) if !tile.is_full() => {
                let full = Tile {
                    width: 256,
                    ..*tile
                };
                let mut data = self.get(&full.path(), MAX_TILE)?;
                data.truncate(usize::from(tile.width) * 32);
                Ok(data)
            }
            other => other,
        }
    }

    /// An entry bundle, falling back to the full bundle for a missing partial one.
    fn entry_bundle(&self, bundle: &EntryBundle) -> Result<Vec<u8>, SourceError> {
        match self.get(&bundle.path(), MAX_TILE) {
            Err(SourceError::NotFound { .. }) if bundle.width < 256 => {
                let full = EntryBundle {
                    width: 256,
                    ..*bundle
                };
                let data = self.get(&full.path(), MAX_TILE)?;
                // Keep the first `width` entries; a malformed bundle is passed on
                // whole so the verifier reports it.
                match decode_entry_bundle(&data) {
                    Ok(entries) => {
                        let keep: Vec<&[u8]> = entries
                            .iter()
                            .take(usize::from(bundle.width))
                            .map(Vec::as_slice)
                            .collect();
                        Ok(encode_entry_bundle(&keep).unwrap_or(data))
                    }
                    Err(_) => Ok(data),
                }
            }
            other => other,
        }
    }
}

/// A `tlog-tiles` tree written to a directory (as `export-tiles` writes it).
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    /// The tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirSource {
        DirSource { root: root.into() }
    }
}

impl LogSource for DirSource {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, path: &str, max: u64) -> Result<Vec<u8>, SourceError> {
        let full = self.root.join(path);
        let meta = std::fs::metadata(&full);
        let err = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SourceError::NotFound {
                    what: path.to_owned(),
                    source_name: self.name(),
                }
            } else {
                SourceError::Unreachable {
                    what: path.to_owned(),
                    source_name: self.name(),
                    reason: e.to_string(),
                }
            }
        };
        if meta.map_err(err)?.len() > max {
            return Err(SourceError::TooLarge {
                what: path.to_owned(),
                source_name: self.name(),
                max,
            });
        }
        std::fs::read(&full).map_err(err)
    }
}

/// A `tlog-tiles` log served over plain HTTP (a coordinator, a mirror, a CDN).
pub struct HttpSource {
    base: String,
    http: Http,
}

/// The runtime the auditor's requests run on. The auditor's checks are plain
/// functions over a [`LogSource`]; each fetch is sent through the one native client
/// (`lupus_api::http`) on this runtime and waited for, so a caller may be async or
/// not. Never dropped.
fn io_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lupus-audit-http")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl HttpSource {
    /// The log whose `checkpoint` is at `<base>/checkpoint`.
    pub fn new(base: &str) -> HttpSource {
        HttpSource {
            base: base.trim_end_matches('/').to_owned(),
            http: Http::new().with_timeout(Duration::from_secs(30)),
        }
    }

    /// Fetches `<base>/<path>` with a `GET`, at most `max` bytes of body.
    pub fn get_url(&self, path: &str, max: u64) -> Result<Vec<u8>, SourceError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let unreachable = |reason: String| SourceError::Unreachable {
            what: path.to_owned(),
            source_name: self.base.clone(),
            reason,
        };
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let (tx, rx) = std::sync::mpsc::channel();
        let http = self.http.clone();
        let target = url.clone();
        io_runtime()
            .map_err(|e| unreachable(format!("no runtime for HTTP: {e}")))?
            .spawn(async move {
                let _ = tx.send(http.get(&target, Some(limit)).await);
            });
        let answer = rx
            .recv()
            .map_err(|_| unreachable("the HTTP runtime stopped".into()))?
            .map_err(|e| match e {
                HttpError::TooLarge(_) => SourceError::TooLarge {
                    what: path.to_owned(),
                    source_name: self.base.clone(),
                    max,
                },
                e => unreachable(e.to_string()),
            })?;
        match answer.status {
            200 => Ok(answer.body.to_vec()),
            404 => Err(SourceError::NotFound {
                what: path.to_owned(),
                source_name: self.base.clone(),
            }),
            s => Err(unreachable(format!("HTTP status {s}"))),
        }
    }
}

impl LogSource for HttpSource {
    fn name(&self) -> String {
        self.base.clone()
    }

    fn get(&self, path: &str, max: u64) -> Result<Vec<u8>, SourceError> {
        self.get_url(path, max)
    }
}

/// A source for a command-line argument: `http://...` is a URL, anything else a
/// directory.
pub fn open_source(arg: &str) -> Box<dyn LogSource> {
    if arg.starts_with("http://") || arg.starts_with("https://") {
        Box::new(HttpSource::new(arg))
    } else {
        Box::new(DirSource::new(arg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_partial_tile_is_read_from_the_full_one() {
        let dir = tempfile::tempdir().unwrap();
        let full = Tile::new(0, 0, 256).unwrap();
        std::fs::create_dir_all(dir.path().join("tile/0")).unwrap();
        let data: Vec<u8> = (0..256 * 32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join(full.path()), &data).unwrap();
        let src = DirSource::new(dir.path());
        let partial = Tile::new(0, 0, 3).unwrap();
        assert_eq!(src.tile(&partial).unwrap(), data[..96].to_vec());
        assert!(matches!(
            src.tile(&Tile::new(0, 1, 3).unwrap()),
            Err(SourceError::NotFound { .. })
        ));
    }
}
