//! Prometheus metrics: requests by route and status, and their latency;
//! the work waiting (checks, builds, deployments) and since when, leases
//! that ran out, the ledger's size and its newest checkpoint's age.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// What operators watch of custody's work, set from the store at each scrape.
struct Work {
    waiting: Family<WorkLabels, Gauge>,
    oldest: Family<WorkLabels, Gauge<f64, AtomicU64>>,
    expired: Family<KindLabels, Gauge>,
    ledger_events: Gauge,
    checkpoint_size: Gauge,
    checkpoint_age: Gauge<f64, AtomicU64>,
}

impl Work {
    fn register(registry: &mut Registry) -> Work {
        let work = Work {
            waiting: Family::default(),
            oldest: Family::default(),
            expired: Family::default(),
            ledger_events: Gauge::default(),
            checkpoint_size: Gauge::default(),
            checkpoint_age: Gauge::default(),
        };
        registry.register(
            "work_waiting",
            "Checks, builds and deployments waiting, by kind and state",
            work.waiting.clone(),
        );
        registry.register(
            "work_oldest_age_seconds",
            "How long the oldest waiting item of a kind and state has waited",
            work.oldest.clone(),
        );
        registry.register(
            "expired_leases",
            "Running builds and deployments whose worker stopped renewing its lease",
            work.expired.clone(),
        );
        registry.register("ledger_events", "Events in the audit log", work.ledger_events.clone());
        registry.register(
            "checkpoint_size",
            "Events the newest signed checkpoint covers",
            work.checkpoint_size.clone(),
        );
        registry.register(
            "checkpoint_age_seconds",
            "Time since the newest checkpoint was signed",
            work.checkpoint_age.clone(),
        );
        work
    }

    fn set(&self, snapshot: &custody_store::WorkSnapshot, now_ms: i64) {
        let seconds = |ms: i64| (now_ms - ms).max(0) as f64 / 1000.0;
        for queue in &snapshot.queues {
            let labels = WorkLabels { kind: queue.kind.to_owned(), status: queue.status.to_owned() };
            self.waiting.get_or_create(&labels).set(queue.count);
            self.oldest.get_or_create(&labels).set(queue.oldest_ms.map_or(0.0, seconds));
        }
        for (kind, expired) in &snapshot.expired_leases {
            self.expired.get_or_create(&KindLabels { kind: (*kind).to_owned() }).set(*expired);
        }
        self.ledger_events.set(snapshot.ledger_events);
        if let Some((size, at)) = snapshot.checkpoint {
            self.checkpoint_size.set(size);
            self.checkpoint_age.set(seconds(at));
        }
    }
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    damaged_blobs: Counter,
    work: Work,
    /// When the work was last read from the store.
    work_read: std::sync::Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("custody");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        let latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request", latency.clone());
        let damaged_blobs = Counter::default();
        registry.register(
            "damaged_blob_reads",
            "Artifact downloads cut off because the blob no longer matched its digest",
            damaged_blobs.clone(),
        );
        let work = Work::register(&mut registry);
        Metrics { registry, requests, latency, damaged_blobs, work, work_read: std::sync::Mutex::new(None) }
    }
}

/// How often a scrape reads the work from the store at most: `/metrics`
/// answers anyone, and a flood of scrapes must not become a flood of queries.
const WORK_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Metrics {
    /// Whether a scrape now should read the work again; claims the read.
    fn work_is_due(&self) -> bool {
        let mut last = self.work_read.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WORK_READ_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Counts a download cut off because its blob was damaged.
    pub fn damaged_blob(&self) {
        self.damaged_blobs.inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts and times every routed request.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let agent = user_agent(request.headers());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let metrics = state.metrics();
    metrics.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
    metrics.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(elapsed.as_secs_f64());
    tracing::debug!(%method, %route, status, micros = elapsed.as_micros() as u64, user_agent = %agent, "request");
    response
}

/// The client's `User-Agent`, as text (for the log, which escapes it).
pub(crate) fn user_agent(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// `GET /metrics`: the request counters, and the work and ledger as the
/// store had them at most [`WORK_READ_EVERY`] ago (left as last read when
/// the database does not answer).
pub(crate) async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    if state.metrics().work_is_due() {
        match state.store().work_snapshot().await {
            Ok(snapshot) => state.metrics().work.set(&snapshot, custody_store::now_ms()),
            Err(error) => tracing::warn!(%error, "metrics: reading the work"),
        }
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_close_together_read_the_store_once() {
        let metrics = Metrics::default();
        assert!(metrics.work_is_due(), "the first scrape reads the work");
        for _ in 0..100 {
            assert!(!metrics.work_is_due(), "a scrape within {WORK_READ_EVERY:?} read the store again");
        }
        *metrics.work_read.lock().unwrap() = Some(Instant::now() - WORK_READ_EVERY);
        assert!(metrics.work_is_due(), "a scrape after the interval reads it again");
    }
}
