//! Named crash points for the fault tests: `LUPUS_FAILPOINT=<name>[@<n>]` makes the
//! process abort (no unwinding, no destructors, no flush: what a `kill -9` leaves) the
//! `n`-th time (default the first) it reaches the point called `name`.
//!
//! The variable is read once, on the first point reached. Unset, a point is one load of
//! a cached `None`. Only a build with the `test-util` feature has them at all: without
//! it (every release build of the product) [`hit`] is an empty function, so callers
//! need no `cfg` of their own and the variable does nothing. The points live where a crash is most
//! instructive, inside the storage layer and the coordinator's round close; the
//! coordinator's README lists them. They exist so that tests can crash a real process
//! at an exact step and then check, after a restart, that nothing acknowledged was lost
//! and the log stayed consistent.

#[cfg(feature = "test-util")]
use std::sync::OnceLock;
#[cfg(feature = "test-util")]
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a point.
pub const ENV: &str = "LUPUS_FAILPOINT";

/// Inside [`LogStore::append_batch`](super::LogStore::append_batch) of SQLite and
/// PostgreSQL: the batch's rows are written, the transaction is not committed.
pub const STORE_BEFORE_COMMIT: &str = "store-before-commit";
/// In the log writer: the batch is committed, its checkpoint not yet published and no
/// caller answered.
pub const LOG_AFTER_COMMIT: &str = "log-after-commit";

#[cfg(feature = "test-util")]
struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

#[cfg(feature = "test-util")]
fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, at) = match spec.split_once('@') {
                Some((name, n)) => (name, n.trim().parse().ok()?),
                None => (spec.as_str(), 1),
            };
            Some(Armed {
                name: name.trim().to_owned(),
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed point and this is its `n`-th hit.
#[cfg(feature = "test-util")]
pub fn hit(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name == name && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
        eprintln!("{ENV}: crashing at {name} (hit {})", armed.at);
        std::process::abort();
    }
}

/// Does nothing: this build has no failpoints (the `test-util` feature is off).
#[cfg(not(feature = "test-util"))]
#[inline(always)]
pub fn hit(_name: &str) {}
