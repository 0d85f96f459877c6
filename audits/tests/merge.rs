//! `--replay-merge` against a coordinator API held in memory: a round whose close
//! logged what the merge gives recomputes; a close that names another new model,
//! another validation loss, another momentum, or a delta blob that is not the credited
//! task's commitment is named at the `RoundClosed` index (the dishonest operator's
//! "wrong new-model hash" and "wrong validation loss"; a real coordinator's rounds
//! recompute in `tests/real_run.rs`).

mod common;

use common::MemSource;
use std::collections::HashMap;

use lupus_api::model::encode_model;
use lupus_api::types::JobInfo;
use lupus_audit::merge::{RoundInputs, replay_merge};
use lupus_audit::sample::SAMPLE_SPEC;
use lupus_audit::verify::AuditError;
use lupus_ledger::entry::{Digest, Round, TaskId};
use lupus_protocol::JobFacts;
use lupus_prover::data::Corpus;
use lupus_prover::graph::eval_loss;
use lupus_prover::model::{init_params, make_batch};
use lupus_prover::optim::{merge_deltas, outer_step};
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{job_sampler, run_task};

fn put(blobs: &mut HashMap<String, Vec<u8>>, bytes: Vec<u8>) -> Digest {
    let d = Digest::of(&bytes);
    blobs.insert(format!("v1/blobs/{d}"), bytes);
    d
}

/// Two honest tasks of one round, merged as the coordinator merges them.
fn world() -> (MemSource, JobFacts, RoundInputs) {
    let spec = JobSpec::parse(SAMPLE_SPEC).unwrap();
    let corpus = Corpus::generated(7, 24_000);
    let base = init_params(&spec.model, [1; 32]).unwrap();
    let mut blobs = HashMap::new();
    let base_model = put(&mut blobs, encode_model(&base));
    let dataset_blob = put(&mut blobs, corpus.bytes().to_vec());
    let dataset_root = corpus.commitment(spec.dataset.chunk_size).unwrap().root;
    let mut committed = Vec::new();
    let mut merged = Vec::new();
    let mut deltas = Vec::new();
    for (task, seed) in [(3u64, [5u8; 32]), (4, [6; 32])] {
        let run = run_task(&spec, &corpus, &base, seed, &mut |_, _| {}).unwrap();
        committed.push((TaskId(task), run.commitment.delta_hash));
        merged.push(put(&mut blobs, run.delta.to_bytes()));
        deltas.push((run.delta.dequantise().unwrap(), 1.0f32));
    }
    let mean = merge_deltas(&deltas, spec.outer.clip_norm).unwrap();
    let mut momentum = Vec::new();
    let new_params = outer_step(&base, &mut momentum, &mean, &spec.outer.nesterov()).unwrap();
    let windows = job_sampler(&spec, &corpus).unwrap().validation(16);
    let batch = make_batch(&spec.model, &windows).unwrap();
    let loss = eval_loss(&spec.model, &new_params, &batch).unwrap();
    let new_model = put(&mut blobs, encode_model(&new_params));
    let momentum_blob = put(&mut blobs, encode_model(&momentum));
    let info = JobInfo {
        job_spec: SAMPLE_SPEC.into(),
        job_hash: spec.hash(),
        dataset_root,
        dataset_blob,
        dataset_len: corpus.bytes().len() as u64,
        log_key: String::new(),
        keep_openings: None,
    };
    blobs.insert("v1/job".into(), serde_json::to_vec(&info).unwrap());
    let facts = JobFacts {
        job_hash: spec.hash(),
        dataset_root,
        inner_steps: spec.inner.steps,
        batch_size: spec.inner.batch_size,
        challenges: spec.verify.challenges,
        flops_per_sample: spec.model.flops_per_sample(),
        double_check_fraction: spec.verify.double_check_fraction,
        probation_tasks: spec.verify.probation_tasks,
        replay_checks: spec.verify.replay_checks,
    };
    let round = RoundInputs {
        round: Round(1),
        close_index: 77,
        base_model,
        prev_momentum: None,
        committed,
        merged,
        new_model,
        momentum: Some(momentum_blob),
        val_loss_bits: loss.to_bits(),
        val_windows: 16,
    };
    (MemSource(blobs), facts, round)
}

fn named(err: AuditError, what: &str) {
    match &err {
        AuditError::Replay {
            index: Some(77),
            reason,
        } => assert!(reason.contains(what), "{reason}"),
        other => panic!("{other}"),
    }
}

#[test]
fn an_honest_close_recomputes_and_each_lie_is_named() {
    let (source, facts, honest) = world();
    assert_eq!(
        replay_merge(&source, &facts, std::slice::from_ref(&honest)).unwrap(),
        1
    );

    let mut lie = honest.clone();
    lie.new_model = Digest([9; 32]);
    named(
        replay_merge(&source, &facts, &[lie]).unwrap_err(),
        "new model",
    );

    let mut lie = honest.clone();
    lie.val_loss_bits = (f32::from_bits(lie.val_loss_bits) * 0.99).to_bits();
    named(
        replay_merge(&source, &facts, &[lie]).unwrap_err(),
        "validation loss",
    );

    let mut lie = honest.clone();
    lie.momentum = None;
    named(
        replay_merge(&source, &facts, &[lie]).unwrap_err(),
        "momentum",
    );

    // The close merges task 4's delta in task 3's place (or any other blob).
    let mut lie = honest.clone();
    lie.merged.swap(0, 1);
    named(
        replay_merge(&source, &facts, &[lie]).unwrap_err(),
        "is not the delta task 3 committed",
    );

    // A round merged from another base model than its RoundOpened named.
    let mut lie = honest;
    lie.base_model = lie.new_model;
    named(
        replay_merge(&source, &facts, &[lie]).unwrap_err(),
        "new model",
    );
}
