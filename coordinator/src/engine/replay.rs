//! Replay protection for signed requests: every `(key, timestamp, nonce)` is accepted
//! once, in memory that stays bounded however long the coordinator runs.
//!
//! A request's timestamp is already within [`MAX_SKEW_MS`] of the coordinator's clock
//! (`lupus_api::sign::check_headers`). Keeping every nonce for that window would cost
//! memory in proportion to the request rate times ten minutes, and the previous cache
//! did exactly that, growing for ten minutes and then sweeping itself on every insert.
//! Here each key has its own sliding window, as IPsec's anti-replay window does: a key's
//! requests may arrive out of order by up to [`WINDOW_MS`] of their timestamps; one
//! older than that, measured from the newest timestamp the key has used, is refused
//! (it may be a replay whose nonce was forgotten); within the window, a repeated
//! `(timestamp, nonce)` is refused. Each key then remembers only its last
//! [`WINDOW_MS`] of requests, and a key silent for longer than [`MAX_SKEW_MS`] is
//! forgotten whole: anything it signed before is past the skew bound.
//!
//! The cheapest way around it would be a request replayed within the window: its
//! `(timestamp, nonce)` is remembered, so it is refused. One replayed later than the
//! window is older than the key's newest request by more than the window, so it is
//! refused too; and once a key is forgotten, its old requests are past the skew bound.
//! What an honest client must do: take its timestamps from one clock that does not
//! jump back by more than [`WINDOW_MS`] (a worker's loop signs one request at a time).

use std::collections::{BTreeSet, HashMap};

use lupus_api::sign::MAX_SKEW_MS;
use lupus_ledger::entry::PublicKey;

use crate::error::Error;

/// How far out of order a key's requests may arrive, by their timestamps.
pub const WINDOW_MS: u64 = 30_000;

/// How many accepted requests between two sweeps for silent keys.
const SWEEP_EVERY: u64 = 4096;

#[derive(Debug, Default)]
struct KeyWindow {
    newest: u64,
    /// `(timestamp, nonce)` of the key's requests within [`WINDOW_MS`] of `newest`.
    seen: BTreeSet<(u64, [u8; 16])>,
}

/// The per-key windows (see the module docs).
#[derive(Debug, Default)]
pub struct ReplayWindows {
    keys: HashMap<PublicKey, KeyWindow>,
    accepted: u64,
}

impl ReplayWindows {
    /// Accepts `(key, timestamp, nonce)` once; `now` is the coordinator's clock.
    pub fn check(
        &mut self,
        key: PublicKey,
        timestamp: u64,
        nonce: [u8; 16],
        now: u64,
    ) -> Result<(), Error> {
        self.accepted += 1;
        if self.accepted.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
        let w = self.keys.entry(key).or_default();
        if timestamp.saturating_add(WINDOW_MS) < w.newest {
            return Err(Error::Conflict(format!(
                "the request is signed {} ms before this key's newest request, more than the \
                 {WINDOW_MS} ms a key's requests may be out of order; sign it again with the \
                 current time",
                w.newest - timestamp
            )));
        }
        if !w.seen.insert((timestamp, nonce)) {
            return Err(Error::Conflict(
                lupus_api::sign::AuthError::Replayed.to_string(),
            ));
        }
        if timestamp > w.newest {
            w.newest = timestamp;
            let oldest = timestamp.saturating_sub(WINDOW_MS);
            // Everything before `oldest` is refused by the rule above from now on.
            w.seen = w.seen.split_off(&(oldest, [0; 16]));
        }
        Ok(())
    }

    /// Forgets the keys silent for more than the skew bound.
    fn sweep(&mut self, now: u64) {
        self.keys
            .retain(|_, w| w.newest.saturating_add(MAX_SKEW_MS) >= now);
    }

    /// The requests remembered, over every key (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.keys.values().map(|w| w.seen.len()).sum()
    }

    /// The keys remembered.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    #[test]
    fn a_request_is_accepted_once_even_out_of_order() {
        let mut r = ReplayWindows::default();
        let now = 1_000_000;
        r.check(key(1), now, [1; 16], now).unwrap();
        r.check(key(1), now - 10_000, [2; 16], now).unwrap();
        assert!(r.check(key(1), now, [1; 16], now).is_err(), "replayed");
        assert!(
            r.check(key(1), now - 10_000, [2; 16], now).is_err(),
            "replayed"
        );
        // The same nonce at another timestamp, or by another key, is another request.
        r.check(key(1), now + 1, [1; 16], now).unwrap();
        r.check(key(2), now, [1; 16], now).unwrap();
    }

    #[test]
    fn a_request_older_than_the_window_is_refused_after_its_nonce_is_forgotten() {
        let mut r = ReplayWindows::default();
        let t0 = 1_000_000;
        r.check(key(1), t0, [1; 16], t0).unwrap();
        // The key moves on: its first request is forgotten...
        r.check(key(1), t0 + WINDOW_MS + 1, [2; 16], t0 + WINDOW_MS + 1)
            .unwrap();
        assert_eq!(r.remembered(), 1);
        // ...and replaying it is still refused, by its age.
        let e = r
            .check(key(1), t0, [1; 16], t0 + WINDOW_MS + 1)
            .unwrap_err();
        assert!(e.to_string().contains("newest"), "{e}");
        // A fresh request within the window is fine.
        r.check(key(1), t0 + 2, [3; 16], t0 + WINDOW_MS + 1)
            .unwrap();
    }

    #[test]
    fn memory_follows_the_window_not_the_run() {
        let mut r = ReplayWindows::default();
        let start = 10_000_000u64;
        // 50 keys, 20 requests a second each, for 20 minutes.
        for step in 0..(20 * 60 * 20) {
            let now = start + step * 50;
            for k in 0..50u8 {
                let mut nonce = [0; 16];
                nonce[..8].copy_from_slice(&step.to_le_bytes());
                r.check(key(k), now, nonce, now).unwrap();
            }
        }
        // At most a window's worth per key (20/s for 30 s, and the boundary).
        assert!(r.remembered() <= 50 * (20 * 30 + 1), "{}", r.remembered());
    }

    #[test]
    fn silent_keys_are_forgotten_and_their_old_requests_stay_refused_by_the_skew_bound() {
        let mut r = ReplayWindows::default();
        let t0 = 1_000_000_000u64;
        for k in 0..100u8 {
            r.check(key(k), t0, [k; 16], t0).unwrap();
        }
        // One busy key, long after: the sweep forgets the 99 silent ones.
        let later = t0 + MAX_SKEW_MS + 1;
        for i in 0..SWEEP_EVERY {
            let mut nonce = [0; 16];
            nonce[..8].copy_from_slice(&i.to_le_bytes());
            r.check(key(0), later, nonce, later).unwrap();
        }
        assert_eq!(r.keys(), 1);
        // Their old requests (signed at `t0`) are now more than the skew bound old,
        // so `check_headers` refuses them before they get here.
    }
}
