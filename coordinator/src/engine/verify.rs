//! Verification and the referee: verifiers claim opened tasks and give verdicts; the
//! referee settles rejections and disagreements and slashes whoever its replay
//! contradicts.

use super::*;

impl Coordinator {
    /// A task's outcome as the ledger fixes it, if it does.
    pub(super) fn ledger_outcome(
        &self,
        state: &State,
        t: &TaskRecord,
        needed: usize,
    ) -> Option<bool> {
        if t.worker_slashed {
            return Some(false);
        }
        let referee = self.referee_key();
        if let Some(v) = t.verdicts.iter().find(|v| v.verifier == referee) {
            return Some(v.accepted);
        }
        let standing: Vec<_> = t
            .verdicts
            .iter()
            .filter(|v| !state.slashed.contains(&v.verifier))
            .collect();
        let accepts = standing.iter().filter(|v| v.accepted).count();
        if standing.iter().all(|v| v.accepted) && accepts >= needed {
            return Some(true);
        }
        None
    }

    pub(super) fn challenge_for(
        &self,
        beacon: &[u8; 32],
        trace_root: &Digest,
    ) -> Result<Vec<u32>, ApiError> {
        challenge_steps(
            beacon,
            &prover_digest(trace_root),
            self.job.inner.steps,
            self.job.verify.challenges,
        )
        .map_err(internal)
    }

    /// `POST /v1/verify/next`.
    pub async fn next_verify(&self, verifier: PublicKey) -> Result<VerifyOffer, ApiError> {
        let mut guard = self.lock_synced().await?;
        let inner = &mut *guard;
        Self::require_role(&inner.state, &verifier, Role::Verifier)?;
        let now = now_ms();
        let pick = inner.live.iter().find_map(|(id, l)| {
            let t = inner.state.tasks.get(id)?;
            let claimed_by_me = l.claims.get(&verifier).is_some_and(|d| *d > now);
            let done_by_me = t.verdicts.iter().any(|v| v.verifier == verifier);
            if l.outcome.is_some() || l.opening_blob.is_none() || done_by_me || t.worker == verifier
            {
                return None;
            }
            if claimed_by_me {
                return Some((*id, false));
            }
            let live_claims = l.claims.values().filter(|d| **d > now).count();
            let verdicts = t.verdicts.len();
            (verdicts + live_claims < l.needed).then_some((*id, true))
        });
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
            .ok_or_else(|| ApiError::Internal("task vanished".into()))?;
        let l = inner
            .live
            .get(&id)
            .ok_or_else(|| ApiError::Internal("live task vanished".into()))?;
        let task = self.describe(inner, t)?;
        let commitment = Self::commitment_of(t)
            .ok_or_else(|| ApiError::Internal("opened task without commitment".into()))?;
        let device_class = l.class.unwrap_or(DeviceClass::Exact);
        let blob = l.opening_blob.unwrap_or_default();
        // The opening (large, content addressed, immutable) is read without the lock,
        // once the claim is durable.
        let (task, commitment) = self.release(guard, (task, commitment)).await?;
        let opening = self.load_opening(&blob)?;
        Ok(VerifyOffer::Job(VerifyJob {
            task,
            commitment,
            steps,
            device_class,
            opening,
            challenge_index,
        }))
    }

    /// `POST /v1/verify/<id>/verdict`.
    pub async fn verdict(
        &self,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<api::VerdictReceipt, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.verdict_in(&mut guard, verifier, task, sub).await?;
        self.release(guard, out).await
    }

    pub(super) async fn verdict_in(
        &self,
        inner: &mut Inner,
        verifier: PublicKey,
        task: TaskId,
        sub: api::VerdictSubmission,
    ) -> Result<api::VerdictReceipt, ApiError> {
        Self::require_role(&inner.state, &verifier, Role::Verifier)?;
        let t = inner
            .state
            .tasks
            .get(&task)
            .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))?;
        let Some((_, steps, _)) = t.challenges.iter().find(|c| c.0 == verifier).cloned() else {
            return Err(ApiError::Forbidden(format!(
                "task {task} was not challenged to this verifier"
            )));
        };
        if t.verdicts.iter().any(|v| v.verifier == verifier) {
            return Err(ApiError::Conflict(format!(
                "this verifier already gave a verdict on task {task}"
            )));
        }
        let live = inner.live.get(&task).ok_or_else(|| {
            ApiError::Conflict(format!("task {task} belongs to a round that is closed"))
        })?;
        if live.outcome.is_some() {
            return Err(ApiError::Conflict(format!(
                "task {task} is already settled"
            )));
        }
        let entry = check_verdict(&sub, task, &verifier, &steps)?.entry;
        if let Some(p) = &sub.fraud_proof {
            self.blobs
                .put(&serde_json::to_vec(p).map_err(internal)?)
                .map_err(blob_error)?;
        }
        let index = self.append(inner, entry).await?;
        self.metrics.verdicts.inc();
        if let Some(l) = inner.live.get_mut(&task) {
            l.claims.remove(&verifier);
        }
        // The verdict is durable and is answered as such: if settling the task or
        // closing the round fails now (the database locked, the blob store full), the
        // ticker settles and closes later; the verifier must not be told to retry a
        // verdict that is already in the log.
        if let Err(e) = self.resolve(inner, task).await {
            tracing::warn!(task = %task, error = %e, "settling the task after a verdict failed; the ticker retries");
        }
        if let Some(l) = inner.live.get_mut(&task)
            && l.outcome.is_none()
            && l.waiting_since.is_none()
        {
            l.waiting_since = Some(now_ms());
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
        Ok(api::VerdictReceipt {
            task_id: task,
            entry_index: index,
            outcome,
        })
    }

    /// Settles a task from its verdicts: unanimous acceptance by enough verifiers
    /// accepts; any rejection, or too few verifiers, calls the referee.
    pub(super) async fn resolve(&self, inner: &mut Inner, task: TaskId) -> Result<(), ApiError> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(());
        };
        let Some(live) = inner.live.get(&task).cloned() else {
            return Ok(());
        };
        if live.outcome.is_some() {
            return Ok(());
        }
        if let Some(o) = self.ledger_outcome(&inner.state, &t, live.needed) {
            self.slash_contradicted(inner, task).await?;
            if let Some(l) = inner.live.get_mut(&task) {
                l.outcome = Some(o);
            }
            return Ok(());
        }
        let any_reject = t.verdicts.iter().any(|v| !v.accepted);
        let other_verifiers = inner
            .state
            .participants
            .iter()
            .filter(|(k, r)| {
                **r == Role::Verifier
                    && **k != self.referee_key()
                    && **k != t.worker
                    && !inner.state.slashed.contains(k)
                    && !t.verdicts.iter().any(|v| v.verifier == **k)
            })
            .count();
        if !any_reject && other_verifiers > 0 {
            return Ok(()); // wait for a second verifier
        }
        if t.verdicts.is_empty() {
            return Ok(());
        }
        self.referee(inner, &t, &live).await
    }

    /// The coordinator replays the task (or checks the fraud proof) and signs its own
    /// verdict; whoever it contradicts is slashed.
    pub(super) async fn referee(
        &self,
        inner: &mut Inner,
        t: &TaskRecord,
        live: &Live,
    ) -> Result<(), ApiError> {
        let steps = live.steps.clone().unwrap_or_default();
        let opening = self.load_opening(&live.opening_blob.unwrap_or_default())?;
        let commitment = Self::commitment_of(t)
            .ok_or_else(|| ApiError::Internal("verdict on uncommitted work".into()))?;
        let base = Arc::clone(&inner.model);
        let mut proof: Option<FraudProof> = None;
        for v in &t.verdicts {
            if let Some(e) = v.evidence
                && let Some(bytes) = self.blobs.get(&e).map_err(internal)?
            {
                proof = serde_json::from_slice(&bytes).ok();
            }
        }
        let job = Arc::clone(&self.job);
        let corpus = Arc::clone(&self.corpus);
        let seed = t.seed.0;
        let class = live.class.unwrap_or(DeviceClass::Exact);
        let verdict = tokio::task::spawn_blocking(move || -> Result<(Verdict, bool), String> {
            if let Some(p) = &proof {
                let ctx = FraudContext {
                    trace_root: commitment.trace_root,
                    steps: job.inner.steps,
                    base_state_hash: base_state_hash(&base),
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
                    ));
                }
            }
            verify_opening(
                &job,
                &corpus,
                &base,
                &seed,
                &commitment,
                &steps,
                &opening,
                class,
            )
            .map(|v| (v, false))
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(internal)?
        .map_err(ApiError::Internal)?;
        let (verdict, by_proof) = verdict;
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
            _ => None,
        };
        let steps = live.steps.clone().unwrap_or_default();
        let body = api::verdict_body(t.id, self.referee_key(), accepted, steps, &reason, evidence);
        let entry = Entry::signed(body, &self.referee).map_err(internal)?;
        self.append(inner, entry).await?;
        // Disputes are rare: wait for the referee's verdict under the lock, so the
        // verdict a slash follows is durable before the slash is sequenced.
        self.durable_now(inner).await?;
        failpoints::hit(failpoints::REFEREE_AFTER_VERDICT);
        self.slash_contradicted(inner, t.id).await?;
        if let Some(l) = inner.live.get_mut(&t.id) {
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
    ) -> Result<(), ApiError> {
        let Some(t) = inner.state.tasks.get(&task).cloned() else {
            return Ok(());
        };
        let referee = self.referee_key();
        let Some(ruling) = t.verdicts.iter().find(|v| v.verifier == referee).cloned() else {
            return Ok(());
        };
        let mut to_slash: Vec<(PublicKey, String, Option<Digest>)> = Vec::new();
        let others = t.verdicts.iter().filter(|v| v.verifier != referee);
        if ruling.accepted {
            for v in others.filter(|v| !v.accepted) {
                to_slash.push((
                    v.verifier,
                    "rejected work that the referee's replay accepts".into(),
                    None,
                ));
            }
        } else {
            to_slash.push((t.worker, ruling.reason.clone(), ruling.evidence));
            for v in others.filter(|v| v.accepted) {
                to_slash.push((
                    v.verifier,
                    "accepted work that the referee's replay rejects".into(),
                    ruling.evidence,
                ));
            }
        }
        for (key, reason, evidence) in to_slash {
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
        Ok(())
    }
}
