//! A synthetic job log that follows every protocol rule, for tests and the benchmark.
//!
//! [`SampleJob::entries`] writes what an honest coordinator would: a genesis entry with
//! the tiny test job spec and the log's key, the referee, workers and a verifier joining, then per
//! round a `RoundOpened` with a beacon commitment, for each worker a task (seed from
//! `derive_task_seed`), a signed commitment, a challenge of the steps
//! `challenge_steps(beacon, trace_root, H, m)`, the opening, a signed accepting verdict (and the
//! referee's, where the beacon marks the task for a double check), a work
//! credit and a verification credit, then the close revealing the beacon and the
//! `SharesEpoch` the fold expects. Keys are fixed, so two runs write the same log.
//! [`write_static`] writes any list of entries as a static `tlog-tiles` tree.

use std::path::Path;

use ed25519_dalek::SigningKey;
use lupus_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, EntryError, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::note::NoteSigner;
use lupus_ledger::tiles::{EntryBundle, encode_entry_bundle, tile_data, tiles_for_size};
use lupus_ledger::tree::MemoryTree;
use lupus_protocol::{SharesFold, double_checked};
use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::prf::derive_task_seed;
use lupus_prover::spec::JobSpec;

/// The job spec every sample log runs.
pub const SAMPLE_SPEC: &str = include_str!("../../jobs/tiny-test.toml");

/// Errors of building a sample log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    #[error("building an entry: {0}")]
    Entry(#[from] EntryError),
    #[error("{0}")]
    Other(String),
    #[error("writing the tiles: {0}")]
    Io(#[from] std::io::Error),
}

fn other(e: impl std::fmt::Display) -> SampleError {
    SampleError::Other(e.to_string())
}

/// A sample job: its log key, participants and spec.
pub struct SampleJob {
    /// The log's checkpoint signer.
    pub signer: NoteSigner,
    /// Worker keys.
    pub workers: Vec<SigningKey>,
    /// The verifier's key.
    pub verifier: SigningKey,
    /// The referee's key: the first verifier to join, as a coordinator's referee
    /// does; it settles the tasks the beacon marks for a double check.
    pub referee: SigningKey,
    spec: JobSpec,
}

impl SampleJob {
    /// A job logged as `origin` with `workers` workers (at least one).
    pub fn new(origin: &str, workers: usize) -> Result<SampleJob, SampleError> {
        Ok(SampleJob {
            signer: NoteSigner::from_secret(origin, [0x5a; 32]).map_err(other)?,
            workers: (0..workers.max(1))
                .map(|w| {
                    let mut seed = [0x11; 32];
                    seed[..8].copy_from_slice(&(w as u64).to_le_bytes());
                    SigningKey::from_bytes(&seed)
                })
                .collect(),
            verifier: SigningKey::from_bytes(&[0xee; 32]),
            referee: SigningKey::from_bytes(&[0xef; 32]),
            spec: JobSpec::parse(SAMPLE_SPEC).map_err(other)?,
        })
    }

    /// The log's checkpoint verifier key.
    pub fn vkey(&self) -> String {
        self.signer.verifier_key()
    }

    /// The job spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The secret beacon of `round`.
    pub fn beacon(round: u64) -> [u8; 32] {
        *blake3::hash(format!("sample beacon {round}").as_bytes()).as_bytes()
    }

    /// The blob hash of the delta a sample worker's `task` merged.
    pub fn delta_blob(task: u64) -> Digest {
        Digest::of(format!("sample delta blob {task}").as_bytes())
    }

    /// The trace root a sample worker commits for `task`.
    pub fn trace_root(task: u64) -> Digest {
        Digest::of(format!("sample trace {task}").as_bytes())
    }

    /// The protocol-correct log of `rounds` rounds.
    pub fn entries(&self, rounds: u64) -> Result<Vec<Entry>, SampleError> {
        let mut out = Vec::new();
        let mut fold = SharesFold::new();
        let push = |out: &mut Vec<Entry>, e: Entry| -> Result<(), SampleError> {
            out.push(e);
            Ok(())
        };
        let verifier = PublicKey::from(&self.verifier);
        push(
            &mut out,
            Entry::unsigned(EntryBody::Genesis {
                job_spec: SAMPLE_SPEC.to_owned(),
                job_hash: self.spec.hash(),
                dataset_root: Digest::of(b"sample dataset"),
                log_key: PublicKey::from(self.signer.verifier().public_key()),
                coordinator_note_key: self.vkey(),
                created_ms: 1_780_000_000_000,
            })?,
        )?;
        let body = EntryBody::ParticipantJoined {
            key: PublicKey::from(&self.referee),
            role: Role::Verifier,
            name: "coordinator-referee".into(),
        };
        push(&mut out, Entry::signed(body, &self.referee)?)?;
        for (i, key) in self.workers.iter().enumerate() {
            let body = EntryBody::ParticipantJoined {
                key: PublicKey::from(key),
                role: Role::Worker,
                name: format!("worker {i}"),
            };
            push(&mut out, Entry::signed(body, key)?)?;
        }
        let body = EntryBody::ParticipantJoined {
            key: verifier,
            role: Role::Verifier,
            name: "verifier".into(),
        };
        push(&mut out, Entry::signed(body, &self.verifier)?)?;

        let (h, m, batch) = (
            self.spec.inner.steps,
            self.spec.verify.challenges,
            self.spec.inner.batch_size,
        );
        let per_step = u64::from(batch) * self.spec.model.flops_per_sample();
        let nworkers = self.workers.len() as u64;
        for r in 0..rounds {
            let round = Round(r);
            let beacon = Self::beacon(r);
            let commitment = beacon_commitment(&beacon);
            push(
                &mut out,
                Entry::unsigned(EntryBody::RoundOpened {
                    round,
                    base_model: Digest::of(format!("model {r}").as_bytes()),
                    beacon_commitment: commitment,
                    inner_steps: h,
                    deadline_ms: 1_780_000_000_000 + r * 60_000,
                })?,
            )?;
            for (w, key) in self.workers.iter().enumerate() {
                let task = TaskId(r * nworkers + w as u64);
                let worker = PublicKey::from(key);
                let trace_root = Self::trace_root(task.0);
                let steps = challenge_steps(&beacon, &trace_root, h, m).map_err(other)?;
                let seed = derive_task_seed(task.0, &worker.0, &commitment);
                push(
                    &mut out,
                    Entry::unsigned(EntryBody::TaskAssigned {
                        task,
                        round,
                        worker,
                        seed: Digest(seed),
                        inner_steps: h,
                        batch_size: batch,
                    })?,
                )?;
                let body = EntryBody::WorkCommitted {
                    task,
                    worker,
                    trace_root,
                    final_state: Digest::of(format!("state {}", task.0).as_bytes()),
                    delta: Digest::of(format!("delta {}", task.0).as_bytes()),
                };
                push(&mut out, Entry::signed(body, key)?)?;
                push(
                    &mut out,
                    Entry::unsigned(EntryBody::ChallengeIssued {
                        task,
                        verifier,
                        steps: steps.clone(),
                    })?,
                )?;
                push(
                    &mut out,
                    Entry::unsigned(EntryBody::TaskOpened {
                        task,
                        worker,
                        opening: Digest::of(format!("opening {}", task.0).as_bytes()),
                    })?,
                )?;
                let body = EntryBody::Verdict {
                    task,
                    verifier,
                    accepted: true,
                    steps: steps.clone(),
                    reason: "every challenged step matches".into(),
                    evidence: None,
                };
                push(&mut out, Entry::signed(body, &self.verifier)?)?;
                // A task the beacon marks for a second look, with no second verifier
                // in the job, goes to the referee (as the coordinator sends it).
                if double_checked(&beacon, &trace_root, self.spec.verify.double_check_fraction) {
                    let body = EntryBody::Verdict {
                        task,
                        verifier: PublicKey::from(&self.referee),
                        accepted: true,
                        steps: steps.clone(),
                        reason: "referee replay: every challenged step matches".into(),
                        evidence: None,
                    };
                    push(&mut out, Entry::signed(body, &self.referee)?)?;
                }
                push(
                    &mut out,
                    Entry::unsigned(EntryBody::Credit {
                        round,
                        key: worker,
                        amount: Amount(self.spec.task_flops()),
                        task,
                        kind: CreditKind::Work,
                    })?,
                )?;
                push(
                    &mut out,
                    Entry::unsigned(EntryBody::Credit {
                        round,
                        key: verifier,
                        amount: Amount(steps.len() as u64 * per_step),
                        task,
                        kind: CreditKind::Verification,
                    })?,
                )?;
            }
            push(
                &mut out,
                Entry::unsigned(EntryBody::RoundClosed {
                    round,
                    beacon: Digest(beacon),
                    new_model: Digest::of(format!("model {}", r + 1).as_bytes()),
                    val_loss_bits: 2.5f32.to_bits(),
                    accepted_tasks: nworkers as u32,
                    val_windows: 16,
                    momentum: None,
                    merged: (0..nworkers)
                        .map(|w| Self::delta_blob(r * nworkers + w))
                        .collect(),
                })?,
            )?;
            // The epoch commits the balances of every entry so far.
            for (i, e) in out.iter().enumerate().skip(fold.next_index() as usize) {
                fold.apply(i as u64, e).map_err(other)?;
            }
            let epoch = fold.expected_epoch(Epoch(r + 1), round).map_err(other)?;
            push(&mut out, Entry::unsigned(epoch)?)?;
        }
        Ok(out)
    }
}

/// Writes `entries` as a static `tlog-tiles` tree in `dir` (checkpoint signed by
/// `signer`, every tile and entry bundle, and `log.vkey`), building the tree in
/// memory. Returns the signed checkpoint.
pub fn write_static(
    dir: &Path,
    entries: &[Vec<u8>],
    signer: &NoteSigner,
) -> Result<String, SampleError> {
    let mut tree = MemoryTree::new();
    for e in entries {
        tree.append_entry(e);
    }
    let checkpoint = Checkpoint {
        origin: signer.name().to_owned(),
        size: tree.size(),
        root: tree.root(),
        extensions: Vec::new(),
    };
    let note = sign_checkpoint(&checkpoint, signer).map_err(other)?;
    std::fs::create_dir_all(dir)?;
    write(&dir.join("checkpoint"), note.as_bytes())?;
    write(
        &dir.join("log.vkey"),
        format!("{}\n", signer.verifier_key()).as_bytes(),
    )?;
    for tile in tiles_for_size(tree.size()) {
        write(
            &dir.join(tile.path()),
            &tile_data(&tile, &tree).map_err(other)?,
        )?;
        if tile.level == 0 {
            let bundle = EntryBundle::new(tile.index, tile.width).map_err(other)?;
            let start = bundle.first_entry() as usize;
            let end = start + usize::from(tile.width);
            let part: Vec<&[u8]> = entries
                .get(start..end)
                .ok_or_else(|| other("entry range"))?
                .iter()
                .map(Vec::as_slice)
                .collect();
            write(
                &dir.join(bundle.path()),
                &encode_entry_bundle(&part).map_err(other)?,
            )?;
        }
    }
    Ok(note)
}

fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, data)
}
