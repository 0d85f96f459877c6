//! RFC 9162 inclusion and consistency proofs (`lupus_ledger::proof`) as a client gets
//! them from `/v1/proof/inclusion` and `/v1/proof/consistency`: JSON, then
//! `verify_inclusion` / `verify_consistency` against roots it trusts.
//!
//! The input is either JSON (parsed, round-tripped, verified against a real tree's
//! roots) or, more often, directions for tampering with a true proof of a real tree
//! (up to 600 leaves): flipped, dropped, added or swapped hashes, another index or
//! size. Properties:
//! - completeness: every true proof verifies;
//! - soundness: a proof that verifies for the true leaf and root names the true index
//!   and carries the true path (a proof does not bind the tree size, see the module
//!   docs, so only a size is allowed to differ);
//! - a proof that parses from JSON is written back to JSON that parses to it.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::hash::{Hash, LeafIndex, TreeSize, leaf_hash};
use lupus_api::lupus_ledger::proof::{
    ConsistencyProof, InclusionProof, prove_consistency, prove_inclusion, verify_consistency,
    verify_inclusion,
};
use lupus_api::lupus_ledger::tree::{MemoryTree, tree_hash};

const LEAVES: u64 = 600;

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

fn root(size: u64) -> Hash {
    tree_hash(TreeSize(size), tree()).expect("the tree holds every size up to LEAVES")
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        json(data);
    } else {
        let mut u = Unstructured::new(data);
        let _ = inclusion(&mut u);
        let _ = consistency(&mut u);
    }
});

fn json(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<InclusionProof>(data) {
        let back: InclusionProof =
            serde_json::from_slice(&serde_json::to_vec(&p).expect("serialises")).expect("parses");
        assert_eq!(back, p);
        if p.size.0 <= LEAVES && p.index.0 < LEAVES {
            let leaf = leaf_hash(&p.index.0.to_be_bytes());
            if verify_inclusion(&p, &leaf, &root(p.size.0.max(1))).is_ok() {
                let truth = prove_inclusion(p.size, p.index, tree()).expect("true proof");
                assert_eq!(p.path, truth.path);
            }
        }
    }
    if let Ok(p) = serde_json::from_slice::<ConsistencyProof>(data) {
        let back: ConsistencyProof =
            serde_json::from_slice(&serde_json::to_vec(&p).expect("serialises")).expect("parses");
        assert_eq!(back, p);
        if p.old_size.0 <= p.new_size.0 && p.new_size.0 <= LEAVES {
            let (old, new) = (root(p.old_size.0), root(p.new_size.0));
            if verify_consistency(&p, &old, &new).is_ok() {
                let truth = prove_consistency(p.old_size, p.new_size, tree()).expect("true proof");
                assert_eq!(p.path, truth.path);
            }
        }
    }
}

/// Applies 0 to 3 edits to a path.
fn tamper(u: &mut Unstructured, path: &mut Vec<Hash>) -> Result<()> {
    for _ in 0..u.int_in_range(0..=3u8)? {
        match u.int_in_range(0..=3u8)? {
            0 if !path.is_empty() => {
                let i = u.choose_index(path.len())?;
                let b = u.choose_index(32)?;
                path[i].0[b] ^= u.int_in_range(1..=255u8)?;
            }
            1 if !path.is_empty() => {
                let i = u.choose_index(path.len())?;
                path.remove(i);
            }
            2 => {
                let i = u.int_in_range(0..=path.len())?;
                path.insert(i, Hash(u.arbitrary()?));
            }
            _ if path.len() > 1 => {
                let i = u.choose_index(path.len())?;
                let j = u.choose_index(path.len())?;
                path.swap(i, j);
            }
            _ => {}
        }
    }
    Ok(())
}

fn inclusion(u: &mut Unstructured) -> Result<()> {
    let size = u.int_in_range(1..=LEAVES)?;
    let index = u.int_in_range(0..=size - 1)?;
    let leaf = leaf_hash(&index.to_be_bytes());
    let root = root(size);
    let truth = prove_inclusion(TreeSize(size), LeafIndex(index), tree()).expect("true proof");
    assert_eq!(
        verify_inclusion(&truth, &leaf, &root),
        Ok(()),
        "a true proof failed"
    );
    let mut p = truth.clone();
    tamper(u, &mut p.path)?;
    if u.arbitrary::<bool>()? {
        p.index = LeafIndex(u.arbitrary()?);
    }
    if u.arbitrary::<bool>()? {
        p.size = TreeSize(u.arbitrary()?);
    }
    if verify_inclusion(&p, &leaf, &root).is_ok() {
        assert_eq!(p.index, truth.index, "a proof verified at another index");
        assert_eq!(p.path, truth.path, "a tampered path verified");
    }
    Ok(())
}

fn consistency(u: &mut Unstructured) -> Result<()> {
    let new = u.int_in_range(0..=LEAVES)?;
    let old = u.int_in_range(0..=new)?;
    let (old_root, new_root) = (root(old), root(new));
    let truth = prove_consistency(TreeSize(old), TreeSize(new), tree()).expect("true proof");
    assert_eq!(
        verify_consistency(&truth, &old_root, &new_root),
        Ok(()),
        "a true proof failed"
    );
    let mut p = truth.clone();
    tamper(u, &mut p.path)?;
    if u.arbitrary::<bool>()? {
        p.old_size = TreeSize(u.arbitrary()?);
    }
    if u.arbitrary::<bool>()? {
        p.new_size = TreeSize(u.arbitrary()?);
    }
    let same_sizes = p.old_size == truth.old_size && p.new_size == truth.new_size;
    if verify_consistency(&p, &old_root, &new_root).is_ok() && same_sizes {
        assert_eq!(p.path, truth.path, "a tampered path verified");
    }
    Ok(())
}
