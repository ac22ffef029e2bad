//! The streaming reverse proxy of SPEC §8: `/api/<service>/...` goes to that service with the
//! path unchanged. Bodies are never collected: the incoming body is handed to the upstream
//! request as a stream and the upstream's body back to the client the same way, so memory stays
//! flat whatever the size. Connections to upstreams are pooled ([`pool`]: HTTP/1.1
//! senders reused most-recent-first). A service may run as several replicas ([`upstream`]: round
//! robin over those that pass their health checks); a request that could not reach one replica
//! is sent once to another — any request whose connection could not be opened (nothing of it
//! was sent), and a bodiless `GET`/`HEAD`/`OPTIONS` that failed later (sending it twice cannot
//! do anything twice).
//!
//! Errors answer in the platform's shape `{"error":{"code","message"}}`: no route 404, upstream
//! marked down by the health checks 503, connection failure 502, no response headers within the
//! timeout 504.

mod error;
mod headers;
mod health;
mod pool;
mod upstream;

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use axum::{
    extract::Request,
    http::{
        header::{self, HeaderMap, HeaderValue},
        uri::PathAndQuery,
        Method, Uri,
    },
    response::{IntoResponse, Response},
};

pub use error::{error_response, ProxyError};
pub use headers::{prepare_request_headers, strip_hop_by_hop};
use mfe_kit::{
    client_ip::TrustedProxies,
    telemetry::{correlation_id_of, CORRELATION_HEADER},
};
use pool::{PoolLimits, SendFailure};
use upstream::{Replica, Upstream};

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
        let limits = PoolLimits::new(connect_timeout);
        let upstreams = routes
            .iter()
            .map(|route| Upstream::new(route, limits, &metrics, &route_template(&route.prefix)).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
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

    /// Whether each route has a replica in its rotation, for the gateway's `/health`.
    pub fn upstream_states(&self) -> Vec<(String, bool)> {
        self.upstreams.iter().map(|u| (u.route.name.clone(), u.is_up())).collect()
    }

    /// Each route's replicas (URL, in the rotation), for the gateway's `/health`.
    pub fn replica_states(&self) -> Vec<(String, Vec<(String, bool)>)> {
        self.upstreams
            .iter()
            .map(|u| {
                let replicas = u.replicas.iter().map(|r| (r.url.clone(), r.up.load(Ordering::Relaxed))).collect();
                (u.route.name.clone(), replicas)
            })
            .collect()
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
                let exchange = self.dispatch(upstream, upstream_req);
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
    /// trace context; [`Proxy::dispatch`] sets the replica's `Host`), or why there is none.
    fn prepare(
        &self,
        req: Request,
        peer: Option<SocketAddr>,
        correlation_id: &HeaderValue,
    ) -> Result<(&Arc<Upstream>, Request), Refused<'_>> {
        let Some(upstream) = self.find(req.uri().path()) else {
            return Err((None, ProxyError::NoRoute { path: req.uri().path().to_string() }));
        };
        if !upstream.is_up() {
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
        mfe_kit::telemetry::inject_trace_context(&mut parts.headers);
        Ok((upstream, axum::http::Request::from_parts(parts, body)))
    }

    /// Sends `req` to a replica of `upstream`, and once more to another replica when the first
    /// could not be reached and the request may be sent again (see the module doc).
    async fn dispatch(&self, upstream: &Upstream, req: Request) -> Result<Response, ProxyError> {
        let down = || ProxyError::UpstreamDown { route: upstream.route.name.clone() };
        let first = upstream.pick(None).ok_or_else(down)?;
        // Kept only where there is another replica to send it to: a clone of the headers is
        // the one cost, and a lone service never pays it.
        let replay = if upstream.is_replicated() { Replay::of(&req) } else { None };
        let (error, unsent) = match self.exchange(upstream, first, req).await {
            Ok(response) => return Ok(response),
            Err(Failed::Timeout(error)) => return Err(error),
            Err(Failed::Connect(error, unsent)) => (error, unsent),
        };
        if !upstream.is_replicated() {
            return Err(error);
        }
        upstream.set_up(first, false, "failed a connection", &self.metrics);
        let (Some(req), Some(next)) =
            (unsent.map(|r| *r).or_else(|| replay.map(Replay::request)), upstream.pick(Some(first)))
        else {
            return Err(error);
        };
        tracing::debug!(route = %upstream.route.name, from = %first.url, to = %next.url, "retrying on another replica");
        self.exchange(upstream, next, req).await.map_err(|f| match f {
            Failed::Timeout(e) | Failed::Connect(e, _) => e,
        })
    }

    /// Sends `req` to `replica` within the timeout; the response with its hop-by-hop headers
    /// removed, or the 502/504 error (with the request when none of it was sent).
    async fn exchange(&self, upstream: &Upstream, replica: &Replica, mut req: Request) -> Result<Response, Failed> {
        req.headers_mut().insert(header::HOST, replica.host.clone());
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, replica.pool.send(req)).await;
        upstream.histogram.observe(started.elapsed().as_secs_f64());
        let response = match result {
            Err(_) => {
                let route = upstream.route.name.clone();
                return Err(Failed::Timeout(ProxyError::Timeout { route, timeout_ms: self.timeout.as_millis() }));
            }
            Ok(Err(SendFailure { reason, unsent })) => {
                return Err(Failed::Connect(
                    ProxyError::Connect { route: upstream.route.name.clone(), reason },
                    unsent.map(Box::new),
                ))
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// How an exchange failed: in time (no retry: the replica may be working on it), or on the
/// connection, with the request when none of it was sent.
enum Failed {
    Timeout(ProxyError),
    /// The request is boxed: this is the rare path, and the error should stay small.
    Connect(ProxyError, Option<Box<Request>>),
}

/// What it takes to send a bodiless safe request again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// The copy of `req` when it is `GET`, `HEAD` or `OPTIONS` without a body.
    fn of(req: &Request) -> Option<Self> {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let bodiless = !req.headers().contains_key(header::TRANSFER_ENCODING)
            && req.headers().get(header::CONTENT_LENGTH).is_none_or(|n| n.as_bytes() == b"0");
        (safe && bodiless).then(|| Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(self) -> Request {
        let mut req = Request::new(axum::body::Body::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        *req.version_mut() = axum::http::Version::HTTP_11;
        req
    }
}
