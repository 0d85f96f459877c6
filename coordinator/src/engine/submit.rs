//! Submissions and openings: a worker commits its trace and delta, then opens the
//! challenged steps.

use super::*;

/// A checked submission, ready for the log: its `WorkCommitted` entry and what the
/// live task keeps of it (the delta blob is durable already).
pub(super) struct Commit {
    worker: PublicKey,
    task: TaskId,
    entry: Entry,
    class: DeviceClass,
    delta_blob: Digest,
    trace_root: Digest,
}

/// The metadata row that records a task's delta blob and device class for a restart:
/// written in the same transaction as the task's `WorkCommitted`.
fn delta_meta(task: TaskId, blob: Digest, class: DeviceClass) -> Meta {
    let mut value = blob.0.to_vec();
    value.push(class_byte(class));
    (meta_key("delta", task.0), value)
}

impl Coordinator {
    /// Checks that `worker` may submit `task`; returns the round's base model.
    pub(super) async fn check_submittable(
        &self,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<Arc<Vec<Tensor>>, Error> {
        let guard = self.lock_synced().await?;
        self.check_submittable_in(&guard, worker, task)?;
        Ok(Arc::clone(&guard.model))
    }

    pub(super) fn check_submittable_in(
        &self,
        inner: &Inner,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<(), Error> {
        rules::require_role(&inner.state, worker, Role::Worker)?;
        let (t, _) = rules::worker_task(&inner.state, &inner.live, worker, task)?;
        if t.committed.is_some() {
            return Err(Error::Conflict(format!(
                "task {task} already has committed work"
            )));
        }
        Ok(())
    }

    /// `POST /v1/tasks/<id>/submit`.
    pub async fn submit(
        &self,
        worker: PublicKey,
        task: TaskId,
        sub: api::Submission,
    ) -> Result<api::SubmissionReceipt, Error> {
        // The state checks run under the lock, the pure checks and the durable blob
        // writes without it (so submissions do not queue behind each other's fsyncs),
        // and the state is checked again under the lock before the append.
        let base = self.check_submittable(&worker, task).await?;
        let shapes: Vec<Vec<usize>> = self
            .job
            .model
            .param_shapes()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let checked = check_submission(&sub, task, &worker, &shapes, self.job.inner.steps)?;
        check_delta_bound(&self.job, &base, &checked.delta)?;
        let trace_root = checked.commitment.trace_root;
        let class = checked.class;
        let entry = checked.entry;
        let blob = self.put_blob(sub.delta.0.clone()).await?;
        let mut guard = self.lock_synced().await?;
        let commit = Commit {
            worker,
            task,
            entry,
            class,
            delta_blob: blob,
            trace_root,
        };
        let receipt = self.submit_in(&mut guard, commit).await?;
        let receipt = self.release(guard, receipt).await?;
        failpoints::hit(failpoints::SUBMIT_AFTER_APPEND);
        self.metrics.submissions.inc();
        Ok(receipt)
    }

    /// The locked part of a submission: the commitment into the log, the challenge.
    pub(super) async fn submit_in(
        &self,
        inner: &mut Inner,
        commit: Commit,
    ) -> Result<api::SubmissionReceipt, Error> {
        let Commit {
            worker,
            task,
            entry,
            class,
            delta_blob,
            trace_root,
        } = commit;
        self.check_submittable_in(inner, &worker, task)?;
        let meta = vec![delta_meta(task, delta_blob, class)];
        let index = self
            .sequence_with_meta(inner, std::slice::from_ref(&entry), meta)
            .await?;
        let receipt = self.receipt(index, &entry)?;
        let beacon = inner
            .beacon
            .map(|b| b.1)
            .ok_or_else(|| Error::Internal("no beacon for the open round".into()))?;
        let steps = self.challenge_for(&beacon, &trace_root)?;
        let needed = 1 + usize::from(double_checked(
            &beacon,
            &trace_root,
            self.job.verify.double_check_fraction,
        ));
        let live = inner
            .live
            .get_mut(&task)
            .ok_or_else(|| Error::Internal("live task vanished".into()))?;
        live.steps = Some(steps.clone());
        live.needed = needed;
        live.class = Some(class);
        live.delta_blob = Some(delta_blob);
        // The opening is due within a task timeout of the commitment.
        live.deadline_ms = self.now_ms() + self.config.task_timeout.as_millis() as u64;
        Ok(api::SubmissionReceipt {
            task_id: task,
            entry_index: index,
            receipt,
            challenge: Challenge {
                task_id: task,
                steps,
                tolerant: class == DeviceClass::Tolerant,
            },
        })
    }

    /// `POST /v1/tasks/<id>/opening`, with the opening's canonical binary encoding
    /// ([`Opening::to_bytes`]) as `body`, streamed to a temporary file of the blob
    /// store ([`crate::signed::SignedUpload`]).
    pub async fn opening(
        &self,
        worker: PublicKey,
        task: TaskId,
        body: Uploaded,
    ) -> Result<api::OpeningReceipt, Error> {
        // The state is checked under the lock first, so only the task's own worker
        // gets its bytes decoded; read back and decoded once on a blocking thread, and
        // the file renamed into the store without the lock. The bytes stored are the
        // bytes posted: decoding accepts the canonical encoding only, so they name one
        // opening.
        let (steps, trace_root) = {
            let guard = self.lock_synced().await?;
            let inner = &*guard;
            rules::require_role(&inner.state, &worker, Role::Worker)?;
            let (t, live) = rules::worker_task(&inner.state, &inner.live, &worker, task)?;
            let Some(committed) = t.committed else {
                return Err(Error::Conflict(format!(
                    "task {task} has no committed work yet: submit first"
                )));
            };
            if let Some(b) = live.opening_blob {
                return Ok(api::OpeningReceipt {
                    task_id: task,
                    opening_blob: b,
                    entry_index: None,
                    receipt: String::new(),
                });
            }
            (live.steps.clone().unwrap_or_default(), committed.trace_root)
        };
        let blobs = self.blobs.clone();
        let job = Arc::clone(&self.job);
        let blob = tokio::task::spawn_blocking(move || {
            let bytes = body
                .read()
                .map_err(|e| internal(format!("reading an upload back: {e}")))?;
            let opening = decode_opening(&bytes)?;
            check_opening(&opening, &steps)?;
            check_recomputed(&job, &opening, &worker, &trace_root)?;
            drop((opening, bytes));
            blobs.adopt(body).map_err(blob_error)
        })
        .await
        .map_err(internal)??;
        // Logged as `TaskOpened`, with the blob's metadata row in the same group
        // commit; the receipt waits for it to be durable (in `release`).
        let mut guard = self.lock_synced().await?;
        let (_, live) = rules::worker_task(&guard.state, &guard.live, &worker, task)?;
        if let Some(b) = live.opening_blob {
            // A concurrent upload of the same task got there first.
            let receipt = api::OpeningReceipt {
                task_id: task,
                opening_blob: b,
                entry_index: None,
                receipt: String::new(),
            };
            return self.release(guard, receipt).await;
        }
        let entry = Entry::unsigned(EntryBody::TaskOpened {
            task,
            worker,
            opening: blob,
        })
        .map_err(internal)?;
        let index = self
            .sequence_with_meta(
                &mut guard,
                std::slice::from_ref(&entry),
                vec![(meta_key("opening", task.0), blob.0.to_vec())],
            )
            .await?;
        let receipt = self.receipt(index, &entry)?;
        if let Some(l) = guard.live.get_mut(&task) {
            l.opening_blob = Some(blob);
        }
        let receipt = api::OpeningReceipt {
            task_id: task,
            opening_blob: blob,
            entry_index: Some(index),
            receipt,
        };
        self.release(guard, receipt).await
    }

    pub(super) fn commitment_of(t: &TaskRecord) -> Option<Commitment> {
        t.committed.map(|c| Commitment {
            trace_root: c.trace_root,
            final_state_hash: c.final_state,
            delta_hash: c.delta,
        })
    }

    pub(super) async fn load_opening(&self, blob: Digest) -> Result<Opening, Error> {
        let bytes = self.blob_bytes(blob, "opening").await?;
        tokio::task::spawn_blocking(move || Opening::from_bytes(&bytes))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// Writes a blob (and fsyncs it) on a blocking thread: on the async threads an
    /// fsync would stall every request those threads serve.
    pub(super) async fn put_blob(&self, bytes: Vec<u8>) -> Result<Digest, Error> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.put(&bytes))
            .await
            .map_err(internal)?
            .map_err(blob_error)
    }

    /// `GET /v1/blobs/<hash>`: a blob, read on a blocking thread; `None` if the store
    /// has none under `hash`.
    pub async fn blob(&self, hash: Digest) -> Result<Option<Vec<u8>>, Error> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.get(&hash))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// Reads a blob the state names (`what` says which, for the error) on a blocking
    /// thread.
    pub(super) async fn blob_bytes(&self, blob: Digest, what: &str) -> Result<Vec<u8>, Error> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.get(&blob))
            .await
            .map_err(internal)?
            .map_err(internal)?
            .ok_or_else(|| Error::Internal(format!("{what} blob {blob} is missing")))
    }
}
