//! Challenge derivation: which steps of a committed trace a verifier opens.
//!
//! DESIGN.md ("The loop" 4): challenge steps are `PRF(r, trace_root)`, where `r` is the
//! round beacon whose commitment `H(r)` was published before any work was committed, so a
//! worker cannot know its challenges when it commits. The steps are
//! `m` distinct values of `0..h`, drawn from `PrfStream(r, "lupus challenge v1",
//! trace_root)` with Robert Floyd's algorithm (uniform over all `m`-subsets, `m` draws),
//! returned sorted. The beacon commitment is `BLAKE3-keyed(K_"lupus beacon v1", r)`.

use std::collections::BTreeSet;
use std::num::NonZeroU64;

use crate::merkle::Digest;
use crate::prf::{PrfStream, domain_hasher};

/// Bad challenge parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    #[error("cannot challenge {m} distinct steps of a trace of {h} steps: need 1 <= m <= h")]
    BadCount { h: u32, m: u32 },
}

/// The commitment `H(r)` published when a round opens.
pub fn beacon_commitment(beacon: &[u8; 32]) -> Digest {
    let mut h = domain_hasher("lupus beacon v1");
    h.update(beacon);
    h.finalize().into()
}

/// Checks a revealed beacon against its commitment.
pub fn beacon_matches(beacon: &[u8; 32], commitment: &Digest) -> bool {
    beacon_commitment(beacon) == *commitment
}

/// The `m` distinct challenged steps of a trace of `h` steps, sorted.
pub fn challenge_steps(
    beacon: &[u8; 32],
    trace_root: &Digest,
    h: u32,
    m: u32,
) -> Result<Vec<u32>, ChallengeError> {
    if m == 0 || m > h {
        return Err(ChallengeError::BadCount { h, m });
    }
    let mut stream = PrfStream::new(beacon, "lupus challenge v1", &trace_root.0);
    let mut chosen = BTreeSet::new();
    // Floyd: for j in h-m..h, draw t in 0..=j; take t unless already taken, else take j.
    for j in (h - m)..h {
        let bound = NonZeroU64::new(u64::from(j) + 1).unwrap_or(NonZeroU64::MIN);
        let t = stream.below(bound) as u32;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    Ok(chosen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_distinct_sorted_in_range_and_deterministic() {
        for m in 1..=16 {
            let s = challenge_steps(&[1; 32], &Digest([2; 32]), 16, m).unwrap();
            assert_eq!(s.len(), m as usize);
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            assert!(s.iter().all(|&x| x < 16));
            assert_eq!(
                s,
                challenge_steps(&[1; 32], &Digest([2; 32]), 16, m).unwrap()
            );
        }
        assert_ne!(
            challenge_steps(&[1; 32], &Digest([2; 32]), 1000, 4).unwrap(),
            challenge_steps(&[1; 32], &Digest([3; 32]), 1000, 4).unwrap()
        );
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(challenge_steps(&[0; 32], &Digest([0; 32]), 4, 5).is_err());
        assert!(challenge_steps(&[0; 32], &Digest([0; 32]), 4, 0).is_err());
        assert!(challenge_steps(&[0; 32], &Digest([0; 32]), 0, 0).is_err());
    }

    #[test]
    fn every_step_is_challenged_about_equally_often() {
        let mut counts = [0u32; 8];
        for i in 0..4000u32 {
            let mut root = [0u8; 32];
            root[..4].copy_from_slice(&i.to_le_bytes());
            for s in challenge_steps(&[9; 32], &Digest(root), 8, 2).unwrap() {
                counts[s as usize] += 1;
            }
        }
        // Expect 1000 each (sd ~29).
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn beacon_commitment_checks() {
        let c = beacon_commitment(&[5; 32]);
        assert!(beacon_matches(&[5; 32], &c));
        assert!(!beacon_matches(&[6; 32], &c));
    }
}
