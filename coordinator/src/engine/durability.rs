//! Sequencing and durability: entries are applied to the state and given their
//! indexes under the state lock ([`Coordinator::sequence`]); the request waits for the
//! group commit after releasing it ([`Coordinator::release`]). A failed write marks
//! the state behind; the next request rebuilds it from the store.

use super::*;

impl Coordinator {
    /// Accepts a signed request's `(key, timestamp, nonce)` once (see
    /// [`replay`](super::replay)); `now` is the coordinator's clock.
    pub fn check_nonce(
        &self,
        key: PublicKey,
        timestamp: u64,
        nonce: [u8; 16],
        now: u64,
    ) -> Result<(), Error> {
        self.nonces
            .lock()
            .map_err(|_| Error::Internal("replay windows poisoned".into()))?
            .check(key, timestamp, nonce, now)
    }

    /// The log's signed receipt for `entry`, sequenced at `index`
    /// (`lupus_ledger::receipt`). Handed out only once the entry is durable (the
    /// request's answer waits in [`Self::release`]).
    pub(super) fn receipt(&self, index: u64, entry: &Entry) -> Result<String, Error> {
        lupus_ledger::receipt::sign_receipt(&self.signer, index, entry.as_bytes()).map_err(internal)
    }

    pub(super) async fn append(&self, inner: &mut Inner, entry: Entry) -> Result<u64, Error> {
        self.sequence(inner, std::slice::from_ref(&entry)).await
    }

    /// Applies `entries` to the state at the next indexes, then sequences them in the
    /// log as one group (one batch, all durable or none); returns the first index.
    /// Nothing waits for the disk here: the request waits in [`Self::release`], after
    /// letting the lock go, so concurrent requests share one commit.
    ///
    /// The state is never behind the log: an entry the state refuses is never
    /// sequenced. If the log refuses or later loses what was sequenced, the state is
    /// ahead of the log; it is marked behind and rebuilt from the store before the
    /// next request ([`Self::lock_synced`]).
    pub(super) async fn sequence(
        &self,
        inner: &mut Inner,
        entries: &[Entry],
    ) -> Result<u64, Error> {
        self.sequence_with_meta(inner, entries, Vec::new()).await
    }

    /// [`Self::sequence`], with metadata rows committed in the same transaction as
    /// the entries (see [`Log::sequence_with_meta`]).
    pub(super) async fn sequence_with_meta(
        &self,
        inner: &mut Inner,
        entries: &[Entry],
        meta: Vec<Meta>,
    ) -> Result<u64, Error> {
        let first = inner.state.size;
        // From the first apply until the log has numbered the entries, the state is
        // ahead of the log. A request cancelled in between (its client gone, its
        // timeout) drops this future there: the guard then marks the state behind,
        // so the next request rebuilds it.
        let pending = Diverging(&self.behind);
        for (index, entry) in (first..).zip(entries) {
            if let Err(e) = inner.state.apply(index, entry) {
                // The fold may have taken part of the entry: rebuild before going on.
                return Err(disagree(e));
            }
        }
        self.roster_after(&inner.state, entries);
        let bytes = entries.iter().map(Entry::encode).collect();
        let sequenced = self.log.sequence_with_meta(bytes, meta).await;
        match sequenced {
            // Its durability is awaited by the request's barrier, in `release`.
            Ok(sequenced) if sequenced.first.0 == first => {
                pending.settled();
                Ok(first)
            }
            Ok(sequenced) => {
                self.append_failed();
                Err(Error::Internal(format!(
                    "the log numbered entry {first} as {}; the state is rebuilt from the log",
                    sequenced.first.0
                )))
            }
            Err(e) => {
                self.append_failed();
                Err(log_error(e))
            }
        }
    }

    /// Lets the state lock go and answers `out` once everything the request saw is
    /// durable: a barrier queued behind the entries sequenced so far (the request's
    /// own and any other it read) is awaited after the lock is released. Every
    /// request that reads or changes the state ends here, so nothing is acknowledged
    /// or shown before it is durable.
    pub(super) async fn release<R>(
        &self,
        guard: MutexGuard<'_, Inner>,
        out: R,
    ) -> Result<R, Error> {
        let seen = guard.state.size;
        if self.log.head().size.0 >= seen {
            return Ok(out);
        }
        let barrier = self.log.barrier().await;
        drop(guard);
        self.check_durable(barrier, seen).await?;
        Ok(out)
    }

    /// Waits, holding the lock, until everything sequenced so far is durable.
    pub(super) async fn durable_now(&self, inner: &Inner) -> Result<(), Error> {
        let seen = inner.state.size;
        self.check_durable(self.log.barrier().await, seen).await
    }

    /// Awaits `barrier`; an error unless the store then holds `seen` entries.
    pub(super) async fn check_durable(
        &self,
        barrier: Result<lupus_ledger::log::Barrier, lupus_ledger::log::LogError>,
        seen: u64,
    ) -> Result<(), Error> {
        let durable = match barrier {
            Ok(b) => b.durable().await,
            Err(e) => Err(e),
        };
        match durable {
            Ok(size) if size.0 >= seen => Ok(()),
            Ok(size) => {
                self.append_failed();
                Err(Error::Busy(format!(
                    "a write to the ledger failed and entries {}..{seen} were lost; nothing of this request is acknowledged, try again",
                    size.0
                )))
            }
            Err(e) => {
                self.append_failed();
                Err(log_error(e))
            }
        }
    }

    /// After a failed write: the state holds entries the log may not (sequenced on top
    /// of the failed batch), or lacks entries the log does (a commit that landed
    /// although it reported a failure). Until the state has caught up with the store,
    /// a request would be checked against the wrong state, so it is marked behind,
    /// and the next [`Self::lock_synced`] rebuilds it.
    pub(super) fn append_failed(&self) {
        self.behind.store(true, Ordering::SeqCst);
        self.note_store_failure();
    }

    pub(super) fn note_store_failure(&self) {
        if let Ok(mut t) = self.store_failed_at.lock() {
            *t = Some(std::time::Instant::now());
        }
    }

    /// The state lock, with the state caught up with the store if an append failed
    /// since the last catch-up. Every request that may append takes this one.
    ///
    /// While the store is down, each attempt to reach it holds the lock for the pool's
    /// timeout; so within [`STORE_RETRY_PAUSE`] of a failure, requests are refused at
    /// once (503) instead of queueing behind each other's timeouts.
    pub(super) async fn lock_synced(&self) -> Result<tokio::sync::MutexGuard<'_, Inner>, Error> {
        let mut guard = self.inner.lock().await;
        if self.behind.load(Ordering::SeqCst) {
            let recent = self
                .store_failed_at
                .lock()
                .ok()
                .and_then(|t| *t)
                .is_some_and(|t| t.elapsed() < STORE_RETRY_PAUSE);
            if recent {
                return Err(Error::Busy(
                    "the ledger database was unreachable a moment ago, nothing was written; try again"
                        .into(),
                ));
            }
            if let Err(e) = self.catch_up_with_store(&mut guard).await {
                self.note_store_failure();
                return Err(e);
            }
        }
        Ok(guard)
    }

    /// The state lock for a read: caught up with the store if a write failed (so a
    /// read shows no entry the log lost), but not refused during the pause after a
    /// failure, since reads still work while the database refuses writes.
    pub(super) async fn lock_for_read(&self) -> Result<MutexGuard<'_, Inner>, Error> {
        let mut guard = self.inner.lock().await;
        if let Err(e) = self.catch_up_with_store(&mut guard).await {
            self.note_store_failure();
            return Err(e);
        }
        Ok(guard)
    }

    /// Brings the state back to the log after a failed write: syncs the log (which
    /// waits for every queued batch and numbers new entries from the store's size
    /// again), then rebuilds the state from the store if it holds entries the store
    /// does not, or applies what landed past it.
    pub(super) async fn catch_up_with_store(&self, inner: &mut Inner) -> Result<(), Error> {
        if !self.behind.load(Ordering::SeqCst) {
            return Ok(());
        }
        let size = self.log.sync().await.map_err(log_error)?.0;
        if size < inner.state.size {
            tracing::warn!(
                stored = size,
                sequenced = inner.state.size,
                "entries sequenced after a failed write were not stored; rebuilding the state from the log"
            );
            self.rebuild(inner, size).await?;
        } else {
            self.apply_landed(inner, size).await?;
        }
        self.behind.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Replaces the state with the log's first `size` entries and rebuilds what the
    /// log does not hold, as a restart does.
    pub(super) async fn rebuild(&self, inner: &mut Inner, size: u64) -> Result<(), Error> {
        let state = replay(&self.log, size).await.map_err(internal)?;
        let mut fresh = Inner::new(state);
        fresh.generation = inner.generation + 1;
        // A close computing outside the lock finds the new generation and starts over.
        fresh.closing = inner.closing;
        *inner = fresh;
        self.publish_roster(&inner.state);
        self.resume_in(inner).await
    }

    /// Applies to the state the durable entries from its size up to `end`: entries
    /// written around this coordinator's sequencing. The one place the state catches
    /// up with the store.
    pub(super) async fn apply_landed(&self, inner: &mut Inner, end: u64) -> Result<(), Error> {
        while inner.state.size < end {
            let start = inner.state.size;
            let missed = self
                .store
                .read_entries(LeafIndex(start), LeafIndex((start + 1024).min(end)))
                .await
                .map_err(store_error)?;
            if missed.is_empty() {
                return Err(Error::Internal(format!(
                    "the store holds no entry {start} although its size is {end}"
                )));
            }
            for bytes in missed {
                let at = inner.state.size;
                let e = Entry::decode(&bytes).map_err(internal)?;
                tracing::warn!(
                    index = at,
                    kind = e.kind().name(),
                    "an append reported as failed had landed; applying it"
                );
                inner.state.apply(at, &e).map_err(disagree)?;
                self.roster_after(&inner.state, std::slice::from_ref(&e));
            }
        }
        Ok(())
    }

    pub(super) async fn append_body(
        &self,
        inner: &mut Inner,
        body: EntryBody,
    ) -> Result<u64, Error> {
        let entry = Entry::unsigned(body).map_err(internal)?;
        self.append(inner, entry).await
    }
}

/// Marks the state behind the log when dropped, unless [`Diverging::settled`].
struct Diverging<'a>(&'a std::sync::atomic::AtomicBool);

impl Diverging<'_> {
    /// The state and the log agree again.
    fn settled(self) {
        std::mem::forget(self);
    }
}

impl Drop for Diverging<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
