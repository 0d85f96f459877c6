//! Property tests of the RFC 9162 tree and its proofs.
//!
//! Properties checked:
//! - every inclusion proof (all indices) and every consistency proof (all old sizes)
//!   of every tree of 1..=1024 leaves, generated from stored hashes, verifies against
//!   roots computed here independently (the recursive MTH of RFC 9162 §2.1.1 over
//!   the leaves, with its own SHA-256 calls), and equals the proof the RFC's
//!   recursive `PATH` / `SUBPROOF` definitions give (for trees up to 128 leaves);
//! - the same for random sizes up to 2^20 and random indices and old sizes;
//! - flipping any bit of a proof hash or a root, or adding or removing a hash, makes
//!   verification fail; flipping a bit of the index or a size makes it fail unless
//!   the flipped parameters hash the path in exactly the same order (an RFC 9162
//!   proof does not bind the size by itself: a checkpoint signs size and root
//!   together);
//! - the known-answer vectors of the RFC 6962 reference tree.

use std::sync::OnceLock;

use lupus_ledger::hash::{Hash, LeafIndex, TreeSize, empty_root, leaf_hash};
use lupus_ledger::proof::{
    ConsistencyProof, InclusionProof, ProofError, prove_consistency, prove_inclusion,
    verify_consistency, verify_inclusion,
};
use lupus_ledger::tree::{Frontier, MemoryTree, tree_hash};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---- An independent RFC 9162 §2.1 model over plain leaves ----

fn sha(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    Hash(h.finalize().into())
}

fn model_leaf(entry: &[u8]) -> Hash {
    sha(&[&[0], entry])
}

fn model_node(l: &Hash, r: &Hash) -> Hash {
    sha(&[&[1], &l.0, &r.0])
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]), RFC 9162 §2.1.1, over leaf hashes.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            model_node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]), RFC 9162 §2.1.3.1.
fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return vec![];
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b), RFC 9162 §2.1.4.1.
fn subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if b { vec![] } else { vec![mth(leaves)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], b);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// Which side each path hash is on (true: the sibling is on the left), from the
/// recursive definition: two (index, size) pairs with equal sides hash a path the
/// same way.
fn inclusion_sides(m: u64, n: u64) -> Vec<bool> {
    if n <= 1 {
        return vec![];
    }
    let k = split(n as usize) as u64;
    let (mut p, left) = if m < k {
        (inclusion_sides(m, k), false)
    } else {
        (inclusion_sides(m - k, n - k), true)
    };
    p.push(left);
    p
}

/// The shape of SUBPROOF: 'O' the old root is the seed, 'S' the first proof hash is
/// the seed, 'R' a hash on the right (new root only), 'L' a hash on the left (both).
fn consistency_shape(m: u64, n: u64, b: bool) -> Vec<char> {
    if m == n {
        return vec![if b { 'O' } else { 'S' }];
    }
    let k = split(n as usize) as u64;
    let (mut p, side) = if m <= k {
        (consistency_shape(m, k, b), 'R')
    } else {
        (consistency_shape(m - k, n - k, false), 'L')
    };
    p.push(side);
    p
}

fn consistency_shape_of(old: u64, new: u64) -> Option<Vec<char>> {
    (0 < old && old <= new).then(|| consistency_shape(old, new, true))
}

// ---- Shared trees ----

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

struct Fixture {
    tree: MemoryTree,
    leaves: Vec<Hash>,
    roots: Vec<Hash>,
}

const SMALL: u64 = 1024;

fn small() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let leaves: Vec<Hash> = (0..SMALL).map(|i| model_leaf(&entry(i))).collect();
        let mut tree = MemoryTree::new();
        for i in 0..SMALL {
            tree.append_entry(&entry(i));
        }
        let roots = (0..=SMALL as usize).map(|n| mth(&leaves[..n])).collect();
        Fixture {
            tree,
            leaves,
            roots,
        }
    })
}

const BIG: u64 = 1 << 20;

/// The big tree appends the model's leaf hashes (the small tree checks that they
/// are the crate's), so building it costs one hash per leaf, not two.
fn big() -> &'static (MemoryTree, Vec<Hash>) {
    static B: OnceLock<(MemoryTree, Vec<Hash>)> = OnceLock::new();
    B.get_or_init(|| {
        let leaves: Vec<Hash> = (0..BIG).map(|i| model_leaf(&i.to_be_bytes())).collect();
        let mut tree = MemoryTree::new();
        for l in &leaves {
            tree.append(*l);
        }
        (tree, leaves)
    })
}

// ---- Exhaustive checks up to 1024 leaves ----

#[test]
fn crate_leaf_hashes_and_roots_match_the_model() {
    let f = small();
    for i in 0..SMALL {
        assert_eq!(leaf_hash(&entry(i)), f.leaves[i as usize]);
    }
    assert_eq!(empty_root(), f.roots[0]);
    let mut frontier = Frontier::empty();
    for size in 0..=SMALL {
        assert_eq!(
            tree_hash(TreeSize(size), &f.tree),
            Ok(f.roots[size as usize])
        );
        assert_eq!(frontier.root(), f.roots[size as usize]);
        if size < SMALL {
            frontier.append(f.leaves[size as usize]);
        }
    }
}

#[test]
fn every_inclusion_proof_up_to_1024_leaves_verifies() {
    let f = small();
    for size in 1..=SMALL {
        let root = f.roots[size as usize];
        for index in 0..size {
            let p = prove_inclusion(TreeSize(size), LeafIndex(index), &f.tree).unwrap();
            if size <= 128 {
                assert_eq!(
                    p.path,
                    path(index as usize, &f.leaves[..size as usize]),
                    "PATH({index}, D[{size}])"
                );
            }
            assert_eq!(
                verify_inclusion(&p, &f.leaves[index as usize], &root),
                Ok(()),
                "index {index} size {size}"
            );
        }
    }
}

#[test]
fn every_consistency_proof_up_to_1024_leaves_verifies() {
    let f = small();
    for new in 1..=SMALL {
        let new_root = f.roots[new as usize];
        for old in 0..=new {
            let p = prove_consistency(TreeSize(old), TreeSize(new), &f.tree).unwrap();
            if new <= 128 && 0 < old && old < new {
                assert_eq!(
                    p.path,
                    subproof(old as usize, &f.leaves[..new as usize], true),
                    "PROOF({old}, D[{new}])"
                );
            }
            assert_eq!(
                verify_consistency(&p, &f.roots[old as usize], &new_root),
                Ok(()),
                "old {old} new {new}"
            );
        }
    }
}

// ---- Tampering ----

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out.0[bit / 8 % 32] ^= 1 << (bit % 8);
    out
}

/// Checks that every mutation of a valid inclusion proof is rejected (or, for a
/// flipped index or size, accepted exactly when the path is hashed the same way).
fn check_inclusion_tampering(p: &InclusionProof, leaf: &Hash, root: &Hash, seed: usize) {
    let verify = |q: &InclusionProof, l: &Hash, r: &Hash| verify_inclusion(q, l, r);
    assert_eq!(verify(p, leaf, root), Ok(()));
    for i in 0..p.path.len() {
        let mut q = p.clone();
        q.path[i] = flip(&q.path[i], seed * 31 + i * 7);
        assert!(verify(&q, leaf, root).is_err(), "flipped path[{i}] {p:?}");
        let mut q = p.clone();
        q.path.remove(i);
        assert!(verify(&q, leaf, root).is_err(), "removed path[{i}]");
        let mut q = p.clone();
        q.path.insert(i, *root);
        assert!(verify(&q, leaf, root).is_err(), "inserted at {i}");
    }
    let mut q = p.clone();
    q.path.push(*leaf);
    assert!(verify(&q, leaf, root).is_err(), "appended hash");
    assert!(verify(p, &flip(leaf, seed), root).is_err(), "flipped leaf");
    assert!(
        verify(p, leaf, &flip(root, seed + 3)).is_err(),
        "flipped root"
    );
    let sides = inclusion_sides(p.index.0, p.size.0);
    for bit in 0..64 {
        for (index, size) in [
            (p.index.0 ^ (1 << bit), p.size.0),
            (p.index.0, p.size.0 ^ (1 << bit)),
        ] {
            let q = InclusionProof {
                index: LeafIndex(index),
                size: TreeSize(size),
                path: p.path.clone(),
            };
            let same_shape =
                index < size && size <= 1 << 63 && inclusion_sides(index, size) == sides;
            assert_eq!(
                verify(&q, leaf, root).is_ok(),
                same_shape,
                "index {} size {} flipped to index {index} size {size}",
                p.index,
                p.size
            );
        }
    }
}

fn check_consistency_tampering(
    p: &ConsistencyProof,
    old_root: &Hash,
    new_root: &Hash,
    seed: usize,
) {
    let verify = |q: &ConsistencyProof, o: &Hash, n: &Hash| verify_consistency(q, o, n);
    assert_eq!(verify(p, old_root, new_root), Ok(()));
    for i in 0..p.path.len() {
        let mut q = p.clone();
        q.path[i] = flip(&q.path[i], seed * 17 + i * 5);
        assert!(verify(&q, old_root, new_root).is_err(), "flipped path[{i}]");
        let mut q = p.clone();
        q.path.remove(i);
        assert!(verify(&q, old_root, new_root).is_err(), "removed path[{i}]");
        let mut q = p.clone();
        q.path.insert(i, *new_root);
        assert!(verify(&q, old_root, new_root).is_err(), "inserted at {i}");
    }
    let mut q = p.clone();
    q.path.push(*old_root);
    assert!(verify(&q, old_root, new_root).is_err(), "appended hash");
    if p.old_size != p.new_size {
        assert!(
            verify(p, &flip(old_root, seed), new_root).is_err(),
            "flipped old root"
        );
        assert!(verify(p, new_root, old_root).is_err(), "swapped roots");
    }
    if p.old_size.0 != 0 {
        assert!(
            verify(p, old_root, &flip(new_root, seed)).is_err(),
            "flipped new root"
        );
    }
    if p.path.is_empty() {
        return;
    }
    let shape = consistency_shape_of(p.old_size.0, p.new_size.0);
    for bit in 0..64 {
        for (old, new) in [
            (p.old_size.0 ^ (1 << bit), p.new_size.0),
            (p.old_size.0, p.new_size.0 ^ (1 << bit)),
        ] {
            let q = ConsistencyProof {
                old_size: TreeSize(old),
                new_size: TreeSize(new),
                path: p.path.clone(),
            };
            let same_shape = old < new && new <= 1 << 63 && consistency_shape_of(old, new) == shape;
            assert_eq!(
                verify(&q, old_root, new_root).is_ok(),
                same_shape,
                "old {} new {} flipped to old {old} new {new}",
                p.old_size,
                p.new_size
            );
        }
    }
}

#[test]
fn tampered_proofs_fail_up_to_96_leaves() {
    let f = small();
    let mut accepted_size_flips = 0usize;
    for size in 1..=96u64 {
        let root = f.roots[size as usize];
        for index in 0..size {
            let p = prove_inclusion(TreeSize(size), LeafIndex(index), &f.tree).unwrap();
            check_inclusion_tampering(&p, &f.leaves[index as usize], &root, index as usize);
            // Count the flips that the RFC algorithm cannot see, to show the
            // exception above is real and rare.
            for bit in 0..8 {
                let s = size ^ (1 << bit);
                if index < s && inclusion_sides(index, s) == inclusion_sides(index, size) {
                    accepted_size_flips += 1;
                }
            }
        }
        for old in 0..=size {
            let p = prove_consistency(TreeSize(old), TreeSize(size), &f.tree).unwrap();
            check_consistency_tampering(&p, &f.roots[old as usize], &root, old as usize);
        }
    }
    assert!(accepted_size_flips > 0);
}

#[test]
fn malformed_parameters_are_typed_errors() {
    let f = small();
    let h = f.leaves[0];
    let p = InclusionProof {
        index: LeafIndex(5),
        size: TreeSize(5),
        path: vec![],
    };
    assert_eq!(
        verify_inclusion(&p, &h, &h),
        Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
    );
    let c = ConsistencyProof {
        old_size: TreeSize(6),
        new_size: TreeSize(5),
        path: vec![],
    };
    assert_eq!(
        verify_consistency(&c, &h, &h),
        Err(ProofError::OldLargerThanNew { old: 6, new: 5 })
    );
    let long = InclusionProof {
        index: LeafIndex(0),
        size: TreeSize(2),
        path: vec![h; 2],
    };
    assert_eq!(
        verify_inclusion(&long, &h, &h),
        Err(ProofError::WrongLength {
            expected: 1,
            got: 2
        })
    );
    // A consistency proof from the empty tree is empty and needs the empty root.
    let from_empty = prove_consistency(TreeSize(0), TreeSize(9), &f.tree).unwrap();
    assert!(from_empty.path.is_empty());
    assert_eq!(
        verify_consistency(&from_empty, &h, &f.roots[9]),
        Err(ProofError::OldRootMismatch)
    );
    assert!(prove_inclusion(TreeSize(SMALL + 1), LeafIndex(0), &f.tree).is_err());
    assert!(prove_consistency(TreeSize(1), TreeSize(SMALL + 1), &f.tree).is_err());
}

// ---- Known answers: the RFC 6962 reference tree ----

/// The 8-leaf reference tree of certificate-transparency's merkle_tree_test and
/// transparency-dev/merkle (testonly/constants.go and proof/verify_test.go): leaf
/// inputs, roots of sizes 1..=8, and inclusion and consistency proofs.
mod reference {
    pub const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    pub const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (0-based leaf index, tree size, path).
    pub const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, path).
    pub const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
}

fn hexes(list: &[&str]) -> Vec<Hash> {
    list.iter().map(|h| Hash::from_hex(h).unwrap()).collect()
}

#[test]
fn rfc6962_reference_vectors() {
    let mut tree = MemoryTree::new();
    for (i, leaf) in reference::LEAVES.iter().enumerate() {
        tree.append_entry(&hex::decode(leaf).unwrap());
        assert_eq!(
            tree.root().to_hex(),
            reference::ROOTS[i],
            "root of size {}",
            i + 1
        );
    }
    for (index, size, want) in reference::INCLUSION {
        let p = prove_inclusion(TreeSize(size), LeafIndex(index), &tree).unwrap();
        assert_eq!(p.path, hexes(want), "inclusion of {index} in {size}");
        let leaf = leaf_hash(&hex::decode(reference::LEAVES[index as usize]).unwrap());
        let root = Hash::from_hex(reference::ROOTS[size as usize - 1]).unwrap();
        assert_eq!(verify_inclusion(&p, &leaf, &root), Ok(()));
    }
    for (old, new, want) in reference::CONSISTENCY {
        let p = prove_consistency(TreeSize(old), TreeSize(new), &tree).unwrap();
        assert_eq!(p.path, hexes(want), "consistency {old} -> {new}");
        let old_root = Hash::from_hex(reference::ROOTS[old as usize - 1]).unwrap();
        let new_root = Hash::from_hex(reference::ROOTS[new as usize - 1]).unwrap();
        assert_eq!(verify_consistency(&p, &old_root, &new_root), Ok(()));
    }
}

// ---- Random large trees ----

/// The RFC 9162 root of the first `size` leaves of the big tree, computed here from
/// the leaves (no stored hashes involved).
fn big_root(size: u64) -> Hash {
    mth(&big().1[..size as usize])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// For random trees of up to 2^20 leaves, proofs of random leaves and random
    /// older sizes verify against independently computed roots, and tampering fails.
    #[test]
    fn random_large_trees_prove_and_verify(
        size in 1..=BIG,
        index_seed in any::<u64>(),
        old_seed in any::<u64>(),
    ) {
        let (tree, leaves) = big();
        let index = index_seed % size;
        let old = old_seed % (size + 1);
        let root = big_root(size);
        let p = prove_inclusion(TreeSize(size), LeafIndex(index), tree).unwrap();
        check_inclusion_tampering(&p, &leaves[index as usize], &root, index as usize);
        let old_root = if old == 0 { empty_root() } else { big_root(old) };
        let c = prove_consistency(TreeSize(old), TreeSize(size), tree).unwrap();
        check_consistency_tampering(&c, &old_root, &root, old as usize);
    }
}
