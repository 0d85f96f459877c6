//! Binary Merkle trees over blake3 with leaf/node domain separation, and multiproofs.
//!
//! Implements the tree that DESIGN.md ("Trace and commitment") asks for: the trace root,
//! the per-step op-output root, the state hash and the dataset root are all built here.
//!
//! Encoding (every byte):
//! - An *item* is a 32-byte [`Digest`] the caller computed for one element (a trace leaf,
//!   an op output, a tensor hash, a data chunk hash).
//! - Leaf node: `L(item) = BLAKE3-keyed(K_leaf, item)` with
//!   `K_leaf = BLAKE3-derive_key("lupus merkle leaf v1", "")`.
//! - Inner node: `N(l, r) = BLAKE3-keyed(K_node, l || r)` with
//!   `K_node = BLAKE3-derive_key("lupus merkle node v1", "")`.
//! - Levels pair nodes left to right; an odd last node is promoted unchanged to the next
//!   level (it is not duplicated, so no two trees of different shapes share a root).
//! - A one-item tree has root `L(item)`. An empty tree has no root (an error).
//!
//! The pairing and the multiproof layout are those of `rs_merkle` 1.5 (which promotes an
//! odd node exactly as above). Its proof verifier trusts the shape of its input, so
//! [`MultiProof::verify`] first checks the indices (sorted, distinct, in range) and that
//! the proof holds exactly the number of hashes the shape needs: hostile proofs give a
//! typed error, never a panic or a wrong accept.

use std::fmt;
use std::sync::LazyLock;

use rs_merkle::utils::indices::proof_indices_by_layers;
use serde::{Deserialize, Serialize};

use crate::prf::domain_key;

/// A 32-byte blake3 digest (the one digest type of every crate): hex in JSON, its 32
/// bytes in binary formats.
pub use lupus_types::Digest;

/// What can go wrong building or checking a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    #[error("a Merkle tree needs at least one item")]
    Empty,
    #[error("leaf index {index} is out of range for a tree of {total} items")]
    IndexOutOfRange { index: usize, total: usize },
    #[error("leaf indices must be given in strictly increasing order, without repeats")]
    UnsortedIndices,
    #[error("a multiproof must name at least one leaf")]
    NoLeaves,
    #[error("the proof holds {got} hashes but this tree shape needs {expected}")]
    WrongProofLength { got: usize, expected: usize },
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
    #[error("not a 64-character hex digest")]
    BadHex,
}

static LEAF_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| domain_key("lupus merkle leaf v1"));
static NODE_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| domain_key("lupus merkle node v1"));

/// `L(item)`: the leaf node of an item.
pub fn leaf_node(item: &Digest) -> [u8; 32] {
    *blake3::keyed_hash(&LEAF_KEY, &item.0).as_bytes()
}

/// `N(l, r)`: an inner node.
fn inner_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&NODE_KEY);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The `rs_merkle` hasher: `hash` is the leaf domain, `concat_and_hash` the node domain,
/// an unpaired node is promoted.
#[derive(Clone)]
struct DomainHasher;

impl rs_merkle::Hasher for DomainHasher {
    type Hash = [u8; 32];

    fn hash(data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&LEAF_KEY, data).as_bytes()
    }

    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(r) => inner_node(left, r),
            None => *left,
        }
    }
}

/// A whole tree, kept so that any subset of leaves can be proven.
#[derive(Clone)]
pub struct MerkleTree {
    tree: rs_merkle::MerkleTree<DomainHasher>,
    len: usize,
}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("len", &self.len)
            .field("root", &self.root())
            .finish()
    }
}

impl MerkleTree {
    /// Builds the tree over `items` (in order).
    pub fn new(items: &[Digest]) -> Result<Self, MerkleError> {
        if items.is_empty() {
            return Err(MerkleError::Empty);
        }
        let leaves: Vec<[u8; 32]> = items.iter().map(leaf_node).collect();
        Ok(MerkleTree {
            tree: rs_merkle::MerkleTree::from_leaves(&leaves),
            len: items.len(),
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty tree cannot be built.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The root.
    pub fn root(&self) -> Digest {
        // A tree with at least one leaf always has a root.
        Digest(self.tree.root().unwrap_or_default())
    }

    /// A multiproof for the items at `indices` (strictly increasing, in range).
    pub fn prove(&self, indices: &[usize]) -> Result<MultiProof, MerkleError> {
        check_indices(indices, self.len)?;
        let hashes = self.tree.proof(indices).proof_hashes().to_vec();
        Ok(MultiProof {
            hashes: hashes.into_iter().map(Digest).collect(),
        })
    }
}

/// The root of a tree over `items`, without keeping the tree.
pub fn root_of(items: &[Digest]) -> Result<Digest, MerkleError> {
    MerkleTree::new(items).map(|t| t.root())
}

fn check_indices(indices: &[usize], total: usize) -> Result<(), MerkleError> {
    if total == 0 {
        return Err(MerkleError::Empty);
    }
    if indices.is_empty() {
        return Err(MerkleError::NoLeaves);
    }
    for w in indices.windows(2) {
        if let [a, b] = w
            && a >= b
        {
            return Err(MerkleError::UnsortedIndices);
        }
    }
    if let Some(&index) = indices.iter().find(|&&i| i >= total) {
        return Err(MerkleError::IndexOutOfRange { index, total });
    }
    Ok(())
}

/// A proof that some items sit at given positions of a tree with a given root.
///
/// The hashes are in `rs_merkle`'s order: level by level from the leaves up, left to
/// right within a level, only the siblings that the proven leaves cannot compute.
///
/// A proof binds items and positions only for a given item count: under another count
/// the same hashes can place an item elsewhere (as an RFC 9162 proof does not bind
/// the tree size). Pass a trusted count, or prove items that name their own position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultiProof {
    pub hashes: Vec<Digest>,
}

impl MultiProof {
    /// Checks that `leaves` (index, item), in strictly increasing index order, belong to
    /// the tree of `total` items whose root is `root`.
    pub fn verify(
        &self,
        root: &Digest,
        leaves: &[(usize, Digest)],
        total: usize,
    ) -> Result<(), MerkleError> {
        let computed = self.root(leaves, total)?;
        if computed == *root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }

    /// The root that `leaves` and this proof lead to.
    pub fn root(&self, leaves: &[(usize, Digest)], total: usize) -> Result<Digest, MerkleError> {
        let indices: Vec<usize> = leaves.iter().map(|(i, _)| *i).collect();
        check_indices(&indices, total)?;
        let expected: usize = proof_indices_by_layers(&indices, total)
            .iter()
            .map(Vec::len)
            .sum();
        if self.hashes.len() != expected {
            return Err(MerkleError::WrongProofLength {
                got: self.hashes.len(),
                expected,
            });
        }
        let leaf_nodes: Vec<[u8; 32]> = leaves.iter().map(|(_, item)| leaf_node(item)).collect();
        let proof =
            rs_merkle::MerkleProof::<DomainHasher>::new(self.hashes.iter().map(|d| d.0).collect());
        proof
            .root(&indices, &leaf_nodes, total)
            .map(Digest)
            .map_err(|_| MerkleError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn items(n: usize) -> Vec<Digest> {
        (0..n as u64)
            .map(|i| Digest(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect()
    }

    #[test]
    fn root_of_matches_tree_and_hand_computation() {
        let it = items(3);
        let l: Vec<[u8; 32]> = it.iter().map(leaf_node).collect();
        let expected = inner_node(&inner_node(&l[0], &l[1]), &l[2]);
        assert_eq!(root_of(&it).unwrap().0, expected);
        assert_eq!(root_of(&it[..1]).unwrap().0, l[0]);
        assert_eq!(root_of(&[]), Err(MerkleError::Empty));
    }

    #[test]
    fn digest_hex_round_trips_through_json() {
        let d = items(1)[0];
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"zz\"").is_err());
    }

    #[test]
    fn bad_index_sets_are_typed_errors() {
        let t = MerkleTree::new(&items(5)).unwrap();
        assert_eq!(t.prove(&[]), Err(MerkleError::NoLeaves));
        assert_eq!(t.prove(&[2, 1]), Err(MerkleError::UnsortedIndices));
        assert_eq!(t.prove(&[1, 1]), Err(MerkleError::UnsortedIndices));
        assert_eq!(
            t.prove(&[5]),
            Err(MerkleError::IndexOutOfRange { index: 5, total: 5 })
        );
        let p = t.prove(&[1]).unwrap();
        let it = items(5);
        assert!(p.verify(&t.root(), &[(1, it[1])], 0).is_err());
        assert!(p.verify(&t.root(), &[(7, it[1])], 5).is_err());
    }

    /// Found by the `multiproof` fuzz target: like an RFC 9162 proof and its tree size,
    /// a multiproof does not bind the item count, so the same proof can place an item
    /// at another position of a tree of another count. Callers pass a trusted count or
    /// prove items that name their own position (state items carry role and index, op
    /// commits their op and output, trace leaves their step).
    #[test]
    fn a_proof_does_not_bind_the_item_count() {
        let it = items(5);
        let t = MerkleTree::new(&it).unwrap();
        let p = t.prove(&[4]).unwrap();
        assert_eq!(p.hashes.len(), 1);
        assert_eq!(p.verify(&t.root(), &[(4, it[4])], 5), Ok(()));
        assert_eq!(p.verify(&t.root(), &[(1, it[4])], 2), Ok(()));
        // Under the true count, the position is bound.
        for other in 0..4 {
            assert!(p.verify(&t.root(), &[(other, it[4])], 5).is_err());
        }
    }

    proptest! {
        /// Every subset's multiproof verifies, for trees of every size up to 40.
        #[test]
        fn every_subset_proof_verifies(n in 1usize..40, mask in any::<u64>()) {
            let it = items(n);
            let tree = MerkleTree::new(&it).unwrap();
            let mut idx: Vec<usize> = (0..n).filter(|i| mask >> (i % 64) & 1 == 1).collect();
            if idx.is_empty() { idx.push(n - 1); }
            let proof = tree.prove(&idx).unwrap();
            let leaves: Vec<(usize, Digest)> = idx.iter().map(|&i| (i, it[i])).collect();
            prop_assert!(proof.verify(&tree.root(), &leaves, n).is_ok());
        }

        /// Changing an item, a proof hash, an index or the size makes verification fail;
        /// dropping or adding a proof hash is a typed error, never a panic.
        #[test]
        fn tampering_fails(n in 2usize..40, pick in any::<usize>(), which in 0u8..5) {
            let it = items(n);
            let tree = MerkleTree::new(&it).unwrap();
            let i = pick % n;
            let mut proof = tree.prove(&[i]).unwrap();
            let mut leaves = vec![(i, it[i])];
            let mut total = n;
            match which {
                0 => leaves[0].1 = it[(i + 1) % n],
                1 => { if let Some(h) = proof.hashes.first_mut() { h.0[0] ^= 1; } else { leaves[0].1.0[0] ^= 1; } }
                2 => { proof.hashes.pop(); if proof.hashes.is_empty() { leaves[0].1.0[1] ^= 1; } }
                3 => proof.hashes.push(it[0]),
                _ => { leaves[0].0 = (i + 1) % n; total = n; }
            }
            prop_assert!(proof.verify(&tree.root(), &leaves, total).is_err());
        }
    }
}
