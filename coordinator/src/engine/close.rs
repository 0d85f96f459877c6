//! The round close: expiry on the ticker, the snapshot under the lock, the merge and
//! the validation loss off it, and the close's one group of entries.

use super::*;

impl Coordinator {
    /// Expires overdue tasks and claims and closes the round when it is done. Called
    /// by the server's ticker, and at once when [`Coordinator::close_wanted`] fires.
    pub async fn tick(&self) -> Result<(), Error> {
        // Under the lock: expiry, and what the verdicts settle by themselves.
        let for_referee = {
            let mut guard = self.lock_synced().await?;
            let listed = self.tick_locked(&mut guard).await;
            // What was sequenced before an error is still awaited.
            let listed = self.release(guard, listed).await?;
            listed?
        };
        // Without it: the referee's replays.
        if !for_referee.is_empty() {
            self.referee_off_lock(for_referee).await?;
        }
        // Under it again: the close, if one is due. A task that began waiting for the
        // referee since the first step is judged here, holding the lock (rare).
        let snapshot = {
            let mut guard = self.lock_synced().await?;
            let inner = &mut *guard;
            let snapshot = if self.close_due(inner).is_some() {
                match self.settle_waiting(inner).await {
                    Ok(()) => self.close_snapshot(inner),
                    Err(e) => Err(e),
                }
            } else {
                Ok(None)
            };
            let snapshot = self.release(guard, snapshot).await?;
            snapshot?
        };
        match snapshot {
            Some(s) => self.close_round(s).await,
            None => Ok(()),
        }
    }

    /// Resolves when a request handler found the open round due to close, so the
    /// ticker closes it now rather than at its next tick.
    pub async fn close_wanted(&self) {
        self.close_wanted.notified().await;
    }

    /// The ticker's locked part: expires overdue tasks and claims, settles what the
    /// verdicts settle, and lists the tasks the referee must judge (disputes, a
    /// second verifier overdue, and, when the round is due to close, every task still
    /// waiting for a verdict).
    pub(super) async fn tick_locked(&self, inner: &mut Inner) -> Result<Vec<TaskId>, Error> {
        let now = self.now_ms();
        for id in rules::expire(&mut inner.live, now) {
            self.metrics.tasks_expired.inc();
            tracing::info!(task = %id, "task expired; its slot is handed out again");
        }
        // Tasks that only the referee can settle (one verifier around, double check).
        let pending: Vec<TaskId> = inner
            .live
            .iter()
            .filter(|(_, l)| l.outcome.is_none() && l.opening_blob.is_some())
            .map(|(id, _)| *id)
            .collect();
        let timeout = self.config.verify_timeout.as_millis() as u64;
        let mut for_referee = Vec::new();
        for id in pending {
            let has_verdicts = inner
                .state
                .tasks
                .get(&id)
                .is_some_and(|t| !t.verdicts.is_empty());
            if !has_verdicts {
                continue;
            }
            let settled = self.settle(inner, id).await?;
            let overdue = inner.live.get(&id).is_some_and(|l| {
                l.outcome.is_none() && l.waiting_since.is_some_and(|w| now > w + timeout)
            });
            if settled == Settle::Referee {
                for_referee.push(id);
            } else if settled == Settle::Wait && overdue {
                tracing::info!(task = %id, "no second verifier in time: the referee replays");
                for_referee.push(id);
            }
        }
        // Before a close, the referee settles every task still waiting for a verdict.
        if self.close_due(inner).is_some() {
            for (id, l) in awaiting_outcome(inner) {
                if l.opening_blob.is_some() && !for_referee.contains(&id) {
                    for_referee.push(id);
                }
            }
        }
        Ok(for_referee)
    }

    /// Before a close: a task waiting for its second verdict is settled by the referee
    /// now, so a verifier that passed a cheat does not escape because the round filled.
    pub(super) async fn settle_waiting(&self, inner: &mut Inner) -> Result<(), Error> {
        let waiting: Vec<TaskId> = awaiting_outcome(inner)
            .filter(|(_, l)| l.opening_blob.is_some())
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            if let (Some(l), Some(t)) = (
                inner.live.get(&id).cloned(),
                inner.state.tasks.get(&id).cloned(),
            ) {
                self.referee(inner, &t, &l).await?;
            }
        }
        Ok(())
    }

    /// The open round, if it should close now: its target of accepted tasks is met
    /// or its deadline passed, and no close of it is running.
    pub(super) fn close_due(&self, inner: &Inner) -> Option<Round> {
        rules::close_due(
            &inner.state,
            &inner.live,
            inner.closing.is_some(),
            self.config.tasks_per_round,
            self.now_ms(),
        )
    }

    /// Deletes the openings the retention lets go once round `closed` has closed:
    /// those of round `closed - keep` that no ruling judged (`--keep-openings`). The
    /// deletions are noted in the store's metadata (`pruned/<hash>`), so
    /// `/v1/blobs/<hash>` says why the blob is gone. A failure is logged: the next
    /// close does not retry it, and the opening merely stays.
    pub(super) async fn prune_openings(&self, closed: Round) {
        let Some(keep) = self.config.keep_openings else {
            return;
        };
        let Some(round) = closed.0.checked_sub(keep).filter(|r| *r > 0).map(Round) else {
            return;
        };
        let tasks = match self.lock_for_read().await {
            Ok(inner) => inner.state.prunable_tasks(round),
            Err(_) => return,
        };
        let mut pruned = 0usize;
        for task in tasks {
            let Ok(Some(m)) = self.task_meta_blob("opening", task).await else {
                continue;
            };
            let Ok(hash) = <[u8; 32]>::try_from(m.as_slice()).map(Digest) else {
                continue;
            };
            let note = self
                .store
                .put_meta(&format!("pruned/{hash}"), &round.0.to_be_bytes())
                .await;
            let blobs = self.blobs.clone();
            let removed = tokio::task::spawn_blocking(move || blobs.remove(&hash)).await;
            match (note, removed) {
                (Ok(()), Ok(Ok(true))) => pruned += 1,
                (Ok(()), Ok(Ok(false))) => {}
                (note, removed) => {
                    tracing::warn!(task = %task, ?note, ?removed, "pruning an opening failed; it stays");
                }
            }
        }
        if pruned > 0 {
            tracing::info!(
                round = round.0,
                pruned,
                keep,
                "openings past their retention deleted"
            );
        }
    }

    /// Why a blob is not served, if the retention deleted it.
    pub async fn pruned_blob(&self, hash: Digest) -> Option<String> {
        let m = self
            .store
            .get_meta(&format!("pruned/{hash}"))
            .await
            .ok()??;
        let round = u64::from_be_bytes(m.as_slice().try_into().ok()?);
        Some(format!(
            "blob {hash} was the opening of an unruled task of round {round}, deleted by this coordinator's retention: it keeps openings for {} rounds after their round closes (--keep-openings), and the evidence of every rejection and slash for good",
            self.config.keep_openings.unwrap_or(0)
        ))
    }

    /// The mean loss of `params` on `n` windows of the validation split.
    pub fn validation_loss(
        job: &JobSpec,
        corpus: &Corpus,
        params: &[Tensor],
        n: usize,
    ) -> Result<f32, String> {
        let sampler = job_sampler(job, corpus).map_err(|e| e.to_string())?;
        let windows = sampler.validation(n.max(1));
        validation_loss(&job.model, params, &windows).map_err(|e| e.to_string())
    }

    /// Starts a close when one is due: fixes what it merges and credits, and marks the
    /// round as closing (no task is handed out until the next round opens).
    pub(super) fn close_snapshot(&self, inner: &mut Inner) -> Result<Option<CloseSnapshot>, Error> {
        let Some(round) = self.close_due(inner) else {
            return Ok(None);
        };
        let beacon = match inner.beacon {
            Some((r, b)) if r == round => b,
            _ => {
                return Err(Error::Internal("closing a round without its beacon".into()));
            }
        };
        // Credits: the verified work, and the verifiers who judged it rightly.
        let per_step = u64::from(self.job.inner.batch_size) * self.job.model.flops_per_sample();
        let rules::ClosePlan {
            deltas,
            merged_workers,
            credits,
        } = rules::close_plan(
            &inner.state,
            &inner.live,
            round,
            &self.referee_key(),
            self.job.task_flops(),
            per_step,
        )?;
        inner.closing = Some(round);
        Ok(Some(CloseSnapshot {
            round,
            generation: inner.generation,
            beacon,
            deltas,
            merged_workers,
            credits,
            params: Arc::clone(&inner.model),
            momentum: inner.momentum.clone(),
        }))
    }

    /// Closes a round in two steps so that requests never wait on the expensive part:
    /// [`Coordinator::compute_close`] merges, steps and evaluates from the snapshot
    /// without the lock; [`Coordinator::commit_close`] then takes the lock to append
    /// the close as one atomic group and swap the model in. If either fails the round
    /// stays open and unchanged, and the next tick closes it from a fresh snapshot. A
    /// crash in between is the same: nothing of the close is in the log, so the
    /// restarted coordinator closes the round again from the same inputs.
    ///
    /// Verdicts that arrived while the close computed are settled first (a lying
    /// verifier must not escape through that window); if that slashes a worker whose
    /// delta the close merged, the close is computed again without it.
    pub(super) async fn close_round(&self, s: CloseSnapshot) -> Result<(), Error> {
        let computed = self.compute_close(&s).await;
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        // Not `lock_synced`: whatever happens, this close ends here and unmarks the
        // round. A rebuild keeps the mark and changes the generation.
        if let Err(e) = self.catch_up_with_store(inner).await {
            self.note_store_failure();
            inner.closing = None;
            return Err(e);
        }
        let result = match computed {
            Ok(_) if inner.generation != s.generation => Err(Error::Busy(format!(
                "the state was rebuilt from the log while the close of round {} computed; closing again",
                s.round.0
            ))),
            Ok(c) => match self.settle_waiting(inner).await {
                Ok(())
                    if s.merged_workers
                        .iter()
                        .any(|w| inner.state.slashed.contains(w)) =>
                {
                    Err(Error::Busy(format!(
                        "a worker merged by the close of round {} was slashed while it computed; closing again without it",
                        s.round.0
                    )))
                }
                Ok(()) => self.commit_close(inner, &s, c).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            inner.closing = None;
        }
        let result = self.release(guard, ()).await.and(result);
        if result.is_ok() {
            failpoints::hit(failpoints::CLOSE_AFTER_CREDITS);
            // The close is durable: what the retention lets go can go, off the lock.
            self.prune_openings(s.round).await;
        }
        result
    }

    /// The lock-free part of a close: reads the verified deltas, merges them
    /// (weighted mean, norm clip), takes the outer Nesterov step, evaluates the
    /// validation loss, and makes the new model, the momentum and the next round's
    /// beacon durable (blobs and metadata that no entry names yet).
    pub(super) async fn compute_close(&self, s: &CloseSnapshot) -> Result<CloseOutcome, Error> {
        let job = Arc::clone(&self.job);
        let corpus = Arc::clone(&self.corpus);
        let blobs = self.blobs.clone();
        let params = Arc::clone(&s.params);
        let mut momentum = s.momentum.clone();
        let delta_blobs = s.deltas.clone();
        let val_windows = self.config.val_windows;
        let (new_params, momentum, val_loss, new_model, momentum_blob) =
            background::run("lupus-close", move || {
                let mut deltas = Vec::with_capacity(delta_blobs.len());
                for blob in &delta_blobs {
                    let bytes = blobs
                        .get(blob)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("delta blob {blob} is missing"))?;
                    let q = QuantDelta::from_bytes(&bytes).map_err(|e| e.to_string())?;
                    deltas.push((q.dequantise().map_err(|e| e.to_string())?, 1.0f32));
                }
                let new_params = if deltas.is_empty() {
                    params.to_vec()
                } else {
                    let mean =
                        merge_deltas(&deltas, job.outer.clip_norm).map_err(|e| e.to_string())?;
                    outer_step(&params, &mut momentum, &mean, &job.outer.nesterov())
                        .map_err(|e| e.to_string())?
                };
                let loss = Self::validation_loss(&job, &corpus, &new_params, val_windows)?;
                failpoints::hit(failpoints::CLOSE_AFTER_MERGE);
                let new_model = blobs
                    .put(&encode_model(&new_params))
                    .map_err(|e| e.to_string())?;
                failpoints::hit(failpoints::CLOSE_AFTER_MODEL_BLOB);
                let momentum_blob = if momentum.is_empty() {
                    None
                } else {
                    Some(
                        blobs
                            .put(&encode_model(&momentum))
                            .map_err(|e| e.to_string())?,
                    )
                };
                Ok::<_, String>((new_params, momentum, loss, new_model, momentum_blob))
            })
            .await?
            .map_err(Error::Internal)?;
        if let Some(m) = momentum_blob {
            self.store
                .put_meta(&meta_key("momentum", s.round.0), &m.0)
                .await
                .map_err(store_error)?;
        }
        let next = s.round.0 + 1;
        let next = if self.config.max_rounds.is_some_and(|max| next > max) {
            None
        } else {
            Some((Round(next), self.new_beacon(next).await?))
        };
        Ok(CloseOutcome {
            new_params,
            momentum,
            val_loss,
            new_model,
            momentum_blob,
            next,
        })
    }

    /// The locked part of a close: the credits, `RoundClosed`, the `SharesEpoch` and
    /// the next `RoundOpened` go to the log as ONE group ([`Log::append_group`]: all
    /// durable or none), then into the state, then the model is swapped. One fsync.
    pub(super) async fn commit_close(
        &self,
        inner: &mut Inner,
        s: &CloseSnapshot,
        c: CloseOutcome,
    ) -> Result<(), Error> {
        let round = s.round;
        let mut entries = Vec::new();
        for (key, amount, task, kind) in &s.credits {
            let done = inner
                .state
                .tasks
                .get(task)
                .is_some_and(|t| t.credited.contains(&(*key, CreditKindKey::from(*kind))));
            // A key slashed while the close computed earns nothing.
            if done || inner.state.shares().is_slashed(key) || *amount == 0 {
                continue;
            }
            entries.push(
                Entry::unsigned(EntryBody::Credit {
                    round,
                    key: *key,
                    amount: Amount(*amount),
                    task: *task,
                    kind: *kind,
                })
                .map_err(internal)?,
            );
        }
        // Every committed task not credited and not convicted ends in the log, with
        // why (the protocol refuses a close that drops one silently).
        let credited_now: std::collections::BTreeSet<TaskId> = entries
            .iter()
            .filter_map(|e| match e.body() {
                EntryBody::Credit {
                    task,
                    kind: CreditKind::Work,
                    ..
                } => Some(*task),
                _ => None,
            })
            .collect();
        for body in rules::endings(&inner.state, round, &credited_now) {
            entries.push(Entry::unsigned(body).map_err(internal)?);
        }
        entries.push(
            Entry::unsigned(EntryBody::RoundClosed {
                round,
                beacon: Digest(s.beacon),
                new_model: c.new_model,
                val_loss_bits: c.val_loss.to_bits(),
                accepted_tasks: s.deltas.len() as u32,
                val_windows: self.config.val_windows as u32,
                momentum: c.momentum_blob,
                merged: s.deltas.clone(),
            })
            .map_err(internal)?,
        );
        // The epoch commits the balances after this close: fold the group so far into
        // a copy of the shares to compute it before anything is written.
        let mut shares = inner.state.shares().clone();
        for (i, e) in (inner.state.size..).zip(&entries) {
            shares.apply(i, e).map_err(internal)?;
        }
        let epoch = shares
            .expected_epoch(Epoch(inner.state.epochs + 1), round)
            .map_err(internal)?;
        entries.push(Entry::unsigned(epoch).map_err(internal)?);
        if let Some((next, beacon)) = &c.next {
            entries.push(
                Entry::unsigned(EntryBody::RoundOpened {
                    round: *next,
                    base_model: c.new_model,
                    beacon_commitment: beacon_commitment(beacon),
                    inner_steps: self.job.inner.steps,
                    deadline_ms: self.now_ms() + self.config.round_timeout.as_millis() as u64,
                })
                .map_err(internal)?,
            );
        }
        // One group: one batch, all durable or none; `close_round` awaits it.
        self.sequence(inner, &entries).await?;
        inner.model = Arc::new(c.new_params);
        inner.momentum = c.momentum;
        // After the last round the tasks' live facts stay: `GET /v1/tasks/<id>` still
        // names their openings, which auditors replay.
        if c.next.is_some() {
            inner.live.clear();
        }
        inner.beacon = c.next;
        inner.closing = None;
        self.metrics.rounds_closed.inc();
        tracing::info!(round = round.0, accepted = s.deltas.len(), val_loss = c.val_loss, model = %c.new_model, "round closed");
        if let Some((next, _)) = c.next {
            tracing::info!(round = next.0, model = %c.new_model, "round opened");
        }
        Ok(())
    }

    pub(super) async fn write_epoch(&self, inner: &mut Inner, round: Round) -> Result<(), Error> {
        let body = inner
            .state
            .shares()
            .expected_epoch(Epoch(inner.state.epochs + 1), round)
            .map_err(internal)?;
        self.append_body(inner, body).await?;
        Ok(())
    }
}
