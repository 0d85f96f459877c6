//! Work that no request waits for (a round's merge, outer step and validation loss;
//! the referee's replay) runs on a thread of its own at a lower scheduling priority.
//!
//! On a small machine that work competes for the same cores as the requests: under
//! `lupus-bench load` with 1,000 workers, every round close (1,000 deltas merged and a
//! validation pass) showed up as a spike in the request latency. Nobody waits on a
//! close but the next round, which waits for it whatever its priority, so the close
//! should yield to requests rather than compete with them. On Unix the thread's nice
//! value is raised by [`NICE`] (lowering a thread's priority needs no privilege);
//! elsewhere it runs at the normal priority.

use crate::error::{Error, internal};

/// How much lower than the coordinator's own threads background work runs.
pub const NICE: i32 = 10;

/// Runs `f` on a new thread named `name` at a lower priority; its result comes back
/// here without blocking the async runtime.
pub async fn run<T, F>(name: &str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| internal(format!("starting a background thread: {e}")))?;
    rx.await
        .map_err(|_| internal("a background thread ended without an answer (it panicked)"))
}

/// Raises the calling thread's nice value by [`NICE`]. Best effort: a failure leaves the
/// thread at its priority, which is only slower for requests.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        let _ = rustix::process::setpriority_process(Some(tid), now + NICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_apart_at_a_lower_priority_and_answers() {
        let own = priority();
        let (answer, theirs) = run("lupus-test", || (6 * 7, priority())).await.unwrap();
        assert_eq!(answer, 42);
        if cfg!(target_os = "linux") {
            assert_eq!(theirs, own + NICE, "the background thread is niced");
        }
        // A panic is an error, not a hang.
        let e = run("lupus-test", || -> u8 { panic!("boom") }).await;
        assert!(e.is_err());
    }

    fn priority() -> i32 {
        #[cfg(target_os = "linux")]
        {
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
        }
        #[cfg(not(target_os = "linux"))]
        {
            0
        }
    }
}
