//! Replays give the same bits: across repeated runs, across threads, traced against
//! untraced steps, and operator by operator from the tape (DESIGN.md, Determinism;
//! Trace and commitment).

use lupus_prover::graph::{OpRecord, ValueRef, train_step, train_step_untraced};
use lupus_prover::kat::{self, DeviceClass, combined_digest, run_suite};
use lupus_prover::model::{Batch, ModelSpec, init_params, make_batch};
use lupus_prover::ops::eval_op;
use lupus_prover::optim::{AdamW, TrainState};
use lupus_prover::tensor::Tensor;

fn state_hash(s: &TrainState) -> Vec<[u8; 32]> {
    s.tensors().map(Tensor::hash).collect()
}

fn batch_for(spec: &ModelSpec, step: usize) -> Batch {
    let windows: Vec<Vec<u32>> = (0..5)
        .map(|b| {
            (0..spec.window_len())
                .map(|j| ((b * 7 + j * 3 + step * 11) % spec.vocab()) as u32)
                .collect()
        })
        .collect();
    make_batch(spec, &windows).unwrap()
}

fn specs() -> [ModelSpec; 2] {
    [kat::kat_mlp(), kat::kat_gpt()]
}

#[test]
fn suite_is_identical_across_runs_and_threads() {
    let reference = run_suite();
    assert_eq!(run_suite(), reference);
    let handles: Vec<_> = (0..4).map(|_| std::thread::spawn(run_suite)).collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(combined_digest(&r), combined_digest(&reference));
        assert_eq!(r, reference);
    }
    assert_eq!(kat::check_device(&reference), DeviceClass::Exact);
}

#[test]
fn traced_and_untraced_steps_give_the_same_state() {
    let opt = AdamW {
        lr: 5e-3,
        weight_decay: 0.01,
        ..AdamW::default()
    };
    for spec in specs() {
        let init = TrainState::fresh(init_params(&spec, [5; 32]).unwrap());
        let mut traced = init.clone();
        let mut untraced = init;
        for step in 0..4 {
            let batch = batch_for(&spec, step);
            let out = train_step(&spec, &opt, &traced, &batch).unwrap();
            let (next, loss) = train_step_untraced(&spec, &opt, &untraced, &batch).unwrap();
            assert_eq!(out.loss.to_bits(), loss.to_bits());
            assert_eq!(state_hash(&out.state), state_hash(&next));
            traced = out.state;
            untraced = next;
        }
        assert_eq!(traced.step, 4);
    }
}

/// Resolves a tape reference the way a fraud-proof checker would: from the opened state,
/// the batch and earlier tape outputs only.
fn lookup<'a>(
    r: &ValueRef,
    state: &'a TrainState,
    batch: &'a Batch,
    ops: &'a [OpRecord],
) -> &'a Tensor {
    match *r {
        ValueRef::Param(i) => &state.params[i as usize],
        ValueRef::Moment1(i) => &state.m[i as usize],
        ValueRef::Moment2(i) => &state.v[i as usize],
        ValueRef::Input => &batch.inputs,
        ValueRef::Target => &batch.targets,
        ValueRef::Op { op, output } => &ops[op as usize].outputs[output as usize],
    }
}

#[test]
fn every_recorded_op_replays_bit_for_bit_in_isolation() {
    let opt = AdamW::default();
    for spec in specs() {
        // Start from a state with non-zero moments, as a challenged step would.
        let mut state = TrainState::fresh(init_params(&spec, [6; 32]).unwrap());
        state = train_step(&spec, &opt, &state, &batch_for(&spec, 0))
            .unwrap()
            .state;
        let batch = batch_for(&spec, 1);
        let out = train_step(&spec, &opt, &state, &batch).unwrap();
        assert!(out.ops.len() > 2 * state.params.len());
        for (i, rec) in out.ops.iter().enumerate() {
            let inputs: Vec<&Tensor> = rec
                .inputs
                .iter()
                .map(|r| {
                    if let ValueRef::Op { op, .. } = r {
                        assert!((*op as usize) < i, "op {i} reads a later op");
                    }
                    lookup(r, &state, &batch, &out.ops)
                })
                .collect();
            let again = eval_op(&rec.kind, &inputs).unwrap();
            let a: Vec<[u8; 32]> = again.iter().map(Tensor::hash).collect();
            let b: Vec<[u8; 32]> = rec.outputs.iter().map(Tensor::hash).collect();
            assert_eq!(a, b, "op {i} ({}) does not replay", rec.kind.name());
        }
        // A tampered input changes the replayed output: the check has teeth.
        let (i, rec) = out
            .ops
            .iter()
            .enumerate()
            .find(|(_, r)| r.kind.name() == "mat_mul")
            .unwrap();
        let mut inputs: Vec<Tensor> = rec
            .inputs
            .iter()
            .map(|r| lookup(r, &state, &batch, &out.ops).clone())
            .collect();
        let mut d = inputs[0].data().to_vec();
        d[0] += 1.0;
        inputs[0] = Tensor::new(inputs[0].shape().to_vec(), d).unwrap();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        assert_ne!(eval_op(&rec.kind, &refs).unwrap(), out.ops[i].outputs);
    }
}

#[test]
fn opaque_inputs_are_typed_errors() {
    use lupus_prover::model::ModelError;
    use lupus_prover::ops::OpKind;
    let a = Tensor::new(vec![2, 3], vec![1.0; 6]).unwrap();
    let b = Tensor::new(vec![2, 3], vec![1.0; 6]).unwrap();
    let mm = OpKind::MatMul {
        transpose_a: false,
        transpose_b: false,
    };
    assert!(matches!(
        eval_op(&mm, &[&a, &b]),
        Err(ModelError::Shape { .. })
    ));
    assert!(matches!(eval_op(&mm, &[&a]), Err(ModelError::Arity { .. })));
    let ids = Tensor::new(vec![2], vec![0.5, 1.0]).unwrap();
    let emb = OpKind::Embedding { vocab: 2, dim: 3 };
    assert!(matches!(
        eval_op(&emb, &[&a, &ids]),
        Err(ModelError::BadToken { index: 0, .. })
    ));
    let big = Tensor::new(vec![1], vec![2.0]).unwrap();
    assert!(matches!(
        eval_op(&emb, &[&a, &big]),
        Err(ModelError::BadToken { .. })
    ));
    let ln = OpKind::LayerNorm { eps: f32::NAN };
    let g = Tensor::new(vec![3], vec![1.0; 3]).unwrap();
    assert!(matches!(
        eval_op(&ln, &[&a, &g, &g]),
        Err(ModelError::Attribute { .. })
    ));
    let huge = OpKind::EmbeddingBackward {
        vocab: usize::MAX,
        dim: 2,
    };
    assert!(eval_op(&huge, &[&ids, &a]).is_err());
    let attn = OpKind::AttentionScores { heads: 4, seq: 2 };
    assert!(matches!(
        eval_op(&attn, &[&a, &b]),
        Err(ModelError::Shape { .. })
    ));
    // An update that overflows reports divergence instead of storing infinity.
    let p = Tensor::new(vec![1], vec![f32::MAX]).unwrap();
    let z = Tensor::new(vec![1], vec![0.0]).unwrap();
    let upd = OpKind::AdamWUpdate {
        lr: 1.0,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    let g = Tensor::new(vec![1], vec![f32::MAX]).unwrap();
    assert!(matches!(
        eval_op(&upd, &[&p, &g, &z, &z]),
        Err(ModelError::NonFiniteOutput { .. })
    ));
}
