//! The rational zoo (issue 13): strategies that a rational adversary, who runs
//! whatever pays and makes as many keys as it likes, would try, each against honest
//! workers and verifiers on a coordinator of its own; `lupus-bench incentives` prints
//! the report.
//!
//! For every strategy the figure is **credit per CPU-second against honest work**:
//! the final shares of every key the adversary used over the CPU time of its threads,
//! divided by the same ratio of the honest participants of the same run. Each slot
//! runs on a thread of its own, where the worker loop computes, so a thread's CPU time
//! (user and system, from `/proc/thread-self/stat`) is what that slot spent. Credit is
//! read back from the ledger (the stake table after the last close), never from the
//! participants.
//!
//! Detection is counted per cheating act (a task a cheating worker committed, or a
//! verdict a partner or lazy verifier signed without replaying): caught when the act
//! earned nothing (the task uncredited, the verifier's key slashed, the rejection
//! unpaid), with its 99% Wilson interval. Damage is the final validation loss against
//! an honest-only run of the same size, with a second honest run for the noise.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lupus_ledger::entry::PublicKey;
use lupus_worker::conduct::{Conduct, Judgement, VerifyContext, replay};
use lupus_worker::worker::WorkerError;
use serde::Serialize;

use crate::{
    Behaviour, CpuTimes, Phase, Registry, Slot, VerifierBehaviour, ZooConfig, ZooError, run_phase,
    wilson,
};

/// Adds its thread's CPU time to slot `index`'s when dropped (at the thread's end).
pub(crate) struct ThreadCpu {
    index: usize,
    cpu: CpuTimes,
}

impl ThreadCpu {
    pub(crate) fn new(index: usize, cpu: CpuTimes) -> ThreadCpu {
        ThreadCpu { index, cpu }
    }
}

impl Drop for ThreadCpu {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut cpu)) = (thread_cpu_seconds(), self.cpu.lock()) {
            *cpu.entry(self.index).or_default() += s;
        }
    }
}

/// The calling thread's CPU time: from `/proc/thread-self/schedstat` (nanoseconds on
/// a CPU), else `/proc/thread-self/stat` (user plus system, fields 14 and 15, in
/// clock ticks of 1/100 s: Linux's USER_HZ on every architecture it runs on). `None`
/// where there is neither.
fn thread_cpu_seconds() -> Option<f64> {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .filter(|ns| *ns > 0.0);
    if let Some(ns) = ns {
        return Some(ns / 1e9);
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A Sybil partner verifier: signs `accept` without replaying on its coalition's
/// tasks (a worker key of one of the coalition's slots), replays honestly otherwise.
#[derive(Debug)]
pub struct Partner {
    pub accept: bool,
    pub(crate) registry: Registry,
    pub(crate) coalition: Arc<HashSet<usize>>,
}

#[async_trait::async_trait(?Send)]
impl Conduct for Partner {
    async fn judge(&self, ctx: &VerifyContext<'_>) -> Result<Judgement, WorkerError> {
        let worker = ctx.work.task.worker;
        let ours = self
            .registry
            .lock()
            .ok()
            .and_then(|r| r.get(&worker).copied())
            .is_some_and(|slot| self.coalition.contains(&slot));
        if !ours {
            return replay(ctx);
        }
        Ok(Judgement {
            accepted: self.accept,
            reason: if self.accept {
                "accepted without replaying".into()
            } else {
                "rejected without replaying".into()
            },
            fraud_proof: None,
            replay: self.accept.then(|| crate::conduct::unreplayed_digest(ctx)),
        })
    }
}

/// A strategy of the rational zoo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A Sybil worker that fakes every step, and a partner verifier that accepts its
    /// tasks without replaying.
    SybilPair,
    /// The pair and a second partner verifier (for the double-checked tasks).
    SybilPairTwoVerifiers,
    /// The patient pair: its worker key trains honestly until it leaves probation,
    /// then fakes every step, and its partner verifier accepts its tasks unreplayed.
    PatientPair,
    /// A verifier that accepts everything without replaying, while every worker is
    /// honest.
    AlwaysAccept,
    /// A throwaway worker submits junk; its partner verifier rejects it without
    /// replaying and would be paid for the conviction.
    SelfAccusationFarm,
    /// A worker that poisons its last step and opens only when that step was not
    /// challenged.
    SelectiveOpening,
    /// A worker that takes tasks and never commits them.
    ClaimSquatting,
    /// A worker that claims the tolerant class and nudges every step toward a fixed
    /// direction within the per-step bound.
    TolerantNudges,
    /// Fresh keys joined as fast as the coordinator allows.
    JoinFlood,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 9] = [
        Strategy::SybilPair,
        Strategy::SybilPairTwoVerifiers,
        Strategy::PatientPair,
        Strategy::AlwaysAccept,
        Strategy::SelfAccusationFarm,
        Strategy::SelectiveOpening,
        Strategy::ClaimSquatting,
        Strategy::TolerantNudges,
        Strategy::JoinFlood,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::SybilPair => "Sybil worker + verifier pair",
            Strategy::SybilPairTwoVerifiers => "pair + a second Sybil verifier",
            Strategy::PatientPair => "patient pair (fakes after probation)",
            Strategy::AlwaysAccept => "always-accept verifier, honest workers",
            Strategy::SelfAccusationFarm => "self-accusation farm",
            Strategy::SelectiveOpening => "selective opening, last-step poison",
            Strategy::ClaimSquatting => "claim squatting",
            Strategy::TolerantNudges => "tolerant-class nudges",
            Strategy::JoinFlood => "join flood",
        }
    }

    /// The adversary's slots.
    fn slots(&self) -> Vec<Slot> {
        let junk = Slot::Worker(Behaviour::FakeSteps { permille: 1000 });
        let accepting = Slot::Verifier(VerifierBehaviour::Partner { accept: true });
        match self {
            Strategy::SybilPair => vec![junk, accepting],
            Strategy::SybilPairTwoVerifiers => vec![junk, accepting, accepting],
            // Honest for twice the bench's default probation of 3 (its record counts
            // credits, which come at a round's close), then fakes.
            Strategy::PatientPair => vec![
                Slot::Worker(Behaviour::PatientFake { honest: 6 }),
                accepting,
            ],
            Strategy::AlwaysAccept => vec![Slot::Verifier(VerifierBehaviour::AlwaysAccept)],
            Strategy::SelfAccusationFarm => vec![
                junk,
                Slot::Verifier(VerifierBehaviour::Partner { accept: false }),
            ],
            Strategy::SelectiveOpening => {
                vec![Slot::Worker(Behaviour::PoisonLastUnlessChallenged)]
            }
            Strategy::ClaimSquatting => vec![Slot::Worker(Behaviour::Squat)],
            Strategy::TolerantNudges => vec![Slot::Worker(Behaviour::TolerantNudge)],
            Strategy::JoinFlood => vec![Slot::JoinFlood],
        }
    }
}

/// One strategy's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StrategyRow {
    pub strategy: Strategy,
    pub name: String,
    /// Final shares of every key the adversary used, and the CPU seconds of its threads.
    pub credit: u64,
    pub cpu_seconds: f64,
    /// The honest participants of the same run.
    pub honest_credit: u64,
    pub honest_cpu_seconds: f64,
    /// Cheating acts, and those that earned nothing.
    pub acts: u64,
    pub caught: u64,
    /// Final validation loss of the run.
    pub val_loss: Option<f32>,
    /// How far the run moved the model along the nudging attacker's direction (the
    /// all-ones vector), in parameter units.
    pub drift: Option<f64>,
    /// Keys the adversary used, and how many were slashed.
    pub keys: u64,
    pub keys_slashed: u64,
    /// Requests of the adversary refused with 429 (the join flood's).
    pub rate_limited: u64,
    /// Entries in the log at the end of the run.
    pub log_entries: u64,
}

impl StrategyRow {
    /// Credit per CPU-second.
    pub fn rate(&self) -> f64 {
        self.credit as f64 / self.cpu_seconds.max(0.01)
    }

    /// Honest credit per CPU-second in the same run.
    pub fn honest_rate(&self) -> f64 {
        self.honest_credit as f64 / self.honest_cpu_seconds.max(0.01)
    }

    /// The adversary's rate over the honest rate.
    pub fn ratio(&self) -> f64 {
        self.rate() / self.honest_rate().max(f64::MIN_POSITIVE)
    }

    /// The 99% Wilson interval of the detection rate.
    pub fn interval(&self) -> Option<(f64, f64)> {
        (self.acts > 0).then(|| wilson(self.caught, self.acts, 2.5758))
    }
}

/// What [`run`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct RationalReport {
    pub rows: Vec<StrategyRow>,
    /// Final validation loss of an honest-only run of the same size, and of a second
    /// one: the noise between two honest runs.
    pub honest_loss: Option<f32>,
    pub honest_again_loss: Option<f32>,
    /// The same runs' drift along the all-ones direction.
    pub honest_drift: Option<f64>,
    pub honest_again_drift: Option<f64>,
    pub steps: u32,
    pub challenges: u32,
    pub double_check_fraction: f64,
    pub probation_tasks: u32,
    pub replay_checks: f64,
    pub rounds: u64,
    pub tasks_per_round: u32,
    pub seconds: f64,
}

fn honest_slots(cfg: &ZooConfig) -> Vec<Slot> {
    std::iter::repeat_n(Slot::Worker(Behaviour::Honest), cfg.honest_workers)
        .chain(std::iter::repeat_n(
            Slot::Verifier(VerifierBehaviour::Honest),
            cfg.honest_verifiers,
        ))
        .collect()
}

/// Runs every strategy of `strategies` in a phase of its own (the honest crowd of
/// `cfg` plus the adversary), then two honest-only phases.
pub async fn run(cfg: &ZooConfig, strategies: &[Strategy]) -> Result<RationalReport, ZooError> {
    let started = std::time::Instant::now();
    let job = lupus_prover::spec::JobSpec::parse(&cfg.job_spec).map_err(crate::zoo_err)?;
    let mut rows = Vec::new();
    for s in strategies {
        let honest = honest_slots(cfg);
        let first_adversary = honest.len();
        let slots: Vec<Slot> = honest.into_iter().chain(s.slots()).collect();
        let phase = run_phase(cfg, slots, false).await?;
        rows.push(row(*s, &phase, first_adversary));
    }
    let honest = run_phase(cfg, honest_slots(cfg), false).await?;
    let again = run_phase(cfg, honest_slots(cfg), false).await?;
    Ok(RationalReport {
        rows,
        honest_loss: honest.ledger.final_loss,
        honest_again_loss: again.ledger.final_loss,
        honest_drift: honest.ledger.drift,
        honest_again_drift: again.ledger.drift,
        steps: job.inner.steps,
        challenges: job.verify.challenges,
        double_check_fraction: job.verify.double_check_fraction,
        probation_tasks: job.verify.probation_tasks,
        replay_checks: job.verify.replay_checks,
        rounds: cfg.rounds,
        tasks_per_round: cfg.tasks_per_round,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn row(strategy: Strategy, p: &Phase, first_adversary: usize) -> StrategyRow {
    let adversary: Vec<usize> = (first_adversary..p.slots.len()).collect();
    let keys_of =
        |slots: &[usize]| -> Vec<PublicKey> { slots.iter().flat_map(|i| p.keys_of(*i)).collect() };
    let credit_of =
        |keys: &[PublicKey]| -> u64 { keys.iter().filter_map(|k| p.ledger.balances.get(k)).sum() };
    let cpu_of = |slots: &[usize]| -> f64 { slots.iter().filter_map(|i| p.cpu.get(i)).sum() };
    let honest: Vec<usize> = (0..first_adversary).collect();
    let adv_keys = keys_of(&adversary);
    let mine: HashSet<PublicKey> = adv_keys.iter().copied().collect();
    let slot_of: HashMap<PublicKey, usize> = p.keys.clone();
    let cheating_worker = |k: &PublicKey| {
        slot_of
            .get(k)
            .is_some_and(|i| *i >= first_adversary && matches!(p.slots[*i], Slot::Worker(_)))
    };
    // A patient worker's first tasks under each key are honest, not acts of cheating.
    let honest_first = |k: &PublicKey| match slot_of.get(k).map(|i| p.slots[*i]) {
        Some(Slot::Worker(Behaviour::PatientFake { honest })) => u64::from(honest),
        _ => 0,
    };
    let mut seen: HashMap<PublicKey, u64> = HashMap::new();
    let (mut acts, mut caught) = (0u64, 0u64);
    // Tasks in id order, so "first" means first committed under the key.
    for t in p.ledger.tasks.values() {
        let worker = t.worker.unwrap_or(PublicKey([0; 32]));
        if cheating_worker(&worker) && t.committed {
            let n = seen.entry(worker).or_default();
            *n += 1;
            if *n > honest_first(&worker) {
                acts += 1;
                // A fake credited and then forfeited by its key's slash earned
                // nothing either.
                caught += u64::from(!t.credited || p.ledger.slashed.contains(&worker));
            }
        }
        for (v, _) in &t.verdicts {
            if !mine.contains(v) || cheating_worker(v) {
                continue;
            }
            // A verdict signed without replaying: the lazy verifier's every verdict,
            // a partner's on its coalition's tasks.
            let lazy = match slot_of.get(v).map(|i| p.slots[*i]) {
                Some(Slot::Verifier(VerifierBehaviour::AlwaysAccept)) => true,
                Some(Slot::Verifier(VerifierBehaviour::Partner { .. })) => cheating_worker(&worker),
                _ => false,
            };
            if !lazy {
                continue;
            }
            acts += 1;
            let paid = !p.ledger.slashed.contains(v) && t.verification_credited.contains(v);
            caught += u64::from(!paid);
        }
    }
    StrategyRow {
        strategy,
        name: strategy.name().to_owned(),
        credit: credit_of(&adv_keys),
        cpu_seconds: cpu_of(&adversary),
        honest_credit: credit_of(&keys_of(&honest)),
        honest_cpu_seconds: cpu_of(&honest),
        acts,
        caught,
        val_loss: p.ledger.final_loss,
        drift: p.ledger.drift,
        keys: adv_keys.len() as u64,
        keys_slashed: adv_keys
            .iter()
            .filter(|k| p.ledger.slashed.contains(k))
            .count() as u64,
        rate_limited: adversary
            .iter()
            .filter(|i| matches!(p.slots[**i], Slot::JoinFlood))
            .filter_map(|i| p.refused.get(i))
            .sum(),
        log_entries: p.ledger.entries,
    }
}

/// The report as `lupus-bench incentives` prints it.
pub fn table(r: &RationalReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rational zoo: H = {}, m = {}, double-checked {}, probation {} tasks, replay checks floor {}; {} rounds of {} tasks per run ({:.0} s)",
        r.steps,
        r.challenges,
        r.double_check_fraction,
        r.probation_tasks,
        r.replay_checks,
        r.rounds,
        r.tasks_per_round,
        r.seconds
    );
    let _ = writeln!(
        s,
        "{:<40} {:>12} {:>8} {:>12} {:>7} {:>5} {:>6} {:>14} {:>9} {:>10} {:>9}",
        "strategy",
        "credit/cpu-s",
        "cpu s",
        "honest c/s",
        "ratio",
        "acts",
        "caught",
        "99% interval",
        "val loss",
        "vs honest",
        "drift"
    );
    for row in &r.rows {
        let ci = row
            .interval()
            .map_or("-".into(), |(lo, hi)| format!("[{lo:.2}, {hi:.2}]"));
        let caught = if row.acts > 0 {
            format!("{:.3}", row.caught as f64 / row.acts as f64)
        } else {
            "-".into()
        };
        let loss = row.val_loss.map_or("-".into(), |l| format!("{l:.4}"));
        let effect = match (row.val_loss, r.honest_loss) {
            (Some(a), Some(b)) => format!("{:+.2}%", (f64::from(a) / f64::from(b) - 1.0) * 100.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<40} {:>12.3e} {:>8.2} {:>12.3e} {:>7.3} {:>5} {:>6} {:>14} {:>9} {:>10} {:>9}",
            row.name,
            row.rate(),
            row.cpu_seconds,
            row.honest_rate(),
            row.ratio(),
            row.acts,
            caught,
            ci,
            loss,
            effect,
            row.drift.map_or("-".into(), |d| format!("{d:+.3}"))
        );
    }
    let f = |x: Option<f32>| x.map_or("-".into(), |v| format!("{v:.4}"));
    for row in r.rows.iter().filter(|r| r.strategy == Strategy::JoinFlood) {
        let _ = writeln!(
            s,
            "join flood: {} keys joined, {} joins refused (429), {} entries in the log at the end",
            row.keys, row.rate_limited, row.log_entries
        );
    }
    let d = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:+.3}"));
    let _ = writeln!(
        s,
        "honest only: val loss {}, drift {}; again: {}, drift {} (the noise between two honest runs)",
        f(r.honest_loss),
        d(r.honest_drift),
        f(r.honest_again_loss),
        d(r.honest_again_drift)
    );
    let _ = writeln!(
        s,
        "(credit in FLOPs of final shares; ratio: the adversary's credit per CPU-second over the honest participants' in the same run; caught: cheating acts that earned nothing; drift: the model's move along the all-ones direction, final minus initial)"
    );
    s
}
