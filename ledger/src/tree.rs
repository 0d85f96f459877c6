//! Stored hashes of the RFC 9162 tree, the append frontier and tree roots.
//!
//! The layout is the one of Go's `golang.org/x/mod/sumdb/tlog`: every leaf hash and
//! every hash of a *complete* subtree (2^level leaves, aligned) gets a linear storage
//! index, in the order they become known while appending. Leaf `n` at level 0, then
//! every subtree that leaf completes, from the bottom up. A log that stores these
//! hashes (write once, never updated) can answer every RFC 9162 §2.1 question
//! (roots, inclusion and consistency proofs, C2SP `tlog-tiles`) with O(log n)
//! reads.
//!
//! The algorithms are pure and two-phase so that an async store can use them: first
//! ask which indexes are needed ([`tree_hash_indexes`], [`Frontier::indexes_to_load`],
//! the `*_indexes` functions of [`crate::proof`]), fetch them, wrap them in
//! [`PrefetchedHashes`], then run the computation through the [`HashReader`] trait.
//!
//! The root of a tree of `size` leaves (RFC 9162 §2.1.1, MTH) is the fold, right to
//! left, of the complete subtrees that `size` decomposes into (one per set bit of
//! `size`, largest first): that is what [`tree_hash`] and [`Frontier::root`] compute.

use std::collections::HashMap;

use crate::hash::{Hash, MAX_TREE_SIZE, TreeSize, empty_root, node_hash};

/// The position of a stored hash (a leaf hash or a complete subtree hash) in the
/// linear storage order described in the module docs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StoredHashIndex(pub u64);

/// Errors of reading stored hashes and computing roots from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A reader does not have a hash that the computation needs.
    #[error(
        "stored hash {0:?} is missing: the store was asked for a hash it never wrote (or prefetched the wrong indexes)"
    )]
    MissingHash(StoredHashIndex),
    /// A reader returned a different number of hashes than it was asked for.
    #[error(
        "hash reader returned {got} hashes for {asked} indexes; a reader must answer every index in order"
    )]
    WrongHashCount {
        /// Number of indexes asked for.
        asked: usize,
        /// Number of hashes returned.
        got: usize,
    },
    /// A tree size above [`MAX_TREE_SIZE`].
    #[error("tree size {0} is out of range: at most 2^63 leaves are supported")]
    SizeOutOfRange(u64),
    /// A stored hash index that does not belong to a tree of the given size.
    #[error("stored hash {index:?} is not part of a tree of size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: StoredHashIndex,
        /// The tree size it was asked against.
        size: u64,
    },
    /// A storage backend failed; the message is the backend's.
    #[error("hash storage failed: {0}")]
    Storage(String),
}

/// Reads stored hashes by index. Pure and synchronous: an async store fetches first
/// and hands the result over as [`PrefetchedHashes`].
pub trait HashReader {
    /// Returns the hashes at `indexes`, in the same order, one per index.
    fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError>;
}

impl<R: HashReader + ?Sized> HashReader for &R {
    fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError> {
        (**self).read_hashes(indexes)
    }
}

/// Reads `indexes` through `reader` and checks that it answered each one.
pub(crate) fn read_exact(
    reader: &impl HashReader,
    indexes: &[StoredHashIndex],
) -> Result<Vec<Hash>, TreeError> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = reader.read_hashes(indexes)?;
    if hashes.len() != indexes.len() {
        return Err(TreeError::WrongHashCount {
            asked: indexes.len(),
            got: hashes.len(),
        });
    }
    Ok(hashes)
}

/// The storage index of the hash of the `n`-th subtree at `level` (the subtree over
/// leaves `n * 2^level .. (n + 1) * 2^level`). Level 0 is the leaves.
///
/// Meaningful for `level <= 63` and `(n + 1) << level <= 2^63`, the range of every
/// tree this crate accepts; outside it the arithmetic wraps instead of panicking.
pub fn stored_hash_index(level: u8, n: u64) -> StoredHashIndex {
    let level = u32::from(level.min(63));
    // The last leaf under the subtree: its hashes and this subtree's are stored
    // together, the subtree's `level` places after the leaf's.
    let last_leaf = n.wrapping_add(1).wrapping_shl(level).wrapping_sub(1);
    // Leaf m is preceded by m leaf hashes and, for each level k >= 1, by the
    // m >> k subtrees completed before it: sum over k of (m >> k) = 2m - popcount(m).
    let before = last_leaf
        .wrapping_mul(2)
        .wrapping_sub(u64::from(last_leaf.count_ones()));
    StoredHashIndex(before.wrapping_add(u64::from(level)))
}

/// Inverse of [`stored_hash_index`]: the `(level, n)` that a storage index holds.
pub fn split_stored_hash_index(index: StoredHashIndex) -> (u8, u64) {
    let index = index.0;
    // Each leaf takes at least one slot, at most two on average: leaf index/2 is at
    // or before the answer. Walk forward over the leaves' groups of stored hashes.
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n).0;
    loop {
        // The group of leaf n is the leaf plus the subtrees it completes.
        let next = index_n
            .wrapping_add(1)
            .wrapping_add(u64::from(n.wrapping_add(1).trailing_zeros()));
        if next > index || next <= index_n {
            break;
        }
        n += 1;
        index_n = next;
    }
    let level = (index - index_n).min(63) as u8;
    (level, n >> level)
}

/// The number of stored hashes of a tree of `size` leaves (valid for sizes up to
/// [`MAX_TREE_SIZE`]).
pub fn stored_hash_count(size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    let last = size - 1;
    // The last leaf's own slot plus the subtrees it completes.
    stored_hash_index(0, last)
        .0
        .wrapping_add(1)
        .wrapping_add(u64::from(last.trailing_ones()))
}

/// The complete subtrees that the range `lo..hi` splits into, left to right, as
/// `(level, n)`: what RFC 9162 §2.1.1 folds into a root when `lo` is 0.
fn subtree_decomposition(mut lo: u64, hi: u64, out: &mut Vec<(u8, u64)>) {
    while lo < hi {
        let level = largest_pow2_at_most(hi - lo);
        // The ranges this crate asks for are always aligned; shrink to alignment
        // anyway so that the decomposition stays a valid one.
        let level = level.min(if lo == 0 {
            63
        } else {
            lo.trailing_zeros() as u8
        });
        out.push((level, lo >> level));
        lo += 1u64 << level;
    }
}

/// log2 of the largest power of two that is `<= n` (n >= 1).
pub(crate) fn largest_pow2_at_most(n: u64) -> u8 {
    (63 - n.max(1).leading_zeros()) as u8
}

/// The storage indexes of the complete subtrees of `lo..hi`, left to right.
pub(crate) fn subtree_indexes(lo: u64, hi: u64, out: &mut Vec<StoredHashIndex>) {
    let mut parts = Vec::new();
    subtree_decomposition(lo, hi, &mut parts);
    out.extend(parts.into_iter().map(|(l, n)| stored_hash_index(l, n)));
}

/// Folds the hashes of the complete subtrees of a range (left to right) into the
/// range's hash: the last two combine first, as RFC 9162 §2.1.1 splits at the
/// largest power of two.
pub(crate) fn fold_subtrees(hashes: &[Hash]) -> Option<Hash> {
    let (last, rest) = hashes.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc)))
}

/// The stored hashes [`tree_hash`] reads for a tree of `size` leaves: one per set
/// bit of `size`, largest subtree first. Empty for size 0.
pub fn tree_hash_indexes(size: TreeSize) -> Vec<StoredHashIndex> {
    let mut out = Vec::new();
    subtree_indexes(0, size.0.min(MAX_TREE_SIZE), &mut out);
    out
}

/// RFC 9162 §2.1.1: the root of the tree of `size` leaves, from stored hashes.
/// The empty tree's root is [`empty_root`].
pub fn tree_hash(size: TreeSize, reader: &impl HashReader) -> Result<Hash, TreeError> {
    check_size(size)?;
    let hashes = read_exact(reader, &tree_hash_indexes(size))?;
    Ok(fold_subtrees(&hashes).unwrap_or_else(empty_root))
}

pub(crate) fn check_size(size: TreeSize) -> Result<(), TreeError> {
    if size.0 > MAX_TREE_SIZE {
        return Err(TreeError::SizeOutOfRange(size.0));
    }
    Ok(())
}

/// Hashes fetched ahead of a computation: the second phase of a two-phase read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefetchedHashes {
    hashes: HashMap<StoredHashIndex, Hash>,
}

impl PrefetchedHashes {
    /// Pairs `indexes` with `hashes` (as a store returned them, in order).
    pub fn new(indexes: Vec<StoredHashIndex>, hashes: Vec<Hash>) -> Result<Self, TreeError> {
        if indexes.len() != hashes.len() {
            return Err(TreeError::WrongHashCount {
                asked: indexes.len(),
                got: hashes.len(),
            });
        }
        Ok(PrefetchedHashes {
            hashes: indexes.into_iter().zip(hashes).collect(),
        })
    }

    /// Wraps an existing map.
    pub fn from_map(hashes: HashMap<StoredHashIndex, Hash>) -> Self {
        PrefetchedHashes { hashes }
    }

    /// Adds (or replaces) one hash.
    pub fn insert(&mut self, index: StoredHashIndex, hash: Hash) {
        self.hashes.insert(index, hash);
    }

    /// Number of hashes held.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no hash is held.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

impl HashReader for PrefetchedHashes {
    fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|i| {
                self.hashes
                    .get(i)
                    .copied()
                    .ok_or(TreeError::MissingHash(*i))
            })
            .collect()
    }
}

/// The right edge of the tree: its size and the roots of its complete subtrees
/// (one per set bit of the size, at most 64). Enough to append and to compute the
/// current root without reading anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the complete subtrees, largest (leftmost) first.
    subtrees: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn empty() -> Frontier {
        Frontier {
            size: 0,
            subtrees: Vec::new(),
        }
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> TreeSize {
        TreeSize(self.size)
    }

    /// Appends a leaf hash (see [`crate::hash::leaf_hash`]) and returns exactly the
    /// new stored hashes to persist for it: the leaf at level 0, then each subtree
    /// it completes, bottom up, in increasing storage index order.
    ///
    /// A tree never reaches [`MAX_TREE_SIZE`] leaves in practice (2^63 appends);
    /// past it the indexes wrap rather than panic.
    pub fn append(&mut self, leaf: Hash) -> Vec<(StoredHashIndex, Hash)> {
        let n = self.size;
        let completes = n.trailing_ones();
        let mut out = Vec::with_capacity(1 + completes as usize);
        out.push((stored_hash_index(0, n), leaf));
        let mut h = leaf;
        for level in 1..=completes {
            // The left sibling at each level is the smallest complete subtree.
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            h = node_hash(&left, &h);
            out.push((stored_hash_index(level as u8, n >> level), h));
        }
        self.subtrees.push(h);
        self.size = n.wrapping_add(1);
        out
    }

    /// RFC 9162 §2.1.1: the root of the current tree ([`empty_root`] when empty).
    pub fn root(&self) -> Hash {
        fold_subtrees(&self.subtrees).unwrap_or_else(empty_root)
    }

    /// The roots of the complete subtrees, largest first.
    pub fn subtree_roots(&self) -> &[Hash] {
        &self.subtrees
    }

    /// The stored hashes [`Frontier::load`] reads to rebuild the frontier of a tree
    /// of `size` leaves (the same as [`tree_hash_indexes`]).
    pub fn indexes_to_load(size: TreeSize) -> Vec<StoredHashIndex> {
        tree_hash_indexes(size)
    }

    /// Rebuilds the frontier of a tree of `size` leaves from stored hashes, for a
    /// writer that restarts.
    pub fn load(size: TreeSize, reader: &impl HashReader) -> Result<Frontier, TreeError> {
        check_size(size)?;
        let subtrees = read_exact(reader, &Self::indexes_to_load(size))?;
        Ok(Frontier {
            size: size.0,
            subtrees,
        })
    }
}

impl Default for Frontier {
    fn default() -> Self {
        Frontier::empty()
    }
}

/// An in-memory tree: every stored hash in a `Vec`, in storage order. For tests,
/// small tools and auditors that rebuild a log they downloaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTree {
    stored: Vec<Hash>,
    frontier: Frontier,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    /// Appends a leaf hash; returns the leaf's index.
    pub fn append(&mut self, leaf: Hash) -> crate::hash::LeafIndex {
        let index = crate::hash::LeafIndex(self.frontier.size);
        for (_, h) in self.frontier.append(leaf) {
            self.stored.push(h);
        }
        index
    }

    /// Appends an entry (hashing it as a leaf); returns the leaf's index.
    pub fn append_entry(&mut self, entry: &[u8]) -> crate::hash::LeafIndex {
        self.append(crate::hash::leaf_hash(entry))
    }

    /// Number of leaves.
    pub fn size(&self) -> TreeSize {
        self.frontier.size()
    }

    /// Root of the current tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier (right edge) of the current tree.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Every stored hash, in storage order.
    pub fn stored_hashes(&self) -> &[Hash] {
        &self.stored
    }
}

impl HashReader for MemoryTree {
    fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|i| {
                usize::try_from(i.0)
                    .ok()
                    .and_then(|at| self.stored.get(at))
                    .copied()
                    .ok_or(TreeError::IndexOutOfRange {
                        index: *i,
                        size: self.frontier.size,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// RFC 9162 §2.1.1 MTH, recursively, straight from the definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn stored_hash_index_matches_go_layout() {
        // From Go's tlog: leaves 0,1 then their parent, leaf 2, leaf 3, parents...
        let expect = [
            (0, 0, 0),
            (0, 1, 1),
            (1, 0, 2),
            (0, 2, 3),
            (0, 3, 4),
            (1, 1, 5),
            (2, 0, 6),
            (0, 4, 7),
        ];
        for (level, n, index) in expect {
            assert_eq!(stored_hash_index(level, n), StoredHashIndex(index));
            assert_eq!(split_stored_hash_index(StoredHashIndex(index)), (level, n));
        }
    }

    #[test]
    fn split_inverts_index_for_every_stored_hash_of_a_small_tree() {
        let count = stored_hash_count(5000);
        for i in 0..count {
            let (level, n) = split_stored_hash_index(StoredHashIndex(i));
            assert_eq!(stored_hash_index(level, n), StoredHashIndex(i));
        }
    }

    #[test]
    fn stored_hash_count_at_the_size_limit_fits() {
        assert_eq!(stored_hash_count(MAX_TREE_SIZE), u64::MAX);
        assert_eq!(stored_hash_count(1), 1);
        assert_eq!(stored_hash_count(2), 3);
        assert_eq!(stored_hash_count(3), 4);
        assert_eq!(stored_hash_count(4), 7);
    }

    #[test]
    fn frontier_append_emits_exactly_the_stored_hashes_in_order() {
        let mut f = Frontier::empty();
        let mut next = 0u64;
        let mut leaves = Vec::new();
        for i in 0..300u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            leaves.push(leaf);
            for (idx, _) in f.append(leaf) {
                assert_eq!(idx, StoredHashIndex(next));
                next += 1;
            }
            assert_eq!(next, stored_hash_count(i + 1));
            assert_eq!(f.root(), mth(&leaves));
        }
    }

    #[test]
    fn memory_tree_roots_and_reload_match_the_recursive_definition() {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        assert_eq!(tree_hash(TreeSize(0), &t), Ok(empty_root()));
        for i in 0..200u64 {
            leaves.push(leaf_hash(&i.to_le_bytes()));
            t.append(*leaves.last().unwrap());
        }
        for size in 0..=200u64 {
            let want = mth(&leaves[..size as usize]);
            assert_eq!(tree_hash(TreeSize(size), &t), Ok(want));
            let f = Frontier::load(TreeSize(size), &t).unwrap();
            assert_eq!(f.root(), want);
            // A reloaded frontier keeps appending exactly like the original.
            let mut g = f.clone();
            if size < 200 {
                g.append(leaves[size as usize]);
                assert_eq!(g.root(), mth(&leaves[..=size as usize]));
            }
        }
    }

    #[test]
    fn prefetched_hashes_serve_a_two_phase_root() {
        let mut t = MemoryTree::new();
        for i in 0..77u64 {
            t.append_entry(&i.to_le_bytes());
        }
        let idx = tree_hash_indexes(TreeSize(77));
        let fetched = t.read_hashes(&idx).unwrap();
        let pre = PrefetchedHashes::new(idx.clone(), fetched).unwrap();
        assert_eq!(tree_hash(TreeSize(77), &pre), Ok(t.root()));
        assert_eq!(
            tree_hash(TreeSize(78), &pre),
            Err(TreeError::MissingHash(StoredHashIndex(151)))
        );
        assert!(matches!(
            PrefetchedHashes::new(idx, vec![]),
            Err(TreeError::WrongHashCount { asked: 4, got: 0 })
        ));
    }

    #[test]
    fn out_of_range_sizes_and_indexes_are_errors() {
        let t = MemoryTree::new();
        assert_eq!(
            tree_hash(TreeSize(u64::MAX), &t),
            Err(TreeError::SizeOutOfRange(u64::MAX))
        );
        assert!(matches!(
            tree_hash(TreeSize(1), &t),
            Err(TreeError::IndexOutOfRange { .. })
        ));
        assert!(Frontier::load(TreeSize(MAX_TREE_SIZE + 1), &t).is_err());
    }

    struct ShortReader;
    impl HashReader for ShortReader {
        fn read_hashes(&self, _: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError> {
            Ok(vec![])
        }
    }

    #[test]
    fn a_reader_that_answers_short_is_caught() {
        assert_eq!(
            tree_hash(TreeSize(3), &ShortReader),
            Err(TreeError::WrongHashCount { asked: 2, got: 0 })
        );
    }
}
