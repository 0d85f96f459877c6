//! Inclusion and consistency proofs of the RFC 9162 tree.
//!
//! Generation follows the recursive definitions of RFC 9162 §2.1.3.1 (`PATH`) and
//! §2.1.4.1 (`PROOF`/`SUBPROOF`), computed from stored hashes as Go's
//! `tlog.ProveRecord`/`tlog.ProveTree` do, in two phases: [`inclusion_proof_indexes`]
//! and [`consistency_proof_indexes`] say which stored hashes are needed, then
//! [`prove_inclusion`] and [`prove_consistency`] read them through a
//! [`HashReader`] (for an async store: a [`crate::tree::PrefetchedHashes`]).
//!
//! Verification is the iterative algorithm of RFC 9162 §2.1.3.2 ([`verify_inclusion`])
//! and §2.1.4.2 ([`verify_consistency`]), written independently of the generator, with
//! an up-front check of the proof length so that a truncated or padded proof is a
//! typed error of its own.
//!
//! In JSON (serde), hashes are 64 hex digits, like every [`crate::hash::Hash`].
//!
//! [`TlogProof`] is the C2SP `tlog-proof` text format (<https://c2sp.org/tlog-proof>,
//! "Format"): an inclusion proof bundled with the signed checkpoint it leads to.
//!
//! An RFC 9162 proof does not bind the tree size on its own: a proof for leaf 0 of a
//! 6-leaf tree also verifies as leaf 0 of a 7-leaf tree *whose root is the 6-leaf
//! root*. Sizes must come from the same signed checkpoint as the root.

use serde::{Deserialize, Serialize};

use crate::hash::{Hash, LeafIndex, MAX_TREE_SIZE, TreeSize, empty_root, node_hash};
use crate::tree::{
    HashReader, StoredHashIndex, TreeError, fold_subtrees, largest_pow2_at_most, read_exact,
    subtree_indexes,
};

/// RFC 9162 §2.1.3: the audit path of one leaf to the root of a tree of `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InclusionProof {
    /// The leaf's index.
    pub index: LeafIndex,
    /// The size of the tree whose root the proof leads to.
    pub size: TreeSize,
    /// Sibling hashes, bottom (leaf level) first.
    pub path: Vec<Hash>,
}

/// RFC 9162 §2.1.4: proof that the tree of `old_size` is a prefix of the tree of
/// `new_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub old_size: TreeSize,
    /// Size of the newer tree.
    pub new_size: TreeSize,
    /// Proof hashes, bottom first, as RFC 9162 §2.1.4.1 orders them.
    pub path: Vec<Hash>,
}

/// Errors of generating or verifying proofs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not in the tree.
    #[error("leaf index {index} is not in a tree of size {size}: an index must be below the size")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The older size is larger than the newer one.
    #[error("old tree size {old} is larger than new tree size {new}: a log only grows")]
    OldLargerThanNew {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// A size beyond what this crate supports.
    #[error("tree size {0} is out of range: at most 2^63 leaves are supported")]
    SizeOutOfRange(u64),
    /// The proof has more or fewer hashes than its sizes call for.
    #[error(
        "proof has {got} hashes but the sizes and index call for exactly {expected}: it was truncated, padded or made for other sizes"
    )]
    WrongLength {
        /// Hashes that a proof for these sizes has.
        expected: usize,
        /// Hashes the proof has.
        got: usize,
    },
    /// The proof's hashes do not lead to the expected root(s).
    #[error(
        "proof does not lead to the given root: the entry or tree is not the one the root commits to"
    )]
    RootMismatch,
    /// The old tree's root recomputed from a consistency proof is not the given one.
    #[error(
        "consistency proof does not match the old root: the old tree is not a prefix of the new one"
    )]
    OldRootMismatch,
    /// Reading stored hashes failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn check_size(size: u64) -> Result<(), ProofError> {
    if size > MAX_TREE_SIZE {
        return Err(ProofError::SizeOutOfRange(size));
    }
    Ok(())
}

fn check_leaf(size: TreeSize, index: LeafIndex) -> Result<(), ProofError> {
    check_size(size.0)?;
    if index.0 >= size.0 {
        return Err(ProofError::IndexOutOfRange {
            index: index.0,
            size: size.0,
        });
    }
    Ok(())
}

fn check_sizes(old: TreeSize, new: TreeSize) -> Result<(), ProofError> {
    check_size(new.0)?;
    if old.0 > new.0 {
        return Err(ProofError::OldLargerThanNew {
            old: old.0,
            new: new.0,
        });
    }
    Ok(())
}

/// log2 of the largest power of two strictly below `n` (n >= 2): RFC 9162's `k`.
fn split_point(n: u64) -> u64 {
    1u64 << largest_pow2_at_most(n - 1)
}

/// Number of hashes of the inclusion proof of `index` in a tree of `size`
/// (RFC 9162 §2.1.3.2's loop runs once per level below the point where the leaf's
/// path leaves the right edge, plus once per set bit above it).
fn inclusion_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index.checked_shr(inner).unwrap_or(0)).count_ones();
    (inner + border) as usize
}

/// The stored hashes [`prove_inclusion`] reads, in the order it reads them.
pub fn inclusion_proof_indexes(
    size: TreeSize,
    index: LeafIndex,
) -> Result<Vec<StoredHashIndex>, ProofError> {
    check_leaf(size, index)?;
    let mut out = Vec::new();
    leaf_proof_indexes(0, size.0, index.0, &mut out);
    Ok(out)
}

// PATH(m, D[lo:hi]) of RFC 9162 §2.1.3.1: recurse into the half holding the leaf,
// then the other half's hash. Depth is at most 64.
fn leaf_proof_indexes(lo: u64, hi: u64, n: u64, out: &mut Vec<StoredHashIndex>) {
    if hi - lo <= 1 {
        return;
    }
    let k = split_point(hi - lo);
    if n < lo + k {
        leaf_proof_indexes(lo, lo + k, n, out);
        subtree_indexes(lo + k, hi, out);
    } else {
        subtree_indexes(lo, lo + k, out);
        leaf_proof_indexes(lo + k, hi, n, out);
    }
}

// The same recursion, consuming the hashes read for `leaf_proof_indexes`.
fn leaf_proof<'a>(
    lo: u64,
    hi: u64,
    n: u64,
    mut hashes: &'a [Hash],
    path: &mut Vec<Hash>,
) -> Result<&'a [Hash], TreeError> {
    if hi - lo <= 1 {
        return Ok(hashes);
    }
    let k = split_point(hi - lo);
    let sibling;
    if n < lo + k {
        hashes = leaf_proof(lo, lo + k, n, hashes, path)?;
        (sibling, hashes) = take_subtree(lo + k, hi, hashes)?;
    } else {
        (sibling, hashes) = take_subtree(lo, lo + k, hashes)?;
        hashes = leaf_proof(lo + k, hi, n, hashes, path)?;
    }
    path.push(sibling);
    Ok(hashes)
}

/// Takes the hashes of the complete subtrees of `lo..hi` off the front of `hashes`
/// and folds them into the range's hash.
fn take_subtree(lo: u64, hi: u64, hashes: &[Hash]) -> Result<(Hash, &[Hash]), TreeError> {
    let mut idx = Vec::new();
    subtree_indexes(lo, hi, &mut idx);
    let (mine, rest) = hashes
        .split_at_checked(idx.len())
        .ok_or(TreeError::WrongHashCount {
            asked: idx.len(),
            got: hashes.len(),
        })?;
    let h = fold_subtrees(mine).ok_or(TreeError::WrongHashCount {
        asked: idx.len(),
        got: 0,
    })?;
    Ok((h, rest))
}

fn all_used(asked: usize, rest: &[Hash]) -> Result<(), TreeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(TreeError::WrongHashCount {
            asked,
            got: asked + rest.len(),
        })
    }
}

/// RFC 9162 §2.1.3.1: the inclusion proof of leaf `index` in the tree of `size`.
pub fn prove_inclusion(
    size: TreeSize,
    index: LeafIndex,
    reader: &impl HashReader,
) -> Result<InclusionProof, ProofError> {
    let indexes = inclusion_proof_indexes(size, index)?;
    let hashes = read_exact(reader, &indexes)?;
    let mut path = Vec::new();
    let rest = leaf_proof(0, size.0, index.0, &hashes, &mut path)?;
    all_used(indexes.len(), rest)?;
    Ok(InclusionProof { index, size, path })
}

/// The stored hashes [`prove_consistency`] reads, in the order it reads them.
pub fn consistency_proof_indexes(
    old: TreeSize,
    new: TreeSize,
) -> Result<Vec<StoredHashIndex>, ProofError> {
    check_sizes(old, new)?;
    let mut out = Vec::new();
    if old.0 > 0 && old.0 < new.0 {
        tree_proof_indexes(0, new.0, old.0, &mut out);
    }
    Ok(out)
}

// SUBPROOF(m, D[lo:hi], b) of RFC 9162 §2.1.4.1, with b == (lo == 0).
fn tree_proof_indexes(lo: u64, hi: u64, m: u64, out: &mut Vec<StoredHashIndex>) {
    if m == hi {
        if lo != 0 {
            subtree_indexes(lo, hi, out);
        }
        return;
    }
    let k = split_point(hi - lo);
    if m <= lo + k {
        tree_proof_indexes(lo, lo + k, m, out);
        subtree_indexes(lo + k, hi, out);
    } else {
        subtree_indexes(lo, lo + k, out);
        tree_proof_indexes(lo + k, hi, m, out);
    }
}

fn tree_proof<'a>(
    lo: u64,
    hi: u64,
    m: u64,
    mut hashes: &'a [Hash],
    path: &mut Vec<Hash>,
) -> Result<&'a [Hash], TreeError> {
    if m == hi {
        if lo != 0 {
            let (h, rest) = take_subtree(lo, hi, hashes)?;
            path.push(h);
            hashes = rest;
        }
        return Ok(hashes);
    }
    let k = split_point(hi - lo);
    let sibling;
    if m <= lo + k {
        hashes = tree_proof(lo, lo + k, m, hashes, path)?;
        (sibling, hashes) = take_subtree(lo + k, hi, hashes)?;
    } else {
        (sibling, hashes) = take_subtree(lo, lo + k, hashes)?;
        hashes = tree_proof(lo + k, hi, m, hashes, path)?;
    }
    path.push(sibling);
    Ok(hashes)
}

/// RFC 9162 §2.1.4.1: the consistency proof from the tree of `old` leaves to the
/// tree of `new` leaves. Empty when `old` is 0 or equal to `new`.
pub fn prove_consistency(
    old: TreeSize,
    new: TreeSize,
    reader: &impl HashReader,
) -> Result<ConsistencyProof, ProofError> {
    let indexes = consistency_proof_indexes(old, new)?;
    let hashes = read_exact(reader, &indexes)?;
    let mut path = Vec::new();
    if !indexes.is_empty() {
        let rest = tree_proof(0, new.0, old.0, &hashes, &mut path)?;
        all_used(indexes.len(), rest)?;
    }
    Ok(ConsistencyProof {
        old_size: old,
        new_size: new,
        path,
    })
}

/// RFC 9162 §2.1.3.2: checks that `leaf` (a leaf hash) is at `proof.index` in the
/// tree of `proof.size` leaves whose root is `root`.
pub fn verify_inclusion(
    proof: &InclusionProof,
    leaf: &Hash,
    root: &Hash,
) -> Result<(), ProofError> {
    let (index, size) = (proof.index.0, proof.size.0);
    check_leaf(proof.size, proof.index)?;
    let expected = inclusion_len(index, size);
    if proof.path.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.path.len(),
        });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in &proof.path {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: checks that the tree with root `old_root` and
/// `proof.old_size` leaves is a prefix of the tree with root `new_root` and
/// `proof.new_size` leaves.
///
/// Beyond the RFC (whose algorithm starts at `0 < old < new`): equal sizes need an
/// empty proof and equal roots; old size 0 needs an empty proof and `old_root`
/// equal to the empty tree's root, as every tree extends the empty one.
pub fn verify_consistency(
    proof: &ConsistencyProof,
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    let (old, new) = (proof.old_size.0, proof.new_size.0);
    check_sizes(proof.old_size, proof.new_size)?;
    let path = &proof.path;
    if old == new || old == 0 {
        if !path.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: path.len(),
            });
        }
        if old == 0 && *old_root != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        if old == new && old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // The proof is the inclusion path of leaf old-1 in the new tree, cut at the
    // level of the largest complete subtree ending at old (which the proof gives
    // first, unless it is the whole old tree: then the old root is that hash).
    let shift = old.trailing_zeros();
    let old_is_pow2 = old.is_power_of_two();
    let expected = inclusion_len(old - 1, new) - shift as usize + usize::from(!old_is_pow2);
    if path.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: path.len(),
        });
    }
    // Step 2: a power-of-two old tree is itself the first subtree of the proof.
    let (seed, rest) = if old_is_pow2 {
        (*old_root, &path[..])
    } else {
        match path.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(ProofError::WrongLength { expected, got: 0 }),
        }
    };
    // Steps 3 and 4.
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Steps 5 and 6.
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_n != 0 || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The first line of a C2SP `tlog-proof`.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A C2SP `tlog-proof` (<https://c2sp.org/tlog-proof>): a self-contained,
/// offline-verifiable proof that one entry is in the log, made of an inclusion proof
/// and the signed checkpoint it leads to (with any witness cosignatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data (the spec's `extra` line).
    pub extra: Option<Vec<u8>>,
    /// Index of the entry.
    pub index: LeafIndex,
    /// Inclusion path, leaf's sibling first.
    pub path: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

/// Errors of parsing and verifying a `tlog-proof`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlogProofError {
    /// The first line is not `c2sp.org/tlog-proof@v1`.
    #[error("not a tlog-proof: the first line must be {TLOG_PROOF_HEADER:?}")]
    BadHeader,
    /// The `extra` line is not base64.
    #[error("tlog-proof extra line is not \"extra <base64>\"")]
    BadExtra,
    /// The `index` line is missing or not a canonical decimal.
    #[error("tlog-proof index line is not \"index <decimal without leading zeroes>\"")]
    BadIndex,
    /// A proof line is not base64 of 32 bytes.
    #[error("tlog-proof hash line {line} is not the base64 encoding of a 32-byte hash")]
    BadHash {
        /// 1-based line number in the proof.
        line: usize,
    },
    /// No blank line and checkpoint follow the proof lines.
    #[error("tlog-proof has no blank line followed by a checkpoint")]
    MissingCheckpoint,
    /// The checkpoint did not open.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The inclusion proof does not verify against the checkpoint.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

impl TlogProof {
    /// The proof in its text form.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut out = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", b64.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index.0));
        for h in &self.path {
            out.push_str(&b64.encode(h.0));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses the text form (without verifying anything).
    pub fn parse(text: &str) -> Result<TlogProof, TlogProofError> {
        use base64::Engine;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or(TlogProofError::MissingCheckpoint)?;
        if checkpoint.is_empty() {
            return Err(TlogProofError::MissingCheckpoint);
        }
        let mut lines = head.split('\n').enumerate().peekable();
        if lines.next().map(|(_, l)| l) != Some(TLOG_PROOF_HEADER) {
            return Err(TlogProofError::BadHeader);
        }
        let mut extra = None;
        if let Some((_, l)) = lines.peek()
            && let Some(e) = l.strip_prefix("extra ")
        {
            extra = Some(b64.decode(e).map_err(|_| TlogProofError::BadExtra)?);
            lines.next();
        }
        let index = lines
            .next()
            .and_then(|(_, l)| l.strip_prefix("index "))
            .filter(|d| {
                !d.is_empty()
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && (*d == "0" || !d.starts_with('0'))
            })
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or(TlogProofError::BadIndex)?;
        let path = lines
            .map(|(i, l)| {
                b64.decode(l)
                    .ok()
                    .and_then(|b| Hash::from_slice(&b).ok())
                    .ok_or(TlogProofError::BadHash { line: i + 1 })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TlogProof {
            extra,
            index: LeafIndex(index),
            path,
            checkpoint: checkpoint.to_owned(),
        })
    }

    /// Verifies that `leaf` (a leaf hash) is at [`TlogProof::index`] in the tree of
    /// the checkpoint, which the log's key must have signed. Returns the opened
    /// checkpoint (its other signatures are the witnesses', for the caller's policy).
    pub fn verify(
        &self,
        leaf: &Hash,
        log_key: &crate::note::NoteVerifier,
    ) -> Result<crate::checkpoint::SignedCheckpoint, TlogProofError> {
        let signed = crate::checkpoint::open_checkpoint(&self.checkpoint, log_key)?;
        let proof = InclusionProof {
            index: self.index,
            size: signed.checkpoint.size,
            path: self.path.clone(),
        };
        verify_inclusion(&proof, leaf, &signed.checkpoint.root)?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MemoryTree;

    fn tree(n: u64) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.append_entry(&i.to_le_bytes());
        }
        t
    }

    #[test]
    fn small_trees_prove_and_verify() {
        let t = tree(17);
        for size in 1..=17u64 {
            let root = crate::tree::tree_hash(TreeSize(size), &t).unwrap();
            for i in 0..size {
                let p = prove_inclusion(TreeSize(size), LeafIndex(i), &t).unwrap();
                let leaf = crate::hash::leaf_hash(&i.to_le_bytes());
                assert_eq!(verify_inclusion(&p, &leaf, &root), Ok(()), "{size} {i}");
            }
            for old in 0..=size {
                let old_root = crate::tree::tree_hash(TreeSize(old), &t).unwrap();
                let p = prove_consistency(TreeSize(old), TreeSize(size), &t).unwrap();
                assert_eq!(
                    verify_consistency(&p, &old_root, &root),
                    Ok(()),
                    "{old} {size}"
                );
            }
        }
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        let t = tree(4);
        assert_eq!(
            prove_inclusion(TreeSize(4), LeafIndex(4), &t),
            Err(ProofError::IndexOutOfRange { index: 4, size: 4 })
        );
        assert_eq!(
            prove_consistency(TreeSize(5), TreeSize(4), &t),
            Err(ProofError::OldLargerThanNew { old: 5, new: 4 })
        );
        assert!(matches!(
            prove_inclusion(TreeSize(8), LeafIndex(0), &t),
            Err(ProofError::Tree(TreeError::IndexOutOfRange { .. }))
        ));
        let h = Hash([0; 32]);
        let huge = InclusionProof {
            index: LeafIndex(u64::MAX - 1),
            size: TreeSize(u64::MAX),
            path: vec![],
        };
        assert_eq!(
            verify_inclusion(&huge, &h, &h),
            Err(ProofError::SizeOutOfRange(u64::MAX))
        );
        let zero = InclusionProof {
            index: LeafIndex(0),
            size: TreeSize(0),
            path: vec![],
        };
        assert!(matches!(
            verify_inclusion(&zero, &h, &h),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        let padded = ConsistencyProof {
            old_size: TreeSize(3),
            new_size: TreeSize(3),
            path: vec![h],
        };
        assert_eq!(
            verify_consistency(&padded, &h, &h),
            Err(ProofError::WrongLength {
                expected: 0,
                got: 1
            })
        );
        let zero = ConsistencyProof {
            old_size: TreeSize(0),
            new_size: TreeSize(0),
            path: vec![],
        };
        assert_eq!(
            verify_consistency(&zero, &empty_root(), &empty_root()),
            Ok(())
        );
        assert_eq!(
            verify_consistency(&zero, &empty_root(), &h),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(&zero, &h, &h),
            Err(ProofError::OldRootMismatch)
        );
        let empty = ConsistencyProof {
            old_size: TreeSize(3),
            new_size: TreeSize(5),
            path: vec![],
        };
        assert!(matches!(
            verify_consistency(&empty, &h, &h),
            Err(ProofError::WrongLength { got: 0, .. })
        ));
    }

    #[test]
    fn tlog_proof_round_trips_verifies_and_rejects_bad_input() {
        use crate::checkpoint::{Checkpoint, sign_checkpoint};
        let t = tree(11);
        let key = crate::note::NoteSigner::from_secret("log.example", [3; 32]).unwrap();
        let cp = Checkpoint {
            origin: "log.example".into(),
            size: t.size(),
            root: t.root(),
            extensions: vec![],
        };
        let note = sign_checkpoint(&cp, &key).unwrap();
        let p = prove_inclusion(t.size(), LeafIndex(6), &t).unwrap();
        let tp = TlogProof {
            extra: Some(b"ctx".to_vec()),
            index: LeafIndex(6),
            path: p.path,
            checkpoint: note,
        };
        let text = tp.encode();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra Y3R4\nindex 6\n"));
        let back = TlogProof::parse(&text).unwrap();
        assert_eq!(back, tp);
        let leaf = crate::hash::leaf_hash(&6u64.to_le_bytes());
        assert!(back.verify(&leaf, &key.verifier()).is_ok());
        let other = crate::hash::leaf_hash(b"other");
        assert!(matches!(
            back.verify(&other, &key.verifier()),
            Err(TlogProofError::Proof(ProofError::RootMismatch))
        ));
        let no_extra = TlogProof {
            extra: None,
            ..tp.clone()
        };
        assert_eq!(TlogProof::parse(&no_extra.encode()).unwrap(), no_extra);
        let bad = [
            (text.replacen("@v1", "@v2", 1), TlogProofError::BadHeader),
            (
                text.replacen("index 6", "index 06", 1),
                TlogProofError::BadIndex,
            ),
            (
                text.replacen("index 6", "index -6", 1),
                TlogProofError::BadIndex,
            ),
            (
                text.replacen("extra Y3R4", "extra !!", 1),
                TlogProofError::BadExtra,
            ),
            (
                text.replacen("index 6\n", "index 6\nAAAA\n", 1),
                TlogProofError::BadHash { line: 4 },
            ),
            (
                "c2sp.org/tlog-proof@v1\nindex 1\n".to_string(),
                TlogProofError::MissingCheckpoint,
            ),
            (
                "c2sp.org/tlog-proof@v1\nindex 1\n\n".to_string(),
                TlogProofError::MissingCheckpoint,
            ),
        ];
        for (input, want) in bad {
            assert_eq!(TlogProof::parse(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn json_uses_hex_hashes() {
        let t = tree(3);
        let p = prove_inclusion(TreeSize(3), LeafIndex(1), &t).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.starts_with("{\"index\":1,\"size\":3,\"path\":[\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<InclusionProof>(&json).unwrap(), p);
    }
}
