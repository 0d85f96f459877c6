//! Dispatch: participants join, and workers are handed tasks.

use super::*;

impl Coordinator {
    /// `POST /v1/join`.
    pub async fn join(
        &self,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.join_in(&mut guard, key, req).await?;
        self.release(guard, out).await
    }

    pub(super) async fn join_in(
        &self,
        inner: &mut Inner,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, ApiError> {
        if let Some(role) = inner.state.participants.get(&key)
            && *role != req.role
        {
            return Err(ApiError::Conflict(format!(
                "this key already joined as a {role:?}; use one key per role"
            )));
        }
        let body = api::join_body(key, req.role, &req.name);
        let entry = Entry::with_signature(body, req.signature.0)
            .map_err(|e| ApiError::BadRequest(format!("join entry refused: {e}")))?;
        if inner.state.participants.contains_key(&key) {
            return Ok(api::JoinResponse {
                key,
                role: req.role,
                entry_index: 0,
            });
        }
        let index = self.append(inner, entry).await?;
        Ok(api::JoinResponse {
            key,
            role: req.role,
            entry_index: index,
        })
    }

    pub(super) fn require_role(state: &State, key: &PublicKey, role: Role) -> Result<(), ApiError> {
        if state.slashed.contains(key) {
            return Err(ApiError::Forbidden(
                "this key was slashed for fraud and may not take part any more".into(),
            ));
        }
        match state.participants.get(key) {
            Some(r) if *r == role => Ok(()),
            Some(r) => Err(ApiError::Forbidden(format!(
                "this key joined as a {r:?}, not a {role:?}"
            ))),
            None => Err(ApiError::Forbidden(format!(
                "this key has not joined; POST {} first",
                lupus_api::paths::JOIN
            ))),
        }
    }

    pub(super) fn describe(
        &self,
        inner: &Inner,
        t: &TaskRecord,
    ) -> Result<TaskDescription, ApiError> {
        let round = inner
            .state
            .rounds
            .get(&t.round)
            .ok_or_else(|| ApiError::Internal("task of an unknown round".into()))?;
        let live = inner.live.get(&t.id);
        Ok(TaskDescription {
            task_id: t.id,
            round: t.round,
            worker: t.worker,
            base_model: round.base_model,
            seed: t.seed,
            inner_steps: t.inner_steps,
            batch_size: t.batch_size,
            job_hash: ledger_digest(&self.job.hash()),
            beacon_commitment: round.beacon_commitment,
            deadline_ms: live.map_or(round.deadline_ms, |l| l.deadline_ms),
            entry_index: t.index,
        })
    }

    pub(super) fn wait(reason: &str) -> TaskOffer {
        TaskOffer::Wait {
            retry_after_ms: 250,
            reason: reason.into(),
        }
    }

    /// `POST /v1/tasks/next`.
    pub async fn next_task(&self, worker: PublicKey) -> Result<TaskOffer, ApiError> {
        let mut guard = self.lock_synced().await?;
        let out = self.next_task_in(&mut guard, worker).await?;
        self.release(guard, out).await
    }

    pub(super) async fn next_task_in(
        &self,
        inner: &mut Inner,
        worker: PublicKey,
    ) -> Result<TaskOffer, ApiError> {
        Self::require_role(&inner.state, &worker, Role::Worker)?;
        let Some(round) = inner.state.open_round().cloned() else {
            return Ok(Self::wait("no round is open"));
        };
        if inner.closing.is_some() {
            return Ok(Self::wait(
                "the round is closing; the next one opens in a moment",
            ));
        }
        // The worker's own outstanding task, again (a retry after a lost answer).
        let own = round
            .tasks
            .iter()
            .filter_map(|id| inner.state.tasks.get(id))
            .find(|t| {
                t.worker == worker
                    && t.committed.is_none()
                    && inner.live.get(&t.id).is_some_and(|l| !l.expired)
            });
        if let Some(t) = own {
            return Ok(TaskOffer::Task(self.describe(inner, t)?));
        }
        let active = inner
            .live
            .values()
            .filter(|l| !l.expired && l.outcome != Some(false))
            .count();
        if active >= self.config.tasks_per_round as usize {
            return Ok(Self::wait("every task of this round is handed out"));
        }
        let id = inner.state.next_task_id();
        let seed = derive_task_seed(id.0, &worker.0, &prover_digest(&round.beacon_commitment));
        let body = EntryBody::TaskAssigned {
            task: id,
            round: round.round,
            worker,
            seed: Digest(seed),
            inner_steps: self.job.inner.steps,
            batch_size: self.job.inner.batch_size,
        };
        self.append_body(inner, body).await?;
        inner.live.insert(
            id,
            Live {
                deadline_ms: now_ms() + self.config.task_timeout.as_millis() as u64,
                needed: 1,
                ..Live::default()
            },
        );
        let t = inner
            .state
            .tasks
            .get(&id)
            .ok_or_else(|| ApiError::Internal("task vanished".into()))?;
        Ok(TaskOffer::Task(self.describe(inner, t)?))
    }

    pub(super) fn worker_task<'a>(
        inner: &'a Inner,
        worker: &PublicKey,
        task: TaskId,
    ) -> Result<(&'a TaskRecord, &'a Live), ApiError> {
        let t = inner
            .state
            .tasks
            .get(&task)
            .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))?;
        if t.worker != *worker {
            return Err(ApiError::Forbidden(format!(
                "task {task} belongs to another worker"
            )));
        }
        let live = inner.live.get(&task).ok_or_else(|| {
            ApiError::Conflict(format!("task {task} belongs to a round that is closed"))
        })?;
        if live.expired {
            return Err(ApiError::Conflict(format!(
                "task {task} expired (its deadline passed) and was handed out again"
            )));
        }
        Ok((t, live))
    }
}
