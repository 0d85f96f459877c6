//! What the engine reads from the world besides its store: the time and secret
//! randomness (the rounds' beacons). Injected through [`super::Config::env`], so a test
//! can run the coordinator on a clock it moves itself and a seeded random source, and
//! every decision that depends on them can be replayed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The random source failed (the operating system's, for [`SystemEnv`]).
#[derive(Debug, thiserror::Error)]
#[error("the random source failed: {0}")]
pub struct RandomError(pub String);

/// The clock and the random source of a coordinator.
pub trait Env: Send + Sync + fmt::Debug {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
    /// Fills `buf` with secret, unpredictable bytes.
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// A shared [`Env`].
pub type SharedEnv = Arc<dyn Env>;

/// The system clock and the operating system's random source: what a coordinator
/// runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEnv;

impl SystemEnv {
    /// A [`SystemEnv`] to put in a [`super::Config`].
    pub fn shared() -> SharedEnv {
        Arc::new(SystemEnv)
    }
}

impl Env for SystemEnv {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
    }
}

/// Unix time in milliseconds, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A clock that moves only when told to, and random bytes drawn from a seed (blake3
/// in keyed mode over a counter): for tests. Not secret: a coordinator on it has
/// beacons anyone with the seed can predict.
pub struct ManualEnv {
    now: AtomicU64,
    seed: [u8; 32],
    draws: Mutex<u64>,
}

impl fmt::Debug for ManualEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualEnv")
            .field("now_ms", &self.now.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl ManualEnv {
    /// Starts at `start_ms`, drawing randomness from `seed`.
    pub fn new(start_ms: u64, seed: [u8; 32]) -> Arc<ManualEnv> {
        Arc::new(ManualEnv {
            now: AtomicU64::new(start_ms),
            seed,
            draws: Mutex::new(0),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Env for ManualEnv {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        let mut draws = self.draws.lock().map_err(|e| RandomError(e.to_string()))?;
        let mut h = blake3::Hasher::new_keyed(&self.seed);
        h.update(b"lupus manual env v1");
        h.update(&draws.to_le_bytes());
        h.finalize_xof().fill(buf);
        *draws += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_env_moves_only_when_told_and_repeats_its_draws_from_the_seed() {
        let a = ManualEnv::new(1_000, [1; 32]);
        let b = ManualEnv::new(1_000, [1; 32]);
        assert_eq!(a.now_ms(), 1_000);
        a.advance(Duration::from_secs(2));
        assert_eq!(a.now_ms(), 3_000);
        let draw = |e: &ManualEnv| {
            let mut x = [0u8; 32];
            e.fill_random(&mut x).unwrap();
            x
        };
        let (a1, a2) = (draw(&a), draw(&a));
        assert_ne!(a1, a2, "each draw is new");
        assert_eq!((draw(&b), draw(&b)), (a1, a2), "same seed, same draws");
        assert_ne!(draw(&ManualEnv::new(0, [2; 32])), a1);
    }

    #[test]
    fn the_system_env_reads_the_clock_and_the_os() {
        let e = SystemEnv;
        let before = now_ms();
        assert!(e.now_ms() >= before);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        e.fill_random(&mut x).unwrap();
        e.fill_random(&mut y).unwrap();
        assert_ne!(x, y);
    }
}
