//! The gateway's Prometheus figures, served on `/metrics`: per-route proxy requests and upstream
//! latency, upstream health, and the WebSocket side (open sockets, rejected upgrades, slow
//! clients dropped, heartbeat timeouts, events bridged). One registry per [`GatewayMetrics`], so
//! gateways spawned side by side in tests keep their own figures.
//!
//! Beside them, the seed's names every service serves too (seed §6.2.1): `http_requests_total`
//! and `http_request_duration_seconds` by `{method,path,status}`, where `path` is the gateway's
//! route template (`/api/payments/{*path}` for everything proxied to payments, `/health`,
//! `/metrics`, `/ws`; `unmatched` when no route matched), never the raw path; and the process
//! metrics. The duration is until the response headers (a proxied body streams after it).
//!
//! The kit's `Metrics` carries the services' fixed set (HTTP, cache, events); the gateway needs
//! upstream and socket figures too, hence a registry of its own.

use std::sync::{Arc, OnceLock};

use axum::http::Method;
use mfe_kit::metrics::{http_metrics, method_label, process_collector};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    proxy_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_up: IntGaugeVec,
    ws_connections: IntGauge,
    ws_rejected: IntCounterVec,
    ws_slow_dropped: IntCounter,
    ws_heartbeat_timeouts: IntCounter,
    ws_messages_sent: IntCounter,
    events_bridged: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let labels = std::collections::HashMap::from([("service".to_string(), "gateway".to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let proxy_requests = IntCounterVec::new(
            Opts::new("gateway_proxy_requests_total", "requests proxied, by route and final status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new("gateway_upstream_duration_seconds", "time until the upstream's response headers")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("valid metric");
        let upstream_up =
            IntGaugeVec::new(Opts::new("gateway_upstream_up", "1 when the last health check passed"), &["route"])
                .expect("valid metric");
        let ws_connections =
            IntGauge::new("gateway_ws_connections", "WebSocket connections open now").expect("valid metric");
        let ws_rejected = IntCounterVec::new(
            Opts::new("gateway_ws_rejected_total", "upgrades refused before the handshake, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let ws_slow_dropped =
            IntCounter::new("gateway_ws_slow_clients_dropped_total", "sockets closed because their queue was full")
                .expect("valid metric");
        let ws_heartbeat_timeouts =
            IntCounter::new("gateway_ws_heartbeat_timeouts_total", "sockets closed for a missing pong")
                .expect("valid metric");
        let ws_messages_sent =
            IntCounter::new("gateway_ws_messages_sent_total", "messages queued to sockets").expect("valid metric");
        let events_bridged = IntCounterVec::new(
            Opts::new("gateway_events_bridged_total", "broker events received by the bridge, by type"),
            &["type"],
        )
        .expect("valid metric");
        registry.register(Box::new(proxy_requests.clone())).expect("registered once");
        registry.register(Box::new(upstream_duration.clone())).expect("registered once");
        registry.register(Box::new(upstream_up.clone())).expect("registered once");
        registry.register(Box::new(ws_connections.clone())).expect("registered once");
        registry.register(Box::new(ws_rejected.clone())).expect("registered once");
        registry.register(Box::new(ws_slow_dropped.clone())).expect("registered once");
        registry.register(Box::new(ws_heartbeat_timeouts.clone())).expect("registered once");
        registry.register(Box::new(ws_messages_sent.clone())).expect("registered once");
        registry.register(Box::new(events_bridged.clone())).expect("registered once");
        let (http_requests, http_duration) = http_metrics();
        registry.register(Box::new(http_requests.clone())).expect("registered once");
        registry.register(Box::new(http_duration.clone())).expect("registered once");
        if let Some(process) = process_collector() {
            registry.register(process).expect("registered once");
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                proxy_requests,
                upstream_duration,
                upstream_up,
                ws_connections,
                ws_rejected,
                ws_slow_dropped,
                ws_heartbeat_timeouts,
                ws_messages_sent,
                events_bridged,
                http_requests,
                http_duration,
            }),
        }
    }

    /// The `http_requests_total` / `http_request_duration_seconds` series of one route template,
    /// for the hot path (see [`HttpSeries`]).
    pub fn http_series(&self, path: &str) -> HttpSeries {
        HttpSeries {
            requests: self.inner.http_requests.clone(),
            duration: self.inner.http_duration.clone(),
            path: path.into(),
            by_method_status: (0..METHODS.len() * 1000).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records one request of `path` (a route template) outside the hot path (the router's own
    /// routes, requests no route matched).
    pub fn observe_http(&self, method: &Method, path: &str, status: u16, seconds: f64) {
        let mut buf = itoa_status(status);
        let labels = [method_label(method), path, status_str(&mut buf)];
        self.inner.http_requests.with_label_values(&labels).inc();
        self.inner.http_duration.with_label_values(&labels).observe(seconds);
    }

    /// The latency histogram of one route, resolved once so the hot path skips the label lookup.
    pub fn upstream_histogram(&self, route: &str) -> prometheus::Histogram {
        self.inner.upstream_duration.with_label_values(&[route])
    }

    pub fn proxied(&self, route: &str, status: u16) {
        let mut buf = itoa_status(status);
        self.inner.proxy_requests.with_label_values(&[route, status_str(&mut buf)]).inc();
    }

    /// The request counters of one route, for the hot path (see [`RouteRequests`]).
    pub fn route_requests(&self, route: &str) -> RouteRequests {
        RouteRequests {
            vec: self.inner.proxy_requests.clone(),
            route: route.into(),
            by_status: (0..1000).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn set_upstream_up(&self, route: &str, up: bool) {
        self.inner.upstream_up.with_label_values(&[route]).set(i64::from(up));
    }

    pub fn ws_opened(&self) {
        self.inner.ws_connections.inc();
    }

    pub fn ws_closed(&self) {
        self.inner.ws_connections.dec();
    }

    pub fn ws_open_now(&self) -> i64 {
        self.inner.ws_connections.get()
    }

    pub fn ws_rejected(&self, reason: &str) {
        self.inner.ws_rejected.with_label_values(&[reason]).inc();
    }

    pub fn ws_slow_dropped(&self) {
        self.inner.ws_slow_dropped.inc();
    }

    pub fn ws_slow_dropped_count(&self) -> u64 {
        self.inner.ws_slow_dropped.get()
    }

    pub fn ws_heartbeat_timeout(&self) {
        self.inner.ws_heartbeat_timeouts.inc();
    }

    pub fn ws_messages_sent(&self, n: u64) {
        self.inner.ws_messages_sent.inc_by(n);
    }

    pub fn event_bridged(&self, event_type: &str) {
        self.inner.events_bridged.with_label_values(&[event_type]).inc();
    }

    /// The registry in the Prometheus text format.
    /// The registry, for collectors of shared parts (the session denylist's counter).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut buffer).expect("text encoding never fails");
        String::from_utf8(buffer).expect("prometheus text is utf-8")
    }
}

/// `gateway_proxy_requests_total` of one route: each status's counter is looked up in the vector
/// (a hash of the labels under a lock) the first time that status is seen, then kept, so a
/// proxied request costs one atomic increment. A series appears on `/metrics` only once used.
pub struct RouteRequests {
    vec: IntCounterVec,
    route: Box<str>,
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl RouteRequests {
    pub fn inc(&self, status: u16) {
        let status = status.min(999);
        self.by_status[usize::from(status)]
            .get_or_init(|| {
                let mut buf = itoa_status(status);
                self.vec.with_label_values(&[&*self.route, status_str(&mut buf)])
            })
            .inc();
    }
}

/// The `method` labels of [`method_label`], in the order of [`HttpSeries`]'s table.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"];

/// The seed's two HTTP series of one route template: each (method, status) pair's counter and
/// histogram are looked up in their vectors the first time the pair is seen, then kept, so a
/// proxied request costs an increment and an observation, no label hashing under a lock (the
/// same reason as [`RouteRequests`]). The table is 8 methods × 1000 statuses of empty cells,
/// about 200 KB per upstream.
pub struct HttpSeries {
    requests: IntCounterVec,
    duration: HistogramVec,
    path: Box<str>,
    by_method_status: Box<[OnceLock<(IntCounter, Histogram)>]>,
}

impl HttpSeries {
    pub fn observe(&self, method: &Method, status: u16, seconds: f64) {
        let method = method_label(method);
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(METHODS.len() - 1);
        let status = status.min(999);
        let (counter, histogram) = self.by_method_status[m * 1000 + usize::from(status)].get_or_init(|| {
            let mut buf = itoa_status(status);
            let labels = [method, &*self.path, status_str(&mut buf)];
            (self.requests.with_label_values(&labels), self.duration.with_label_values(&labels))
        });
        counter.inc();
        histogram.observe(seconds);
    }
}

/// A status code as three ASCII digits without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

fn status_str(buf: &mut [u8; 3]) -> &str {
    std::str::from_utf8(buf).expect("ascii digits")
}
