//! Reads: the job, rounds, tasks, stake and checkpoints, each answered once what it
//! shows is durable.

use super::*;

impl Coordinator {
    /// The log (for the read API).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The job.
    pub fn job(&self) -> &JobSpec {
        &self.job
    }

    /// The corpus.
    pub fn corpus(&self) -> &Arc<Corpus> {
        &self.corpus
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The referee's key (a verifier that joins at genesis).
    pub fn referee_key(&self) -> PublicKey {
        PublicKey::from(&self.referee)
    }

    /// The log's verifier key, `<name>+<hexid>+<base64>`.
    pub fn note_key(&self) -> String {
        self.log.verifier().to_string()
    }

    /// Keeps witness `slot`'s latest verified cosignature.
    pub fn record_cosignature(&self, slot: usize, cosigned: crate::witness::Cosigned) {
        if let Ok(mut map) = self.cosignatures.lock() {
            map.insert(slot, cosigned);
        }
    }

    /// The latest signed checkpoint with the witnesses' cosignatures over exactly that
    /// checkpoint appended (`GET /checkpoint`).
    pub fn cosigned_checkpoint(&self) -> String {
        let note = self.log.checkpoint();
        let Ok(text) = parse_note(note.as_bytes()).map(|p| p.text) else {
            return note;
        };
        let Ok(map) = self.cosignatures.lock() else {
            return note;
        };
        map.values()
            .filter(|c| c.text == text)
            .fold(note, |n, c| add_signature(&n, &c.signature).unwrap_or(n))
    }

    /// The checkpoint a stake statement for entry `index` is made against: the
    /// latest one if a witness cosigned it, else the newest one a witness cosigned
    /// that holds the entry (with every cosignature over it), else the latest. A
    /// statement then carries the witnesses' timestamps that date it
    /// (`lupus-audit stake --witness --max-age`).
    fn statement_checkpoint(&self, index: u64) -> String {
        let latest = self.cosigned_checkpoint();
        let cosigned = parse_note(latest.as_bytes()).is_ok_and(|p| p.signatures.len() > 1);
        if cosigned {
            return latest;
        }
        let Ok(map) = self.cosignatures.lock() else {
            return latest;
        };
        let Some(best) = map
            .values()
            .filter(|c| c.size > index)
            .max_by_key(|c| c.size)
        else {
            return latest;
        };
        map.values()
            .filter(|c| c.text == best.text)
            .fold(best.note.clone(), |n, c| {
                add_signature(&n, &c.signature).unwrap_or(n)
            })
    }

    /// `GET /v1/job`.
    pub fn job_info(&self) -> Result<JobInfo, Error> {
        let d = self
            .corpus
            .commitment(self.job.dataset.chunk_size)
            .map_err(internal)?;
        Ok(JobInfo {
            job_spec: self.config.job_spec.clone(),
            job_hash: self.job.hash(),
            dataset_root: d.root,
            dataset_blob: self.dataset_blob,
            dataset_len: d.len,
            log_key: self.note_key(),
            keep_openings: self.config.keep_openings,
        })
    }

    pub(super) fn round_status(&self, inner: &Inner, r: &crate::state::RoundRecord) -> RoundStatus {
        let tasks: Vec<&TaskRecord> = r
            .tasks
            .iter()
            .filter_map(|id| inner.state.tasks.get(id))
            .collect();
        let open = r.closed.is_none();
        let live = |t: &TaskRecord| inner.live.get(&t.id).filter(|_| open);
        let count = |f: &dyn Fn(&TaskRecord) -> bool| tasks.iter().filter(|t| f(t)).count() as u32;
        let (assigned, committed, rejected) = match &r.retired {
            Some(x) => (x.tasks.len() as u32, x.committed, x.rejected),
            None => (
                tasks.len() as u32,
                count(&|t| t.committed.is_some()),
                count(&|t| t.worker_slashed),
            ),
        };
        RoundStatus {
            round: r.round,
            phase: if open {
                RoundPhase::Open
            } else {
                RoundPhase::Closed
            },
            base_model: r.base_model,
            beacon_commitment: r.beacon_commitment,
            deadline_ms: r.deadline_ms,
            target_tasks: self.config.tasks_per_round,
            assigned,
            committed,
            accepted: match r.closed {
                Some(c) => c.accepted,
                None => count(&|t| live(t).is_some_and(|l| l.outcome == Some(true))),
            },
            rejected,
            expired: count(&|t| live(t).is_some_and(|l| l.expired)),
            beacon: r.closed.map(|c| c.beacon),
            new_model: r.closed.map(|c| c.new_model),
            val_loss: r.closed.map(|c| c.val_loss),
        }
    }

    /// `GET /v1/rounds`.
    pub async fn rounds(&self) -> Result<api::RoundList, Error> {
        let inner = self.lock_for_read().await?;
        let list = api::RoundList {
            rounds: inner
                .state
                .rounds
                .values()
                .map(|r| self.round_status(&inner, r))
                .collect(),
            max_rounds: self.config.max_rounds,
        };
        self.release(inner, list).await
    }

    /// `GET /v1/rounds/<n>`; `None` is the latest.
    pub async fn round(&self, round: Option<Round>) -> Result<RoundStatus, Error> {
        let inner = self.lock_for_read().await?;
        let r = match round {
            Some(n) => inner.state.rounds.get(&n),
            None => inner.state.latest_round(),
        }
        .ok_or_else(|| Error::NotFound("no such round".into()))?;
        let status = self.round_status(&inner, r);
        self.release(inner, status).await
    }

    /// `GET /v1/tasks/<id>`. The opening and the device class of a task whose round
    /// is over (the live table forgets them when the next round opens) are read from
    /// the store's metadata, after the lock is let go: an auditor replays tasks of
    /// every round from them (openings are kept for good; DESIGN.md, "Evidence").
    pub async fn task_status(&self, task: TaskId) -> Result<api::TaskStatus, Error> {
        let (mut status, live) = self.task_status_locked(task).await?;
        // A live task's facts are in the live table; only a past one's are read
        // from the store (the page polls its live tasks).
        if live {
            return Ok(status);
        }
        if status.opening_blob.is_none()
            && let Some(m) = self.task_meta_blob("opening", task).await?
            && let Ok(hash) = <[u8; 32]>::try_from(m.as_slice())
        {
            status.opening_blob = Some(Digest(hash));
        }
        if let Some(m) = self.task_meta_blob("delta", task).await? {
            status.tolerant = m.len() == 33 && m[32] == 1;
        }
        Ok(status)
    }

    /// The status as the state and the live table tell it, and whether the task is
    /// in the live table.
    async fn task_status_locked(&self, task: TaskId) -> Result<(api::TaskStatus, bool), Error> {
        let inner = self.lock_for_read().await?;
        let Some(t) = inner.state.tasks.get(&task) else {
            let (round, r) = inner
                .state
                .retired_task(task)
                .ok_or_else(|| Error::NotFound(format!("no task {task}")))?;
            let status = api::TaskStatus {
                task_id: task,
                round,
                worker: r.worker,
                state: match r.outcome {
                    Outcome::Accepted => api::TaskState::Accepted,
                    Outcome::Rejected => api::TaskState::Rejected,
                    Outcome::Expired => api::TaskState::Expired,
                },
                challenge: None,
                verdicts: Vec::new(),
                opening_blob: None,
                tolerant: false,
                retired: true,
            };
            return self.release(inner, (status, false)).await;
        };
        let l = inner.live.get(&task);
        let closed = inner
            .state
            .rounds
            .get(&t.round)
            .is_some_and(|r| r.closed.is_some());
        let credited = t.credited.iter().any(|(_, k)| *k == CreditKindKey::Work);
        let state = if t.worker_slashed {
            api::TaskState::Rejected
        } else if credited || l.is_some_and(|l| l.outcome == Some(true)) {
            api::TaskState::Accepted
        } else if closed || l.is_some_and(|l| l.expired) {
            api::TaskState::Expired
        } else if l.is_some_and(|l| l.opening_blob.is_some()) {
            api::TaskState::Opened
        } else if t.committed.is_some() {
            api::TaskState::Committed
        } else {
            api::TaskState::Assigned
        };
        let challenge = l.and_then(|l| {
            l.steps.clone().map(|steps| Challenge {
                task_id: task,
                steps,
                tolerant: l.class == Some(DeviceClass::Tolerant),
            })
        });
        let status = api::TaskStatus {
            task_id: task,
            round: t.round,
            worker: t.worker,
            state,
            challenge,
            verdicts: t
                .verdicts
                .iter()
                .map(|v| api::VerdictSummary {
                    verifier: v.verifier,
                    accepted: v.accepted,
                    reason: v.reason.clone(),
                    entry_index: v.index,
                })
                .collect(),
            // The `TaskOpened` entry names it even once the live table is gone.
            opening_blob: l.and_then(|l| l.opening_blob).or(t.opened),
            tolerant: l.is_some_and(|l| l.class == Some(DeviceClass::Tolerant)),
            retired: false,
        };
        let live = l.is_some();
        self.release(inner, (status, live)).await
    }

    /// `GET /v1/stake`.
    pub async fn stake_table(&self) -> Result<StakeTable, Error> {
        let inner = self.lock_for_read().await?;
        let s = inner.state.shares();
        let epoch = s.latest_epoch();
        let table = StakeTable {
            epoch: epoch.map(|e| e.epoch.0),
            round: epoch.map(|e| e.round),
            entry_index: epoch.map(|e| e.index),
            total: epoch.map_or(Amount::ZERO, |e| e.tree.root().1),
            accounts: s
                .balances()
                .iter()
                .map(|(k, b)| StakeRow {
                    key: *k,
                    balance: *b,
                })
                .collect(),
            slashed: inner.state.slashed.iter().copied().collect(),
        };
        self.release(inner, table).await
    }

    /// `GET /v1/stake/<key>`: a statement against the latest epoch and checkpoint.
    pub async fn stake_statement(&self, key: PublicKey) -> Result<StakeStatement, Error> {
        let (tree, index) = {
            let inner = self.lock_for_read().await?;
            let e = inner.state.shares().latest_epoch().ok_or_else(|| {
                Error::NotFound("no shares epoch yet: wait for a round to close".into())
            })?;
            let found = (e.tree.clone(), e.index);
            self.release(inner, found).await?
        };
        if tree.balance(&key).is_none() {
            return Err(Error::NotFound(format!(
                "{key} has no balance in the latest epoch"
            )));
        }
        let note = self.statement_checkpoint(index);
        let size = open_checkpoint(&note, self.log.verifier())
            .map_err(internal)?
            .checkpoint
            .size;
        let bytes = self
            .log
            .entries(LeafIndex(index), LeafIndex(index + 1))
            .await
            .map_err(internal)?;
        let entry = Entry::decode(
            bytes
                .first()
                .ok_or_else(|| Error::Internal("epoch entry missing".into()))?,
        )
        .map_err(internal)?;
        let proof = self
            .log
            .inclusion_proof(LeafIndex(index), size)
            .await
            .map_err(internal)?;
        build_statement(&key, &tree, index, &entry, proof, note).map_err(internal)
    }

    /// Current model parameters (the open round's base, or the final model), once
    /// the entries that made it are durable.
    pub async fn model(&self) -> Result<Arc<Vec<Tensor>>, Error> {
        let inner = self.lock_for_read().await?;
        let model = Arc::clone(&inner.model);
        self.release(inner, model).await
    }

    /// Whether every configured round is closed, and its close durable (a close that
    /// is only sequenced may still fail: it does not count). `false` while the store
    /// cannot be read.
    pub async fn finished(&self) -> bool {
        let Ok(inner) = self.lock_for_read().await else {
            return false;
        };
        let done = match self.config.max_rounds {
            Some(max) => inner
                .state
                .rounds
                .get(&Round(max))
                .is_some_and(|r| r.closed.is_some() && r.epoch_written),
            None => false,
        };
        self.release(inner, done).await.unwrap_or(false)
    }
}
