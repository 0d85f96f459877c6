//! Issue 13, "cheating must not pay": the protocol rules that take the profit out of
//! the rational adversary's cheapest strategies, each written first as the attack.
//!
//! - **Sybil pair on fresh keys**: a new worker key submits junk and its partner
//!   verifier accepts. A key on probation is credited only on the referee's replay.
//! - **Self-accusation farm**: a throwaway worker submits junk, its partner verifier
//!   rejects it and is paid for the conviction. A rejection of a worker that had
//!   nothing at stake earns nothing.
//! - **Selective opening**: a worker opens only when its poisoned step was not
//!   challenged. Not opening forfeits its unvested credit and resets its record.

use ed25519_dalek::SigningKey;
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, EndReason, Entry, EntryBody, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::note::NoteSigner;
use lupus_protocol::{ProtocolState, Violation};
use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::prf::derive_task_seed;
use lupus_prover::spec::JobSpec;

const TINY: &str = include_str!("../../jobs/tiny-test.toml");

/// The tiny test job with a probation of `n` tasks and no double checks (so a task
/// out of probation is credited on one verdict, whatever the beacon).
fn spec_text(n: u32) -> String {
    TINY.replace(
        "double_check_fraction = 0.05",
        &format!("double_check_fraction = 0.0\nprobation_tasks = {n}"),
    )
}

/// A log being written and checked entry by entry.
struct Log {
    state: ProtocolState,
    next: u64,
    pinned: String,
    spec: JobSpec,
    referee: SigningKey,
    worker: SigningKey,
    verifier: SigningKey,
    round: Option<(Round, [u8; 32])>,
    task: u64,
    merged: Vec<Digest>,
}

fn pk(k: &SigningKey) -> PublicKey {
    PublicKey::from(k)
}

impl Log {
    fn new(probation: u32) -> Log {
        Log::with_spec(spec_text(probation))
    }

    /// No probation, and replay checks with the given floor.
    fn with_replay_checks(floor: f64) -> Log {
        Log::with_spec(spec_text(0).replace(
            "double_check_fraction = 0.0",
            &format!("double_check_fraction = 0.0\nreplay_checks = {floor}"),
        ))
    }

    fn with_spec(text: String) -> Log {
        let spec = JobSpec::parse(&text).unwrap();
        let signer = NoteSigner::from_secret("incentives.test", [7; 32]).unwrap();
        let mut log = Log {
            state: ProtocolState::default(),
            next: 0,
            pinned: signer.verifier_key(),
            spec: spec.clone(),
            referee: SigningKey::from_bytes(&[1; 32]),
            worker: SigningKey::from_bytes(&[2; 32]),
            verifier: SigningKey::from_bytes(&[3; 32]),
            round: None,
            task: 0,
            merged: Vec::new(),
        };
        log.ok(u(EntryBody::Genesis {
            job_spec: text,
            job_hash: spec.hash(),
            dataset_root: Digest::of(b"data"),
            log_key: PublicKey::from(signer.verifier().public_key()),
            coordinator_note_key: log.pinned.clone(),
            created_ms: 0,
        }));
        for (key, role) in [
            (log.referee.clone(), Role::Verifier),
            (log.worker.clone(), Role::Worker),
            (log.verifier.clone(), Role::Verifier),
        ] {
            let body = EntryBody::ParticipantJoined {
                key: pk(&key),
                role,
                name: String::new(),
            };
            log.ok(Entry::signed(body, &key).unwrap());
        }
        log
    }

    fn apply(&mut self, e: Entry) -> Result<(), Violation> {
        self.state.apply(self.next, &e, &self.pinned)?;
        self.next += 1;
        Ok(())
    }

    fn ok(&mut self, e: Entry) {
        let body = e.body().clone();
        if let Err(v) = self.apply(e) {
            panic!("{body:?} refused: {v}");
        }
    }

    fn open_round(&mut self, r: u64) {
        let beacon = *blake3::hash(format!("beacon {r}").as_bytes()).as_bytes();
        self.round = Some((Round(r), beacon));
        self.merged.clear();
        self.ok(u(EntryBody::RoundOpened {
            round: Round(r),
            base_model: Digest::of(format!("model {r}").as_bytes()),
            beacon_commitment: beacon_commitment(&beacon),
            inner_steps: self.spec.inner.steps,
            deadline_ms: 0,
        }));
    }

    /// Assigns, commits and (if `open`) opens and challenges a task; its id and steps.
    fn task(&mut self, open: bool) -> (TaskId, Vec<u32>) {
        let (round, beacon) = self.round.unwrap();
        let task = TaskId(self.task);
        self.task += 1;
        let worker = pk(&self.worker);
        let seed = derive_task_seed(task.0, &worker.0, &beacon_commitment(&beacon));
        self.ok(u(EntryBody::TaskAssigned {
            task,
            round,
            worker,
            seed: Digest(seed),
            inner_steps: self.spec.inner.steps,
            batch_size: self.spec.inner.batch_size,
        }));
        let trace_root = Digest::of(format!("trace {}", task.0).as_bytes());
        let body = EntryBody::WorkCommitted {
            task,
            worker,
            trace_root,
            final_state: Digest::of(b"state"),
            delta: Digest::of(b"delta"),
        };
        self.ok(Entry::signed(body, &self.worker.clone()).unwrap());
        let steps = challenge_steps(
            &beacon,
            &trace_root,
            self.spec.inner.steps,
            self.spec.verify.challenges,
        )
        .unwrap();
        if open {
            self.ok(u(EntryBody::ChallengeIssued {
                task,
                verifier: pk(&self.verifier),
                steps: steps.clone(),
            }));
            self.ok(u(EntryBody::TaskOpened {
                task,
                worker,
                opening: opening(task),
            }));
        }
        (task, steps)
    }

    fn verdict(&mut self, by: &SigningKey, task: TaskId, steps: &[u32], accepted: bool) {
        let checks = self.spec.verify.replay_checks > 0.0;
        let evidence = if accepted {
            // The referee's acceptance names the opening it replayed; a verifier's, its
            // replay digest.
            checks.then(|| Digest::of(format!("replay {}", task.0).as_bytes()))
        } else {
            Some(opening(task))
        };
        let evidence = if accepted && *by == self.referee && checks {
            Some(opening(task))
        } else {
            evidence
        };
        self.ok(self.verdict_entry(by, task, steps, accepted, evidence));
    }

    fn verdict_entry(
        &self,
        by: &SigningKey,
        task: TaskId,
        steps: &[u32],
        accepted: bool,
        evidence: Option<Digest>,
    ) -> Entry {
        let body = EntryBody::Verdict {
            task,
            verifier: pk(by),
            accepted,
            steps: steps.to_vec(),
            reason: String::new(),
            evidence,
        };
        Entry::signed(body, by).unwrap()
    }

    fn credit(&mut self, key: PublicKey, task: TaskId, kind: CreditKind) -> Result<(), Violation> {
        let per_step = u64::from(self.spec.inner.batch_size) * self.spec.model.flops_per_sample();
        let amount = match kind {
            CreditKind::Work => self.spec.task_flops(),
            _ => u64::from(self.spec.verify.challenges) * per_step,
        };
        let round = self.round.unwrap().0;
        self.apply(u(EntryBody::Credit {
            round,
            key,
            amount: Amount(amount),
            task,
            kind,
        }))
    }

    /// A task accepted by the verifier and, if `refereed`, by the referee; credited.
    fn accepted_task(&mut self, refereed: bool) -> TaskId {
        let (task, steps) = self.task(true);
        self.verdict(&self.verifier.clone(), task, &steps, true);
        if refereed {
            self.verdict(&self.referee.clone(), task, &steps, true);
        }
        self.credit(pk(&self.worker), task, CreditKind::Work)
            .unwrap();
        self.credit(pk(&self.verifier), task, CreditKind::Verification)
            .unwrap();
        self.merged
            .push(Digest::of(format!("delta {}", task.0).as_bytes()));
        task
    }

    fn close(&mut self) {
        let (round, beacon) = self.round.take().unwrap();
        self.ok(u(EntryBody::RoundClosed {
            round,
            beacon: Digest(beacon),
            new_model: Digest::of(format!("model {}", round.0 + 1).as_bytes()),
            val_loss_bits: 1f32.to_bits(),
            accepted_tasks: self.merged.len() as u32,
            val_windows: 1,
            momentum: None,
            merged: self.merged.clone(),
        }));
    }

    fn balance(&self, key: &SigningKey) -> u64 {
        self.state
            .fold()
            .balances()
            .get(&pk(key))
            .map_or(0, |a| a.0)
    }
}

fn u(body: EntryBody) -> Entry {
    Entry::unsigned(body).unwrap()
}

fn opening(task: TaskId) -> Digest {
    Digest::of(format!("opening {}", task.0).as_bytes())
}

/// The Sybil pair on fresh keys: the partner verifier's acceptance alone does not
/// credit a key on probation; the referee's acceptance does, and builds its record.
#[test]
fn a_key_on_probation_is_credited_only_on_the_referees_replay() {
    let mut log = Log::new(2);
    log.open_round(0);
    assert!(log.state.on_probation(&pk(&log.worker)));
    let (task, steps) = log.task(true);
    log.verdict(&log.verifier.clone(), task, &steps, true);
    let refused = log.credit(pk(&log.worker), task, CreditKind::Work);
    assert!(
        matches!(
            refused,
            Err(Violation::ProbationUnrefereed {
                record: 0,
                needed: 2,
                ..
            })
        ),
        "{refused:?}"
    );
    log.verdict(&log.referee.clone(), task, &steps, true);
    log.credit(pk(&log.worker), task, CreditKind::Work).unwrap();
    log.merged.push(Digest::of(b"d0"));
    assert_eq!(log.state.record(&pk(&log.worker)), 1);
    log.accepted_task(true);
    assert_eq!(log.state.record(&pk(&log.worker)), 2);
    // Out of probation: one verifier's acceptance is enough now.
    assert!(!log.state.on_probation(&pk(&log.worker)));
    log.accepted_task(false);
    log.close();
    assert_eq!(log.state.record(&pk(&log.worker)), 3);
}

/// The self-accusation farm: the partner verifier rejects the throwaway worker's
/// junk, the referee agrees and slashes an empty key. The conviction is right, but
/// it is not paid: the worker had nothing at stake.
#[test]
fn convicting_a_throwaway_key_pays_nothing() {
    let mut log = Log::new(2);
    log.open_round(0);
    let (task, steps) = log.task(true);
    log.verdict(&log.verifier.clone(), task, &steps, false);
    log.verdict(&log.referee.clone(), task, &steps, false);
    assert_eq!(log.state.task_at_stake(task), Some(false));
    let refused = log.credit(pk(&log.verifier), task, CreditKind::Verification);
    assert!(
        matches!(refused, Err(Violation::CheapConviction { .. })),
        "{refused:?}"
    );
}

/// The same conviction pays once the worker had something to lose: it passed its
/// probation (and its credit is forfeit by the slash).
#[test]
fn convicting_a_trusted_key_is_paid() {
    let mut log = Log::new(1);
    log.open_round(0);
    log.accepted_task(true);
    log.close();
    log.open_round(1);
    let (task, steps) = log.task(true);
    assert_eq!(log.state.task_at_stake(task), Some(true));
    log.verdict(&log.verifier.clone(), task, &steps, false);
    log.verdict(&log.referee.clone(), task, &steps, false);
    log.credit(pk(&log.verifier), task, CreditKind::Verification)
        .unwrap();
}

/// Selective opening: the worker commits, sees that its poisoned step is
/// challenged, and does not open. Its credit of the round still open is forfeit, its
/// vested credit stays, and its record starts again (so its next tasks are refereed).
#[test]
fn not_opening_forfeits_unvested_credit_and_the_record() {
    let mut log = Log::new(1);
    log.open_round(0);
    log.accepted_task(true);
    log.close();
    let vested = log.balance(&log.worker);
    assert!(vested > 0);
    log.open_round(1);
    log.accepted_task(false);
    assert!(log.state.fold().pending().contains_key(&pk(&log.worker)));
    let (task, _) = log.task(false);
    // A `not_judged` ending of an unopened task is refused: the reason is checked.
    let lie = log.apply(u(EntryBody::TaskEnded {
        task,
        reason: EndReason::NotJudged,
    }));
    assert!(matches!(lie, Err(Violation::EndReason { .. })), "{lie:?}");
    log.ok(u(EntryBody::TaskEnded {
        task,
        reason: EndReason::NotOpened,
    }));
    assert!(!log.state.fold().pending().contains_key(&pk(&log.worker)));
    assert!(log.state.on_probation(&pk(&log.worker)));
    log.close();
    assert_eq!(
        log.balance(&log.worker),
        vested,
        "round 1's credit never vests"
    );
    // The verifier keeps what it earned: it did nothing wrong.
    assert!(log.balance(&log.verifier) > 0);
}

/// A probation task its verifier accepted but the referee had not judged when the
/// round closed is owed nothing: it ends `not_judged` (a close that tried to write
/// this used to be refused as "owed its credit", and the round never closed).
#[test]
fn an_unrefereed_probation_task_ends_not_judged() {
    let mut log = Log::new(2);
    log.open_round(0);
    let (task, steps) = log.task(true);
    log.verdict(&log.verifier.clone(), task, &steps, true);
    assert!(log.credit(pk(&log.worker), task, CreditKind::Work).is_err());
    log.ok(u(EntryBody::TaskEnded {
        task,
        reason: EndReason::NotJudged,
    }));
    log.close();
    assert_eq!(log.balance(&log.worker), 0);
}

/// The lazy verifier: with replay checks on, an acceptance without the verifier's
/// replay digest is refused outright (it could not be checked).
#[test]
fn an_acceptance_without_its_replay_digest_is_refused() {
    let mut log = Log::with_replay_checks(0.05);
    log.open_round(0);
    let (task, steps) = log.task(true);
    let bare = log.verdict_entry(&log.verifier.clone(), task, &steps, true, None);
    let refused = log.apply(bare);
    assert!(
        matches!(refused, Err(Violation::AcceptWithoutReplay { .. })),
        "{refused:?}"
    );
    log.verdict(&log.verifier.clone(), task, &steps, true);
}

/// A key's first acceptance is always marked for the referee's replay check, so a
/// coordinator that credits it on that acceptance alone, without the check, closes
/// a round its auditor refuses; with the referee's ruling it closes.
#[test]
fn a_first_acceptance_is_credited_only_after_the_referees_check() {
    let mut log = Log::with_replay_checks(0.05);
    log.open_round(0);
    log.accepted_task(false);
    let (round, beacon) = log.round.take().unwrap();
    let skipped = log.apply(u(EntryBody::RoundClosed {
        round,
        beacon: Digest(beacon),
        new_model: Digest::of(b"model 1"),
        val_loss_bits: 1f32.to_bits(),
        accepted_tasks: 1,
        val_windows: 1,
        momentum: None,
        merged: log.merged.clone(),
    }));
    assert!(
        matches!(
            skipped,
            Err(Violation::SkippedReplayCheck { ordinal: 1, .. })
        ),
        "{skipped:?}"
    );

    let mut log = Log::with_replay_checks(0.05);
    log.open_round(0);
    log.accepted_task(true);
    log.close();
}

/// A slash for a wrong replay digest stands only on the referee's acceptance of the
/// task, naming the opening it replayed (which `lupus-audit --replay` re-checks), and
/// only against a verifier that accepted it.
#[test]
fn a_wrong_digest_slash_cites_an_accepting_ruling() {
    let mut log = Log::with_replay_checks(0.05);
    log.open_round(0);
    let (task, steps) = log.task(true);
    log.verdict(&log.verifier.clone(), task, &steps, true);
    let verifier = pk(&log.verifier);
    let slash = |evidence| {
        u(EntryBody::Slashed {
            key: verifier,
            task,
            reason: "accepted without its replay".into(),
            evidence,
        })
    };
    // Before any ruling: no ground.
    let early = log.apply(slash(Some(opening(task))));
    assert!(
        matches!(early, Err(Violation::SlashWithoutConviction { .. })),
        "{early:?}"
    );
    log.verdict(&log.referee.clone(), task, &steps, true);
    // Not the worker, whom an acceptance does not convict.
    let worker = log.apply(u(EntryBody::Slashed {
        key: pk(&log.worker),
        task,
        reason: String::new(),
        evidence: Some(opening(task)),
    }));
    assert!(
        matches!(worker, Err(Violation::SlashWithoutConviction { .. })),
        "{worker:?}"
    );
    // Not without the evidence to replay, nor with other evidence.
    let bare = log.apply(slash(None));
    assert!(
        matches!(bare, Err(Violation::SlashWithoutConviction { .. })),
        "{bare:?}"
    );
    let other = log.apply(slash(Some(Digest::of(b"other"))));
    assert!(
        matches!(other, Err(Violation::SlashEvidence { .. })),
        "{other:?}"
    );
    log.ok(slash(Some(opening(task))));
    assert!(log.state.fold().is_slashed(&pk(&log.verifier)));
}

/// Without replay checks the same slash has no ground: an acceptance the referee
/// agrees with convicts nobody.
#[test]
fn without_replay_checks_an_agreeing_acceptance_convicts_nobody() {
    let mut log = Log::new(0);
    log.open_round(0);
    let (task, steps) = log.task(true);
    log.verdict(&log.verifier.clone(), task, &steps, true);
    let ruling = log.verdict_entry(
        &log.referee.clone(),
        task,
        &steps,
        true,
        Some(opening(task)),
    );
    log.ok(ruling);
    let refused = log.apply(u(EntryBody::Slashed {
        key: pk(&log.verifier),
        task,
        reason: String::new(),
        evidence: Some(opening(task)),
    }));
    assert!(
        matches!(refused, Err(Violation::SlashWithoutConviction { .. })),
        "{refused:?}"
    );
}
