//! Builds a sample Lupus log and writes it out as a static C2SP `tlog-tiles` tree:
//! what a mirror, a CDN or an auditor fetching over plain HTTP sees.
//!
//! ```text
//! cargo run --release -p lupus-ledger --example export-tiles -- --entries 100000 --out DIR
//! ```
//!
//! It appends N sample entries (a genesis entry, participants joining, then rounds of
//! tasks, signed commitments, challenges, signed verdicts, credits and round closes,
//! all encoded by `lupus_ledger::entry`) to a fresh SQLite log through the
//! group-committing writer, then writes `DIR/checkpoint`, every hash tile
//! `DIR/tile/<L>/<N>[.p/<W>]`, every entry bundle `DIR/tile/entries/<N>[.p/<W>]`, and
//! the log's verifier key `DIR/log.vkey`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::SigningKey;
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::log::Log;
use lupus_ledger::note::NoteSigner;
use lupus_ledger::store::sqlite::SqliteStore;
use lupus_ledger::tiles::{EntryBundle, tiles_for_size};

/// Appends sample entries to a fresh log and exports it as tlog-tiles files.
#[derive(Parser, Debug)]
#[command(
    about,
    long_about = "Appends N sample Lupus entries to a fresh SQLite log (through the \
    group-committing writer, so every entry is durable before it counts) and writes the \
    log out as a static C2SP tlog-tiles tree: DIR/checkpoint, DIR/tile/<L>/<N>[.p/<W>], \
    DIR/tile/entries/<N>[.p/<W>] and DIR/log.vkey (the verifier key of the checkpoint)."
)]
pub struct Args {
    /// Number of sample entries to append.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub entries: u64,
    /// Directory to write the tiles to (must be empty or missing unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the checkpoint, tiles and key of a previous export in --out.
    #[arg(long)]
    pub force: bool,
    /// Keep the SQLite database here instead of in a temporary directory.
    #[arg(long)]
    pub db_dir: Option<PathBuf>,
    /// The log's origin (the name of its signing key).
    #[arg(long, default_value = "lupus.example/sample-log")]
    pub origin: String,
    /// Entries handed to the writer at a time.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Summary {
    /// Entries in the log.
    pub size: u64,
    /// Hash tiles written.
    pub tiles: usize,
    /// Entry bundles written.
    pub bundles: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let summary = run(&args)?;
    println!(
        "wrote {} entries as {} hash tiles and {} entry bundles to {}",
        summary.size,
        summary.tiles,
        summary.bundles,
        args.out.display()
    );
    Ok(())
}

/// Does the whole export.
pub fn run(args: &Args) -> anyhow::Result<Summary> {
    prepare_out(&args.out, args.force)?;
    let temp;
    let db_dir = match &args.db_dir {
        Some(dir) => {
            if dir.join(lupus_ledger::store::sqlite::DB_FILE_NAME).exists() {
                bail!(
                    "{} already holds a log; name a fresh --db-dir",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(export(args, &db_dir))
}

async fn export(args: &Args, db_dir: &Path) -> anyhow::Result<Summary> {
    let signer = NoteSigner::generate(&args.origin).context("generate the log key")?;
    let store = SqliteStore::open_in_dir(db_dir).await?;
    let log = Log::open(Arc::new(store), signer.clone()).await?;
    let people = People::new();

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.entries)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "appending {bar:40} {pos}/{len} entries, {per_sec}, eta {eta}",
        )
        .context("progress bar template")?,
    );
    let mut next = 0;
    while next < args.entries {
        let end = (next + args.chunk).min(args.entries);
        let entries = (next..end)
            .map(|i| people.sample_entry(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (i, answer) in (next..).zip(log.append_all(entries).await) {
            let index = answer?;
            if index.0 != i {
                bail!("sample entry {i} was stored at {index}: another writer shares the log");
            }
        }
        bar.set_position(end);
        next = end;
    }
    bar.finish();

    let head = log.head();
    write_file(&args.out.join("checkpoint"), head.note.as_bytes())?;
    write_file(
        &args.out.join("log.vkey"),
        format!("{}\n", signer.verifier_key()).as_bytes(),
    )?;
    let tiles = tiles_for_size(head.size);
    let mut bundles = 0;
    for tile in &tiles {
        write_file(&args.out.join(tile.path()), &log.tile(tile).await?)?;
        if tile.level == 0 {
            let bundle = EntryBundle::new(tile.index, tile.width)?;
            write_file(
                &args.out.join(bundle.path()),
                &log.entry_bundle(&bundle).await?,
            )?;
            bundles += 1;
        }
    }
    Ok(Summary {
        size: head.size.0,
        tiles: tiles.len(),
        bundles,
    })
}

/// Refuses a non-empty output directory unless `force`, which removes only what an
/// export writes.
fn prepare_out(out: &Path, force: bool) -> anyhow::Result<()> {
    let non_empty = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("read {}", out.display())),
    };
    if non_empty {
        if !force {
            bail!(
                "{} is not empty; pass --force to replace a previous export there",
                out.display()
            );
        }
        for name in ["tile", "checkpoint", "log.vkey"] {
            let path = out.join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

/// The sample job's participants, with fixed keys so every export tells one story.
struct People {
    workers: Vec<SigningKey>,
    verifier: SigningKey,
}

const WORKERS: u64 = 4;
/// Entries before the first round: genesis, the workers and the verifier joining.
const PROLOGUE: u64 = 2 + WORKERS;
/// Entries per round: opened, 5 per task (assigned, committed, challenged, verdict,
/// credit), closed, shares epoch.
const ROUND_LEN: u64 = 1 + 5 * WORKERS + 2;

impl People {
    fn new() -> People {
        People {
            workers: (0..WORKERS)
                .map(|w| SigningKey::from_bytes(&[w as u8 + 1; 32]))
                .collect(),
            verifier: SigningKey::from_bytes(&[0xee; 32]),
        }
    }

    fn worker(&self, w: u64) -> &SigningKey {
        &self.workers[(w % WORKERS) as usize]
    }

    /// The encoded entry at position `i` of the sample job.
    fn sample_entry(&self, i: u64) -> anyhow::Result<Vec<u8>> {
        let digest = |what: &str, n: u64| Digest::of(format!("{what} {n}").as_bytes());
        let verifier = PublicKey::from(&self.verifier);
        let entry = if i == 0 {
            Entry::unsigned(EntryBody::Genesis {
                job_spec: "[model]\nkind = \"char-mlp\"\n".to_owned(),
                job_hash: digest("job", 0),
                dataset_root: digest("dataset", 0),
                log_key: verifier,
                coordinator_note_key: "lupus.example/sample-log".to_owned(),
                created_ms: 1_780_000_000_000,
            })?
        } else if i < PROLOGUE {
            let (key, role) = if i <= WORKERS {
                (self.worker(i - 1), Role::Worker)
            } else {
                (&self.verifier, Role::Verifier)
            };
            Entry::signed(
                EntryBody::ParticipantJoined {
                    key: PublicKey::from(key),
                    role,
                    name: format!("participant {i}"),
                },
                key,
            )?
        } else {
            let at = i - PROLOGUE;
            let round = Round(at / ROUND_LEN);
            let step = at % ROUND_LEN;
            let task_of = |w: u64| TaskId(round.0 * WORKERS + w);
            if step == 0 {
                Entry::unsigned(EntryBody::RoundOpened {
                    round,
                    base_model: digest("model", round.0),
                    beacon_commitment: digest("beacon commitment", round.0),
                    inner_steps: 64,
                    deadline_ms: 1_780_000_000_000 + round.0 * 60_000,
                })?
            } else if step <= 5 * WORKERS {
                let w = (step - 1) / 5;
                let task = task_of(w);
                let worker = self.worker(w);
                match (step - 1) % 5 {
                    0 => Entry::unsigned(EntryBody::TaskAssigned {
                        task,
                        round,
                        worker: PublicKey::from(worker),
                        seed: digest("seed", task.0),
                        inner_steps: 64,
                        batch_size: 32,
                    })?,
                    1 => Entry::signed(
                        EntryBody::WorkCommitted {
                            task,
                            worker: PublicKey::from(worker),
                            trace_root: digest("trace", task.0),
                            final_state: digest("state", task.0),
                            delta: digest("delta", task.0),
                        },
                        worker,
                    )?,
                    2 => Entry::unsigned(EntryBody::ChallengeIssued {
                        task,
                        verifier,
                        steps: vec![3, 17, 42],
                    })?,
                    3 => Entry::signed(
                        EntryBody::Verdict {
                            task,
                            verifier,
                            accepted: true,
                            steps: vec![3, 17, 42],
                            reason: "replayed steps match".to_owned(),
                            evidence: None,
                        },
                        &self.verifier,
                    )?,
                    _ => Entry::unsigned(EntryBody::Credit {
                        round,
                        key: PublicKey::from(worker),
                        amount: Amount(64 * 32 * 1_000_000),
                        task,
                        kind: CreditKind::Work,
                    })?,
                }
            } else if step == 5 * WORKERS + 1 {
                Entry::unsigned(EntryBody::RoundClosed {
                    round,
                    beacon: digest("beacon", round.0),
                    new_model: digest("model", round.0 + 1),
                    val_loss_bits: 2.5f32.to_bits(),
                    accepted_tasks: WORKERS as u32,
                    val_windows: 0,
                    momentum: None,
                    merged: Vec::new(),
                })?
            } else {
                Entry::unsigned(EntryBody::SharesEpoch {
                    epoch: Epoch(round.0),
                    round,
                    root: digest("shares", round.0),
                    total: Amount((round.0 + 1) * WORKERS * 64 * 32 * 1_000_000),
                    accounts: WORKERS,
                })?
            }
        };
        Ok(entry.encode())
    }
}
