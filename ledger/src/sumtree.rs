//! The Merkle-sum tree of balances that a `SharesEpoch` entry commits.
//!
//! DESIGN.md, "Ledger" (shares): "At each round close a `shares epoch` entry commits a
//! Merkle-sum tree of balances, so a stake statement proves both a balance and the
//! total in O(log n)." Every node carries the sum of the balances below it, and its
//! hash commits to its children's hashes *and* sums, so the root hash commits to the
//! total and a path of siblings proves one leaf's balance against it.
//!
//! # Construction (blake3, version 1)
//!
//! - Leaves are the accounts sorted by [`PublicKey`] bytes (a `BTreeMap`'s order);
//!   leaf `i` is `(hash, sum) = (derive_key("lupus sumtree leaf v1", key || balance), balance)`,
//!   with the balance as 8 bytes big-endian.
//! - Levels are built bottom-up by pairing neighbours left to right:
//!   `hash = derive_key("lupus sumtree node v1", left_hash || left_sum || right_hash || right_sum)`
//!   (sums 8 bytes big-endian) and `sum = left_sum + right_sum`, checked: an overflow
//!   is [`SumTreeError::Overflow`], never a wrap.
//! - When a level has an odd number of nodes, the last is promoted to the next level
//!   unchanged (no hashing with itself, so no node is counted twice).
//! - The single node of the top level, `(top, total)`, is sealed with the number of
//!   accounts: the root hash is
//!   `derive_key("lupus sumtree root v1", top || total || accounts)` (both 8 bytes
//!   big-endian), so the root commits the total *and* the account count, and with
//!   the count a leaf's index fixes its path. The empty tree has `top` = 32 zero
//!   bytes, total 0 and 0 accounts.
//!
//! `derive_key` contexts keep leaves, nodes and roots in separate domains, so no leaf
//! can be passed off as a node or a root, or the other way round.
//!
//! # Proofs
//!
//! A [`SumProof`] carries the leaf's index, the number of leaves, and the siblings
//! (hash and sum) from the bottom up. The index and count fix which levels have a
//! sibling and on which side, so a tree has exactly one proof per leaf; the count is
//! bound by the root, so a verifier learns it too. Verification recomputes the path with checked sums
//! and requires both the root hash and the total to match. Because sums are unsigned
//! and checked, a verified balance is never more than the total, and the total is the
//! exact sum of every leaf's balance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entry::{Amount, Digest, PublicKey};

const LEAF_CONTEXT: &str = "lupus sumtree leaf v1";
const NODE_CONTEXT: &str = "lupus sumtree node v1";
const ROOT_CONTEXT: &str = "lupus sumtree root v1";

/// Errors from building a sum tree or verifying a sum proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SumTreeError {
    /// Balances add up to more than `u64::MAX`.
    #[error("balances overflow u64 when summed: no tree can commit this total")]
    Overflow,
    /// The proof's index is not below its leaf count.
    #[error("sum proof index {index} is outside a tree of {accounts} accounts")]
    IndexOutOfRange { index: u64, accounts: u64 },
    /// The proof has the wrong number of siblings for its index and leaf count.
    #[error("sum proof has {got} siblings, but index and account count need {expected}")]
    WrongLength { expected: usize, got: usize },
    /// The recomputed root hash differs from the committed one.
    #[error("sum proof does not lead to the committed root: key, balance or path is wrong")]
    RootMismatch,
    /// The recomputed total differs from the committed one.
    #[error("sum proof's total {computed} differs from the committed total {committed}")]
    TotalMismatch { computed: Amount, committed: Amount },
}

/// One node of the tree: its hash and the sum of the balances below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SumNode {
    pub hash: Digest,
    pub sum: Amount,
}

fn leaf(key: &PublicKey, balance: Amount) -> SumNode {
    let mut h = blake3::Hasher::new_derive_key(LEAF_CONTEXT);
    h.update(key.as_bytes());
    h.update(&balance.0.to_be_bytes());
    SumNode {
        hash: Digest(*h.finalize().as_bytes()),
        sum: balance,
    }
}

fn node(left: &SumNode, right: &SumNode) -> Result<SumNode, SumTreeError> {
    let sum = left
        .sum
        .checked_add(right.sum)
        .ok_or(SumTreeError::Overflow)?;
    let mut h = blake3::Hasher::new_derive_key(NODE_CONTEXT);
    h.update(left.hash.as_bytes());
    h.update(&left.sum.0.to_be_bytes());
    h.update(right.hash.as_bytes());
    h.update(&right.sum.0.to_be_bytes());
    Ok(SumNode {
        hash: Digest(*h.finalize().as_bytes()),
        sum,
    })
}

/// Seals the top node with the account count into the root hash.
fn seal(top: &Digest, total: Amount, accounts: u64) -> Digest {
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    h.update(top.as_bytes());
    h.update(&total.0.to_be_bytes());
    h.update(&accounts.to_be_bytes());
    Digest(*h.finalize().as_bytes())
}

/// The root of the empty tree.
pub fn empty_root() -> (Digest, Amount) {
    (seal(&Digest([0; 32]), Amount::ZERO, 0), Amount::ZERO)
}

/// A Merkle-sum tree over a set of balances, with every level kept so proofs are
/// O(log n) lookups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumTree {
    /// Account keys in leaf order.
    keys: Vec<PublicKey>,
    /// `levels[0]` are the leaves; the last level holds the root alone. Empty when
    /// the tree has no accounts.
    levels: Vec<Vec<SumNode>>,
}

impl SumTree {
    /// Builds the tree over `balances` (ordered by key, as the map iterates).
    pub fn build(balances: &BTreeMap<PublicKey, Amount>) -> Result<SumTree, SumTreeError> {
        let keys: Vec<PublicKey> = balances.keys().copied().collect();
        let leaves: Vec<SumNode> = balances.iter().map(|(k, b)| leaf(k, *b)).collect();
        let mut levels = Vec::new();
        if !leaves.is_empty() {
            levels.push(leaves);
        }
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let mut up = Vec::with_capacity(below.len().div_ceil(2));
            for pair in below.chunks(2) {
                match pair {
                    [l, r] => up.push(node(l, r)?),
                    [odd] => up.push(*odd),
                    _ => {}
                }
            }
            levels.push(up);
        }
        Ok(SumTree { keys, levels })
    }

    /// The root hash and the total of all balances.
    pub fn root(&self) -> (Digest, Amount) {
        match self.levels.last().and_then(|l| l.first()) {
            Some(top) => (seal(&top.hash, top.sum, self.accounts()), top.sum),
            None => empty_root(),
        }
    }

    /// The number of accounts (leaves).
    pub fn accounts(&self) -> u64 {
        self.keys.len() as u64
    }

    /// The balance the tree holds for `key`, if it is an account.
    pub fn balance(&self, key: &PublicKey) -> Option<Amount> {
        let index = self.keys.binary_search(key).ok()?;
        self.levels.first()?.get(index).map(|n| n.sum)
    }

    /// A proof that `key` holds its balance under this tree's root, or `None` if
    /// `key` is not an account.
    pub fn prove(&self, key: &PublicKey) -> Option<SumProof> {
        let index = self.keys.binary_search(key).ok()?;
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels {
            if level.len() == 1 {
                break;
            }
            let sibling = if i % 2 == 1 {
                level.get(i - 1)
            } else {
                // `None` when `i` is the promoted last node of an odd level.
                level.get(i + 1)
            };
            if let Some(s) = sibling {
                siblings.push(*s);
            }
            i /= 2;
        }
        Some(SumProof {
            index: index as u64,
            accounts: self.accounts(),
            siblings,
        })
    }
}

/// A proof that one account holds a balance under a sum-tree root and total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SumProof {
    /// The account's leaf index (its rank in key order).
    pub index: u64,
    /// The number of accounts in the tree.
    pub accounts: u64,
    /// Siblings from the leaf level up.
    pub siblings: Vec<SumNode>,
}

impl SumProof {
    /// Checks that `(key, balance)` is leaf `index` of a tree of `accounts` leaves
    /// whose root is `root` and whose balances sum to `total`.
    pub fn verify(
        &self,
        key: &PublicKey,
        balance: Amount,
        root: &Digest,
        total: Amount,
    ) -> Result<(), SumTreeError> {
        if self.index >= self.accounts {
            return Err(SumTreeError::IndexOutOfRange {
                index: self.index,
                accounts: self.accounts,
            });
        }
        let expected = path_len(self.index, self.accounts);
        if expected != self.siblings.len() {
            return Err(SumTreeError::WrongLength {
                expected,
                got: self.siblings.len(),
            });
        }
        let mut acc = leaf(key, balance);
        let mut siblings = self.siblings.iter();
        let (mut i, mut n) = (self.index, self.accounts);
        while n > 1 {
            if i % 2 == 1 {
                let s = siblings.next().ok_or(SumTreeError::WrongLength {
                    expected,
                    got: self.siblings.len(),
                })?;
                acc = node(s, &acc)?;
            } else if i + 1 < n {
                let s = siblings.next().ok_or(SumTreeError::WrongLength {
                    expected,
                    got: self.siblings.len(),
                })?;
                acc = node(&acc, s)?;
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        if seal(&acc.hash, acc.sum, self.accounts) != *root {
            return Err(SumTreeError::RootMismatch);
        }
        if acc.sum != total {
            return Err(SumTreeError::TotalMismatch {
                computed: acc.sum,
                committed: total,
            });
        }
        Ok(())
    }
}

/// How many siblings the path of leaf `index` in a tree of `n` leaves has.
fn path_len(mut index: u64, mut n: u64) -> usize {
    let mut len = 0;
    while n > 1 {
        if index % 2 == 1 || index + 1 < n {
            len += 1;
        }
        index /= 2;
        n = n.div_ceil(2);
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pk(i: u32) -> PublicKey {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        PublicKey(b)
    }

    fn balances(amounts: &[u64]) -> BTreeMap<PublicKey, Amount> {
        amounts
            .iter()
            .enumerate()
            .map(|(i, a)| (pk(i as u32), Amount(*a)))
            .collect()
    }

    #[test]
    fn empty_tree_has_the_defined_root_and_no_proofs() {
        let tree = SumTree::build(&BTreeMap::new()).unwrap();
        assert_eq!(tree.root(), empty_root());
        assert_eq!(tree.root().1, Amount::ZERO);
        assert_eq!(tree.prove(&pk(0)), None);
    }

    #[test]
    fn single_account_root_is_its_leaf() {
        let tree = SumTree::build(&balances(&[42])).unwrap();
        let top = leaf(&pk(0), Amount(42)).hash;
        assert_eq!(tree.root(), (seal(&top, Amount(42), 1), Amount(42)));
        let proof = tree.prove(&pk(0)).unwrap();
        assert!(proof.siblings.is_empty());
        let (root, total) = tree.root();
        proof.verify(&pk(0), Amount(42), &root, total).unwrap();
    }

    #[test]
    fn three_leaves_promote_the_odd_one() {
        let tree = SumTree::build(&balances(&[1, 2, 3])).unwrap();
        let l: Vec<SumNode> = (0..3).map(|i| leaf(&pk(i), Amount(i as u64 + 1))).collect();
        let left = node(&l[0], &l[1]).unwrap();
        let top = node(&left, &l[2]).unwrap();
        assert_eq!(tree.root(), (seal(&top.hash, Amount(6), 3), Amount(6)));
        assert_eq!(tree.prove(&pk(2)).unwrap().siblings, vec![left]);
    }

    #[test]
    fn overflowing_balances_are_refused() {
        assert_eq!(
            SumTree::build(&balances(&[u64::MAX, 1])),
            Err(SumTreeError::Overflow)
        );
    }

    #[test]
    fn a_sibling_sum_that_overflows_is_refused() {
        let tree = SumTree::build(&balances(&[5, 7])).unwrap();
        let (root, total) = tree.root();
        let mut proof = tree.prove(&pk(0)).unwrap();
        proof.siblings[0].sum = Amount(u64::MAX);
        assert_eq!(
            proof.verify(&pk(0), Amount(5), &root, total),
            Err(SumTreeError::Overflow)
        );
    }

    #[test]
    fn known_answer_for_two_leaves() {
        // Pins the construction: a change to contexts or byte order breaks this.
        let tree = SumTree::build(&balances(&[5, 7])).unwrap();
        let mut leaf0 = Vec::new();
        leaf0.extend_from_slice(pk(0).as_bytes());
        leaf0.extend_from_slice(&5u64.to_be_bytes());
        let mut leaf1 = Vec::new();
        leaf1.extend_from_slice(pk(1).as_bytes());
        leaf1.extend_from_slice(&7u64.to_be_bytes());
        let h0 = blake3::derive_key("lupus sumtree leaf v1", &leaf0);
        let h1 = blake3::derive_key("lupus sumtree leaf v1", &leaf1);
        let mut n = Vec::new();
        n.extend_from_slice(&h0);
        n.extend_from_slice(&5u64.to_be_bytes());
        n.extend_from_slice(&h1);
        n.extend_from_slice(&7u64.to_be_bytes());
        let mut r = blake3::derive_key("lupus sumtree node v1", &n).to_vec();
        r.extend_from_slice(&12u64.to_be_bytes());
        r.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(
            tree.root(),
            (
                Digest(blake3::derive_key("lupus sumtree root v1", &r)),
                Amount(12)
            )
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every member's proof verifies against the root and total, the total is
        /// the sum of the balances, and proofs are O(log n) long.
        #[test]
        fn every_member_proof_verifies(amounts in proptest::collection::vec(0u64..1 << 40, 1..70)) {
            let map = balances(&amounts);
            let tree = SumTree::build(&map).unwrap();
            let (root, total) = tree.root();
            prop_assert_eq!(total.0, amounts.iter().sum::<u64>());
            let depth = 64 - (amounts.len() as u64 - 1).leading_zeros() as usize;
            for (key, balance) in &map {
                let proof = tree.prove(key).unwrap();
                prop_assert!(proof.siblings.len() <= depth);
                prop_assert_eq!(proof.verify(key, *balance, &root, total), Ok(()));
            }
        }

        /// Changing any one field of a valid proof or claim makes verification fail.
        #[test]
        fn any_tampered_field_fails(
            amounts in proptest::collection::vec(1u64..1 << 40, 2..40),
            who in any::<prop::sample::Index>(),
            which in 0usize..8,
            at in any::<prop::sample::Index>(),
            bit in 0usize..256,
        ) {
            let map = balances(&amounts);
            let tree = SumTree::build(&map).unwrap();
            let (mut root, mut total) = tree.root();
            let (mut key, mut balance) = map.iter().nth(who.index(map.len())).map(|(k, b)| (*k, *b)).unwrap();
            let mut proof = tree.prove(&key).unwrap();
            let flip = |d: &mut [u8; 32]| d[bit / 8] ^= 1 << (bit % 8);
            match which {
                0 => flip(&mut key.0),
                1 => balance.0 ^= 1 << (bit % 40),
                2 => flip(&mut root.0),
                3 => total.0 ^= 1 << (bit % 64),
                4 => { let i = at.index(proof.siblings.len()); flip(&mut proof.siblings[i].hash.0) }
                5 => { let i = at.index(proof.siblings.len()); proof.siblings[i].sum.0 ^= 1 << (bit % 40) }
                6 => proof.index = (proof.index + 1 + (bit as u64) % (proof.accounts - 1)) % proof.accounts,
                _ => proof.accounts += 1 + bit as u64,
            }
            prop_assert!(proof.verify(&key, balance, &root, total).is_err());
        }
    }
}
