//! Stake statement build and verify at scale: a sum tree of 100,000 accounts and a
//! log of about 100,000 entries, in memory. Target: each operation under 1 ms.
//!
//! Baseline in the same run: opening the signed checkpoint alone (one Ed25519
//! verification and a note parse), which is the floor of any offline verification.
//!
//! `cargo bench -p lupus-ledger --no-default-features --bench stake`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lupus_ledger::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use lupus_ledger::entry::{
    Amount, CreditKind, Digest, Entry, EntryBody, Epoch, PublicKey, Round, TaskId,
};
use lupus_ledger::hash::LeafIndex;
use lupus_ledger::note::{NoteSigner, NoteVerifier};
use lupus_ledger::proof::prove_inclusion;
use lupus_ledger::shares::SharesFold;
use lupus_ledger::stake::{build_statement, verify_statement};
use lupus_ledger::tree::MemoryTree;

const ACCOUNTS: u64 = 100_000;

struct Fixture {
    tree: MemoryTree,
    fold: SharesFold,
    epoch_entry: Entry,
    epoch_index: u64,
    keys: Vec<PublicKey>,
    checkpoint: String,
    vkey: String,
}

fn push(tree: &mut MemoryTree, fold: &mut SharesFold, body: EntryBody) -> (u64, Entry) {
    let entry = Entry::unsigned(body).unwrap();
    let index = tree.append_entry(entry.as_bytes()).0;
    fold.apply(index, &entry).unwrap();
    (index, entry)
}

/// Genesis, one round with a credit to each of 100,000 distinct keys, its close and
/// the shares epoch: 100,004 entries, every one folded and appended.
fn fixture() -> Fixture {
    let signer = NoteSigner::from_secret("lupus.bench/log", [7; 32]).unwrap();
    let mut tree = MemoryTree::new();
    let mut fold = SharesFold::new();
    push(
        &mut tree,
        &mut fold,
        EntryBody::Genesis {
            job_spec: "[job]\n".into(),
            job_hash: Digest::of(b"job"),
            dataset_root: Digest::of(b"data"),
            log_key: PublicKey(signer.verifier().public_key().to_bytes()),
            coordinator_note_key: signer.verifier_key(),
            created_ms: 0,
        },
    );
    push(
        &mut tree,
        &mut fold,
        EntryBody::RoundOpened {
            round: Round(1),
            base_model: Digest::of(b"model"),
            beacon_commitment: Digest::of(b"beacon"),
            inner_steps: 20,
            deadline_ms: 0,
        },
    );
    let mut keys = Vec::with_capacity(ACCOUNTS as usize);
    for i in 0..ACCOUNTS {
        let key = PublicKey(*Digest::of(&i.to_be_bytes()).as_bytes());
        keys.push(key);
        push(
            &mut tree,
            &mut fold,
            EntryBody::Credit {
                round: Round(1),
                key,
                amount: Amount(1_000_000 + i),
                task: TaskId(i),
                kind: CreditKind::Work,
            },
        );
    }
    push(
        &mut tree,
        &mut fold,
        EntryBody::RoundClosed {
            round: Round(1),
            beacon: Digest::of(b"r"),
            new_model: Digest::of(b"model2"),
            val_loss_bits: 0,
            accepted_tasks: ACCOUNTS as u32,
        },
    );
    let body = fold.expected_epoch(Epoch(1), Round(1)).unwrap();
    let (epoch_index, epoch_entry) = push(&mut tree, &mut fold, body);
    let checkpoint = sign_checkpoint(
        &Checkpoint {
            origin: "lupus.bench/log".into(),
            size: tree.size(),
            root: tree.root(),
            extensions: Vec::new(),
        },
        &signer,
    )
    .unwrap();
    Fixture {
        tree,
        fold,
        epoch_entry,
        epoch_index,
        keys,
        checkpoint,
        vkey: signer.verifier_key(),
    }
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    let f = fixture();
    let epoch_tree = &f.fold.latest_epoch().unwrap().tree;
    println!(
        "fixture: {} entries, {} accounts, built and folded in {:.2?}",
        f.tree.size(),
        epoch_tree.accounts(),
        start.elapsed()
    );
    let mut k = 0usize;
    let mut next_key = || {
        // A stride coprime with the count walks every account in turn.
        k = (k + 7919) % f.keys.len();
        f.keys[k]
    };
    let build = |key: &PublicKey| {
        let inclusion = prove_inclusion(f.tree.size(), LeafIndex(f.epoch_index), &f.tree).unwrap();
        build_statement(
            key,
            epoch_tree,
            f.epoch_index,
            &f.epoch_entry,
            inclusion,
            f.checkpoint.clone(),
        )
        .unwrap()
    };
    let mut group = c.benchmark_group("stake");
    group.bench_function("build (inclusion + sum proof)", |b| {
        b.iter(|| black_box(build(&next_key())))
    });
    let statements: Vec<_> = (0..64).map(|_| build(&next_key())).collect();
    let mut s = 0usize;
    group.bench_function("verify_statement", |b| {
        b.iter(|| {
            s = (s + 1) % statements.len();
            black_box(verify_statement(&statements[s], &f.vkey).unwrap())
        })
    });
    let verifier = NoteVerifier::parse(&f.vkey).unwrap();
    group.bench_function("baseline: open_checkpoint alone", |b| {
        b.iter(|| black_box(open_checkpoint(&f.checkpoint, &verifier).unwrap()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
