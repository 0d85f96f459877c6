//! Dispatch: participants join, and workers are handed tasks.

use super::*;

impl Coordinator {
    /// `POST /v1/join`.
    pub async fn join(
        &self,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, Error> {
        let mut guard = self.lock_synced().await?;
        let out = self.join_in(&mut guard, key, req).await?;
        self.release(guard, out).await
    }

    pub(super) async fn join_in(
        &self,
        inner: &mut Inner,
        key: PublicKey,
        req: api::JoinRequest,
    ) -> Result<api::JoinResponse, Error> {
        let decision = rules::join(&inner.state, &key, req.role)?;
        let body = api::join_body(key, req.role, &req.name);
        let entry = Entry::with_signature(body, req.signature.0)
            .map_err(|e| Error::Malformed(format!("join entry refused: {e}")))?;
        if decision == rules::Join::Again {
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

    pub(super) fn describe(&self, inner: &Inner, t: &TaskRecord) -> Result<TaskDescription, Error> {
        let round = inner
            .state
            .rounds
            .get(&t.round)
            .ok_or_else(|| Error::Internal("task of an unknown round".into()))?;
        let live = inner.live.get(&t.id);
        Ok(TaskDescription {
            task_id: t.id,
            round: t.round,
            worker: t.worker,
            base_model: round.base_model,
            seed: t.seed,
            inner_steps: t.inner_steps,
            batch_size: t.batch_size,
            job_hash: self.job.hash(),
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
    pub async fn next_task(&self, worker: PublicKey) -> Result<TaskOffer, Error> {
        let mut guard = self.lock_synced().await?;
        let out = self.next_task_in(&mut guard, worker).await?;
        self.release(guard, out).await
    }

    pub(super) async fn next_task_in(
        &self,
        inner: &mut Inner,
        worker: PublicKey,
    ) -> Result<TaskOffer, Error> {
        rules::require_role(&inner.state, &worker, Role::Worker)?;
        let (round, id) = match rules::dispatch(
            &inner.state,
            &inner.live,
            inner.closing.is_some(),
            self.config.tasks_per_round,
            &worker,
        ) {
            rules::Dispatch::Wait(reason) => return Ok(Self::wait(reason)),
            rules::Dispatch::Again(id) => {
                let t = inner
                    .state
                    .tasks
                    .get(&id)
                    .ok_or_else(|| Error::Internal("task vanished".into()))?;
                return Ok(TaskOffer::Task(self.describe(inner, t)?));
            }
            rules::Dispatch::Assign { round, task } => (round, task),
        };
        let beacon_commitment = inner
            .state
            .rounds
            .get(&round)
            .map(|r| r.beacon_commitment)
            .ok_or_else(|| Error::Internal("dispatch to an unknown round".into()))?;
        let seed = derive_task_seed(id.0, &worker.0, &beacon_commitment);
        let body = EntryBody::TaskAssigned {
            task: id,
            round,
            worker,
            seed: Digest(seed),
            inner_steps: self.job.inner.steps,
            batch_size: self.job.inner.batch_size,
        };
        self.append_body(inner, body).await?;
        inner.live.insert(
            id,
            Live {
                deadline_ms: self.now_ms() + self.config.task_timeout.as_millis() as u64,
                needed: 1,
                ..Live::default()
            },
        );
        let t = inner
            .state
            .tasks
            .get(&id)
            .ok_or_else(|| Error::Internal("task vanished".into()))?;
        Ok(TaskOffer::Task(self.describe(inner, t)?))
    }
}
