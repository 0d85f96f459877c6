//! Stake statements end to end: a plausible run written to an in-memory log, folded
//! into shares, a statement for every account verified offline with only the log's
//! verifier key, and every field tampered with to show each check bites.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use lupus_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, EntryError, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_ledger::hash::{Hash, LeafIndex, TreeSize};
use lupus_ledger::note::NoteSigner;
use lupus_ledger::proof::prove_inclusion;
use lupus_ledger::stake::{StakeError, StakeStatement, build_statement, verify_statement};
use lupus_ledger::sumtree::{SumTree, SumTreeError};
use lupus_ledger::tree::MemoryTree;
use lupus_protocol::{FoldError, SharesFold};

const ORIGIN: &str = "lupus.test/shakespeare";
const H: u32 = 20;
const BATCH: u32 = 8;
const FLOPS_PER_SAMPLE: u64 = 1_000_000;

/// The log as a coordinator writes it, folded as it goes.
struct Run {
    signer: NoteSigner,
    tree: MemoryTree,
    entries: Vec<Entry>,
    fold: SharesFold,
    /// Every epoch: (epoch, entry index, the balances' tree, the balances).
    epochs: Vec<(Epoch, u64, SumTree, BTreeMap<PublicKey, Amount>)>,
}

impl Run {
    fn push(&mut self, entry: Entry) -> u64 {
        let index = self.tree.append_entry(entry.as_bytes()).0;
        self.fold.apply(index, &entry).unwrap();
        self.entries.push(entry);
        index
    }

    fn epoch(&mut self, epoch: u64, round: u64) {
        let body = self
            .fold
            .expected_epoch(Epoch(epoch), Round(round))
            .unwrap();
        let index = self.push(Entry::unsigned(body).unwrap());
        let tree = self.fold.latest_epoch().unwrap().tree.clone();
        let balances = self.fold.balances().clone();
        self.epochs.push((Epoch(epoch), index, tree, balances));
    }

    fn checkpoint(&self) -> String {
        let cp = Checkpoint {
            origin: ORIGIN.to_string(),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: Vec::new(),
        };
        sign_checkpoint(&cp, &self.signer).unwrap()
    }

    fn statement(&self, epoch: usize, key: &PublicKey) -> Result<StakeStatement, StakeError> {
        let (_, index, tree, _) = &self.epochs[epoch];
        let inclusion = prove_inclusion(self.tree.size(), LeafIndex(*index), &self.tree).unwrap();
        build_statement(
            key,
            tree,
            *index,
            &self.entries[*index as usize],
            inclusion,
            self.checkpoint(),
        )
    }
}

fn participant(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn d(tag: &str, n: u64) -> Digest {
    Digest::of(format!("{tag}{n}").as_bytes())
}

/// Three rounds, five workers, two verifiers. Worker 3 is paid in round 1, then
/// caught faking a step in round 2 and slashed; worker 5 joins late.
fn plausible_run() -> Run {
    let signer = NoteSigner::from_secret(ORIGIN, [7; 32]).unwrap();
    let mut run = Run {
        tree: MemoryTree::new(),
        entries: Vec::new(),
        fold: SharesFold::new(),
        epochs: Vec::new(),
        signer,
    };
    let log_key = PublicKey(run.signer.verifier().public_key().to_bytes());
    run.push(
        Entry::unsigned(EntryBody::Genesis {
            job_spec: "[job]\nname = \"shakespeare-mlp\"\ninner_steps = 20\n".into(),
            job_hash: d("job", 0),
            dataset_root: d("data", 0),
            log_key,
            coordinator_note_key: run.signer.verifier_key(),
            created_ms: 1_795_000_000_000,
        })
        .unwrap(),
    );
    let workers: Vec<SigningKey> = (1..=5).map(participant).collect();
    let verifiers: Vec<SigningKey> = (10..=11).map(participant).collect();
    for (i, w) in workers.iter().take(4).enumerate() {
        run.push(
            Entry::signed(
                EntryBody::ParticipantJoined {
                    key: PublicKey::from(w),
                    role: Role::Worker,
                    name: format!("worker-{i}"),
                },
                w,
            )
            .unwrap(),
        );
    }
    for v in &verifiers {
        run.push(
            Entry::signed(
                EntryBody::ParticipantJoined {
                    key: PublicKey::from(v),
                    role: Role::Verifier,
                    name: "verifier".into(),
                },
                v,
            )
            .unwrap(),
        );
    }
    let mut task = 0u64;
    for round in 1..=3u64 {
        if round == 2 {
            run.push(
                Entry::signed(
                    EntryBody::ParticipantJoined {
                        key: PublicKey::from(&workers[4]),
                        role: Role::Worker,
                        name: "late".into(),
                    },
                    &workers[4],
                )
                .unwrap(),
            );
        }
        run.push(
            Entry::unsigned(EntryBody::RoundOpened {
                round: Round(round),
                base_model: d("model", round),
                beacon_commitment: d("beacon-commit", round),
                inner_steps: H,
                deadline_ms: 1_795_000_000_000 + round * 60_000,
            })
            .unwrap(),
        );
        let mut accepted = 0;
        for (wi, w) in workers.iter().enumerate() {
            let w_pk = PublicKey::from(w);
            if round == 1 && wi == 4 {
                continue;
            }
            if round == 3 && wi == 2 {
                continue; // slashed workers get no more tasks
            }
            task += 1;
            let v = &verifiers[wi % 2];
            let v_pk = PublicKey::from(v);
            let cheat = round == 2 && wi == 2;
            run.push(
                Entry::unsigned(EntryBody::TaskAssigned {
                    task: TaskId(task),
                    round: Round(round),
                    worker: w_pk,
                    seed: d("seed", task),
                    inner_steps: H,
                    batch_size: BATCH,
                })
                .unwrap(),
            );
            run.push(
                Entry::signed(
                    EntryBody::WorkCommitted {
                        task: TaskId(task),
                        worker: w_pk,
                        trace_root: d("trace", task),
                        final_state: d("state", task),
                        delta: d("delta", task),
                    },
                    w,
                )
                .unwrap(),
            );
            let steps = vec![3, 11, 17];
            run.push(
                Entry::unsigned(EntryBody::ChallengeIssued {
                    task: TaskId(task),
                    verifier: v_pk,
                    steps: steps.clone(),
                })
                .unwrap(),
            );
            run.push(
                Entry::signed(
                    EntryBody::Verdict {
                        task: TaskId(task),
                        verifier: v_pk,
                        accepted: !cheat,
                        steps,
                        reason: if cheat {
                            "step 11 differs".into()
                        } else {
                            String::new()
                        },
                        evidence: cheat.then(|| d("fraud", task)),
                    },
                    v,
                )
                .unwrap(),
            );
            if cheat {
                run.push(
                    Entry::unsigned(EntryBody::Slashed {
                        key: w_pk,
                        task: TaskId(task),
                        reason: "fraud proof at step 11".into(),
                        evidence: Some(d("fraud", task)),
                    })
                    .unwrap(),
                );
                continue;
            }
            accepted += 1;
            run.push(
                Entry::unsigned(EntryBody::Credit {
                    round: Round(round),
                    key: w_pk,
                    amount: Amount(u64::from(H * BATCH) * FLOPS_PER_SAMPLE * (wi as u64 + 1)),
                    task: TaskId(task),
                    kind: CreditKind::Work,
                })
                .unwrap(),
            );
            run.push(
                Entry::unsigned(EntryBody::Credit {
                    round: Round(round),
                    key: v_pk,
                    amount: Amount(3 * u64::from(BATCH) * FLOPS_PER_SAMPLE),
                    task: TaskId(task),
                    kind: CreditKind::Verification,
                })
                .unwrap(),
            );
        }
        run.push(
            Entry::unsigned(EntryBody::RoundClosed {
                round: Round(round),
                beacon: d("beacon", round),
                new_model: d("model", round + 1),
                val_loss_bits: (3.0f32 - round as f32 * 0.1).to_bits(),
                accepted_tasks: accepted,
                val_windows: 0,
                momentum: None,
                merged: Vec::new(),
            })
            .unwrap(),
        );
        run.epoch(round, round);
    }
    run
}

fn vkey(run: &Run) -> String {
    run.signer.verifier_key()
}

#[test]
fn every_account_at_every_epoch_verifies_offline() {
    let run = plausible_run();
    // Replaying the stored bytes from scratch gives the same shares: the fold is a
    // pure function of the log.
    let mut replay = SharesFold::new();
    for (i, e) in run.entries.iter().enumerate() {
        replay
            .apply(i as u64, &Entry::decode(e.as_bytes()).unwrap())
            .unwrap();
    }
    assert_eq!(replay.balances(), run.fold.balances());

    let slashed = PublicKey::from(&participant(3));
    assert!(run.fold.is_slashed(&slashed));
    // Epoch 1 (after round 1) still holds the cheater's round-1 credit; later ones do not.
    assert!(run.epochs[0].3.contains_key(&slashed));
    assert!(!run.epochs[1].3.contains_key(&slashed));

    let mut checked = 0;
    for (e, (epoch, index, tree, balances)) in run.epochs.iter().enumerate() {
        let total: u64 = balances.values().map(|a| a.0).sum();
        assert_eq!(tree.root().1, Amount(total));
        for (key, balance) in balances {
            let statement = run.statement(e, key).unwrap();
            // Through JSON, as a participant would carry it.
            let json = serde_json::to_string_pretty(&statement).unwrap();
            let parsed: StakeStatement = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed, statement);
            let verified = verify_statement(&parsed, &vkey(&run)).unwrap();
            assert_eq!(verified.pubkey, *key);
            assert_eq!(verified.balance, *balance);
            assert_eq!(verified.total, Amount(total));
            assert_eq!(verified.epoch, *epoch);
            assert_eq!(verified.entry_index, *index);
            assert_eq!(verified.accounts, balances.len() as u64);
            assert_eq!(verified.origin, ORIGIN);
            assert_eq!(verified.checkpoint_size, run.tree.size());
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} statements");
    // The slashed key has nothing to state at the last epoch.
    assert!(matches!(
        run.statement(2, &slashed),
        Err(StakeError::NotAnAccount(k)) if k == slashed
    ));
}

#[test]
fn json_form_is_stable_and_strict() {
    let run = plausible_run();
    let key = PublicKey::from(&participant(1));
    let statement = run.statement(2, &key).unwrap();
    let value = serde_json::to_value(&statement).unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(value["pubkey"], key.to_string());
    assert!(value["balance"].is_string());
    assert!(value["total"].is_string());
    let entry_b64 = value["entry"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(entry_b64)
            .unwrap(),
        statement.entry
    );
    let mut extra = value.clone();
    extra["surprise"] = serde_json::json!(true);
    assert!(serde_json::from_value::<StakeStatement>(extra).is_err());
}

/// Builds the statement every tamper test starts from: worker 1 at the last epoch.
fn good() -> (Run, StakeStatement) {
    let run = plausible_run();
    let statement = run.statement(2, &PublicKey::from(&participant(1))).unwrap();
    verify_statement(&statement, &vkey(&run)).unwrap();
    (run, statement)
}

fn flip(h: &mut [u8; 32]) {
    h[0] ^= 1;
}

#[test]
fn tampered_balance_fails() {
    let (run, mut s) = good();
    s.balance = Amount(s.balance.0 + 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::BalanceNotProven(SumTreeError::RootMismatch))
    ));
}

#[test]
fn tampered_total_fails() {
    let (run, mut s) = good();
    s.total = Amount(s.total.0 + 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::TotalMismatch { .. })
    ));
}

#[test]
fn another_key_fails() {
    let (run, mut s) = good();
    // Claim worker 1's balance for worker 2.
    s.pubkey = PublicKey::from(&participant(2));
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::BalanceNotProven(SumTreeError::RootMismatch))
    ));
}

#[test]
fn tampered_sum_proof_fails() {
    let (run, good) = good();
    let mut s = good.clone();
    flip(&mut s.sum_proof.siblings[0].hash.0);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::BalanceNotProven(SumTreeError::RootMismatch))
    ));
    let mut s = good.clone();
    s.sum_proof.siblings[0].sum = Amount(s.sum_proof.siblings[0].sum.0 + 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::BalanceNotProven(SumTreeError::RootMismatch))
    ));
    let mut s = good.clone();
    s.sum_proof.siblings.pop();
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::BalanceNotProven(
            SumTreeError::WrongLength { .. }
        ))
    ));
    let mut s = good;
    s.sum_proof.accounts += 1;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::AccountsMismatch { .. })
    ));
}

#[test]
fn tampered_entry_bytes_fail() {
    let (run, good) = good();
    // A byte of the committed root: still a valid entry, but not the logged one.
    let mut s = good.clone();
    let root_at = 2 + 8 + 8;
    s.entry[root_at] ^= 1;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::NotIncluded { .. })
    ));
    // The version byte: not an entry at all.
    let mut s = good.clone();
    s.entry[0] = 9;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::Entry(EntryError::UnknownVersion(9)))
    ));
    // The epoch number inside the entry.
    let mut s = good;
    s.epoch = Epoch(s.epoch.0 + 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::EpochMismatch { .. })
    ));
}

#[test]
fn another_logged_entry_is_not_an_epoch() {
    let (run, mut s) = good();
    // Entry 1 is really in the log, with a valid inclusion proof, but is a join.
    s.entry = run.entries[1].encode();
    s.entry_index = 1;
    s.inclusion = prove_inclusion(run.tree.size(), LeafIndex(1), &run.tree).unwrap();
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::NotAnEpoch { index: 1, .. })
    ));
}

#[test]
fn tampered_index_fails() {
    let (run, good) = good();
    let mut s = good.clone();
    s.entry_index += 1;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::IndexMismatch { .. })
    ));
    // Moving both the index and the proof's index keeps them consistent, but the
    // path no longer leads to the root.
    let mut s = good;
    s.entry_index -= 1;
    s.inclusion.index = LeafIndex(s.entry_index);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::NotIncluded { .. })
    ));
}

#[test]
fn tampered_inclusion_proof_fails() {
    let (run, good) = good();
    let mut s = good.clone();
    let mut h: Hash = s.inclusion.path[0];
    h.0[0] ^= 1;
    s.inclusion.path[0] = h;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::NotIncluded { .. })
    ));
    let mut s = good;
    s.inclusion.size = TreeSize(s.inclusion.size.0 + 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::SizeMismatch { .. })
    ));
}

#[test]
fn tampered_checkpoint_signature_fails() {
    let (run, good) = good();
    // Flip one bit of the signature, inside the base64 of the last line.
    let mut s = good.clone();
    let text = s.checkpoint.trim_end_matches('\n');
    let (head, sig_b64) = text.rsplit_once(' ').unwrap();
    let mut sig = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    s.checkpoint = format!(
        "{head} {}\n",
        base64::engine::general_purpose::STANDARD.encode(&sig)
    );
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::Checkpoint(_))
    ));
    // Change the signed text (the tree size line) and keep the signature.
    let mut s = good;
    let size = run.tree.size().0;
    s.checkpoint = s
        .checkpoint
        .replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::Checkpoint(_))
    ));
}

#[test]
fn wrong_verifier_key_fails() {
    let (run, s) = good();
    let other = NoteSigner::from_secret(ORIGIN, [8; 32]).unwrap();
    assert!(matches!(
        verify_statement(&s, &other.verifier_key()),
        Err(StakeError::Checkpoint(_))
    ));
    assert!(matches!(
        verify_statement(&s, "not a key"),
        Err(StakeError::VerifierKey(_))
    ));
    drop(run);
}

#[test]
fn unknown_version_fails() {
    let (run, mut s) = good();
    s.version = 2;
    assert!(matches!(
        verify_statement(&s, &vkey(&run)),
        Err(StakeError::UnsupportedVersion(2))
    ));
}

#[test]
fn build_refuses_a_tree_the_entry_does_not_commit() {
    let run = plausible_run();
    let key = PublicKey::from(&participant(1));
    let (_, index, _, _) = &run.epochs[2];
    let older_tree = &run.epochs[0].2;
    let inclusion = prove_inclusion(run.tree.size(), LeafIndex(*index), &run.tree).unwrap();
    assert!(matches!(
        build_statement(
            &key,
            older_tree,
            *index,
            &run.entries[*index as usize],
            inclusion,
            run.checkpoint()
        ),
        Err(StakeError::TreeMismatch)
    ));
}

#[test]
fn a_coordinator_cannot_log_a_padded_epoch() {
    // An epoch that inflates one balance is refused by the fold (an auditor's replay),
    // before any statement could be made from it.
    let mut run = plausible_run();
    let mut inflated = run.fold.balances().clone();
    *inflated.get_mut(&PublicKey::from(&participant(1))).unwrap() = Amount(1 << 50);
    let tree = SumTree::build(&inflated).unwrap();
    let (root, total) = tree.root();
    let bad = Entry::unsigned(EntryBody::SharesEpoch {
        epoch: Epoch(4),
        round: Round(3),
        root,
        total,
        accounts: tree.accounts(),
    })
    .unwrap();
    let index = run.tree.size().0;
    assert!(matches!(
        run.fold.apply(index, &bad),
        Err(FoldError::EpochMismatch { .. })
    ));
}
