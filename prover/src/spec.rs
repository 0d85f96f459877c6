//! The job spec: the TOML file that fixes the data, the model, the optimizers and the
//! verification parameters of a training job.
//!
//! DESIGN.md ("The loop", "Model and data", "Shares"): genesis commits the job spec by
//! [`JobSpec::hash`]; a task's `H`, batch size, hyperparameters and the number of
//! challenges all come from here. [`JobSpec::parse`] is the only way in: it rejects
//! unknown fields and checks every value, naming the field, so the rest of the code trusts
//! a `JobSpec`.
//!
//! Hash: `BLAKE3-keyed(K_"lupus job spec v1", canonical TOML)` where the canonical TOML
//! is the validated spec serialised again by the `toml` crate (fields in declaration
//! order), so comments and formatting do not change the hash but every value does.

use serde::{Deserialize, Serialize};

use crate::data::Alphabet;
use crate::merkle::Digest;
use crate::model::ModelSpec;
use crate::optim::{AdamW, OuterNesterov};
use crate::prf::domain_hasher;

/// The most inner steps a task may have (a trace of `H + 1` leaves).
pub const MAX_STEPS: u32 = 1 << 20;

/// A bad job spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("the job spec is not valid TOML for a job: {0}")]
    Toml(String),
    #[error("`{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// `[job]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// A short name shown to people.
    pub name: String,
}

/// `[dataset]`: where the corpus comes from and how it is committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    pub name: String,
    /// The package that holds the texts (fetched by the coordinator, never here).
    pub package: String,
    pub version: String,
    /// sha256 of the package archive, 64 lowercase hex characters.
    pub sha256: String,
    /// Bytes per committed chunk.
    pub chunk_size: u32,
    /// Share of chunks held out for validation, in (0, 1), a whole number of per mille.
    pub val_fraction: f64,
}

impl DatasetSection {
    /// `val_fraction` in per mille (exact after validation).
    pub fn val_permille(&self) -> u32 {
        (self.val_fraction * 1000.0).round() as u32
    }
}

/// The inner optimizer's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InnerOptimizer {
    AdamW,
}

/// `[inner]`: the worker's optimizer and the task shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InnerSection {
    pub optimizer: InnerOptimizer,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `H`: inner steps per task.
    pub steps: u32,
    /// Windows per batch.
    pub batch_size: u32,
    /// `k`: the worker keeps the full state every `k` steps.
    pub checkpoint_interval: u32,
    /// The learning rate rises linearly over each task's first `warmup_steps` steps
    /// ([`AdamW::lr_at`]); at most `steps`. 0 (the default) for none, left out of the
    /// canonical TOML so a spec without it keeps its hash.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_steps: u32,
}

impl InnerSection {
    /// The AdamW settings.
    pub fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
        }
    }
}

/// `[outer]`: DiLoCo's outer Nesterov step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterSection {
    pub lr: f32,
    pub momentum: f32,
    /// The merged delta's L2 norm is clipped to this.
    pub clip_norm: f32,
}

impl OuterSection {
    /// The outer optimizer settings.
    pub fn nesterov(&self) -> OuterNesterov {
        OuterNesterov {
            lr: self.lr,
            momentum: self.momentum,
        }
    }
}

/// `[verify]`: challenges and the tolerant class's bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// `m`: distinct steps challenged per task.
    pub challenges: u32,
    /// Tolerant class: the largest accepted relative L2 distance
    /// `||worker - replay|| / max(||replay||, 1e-30)` of any tensor of `S_{t+1}`.
    pub tolerance: f32,
    /// Share of accepted tasks whose challenges a second verifier re-checks, in [0, 1].
    pub double_check_fraction: f64,
    /// Trust is earned: a worker key's work is credited only on the referee's own
    /// replay until it has this many tasks credited since its last failure (a task
    /// it committed and did not open). 0 (the default) trusts every key from its
    /// first task. At most 1000. Left out of the canonical TOML when 0, so the hash
    /// of a spec that does not use it is what it was before the field existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probation_tasks: u32,
    /// Proof of replay (issue 13): when above 0, a verifier's acceptance carries a
    /// keyed digest of its own replay ([`crate::verify::replay_digest`]), and the
    /// referee re-replays a verifier key's `j`-th acceptance with probability
    /// `max(2 / (j + 1), replay_checks)`: always its first, and at least this share
    /// of the rest. A digest that is not the replay's slashes the verifier. In [0, 1];
    /// 0 (the default) turns it off and is left out of the canonical TOML.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub replay_checks: f64,
}

pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

/// A validated job spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobSpec {
    pub job: JobSection,
    pub dataset: DatasetSection,
    pub model: ModelSpec,
    pub inner: InnerSection,
    pub outer: OuterSection,
    pub verify: VerifySection,
}

fn finite_positive(field: &'static str, x: f32) -> Result<(), SpecError> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be a finite number > 0, got {x}"),
        ))
    }
}

fn unit_open(field: &'static str, x: f32) -> Result<(), SpecError> {
    if x.is_finite() && x > 0.0 && x < 1.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be in (0, 1), got {x}")))
    }
}

impl JobSpec {
    /// Parses and validates a job spec.
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; `parse` calls it.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.job.name.trim().is_empty() {
            return Err(invalid("job.name", "must not be empty"));
        }
        let d = &self.dataset;
        if d.sha256.len() != 64
            || !d
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(
                "dataset.sha256",
                "must be 64 lowercase hex characters",
            ));
        }
        if d.chunk_size == 0 {
            return Err(invalid("dataset.chunk_size", "must be at least 1"));
        }
        let vf = d.val_fraction;
        if !(vf.is_finite() && vf > 0.0 && vf < 1.0) {
            return Err(invalid(
                "dataset.val_fraction",
                format!("must be in (0, 1), got {vf}"),
            ));
        }
        if (vf * 1000.0 - (vf * 1000.0).round()).abs() > 1e-9 {
            return Err(invalid(
                "dataset.val_fraction",
                "must be a whole number of per mille (e.g. 0.1)",
            ));
        }
        self.model
            .validate()
            .map_err(|e| invalid("model", e.to_string()))?;
        if self.model.vocab() != Alphabet::SIZE {
            return Err(invalid(
                "model.vocab",
                format!(
                    "must equal the data alphabet's size {}, got {}",
                    Alphabet::SIZE,
                    self.model.vocab()
                ),
            ));
        }
        let i = &self.inner;
        finite_positive("inner.lr", i.lr)?;
        unit_open("inner.beta1", i.beta1)?;
        unit_open("inner.beta2", i.beta2)?;
        finite_positive("inner.eps", i.eps)?;
        if !(i.weight_decay.is_finite() && i.weight_decay >= 0.0) {
            return Err(invalid(
                "inner.weight_decay",
                "must be a finite number >= 0",
            ));
        }
        if i.steps == 0 || i.steps > MAX_STEPS {
            return Err(invalid(
                "inner.steps",
                format!("(H) must be in 1..={MAX_STEPS}, got {}", i.steps),
            ));
        }
        if i.batch_size == 0 {
            return Err(invalid("inner.batch_size", "must be at least 1"));
        }
        if i.checkpoint_interval == 0 {
            return Err(invalid(
                "inner.checkpoint_interval",
                "(k) must be at least 1",
            ));
        }
        if i.warmup_steps > i.steps {
            return Err(invalid(
                "inner.warmup_steps",
                format!(
                    "must be at most inner.steps ({}), got {}",
                    i.steps, i.warmup_steps
                ),
            ));
        }
        let o = &self.outer;
        finite_positive("outer.lr", o.lr)?;
        if !(o.momentum.is_finite() && (0.0..1.0).contains(&o.momentum)) {
            return Err(invalid("outer.momentum", "must be in [0, 1)"));
        }
        finite_positive("outer.clip_norm", o.clip_norm)?;
        let v = &self.verify;
        if v.challenges == 0 || v.challenges > i.steps {
            return Err(invalid(
                "verify.challenges",
                format!(
                    "(m) must be in 1..=inner.steps ({}), got {}",
                    i.steps, v.challenges
                ),
            ));
        }
        if !(v.tolerance.is_finite() && v.tolerance >= 0.0) {
            return Err(invalid("verify.tolerance", "must be a finite number >= 0"));
        }
        let dc = v.double_check_fraction;
        if !(dc.is_finite() && (0.0..=1.0).contains(&dc)) {
            return Err(invalid("verify.double_check_fraction", "must be in [0, 1]"));
        }
        if v.probation_tasks > 1000 {
            return Err(invalid("verify.probation_tasks", "must be at most 1000"));
        }
        let rc = v.replay_checks;
        if !(rc.is_finite() && (0.0..=1.0).contains(&rc)) {
            return Err(invalid("verify.replay_checks", "must be in [0, 1]"));
        }
        Ok(())
    }

    /// The canonical TOML (see the module docs).
    pub fn canonical_toml(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// `BLAKE3-keyed(K_"lupus job spec v1", canonical TOML)`.
    pub fn hash(&self) -> Digest {
        let mut h = domain_hasher("lupus job spec v1");
        h.update(self.canonical_toml().as_bytes());
        h.finalize().into()
    }

    /// Training FLOPs credited for one accepted task: `H x batch x FLOPs per sample`.
    pub fn task_flops(&self) -> u64 {
        u64::from(self.inner.steps)
            * u64::from(self.inner.batch_size)
            * self.model.flops_per_sample()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAKESPEARE: &str = include_str!("../../jobs/shakespeare-mlp.toml");

    #[test]
    fn the_shipped_job_parses_and_its_hash_ignores_comments() {
        let j = JobSpec::parse(SHAKESPEARE).unwrap();
        assert_eq!(j.dataset.val_permille(), 100);
        let stripped: String = SHAKESPEARE
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(JobSpec::parse(&stripped).unwrap().hash(), j.hash());
        let mut k = j.clone();
        k.inner.steps += 1;
        assert_ne!(k.hash(), j.hash());
    }

    /// Every job file that ships parses and validates, its model among them.
    #[test]
    fn every_shipped_job_parses() {
        for text in [
            SHAKESPEARE,
            include_str!("../../jobs/shakespeare-gpt.toml"),
            include_str!("../../jobs/shakespeare-gpt-long.toml"),
            include_str!("../../jobs/shakespeare-gpt-medium.toml"),
            include_str!("../../jobs/shakespeare-gpt-large.toml"),
            include_str!("../../jobs/tiny-test.toml"),
        ] {
            let j = JobSpec::parse(text).unwrap();
            j.model.validate().unwrap();
        }
    }

    /// The long-task job is the default job with `H = 1024` and its own name, nothing
    /// else: its DiLoCo figures (docs/BENCHMARKS.md) say what longer tasks alone do.
    #[test]
    fn the_long_job_is_the_default_with_longer_tasks() {
        let default = JobSpec::parse(include_str!("../../jobs/shakespeare-gpt.toml")).unwrap();
        let long = JobSpec::parse(include_str!("../../jobs/shakespeare-gpt-long.toml")).unwrap();
        assert_eq!((default.inner.steps, long.inner.steps), (128, 1024));
        assert_ne!(long.job.name, default.job.name);
        let mut back = long.clone();
        back.inner.steps = default.inner.steps;
        back.job.name = default.job.name.clone();
        assert_eq!(back, default);
        assert_eq!(back.hash(), default.hash());
    }

    fn with(from: &str, to: &str) -> Result<JobSpec, SpecError> {
        assert!(SHAKESPEARE.contains(from), "{from}");
        JobSpec::parse(&SHAKESPEARE.replacen(from, to, 1))
    }

    fn field_of(r: Result<JobSpec, SpecError>) -> &'static str {
        match r {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn invalid_values_name_their_field() {
        assert_eq!(field_of(with("steps = 128", "steps = 0")), "inner.steps");
        assert_eq!(
            field_of(with("challenges = 4", "challenges = 129")),
            "verify.challenges"
        );
        assert_eq!(
            field_of(with("checkpoint_interval = 16", "checkpoint_interval = 0")),
            "inner.checkpoint_interval"
        );
        assert_eq!(
            field_of(with("batch_size = 128", "batch_size = 0")),
            "inner.batch_size"
        );
        assert_eq!(field_of(with("vocab = 96", "vocab = 95")), "model.vocab");
        assert_eq!(
            field_of(with("val_fraction = 0.1", "val_fraction = 1.5")),
            "dataset.val_fraction"
        );
        assert_eq!(field_of(with("beta2 = 0.99", "beta2 = 1.0")), "inner.beta2");
        assert_eq!(
            field_of(with("steps = 128", "steps = 128\nwarmup_steps = 129")),
            "inner.warmup_steps"
        );
    }

    /// A warm-up is part of the job: it reaches the optimizer and the hash, and a spec
    /// without one hashes as it did before the field existed.
    #[test]
    fn the_warm_up_is_in_the_optimizer_and_the_hash() {
        let j = with("steps = 128", "steps = 128\nwarmup_steps = 0").unwrap();
        assert_eq!(j.hash(), JobSpec::parse(SHAKESPEARE).unwrap().hash());
        let w = with("steps = 128", "steps = 128\nwarmup_steps = 16").unwrap();
        assert_eq!(w.inner.adamw().warmup_steps, 16);
        assert_ne!(w.hash(), j.hash());
    }

    #[test]
    fn unknown_fields_and_model_kinds_are_toml_errors() {
        assert!(matches!(
            with("kind = \"mlp\"", "kind = \"lstm\""),
            Err(SpecError::Toml(_))
        ));
        assert!(matches!(
            with("[outer]", "[outer]\nsurprise = 1"),
            Err(SpecError::Toml(_))
        ));
        assert!(matches!(
            JobSpec::parse("not toml ["),
            Err(SpecError::Toml(_))
        ));
    }
}
