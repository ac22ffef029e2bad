//! Prometheus metrics of one service: HTTP requests (count and latency by route template,
//! method and status), cache hits/misses by cache, events published/consumed by type. One
//! registry per [`Metrics`] value, so apps spawned side by side in tests do not mix figures.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header::CONTENT_TYPE, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

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
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests handled"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        // Buckets from 0.5 ms: the latency goal is single-digit milliseconds.
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
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

    /// Records one finished HTTP request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
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

/// Middleware recording every request. Routes are labelled by template (`/api/auth/users/{id}`),
/// never by raw path, so label cardinality stays bounded.
pub async fn track_requests(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    metrics.observe_request(route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}
