//! Keyed pseudo-random functions: batch sampling, challenge steps and task seeds.
//!
//! DESIGN.md ("The loop" 2 and 4, "Trace and commitment"): batches are `PRF(seed, step)`,
//! challenges are `PRF(r, trace_root)`, a task seed binds the task id, the worker's key
//! and the beacon commitment. Everything here is blake3; every byte is fixed below.
//!
//! - Domain keys: `K_d = BLAKE3-derive_key(d, "")` for a context string `d`
//!   (e.g. `"lupus merkle leaf v1"`); a domain hash is `BLAKE3-keyed(K_d, bytes)`.
//! - `prf(key, domain, input) = BLAKE3-keyed(key, u64le(len(domain)) || domain || input)`.
//!   The length prefix keeps `(domain, input)` pairs unambiguous.
//! - [`PrfStream`]: the extendable output (XOF) of the same keyed hash, read 8 bytes at
//!   a time as little-endian `u64`s. [`PrfStream::below`] draws uniformly from `0..n` by
//!   rejection: a draw `x` is kept iff `x < n * floor(2^64 / n)`, then `x mod n`.

use std::num::NonZeroU64;

use crate::merkle::Digest;

/// The domain key `K_d = BLAKE3-derive_key(context, "")`.
pub fn domain_key(context: &str) -> [u8; 32] {
    blake3::derive_key(context, b"")
}

/// A hasher in domain `context`: `BLAKE3-keyed(K_context, ...)`.
pub fn domain_hasher(context: &str) -> blake3::Hasher {
    blake3::Hasher::new_keyed(&domain_key(context))
}

fn prf_hasher(key: &[u8; 32], domain: &str, input: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(domain.len() as u64).to_le_bytes());
    h.update(domain.as_bytes());
    h.update(input);
    h
}

/// `PRF(key, domain, input)`, 32 bytes.
pub fn prf(key: &[u8; 32], domain: &str, input: &[u8]) -> [u8; 32] {
    *prf_hasher(key, domain, input).finalize().as_bytes()
}

/// A deterministic stream of `u64`s: the XOF of `PRF(key, domain, input)`.
pub struct PrfStream {
    reader: blake3::OutputReader,
}

impl PrfStream {
    /// The stream for `(key, domain, input)`.
    pub fn new(key: &[u8; 32], domain: &str, input: &[u8]) -> Self {
        PrfStream {
            reader: prf_hasher(key, domain, input).finalize_xof(),
        }
    }

    /// The next 8 bytes, little-endian.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.reader.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A uniform draw from `0..n`, by rejection sampling (no modulo bias).
    pub fn below(&mut self, n: NonZeroU64) -> u64 {
        let n = n.get();
        // The largest multiple of n that fits: draws at or above it are rejected.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// The task seed of DESIGN.md ("Trace and commitment"):
/// `PRF(beacon_commitment, "lupus task seed v1", u64le(task_id) || worker_key)`.
///
/// Keyed by the round's beacon commitment so seeds of different rounds differ; the worker
/// key in the input makes two workers' batches differ and a trace impossible to copy.
pub fn derive_task_seed(
    task_id: u64,
    worker_key: &[u8; 32],
    beacon_commitment: &Digest,
) -> [u8; 32] {
    let mut input = [0u8; 40];
    input[..8].copy_from_slice(&task_id.to_le_bytes());
    input[8..].copy_from_slice(worker_key);
    prf(&beacon_commitment.0, "lupus task seed v1", &input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_separates_domains_and_inputs() {
        let k = [7u8; 32];
        assert_ne!(prf(&k, "a", b"bc"), prf(&k, "ab", b"c"));
        assert_ne!(prf(&k, "a", b"x"), prf(&[8u8; 32], "a", b"x"));
        assert_eq!(prf(&k, "a", b"x"), prf(&k, "a", b"x"));
    }

    #[test]
    fn stream_is_deterministic_and_below_is_in_range_and_roughly_uniform() {
        let mut a = PrfStream::new(&[1; 32], "t", b"");
        let mut b = PrfStream::new(&[1; 32], "t", b"");
        assert_eq!(a.next_u64(), b.next_u64());
        let n = NonZeroU64::new(6).unwrap_or(NonZeroU64::MIN);
        let mut counts = [0u32; 6];
        for _ in 0..6000 {
            let x = a.below(n);
            assert!(x < 6);
            counts[x as usize] += 1;
        }
        // Each bucket expects 1000 with sd ~29; 6 sd of slack.
        assert!(
            counts.iter().all(|&c| (826..=1174).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn task_seeds_depend_on_every_input() {
        let b = Digest([3; 32]);
        let s = derive_task_seed(1, &[1; 32], &b);
        assert_ne!(s, derive_task_seed(2, &[1; 32], &b));
        assert_ne!(s, derive_task_seed(1, &[2; 32], &b));
        assert_ne!(s, derive_task_seed(1, &[1; 32], &Digest([4; 32])));
    }
}
