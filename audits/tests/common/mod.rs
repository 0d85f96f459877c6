//! Shared by the integration tests: an honest sample log, re-signing helpers for a
//! coordinator that rewrites its own history, and export of a log as static
//! `tlog-tiles` files through the ledger's `Log` over SQLite (as `export-tiles` does).

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use lupus_audit::sample::SampleJob;
use lupus_audit::source::DirSource;
use lupus_audit::state::StateDir;
use lupus_audit::verify::{AuditError, Options, Outcome, verify_log};
use lupus_ledger::entry::{Entry, EntryBody, PublicKey};
use lupus_ledger::log::Log;
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tiles::{EntryBundle, tiles_for_size};

/// Workers in the sample job.
pub const WORKERS: usize = 4;
/// Rounds in the sample job: 6 + 12 * 27 = 330 entries, two entry bundles.
pub const ROUNDS: u64 = 12;

pub fn job() -> SampleJob {
    SampleJob::new("lupus.example/audit-test", WORKERS).unwrap()
}

pub fn honest(job: &SampleJob) -> Vec<Entry> {
    job.entries(ROUNDS).unwrap()
}

/// Signs `body` again with whichever sample key it names (a coordinator holding
/// its participants' signed entries can only reuse them; tests that forge a
/// participant's entry use this to stand for a colluding participant).
pub fn resign(job: &SampleJob, body: EntryBody) -> Entry {
    let Some((_, who)) = body.signer() else {
        return Entry::unsigned(body).unwrap();
    };
    let who = *who;
    let key = job
        .workers
        .iter()
        .chain([&job.verifier, &job.referee])
        .find(|k| PublicKey::from(*k) == who)
        .expect("a sample key");
    Entry::signed(body, key).unwrap()
}

pub fn encode(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(Entry::encode).collect()
}

/// Appends `entries` to a fresh SQLite log signed by the job's key and writes the
/// log out as static tiles in `dir`. Returns the signed checkpoint.
pub fn export(job: &SampleJob, entries: &[Vec<u8>], dir: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_dir(db.path()).await.unwrap();
        let log = Log::open(Arc::new(store), job.signer.clone())
            .await
            .unwrap();
        for r in log.append_all(entries.to_vec()).await {
            r.unwrap();
        }
        let head = log.head();
        write(&dir.join("checkpoint"), head.note.as_bytes());
        for tile in tiles_for_size(head.size) {
            write(&dir.join(tile.path()), &log.tile(&tile).await.unwrap());
            if tile.level == 0 {
                let bundle = EntryBundle::new(tile.index, tile.width).unwrap();
                write(
                    &dir.join(bundle.path()),
                    &log.entry_bundle(&bundle).await.unwrap(),
                );
            }
        }
        head.note.clone()
    })
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Runs `verify` on a tiles directory with the job's key.
pub fn verify(job: &SampleJob, tiles: &Path, state: &Path) -> Result<Outcome, AuditError> {
    verify_log(
        &DirSource::new(tiles),
        &StateDir::new(state),
        Some(&job.vkey()),
        &Options {
            threads: 2,
            replay: 0,
            seed: None,
            tiles: lupus_audit::verify::TileCheck::All,
            replay_merge: false,
            strict_signatures: false,
        },
        &mut |_, _| {},
    )
}

/// Index of the `n`-th entry (0-based) whose body matches `pred`.
pub fn find(entries: &[Entry], n: usize, pred: impl Fn(&EntryBody) -> bool) -> usize {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| pred(e.body()))
        .nth(n)
        .map(|(i, _)| i)
        .expect("such an entry")
}

/// A coordinator API held in memory: paths (`v1/job`, `v1/blobs/<hash>`, ...) to
/// bodies.
pub struct MemSource(pub std::collections::HashMap<String, Vec<u8>>);

impl lupus_audit::source::LogSource for MemSource {
    fn name(&self) -> String {
        "memory".into()
    }

    fn get(&self, path: &str, _max: u64) -> Result<Vec<u8>, lupus_audit::source::SourceError> {
        self.0
            .get(path)
            .cloned()
            .ok_or(lupus_audit::source::SourceError::NotFound {
                what: path.into(),
                source_name: self.name(),
            })
    }
}
