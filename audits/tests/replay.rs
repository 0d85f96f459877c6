//! `--replay` against a coordinator API held in memory: an honest task's opening
//! replays; the same opening against a commitment it does not open, or a base model
//! the round did not name, contradicts the accepted verdict and is reported at the
//! verdict's index; a blob that is not what its name says is refused.

mod common;

use common::MemSource;
use std::collections::HashMap;

use lupus_api::types::{Challenge, JobInfo, TaskState, TaskStatus};
use lupus_audit::replay::{Candidate, replay};
use lupus_audit::sample::SAMPLE_SPEC;
use lupus_audit::verify::AuditError;
use lupus_ledger::entry::{Digest, PublicKey, Round, TaskId};
use lupus_protocol::JobFacts;
use lupus_prover::data::Corpus;
use lupus_prover::model::init_params;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::run_task;

/// The honest task's worker: it signs the backward pass its openings recompute.
fn worker_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9; 32])
}

fn worker_pub() -> PublicKey {
    PublicKey(worker_key().verifying_key().to_bytes())
}

struct World {
    source: MemSource,
    facts: JobFacts,
    honest: Candidate,
    /// A fraud proof against the honest task that does not convict.
    not_guilty: Digest,
}

fn world() -> World {
    let spec = JobSpec::parse(SAMPLE_SPEC).unwrap();
    let corpus = Corpus::generated(7, 24_000);
    let base = init_params(&spec.model, [1; 32]).unwrap();
    let seed = [5u8; 32];
    let run = run_task(&spec, &corpus, &base, seed, &mut |_, _| {}).unwrap();
    let steps = vec![1, 3, 5, 7];
    let opening = run
        .open(&spec, &corpus, &steps, false, &worker_key())
        .unwrap();
    let opening_bytes = opening.to_bytes();
    let model = lupus_api::model::encode_model(&base);
    let other_model = lupus_api::model::encode_model(&init_params(&spec.model, [2; 32]).unwrap());
    let dataset_root = corpus.commitment(spec.dataset.chunk_size).unwrap().root;
    let task = TaskId(7);
    let proof = lupus_prover::verify::dispute_op(&spec, &corpus, &base, &seed, &opening, 1, 0)
        .expect("a dispute of step 1's first op");
    // Well formed and checked: the honest op is not guilty.
    let ctx = lupus_prover::fraud::FraudContext {
        trace_root: run.commitment.trace_root,
        steps: spec.inner.steps,
        base_state_hash: lupus_prover::trace::base_state_hash(&base),
        worker: worker_pub().0,
    };
    assert_eq!(
        proof.check(&ctx).unwrap(),
        lupus_prover::fraud::FraudVerdict::NotGuilty
    );
    let proof_bytes = serde_json::to_vec(&proof).unwrap();
    let not_guilty = Digest::of(&proof_bytes);
    let mut blobs = HashMap::new();
    for b in [
        proof_bytes,
        corpus.bytes().to_vec(),
        opening_bytes.clone(),
        model.clone(),
        other_model,
    ] {
        blobs.insert(format!("v1/blobs/{}", Digest::of(&b)), b);
    }
    let info = JobInfo {
        job_spec: SAMPLE_SPEC.into(),
        job_hash: spec.hash(),
        dataset_root,
        dataset_blob: Digest::of(corpus.bytes()),
        dataset_len: corpus.bytes().len() as u64,
        log_key: String::new(),
        keep_openings: None,
    };
    blobs.insert("v1/job".into(), serde_json::to_vec(&info).unwrap());
    let status = TaskStatus {
        tolerant: false,
        task_id: task,
        round: Round(1),
        worker: worker_pub(),
        state: TaskState::Accepted,
        challenge: Some(Challenge {
            task_id: task,
            steps: steps.clone(),
            tolerant: false,
        }),
        verdicts: vec![],
        opening_blob: Some(Digest::of(&opening_bytes)),
        retired: false,
    };
    blobs.insert("v1/tasks/7".into(), serde_json::to_vec(&status).unwrap());
    World {
        not_guilty,
        source: MemSource(blobs),
        facts: JobFacts {
            job_hash: spec.hash(),
            dataset_root,
            inner_steps: spec.inner.steps,
            batch_size: spec.inner.batch_size,
            challenges: spec.verify.challenges,
            flops_per_sample: spec.model.flops_per_sample(),
            double_check_fraction: spec.verify.double_check_fraction,
            probation_tasks: spec.verify.probation_tasks,
            replay_checks: spec.verify.replay_checks,
        },
        honest: Candidate {
            task,
            worker: worker_pub(),
            base_model: Digest::of(&model),
            seed: Digest(seed),
            commitment: (
                run.commitment.trace_root,
                run.commitment.final_state_hash,
                run.commitment.delta_hash,
            ),
            steps,
            verdict_index: 42,
            accepted: true,
            round: Round(1),
            ruled: false,
            evidence: None,
            accepts: Vec::new(),
            slashes: Vec::new(),
        },
    }
}

/// Proof of replay: the operator's referee accepts honest work and slashes the
/// honest verifier that accepted it "for a wrong replay digest". The replay
/// recomputes the verifier's digest, finds it is the one the verifier signed, and
/// names the slash; a lazy verifier's slash (a digest that is not the replay's)
/// stands.
#[test]
fn a_wrong_digest_slash_of_a_verifier_that_replayed_is_named() {
    use lupus_prover::verify::{DeviceClass, ReplayDigest, verify_opening_digests};
    let w = world();
    let spec = JobSpec::parse(SAMPLE_SPEC).unwrap();
    let corpus = Corpus::generated(7, 24_000);
    let base = init_params(&spec.model, [1; 32]).unwrap();
    let run = run_task(&spec, &corpus, &base, [5u8; 32], &mut |_, _| {}).unwrap();
    let opening = run
        .open(&spec, &corpus, &w.honest.steps, false, &worker_key())
        .unwrap();
    let (honest, lazy) = (PublicKey([0x11; 32]), PublicKey([0x22; 32]));
    let mut ds = [ReplayDigest::new(&honest.0, w.honest.task.0)];
    verify_opening_digests(
        &spec,
        &corpus,
        &base,
        &[5u8; 32],
        &run.commitment,
        &worker_pub().0,
        &w.honest.steps,
        &opening,
        DeviceClass::Exact,
        &mut ds,
    )
    .unwrap();
    let right = Digest(ds[0].finish().0);
    let mut ruled = w.honest.clone();
    ruled.ruled = true;
    ruled.accepts = vec![(honest, Some(right)), (lazy, Some(Digest([0x33; 32])))];
    ruled.slashes = vec![(lazy, 50)];
    assert_eq!(replay(&w.source, &w.facts, &[ruled.clone()]).unwrap(), 1);
    ruled.slashes.push((honest, 51));
    let err = replay(&w.source, &w.facts, &[ruled]).unwrap_err();
    assert!(
        matches!(&err, AuditError::Replay { index: Some(51), reason } if reason.contains("is the replay's")),
        "{err}"
    );
}

#[test]
fn an_honest_opening_replays_and_a_contradicted_verdict_is_named() {
    let w = world();
    assert_eq!(
        replay(&w.source, &w.facts, std::slice::from_ref(&w.honest)).unwrap(),
        1
    );

    // The log's commitment is not the one the opening opens.
    let mut lied = w.honest.clone();
    lied.commitment.2 = Digest([3; 32]);
    let err = replay(&w.source, &w.facts, &[lied]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Replay {
                index: Some(42),
                ..
            }
        ),
        "{err}"
    );

    // Another base model than the one the opening was trained from.
    let other = w
        .source
        .0
        .keys()
        .filter_map(|k| k.strip_prefix("v1/blobs/"))
        .map(|h| Digest::from_hex(h).unwrap())
        .find(|h| {
            *h != w.honest.base_model
                && w.source.0[&format!("v1/blobs/{h}")].len()
                    == w.source.0[&format!("v1/blobs/{}", w.honest.base_model)].len()
        })
        .unwrap();
    let mut wrong_base = w.honest.clone();
    wrong_base.base_model = other;
    let err = replay(&w.source, &w.facts, &[wrong_base]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Replay {
                index: Some(42),
                ..
            }
        ),
        "{err}"
    );
}

/// The operator's referee rejects honest work and slashes its worker: the ruling is in
/// the log and convicts by the protocol's rules, but a replay of the opening says the
/// work was right. The replay names the ruling.
#[test]
fn a_rejection_that_the_replay_does_not_bear_out_is_named() {
    let w = world();
    let mut ruled = w.honest.clone();
    ruled.accepted = false;
    let err = replay(&w.source, &w.facts, &[ruled]).unwrap_err();
    assert!(
        matches!(&err, AuditError::Replay { index: Some(42), reason } if reason.contains("slash cites")),
        "{err}"
    );
    // A fraud proof named as the ruling's evidence that does not convict (here a
    // dispute of honest work: not guilty) does not save it: the replay decides.
    let mut proven = w.honest.clone();
    proven.accepted = false;
    proven.evidence = Some(w.not_guilty);
    let err = replay(&w.source, &w.facts, &[proven.clone()]).unwrap_err();
    assert!(err.to_string().contains("slash cites"), "{err}");
    // Nor does evidence the coordinator cannot serve.
    proven.evidence = Some(Digest([0xee; 32]));
    let err = replay(&w.source, &w.facts, &[proven]).unwrap_err();
    assert!(err.to_string().contains("slash cites"), "{err}");
    // A rejection of work that does not replay stands.
    let mut bad = w.honest.clone();
    bad.accepted = false;
    bad.commitment.2 = Digest([3; 32]);
    assert_eq!(replay(&w.source, &w.facts, &[bad]).unwrap(), 1);
}

#[test]
fn a_blob_that_is_not_what_its_name_says_or_another_job_is_refused() {
    let mut w = world();
    let key = format!("v1/blobs/{}", w.honest.base_model);
    w.source.0.get_mut(&key).unwrap()[20] ^= 1;
    let err = replay(&w.source, &w.facts, std::slice::from_ref(&w.honest)).unwrap_err();
    assert!(matches!(err, AuditError::Replay { .. }), "{err}");
    assert!(
        err.to_string().contains("does not hash to its name"),
        "{err}"
    );

    let w = world();
    let mut facts = w.facts.clone();
    facts.job_hash = Digest([0; 32]);
    let err = replay(&w.source, &facts, std::slice::from_ref(&w.honest)).unwrap_err();
    assert!(
        matches!(err, AuditError::Replay { index: Some(0), .. }),
        "{err}"
    );
}
