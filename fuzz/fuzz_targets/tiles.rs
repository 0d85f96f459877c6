//! `tlog-tiles` hash tiles as an auditor or client fetches them: tile paths
//! (`parse_tile_path`) and tile data checked against a trusted root
//! (`VerifiedTiles::new`), then read for inclusion proofs.
//!
//! The input picks a tree size (up to 66,000 leaves, so three tile levels), the
//! leaves to prove, and tampering with the tiles `tiles_needed` names (flipped bytes,
//! dropped, truncated, wrong-width or duplicated tiles). Properties:
//! - soundness: whatever `VerifiedTiles::new` accepts serves only the true tree's
//!   hashes, so every proof built from it is the true proof;
//! - completeness: untampered tiles are accepted and prove every leaf;
//! - a tile path that parses is written back byte for byte.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::hash::{LeafIndex, TreeSize};
use lupus_api::lupus_ledger::proof::{inclusion_proof_indexes, prove_inclusion};
use lupus_api::lupus_ledger::tiles::{
    Tile, TilePath, VerifiedTiles, parse_tile_path, tile_data, tiles_needed,
};
use lupus_api::lupus_ledger::tree::{HashReader, MemoryTree, tree_hash};

const LEAVES: u64 = 66_000;

fn tree() -> &'static MemoryTree {
    static TREE: OnceLock<MemoryTree> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut t = MemoryTree::new();
        for i in 0..LEAVES {
            t.append_entry(&i.to_be_bytes());
        }
        t
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(path) = u.arbitrary::<&str>() {
        paths(path);
    }
    let _ = tiles(&mut u);
});

fn paths(path: &str) {
    if let Ok(parsed) = parse_tile_path(path) {
        let back = match parsed {
            TilePath::Hashes(t) => t.path(),
            TilePath::Entries(b) => b.path(),
        };
        assert_eq!(back, path);
    }
}

fn tiles(u: &mut Unstructured) -> Result<()> {
    let tree = tree();
    let size = TreeSize(u.int_in_range(1..=LEAVES)?);
    let root = tree_hash(size, tree).expect("the tree holds every size up to LEAVES");
    let mut leaves = Vec::new();
    for _ in 0..u.int_in_range(1..=3u8)? {
        leaves.push(LeafIndex(u.int_in_range(0..=size.0 - 1)?));
    }
    let mut wanted = Vec::new();
    for l in &leaves {
        wanted.extend(inclusion_proof_indexes(size, *l).expect("leaf is in the tree"));
    }
    let needed = tiles_needed(size, &wanted).expect("indexes of the tree have tiles");
    let mut fetched: Vec<(Tile, Vec<u8>)> = needed
        .iter()
        .map(|t| (*t, tile_data(t, tree).expect("the tree has its tiles")))
        .collect();
    let mut tampered = false;
    for _ in 0..u.int_in_range(0..=3u8)? {
        if fetched.is_empty() {
            break;
        }
        let i = u.choose_index(fetched.len())?;
        tampered |= match u.int_in_range(0..=4u8)? {
            0 => {
                let (_, d) = &mut fetched[i];
                let pos = u.choose_index(d.len().max(1))?;
                let mask = u.int_in_range(1..=255u8)?;
                d.get_mut(pos).map(|b| *b ^= mask).is_some()
            }
            1 => {
                fetched.remove(i);
                true
            }
            2 => {
                let (_, d) = &mut fetched[i];
                let keep = u.choose_index(d.len().max(1))?;
                d.truncate(keep);
                true
            }
            3 => {
                // The same tile at another width, with data read for that width.
                let (t, _) = fetched[i];
                let width = u.int_in_range(1..=256u16)?;
                match Tile::new(t.level, t.index, width) {
                    Ok(w) if w != t => {
                        let d = tile_data(&w, tree).unwrap_or_default();
                        fetched[i] = (w, d);
                        true
                    }
                    _ => false,
                }
            }
            _ => {
                // A second copy of a tile with different bytes.
                let (t, mut d) = fetched[i].clone();
                let pos = u.choose_index(d.len().max(1))?;
                let changed = d.get_mut(pos).map(|b| *b ^= 1).is_some();
                fetched.push((t, d));
                changed
            }
        };
    }
    match VerifiedTiles::new(size, &root, fetched) {
        Ok(verified) => {
            let got = verified.read_hashes(&wanted);
            if let Ok(hashes) = got {
                assert_eq!(hashes, tree.read_hashes(&wanted).expect("true hashes"));
            }
            for l in &leaves {
                let truth = prove_inclusion(size, *l, tree).expect("true proof");
                match prove_inclusion(size, *l, &verified) {
                    Ok(p) => assert_eq!(p, truth, "verified tiles gave a false proof"),
                    Err(e) => assert!(tampered, "untampered tiles failed to prove: {e}"),
                }
            }
        }
        Err(e) => assert!(tampered, "untampered tiles refused: {e}"),
    }
    Ok(())
}
