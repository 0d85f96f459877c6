//! The verifier's replay of an uploaded opening (`lupus_prover::verify::verify_opening`,
//! run natively and in the browser tab on whatever a worker sent). Once per process the
//! target runs an honest task of the fuzz job (`fuzz/job.toml`: `H = 8`, a 96-token MLP
//! of width 2) and opens the challenged steps [`STEPS`] twice, without `S_{t+1}` (exact
//! class) and with it (tolerant class). Each input is a small mutation program over one
//! of the two openings: pick a part (the opened leaves and their positions, a trace or
//! final-params multiproof hash, a challenged step's number, `S_t`, op-output commits,
//! the signature over the recomputed ones, or `S_{t+1}`, the final parameters) and
//! change it: a tensor element set to other bits
//! (NaN, infinities, subnormals, signed zeros, huge values, one ulp away, any bits), a
//! tensor reshaped or resized, a digest byte flipped or swapped for another honest
//! digest, a number changed, a list truncated, an entry duplicated, swapped, removed,
//! or parts moved between steps. A mutation can also *reseal* the opening: recompute
//! the leaves, proofs and commitment so that they agree with the opened values, and
//! sign the recomputed op outputs with the worker's key, as a worker that commits to
//! a wrong trace would; only then do hostile values reach the
//! replay, the tape comparison and the fraud-proof builders. Then the opening is
//! verified in the chosen class against the commitment in force.
//!
//! Properties:
//! - the honest openings are accepted (checked once, at set-up);
//! - no input panics, and none gives an `Err`: the job, corpus, base model, seed and
//!   steps are the verifier's own and valid, and `Err` means exactly that those are
//!   wrong, so a worker's bad opening must be a `Reject` verdict;
//! - a fraud proof that comes with a rejection convicts the worker at the rejected step
//!   under `FraudProof::check`;
//! - against the honest commitment, a mutated opening is accepted only if the verifier
//!   reads nothing that changed: its JSON (what the coordinator stores and serves)
//!   equals the honest opening's, except for one field the verifier ignores by design:
//!   `next_state` (`S_{t+1}`) of a step in the **exact** class, where the replay itself
//!   yields `S_{t+1}` and only its hash is compared with the leaf (the set-up checks
//!   this case explicitly). So for the exact class the accepted opening is compared
//!   with every `next_state` cleared; the tolerant class compares states, not op
//!   outputs, and reads of the recomputed op outputs only the worker's signature
//!   over its root, so there it is compared without the recomputed commits and their
//!   signatures;
//! - against a resealed commitment, acceptance is allowed (a worker may commit to
//!   anything at steps nobody challenges), but what the challenges cover must be true,
//!   checked without the verifier's code: `S_0` is the fresh base state, the final
//!   parameters quantise to the committed delta, and every challenged step trained from
//!   its opened state gives the opened leaf and op commits (exact) or an `S_{t+1}`
//!   within tolerance (tolerant);
//! - time per input is bounded: `verify_opening` allocates nothing from a length a
//!   worker states (tensor shapes must match their data and the model, proof hash
//!   counts must match the tree shape fixed by the job), so its work is linear in the
//!   opening's size; mutations keep openings within some tens of times the honest
//!   size. The bound is libFuzzer's hang detector (`-timeout`, which `scripts/fuzz.sh`
//!   sets to 30 s for every target), not a wall-clock assertion here: machines are
//!   shared and noisy, and an honest verification takes milliseconds. A NaN or infinity cannot be put in a tensor at all:
//!   `Tensor::new` (and so the JSON parser) refuses it, which the target asserts
//!   instead of mutating.

#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::Signer;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lupus_fuzz::{STEPS, job, worker_key};
use lupus_prover::data::Corpus;
use lupus_prover::fraud::{FraudContext, FraudVerdict};
use lupus_prover::graph::{Recompute, plan, train_step};
use lupus_prover::merkle::{Digest, MerkleTree};
use lupus_prover::model::init_params;
use lupus_prover::optim::TrainState;
use lupus_prover::quant::quantise_delta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::{Opening, StepOpening, job_sampler, run_task, state_tensors, task_batch};
use lupus_prover::tensor::Tensor;
use lupus_prover::trace::{
    Commitment, OpOutputCommit, StepLeaf, TraceLeaf, base_state_hash, commit_step, committed,
    op_root, recomputed, recomputed_message, state_hash, state_items,
};
use lupus_prover::verify::{DeviceClass, RejectReason, Verdict, relative_distance, verify_opening};
use lupus_types::Sig;

/// The task's seed.
const SEED: [u8; 32] = [3; 32];
/// Most mutations per input.
const MAX_MUTATIONS: u8 = 4;
/// Most elements of a resized tensor (the largest honest tensor has 192).
const MAX_RESIZE: usize = 4096;

/// Bit patterns that probe the float rules: NaN, infinities, subnormals, signed zeros,
/// extremes, and values that overflow in the replay.
const SPECIAL_BITS: [u32; 16] = [
    0x7fc0_0000, // NaN
    0xffc0_0001, // negative NaN with a payload
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x0000_0001, // smallest subnormal
    0x8000_0001, // negative subnormal
    0x007f_ffff, // largest subnormal
    0x0000_0000, // +0
    0x8000_0000, // -0
    0x0080_0000, // smallest normal
    0x7f7f_ffff, // f32::MAX
    0xff7f_ffff, // f32::MIN
    0x7149_f2ca, // 1e30
    0x3f80_0000, // 1
    0xbf80_0000, // -1
    0x5f00_0000, // 2^63
];

struct Fixture {
    job: JobSpec,
    corpus: Corpus,
    base: Vec<Tensor>,
    commitment: Commitment,
    /// The honest openings: index 0 exact (no `S_{t+1}`), index 1 tolerant.
    honest: [Opening; 2],
    /// `honest[0]` as JSON: what an accepted exact-class opening must equal.
    exact_json: Vec<u8>,
    /// Every digest of the honest openings, to swap in for another.
    digests: Vec<Digest>,
    /// The honest trace's leaf items (all `H + 1`), for resealing.
    items: Vec<Digest>,
    /// The honest `S_H`, whose moments a resealed final state keeps.
    final_state: TrainState,
}

fn verify(f: &Fixture, opening: &Opening, class: DeviceClass) -> Verdict {
    verify_with(f, &f.commitment, opening, class)
}

fn verify_with(
    f: &Fixture,
    commitment: &Commitment,
    opening: &Opening,
    class: DeviceClass,
) -> Verdict {
    let worker = worker_key().verifying_key().to_bytes();
    verify_opening(
        &f.job, &f.corpus, &f.base, &SEED, commitment, &worker, &STEPS, opening, class,
    )
    .expect("the verifier's own inputs are valid, so only a verdict may come back")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let job = job();
        let corpus = Corpus::generated(11, 4_000);
        let base = init_params(&job.model, [2; 32]).expect("the fuzz job's model builds");
        let run = run_task(&job, &corpus, &base, SEED, &mut |_, _| {}).expect("honest task");
        let key = worker_key();
        let exact = run.open(&job, &corpus, &STEPS, false, &key).expect("opens");
        let tolerant = run.open(&job, &corpus, &STEPS, true, &key).expect("opens");
        let mut digests = vec![
            run.commitment.trace_root,
            run.commitment.final_state_hash,
            run.commitment.delta_hash,
        ];
        for o in [&exact, &tolerant] {
            digests.extend(o.proof.hashes.iter().chain(&o.final_params_proof.hashes));
            for (_, leaf) in &o.leaves {
                match leaf {
                    TraceLeaf::Step(s) => digests.extend([s.batch, s.op_root, s.next_state]),
                    TraceLeaf::Final(l) => digests.extend([l.state, l.delta]),
                }
            }
            for s in &o.steps {
                digests.extend(s.ops.iter().flat_map(|c| [c.desc, c.tensor]).take(64));
            }
        }
        digests.sort_unstable();
        digests.dedup();
        let f = Fixture {
            exact_json: serde_json::to_vec(&exact).expect("serialises"),
            honest: [exact, tolerant],
            job,
            corpus,
            base,
            commitment: run.commitment,
            digests,
            items: run.leaves().iter().map(TraceLeaf::item).collect(),
            final_state: run.final_state.clone(),
        };
        assert!(verify(&f, &f.honest[0], DeviceClass::Exact).is_accept());
        assert!(verify(&f, &f.honest[1], DeviceClass::Tolerant).is_accept());
        // The one field the exact class ignores: S_{t+1} is not read there...
        assert!(verify(&f, &f.honest[1], DeviceClass::Exact).is_accept());
        // ...and is required in the tolerant class.
        assert!(matches!(
            verify(&f, &f.honest[0], DeviceClass::Tolerant),
            Verdict::Reject {
                reason: RejectReason::WrongNextState,
                ..
            }
        ));
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut u = Unstructured::new(data);
    let Ok((class, opening, commitment)) = mutate(f, &mut u) else {
        return;
    };
    let verdict = verify_with(f, &commitment, &opening, class);
    if let Verdict::Reject {
        step,
        fraud_proof: Some(proof),
        ..
    } = &verdict
    {
        // A fraud proof the verifier publishes convicts the worker for anyone.
        let ctx = FraudContext {
            trace_root: commitment.trace_root,
            steps: f.job.inner.steps,
            base_state_hash: base_state_hash(&f.base),
            worker: worker_key().verifying_key().to_bytes(),
        };
        match proof.check(&ctx) {
            Ok(FraudVerdict::Guilty { step: s, .. }) => assert_eq!(Some(s), *step),
            other => panic!("the verifier's fraud proof does not convict: {other:?}"),
        }
    }
    if verdict.is_accept() && commitment != f.commitment {
        check_resealed(f, &commitment, &opening, class);
    } else if verdict.is_accept() {
        let (seen, honest) = match class {
            DeviceClass::Exact => {
                let mut seen = opening.clone();
                for s in &mut seen.steps {
                    s.next_state = None;
                }
                (seen, f.exact_json.clone())
            }
            // The tolerant class compares states, not op outputs: of the recomputed
            // op outputs it reads only the worker's signature over their root, so a
            // worker may sign anything there (no fraud proof is built in this class).
            DeviceClass::Tolerant => {
                let honest = without_recomputed(f, &f.honest[1]);
                (
                    without_recomputed(f, &opening),
                    serde_json::to_vec(&honest).expect("serialises"),
                )
            }
        };
        let seen = serde_json::to_vec(&seen).expect("serialises");
        assert!(
            seen == honest,
            "a mutated opening was accepted in the {class:?} class"
        );
    }
});

/// Picks a class and its honest opening, then applies 1 to [`MAX_MUTATIONS`] mutations;
/// a reseal among them makes the commitment the opening's own.
fn mutate(f: &Fixture, u: &mut Unstructured) -> Result<(DeviceClass, Opening, Commitment)> {
    let tolerant = u.arbitrary::<u8>()? & 1 == 1;
    let class = if tolerant {
        DeviceClass::Tolerant
    } else {
        DeviceClass::Exact
    };
    let mut o = f.honest[usize::from(tolerant)].clone();
    let mut commitment = f.commitment;
    for _ in 0..u.int_in_range(1..=MAX_MUTATIONS)? {
        match u.int_in_range(0..=11u8)? {
            10 | 11 => commitment = reseal(f, &mut o),
            0 => edit_vec(u, &mut o.leaves, |u, (p, leaf)| edit_leaf(f, u, p, leaf))?,
            1 => edit_vec(u, &mut o.proof.hashes, |u, d| edit_digest(f, u, d))?,
            2 => edit_vec(u, &mut o.final_params_proof.hashes, |u, d| {
                edit_digest(f, u, d)
            })?,
            3 => edit_tensors(u, &mut o.final_params)?,
            4 => edit_vec(u, &mut o.steps, |u, s| edit_step(f, u, s))?,
            5 => {
                // One part of one step, the most common target.
                if !o.steps.is_empty() {
                    let i = u.choose_index(o.steps.len())?;
                    edit_step(f, u, &mut o.steps[i])?;
                }
            }
            6 => {
                // Move a part from one step to another (an honest value in a wrong place).
                if o.steps.len() >= 2 {
                    let (i, j) = (
                        u.choose_index(o.steps.len())?,
                        u.choose_index(o.steps.len())?,
                    );
                    let from = o.steps[j].clone();
                    let to = &mut o.steps[i];
                    match u.int_in_range(0..=3u8)? {
                        0 => to.state = from.state,
                        1 => {
                            to.ops = from.ops;
                            to.signature = from.signature;
                        }
                        2 => to.next_state = from.next_state,
                        _ => to.step = from.step,
                    }
                }
            }
            7 => {
                // The final parameters from an opened state, or the other way round.
                if !o.steps.is_empty() {
                    let i = u.choose_index(o.steps.len())?;
                    let p = o.final_params.len();
                    if u.arbitrary()? {
                        o.final_params = o.steps[i].state.iter().take(p).cloned().collect();
                    } else {
                        let s = &mut o.steps[i].state;
                        let end = p.min(s.len());
                        s.splice(..end, o.final_params.iter().cloned())
                            .for_each(drop);
                    }
                }
            }
            8 => std::mem::swap(&mut o.proof, &mut o.final_params_proof),
            _ => {
                // Leaves and steps of the other class's opening (same task).
                let other = &f.honest[usize::from(!tolerant)];
                if u.arbitrary()? {
                    o.steps = other.steps.clone();
                } else {
                    o.leaves = other.leaves.clone();
                }
            }
        }
    }
    Ok((class, o, commitment))
}

/// Makes the opening consistent with a commitment of its own, as a worker that commits
/// to a wrong trace would: each opened `S_t` becomes leaf `t-1`'s `H(S_t)`, each step's
/// op commits not recomputed its leaf's op root (and the worker signs the
/// root of the rest under the new trace root), an opened `S_{t+1}` leaf `t`'s `H(S_{t+1})`, the final
/// parameters (with the honest moments) `H(S_H)` with their delta and proof, and the
/// trace root is recomputed with the unopened leaves honest. Whatever cannot be sealed
/// (a state of the wrong length, unsorted positions) stays as it is.
fn reseal(f: &Fixture, o: &mut Opening) -> Commitment {
    let h = f.job.inner.steps;
    let p = f.base.len();
    let as_state = |ts: &[Tensor], step: u64| {
        (ts.len() == 3 * p).then(|| TrainState {
            params: ts[..p].to_vec(),
            m: ts[p..2 * p].to_vec(),
            v: ts[2 * p..].to_vec(),
            step,
        })
    };
    let mut seal_leaf = |pos: u32, edit: &mut dyn FnMut(&mut StepLeaf)| {
        for (q, leaf) in &mut o.leaves {
            if let (true, TraceLeaf::Step(s)) = (*q == pos, leaf) {
                edit(s);
            }
        }
    };
    for so in &o.steps {
        let t = so.step;
        if let (Some(prev), Some(state)) = (t.checked_sub(1), as_state(&so.state, t.into())) {
            let hash = state_hash(&state);
            seal_leaf(prev, &mut |l| l.next_state = hash);
        }
        if let Ok(root) = op_root(&committed(&so.ops, &recompute(f, t))) {
            seal_leaf(t, &mut |l| l.op_root = root);
        }
        let next = so.next_state.as_deref();
        if let Some(state) = next.and_then(|n| as_state(n, u64::from(t) + 1)) {
            let hash = state_hash(&state);
            seal_leaf(t, &mut |l| l.next_state = hash);
        }
    }
    let final_state = TrainState {
        params: o.final_params.clone(),
        ..f.final_state.clone()
    };
    let final_hash = state_hash(&final_state);
    seal_leaf(h.wrapping_sub(1), &mut |l| l.next_state = final_hash);
    let delta = quantise_delta(&f.base, &o.final_params).map(|d| Digest(d.hash()));
    for (_, leaf) in &mut o.leaves {
        if let TraceLeaf::Final(l) = leaf {
            l.state = final_hash;
            if let Ok(d) = delta {
                l.delta = d;
            }
        }
    }
    let positions: Vec<usize> = (0..o.final_params.len()).collect();
    if let Ok(tree) = MerkleTree::new(&state_items(&final_state))
        && let Ok(proof) = tree.prove(&positions)
    {
        o.final_params_proof = proof;
    }
    let mut items = f.items.clone();
    for (q, leaf) in &o.leaves {
        if let Some(item) = items.get_mut(*q as usize) {
            *item = leaf.item();
        }
    }
    let positions: Vec<usize> = o.leaves.iter().map(|(q, _)| *q as usize).collect();
    let tree = MerkleTree::new(&items).expect("H + 1 items");
    if let Ok(proof) = tree.prove(&positions) {
        o.proof = proof;
    }
    let key = worker_key();
    for so in &mut o.steps {
        if let Ok(root) = op_root(&recomputed(&so.ops, &recompute(f, so.step))) {
            let message = recomputed_message(&tree.root(), so.step, &root);
            so.signature = Sig(key.sign(&message.0).to_bytes());
        }
    }
    let (final_state_hash, delta_hash) = o
        .leaves
        .iter()
        .find_map(|(_, l)| match l {
            TraceLeaf::Final(l) => Some((l.state, l.delta)),
            TraceLeaf::Step(_) => None,
        })
        .unwrap_or((f.commitment.final_state_hash, f.commitment.delta_hash));
    Commitment {
        trace_root: tree.root(),
        final_state_hash,
        delta_hash,
    }
}

/// `o` without each step's recomputed commits and their signature.
fn without_recomputed(f: &Fixture, o: &Opening) -> Opening {
    let mut o = o.clone();
    for s in &mut o.steps {
        let r = recompute(f, s.step);
        s.ops.retain(|c| !r.contains(c.op, c.output));
        s.signature = Sig([0; 64]);
    }
    o
}

/// What an opening of step `t` recomputes.
fn recompute(f: &Fixture, t: u32) -> Recompute {
    let opt = f.job.inner.adamw();
    plan(
        &f.job.model,
        f.job.inner.batch_size as usize,
        Some((&opt, u64::from(t) + 1)),
    )
    .expect("the fuzz job's plan builds")
    .recomputed()
}

/// Tensors as shapes and bit patterns (`-0.0` and `0.0` differ, as in their hashes).
fn bits(ts: &[Tensor]) -> Vec<(Vec<usize>, Vec<u32>)> {
    ts.iter()
        .map(|t| {
            (
                t.shape().to_vec(),
                t.data().iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

/// An accepted opening of a resealed commitment may differ from the honest one (a
/// worker can commit to anything at unchallenged steps), but what the challenges cover
/// must be true, checked here without the verifier's code: `S_0` is the fresh base
/// state, the opened final parameters quantise to the committed delta, and each
/// challenged step, trained from its opened `S_t` on its PRF batch and committed by
/// `commit_step`, gives its opened leaf and op commits (exact class) or an `S_{t+1}`
/// within the job's tolerance (tolerant class).
fn check_resealed(f: &Fixture, commitment: &Commitment, o: &Opening, class: DeviceClass) {
    let delta = quantise_delta(&f.base, &o.final_params).expect("an accepted delta quantises");
    assert_eq!(
        Digest(delta.hash()),
        commitment.delta_hash,
        "wrong delta accepted"
    );
    let sampler = job_sampler(&f.job, &f.corpus).expect("sampler");
    let p = f.base.len();
    for so in &o.steps {
        let t = so.step;
        let state = TrainState {
            params: so.state[..p].to_vec(),
            m: so.state[p..2 * p].to_vec(),
            v: so.state[2 * p..].to_vec(),
            step: t.into(),
        };
        if t == 0 {
            let fresh = state_tensors(&TrainState::fresh(f.base.clone()));
            assert_eq!(bits(&so.state), bits(&fresh), "a wrong S_0 accepted");
        }
        let batch = task_batch(&f.job, &sampler, &SEED, t).expect("batch");
        let out = train_step(&f.job.model, &f.job.inner.adamw(), &state, &batch)
            .expect("an accepted state trains");
        let opened = o.leaves.iter().find_map(|(q, l)| match l {
            TraceLeaf::Step(s) if *q == t => Some(*s),
            _ => None,
        });
        match class {
            DeviceClass::Exact => {
                let (leaf, commits) = commit_step(t, &batch, &out).expect("commits");
                assert_eq!(opened, Some(leaf), "a wrong leaf accepted at step {t}");
                assert_eq!(commits, so.ops, "wrong op commits accepted at step {t}");
            }
            DeviceClass::Tolerant => {
                let next = so.next_state.as_ref().expect("an accepted S_t+1");
                let replayed = state_tensors(&out.state);
                for (a, b) in next.iter().zip(&replayed) {
                    assert!(relative_distance(a, b) <= f.job.verify.tolerance);
                }
            }
        }
    }
}

/// Edits one entry, or changes the list's length or order.
fn edit_vec<T: Clone>(
    u: &mut Unstructured,
    v: &mut Vec<T>,
    mut edit: impl FnMut(&mut Unstructured, &mut T) -> Result<()>,
) -> Result<()> {
    if v.is_empty() {
        return Ok(());
    }
    let i = u.choose_index(v.len())?;
    match u.int_in_range(0..=5u8)? {
        0 | 1 => edit(u, &mut v[i])?,
        2 => v.truncate(i),
        3 => {
            let copies = u.int_in_range(1..=3usize)?;
            let item = v[i].clone();
            let at = u.int_in_range(0..=v.len())?;
            for _ in 0..copies {
                v.insert(at, item.clone());
            }
        }
        4 => {
            let j = u.choose_index(v.len())?;
            v.swap(i, j);
        }
        _ => {
            v.remove(i);
        }
    }
    Ok(())
}

fn edit_digest(f: &Fixture, u: &mut Unstructured, d: &mut Digest) -> Result<()> {
    match u.int_in_range(0..=2u8)? {
        0 => d.0[u.choose_index(32)?] ^= u.int_in_range(1..=255u8)?,
        1 => *d = *u.choose(&f.digests)?,
        _ => *d = Digest(u.arbitrary()?),
    }
    Ok(())
}

fn edit_u32(u: &mut Unstructured, x: &mut u32) -> Result<()> {
    *x = match u.int_in_range(0..=3u8)? {
        0 => x.wrapping_add(1),
        1 => x.wrapping_sub(1),
        2 => u.int_in_range(0..=16)?,
        _ => u.arbitrary()?,
    };
    Ok(())
}

fn edit_leaf(f: &Fixture, u: &mut Unstructured, p: &mut u32, leaf: &mut TraceLeaf) -> Result<()> {
    match (u.int_in_range(0..=6u8)?, &mut *leaf) {
        (0, _) => edit_u32(u, p)?,
        (1, TraceLeaf::Step(s)) => edit_u32(u, &mut s.step)?,
        (2, TraceLeaf::Step(s)) => edit_digest(f, u, &mut s.batch)?,
        (3, TraceLeaf::Step(s)) => edit_digest(f, u, &mut s.op_root)?,
        (4, TraceLeaf::Step(s)) => s.loss_bits = edit_bits(u, s.loss_bits)?,
        (5, TraceLeaf::Step(s)) => edit_digest(f, u, &mut s.next_state)?,
        (1, TraceLeaf::Final(l)) => edit_u32(u, &mut l.steps)?,
        (2 | 3, TraceLeaf::Final(l)) => edit_digest(f, u, &mut l.state)?,
        (4, TraceLeaf::Final(l)) => edit_digest(f, u, &mut l.delta)?,
        (5, TraceLeaf::Final(l)) => edit_digest(f, u, &mut l.kat)?,
        // The other kind of leaf at the same position.
        (_, TraceLeaf::Step(s)) => {
            *leaf = TraceLeaf::Final(lupus_prover::trace::FinalLeaf {
                steps: *p,
                state: s.next_state,
                delta: f.commitment.delta_hash,
                kat: lupus_prover::merkle::Digest(lupus_prover::kat::expected_digest()),
            })
        }
        (_, TraceLeaf::Final(l)) => {
            *leaf = TraceLeaf::Step(StepLeaf {
                step: *p,
                batch: l.delta,
                op_root: l.delta,
                loss_bits: 0,
                next_state: l.state,
            })
        }
    }
    Ok(())
}

fn edit_step(f: &Fixture, u: &mut Unstructured, s: &mut StepOpening) -> Result<()> {
    match u.int_in_range(0..=5u8)? {
        0 => edit_u32(u, &mut s.step)?,
        5 => s.signature.0[u.choose_index(64)?] ^= u.int_in_range(1..=255u8)?,
        1 | 2 => edit_tensors(u, &mut s.state)?,
        3 => edit_vec(u, &mut s.ops, |u, c| edit_commit(f, u, c))?,
        _ => match (u.int_in_range(0..=2u8)?, &mut s.next_state) {
            (0, next) => *next = None,
            (1, next) => *next = Some(s.state.clone()),
            (_, Some(next)) => edit_tensors(u, next)?,
            (_, None) => {}
        },
    }
    Ok(())
}

fn edit_commit(f: &Fixture, u: &mut Unstructured, c: &mut OpOutputCommit) -> Result<()> {
    match u.int_in_range(0..=3u8)? {
        0 => edit_u32(u, &mut c.op)?,
        1 => edit_u32(u, &mut c.output)?,
        2 => edit_digest(f, u, &mut c.desc)?,
        _ => edit_digest(f, u, &mut c.tensor)?,
    }
    Ok(())
}

/// New bits for a float: a special pattern, one ulp away, or anything.
fn edit_bits(u: &mut Unstructured, bits: u32) -> Result<u32> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => *u.choose(&SPECIAL_BITS)?,
        2 => bits ^ 1,
        _ => u.arbitrary()?,
    })
}

/// Edits a list of tensors: one element, one tensor's shape or size, or the list.
fn edit_tensors(u: &mut Unstructured, ts: &mut Vec<Tensor>) -> Result<()> {
    edit_vec(u, ts, |u, t| {
        let mut shape = t.shape().to_vec();
        let mut data = t.data().to_vec();
        if u.arbitrary()? && !data.is_empty() {
            let j = u.choose_index(data.len())?;
            let bits = edit_bits(u, data[j].to_bits())?;
            let x = f32::from_bits(bits);
            data[j] = x;
            match Tensor::new(shape, data) {
                Ok(new) => {
                    assert!(x.is_finite(), "a tensor took a non-finite value");
                    // A subnormal is stored as a zero of its sign.
                    let stored = if x.abs() < f32::MIN_POSITIVE {
                        bits & 0x8000_0000
                    } else {
                        bits
                    };
                    assert_eq!(new.data()[j].to_bits(), stored);
                    *t = new;
                }
                Err(_) => assert!(!x.is_finite(), "a finite value was refused"),
            }
        } else {
            // Another shape: the same data under another split, or resized.
            match u.int_in_range(0..=2u8)? {
                0 => shape.reverse(),
                1 => shape = vec![data.len()],
                _ => {
                    let ndim = u.int_in_range(0..=3usize)?;
                    shape = (0..ndim)
                        .map(|_| u.int_in_range(0..=24usize))
                        .collect::<Result<_>>()?;
                    let n: usize = shape.iter().product();
                    if n > MAX_RESIZE {
                        return Ok(());
                    }
                    data.resize(n, 0.25);
                }
            }
            *t = Tensor::new(shape, data).expect("finite data fills the shape");
        }
        Ok(())
    })
}
