//! Start-up and resume: opening the ledger, replaying it, and rebuilding what the
//! ledger does not hold (the open round's live tasks) after a restart or a rebuild.

use super::*;

/// What a configuration must satisfy, checked before anything is written: a close on
/// more validation windows than a `RoundClosed` may name would merge, then fail to log,
/// every round.
fn check_config(config: &Config) -> Result<(), StartError> {
    let max = lupus_ledger::entry::MAX_VAL_WINDOWS;
    if config.val_windows > max {
        return Err(StartError::Other(format!(
            "val_windows is {}, more than the {max} validation windows a round close may name",
            config.val_windows
        )));
    }
    Ok(())
}

impl Coordinator {
    /// Opens (or creates) the coordinator's ledger and blobs in `config.data_dir`,
    /// replays the ledger and resumes the round it was in.
    pub async fn open(config: Config, corpus: Corpus) -> Result<Arc<Coordinator>, StartError> {
        check_config(&config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(start_err)?;
        let url = config.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                config.data_dir.join("ledger.sqlite3").display()
            )
        });
        let store: Arc<dyn LogStore> = match &config.postgres_schema {
            Some(schema) if url.starts_with("postgres") => Arc::new(
                PostgresStore::open(&url, schema)
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            ),
            _ => open_store(&url)
                .await
                .map_err(|e| StartError::Store(e.to_string()))?,
        };
        Self::open_with_store(config, corpus, store).await
    }

    /// [`Coordinator::open`] over a store the caller opened (`config.database_url` is
    /// not used): tests wrap one in `lupus_ledger::store::fault::FaultyStore`.
    pub async fn open_with_store(
        config: Config,
        corpus: Corpus,
        store: Arc<dyn LogStore>,
    ) -> Result<Arc<Coordinator>, StartError> {
        check_config(&config)?;
        let job = JobSpec::parse(&config.job_spec).map_err(|e| StartError::Spec(e.to_string()))?;
        std::fs::create_dir_all(&config.data_dir).map_err(start_err)?;
        let blobs = BlobStore::open(config.data_dir.join("blobs")).map_err(start_err)?;
        let dataset_blob = blobs.put(corpus.bytes()).map_err(start_err)?;
        let log_secret = load_or_create_secret(&config.data_dir.join("log.key"))?;
        let origin = format!("lupus.local/{}", job.job.name);
        let signer = NoteSigner::from_secret(&origin, log_secret).map_err(start_err)?;
        let referee = SigningKey::from_bytes(&load_or_create_secret(
            &config.data_dir.join("referee.key"),
        )?);
        let log = Log::open(Arc::clone(&store), signer.clone())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;

        let state = replay(&log, log.head().size.0).await?;
        if let Some(g) = &state.genesis
            && g.job_hash != job.hash()
        {
            return Err(StartError::OtherJob {
                found: format!("job hash {}", g.job_hash),
            });
        }
        // The protocol fold took the genesis' checkpoint key on trust; it must be
        // the key this coordinator signs checkpoints with.
        if let Some(g) = &state.genesis
            && g.note_key != log.verifier().to_string()
        {
            return Err(StartError::OtherJob {
                found: format!("checkpoint key {}", g.note_key),
            });
        }

        let coordinator = Arc::new(Coordinator {
            log,
            signer,
            store,
            blobs,
            job: Arc::new(job),
            corpus: Arc::new(corpus),
            dataset_blob,
            config,
            referee,
            roster: std::sync::RwLock::new(roster::Roster::of(&state)),
            inner: Mutex::new(Inner::new(state)),
            nonces: std::sync::Mutex::new(replay::ReplayWindows::default()),
            cosignatures: std::sync::Mutex::new(BTreeMap::new()),
            close_wanted: tokio::sync::Notify::new(),
            behind: std::sync::atomic::AtomicBool::new(false),
            store_failed_at: std::sync::Mutex::new(None),
            metrics: Metrics::default(),
        });
        coordinator
            .resume()
            .await
            .map_err(|e| StartError::Other(e.to_string()))?;
        Ok(coordinator)
    }

    pub(super) fn load_model(&self, hash: &Digest) -> Result<Vec<Tensor>, Error> {
        let bytes = self
            .blobs
            .get(hash)
            .map_err(internal)?
            .ok_or_else(|| Error::Internal(format!("model blob {hash} is missing")))?;
        decode_model(&bytes, &self.job).map_err(internal)
    }

    pub(super) async fn task_meta_blob(
        &self,
        kind: &str,
        task: TaskId,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.store
            .get_meta(&meta_key(kind, task.0))
            .await
            .map_err(store_error)
    }

    /// Rebuilds what the ledger does not hold and finishes an interrupted round close.
    pub(super) async fn resume(&self) -> Result<(), Error> {
        let mut guard = self.inner.lock().await;
        self.resume_in(&mut guard).await?;
        self.release(guard, ()).await
    }

    pub(super) async fn resume_in(&self, inner: &mut Inner) -> Result<(), Error> {
        if inner.state.genesis.is_none() {
            self.genesis(inner).await?;
        }
        if !inner.state.participants.contains_key(&self.referee_key()) {
            let body = api::join_body(self.referee_key(), Role::Verifier, "coordinator-referee");
            let entry = Entry::signed(body, &self.referee).map_err(internal)?;
            self.append(inner, entry).await?;
        }
        // Momentum and model from the last closed round.
        let last_closed = inner
            .state
            .rounds
            .values()
            .rev()
            .find(|r| r.closed.is_some())
            .map(|r| (r.round, r.closed.map(|c| c.new_model)));
        if let Some((round, Some(model))) = last_closed {
            if let Some(m) = self
                .store
                .get_meta(&meta_key("momentum", round.0))
                .await
                .map_err(store_error)?
            {
                let hash = Digest(m.as_slice().try_into().map_err(internal)?);
                inner.momentum = self.load_model(&hash)?;
            }
            inner.model = Arc::new(self.load_model(&model)?);
        }
        if inner.state.latest_round().is_none() {
            self.open_next_round(inner).await?;
        } else if let Some(round) = inner.state.latest_round().cloned() {
            if round.closed.is_some() {
                if !round.epoch_written {
                    self.write_epoch(inner, round.round).await?;
                }
                self.open_next_round(inner).await?;
            } else {
                let beacon = self
                    .store
                    .get_meta(&meta_key("beacon", round.round.0))
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| Error::Internal("the open round's beacon is lost".into()))?;
                let beacon: [u8; 32] = beacon.as_slice().try_into().map_err(internal)?;
                inner.beacon = Some((round.round, beacon));
                inner.model = Arc::new(self.load_model(&round.base_model)?);
                self.rebuild_live(inner, round.round).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn rebuild_live(&self, inner: &mut Inner, round: Round) -> Result<(), Error> {
        let now = self.now_ms();
        let beacon = inner.beacon.map(|b| b.1);
        let tasks: Vec<TaskRecord> = inner
            .state
            .rounds
            .get(&round)
            .map(|r| r.tasks.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| inner.state.tasks.get(id))
            .cloned()
            .collect();
        for t in tasks {
            let mut live = Live {
                deadline_ms: now + self.config.task_timeout.as_millis() as u64,
                needed: 1,
                ..Live::default()
            };
            if let (Some(c), Some(r)) = (t.committed, beacon) {
                live.steps = Some(self.challenge_for(&r, &c.trace_root)?);
                live.needed = 1 + usize::from(double_checked(
                    &r,
                    &c.trace_root,
                    self.job.verify.double_check_fraction,
                ));
                if let Some(m) = self.task_meta_blob("delta", t.id).await?
                    && m.len() == 33
                {
                    live.delta_blob = Some(Digest(m[..32].try_into().map_err(internal)?));
                    live.class = Some(if m[32] == 1 {
                        DeviceClass::Tolerant
                    } else {
                        DeviceClass::Exact
                    });
                }
                if let Some(m) = self.task_meta_blob("opening", t.id).await? {
                    live.opening_blob = Some(Digest(m.as_slice().try_into().map_err(internal)?));
                }
            }
            // A task whose acceptance the beacon marks for the referee's replay check
            // is not settled until the referee has ruled (the resolve below).
            let check_due = beacon.is_some_and(|b| {
                rules::replay_check_due(&inner.state, &t, &b, &self.referee_key())
            });
            live.outcome = if check_due {
                None
            } else {
                rules::ledger_outcome(&inner.state, &t, live.needed, &self.referee_key())
            };
            inner.live.insert(t.id, live);
        }
        // Settle verdicts that arrived before the crash but were not resolved.
        let unresolved: Vec<TaskId> = awaiting_outcome(inner).map(|(id, _)| id).collect();
        for id in unresolved {
            self.resolve(inner, id).await?;
        }
        // Slashes a crash cut off after the referee's verdict.
        let ids: Vec<TaskId> = inner.live.keys().copied().collect();
        for id in ids {
            self.slash_contradicted(inner, id).await?;
        }
        Ok(())
    }

    pub(super) async fn genesis(&self, inner: &mut Inner) -> Result<(), Error> {
        let dataset = self
            .corpus
            .commitment(self.job.dataset.chunk_size)
            .map_err(internal)?;
        let verifier = self.log.verifier();
        let body = EntryBody::Genesis {
            job_spec: self.config.job_spec.clone(),
            job_hash: self.job.hash(),
            dataset_root: dataset.root,
            log_key: PublicKey::from(verifier.public_key()),
            coordinator_note_key: self.note_key(),
            created_ms: self.now_ms(),
        };
        self.append_body(inner, body).await?;
        let params = init_params(&self.job.model, self.job.hash().0).map_err(internal)?;
        self.blobs.put(&encode_model(&params)).map_err(blob_error)?;
        inner.model = Arc::new(params);
        Ok(())
    }

    pub(super) async fn open_next_round(&self, inner: &mut Inner) -> Result<(), Error> {
        let next = inner.state.latest_round().map_or(1, |r| r.round.0 + 1);
        if self.config.max_rounds.is_some_and(|max| next > max) {
            return Ok(());
        }
        let beacon = self.new_beacon(next).await?;
        let model_bytes = encode_model(&inner.model);
        let base_model = self.blobs.put(&model_bytes).map_err(blob_error)?;
        let body = EntryBody::RoundOpened {
            round: Round(next),
            base_model,
            beacon_commitment: beacon_commitment(&beacon),
            inner_steps: self.job.inner.steps,
            deadline_ms: self.now_ms() + self.config.round_timeout.as_millis() as u64,
        };
        self.append_body(inner, body).await?;
        inner.beacon = Some((Round(next), beacon));
        inner.live.clear();
        tracing::info!(round = next, model = %base_model, "round opened");
        Ok(())
    }
}
