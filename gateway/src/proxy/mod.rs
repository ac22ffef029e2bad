//! The streaming reverse proxy of SPEC §8: `/api/<service>/...` goes to that service with the
//! path unchanged. Bodies are never collected: the incoming body is handed to the upstream
//! request as a stream and the upstream's body back to the client the same way, so memory stays
//! flat whatever the size. Connections to upstreams are pooled ([`pool`]: HTTP/1.1
//! senders reused most-recent-first).
//!
//! Errors answer in the platform's shape `{"error":{"code","message"}}`: no route 404, upstream
//! marked down by the health checks 503, connection failure 502, no response headers within the
//! timeout 504.

mod error;
mod headers;
mod health;
mod pool;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::Request,
    http::{
        header::{self, HeaderValue},
        uri::{PathAndQuery, Scheme},
        Uri,
    },
    response::{IntoResponse, Response},
};

pub use error::{error_response, ProxyError};
pub use headers::{prepare_request_headers, strip_hop_by_hop};
use mfe_kit::{
    client_ip::TrustedProxies,
    telemetry::{correlation_id_of, CORRELATION_HEADER},
};
use pool::{Pool, PoolLimits, Upstream};

use crate::{config::Route, metrics::GatewayMetrics};

/// The `path` label of everything proxied under `prefix`: the gateway's route template, in
/// axum's syntax (`/api/payments/{*path}`); the gateway does not know the service's own
/// templates, and a raw path would put ids into labels.
pub fn route_template(prefix: &str) -> String {
    format!("{}/{{*path}}", prefix.trim_end_matches('/'))
}

/// Why a request was not sent, with the upstream it was meant for (when its path matched one).
type Refused<'a> = (Option<&'a Upstream>, ProxyError);

/// The proxy: routes, pooled connections, timeouts and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    upstreams: Arc<[Arc<Upstream>]>,
    timeout: Duration,
    metrics: GatewayMetrics,
    /// Whose forwarding headers are passed on ([`prepare_request_headers`]).
    trusted: Arc<TrustedProxies>,
}

impl Proxy {
    pub fn new(
        routes: &[Route],
        upstream_timeout: Duration,
        connect_timeout: Duration,
        metrics: GatewayMetrics,
    ) -> anyhow::Result<Self> {
        let mut upstreams = Vec::with_capacity(routes.len());
        for route in routes {
            let uri: Uri = route.upstream.parse().map_err(|e| {
                anyhow::anyhow!("the upstream URL of {} (`{}`) is invalid: {e}", route.name, route.upstream)
            })?;
            let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
                anyhow::bail!("the upstream URL of {} (`{}`) needs a scheme and a host", route.name, route.upstream);
            };
            if scheme != Scheme::HTTP {
                anyhow::bail!("the upstream URL of {} (`{}`) must be http://", route.name, route.upstream);
            }
            metrics.set_upstream_up(&route.name, true);
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| {
                anyhow::anyhow!("the upstream URL of {} (`{}`) has an invalid host: {e}", route.name, route.upstream)
            })?;
            upstreams.push(Arc::new(Upstream {
                histogram: metrics.upstream_histogram(&route.name),
                requests: metrics.route_requests(&route.name),
                http: metrics.http_series(&route_template(&route.prefix)),
                route: route.clone(),
                up: AtomicBool::new(true),
                host,
                pool: Arc::new(Pool::new(authority, PoolLimits::new(connect_timeout))),
            }));
        }
        Ok(Self {
            upstreams: upstreams.into(),
            timeout: upstream_timeout,
            metrics,
            trusted: Arc::new(TrustedProxies::default()),
        })
    }

    /// The proxies whose forwarding headers are passed on (default: loopback).
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = Arc::new(trusted);
        self
    }

    /// The gateway's metrics, which the proxy records into.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Whether each upstream passed its last health check, for the gateway's `/health`.
    pub fn upstream_states(&self) -> Vec<(String, bool)> {
        self.upstreams.iter().map(|u| (u.route.name.clone(), u.up.load(Ordering::Relaxed))).collect()
    }

    fn find(&self, path: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| {
            let prefix = u.route.prefix.as_str();
            path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/') | Some(b'?'))
        })
    }

    /// Forwards one request from `peer` (the client's address, for the forwarding headers) and
    /// streams the answer back; every failure is a JSON error.
    pub async fn forward(&self, req: Request, peer: Option<SocketAddr>) -> Response {
        let correlation_id = correlation_id_of(req.headers());
        // Cloning a standard method copies a tag, nothing is allocated.
        let method = req.method().clone();
        // Only visible ASCII gets here (checked or generated), so this never falls back.
        let id = correlation_id.to_str().unwrap_or_default();
        let span = mfe_kit::telemetry::proxy_span(id, req.method(), req.uri().path(), req.headers());
        let started = Instant::now();
        // The preparation is synchronous and the exchange a small future of its own: the
        // request's future is moved (copied) a few times on its way into the connection's task,
        // and a large one showed up as memmove in the profile.
        let forwarded = match span.in_scope(|| self.prepare(req, peer, &correlation_id)) {
            Err(e) => Err(e),
            Ok((upstream, upstream_req)) => {
                let exchange = self.exchange(upstream, upstream_req);
                let result = if span.is_disabled() {
                    exchange.await
                } else {
                    tracing::Instrument::instrument(exchange, span.clone()).await
                };
                result.map(|r| (upstream, r)).map_err(|e| (Some(&**upstream), e))
            }
        };
        let (upstream, mut response): (Option<&Upstream>, Response) = match forwarded {
            Ok((upstream, response)) => (Some(upstream), response),
            Err((upstream, e)) => {
                if !matches!(e, ProxyError::NoRoute { .. }) {
                    tracing::warn!(correlation_id = %id, error = %e, "proxy error");
                }
                (upstream, e.into_response())
            }
        };
        let status = response.status().as_u16();
        let seconds = started.elapsed().as_secs_f64();
        match upstream {
            Some(upstream) => {
                upstream.requests.inc(status);
                upstream.http.observe(&method, status, seconds);
            }
            None => self.metrics.observe_http(&method, mfe_kit::metrics::UNMATCHED_PATH, status, seconds),
        }
        if !span.is_disabled() {
            span.in_scope(|| {
                let route = upstream.map(|u| u.route.name.as_str());
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(route, status, elapsed_ms, "proxied");
            });
        }
        response.headers_mut().insert(CORRELATION_HEADER.clone(), correlation_id);
        response
    }

    /// The upstream of `req` and the request to send it (origin-form URI, forwarding headers,
    /// `Host` of the upstream, trace context), or why there is none.
    fn prepare(
        &self,
        req: Request,
        peer: Option<SocketAddr>,
        correlation_id: &HeaderValue,
    ) -> Result<(&Arc<Upstream>, Request), Refused<'_>> {
        let Some(upstream) = self.find(req.uri().path()) else {
            return Err((None, ProxyError::NoRoute { path: req.uri().path().to_string() }));
        };
        if !upstream.up.load(Ordering::Relaxed) {
            return Err((Some(upstream), ProxyError::UpstreamDown { route: upstream.route.name.clone() }));
        }
        let (mut parts, body) = req.into_parts();
        // Origin-form on the wire (`GET /path?q HTTP/1.1` + `Host`), as RFC 9112 asks of a client.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(path_and_query);
        }
        parts.version = axum::http::Version::HTTP_11;
        prepare_request_headers(&mut parts.headers, peer, &self.trusted, correlation_id);
        parts.headers.insert(header::HOST, upstream.host.clone());
        mfe_kit::telemetry::inject_trace_context(&mut parts.headers);
        Ok((upstream, axum::http::Request::from_parts(parts, body)))
    }

    /// Sends `req` to `upstream` within the timeout; the response with its hop-by-hop headers
    /// removed, or the 502/504 error.
    async fn exchange(&self, upstream: &Arc<Upstream>, req: Request) -> Result<Response, ProxyError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, upstream.send(req)).await;
        upstream.histogram.observe(started.elapsed().as_secs_f64());
        let response = match result {
            Err(_) => {
                let route = upstream.route.name.clone();
                return Err(ProxyError::Timeout { route, timeout_ms: self.timeout.as_millis() });
            }
            Ok(Err(reason)) => return Err(ProxyError::Connect { route: upstream.route.name.clone(), reason }),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}
