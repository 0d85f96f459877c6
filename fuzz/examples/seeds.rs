//! Writes the seed corpus, `fuzz/corpus/<target>/seed-*`: a few small, valid inputs per
//! target, signed with the fixed keys of `lupus_fuzz`, so mutations start past the
//! signature checks. Every seed is checked to pass its target's checks before it is
//! written. The files are checked in; run this again after a format change:
//!
//! ```text
//! cd fuzz && cargo +nightly run --example seeds
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ed25519_dalek::Signer;
use lupus_api::check::{check_opening, check_submission, check_verdict};
use lupus_api::lupus_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use lupus_api::lupus_ledger::entry::{
    Amount, CreditKind, Digest, EndReason, Entry, EntryBody, Epoch, PublicKey, Role, Round,
};
use lupus_api::lupus_ledger::hash::leaf_hash;
use lupus_api::lupus_ledger::hash::{LeafIndex, TreeSize};
use lupus_api::lupus_ledger::note::{CosignatureVerifier, add_signature, cosign};
use lupus_api::lupus_ledger::proof::{TlogProof, prove_consistency, prove_inclusion};
use lupus_api::lupus_ledger::stake::{build_statement, verify_statement};
use lupus_api::lupus_ledger::sumtree::SumTree;
use lupus_api::lupus_ledger::tiles::encode_entry_bundle;
use lupus_api::lupus_ledger::tree::MemoryTree;
use lupus_api::lupus_prover::data::Corpus;
use lupus_api::lupus_prover::fraud::{FraudProof, LossFraud, OpLeaves, TraceLeaves};
use lupus_api::lupus_prover::model::init_params;
use lupus_api::lupus_prover::task::run_task;
use lupus_api::lupus_prover::tensor::Tensor;
use lupus_api::lupus_prover::verify::DeviceClass;
use lupus_api::model::encode_model;
use lupus_api::sign::sign_request;
use lupus_api::types::{
    B64, JoinRequest, Sig, Submission, VerdictSubmission, evidence_digest, join_body, verdict_body,
    work_committed_body,
};
use lupus_fuzz::{
    LOG_ORIGIN, STEPS, TASK, WITNESS_NAME, job, log_signer, public, verifier_key, witness_key,
    witness_signer, worker_key,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn entries() -> Res<Vec<(&'static str, Entry)>> {
    let worker = worker_key();
    let verifier = verifier_key();
    let d = |b: u8| Digest([b; 32]);
    Ok(vec![
        (
            "genesis",
            Entry::unsigned(EntryBody::Genesis {
                job_spec: "[job]\nname = \"fuzz\"\n".into(),
                job_hash: d(1),
                dataset_root: d(2),
                log_key: PublicKey([3; 32]),
                coordinator_note_key: log_signer().verifier_key(),
                created_ms: 1_700_000_000_000,
            })?,
        ),
        (
            "joined",
            Entry::signed(join_body(public(&worker), Role::Worker, "w1"), &worker)?,
        ),
        (
            "round-opened",
            Entry::unsigned(EntryBody::RoundOpened {
                round: Round(1),
                base_model: d(4),
                beacon_commitment: d(5),
                inner_steps: 8,
                deadline_ms: 1_700_000_100_000,
            })?,
        ),
        (
            "task-assigned",
            Entry::unsigned(EntryBody::TaskAssigned {
                task: TASK,
                round: Round(1),
                worker: public(&worker),
                seed: d(6),
                inner_steps: 8,
                batch_size: 8,
            })?,
        ),
        (
            "work-committed",
            Entry::signed(
                EntryBody::WorkCommitted {
                    task: TASK,
                    worker: public(&worker),
                    trace_root: d(7),
                    final_state: d(8),
                    delta: d(9),
                },
                &worker,
            )?,
        ),
        (
            "challenge",
            Entry::unsigned(EntryBody::ChallengeIssued {
                task: TASK,
                verifier: public(&verifier),
                steps: STEPS.to_vec(),
            })?,
        ),
        (
            "verdict",
            Entry::signed(
                verdict_body(
                    TASK,
                    public(&verifier),
                    false,
                    STEPS.to_vec(),
                    "bad",
                    Some(d(10)),
                ),
                &verifier,
            )?,
        ),
        (
            "round-closed",
            Entry::unsigned(EntryBody::RoundClosed {
                round: Round(1),
                beacon: d(11),
                new_model: d(12),
                val_loss_bits: 1.5f32.to_bits(),
                accepted_tasks: 1,
                val_windows: 512,
                momentum: Some(d(15)),
                merged: vec![d(16)],
            })?,
        ),
        (
            "credit",
            Entry::unsigned(EntryBody::Credit {
                round: Round(1),
                key: public(&worker),
                amount: Amount(100),
                task: TASK,
                kind: CreditKind::Work,
            })?,
        ),
        (
            "slashed",
            Entry::unsigned(EntryBody::Slashed {
                key: public(&worker),
                task: TASK,
                reason: "fraud".into(),
                evidence: Some(d(13)),
            })?,
        ),
        (
            "task-opened",
            Entry::unsigned(EntryBody::TaskOpened {
                task: TASK,
                worker: public(&worker),
                opening: d(14),
            })?,
        ),
        (
            "task-ended",
            Entry::unsigned(EntryBody::TaskEnded {
                task: TASK,
                reason: EndReason::NotJudged,
            })?,
        ),
    ])
}

fn main() -> Res<()> {
    let log = log_signer();
    let witness = witness_signer();
    let entries = entries()?;

    // Entries, bundles, structured-entry and tile inputs.
    for (name, e) in &entries {
        write("entry_decode", name, e.as_bytes())?;
    }
    let bundle: Vec<&[u8]> = entries.iter().take(4).map(|(_, e)| e.as_bytes()).collect();
    write("entry_bundle", "four", &encode_entry_bundle(&bundle)?)?;
    for (i, bytes) in [&[0u8; 64][..], &[0x5a; 200], b"\x07\x01\x02\x03 structured"]
        .iter()
        .enumerate()
    {
        write("entry_roundtrip", &i.to_string(), bytes)?;
        write("tiles", &i.to_string(), bytes)?;
    }
    write("tiles", "path", b"\x14tile/0/x001/x234/067")?;
    for (i, bytes) in [&[0u8; 32][..], &[0xa5; 100]].iter().enumerate() {
        write("proofs", &i.to_string(), bytes)?;
    }
    write("multiproof", "0", &[0u8; 64])?;
    write("multiproof", "1", &(0x40u8..0x50).collect::<Vec<u8>>())?;
    // Mutation programs for `verify_opening`: class byte, mutation count, then each
    // mutation kind once (kinds 10 and 11 reseal the commitment), on a fixed tail.
    for kind in 0u8..12 {
        let mut program = vec![kind & 1, 0, kind];
        program.extend((0u8..48).map(|i| i.wrapping_mul(37)));
        write("verify_opening", &format!("kind-{kind}"), &program)?;
    }
    // JSON proofs of the `proofs` target's tree (leaf i is `i` as 8 big-endian bytes).
    let mut numbers = MemoryTree::new();
    for i in 0..600u64 {
        numbers.append_entry(&i.to_be_bytes());
    }
    let p = prove_inclusion(TreeSize(300), LeafIndex(17), &numbers)?;
    write("proofs", "inclusion", &serde_json::to_vec(&p)?)?;
    let p = prove_consistency(TreeSize(100), TreeSize(513), &numbers)?;
    write("proofs", "consistency", &serde_json::to_vec(&p)?)?;

    // A log of the entries above plus a shares epoch, its checkpoint, cosigned.
    let mut balances = BTreeMap::new();
    balances.insert(public(&worker_key()), Amount(100));
    balances.insert(public(&verifier_key()), Amount(20));
    let sum = SumTree::build(&balances)?;
    let (root, total) = sum.root();
    let epoch = Entry::unsigned(EntryBody::SharesEpoch {
        epoch: Epoch(1),
        round: Round(1),
        root,
        total,
        accounts: sum.accounts(),
    })?;
    let mut tree = MemoryTree::new();
    for (_, e) in &entries {
        tree.append_entry(e.as_bytes());
    }
    let epoch_index = tree.append_entry(epoch.as_bytes());
    let size = tree.size();
    let cp = Checkpoint {
        origin: LOG_ORIGIN.into(),
        size,
        root: tree.root(),
        extensions: vec![],
    };
    let note = sign_checkpoint(&cp, &log)?;
    let cosigned = add_signature(&note, &witness.signature(&cp.to_body())?)?;
    write("checkpoint", "signed", note.as_bytes())?;
    write("checkpoint", "cosigned", cosigned.as_bytes())?;
    write("checkpoint", "body", cp.to_body().as_bytes())?;
    write("note", "checkpoint", cosigned.as_bytes())?;
    let timestamped = add_signature(
        &note,
        &cosign(WITNESS_NAME, &witness_key(), &cp.to_body(), 1_700_000_000),
    )?;
    write("note", "cosignature-v1", timestamped.as_bytes())?;
    let cosigner = CosignatureVerifier::from_key(WITNESS_NAME, witness_key().verifying_key())?;
    write("note", "cosigner-vkey", cosigner.to_string().as_bytes())?;
    write("note", "text", log.sign("hello\nworld\n")?.as_bytes())?;
    write("note", "vkey", log.verifier_key().as_bytes())?;
    write("note", "skey", log.private_key().as_bytes())?;

    let proof = prove_inclusion(size, LeafIndex(1), &tree)?;
    let tlog = TlogProof {
        extra: Some(entries[1].1.encode()),
        index: LeafIndex(1),
        path: proof.path,
        checkpoint: cosigned.clone(),
    };
    tlog.verify(&leaf_hash(entries[1].1.as_bytes()), &log.verifier())?;
    write("tlog_proof", "joined", tlog.encode().as_bytes())?;
    let inclusion = prove_inclusion(size, epoch_index, &tree)?;
    let statement = build_statement(
        &public(&worker_key()),
        &sum,
        epoch_index.0,
        &epoch,
        inclusion,
        note.clone(),
    )?;
    verify_statement(&statement, &log.verifier_key())?;
    write(
        "stake_statement",
        "worker",
        &serde_json::to_vec_pretty(&statement)?,
    )?;

    // API bodies: a join, a signed request, and a real task's submission and opening.
    let worker = worker_key();
    let verifier = verifier_key();
    let body = join_body(public(&worker), Role::Worker, "w1").encode()?;
    let mut msg = b"lupus entry v1\n".to_vec();
    msg.extend_from_slice(&body);
    let join = JoinRequest {
        role: Role::Worker,
        name: "w1".into(),
        signature: Sig(worker.sign(&msg).to_bytes()),
    };
    write("api_join", "worker", &serde_json::to_vec(&join)?)?;
    let req_body = serde_json::to_string(&join)?;
    let signed = sign_request(
        &worker,
        "POST",
        "/v1/join",
        req_body.as_bytes(),
        1_700_000_000_000,
        [9; 16],
    );
    let headers: BTreeMap<&str, &str> = signed.pairs().into_iter().collect();
    let input = serde_json::json!({
        "method": "POST",
        "path": "/v1/join",
        "body": req_body,
        "now": 1_700_000_000_000u64,
        "headers": headers,
    });
    write("api_signed_request", "join", &serde_json::to_vec(&input)?)?;

    let job = job();
    let corpus = Corpus::generated(11, 4_000);
    let base = init_params(&job.model, [2; 32])?;
    let run = run_task(&job, &corpus, &base, [3; 32], &mut |_, _| {})?;
    let entry = Entry::signed(
        work_committed_body(TASK, public(&worker), &run.commitment),
        &worker,
    )?;
    let sub = Submission {
        work_committed: B64(entry.encode()),
        delta: B64(run.delta.to_bytes()),
        final_opening: run.final_opening()?,
        device_class: DeviceClass::Exact,
    };
    let shapes = lupus_fuzz::param_shapes(&job);
    check_submission(&sub, TASK, &public(&worker), &shapes, job.inner.steps)?;
    write("api_submission", "real", &serde_json::to_vec(&sub)?)?;
    write("model_blob", "base", &encode_model(&base))?;
    write("model_blob", "delta", &run.delta.to_bytes())?;
    let opening = run.open(&job, &corpus, &STEPS, false, &worker)?;
    // The real opening is ~90 KB of state tensors; the seed keeps its structure, its
    // steps, leaves and proofs, with one small tensor per state and a few op commits.
    let small = || Tensor::new(vec![2], vec![0.5, -1.0]);
    let mut seed = opening.clone();
    for s in &mut seed.steps {
        s.state = vec![small()?];
        s.ops.truncate(3);
    }
    seed.final_params = vec![small()?];
    check_opening(&seed, &STEPS)?;
    write("api_opening", "real", &seed.to_bytes())?;

    let accept = Entry::signed(
        verdict_body(TASK, public(&verifier), true, STEPS.to_vec(), "ok", None),
        &verifier,
    )?;
    let v = VerdictSubmission {
        verdict: B64(accept.encode()),
        fraud_proof: None,
    };
    check_verdict(&v, TASK, &public(&verifier), &STEPS)?;
    write("api_verdict", "accept", &serde_json::to_vec(&v)?)?;
    // A structurally complete (not truthful) loss fraud proof from the real opening.
    let step = opening.steps.first().ok_or("opening has no step")?;
    let fraud = FraudProof::Loss(LossFraud {
        step: step.step,
        trace: TraceLeaves {
            leaves: opening.leaves.clone(),
            proof: opening.proof.clone(),
        },
        op: 3,
        inputs: vec![],
        loss: Tensor::new(vec![1], vec![2.5])?,
        op_leaves: OpLeaves {
            leaves: step.ops.iter().take(2).map(|c| (c.op, *c)).collect(),
            total: step.ops.len() as u32,
            proof: opening.proof.clone(),
        },
    });
    let reject = Entry::signed(
        verdict_body(
            TASK,
            public(&verifier),
            false,
            STEPS.to_vec(),
            "loss",
            Some(evidence_digest(&fraud)),
        ),
        &verifier,
    )?;
    let v = VerdictSubmission {
        verdict: B64(reject.encode()),
        fraud_proof: Some(fraud),
    };
    check_verdict(&v, TASK, &public(&verifier), &STEPS)?;
    write("api_verdict", "reject", &serde_json::to_vec(&v)?)?;
    Ok(())
}
