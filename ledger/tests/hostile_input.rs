//! Hostile input never panics: every parser and verifier of the ledger core returns
//! a typed error for random bytes and for random mutations of valid input.

use lupus_ledger::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use lupus_ledger::hash::{Hash, LeafIndex, TreeSize};
use lupus_ledger::note::{NoteSigner, NoteVerifier, open_note, open_note_bytes};
use lupus_ledger::proof::{
    ConsistencyProof, InclusionProof, TlogProof, prove_inclusion, verify_consistency,
    verify_inclusion,
};
use lupus_ledger::tiles::{Tile, VerifiedTiles, decode_entry_bundle, parse_tile_path, tile_data};
use lupus_ledger::tree::{MemoryTree, StoredHashIndex, split_stored_hash_index};
use proptest::prelude::*;

fn log_key() -> NoteSigner {
    NoteSigner::from_secret("log.example", [42; 32]).unwrap()
}

fn tree() -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..300u32 {
        t.append_entry(&i.to_be_bytes());
    }
    t
}

fn valid_checkpoint() -> String {
    let t = tree();
    let cp = Checkpoint {
        origin: "log.example".into(),
        size: t.size(),
        root: t.root(),
        extensions: vec![],
    };
    sign_checkpoint(&cp, &log_key()).unwrap()
}

fn valid_tlog_proof() -> String {
    let t = tree();
    let p = prove_inclusion(t.size(), LeafIndex(7), &t).unwrap();
    TlogProof {
        extra: None,
        index: LeafIndex(7),
        path: p.path,
        checkpoint: valid_checkpoint(),
    }
    .encode()
}

/// Applies byte edits (position seed, new byte) to `base`.
fn mutate(base: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut out = base.to_vec();
    for &(pos, b) in edits {
        if out.is_empty() {
            out.push(b);
            continue;
        }
        let at = pos % (out.len() + 1);
        match b % 3 {
            0 if at < out.len() => out[at] = b,
            1 if at < out.len() => {
                out.remove(at);
            }
            _ => out.insert(at, b),
        }
    }
    out
}

fn feed_all(bytes: &[u8]) {
    let v = log_key().verifier();
    let _ = open_note_bytes(bytes, std::slice::from_ref(&v));
    let s = String::from_utf8_lossy(bytes);
    let _ = open_note(&s, std::slice::from_ref(&v));
    let _ = NoteVerifier::parse(&s);
    let _ = NoteSigner::from_private_key(&s);
    let _ = Checkpoint::parse_body(&s);
    let _ = open_checkpoint(&s, &v);
    let _ = parse_tile_path(&s);
    let _ = decode_entry_bundle(bytes);
    let _ = Hash::from_hex(&s);
    let _ = serde_json::from_slice::<InclusionProof>(bytes);
    let _ = serde_json::from_slice::<ConsistencyProof>(bytes);
    if let Ok(p) = TlogProof::parse(&s) {
        let _ = p.verify(&Hash([0; 32]), &v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed_all(&bytes);
    }

    #[test]
    fn random_text_never_panics(s in "\\PC{0,200}|[—+/.a-z0-9 \n=]{0,300}") {
        feed_all(s.as_bytes());
    }

    #[test]
    fn mutated_valid_input_never_panics_and_rarely_verifies(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let v = log_key().verifier();
        let note = valid_checkpoint();
        let bad = mutate(note.as_bytes(), &edits);
        feed_all(&bad);
        // A mutated checkpoint only opens if the signed text survived intact.
        if let Ok(s) = std::str::from_utf8(&bad)
            && let Ok(opened) = open_checkpoint(s, &v)
        {
            prop_assert_eq!(opened.checkpoint.to_body(), note.split("\n\n").next().unwrap().to_owned() + "\n");
        }
        feed_all(&mutate(valid_tlog_proof().as_bytes(), &edits));
        feed_all(&mutate(b"tile/1/x001/234.p/17", &edits));
    }

    #[test]
    fn random_proof_parameters_never_panic(
        index in any::<u64>(),
        size in prop_oneof![any::<u64>(), 0..2000u64, Just(u64::MAX), Just(1u64 << 63)],
        old in prop_oneof![any::<u64>(), 0..2000u64],
        len in 0usize..70,
    ) {
        let h = Hash([7; 32]);
        let p = InclusionProof { index: LeafIndex(index), size: TreeSize(size), path: vec![h; len] };
        let _ = verify_inclusion(&p, &h, &h);
        let c = ConsistencyProof { old_size: TreeSize(old), new_size: TreeSize(size), path: vec![h; len] };
        let _ = verify_consistency(&c, &h, &h);
        let _ = split_stored_hash_index(StoredHashIndex(index));
        let _ = lupus_ledger::proof::inclusion_proof_indexes(TreeSize(size), LeafIndex(index));
        let _ = lupus_ledger::proof::consistency_proof_indexes(TreeSize(old), TreeSize(size));
        let _ = lupus_ledger::tiles::tiles_needed(TreeSize(size.min(1 << 63)), &[StoredHashIndex(index)]);
    }

    #[test]
    fn random_tiles_never_panic_and_never_verify(
        level in 0u8..10,
        index in prop_oneof![any::<u64>(), 0..4u64],
        width in 0u16..300,
        data in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let t = tree();
        let tile = Tile { level, index, width };
        let _ = tile_data(&tile, &t);
        let _ = lupus_ledger::tiles::tile_data_indexes(&tile);
        let _ = tile.path();
        let good = Tile::new(0, 1, 44).unwrap();
        let mut tiles = vec![
            (good, tile_data(&good, &t).unwrap()),
            (Tile::new(1, 0, 1).unwrap(), tile_data(&Tile::new(1, 0, 1).unwrap(), &t).unwrap()),
        ];
        tiles.push((tile, data));
        // Random data in an extra tile is never accepted as part of the tree (it
        // would have to hash up to the root).
        if let Ok(v) = VerifiedTiles::new(t.size(), &t.root(), tiles) {
            prop_assert_eq!(
                lupus_ledger::tree::tree_hash(t.size(), &v),
                Ok(t.root())
            );
            prop_assert!(tile.level == 0 && tile.index == 1 || tile.level == 1 && tile.index == 0);
        }
    }
}
