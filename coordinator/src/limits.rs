//! Bounds on strangers (THREATS.md, invariant 5: nothing unauthenticated is buffered;
//! concurrency, time and memory per request are bounded).
//!
//! [`Limits`] is the configuration (flags of `lupus up`); [`Gate`] is the state the
//! signed-request extractor ([`crate::signed`]) draws on: the budget of body bytes not
//! yet authenticated and the per-key token buckets; [`Limits::apply`] wraps a router in
//! the tower layers that bound every request: load shedding past a number of requests
//! in flight, a whole-request timeout, and a timeout between two pieces of a body.
//! The headers' deadline is hyper's, set where the server accepts connections
//! ([`crate::server`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use lupus_ledger::entry::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::error::Error;

/// How hard the coordinator holds strangers off. [`Limits::default`] is what
/// `lupus up` uses unless told otherwise.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests handled at once; one more is answered 503 with `Retry-After` at once
    /// (load shedding) instead of queueing. Default 2,048: above the thousand
    /// participants of `lupus-bench load`, each of which has one request out.
    pub max_in_flight: usize,
    /// Longest wait for a request's headers, on a new connection or between two
    /// requests of one: the connection is closed past it. Default 30 s.
    pub header_timeout: Duration,
    /// Longest a request may take, body and handler together (408 past it).
    /// Default 180 s: the body's own deadline plus a minute.
    pub request_timeout: Duration,
    /// Longest wait for the next piece of a body (a trickling client is cut off).
    /// Default 15 s.
    pub body_idle_timeout: Duration,
    /// Longest a whole signed body may take to arrive. Default 120 s: the largest
    /// opening of the Shakespeare job (27 MB) at 225 kB/s.
    pub body_read_timeout: Duration,
    /// Body bytes held at once before their signature is verified, over all
    /// requests; past it a signed upload is answered 503 with `Retry-After` (and may be
    /// sent again as it is: its nonce is not spent). Default 512 MiB, two of the
    /// largest openings; below one route's body limit, that route's largest bodies
    /// are never accepted.
    pub body_budget: usize,
    /// Joins (`POST /v1/join`) per key.
    pub joins: Rate,
    /// Joins of all keys together. Keys cost nothing to make, so a per-key bound
    /// alone does not slow a Sybil flood; this one does (and probation makes each
    /// new worker key earn its trust).
    pub joins_total: Rate,
    /// Claims (`POST /v1/tasks/next`, `POST /v1/verify/next`) per key.
    pub claims: Rate,
}

/// A token bucket: `burst` requests at once, then one more every `every`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_in_flight: 2048,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(180),
            body_idle_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(120),
            body_budget: 512 << 20,
            // A participant joins once per key and role; a restart joins again.
            joins: Rate {
                burst: 5,
                every: Duration::from_secs(10),
            },
            // 100 joins a second, after a burst that lets a fleet of 2,000 volunteers
            // (the load bench's 1,000 workers and their verifiers) in at once.
            joins_total: Rate {
                burst: 2_000,
                every: Duration::from_millis(10),
            },
            // An idle worker asks again after the 250 ms the answer says; a busy
            // verifier of the tiny test job claims about 9 tasks a second (the load
            // bench: 1 per 100 ms refused it hundreds of times a minute).
            claims: Rate {
                burst: 50,
                every: Duration::from_millis(20),
            },
        }
    }
}

/// Which token bucket a signed route draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Join,
    Claim,
}

/// The shared state of the bounds: cheap to clone.
#[derive(Clone)]
pub struct Gate {
    pub limits: Limits,
    budget: Arc<Semaphore>,
    joins: Arc<DefaultKeyedRateLimiter<PublicKey>>,
    joins_total: Arc<DefaultDirectRateLimiter>,
    claims: Arc<DefaultKeyedRateLimiter<PublicKey>>,
    /// Tokens taken so far: every [`FORGET_EVERY`]th take forgets quiet keys.
    takes: Arc<AtomicU64>,
}

/// How many takes pass between two sweeps of the buckets of quiet keys.
const FORGET_EVERY: u64 = 4096;

fn quota(r: Rate) -> Quota {
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(r.every)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// Body bytes of one request held against [`Limits::body_budget`], given back on drop.
pub struct Held(Option<OwnedSemaphorePermit>);

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate {
            budget: Arc::new(Semaphore::new(
                limits.body_budget.min(Semaphore::MAX_PERMITS),
            )),
            joins: Arc::new(DefaultKeyedRateLimiter::keyed(quota(limits.joins))),
            joins_total: Arc::new(DefaultDirectRateLimiter::direct(quota(limits.joins_total))),
            claims: Arc::new(DefaultKeyedRateLimiter::keyed(quota(limits.claims))),
            takes: Arc::new(AtomicU64::new(0)),
            limits,
        }
    }

    /// Nothing held yet.
    pub fn hold_nothing(&self) -> Held {
        Held(None)
    }

    /// Adds `n` more body bytes to `held`, or refuses with 503 when the budget is spent.
    pub fn hold(&self, held: &mut Held, n: usize) -> Result<(), Error> {
        let n = u32::try_from(n).map_err(|_| busy())?;
        let permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(n)
            .map_err(|_| busy())?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }

    /// Takes a token of `key`'s bucket, or refuses with 429 and the wait.
    pub fn take(&self, bucket: Bucket, key: &PublicKey) -> Result<(), Error> {
        if self.takes.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.forget_quiet_keys();
        }
        let limiter = match bucket {
            Bucket::Join => &self.joins,
            Bucket::Claim => &self.claims,
        };
        limiter.check_key(key).map_err(|not_until| {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(limiter.clock().now());
            limited("this key sent too many of these requests", wait)
        })?;
        if bucket == Bucket::Join {
            self.joins_total.check().map_err(|not_until| {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(self.joins_total.clock().now());
                limited("too many keys are joining at once", wait)
            })?;
        }
        Ok(())
    }

    /// Forgets the buckets of keys that have been quiet long enough to be full again,
    /// so that many throwaway keys cannot grow the tables for good.
    fn forget_quiet_keys(&self) {
        for l in [&self.joins, &self.claims] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

fn limited(what: &str, wait: std::time::Duration) -> Error {
    Error::RateLimited {
        detail: format!("{what}; send it again in {} ms", wait.as_millis()),
        retry_after_s: u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX),
    }
}

fn busy() -> Error {
    Error::Busy(
        "the coordinator is receiving too many uploads at once; nothing was read or \
         written, send the same request again"
            .into(),
    )
}

impl Limits {
    /// Wraps `router` in the bounds every request gets (outermost first): a load
    /// shedder over a global limit of requests in flight, a whole-request timeout,
    /// and a timeout between two pieces of a request body.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(self.max_in_flight))
                .timeout(self.request_timeout)
                .layer(RequestBodyTimeoutLayer::new(self.body_idle_timeout)),
        )
    }
}

/// The answer when a bound of [`Limits::apply`] cuts a request.
async fn overloaded(e: tower::BoxError) -> Response {
    if e.is::<tower::timeout::error::Elapsed>() {
        Error::TooSlow("the request took longer than this coordinator allows".into())
            .into_response()
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        Error::Busy(
            "the coordinator is handling as many requests as it allows; send the same \
             request again"
                .into(),
        )
        .into_response()
    } else {
        Error::Internal(format!("unexpected middleware error: {e}")).into_response()
    }
}
