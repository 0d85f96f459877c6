//! The prover's Merkle multiproofs (`lupus_prover::merkle::MultiProof`), which every
//! opening, final opening and fraud proof a worker or verifier sends carries: a real
//! tree of up to 300 items, a true proof for some of them, then tampering (flipped,
//! dropped, added hashes, other positions, another item count).
//!
//! Properties: a true proof verifies; a tampered proof never panics, and one that
//! still verifies for the true items, root and item count has the true positions and
//! hashes.
//!
//! Like an RFC 9162 proof and its tree size, a multiproof does not bind the item
//! count: leaf 4 of a 5-item tree verifies as leaf 1 of a 2-item tree with the same
//! one-hash proof (this target found it). The protocol never relies on positions
//! under an untrusted count: the trace count is the job's `H + 1`, and the items of
//! op-output and state trees name their own op/output and role/index, which the fraud
//! proof checks by content.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_prover::merkle::{Digest, MerkleTree};

const ITEMS: usize = 300;

fn items() -> &'static [Digest] {
    static ITEMS_: OnceLock<Vec<Digest>> = OnceLock::new();
    ITEMS_.get_or_init(|| {
        (0..ITEMS as u64)
            .map(|i| Digest::from(blake3::hash(&i.to_le_bytes())))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> Result<()> {
    let n = u.int_in_range(1..=ITEMS)?;
    let items = &items()[..n];
    let tree = MerkleTree::new(items).expect("non-empty");
    let mut positions: Vec<usize> = Vec::new();
    for _ in 0..u.int_in_range(1..=6u8)? {
        positions.push(u.choose_index(n)?);
    }
    positions.sort_unstable();
    positions.dedup();
    let truth = tree.prove(&positions).expect("positions are in the tree");
    let leaves: Vec<(usize, Digest)> = positions.iter().map(|&p| (p, items[p])).collect();
    assert_eq!(
        truth.verify(&tree.root(), &leaves, n),
        Ok(()),
        "a true proof failed"
    );

    let mut proof = truth.clone();
    let mut claimed = leaves.clone();
    let mut total = n;
    for _ in 0..u.int_in_range(0..=3u8)? {
        match u.int_in_range(0..=4u8)? {
            0 if !proof.hashes.is_empty() => {
                let i = u.choose_index(proof.hashes.len())?;
                proof.hashes[i].0[u.choose_index(32)?] ^= u.int_in_range(1..=255u8)?;
            }
            1 if !proof.hashes.is_empty() => {
                let i = u.choose_index(proof.hashes.len())?;
                proof.hashes.remove(i);
            }
            2 => proof.hashes.push(Digest(u.arbitrary()?)),
            3 => {
                // Another position for one leaf (keeping its item), in any order.
                let i = u.choose_index(claimed.len())?;
                claimed[i].0 = u.arbitrary::<u16>()? as usize;
            }
            _ => total = u.arbitrary::<u16>()? as usize,
        }
    }
    if proof.verify(&tree.root(), &claimed, total).is_ok() && total == n {
        assert_eq!(
            claimed, leaves,
            "a proof verified the items at other positions"
        );
        assert_eq!(proof, truth, "a tampered proof verified");
    }
    Ok(())
}
