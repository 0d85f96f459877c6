//! The protocol story end to end on a tiny model: honest workers pass every challenge,
//! each kind of cheating is caught whenever its step is challenged, fraud proofs verify
//! and point at the right operator, forged ones fail, and bad input gives typed errors.

use ed25519_dalek::{Signer, SigningKey};
use lupus_prover::challenge::challenge_steps;
use lupus_prover::data::Corpus;
use lupus_prover::fraud::{FraudContext, FraudError, FraudProof, FraudVerdict};
use lupus_prover::graph::{
    EVAL_PASS_ELEMENTS, StepOutput, ValueRef, eval_loss, eval_pass_windows, step_value, train_step,
    validation_loss, validation_loss_in_passes,
};
use lupus_prover::model::{ModelSpec, init_params, make_batch};
use lupus_prover::ops::{OpKind, eval_op};
use lupus_prover::quant::quantise_delta;
use lupus_prover::spec::{JobSpec, SpecError};
use lupus_prover::task::{ProtocolError, TaskBuilder, TaskRun, job_sampler, run_task};
use lupus_prover::tensor::Tensor;
use lupus_prover::trace::{base_state_hash, commit_step, next_state_hash_from_tape, state_hash};
use lupus_prover::verify::{
    DeviceClass, RejectReason, Verdict, dispute_op, verify_opening, verify_submission,
};

const TINY: &str = include_str!("../../jobs/tiny-test.toml");
const SEED: [u8; 32] = [42; 32];

/// The worker's key: it signs the recomputed part of its openings.
fn worker() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn worker_key() -> [u8; 32] {
    worker().verifying_key().to_bytes()
}

fn setup() -> (JobSpec, Corpus, Vec<Tensor>) {
    let job = JobSpec::parse(TINY).unwrap();
    let corpus = Corpus::generated(7, 40_000);
    let base = init_params(&job.model, [1; 32]).unwrap();
    (job, corpus, base)
}

fn verify(
    job: &JobSpec,
    corpus: &Corpus,
    base: &[Tensor],
    run: &TaskRun,
    steps: &[u32],
    class: DeviceClass,
) -> Verdict {
    let opening = run
        .open(
            job,
            corpus,
            steps,
            class == DeviceClass::Tolerant,
            &worker(),
        )
        .unwrap();
    verify_opening(
        job,
        corpus,
        base,
        &SEED,
        &run.commitment,
        &worker_key(),
        steps,
        &opening,
        class,
    )
    .unwrap()
}

fn ctx(job: &JobSpec, base: &[Tensor], run: &TaskRun) -> FraudContext {
    FraudContext {
        trace_root: run.commitment.trace_root,
        steps: job.inner.steps,
        base_state_hash: base_state_hash(base),
        worker: worker_key(),
    }
}

#[test]
fn training_lowers_validation_loss() {
    let (mut job, corpus, base) = setup();
    job.inner.steps = 60;
    job.inner.lr = 0.01;
    let mut seen = 0;
    let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| seen += 1).unwrap();
    assert_eq!(seen, 60);
    let sampler = job_sampler(&job, &corpus).unwrap();
    let val = make_batch(&job.model, &sampler.validation(64)).unwrap();
    let before = eval_loss(&job.model, &base, &val).unwrap();
    let after = eval_loss(&job.model, &run.final_state.params, &val).unwrap();
    assert!(after < before - 0.5, "validation loss {before} -> {after}");
}

#[test]
fn validation_in_passes_is_the_mean_over_all_windows() {
    let (job, corpus, base) = setup();
    let windows = job_sampler(&job, &corpus).unwrap().validation(64);
    let whole = eval_loss(
        &job.model,
        &base,
        &make_batch(&job.model, &windows).unwrap(),
    )
    .unwrap();
    // Windows that fit in one pass: exactly the one-pass figure, bit for bit (what
    // every coordinator logged before passes existed).
    assert!(eval_pass_windows(&job.model) >= 64);
    assert_eq!(
        validation_loss(&job.model, &base, &windows)
            .unwrap()
            .to_bits(),
        whole.to_bits()
    );
    // In passes of 7 (the last one short): the same mean, to rounding.
    let passes = validation_loss_in_passes(&job.model, &base, &windows, 7).unwrap();
    assert!(
        ((passes - whole) / whole).abs() < 1e-5,
        "{passes} in passes against {whole} in one"
    );
    // The passes are weighted by their windows: a wrong weighting of the short last
    // pass (1 window of 64) would be off by more than rounding.
    let unweighted: f32 = windows
        .chunks(7)
        .map(|c| eval_loss(&job.model, &base, &make_batch(&job.model, c).unwrap()).unwrap())
        .sum::<f32>()
        / windows.chunks(7).len() as f32;
    assert_ne!(passes.to_bits(), unweighted.to_bits());
}

#[test]
fn validation_memory_is_bounded_whatever_the_window_count() {
    // Wide attention (16 heads x 256 positions of scores a position): one pass over
    // 257 windows would hold more than the element limit in one tensor.
    let spec = ModelSpec::Gpt {
        vocab: 8,
        context: 256,
        d_model: 16,
        heads: 16,
        layers: 1,
        d_ff: 16,
    };
    let pass = eval_pass_windows(&spec);
    assert!(pass * spec.widest_activation_per_window() <= EVAL_PASS_ELEMENTS);
    let params = init_params(&spec, [3; 32]).unwrap();
    let windows: Vec<Vec<u32>> = (0..257u32)
        .map(|w| (0..257u32).map(|i| (w * 7 + i * 3) % 8).collect())
        .collect();
    let one = eval_loss(&spec, &params, &make_batch(&spec, &windows).unwrap());
    assert!(one.is_err(), "one pass over 257 windows: {one:?}");
    let loss = validation_loss(&spec, &params, &windows).unwrap();
    // An untrained model predicts about uniformly over 8 symbols.
    assert!((loss - 8f32.ln()).abs() < 0.5, "loss {loss}");
}

#[test]
fn an_honest_trace_passes_every_challenge_in_both_classes() {
    let (job, corpus, base) = setup();
    let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| {}).unwrap();
    let all: Vec<u32> = (0..job.inner.steps).collect();
    assert_eq!(
        verify(&job, &corpus, &base, &run, &all, DeviceClass::Exact),
        Verdict::Accept
    );
    assert_eq!(
        verify(&job, &corpus, &base, &run, &all, DeviceClass::Tolerant),
        Verdict::Accept
    );
    let derived = challenge_steps(
        &[9; 32],
        &run.commitment.trace_root,
        job.inner.steps,
        job.verify.challenges,
    )
    .unwrap();
    assert_eq!(
        verify(&job, &corpus, &base, &run, &derived, DeviceClass::Exact),
        Verdict::Accept
    );
    let fin = run.final_opening().unwrap();
    assert!(
        verify_submission(
            job.inner.steps,
            &run.commitment,
            &fin,
            &lupus_prover::merkle::Digest(run.delta.hash())
        )
        .is_ok()
    );
    assert!(
        verify_submission(
            job.inner.steps,
            &run.commitment,
            &fin,
            &lupus_prover::merkle::Digest([0; 32])
        )
        .is_err()
    );
}

#[test]
fn the_tape_gives_the_same_next_state_hash_as_the_state() {
    let (job, corpus, base) = setup();
    let b = TaskBuilder::new(&job, &corpus, &base, SEED).unwrap();
    let batch = b.batch().unwrap();
    let out = train_step(&job.model, &job.inner.adamw(), b.state(), &batch).unwrap();
    let (leaf, commits) = commit_step(0, &batch, &out).unwrap();
    assert_eq!(leaf.next_state, state_hash(&out.state));
    let p = out.state.params.len();
    assert_eq!(
        next_state_hash_from_tape(&out.ops, &commits, p, out.state.step),
        Some(leaf.next_state)
    );
    // A tape without the AdamW updates gives no hash (commit_step then hashes the state).
    let forward_only: Vec<_> = out
        .ops
        .iter()
        .filter(|r| !matches!(r.kind, OpKind::AdamWUpdate { .. }))
        .cloned()
        .collect();
    let fc = lupus_prover::trace::op_commits(&forward_only);
    assert_eq!(
        next_state_hash_from_tape(&forward_only, &fc, p, out.state.step),
        None
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cheat {
    State,
    Batch,
    Activation,
    /// A wrong gradient, carried into the parameter update (what a cheater gains from).
    Gradient,
    /// A wrong pre-activation and a wrong backward-pass output that nothing committed
    /// depends on: the worker recomputes those when it opens a step, so this changes
    /// nothing.
    Uncommitted,
    Loss,
    LossOutput,
    Delta,
}

fn find_op(out: &StepOutput, pred: impl Fn(&OpKind, &[ValueRef]) -> bool) -> usize {
    out.ops
        .iter()
        .position(|r| pred(&r.kind, &r.inputs))
        .unwrap()
}

fn bump(t: &Tensor) -> Tensor {
    let mut d = t.data().to_vec();
    d[0] += 0.25;
    Tensor::new(t.shape().to_vec(), d).unwrap()
}

/// Runs honestly, tampers step `bad` as `cheat` says, and re-commits consistently.
/// Returns the run and the op index a fraud proof must name (if any).
fn cheat(
    job: &JobSpec,
    corpus: &Corpus,
    base: &[Tensor],
    bad: u32,
    cheat: Cheat,
) -> (TaskRun, Option<usize>) {
    let mut b = TaskBuilder::new(job, corpus, base, SEED)
        .unwrap()
        .with_checkpoint_interval(1);
    let mut expected = None;
    for t in 0..job.inner.steps {
        if t != bad {
            b.run_step().unwrap();
            continue;
        }
        let mut batch = b.batch().unwrap();
        if cheat == Cheat::Batch {
            let other =
                job_sampler(job, corpus)
                    .unwrap()
                    .batch(&[1; 32], t, job.inner.batch_size as usize);
            batch = make_batch(&job.model, &other).unwrap();
        }
        let mut out = train_step(&job.model, &job.inner.adamw(), b.state(), &batch).unwrap();
        match cheat {
            Cheat::State => {
                let i = find_op(&out, |k, inp| {
                    matches!(k, OpKind::AdamWUpdate { .. }) && inp[0] == ValueRef::Param(0)
                });
                let tampered = bump(&out.state.params[0]);
                out.ops[i].outputs[0] = tampered.clone();
                out.state.params[0] = tampered;
                expected = Some(i);
            }
            Cheat::Activation => {
                let i = find_op(&out, |k, _| matches!(k, OpKind::Relu));
                out.ops[i].outputs[0] = bump(&out.ops[i].outputs[0]);
                expected = Some(i);
            }
            Cheat::Gradient => {
                // Parameter 0's update from a bumped gradient: its outputs are the next
                // state, committed; the gradient is recomputed when the step is opened.
                let i = find_op(&out, |k, inp| {
                    matches!(k, OpKind::AdamWUpdate { .. }) && inp[0] == ValueRef::Param(0)
                });
                let rec = &out.ops[i];
                let grad = step_value(b.state(), &batch, &out.ops, rec.inputs[1]).unwrap();
                let (param, m, v) = (&b.state().params[0], &b.state().m[0], &b.state().v[0]);
                let updated = eval_op(&rec.kind, &[param, &bump(grad), m, v]).unwrap();
                out.state.params[0] = updated[0].clone();
                out.state.m[0] = updated[1].clone();
                out.state.v[0] = updated[2].clone();
                out.ops[i].outputs = updated;
                expected = Some(i);
            }
            Cheat::Uncommitted => {
                for i in [
                    find_op(&out, |k, _| matches!(k, OpKind::AddBias)),
                    find_op(&out, |k, _| matches!(k, OpKind::ReluBackward)),
                ] {
                    out.ops[i].outputs[0] = bump(&out.ops[i].outputs[0]);
                }
            }
            Cheat::Loss => {
                out.loss *= 0.5;
                expected = Some(find_op(&out, |k, _| {
                    matches!(k, OpKind::SoftmaxCrossEntropy)
                }));
            }
            Cheat::LossOutput => {
                let i = find_op(&out, |k, _| matches!(k, OpKind::SoftmaxCrossEntropy));
                out.loss *= 0.5;
                out.ops[i].outputs[0] =
                    Tensor::new(out.ops[i].outputs[0].shape().to_vec(), vec![out.loss]).unwrap();
                expected = Some(i);
            }
            Cheat::Batch | Cheat::Delta => {}
        }
        b.record(&batch, out).unwrap();
    }
    let run = if cheat == Cheat::Delta {
        let inflated: Vec<Tensor> = b.state().params.iter().map(bump).collect();
        b.finish_with_delta(quantise_delta(base, &inflated).unwrap())
            .unwrap()
    } else {
        b.finish().unwrap()
    };
    (run, expected)
}

#[test]
fn every_kind_of_cheat_is_caught_when_its_step_is_challenged() {
    let (job, corpus, base) = setup();
    let h = job.inner.steps;
    for kind in [
        Cheat::State,
        Cheat::Batch,
        Cheat::Activation,
        Cheat::Gradient,
        Cheat::Uncommitted,
        Cheat::Loss,
        Cheat::LossOutput,
        Cheat::Delta,
    ] {
        for bad in [0, 3, h - 1] {
            let (run, expected_op) = cheat(&job, &corpus, &base, bad, kind);
            for t in 0..h {
                let verdict = verify(&job, &corpus, &base, &run, &[t], DeviceClass::Exact);
                let caught = !verdict.is_accept();
                if kind == Cheat::Uncommitted {
                    assert!(!caught, "{kind:?} at {bad}, challenged {t}: {verdict:?}");
                    continue;
                }
                if kind == Cheat::Delta {
                    assert!(
                        matches!(
                            &verdict,
                            Verdict::Reject {
                                reason: RejectReason::DeltaMismatch,
                                ..
                            }
                        ),
                        "{kind:?}"
                    );
                    continue;
                }
                assert_eq!(
                    caught,
                    t == bad,
                    "{kind:?} at step {bad}, challenged {t}: {verdict:?}"
                );
                // The tolerant class compares states and losses, not the tape: it catches
                // these too (without a proof), but not a tape-only tamper.
                if t == bad
                    && matches!(
                        kind,
                        Cheat::State | Cheat::Batch | Cheat::Loss | Cheat::LossOutput
                    )
                {
                    let tv = verify(&job, &corpus, &base, &run, &[t], DeviceClass::Tolerant);
                    assert!(!tv.is_accept(), "{kind:?} tolerant: {tv:?}");
                }
                let Verdict::Reject {
                    step,
                    reason,
                    fraud_proof,
                } = verdict
                else {
                    continue;
                };
                assert_eq!(step, Some(bad));
                match kind {
                    Cheat::Batch => assert_eq!(reason, RejectReason::WrongBatch),
                    Cheat::Loss => assert_eq!(reason, RejectReason::LossMismatch),
                    _ => assert!(
                        matches!(reason, RejectReason::OpMismatch { .. }),
                        "{reason:?}"
                    ),
                }
                let Some(proof) = fraud_proof else {
                    assert_eq!(kind, Cheat::Batch, "{kind:?} must come with a fraud proof");
                    continue;
                };
                assert_eq!(Some(proof.op() as usize), expected_op, "{kind:?}");
                assert_eq!(proof.step(), bad);
                // Anyone can check it, from JSON, with no model state and no data.
                let json = serde_json::to_string(&proof).unwrap();
                let back: FraudProof = serde_json::from_str(&json).unwrap();
                let v = back.check(&ctx(&job, &base, &run)).unwrap();
                assert!(
                    matches!(v, FraudVerdict::Guilty { step, op, .. } if step == bad && Some(op as usize) == expected_op),
                    "{v:?}"
                );
                // The wrong gradient's proof cites the recomputed backward pass, which
                // only the worker's key vouches for: under another key it proves nothing.
                if kind == Cheat::Gradient {
                    let FraudProof::Op(p) = &back else {
                        panic!("{back:?}")
                    };
                    assert!(p.recomputed.is_some(), "the gradient is a recomputed input");
                    let mut other = ctx(&job, &base, &run);
                    other.worker = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
                    assert_eq!(back.check(&other), Err(FraudError::RecomputedSignature));
                }
                // Against another trace root it proves nothing.
                let mut wrong = ctx(&job, &base, &run);
                wrong.trace_root.0[0] ^= 1;
                assert!(back.check(&wrong).is_err());
            }
        }
    }
}

#[test]
fn forged_fraud_proofs_against_an_honest_step_fail() {
    let (job, corpus, base) = setup();
    let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| {}).unwrap();
    let c = ctx(&job, &base, &run);
    for t in [0, 4] {
        let opening = run.open(&job, &corpus, &[t], false, &worker()).unwrap();
        let ops = run.op_commits(t).unwrap();
        let op_count = ops.iter().map(|c| c.op).max().unwrap() + 1;
        for op in 0..op_count {
            let proof = dispute_op(&job, &corpus, &base, &SEED, &opening, t, op).unwrap();
            assert_eq!(
                proof.check(&c),
                Ok(FraudVerdict::NotGuilty),
                "step {t} op {op}"
            );
            let FraudProof::Op(p) = proof else {
                unreachable!()
            };
            // Claiming another committed output, or other inputs, does not verify.
            let mut forged = p.clone();
            match forged.recomputed.as_mut() {
                Some(r) => r.leaves.leaves.last_mut().unwrap().1.tensor.0[0] ^= 1,
                None => forged.op_leaves.leaves.last_mut().unwrap().1.tensor.0[0] ^= 1,
            }
            assert!(FraudProof::Op(forged).check(&c).is_err());
            // Nor does a recomputed root the worker did not sign.
            if let Some(r) = &p.recomputed {
                let mut forged = p.clone();
                let r2 = forged.recomputed.as_mut().unwrap();
                r2.root.0[0] ^= 1;
                assert_eq!(
                    FraudProof::Op(forged).check(&c),
                    Err(FraudError::RecomputedSignature)
                );
                assert!(!r.leaves.leaves.is_empty());
            }
            let mut forged = p.clone();
            forged.input_tensors[0] = bump(&forged.input_tensors[0]);
            assert!(!matches!(
                FraudProof::Op(forged).check(&c),
                Ok(FraudVerdict::Guilty { .. })
            ));
            // A truncated proof is an error, not a panic.
            let mut forged = p.clone();
            forged.trace.proof.hashes.pop();
            assert!(FraudProof::Op(forged).check(&c).is_err());
        }
    }
}

#[test]
fn bad_openings_are_typed_rejections() {
    let (job, corpus, base) = setup();
    let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| {}).unwrap();
    let steps = [2u32, 5];
    let good = run.open(&job, &corpus, &steps, false, &worker()).unwrap();
    let check = |o: &lupus_prover::task::Opening| {
        verify_opening(
            &job,
            &corpus,
            &base,
            &SEED,
            &run.commitment,
            &worker_key(),
            &steps,
            o,
            DeviceClass::Exact,
        )
        .unwrap()
    };

    let mut o = good.clone();
    o.proof.hashes.pop();
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::BadTraceProof(_),
            ..
        }
    ));

    let mut o = good.clone();
    let t = &o.steps[0].state[0];
    o.steps[0].state[0] = Tensor::new(vec![t.len()], t.data().to_vec()).unwrap();
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::ShapeMismatch,
            ..
        }
    ));

    let mut o = good.clone();
    o.steps[1].state[1] = bump(&o.steps[1].state[1]);
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::WrongState,
            step: Some(5),
            ..
        }
    ));

    let mut o = good.clone();
    o.steps.pop();
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::MalformedOpening,
            ..
        }
    ));

    let mut o = good.clone();
    o.final_params[0] = bump(&o.final_params[0]);
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::BadFinalState(_),
            ..
        }
    ));

    // The commits the trace holds for step 2 (the block boundaries, the loss, the update).
    let kept: Vec<(u32, u32)> = run
        .op_commits(2)
        .unwrap()
        .iter()
        .map(|c| (c.op, c.output))
        .collect();
    let mut o = good.clone();
    let at = o.steps[0]
        .ops
        .iter()
        .position(|c| kept.contains(&(c.op, c.output)))
        .unwrap();
    o.steps[0].ops[at].tensor.0[0] ^= 1;
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::OpRootMismatch,
            ..
        }
    ));

    // The rest is recomputed for the opening and signed by the worker. A commit of it
    // changed by anyone else (the operator who stores the opening) breaks
    // the signature; changed and re-signed by the worker, it is the worker's own lie, and
    // the fraud proof names it.
    let at = good.steps[0]
        .ops
        .iter()
        .position(|c| !kept.contains(&(c.op, c.output)))
        .expect("most op outputs are not committed while training");
    let mut o = good.clone();
    o.steps[0].ops[at].tensor.0[0] ^= 1;
    assert!(matches!(
        check(&o),
        Verdict::Reject {
            reason: RejectReason::BadRecomputedSignature,
            ..
        }
    ));
    let mut resigned = o.clone();
    let backward: Vec<_> = resigned.steps[0]
        .ops
        .iter()
        .filter(|c| !kept.contains(&(c.op, c.output)))
        .copied()
        .collect();
    let root = lupus_prover::trace::op_root(&backward).unwrap();
    let msg = lupus_prover::trace::recomputed_message(&run.commitment.trace_root, 2, &root);
    resigned.steps[0].signature = lupus_types::Sig(worker().sign(&msg.0).to_bytes());
    // The verifier checks the recomputed part as it checks the committed one: the
    // first op output that differs from its replay is the lie, and the fraud proof
    // convicts the worker on its own signature.
    let Verdict::Reject {
        reason: RejectReason::OpMismatch { op, .. },
        fraud_proof: Some(proof),
        ..
    } = check(&resigned)
    else {
        panic!("a re-signed lie must be an op mismatch with a proof")
    };
    assert_eq!(op, o.steps[0].ops[at].op);
    let c = ctx(&job, &base, &run);
    assert!(matches!(proof.check(&c), Ok(FraudVerdict::Guilty { op: g, .. }) if g == op));
    let honest = dispute_op(&job, &corpus, &base, &SEED, &good, 2, op).unwrap();
    assert_eq!(honest.check(&c), Ok(FraudVerdict::NotGuilty));
    // A signature is for one step of one trace: step 2's does not vouch for step 5.
    let mut moved = good.clone();
    moved.steps[1].signature = moved.steps[0].signature;
    assert!(matches!(
        check(&moved),
        Verdict::Reject {
            reason: RejectReason::BadRecomputedSignature,
            step: Some(5),
            ..
        }
    ));
    // Signed by another key, the same lie frames no one.
    let mut framed = o.clone();
    framed.steps[0].signature =
        lupus_types::Sig(SigningKey::from_bytes(&[8; 32]).sign(&msg.0).to_bytes());
    assert!(matches!(
        check(&framed),
        Verdict::Reject {
            reason: RejectReason::BadRecomputedSignature,
            ..
        }
    ));

    // The verifier's own inputs: errors.
    let wrong_base = init_params(
        &lupus_prover::model::ModelSpec::Mlp {
            vocab: 96,
            context: 2,
            embed: 2,
            hidden: vec![3],
        },
        [0; 32],
    )
    .unwrap();
    assert!(matches!(
        verify_opening(
            &job,
            &corpus,
            &wrong_base,
            &SEED,
            &run.commitment,
            &worker_key(),
            &steps,
            &good,
            DeviceClass::Exact
        ),
        Err(ProtocolError::Model(_))
    ));
    assert_eq!(
        verify_opening(
            &job,
            &corpus,
            &base,
            &SEED,
            &run.commitment,
            &worker_key(),
            &[5, 2],
            &good,
            DeviceClass::Exact
        ),
        Err(ProtocolError::BadStepList)
    );
    assert!(matches!(
        run.open(&job, &corpus, &[job.inner.steps], false, &worker()),
        Err(ProtocolError::StepOutOfRange { .. })
    ));
}

#[test]
fn hostile_bytes_are_typed_errors() {
    assert!(Tensor::new(vec![2], vec![1.0, f32::NAN]).is_err());
    assert!(Tensor::new(vec![2], vec![1.0, f32::INFINITY]).is_err());
    assert!(Tensor::new(vec![3], vec![1.0, 2.0]).is_err());
    // Out-of-range numbers in a JSON fraud proof and truncated JSON are parse errors.
    assert!(serde_json::from_str::<Tensor>(r#"{"shape":[1],"data":[1e999]}"#).is_err());
    assert!(serde_json::from_str::<FraudProof>(r#"{"proof":"op","step":1"#).is_err());
    // Job specs.
    let bad_kind = TINY.replace("kind = \"mlp\"", "kind = \"lstm\"");
    assert!(matches!(JobSpec::parse(&bad_kind), Err(SpecError::Toml(_))));
    for (from, to, field) in [
        ("steps = 8", "steps = 0", "inner.steps"),
        ("challenges = 4", "challenges = 9", "verify.challenges"),
        ("vocab = 96", "vocab = 50", "model.vocab"),
    ] {
        match JobSpec::parse(&TINY.replacen(from, to, 1)) {
            Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{from} -> {to}: {other:?}"),
        }
    }
}

/// Proof of replay (issue 13): two replays of one opening give one digest per
/// verifier key, different keys give different digests, and the digest of no replay
/// (what a verifier that skipped the work has) is not it.
#[test]
fn replay_digests_are_the_replays_and_keyed_by_verifier() {
    use lupus_prover::verify::{ReplayDigest, verify_opening_digests};
    // Wide enough that the largest op outputs and parameters span several 64 KiB
    // pieces, which the digest takes as chaining values.
    let spec = TINY
        .replace("hidden = [16]", "hidden = [512]")
        .replace("batch_size = 8", "batch_size = 64");
    assert_ne!(spec, TINY);
    let job = JobSpec::parse(&spec).unwrap();
    let (_, corpus, _) = setup();
    let base = init_params(&job.model, [1; 32]).unwrap();
    let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| {}).unwrap();
    let steps = challenge_steps(&[9; 32], &run.commitment.trace_root, job.inner.steps, 2).unwrap();
    let opening = run.open(&job, &corpus, &steps, false, &worker()).unwrap();
    let digests = |keys: &[[u8; 32]]| {
        let mut ds: Vec<ReplayDigest> = keys.iter().map(|k| ReplayDigest::new(k, 5)).collect();
        let v = verify_opening_digests(
            &job,
            &corpus,
            &base,
            &SEED,
            &run.commitment,
            &worker_key(),
            &steps,
            &opening,
            DeviceClass::Exact,
            &mut ds,
        )
        .unwrap();
        assert_eq!(v, Verdict::Accept);
        ds.iter().map(ReplayDigest::finish).collect::<Vec<_>>()
    };
    let a = digests(&[[1; 32], [2; 32]]);
    let b = digests(&[[1; 32]]);
    assert_eq!(a[0], b[0], "the same replay, the same digest");
    assert_ne!(a[0], a[1], "keyed by the verifier");
    assert_ne!(a[0], ReplayDigest::new(&[1; 32], 5).finish());
    assert_ne!(a[0], ReplayDigest::new(&[1; 32], 6).finish());
    // The cheapest forgery a verifier that did not replay can make: the digest's
    // layout, with the hash of each op output (signed in the opening) where a chaining
    // value or the bytes belong. Those hashes are the roots of the trees whose interior
    // nodes the digest takes, so it cannot stand in for them.
    let mut key_material = [0u8; 40];
    key_material[..32].copy_from_slice(&[1; 32]);
    key_material[32..].copy_from_slice(&5u64.to_be_bytes());
    let mut forged =
        blake3::Hasher::new_keyed(&blake3::derive_key("lupus replay digest v2", &key_material));
    for so in &opening.steps {
        forged.update(&so.step.to_be_bytes());
        for c in &so.ops {
            forged.update(&c.tensor.0);
        }
    }
    assert_ne!(
        a[0].0,
        *forged.finalize().as_bytes(),
        "forged from the opening"
    );
    // The verifier's exact replay hashes as it goes and keeps no tape; its
    // digest is the one the definition gives from the taped replay of each step.
    let mut by_definition = ReplayDigest::new(&[1; 32], 5);
    let mut tampered = ReplayDigest::new(&[1; 32], 5);
    for so in &opening.steps {
        let mut state = lupus_prover::optim::TrainState::fresh(base.clone());
        let n = state.params.len();
        state.params = so.state[..n].to_vec();
        state.m = so.state[n..2 * n].to_vec();
        state.v = so.state[2 * n..].to_vec();
        state.step = u64::from(so.step);
        let sampler = lupus_prover::task::job_sampler(&job, &corpus).unwrap();
        let batch = lupus_prover::task::task_batch(&job, &sampler, &SEED, so.step).unwrap();
        let replay =
            lupus_prover::graph::train_step(&job.model, &job.inner.adamw(), &state, &batch)
                .unwrap();
        by_definition.step(so.step, &replay);
        // The digest takes a large tensor as its pieces' chaining values: one bit
        // flipped in the last element of the largest op output changes it.
        let mut wrong = replay;
        let big = wrong
            .ops
            .iter_mut()
            .flat_map(|op| op.outputs.iter_mut())
            .max_by_key(|t| t.len())
            .unwrap();
        assert!(
            4 * big.len() > lupus_prover::tensor::HASH_PIECE_LEN,
            "{}",
            big.len()
        );
        let mut data = big.data().to_vec();
        let last = data.last_mut().unwrap();
        *last = f32::from_bits(last.to_bits() ^ 1);
        *big = lupus_prover::tensor::Tensor::new(big.shape().to_vec(), data).unwrap();
        tampered.step(so.step, &wrong);
    }
    assert_eq!(
        a[0],
        by_definition.finish(),
        "the overlapped replay's digest"
    );
    assert_ne!(a[0], tampered.finish(), "one bit of one op output");
}

/// The drift check's floor, tried as the cheapest way past it: a worker that reports
/// a tolerant device and pushes every parameter along the all-ones direction at every
/// step. Pushes of 0.9 of the tolerance share their direction and are rejected; pushes
/// under the floor (an eighth of the tolerance, about one honest device's spread) are
/// not checked for direction and pass. That is the bound the tolerant class keeps: at
/// most the floor per step in a chosen direction.
#[test]
fn nudges_above_the_drift_floor_are_rejected_and_below_it_pass() {
    use lupus_prover::verify::DRIFT_FLOOR;
    let (job, corpus, base) = setup();
    let all: Vec<u32> = (0..job.inner.steps).collect();
    let tol = f64::from(job.verify.tolerance);
    for (share, caught) in [(0.9, true), (DRIFT_FLOOR * 0.5, false)] {
        let mut b = TaskBuilder::new(&job, &corpus, &base, SEED)
            .unwrap()
            .with_checkpoint_interval(1)
            .with_kat([0xaa; 32]);
        for _ in 0..job.inner.steps {
            let batch = b.batch().unwrap();
            let mut out = train_step(&job.model, &job.inner.adamw(), b.state(), &batch).unwrap();
            for i in 0..out.state.params.len() {
                let p = &out.state.params[i];
                let norm = p
                    .data()
                    .iter()
                    .map(|x| f64::from(*x).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let push = (share * tol * norm / (p.len() as f64).sqrt()) as f32;
                let nudged = Tensor::new(
                    p.shape().to_vec(),
                    p.data().iter().map(|x| x + push).collect(),
                )
                .unwrap();
                let update = out.ops.iter_mut().find(|r| {
                    matches!(r.kind, OpKind::AdamWUpdate { .. })
                        && r.inputs.first() == Some(&ValueRef::Param(i as u32))
                });
                update.unwrap().outputs[0] = nudged.clone();
                out.state.params[i] = nudged;
            }
            b.record(&batch, out).unwrap();
        }
        let run = b.finish().unwrap();
        let v = verify(&job, &corpus, &base, &run, &all, DeviceClass::Tolerant);
        let shared = matches!(
            v,
            Verdict::Reject {
                reason: RejectReason::SharedDirection { .. },
                ..
            }
        );
        assert_eq!(shared, caught, "push of {share} of the tolerance: {v:?}");
        assert_eq!(
            v.is_accept(),
            !caught,
            "push of {share} of the tolerance: {v:?}"
        );
    }
}

/// The cheapest way around a warm-up: train at the full learning rate from the first
/// step (a delta that moved further, for the same credit). Each warm-up step a
/// verifier challenges exposes it: as a wrong AdamW output with a fraud proof anyone
/// can check when the worker committed the job's own program, as a different program
/// (a tape mismatch) when it committed its own. Steps past the warm-up run the same
/// operator either way and pass.
#[test]
fn a_worker_that_skips_the_warm_up_is_caught_on_every_warm_up_step() {
    let (_, corpus, base) = setup();
    let warm =
        JobSpec::parse(&TINY.replacen("steps = 8", "steps = 8\nwarmup_steps = 4", 1)).unwrap();
    let mut flat = warm.clone();
    flat.inner.warmup_steps = 0;
    let h = warm.inner.steps;
    for own_program in [false, true] {
        let mut b = TaskBuilder::new(&warm, &corpus, &base, SEED)
            .unwrap()
            .with_checkpoint_interval(1);
        let mut adamw_op = None;
        for _ in 0..h {
            let batch = b.batch().unwrap();
            let honest = train_step(&warm.model, &warm.inner.adamw(), b.state(), &batch).unwrap();
            let full = train_step(&flat.model, &flat.inner.adamw(), b.state(), &batch).unwrap();
            let out = if own_program {
                full
            } else {
                // The job's program, committed with the full rate's outputs.
                let mut out = honest;
                for (i, rec) in out.ops.iter_mut().enumerate() {
                    if matches!(rec.kind, OpKind::AdamWUpdate { .. }) {
                        rec.outputs.clone_from(&full.ops[i].outputs);
                        adamw_op.get_or_insert(i);
                    }
                }
                out.state = full.state;
                out
            };
            b.record(&batch, out).unwrap();
        }
        let run = b.finish().unwrap();
        for t in 0..h {
            let verdict = verify(&warm, &corpus, &base, &run, &[t], DeviceClass::Exact);
            // Update t + 1 runs at lr * (t + 1) / 4: below the full rate for t < 3.
            if t >= 3 {
                assert!(verdict.is_accept(), "step {t}: {verdict:?}");
                continue;
            }
            let Verdict::Reject {
                step,
                reason,
                fraud_proof,
            } = verdict
            else {
                panic!("own program {own_program}, step {t} accepted");
            };
            assert_eq!(step, Some(t));
            // Claiming the tolerant class does not hide it: the full rate's state is
            // far outside the tolerance.
            let tolerant = verify(&warm, &corpus, &base, &run, &[t], DeviceClass::Tolerant);
            assert!(!tolerant.is_accept(), "tolerant, step {t}: {tolerant:?}");
            if own_program {
                assert!(
                    matches!(reason, RejectReason::TapeMismatch { .. }),
                    "{reason:?}"
                );
                continue;
            }
            assert!(
                matches!(&reason, RejectReason::OpMismatch { kind, .. } if kind == "adamw_update"),
                "{reason:?}"
            );
            let proof = fraud_proof.expect("a wrong AdamW output comes with a fraud proof");
            assert_eq!(Some(proof.op() as usize), adamw_op);
            let v = proof.check(&ctx(&warm, &base, &run)).unwrap();
            assert!(
                matches!(v, FraudVerdict::Guilty { step, .. } if step == t),
                "{v:?}"
            );
        }
    }
}
