//! Verification and the referee: verifiers claim opened tasks and give verdicts; the
//! referee settles rejections and disagreements and slashes whoever its replay
//! contradicts.

use super::*;

impl Coordinator {
    pub(super) fn challenge_for(
        &self,
        beacon: &[u8; 32],
        trace_root: &Digest,
    ) -> Result<Vec<u32>, Error> {
        challenge_steps(
            beacon,
            trace_root,
            self.job.inner.steps,
            self.job.verify.challenges,
        )
        .map_err(internal)
    }

    /// `POST /v1/verify/next`.
    pub async fn next_verify(&self, verifier: PublicKey) -> Result<VerifyOffer, Error> {
        let mut guard = self.lock_synced().await?;
        let inner = &mut *guard;
        rules::require_role(&inner.state, &verifier, Role::Verifier)?;
        let now = self.now_ms();
        // The open round's secret beacon keys the draw; between rounds nothing is
        // live anyway.
        let secret = inner.beacon.map(|(_, b)| b).unwrap_or_default();
        let pick = rules::pick_for_verifier(
            &inner.state,
            &mut inner.live,
            &mut inner.pool,
            &secret,
            &verifier,
            now,
        );
        let Some((id, fresh)) = pick else {
            let wait = VerifyOffer::Wait {
                retry_after_ms: 250,
                reason: "no opened task waits for a verifier".into(),
            };
            return self.release(guard, wait).await;
        };
        let steps = inner
            .live
            .get(&id)
            .and_then(|l| l.steps.clone())
            .unwrap_or_default();
        let challenge_index = if fresh {
            let body = EntryBody::ChallengeIssued {
                task: id,
                verifier,
                steps: steps.clone(),
            };
            let index = self.append_body(inner, body).await?;
            if let Some(l) = inner.live.get_mut(&id) {
                l.claims.insert(
                    verifier,
                    now + self.config.verify_timeout.as_millis() as u64,
                );
            }
            index
        } else {
            inner
                .state
                .tasks
                .get(&id)
                .and_then(|t| t.challenges.iter().rev().find(|c| c.0 == verifier))
                .map_or(0, |c| c.2)
        };
        let t = inner
            .state
            .tasks
            .get(&id)
            .ok_or_else(|| Error::Internal("task vanished".into()))?;
        let l = inner
            .live
            .get(&id)
            .ok_or_else(|| Error::Internal("live task vanished".into()))?;
        let task = self.describe(inner, t)?;
        let commitment = Self::commitment_of(t)
            .ok_or_else(|| Error::Internal("opened task without commitment".into()))?;
        let device_class = l.class.unwrap_or(DeviceClass::Exact);
        let opening_blob = l
            .opening_blob
            .ok_or_else(|| Error::Internal("a verifier was given an unopened task".into()))?;
        // The verifier fetches the opening (large, content addressed, immutable) from
        // `/v1/blobs/` by its hash, once the claim is durable.
        let job = api::VerifyJob {
            task,
            commitment,
            steps,
            device_class,
            opening_blob,
            challenge_index,
        };
        self.release(guard, VerifyOffer::Job(job)).await
    }

    /// `POST /v1/verify/<id>/verdict`.
    pub async fn verdict(
        &self,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<api::VerdictReceipt, Error> {
        let mut guard = self.lock_synced().await?;
        let (index, receipt, needs_referee) =
            self.verdict_in(&mut guard, verifier, task, sub).await?;
        if needs_referee {
            // The verdict is durable before the referee's replay, which runs without
            // the lock; the receipt then says what the referee decided.
            self.release(guard, ()).await?;
            if let Err(e) = self.referee_off_lock(vec![task]).await {
                tracing::warn!(task = %task, error = %e, "the referee could not settle the task after a verdict; the ticker retries");
            }
            guard = self.lock_synced().await?;
        }
        let inner = &mut *guard;
        if let Some(l) = inner.live.get_mut(&task)
            && l.outcome.is_none()
            && l.waiting_since.is_none()
        {
            l.waiting_since = Some(self.now_ms());
        }
        let outcome = match inner.live.get(&task).and_then(|l| l.outcome) {
            _ if inner.state.slashed.contains(&verifier) => VerdictOutcome::Overruled,
            Some(true) => VerdictOutcome::Accepted,
            Some(false) => VerdictOutcome::Rejected,
            None => VerdictOutcome::Pending,
        };
        if self.close_due(inner).is_some() {
            self.close_wanted.notify_one();
        }
        let receipt = api::VerdictReceipt {
            task_id: task,
            entry_index: index,
            outcome,
            receipt,
        };
        self.release(guard, receipt).await
    }

    /// The locked part of a verdict: checks and appends it, settles the task if its
    /// verdicts settle it; returns the verdict's index and whether the referee must
    /// judge the task, with the log's signed receipt for the entry.
    pub(super) async fn verdict_in(
        &self,
        inner: &mut Inner,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<(u64, String, bool), Error> {
        rules::require_role(&inner.state, &verifier, Role::Verifier)?;
        let steps = rules::verdict_admissible(&inner.state, &inner.live, &verifier, task)?;
        let entry = check_verdict(&sub, task, &verifier, &steps)?.entry;
        if let Some(p) = &sub.fraud_proof {
            self.blobs
                .put(&serde_json::to_vec(p).map_err(internal)?)
                .map_err(blob_error)?;
        }
        let receipt = entry.clone();
        let index = self.append(inner, entry).await?;
        let receipt = self.receipt(index, &receipt)?;
        self.metrics.verdicts.inc();
        if let Some(l) = inner.live.get_mut(&task) {
            l.claims.remove(&verifier);
        }
        // The verdict is in the log and is answered as such: if settling the task
        // fails now (the database locked, the blob store full), the ticker settles it
        // later; the verifier must not be told to retry a verdict already logged.
        let needs_referee = match self.settle(inner, task).await {
            Ok(s) => s == Settle::Referee,
            Err(e) => {
                tracing::warn!(task = %task, error = %e, "settling the task after a verdict failed; the ticker retries");
                false
            }
        };
        Ok((index, receipt, needs_referee))
    }

    /// Settles a task from its verdicts: unanimous acceptance by enough verifiers
    /// accepts; any rejection, or too few verifiers, calls the referee.
    /// Used where the lock is held anyway (start-up, a close's last stragglers); the
    /// request and ticker paths use [`Self::settle`] and [`Self::referee_off_lock`].
    pub(super) async fn resolve(&self, inner: &mut Inner, task: TaskId) -> Result<(), Error> {
        if self.settle(inner, task).await? != Settle::Referee {
            return Ok(());
        }
        let (Some(t), Some(live)) = (
            inner.state.tasks.get(&task).cloned(),
            inner.live.get(&task).cloned(),
        ) else {
            return Ok(());
        };
        self.referee(inner, &t, &live).await
    }

    /// Settles a task from its verdicts where they decide it, without the referee:
    /// says whether the task is done, waits for another verifier, or needs the
    /// referee.
    pub(super) async fn settle(&self, inner: &mut Inner, task: TaskId) -> Result<Settle, Error> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(Settle::Done);
        };
        let Some(live) = inner.live.get(&task).cloned() else {
            return Ok(Settle::Done);
        };
        if live.outcome.is_some() {
            return Ok(Settle::Done);
        }
        if let Some((_, beacon)) = inner.beacon
            && rules::replay_check_due(&inner.state, &t, &beacon, &self.referee_key())
        {
            return Ok(Settle::Referee);
        }
        if let Some(o) = rules::ledger_outcome(&inner.state, &t, live.needed, &self.referee_key()) {
            self.slash_contradicted(inner, task).await?;
            if let Some(l) = inner.live.get_mut(&task) {
                l.outcome = Some(o);
            }
            return Ok(Settle::Done);
        }
        Ok(rules::after_verdicts(&inner.state, &t, &self.referee_key()))
    }

    /// The coordinator replays the task (or checks the fraud proof) and signs its own
    /// verdict; whoever it contradicts is slashed. Holds the lock throughout: for
    /// start-up and a close's last stragglers; otherwise [`Self::referee_off_lock`].
    pub(super) async fn referee(
        &self,
        inner: &mut Inner,
        t: &TaskRecord,
        live: &Live,
    ) -> Result<(), Error> {
        let case = self.case(inner, t, live)?;
        let ruling = self.judge(case).await?;
        self.rule(inner, ruling).await
    }

    /// The referee on `tasks`, with the lock held only to take each case and to log
    /// each ruling: the replay (seconds on a real job) runs without it, so requests
    /// go on meanwhile. A task settled while its replay ran keeps its settlement.
    pub(super) async fn referee_off_lock(&self, tasks: Vec<TaskId>) -> Result<(), Error> {
        let cases = {
            let guard = self.lock_synced().await?;
            let mut cases = Vec::new();
            for id in tasks {
                let (Some(t), Some(live)) = (guard.state.tasks.get(&id), guard.live.get(&id))
                else {
                    continue;
                };
                if live.outcome.is_none() && !self.has_ruling(t) {
                    cases.push(self.case(&guard, t, live)?);
                }
            }
            self.release(guard, cases).await?
        };
        for case in cases {
            let ruling = self.judge(case).await?;
            let mut guard = self.lock_synced().await?;
            let ruled = self.rule(&mut guard, ruling).await;
            self.release(guard, ()).await?;
            ruled?;
        }
        Ok(())
    }

    fn has_ruling(&self, t: &TaskRecord) -> bool {
        let referee = self.referee_key();
        t.verdicts.iter().any(|v| v.verifier == referee)
    }

    /// What the referee needs to judge a task, taken under the lock (no I/O).
    fn case(&self, inner: &Inner, t: &TaskRecord, live: &Live) -> Result<Case, Error> {
        Ok(Case {
            task: t.id,
            worker: t.worker,
            steps: live.steps.clone().unwrap_or_default(),
            opening_blob: live.opening_blob.unwrap_or_default(),
            commitment: Self::commitment_of(t)
                .ok_or_else(|| Error::Internal("verdict on uncommitted work".into()))?,
            base: Arc::clone(&inner.model),
            evidence: t
                .verdicts
                .iter()
                .filter(|v| !v.accepted)
                .filter_map(|v| v.evidence)
                .collect(),
            replays: t
                .verdicts
                .iter()
                .filter(|v| v.accepted && v.verifier != self.referee_key())
                .map(|v| (v.verifier, v.evidence))
                .collect(),
            seed: t.seed.0,
            class: live.class.unwrap_or(DeviceClass::Exact),
        })
    }

    /// Judges a case without the lock: the fraud proof a verifier attached, if it
    /// convicts, else a replay of the challenged steps (on a blocking thread).
    async fn judge(&self, case: Case) -> Result<Ruling, Error> {
        let opening_blob = case.opening_blob;
        let opening = self.load_opening(case.opening_blob).await?;
        let mut proof: Option<FraudProof> = None;
        for e in &case.evidence {
            if let Some(bytes) = self.blobs.get(e).map_err(internal)? {
                proof = serde_json::from_slice(&bytes).ok();
            }
        }
        let job = Arc::clone(&self.job);
        let corpus = Arc::clone(&self.corpus);
        let Case {
            task,
            worker,
            steps,
            commitment,
            base,
            seed,
            class,
            replays,
            ..
        } = case;
        let replay_steps = steps.clone();
        let verdict = background::run(
            "lupus-referee",
            move || -> Result<(Verdict, bool, Vec<PublicKey>), String> {
                // An exact-class fraud proof convicts bits; a tolerant-class worker
                // is allowed bits that differ within the job's tolerance, so only the
                // tolerant replay judges its work.
                if let Some(p) = proof.as_ref().filter(|_| class == DeviceClass::Exact) {
                    let ctx = FraudContext {
                        trace_root: commitment.trace_root,
                        steps: job.inner.steps,
                        base_state_hash: base_state_hash(&base),
                        worker: worker.0,
                    };
                    if let Ok(FraudVerdict::Guilty { step, reason, .. }) = p.check(&ctx) {
                        return Ok((
                            Verdict::Reject {
                                step: Some(step),
                                reason: lupus_prover::verify::RejectReason::OpMismatch {
                                    op: p.op(),
                                    output: 0,
                                    kind: reason,
                                },
                                fraud_proof: Some(Box::new(p.clone())),
                            },
                            true,
                            Vec::new(),
                        ));
                    }
                }
                // One replay, and the digest each accepting verifier should have got
                // from it (proof of replay).
                let mut digests: Vec<ReplayDigest> = replays
                    .iter()
                    .map(|(v, _)| ReplayDigest::new(&v.0, task.0))
                    .collect();
                let verdict = verify_opening_digests(
                    &job,
                    &corpus,
                    &base,
                    &seed,
                    &commitment,
                    &worker.0,
                    &replay_steps,
                    &opening,
                    class,
                    &mut digests,
                )
                .map_err(|e| e.to_string())?;
                let lazy = if verdict.is_accept() && job.verify.replay_checks > 0.0 {
                    replays
                        .iter()
                        .zip(&digests)
                        .filter(|((_, said), d)| *said != Some(Digest(d.finish().0)))
                        .map(|((v, _), _)| *v)
                        .collect()
                } else {
                    Vec::new()
                };
                Ok((verdict, false, lazy))
            },
        )
        .await?
        .map_err(Error::Internal)?;
        let (verdict, by_proof, lazy) = verdict;
        Ok(Ruling {
            task,
            steps,
            verdict,
            by_proof,
            opening: opening_blob,
            lazy,
        })
    }

    /// Logs a ruling, under the lock: the referee's signed verdict (durable before
    /// anything else), then the slashes it calls for and the task's outcome. Nothing
    /// if the task was settled, or ruled on, while the case was judged.
    async fn rule(&self, inner: &mut Inner, ruling: Ruling) -> Result<(), Error> {
        let Some(t) = inner.state.tasks.get(&ruling.task) else {
            return Ok(());
        };
        let open = inner
            .live
            .get(&ruling.task)
            .is_some_and(|l| l.outcome.is_none());
        if !open || self.has_ruling(t) {
            return Ok(());
        }
        let Ruling {
            task,
            steps,
            verdict,
            by_proof,
            opening,
            lazy,
        } = ruling;
        let accepted = verdict.is_accept();
        let reason = match &verdict {
            Verdict::Accept => "referee replay: every challenged step matches".to_string(),
            Verdict::Reject { reason, .. } if by_proof => {
                format!("referee: the fraud proof holds: {reason}")
            }
            Verdict::Reject { reason, .. } => format!("referee replay: {reason}"),
        };
        let evidence = match &verdict {
            Verdict::Reject {
                fraud_proof: Some(p),
                ..
            } => {
                let d = api::evidence_digest(p);
                self.blobs
                    .put(&serde_json::to_vec(p).map_err(internal)?)
                    .map_err(blob_error)?;
                Some(d)
            }
            // A replay that rejects without a fraud proof names what it replayed:
            // the opening (its challenged steps are the verdict's).
            Verdict::Reject { .. } => Some(opening),
            // With replay checks on, an acceptance names the opening too: a slash
            // for a wrong replay digest cites it, and an auditor replays it.
            Verdict::Accept if self.job.verify.replay_checks > 0.0 => Some(opening),
            Verdict::Accept => None,
        };
        let body = api::verdict_body(task, self.referee_key(), accepted, steps, &reason, evidence);
        let entry = Entry::signed(body, &self.referee).map_err(internal)?;
        self.append(inner, entry).await?;
        // Disputes are rare: wait for the referee's verdict under the lock, so the
        // verdict a slash follows is durable before the slash is sequenced.
        self.durable_now(inner).await?;
        failpoints::hit(failpoints::REFEREE_AFTER_VERDICT);
        // Proof of replay: a verifier that accepted with a digest that is not the
        // replay's did not replay (or lied about what it got). Only the referee's
        // replay knows this, so a crash between its verdict and these slashes lets
        // this one check go; the key's later acceptances are checked as before.
        for key in lazy {
            if inner.state.slashed.contains(&key) {
                continue;
            }
            let body = EntryBody::Slashed {
                key,
                task,
                reason:
                    "accepted without its replay: the replay digest it signed is not the replay's"
                        .to_string(),
                evidence,
            };
            self.append_body(inner, body).await?;
            self.metrics.slashes.inc();
            tracing::warn!(key = %key, task = %task, "slashed: wrong replay digest");
        }
        self.slash_contradicted(inner, task).await?;
        if let Some(l) = inner.live.get_mut(&task) {
            l.outcome = Some(accepted);
        }
        Ok(())
    }

    /// Slashes whoever the referee's verdict on `task` contradicts (the worker of
    /// rejected work and the verifiers who accepted it, or the verifiers who rejected
    /// work it accepts), skipping keys already slashed. A function of the ledger, so a
    /// crash or a failed append between the referee's verdict and the slashes is
    /// repaired by calling it again (on resume, and whenever the task is settled).
    pub(super) async fn slash_contradicted(
        &self,
        inner: &mut Inner,
        task: TaskId,
    ) -> Result<(), Error> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(());
        };
        let to_slash = rules::contradicted(&inner.state, &t, &self.referee_key());
        for (key, reason, evidence) in to_slash {
            // Appending a slash applies it: a key listed twice is slashed once.
            if inner.state.slashed.contains(&key) {
                continue;
            }
            let body = EntryBody::Slashed {
                key,
                task: t.id,
                reason: reason.chars().take(512).collect(),
                evidence,
            };
            self.append_body(inner, body).await?;
            self.metrics.slashes.inc();
            tracing::warn!(key = %key, task = %t.id, %reason, "slashed");
        }
        // A task settled on a verifier's acceptance that no longer stands (it was
        // slashed just now) is open again: another verifier is drawn for it.
        let reopened: Vec<TaskId> = inner
            .live
            .iter()
            .filter(|(id, l)| {
                let p = &inner.state.protocol;
                // Only tasks the protocol still holds: those of the open round.
                l.outcome == Some(true)
                    && p.task_at_stake(**id).is_some()
                    && !p.finally_accepted(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in reopened {
            if let Some(l) = inner.live.get_mut(&id) {
                l.outcome = None;
                l.waiting_since = None;
            }
        }
        Ok(())
    }
}
