//! The coordinator's Prometheus metrics (`GET /metrics`), kept with `prometheus-client`.
//!
//! The names predate this module and dashboards may rely on them: the counters
//! `lupus_http_requests_total`, `lupus_http_client_errors_total`,
//! `lupus_http_server_errors_total`, `lupus_http_latency_microseconds_total`,
//! `lupus_submissions_total`, `lupus_verdicts_total`, `lupus_slashes_total`,
//! `lupus_rounds_closed_total`, `lupus_tasks_expired_total` and the gauge
//! `lupus_log_size`. The histogram `lupus_http_request_duration_seconds` adds latency
//! per route and status class: the route is the router's template
//! (`/v1/tasks/{id}/submit`, never the raw path) and the class `2xx`, `4xx`, ..., so the
//! number of label sets stays bounded whatever clients send.

use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The route label of a request that matched no route (the 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// The labels of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template, or [`UNMATCHED`].
    route: String,
    /// `1xx` to `5xx`.
    status: &'static str,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.5 ms doubling to about 16 s (a large submission or opening).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The metrics, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub client_errors: Counter,
    pub server_errors: Counter,
    pub latency_us_total: Counter,
    pub submissions: Counter,
    pub verdicts: Counter,
    pub slashes: Counter,
    pub rounds_closed: Counter,
    pub tasks_expired: Counter,
    log_size: Gauge,
    request_duration: LatencyFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // `register` appends `_total` to a counter's name.
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let requests = counter("lupus_http_requests", "HTTP requests answered");
        let client_errors = counter("lupus_http_client_errors", "4xx answers");
        let server_errors = counter("lupus_http_server_errors", "5xx answers");
        let latency_us_total = counter(
            "lupus_http_latency_microseconds",
            "Sum of request handling times",
        );
        let submissions = counter("lupus_submissions", "Work commitments logged");
        let verdicts = counter("lupus_verdicts", "Verifier verdicts logged");
        let slashes = counter("lupus_slashes", "Keys slashed");
        let rounds_closed = counter("lupus_rounds_closed", "Rounds closed");
        let tasks_expired = counter("lupus_tasks_expired", "Tasks expired and reassigned");
        let log_size = Gauge::default();
        registry.register("lupus_log_size", "Entries in the log", log_size.clone());
        let request_duration = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "lupus_http_request_duration",
            "Request handling time by route template and status class",
            Unit::Seconds,
            request_duration.clone(),
        );
        Metrics {
            registry,
            requests,
            client_errors,
            server_errors,
            latency_us_total,
            submissions,
            verdicts,
            slashes,
            rounds_closed,
            tasks_expired,
            log_size,
            request_duration,
        }
    }
}

impl Metrics {
    /// Counts one answered request: `route` is its template (or [`UNMATCHED`]).
    pub fn observe_request(&self, route: &str, status: StatusCode, elapsed: Duration) {
        self.requests.inc();
        self.latency_us_total
            .inc_by(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        if status.is_client_error() {
            self.client_errors.inc();
        } else if status.is_server_error() {
            self.server_errors.inc();
        }
        let labels = RequestLabels {
            route: route.to_owned(),
            status: status_class(status),
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text (version 0.0.4) of every metric, with the log's size now.
    pub fn encode(&self, log_size: u64) -> Result<String, std::fmt::Error> {
        self.log_size
            .set(i64::try_from(log_size).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_names_and_latency_is_per_route_template() {
        let m = Metrics::default();
        m.observe_request(
            "/v1/tasks/{id}",
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        m.observe_request("/v1/job", StatusCode::OK, Duration::from_micros(250));
        m.submissions.inc();
        let text = m.encode(42).unwrap();
        for line in [
            "lupus_http_requests_total 2",
            "lupus_http_client_errors_total 1",
            "lupus_http_server_errors_total 0",
            "lupus_http_latency_microseconds_total 3250",
            "lupus_submissions_total 1",
            "lupus_log_size 42",
            "lupus_http_request_duration_seconds_count{route=\"/v1/tasks/{id}\",status=\"4xx\"} 1",
            "lupus_http_request_duration_seconds_bucket{route=\"/v1/job\",status=\"2xx\",le=\"0.0005\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            text.contains("# TYPE lupus_http_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
