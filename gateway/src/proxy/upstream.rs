//! The upstreams: one per route, each a list of replicas of its service.
//!
//! A route's requests go round robin over the replicas that passed their last health check
//! (nginx's default for HTTP upstreams; the gateway's requests are short, so nothing piles up on
//! one replica the way long-lived sockets would — those are nginx's `least_conn` concern in
//! front of the gateways). A replica leaves the rotation when a health check fails, or — with
//! more than one replica — as soon as a connection to it fails, so a dead replica costs at most
//! one failed connect per gateway, not one per request for a health interval; the next passing
//! check puts it back. A route is up while any of its replicas is.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use axum::http::{header::HeaderValue, uri::Scheme, Uri};

use super::pool::{Pool, PoolLimits};
use crate::{
    config::Route,
    metrics::{GatewayMetrics, HttpSeries, RouteRequests},
};

/// One process of a service: where it is, whether it is in the rotation, its connections.
pub(super) struct Replica {
    /// The base URL, as configured (for logs and `/health`).
    pub(super) url: String,
    /// Cleared by a failed health check (or a failed connect, with several replicas).
    pub(super) up: AtomicBool,
    /// The `Host` header of requests to this replica (its authority).
    pub(super) host: HeaderValue,
    pub(super) pool: Arc<Pool>,
}

/// One route's service: its replicas, where the rotation stands, and its metrics.
pub(super) struct Upstream {
    pub(super) route: Route,
    pub(super) replicas: Box<[Arc<Replica>]>,
    /// The rotation's counter; each request starts its search one further.
    next: AtomicUsize,
    pub(super) histogram: prometheus::Histogram,
    /// `gateway_proxy_requests_total{route=..}` by status, resolved once per status seen.
    pub(super) requests: RouteRequests,
    /// `http_requests_total` / `http_request_duration_seconds` of the route's template.
    pub(super) http: HttpSeries,
}

impl Upstream {
    /// The upstream of `route`, every replica in the rotation; an invalid URL is an error naming
    /// the route and the URL.
    pub(super) fn new(
        route: &Route,
        limits: PoolLimits,
        metrics: &GatewayMetrics,
        template: &str,
    ) -> anyhow::Result<Self> {
        if route.upstreams.is_empty() {
            anyhow::bail!("the {} route has no upstream URL", route.name);
        }
        let replicas = route
            .upstreams
            .iter()
            .map(|url| Replica::new(&route.name, url, limits).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        metrics.set_upstream_up(&route.name, true);
        Ok(Self {
            route: route.clone(),
            replicas,
            next: AtomicUsize::new(0),
            histogram: metrics.upstream_histogram(&route.name),
            requests: metrics.route_requests(&route.name),
            http: metrics.http_series(template),
        })
    }

    /// Whether any replica is in the rotation.
    pub(super) fn is_up(&self) -> bool {
        self.replicas.iter().any(|r| r.up.load(Ordering::Relaxed))
    }

    /// Whether the rotation has more than one member to fail over to.
    pub(super) fn is_replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    /// The next replica of the rotation, skipping `except` (the one that just failed).
    pub(super) fn pick(&self, except: Option<&Replica>) -> Option<&Arc<Replica>> {
        let n = self.replicas.len();
        let start = if n == 1 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) };
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| r.up.load(Ordering::Relaxed) && !except.is_some_and(|e| std::ptr::eq(Arc::as_ptr(r), e)))
    }

    /// Puts `replica` in or out of the rotation; logs and updates `gateway_upstream_up` when that
    /// changes anything.
    pub(super) fn set_up(&self, replica: &Replica, healthy: bool, why: &str, metrics: &GatewayMetrics) {
        let route_was_up = self.is_up();
        if replica.up.swap(healthy, Ordering::Relaxed) == healthy {
            return;
        }
        if healthy {
            tracing::info!(route = %self.route.name, upstream = %replica.url, "upstream is healthy again");
        } else if self.is_up() {
            tracing::warn!(route = %self.route.name, upstream = %replica.url, "upstream {why}, sending its requests to the other replicas");
        } else {
            tracing::warn!(route = %self.route.name, upstream = %replica.url, "upstream {why}, answering 503");
        }
        if route_was_up != self.is_up() {
            metrics.set_upstream_up(&self.route.name, !route_was_up);
        }
    }
}

impl Replica {
    fn new(route: &str, url: &str, limits: PoolLimits) -> anyhow::Result<Self> {
        let bad = |why: &str| anyhow::anyhow!("the upstream URL of {route} (`{url}`) {why}");
        let uri: Uri = url.parse().map_err(|e| bad(&format!("is invalid: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            return Err(bad("needs a scheme and a host"));
        };
        if scheme != Scheme::HTTP {
            return Err(bad("must be http://"));
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&format!("has an invalid host: {e}")))?;
        Ok(Self { url: url.to_string(), up: AtomicBool::new(true), host, pool: Arc::new(Pool::new(authority, limits)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream(urls: &[&str]) -> anyhow::Result<Upstream> {
        let route = Route {
            name: "auth".into(),
            prefix: "/api/auth".into(),
            upstreams: urls.iter().map(|u| u.to_string()).collect(),
        };
        let metrics = GatewayMetrics::new();
        Upstream::new(&route, PoolLimits::new(Duration::from_secs(1)), &metrics, "/api/auth/{*path}")
    }

    fn picked(u: &Upstream, except: Option<&Replica>) -> Option<String> {
        u.pick(except).map(|r| r.url.clone())
    }

    #[test]
    fn requests_go_round_robin_over_the_replicas_in_the_rotation() {
        let u = upstream(&["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]).unwrap();
        let firsts: Vec<String> = (0..6).map(|_| picked(&u, None).unwrap()).collect();
        assert_eq!(firsts[..3], firsts[3..], "a cycle of three");
        let mut distinct = firsts[..3].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "every replica takes its turn: {firsts:?}");

        let metrics = GatewayMetrics::new();
        u.set_up(&u.replicas[1], false, "failed its health check", &metrics);
        assert!((0..6).all(|_| picked(&u, None).as_deref() != Some("http://127.0.0.1:2")), "a replica out stays out");
        assert!(u.is_up());
    }

    #[test]
    fn a_retry_skips_the_replica_that_failed_and_a_route_without_replicas_is_down() {
        let u = upstream(&["http://127.0.0.1:1", "http://127.0.0.1:2"]).unwrap();
        assert!(u.is_replicated());
        for _ in 0..4 {
            let first = u.pick(None).unwrap().clone();
            let second = u.pick(Some(&first)).unwrap();
            assert_ne!(first.url, second.url);
        }
        let metrics = GatewayMetrics::new();
        u.set_up(&u.replicas[0], false, "refused a connection", &metrics);
        let only = u.pick(None).unwrap().clone();
        assert_eq!(only.url, "http://127.0.0.1:2");
        assert!(u.pick(Some(&only)).is_none(), "nothing left to retry on");
        u.set_up(&u.replicas[1], false, "refused a connection", &metrics);
        assert!(!u.is_up() && u.pick(None).is_none());
        u.set_up(&u.replicas[0], true, "", &metrics);
        assert!(u.is_up());
    }

    #[test]
    fn one_replica_is_always_picked_while_up() {
        let u = upstream(&["http://127.0.0.1:1"]).unwrap();
        assert!(!u.is_replicated());
        assert!((0..3).all(|_| picked(&u, None).as_deref() == Some("http://127.0.0.1:1")));
    }

    #[test]
    fn a_bad_url_names_the_route_and_the_url() {
        let err = upstream(&["http://127.0.0.1:1", "https://x:2"]).err().unwrap().to_string();
        assert_eq!(err, "the upstream URL of auth (`https://x:2`) must be http://");
        let err = upstream(&[]).err().unwrap().to_string();
        assert_eq!(err, "the auth route has no upstream URL");
    }
}
