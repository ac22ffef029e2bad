//! Prometheus metrics of one service, with the seed's names (seed §6.2.1, SPEC §13):
//! - `http_requests_total{method,path,status}` and `http_request_duration_seconds{method,path,status}`
//!   (histogram), where `path` is the route template (`/api/payments/{id}`, axum's
//!   [`MatchedPath`]), never the raw path, so ids never become label values; a request no route
//!   matched is counted under [`UNMATCHED_PATH`];
//! - `cache_hits_total{cache}`, `cache_misses_total{cache}` and `cache_hit_ratio{cache}` (hits
//!   over lookups since the process started, computed when scraped);
//! - `events_published_total{type}`, `events_consumed_total{type}`;
//! - the process metrics of the prometheus crate's process collector (`process_cpu_seconds_total`,
//!   `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`, ...),
//!   the equivalent of prom-client's default metrics in the seed (with prometheus 0.13 the CPU
//!   counter moves in whole seconds; 0.14 makes it fractional but changes the protobuf API).
//!
//! One registry per [`Metrics`] value, so apps spawned side by side in tests do not mix figures
//! (each carries its own process collector; they all describe the same process then).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header::CONTENT_TYPE, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The `path` label of requests no route matched (unknown paths, probes): one fixed value, so
/// scanners trying random paths cannot grow the label set.
pub const UNMATCHED_PATH: &str = "unmatched";

/// The `http_request_duration_seconds` buckets: the seed's (10 ms to 5 s) and, below them, 0.5
/// to 5 ms, where this platform's answers fall (a cached read takes about a millisecond).
pub const HTTP_DURATION_BUCKETS: [f64; 13] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The labels of both HTTP metrics, in the seed's order.
pub const HTTP_LABELS: [&str; 3] = ["method", "path", "status"];

/// The HTTP request counter and histogram with the seed's names (also used by the gateway).
pub fn http_metrics() -> (IntCounterVec, HistogramVec) {
    let requests = IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests handled"), &HTTP_LABELS)
        .expect("valid metric");
    let duration = HistogramVec::new(
        HistogramOpts::new("http_request_duration_seconds", "HTTP request duration in seconds")
            .buckets(HTTP_DURATION_BUCKETS.to_vec()),
        &HTTP_LABELS,
    )
    .expect("valid metric");
    (requests, duration)
}

/// The process collector of this process (Linux: from /proc), or `None` elsewhere.
pub fn process_collector() -> Option<Box<dyn Collector>> {
    #[cfg(target_os = "linux")]
    {
        Some(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The metrics of one service. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    events_published: IntCounterVec,
    events_consumed: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with every metric registered; `service` becomes a constant label.
    pub fn new(service: &str) -> Self {
        let labels = std::collections::HashMap::from([("service".to_string(), service.to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let (http_requests, http_duration) = http_metrics();
        let cache_hits =
            IntCounterVec::new(Opts::new("cache_hits_total", "cache lookups answered from Redis"), &["cache"])
                .expect("valid metric");
        let cache_misses =
            IntCounterVec::new(Opts::new("cache_misses_total", "cache lookups not found in Redis"), &["cache"])
                .expect("valid metric");
        let events_published =
            IntCounterVec::new(Opts::new("events_published_total", "events written for publication"), &["type"])
                .expect("valid metric");
        let events_consumed =
            IntCounterVec::new(Opts::new("events_consumed_total", "events handled by consumers"), &["type"])
                .expect("valid metric");
        for c in [&http_requests, &cache_hits, &cache_misses, &events_published, &events_consumed] {
            registry.register(Box::new(c.clone())).expect("metric registered once");
        }
        registry.register(Box::new(http_duration.clone())).expect("metric registered once");
        registry
            .register(Box::new(HitRatio::new(cache_hits.clone(), cache_misses.clone())))
            .expect("metric registered once");
        if let Some(process) = process_collector() {
            registry.register(process).expect("metric registered once");
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                http_requests,
                http_duration,
                cache_hits,
                cache_misses,
                events_published,
                events_consumed,
            }),
        }
    }

    /// Registers a collector of another kit module (e.g. the session denylist's counter) so
    /// `/metrics` renders it; registering the same metric twice keeps the first.
    /// The registry `/metrics` renders, for collectors shared with the gateway
    /// ([`crate::revocation::Revocations`]).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.registry
    }

    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.inner.registry.register(collector) {
            tracing::debug!(error = %e, "metric not registered");
        }
    }

    pub fn cache_hit(&self, cache: &str) {
        self.inner.cache_hits.with_label_values(&[cache]).inc();
    }

    pub fn cache_miss(&self, cache: &str) {
        self.inner.cache_misses.with_label_values(&[cache]).inc();
    }

    pub fn event_published(&self, event_type: &str) {
        self.inner.events_published.with_label_values(&[event_type]).inc();
    }

    pub fn event_consumed(&self, event_type: &str) {
        self.inner.events_consumed.with_label_values(&[event_type]).inc();
    }

    /// Records one finished HTTP request; `path` is the route template.
    pub fn observe_request(&self, method: &str, path: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [method, path, status.as_str()];
        self.inner.http_requests.with_label_values(&labels).inc();
        self.inner.http_duration.with_label_values(&labels).observe(seconds);
    }

    /// The registry's contents in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut buffer).expect("text encoding never fails");
        String::from_utf8(buffer).expect("prometheus text is utf-8")
    }
}

/// The `method` label: the standard methods as they are, anything else as `OTHER`, so a client
/// inventing methods cannot grow the label set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware recording every request. Requests are labelled by route template
/// (`/api/auth/users/{id}`), never by raw path, so label cardinality stays bounded.
pub async fn track_requests(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let path = path.as_deref().unwrap_or(UNMATCHED_PATH);
    metrics.observe_request(method, path, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `cache_hit_ratio{cache}`: hits over lookups of each cache since the start, computed from the
/// two counters when scraped (the seed's hit-rate goal, > 80 %, read off `/metrics` directly;
/// over a window, Prometheus computes it from the counters' rates instead).
struct HitRatio {
    hits: IntCounterVec,
    misses: IntCounterVec,
    desc: Desc,
}

impl HitRatio {
    fn new(hits: IntCounterVec, misses: IntCounterVec) -> Self {
        let desc = Desc::new(
            "cache_hit_ratio".into(),
            "cache hits over lookups since the process started".into(),
            vec!["cache".into()],
            Default::default(),
        )
        .expect("valid metric");
        Self { hits, misses, desc }
    }
}

/// The value of each `cache` label of one counter family.
fn by_cache(families: Vec<MetricFamily>) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for family in families {
        for metric in family.get_metric() {
            if let Some(label) = metric.get_label().iter().find(|l| l.get_name() == "cache") {
                out.insert(label.get_value().to_string(), metric.get_counter().get_value());
            }
        }
    }
    out
}

impl Collector for HitRatio {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let hits = by_cache(self.hits.collect());
        let misses = by_cache(self.misses.collect());
        let ratio = GaugeVec::new(
            Opts::new("cache_hit_ratio", "cache hits over lookups since the process started"),
            &["cache"],
        )
        .expect("valid metric");
        let names: std::collections::BTreeSet<&String> = hits.keys().chain(misses.keys()).collect();
        for name in names {
            let h = hits.get(name).copied().unwrap_or(0.0);
            let total = h + misses.get(name).copied().unwrap_or(0.0);
            if total > 0.0 {
                ratio.with_label_values(&[name]).set(h / total);
            }
        }
        ratio.collect()
    }
}

/// `GET /metrics`.
pub async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}
